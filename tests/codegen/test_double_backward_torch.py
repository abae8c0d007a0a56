"""double_backward against PyTorch's double backward (autograd.grad twice, create_graph=True) through F.batch_norm,
F.layer_norm, F.instance_norm, F.group_norm and F.rms_norm: random shapes, every catalogue layout, non-contiguous
inputs, float64 within 1e-10 and float32 within 1e-4 (relative to the largest magnitude).

PyTorch's reference runs in float64 on the same values for both dtypes: its own float32 double backward loses digits
to cancellation at small batches (batch norm NC at batch 2: 1e-3 relative error in gx against its float64 result,
1e-7 at batch 4), which would measure PyTorch rather than symbn."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
F = torch.nn.functional

from helpers import BACKENDS, catalogue_module  # noqa: E402
from symbn.codegen.catalogue import CATALOG  # noqa: E402
from symbn.core.spec import LAYOUTS  # noqa: E402

TOL = {np.float64: 1e-10, np.float32: 1e-4}


def forward(spec):
    """y(x, gamma, beta) in PyTorch for the spec, x in the spec's layout."""
    channel = LAYOUTS[spec.layout].channel
    eps = spec.eps
    if spec.preset == "batch":
        return lambda x, g, b: F.batch_norm(x.movedim(channel, 1), None, None, g, b, training=True,
                                            eps=eps).movedim(1, channel)
    if spec.preset == "layer":
        return lambda x, g, b: F.layer_norm(x, x.shape[1:], g.reshape(x.shape[1:]), b.reshape(x.shape[1:]), eps)
    if spec.preset == "instance":
        return lambda x, g, b: F.instance_norm(x, weight=g, bias=b, use_input_stats=True, eps=eps)
    if spec.preset == "group":
        return lambda x, g, b: F.group_norm(x, spec.groups, g, b, eps)
    if spec.preset == "rms":
        return lambda x, g, b: F.rms_norm(x, x.shape[1:], g, eps)
    raise AssertionError(spec.name)


def shape_for(spec, rng):
    layout = LAYOUTS[spec.layout]
    # sizes from 3: with two values per statistic every xhat is +-1 and gx cancels down to the rounding of float32
    # statistics (a 2e-4 relative difference in gx from PyTorch's float64 result, seen for batch NC)
    shape = [int(rng.integers(3, 6)) for _ in range(layout.ndim)]
    shape[layout.channel] = 2 * (spec.groups or 1) * int(rng.integers(1, 3))
    return tuple(shape)


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", CATALOG, ids=lambda s: s.name)
def test_double_backward_matches_pytorch(spec, backend, dtype):
    m = catalogue_module(spec.name, backend)
    rng = np.random.default_rng(zlib.crc32(spec.name.encode()))  # shapes drawn per spec, the same every run
    shape = shape_for(spec, rng)
    pshape = tuple(shape[a] for a in spec.param_axes)
    # a non-contiguous x: every other element of a wider array along the last axis
    x = rng.normal(0.3, 1.7, shape[:-1] + (2 * shape[-1],)).astype(dtype)[..., ::2]
    dy, ggx = (rng.normal(size=shape).astype(dtype) for _ in range(2))
    gamma, beta, gggamma, ggbeta = (rng.normal(1.0, 0.4, pshape) for _ in range(4))
    has_beta = spec.center
    # PyTorch
    def tensor(a, grad=False):
        return torch.tensor(np.asarray(a, dtype=dtype).astype(np.float64), requires_grad=grad)

    tx, tdy, tg = tensor(np.ascontiguousarray(x), True), tensor(dy, True), tensor(gamma, True)
    tb = tensor(beta, True) if has_beta else None
    y = forward(spec)(tx, tg, tb)
    wrt = (tx, tg) + ((tb,) if has_beta else ())
    grads = torch.autograd.grad(y, wrt, tdy, create_graph=True)
    upstream = (tensor(ggx), tensor(gggamma)) + ((tensor(ggbeta),) if has_beta else ())
    penalty = sum((u * g).sum() for u, g in zip(upstream, grads))
    want = [t.detach().numpy() for t in torch.autograd.grad(penalty, (tdy, tx, tg))]
    # symbn
    gamma, beta, gggamma, ggbeta = (np.asarray(a, dtype=dtype).astype(np.float64) for a in (gamma, beta, gggamma,
                                                                                            ggbeta))
    params = (gamma, beta) if has_beta else (gamma,)
    _, *saved = m.forward_train(x, *params)
    got = m.double_backward(ggx, gggamma, *((ggbeta,) if has_beta else ()), dy, x, gamma, *saved)
    for name, g, w in zip(("gdy", "gx", "ggamma"), got, want):
        assert g.dtype == dtype
        assert rel(g, w) <= TOL[dtype], (name, rel(g, w))
