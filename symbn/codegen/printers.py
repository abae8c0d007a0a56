"""Expressions to code: NumPy array code and scalar Python code for Numba, and CSE with canonical names."""

from __future__ import annotations

import itertools
import re

import sympy
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.pycode import PythonCodePrinter


class _NumPyPrinter(NumPyPrinter):
    """NumPy code that refers to the module as ``np``; the two reductions call the module's _rsum and _psum."""

    _module = "np"

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


class _ScalarPrinter(PythonCodePrinter):
    """Scalar code for Numba: math.sqrt, math.exp, ...; sign() as copysign."""

    def _print_Heaviside(self, e):  # as the NumPy printer's: 0 at the kink
        return f"({self._print(e.args[0])} > 0)"

    def _print_Max(self, e):
        return "max(" + ", ".join(self._print(a) for a in e.args) + ")"


def numpy_code(e: sympy.Expr, names: dict[sympy.Symbol, str]) -> str:
    return _NumPyPrinter().doprint(_renamed(e, names)).replace("numpy.", "np.")


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
