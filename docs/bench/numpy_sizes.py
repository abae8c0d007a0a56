"""The NumPy backend against the naive staged NumPy formula (symbn.bench.harness.Staged) from (4, 5) to (4096, 4096).

Batch NC, forward_train (updating running statistics, as a training step does) then backward, per call, the two
interleaved run by run (7 runs; each run many calls in a row, at least one); prints the medians and the median of
the run-by-run ratios naive/symbn. The catalogue module in generated/ is the one timed. Up to the module's SMALL
elements a third column, `kernels`, times the small path's own kernels and the running update with no check at all
(the module's private `_forward_small` and `_dx_train`: its float64 kernels up to `_FLOAT64_UP_TO` elements, its
passes over the input as one chunk above): the difference is what the checks cost per call (every argument,
aliasing, the guard that hands a failed step to the exact path, shaping the outputs).

    python docs/bench/numpy_sizes.py            # a few minutes
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from symbn.bench.harness import Staged
from symbn.codegen.store import import_path
from symbn.core.spec import preset

SHAPES = ((4, 5), (32, 200), (64, 256), (64, 512), (256, 1024), (1024, 4096), (4096, 4096))


def main() -> None:
    m = import_path(Path(__file__).resolve().parents[2] / "generated" / "batch_nc_numpy.py")
    naive = Staged(preset("batch", "NC"))
    for shape in SHAPES:
        for dtype in (np.float32, np.float64):
            rng = np.random.default_rng(0)
            x = rng.standard_normal(shape, dtype=dtype) * 2 + 0.5
            dy = rng.standard_normal(shape, dtype=dtype)
            gamma, beta = np.ones(shape[1], dtype), np.zeros(shape[1], dtype)
            running = [[np.zeros(shape[1], dtype), np.ones(shape[1], dtype)] for _ in range(2)]

            def symbn_numpy():
                _, mu, istd = m.forward_train(x, gamma, beta, *running[0])
                return m.backward(dy, x, gamma, mu, istd)

            def staged():
                _, cache = naive.forward_train(x, gamma, beta, running=running[1])
                return naive.backward(dy, cache)

            def kernels():
                with np.errstate(all="ignore"):
                    y, (mu, var, istd) = m._forward_small(x, gamma, beta, m.EPS, None)
                    m._update_running(*running[2], mu.reshape(-1), var.reshape(-1), x.shape[0], m.MOMENTUM)
                    dx = np.empty_like(x)
                    grads = m._dx_train(dy, x, gamma, [mu.reshape(-1), istd.reshape(-1)], m.EPS, dx)
                return dx, [g.astype(dtype) for g in grads]

            running.append([np.zeros(shape[1], dtype), np.ones(shape[1], dtype)])
            calls = min(500, max(1, int(2e6 // x.size)))
            times: dict = {symbn_numpy: [], staged: []} | ({kernels: []} if x.size <= m.SMALL else {})
            for _ in range(7):
                for f, ts in times.items():
                    t = time.perf_counter()
                    for _ in range(calls):
                        f()
                    ts.append((time.perf_counter() - t) / calls * 1e6)
            ratios = [b / a for a, b in zip(times[symbn_numpy], times[staged])]
            print(f"{str(shape):13s} {np.dtype(dtype).name:8s} symbn-numpy {statistics.median(times[symbn_numpy]):10.1f}"
                  f" us  naive {statistics.median(times[staged]):10.1f} us  naive/symbn {statistics.median(ratios):.2f}x"
                  f" (min {min(ratios):.2f})" + (f"  kernels {statistics.median(times[kernels]):8.1f} us"
                                                 if kernels in times else ""))


if __name__ == "__main__":
    main()
