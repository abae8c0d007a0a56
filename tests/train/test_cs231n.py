"""symbn.cs231n keeps the cs231n (2020) assignment 2 semantics: the assignment's own sanity checks, bn_param
handling (running statistics created as zeros, updated in place with momentum 0.9 and the uncorrected variance),
test mode, shapes, and numeric gradients in the assignment's style (central differences of sum(out*dout))."""

import numpy as np
import pytest

from symbn.cs231n import (
    batchnorm_backward,
    batchnorm_backward_alt,
    batchnorm_forward,
    layernorm_backward,
    layernorm_forward,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
    spatial_groupnorm_backward,
    spatial_groupnorm_forward,
)

RNG = np.random.default_rng(231)


def eval_numerical_gradient_array(f, x, df, h=1e-6):
    """As cs231n's gradient_check.eval_numerical_gradient_array: d/dx of sum(f(x) * df)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        pos = f(x).copy()
        x[i] = old - h
        neg = f(x).copy()
        x[i] = old
        grad[i] = np.sum((pos - neg) * df) / (2 * h)
    return grad


def rel_error(x, y):
    # Relative to the largest entry, not entry by entry as the notebook does: an entry near zero would turn the
    # finite differences' absolute noise (~1e-10 here) into a large relative error.
    return np.max(np.abs(x - y)) / max(np.max(np.abs(x) + np.abs(y)), 1e-8)


# --- batchnorm --------------------------------------------------------------------------------------------------

def test_batchnorm_train_forward_sanity_checks_of_the_assignment():
    N, D1, D2, D3 = 200, 50, 60, 3
    X = RNG.normal(size=(N, D1))
    W1, W2 = RNG.normal(size=(D1, D2)), RNG.normal(size=(D2, D3))
    a = np.maximum(0, X.dot(W1)).dot(W2)
    gamma, beta = np.asarray([1.0, 2.0, 3.0]), np.asarray([11.0, 12.0, 13.0])
    out, _ = batchnorm_forward(a, gamma, beta, {"mode": "train"})
    np.testing.assert_allclose(out.mean(axis=0), beta, atol=1e-10)
    np.testing.assert_allclose(out.std(axis=0), gamma, rtol=1e-5)  # eps=1e-5 against a variance in the 1000s


def test_batchnorm_test_mode_after_training_matches_the_assignment_check():
    N, D1, D2, D3 = 200, 50, 60, 3
    W1, W2 = RNG.normal(size=(D1, D2)), RNG.normal(size=(D2, D3))
    bn_param = {"mode": "train"}
    gamma, beta = np.ones(D3), np.zeros(D3)
    for _ in range(50):
        batchnorm_forward(np.maximum(0, RNG.normal(size=(N, D1)).dot(W1)).dot(W2), gamma, beta, bn_param)
    bn_param["mode"] = "test"
    out, _ = batchnorm_forward(np.maximum(0, RNG.normal(size=(N, D1)).dot(W1)).dot(W2), gamma, beta, bn_param)
    # the running averages approach the population statistics: means ~0, stds ~1 (loosely, as in the notebook)
    assert np.all(np.abs(out.mean(axis=0)) < 0.3) and np.all(np.abs(out.std(axis=0) - 1) < 0.3)


def test_bn_param_running_statistics_created_as_zeros_and_updated_in_place():
    x1, x2 = RNG.normal(3, 2, (10, 4)), RNG.normal(-1, 1, (10, 4))
    gamma, beta = np.ones(4), np.zeros(4)
    bn_param = {"mode": "train"}
    batchnorm_forward(x1, gamma, beta, bn_param)
    # created as zeros, then running = 0.9*running + 0.1*batch, with the biased (ddof=0) variance
    np.testing.assert_allclose(bn_param["running_mean"], 0.1 * x1.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(bn_param["running_var"], 0.1 * x1.var(axis=0), rtol=1e-13)
    mean_array, var_array = bn_param["running_mean"], bn_param["running_var"]
    batchnorm_forward(x2, gamma, beta, bn_param)
    assert bn_param["running_mean"] is mean_array and bn_param["running_var"] is var_array  # in place
    np.testing.assert_allclose(mean_array, 0.9 * 0.1 * x1.mean(0) + 0.1 * x2.mean(0), rtol=1e-13)
    np.testing.assert_allclose(var_array, 0.9 * 0.1 * x1.var(0) + 0.1 * x2.var(0), rtol=1e-13)
    assert mean_array.dtype == x1.dtype


def test_bn_param_momentum_and_eps_are_read_from_the_dict():
    x = RNG.normal(size=(6, 3))
    bn_param = {"mode": "train", "momentum": 0.5, "eps": 0.1,
                "running_mean": np.ones(3), "running_var": np.full(3, 2.0)}
    out, _ = batchnorm_forward(x, np.ones(3), np.zeros(3), bn_param)
    np.testing.assert_allclose(out, (x - x.mean(0)) / np.sqrt(x.var(0) + 0.1), rtol=1e-12)
    np.testing.assert_allclose(bn_param["running_mean"], 0.5 + 0.5 * x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(bn_param["running_var"], 1.0 + 0.5 * x.var(0), rtol=1e-13)


def test_bn_param_momentum_takes_both_ends_of_the_unit_interval():
    """The assignment's running = momentum*running + (1 - momentum)*batch: momentum 1 keeps, 0 replaces."""
    x = RNG.normal(size=(6, 3))
    for momentum, mean, var in ((1.0, np.ones(3), np.full(3, 2.0)), (0.0, x.mean(0), x.var(0))):
        bn_param = {"mode": "train", "momentum": momentum, "running_mean": np.ones(3), "running_var": np.full(3, 2.0)}
        batchnorm_forward(x, np.ones(3), np.zeros(3), bn_param)
        np.testing.assert_allclose(bn_param["running_mean"], mean, rtol=1e-13)
        np.testing.assert_allclose(bn_param["running_var"], var, rtol=1e-13)


