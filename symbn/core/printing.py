"""Expressions to strings for people: plain text for terminals and LaTeX for documents."""

from __future__ import annotations

import sympy

_LATEX = {
    "x": "x", "y": "y", "gamma": r"\gamma", "beta": r"\beta", "eps": r"\epsilon", "mu": r"\mu",
    "xhat": r"\hat{x}", "xc": "x_{c}", "M": "M", "momentum": "m", "u": "u",
    # two shares joining across processes (symbn.codegen.shares): counts, means, their difference
    "na": "n_{a}", "nb": "n_{b}", "ma": "m_{a}", "mb": "m_{b}", "delta": r"\delta",
}


def text(e: sympy.Expr) -> str:
    return sympy.sstr(e)


def latex_name(name: str) -> str:
    """LaTeX for a symbol name: Greek where the name is Greek, d<name> as an adjoint, upright for words."""
    if name in _LATEX:
        return _LATEX[name]
    if name.startswith("bar:"):  # an adjoint in the second order's reverse mode
        return r"\overline{" + latex_name(name[4:]) + "}"
    if name.startswith("running_"):
        return r"\mathrm{running}_{" + latex_name(name[len("running_"):]) + "}"
    if name.startswith("sum_"):
        return r"\Sigma_{" + r"\,".join(latex_name(p) for p in name[4:].split("_")) + "}"
    if name.startswith("d") and len(name) > 1 and (name[1:] in _LATEX or name[1:].isidentifier()):
        return r"\mathrm{d}" + latex_name(name[1:])
    if len(name) > 2 and name[0] == "c" and name[1] in "ab" and name[2:].isdigit():  # a share's central sum
        return f"c_{{{name[1]},{name[2:]}}}"
    head = name.rstrip("0123456789")
    digits = name[len(head):]
    body = r"\mathrm{" + head + "}" if len(head) > 1 else head
    return body + (f"_{{{digits}}}" if digits else "")


def latex(e: sympy.Expr) -> str:
    names = {s: "{" + latex_name(s.name) + "}" for s in e.free_symbols if isinstance(s, sympy.Symbol)}
    return sympy.latex(e, symbol_names=names)
