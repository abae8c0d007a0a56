"""Numerical checks of a generated module: central differences, the Taylor test and exact invariants.

They need only the module (its public functions and the constants it carries), so ``symbn check`` can run them on
any generated file, including one copied into another project.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Result:
    name: str
    value: float
    limit: str
    ok: bool

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name:<34} {self.value:.3e}  ({self.limit})"


def test_shape(module) -> tuple[int, ...]:
    """A small shape that fits the module: 2-5 per axis, channels a multiple of the group count."""
    shape = [3, 4, 3, 5, 2][: module.NDIM] + [2] * max(0, module.NDIM - 5)
    if module.GROUPS:
        shape[module.CHANNEL_AXIS] = 2 * module.GROUPS
    return tuple(shape)


def inputs(module, shape=None, seed: int = 0, dtype=np.float64) -> dict:
    rng = np.random.default_rng(seed)
    shape = shape or test_shape(module)
    pshape = tuple(shape[a] for a in module.PARAM_AXES)
    out = dict(x=rng.normal(size=shape).astype(dtype), dy=rng.normal(size=shape).astype(dtype))
    for p in parameter_names(module):
        out[p] = rng.normal(1.0 if p == "gamma" else 0.0, 0.5, size=pshape)
    return out


def parameter_names(module) -> list[str]:
    import inspect

    return [p for p in ("gamma", "beta") if p in inspect.signature(module.forward_train).parameters]


def loss_and_grads(module, data: dict):
    """L = sum(dy * y) and the module's gradients of L with respect to x and the parameters."""
    params = [data[p] for p in parameter_names(module)]
    y, *saved = module.forward_train(data["x"], *params)
    gamma = [data["gamma"]] if "gamma" in data else []
    grads = module.backward(data["dy"], data["x"], *gamma, *saved)
    return float(np.sum(data["dy"] * y)), dict(zip(["x"] + parameter_names(module), grads))


def central_differences(module, data: dict, wrt: str, h: float = 1e-6) -> np.ndarray:
    base = data[wrt]
    grad = np.zeros_like(base, dtype=np.float64)
    flat = base.reshape(-1)
    for i in range(flat.size):
        values = []
        for step in (h, -h):
            moved = flat.copy()
            moved[i] += step
            values.append(loss_and_grads_forward(module, {**data, wrt: moved.reshape(base.shape)}))
        grad.reshape(-1)[i] = (values[0] - values[1]) / (2 * h)
    return grad


def loss_and_grads_forward(module, data: dict) -> float:
    params = [data[p] for p in parameter_names(module)]
    y = module.forward_train(data["x"], *params)[0]
    return float(np.sum(data["dy"] * y))


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def taylor_slope(module, data: dict, seed: int = 1) -> float:
    """Slope of log|L(x + h v) - L(x) - h <g, v>| against log h: 2 when the gradient is right, 1 when it is not."""
    rng = np.random.default_rng(seed)
    loss, grads = loss_and_grads(module, data)
    directions = {k: rng.normal(size=np.shape(data[k])) for k in grads}
    slope_of = float(sum(np.sum(grads[k] * directions[k]) for k in grads))
    # Small enough that the h**2 term dominates the h**3 term, large enough that rounding (1e-16 * L) stays far below.
    hs = 1e-3 / 2.0 ** np.arange(5)
    residuals = []
    for h in hs:
        moved = {**data, **{k: data[k] + h * directions[k] for k in grads}}
        residuals.append(abs(loss_and_grads_forward(module, moved) - loss - h * slope_of))
    return float(np.polyfit(np.log(hs), np.log(residuals), 1)[0])


def set_sums(module, a: np.ndarray) -> np.ndarray:
    """Sum of *a* over each reduction set (one value per statistic)."""
    sizes = module._sizes(a)
    reduced = tuple(i for i, block in enumerate(module.BLOCKS) if block[2])
    return np.ascontiguousarray(a).reshape(sizes).sum(axis=reduced)


def shift_invariant(module, data: dict) -> bool:
    """Whether adding a constant to x leaves y unchanged (mean-centring normalizations): then sum(dx) = 0 per set."""
    params = [data[p] for p in parameter_names(module)]
    y = module.forward_train(data["x"], *params)[0]
    y_shifted = module.forward_train(data["x"] + 0.375, *params)[0]
    return bool(np.allclose(y, y_shifted, rtol=1e-9, atol=1e-9))


def run(module, seed: int = 0) -> list[Result]:
    """Finite differences (float64, relative error <= 1e-7), the Taylor slope, and sum(dx) = 0 where it holds."""
    data = inputs(module, seed=seed)
    _, grads = loss_and_grads(module, data)
    results = []
    for wrt, grad in grads.items():
        err = relative_error(grad, central_differences(module, data, wrt))
        results.append(Result(f"central differences d{wrt}", err, "relative error <= 1e-7", err <= 1e-7))
    slope = taylor_slope(module, data)
    results.append(Result("Taylor test slope", slope, "1.8 .. 2.2", 1.8 <= slope <= 2.2))
    if shift_invariant(module, data):
        worst = float(np.abs(set_sums(module, grads["x"])).max())
        scale = float(np.abs(grads["x"]).max())
        results.append(Result("sum(dx) over each reduction set", worst / scale, "<= 1e-12 relative",
                              worst <= 1e-12 * scale))
    return results
