"""What accumulating in float64 costs the NumPy backend on small float32 inputs, and what it buys.

The NumPy backend's statistics and sums accumulate in float64 whatever the input's dtype (`np.add.reduce(...,
dtype=np.float64)`); the naive staged formula (symbn.bench.harness.Staged) sums float32 input in float32. Batch NC,
per call, three versions interleaved run by run (15 runs of 300 calls):

- naive: the staged formula;
- symbn: the catalogue module in generated/;
- float32 sums: the same module with its reductions summing in float32 and casting each sum to float64, so that
  everything after them runs as in the module (a copy written to a temporary directory; an experiment, not a kernel
  symbn emits).

Then the error of each version's batch mean, y, dx and dgamma against the staged formula computed in float64, over
the largest value, for x as drawn (mean 0.5) and moved to mean 1000 (spread 2): what the float64 sums buy. Where
PyTorch is installed, its batch_norm's y, dx and dgamma are among them.

    python docs/bench/accumulation.py            # about a minute
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import torch
except ImportError:  # optional: the PyTorch column of the errors
    torch = None

from symbn.bench.harness import Staged
from symbn.codegen.store import import_path
from symbn.core.spec import preset

SHAPES = ((32, 200), (64, 512))
# x as drawn (mean 0.5), and far from 0 beside its spread, as activations after a shift can be
OFFSETS = (0.5, 1000.0)
GENERATED = Path(__file__).resolve().parents[2] / "generated" / "batch_nc_numpy.py"


def _float32_sums(folder: Path):
    text = GENERATED.read_text()
    # the sums in float32, then cast to float64: everything after them is computed as in the module
    changed = text.replace("dtype=np.float64, keepdims=True)", "keepdims=True).astype(np.float64)")
    if changed == text:
        raise SystemExit(f"{GENERATED}: no float64 reduction found to take out")
    path = folder / "batch_nc_numpy_float32_sums.py"
    path.write_text(changed)
    return import_path(path, trust=True)  # edited here, on purpose


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def main(runs: int = 15, calls: int = 300) -> None:
    m = import_path(GENERATED)
    naive = Staged(preset("batch", "NC"))
    with tempfile.TemporaryDirectory() as folder:
        m32 = _float32_sums(Path(folder))
        for shape in SHAPES:
            rng = np.random.default_rng(0)
            x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
            dy = rng.standard_normal(shape).astype(np.float32)
            gamma, beta = np.ones(shape[1], np.float32), np.zeros(shape[1], np.float32)
            running = np.zeros(shape[1], np.float32), np.ones(shape[1], np.float32)

            def module(mod):
                def forward():
                    return mod.forward_train(x, gamma, beta, *running)

                def backward(saved=forward()):
                    return mod.backward(dy, x, gamma, saved[1], saved[2])

                return {"forward": forward, "backward": backward,
                        "forward+backward": lambda: mod.backward(dy, x, gamma, *forward()[1:])}

            cache = naive.forward_train(x, gamma, beta)[1]
            versions = {"naive": {"forward": lambda: naive.forward_train(x, gamma, beta, running=running),
                                  "backward": lambda: naive.backward(dy, cache),
                                  "forward+backward": lambda: naive.backward(
                                      dy, naive.forward_train(x, gamma, beta, running=running)[1])},
                        "symbn": module(m), "float32 sums": module(m32)}
            for kind in ("forward", "backward", "forward+backward"):
                times = {name: [] for name in versions}
                for _ in range(runs):
                    for name, calls_of in versions.items():
                        f = calls_of[kind]
                        t = time.perf_counter()
                        for _ in range(calls):
                            f()
                        times[name].append((time.perf_counter() - t) / calls)
                med = {name: statistics.median(t) * 1e6 for name, t in times.items()}
                print(f"{shape} float32 {kind}: " + ", ".join(f"{n} {v:.1f} us" for n, v in med.items())
                      + f"; naive/symbn {med['naive'] / med['symbn']:.2f}x, naive/float32 sums "
                      f"{med['naive'] / med['float32 sums']:.2f}x", flush=True)
            for offset in OFFSETS:
                print(f"{shape} float32, x = {offset} + 2 N(0, 1), error over the largest value against float64: "
                      + _errors(naive, {"symbn": m, "float32 sums": m32}, x - x.mean() + np.float32(offset), dy,
                                gamma, beta), flush=True)


def _errors(naive, modules, x, dy, gamma, beta) -> str:
    """Each version's batch mean, y, dx and dgamma against the staged formula computed in float64."""
    wide = [a.astype(np.float64) for a in (x, dy, gamma, beta)]
    y, cache = naive.forward_train(wide[0], *wide[2:])
    reference = (wide[0].mean(axis=0), y, *naive.backward(wide[1], cache)[:2])
    y, cache = naive.forward_train(x, gamma, beta)
    found = {"naive": (x.mean(axis=0), y, *naive.backward(dy, cache)[:2])}
    for name, mod in modules.items():
        y, mu, istd = mod.forward_train(x, gamma, beta)
        found[name] = (mu, y, *mod.backward(dy, x, gamma, mu, istd)[:2])
    if torch is not None:  # its batch mean is internal: none shown
        tx, tgamma = (torch.tensor(a, requires_grad=True) for a in (x, gamma))
        y = torch.nn.functional.batch_norm(tx, None, None, tgamma, torch.from_numpy(beta), training=True,
                                           eps=naive.spec.eps)
        y.backward(torch.from_numpy(dy))
        found["torch"] = (None, y.detach().numpy(), tx.grad.numpy(), tgamma.grad.numpy())
    return "; ".join(f"{name} " + ", ".join(f"{label} {_rel(a, b):.1e}" for label, a, b in zip(
        ("mean", "y", "dx", "dgamma"), values, reference) if a is not None) for name, values in found.items())


if __name__ == "__main__":
    main()
