"""How close the generated double backward (Numba, out=) comes to what any double backward must do on this machine.

In one process, interleaved round by round, each timed call after writing 64 MiB (cold caches), for the layouts whose
statistics are walked one at a time (layer and RMS NC: rows; batch NCHW: a channel is N runs of H*W):

- symbn: the catalogue module's double_backward with out=;
- two loops: per statistic, sum x, dy*x and ggx, then write gdy = ggx*a + x and gx = dy*b + c (the structure of the
  generated kernel with almost no arithmetic);
- one pass: gdy = ggx + x, gx = dy + x (read three arrays once, write two: the least bytes, 5*E*s).

    python docs/bench/double_floor.py            # about a minute
"""

from __future__ import annotations

import inspect
import time

import numba
import numpy as np

import symbn


@numba.njit(parallel=True, fastmath=True)
def two_loops(dy, x, ggx, gdy, gx):
    n0, n1, n2 = x.shape
    for j in numba.prange(n1):
        a = 0.0
        b = 0.0
        c = 0.0
        for i in range(n0):
            for k in range(n2):
                a += np.float64(x[i, j, k])
                b += np.float64(dy[i, j, k]) * x[i, j, k]
                c += np.float64(ggx[i, j, k])
        for i in range(n0):
            for k in range(n2):
                gdy[i, j, k] = ggx[i, j, k] * a + x[i, j, k]
                gx[i, j, k] = dy[i, j, k] * b + c


@numba.njit(parallel=True, fastmath=True)
def one_pass(dy, x, ggx, gdy, gx):
    n0, n1, n2 = x.shape
    for j in numba.prange(n1):
        for i in range(n0):
            for k in range(n2):
                gdy[i, j, k] = ggx[i, j, k] + x[i, j, k]
                gx[i, j, k] = dy[i, j, k] + x[i, j, k]


CASES = (("layer NC", symbn.preset("layer", "NC"), (4096, 768)),
         ("RMS NC", symbn.preset("rms", "NC"), (4096, 4096)),
         ("batch NCHW", symbn.preset("batch", "NCHW"), (32, 64, 56, 56)),
         ("batch NCHW large", symbn.preset("batch", "NCHW"), (64, 128, 64, 64)))


def main(rounds: int = 15) -> None:
    flush = np.ones(8 << 20)
    print(f"{numba.get_num_threads()} threads, medians of {rounds} interleaved rounds, GB/s over 5*E*s")
    for name, spec, shape in CASES:
        m = symbn.load(spec, "numba")
        rng = np.random.default_rng(0)
        pshape = tuple(shape[a] for a in m.PARAM_AXES)
        for dtype in (np.float32, np.float64):
            x, dy, ggx = (rng.normal(size=shape).astype(dtype) for _ in range(3))
            forward = inspect.signature(m.forward_train).parameters
            params = {p: np.ones(pshape, dtype) for p in ("gamma", "beta") if p in forward}
            _, *saved = m.forward_train(x, **params)
            upstream = [np.ones(pshape, dtype) for p in ("gggamma", "ggbeta")
                        if p in inspect.signature(m.double_backward).parameters]
            out = (np.empty_like(x), np.empty_like(x))
            # the loops' view: (rows, statistics, contiguous run) = (N, C, H*W) or (1, N, C)
            view = (shape[0], shape[1], -1) if len(shape) == 4 else (1, shape[0], shape[1])
            v = [a.reshape(view) for a in (dy, x, ggx) + out]
            calls = {"symbn": lambda: m.double_backward(ggx, *upstream, dy, x, params["gamma"], *saved, out=out),
                     "two loops": lambda: two_loops(*v), "one pass": lambda: one_pass(*v)}
            times = {k: [] for k in calls}
            for f in calls.values():
                f()
            for _ in range(rounds):
                for k, f in calls.items():
                    flush += 1
                    t = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t)
            least = 5 * x.size * x.itemsize
            row = ", ".join(f"{k} {np.median(t) * 1e3:.2f} ms ({least / np.median(t) / 1e9:.1f} GB/s)"
                            for k, t in times.items())
            print(f"{name} {shape} {np.dtype(dtype).name}: {row}", flush=True)


if __name__ == "__main__":
    main()
