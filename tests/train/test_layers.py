"""symbn.layers: forward against textbook NumPy written here, backward against central differences (float64),
agreement with the engine's staged backward, running statistics in both conventions, train/eval modes, the
one-value-per-channel error, state dicts, bad input, and (when torch imports) PyTorch's modules."""

import numpy as np
import pytest

from helpers import numeric_grad, rel_err
from symbn.layers import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm

RNG = np.random.default_rng(1234)


def reference(x, axes, eps, ddof=0):
    """The normalized coordinate, written out: (x - mean)/sqrt(var + eps) over *axes*."""
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True, ddof=ddof)
    return (x - mu) / np.sqrt(var + eps)


def randomize(layer):
    for p in layer.parameters().values():
        p[...] = RNG.normal(1.0, 0.5, p.shape)
    return layer


# (layer, input shape, reference forward given x, gamma, beta)
CASES = {
    "batch_nc": (lambda: BatchNorm(3), (6, 3), lambda x, g, b: g * reference(x, 0, 1e-5) + b),
    "batch_ncl": (lambda: BatchNorm(3, "NCL"), (4, 3, 5),
                  lambda x, g, b: g[:, None] * reference(x, (0, 2), 1e-5) + b[:, None]),
    "batch_nchw": (lambda: BatchNorm(3, "NCHW"), (2, 3, 4, 3),
                   lambda x, g, b: g[:, None, None] * reference(x, (0, 2, 3), 1e-5) + b[:, None, None]),
    "batch_nhwc": (lambda: BatchNorm(3, "NHWC"), (2, 4, 3, 3), lambda x, g, b: g * reference(x, (0, 1, 2), 1e-5) + b),
    "batch_ncdhw": (lambda: BatchNorm(2, "NCDHW"), (2, 2, 3, 2, 2),
                    lambda x, g, b: g[:, None, None, None] * reference(x, (0, 2, 3, 4), 1e-5) + b[:, None, None, None]),
    "batch_keras": (lambda: BatchNorm.keras(3), (6, 3), lambda x, g, b: g * reference(x, 0, 1e-3) + b),
    "batch_keras_4d": (lambda: BatchNorm.keras(3), (2, 3, 4, 3), lambda x, g, b: g * reference(x, (0, 1, 2), 1e-3) + b),
    "batch_makemore": (lambda: BatchNorm.makemore(3), (4, 5, 3),
                       lambda x, g, b: g * reference(x, (0, 1), 1e-5, ddof=1) + b),
    "group": (lambda: GroupNorm(2, 4), (3, 4, 2, 3),
              lambda x, g, b: g[:, None, None] * reference(x.reshape(3, 2, 2, 2, 3), (2, 3, 4), 1e-5).reshape(x.shape)
              + b[:, None, None]),
    "instance": (lambda: InstanceNorm(3, affine=True), (2, 3, 4, 3),
                 lambda x, g, b: g[:, None, None] * reference(x, (2, 3), 1e-5) + b[:, None, None]),
    "instance_running": (lambda: InstanceNorm(3, "NHWC", affine=True, track_running_stats=True), (2, 4, 3, 3),
                         lambda x, g, b: g * reference(x, (1, 2), 1e-5) + b),
    "layer_2d": (lambda: LayerNorm((3, 4)), (2, 5, 3, 4), lambda x, g, b: g * reference(x, (2, 3), 1e-5) + b),
    "layer_1d": (lambda: LayerNorm(5, eps=1e-3), (4, 5), lambda x, g, b: g * reference(x, 1, 1e-3) + b),
    "rms": (lambda: RMSNorm(6), (3, 6), lambda x, g, b: g * x / np.sqrt((x ** 2).mean(axis=1, keepdims=True) + 1e-5)),
}


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_textbook_numpy(case):
    make, shape, ref = CASES[case]
    layer = randomize(make())
    x = RNG.normal(2.0, 3.0, shape)
    beta = getattr(layer, "beta", None)
    np.testing.assert_allclose(layer.forward(x), ref(x, layer.gamma, beta), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", CASES)
def test_backward_matches_central_differences(case, mode):
    make, shape, _ = CASES[case]
    layer = randomize(make())
    if mode == "eval" and layer.buffers():
        layer.running_mean[...] = RNG.normal(size=layer.running_mean.shape)
        layer.running_var[...] = RNG.uniform(0.5, 2.0, layer.running_var.shape)
    layer.train(mode == "train")
    x = RNG.normal(size=shape)
    w = RNG.normal(size=shape)

    def loss():
        return float(np.sum(w * layer.forward(x)))

    loss()
    dx = layer.backward(w)
    grads = {k: v.copy() for k, v in layer.gradients().items()}
    assert rel_err(dx, numeric_grad(loss, x)) < 1e-7
    for name, p in layer.parameters().items():
        assert grads[name].shape == p.shape
        assert rel_err(grads[name], numeric_grad(loss, p)) < 1e-7, name


@pytest.mark.parametrize("case", ["batch_nc", "batch_nhwc", "group", "instance", "layer_2d", "rms"])
def test_backward_agrees_with_the_engines_staged_form(case):
    make, shape, _ = CASES[case]
    layer = randomize(make())
    x, dy = RNG.normal(size=shape), RNG.normal(size=shape)
    layer.forward(x)
    dx = layer.backward(dy)
    params = layer._params()
    staged = layer.kernels.backward_staged(layer._view(dy), layer._view(x), params[0], eps=layer.eps)
    np.testing.assert_allclose(dx, staged[0].reshape(shape), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.dgamma, staged[1].reshape(layer.gamma.shape), rtol=1e-10, atol=1e-12)


def test_batchnorm_pytorch_convention_running_statistics():
    bn = BatchNorm(3)
    assert (bn.eps, bn.momentum) == (1e-5, 0.1)
    x1, x2 = RNG.normal(1, 2, (8, 3)), RNG.normal(-1, 3, (8, 3))
    bn.forward(x1)
    bn.forward(x2)
    mean = 0.9 * (0.9 * 0 + 0.1 * x1.mean(0)) + 0.1 * x2.mean(0)
    var = 0.9 * (0.9 * 1 + 0.1 * x1.var(0, ddof=1)) + 0.1 * x2.var(0, ddof=1)
    np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-13)
    np.testing.assert_allclose(bn.running_var, var, rtol=1e-13)
    assert int(bn.num_batches_tracked) == 2


