"""symbn.fold: a folded layer computes what the layer followed by the eval-mode batch norm computes (the batch norm
run by symbn's kernels, the layer by plain NumPy written here), with and without bias, dense in both weight layouts
and convolutions."""

import numpy as np
import pytest

from symbn.fold import fold_batchnorm, fold_conv, fold_dense
from symbn.layers import BatchNorm

RNG = np.random.default_rng(7)


def trained_bn(n, layout, affine=True, **options):
    """A BatchNorm in eval mode with running statistics and parameters far from their initial values."""
    bn = BatchNorm(n, layout, affine=affine, **options)
    bn.running_mean[...] = RNG.normal(0, 2, n)
    bn.running_var[...] = RNG.uniform(0.1, 3.0, n)
    if affine:
        bn.gamma[...] = RNG.normal(1, 0.5, n)
        bn.beta[...] = RNG.normal(0, 1, n)
    return bn.eval()


def conv(x, W, b):
    """Cross-correlation, stride 1, no padding, as nn.Conv1d/Conv2d compute: W (C_out, C_in, *kernel)."""
    k = W.shape[2:]
    axes = tuple(range(2, x.ndim))
    windows = np.lib.stride_tricks.sliding_window_view(x, k, axis=axes)  # (N, C, *out, *kernel)
    letters = "uvw"[: len(k)]
    spatial = "hij"[: len(k)]
    y = np.einsum(f"nc{spatial}{letters},oc{letters}->no{spatial}", windows, W)
    return y if b is None else y + b.reshape((1, -1) + (1,) * len(k))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("running", ["pytorch", "keras"])
def test_dense_in_out(bias, running):
    W, b = RNG.normal(size=(5, 4)), RNG.normal(size=4) if bias else None
    bn = trained_bn(4, "NC", running=running)
    x = RNG.normal(size=(7, 5))
    expected = bn.forward(x @ W + (0 if b is None else b))
    W2, b2 = fold_dense(W, b, bn.gamma, bn.beta, bn.running_mean, bn.running_var, bn.eps)
    assert W2.shape == W.shape and b2.shape == (4,)
    np.testing.assert_allclose(x @ W2 + b2, expected, rtol=1e-12, atol=1e-12)
    W3, b3 = fold_batchnorm(W, b, bn)
    np.testing.assert_array_equal(W3, W2)
    np.testing.assert_array_equal(b3, b2)


@pytest.mark.parametrize("bias", [True, False])
def test_dense_out_in_as_pytorch_linear(bias):
    W, b = RNG.normal(size=(4, 5)), RNG.normal(size=4) if bias else None  # (out, in): y = x @ W.T + b
    bn = trained_bn(4, "NC")
    x = RNG.normal(size=(7, 5))
    expected = bn.forward(x @ W.T + (0 if b is None else b))
    W2, b2 = fold_batchnorm(W, b, bn, layout="out_in")
    assert W2.shape == (4, 5)
    np.testing.assert_allclose(x @ W2.T + b2, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_conv2d(bias):
    W, b = RNG.normal(size=(4, 3, 3, 2)), RNG.normal(size=4) if bias else None
    bn = trained_bn(4, "NCHW")
    x = RNG.normal(size=(2, 3, 6, 5))
    expected = bn.forward(conv(x, W, b))
    W2, b2 = fold_conv(W, b, bn.gamma, bn.beta, bn.running_mean, bn.running_var, bn.eps)
    np.testing.assert_allclose(conv(x, W2, b2), expected, rtol=1e-11, atol=1e-11)
    W3, b3 = fold_batchnorm(W, b, bn, kind="conv")
    np.testing.assert_array_equal(W3, W2)


def test_conv1d_and_batchnorm_without_affine_parameters():
    W = RNG.normal(size=(3, 2, 4))
    bn = trained_bn(3, "NCL", affine=False)
    x = RNG.normal(size=(2, 2, 9))
    W2, b2 = fold_batchnorm(W, None, bn, kind="conv")
    np.testing.assert_allclose(conv(x, W2, b2), bn.forward(conv(x, W, None)), rtol=1e-11, atol=1e-11)


@pytest.mark.torch
def test_against_pytorch_conv_and_batchnorm():
    torch = pytest.importorskip("torch")
    conv_t = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False).double()
    bn_t = torch.nn.BatchNorm2d(4).double()
    with torch.no_grad():
        bn_t.running_mean.normal_(0, 2)
        bn_t.running_var.uniform_(0.1, 3)
        bn_t.weight.normal_(1, 0.5)
        bn_t.bias.normal_()
    bn_t.eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    W2, b2 = fold_conv(conv_t.weight.detach().numpy(), None, bn_t.weight.detach().numpy(), bn_t.bias.detach().numpy(),
                       bn_t.running_mean.numpy(), bn_t.running_var.numpy(), bn_t.eps)
    folded = torch.nn.functional.conv2d(x, torch.from_numpy(W2), torch.from_numpy(b2), padding=1)
    np.testing.assert_allclose(folded.numpy(), bn_t(conv_t(x)).detach().numpy(), rtol=1e-11, atol=1e-11)


def test_dtype_is_kept():
    W = RNG.normal(size=(3, 2)).astype(np.float32)
    W2, b2 = fold_dense(W, None, None, None, np.zeros(2), np.ones(2))
    assert W2.dtype == np.float32 and b2.dtype == np.float32


@pytest.mark.parametrize("call, message", [
    (lambda: fold_dense(np.ones((3, 2)), None, None, None, np.zeros(3), np.ones(3)), r"mean: expected shape \(2,\)"),
    (lambda: fold_dense(np.ones((3, 2)), np.ones(3), None, None, np.zeros(2), np.ones(2)), r"b: expected shape \(2,\)"),
    (lambda: fold_dense(np.ones((3, 2)), None, None, None, np.zeros(2), np.ones(2), layout="io"), "layout"),
    (lambda: fold_dense(np.ones(3), None, None, None, np.zeros(3), np.ones(3)), "W: expected a 2-D"),
    (lambda: fold_conv(np.ones((3, 2)), None, None, None, np.zeros(3), np.ones(3)), "W: expected a convolution"),
    (lambda: fold_dense(np.ones((3, 2)), None, None, None, np.zeros(2), -np.ones(2), eps=0.0), "var"),
    (lambda: fold_batchnorm(np.ones((3, 2)), None, BatchNorm(2, track_running_stats=False)), "running statistics"),
    (lambda: fold_batchnorm(np.ones((3, 2)), None, BatchNorm(2), kind="lstm"), "kind"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