def test_test_mode_normalizes_with_the_running_statistics():
    x = RNG.normal(size=(5, 3))
    gamma, beta = RNG.normal(size=3), RNG.normal(size=3)
    rm, rv = RNG.normal(size=3), RNG.uniform(0.5, 2, 3)
    bn_param = {"mode": "test", "running_mean": rm.copy(), "running_var": rv.copy()}
    out, _ = batchnorm_forward(x, gamma, beta, bn_param)
    np.testing.assert_allclose(out, gamma * (x - rm) / np.sqrt(rv + 1e-5) + beta, rtol=1e-12)
    np.testing.assert_array_equal(bn_param["running_mean"], rm)  # not updated in test mode
    # first use in test mode: zeros as well, so x/sqrt(eps) (what the assignment's code does)
    out, _ = batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "test"})
    np.testing.assert_allclose(out, x / np.sqrt(1e-5), rtol=1e-12)


def test_invalid_mode_raises_the_assignments_error():
    with pytest.raises(ValueError, match='Invalid forward batchnorm mode "eval"'):
        batchnorm_forward(np.ones((2, 2)), np.ones(2), np.zeros(2), {"mode": "eval"})
    with pytest.raises(KeyError, match="mode"):
        batchnorm_forward(np.ones((2, 2)), np.ones(2), np.zeros(2), {})


