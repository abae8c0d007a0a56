"""Expressions to strings: plain text for terminals and LaTeX for documents, on top of SymPy's printers."""

from __future__ import annotations

import itertools

import sympy
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.pycode import PythonCodePrinter

_LATEX = {
    "x": "x", "y": "y", "gamma": r"\gamma", "beta": r"\beta", "eps": r"\epsilon", "mu": r"\mu",
    "xhat": r"\hat{x}", "xc": "x_{c}", "M": "M", "momentum": "m", "u": "u",
}


def text(e: sympy.Expr) -> str:
    return sympy.sstr(e)


def latex_name(name: str) -> str:
    """LaTeX for a symbol name: Greek where the name is Greek, d<name> as an adjoint, upright for words."""
    if name in _LATEX:
        return _LATEX[name]
    if name.startswith("running_"):
        return r"\mathrm{running}_{" + latex_name(name[len("running_"):]) + "}"
    if name.startswith("sum_"):
        return r"\Sigma_{" + r"\,".join(latex_name(p) for p in name[4:].split("_")) + "}"
    if name.startswith("d") and len(name) > 1 and (name[1:] in _LATEX or name[1:].isidentifier()):
        return r"\mathrm{d}" + latex_name(name[1:])
    head = name.rstrip("0123456789")
    digits = name[len(head):]
    body = r"\mathrm{" + head + "}" if len(head) > 1 else head
    return body + (f"_{{{digits}}}" if digits else "")


def latex(e: sympy.Expr) -> str:
    names = {s: "{" + latex_name(s.name) + "}" for s in e.free_symbols if isinstance(s, sympy.Symbol)}
    return sympy.latex(e, symbol_names=names)


class _NumPyPrinter(NumPyPrinter):
    """NumPy code that refers to the module as ``np``; the two reductions call the module's _rsum and _psum."""

    _module = "np"

    def _print_rsum(self, e):
        return f"_rsum({self._print(e.args[0])})"

    def _print_psum(self, e):
        return f"_psum({self._print(e.args[0])})"


class _ScalarPrinter(PythonCodePrinter):
    """Scalar code for Numba: math.sqrt, math.exp, ...; sign() as copysign."""


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
