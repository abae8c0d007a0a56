"""Fresh outputs from call to call: batch NC (1024, 4096) float64 forward_train (Numba, no out=), 15 calls in a row on
the same input, each timed, then PyTorch's F.batch_norm the same way (2 threads each). Prints the median, the maximum
and their ratio, and every time.

    python docs/bench/fresh_outputs.py          # half a minute; PyTorch's line only where torch imports
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numba
import numpy as np

from symbn.codegen.store import import_path


def timed(f, calls=15) -> list[float]:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def show(name, times) -> None:
    median = statistics.median(times)
    print(f"{name:6s} median {median:.2f} ms, max {max(times):.2f} ms, max/median {max(times) / median:.2f}: "
          + " ".join(f"{t:.1f}" for t in times))


def main() -> None:
    numba.set_num_threads(2)
    m = import_path(Path(__file__).resolve().parents[2] / "generated" / "batch_nc_numba.py")
    x = np.random.default_rng(0).standard_normal((1024, 4096))
    gamma, beta = np.ones(4096), np.zeros(4096)
    m.forward_train(x, gamma, beta)  # compiled or loaded from Numba's cache before the timing
    show("symbn", timed(lambda: m.forward_train(x, gamma, beta)))
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(2)
    tx, tg, tb = (torch.from_numpy(a) for a in (x, gamma, beta))
    show("torch", timed(lambda: torch.nn.functional.batch_norm(tx, None, None, tg, tb, training=True)))


if __name__ == "__main__":
    main()
