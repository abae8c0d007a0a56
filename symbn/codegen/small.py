"""The small-input kernels of the Numba backend, lowered: each entry point as one serial pass structure over the
whole input, for inputs that fit in cache, where a parallel region's start-up, NumPy glue between passes and the
argument checks would cost more than the work (makemore's batch of 32: 6,400 elements).

Every loop runs over the block view in memory order; statistics and parameters are indices into flat arrays, so one
structure serves every layout. The per-element work is symbn.codegen.loops' form, in float64: the parameters are
per-element values (read as such wherever they vary), everything fixed per statistic is a coefficient computed once
per statistic between passes. Forward steps keep their own form (x - mu, not x - mu expanded with a large mu), as do
the coordinates (xhat); where the statistics are sums of polynomials in x, one pass of power sums of x - x0 (x0 the
set's first value) gives them all (symbn.codegen.reductions.moments)."""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from symbn.codegen.loops import Loop, loop
from symbn.codegen.lowering import Lowering
from symbn.codegen.reductions import FIRST
from symbn.core.symbols import BETA, DY, GAMMA, X


@dataclass(frozen=True)
class Step:
    """One forward step: a reduction (a pass summing *summand* over each set, divided by *denominator*) or a scalar
    formula per statistic."""

    symbol: sympy.Symbol
    reduce: bool
    expr: sympy.Expr  # the summand (a reduction), its total in the power sums (with powers), or the formula
    denominator: sympy.Expr
    summand: Loop | None  # a reduction's own pass (without powers)


@dataclass(frozen=True)
class SmallLoops:
    train: tuple[Step, ...]  # the forward's statistics, in order, a pass per reduction (where powers is None)
    powers: Loop | None  # the one pass of power sums (x - x0)**k, k = 1 .. degree, where the moments allow it
    eval_steps: tuple[tuple[sympy.Symbol, sympy.Expr], ...]  # eval mode's statistics from the running ones
    y: Loop  # y, from the batch statistics or eval mode's (the same symbols)
    sums: Loop | None  # the backward's named sums, one pass
    dx: Loop  # dx, then the summand of each parameter gradient the dx pass adds up
    params_from_sums: tuple[int, ...] | None  # per parameter gradient, the sum it is (parameters fixed per set)
    eval_dx: Loop | None  # eval mode's dx and parameter summands; None where the spec keeps no running statistics


def small_loops(lw: Lowering) -> SmallLoops:
    p = lw.plan
    kept = {i for i, b in enumerate(p.blocks) if not b.reduced}
    # parameters fixed over each set (batch norm) join the coefficients; else they are read per element
    fixed = {i for i, b in enumerate(p.blocks) if b.param} <= kept
    elements = {X, DY} | (set() if fixed else {GAMMA, BETA}) | {c for c, _ in p.coordinates}
    coords = list(p.coordinates)
    m = lw.moments
    steps = m.steps if m else p.train_steps
    train = tuple(Step(s.symbol, s.reduce, s.expr, s.denominator,
                       loop([s.expr], [], {X}, "k", expand=False) if s.reduce and not m else None) for s in steps)
    powers = loop([(X - FIRST)**k for k in range(1, m.degree + 1)], [], {X}, "k", expand=False) if m else None
    # the parameter gradients are the backward's sums where the parameters are fixed over each set (batch norm)
    taken = fixed and None not in lw.from_sums and bool(p.param_sums)
    eval_dx = (loop([p.eval_dx] + [e for _, e in p.eval_param_sums], coords, elements, "k")
               if p.eval_dx is not None else None)
    return SmallLoops(
        train=train,
        powers=powers,
        eval_steps=tuple((s.symbol, s.expr) for s in p.eval_steps),
        y=loop([p.y], coords, elements, "k", expand=False),
        sums=loop([e for _, e in p.sums], coords, elements, "k") if p.sums else None,
        dx=loop([p.dx] + ([] if taken else [e for _, e in p.param_sums]), coords, elements, "k"),
        params_from_sums=tuple(lw.from_sums) if taken else None,
        eval_dx=eval_dx,
    )
