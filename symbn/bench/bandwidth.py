"""The machine side of the performance model: the least bytes a pass must move, how fast this machine streams them
(measured with a large copy and a large reduction, in the same process as the kernels), what the machine is, and how
busy other processes kept it while we measured."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

#: Whole tensors a pass must at least move, in units of E*s (E elements of s bytes): forward and inference read x
#: and write y; backward reads x and dy and writes dx; forward+backward does both; double-backward reads x, dy and
#: ggx and writes gdy and gx.
TENSORS_MOVED = {"forward": 2, "backward": 3, "forward+backward": 5, "inference": 2, "double-backward": 5}
# an epilogue's residual: read by the forward (r), read and written by the backward (r, dr), read by the double
# backward with its upstream gradient (r, ggr)
RESIDUAL_MOVED = {"forward": 1, "backward": 2, "forward+backward": 3, "inference": 1, "double-backward": 2}


def min_bytes(pass_name: str, elements: int, itemsize: int, residual: bool = False) -> int:
    return (TENSORS_MOVED[pass_name] + residual * RESIDUAL_MOVED[pass_name]) * elements * itemsize


def _chunks(a: np.ndarray, parts: int) -> list[np.ndarray]:
    return np.array_split(a, parts) if parts > 1 else [a]


def _best_rate(work, bytes_moved: int, repeat: int) -> float:
    """GB/s of the fastest of *repeat* runs: the bound is what the machine can do, not what it does on average."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - t)
    return bytes_moved / best / 1e9


def stream(mib: int = 256, threads: int = 1, repeat: int = 5) -> dict[str, float]:
    """GB/s of ``np.copyto`` (bytes read + written) and ``np.sum`` (bytes read) over float64 arrays of *mib* MiB,
    split over *threads* Python threads (NumPy releases the GIL in both, so the threads really run together)."""
    n = mib * 2**20 // 8
    src = np.ones(n)
    dst = np.empty(n)
    np.copyto(dst, src)  # touch every page once: page faults are not bandwidth
    pairs = list(zip(_chunks(dst, threads), _chunks(src, threads)))
    parts = _chunks(src, threads)
    with ThreadPoolExecutor(threads) as pool:
        def copy():
            list(pool.map(lambda p: np.copyto(*p), pairs))

        def reduce():
            list(pool.map(np.sum, parts))

        def copy_fresh():
            # what a function returning a new array pays: the kernel maps and zeroes every page on first touch
            out = np.empty_like(src)
            list(pool.map(lambda p: np.copyto(*p), zip(_chunks(out, threads), parts)))

        copy(), reduce()  # warm the pool and the caches' state
        return {"copy": _best_rate(copy, 2 * src.nbytes, repeat), "sum": _best_rate(reduce, src.nbytes, repeat),
                "copy_fresh": _best_rate(copy_fresh, 2 * src.nbytes, repeat)}


def measure(threads: int, mib: int = 256, repeat: int = 5) -> dict:
    """Copy and reduction with one thread and with *threads*; the bound is the best rate of them all, so a kernel's
    fraction of it is never flattered. The copy into a fresh array is reported beside it, not in the bound: it
    shows what allocating the output costs every kernel that returns one."""
    runs = {1: stream(mib, 1, repeat)}
    if threads > 1:
        runs[threads] = stream(mib, threads, repeat)
    rates = {f"{kind}_{t}t_gbps": rate for t, r in runs.items() for kind, rate in r.items()}
    bound = max(rate for key, rate in rates.items() if not key.startswith("copy_fresh"))
    return {"array_mib": mib, "repeat": repeat, **rates, "bound_gbps": bound}


def _size(text: str) -> int:
    """A sysfs cache size ("32768K", "1M", "512") in bytes."""
    text = text.strip()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
    return int(text.rstrip("KkMmGg")) * scale


def last_level_cache_bytes(default: int = 32 * 2**20) -> int:
    """The largest cache of CPU 0 (Linux sysfs); *default* where that cannot be read."""
    try:
        return max(_size((index / "size").read_text())
                   for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"))
    except (OSError, ValueError):
        return default


class ColdCache:
    """Called before each timed run, writes a buffer twice the last-level cache, so every implementation reads its
    inputs from memory. Without it the one that runs right after a kernel on the same x finds part of x still in
    cache (batch NC's x, 16 MiB, fits a 32 MiB L3), and the order within a round, not the kernel, decides the ratio.
    The bound is streaming bandwidth from memory, so cold runs are the ones it describes."""

    def __init__(self, nbytes: int | None = None):
        self.buffer = np.zeros((nbytes or 2 * last_level_cache_bytes()) // 8)

    def __call__(self) -> None:
        self.buffer += 1.0


def machine(torch=None) -> dict:
    import platform

    import numba

    info = {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name"))
        info["memory_gib"] = round(next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                                        if line.startswith("MemTotal")) / 2**20, 1)
        for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
            if (index / "level").read_text().strip() == "3":
                info["l3"] = (index / "size").read_text().strip()
    except (OSError, StopIteration):
        pass  # not Linux: the platform module's answer stands
    info["torch"] = torch.__version__ if torch else None
    try:
        info["numba_threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        info["numba_threading_layer"] = None
    return info


def cpu_seconds():
    """(wall clock, CPU seconds busy on the whole machine, CPU seconds of this process); None where unknown."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = ticks[3] + ticks[4]  # idle and iowait
    own = os.times()
    return time.perf_counter(), (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def others_share(before, after) -> float | None:
    """The share of the machine's CPU time that other processes took while we measured: on a shared machine a
    busy neighbour slows parallel kernels most (a descheduled thread stalls the whole team)."""
    if before is None or after is None:
        return None
    wall, busy, own = (b - a for a, b in zip(before, after))
    return max(0.0, (busy - own) / (wall * (os.cpu_count() or 1)))
