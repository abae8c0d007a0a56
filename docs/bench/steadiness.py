"""How steady a call can be on this machine: max/median over the bench's timed runs, for kernels that only move memory.

Issue 23 asks for max/median <= 1.5 over the timed runs of every large case with fresh outputs. This times, the way
`symbn bench` times a large case (each run after writing 64 MiB, runs interleaved round by round, --repeat runs),
kernels with nothing to be unsteady about but the machine:

- copy, out=: y = 2*x into a preallocated y (the least bytes of a forward, two threads, as symbn's kernels run);
- copy, fresh: the same into a new np.empty array each call (a fresh output without symbn's pool);
- add, out= and add, fresh: dx = dy + x (the least bytes of a backward);
- compute: a fixed chain of multiply-adds in registers, about as long as the copy, touching no memory (what the
  machine's scheduling alone does to a call).

each at the byte size of every large bench case, both dtypes, then repeated over --trials independent sets of runs.
It prints, per kernel, how many (case, dtype) rows had max/median above 1.5, and the median and largest max/median.

    python docs/bench/steadiness.py                 # about three minutes
    python docs/bench/steadiness.py --trials 3      # quicker
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import numba
import numpy as np

from symbn.bench import bandwidth
from symbn.bench.harness import CASES

LIMIT = 1.5


@numba.njit(parallel=True, fastmath=True)
def _scale(x, y):
    for i in numba.prange(x.size):
        y[i] = 2 * x[i]


@numba.njit(parallel=True, fastmath=True)
def _add(a, b, y):
    for i in numba.prange(a.size):
        y[i] = a[i] + b[i]


@numba.njit(parallel=True)
def _chain(n, out):
    # per thread a dependent chain of multiply-adds: its time is the clock's and the scheduler's, no memory's
    for t in numba.prange(out.size):
        a = 1.0 + t
        for _ in range(n):
            a = a * 0.999999 + 1e-6
        out[t] = a


def _kernels(elements: int, dtype: np.dtype) -> tuple[dict, list]:
    """The kernels on arrays of this size, and the chain's step count (one item, set once a copy has been timed)."""
    x = np.random.default_rng(0).standard_normal(elements).astype(dtype)
    dy, y = x[::-1].copy(), np.empty_like(x)
    lanes = np.empty(numba.get_num_threads())
    steps = [1]
    return {
        "copy, out=": lambda: _scale(x, y),
        "copy, fresh": lambda: _scale(x, np.empty_like(x)),
        "add, out=": lambda: _add(dy, x, y),
        "add, fresh": lambda: _add(dy, x, np.empty_like(x)),
        "compute": lambda: _chain(steps[0], lanes),
    }, steps


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _chain_steps(target_s: float) -> int:
    """Steps of _chain that take about *target_s* (a copy's time at the case's size)."""
    lanes = np.empty(numba.get_num_threads())
    _chain(1000, lanes)
    steps = 1 << 16
    while True:
        took = min(_timed(lambda: _chain(steps, lanes)) for _ in range(3))
        if took > 1e-3:
            return max(1, int(steps * target_s / took))
        steps *= 4


def main(trials: int, repeat: int) -> None:
    cold = bandwidth.ColdCache()
    sizes = sorted({(int(np.prod(c.shape)), dtype) for c in CASES if c.calls == 1 for dtype in ("float32", "float64")})
    ratios: dict[str, list[float]] = {}
    for trial in range(trials):
        for elements, dtype in sizes:
            kernels, steps = _kernels(elements, np.dtype(dtype))
            kernels["copy, out="]()
            steps[0] = _chain_steps(statistics.median(_timed(kernels["copy, out="]) for _ in range(5)))
            for fn in kernels.values():
                fn()  # warm: compiled, and every page of the arrays touched
            times = {name: [] for name in kernels}
            gc.disable()
            try:
                for _ in range(repeat):
                    for name, fn in kernels.items():
                        cold()
                        times[name].append(_timed(fn))
            finally:
                gc.enable()
            for name, ts in times.items():
                ratios.setdefault(name, []).append(max(ts) / statistics.median(ts))
        print(f"trial {trial + 1} of {trials} done", flush=True)
    rows = len(sizes) * trials
    print(f"{numba.get_num_threads()} threads; {len(sizes)} sizes (the large bench cases' x, float32 and float64) x "
          f"{trials} trials = {rows} rows per kernel; {repeat} cold runs per row, interleaved as in the bench")
    print(f"{'kernel':<14}{'rows over ' + str(LIMIT):>14}{'median max/median':>20}{'largest':>10}")
    for name, rs in ratios.items():
        over = sum(r > LIMIT for r in rs)
        print(f"{name:<14}{over:>7} of {len(rs):<4}{statistics.median(rs):>20.2f}{max(rs):>10.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="independent sets of runs per size (default 10)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per row, as symbn bench --repeat (10)")
    a = parser.parse_args()
    main(a.trials, a.repeat)
