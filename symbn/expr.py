"""Safe parsing of forward expressions.

The text is parsed with :func:`ast.parse` (which only builds a syntax tree) and then walked with a whitelist: every
node type, name and call is checked before anything is built, so user text is never evaluated as Python.
The result is a small immutable tree of tuples that :mod:`symbn.graph` lowers into a forward graph.
"""

from __future__ import annotations

import ast
from fractions import Fraction

import sympy

NAMES = ("x", "gamma", "beta", "eps")
FUNCTIONS = ("sqrt", "exp", "log", "abs", "mean", "sum")
REDUCTIONS = ("mean", "sum")
OPERATORS = ("+", "-", "*", "/", "**")
MAX_LENGTH = 1000
MAX_NODES = 200
MAX_EXPONENT = 8
MAX_LITERAL = 10**12

ALLOWED = (
    f"names {', '.join(NAMES)}; numbers; operators {' '.join(OPERATORS)}; "
    f"one-argument calls {', '.join(FUNCTIONS)}"
)

_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Pow: "pow"}


class ExpressionError(ValueError):
    """A forward expression that is not in the whitelist grammar."""

    def __init__(self, text: str, problem: str):
        super().__init__(f"expression {text!r}: {problem}. Allowed: {ALLOWED}.")
        self.problem = problem


def parse(text: str) -> tuple:
    """Parse *text* into a tree of tuples: ('x',), ('num', Rational), ('add', a, b), ('call', 'mean', a), ...

    Raises :class:`ExpressionError` for anything outside the whitelist.
    """
    if not isinstance(text, str):
        raise ExpressionError(str(text), f"expected a string, got {type(text).__name__}")
    if not text.strip():
        raise ExpressionError(text, "the expression is empty")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(text[:40] + "...", f"longer than {MAX_LENGTH} characters ({len(text)})")
    try:
        module = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ExpressionError(text, f"not valid syntax ({err.msg})") from None
    except (UnicodeError, ValueError):  # lone surrogates (undecodable argv bytes), NUL characters
        raise ExpressionError(text, "it contains characters that are not valid in an expression") from None
    except (RecursionError, MemoryError):
        raise ExpressionError(text, "nested too deeply") from None
    count = sum(1 for _ in ast.walk(module))
    if count > MAX_NODES:
        raise ExpressionError(text, f"too large ({count} syntax nodes, at most {MAX_NODES})")
    return _Walker(text).visit(module.body)


class _Walker:
    def __init__(self, text: str):
        self.text = text

    def fail(self, problem: str):
        raise ExpressionError(self.text, problem)

    def visit(self, node: ast.AST) -> tuple:
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            op = _BINOPS[type(node.op)]
            left, right = self.visit(node.left), self.visit(node.right)
            if op == "pow":
                self._check_exponent(right)
            return (op, left, right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.visit(node.operand)
            return ("neg", operand) if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.Name):
            if node.id not in NAMES:
                self.fail(f"the name {node.id!r} is not allowed")
            return (node.id,)
        if isinstance(node, ast.Constant):
            return ("num", self._number(node.value))
        if isinstance(node, ast.Call):
            return self._call(node)
        self.fail(f"{_describe(node)} is not allowed")

    def _call(self, node: ast.Call) -> tuple:
        if not isinstance(node.func, ast.Name):
            self.fail(f"calling {_describe(node.func)} is not allowed")
        name = node.func.id
        if name not in FUNCTIONS:
            self.fail(f"the function {name!r} is not allowed")
        if node.keywords or len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
            self.fail(f"{name}() takes exactly one positional argument")
        return ("call", name, self.visit(node.args[0]))

    def _number(self, value) -> sympy.Rational:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(f"the constant {value!r} is not a real number")
        if value != value or abs(value) > MAX_LITERAL:
            self.fail(f"the number {value!r} is outside [-{MAX_LITERAL}, {MAX_LITERAL}]")
        # Exact: 1e-5 becomes 1/100000, so derivations and proofs stay in rational arithmetic.
        frac = Fraction(repr(value)) if isinstance(value, float) else Fraction(value)
        return sympy.Rational(frac.numerator, frac.denominator)

    def _check_exponent(self, exponent: tuple):
        value = _constant_value(exponent)
        if value is None or abs(value) > MAX_EXPONENT:
            self.fail(f"an exponent must be a number between -{MAX_EXPONENT} and {MAX_EXPONENT}")


def _constant_value(tree: tuple):
    """The value of a tree made of number literals only, else None."""
    if tree[0] == "num":
        return tree[1]
    if tree[0] == "neg":
        inner = _constant_value(tree[1])
        return None if inner is None else -inner
    if tree[0] == "div":
        a, b = _constant_value(tree[1]), _constant_value(tree[2])
        return None if a is None or b is None or b == 0 else a / b
    return None


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"attribute access '.{node.attr}'"
    if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare)):
        op = getattr(node, "op", None) or getattr(node, "ops", [None])[0]
        return f"the operator {type(op).__name__}"
    return f"the construct {type(node).__name__}"


def contains(tree: tuple, leaf: str) -> bool:
    """Whether the leaf name occurs anywhere in the tree."""
    if tree[0] == leaf:
        return True
    return any(isinstance(t, tuple) and contains(t, leaf) for t in tree[1:])


def to_text(tree: tuple) -> str:
    """Canonical text of a tree (fully parenthesised where needed), used for names and hashes."""
    kind = tree[0]
    if kind in NAMES:
        return kind
    if kind == "num":
        return str(tree[1])
    if kind == "neg":
        return f"-({to_text(tree[1])})"
    if kind == "call":
        return f"{tree[1]}({to_text(tree[2])})"
    symbol = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}[kind]
    return f"({to_text(tree[1])}{symbol}{to_text(tree[2])})"
