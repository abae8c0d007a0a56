"""symbn.codegen.check never fails a correct kernel and keeps failing wrong ones.

(a) Real generated modules pass every check: the catalogue, and specs that used to fail a correct kernel (a loss
linear in x, where the Taylor remainder is pure rounding; two elements per group, where the gradient is tiny against
the loss and dx cancels); modules without gamma or beta, and of rank 1 to 6.
(b) The same modules with a mutated backward (a types.SimpleNamespace with the module's attributes and backward
replaced) fail at least one check, for each mutation."""

import types

import numpy as np
import pytest

from helpers import catalogue_or_cached
from symbn import load, make, preset
from symbn.codegen import catalogue as catalog
from symbn.codegen import check as checks

CENTRED = "(x - mean(x))/sqrt(mean((x - mean(x))**2) + eps)"

#: Specs outside the catalogue, each generated (NumPy backend) into symbn's cache.
EXTRA = {
    # L = sum(dy*y) is linear in x: no h^2 term, the Taylor remainder is rounding (slopes 0.19, -0.45 before).
    "linear": ("x - mean(x)", dict(axes=(1,), param_axes=())),
    # Linear in x and in beta, bilinear in (x, gamma); beta alone, no gamma.
    "bilinear": ("gamma*(x - mean(x)) + beta", dict(axes=(1,), param_axes=(1,))),
    "beta_only": ("x - mean(x) + beta", dict(axes=(0,), param_axes=(1,))),
    # Grouped, rank 3 (the spec).
    "grouped": (f"gamma*{CENTRED} + beta", dict(axes=(1, 2), param_axes=(1,), groups=2, channel_axis=1, ndim=3)),
    # Two elements per group, mean absolute deviation (central differences 3.7e-7 .. 5.7e-6 > 1e-7 and sum(dx)
    # 2.3e-12, 6.0e-12 > 1e-12 at seeds 0-2 before).
    "mad_grouped": ("gamma*(x - mean(x))/(mean(abs(x - mean(x))) + eps) + beta",
                    dict(axes=(1,), param_axes=(1,), groups=2, channel_axis=1)),
    # Rank 1, no parameters (central differences 2.6e-7 at seed 2 before); rank 6, gamma only.
    "rank1": (CENTRED, dict(axes=(0,), param_axes=())),
    "rank6": (f"gamma*{CENTRED}", dict(axes=(1, 3), param_axes=(1,), groups=2, channel_axis=1, ndim=6)),
    # Rank 5 RMS norm (gamma only, not shift-invariant: no sum(dx) check).
    "rms_rank5": ("gamma*x/sqrt(mean(x**2) + eps)", dict(axes=(0, 2, 4), param_axes=(1,), ndim=5)),
}
# Group norm over (N, C) with two channels per group: y is nearly +-1 whatever x, so dx is ~1e-4 against L ~ 3, and
# the backward's terms cancel (central differences 1.6e-7 and 2.1e-6 > 1e-7 at seeds 1, 2, and sum(dx) 7.7e-12 >
# 1e-12 at seed 2 before; the compact and staged forms agree to 2e-13 there).
PRESETS = {"group2_nc": dict(name="group", layout="NC", groups=2)}
NUMBA = "batch_nc"  # one catalogue module on the Numba backend (a small one: Numba compiles it in seconds)


def _module(key: str):
    catalogue = {spec.name: spec for spec in catalog.CATALOG}
    if key in catalogue:
        return catalogue_or_cached(catalogue[key], "numpy")
    if key == NUMBA + "-numba":
        return catalogue_or_cached(catalogue[NUMBA], "numba")
    if key in PRESETS:
        options = dict(PRESETS[key])
        return load(preset(options.pop("name"), **options), "numpy")
    if key in catalog.custom_specs():
        return load(catalog.custom_specs()[key], "numpy")
    text, options = EXTRA[key]
    return load(make(text, **options), "numpy")


_CACHE: dict = {}


def module(key: str):
    if key not in _CACHE:
        _CACHE[key] = _module(key)
    return _CACHE[key]


CORRECT = [spec.name for spec in catalog.CATALOG] + [NUMBA + "-numba", "softmax"] + list(PRESETS) + list(EXTRA)


