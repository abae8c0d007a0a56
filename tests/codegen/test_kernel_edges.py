"""Trust at the edges (issue 17): generated modules are right at extreme scales or refuse, and a refused call
changes nothing.

Representative catalogue modules (batch NCHW and NHWC, layer NC, group4 NCHW, RMS NC), both backends, against a
textbook reference in np.longdouble written here from the spec alone:

- numbers: inputs far from 1 in scale (float32 near 1e19 or 1e-30, float64 near 1e200 or 1e-300, tiny eps) give the
  reference's y, saved statistics, gradients and running statistics, the same on both backends; what is not
  representable (a float64 variance of 1e400) comes back as inf, never as a silent 0. float32 backward does not lose
  accuracy with the size of the mean (the saved statistics are float64);
- state: eps and momentum are checked per call; `out` may share memory with no argument as the caller gave it
  (views included), running statistics with no other argument nor each other; every check comes before the first
  write, so a refused call leaves every array as it was;
- a bounded property test over shapes, dtypes, views, NaN/inf, scales and aliasing: each call agrees with the
  reference, or is refused with every array unchanged.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from helpers import BACKENDS, SPECS, call, catalogue_module, functions, shape_of, stat_shape, takes
from symbn.codegen.store import import_path

NAMES = ("batch_nchw", "layer_nc", "group4_nchw", "rms_nc", "batch_nhwc")
RUNNING_NAMES = tuple(n for n in NAMES if SPECS[n].tracks_running)  # the others keep no running statistics
# float64 inputs near 1e200 need a wider type on the exact path; where long double is float64 they are not rescued
WIDE = np.finfo(np.longdouble).maxexp > np.finfo(np.float64).maxexp
TOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-12}


# --- the reference: the textbook formulas in long double, from the spec alone ---------------------------------------


def _split(spec, a):
    """*a* with a grouped channel axis split into (G, C/G), and the reduced axes of that view."""
    if not spec.groups:
        return a, tuple(spec.reduce_axes)
    c = spec.channel_axis
    view = a.reshape(a.shape[:c] + (spec.groups, a.shape[c] // spec.groups) + a.shape[c + 1:])
    return view, tuple(sorted([ax + (ax > c) for ax in spec.reduce_axes if ax != c] + [c + 1]))


def reference(spec, x, dy, gamma, beta, running, eps, momentum):
    """y, saved statistics, (dx, dgamma[, dbeta]) and running statistics after the update, in np.longdouble: each a
    pair (value, magnitude), the magnitude the same formula in absolute values, with x - mu as |x| + |mu| (the scale
    rounding errors are relative to: a mean of values of both signs, x - mu near a large mean, dx of a set of two,
    dgamma are sums that cancel)."""
    L = np.longdouble
    shape = x.shape
    pshape = tuple(shape[a] if a in spec.param_axes else 1 for a in range(len(shape)))
    g = np.broadcast_to(np.asarray(gamma, L).reshape(pshape), shape)
    xv, axes = _split(spec, np.asarray(x, L))
    dyv, _ = _split(spec, np.asarray(dy, L))
    gv, _ = _split(spec, g)
    M = int(np.prod([xv.shape[a] for a in axes]))
    sshape = stat_shape(spec, shape)

    def total(a):
        return a.sum(axis=axes, keepdims=True)

    dxhat = dyv * gv
    with np.errstate(all="ignore"):
        if spec.preset == "rms":
            ms = total(xv * xv) / M
            irms = 1 / np.sqrt(ms + L(eps))
            xhat = xv * irms
            xhat_size = abs(xhat)
            dx = irms * (dxhat - xhat * total(dxhat * xhat) / M)
            dx_size = irms * (abs(dxhat) + xhat_size * total(abs(dxhat) * xhat_size) / M)
            saved, batch = [(irms, irms)], [(ms, ms)]
        else:
            mu = total(xv) / M
            var = total((xv - mu) ** 2) / M
            istd = 1 / np.sqrt(var + L(eps))
            xhat = (xv - mu) * istd
            xhat_size = (abs(xv) + abs(mu)) * istd
            dx = istd / M * (M * dxhat - total(dxhat) - xhat * total(dxhat * xhat))
            dx_size = istd / M * (M * abs(dxhat) + total(abs(dxhat)) + xhat_size * total(abs(dxhat) * xhat_size))
            mu_size = total(abs(xv)) / M
            saved, batch = [(mu, mu_size), (istd, istd)], [(mu, mu_size), (var * M / (M - 1), var * M / (M - 1))]
        y, y_size = (gv * xhat).reshape(shape), (abs(gv) * xhat_size).reshape(shape)
        if beta is not None:
            b = np.asarray(beta, L).reshape(pshape)
            y, y_size = y + b, y_size + abs(b)
        nonparam = tuple(a for a in range(len(shape)) if a not in spec.param_axes)
        grads = [(dx.reshape(shape), dx_size.reshape(shape)),
                 ((dyv * xhat).reshape(shape).sum(axis=nonparam),
                  (abs(dyv) * xhat_size).reshape(shape).sum(axis=nonparam))]
        if beta is not None:
            grads.append((np.asarray(dy, L).sum(axis=nonparam), abs(np.asarray(dy, L)).sum(axis=nonparam)))
        m = L(momentum)
        new_running = [((1 - m) * np.asarray(r, L) + m * s.reshape(sshape),
                        (1 - m) * abs(np.asarray(r, L)) + m * size.reshape(sshape))
                       for r, (s, size) in zip(running, batch)]
    return ((y, y_size), [(s.reshape(sshape), size.reshape(sshape)) for s, size in saved], grads, new_running)


def assert_close(kind, got, want, dtype, strict_inf=True):
    """*got* (dtype *dtype*) equals the long-double reference *want* = (value, magnitude) rounded: within TOL
    relative to the largest finite magnitude; non-finite exactly where the value is not representable in float64,
    and (*strict_inf*: the input was finite) inf where it overflows, never 0."""
    got = np.asarray(got)
    with np.errstate(over="ignore", invalid="ignore"):
        value, size = (np.asarray(a).astype(np.float64) for a in want)
    assert got.shape == value.shape, f"{kind}: shape {got.shape}, expected {value.shape}"
    bad = ~np.isfinite(value)
    where = np.argwhere(~np.isfinite(got))[:4].tolist()
    assert np.array_equal(~np.isfinite(got), bad), f"{kind}: non-finite at {where}, expected at {np.argwhere(bad)[:4]}"
    if strict_inf:
        np.testing.assert_array_equal(got[bad], value[bad], err_msg=f"{kind}: not the reference's inf")
    if bad.all():
        return
    scale = np.max(size[~bad & np.isfinite(size)], initial=0.0) or 1.0
    err = np.max(np.abs(got[~bad].astype(np.float64) - value[~bad])) / scale
    assert err <= TOL[np.dtype(dtype)], f"{kind}: relative error {err:.2e} > {TOL[np.dtype(dtype)]:.0e}"


# --- data -----------------------------------------------------------------------------------------------------------


def arguments(name, backend, dtype=np.float64, scale=1.0, offset=0.0, seed=0, shape=None):
    """A module and valid arguments for every function, by name: x = offset + scale*N(0, 1)."""
    spec, module = SPECS[name], catalogue_module(name, backend)
    rng = np.random.default_rng(seed)
    shape = shape or shape_of(spec)
    pshape = tuple(shape[a] for a in spec.param_axes)
    sshape = stat_shape(spec, shape)
    args = dict(x=(offset + scale * rng.normal(size=shape)).astype(dtype), dy=rng.normal(size=shape).astype(dtype),
                gamma=rng.normal(1.0, 0.5, size=pshape).astype(dtype))
    if takes(module, "forward_train", "beta"):
        args["beta"] = rng.normal(0.0, 0.5, size=pshape).astype(dtype)
    for r in module.RUNNING:
        args[r] = rng.uniform(0.5, 2.0, size=sshape) if ("var" in r or "ms" in r) else rng.normal(size=sshape)
    for s in module.SAVED:
        args[s] = rng.uniform(0.5, 2.0, size=sshape) if s.startswith("i") else rng.normal(size=sshape)
    return spec, module, args


def train_and_check(name, backend, args, eps, momentum=0.1, reference_args=None):
    """forward_train (updating copies of the running statistics) and backward from its saved statistics, checked
    against the reference; returns every output for comparisons between backends."""
    spec, module = SPECS[name], catalogue_module(name, backend)
    dtype = args["x"].dtype
    running = [args[r].copy() for r in module.RUNNING]
    y, *saved = call(module, "forward_train", {**args, **dict(zip(module.RUNNING, running))}, eps=eps,
                     **({"momentum": momentum} if module.RUNNING else {}))
    grads = call(module, "backward", {**args, **dict(zip(module.SAVED, saved))}, eps=eps)
    ref = reference_args or args
    ry, rsaved, rgrads, rrunning = reference(spec, ref["x"], ref["dy"], ref["gamma"], ref.get("beta"),
                                             [ref[r] for r in module.RUNNING], eps, momentum)
    assert y.dtype == dtype and all(s.dtype == np.float64 for s in saved) and all(g.dtype == dtype for g in grads)
    assert_close("y", y, ry, dtype)
    for s, got, want in zip(module.SAVED, saved, rsaved):
        assert_close(s, got, want, dtype)
    for g, got, want in zip(("dx", "dgamma", "dbeta"), grads, rgrads):
        assert_close(g, got, want, dtype)
    for r, got, want in zip(module.RUNNING, running, rrunning):
        assert_close(r, got, want, dtype)
    return [y, *saved, *grads, *running]


# --- numbers --------------------------------------------------------------------------------------------------------

# (dtype, scale, offset, eps): float32 products of x near 1e19 overflow, near 1e-30 underflow (with an eps below the
# variance); float64 the same near 1e200 and 1e-300; float32 near 1e-19 with the usual eps is ordinary but for x.
EXTREMES = {
    "float32 1e19": (np.float32, 1e19, 3e19, 1e-5),
    "float32 1e-30, eps 1e-60": (np.float32, 1e-30, 0.0, 1e-60),
    "float32 1e-19": (np.float32, 1e-19, 0.0, 1e-5),
    "float32 1e30": (np.float32, 1e30, 0.0, 1e-5),
    "float64 1e200": (np.float64, 1e200, 0.0, 1e-5),
    "float64 1e-300, eps 1e-300": (np.float64, 1e-300, 0.0, 1e-300),
    "float64 1e150": (np.float64, 1e150, 1e151, 1e-5),
}


@pytest.mark.parametrize("case", EXTREMES)
@pytest.mark.parametrize("name", NAMES)
def test_extreme_scales_agree_with_the_reference_on_both_backends(name, case, path):
    dtype, scale, offset, eps = EXTREMES[case]
    if dtype == np.float64 and max(scale, offset) > 1e154 and not WIDE:
        pytest.skip("long double is float64 here: float64 beyond 1e154 has no wider type to fall back on")
    outs = []
    for backend in BACKENDS:
        path(catalogue_module(name, backend))
        _, _, args = arguments(name, backend, dtype, scale, offset)
        with np.errstate(all="ignore"):
            outs.append(train_and_check(name, backend, args, eps))
    for a, b in zip(*outs):  # the backends agree as closely as each agrees with the reference
        finite = np.isfinite(b)
        np.testing.assert_array_equal(np.isfinite(a), finite)
        scale = np.max(np.abs(b[finite]), initial=0.0) or 1.0
        assert np.max(np.abs(a[finite] - b[finite]), initial=0.0) / scale <= 2 * TOL[np.dtype(dtype)]


@pytest.mark.skipif(not WIDE, reason="long double is float64 here: no wider type to fall back on")
@pytest.mark.parametrize("name", [n for n in NAMES if SPECS[n].preset != "rms"])
def test_a_variance_beyond_float64_comes_back_as_inf_never_as_zero(name):
    for backend in BACKENDS:
        spec, module, args = arguments(name, backend, np.float64, 1e200)
        running = [args[r].copy() for r in module.RUNNING]
        y, mu, istd = call(module, "forward_train", {**args, **dict(zip(module.RUNNING, running))})
        if running:  # batch norm: var ~ 1e400 is not a float64
            assert np.all(np.isinf(running[1])) and np.all(running[1] > 0)
        assert np.all(np.isfinite(y)) and np.all(istd > 0) and np.all(np.isfinite(istd))  # istd ~ 1e-200 is


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_ordinary_inputs_never_take_the_exact_path(name, backend, monkeypatch):
    """The check is per statistic; the exact path (slower) runs only when it fails."""
    _, module, args = arguments(name, backend, np.float32, 3.0, 10.0)

    def refuse(*a, **k):
        raise AssertionError("the exact path ran for an ordinary input")

    monkeypatch.setattr(module, "_exact_train", refuse)
    monkeypatch.setattr(module, "_exact_backward", refuse)
    monkeypatch.setattr(module, "_run", lambda kernel, arrays, args, out, wide=False: (
        refuse() if wide else kernel(*arrays, *args, out)))
    for dtype in (np.float32, np.float64):
        typed = {**args, "x": args["x"].astype(dtype), "dy": args["dy"].astype(dtype)}
        y, *saved = call(module, "forward_train", typed)
        for fn in functions(module)[1:]:
            call(module, fn, {**typed, **dict(zip(module.SAVED, saved))})


@pytest.mark.parametrize("kernels, case", [
    ("float64", "float64 1e200"), ("float64", "float64 1e-300, eps 1e-300"),
    ("one chunk", "float64 1e200"), ("one chunk", "float32 1e30"), ("one chunk", "float32 1e-30, eps 1e-60")])
@pytest.mark.parametrize("name", NAMES)
def test_numpy_small_path_hands_a_failed_step_to_the_exact_path(name, kernels, case, monkeypatch):
    """The NumPy small path raises on the IEEE flags its steps set (_guarded in the module), in its float64 kernels
    and in its passes over the input as one chunk (in the input's dtype, past _FLOAT64_UP_TO elements): x*x
    overflowing or underflowing sends forward_train on to the exact path, with nothing raised or warned and the
    caller's error state as it was, and with the results the large path gives."""
    dtype, scale, offset, eps = EXTREMES[case]
    if scale > 1e154 and not WIDE:
        pytest.skip("long double is float64 here: float64 beyond 1e154 has no wider type to fall back on")
    _, module, args = arguments(name, "numpy", dtype, scale, offset)
    assert args["x"].size <= module.SMALL
    if kernels == "one chunk":
        monkeypatch.setattr(module, "_FLOAT64_UP_TO", dict.fromkeys(module._FLOAT64_UP_TO, 0))
    else:
        assert args["x"].size <= module._FLOAT64_UP_TO[args["x"].dtype]
    exact, train = [], module._exact_train
    monkeypatch.setattr(module, "_exact_train", lambda *a: exact.append(1) or train(*a))
    outputs = []
    for small in (module.SMALL, 0):
        monkeypatch.setattr(module, "SMALL", small)
        running = {r: args[r].copy() for r in module.RUNNING}
        state = np.geterr()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y, *saved = call(module, "forward_train", {**args, **running}, eps=eps)
        assert exact, "forward_train should have gone on to the exact path"
        assert np.geterr() == state
        exact.clear()
        with np.errstate(all="ignore"):  # the large path's backward may warn where these values overflow
            grads = call(module, "backward", {**args, **dict(zip(module.SAVED, saved))}, eps=eps)
        outputs.append([y, *saved, *running.values(), *grads])
    for small, large in zip(*outputs):
        np.testing.assert_array_equal(np.isfinite(small), np.isfinite(large))
        finite = np.isfinite(large)
        np.testing.assert_allclose(small[finite], large[finite], rtol=1e-12, atol=0)


@pytest.mark.parametrize("offset", (1e2, 1e4, 1e6))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_float32_backward_accuracy_does_not_depend_on_the_mean(name, backend, offset, path):
    """dx from float32 x = offset + N(0, 1) against float64 arithmetic on the same values: with statistics saved in
    float32 it was 3e-5 off at a mean of 1e4 and 5e-3 at 1e6; float64 statistics keep it near float32's resolution."""
    path(catalogue_module(name, backend))
    _, module, args = arguments(name, backend, np.float32, 1.0, offset)
    y, *saved = call(module, "forward_train", args)
    assert all(s.dtype == np.float64 for s in saved)
    dx = call(module, "backward", {**args, **dict(zip(module.SAVED, saved))})[0]
    x64 = {**args, "x": args["x"].astype(np.float64), "dy": args["dy"].astype(np.float64)}
    y64, *saved64 = call(module, "forward_train", x64)
    dx64 = call(module, "backward", {**x64, **dict(zip(module.SAVED, saved64))})[0]
    assert np.max(np.abs(dx - dx64)) <= 1e-6 * np.max(np.abs(dx64))


# --- state ----------------------------------------------------------------------------------------------------------


def snapshot(arrays: dict) -> dict:
    return {k: np.array(v, copy=True) for k, v in arrays.items() if isinstance(v, np.ndarray)}


def assert_unchanged(arrays: dict, before: dict, why: str):
    for k, v in before.items():
        np.testing.assert_array_equal(arrays[k], v, err_msg=f"{k} changed by a refused call ({why})")


def refused(module, fn, args, error, name, *fragments):
    """The call raises *error* whose message starts with *name* and holds every fragment; every array in args (out
    included) is unchanged."""
    before = snapshot(args)
    with pytest.raises(error) as e:
        call(module, fn, args)
    msg = str(e.value)
    assert msg.startswith(f"{name}:"), msg
    for fragment in fragments:
        assert str(fragment) in msg, f"{fragment!r} missing from {msg!r}"
    assert_unchanged(args, before, msg)
    return msg


BAD_EPS = [(-1.0, ValueError), (0.0, ValueError), (np.nan, ValueError), (np.inf, ValueError), (10 ** 400, ValueError),
           ("1e-5", TypeError), (None, TypeError), (True, TypeError), (1e-5 + 0j, TypeError)]
BAD_MOMENTUM = [(2.0, ValueError), (-1.0, ValueError), (1 + 1e-15, ValueError), (-1e-300, ValueError),
                (np.nan, ValueError), (np.inf, ValueError), (None, TypeError), ("0.1", TypeError), (False, TypeError),
                (np.array([0.1]), TypeError)]


@pytest.mark.parametrize("value, error", BAD_EPS, ids=repr)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ("batch_nchw", "rms_nc"))
def test_eps_is_checked_per_call_before_anything_is_written(name, backend, value, error):
    _, module, args = arguments(name, backend)
    for fn in functions(module) + ("backward_staged",):
        bad = {**args, "eps": value}
        if fn != "backward_staged":
            bad["out"] = np.full_like(args["x"], 7.0)
        refused(module, fn, bad, error, "eps", "finite real number > 0", repr(value)[:20])


