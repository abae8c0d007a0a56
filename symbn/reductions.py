"""Reductions made cheap, for both backends: every statistic of the forward from one pass of power sums, and the
backward's sums split into per-statistic coefficients times sums of simple products, so a pass forms dy*xs rather
than xhat."""

from __future__ import annotations

import sympy

from .elementwise import SHIFT, XS, Elementwise
from .lower import Plan
from .symbols import BETA, DY, GAMMA, M, X

# a per-set shift: the set's first value (a name the graph never gives a node, so it cannot shadow a statistic)
FIRST = sympy.Symbol("x0", real=True)


def moments(p: Plan, code) -> dict | None:
    """One pass for every statistic, where each reduction sums a polynomial in x: the pass adds up the powers of
    d = x - x0, x0 the first value of the set (of the column, in column layouts), and each reduction follows from
    those sums (the mean is x0 + sum(d)/M, the variance sum(d**2)/M - (sum(d)/M)**2). With x0 a value of the set,
    the cancellation in that difference is (x0 - mean)**2 / variance: a few bits, not the mean's magnitude. None
    when there is one reduction (it is one pass already) or a summand is not a polynomial in x (mean absolute
    deviation): then each reduction takes its own pass. *code* prints a SymPy expression for the backend."""
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
    degree = max(poly.degree() for poly in powers)
    sums = [sympy.Symbol(f"p{k}", real=True) for k in range(1, degree + 1)]
    totals = iter(powers)
    steps = []
    for step in p.train_steps:
        if step.reduce:
            # coefficients stay factored in (mean - x0): expanded, M*(mu**2 - 2*mu*x0 + x0**2) would cancel digits
            total = sum((sympy.factor(c) * (M if k == 0 else sums[k - 1]) for (k,), c in next(totals).terms()),
                        sympy.Integer(0))
            steps.append((step.symbol.name, f"({code(total)}) / ({code(step.denominator)})"))
        else:
            steps.append((step.symbol.name, code(step.expr)))
    return dict(degree=degree, steps=steps, powers=["*".join(["d"] * k) for k in range(1, degree + 1)])


def split_sums(ew: Elementwise, summands, shifted: bool) -> tuple[list, list] | None:
    """Each summand as a sum of coefficients fixed per statistic times monomials in the elementwise inputs:
    sum(dy*xhat) = istd*(sum(dy*xs) - (mu - shift)*sum(dy)). Returns (the distinct monomials, each sum as a
    combination of q0, q1, ..., the sums of those monomials over the set), or None when a summand is not a
    polynomial in the inputs or the split would take more sums than the summands themselves."""
    gens = [XS, X, DY] + ([GAMMA, BETA] if ew.param_class == "param" else [])
    sub = {X: XS + SHIFT} if shifted else {}
    monomials: list = []
    totals = []
    for e in summands:
        e = sympy.expand(e.xreplace(ew.coordinates).xreplace(sub))
        present = [g for g in gens if g in e.free_symbols]
        if not present:  # fixed over the set: its sum is the count times it
            totals.append(ew.tidy(e) * M)
            continue
        try:
            poly = sympy.Poly(e, *present)
        except sympy.PolynomialError:
            return None
        total = sympy.Integer(0)
        for exps, c in poly.terms():
            m = sympy.Mul(*(g**k for g, k in zip(present, exps)))
            if m == 1:  # a constant summand sums to the count
                total += ew.tidy(c) * M
                continue
            if m not in monomials:
                monomials.append(m)
            total += ew.tidy(c) * sympy.Symbol(f"q{monomials.index(m)}", real=True)
        totals.append(total)
    return (monomials, totals) if len(monomials) <= len(summands) else None