def _report(results) -> str:
    return "\n".join(map(str, results))


@pytest.mark.parametrize("key", CORRECT)
def test_correct_kernels_pass_every_check(key):
    m = module(key)
    seeds = (0,) if key in [spec.name for spec in catalog.CATALOG] else (0, 1, 2)
    for seed in seeds:
        results = checks.run(m, seed=seed)
        assert all(r.ok for r in results), f"seed {seed}\n{_report(results)}"


def test_the_cases_that_failed_before_pass_now():
    """The seeds where the old checks failed these correct kernels, and a few more."""
    for key, seeds in {"group2_nc": range(8), "mad_grouped": range(8), "rank1": range(8), "linear": (0, 1, 2)}.items():
        for seed in seeds:
            results = checks.run(module(key), seed=seed)
            assert all(r.ok for r in results), f"{key} seed {seed}\n{_report(results)}"


def _exact_dx(x, dy, gamma, groups):
    """dL/dx of L = sum(dy*gamma*(x - mu)/sqrt(var + 1e-5)) over the last axis split into *groups*, at 40 digits."""
    import mpmath

    rows, cols = x.shape
    width = cols // groups
    out = np.zeros_like(x)
    with mpmath.workdps(40):
        for n in range(rows):
            for start in range(0, cols, width):
                cs = range(start, start + width)

                def loss(*v, n=n, cs=cs):
                    mu = mpmath.fsum(v) / width
                    istd = 1 / mpmath.sqrt(mpmath.fsum((a - mu) ** 2 for a in v) / width + mpmath.mpf(1e-5))
                    return mpmath.fsum(mpmath.mpf(dy[n, c]) * mpmath.mpf(gamma[c]) * (a - mu) * istd
                                       for c, a in zip(cs, v))

                point = [mpmath.mpf(float(x[n, c])) for c in cs]
                for k, c in enumerate(cs):
                    out[n, c] = float(mpmath.diff(lambda t, k=k: loss(*point[:k], t, *point[k + 1:]), point[k]))
    return out


def test_central_differences_are_as_accurate_as_they_claim():
    """Against the exact gradient (40 digits): two elements per group, where dx is ~1e-4 against L ~ 3 (a fixed step
    1e-6 was off by 1e-7 .. 2e-6 relative), and rank 1. Both the error and the error estimate stay far below 1e-7."""
    for key, seeds in (("group2_nc", range(4)), ("rank1", range(4))):
        m = module(key)
        for seed in seeds:
            data = checks.inputs(m, seed=seed)
            x, dy = (np.atleast_2d(data[k]) for k in ("x", "dy"))
            gamma = data.get("gamma", np.ones(x.shape[1]))
            exact = _exact_dx(x, dy, gamma, m.GROUPS or 1).reshape(data["x"].shape)
            numeric, error = checks.finite_differences(m, data, "x")
            assert np.linalg.norm(numeric - exact) <= np.linalg.norm(error), (key, seed)
            assert np.linalg.norm(error) <= 1e-8 * np.linalg.norm(exact), (key, seed)
            grad = checks.loss_and_grads(m, data)[1]["x"]
            assert checks.relative_error(grad, exact) <= 1e-10, (key, seed)  # the kernel: accurate, as it should be


def test_every_rank_and_parameter_set_is_covered():
    ms = [module(key) for key in CORRECT]
    assert {m.NDIM for m in ms} >= {1, 2, 3, 4, 5, 6}
    assert {tuple(checks.parameter_names(m)) for m in ms} >= {(), ("gamma",), ("beta",), ("gamma", "beta")}


def test_a_linear_loss_passes_the_taylor_test_with_a_note_and_a_wrong_gradient_still_fails_it():
    m = module("linear")
    data = checks.inputs(m, seed=0)
    result = checks.taylor_check(m, data)
    assert result.ok and result.note and "linear" in result.note, result
    wrong = mutated(m, lambda g, dy, x, args: [g[0] * 1.001] + g[1:])
    t = checks.taylor(wrong, data)
    assert not t.linear and 0.8 <= t.slope <= 1.2, t.slope  # the remainder is the error times h
    assert not checks.taylor_check(wrong, data).ok


