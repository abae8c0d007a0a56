"""The Numba backend's split-phase pieces: loop kernels printed from symbn.codegen.split_loops in the loop structure
of the module's other kernels, each a pass of its own (the pieces run on either side of an exchange between
processes); the wrappers compute the coefficients per statistic between passes, in float64 NumPy."""

from __future__ import annotations

from symbn.codegen.backends.numba_loops import PER_STAT, loop_code, structure
from symbn.codegen.lowering import Lowering
from symbn.codegen.printers import reads


def split(lw: Lowering) -> dict | None:
    """The template context of the split-phase kernels, or None where the module runs NumPy passes for them."""
    sl = lw.split_loops
    if sl is None:
        return None
    st = structure(lw)
    fixed = {} if sl.params_in_elements else PER_STAT
    kernels = {name: loop_code(getattr(sl, name), st, inline=False, fixed=fixed)
               for name in ("mean", "central", "sums", "dx")}
    rounds = []
    for lp in sl.rounds:  # the statistics a round's coefficients read, by name (flat arrays in the wrapper)
        k = loop_code(lp, st, inline=False, fixed={})
        rounds.append(k | dict(stats=sorted({t.name for _, e in lp.coefficients for t in e.free_symbols})))
    wrapper = {name: reads(k["wrapper"]) for name, k in kernels.items()}
    sums_kernels = [(name, kernels[name]) for name in ("mean", "central", "sums")]
    sums_kernels += [(f"round{r}", k) for r, k in enumerate(rounds, 1)]
    return dict(kernels=kernels, rounds=rounds, sums_kernels=sums_kernels,
                wrapper={name: sorted(found) for name, found in wrapper.items()},
                per_stat={name: any(v in found for v in fixed.values()) for name, found in wrapper.items()}, **st)
