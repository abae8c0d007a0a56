"""Every lowering decision, taken once per plan and recorded as data: how the statistics are reduced, how the
backward's sums are formed, where the parameter gradients come from, and which loop structure each backend prints.
The backends (symbn.codegen.backends) read these decisions and print; none of them decides again.

The decisions differ by loop structure where the cost model does: the NumPy backend walks chunks of rows of the first
block, which hold whole statistics when that block is kept; the Numba backend walks either statistics (a parallel loop
over kept blocks around loops over reduced ones) or, where the statistics run along the contiguous innermost axis,
columns of an (O, R, C) view.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from symbn.codegen.double import DoubleLowering, lower_double
from symbn.codegen.elementwise import Elementwise
from symbn.codegen.plan import Plan
from symbn.codegen.reductions import Moments, Split, gradient_sums, moments, split_sums
from symbn.codegen.shares import Shares, shares
from symbn.codegen.split_loops import SplitLoops, split_loops

# Column kernels keep one float64 accumulator per column and sum: while those fit in L1 (NHWC, C = 64) a chunk walks
# its rows one at a time with the accumulators in arrays of its own; beyond (batch NC, C = 4096) rows go in fours.
COLUMN_ACCUMULATORS_IN_L1 = 2048


@dataclass(frozen=True)
class Columns:
    """The (O, R, C) view of a layout whose innermost block is kept: kept outer blocks, reduced blocks, the kept
    innermost block, parameters over C only (or none)."""

    outer: tuple[int, ...]
    reduced: tuple[int, ...]
    param_over_c: bool


@dataclass(frozen=True)
class Lowering:
    plan: Plan
    mean: sympy.Symbol | None  # the statistic x is shifted by once known (x - shift, shift the mean in the dtype)
    param_class: str  # "stat": parameters fixed over each statistic's set (batch, instance norm); else "param"
    moments: Moments | None  # the forward's statistics from one pass of power sums; None: a pass per reduction
    split: Split | None  # the training backward's sums from sums of monomials (dy, dy*xs); None: from the summands
    from_sums: tuple[int | None, ...]  # per parameter gradient, the backward sum it equals (dbeta = sum(dy)), or None
    taken: tuple[tuple[sympy.Symbol, sympy.Symbol], ...]  # (parameter gradient, the sum it is) where from_sums has one
    rest: tuple[tuple[sympy.Symbol, sympy.Expr], ...]  # (parameter gradient, summand): those that take sums of their own
    numpy_whole: bool  # NumPy: chunks of rows of the first block hold whole statistics (that block is kept)
    numpy_split: bool  # NumPy: the training backward uses *split*
    columns: Columns | None  # Numba: column loops over this view; None: loops over statistics
    numba_split: bool  # Numba: the training backward uses *split*
    param_per_stat: bool  # Numba statistic loops: parameter gradients summed in the sums loop, beside the sums
    param_fixed_inner: bool  # Numba statistic loops: the parameter is fixed over the innermost loop (registers)
    param_buffers: bool  # Numba statistic loops: parameter gradients in per-chunk buffers of the input's dtype
    shares: Shares | None  # split-phase training passes (statistics across processes); None: the spec has none
    double: tuple[DoubleLowering | None, ...]  # the second order for loop kernels, training and eval mode
    split_loops: SplitLoops | None  # the split-phase pieces for loop kernels; None: NumPy passes (or no pieces)
    column_accumulators_in_l1: int = COLUMN_ACCUMULATORS_IN_L1


def lower(p: Plan) -> Lowering:
    ew = Elementwise(p)
    blocks = p.blocks
    kept = [i for i, b in enumerate(blocks) if not b.reduced]
    reduced = [i for i, b in enumerate(blocks) if b.reduced]
    param = [i for i, b in enumerate(blocks) if b.param]
    shifted = ew.mean is not None and ew.mean in p.saved
    # A fused epilogue forms each sum from its own summand (a mask is no polynomial to split) and has no split-phase
    # pieces; its loops are those of any spec (column kernels where the statistics run along the contiguous axis).
    split = (_as_is(p) if p.epilogue else split_sums(ew, [e for _, e in p.sums], shifted)) if p.sums else None
    from_sums = tuple(gradient_sums(ew, p.sums, p.param_sums))
    columns = _columns(p)
    param_per_stat = set(param) <= set(kept)
    rest = tuple((s, e) for (s, e), i in zip(p.param_sums, from_sums) if i is None)
    shared = None if p.epilogue else shares(p)
    return Lowering(
        plan=p, mean=ew.mean, param_class=ew.param_class, moments=moments(p), split=split, from_sums=from_sums,
        taken=tuple((s, p.sums[i][0]) for (s, _), i in zip(p.param_sums, from_sums) if i is not None),
        rest=rest,
        numpy_whole=not blocks[0].reduced,
        # where a parameter gradient needs xhat per element anyway, the whole-chunk pass forms it for the sums too
        numpy_split=split is not None and (blocks[0].reduced or None not in from_sums),
        columns=columns,
        # where parameters are fixed per statistic, a gradient that is not one of the sums is added up beside them
        numba_split=split is not None and (columns is not None or ew.param_class != "stat" or None not in from_sums),
        param_per_stat=param_per_stat,
        param_fixed_inner=reduced[-1] not in param,
        param_buffers=columns is None and not param_per_stat and bool(p.param_sums) and reduced[-1] in param,
        shares=shared,
        split_loops=split_loops(p, shared, rest),
        double=tuple(lower_double(p, so, given) if so is not None else None
                     for so, given in zip(p.second, (p.saved, p.eval_stats))),
    )


def _as_is(p: Plan) -> Split:
    """The backward's sums each from its own summand, in the form of a split (q0 = sum(summand0), ...): the passes
    that form split sums form them, in the input's dtype with coefficients hoisted, and combine them in float64."""
    names = [sympy.Symbol(f"q{i}", real=True) for i in range(len(p.sums))]
    return Split([(q, e) for q, (_, e) in zip(names, p.sums)], names)


def _columns(p: Plan) -> Columns | None:
    """Layouts whose innermost block is kept (batch norm NHWC and NC, instance norm NHWC): statistics run along the
    contiguous axis, so the loops go over rows and keep one accumulator per column."""
    b = p.blocks
    if b[-1].reduced:
        return None
    first_reduced = next(i for i, block in enumerate(b) if block.reduced)
    if any(block.reduced for block in b[:first_reduced]) or not all(block.reduced for block in b[first_reduced:-1]):
        return None
    if any(block.param for block in b[:-1]):
        return None
    return Columns(tuple(range(first_reduced)), tuple(range(first_reduced, len(b) - 1)), b[-1].param)
