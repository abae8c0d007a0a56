"""The forward graph: an ordered list of elementwise, per-statistic and reduction nodes.

Every operation of the expression becomes one node, so the staged backward has one step per operation (nine for
batch norm). Two things are fused instead: constants (numbers, eps) and a constant offset such as ``var + eps``,
which goes into the node that consumes it (``std = sqrt(var + eps)``). Identical subexpressions share one node.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from symbn.core.expr import contains, excerpt
from symbn.core.symbols import BETA, EPS, GAMMA, M, RESERVED, X, rsum, sym

ELEM, STAT, REDUCE = "elem", "stat", "reduce"


class GraphError(ValueError):
    """An expression that parses but is not a normalization."""

    def __init__(self, text: str, problem: str):
        super().__init__(f"expression {text!r}: {problem}")


@dataclass(frozen=True)
class Node:
    name: str
    symbol: sympy.Symbol
    expr: sympy.Expr  # in operand symbols; a reduction is rsum(a)/D
    kind: str  # ELEM (varies per element), STAT (one value per statistic) or REDUCE (a statistic)
    op: str  # what the step does, for people: "mean", "subtract", "square", "reciprocal", ...
    operands: tuple[sympy.Symbol, ...]
    central: bool = False  # a mean of an expression that itself depends on a statistic: divided by M - ddof


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    leaves: tuple[sympy.Symbol, ...]  # x, and gamma/beta where switched on

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    @property
    def reductions(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.kind == REDUCE)

    def node(self, symbol: sympy.Symbol) -> Node | None:
        return next((n for n in self.nodes if n.symbol == symbol), None)

    def definition(self) -> sympy.Expr:
        """The output with every node substituted: the forward as one expression in x, the parameters and sums."""
        env: dict[sympy.Symbol, sympy.Expr] = {}
        for n in self.nodes:
            env[n.symbol] = n.expr.xreplace(env)
        return env[self.output.symbol]

    def base(self) -> dict[sympy.Symbol, sympy.Expr]:
        """Each elementwise node written in x, gamma, beta and per-statistic node symbols (which stay symbols, so
        that relations such as istd = 1/std can be inverted later instead of hidden inside radicals)."""
        out: dict[sympy.Symbol, sympy.Expr] = {}
        for n in self.nodes:
            if n.kind == ELEM:
                out[n.symbol] = n.expr.xreplace(out)
        return out


def build(tree: tuple, *, text: str, center: bool, scale: bool, ddof: int, output: str = "y") -> Graph:
    """Lower a parsed expression tree into a graph; beta (gamma) is replaced by 0 (1) when center (scale) is off.
    *output*: the name of the last node (z where an epilogue follows)."""
    builder = _Builder(text, center=center, scale=scale, ddof=ddof)
    root = builder.visit(tree)
    if builder.level(root) != ELEM or not builder.depends(root, X):
        folded = f"; it simplifies to {root}" if contains(tree, "x") and not root.is_Symbol else ""
        raise GraphError(text, "the output must vary with x element by element" + folded)
    nodes = builder.output(root, output)
    if not any(n.kind == REDUCE for n in nodes):
        raise GraphError(text, "a normalization needs at least one mean() or sum() over x")
    if ddof and not any(n.central for n in nodes):
        raise GraphError(text, "ddof=1 needs a central moment such as mean((x - mean(x))**2); there is none")
    leaves = tuple(s for s in (X, GAMMA, BETA) if builder.depends(root, s))
    graph = Graph(nodes, leaves)
    _check_base(graph, text)
    if BETA in leaves and sympy.diff(graph.base()[graph.output.symbol], BETA) != 1:
        # Kernels take beta in the forward only: a shift never reaches a gradient, anything else would.
        raise GraphError(text, "beta must enter as a plain shift, y = ... + beta (use gamma for a scale)")
    return graph


class _Builder:
    def __init__(self, text: str, *, center: bool, scale: bool, ddof: int):
        self.text, self.center, self.scale, self.ddof = text, center, scale, ddof
        self.nodes: list[Node] = []
        self.by_expr: dict[sympy.Expr, Node] = {}
        self.by_symbol: dict[sympy.Symbol, Node] = {}

    # --- queries -------------------------------------------------------------------------------------------
    def level(self, e: sympy.Expr) -> str | None:
        """ELEM if e varies per element, STAT if it is one value per statistic, None if constant."""
        found = None
        for s in e.free_symbols:
            if s in (X, GAMMA, BETA) or (s in self.by_symbol and self.by_symbol[s].kind == ELEM):
                return ELEM
            if s in self.by_symbol:
                found = STAT
        return found

    def depends(self, e: sympy.Expr, target: sympy.Symbol) -> bool:
        for s in e.free_symbols:
            if s == target or (s in self.by_symbol and self.depends(self.by_symbol[s].expr, target)):
                return True
        return False

    def central(self, e: sympy.Expr) -> bool:
        return any(s in self.by_symbol and (self.by_symbol[s].kind == REDUCE or self.central(self.by_symbol[s].expr))
                   for s in e.free_symbols)

    # --- building --------------------------------------------------------------------------------------------
    def visit(self, tree: tuple) -> sympy.Expr:
        """A constant, a symbol, or symbol + constant (an offset, fused into its consumer)."""
        kind = tree[0]
        if kind == "x":
            return X
        if kind == "gamma":
            return GAMMA if self.scale else sympy.Integer(1)
        if kind == "beta":
            return BETA if self.center else sympy.Integer(0)
        if kind == "eps":
            return EPS
        if kind == "num":
            return tree[1]
        if kind == "call" and tree[1] in ("mean", "sum"):
            return self.reduction(tree[1], self.visit(tree[2]))
        args = [self.visit(t) for t in tree[1:] if isinstance(t, tuple)]
        value = self.defined(tree, apply(tree, args))
        if self.level(value) is None:  # constants, and what SymPy folds to one: x - x, 0*mean(x), x**0
            return value
        if kind in ("add", "sub") and any(self.level(a) is None for a in args):
            other = next(a for a in args if self.level(a) is not None)
            if other.is_Symbol:
                return value
        if kind == "div":
            num, den = args
            if self.level(den) is not None:
                inv = self.materialize(1 / den, "reciprocal")
                return inv if num == 1 else self.materialize(num * inv, "multiply")
        return self.materialize(value, _OPS.get(tree[1] if kind == "call" else kind, kind))

    def defined(self, tree: tuple, e: sympy.Expr) -> sympy.Expr:
        """*e*, unless SymPy has folded it into an infinity, nan or a complex number (x/(x - x), log(1 - 1))."""
        problem = _undefined(e)
        if problem and tree[0] == "call" and tree[1] == "log" and e.has(sympy.zoo):
            problem = "log(0) is minus infinity"
        elif problem and tree[0] == "pow" and e.has(sympy.zoo):
            problem = "division by zero (0 to a negative power)"
        if problem:
            raise GraphError(self.text, f"{problem} in {excerpt(tree)}")
        return e

    def reduction(self, fn: str, arg: sympy.Expr) -> sympy.Symbol:
        if self.level(arg) != ELEM:
            raise GraphError(self.text, f"{fn}() must be taken of an expression that varies with x")
        if self.depends(arg, GAMMA) or self.depends(arg, BETA):
            raise GraphError(self.text, f"gamma and beta may not appear inside {fn}(): statistics depend on x only")
        if not arg.is_Symbol:
            arg = self.materialize(arg, "offset")
        central = fn == "mean" and self.central(arg)
        denominator = 1 if fn == "sum" else (M - self.ddof if central else M)
        return self.materialize(rsum(arg) / denominator, fn, central=central)

    def materialize(self, e: sympy.Expr, op: str, central: bool = False) -> sympy.Symbol:
        if e.is_Symbol:
            return e
        if e in self.by_expr:
            return self.by_expr[e].symbol
        operands = tuple(sorted((s for s in e.free_symbols if s not in (EPS, M)), key=lambda s: s.name))
        kind = REDUCE if op in ("mean", "sum") else self.level(e)
        name = self.fresh(_name(op, e, [self.by_symbol[s].name if s in self.by_symbol else s.name for s in operands],
                                [self.by_symbol.get(s) for s in operands]))
        node = Node(name, sym(name, **assumptions(e, kind)), e, kind, op, operands, central)
        self.nodes.append(node)
        self.by_expr[e] = node
        self.by_symbol[node.symbol] = node
        return node.symbol

    def output(self, root: sympy.Expr, name: str) -> tuple[Node, ...]:
        """The nodes the output needs, in order, the last one renamed *name* (dead branches such as 0*f(x)
        dropped)."""
        if not root.is_Symbol:
            root = self.materialize(root, "output")
        if root not in self.by_symbol:  # the output is x itself: no nodes, which build() reports
            return ()
        needed, stack = set(), [root]
        while stack:
            s = stack.pop()
            if s in self.by_symbol and s not in needed:
                needed.add(s)
                stack.extend(self.by_symbol[s].operands)
        nodes = [n for n in self.nodes if n.symbol in needed]
        last = nodes[-1]
        nodes[-1] = Node(name, sym(name, **assumptions(last.expr, last.kind)), last.expr, last.kind, last.op,
                         last.operands, last.central)
        return tuple(nodes)

    def fresh(self, name: str) -> str:
        taken = RESERVED | {n.name for n in self.nodes} | {"y"}
        if name not in taken:
            return name
        k = 2
        while f"{name}{k}" in taken:
            k += 1
        return f"{name}{k}"


def _check_base(graph: Graph, text: str) -> None:
    """What each node computes once written in x and the statistics, where SymPy cancels what one node per operation
    keeps apart (x*(1/x) is 1): nothing may come out infinite or complex, a reduction must still sum something that
    varies with x, and so must the output (abs(x/x) - mean(x) is 1 - mean(x), the same for every element)."""
    base = graph.base()
    for n in graph.nodes:
        e = base.get(n.symbol, n.expr).xreplace(base)
        problem = _undefined(e)
        if problem:
            raise GraphError(text, f"{problem}: {n.name} = {n.expr} is {e}")
        if n.kind == REDUCE:
            (arg,) = n.operands
            if X not in base.get(arg, arg).free_symbols:
                raise GraphError(text, f"{n.op}() must be taken of an expression that varies with x; "
                                       f"{n.name} sums {base.get(arg, arg)}, which SymPy simplifies to a constant")
    y = base[graph.output.symbol]
    if X not in y.free_symbols:
        raise GraphError(text, f"the output must vary with x element by element; it simplifies to {y}")


def _undefined(e: sympy.Expr) -> str | None:
    """What is wrong with *e*, if SymPy has made it infinite, undefined or complex."""
    if e.has(sympy.zoo):
        return "division by zero"
    if e.has(sympy.nan):
        return "an undefined value (nan)"
    if e.has(sympy.oo, -sympy.oo):
        return "an infinite value"
    if e.has(sympy.I) or any((a.is_Function or a.is_Pow or a.is_Number) and a.is_extended_real is False
                             for a in sympy.preorder_traversal(e)):
        return "a complex value"
    return None


def assumptions(e: sympy.Expr, kind: str) -> dict[str, bool]:
    """Sign assumptions for the symbol of a node of *kind* that computes *e*: they let SymPy simplify, e.g.
    sqrt(var + eps) > 0 because var is a mean of squares."""
    if kind == REDUCE:  # the sign of a mean or sum is the sign of its summand (the count is positive)
        (e,) = [a.args[0] for a in e.atoms(rsum)]
    if e.is_positive:
        return {"positive": True}
    return {"nonnegative": True} if e.is_nonnegative else {}


_OPS = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "divide", "pow": "power", "neg": "negate",
        "sqrt": "sqrt", "exp": "exp", "log": "log", "abs": "abs"}


def apply(tree: tuple, args: list[sympy.Expr]) -> sympy.Expr:
    """The SymPy value of a node of the grammar's arithmetic (and its one-argument functions) on its operands."""
    kind = tree[0]
    if kind == "add":
        return args[0] + args[1]
    if kind == "sub":
        return args[0] - args[1]
    if kind == "mul":
        return args[0] * args[1]
    if kind == "div":
        return args[0] / args[1]
    if kind == "pow":
        return args[0] ** args[1]
    if kind == "neg":
        return -args[0]
    return {"sqrt": sympy.sqrt, "exp": sympy.exp, "log": sympy.log, "abs": sympy.Abs}[tree[1]](args[0])


