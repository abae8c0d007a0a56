"""Layers' double_backward: directional differences of backward, eval mode, bad input, and the README's gradient
penalty example checked against finite differences of the penalty."""

from __future__ import annotations

import re

import numpy as np
import pytest

from helpers import ROOT
from symbn.layers import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm

LAYERS = {
    "batch_nchw": (lambda: BatchNorm(4, "NCHW"), (5, 4, 3, 2)),
    "batch_keras_channels_last": (lambda: BatchNorm.keras(4), (7, 3, 4)),
    "layer": (lambda: LayerNorm(6), (5, 6)),
    "group": (lambda: GroupNorm(2, 4), (3, 4, 3, 2)),
    "rms": (lambda: RMSNorm(6), (5, 6)),
    "instance": (lambda: InstanceNorm(4, affine=True), (3, 4, 3, 3)),
}


def derivative(f, h=1e-3):
    """d/dt f(t) at 0, fourth order."""
    return (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", LAYERS)
def test_double_backward_is_the_derivative_of_the_penalty(name, train):
    make, shape = LAYERS[name]
    layer = make()
    rng = np.random.default_rng(1)
    x, dy, ggx = (rng.normal(size=shape) for _ in range(3))
    gggamma, ggbeta = rng.normal(size=layer.gamma.shape), rng.normal(size=layer.gamma.shape)
    if not train:
        layer.forward(x)  # running statistics away from their start
        layer.eval()
    has_beta = layer.beta is not None
    directions = [rng.normal(size=shape), rng.normal(size=shape), rng.normal(size=layer.gamma.shape)]

    def penalty(t):
        layer.gamma[...] = gamma0 + t * directions[2]
        layer.forward(x + t * directions[1])
        dx = layer.backward(dy + t * directions[0])
        dgamma = layer.dgamma if "gamma" in layer.trained else None
        total = float(np.sum(ggx * dx))
        if dgamma is not None:
            total += float(np.sum(gggamma * dgamma))
        if has_beta and "beta" in layer.trained:
            total += float(np.sum(ggbeta * layer.dbeta))
        return total

    gamma0 = layer.gamma.copy()
    numeric = derivative(penalty)
    layer.gamma[...] = gamma0
    layer.forward(x)
    layer.backward(dy)
    trained = layer.trained
    out = layer.double_backward(ggx, gggamma if "gamma" in trained else None,
                                ggbeta if has_beta and "beta" in trained else None)
    exact = sum(float(np.sum(o * d)) for o, d in zip(out, directions))
    assert abs(exact - numeric) <= 1e-7 * abs(numeric)


def test_double_backward_needs_a_backward_and_checks_its_input():
    bn = BatchNorm(3)
    with pytest.raises(RuntimeError, match="call forward and backward first"):
        bn.double_backward(np.zeros((4, 3)))
    x = np.random.default_rng(0).normal(size=(4, 3))
    bn.forward(x)
    with pytest.raises(RuntimeError, match="call forward and backward first"):
        bn.double_backward(np.zeros((4, 3)))
    bn.backward(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"ggx: expected the shape of the last forward's input \(4, 3\)"):
        bn.double_backward(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"gggamma: expected the shape of gamma \(3,\)"):
        bn.double_backward(np.zeros((4, 3)), np.zeros(4))
    rms = RMSNorm(3)
    rms.forward(x)
    rms.backward(x)
    with pytest.raises(ValueError, match="ggbeta: expected None"):
        rms.double_backward(x, None, np.zeros(3))


def test_the_readme_gradient_penalty():
    block = re.search(r"```python\n(# gradient penalty\n.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    env: dict = {}
    exec(compile(block, "README.md", "exec"), env)
    bn, x, w = env["bn"], env["x"], env["w"]
    gamma0 = bn.gamma.copy()

    def penalty_at(dgamma=0.0, dx=0.0):
        bn.gamma[...] = gamma0 + dgamma
        bn.forward(x + dx)
        return float(np.sum(bn.backward(w) ** 2))

    rng = np.random.default_rng(3)
    u, v = rng.normal(size=gamma0.shape), rng.normal(size=x.shape)
    assert env["penalty"] == pytest.approx(penalty_at(), rel=1e-12)
    assert float(np.sum(env["dpenalty_dgamma"] * u)) == pytest.approx(derivative(lambda t: penalty_at(dgamma=t * u)),
                                                                      rel=1e-7)
    assert float(np.sum(env["hvp"] * v)) == pytest.approx(derivative(lambda t: penalty_at(dx=t * v)), rel=1e-7)
