"""The SymPy atoms every stage shares: the element symbols and the two opaque reductions.

``rsum(e)`` is the sum of an elementwise expression over one reduction set (the M elements one statistic sees);
``psum(e)`` is the sum over the axes the parameters do not span (how dgamma and dbeta are formed). Both stay
unevaluated: SymPy does the calculus on plain symbols and the reductions are handled by rules of our own.
"""

from __future__ import annotations

import sympy

X = sympy.Symbol("x", real=True)
GAMMA = sympy.Symbol("gamma", real=True)
BETA = sympy.Symbol("beta", real=True)
EPS = sympy.Symbol("eps", positive=True)
M = sympy.Symbol("M", positive=True, integer=True)
DY = sympy.Symbol("dy", real=True)
XHAT = sympy.Symbol("xhat", real=True)
MOMENTUM = sympy.Symbol("momentum", positive=True)

# Names a graph node may not take (xhat may: the node that computes the normalized value is named so).
RESERVED = frozenset({"x", "gamma", "beta", "eps", "M", "dy", "momentum"})


class rsum(sympy.Function):
    """Sum over the reduction set of one statistic."""

    nargs = 1
    is_real = True

    def _sympystr(self, printer):
        return f"sum({printer._print(self.args[0])})"

    def _latex(self, printer):
        return r"\sum\left(" + printer._print(self.args[0]) + r"\right)"


class psum(sympy.Function):
    """Sum over the axes the affine parameters do not span."""

    nargs = 1
    is_real = True

    def _sympystr(self, printer):
        return f"psum({printer._print(self.args[0])})"

    def _latex(self, printer):
        return r"\sum_{p}\left(" + printer._print(self.args[0]) + r"\right)"


def sym(name: str, **assumptions) -> sympy.Symbol:
    return sympy.Symbol(name, real=True, **assumptions)