@pytest.mark.parametrize("value, error", BAD_MOMENTUM, ids=repr)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ("batch_nchw", "batch_nc"))
def test_momentum_is_checked_per_call_before_anything_is_written(name, backend, value, error):
    _, module, args = arguments(name, backend)
    bad = {**args, "momentum": value, "out": np.full_like(args["x"], 7.0)}
    refused(module, "forward_train", bad, error, "momentum", "from 0 to 1")
    stats = {r: args[r] for r in module.RUNNING}
    batch = {f"b{i}": np.ones_like(args[r]) for i, r in enumerate(module.RUNNING)}
    before = snapshot(stats)
    with pytest.raises(error, match="^momentum: "):
        module.update_running(*stats.values(), *batch.values(), 10, momentum=value)
    assert_unchanged(stats, before, "update_running")


def _sharing(a, x_shape, where=0):
    """(view, out): a copy of *a* placed inside a buffer that out (shaped like x) covers."""
    size = int(np.prod(x_shape))
    where = min(where, size - 1)  # inside out's span
    buf = np.zeros(max(size, a.size + where), a.dtype)
    view = buf[where:where + a.size].reshape(a.shape)
    view[...] = a
    return view, buf[:size].reshape(x_shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_out_sharing_memory_with_any_argument_is_refused(name, backend):
    """gamma, beta, running and saved statistics, dy, and x as the caller gave it (a strided view: the contiguous
    copy the kernels read shares nothing)."""
    _, module, args = arguments(name, backend)
    for fn in functions(module):
        for arg in inspect.signature(getattr(module, fn)).parameters:
            if arg not in args or arg == "x":
                continue
            # float64 x: out and every argument have one dtype, so a buffer can hold both
            view, out = _sharing(args[arg], args["x"].shape, where=1)
            refused(module, fn, {**args, arg: view, "out": out}, ValueError, "out", f"sharing memory with {arg}")
        # x a strided view into the buffer out is a contiguous part of
        buf = np.zeros(2 * args["x"].size, args["x"].dtype)
        xs = buf[::2].reshape(args["x"].shape)
        xs[...] = args["x"]
        out = buf[args["x"].size:].reshape(args["x"].shape)
        refused(module, fn, {**args, "x": xs, "out": out}, ValueError, "out", "sharing memory with x")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ("batch_nchw", "batch_nhwc", "batch_nc"))