@pytest.mark.parametrize("backward", [batchnorm_backward, batchnorm_backward_alt])
def test_batchnorm_backward_numeric_gradients(backward):
    N, D = 4, 5
    x = 5 * RNG.normal(size=(N, D)) + 12
    gamma, beta, dout = RNG.normal(size=D), RNG.normal(size=D), RNG.normal(size=(N, D))
    bn_param = {"mode": "train"}
    dx_num = eval_numerical_gradient_array(lambda x_: batchnorm_forward(x_, gamma, beta, bn_param)[0], x, dout)
    da_num = eval_numerical_gradient_array(lambda g: batchnorm_forward(x, g, beta, bn_param)[0], gamma.copy(), dout)
    db_num = eval_numerical_gradient_array(lambda b: batchnorm_forward(x, gamma, b, bn_param)[0], beta.copy(), dout)
    _, cache = batchnorm_forward(x, gamma, beta, bn_param)
    dx, dgamma, dbeta = backward(dout, cache)
    assert dx.shape == x.shape and dgamma.shape == gamma.shape and dbeta.shape == beta.shape
    assert rel_error(dx_num, dx) < 1e-7 and rel_error(da_num, dgamma) < 1e-7 and rel_error(db_num, dbeta) < 1e-7


def test_staged_and_compact_backward_agree():
    N, D = 100, 500
    x = 5 * RNG.normal(size=(N, D)) + 12
    gamma, beta, dout = RNG.normal(size=D), RNG.normal(size=D), RNG.normal(size=(N, D))
    _, cache = batchnorm_forward(x, gamma, beta, {"mode": "train"})
    staged, compact = batchnorm_backward(dout, cache), batchnorm_backward_alt(dout, cache)
    for a, b in zip(staged, compact):
        assert rel_error(a, b) < 1e-9


def test_backward_of_a_test_mode_forward_holds_the_statistics_constant():
    x, dout = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    gamma, beta = RNG.normal(size=3), RNG.normal(size=3)
    bn_param = {"mode": "test", "running_mean": RNG.normal(size=3), "running_var": RNG.uniform(1, 2, 3)}
    f = lambda x_: batchnorm_forward(x_, gamma, beta, bn_param)[0]  # noqa: E731
    dx, _, _ = batchnorm_backward_alt(dout, batchnorm_forward(x, gamma, beta, bn_param)[1])
    assert rel_error(eval_numerical_gradient_array(f, x, dout), dx) < 1e-7


# --- layernorm --------------------------------------------------------------------------------------------------

def test_layernorm_forward_normalizes_each_row():
    N, D = 4, 7
    x = RNG.normal(3, 5, (N, D))
    gamma, beta = RNG.normal(size=D), RNG.normal(size=D)
    out, _ = layernorm_forward(x, gamma, beta, {"mode": "train"})  # the nets pass a mode; layer norm ignores it
    mu, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
    np.testing.assert_allclose(out, gamma * (x - mu) / np.sqrt(var + 1e-5) + beta, rtol=1e-12)
    out, _ = layernorm_forward(x, np.ones(D), np.zeros(D), {"eps": 0.5})
    np.testing.assert_allclose(out, (x - mu) / np.sqrt(var + 0.5), rtol=1e-12)


def test_layernorm_backward_numeric_gradients():
    N, D = 4, 5
    x = 5 * RNG.normal(size=(N, D)) + 12
    gamma, beta, dout = RNG.normal(size=D), RNG.normal(size=D), RNG.normal(size=(N, D))
    ln_param = {}
    dx_num = eval_numerical_gradient_array(lambda x_: layernorm_forward(x_, gamma, beta, ln_param)[0], x, dout)
    da_num = eval_numerical_gradient_array(lambda g: layernorm_forward(x, g, beta, ln_param)[0], gamma.copy(), dout)
    db_num = eval_numerical_gradient_array(lambda b: layernorm_forward(x, gamma, b, ln_param)[0], beta.copy(), dout)
    dx, dgamma, dbeta = layernorm_backward(dout, layernorm_forward(x, gamma, beta, ln_param)[1])
    assert dgamma.shape == (D,) and dbeta.shape == (D,)
    assert rel_error(dx_num, dx) < 1e-7 and rel_error(da_num, dgamma) < 1e-7 and rel_error(db_num, dbeta) < 1e-7


# --- spatial batchnorm ------------------------------------------------------------------------------------------

