"""Conv2d, MaxPool2d and Flatten: gradients against central differences (float64), values and gradients against
torch.nn.functional, and the refusals."""

import re

import numpy as np
import pytest

from helpers import numeric_grad, rel_err
from symbn import nn

RNG = np.random.default_rng(1502)

# kernel, stride, padding: square and not, overlapping windows and not, with and without padding
GEOMETRIES = [(3, 1, 0), (3, 1, 1), ((3, 2), (2, 1), (1, 0)), (2, 2, 0), ((1, 3), 2, (0, 1))]


def check_layer(layer, x, tol=1e-7):
    """dx and every parameter gradient of sum(layer(x) * w) against central differences."""
    w = RNG.normal(size=layer.forward(x).shape)

    def loss():
        return float(np.sum(layer.forward(x) * w))

    layer.forward(x)
    dx = layer.backward(w)
    grads = {k: v.copy() for k, v in layer.gradients().items()}
    assert set(grads) == set(layer.parameters())
    assert rel_err(dx, numeric_grad(loss, x)) < tol
    for name, p in layer.parameters().items():
        assert rel_err(grads[name], numeric_grad(loss, p)) < tol, name


@pytest.mark.parametrize("kernel, stride, padding", GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_gradients_match_central_differences(kernel, stride, padding, bias):
    conv = nn.Conv2d(3, 4, kernel, stride, padding, bias=bias, rng=0)
    if bias:
        conv.b[...] = RNG.normal(size=4)
    check_layer(conv, RNG.normal(size=(2, 3, 6, 5)))


@pytest.mark.parametrize("kernel, stride, padding", GEOMETRIES)
def test_max_pool_gradients_match_central_differences(kernel, stride, padding):
    # distinct values, far apart compared with the step of the central differences: no window changes its maximum
    x = RNG.permutation(2 * 3 * 6 * 5).reshape(2, 3, 6, 5) * 0.01
    check_layer(nn.MaxPool2d(kernel, stride, padding), x)


def test_conv2d_by_its_definition():
    """y[n, o, i, j] = b[o] + sum over c, u, v of W[o, c, u, v] * xpad[n, c, i*s + u, j*s + v], written out."""
    x, conv = RNG.normal(size=(2, 2, 5, 4)), nn.Conv2d(2, 3, (2, 3), 2, 1, rng=0)
    conv.b[...] = RNG.normal(size=3)
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected = np.zeros((2, 3, 3, 2))
    for n, o, i, j in np.ndindex(expected.shape):
        expected[n, o, i, j] = conv.b[o] + np.sum(conv.W[o] * xpad[n, :, 2 * i:2 * i + 2, 2 * j:2 * j + 3])
    np.testing.assert_allclose(conv.forward(x), expected, rtol=1e-13, atol=1e-14)


def test_flatten_and_back():
    x = RNG.normal(size=(3, 2, 4, 5))
    flat = nn.Flatten()
    y = flat.forward(x)
    np.testing.assert_array_equal(y, x.reshape(3, 40))
    np.testing.assert_array_equal(flat.backward(2 * y), 2 * x)


def test_a_small_cnn_learns_a_separable_pattern():
    # Bright left half against bright right half: after a few SGD steps, the loss falls and the classes separate.
    x = RNG.normal(0, 0.3, (32, 1, 6, 6))
    y = np.arange(32) % 2
    x[y == 0, :, :, :3] += 1
    x[y == 1, :, :, 3:] += 1
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=0), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Dense(36, 2, rng=1))
    opt = nn.SGD(model, 0.1)
    losses = [nn.train_step(model, opt, nn.softmax_cross_entropy, x, y) for _ in range(60)]
    assert losses[-1] < 0.2 * losses[0]
    assert (model.eval().forward(x).argmax(axis=1) == y).all()


def test_conv2d_default_init_has_keras_glorot_scale():
    # Glorot-uniform over fan-in c*kh*kw and fan-out o*kh*kw: the bound and a variance of bound^2 / 3
    conv = nn.Conv2d(16, 32, 3, rng=0)
    bound = np.sqrt(6 / ((16 + 32) * 9))
    assert np.abs(conv.W).max() <= bound
    assert conv.W.var() == pytest.approx(bound ** 2 / 3, rel=0.05)
    assert conv.W.shape == (32, 16, 3, 3) and not conv.b.any()


