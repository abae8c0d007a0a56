"""The double backward (symbn.core.second) lowered for loop kernels: which statistics and coordinates it reads, its
named sums pass by pass, and every per-element expression as a polynomial in the per-element values with one
coefficient per statistic.

A loop kernel walks the elements of each statistic; whatever is fixed over a statistic (its statistics, its sums, M,
eps, a parameter that is fixed over the set) is a coefficient the wrapper computes once per statistic in float64
NumPy and passes in as a row of an array; the element's own work is then a few multiply-adds in the per-element values
(x, dy, ggx, the coordinate, and the parameters where they vary within a set). Expressions that are not polynomials
in those (abs, exp) keep their form, with every part fixed per statistic hoisted out the same way.

Where the parameters are fixed over each set (batch, instance norm), ggamma's share of a statistic is a combination
of sums the kernel takes anyway (sum(dy*ggx), ...), so no pass adds parameter gradients element by element.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from symbn.codegen.loops import Loop, loop, polynomial
from symbn.codegen.plan import Plan
from symbn.core.second import GGR
from symbn.core.symbols import BETA, DY, GAMMA, GGBETA, GGGAMMA, GGX, M, R, X, psum, sym

# per element where the parameters vary within a set (beta where an epilogue's mask reads it)
ELEMENT_PARAMS = (GAMMA, GGGAMMA, GGBETA, BETA)


@dataclass(frozen=True)
class DoubleLowering:
    mode: str  # "train" or "eval"
    stats: tuple[sympy.Symbol, ...]  # the statistics the wrapper is given, in order
    params_in_elements: bool  # the parameters vary within a set (layer, group, RMS norm): read per element
    levels: tuple[tuple[tuple[sympy.Symbol, ...], Loop], ...]  # the named sums pass by pass, and their loop
    summands: tuple[tuple[tuple[sympy.Symbol, sympy.Expr], ...], ...]  # the same sums, (name, summand) as derived
    out: Loop  # gdy, gx and, where ggamma_stat is None and the spec has gamma, ggamma's summand
    ggamma_stat: sympy.Expr | None  # ggamma's share of each statistic from sums (parameters fixed over a set)
    has_ggamma: bool


def reads(so, given: tuple) -> tuple[list, list]:
    """The coordinates the double backward's sums and outputs read (with what they read in turn) and the statistics
    among *given* they need; ValueError where it reads one the kernels do not hand on."""
    out = [e.args[0] if isinstance(e, psum) else e for _, e in so.compact]
    used = set().union(*(e.free_symbols for e in [e.args[0] for _, e in so.reductions] + out))
    coordinates = []
    for c, e in reversed(so.coordinates):
        if c in used:
            coordinates.insert(0, (c, e))
            used |= e.free_symbols
    stats = [s for s in given if s in used]
    missing = set(so.statistics) & used - set(stats) - {c for c, _ in coordinates}
    if missing:
        raise ValueError(f"{so.derivation.spec.name}: the second order reads {sorted(map(str, missing))}, "
                         f"not among {given}")
    return coordinates, stats


def levels(so) -> list[list[tuple[sympy.Symbol, sympy.Expr]]]:
    """The named sums (name, summand) by pass: a sum that reads another waits for the pass after it."""
    level: dict = {}
    for s, e in so.reductions:
        level[s] = 1 + max((level[t] for t in e.args[0].free_symbols if t in level), default=-1)
    return [[(s, e.args[0]) for s, e in so.reductions if level[s] == k]
            for k in range(max(level.values(), default=-1) + 1)]


def lower_double(p: Plan, so, given: tuple) -> DoubleLowering:
    coordinates, stats = reads(so, given)
    inside = any(b.reduced and b.param for b in p.blocks)
    elements = {X, DY, GGX, R, GGR} | {c for c, _ in coordinates} | (set(ELEMENT_PARAMS) if inside else set())
    outputs = {s.name: e for s, e in so.compact}
    ggamma = outputs.get("ggamma")
    summand = ggamma.args[0] if ggamma is not None else None
    passes = levels(so)
    ggamma_stat = None
    if summand is not None and not inside:
        ggamma_stat = _from_sums(summand, elements, passes)
    pieces = [outputs["gdy"], outputs["gx"]] + ([summand] if summand is not None and ggamma_stat is None else [])
    return DoubleLowering(
        mode=so.mode, stats=tuple(stats), params_in_elements=inside,
        levels=tuple((tuple(s for s, _ in sums), loop([e for _, e in sums], coordinates, elements, f"q{k}_"))
                     for k, sums in enumerate(passes)),
        summands=tuple(tuple(sums) for sums in passes),
        out=loop(pieces, coordinates, elements, "k"), ggamma_stat=ggamma_stat, has_ggamma=summand is not None)


def _from_sums(summand: sympy.Expr, elements: set, passes: list) -> sympy.Expr | None:
    """sum(summand) over a set as a combination of named sums (a new one for a monomial no sum has yet, added to the
    first pass), or None where the summand is not a polynomial in the per-element values."""
    terms = polynomial(summand, elements)
    if terms is None:
        return None
    named = {sympy.expand(e): s for level in passes for s, e in level}
    if not passes:
        passes.append([])
    total = sympy.Integer(0)
    for monomial, coefficient in terms:
        if monomial == 1:
            total += coefficient * M
            continue
        name = named.get(monomial)
        if name is None:
            name = named[monomial] = sym("sum_" + "_".join(str(f) for f in sympy.Mul.make_args(monomial)))
            passes[0].append((name, monomial))
        total += coefficient * name
    return total
