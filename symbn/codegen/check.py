"""Numerical checks of a generated module: central differences, the Taylor test and exact invariants.

They need only the module (its public functions and the constants it carries), so ``symbn check`` can run them on
any generated file, including one copied into another project.

Each check compares what the kernel computes with something float64 arithmetic can resolve, so a correct kernel
passes whatever its expression and inputs, and a wrong one fails:

- central differences: Ridders' extrapolation of central differences for every coordinate (steps relative to the
  value, from 1/16 down until rounding takes over), with its own error estimate; the kernel's gradient must agree to
  a relative error of 1e-7 (in the 2-norm over all coordinates), plus that estimate, which is far smaller except
  where the gradient is tiny against the loss (then the limit says so). The loss change is summed as
  sum(dy*(y+ - y-)), so the summation of L adds no rounding. With a fixed step h = 1e-6, the rounding of L alone,
  eps |L| / h, came to 1.5e-7 .. 2e-6 of such a gradient (two elements per group). Coordinates whose effects on y do
  not overlap (one element of every reduction set; every parameter entry) move together, one forward per step each.
- the Taylor test: the remainder L(x + h v) - L(x) - h <g, v> must shrink like h^2 (slope 2; a wrong gradient leaves
  a term in h: slope 1). Only remainders well above their rounding level are fitted; where the loss is linear along v
  (no h^2 term at all, e.g. y = x - mean(x)), every remainder is rounding, which bounds the error in <g, v> to
  rounding level, and the check passes saying so.
- sum(dx) = 0 over each reduction set where the forward is shift-invariant: to 1e-12 of max|dx|, or to the rounding
  level of the backward itself where that is larger (measured, see ``backward_rounding``).
- eval mode: where the module keeps running statistics (batch norm), backward_eval against central differences of
  forward_eval with the running statistics held fixed; where it keeps none (layer, group, instance, RMS norm: eval
  mode is the training computation), forward_eval must be forward_train's y exactly.
"""

from __future__ import annotations

import dataclasses
import math
import types
from dataclasses import dataclass, field

import numpy as np

EPS = float(np.finfo(np.float64).eps)
FD_LIMIT = 1e-7  # central differences: relative error of each gradient
SUM_LIMIT = 1e-12  # sum(dx) over a set, relative to max|dx|
TAYLOR_SLOPE = (1.8, 2.2)
TAYLOR_STEPS = 2.0 ** -np.arange(4, 27)  # 1/16 .. 1.5e-8, times a random direction
TAYLOR_SIGNIFICANT = 10.0  # a remainder counts when above this many rounding bounds (a bound ~30x what is seen)
TAYLOR_POINTS = 5  # the smallest significant steps fitted: the most asymptotic ones, the most sensitive to an h term
# A module with an epilogue (relu) has kinks, where the derivative jumps and differences across one are no derivative.
# Its inputs are drawn so that no element of y changes between zero and nonzero under a move of every input by
# KINK_MARGIN (relative, as the differences' steps are), and its differences start at KINK_STEP, well inside that.
KINK_MARGIN = 2.0 ** -8
KINK_STEP = 2.0 ** -12
KINK_DRAWS = 64


@dataclass
class Result:
    name: str
    value: float
    limit: str
    ok: bool
    note: str = field(default="", compare=False)

    def __str__(self) -> str:
        text = f"{'ok  ' if self.ok else 'FAIL'} {self.name:<34} {self.value:.3e}  ({self.limit})"
        return text + (f"  [{self.note}]" if self.note else "")


def test_shape(module) -> tuple[int, ...]:
    """A small shape that fits the module: 2-5 per axis, channels a multiple of the group count."""
    shape = [3, 4, 3, 5, 2][: module.NDIM] + [2] * max(0, module.NDIM - 5)
    if getattr(module, "GROUPS", None):
        shape[module.CHANNEL_AXIS] = 2 * module.GROUPS
    return tuple(shape)


def inputs(module, shape=None, seed: int = 0, dtype=np.float64) -> dict:
    """Random inputs for *module*; where it has an epilogue, the first draw (seeds seed, seed + 1, ...) whose every
    element of y stays on its side of the kinks within KINK_MARGIN (_away_from_kinks)."""
    if not epilogue(module):
        return _draw(module, shape, seed, dtype)
    for k in range(KINK_DRAWS):
        data = _draw(module, shape, seed + k, dtype)
        if _away_from_kinks(module, data):
            return data
    raise ValueError(f"no inputs away from the epilogue's kinks in {KINK_DRAWS} draws (seeds {seed}..)")


