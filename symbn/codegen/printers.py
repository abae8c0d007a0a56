"""Expressions to code: NumPy array code and scalar Python code for Numba, and CSE with canonical names."""

from __future__ import annotations

import itertools
import re

import sympy
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.pycode import PythonCodePrinter

from symbn.core.symbols import psum, rsum


class _NumPyPrinter(NumPyPrinter):
    """NumPy code that refers to the module as ``np``; the two reductions call the module's _rsum and _psum.

    Given *arrays* (the symbols that stand for the large arrays), a product multiplies its other factors first:
    ``gamma*istd/M*(M*dy - sum_dy)`` is one operation on the large array where ``gamma*istd*(M*dy - sum_dy)/M`` is
    two."""

    _module = "np"

    def __init__(self, arrays=None):
        super().__init__()
        self._arrays = arrays

    def _large(self, e) -> bool:
        return large(e, self._arrays)

    def _print_Mul(self, expr):
        if not self._arrays:
            return super()._print_Mul(expr)
        if expr.could_extract_minus_sign():  # a leading minus, as the Add printer expects of a negative term
            return "-" + self._print(-expr)
        big = [f for f in expr.args if self._large(f)]
        if not big or len(big) == len(expr.args):
            return super()._print_Mul(expr)
        code = self.parenthesize(sympy.Mul(*(f for f in expr.args if not self._large(f))), PRECEDENCE["Mul"], strict=True)
        for f in big:
            if f.is_Pow and f.exp.is_negative:
                code += "/" + self.parenthesize(1 / f, PRECEDENCE["Mul"], strict=True)
            else:
                code += "*" + self.parenthesize(f, PRECEDENCE["Mul"])
        return code

    def _print_rsum(self, e):
        return f"_rsum({self._print(e.args[0])})"

    def _print_psum(self, e):
        return f"_psum({self._print(e.args[0])})"

    def _print_Heaviside(self, e):
        # an epilogue's mask: 1 where its argument is > 0, else 0 (the step at a kink taken as 0, as PyTorch's relu)
        return f"np.greater({self._print(e.args[0])}, 0)"

    def _print_Max(self, e):
        code = self._print(e.args[0])
        for a in e.args[1:]:
            code = f"np.maximum({code}, {self._print(a)})"
        return code

    def _print_Add(self, expr, order=None):
        # a term without a leading minus first: x - mu is one NumPy operation, -mu + x two (a negation, then an add)
        terms = self._as_ordered_terms(expr, order=order)
        first = next((t for t in terms if not t.could_extract_minus_sign()), terms[0])
        if first is terms[0]:
            return super()._print_Add(expr, order)
        return super()._print_Add(sympy.Add(first, *(t for t in terms if t is not first), evaluate=False), "none")


def large(e: sympy.Expr, arrays) -> bool:
    """Whether *e* is a large array: it reads one of *arrays* outside a reduction (a sum is per statistic)."""
    if isinstance(e, (rsum, psum)):
        return False
    if e.is_Symbol:
        return e in arrays
    return any(large(a, arrays) for a in e.args)


class _ScalarPrinter(PythonCodePrinter):
    """Scalar code for Numba: math.sqrt, math.exp, ...; sign() as copysign."""

    def _print_Heaviside(self, e):  # as the NumPy printer's: 0 at the kink
        return f"({self._print(e.args[0])} > 0)"

    def _print_Max(self, e):
        return "max(" + ", ".join(self._print(a) for a in e.args) + ")"


def numpy_code(e: sympy.Expr, names: dict[sympy.Symbol, str], arrays: set[sympy.Symbol] | None = None) -> str:
    """NumPy code for *e*, its symbols renamed by *names*; *arrays*: see _NumPyPrinter."""
    renamed = {sympy.Symbol(names.get(s, s.name)) for s in arrays or ()}
    return _NumPyPrinter(renamed).doprint(_renamed(e, names)).replace("numpy.", "np.")


def scalar_code(e: sympy.Expr, names: dict[sympy.Symbol, str]) -> str:
    return _ScalarPrinter({"standard": "python3"}).doprint(_renamed(e, names))


def _renamed(e: sympy.Expr, names: dict[sympy.Symbol, str]) -> sympy.Expr:
    return e.xreplace({s: sympy.Symbol(names.get(s, s.name)) for s in e.free_symbols})


def cse(exprs: list[sympy.Expr], prefix: str = "c") -> tuple[list[tuple[sympy.Symbol, sympy.Expr]], list[sympy.Expr]]:
    """Common subexpressions with canonical names (c0, c1, ...), in a deterministic order."""
    taken = {s.name for e in exprs for s in e.free_symbols}
    names = (sympy.Symbol(f"{prefix}{k}") for k in itertools.count() if f"{prefix}{k}" not in taken)
    replacements, reduced = sympy.cse(exprs, symbols=names, optimizations=None, order="canonical")
    return replacements, reduced


def kept_cse(exprs: list[sympy.Expr], keep, prefix: str) -> tuple[dict[sympy.Symbol, sympy.Expr], list[sympy.Expr]]:
    """cse() where only the parts *keep* accepts, and those made from a kept part, get a name: the others stay inline
    in what reads them (a scalar such as 1/M, which costs nothing and rounds once inline). The kept parts, in order and
    renumbered from prefix0 (every name was free for cse), and the expressions in terms of them."""
    replacements, reduced = cse(exprs, prefix)
    inline: dict = {}
    kept: list = []
    for t, e in replacements:  # in order: a later part may read an earlier one
        e = e.xreplace(inline)
        if keep(e) or e.free_symbols & set(kept):
            kept.append(t)
        else:
            inline[t] = e
    rename = dict(zip(kept, [t for t, _ in replacements]))
    parts = {rename[t]: e.xreplace(inline).xreplace(rename) for t, e in replacements if t in rename}
    return parts, [e.xreplace(inline).xreplace(rename) for e in reduced]


def needed_first(e: sympy.Expr, parts: dict, done: set) -> list[tuple[sympy.Symbol, sympy.Expr]]:
    """The parts *e* reads that are not *done* yet, each after the parts it reads in turn (marked done)."""
    out = []
    for t, pe in parts.items():
        if t in e.free_symbols and t not in done:
            out += needed_first(pe, parts, done)
            done.add(t)
            out.append((t, pe))
    return out


_NAME = re.compile(r"(?<![\w.])[A-Za-z_]\w*")


def reads(*pieces) -> set[str]:
    """The names printed code reads: every identifier (attributes aside) in strings, and in lists, tuples and dicts of
    them. A template leaves out what a function does not read (M, eps, ...) by asking this of its pieces."""
    found: set[str] = set()
    for piece in pieces:
        if isinstance(piece, str):
            found.update(_NAME.findall(piece))
        elif isinstance(piece, dict):
            found |= reads(*piece.values())
        elif isinstance(piece, (list, tuple)):
            found |= reads(*piece)
    return found
