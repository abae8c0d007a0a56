"""How close the generated kernels (Numba, out=) come to what any kernel of the same pass must do on this machine.

For each pass and case, in one process, interleaved round by round, each timed call after writing 64 MiB (cold
caches), three kernels on the same arrays:

- symbn: the catalogue module's forward_train, backward or double_backward with out=;
- two passes: the generated kernels' structure with almost no arithmetic: per statistic, sum every input, then
  write every output as one multiply-add of each input (for column layouts, where a statistic spans every row,
  one pass over all rows for the sums and a second for the outputs, rows in parallel chunks);
- one pass: read every input once and write every output (out = 2*input + input): the least bytes, no reduction.

The least bytes are forward 2*E*s (read x, write y), backward 3*E*s (read dy, x; write dx), double backward 5*E*s
(read dy, x, ggx; write gdy, gx). GB/s is over those bytes, for all three kernels.

    python docs/bench/floors.py            # a few minutes
"""

from __future__ import annotations

import inspect
import sys
import time

import numba
import numpy as np

import symbn

# pass: (inputs, outputs)
PASSES = {"forward": (1, 1), "backward": (2, 1), "double": (3, 2)}


@numba.njit(parallel=True, fastmath=True)
def _stat_two_passes(ins, outs):
    # ins (K, N, S, L), outs (Q, N, S, L): statistic j is the N runs [:, j, :] of each input
    K, n0, n1, n2 = ins.shape
    for j in numba.prange(n1):
        acc = np.zeros(K)
        for k in range(K):
            for i in range(n0):
                a = 0.0
                for m in range(n2):
                    a += np.float64(ins[k, i, j, m])
                acc[k] += a
        # innermost loops from 0 (Numba drops the negative-index check and vectorizes), a run at a time: the
        # output's run stays in L1 between the inputs
        for q in range(outs.shape[0]):
            for i in range(n0):
                for m in range(n2):
                    outs[q, i, j, m] = ins[0, i, j, m] * acc[0]
                for k in range(1, K):
                    for m in range(n2):
                        outs[q, i, j, m] += ins[k, i, j, m] * acc[k]


