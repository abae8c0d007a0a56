"""``symbn bench --sync``: SyncBatchNorm's passes on 1, 2, 4, ... MPI processes on this machine, each split into
local compute (partial_*, finish_*) and communication (the one Allreduce per pass), with the bytes each process
sends per pass. A global batch is split evenly across the processes (strong scaling); every phase is timed between
barriers and reported as the slowest process's time, median over the runs.

Run as ``python -m symbn.bench.sync OUT.json N C H W REPEAT`` under mpiexec by :func:`run`.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from symbn.bench.harness import BenchError

PHASES = ("partial_forward", "allreduce_forward", "finish_forward", "partial_backward", "allreduce_backward",
          "finish_backward")
SHAPE = (32, 64, 56, 56)
SMOKE_SHAPE = (8, 4, 5, 5)


def mpiexec() -> str:
    here = Path(sys.executable).with_name("mpiexec")
    found = str(here) if here.is_file() else shutil.which("mpiexec")
    if found is None:
        raise BenchError('--sync needs mpiexec and mpi4py: pip install "symbn[mpi]" (mpi4py and the mpich wheel)')
    return found


def run(processes: list[int], repeat: int, smoke: bool, progress=lambda _what: None) -> dict:
    """Start one mpiexec per process count; their reports, and the machine's core count."""
    launcher = mpiexec()
    if not processes or any(p < 1 for p in processes):
        raise BenchError(f"--processes: expected positive process counts such as 1,2,4; got {processes}")
    shape = SMOKE_SHAPE if smoke else SHAPE
    repeat = 1 if smoke else repeat
    cores = os.cpu_count() or 1
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in processes:
            progress(f"SyncBatchNorm on {p} processes")
            out = Path(tmp) / f"{p}.json"
            threads = str(max(1, cores // p))  # the cores shared out, as a data-parallel job would
            env = dict(os.environ, NUMBA_NUM_THREADS=threads, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
            done = subprocess.run([launcher, "-n", str(p), sys.executable, "-m", "symbn.bench.sync", str(out),
                                   *map(str, shape), str(repeat)], env=env, capture_output=True, text=True)
            if done.returncode:
                raise BenchError(f"mpiexec -n {p} failed: {(done.stderr or done.stdout).strip()[-800:]}")
            runs.append(json.loads(out.read_text()))
    return dict(shape=list(shape), repeat=repeat, cores=cores, runs=runs)


def table(result: dict) -> str:
    """The phases per process count, in ms, and the bytes each process sends per pass."""
    head = ["processes", *PHASES, "fwd+bwd", "comm share", "bytes/pass fwd", "bytes/pass bwd"]
    lines = [f"SyncBatchNorm, batch NCHW {tuple(result['shape'])} split evenly, float32 input, Numba backend, "
             f"{result['cores']} cores shared out; slowest process, median of {result['repeat']} runs, ms",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["runs"]:
        t = r["ms"]
        total = sum(t[p] for p in PHASES)
        comm = t["allreduce_forward"] + t["allreduce_backward"]
        cells = [str(r["processes"])] + [f"{t[p]:.3f}" for p in PHASES]
        cells += [f"{total:.3f}", f"{comm / total:.0%}", str(r["bytes_forward"]), str(r["bytes_backward"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _worker(out: str, shape: tuple[int, ...], repeat: int) -> None:
    from mpi4py import MPI

    from symbn.codegen.store import load
    from symbn.core.spec import preset
    from symbn.distributed import _combine

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    m = load(preset("batch", "NCHW"), "numba")
    rows = np.array_split(np.arange(shape[0]), size)[rank]
    rng = np.random.default_rng(rank)
    x = rng.normal(1.0, 2.0, (len(rows),) + shape[1:]).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    gamma, beta = np.ones(shape[1]), np.zeros(shape[1])
    y, dx = np.empty_like(x), np.empty_like(x)
    times = {p: [] for p in PHASES}

    def timed(phase, f):
        comm.Barrier()
        start = time.perf_counter()
        value = f()
        elapsed = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
        if timed.on:
            times[phase].append(elapsed * 1e3)
        return value

    share = m.partial_forward(x)
    datatype, join = _combine(m, share.size)
    for i in range(repeat + 1):  # the first round compiles and warms up
        timed.on = i > 0
        share = timed("partial_forward", lambda: m.partial_forward(x))
        total = np.empty_like(share)
        timed("allreduce_forward", lambda: comm.Allreduce([share, 1, datatype], [total, 1, datatype], op=join))
        _, mu, istd = timed("finish_forward", lambda: m.finish_forward(x, gamma, beta, total, out=y))
        back = timed("partial_backward", lambda: m.partial_backward(dy, x, gamma, mu, istd))
        summed = np.empty_like(back)
        timed("allreduce_backward", lambda: comm.Allreduce(back, summed, op=MPI.SUM))
        timed("finish_backward", lambda: m.finish_backward(dy, x, gamma, mu, istd, summed, out=dx))
    if rank == 0:
        report = dict(processes=size, ms={p: statistics.median(v) for p, v in times.items()},
                      bytes_forward=share.nbytes, bytes_backward=back.nbytes)
        Path(out).write_text(json.dumps(report))


if __name__ == "__main__":
    _worker(sys.argv[1], tuple(int(v) for v in sys.argv[2:-1]), int(sys.argv[-1]))
