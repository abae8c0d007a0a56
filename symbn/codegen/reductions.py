"""Reductions made cheap, for both backends: every statistic of the forward from one pass of power sums, and the
backward's sums split into per-statistic coefficients times sums of simple products, so a pass forms dy*xs rather
than xhat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import sympy

from symbn.codegen.elementwise import SHIFT, XS, Elementwise
from symbn.codegen.plan import Plan, StatStep
from symbn.core.symbols import BETA, DY, GAMMA, M, R, X


@dataclass(frozen=True)
class Moments:
    """The forward's statistics from one pass of power sums p1 .. p<degree> of d = x - x0."""

    degree: int
    steps: tuple[StatStep, ...]  # the forward's steps, each reduction's summand replaced by its total in the sums


# a per-set shift: the set's first value (a name the graph never gives a node, so it cannot shadow a statistic)
FIRST = sympy.Symbol("x0", real=True)


def moments(p: Plan) -> Moments | None:
    """One pass for every statistic, where each reduction sums a polynomial in x: the pass adds up the powers of
    d = x - x0, x0 the first value of the set (of the column, in column layouts), and each reduction follows from
    those sums (the mean is x0 + sum(d)/M, the variance sum(d**2)/M - (sum(d)/M)**2). With x0 a value of the set,
    the cancellation in that difference is (x0 - mean)**2 / variance: a few bits, not the mean's magnitude. Returns
    the forward's steps with each reduction's summand replaced by its total in the power sums p1, p2, ... (power_sum),
    or None when there is one reduction (it is one pass already) or a summand is not a polynomial in x (mean
    absolute deviation): then each reduction takes its own pass."""
    powers = []
    for step in p.train_steps:
        if step.reduce:
            try:
                poly = sympy.Poly(sympy.expand(step.expr.xreplace({X: XS + FIRST})), XS)
            except sympy.PolynomialError:
                return None
            powers.append(poly)
    if len(powers) < 2:
        return None
    totals = iter(powers)
    steps = []
    for step in p.train_steps:
        if step.reduce:
            # coefficients stay factored in (mean - x0): expanded, M*(mu**2 - 2*mu*x0 + x0**2) would cancel digits
            total = sum((sympy.factor(c) * (M if k == 0 else power_sum(k)) for (k,), c in next(totals).terms()),
                        sympy.Integer(0))
            steps.append(StatStep(step.symbol, total, True, step.denominator))
        else:
            steps.append(step)
    return Moments(max(poly.degree() for poly in powers), tuple(steps))


def power_sum(k: int) -> sympy.Symbol:
    """The sum of the k-th powers of d = x - x0 over a set."""
    return sympy.Symbol(f"p{k}", real=True)


class Split(NamedTuple):
    """Sums over a set as coefficients fixed per statistic times sums of monomials in the elementwise inputs."""

    monomials: list[tuple[sympy.Symbol, sympy.Expr]]  # (the name of its sum, monomial)
    totals: list[sympy.Expr]  # each sum in terms of those names


def split_sums(ew: Elementwise, summands, shifted: bool) -> Split | None:
    """Each summand as a sum of coefficients fixed per statistic times monomials in the elementwise inputs:
    sum(dy*xhat) = istd*(sum(dy*xs) - (mu - shift)*sum(dy)). Returns ((q0, monomial), (q1, monomial), ...: each
    distinct monomial and the name of its sum over the set; each summand's sum in terms of those names), or None
    when a summand is not a polynomial in the inputs or the split would take more sums than the summands."""
    gens = [XS, X, DY, R] + ([GAMMA, BETA] if ew.param_class == "param" else [])
    sub = {X: XS + SHIFT} if shifted else {}
    names: dict = {}  # monomial -> the name of its sum
    totals = []
    for e in summands:
        e = sympy.expand(e.xreplace(ew.coordinates).xreplace(sub))
        present = [g for g in gens if g in e.free_symbols]
        try:
            terms = sympy.Poly(e, *present).terms() if present else [((), e)]
        except sympy.PolynomialError:
            return None
        total = sympy.Integer(0)
        for exps, c in terms:
            m = sympy.Mul(*(g**k for g, k in zip(present, exps)))
            if m == 1:  # fixed over the set: it sums to the count times it
                total += ew.tidy(c) * M
                continue
            total += ew.tidy(c) * names.setdefault(m, sympy.Symbol(f"q{len(names)}", real=True))
        totals.append(total)
    return Split([(q, m) for m, q in names.items()], totals) if len(names) <= len(summands) else None


def gradient_sums(ew: Elementwise, sums, param_sums) -> list[int | None]:
    """For each parameter gradient (dgamma, dbeta), the index of the backward's sum with its summand, where the
    parameters are fixed over each statistic's set (batch, instance norm): the gradient is then that sum added up over
    the blocks the parameters do not span (dbeta from sum(dy), dgamma from sum(dy*xhat)), not another pass over the
    data. None for the others, and for all where parameters vary inside a set (layer norm)."""
    summands = [e for _, e in sums]
    fixed = ew.param_class == "stat"
    return [summands.index(e) if fixed and e in summands else None for _, e in param_sums]