@numba.njit(parallel=True, fastmath=True)
def _col_two_passes(ins, outs, partial):
    # ins (K, R, C), outs (Q, R, C): statistic c is column c; rows in parallel chunks, an accumulator row per chunk
    K, R, C = ins.shape
    chunks = partial.shape[0]
    for t in numba.prange(chunks):
        for r in range(t * R // chunks, (t + 1) * R // chunks):
            for k in range(K):
                for c in range(C):
                    partial[t, k, c] += ins[k, r, c]
    total = np.zeros((K, C))
    for t in range(chunks):
        total += partial[t]
    for t in numba.prange(chunks):
        for r in range(t * R // chunks, (t + 1) * R // chunks):
            for q in range(outs.shape[0]):
                for c in range(C):
                    outs[q, r, c] = ins[0, r, c] * total[0, c]
                for k in range(1, K):
                    for c in range(C):
                        outs[q, r, c] += ins[k, r, c] * total[k, c]


@numba.njit(parallel=True, fastmath=True)
def _one_pass(ins, outs):
    # ins (K, rows, L), outs (Q, rows, L): every output twice the first input plus the others, row by row (twice: a
    # plain copy would become memcpy, whose string stores skip reading the output's lines first, as no kernel that
    # computes its output does)
    K, rows, n = ins.shape
    for r in numba.prange(rows):
        for q in range(outs.shape[0]):
            for i in range(n):
                outs[q, r, i] = 2 * ins[0, r, i]
            for k in range(1, K):
                for i in range(n):
                    outs[q, r, i] += ins[k, r, i]


CASES = (("batch NCHW", symbn.preset("batch", "NCHW"), (32, 64, 56, 56)),
         ("batch NCHW large", symbn.preset("batch", "NCHW"), (64, 128, 64, 64)),
         ("layer NC", symbn.preset("layer", "NC"), (4096, 768)),
         ("RMS NC", symbn.preset("rms", "NC"), (4096, 4096)),
         ("batch NC", symbn.preset("batch", "NC"), (1024, 4096)),
         ("batch NHWC", symbn.preset("batch", "NHWC"), (32, 56, 56, 64)))


def _calls(m, shape, dtype, rng):
    """pass -> (symbn call, number of inputs, number of outputs)."""
    pshape = tuple(shape[a] for a in m.PARAM_AXES)
    x, dy, ggx = (rng.normal(size=shape).astype(dtype) for _ in range(3))
    forward = inspect.signature(m.forward_train).parameters
    params = {p: np.ones(pshape, dtype) for p in ("gamma", "beta") if p in forward}
    _, *saved = m.forward_train(x, **params)
    upstream = [np.ones(pshape, dtype) for p in ("gggamma", "ggbeta")
                if p in inspect.signature(m.double_backward).parameters]
    y, dx, gdy, gx = (np.empty_like(x) for _ in range(4))
    gamma = [params["gamma"]] if "gamma" in params else []
    return {
        "forward": lambda: m.forward_train(x, **params, out=y),
        "backward": lambda: m.backward(dy, x, *gamma, *saved, out=dx),
        "double": lambda: m.double_backward(ggx, *upstream, dy, x, *gamma, *saved, out=(gdy, gx)),
    }


def _floors(spec, shape, dtype, kind):
    """The two-pass and one-pass kernels on arrays of their own (inputs and outputs stacked: the same bytes), in the
    views the generated kernels walk."""
    k, q = PASSES[kind]
    ins = np.random.default_rng(1).normal(size=(k, *shape)).astype(dtype)
    outs = np.empty((q, *shape), dtype)
    if spec.preset == "batch" and spec.layout in ("NC", "NHWC"):
        vi, vo = ins.reshape(k, -1, shape[-1]), outs.reshape(q, -1, shape[-1])
        partial = np.zeros((4 * numba.get_num_threads(), k, shape[-1]))
        two = lambda: _col_two_passes(vi, vo, partial)  # noqa: E731
    else:
        # batch NCHW: a channel is N runs of H*W; per-row statistics (RMS NC): one run per row
        view = (shape[0], shape[1], -1) if spec.preset == "batch" else (1, shape[0], shape[1])
        vi, vo = ins.reshape(k, *view), outs.reshape(q, *view)
        two = lambda: _stat_two_passes(vi, vo)  # noqa: E731
    return {"two passes": two, "one pass": lambda: _one_pass(ins.reshape(k, -1, shape[-1]), outs.reshape(q, -1, shape[-1]))}


def main(rounds: int = 11) -> None:
    from symbn.bench.bandwidth import measure

    flush = np.ones(8 << 20)
    rates = measure(numba.get_num_threads())
    print(f"{numba.get_num_threads()} threads, medians of {rounds} interleaved rounds; GB/s over the least bytes; "
          f"the bench's bandwidth measurement now: {rates}")
    for name, spec, shape in CASES:
        m = symbn.load(spec, "numba")
        for dtype in (np.float32, np.float64):
            calls = _calls(m, shape, dtype, np.random.default_rng(0))
            for kind, ours in calls.items():
                timed = {"symbn": ours} | _floors(spec, shape, dtype, kind)
                times = {k: [] for k in timed}
                for f in timed.values():
                    f()
                for _ in range(rounds):
                    for k, f in timed.items():
                        flush += 1
                        t = time.perf_counter()
                        f()
                        times[k].append(time.perf_counter() - t)
                least = sum(PASSES[kind]) * int(np.prod(shape)) * np.dtype(dtype).itemsize
                row = ", ".join(f"{k} {np.median(t) * 1e3:.2f} ms ({least / np.median(t) / 1e9:.1f} GB/s)"
                                for k, t in times.items())
                print(f"{name} {shape} {np.dtype(dtype).name} {kind}: {row}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 11)
