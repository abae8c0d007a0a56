"""Expressions for loop kernels: a pass over the elements of every statistic, with every part of its expressions that is
fixed over a statistic (statistics, sums over the set, M, eps, a parameter fixed over the set) replaced by a
coefficient, computed once per statistic; what is left per element is a few multiply-adds in the per-element values
(x, dy, the coordinate, ...). Used by the double backward (symbn.codegen.double) and the split-phase pieces
(symbn.codegen.split_loops); the Numba backend prints them (symbn.codegen.backends.numba_loops)."""

from __future__ import annotations

from dataclasses import dataclass

import sympy


@dataclass(frozen=True)
class Loop:
    """One pass over the elements of every statistic."""

    coefficients: tuple[tuple[sympy.Symbol, sympy.Expr], ...]  # k0, k1, ...: per statistic, computed before the pass
    coordinates: tuple[tuple[sympy.Symbol, sympy.Expr], ...]  # per element, in coefficients and per-element values
    exprs: tuple[sympy.Expr, ...]  # per element: the summands of the pass's sums, or its outputs


def polynomial(e: sympy.Expr, elements: set) -> list[tuple[sympy.Expr, sympy.Expr]] | None:
    """(monomial, coefficient) pairs of *e* in the per-element values it reads, coefficients free of them; None where
    *e* is not a polynomial in them."""
    gens = sorted(e.free_symbols & elements, key=str)
    if not gens:
        return [(sympy.Integer(1), e)]
    try:
        poly = sympy.Poly(sympy.expand(e), *gens)
    except sympy.PolynomialError:
        return None
    if poly.gens != tuple(gens) or any(c.free_symbols & elements for c in poly.coeffs()):
        return None
    return [(sympy.Mul(*(g**k for g, k in zip(gens, monom))), c) for monom, c in poly.terms()]


def loop(exprs: list, coordinates: list, elements: set, prefix: str, expand: bool = True) -> Loop:
    """*exprs* with every part fixed per statistic replaced by a coefficient (*prefix* and a number), and the
    coordinates they read; *expand*: as polynomials in the per-element values where they are (else, or where an
    expanded form would cancel digits, as (x - m)**2 of large x would, in their own form)."""
    table: dict = {}

    def coefficient(e: sympy.Expr) -> sympy.Expr:
        if e.is_Number:
            return e
        if e not in table:
            table[e] = sympy.Symbol(f"{prefix}{len(table)}", real=True)
        return table[e]

    def hoist(e: sympy.Expr) -> sympy.Expr:
        if not e.free_symbols & elements:
            return coefficient(e)
        if e.is_Atom:
            return e
        if e.is_Add or e.is_Mul:
            fixed = [a for a in e.args if not a.free_symbols & elements]
            varying = [hoist(a) for a in e.args if a.free_symbols & elements]
            return e.func(*([coefficient(e.func(*fixed))] if fixed else []), *varying)
        return e.func(*(hoist(a) for a in e.args))

    def lowered(e: sympy.Expr) -> sympy.Expr:
        terms = polynomial(e, elements) if expand else None
        if terms is None:
            return hoist(e)
        return sympy.Add(*(coefficient(c) * m for m, c in terms))

    out = tuple(lowered(e) for e in exprs)
    needed = set().union(set(), *(e.free_symbols for e in out))
    kept = []
    for c, e in reversed(coordinates):  # the coordinate keeps its form (x - mu, not x*istd - mu*istd): accuracy
        if c in needed:
            kept.insert(0, (c, hoist(e)))
            needed |= e.free_symbols
    return Loop(tuple((k, e) for e, k in table.items()), tuple(kept), out)