def test_spatial_batchnorm_forward_per_channel_and_running_statistics():
    N, C, H, W = 10, 3, 4, 5
    x = 4 * RNG.normal(size=(N, C, H, W)) + 10
    gamma, beta = np.asarray([3.0, 4.0, 5.0]), np.asarray([6.0, 7.0, 8.0])
    bn_param = {"mode": "train"}
    out, _ = spatial_batchnorm_forward(x, gamma, beta, bn_param)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), beta, atol=1e-10)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), gamma, rtol=1e-5)
    np.testing.assert_allclose(bn_param["running_mean"], 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(bn_param["running_var"], 0.1 * x.var(axis=(0, 2, 3)), rtol=1e-13)
    bn_param["mode"] = "test"
    out, _ = spatial_batchnorm_forward(x, gamma, beta, bn_param)
    c = (slice(None), None, None)
    expected = gamma[c] * (x - bn_param["running_mean"][c]) / np.sqrt(bn_param["running_var"][c] + 1e-5) + beta[c]
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_spatial_batchnorm_backward_numeric_gradients():
    N, C, H, W = 2, 3, 4, 5
    x = 5 * RNG.normal(size=(N, C, H, W)) + 12
    gamma, beta, dout = RNG.normal(size=C), RNG.normal(size=C), RNG.normal(size=(N, C, H, W))
    bn_param = {"mode": "train"}
    dx_num = eval_numerical_gradient_array(lambda x_: spatial_batchnorm_forward(x_, gamma, beta, bn_param)[0], x, dout)
    da_num = eval_numerical_gradient_array(lambda g: spatial_batchnorm_forward(x, g, beta, bn_param)[0], gamma.copy(),
                                           dout)
    db_num = eval_numerical_gradient_array(lambda b: spatial_batchnorm_forward(x, gamma, b, bn_param)[0], beta.copy(),
                                           dout)
    dx, dgamma, dbeta = spatial_batchnorm_backward(dout, spatial_batchnorm_forward(x, gamma, beta, bn_param)[1])
    assert dgamma.shape == (C,) and dbeta.shape == (C,)
    assert rel_error(dx_num, dx) < 1e-7 and rel_error(da_num, dgamma) < 1e-7 and rel_error(db_num, dbeta) < 1e-7


# --- spatial groupnorm ------------------------------------------------------------------------------------------

def test_spatial_groupnorm_forward_per_sample_and_group():
    N, C, H, W, G = 2, 6, 4, 5, 2
    x = 4 * RNG.normal(size=(N, C, H, W)) + 10
    gamma, beta = RNG.normal(size=(1, C, 1, 1)), RNG.normal(size=(1, C, 1, 1))
    out, _ = spatial_groupnorm_forward(x, gamma, beta, G, {})
    xg = x.reshape(N, G, C // G, H, W)
    xhat = ((xg - xg.mean(axis=(2, 3, 4), keepdims=True)) / np.sqrt(xg.var(axis=(2, 3, 4), keepdims=True) + 1e-5))
    np.testing.assert_allclose(out, gamma * xhat.reshape(x.shape) + beta, rtol=1e-12, atol=1e-12)


def test_spatial_groupnorm_backward_numeric_gradients():
    N, C, H, W, G = 2, 6, 4, 5, 2
    x = 5 * RNG.normal(size=(N, C, H, W)) + 12
    gamma, beta = RNG.normal(size=(1, C, 1, 1)), RNG.normal(size=(1, C, 1, 1))
    dout = RNG.normal(size=(N, C, H, W))
    gn_param = {}
    f = lambda x_, g, b: spatial_groupnorm_forward(x_, g, b, G, gn_param)[0]  # noqa: E731
    dx_num = eval_numerical_gradient_array(lambda x_: f(x_, gamma, beta), x, dout)
    da_num = eval_numerical_gradient_array(lambda g: f(x, g, beta), gamma.copy(), dout)
    db_num = eval_numerical_gradient_array(lambda b: f(x, gamma, b), beta.copy(), dout)
    dx, dgamma, dbeta = spatial_groupnorm_backward(dout, spatial_groupnorm_forward(x, gamma, beta, G, gn_param)[1])
    assert dgamma.shape == (1, C, 1, 1) and dbeta.shape == (1, C, 1, 1)
    assert rel_error(dx_num, dx) < 1e-7 and rel_error(da_num, dgamma) < 1e-7 and rel_error(db_num, dbeta) < 1e-7


def test_groupnorm_bad_arguments_are_named():
    x = np.zeros((2, 6, 2, 2))
    with pytest.raises(ValueError, match="G: expected a divisor of the channel count 6"):
        spatial_groupnorm_forward(x, np.ones((1, 6, 1, 1)), np.zeros((1, 6, 1, 1)), 4, {})
    with pytest.raises(ValueError, match=r"gamma: expected shape \(1, 6, 1, 1\)"):
        spatial_groupnorm_forward(x, np.ones(6), np.zeros((1, 6, 1, 1)), 2, {})
    with pytest.raises(ValueError, match="x: expected 4 dimensions"):
        spatial_batchnorm_forward(np.zeros((2, 6)), np.ones(6), np.zeros(6), {"mode": "train"})


# --- arrays as the notebooks pass them (issue 22) ------------------------------------------------------------------

def test_the_notebooks_integer_parameters_work():
    # ConvolutionalNetworks.ipynb, spatial batch norm: "means should be close to beta and stds close to gamma"
    N, C, H, W = 2, 3, 4, 5
    x = 4 * RNG.normal(size=(N, C, H, W)) + 10
    bn_param = {"mode": "train"}
    gamma, beta = np.asarray([3, 4, 5]), np.asarray([6, 7, 8])
    out, cache = spatial_batchnorm_forward(x, gamma, beta, bn_param)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), [6, 7, 8], atol=1e-10)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), [3, 4, 5], rtol=1e-4)
    dx, dgamma, dbeta = spatial_batchnorm_backward(np.ones((N, C, H, W), dtype=int), cache)
    assert dx.dtype == dgamma.dtype == np.float64 and dgamma.shape == (3,)
    np.testing.assert_allclose(dbeta, [H * W * N] * 3)