# --- against PyTorch ----------------------------------------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("kernel, stride, padding", GEOMETRIES)
def test_conv2d_matches_torch(kernel, stride, padding, one_thread):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, conv = RNG.normal(size=(3, 2, 7, 6)), nn.Conv2d(2, 5, kernel, stride, padding, rng=0)
    conv.b[...] = RNG.normal(size=5)
    y = conv.forward(x)
    dy = RNG.normal(size=y.shape)
    dx = conv.backward(dy)
    xt, Wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, conv.W, conv.b))
    yt = F.conv2d(xt, Wt, bt, stride=stride, padding=padding)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-13)
    for ours, theirs in ((dx, xt), (conv.dW, Wt), (conv.db, bt)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.torch
@pytest.mark.parametrize("kernel, stride, padding", [*GEOMETRIES, (3, 2, 1)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_matches_torch(kernel, stride, padding, ties, one_thread):
    torch = pytest.importorskip("torch")
    # with ties (few distinct values, as after a ReLU), the gradient must go to the same entry as PyTorch's
    x = RNG.integers(0, 3, (3, 2, 7, 6)).astype(float) if ties else RNG.normal(size=(3, 2, 7, 6))
    pool = nn.MaxPool2d(kernel, stride, padding)
    y = pool.forward(x)
    dy = RNG.normal(size=y.shape)
    dx = pool.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, kernel, stride, padding)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    # overlapping windows add in another order than PyTorch; a gradient sent to another entry would be O(1) off
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-13, atol=1e-15)


# --- refusals -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: nn.Conv2d(0, 4, 3), "in_channels: expected a positive integer; got 0"),
    (lambda: nn.Conv2d(3, 4, (3, 0)), r"kernel_size: expected an integer >= 1 or a pair .*got \(3, 0\)"),
    (lambda: nn.Conv2d(3, 4, 3, stride=1.5), "stride: expected an integer >= 1 .*got 1.5"),
    (lambda: nn.Conv2d(3, 4, 3, padding=-1), "padding: expected an integer >= 0 .*got -1"),
    (lambda: nn.Conv2d(3, 4, 3, padding=(1, 1, 1)), r"padding: .*got \(1, 1, 1\)"),
    (lambda: nn.MaxPool2d(2, padding=2), r"padding: expected at most half of kernel_size \(2, 2\); got 2"),
    (lambda: nn.MaxPool2d(True), "kernel_size: .*got True"),
])
def test_bad_options_are_refused_by_name(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("layer", [nn.Conv2d(3, 4, 3, rng=0), nn.MaxPool2d(3)])
def test_bad_inputs_are_refused_and_leave_the_last_forward(layer):
    x = RNG.normal(size=(2, 3, 5, 5))
    y = layer.forward(x)
    channels = "3" if isinstance(layer, nn.Conv2d) else "C"
    with pytest.raises(ValueError, match=rf"x: .* expects NCHW input of shape \(N, {channels}, H, W\); got \(2, 3, 5\)"):
        layer.forward(x[:, :, 0])
    with pytest.raises(ValueError, match=r"x: .* expects H \+ 2\*0 >= 3 and W \+ 2\*0 >= 3 .*got shape \(2, 3, 2, 5\)"):
        layer.forward(x[:, :, :2])
    with pytest.raises(TypeError, match="x: expected an array of real numbers; got dtype <U1"):
        layer.forward(np.full((2, 3, 5, 5), "a"))
    with pytest.raises(ValueError, match=re.escape(f"expects the shape of the last forward's output {y.shape}; got (2, 3, 5, 5)")):
        layer.backward(np.ones((2, 3, 5, 5)))
    dx = layer.backward(np.ones(y.shape))  # the refused calls left the cache of the good forward
    assert dx.shape == x.shape
    if isinstance(layer, nn.Conv2d):
        with pytest.raises(ValueError, match=r"expects NCHW input of shape \(N, 3, H, W\); got \(2, 4, 5, 5\)"):
            layer.forward(np.ones((2, 4, 5, 5)))


@pytest.mark.parametrize("layer", [nn.Conv2d(1, 1, 1), nn.MaxPool2d(2), nn.Flatten()])
def test_backward_before_forward(layer):
    with pytest.raises(RuntimeError, match=f"{type(layer).__name__}.backward: call forward first"):
        layer.backward(np.ones((1, 1, 1, 1)))


def test_flatten_refuses_a_lone_axis():
    with pytest.raises(ValueError, match=r"x: Flatten expects a batch axis and at least one more; got shape \(3,\)"):
        nn.Flatten().forward(np.ones(3))
