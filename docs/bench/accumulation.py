"""What the NumPy backend's safeguards cost on small float32 inputs, and what the float64 sums buy.

The NumPy backend's statistics and sums accumulate in float64 whatever the input's dtype (`np.add.reduce(...,
dtype=np.float64)`), and its small path runs each kernel under an IEEE guard (`_guarded`: an `np.errstate` that
raises on overflow and underflow, so that such a call goes to the exact path); the naive staged formula
(symbn.bench.harness.Staged) sums float32 input in float32 and guards nothing. Batch NC, per call, the versions
interleaved run by run (15 runs of 300 calls):

- naive: the staged formula;
- symbn: the catalogue module in generated/;
- float32 sums: the module with its reductions summing in float32 and casting each sum to float64, so that
  everything after them runs as in the module (a copy written to a temporary directory; an experiment, not a kernel
  symbn emits; so are the next two);
- shifted sums: the module with as much summed in float32 as keeps its accuracy. The forward's sum of x, in
  float32, only picks a shift; the mean is the shift plus the float32 sum of x less the shift (small values, so a
  large mean costs no low bits), and the squares of x less the shift are summed in float64 as in the module. One
  float64 reduction of the forward's two becomes two float32 ones;
- no guard: the module with its kernels run outside the IEEE guard (over- and underflow then go unnoticed).

Each timing line ends with the gap (symbn less naive) beside what the float64 sums and the guard cost in the call
(symbn less each variant). The last timing per shape, *forward arithmetic alone*, sets the naive forward without
running statistics beside each version's generated forward pass called directly (`_forward_train_one`: no checks,
no guard, no running statistics): what the arithmetic costs before any safeguard. Then the error of each version's batch mean, y, dx and dgamma against the staged formula
computed in float64, over the largest value, for x as drawn (mean 0.5) and moved to mean 1000 (spread 2): what the
float64 sums buy. Where PyTorch is installed, its batch_norm's y, dx and dgamma are among them. The errors are also
taken at (4096, 16), where a float32 sum over the rows adds 4,096 values one after another. And what the guard buys:
y's error with and without it where a float32 product overflows (x near 1e19) or underflows (x near 1e-22, with
eps 1e-45).

    python docs/bench/accumulation.py            # about 40 seconds
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
ERROR_SHAPES = SHAPES + ((4096, 16),)
# x as drawn (mean 0.5), and far from 0 beside its spread, as activations after a shift can be
OFFSETS = (0.5, 1000.0)
GENERATED = Path(__file__).resolve().parents[2] / "generated" / "batch_nc_numpy.py"
# the naive forward without running statistics beside each module's forward arithmetic alone
ARITHMETIC = "forward arithmetic alone"


# the forward's statistics pass on the path these shapes take (_forward_train_one), and what the shifted variant
# puts in its place
_FORWARD_SUMS = """    mu_c = np.add.reduce(xc, axis=_RED, dtype=np.float64, keepdims=True) / (M)
    shift_c = _cast(mu_c, xb)
    xs = xc - shift_c
    p2_c = np.add.reduce(xs*xs, axis=_RED, dtype=np.float64, keepdims=True)
    v0 = mu_c - shift_c
"""
_SHIFTED_SUMS = """    shift_c = np.add.reduce(xc, axis=_RED, keepdims=True)
    shift_c /= M
    xs = xc - shift_c
    v0 = np.add.reduce(xs, axis=_RED, keepdims=True).astype(np.float64) / M
    p2_c = np.add.reduce(xs*xs, axis=_RED, dtype=np.float64, keepdims=True)
    mu_c = shift_c + v0
