"""Inference (forward_eval) of the NumPy backend against the naive staged formula, and against two hand-written floors
with no checks at all, at the small sizes.

Batch NC, per call, the five interleaved run by run (9 runs of many calls each); prints the medians in µs:

- symbn: the catalogue module's forward_eval, as a user calls it (the same parameters each call, as inference
  makes them: its values per parameter set are computed once and kept);
- symbn, new set: the same with a parameter set it has not kept at each call (gamma cycles through one more set
  than the module keeps), so every call computes its coefficients;
- naive: symbn.bench.harness.Staged.forward_eval, the textbook formula in the input's dtype;
- f64 no checks: float64 copies, y = beta + gamma*istd*(x - mu), cast back;
- shift no checks: the small path's arithmetic in the input's dtype (xs = x - shift with shift the mean rounded to
  that dtype, y = xs*k0 + k1 with float64 coefficients cast), its coefficients computed at each call.

The floors are batch norm's eval formula written out for this measurement only; they check nothing (no argument,
no aliasing, no step that overflows), which is what the difference to `symbn, new set` costs.

    python docs/bench/numpy_inference.py            # about a minute
"""

from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path

import numpy as np

from symbn.bench.harness import Staged
from symbn.codegen.store import import_path
from symbn.core.spec import preset

SHAPES = ((4, 5), (32, 200), (64, 512))


def f64_floor(x, gamma, beta, running_mu, running_var, eps):
    istd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    y = beta.astype(np.float64) + gamma.astype(np.float64) * istd * (x.astype(np.float64) - running_mu)
    return y.astype(x.dtype)


def shift_floor(x, gamma, beta, running_mu, running_var, eps):
    mu = running_mu.astype(np.float64)
    istd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    shift = mu.astype(x.dtype)
    k = gamma * istd
    y = np.multiply(x - shift, k.astype(x.dtype))
    y += (beta - k * (mu - shift)).astype(x.dtype)
    return y


def main() -> None:
    m = import_path(Path(__file__).resolve().parents[2] / "generated" / "batch_nc_numpy.py")
    naive = Staged(preset("batch", "NC"))
    for shape in SHAPES:
        for dtype in (np.float32, np.float64):
            rng = np.random.default_rng(0)
            x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
            gamma, beta = np.ones(shape[1], dtype), np.zeros(shape[1], dtype)
            mu, var = rng.normal(size=shape[1]).astype(dtype), rng.uniform(0.5, 2.0, shape[1]).astype(dtype)
            sets = itertools.cycle([gamma + i for i in range(m._EVAL_KEEP + 1)])
            calls = {
                "symbn": lambda: m.forward_eval(x, gamma, beta, mu, var),
                "symbn, new set": lambda: m.forward_eval(x, next(sets), beta, mu, var),
                "naive": lambda: naive.forward_eval(x, gamma, beta, running=(mu, var)),
                "f64 no checks": lambda: f64_floor(x, gamma, beta, mu, var, m.EPS),
                "shift no checks": lambda: shift_floor(x, gamma, beta, mu, var, m.EPS),
            }
            want = calls["symbn"]()
            for name in ("f64 no checks", "shift no checks"):  # the floors compute what the module does
                np.testing.assert_allclose(calls[name](), want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
            n = min(2000, max(1, int(4e6 // x.size)))
            times: dict = {name: [] for name in calls}
            for _ in range(9):
                for name, f in calls.items():
                    t = time.perf_counter()
                    for _ in range(n):
                        f()
                    times[name].append((time.perf_counter() - t) / n * 1e6)
            print(f"{str(shape):10s} {np.dtype(dtype).name:8s}"
                  + "".join(f"  {name} {statistics.median(ts):7.1f}" for name, ts in times.items()) + " us")


if __name__ == "__main__":
    main()
