"""The Numba backend's double backward: loop kernels printed from symbn.codegen.double, in the loop structure the
lowering chose for the first order. Loops over statistics run every pass of a statistic in one body (its sums, its
coefficients, its outputs), so the second read of its elements comes from cache; where the statistics run along the
contiguous axis, each pass walks rows of an (O, R, C) view in parallel chunks with one accumulator per column, and
the wrapper computes the coefficients between passes. Elements are read in the input's dtype; the work is float64."""

from __future__ import annotations

from symbn.codegen.backends.numba_loops import PARAM, PER_STAT, loop_code, structure
from symbn.codegen.double import DoubleLowering
from symbn.codegen.lowering import Lowering
from symbn.codegen.printers import numpy_code, reads, scalar_code


def double(lw: Lowering) -> dict:
    """The template context of the double backward's kernels, both modes."""
    st = structure(lw)
    modes = [_mode(d, st) for d in lw.double if d is not None]
    return dict(modes=modes, accumulators_in_l1=lw.column_accumulators_in_l1, **st)


def _mode(d: DoubleLowering, st: dict) -> dict:
    fixed = {} if d.params_in_elements else PER_STAT  # names of the parameters among the coefficients' symbols
    column = st["column"]

    def kernel(lp):
        return loop_code(lp, st, inline=not column, fixed=fixed)

    levels = [dict(names=[s.name for s in names_], kernel=kernel(lp)) for names_, lp in d.levels]
    out = kernel(d.out)
    parts = [lv["kernel"] for lv in levels] + [out]
    ggamma_stat = d.ggamma_stat
    share = (numpy_code if column else scalar_code)(ggamma_stat, fixed) if ggamma_stat is not None else None
    # what the wrapper (columns) or the kernel's per-statistic head (statistic loops) reads
    head_uses = reads([k["wrapper"] + k["head"] for k in parts], share or "")
    every = set().union(*(k["uses"] for k in parts)) | reads(share or "") | head_uses
    per_stat = [f"{v} = {a}[{st['pflat']}]" for s, (_, a) in PARAM.items() if (v := fixed.get(s)) and v in every]
    return dict(mode=d.mode, stats=[s.name for s in d.stats], levels=levels, out=out, share=share,
                ggamma_elem=d.has_ggamma and ggamma_stat is None, per_stat=per_stat,
                uses=sorted(every | reads(per_stat)))