def test_the_taylor_slope_of_a_wrong_gradient_is_one():
    m = module("layer_nc")
    data = checks.inputs(m, seed=0)
    assert 1.8 <= checks.taylor_slope(m, data) <= 2.2
    wrong = mutated(m, lambda g, dy, x, args: [g[0] * 1.001] + g[1:])
    assert checks.taylor_slope(wrong, data) < 1.2


# ---------------------------------------------------------------------------------------------------------------
# Mutations of the backward


def mutated(m, change):
    """*m* with its backward's gradients passed through change(grads, dy, x, args) (grads: float64 copies)."""
    attrs = {k: getattr(m, k) for k in dir(m) if not (k.startswith("__") and k.endswith("__"))}
    original = m.backward

    def backward(dy, x, *args, **kwargs):
        grads = original(dy, x, *args, **kwargs)
        grads = (grads,) if isinstance(grads, np.ndarray) else grads
        grads = [np.array(g, dtype=np.float64, copy=True) for g in grads]
        return tuple(change(grads, dy, x, args))

    return types.SimpleNamespace(**{**attrs, "backward": backward})


def _set_mean(m, a, x):
    """The mean of *a* over each reduction set, broadcast back to x's shape."""
    sizes = m._sizes(x)
    reduced = tuple(i for i, block in enumerate(m.BLOCKS) if block[2])
    return np.broadcast_to(np.asarray(a).reshape(sizes).mean(axis=reduced, keepdims=True), sizes).reshape(x.shape)


def _statistic_term(m, grads, dy, x, args):
    """One term of dx, as the module's statistics give it: istd*mean(gamma*dy*xhat)*xhat for a centred, scaled
    normalization saving (mu, istd); irms^3*mean(gamma*dy*x)*x for RMS norm; mean(dy) otherwise (x - mean(x))."""
    names = checks.parameter_names(m)
    gamma, saved = (args[0], args[1:]) if "gamma" in names else (np.ones(()), args)
    if gamma.ndim:
        gamma = np.reshape(gamma, [x.shape[a] if a in m.PARAM_AXES else 1 for a in range(x.ndim)])
    sizes = m._sizes(x)
    keep = [1 if block[2] else n for n, block in zip(sizes, m.BLOCKS)]

    def stat(s):
        return np.broadcast_to(np.asarray(s, dtype=np.float64).reshape(keep), sizes).reshape(x.shape)

    if tuple(m.SAVED[:2]) == ("mu", "istd"):
        istd = stat(saved[1])
        xhat = (x - stat(saved[0])) * istd
        return istd * _set_mean(m, gamma * dy * xhat, x) * xhat
    if tuple(m.SAVED) == ("irms",):
        irms = stat(saved[0])
        return irms**3 * _set_mean(m, gamma * dy * x, x) * x
    return _set_mean(m, dy, x)


def _flip_a_term(m):
    def change(g, dy, x, args):
        return [g[0] + 2 * _statistic_term(m, g, dy, x, args)] + g[1:]
    return change


def _parameter_relative(index, rel):
    def change(g, dy, x, args):
        g = list(g)
        g[index] = g[index] * (1 + rel)
        return g
    return change


def _dx_plus_small_term(g, dy, x, args):
    noise = np.random.default_rng(7).normal(size=g[0].shape)
    return [g[0] + 1e-5 * np.abs(g[0]).max() * noise] + g[1:]