def test_running_statistics_must_be_arrays_of_their_own(name, backend):
    _, module, args = arguments(name, backend)
    mu, var = module.RUNNING
    same = args[mu].copy()
    refused(module, "forward_train", {**args, mu: same, var: same}, ValueError, mu, "sharing memory", var)
    flat = np.ones(args[mu].size + 1)
    overlapping = {mu: flat[:-1].reshape(args[mu].shape), var: flat[1:].reshape(args[mu].shape)}
    refused(module, "forward_train", {**args, **overlapping}, ValueError, mu, "sharing memory", var)
    # a running statistic inside an input: the update would change it
    buf = args["x"].copy().reshape(-1)
    inside = {"x": buf.reshape(args["x"].shape), var: buf[: args[var].size].reshape(args[var].shape)}
    refused(module, "forward_train", {**args, **inside}, ValueError, var, "sharing memory with x")
    gamma_buf = np.ones(args["gamma"].size + args[mu].size)
    refused(module, "forward_train", {**args, "gamma": gamma_buf[: args["gamma"].size].reshape(args["gamma"].shape),
                                      mu: gamma_buf[: args[mu].size].reshape(args[mu].shape)},
            ValueError, mu, "sharing memory with gamma")
    readonly = args[var].copy()
    readonly.flags.writeable = False
    out = np.full_like(args["x"], 7.0)
    refused(module, "forward_train", {**args, var: readonly, "out": out}, ValueError, var, "writeable")
    refused(module, "forward_train", {**args, var: args[var].tolist(), "out": out}, TypeError, var, "numpy array")
    # update_running itself: the same checks, and count
    batch = [np.ones_like(args[mu]), np.ones_like(args[var])]
    for count, error in ((1, ValueError), (0, ValueError), (2.5, TypeError), (True, TypeError), ("8", TypeError)):
        before = snapshot(args)
        with pytest.raises(error, match="^count: "):
            module.update_running(args[mu], args[var], *batch, count)
        assert_unchanged(args, before, "update_running count")
    with pytest.raises(ValueError, match=f"^{mu}: .*sharing memory with {var}"):
        module.update_running(same, same, *batch, 8)


