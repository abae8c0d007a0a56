"""Generated modules refuse bad input clearly, leave the caller's arrays alone when they do, propagate NaN per
statistic, and treat non-contiguous views like their contiguous copies.

Representative catalogue modules (batch NCHW, layer NC, group4 NCHW, RMS NC), both backends. Refusals: TypeError
for dtypes, ValueError for shapes, with a message that names the argument and the expected and given shape/dtype.
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

from helpers import BACKENDS, FUNCTIONS, SPECS, call, catalogue_module, functions, shape_of, stat_shape, takes
from symbn.core.spec import LAYOUTS

REPRESENTATIVE = ("batch_nchw", "layer_nc", "group4_nchw", "rms_nc")
BATCH = ("batch_nc", "batch_nchw", "batch_nhwc")
# Every argument name a message could mention; a message must mention the offending one first.
ARGUMENTS = ("x", "dy", "gamma", "beta", "running_mu", "running_var", "running_ms", "mu", "istd", "irms", "out")


def cases(names, entry_points=(None,)):
    """(name, backend, function) for each function the modules have (no backward_eval without running statistics)."""
    out = []
    for name in names:
        for backend in BACKENDS:
            for fn in entry_points:
                if fn is not None and fn not in functions(SPECS[name]):
                    continue
                out.append(pytest.param(name, backend, fn, id="-".join(filter(None, (name, backend, fn)))))
    return out


def valid(name, backend, dtype=np.float64, seed=0, **shape_options):
    """A module and a dict of valid arguments for all its functions, by argument name."""
    spec, module = SPECS[name], catalogue_module(name, backend)
    rng = np.random.default_rng(seed)
    shape = shape_of(spec, **shape_options)
    pshape = tuple(shape[a] for a in spec.param_axes)
    sshape = stat_shape(spec, shape)
    args = dict(x=rng.normal(size=shape).astype(dtype), dy=rng.normal(size=shape).astype(dtype),
                gamma=rng.normal(1.0, 0.5, size=pshape).astype(dtype),
                beta=rng.normal(0.0, 0.5, size=pshape).astype(dtype))
    for r in module.RUNNING:
        args[r] = rng.uniform(0.5, 2.0, size=sshape) if ("var" in r or "ms" in r) else rng.normal(size=sshape)
    for s in module.SAVED:
        args[s] = rng.uniform(0.5, 2.0, size=sshape) if s.startswith("i") else rng.normal(size=sshape)
    return spec, module, args


def assert_names(excinfo, name, *fragments):
    """The message names *name* (before any other argument) and contains every fragment."""
    msg = str(excinfo.value)
    found = [(m.start(), a) for a in ARGUMENTS for m in [re.search(rf"\b{a}\b", msg)] if m]
    assert found and min(found)[1] == name, f"message does not name {name!r} first: {msg!r}"
    for fragment in fragments:
        assert str(fragment) in msg, f"{fragment!r} missing from message {msg!r}"


# --- shapes -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", (-1, 1))
@pytest.mark.parametrize("name, backend, fn", cases(REPRESENTATIVE, FUNCTIONS))
def test_wrong_rank(name, backend, fn, delta):
    spec, module, args = valid(name, backend)
    x = args["x"]
    bad = x[..., 0] if delta < 0 else x[..., None]
    args.update(x=bad, dy=np.zeros_like(bad))
    with pytest.raises(ValueError) as e:
        call(module, fn, args)
    assert_names(e, "x", bad.shape)
    msg = str(e.value)
    assert spec.layout in msg or re.search(rf"\b{spec.ndim}\b[ -]?(d\b|dim)", msg, re.I), msg


@pytest.mark.parametrize("name, backend, fn", cases(["group4_nchw"], FUNCTIONS))
def test_channels_not_divisible_by_groups(name, backend, fn):
    spec, module, args = valid(name, backend, c=6)  # 6 channels, 4 groups; parameters fit the 6 channels
    with pytest.raises(ValueError) as e:
        call(module, fn, args)
    assert_names(e, "x", (4, 6, 5, 3), "groups", spec.groups)


@pytest.mark.parametrize("name, backend, fn", cases(REPRESENTATIVE, FUNCTIONS))
def test_parameters_of_wrong_shape(name, backend, fn):
    spec, module, args = valid(name, backend)
    # The broadcastable (1, C, 1, 1) instead of (C,); for the normalized-shape parameters of layer/RMS norm NC,
    # (1, C) instead of (C,).
    bad = tuple(args["x"].shape[a] if a in spec.param_axes else 1 for a in range(spec.ndim))
    for param in ("gamma", "beta"):
        if takes(module, fn, param):
            good = args[param].shape
            with pytest.raises(ValueError) as e:
                call(module, fn, dict(args, **{param: np.ones(bad)}))
            assert_names(e, param, good, bad)


@pytest.mark.parametrize("how", ("leading axis", "one more"))
@pytest.mark.parametrize("name, backend, fn", cases(REPRESENTATIVE, FUNCTIONS))
def test_statistics_of_wrong_shape(name, backend, fn, how):
    spec, module, args = valid(name, backend)
    names = module.SAVED if fn == "backward" else module.RUNNING
    for stat in names:
        bad_args = dict(args)
        good = args[stat].shape
        bad = (1,) + good if how == "leading axis" else good[:-1] + (good[-1] + 1,)
        bad_args[stat] = np.ones(bad)
        with pytest.raises(ValueError) as e:
            call(module, fn, bad_args)
        assert_names(e, stat, good, bad)


@pytest.mark.parametrize("name, backend, fn", cases(REPRESENTATIVE, ("backward", "backward_eval")))
def test_dy_of_another_shape(name, backend, fn):
    spec, module, args = valid(name, backend)
    x = args["x"]
    for bad in (x.T.shape, x.shape[:-1] + (x.shape[-1] + 1,)):
        with pytest.raises(ValueError) as e:
            call(module, fn, dict(args, dy=np.zeros(bad)))
        assert_names(e, "dy", x.shape, bad)


# --- dtypes -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ("int64", "int32", "bool", "complex128", "object", "float16"))
@pytest.mark.parametrize("name, backend, fn", cases(REPRESENTATIVE, FUNCTIONS))
def test_x_of_unsupported_dtype(name, backend, fn, dtype):
    spec, module, args = valid(name, backend)
    x = args["x"].astype(dtype)
    with pytest.raises(TypeError) as e:
        call(module, fn, dict(args, x=x, dy=x))
    assert_names(e, "x", np.dtype(dtype), "float64")


@pytest.mark.parametrize("x_dtype, dy_dtype", [("float64", "float32"), ("float32", "float64"), ("float64", "int64")])
@pytest.mark.parametrize("name, backend, fn", cases(REPRESENTATIVE, ("backward", "backward_eval")))
def test_dy_of_another_dtype(name, backend, fn, x_dtype, dy_dtype):
    spec, module, args = valid(name, backend, dtype=np.dtype(x_dtype))
    with pytest.raises(TypeError) as e:
        call(module, fn, dict(args, dy=args["dy"].astype(dy_dtype)))
    assert_names(e, "dy", x_dtype, dy_dtype)


@pytest.mark.parametrize("name, backend, fn", cases(REPRESENTATIVE, FUNCTIONS))
def test_parameters_and_statistics_of_unsupported_dtype(name, backend, fn):
    spec, module, args = valid(name, backend)
    names = [p for p in ("gamma", "beta") if takes(module, fn, p)]
    names += [s for s in module.SAVED + module.RUNNING if takes(module, fn, s)]
    for arg in names:
        for dtype in ("int64", "complex128"):
            with pytest.raises(TypeError) as e:
                call(module, fn, dict(args, **{arg: args[arg].astype(dtype)}))
            assert_names(e, arg, dtype)


# --- one value per statistic --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, backend, fn", cases(BATCH))
def test_batch_norm_training_with_one_value_per_channel(name, backend, fn):
    spec, module, args = valid(name, backend)
    shape = tuple(8 if a == LAYOUTS[spec.layout].channel else 1 for a in range(spec.ndim))  # (1, C), (1, C, 1, 1)
    x = np.ones(shape)
    before = [args[r].copy() for r in module.RUNNING]
    with pytest.raises(ValueError) as e:
        call(module, "forward_train", dict(args, x=x))
    assert_names(e, "x", "1")
    for r, b in zip(module.RUNNING, before):
        np.testing.assert_array_equal(args[r], b)
    # Eval mode does not need batch statistics, as in PyTorch.
    y = call(module, "forward_eval", dict(args, x=x))
    assert y.shape == shape and np.all(np.isfinite(y))


@pytest.mark.torch
def test_pytorch_also_refuses_one_value_per_channel():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError):
        torch.nn.functional.batch_norm(torch.ones(1, 8), torch.zeros(8), torch.ones(8), training=True)
    with pytest.raises(ValueError):
        torch.nn.functional.batch_norm(torch.ones(1, 8, 1, 1), torch.zeros(8), torch.ones(8), training=True)


# --- refused calls leave the caller's arrays alone ----------------------------------------------------------------

REFUSALS = ("gamma shape", "beta shape", "gamma dtype", "x dtype", "second running shape", "second running read-only",
            "second running missing")


@pytest.mark.parametrize("refusal", REFUSALS)
@pytest.mark.parametrize("name, backend, fn", cases([n for n in REPRESENTATIVE if SPECS[n].tracks_running]))
def test_refused_call_leaves_running_statistics_untouched(name, backend, fn, refusal):
    spec, module, args = valid(name, backend)
    running = list(module.RUNNING)
    if refusal.startswith("second running") and len(running) < 2:
        pytest.skip(f"{name} has one running statistic")
    if refusal.startswith("beta") and not takes(module, "forward_train", "beta"):
        pytest.skip(f"{name} has no beta")
    bad = dict(args)
    if refusal == "gamma shape":
        bad["gamma"] = args["gamma"][None]
    elif refusal == "beta shape":
        bad["beta"] = args["beta"][None]
    elif refusal == "gamma dtype":
        bad["gamma"] = args["gamma"].astype(np.int64)
    elif refusal == "x dtype":
        bad["x"] = args["x"].astype(np.int64)
    elif refusal == "second running shape":
        bad[running[1]] = np.ones((1,) + args[running[1]].shape)
    elif refusal == "second running read-only":
        bad[running[1]] = args[running[1]].copy()
        bad[running[1]].flags.writeable = False
    elif refusal == "second running missing":
        bad[running[1]] = None
    snapshot = {r: (bad[r].tobytes() if bad[r] is not None else None) for r in running}
    with pytest.raises((TypeError, ValueError)):
        call(module, "forward_train", bad)
    for r in running:
        if bad[r] is not None:
            assert bad[r].tobytes() == snapshot[r], f"{r} changed by a refused call ({refusal})"
    # The same running arrays with valid arguments are updated in place: the check above could have failed.
    usable = {r: bad[r] is not None and bad[r].flags.writeable and bad[r].shape == args[r].shape for r in running}
    good = {**args, **{r: bad[r] if usable[r] else args[r] for r in running}}
    call(module, "forward_train", good)
    assert any(good[r].tobytes() != snapshot[r] for r in running if snapshot[r] is not None)


# --- NaN ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, backend, fn", cases(BATCH))
def test_nan_in_one_channel_stays_in_that_channel(name, backend, fn):
    spec, module, args = valid(name, backend)
    ch = LAYOUTS[spec.layout].channel
    x = args["x"].copy()
    at = [0] * spec.ndim
    at[ch] = 2
    x[tuple(at)] = np.nan

    def channel(a, c):  # the values of channel c of an x-shaped array
        return np.take(a, c, axis=ch)

    others = [c for c in range(x.shape[ch]) if c != 2]
    clean = {r: args[r].copy() for r in module.RUNNING}
    y0, mu0, istd0 = module.forward_train(args["x"], args["gamma"], args["beta"], *clean.values())
    dx0, dg0, db0 = module.backward(args["dy"], args["x"], args["gamma"], mu0, istd0)

    running = {r: args[r].copy() for r in module.RUNNING}
    y, mu, istd = module.forward_train(x, args["gamma"], args["beta"], *running.values())
    dx, dg, db = module.backward(args["dy"], x, args["gamma"], mu, istd)
    assert np.all(np.isnan(channel(y, 2))), "y: channel 2 holds a NaN, all of its outputs must be NaN"
    assert np.all(np.isnan(channel(dx, 2))), "dx: channel 2 holds a NaN, all of its gradients must be NaN"
    for what, stat in zip(("mu", "istd", "dgamma", *running), (mu, istd, dg, *running.values())):
        assert np.isnan(stat[2]) and np.all(np.isfinite(stat[others])), f"{what}: {stat}"
    for what, a in (("y", y), ("dx", dx)):
        assert np.all(np.isfinite(np.take(a, others, axis=ch))), f"{what}: NaN outside channel 2"
    assert np.all(np.isfinite(db))  # dbeta = sum(dy) does not involve x
    np.testing.assert_array_equal(db, db0)
    # The other channels are exactly what they are without the NaN.
    for a, a0 in ((y, y0), (dx, dx0)):
        np.testing.assert_array_equal(np.take(a, others, axis=ch), np.take(a0, others, axis=ch))
    for a, a0 in ((mu, mu0), (istd, istd0), (dg, dg0), *zip(running.values(), clean.values())):
        np.testing.assert_array_equal(a[others], a0[others])

    # Eval mode: fixed statistics, so only the NaN element's y is NaN; dx = dy*gamma*istd does not involve x.
    ye = call(module, "forward_eval", dict(args, x=x))
    np.testing.assert_array_equal(np.isnan(ye), np.isnan(x))
    dxe, dge, dbe = call(module, "backward_eval", dict(args, x=x))
    assert np.all(np.isfinite(dxe)) and np.all(np.isfinite(dbe))
    assert np.isnan(dge[2]) and np.all(np.isfinite(dge[others]))


# --- non-contiguous views -----------------------------------------------------------------------------------------


def view(a, kind):
    """A non-C-contiguous view with the values of *a*; strided views skip NaN filler, which must not leak."""
    if a.ndim == 0:
        return a
    if kind == "transposed":
        axes = tuple(reversed(range(a.ndim)))
        out = np.array(a.transpose(axes), order="C").transpose(axes)  # always a copy, even in 1-D
        assert a.ndim == 1 or not out.flags.c_contiguous
        return out
    axis = min(2, a.ndim - 1)  # x[:, :, ::2] for 4-D inputs
    if kind == "strided":
        shape = list(a.shape)
        shape[axis] *= 2
        big = np.full(shape, np.nan, dtype=a.dtype)
        index = [slice(None)] * a.ndim
        index[axis] = slice(None, None, 2)
        out = big[tuple(index)]
        out[...] = a
        assert not out.flags.c_contiguous
        return out
    if kind == "reversed":
        return np.flip(np.flip(a, axis).copy(), axis)
    raise ValueError(kind)


@pytest.mark.parametrize("dtype", (np.float64, np.float32))
@pytest.mark.parametrize("kind", ("transposed", "strided", "reversed"))
@pytest.mark.parametrize("name, backend, fn", cases(REPRESENTATIVE))
def test_non_contiguous_inputs_match_contiguous_copies(name, backend, fn, kind, dtype):
    spec, module, args = valid(name, backend, dtype=dtype)
    views = {k: view(v, kind) for k, v in args.items()}
    for k, v in views.items():
        np.testing.assert_array_equal(v, args[k])
    running = list(module.RUNNING)
    for f in functions(module):
        copies = {k: v.copy() for k, v in args.items()}
        want = call(module, f, copies)
        got = call(module, f, views)
        want, got = (w if isinstance(w, tuple) else (w,) for w in (want, got))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_array_equal(g, w, err_msg=f"{f} with {kind} inputs")
        if f == "forward_train":  # running statistics updated in place, through the views
            for r in running:
                np.testing.assert_array_equal(views[r], copies[r])
                assert not np.array_equal(views[r], args[r])
                if kind == "strided":
                    assert np.isnan(views[r].base).sum() == views[r].size  # the filler is untouched
            args = {**args, **{r: copies[r] for r in running}}
            views = {**views, **{r: view(copies[r], kind) for r in running}}


@pytest.mark.parametrize("name, backend, fn", cases(["batch_nc"]))
def test_running_statistics_that_cannot_be_updated_in_place_are_refused_by_name(name, backend, fn):
    spec, module, args = valid(name, backend)
    lists = {r: args[r].tolist() for r in module.RUNNING}
    with pytest.raises((TypeError, ValueError)) as e:
        call(module, "forward_train", {**args, **lists})
    assert_names(e, "running_mu")


# --- out= ---------------------------------------------------------------------------------------------------------
COLUMNS = ("batch_nc", "batch_nhwc")  # the column kernels write their output differently from the others


@pytest.mark.parametrize("dtype", (np.float64, np.float32))
@pytest.mark.parametrize("name, backend, fn", cases(REPRESENTATIVE + COLUMNS, FUNCTIONS))
def test_out_receives_exactly_the_result_of_a_fresh_call(name, backend, fn, dtype):
    spec, module, args = valid(name, backend, dtype=dtype)
    fresh_args = {k: v.copy() for k, v in args.items()}
    want = call(module, fn, fresh_args)
    out = np.full_like(args["x"], np.nan)  # whatever it held before must not matter
    got = getattr(module, fn)(**{k: args[k] for k in inspect.signature(getattr(module, fn)).parameters
                                 if k in args}, out=out)
    want, got = (w if isinstance(w, tuple) else (w,) for w in (want, got))
    assert got[0] is out
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)
    for r in module.RUNNING:  # forward_train updated them the same way
        np.testing.assert_array_equal(args[r], fresh_args[r])


def _bad_outs(args, fn):
    x = args["x"]
    wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
    readonly = np.zeros_like(x)
    readonly.flags.writeable = False
    bad = {"a list": (TypeError, x.tolist(), "numpy array"),
           "another shape": (ValueError, np.zeros(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype), "shape"),
           "another dtype": (ValueError, np.zeros(x.shape, np.float32), "float32"),
           "non-contiguous": (ValueError, wide[..., ::2], "contiguous"),
           "read-only": (ValueError, readonly, "read-only"),
           "x itself": (ValueError, x, "sharing memory")}
    if fn.startswith("backward"):
        bad["dy itself"] = (ValueError, args["dy"], "sharing memory")
    return bad


OUT_KINDS = ("a list", "another shape", "another dtype", "non-contiguous", "read-only", "x itself", "dy itself")


@pytest.mark.parametrize("name, backend, fn, kind", [
    pytest.param(*c.values, kind, id="-".join(c.values + (kind,)))
    for c in cases(("batch_nchw", "batch_nc"), FUNCTIONS) for kind in OUT_KINDS
    if kind != "dy itself" or c.values[2].startswith("backward")])
def test_bad_out_is_refused_by_name_and_nothing_is_written(name, backend, fn, kind):
    spec, module, args = valid(name, backend)
    error, out, fragment = _bad_outs(args, fn)[kind]
    before = {k: np.array(v, copy=True) for k, v in args.items()}
    out_before = np.array(out, copy=True)
    with pytest.raises(error) as e:
        getattr(module, fn)(**{k: args[k] for k in inspect.signature(getattr(module, fn)).parameters
                               if k in args}, out=out)
    assert_names(e, "out", fragment)
    np.testing.assert_array_equal(np.asarray(out), out_before)
    for k, v in args.items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"{k} changed by a refused call")
