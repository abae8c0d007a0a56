"""Fresh outputs from call to call, beside what this machine does with no symbn code at all.

For each large case of the bench (float32 and float64), 15 calls in a row, each after writing 64 MiB (cold caches,
as the bench times them), each timed:

- symbn: the catalogue module's forward_train (Numba, no out=: a fresh output every call);
- torch: PyTorch's functional form, where torch imports (fresh outputs too);
- numpy sum: x.sum(), which reads x and allocates nothing;
- numpy scale: x * 2.0, which reads x and returns a fresh array.

Prints max/median per row and how many rows of each kind exceed 1.5: where the two NumPy rows, which hold no symbn
code, exceed it about as often as symbn's, single slow calls are the machine's, not the kernels'.

    python docs/bench/fresh_outputs.py          # two or three minutes
"""

from __future__ import annotations

import statistics
import time

import numba
import numpy as np

from symbn.bench.harness import CASES, load_module, make_data, torch_calls
from symbn.codegen.check import forward_inputs

CALLS = 15
LIMIT = 1.5


def timed(f, flush) -> list[float]:
    times = []
    for _ in range(CALLS):
        flush += 1  # 64 MiB written: what the last call left in the caches is gone
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def main() -> None:
    numba.set_num_threads(2)
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        torch = None
    flush = np.ones(8 << 20)
    over: dict[str, list[bool]] = {}
    for case in (c for c in CASES if c.calls == 1):  # the large cases (small ones are timed per call, warm)
        module = load_module(case.spec, "numba")
        for dtype in (np.float32, np.float64):
            data = make_data(case.spec, case.shape, np.dtype(dtype), module)
            x, params = data["x"], forward_inputs(module, data)
            module.forward_train(x, *params)  # compiled or loaded from Numba's cache before the timing
            rows = {"symbn": lambda: module.forward_train(x, *params)}
            if torch is not None:
                calls, _ = torch_calls(case.spec, data, torch)
                rows["torch"] = calls["forward"]
            rows |= {"numpy sum": x.sum, "numpy scale": lambda: x * 2.0}
            for name, f in rows.items():
                f()
                times = timed(f, flush)
                ratio = max(times) / statistics.median(times)
                over.setdefault(name, []).append(ratio > LIMIT)
                print(f"{case.name} {np.dtype(dtype).name} {name:11s} median {statistics.median(times):7.2f} ms, "
                      f"max/median {ratio:.2f}", flush=True)
    for name, flags in over.items():
        print(f"{name}: max/median > {LIMIT} in {sum(flags)} of {len(flags)} rows")


if __name__ == "__main__":
    main()