REFUSALS = ("momentum", "eps", "out overlaps gamma", "out overlaps a running statistic", "same running statistics",
            "read-only running statistic", "running statistic of another shape", "gamma of another shape",
            "dy of another dtype", "saved statistic of another shape", "out of another dtype")


@pytest.mark.parametrize("refusal", REFUSALS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_every_refusal_leaves_every_array_unchanged(name, backend, refusal):
    """Each function in turn, out given (so there is something a late refusal would have written)."""
    _, module, args = arguments(name, backend)
    running, saved = list(module.RUNNING), list(module.SAVED)
    for fn in functions(module):
        params = inspect.signature(getattr(module, fn)).parameters
        bad = {**{k: np.array(v, copy=True) for k, v in args.items()}, "out": np.full_like(args["x"], 7.0)}
        if refusal == "momentum" and "momentum" in params:
            bad["momentum"] = 1.5
        elif refusal == "eps":
            bad["eps"] = -1e-5
        elif refusal == "out overlaps gamma":
            bad["gamma"], bad["out"] = _sharing(args["gamma"], args["x"].shape, where=2)
        elif refusal == "out overlaps a running statistic" and running and running[-1] in params:
            bad[running[-1]], bad["out"] = _sharing(args[running[-1]], args["x"].shape, where=2)
        elif refusal == "same running statistics" and fn == "forward_train" and len(running) > 1:
            bad[running[1]] = bad[running[0]]
        elif refusal == "read-only running statistic" and fn == "forward_train" and running:
            bad[running[-1]].flags.writeable = False
        elif refusal == "running statistic of another shape" and running and running[-1] in params:
            bad[running[-1]] = np.ones((1,) + args[running[-1]].shape)
        elif refusal == "gamma of another shape":
            bad["gamma"] = np.ones((1,) + args["gamma"].shape)
        elif refusal == "dy of another dtype" and "dy" in params:
            bad["dy"] = args["dy"].astype(np.float32)
        elif refusal == "saved statistic of another shape" and saved[-1] in params:
            bad[saved[-1]] = np.ones(args[saved[-1]].shape + (2,))
        elif refusal == "out of another dtype":
            bad["out"] = np.full(args["x"].shape, 7.0, np.float32)
        else:
            continue
        before = snapshot(bad)
        with pytest.raises((TypeError, ValueError)):
            call(module, fn, bad)
        assert_unchanged(bad, before, f"{fn}: {refusal}")


# --- property: agree with the reference, or refuse and change nothing ----------------------------------------------

ALIASES = ("out is x", "out in gamma", "out in a running statistic", "same running statistics", "out in dy",
           "out in a saved statistic")


@st.composite
def cases(draw):
    name = draw(st.sampled_from(NAMES))
    backend = draw(st.sampled_from(BACKENDS))
    dtype = draw(st.sampled_from((np.float32, np.float64)))
    spec = SPECS[name]
    odd = draw(st.integers(0, 9)) == 0  # now and then a shape to refuse: 6 channels in 4 groups, 1 value per set
    c = (6 if odd else draw(st.sampled_from((4, 8)))) if spec.groups else (1 if odd else draw(st.integers(2, 6)))
    n = draw(st.integers(2, 4)) if spec.preset == "batch" else draw(st.integers(1, 4))
    spatial = (draw(st.integers(2 if spec.groups else 1, 4)), draw(st.integers(1, 3)))
    limit = 60 if dtype == np.float32 else (400 if WIDE else 150)
    exponent = draw(st.one_of(st.integers(-limit, limit), st.sampled_from((-limit, -limit // 2, limit // 2, limit))))
    alias = draw(st.sampled_from(ALIASES)) if draw(st.integers(0, 2)) == 0 else None
    return dict(name=name, backend=backend, dtype=dtype, shape=shape_of(spec, n, c, spatial), exponent=exponent,
                offset=draw(st.sampled_from((0.0, 3.0, 1e3))), relative_eps=draw(st.booleans()),
                poison=draw(st.sampled_from((None, None, None, np.nan, np.inf))),
                view=draw(st.sampled_from((None, "strided", "transposed"))), alias=alias,
                seed=draw(st.integers(0, 2 ** 16)))


def _view(a, kind):
    if kind == "transposed":
        axes = tuple(reversed(range(a.ndim)))
        return np.array(a.transpose(axes), order="C").transpose(axes)
    big = np.full(a.shape[:-1] + (2 * a.shape[-1],), np.nan, a.dtype)
    out = big[..., ::2]
    out[...] = a
    return out


@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_every_call_agrees_with_the_reference_or_is_refused_leaving_everything_unchanged(case):
    spec, module = SPECS[case["name"]], catalogue_module(case["name"], case["backend"])
    dtype, shape = case["dtype"], case["shape"]
    event(f"{np.dtype(dtype).name} x near 2**{case['exponent'] // 20 * 20}..")
    scale = 2.0 ** case["exponent"]
    _, _, args = arguments(case["name"], case["backend"], dtype, 1.0, 0.0, case["seed"], shape=shape)
    x = (args["x"].astype(np.float64) + case["offset"]) * scale
    args["x"] = x.astype(dtype)
    if case["poison"] is not None:
        args["x"].reshape(-1)[case["seed"] % args["x"].size] = case["poison"]
    eps = 1e-5 * (scale * scale if case["relative_eps"] else 1.0)
    if not 0 < eps < np.inf:
        eps = 1e-5
    reference_args = {k: np.array(v, copy=True) for k, v in args.items()}
    if case["view"]:
        args = {k: _view(v, case["view"]) if k in ("x", "dy", "gamma") else v for k, v in args.items()}
    expect_refusal = bool(spec.groups and shape[spec.channel_axis] % spec.groups)
    if spec.preset != "rms":  # one value per statistic: no variance to train with
        expect_refusal |= np.prod([shape[a] for a in spec.reduce_axes]) // (spec.groups or 1) < 2
    alias = case["alias"]
    running = list(module.RUNNING)
    out = None
    if alias == "out is x":
        out, expect_refusal = args["x"], True
    elif alias == "out in gamma" and args["gamma"].dtype == dtype:
        args["gamma"], out = _sharing(np.array(args["gamma"]), shape, where=1)
        expect_refusal = True
    elif alias == "out in a running statistic" and dtype == np.float64 and running:
        args[running[0]], out = _sharing(args[running[0]], shape, where=1)
        expect_refusal = True
    elif alias == "same running statistics" and len(running) > 1:
        args[running[1]] = args[running[0]]
        expect_refusal = True
    train_args = dict(args)
    before = snapshot({**train_args, "out": out})
    try:
        with np.errstate(all="ignore"):
            y, *saved = call(module, "forward_train", train_args, eps=eps, out=out)
    except (TypeError, ValueError) as e:
        assert expect_refusal, f"refused a valid call: {e}"
        assert_unchanged({**train_args, "out": out}, before, str(e))
        event(f"forward_train refused: {str(e).split(':')[0]}")
        return
    assert not expect_refusal, "accepted a call it should refuse"
    ry, rsaved, rgrads, rrunning = reference(spec, reference_args["x"], reference_args["dy"],
                                             reference_args["gamma"], reference_args.get("beta"),
                                             [reference_args[r] for r in running], eps, 0.1)
    strict = case["poison"] is None
    assert_close("y", y, ry, dtype, strict)
    for s, got, want in zip(module.SAVED, saved, rsaved):
        assert_close(s, got, want, dtype, strict)
    for r, want in zip(running, rrunning):
        assert_close(r, args[r], want, dtype, strict)
    # backward, with its own aliasing
    back = {**args, **dict(zip(module.SAVED, saved))}
    out, expect_refusal = None, False
    if case["alias"] == "out in dy":
        back["dy"], out = _sharing(np.array(args["dy"]), shape, where=2)
        expect_refusal = True
    elif case["alias"] == "out in a saved statistic" and dtype == np.float64:
        back[module.SAVED[0]], out = _sharing(saved[0], shape, where=2)
        expect_refusal = True
    before = snapshot({**back, "out": out})
    try:
        with np.errstate(all="ignore"):
            grads = call(module, "backward", back, eps=eps, out=out)
    except (TypeError, ValueError) as e:
        assert expect_refusal, f"refused a valid call: {e}"
        assert_unchanged({**back, "out": out}, before, str(e))
        event(f"backward refused: {str(e).split(':')[0]}")
        return
    assert not expect_refusal, "accepted a call it should refuse"
    for g, got, want in zip(("dx", "dgamma", "dbeta"), grads, rgrads):
        assert_close(g, got, want, dtype, strict)
    event("agrees with the reference" + (f" ({case['poison']} in x)" if case["poison"] else "")
          + (f" ({case['view']} views)" if case["view"] else ""))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", RUNNING_NAMES)
def test_update_running_on_its_own(name, backend):
    """The public update: the convention's rule (pytorch: variances corrected by M/(M - 1)), any statistic shape."""
    _, module, args = arguments(name, backend)
    running = [args[r].copy() for r in module.RUNNING]
    batch = [np.random.default_rng(1).uniform(0.5, 2.0, size=r.shape) for r in running]
    module.update_running(*running, *batch, 8, momentum=0.25)
    for r, s, new in zip(module.RUNNING, batch, running):
        corrected = s * 8 / 7 if r.endswith("var") else s
        np.testing.assert_allclose(new, 0.75 * args[r] + 0.25 * corrected, rtol=1e-14)


@pytest.mark.parametrize("convention", ("pytorch", "keras"))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ("batch_nc", "batch_nchw"))
def test_momentum_at_either_end_keeps_or_replaces_the_running_statistics(name, backend, convention):
    """Momentum 0 and 1 are accepted, as PyTorch and Keras accept them: the end that weighs the batch by 0 leaves
    the running statistics unchanged, the other replaces them by the batch's (the variance unbiased by M/(M - 1) in
    PyTorch's convention, as computed in Keras'), through update_running and through forward_train."""
    from symbn import load
    from symbn.core.spec import RUNNING

    spec = SPECS[name] if convention == "pytorch" else SPECS[name].with_options(running="keras", momentum=None)
    module = catalogue_module(name, backend) if convention == "pytorch" else load(spec, backend)
    _, _, args = arguments(name, backend, seed=3)
    keep, replace = (0.0, 1.0) if RUNNING[convention].momentum_on_batch else (1.0, 0.0)
    for momentum in (0, 1, 0.0, 1.0, np.float32(1)):
        mu, var = (args[r].copy() for r in module.RUNNING)
        y, *saved = module.forward_train(args["x"], args["gamma"], args["beta"], mu, var, momentum=momentum)
        x = args["x"].reshape(-1, args["x"].shape[1]) if name == "batch_nc" else np.moveaxis(args["x"], 1, -1)
        x = x.reshape(-1, x.shape[-1])
        m = x.shape[0]
        if float(momentum) == keep:
            np.testing.assert_array_equal(mu, args[module.RUNNING[0]])
            np.testing.assert_array_equal(var, args[module.RUNNING[1]])
        else:
            assert float(momentum) == replace
            np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(var, x.var(axis=0, ddof=1 if convention == "pytorch" else 0), rtol=1e-13)
        # update_running on its own, from the batch statistics
        mu2, var2 = (args[r].copy() for r in module.RUNNING)
        batch_mu, batch_var = x.mean(axis=0), x.var(axis=0)
        module.update_running(mu2, var2, batch_mu, batch_var, m, momentum=momentum)
        if float(momentum) == keep:
            np.testing.assert_array_equal(mu2, args[module.RUNNING[0]])
            np.testing.assert_array_equal(var2, args[module.RUNNING[1]])
        else:
            np.testing.assert_array_equal(mu2, batch_mu)
            np.testing.assert_allclose(var2, batch_var * (m / (m - 1) if convention == "pytorch" else 1), rtol=1e-15)


def test_modules_without_running_statistics_take_no_momentum():
    for name in NAMES:
        for backend in BACKENDS:
            _, module, args = arguments(name, backend)
            if module.RUNNING:
                continue
            assert not hasattr(module, "update_running") and not hasattr(module, "MOMENTUM")
            for fn in ("forward_train", "forward_eval"):
                with pytest.raises(TypeError, match="momentum"):
                    call(module, fn, args, momentum=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_module_whose_backward_needs_no_saved_statistic(backend, tmp_path):
    """eps/x - mean(x): dx = -(eps*dy/x**2 + sum(dy)/M) reads no statistic, so SAVED is empty; every signature and
    tuple of the templates still holds (it once printed `def backward(dy, x, , eps=...)`)."""
    from symbn.codegen.module import module_text
    from symbn.core.spec import make

    path = tmp_path / f"no_saved_{backend}.py"
    path.write_text(module_text(make("eps/x - mean(x)", axes=(0,), param_axes=()), backend))
    module = import_path(path, name=f"symbn_edges_no_saved_{backend}")
    assert module.SAVED == ()
    x, dy = np.random.default_rng(0).uniform(0.5, 2.0, 7), np.ones(7)
    y, *saved = module.forward_train(x)
    assert saved == []
    np.testing.assert_allclose(module.backward(dy, x)[0], -1e-5 * dy / x**2 - dy.mean(), rtol=1e-12)
    np.testing.assert_allclose(module.forward_eval(x, np.array(0.5)), 1e-5 / x - 0.5, rtol=1e-12)
    np.testing.assert_allclose(module.backward_eval(dy, x, np.array(0.5))[0], -1e-5 * dy / x**2, rtol=1e-12)