@pytest.mark.parametrize("forward, shape, param_shape", [
    (lambda x, g, b: batchnorm_forward(x, g, b, {"mode": "train"}), (4, 3), (3,)),
    (lambda x, g, b: layernorm_forward(x, g, b, {}), (4, 3), (3,)),
    (lambda x, g, b: spatial_batchnorm_forward(x, g, b, {"mode": "train"}), (2, 3, 2, 2), (3,)),
    (lambda x, g, b: spatial_groupnorm_forward(x, g, b, 3, {}), (2, 3, 2, 2), (1, 3, 1, 1)),
], ids=["batch", "layer", "spatial_batch", "spatial_group"])
def test_integer_bool_and_list_arrays_are_taken_as_float64_and_float32_stays(forward, shape, param_shape):
    x = RNG.integers(-5, 5, shape)
    gamma, beta = RNG.integers(1, 4, param_shape), RNG.integers(-2, 2, param_shape)
    expected = forward(x.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64))[0]
    for args in ((x, gamma, beta), (x.tolist(), gamma.tolist(), beta.tolist())):
        out = forward(*args)[0]
        assert out.dtype == np.float64
        np.testing.assert_array_equal(out, expected)
    flags, small = x > 0, (beta > 0).astype(np.uint8)
    out = forward(flags, gamma > 1, small)[0]
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, forward(flags.astype(float), (gamma > 1).astype(float), small.astype(float))[0])
    out32 = forward(x.astype(np.float32), gamma, beta)[0]
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, expected, rtol=1e-5, atol=1e-5)
