"""Every catalogue module (NumPy and Numba backends) against PyTorch's functional normalizations.

For each spec in ``symbn.codegen.catalogue.CATALOG`` the generated module ``generated/{spec.name}_{backend}.py`` is run next to
``F.batch_norm`` / ``F.layer_norm`` / ``F.instance_norm`` / ``F.group_norm`` / ``F.rms_norm`` on the same data, and
y, the saved statistics, dx/dgamma/dbeta (PyTorch: autograd with the same upstream gradient dy) and the running
statistics after one update are compared: float64 tightly, float32 loosely (PyTorch computes in float32, the module
accumulates in float64).

Only batch norm keeps running statistics (its statistics do not vary along the batch axis). Layer, group, instance
and RMS norm keep none, as PyTorch's functional ops (and its modules by default) keep none: their eval mode is the
training computation, so forward_eval is compared with the same op and the eval backward is backward() with the
statistics forward_train returns.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
F = torch.nn.functional

from helpers import BACKENDS, GENERATED, catalogue_module  # noqa: E402
from symbn.codegen.catalogue import CATALOG  # noqa: E402
from symbn.core.spec import LAYOUTS, PRESETS  # noqa: E402

# Largest allowed disagreement, relative to the largest magnitude of the PyTorch value (per output).
TOL = {np.float64: 1e-10, np.float32: 1e-5}
# Worst relative disagreement seen per (dtype, output kind); printed at the end of the module (pytest -s).
WORST: dict[tuple[str, str], float] = {}


def shape_for(spec) -> tuple[int, ...]:
    """(4, 8, 5, 3) for NCHW and the same sizes for other layouts; channels at least 2 per group."""
    layout = LAYOUTS[spec.layout]
    shape = [0] * layout.ndim
    shape[layout.batch] = 4
    shape[layout.channel] = max(8, 2 * (spec.groups or 1))
    for axis, n in zip(layout.spatial, {0: (), 1: (5,), 2: (5, 3), 3: (3, 4, 2)}[len(layout.spatial)]):
        shape[axis] = n
    return tuple(shape)


# --- PyTorch side -------------------------------------------------------------------------------------------------
# Each adapter maps a spec onto PyTorch and answers, for torch tensors x, gamma, beta (requires_grad) and running
# statistics (in the module's shapes; none but for batch norm):
#   train(x, gamma, beta, running) -> (y, saved statistics, running statistics after the update)
#   eval(x, gamma, beta, running) -> y
# where ``saved`` is in the module's SAVED order and shape, and the running statistics in the module's shapes.


class BatchNorm:
    """F.batch_norm on x with the channel axis moved to 1; saved mean/invstd from native_batch_norm."""

    def __init__(self, spec):
        self.channel = LAYOUTS[spec.layout].channel
        self.eps, self.momentum = spec.eps, spec.momentum

    def train(self, x, gamma, beta, running):
        xc = x.movedim(self.channel, 1)
        rm, rv = (r.clone() for r in running)
        y = F.batch_norm(xc, rm, rv, gamma, beta, training=True, momentum=self.momentum, eps=self.eps)
        _, mean, invstd = torch.native_batch_norm(xc.detach(), gamma.detach(), beta.detach(), None, None, True,
                                                  self.momentum, self.eps)
        return y.movedim(1, self.channel), (mean, invstd), (rm, rv)

    def eval(self, x, gamma, beta, running):
        y = F.batch_norm(x.movedim(self.channel, 1), *running, gamma, beta, training=False, eps=self.eps)
        return y.movedim(1, self.channel)


class PerSample:
    """The normalizations without running statistics: eval mode is the training computation (the op on the input's
    own statistics), and no running statistics come back from training."""

    def eval(self, x, gamma, beta, running):
        assert not running, "no running statistics where the statistics are per sample"
        return self.train(x, gamma, beta, running)[0]


class InstanceNorm(PerSample):
    """F.instance_norm without running statistics (PyTorch's default, track_running_stats=False; symbn.layers'
    InstanceNorm(track_running_stats=True) is tested in tests/train/test_conventions.py)."""

    def __init__(self, spec):
        if LAYOUTS[spec.layout].channel != 1:
            pytest.skip(f"{spec.name}: F.instance_norm needs the channel axis at 1")
        self.eps = spec.eps

    def train(self, x, gamma, beta, running):
        n, c = x.shape[:2]
        y = F.instance_norm(x, None, None, gamma, beta, use_input_stats=True, eps=self.eps)
        # PyTorch runs instance norm as a batch norm over (1, N*C, spatial...): its saved mean/invstd.
        _, mean, invstd = torch.native_batch_norm(x.detach().reshape(1, n * c, -1), None, None, None, None, True,
                                                  0.1, self.eps)
        return y, (mean.reshape(n, c), invstd.reshape(n, c)), ()


class LayerNorm(PerSample):
    """F.layer_norm over the trailing reduced axes; saved mean/rstd from native_layer_norm."""

    def __init__(self, spec):
        if spec.reduce_axes != tuple(range(spec.ndim - len(spec.reduce_axes), spec.ndim)):
            pytest.skip(f"{spec.name}: F.layer_norm normalizes trailing axes only; reduce axes {spec.reduce_axes}")
        if spec.param_axes != spec.reduce_axes:
            pytest.skip(f"{spec.name}: F.layer_norm's weight spans the normalized shape; params {spec.param_axes}")
        self.k = len(spec.reduce_axes)
        self.eps = spec.eps

    def train(self, x, gamma, beta, running):
        shape = tuple(x.shape[x.ndim - self.k:])
        y = F.layer_norm(x, shape, gamma, beta, self.eps)
        _, mean, rstd = torch.native_layer_norm(x.detach(), shape, gamma.detach(), beta.detach(), self.eps)
        lead = x.shape[: x.ndim - self.k]
        return y, (mean.reshape(lead), rstd.reshape(lead)), ()


class GroupNorm(PerSample):
    """F.group_norm(num_groups=spec.groups); saved mean/rstd (N, G) from native_group_norm."""

    def __init__(self, spec):
        if LAYOUTS[spec.layout].channel != 1:
            pytest.skip(f"{spec.name}: F.group_norm needs the channel axis at 1")
        self.groups, self.eps = spec.groups, spec.eps

    def train(self, x, gamma, beta, running):
        n, c = x.shape[:2]
        y = F.group_norm(x, self.groups, gamma, beta, self.eps)
        _, mean, rstd = torch.native_group_norm(x.detach(), gamma.detach(), beta.detach(), n, c,
                                                x[0, 0].numel(), self.groups, self.eps)
        return y, (mean, rstd), ()


class RMSNorm(LayerNorm):
    """F.rms_norm over the trailing reduced axes; saved 1/rms from aten._fused_rms_norm (or by hand)."""

    def train(self, x, gamma, beta, running):
        shape = list(x.shape[x.ndim - self.k:])
        y = F.rms_norm(x, shape, gamma, self.eps)
        lead = x.shape[: x.ndim - self.k]
        if hasattr(torch.ops.aten, "_fused_rms_norm"):
            irms = torch.ops.aten._fused_rms_norm(x.detach(), shape, gamma.detach(), self.eps)[1]
        else:
            irms = torch.rsqrt(x.detach().reshape(*lead, -1).pow(2).mean(-1) + self.eps)
        return y, (irms.reshape(lead),), ()


ADAPTERS = {"batch": BatchNorm, "layer": LayerNorm, "instance": InstanceNorm, "group": GroupNorm, "rms": RMSNorm}


def adapter(spec):
    if spec.preset not in ADAPTERS:
        pytest.skip(f"{spec.name}: no PyTorch functional op for preset {spec.preset!r}")
    if spec.ddof or spec.running != "pytorch" or not spec.scale or spec.center != PRESETS[spec.preset].center:
        pytest.skip(f"{spec.name}: PyTorch has no counterpart for non-default options")
    return ADAPTERS[spec.preset](spec)


# --- data and comparison ------------------------------------------------------------------------------------------


def data(spec, module, dtype, seed=0):
    """x, dy, parameters (dtype of x) and running statistics (the module's shapes; none but for batch norm)."""
    rng = np.random.default_rng(seed)
    shape = shape_for(spec)
    pshape = tuple(shape[a] for a in spec.param_axes)
    d = dict(x=rng.normal(0.3, 2.0, size=shape).astype(dtype), dy=rng.normal(size=shape).astype(dtype),
             gamma=rng.normal(1.0, 0.5, size=pshape).astype(dtype),
             beta=rng.normal(0.0, 0.5, size=pshape).astype(dtype))
    stat_shape = module.forward_train(d["x"], *params(module, d))[1].shape
    assert bool(module.RUNNING) == spec.tracks_running == (spec.preset == "batch")
    d["running"] = [(rng.uniform(0.5, 2.0, size=stat_shape) if "mu" not in name else rng.normal(size=stat_shape))
                    .astype(dtype) for name in module.RUNNING]
    return d


def params(module, d):
    """The parameters forward_train takes (RMS norm has no beta)."""
    names = inspect.signature(module.forward_train).parameters
    return [d[p] for p in ("gamma", "beta") if p in names]


def to_torch(a, grad=False):
    return torch.tensor(np.array(a), requires_grad=grad)


def check(kind, got, want, dtype, got_dtype=None):
    """*got* within the tolerance of *dtype* (that of x) of PyTorch's *want*, and of dtype *got_dtype* (default:
    *dtype*; the saved statistics are float64 whatever the input's dtype)."""
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    got = np.asarray(got)
    got_dtype = np.dtype(dtype if got_dtype is None else got_dtype)
    assert got.shape == want.shape, f"{kind}: shape {got.shape}, PyTorch {want.shape}"
    assert got.dtype == got_dtype, f"{kind}: dtype {got.dtype}, expected {got_dtype}"
    assert np.all(np.isfinite(got)), f"{kind}: non-finite values"
    err = float(np.max(np.abs(got.astype(np.float64) - want)) / max(np.max(np.abs(want)), 1e-30))
    key = (np.dtype(dtype).name, kind)
    WORST[key] = max(WORST.get(key, 0.0), err)
    assert err <= TOL[dtype], f"{kind}: relative disagreement with PyTorch {err:.2e} > {TOL[dtype]:.0e}"


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if WORST:
        print("\nlargest relative disagreement with PyTorch:")
        for (dtype, kind), err in sorted(WORST.items()):
            print(f"  {dtype:<8} {kind:<12} {err:.2e}")


CASES = [pytest.param(spec, backend, dtype, id=f"{spec.name}-{backend}-{np.dtype(dtype).name}")
         for spec in CATALOG for backend in BACKENDS for dtype in (np.float64, np.float32)]


def test_catalogue_modules_are_all_mapped():
    """Adding a catalogue entry adds tests: each has both generated files, and those there are are checked."""
    for spec in CATALOG:
        for backend in BACKENDS:
            assert (GENERATED / f"{spec.name}_{backend}.py").is_file(), (spec.name, backend)
    assert {spec.preset for spec in CATALOG} <= set(ADAPTERS)


@pytest.mark.parametrize("spec, backend, dtype", CASES)
def test_train(spec, backend, dtype, path):
    """forward_train (y, saved statistics, running update) and backward (dx, dgamma, dbeta) against autograd."""
    ref = adapter(spec)
    module = path(catalogue_module(spec.name, backend))
    assert (module.EPS, getattr(module, "MOMENTUM", None)) == (spec.eps, spec.momentum)
    d = data(spec, module, dtype)
    running = [r.copy() for r in d["running"]]
    y, *saved = module.forward_train(d["x"], *params(module, d), *running)
    grads = module.backward(d["dy"], d["x"], d["gamma"], *saved)

    x, gamma, beta = (to_torch(d[k], grad=True) for k in ("x", "gamma", "beta"))
    ty, tsaved, trunning = ref.train(x, gamma, beta, [to_torch(r) for r in d["running"]])
    ty.backward(to_torch(d["dy"]))
    tgrads = [x.grad, gamma.grad] + ([beta.grad] if len(grads) == 3 else [])

    check("y", y, ty, dtype)
    for name, got, want in zip(module.SAVED, saved, tsaved):
        check(name, got, want, dtype, np.float64)
    for name, got, want in zip(("dx", "dgamma", "dbeta"), grads, tgrads):
        check(name, got, want, dtype)
    assert len(trunning) == len(module.RUNNING)
    for name, got, want in zip(module.RUNNING, running, trunning):
        check(name, got, want, dtype)


@pytest.mark.parametrize("spec, backend, dtype", CASES)
def test_eval(spec, backend, dtype, path):
    """forward_eval and its backward against the eval-mode op and autograd: backward_eval (the running statistics held
    constant) for batch norm; elsewhere eval mode is training's, and its backward is backward() with the statistics
    forward_train returns."""
    ref = adapter(spec)
    module = path(catalogue_module(spec.name, backend))
    d = data(spec, module, dtype, seed=1)
    before = [r.copy() for r in d["running"]]
    y = module.forward_eval(d["x"], *params(module, d), *d["running"])
    if module.RUNNING:
        grads = module.backward_eval(d["dy"], d["x"], d["gamma"], *d["running"])
    else:
        assert not hasattr(module, "backward_eval")
        grads = module.backward(d["dy"], d["x"], d["gamma"], *module.forward_train(d["x"], *params(module, d))[1:])
    for r, b in zip(d["running"], before):
        np.testing.assert_array_equal(r, b)  # eval mode never updates running statistics

    x, gamma, beta = (to_torch(d[k], grad=True) for k in ("x", "gamma", "beta"))
    ty = ref.eval(x, gamma, beta, [to_torch(r) for r in d["running"]])
    ty.backward(to_torch(d["dy"]))
    tgrads = [x.grad, gamma.grad] + ([beta.grad] if len(grads) == 3 else [])

    check("y eval", y, ty, dtype)
    for name, got, want in zip(("dx eval", "dgamma eval", "dbeta eval"), grads, tgrads):
        check(name, got, want, dtype)