def epilogue(module) -> bool:
    """Whether the module ends in an epilogue (its EPILOGUE constant), with kinks where relu switches."""
    return bool(getattr(module, "EPILOGUE", None))


def _away_from_kinks(module, data: dict, probes: int = 3) -> bool:
    """Whether which elements of y are zero stays the same when x, r and the parameters all move by KINK_MARGIN
    (relative to their size, as the differences' steps), along random directions, in training and in eval mode."""
    rng = np.random.default_rng(5)
    running = running_statistics(module, data) if getattr(module, "RUNNING", ()) else None
    moved = [k for k in ("x", "r", *parameter_names(module)) if k in data]

    def zeros(d: dict) -> list[np.ndarray]:
        out = [forward_y(module, d) == 0]
        if running is not None:
            out.append(np.asarray(module.forward_eval(d["x"], *forward_inputs(module, d), *running)) == 0)
        return out

    base = zeros(data)
    for _ in range(probes):
        for sign in (1, -1):
            step = {k: (data[k] + sign * KINK_MARGIN * np.maximum(1, np.abs(data[k]))
                        * rng.choice([-1.0, 1.0], size=np.shape(data[k]))).astype(np.asarray(data[k]).dtype)
                    for k in moved}
            if any(not np.array_equal(a, b) for a, b in zip(base, zeros({**data, **step}))):
                return False
    return True


def _draw(module, shape, seed: int, dtype) -> dict:
    rng = np.random.default_rng(seed)
    shape = shape or test_shape(module)
    pshape = tuple(shape[a] for a in module.PARAM_AXES)
    out = dict(x=rng.normal(size=shape).astype(dtype), dy=rng.normal(size=shape).astype(dtype))
    for p in parameter_names(module):
        out[p] = rng.normal(1.0 if p == "gamma" else 0.0, 0.5, size=pshape)
    if residual(module):  # drawn last: the other inputs stay those of modules without one
        out["r"] = rng.normal(size=shape).astype(dtype)
    return out


def residual(module) -> bool:
    """Whether the module's epilogue takes a residual input r (and backward returns dr after dx)."""
    import inspect

    return "r" in inspect.signature(module.forward_train).parameters


def backward_inputs(module) -> list[str]:
    """What backward takes between dy, x and the statistics: r where the epilogue adds one, gamma, and beta where an
    epilogue's mask reads it (as the generated modules' signatures have them)."""
    params = parameter_names(module)
    return ["r"] * residual(module) + [p for p in params if p == "gamma" or epilogue(module)]


def forward_inputs(module, data: dict) -> list:
    """forward_train's arguments after x: r where the module takes one, then the parameters."""
    return ([data["r"]] if residual(module) else []) + [data[p] for p in parameter_names(module)]


def parameter_names(module) -> list[str]:
    import inspect

    return [p for p in ("gamma", "beta") if p in inspect.signature(module.forward_train).parameters]


def forward_y(module, data: dict) -> np.ndarray:
    """y = forward_train(x, params) as float64."""
    return np.asarray(module.forward_train(data["x"], *forward_inputs(module, data))[0], dtype=np.float64)


def loss_and_grads(module, data: dict):
    """L = sum(dy * y) and the module's gradients of L with respect to x and the parameters."""
    y, *saved = module.forward_train(data["x"], *forward_inputs(module, data))
    grads = module.backward(data["dy"], data["x"], *[data[p] for p in backward_inputs(module)], *saved)
    if isinstance(grads, np.ndarray):  # a module without parameters may hand back dx alone
        grads = (grads,)
    return float(np.sum(data["dy"] * y)), dict(zip(_gradient_names(module), grads))


def _gradient_names(module) -> list[str]:
    """What backward returns gradients of, in order: x, r where there is one, the parameters."""
    return ["x"] + ["r"] * residual(module) + parameter_names(module)


def loss_and_grads_forward(module, data: dict) -> float:
    return float(np.sum(data["dy"] * forward_y(module, data)))