def _one_dx_element(g, dy, x, args):
    dx = g[0].copy()
    dx.reshape(-1)[dx.size // 2] += 1e-4 * np.abs(dx).max()
    return [dx] + g[1:]


MUTANTS = ["group2_nc", "linear", "grouped", "mad_grouped", "rank1", "rank6", "beta_only", "rms_rank5",
           "batch_nchw", "softmax", NUMBA + "-numba"]
MUTATIONS = ["dx*1.001", "dx*(1+1e-6)", "dx+1e-5 term", "one dx element", "sign of one dx term", "dgamma*(1+1e-4)",
             "dbeta*(1+1e-4)"]


def mutation(m, name):
    names = checks.parameter_names(m)
    if name.startswith("dx*"):
        factor = 1.001 if name == "dx*1.001" else 1 + 1e-6
        return lambda g, dy, x, args: [g[0] * factor] + g[1:]
    if name == "dx+1e-5 term":
        return _dx_plus_small_term
    if name == "one dx element":
        return _one_dx_element
    if name == "sign of one dx term":
        return _flip_a_term(m)
    param = name[1:name.index("*")]
    if param not in names:
        return None
    return _parameter_relative(1 + names.index(param), 1e-4)


@pytest.mark.parametrize("key", MUTANTS)
def test_mutated_backwards_fail(key):
    m = module(key)
    assert all(r.ok for r in checks.run(m)), _report(checks.run(m))
    tried = 0
    for name in MUTATIONS:
        change = mutation(m, name)
        if change is None:
            continue
        tried += 1
        results = checks.run(mutated(m, change))
        assert not all(r.ok for r in results), f"{key}: mutation {name} passed every check\n{_report(results)}"
        if name.startswith("d") and name[1] != "x":  # a parameter gradient: its own central differences catch it
            wrt = name[1:name.index("*")]
            assert not next(r for r in results if r.name == f"central differences d{wrt}").ok, _report(results)
        else:  # central differences of dx catch every dx mutation by themselves
            assert not next(r for r in results if r.name == "central differences dx").ok, _report(results)
    assert tried >= 4


def test_the_flipped_term_is_a_real_term():
    """The sign flip changes dx by far more than the limits (a term of the formula, not a rounding-level nudge)."""
    for key in ("batch_nchw", "group2_nc", "rms_rank5", "linear"):
        m = module(key)
        data = checks.inputs(m, seed=0)
        _, grads = checks.loss_and_grads(m, data)
        flipped = checks.loss_and_grads(mutated(m, _flip_a_term(m)), data)[1]["x"]
        assert checks.relative_error(flipped, grads["x"]) > 1e-3, key


# ---------------------------------------------------------------------------------------------------------------
# Eval mode: backward_eval where running statistics are kept, forward_eval = forward_train's y where none are


def _replaced(m, **functions):
    attrs = {k: getattr(m, k) for k in dir(m) if not (k.startswith("__") and k.endswith("__"))}
    return types.SimpleNamespace(**{**attrs, **functions})


@pytest.mark.parametrize("key", ["batch_nchw", NUMBA + "-numba"])
def test_a_wrong_eval_backward_fails_the_eval_checks(key):
    m = module(key)
    results = checks.run(m)
    names = ["eval: central differences dx", "eval: central differences dgamma", "eval: central differences dbeta"]
    labels = [""] + [f" ({label})" for label, _, _ in checks.paths(m)]
    assert [r.name for r in results if r.name.startswith("eval: ")] == [n + label for label in labels for n in names]
    original = m.backward_eval
    for index, factor in ((0, 1 + 1e-6), (1, 1 + 1e-4), (2, 1 + 1e-4)):
        def backward_eval(*args, index=index, factor=factor, **kwargs):
            grads = [np.array(g, dtype=np.float64) for g in original(*args, **kwargs)]
            grads[index] *= factor
            return tuple(grads)

        failed = [r.name for r in checks.run(_replaced(m, backward_eval=backward_eval)) if not r.ok]
        name = f"eval: central differences d{('x', 'gamma', 'beta')[index]}"
        assert failed == [name + label for label in labels], failed  # the replaced function serves every path


@pytest.mark.parametrize("key", ["layer_nc", "group2_nc", "linear"])
def test_a_forward_eval_other_than_trainings_fails_where_no_running_statistics_are_kept(key):
    m = module(key)
    assert m.RUNNING == ()
    small, *others = [r for r in checks.run(m) if r.name.startswith("eval: ")]
    assert small.ok and small.name == "eval: forward_eval = training's y" and small.value == 0
    assert [(r.ok, r.name, r.value) for r in others] == [(True, f"{small.name} ({label})", 0)
                                                        for label, _, _ in checks.paths(m)]
    original = m.forward_eval

    def forward_eval(*args, **kwargs):  # one ulp off in one element
        y = np.array(original(*args, **kwargs))
        y.reshape(-1)[0] = np.nextafter(y.reshape(-1)[0], np.inf)
        return y

    for result in [r for r in checks.run(_replaced(m, forward_eval=forward_eval)) if r.name.startswith("eval: ")]:
        assert not result.ok and result.value > 0
