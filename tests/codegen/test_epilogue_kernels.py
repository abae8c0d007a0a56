"""Fused epilogues in the generated kernels: relu and a residual add after every preset, and a max() custom.

symbn check's central differences and Taylor test on both backends (the double backward's included); PyTorch's
unfused sequence (its normalization, the add, relu, with autograd, and create_graph twice for the second order) on
random shapes, both dtypes, non-contiguous inputs, training and eval mode; the bad residual refused with nothing
written."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import BACKENDS
from symbn import load, make, preset
from symbn.codegen import check

SPECS = [preset("batch", "NCHW", epilogue="add_relu"), preset("batch", "NHWC", epilogue="relu"),
         preset("batch", "NC", epilogue="add_relu"), preset("layer", "NC", epilogue="relu"),
         preset("group", "NHWC", groups=2, epilogue="add_relu"), preset("instance", "NCHW", epilogue="relu"),
         preset("rms", "NC", epilogue="add_relu")]
MAX = make("max(gamma*(x - mean(x))/sqrt(mean((x - mean(x))**2) + eps) + beta, 2*r) - r", axes=(0,), param_axes=(1,))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS + [MAX], ids=lambda s: s.name)
def test_symbn_check_passes(spec, backend):
    module = load(spec, backend)
    results = check.run(module)
    assert results and all(r.ok for r in results), [str(r) for r in results if not r.ok]
    assert any(r.name == "central differences dr" for r in results) == (spec.epilogue != "relu")
    assert any(r.name == "double backward, along a direction" for r in results)


def test_check_inputs_keep_away_from_the_kinks_and_both_sides_occur():
    module = load(SPECS[0], "numpy")
    data = check.inputs(module)
    y = check.forward_y(module, data)
    assert 0.2 < np.mean(y > 0) < 0.8
    assert check._away_from_kinks(module, data)


def test_a_kernel_without_its_mask_fails_the_check(monkeypatch):
    module = load(SPECS[0], "numpy")
    backward = module.backward

    def unmasked(dy, x, r, gamma, beta, *saved, **options):  # dr = dy everywhere: the mask forgotten
        dx, dr, *rest = backward(dy, x, r, gamma, beta, *saved, **options)
        return (dx, np.array(dy, copy=True), *rest)

    monkeypatch.setattr(module, "backward", unmasked)
    failed = [r.name for r in check.run(module) if not r.ok]
    assert "central differences dr" in failed


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_residual_is_refused_and_nothing_is_written(backend):
    module = load(SPECS[0], backend)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6, 5, 3))
    gamma, beta = np.ones(6), np.zeros(6)
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match=r"^r: expected the shape of x \(4, 6, 5, 3\); got \(4, 6, 5\)"):
        module.forward_train(x, x[..., 0], gamma, beta, out=out)
    with pytest.raises(TypeError, match="^r: expected dtype float64; got float32"):
        module.forward_train(x, x.astype(np.float32), gamma, beta, out=out)
    with pytest.raises(ValueError, match="^out: expected an array of its own; got one sharing memory with r"):
        module.forward_train(x, out, gamma, beta, out=out)
    assert (out == 7.0).all()
    _, *saved = module.forward_train(x, x, gamma, beta)
    with pytest.raises(TypeError, match="missing 1 required positional argument"):
        module.backward(x, x, x, gamma, *saved)  # beta: the mask reads it


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_against_pytorch_unfused(spec, backend, dtype):
    torch = pytest.importorskip("torch")
    module = load(spec, backend)
    rng = np.random.default_rng(abs(hash((spec.name, backend))) % 2**32)
    shape = _shape(spec, rng)
    # non-contiguous views of larger arrays, as a training loop's slices are
    x = (rng.standard_normal(shape + (2,)) * 2 + 0.5).astype(dtype)[..., 0]
    r = rng.standard_normal(shape + (2,)).astype(dtype)[..., 1] if spec.epilogue == "add_relu" else None
    dy = rng.standard_normal(shape).astype(dtype)
    pshape = tuple(shape[a] for a in spec.param_axes)
    gamma = rng.uniform(0.5, 2, pshape).astype(dtype)
    beta = (rng.standard_normal(pshape) * 0.3).astype(dtype) if spec.center else None
    first = ([r] if r is not None else []) + [gamma] + ([beta] if beta is not None else [])
    y, *saved = module.forward_train(x, *first)
    grads = module.backward(dy, x, *first, *saved)
    ref_y, ref_grads = _torch(torch, spec, x, r, gamma, beta, dy)
    tolerance = 1e-10 if dtype == np.float64 else 1e-4
    assert _rel(y, ref_y) <= tolerance
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == dtype and _rel(got, want) <= tolerance
    if module.RUNNING:  # eval mode from running statistics, held constant
        running = [rng.uniform(-0.5, 0.5, pshape), rng.uniform(0.5, 1.5, pshape)]
        y = module.forward_eval(x, *first, *running)
        grads = module.backward_eval(dy, x, *first, *running)
        ref_y, ref_grads = _torch(torch, spec, x, r, gamma, beta, dy, running)
        assert _rel(y, ref_y) <= tolerance
        for got, want in zip(grads, ref_grads, strict=True):
            assert _rel(got, want) <= tolerance


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_double_backward_against_pytorch(spec, backend, dtype):
    """double_backward (and double_backward_eval) against PyTorch's create_graph twice through its normalization,
    the add and relu, on non-contiguous inputs: float64 within 1e-10, float32 within 1e-4, relative."""
    torch = pytest.importorskip("torch")
    module = load(spec, backend)
    rng = np.random.default_rng(abs(hash((spec.name, backend, "double"))) % 2**32)
    shape = _shape(spec, rng)
    x = (rng.standard_normal(shape + (2,)) * 2 + 0.5).astype(dtype)[..., 0]
    residual = spec.epilogue == "add_relu"
    r = rng.standard_normal(shape + (2,)).astype(dtype)[..., 1] if residual else None
    dy, ggx = (rng.standard_normal(shape + (2,)).astype(dtype)[..., k] for k in (0, 1))
    ggr = rng.standard_normal(shape).astype(dtype) if residual else None
    pshape = tuple(shape[a] for a in spec.param_axes)
    gamma = rng.uniform(0.5, 2, pshape).astype(dtype)
    beta = (rng.standard_normal(pshape) * 0.3).astype(dtype) if spec.center else None
    gggamma = rng.standard_normal(pshape)
    ggbeta = rng.standard_normal(pshape) if beta is not None else None
    first = ([r] if residual else []) + [gamma] + ([beta] if beta is not None else [])
    up = [ggx] + ([ggr] if residual else []) + [gggamma] + ([ggbeta] if beta is not None else [])
    tolerance = 1e-10 if dtype == np.float64 else 1e-4
    _, *saved = module.forward_train(x, *first)
    got = module.double_backward(*up, dy, x, *first, *saved)
    want = _torch(torch, spec, x, r, gamma, beta, dy, upstream=(ggx, ggr, gggamma, ggbeta))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype and _rel(g, w.numpy()) <= tolerance
    if module.RUNNING:  # eval mode: the statistics are running ones, held constant
        running = [rng.uniform(-0.5, 0.5, pshape), rng.uniform(0.5, 1.5, pshape)]
        got = module.double_backward_eval(*up, dy, x, *first, *running)
        want = _torch(torch, spec, x, r, gamma, beta, dy, running, upstream=(ggx, ggr, gggamma, ggbeta))
        for g, w in zip(got, want, strict=True):
            assert _rel(g, w.numpy()) <= tolerance


def test_a_double_backward_with_an_unmasked_residual_term_fails_the_check(monkeypatch):
    module = load(SPECS[0], "numpy")
    double = module.double_backward

    def unmasked(ggx, ggr, *rest, **options):  # gdy takes ggr everywhere: the mask on the residual's term forgotten
        gdy, *others = double(ggx, ggr, *rest, **options)
        return (gdy + ggr * (gdy == 0), *others)

    monkeypatch.setattr(module, "double_backward", unmasked)
    failed = [r.name for r in check.run(module) if not r.ok]
    assert failed == ["double backward, along a direction"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_refuses_a_bad_residual_or_its_upstream_gradient(backend):
    module = load(SPECS[0], backend)
    rng = np.random.default_rng(2)
    x, r, dy = (rng.standard_normal((4, 6, 5, 3)) for _ in range(3))
    gamma, beta = np.ones(6), np.zeros(6)
    _, *saved = module.forward_train(x, r, gamma, beta)
    with pytest.raises(ValueError, match=r"^ggr: expected the shape of x \(4, 6, 5, 3\); got \(4, 6, 5\)"):
        module.double_backward(x, r[..., 0], None, None, dy, x, r, gamma, beta, *saved)
    with pytest.raises(ValueError, match=r"^r: expected the shape of x"):
        module.double_backward(x, None, None, None, dy, x, r[:1], gamma, beta, *saved)
    out = (np.full_like(x, 7.0), np.full_like(x, 7.0))
    with pytest.raises(ValueError, match="^out_gdy: expected an array of its own; got one sharing memory with ggr"):
        module.double_backward(x, out[0], None, None, dy, x, r, gamma, beta, *saved, out=out)
    assert all((o == 7.0).all() for o in out)
    none = module.double_backward(x, None, None, None, dy, x, r, gamma, beta, *saved)
    zero = module.double_backward(x, np.zeros_like(x), np.zeros(6), np.zeros(6), dy, x, r, gamma, beta, *saved)
    for a, b in zip(none, zero, strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_epilogue_with_second_derivatives_has_no_double_backward():
    curved = make("relu(gamma*(x - mean(x))/sqrt(mean((x - mean(x))**2) + eps) + beta)*r", axes=(0,),
                  param_axes=(1,))
    module = load(curved, "numpy")
    assert hasattr(module, "backward") and not hasattr(module, "double_backward")


def _shape(spec, rng) -> tuple[int, ...]:
    n, c = int(rng.integers(2, 6)), 2 * int(rng.integers(1, 4))
    spatial = [int(rng.integers(2, 5)) for _ in range(spec.ndim - 2)]
    if spec.layout == "NHWC":
        return (n, *spatial, c)
    return (n, c, *spatial)


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(1.0, np.max(np.abs(b))))


def _torch(torch, spec, x, r, gamma, beta, dy, running=None, upstream=None):
    """PyTorch's normalization, residual add and relu in float64, with autograd: y and the gradients of x, r (where
    given) and the parameters; with *upstream* (ggx, ggr, gggamma, ggbeta, None where absent), the gradients of
    dy, x and gamma of the sum of those times the first-order gradients (create_graph, then grad again)."""
    F = torch.nn.functional

    def leaf(a):
        return None if a is None else torch.tensor(np.asarray(a, np.float64), requires_grad=True)

    xt, rt, gt, bt = leaf(x), leaf(r), leaf(gamma), leaf(beta)
    channels_last = spec.layout == "NHWC"
    xc = xt.movedim(-1, 1) if channels_last else xt
    if spec.preset == "batch":
        stats = [torch.tensor(s) for s in running] if running else [None, None]
        z = F.batch_norm(xc, *stats, gt, bt, training=running is None, eps=spec.eps)
    elif spec.preset == "group":
        z = F.group_norm(xc, spec.groups, gt, bt, spec.eps)
    elif spec.preset == "instance":
        z = F.instance_norm(xc, weight=gt, bias=bt, eps=spec.eps)
    elif spec.preset == "layer":
        z = F.layer_norm(xc, xc.shape[1:], gt, bt, spec.eps)
    else:
        z = F.rms_norm(xc, xc.shape[1:], gt, spec.eps)
    z = z.movedim(1, -1) if channels_last else z
    y = torch.relu(z + rt if rt is not None else z)
    leaves = [t for t in (xt, rt, gt, bt) if t is not None]
    dyt = leaf(dy)
    grads = torch.autograd.grad(y, leaves, dyt, create_graph=upstream is not None)
    if upstream is None:
        return y.detach().numpy(), [g.numpy() for g in grads]
    # the second order: L2 = sum of each upstream gradient times its first-order gradient, differentiated again
    weights = [u for u, t in zip(upstream, (xt, rt, gt, bt)) if t is not None]
    penalty = sum((leaf(u) * g).sum() for u, g in zip(weights, grads, strict=True))
    second = torch.autograd.grad(penalty, [dyt, xt] + [gt] * (gt is not None), allow_unused=True)
    return [torch.zeros_like(xt) if g is None else g.detach() for g in second]