def ridders(quotient, h0: float, shrink: float = 2.0, levels: int = 16, patience: int = 4,
            least: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Ridders' method, for a vector of coordinates at once: Richardson extrapolation (a Neville tableau in h^2) of
    the central differences *quotient(h)* (which returns them with a bound on their rounding error) over the steps
    h0, h0/shrink, ...; per coordinate, the entry whose error estimate is smallest, with that estimate. The estimate
    of an entry is its distance to the neighbouring extrapolations plus twice the rounding bound of the smallest
    step it uses (rounded quotients can agree exactly, which alone would claim no error at all). Large steps are
    extrapolated to zero; once rounding takes over the estimates stop improving, and after *patience* steps in a row
    without a better estimate for any coordinate (and at least *least* steps: h0/2^7 = 5e-4 for the defaults, below
    the scale sqrt(eps) of a normalization's nearly constant sets), smaller steps are not tried."""
    value, noise = quotient(h0)
    previous = [np.atleast_1d(np.asarray(value, dtype=np.float64))]
    best = previous[0].copy()
    err = np.full(best.shape, np.inf)
    h, stale = h0, 0
    for i in range(1, levels):
        h /= shrink
        value, noise = quotient(h)
        row = [np.atleast_1d(np.asarray(value, dtype=np.float64))]
        factor = shrink * shrink
        improved = False
        for j in range(1, i + 1):
            row.append((row[j - 1] * factor - previous[j - 1]) / (factor - 1.0))
            factor *= shrink * shrink
            errt = np.maximum(np.abs(row[j] - row[j - 1]), np.abs(row[j] - previous[j - 1])) + 2 * noise
            better = errt < err  # nan never is
            if better.any():
                improved = True
                best = np.where(better, row[j], best)
                err = np.where(better, errt, err)
        previous = row
        stale = 0 if improved else stale + 1
        if stale >= patience and i + 1 >= least:
            break
    return best, err


def _set_rows(module, shape: tuple[int, ...]) -> np.ndarray | None:
    """Flat indices of an array of *shape*, one row per reduction set (None where the module does not say)."""
    try:
        sizes = tuple(int(n) for n in module._sizes(np.empty(shape)))
        reduced = [bool(block[2]) for block in module.BLOCKS]
    except (AttributeError, TypeError, IndexError, ValueError):
        return None
    if len(sizes) != len(reduced) or math.prod(sizes) != math.prod(shape):
        return None
    perm = [i for i, r in enumerate(reduced) if not r] + [i for i, r in enumerate(reduced) if r]
    sets = math.prod(sizes[i] for i in perm if not reduced[i])
    return np.arange(math.prod(shape)).reshape(sizes).transpose(perm).reshape(sets, -1)


def _batches(module, data: dict, wrt: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """How to move the coordinates of *wrt*: batches of (flat indices moved together, owner), where owner[j] is the
    position in the batch of the one moved coordinate element j of y depends on.

    Elements of different reduction sets do not interact, so for x one element of every set moves at once, and each
    set's share of the change of L gives its element's derivative. gamma and beta enter y elementwise (symbn keeps
    them out of the statistics, which depend on x only), so every parameter entry moves at once and each entry owns
    the elements of y at its own position. Without the module's block description, one coordinate at a time."""
    shape = np.shape(data[wrt])
    x_shape = np.shape(data["x"])
    size = math.prod(shape)
    if wrt == "r":  # y depends on r element by element
        return [(np.arange(size), np.arange(size))]
    if wrt == "x":
        rows = _set_rows(module, x_shape)
        if rows is not None:
            owner = np.empty(size, dtype=np.intp)
            owner[rows] = np.arange(rows.shape[0])[:, None]
            return [(rows[:, k], owner) for k in range(rows.shape[1])]
    else:
        axes = tuple(getattr(module, "PARAM_AXES", ()))
        if len(axes) == len(shape) and tuple(x_shape[a] for a in axes) == tuple(shape):
            spread = [x_shape[a] if a in axes else 1 for a in range(len(x_shape))]
            owner = np.broadcast_to(np.arange(size).reshape(spread), x_shape).reshape(-1)
            return [(np.arange(size), owner)]
    alone = np.zeros(math.prod(x_shape), dtype=np.intp)
    return [(np.array([i]), alone) for i in range(size)]


def finite_differences(module, data: dict, wrt: str, h0: float = 1 / 16,
                       forward=forward_y) -> tuple[np.ndarray, np.ndarray]:
    """(dL/d wrt, an error estimate per coordinate) by Ridders' extrapolation of central differences.

    The step of each coordinate is relative to its value (h0 * max(1, |value|), rounded up to a power of two), the
    quotient divides by the step actually taken, and the change of L is summed as sum(dy * (y+ - y-)), so L's own
    summation adds no rounding. Coordinates that no element of y depends on jointly move at once (see _batches).
    *forward(module, data)*: y as float64 (default: forward_train's)."""
    h0 = KINK_STEP if epilogue(module) else h0
    base = np.asarray(data[wrt], dtype=np.float64)
    flat = base.reshape(-1)
    dy = np.asarray(data["dy"], dtype=np.float64).reshape(-1)
    grad = np.zeros(flat.size)
    error = np.zeros(flat.size)
    for where, owner in _batches(module, data, wrt):
        scale = 2.0 ** np.ceil(np.log2(np.maximum(1.0, np.abs(flat[where]))))

        def quotient(h: float, where=where, owner=owner, scale=scale) -> tuple[np.ndarray, np.ndarray]:
            plus, minus = flat.copy(), flat.copy()
            plus[where] += h * scale
            minus[where] -= h * scale
            y_plus = forward(module, {**data, wrt: plus.reshape(base.shape)}).reshape(-1)
            y_minus = forward(module, {**data, wrt: minus.reshape(base.shape)}).reshape(-1)
            change = np.bincount(owner, dy * (y_plus - y_minus), minlength=where.size)
            # each y to a few ulps: 4 eps |y|
            size = np.bincount(owner, np.abs(dy) * (np.abs(y_plus) + np.abs(y_minus)), minlength=where.size)
            step = plus[where] - minus[where]
            return change / step, 4 * EPS * size / step

        grad[where], error[where] = ridders(quotient, h0)
    return grad.reshape(base.shape), error.reshape(base.shape)


def central_differences(module, data: dict, wrt: str) -> np.ndarray:
    """dL/d wrt by central differences (Ridders' extrapolation; see finite_differences)."""
    return finite_differences(module, data, wrt)[0]


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def difference_check(module, data: dict, wrt: str, grad: np.ndarray, forward=forward_y, mode: str = "") -> Result:
    """The kernel's gradient against central differences: relative error <= 1e-7 (2-norms over all coordinates).

    The differences come with an error estimate; it is far below 1e-7 |grad| except where the gradient is tiny
    against the loss's rounding (e.g. y nearly constant, as with two elements per set). The gradient may differ from
    the differences by 1e-7 |grad| plus that estimate, so a correct kernel passes there too; where the estimate is
    above 1e-8 |grad| the limit and a note say so. *forward* and *mode* (a prefix of the name, "eval: "): another forward's y."""
    numeric, error = finite_differences(module, data, wrt, forward=forward)
    ref = float(np.linalg.norm(numeric))
    gap = float(np.linalg.norm(np.asarray(grad, dtype=np.float64) - numeric))
    resolved = float(np.linalg.norm(error))
    value = gap / max(ref, 1e-300)
    ok = math.isfinite(gap) and math.isfinite(resolved) and gap <= FD_LIMIT * ref + resolved
    name = f"{mode}central differences d{wrt}"
    if resolved <= 0.1 * FD_LIMIT * ref:
        return Result(name, value, "relative error <= 1e-7", ok)
    return Result(name, value, f"relative error <= 1e-7 + {resolved / max(ref, 1e-300):.1e} (differences)",
                  ok, note=f"central differences resolve d{wrt} only to {resolved:.1e} (|d{wrt}| = {ref:.1e})")


@dataclass
class Taylor:
    steps: np.ndarray  # h
    remainders: np.ndarray  # |L(x + h v) - L(x) - <g, h v>|
    rounding: np.ndarray  # a bound on the rounding error of each remainder
    fitted: np.ndarray  # indices of the remainders the slope is fitted to
    slope: float  # nan where fewer than two remainders are above rounding

    @property
    def linear(self) -> bool:
        return len(self.fitted) < 2


def taylor(module, data: dict, seed: int = 1) -> Taylor:
    """The Taylor remainders along a random direction v of x and every parameter, with their rounding bounds.

    The step actually taken is (x + h v) - x as rounded, and L(x + h v) - L(x) is summed as sum(dy * (y1 - y0)), so
    the remainder carries only the rounding of y0 and y1 (a few ulps of each) and of the two dot products, bounded by
    8 eps (sum |dy| (|y0| + |y1|) + sum |g * step|)."""
    rng = np.random.default_rng(seed)
    _, grads = loss_and_grads(module, data)
    dy = np.asarray(data["dy"], dtype=np.float64)
    y0 = forward_y(module, data)
    directions = {k: rng.normal(size=np.shape(data[k])) for k in grads}
    remainders, rounding = [], []
    for h in TAYLOR_STEPS:
        moved = {k: np.asarray(data[k] + h * directions[k], dtype=np.asarray(data[k]).dtype) for k in grads}
        steps = {k: np.asarray(moved[k], dtype=np.float64) - np.asarray(data[k], dtype=np.float64) for k in grads}
        terms = [np.asarray(grads[k], dtype=np.float64) * steps[k] for k in grads]
        y1 = forward_y(module, {**data, **moved})
        change = float(np.sum(dy * (y1 - y0)))
        remainders.append(abs(change - float(sum(np.sum(t) for t in terms))))
        rounding.append(8 * EPS * float(np.sum(np.abs(dy) * (np.abs(y0) + np.abs(y1)))
                                        + sum(np.sum(np.abs(t)) for t in terms)))
    remainders, rounding = np.array(remainders), np.array(rounding)
    significant = np.flatnonzero(np.isfinite(remainders) & (remainders > TAYLOR_SIGNIFICANT * rounding))
    fitted = significant[-TAYLOR_POINTS:]
    slope = (float(np.polyfit(np.log(TAYLOR_STEPS[fitted]), np.log(remainders[fitted]), 1)[0])
             if len(fitted) >= 2 else math.nan)
    return Taylor(TAYLOR_STEPS.copy(), remainders, rounding, fitted, slope)


def taylor_slope(module, data: dict, seed: int = 1) -> float:
    """Slope of log|L(x + h v) - L(x) - h <g, v>| against log h: 2 when the gradient is right, 1 when it is not;
    nan where the loss is linear along v (every remainder at rounding level)."""
    return taylor(module, data, seed).slope


def taylor_check(module, data: dict, seed: int = 1) -> Result:
    t = taylor(module, data, seed)
    low, high = TAYLOR_SLOPE
    if not t.linear:
        return Result("Taylor test slope", t.slope, f"{low} .. {high}", low <= t.slope <= high)
    # No h^2 term above rounding: every remainder but at most one is within 10 rounding bounds, so the error e in
    # <g, v> has e*h within a few tens of bounds at a step h >= 1/32: e itself is at rounding level. A wrong gradient
    # leaves e*h above rounding over a range of steps, which fits a slope near 1 instead.
    others = np.delete(t.remainders / t.rounding, t.fitted)
    worst = float(np.max(others))
    return Result("Taylor test remainder", worst, f"<= {TAYLOR_SIGNIFICANT:g} x rounding bound",
                  bool(np.all(np.isfinite(t.remainders))) and worst <= TAYLOR_SIGNIFICANT,
                  note="L is linear along the direction to rounding: no h^2 term to fit a slope to")


def set_sums(module, a: np.ndarray) -> np.ndarray:
    """Sum of *a* over each reduction set (one value per statistic)."""
    sizes = module._sizes(a)
    reduced = tuple(i for i, block in enumerate(module.BLOCKS) if block[2])
    return np.ascontiguousarray(a).reshape(sizes).sum(axis=reduced)


def shift_invariant(module, data: dict) -> bool:
    """Whether adding a constant to x leaves y unchanged (mean-centring normalizations): then sum(dx) = 0 per set."""
    y = forward_y(module, data)
    y_shifted = forward_y(module, {**data, "x": data["x"] + 0.375})
    return bool(np.allclose(y, y_shifted, rtol=1e-9, atol=1e-9))


def backward_rounding(module, data: dict, dx: np.ndarray, probes: int = 3) -> float:
    """How far dx moves when x and dy move by a few ulps (relative 4 eps, random): the rounding the backward
    carries, measured. Apart from rounding, dx moves by a rounding-level amount then (dx is linear in dy, and smooth
    in x). Where dx is small against the terms its formula cancels (e.g. two elements per set: y is nearly +-1
    whatever x, so dx is nearly 0 while gamma*istd*dy is not), this is well above eps*max|dx|."""
    rng = np.random.default_rng(2)
    worst = 0.0
    for _ in range(probes):
        moved = {**data, **{k: data[k] * (1 + 4 * EPS * rng.uniform(-1, 1, size=np.shape(data[k])))
                            for k in ("x", "dy")}}
        moved_dx = np.asarray(loss_and_grads(module, moved)[1]["x"], dtype=np.float64)
        worst = max(worst, float(np.max(np.abs(moved_dx - dx))))
    return worst


def sum_check(module, data: dict, dx: np.ndarray) -> Result:
    """sum(dx) over each set: <= 1e-12 max|dx|, or, where the backward's own rounding is larger, <= 4 M times the
    rounding measured on one element (a sum of M elements each off by that much; 4: the measurement samples the
    rounding, it does not bound it)."""
    sums = set_sums(module, dx)
    size = max(1, np.size(dx) // max(1, np.size(sums)))  # M, the elements per set
    worst = float(np.abs(sums).max())
    scale = float(np.abs(dx).max())
    name = "sum(dx) over each reduction set"
    allowed = SUM_LIMIT * scale
    rounding = 4 * size * backward_rounding(module, data, dx)
    if rounding <= allowed:
        return Result(name, worst / max(scale, 1e-300), "<= 1e-12 relative", worst <= allowed)
    return Result(name, worst / max(scale, 1e-300), f"<= {rounding / max(scale, 1e-300):.1e} relative (rounding)",
                  worst <= rounding, note=f"the backward's own rounding ({rounding / (4 * size):.1e} per element, "
                                          f"M = {size}) exceeds 1e-12 max|dx|")


def running_statistics(module, data: dict, seed: int = 4) -> list[np.ndarray]:
    """Running statistics for eval mode: one positive value per statistic (in 0.5 .. 1.5, a valid variance or mean
    square), for each of module.RUNNING."""
    rng = np.random.default_rng(seed)
    shape = module._stat_shape(module._sizes(data["x"]))
    return [rng.uniform(0.5, 1.5, size=shape) for _ in module.RUNNING]


def eval_checks(module, data: dict) -> list[Result]:
    """Eval mode. With running statistics: backward_eval against central differences of forward_eval, the running
    statistics held fixed (relative error <= 1e-7). Without (eval mode is the training computation): forward_eval
    equals forward_train's y exactly."""
    params = forward_inputs(module, data)
    if not getattr(module, "RUNNING", ()):
        y = np.asarray(module.forward_train(data["x"], *params)[0])
        y_eval = np.asarray(module.forward_eval(data["x"], *params))
        gap = float(np.max(np.abs(y_eval - y))) if y.shape == y_eval.shape else math.inf
        return [Result("eval: forward_eval = training's y", gap, "exactly 0: no running statistics",
                       y.shape == y_eval.shape and bool(np.array_equal(y, y_eval, equal_nan=True)))]
    running = running_statistics(module, data)

    def forward_eval(module, d: dict) -> np.ndarray:
        return np.asarray(module.forward_eval(d["x"], *forward_inputs(module, d), *running), dtype=np.float64)

    grads = module.backward_eval(data["dy"], data["x"], *[data[p] for p in backward_inputs(module)], *running)
    if isinstance(grads, np.ndarray):
        grads = (grads,)
    return [difference_check(module, data, wrt, grad, forward=forward_eval, mode="eval: ")
            for wrt, grad in zip(_gradient_names(module), grads)]


def run(module: types.ModuleType, seed: int = 0) -> list[Result]:
    """Finite differences (float64, relative error <= 1e-7), the Taylor slope, sum(dx) = 0 where it holds, and eval
    mode (see eval_checks). A module with a small-input path (SMALL: its inputs here take it) is checked again on each
    of its other paths forced (paths), so every one is proven."""
    results = _run(module, seed)
    for label, name, value in paths(module):
        kept = getattr(module, name)
        setattr(module, name, value)
        try:
            results += [dataclasses.replace(r, name=f"{r.name} ({label})") for r in _run(module, seed, False)]
        finally:
            setattr(module, name, kept)
    return results


def paths(module: types.ModuleType) -> list[tuple[str, str, object]]:
    """The paths a module's small inputs do not take by themselves, as (label, the module attribute that forces it,
    its value): the NumPy small path's passes over the input as one chunk (past _FLOAT64_UP_TO elements, per dtype)
    and the large path (past SMALL)."""
    forced = []
    if hasattr(module, "_FLOAT64_UP_TO"):
        forced.append(("one-chunk path", "_FLOAT64_UP_TO", dict.fromkeys(module._FLOAT64_UP_TO, 0)))
    if hasattr(module, "SMALL"):
        forced.append(("large path", "SMALL", 0))
    return forced


def _run(module: types.ModuleType, seed: int, double: bool = True) -> list[Result]:
    """*double*: with the double backward's check (it has one path)."""
    data = inputs(module, seed=seed)
    _, grads = loss_and_grads(module, data)
    results = [difference_check(module, data, wrt, grad) for wrt, grad in grads.items()]
    results.append(taylor_check(module, data))
    if hasattr(module, "_sizes") and hasattr(module, "BLOCKS") and shift_invariant(module, data):
        results.append(sum_check(module, data, np.asarray(grads["x"], dtype=np.float64)))
    if double and hasattr(module, "double_backward"):
        results.append(double_check(module, data, seed))
    return results + eval_checks(module, data)


def double_check(module, data: dict, seed: int = 0) -> Result:
    """double_backward against the backward it differentiates: the penalty P = sum(ggx*dx) + sum(gggamma*dgamma) +
    sum(ggbeta*dbeta) (+ sum(ggr*dr) after an epilogue with a residual) of backward (statistics from forward_train)
    differentiated along a random direction in (dy, x, gamma) (and r and beta after an epilogue, along which
    double_backward says P does not change) by Ridders' extrapolation of central differences, against the inner
    product of double_backward's outputs with that direction: relative error <= 1e-7, plus the differences' own
    error estimate where that is larger (as difference_check)."""
    rng = np.random.default_rng(seed + 7)
    names = parameter_names(module)
    taken = backward_inputs(module)  # r, gamma, beta as backward takes them
    upstream = {"ggx": rng.normal(size=data["x"].shape)}
    upstream |= {"ggr": rng.normal(size=data["r"].shape)} if residual(module) else {}
    upstream |= {"gg" + q: rng.normal(size=data[q].shape) for q in names}
    point = {"dy": data["dy"], "x": data["x"]} | {q: data[q] for q in taken}
    direction = {k: rng.normal(size=np.shape(v)) for k, v in point.items()}

    def penalty(h: float) -> float:
        at = data | {k: v + h * direction[k] for k, v in point.items()}
        _, *saved = module.forward_train(at["x"], *forward_inputs(module, at))
        grads = module.backward(at["dy"], at["x"], *[at[q] for q in taken], *saved)
        grads = (grads,) if isinstance(grads, np.ndarray) else grads
        return sum(float(np.sum(u * g)) for u, g in zip(upstream.values(), grads))

    def quotient(h: float):
        plus, minus = penalty(h), penalty(-h)
        return (plus - minus) / (2 * h), np.finfo(np.float64).eps * (abs(plus) + abs(minus)) / h

    estimate, error = ridders(quotient, KINK_STEP if epilogue(module) else 1 / 16)
    numeric, resolved = float(estimate[0]), float(error[0])
    _, *saved = module.forward_train(data["x"], *forward_inputs(module, data))
    out = module.double_backward(*upstream.values(), data["dy"], data["x"], *[data[q] for q in taken], *saved)
    # what double_backward returns: the gradients with respect to dy, x and gamma (r's and beta's are 0)
    exact = sum(float(np.sum(o * direction[k])) for o, k in zip(out, ("dy", "x", "gamma")))
    gap, ref = abs(exact - numeric), abs(numeric)
    value = gap / max(ref, 1e-300)
    ok = math.isfinite(gap) and math.isfinite(resolved) and gap <= FD_LIMIT * ref + resolved
    name = "double backward, along a direction"
    if resolved <= 0.1 * FD_LIMIT * ref:
        return Result(name, value, "relative error <= 1e-7", ok)
    return Result(name, value, f"relative error <= 1e-7 + {resolved / max(ref, 1e-300):.1e} (differences)", ok,
                  note=f"the differences resolve it only to {resolved:.1e} (|derivative| = {ref:.1e})")
