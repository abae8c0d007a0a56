"""Reductions made cheap, for both backends: every statistic of the forward from one pass of power sums, and the
backward's sums split into per-statistic coefficients times sums of simple products, so a pass forms dy*xs rather
than xhat."""

from __future__ import annotations

import sympy

from symbn.codegen.elementwise import SHIFT, XS, Elementwise
from symbn.codegen.plan import Plan
from symbn.core.symbols import BETA, DY, GAMMA, M, X

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
    sum(dy*xhat) = istd*(sum(dy*xs) - (mu - shift)*sum(dy)). Returns ((q0, monomial), (q1, monomial), ...: each
    distinct monomial and the name of its sum over the set; each summand's sum in terms of those names), or None
    when a summand is not a polynomial in the inputs or the split would take more sums than the summands."""
    gens = [XS, X, DY] + ([GAMMA, BETA] if ew.param_class == "param" else [])
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
    return ([(q, m) for m, q in names.items()], totals) if len(names) <= len(summands) else None


def gradient_sums(ew: Elementwise, sums, param_sums) -> list[int | None]:
    """For each parameter gradient (dgamma, dbeta), the index of the backward's sum with its summand, where the
    parameters are fixed over each statistic's set (batch, instance norm): the gradient is then that sum added up over
    the blocks the parameters do not span (dbeta from sum(dy), dgamma from sum(dy*xhat)), not another pass over the
    data. None for the others, and for all where parameters vary inside a set (layer norm)."""
    summands = [e for _, e in sums]
    fixed = ew.param_class == "stat"
    return [summands.index(e) if fixed and e in summands else None for _, e in param_sums]
