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
# An epilogue (symbn.core.epilogue): the normalized value z it takes, the residual r, and the gradient of z.
Z = sympy.Symbol("z", real=True)
R = sympy.Symbol("r", real=True)
DZ = sympy.Symbol("dz", real=True)
MOMENTUM = sympy.Symbol("momentum", positive=True)
# The upstream gradients of the second order (symbn.core.second): of dx, dgamma and dbeta, each given per element
# (gggamma and ggbeta hold one value per parameter, broadcast over the elements that parameter scales).
GGX = sympy.Symbol("ggx", real=True)
GGGAMMA = sympy.Symbol("gggamma", real=True)
GGBETA = sympy.Symbol("ggbeta", real=True)

# Names a graph node may not take (xhat may: the node that computes the normalized value is named so).
RESERVED = frozenset({"x", "gamma", "beta", "eps", "M", "dy", "momentum", "z", "r", "dz", "dr"})


class _SetSum(sympy.Function):
    """An unevaluated sum of an elementwise expression over a set of elements; subclasses name the set."""

    nargs = 1
    is_real = True
    text_name = latex_sum = ""

    def _sympystr(self, printer):
        return f"{self.text_name}({printer._print(self.args[0])})"

    def _latex(self, printer, exp=None):
        # a power of a sum (rsum(x)**2) reaches here with its exponent: sympy's printer passes it to functions
        body = self.latex_sum + r"\left(" + printer._print(self.args[0]) + r"\right)"
        return body if exp is None else r"\left(" + body + r"\right)^{" + exp + "}"


class rsum(_SetSum):
    """Sum over the reduction set of one statistic."""

    text_name, latex_sum = "sum", r"\sum"


class psum(_SetSum):
    """Sum over the axes the affine parameters do not span."""

    text_name, latex_sum = "psum", r"\sum_{p}"


def sym(name: str, **assumptions) -> sympy.Symbol:
    return sympy.Symbol(name, real=True, **assumptions)
