"""Elementwise expressions made cheap: parts fixed per statistic or per parameter hoisted out as coefficients, x
shifted by its mean, outputs written as multiply-adds. Shared by the NumPy and Numba backends.

Elementwise work runs in the input's dtype (float32 stays float32); whatever is fixed per statistic or per parameter
becomes a coefficient computed once in float64 and cast. Accuracy comes from the shift: once a mean of x is known, x
is replaced by xs + shift, with shift the mean rounded to the dtype, so xs = x - shift is exact or nearly so, and
the small difference shift - mean enters the coefficients in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy

from symbn.codegen.plan import Plan
from symbn.codegen.printers import cse
from symbn.core.symbols import BETA, DY, GAMMA, R, X

XS = sympy.Symbol("xs", real=True)  # x minus its shift, in the input's dtype
SHIFT = sympy.Symbol("shift", real=True)  # the shift: a mean of x rounded to the input's dtype

Coefficient = Callable[[sympy.Expr], sympy.Symbol]


def used(p: Plan, exprs) -> set:
    """The symbols *exprs* read, with those of the coordinates they use (xhat reads x and the statistics)."""
    found = set().union(*(e.free_symbols for e in exprs))
    for c, e in p.coordinates:
        if c in found:
            found |= e.free_symbols
    return found


class Elementwise:
    def __init__(self, p: Plan):
        self.p = p
        self.stats = {n.symbol for n in p.derivation.graph.nodes if n.kind != "elem"} | {s for s, _ in p.sums}
        self.stats.add(SHIFT)
        kept = {i for i, b in enumerate(p.blocks) if not b.reduced}
        params = {i for i, b in enumerate(p.blocks) if b.param}
        # parameters fixed over each statistic (batch, instance norm) fold into the statistics' coefficients
        self.param_class = "stat" if params <= kept else "param"
        means = [s.symbol for s in p.train_steps if s.reduce and s.expr == X]
        self.mean = means[0] if means else None
        self.coordinates = dict(p.coordinates)
        self.temps: set = set()  # CSE's names for shared elementwise parts

    def klass(self, e: sympy.Expr) -> str | None:
        """What a non-elementwise expression varies with: statistics, parameters, both, or nothing (a scalar)."""
        kinds = {"stat" if s in self.stats else self.param_class for s in e.free_symbols
                 if s in self.stats or s in (GAMMA, BETA)}
        return kinds.pop() if len(kinds) == 1 else ("both" if kinds else None)

    def elementwise(self, e: sympy.Expr) -> bool:
        return any(s in (X, DY, XS, R) or s in self.coordinates or s in self.temps for s in e.free_symbols)

    def hoist(self, e: sympy.Expr, coefficient: Coefficient) -> sympy.Expr:
        """*e* with every part that is fixed per statistic or parameter replaced by a coefficient symbol; factors of
        one kind are grouped into one coefficient (gamma*istd for batch norm; gamma and istd apart for layer norm)."""
        if not self.elementwise(e):
            return coefficient(e) if self.klass(e) else e
        if e.is_Atom:
            return e
        if isinstance(e, sympy.Max):  # an epilogue's relu: its numbers become coefficients of the input's dtype
            return e.func(*(coefficient(a) if a.is_Number else self.hoist(a, coefficient) for a in e.args),
                          evaluate=False)
        if isinstance(e, (sympy.Add, sympy.Mul)):
            varying = [self.hoist(a, coefficient) for a in e.args if self.elementwise(a)]
            groups: dict = {}
            for a in e.args:
                if not self.elementwise(a):
                    groups.setdefault(self.klass(a), []).append(a)
            scalars = groups.pop(None, [])
            if scalars and groups:  # numbers, M and eps join a coefficient rather than cost an elementwise step
                first = next(iter(groups))
                groups[first] = groups[first] + scalars
                scalars = []
            constants = [coefficient(e.func(*args)) for args in groups.values()]
            return e.func(*varying, *constants, *scalars, evaluate=False)
        return e.func(*(self.hoist(a, coefficient) for a in e.args), evaluate=False)

    def lowered(self, exprs, coefficient: Coefficient, shifted: bool):
        """(shared parts, final expressions) for *exprs*: x shifted when the mean is known, shared elementwise parts
        named t0, t1, ... (CSE), coefficients hoisted."""
        sub = {X: XS + SHIFT} if shifted else {}
        replacements, reduced = cse([e.xreplace(sub) for e in exprs], prefix="t")
        self.temps |= {s for s, _ in replacements}
        return ([(s, self.hoist(v, coefficient)) for s, v in replacements],
                [self.hoist(e, coefficient) for e in reduced])

    def used(self, exprs) -> set:
        """The symbols *exprs* read (used()); xs reads x."""
        found = used(self.p, exprs)
        return found | ({X} if XS in found else set())

    def output(self, e: sympy.Expr, shifted: bool, coefficient: Coefficient) -> sympy.Expr:
        """An elementwise expression, where it is affine in each of xs and dy, as sums of coefficient * (a product of
        xs, dy or 1) grouped by parameter factor: batch norm y = k0*xs + k1; layer norm y = k0*(k1*xs + k2) + k3
        with k0 = gamma, k3 = beta; the summand of dgamma dy*xhat = k0*dy*xs + k1*dy. Each element then costs a
        multiply-add or two, and no sum adds a coefficient to xs (fast-math would reassociate x - shift + k into
        x + (k - shift) and lose what the shift gained)."""
        e = e.xreplace(self.coordinates).xreplace({X: XS + SHIFT} if shifted else {})
        if isinstance(e, sympy.Max):  # relu(a): a in the same form
            return e.func(*(self.output(a, False, coefficient) for a in e.args), evaluate=False)
        # an epilogue's masks: each one an elementwise factor of its own, its argument in the same form
        masks = {h: sympy.Dummy(f"h{i}", real=True) for i, h in
                 enumerate(sorted(e.atoms(sympy.Heaviside), key=sympy.default_sort_key))}
        e = e.xreplace(masks)
        back = {d: sympy.Heaviside(self.output(h.args[0], False, coefficient)) for h, d in masks.items()}
        elems = [s for s in (XS, X, DY, R, *masks.values()) if s in e.free_symbols]
        if not elems:  # a constant (relu's 0)
            return e
        try:
            poly = sympy.Poly(sympy.expand(e), *elems)
        except sympy.PolynomialError:
            return e.xreplace(back)
        if any(poly.degree(s) > 1 for s in elems):
            return e.xreplace(back)
        params = {GAMMA, BETA} if self.param_class == "param" else set()
        groups: dict = {}  # parameter factor -> monomial -> statistic factor
        for monomial, c in poly.terms():
            m = sympy.Mul(*(s**k for s, k in zip(elems, monomial)))
            for term in sympy.Add.make_args(sympy.expand(c)):
                stat, param = term.as_independent(*params, as_Add=False)
                inner = groups.setdefault(param, {})
                inner[m] = inner.get(m, 0) + stat
        total = sympy.Integer(0)
        for param, inner in groups.items():
            part = sum((self._factor(self.tidy(c), coefficient) * m for m, c in inner.items()), sympy.Integer(0))
            total += part if param == 1 else coefficient(param) * part
        return total.xreplace(back)

    def tidy(self, c: sympy.Expr) -> sympy.Expr:
        """A coefficient with the shift only inside (mean - shift), the small, exact correction: beta - gamma*istd*mu
        + gamma*istd*shift becomes beta - gamma*istd*(mu - shift), which neither cancels digits nor reads worse."""
        if SHIFT not in c.free_symbols:
            return sympy.factor_terms(c)
        d = sympy.Dummy("d")
        c = sympy.factor_terms(sympy.expand(c.xreplace({SHIFT: self.mean - d})))
        return c.xreplace({d: sympy.Add(self.mean, -SHIFT, evaluate=False)})

    def _factor(self, c: sympy.Expr, coefficient: Coefficient) -> sympy.Expr:
        return coefficient(c) if self.klass(c) else c