"""

# the sums in float32, then cast to float64: everything after them is computed as in the module
_FLOAT32 = ("dtype=np.float64, keepdims=True)", "keepdims=True).astype(np.float64)")
# the small path's kernels outside the guard's errstate (its try and except stay, and catch nothing)
_NO_GUARD = ('    with np.errstate(over="raise", under="raise", divide="raise", invalid="raise"):', "    if True:")


def _variant(folder: Path, name: str, *edits):
    """A copy of the module with each (old, new) text edit made (an experiment, not a kernel symbn emits)."""
    text = GENERATED.read_text()
    for old, new in edits:
        if old not in text:
            raise SystemExit(f"{GENERATED}: {old.strip().splitlines()[0]!r} not found; update {Path(__file__).name}")
        text = text.replace(old, new)
    path = folder / f"batch_nc_numpy_{name}.py"
    path.write_text(text)
    return import_path(path, trust=True)  # edited here, on purpose


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def _data(shape):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, dy, np.ones(shape[1], np.float32), np.zeros(shape[1], np.float32)


def main(runs: int = 15, calls: int = 300) -> None:
    naive = Staged(preset("batch", "NC"))
    with tempfile.TemporaryDirectory() as folder:
        modules = {"symbn": import_path(GENERATED), "float32 sums": _variant(Path(folder), "float32", _FLOAT32),
                   "shifted sums": _variant(Path(folder), "shifted", (_FORWARD_SUMS, _SHIFTED_SUMS)),
                   "no guard": _variant(Path(folder), "unguarded", _NO_GUARD)}
        for shape in SHAPES:
            x, dy, gamma, beta = _data(shape)
            running = np.zeros(shape[1], np.float32), np.ones(shape[1], np.float32)
            y = np.empty_like(x)

            def module(mod):
                def forward():
                    return mod.forward_train(x, gamma, beta, *running)

                def backward(saved=forward()):
                    return mod.backward(dy, x, gamma, saved[1], saved[2])

                return {"forward": forward, "backward": backward,
                        "forward+backward": lambda: mod.backward(dy, x, gamma, *forward()[1:]),
                        # the generated forward pass these shapes take, called directly: no checks, no guard, no
                        # running statistics
                        ARITHMETIC: lambda: mod._forward_train_one(x, gamma, beta, naive.spec.eps, y)}

            cache = naive.forward_train(x, gamma, beta)[1]
            versions = {"naive": {"forward": lambda: naive.forward_train(x, gamma, beta, running=running),
                                  "backward": lambda: naive.backward(dy, cache),
                                  "forward+backward": lambda: naive.backward(
                                      dy, naive.forward_train(x, gamma, beta, running=running)[1]),
                                  ARITHMETIC: lambda: naive.forward_train(x, gamma, beta)},
                        **{name: module(mod) for name, mod in modules.items()}}
            for kind in ("forward", "backward", "forward+backward", ARITHMETIC):
                med = _medians({name: calls_of[kind] for name, calls_of in versions.items()}, runs, calls)
                line = (f"{shape} float32 {kind}: " + ", ".join(f"{n} {v:.1f} us" for n, v in med.items())
                        + "; naive/" + ", naive/".join(f"{n} {med['naive'] / med[n]:.2f}x" for n in modules))
                if kind != ARITHMETIC:
                    line += (f"; gap {med['symbn'] - med['naive']:+.1f} us, float64 sums "
                             f"{med['symbn'] - med['float32 sums']:+.1f} us, guard "
                             f"{med['symbn'] - med['no guard']:+.1f} us")
                print(line, flush=True)
        _guard_errors(modules["symbn"], modules["no guard"])
        for shape in ERROR_SHAPES:
            x, dy, gamma, beta = _data(shape)
            for offset in OFFSETS:
                print(f"{shape} float32, x = {offset} + 2 N(0, 1), error over the largest value against float64: "
                      + _errors(naive, {n: m for n, m in modules.items() if n != "no guard"},  # the same bits as symbn here
                                x - x.mean() + np.float32(offset), dy, gamma, beta), flush=True)


def _guard_errors(guarded, unguarded) -> None:
    """What the guard buys: y at (32, 200) float32 where a product in float32 overflows (|x| near 1e19) or
    underflows (|x| near 1e-22 with eps 1e-45), against the formula in float64, with and without the guard."""
    base = np.random.default_rng(0).standard_normal((32, 200))
    gamma, beta = np.ones(200, np.float32), np.zeros(200, np.float32)
    for scale, eps in ((1e19, 1e-5), (1e-22, 1e-45)):
        x = (base * scale).astype(np.float32)
        wide = x.astype(np.float64)
        reference = (wide - wide.mean(axis=0)) / np.sqrt(wide.var(axis=0) + eps)
        found = {}
        for name, mod in (("symbn", guarded), ("no guard", unguarded)):
            with np.errstate(all="ignore"):  # the unguarded copy warns on what it gets wrong
                found[name] = _rel(mod.forward_train(x, gamma, beta, eps=eps)[0], reference)
        print(f"(32, 200) float32, x = {scale:g} N(0, 1), eps {eps:g}, y's error over the largest value against "
              f"float64: " + ", ".join(f"{name} {err:.1e}" for name, err in found.items()), flush=True)


def _medians(calls_of, runs, calls):
    """Each callable's median time per call in us, the callables timed in turn round by round."""
    times = {name: [] for name in calls_of}
    for _ in range(runs):
        for name, f in calls_of.items():
            t = time.perf_counter()
            for _ in range(calls):
                f()
            times[name].append((time.perf_counter() - t) / calls)
    return {name: statistics.median(t) * 1e6 for name, t in times.items()}


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
