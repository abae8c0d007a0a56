"""Layers with a fused epilogue: BatchNorm(..., epilogue="add_relu") and friends against PyTorch's modules followed
by the add and relu; the residual's gradient as layer.dr; clear errors for a missing or stray residual."""

from __future__ import annotations

import numpy as np
import pytest

from symbn import layers


def test_relu_layer_equals_relu_of_the_plain_layer():
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((6, 4, 3, 2)), rng.standard_normal((6, 4, 3, 2))
    fused, plain = layers.BatchNorm(4, "NCHW", epilogue="relu"), layers.BatchNorm(4, "NCHW")
    y = fused.forward(x)
    z = plain.forward(x)
    assert np.allclose(y, np.maximum(z, 0), rtol=0, atol=1e-14)
    dx = fused.backward(dy)
    assert np.allclose(dx, plain.backward(dy * (z > 0)), rtol=0, atol=1e-13)
    assert np.allclose(fused.dbeta, (dy * (z > 0)).sum(axis=(0, 2, 3)))
    assert fused.dr is None and "epilogue='relu'" in repr(fused)


@pytest.mark.parametrize("make", [
    lambda: layers.BatchNorm(3, "NC", epilogue="add_relu"),
    lambda: layers.LayerNorm(3, epilogue="add_relu"),
    lambda: layers.RMSNorm(3, epilogue="add_relu"),
    lambda: layers.GroupNorm(1, 3, "NHWC", epilogue="add_relu"),
])
def test_the_residual_is_required_checked_and_its_gradient_kept(make):
    layer = make()
    rng = np.random.default_rng(1)
    shape = (5, 3) if not isinstance(layer, layers.GroupNorm) else (5, 2, 2, 3)
    x, r, dy = (rng.standard_normal(shape) for _ in range(3))
    with pytest.raises(TypeError, match="^r: .*expected an array like x; got None"):
        layer.forward(x)
    with pytest.raises(ValueError, match=r"^r: expected the shape of x"):
        layer.forward(x, r[:-1])
    y = layer.forward(x, r)
    layer.backward(dy)
    assert np.array_equal(layer.dr, dy * (y > 0))
    with pytest.raises(ValueError, match=r"^ggr: expected the shape of the last forward's input"):
        layer.double_backward(dy, ggr=r[:-1])
    # ggr reaches gdy through the mask only: the gradient of sum(ggr*dr) = sum(ggr*dy*mask) with respect to dy
    gdy, _, _ = layer.double_backward(np.zeros_like(x), ggr=r)
    assert np.array_equal(gdy, r * (y > 0))


def test_a_residual_without_add_relu_is_refused():
    with pytest.raises(TypeError, match="^r: .*takes no residual"):
        layers.BatchNorm(3, epilogue="relu").forward(np.ones((4, 3)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="epilogue: got 'gelu'"):
        layers.BatchNorm(3, epilogue="gelu")


@pytest.mark.torch
def test_a_residual_block_trains_as_pytorchs():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x, skip, dy = (rng.standard_normal((8, 4, 5, 5)) for _ in range(3))
    ours = layers.BatchNorm(4, "NCHW", epilogue="add_relu")
    theirs = torch.nn.BatchNorm2d(4, dtype=torch.float64)
    xt, st = (torch.tensor(a, requires_grad=True) for a in (x, skip))
    for _ in range(2):  # the running statistics follow PyTorch's over two steps
        y = ours.forward(x, skip)
        dx = ours.backward(dy)
        yt = torch.relu(theirs(xt) + st)
        gx, gs, gg, gb = torch.autograd.grad(yt, [xt, st, theirs.weight, theirs.bias], torch.tensor(dy))
    assert np.allclose(y, yt.detach().numpy(), atol=1e-12)
    for got, want in ((dx, gx), (ours.dr, gs), (ours.dgamma, gg), (ours.dbeta, gb)):
        assert np.allclose(got, want.numpy(), atol=1e-11)
    assert np.allclose(ours.running_var, theirs.running_var.numpy(), atol=1e-14)
    ours.eval(), theirs.eval()
    y = ours.forward(x, skip)
    assert np.allclose(y, torch.relu(theirs(xt) + st).detach().numpy(), atol=1e-12)