def test_batchnorm_keras_convention_running_statistics_and_eval():
    bn = BatchNorm.keras(3, "NCHW")
    assert (bn.eps, bn.momentum) == (1e-3, 0.99)
    x = RNG.normal(1, 2, (4, 3, 2, 2))
    bn.forward(x)
    np.testing.assert_allclose(bn.running_mean, 0.01 * x.mean((0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(bn.running_var, 0.99 + 0.01 * x.var((0, 2, 3)), rtol=1e-13)
    randomize(bn).eval()
    before = bn.running_mean.copy()
    y = bn.forward(x)
    c = (slice(None), None, None)
    expected = (bn.gamma[c] * (x - bn.running_mean[c]) / np.sqrt(bn.running_var[c] + 1e-3) + bn.beta[c])
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    np.testing.assert_array_equal(bn.running_mean, before)  # eval mode leaves them alone


def test_explicit_eps_and_momentum_override_the_convention():
    bn = BatchNorm(2, eps=0.5, momentum=0.25)
    x = RNG.normal(size=(5, 2))
    y = bn.forward(x)
    np.testing.assert_allclose(y, reference(x, 0, 0.5), rtol=1e-12)
    np.testing.assert_allclose(bn.running_mean, 0.25 * x.mean(0), rtol=1e-13)


def test_track_running_stats_false_uses_batch_statistics_in_eval():
    bn = BatchNorm(3, track_running_stats=False).eval()
    x = RNG.normal(size=(5, 3))
    np.testing.assert_allclose(bn.forward(x), reference(x, 0, 1e-5), rtol=1e-12)
    assert bn.buffers() == {}


def test_per_sample_norms_give_the_same_output_in_eval_mode():
    for layer, shape in ((GroupNorm(2, 4), (2, 4, 3, 3)), (LayerNorm(4), (3, 4)), (RMSNorm(4), (3, 4))):
        x = RNG.normal(size=shape)
        np.testing.assert_array_equal(layer.train().forward(x), layer.eval().forward(x))


@pytest.mark.torch(optional=True)  # symbn's refusal without torch; PyTorch's as well with it
@pytest.mark.parametrize("make, x", [
    (lambda: BatchNorm(10), np.zeros((1, 10))),
    (lambda: BatchNorm(4, "NCHW"), np.zeros((1, 4, 1, 1))),
    (lambda: BatchNorm(4, "NHWC"), np.zeros((1, 1, 1, 4))),
])
def test_one_value_per_channel_in_training_is_a_value_error_like_pytorch(make, x):
    bn = make()
    with pytest.raises(ValueError, match=r"more than 1 value per channel when training; got input size"):
        bn.forward(x)
    np.testing.assert_array_equal(bn.running_mean, 0)  # nothing updated by the failed call
    assert bn.eval().forward(x).shape == x.shape  # one example is fine in eval mode
    torch = pytest.importorskip("torch")
    tbn = torch.nn.BatchNorm2d(4) if x.ndim == 4 else torch.nn.BatchNorm1d(10)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        tbn(torch.zeros(1, 4, 1, 1) if x.ndim == 4 else torch.zeros(1, 10))


def test_group_and_instance_norm_with_one_value_per_statistic_raise():
    with pytest.raises(ValueError, match="more than 1 value per"):
        GroupNorm(4, 4).forward(np.zeros((2, 4, 1, 1)))
    with pytest.raises(ValueError, match="more than 1 value per"):
        InstanceNorm(3).forward(np.zeros((2, 3, 1, 1)))
    with pytest.raises(ValueError, match="normalized_shape"):
        LayerNorm(1)


@pytest.mark.parametrize("case", ["batch_nchw", "batch_keras", "batch_makemore", "group", "instance_running",
                                  "layer_2d", "rms"])
def test_state_dict_round_trip_through_npz(case, tmp_path):
    make, shape, _ = CASES[case]
    a = randomize(make())
    for _ in range(3):
        a.forward(RNG.normal(size=shape))
    a.save(tmp_path / "state.npz")
    b = make()
    arrays = {k: v for k, v in {**b.parameters(), **b.buffers()}.items()}
    b.load(tmp_path / "state.npz")
    assert set(b.state_dict()) == set(a.state_dict())
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
        assert {**b.parameters(), **b.buffers()}[k] is arrays[k]  # loaded in place: optimizers keep references
    x = RNG.normal(size=shape)
    np.testing.assert_array_equal(a.eval().forward(x), b.eval().forward(x))


def test_state_dict_is_a_copy_and_bad_state_is_refused():
    bn = BatchNorm(3)
    state = bn.state_dict()
    state["gamma"][0] = 7.0
    assert bn.gamma[0] == 1.0
    assert set(state) == {"gamma", "beta", "running_mean", "running_var", "num_batches_tracked"}
    with pytest.raises(KeyError, match="missing \\['beta'\\]"):
        bn.load_state_dict({k: v for k, v in state.items() if k != "beta"})
    with pytest.raises(ValueError, match="state\\['gamma'\\]: expected shape \\(3,\\)"):
        bn.load_state_dict({**state, "gamma": np.ones(4)})
    assert bn.gamma[0] == 1.0  # a refused load changes nothing


def test_affine_false_has_no_parameters():
    bn = BatchNorm(3, affine=False)
    x = RNG.normal(size=(4, 3))
    np.testing.assert_allclose(bn.forward(x), reference(x, 0, 1e-5), rtol=1e-12)
    bn.backward(np.ones_like(x))
    assert bn.parameters() == {} and bn.gradients() == {}
    assert set(bn.state_dict()) == {"running_mean", "running_var", "num_batches_tracked"}


def test_float32_input():
    bn = BatchNorm(3, "NCHW")
    x = RNG.normal(size=(4, 3, 5, 5)).astype(np.float32)
    y = bn.forward(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, reference(x.astype(np.float64), (0, 2, 3), 1e-5), rtol=1e-4, atol=1e-5)
    assert bn.backward(np.ones_like(x)).dtype == np.float32 and bn.dgamma.dtype == np.float64


def test_numba_backend_agrees_with_numpy():
    x, dy = RNG.normal(size=(6, 3)), RNG.normal(size=(6, 3))
    a, b = randomize(BatchNorm(3)), BatchNorm(3, backend="numba")
    b.load_state_dict(a.state_dict())
    for mode in (True, False):
        a.train(mode), b.train(mode)
        np.testing.assert_allclose(b.forward(x), a.forward(x), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(b.backward(dy), a.backward(dy), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(b.dgamma, a.dgamma, rtol=1e-10)
    np.testing.assert_allclose(b.running_var, a.running_var, rtol=1e-13)


@pytest.mark.parametrize("make, message", [
    (lambda: BatchNorm(0), "num_features: expected a positive integer"),
    (lambda: BatchNorm(3, "NCWH"), "layout: expected one of"),
    (lambda: BatchNorm(3, running="tf"), "running: expected one of pytorch, keras"),
    (lambda: BatchNorm(3, momentum=1.5), "momentum"),
    (lambda: BatchNorm(3, eps=-1.0), "eps"),
    (lambda: BatchNorm(3, backend="cuda"), "backend: expected one of"),
    (lambda: GroupNorm(3, 4), "num_channels: expected a multiple of num_groups=3"),
    (lambda: InstanceNorm(3, "NC"), "layout"),
])
def test_bad_construction_names_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_input_names_the_argument():
    bn = BatchNorm(3, "NCHW")
    with pytest.raises(ValueError, match=r"x: .* expects 3 channels on axis 1; got shape \(2, 4, 2, 2\)"):
        bn.forward(np.zeros((2, 4, 2, 2)))
    with pytest.raises(ValueError, match="x: .* expects 4-D input"):
        bn.forward(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="x: .* float32 or float64"):
        bn.forward(np.zeros((2, 3, 2, 2), dtype=np.int64))
    with pytest.raises(RuntimeError, match="call forward first"):
        BatchNorm(3).backward(np.zeros((2, 3)))
    bn.forward(RNG.normal(size=(2, 3, 2, 2)))
    with pytest.raises(ValueError, match="dy: expected the shape"):
        bn.backward(np.zeros((2, 3, 2, 1)))
    with pytest.raises(ValueError, match=r"x: .* expects shape \(..., 3, 4\)"):
        LayerNorm((3, 4)).forward(np.zeros((2, 4, 3)))


# --- PyTorch's modules, several steps, running statistics included ---------------------------------------------

def _torch_cases(torch):
    nn = torch.nn
    return [
        (BatchNorm(3, "NCHW"), nn.BatchNorm2d(3), (4, 3, 5, 2), None),
        (BatchNorm(3, "NHWC", momentum=0.3, eps=1e-3), nn.BatchNorm2d(3, momentum=0.3, eps=1e-3), (4, 5, 2, 3),
         "nhwc"),
        (BatchNorm(2, "NCDHW"), nn.BatchNorm3d(2), (2, 2, 3, 2, 2), None),
        (GroupNorm(2, 6), nn.GroupNorm(2, 6), (3, 6, 2, 2), None),
        (InstanceNorm(3, "NCL", affine=True), nn.InstanceNorm1d(3, affine=True), (2, 3, 7), None),
        (LayerNorm((3, 4)), nn.LayerNorm((3, 4)), (2, 5, 3, 4), None),
        (RMSNorm(6, eps=1e-6), nn.RMSNorm(6, eps=1e-6), (4, 6), None),
    ]


@pytest.mark.torch
def test_layers_match_pytorch_modules():
    torch = pytest.importorskip("torch")
    for ours, theirs, shape, layout in _torch_cases(torch):
        theirs = theirs.double()
        randomize(ours)
        with torch.no_grad():
            theirs.weight.copy_(torch.from_numpy(ours.gamma))
            if getattr(ours, "beta", None) is not None:
                theirs.bias.copy_(torch.from_numpy(ours.beta))
        to_t = (lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)) if layout == "nhwc" else torch.from_numpy
        for step in range(3):
            for mode in (True, False):
                ours.train(mode), theirs.train(mode)
                x, dy = RNG.normal(1, 2, shape), RNG.normal(size=shape)
                xt = to_t(x).clone().requires_grad_(True)
                for p in theirs.parameters():
                    p.grad = None
                yt = theirs(xt)
                yt.backward(to_t(dy))
                y = ours.forward(x)
                dx = ours.backward(dy)
                name = type(ours).__name__
                np.testing.assert_allclose(to_t(y).numpy(), yt.detach().numpy(), rtol=1e-10, atol=1e-10, err_msg=name)
                np.testing.assert_allclose(to_t(dx).numpy(), xt.grad.numpy(), rtol=1e-9, atol=1e-10, err_msg=name)
                np.testing.assert_allclose(ours.dgamma, theirs.weight.grad.numpy(), rtol=1e-9, atol=1e-10)
        if isinstance(ours, BatchNorm):
            np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), rtol=1e-12)
            np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-12)