def _name(op: str, e: sympy.Expr, names: list[str], nodes: list[Node | None]) -> str:
    """Readable names for the usual steps (mu, xc, sq, var, std, istd, xhat); 't' otherwise."""
    if op in ("mean", "sum"):
        (arg,) = names
        if arg == "x":
            return "mu" if op == "mean" else "sx"
        if arg.startswith("sq") and nodes[0] is not None:
            centred = any(s.name.startswith("xc") for s in nodes[0].operands)
            if op == "sum":
                return "ss"
            return "var" if centred else "ms"
        return "m" if op == "mean" else "s"
    if op == "subtract" and "x" in names and len(names) == 2:
        return "xc"
    if op == "power" and e.is_Pow and e.exp == 2:
        return "sq"
    if op == "sqrt":
        return {"var": "std", "ms": "rms"}.get(names[0] if names else "", "sd")
    if op == "reciprocal":
        return "i" + names[0] if names and names[0] in ("std", "rms", "sd") else "inv"
    scales = [n for n in names if n.startswith("inv") or n in ("istd", "irms", "isd")]
    others = [n for n in names if n not in scales]  # empty for eps*inv, 2*inv: no operand besides the scale
    if op == "multiply" and scales and others and others[0] in ("x", "xc"):
        return "xhat"
    if op == "multiply" and "gamma" in names:
        return "scaled"
    return "t"
