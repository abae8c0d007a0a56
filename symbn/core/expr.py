"""Safe parsing of forward expressions.

The text is parsed with :func:`ast.parse` (which only builds a syntax tree) and then walked with a whitelist: every
node type, name and call is checked before anything is built, so user text is never evaluated as Python.
The result is a small immutable tree of tuples that :mod:`symbn.core.graph` lowers into a forward graph.

Parsing and checking need no SymPy: :func:`parse_exact` holds numbers as exact :class:`fractions.Fraction` values and
:func:`sympy_tree` turns them into SymPy numbers, importing SymPy only then; :func:`parse` does both. So a spec can be
made (and a cached module loaded) without importing SymPy. mpmath, for the size checks of irrational constants, is
imported only when such a constant turns up.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, replace
from fractions import Fraction

NAMES = ("x", "gamma", "beta", "eps", "r")
FUNCTIONS = ("sqrt", "exp", "log", "abs", "mean", "sum", "relu", "max")
REDUCTIONS = ("mean", "sum")
ARITY = {"max": 2}  # every other function takes one argument
# What only an epilogue may use (symbn.core.epilogue): the residual r, and the kinks relu() and max().
EPILOGUE = ("r", "relu", "max")
OPERATORS = ("+", "-", "*", "/", "**")
MAX_LENGTH = 1000
MAX_NODES = 200
MAX_EXPONENT = 8
MAX_LITERAL = 10**12
# Bounds on what an expression may grow into once SymPy folds and expands it; checked on the tree, from logarithms,
# before anything large is computed (9**8**... or exp(exp(100)) would otherwise hang or overflow).
MAX_DIGITS = 100  # a constant: at most this many digits above and below the fraction bar (magnitude 1e-100..1e100)
MAX_DEGREE = 64  # powers of powers: x**8**... multiplies out to at most this degree
MAX_TERMS = 2000  # terms once fully expanded, e.g. (x + mean(x) + eps)**8
# SymPy's polynomial algorithms (factor, which the derivation uses) see x**(p/q) as the p-th power of x**(1/q), and
# exp(p/q*x) as the p-th power of exp(x/q); products combine them (x**(1/97)*x**(1/89) is x**(186/8633), and its
# derivative has x**(-8447/8633)). So the degrees SymPy works with are bounded too: the least common multiple of the
# denominators of all exponents times the degree, times the numbers inside exp().
MAX_ROOT = 1000  # the least common multiple of the denominators of all exponents (sqrt counts as 1/2)
MAX_POLY_DEGREE = 2000  # MAX_ROOT * degree * (numbers inside each exp(), above and below the fraction bar)
MAX_NESTING = 8  # calls inside calls: exp(exp(...)), log(sqrt(...)); SymPy's factor slows down steeply with depth

ALLOWED = (
    f"names {', '.join(NAMES)}; numbers; operators {' '.join(OPERATORS)}; "
    f"one-argument calls {', '.join(f for f in FUNCTIONS if f not in ARITY)}; max(a, b); "
    f"r (a residual), relu() and max() only in an epilogue applied to the normalized value"
)

_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Pow: "pow"}


class ExpressionError(ValueError):
    """A forward expression that is not in the whitelist grammar."""

    def __init__(self, text: str, problem: str):
        super().__init__(f"expression {text!r}: {problem}. Allowed: {ALLOWED}.")
        self.problem = problem


def parse(text: str) -> tuple:
    """Parse *text* into a tree of tuples: ('x',), ('num', Rational), ('add', a, b), ('call', 'mean', a), ...,
    its numbers SymPy Rationals (what :mod:`symbn.core.graph` builds on).

    Raises :class:`ExpressionError` for anything outside the whitelist.
    """
    return sympy_tree(parse_exact(text))


def parse_exact(text: str) -> tuple:
    """The tree :func:`parse` returns, its numbers exact :class:`fractions.Fraction` values, without importing SymPy:
    the same checks, the same errors, and a tree equal to parse's (a Fraction equals the Rational of its value).
    :func:`to_text`, :func:`canonical`, :func:`contains` and :func:`excerpt` read either kind of tree alike."""
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
    tree = _Walker(text).visit(module.body)
    _Sizer(text).check_all(tree)
    return tree


def sympy_tree(tree: tuple) -> tuple:
    """*tree* (from :func:`parse_exact`) with its numbers as SymPy Rationals, as :func:`parse` returns it; imports
    SymPy."""
    import sympy

    def convert(node):
        if not isinstance(node, tuple) or not node:
            return node
        if node[0] == "num":
            value = _fraction(node[1])
            return ("num", sympy.Rational(value.numerator, value.denominator))
        return tuple(convert(t) for t in node)

    return convert(tree)


def _fraction(value) -> Fraction:
    """A number of a tree (a Fraction, or a SymPy Rational) as a Fraction."""
    return value if isinstance(value, Fraction) else Fraction(int(value.numerator), int(value.denominator))


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
        self.fail(f"{_describe(node)} is not allowed{_hint(node)}")

    def _call(self, node: ast.Call) -> tuple:
        if not isinstance(node.func, ast.Name):
            self.fail(f"calling {_describe(node.func)} is not allowed")
        name = node.func.id
        if name not in FUNCTIONS:
            hint = _FUNCTION_HINTS.get(name)
            self.fail(f"the function {name!r} is not allowed" + (f" ({hint})" if hint else ""))
        arity = ARITY.get(name, 1)
        if node.keywords or len(node.args) != arity or any(isinstance(a, ast.Starred) for a in node.args):
            self.fail(f"{name}() takes exactly {'one' if arity == 1 else arity} positional argument"
                      + ("s" if arity > 1 else ""))
        return ("call", name, *(self.visit(a) for a in node.args))

    def _number(self, value) -> Fraction:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(f"the constant {value!r} is not a real number")
        if value != value or abs(value) > MAX_LITERAL:
            self.fail(f"the number {value!r} is outside [-{MAX_LITERAL}, {MAX_LITERAL}]")
        # Exact: 1e-5 becomes 1/100000, so derivations and proofs stay in rational arithmetic.
        return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)

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


_FUNCTION_HINTS = {
    "pow": "write powers with **, e.g. x**2",
    "var": "write the variance as mean((x - mean(x))**2)",
    "std": "write the standard deviation as sqrt(mean((x - mean(x))**2))",
    "rsqrt": "write 1/sqrt(...)",
    "fabs": "use abs",
    "ln": "log is the natural logarithm",
    "maximum": "write max(a, b)",
    "min": "write min(a, b) as -max(-a, -b)",
}

_HINTS = {
    "BitXor": "^ is exclusive or in Python; write powers with **, e.g. x**2",
    "Mod": "% is the remainder in Python; there is no remainder operator",
    "FloorDiv": "use / for division",
    "MatMult": "use * for products",
    "Invert": "use - to negate",
    "Not": "an expression computes a number, not a condition",
    "And": "an expression computes a number, not a condition",
    "Or": "an expression computes a number, not a condition",
    "Compare": "an expression computes a number; there are no comparisons or conditions",
    "IfExp": "an expression computes a number; there are no comparisons or conditions",
    "Subscript": "x is one element of the tensor: use mean(...) or sum(...) for statistics over the reduced axes",
}


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"attribute access '.{node.attr}'"
    if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare)):
        op = getattr(node, "op", None) or getattr(node, "ops", [None])[0]
        return f"the operator {type(op).__name__}"
    return f"the construct {type(node).__name__}"


def _hint(node: ast.AST) -> str:
    """A pointer to what was probably meant, where there is an obvious one."""
    op = getattr(node, "op", None) or (getattr(node, "ops", None) or [None])[0]
    hint = _HINTS.get(type(op).__name__) or _HINTS.get(type(node).__name__)
    return f" ({hint})" if hint else ""


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
        return f"{tree[1]}({','.join(to_text(t) for t in tree[2:])})"
    symbol = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}[kind]
    return f"({to_text(tree[1])}{symbol}{to_text(tree[2])})"


# --- canonical text --------------------------------------------------------------------------------------------

_PRECEDENCE = {"add": 1, "sub": 1, "mul": 2, "div": 2, "neg": 3, "pow": 4}
_SYMBOLS = {"add": " + ", "sub": " - ", "mul": "*", "div": "/", "pow": "**"}
_ATOM = 5


def canonical(tree: tuple) -> str:
    """Readable text for a tree, with only the parentheses Python's precedence needs (``**`` binds right to left and
    tighter than a unary minus on its left), such that ``parse(canonical(t)) == t`` for every tree parse() returns.
    It holds only the grammar's characters: names, digits, ``.``, ``e``, operators, parentheses and spaces."""
    return _canonical(tree)[0]


def _canonical(tree: tuple) -> tuple[str, int]:
    kind = tree[0]
    if kind in NAMES:
        return kind, _ATOM
    if kind == "num":
        return _number_text(tree[1])
    if kind == "call":
        return f"{tree[1]}({', '.join(canonical(t) for t in tree[2:])})", _ATOM
    if kind == "neg":
        return "-" + _operand(tree[1], _PRECEDENCE["neg"]), _PRECEDENCE["neg"]
    if kind not in _SYMBOLS:
        raise ValueError(f"not an expression tree: {kind!r}")
    level = _PRECEDENCE[kind]
    if kind == "pow":  # right-associative: a**b**c is a**(b**c); the base must be an atom ((-x)**2, (x**2)**3)
        left, right = _operand(tree[1], _ATOM), _operand(tree[2], _PRECEDENCE["neg"])
    else:  # left-associative: a - (b - c) and a/(b*c) keep their parentheses
        left, right = _operand(tree[1], level), _operand(tree[2], level + 1)
    return left + _SYMBOLS[kind] + right, level


def excerpt(tree: tuple, width: int = 60) -> str:
    """The canonical text of a subtree, cut to *width* characters, for an error message."""
    text = canonical(tree)
    return text if len(text) <= width else text[: width - 3] + "..."


def _operand(tree: tuple, least: int) -> str:
    text, level = _canonical(tree)
    return text if level >= least else f"({text})"


def _number_text(value) -> tuple[str, int]:
    """An integer as digits; any other rational as the float literal that parses back to it (parse reads 1e-05 as
    exactly 1/100000, so every number parse() makes has one), else as a quotient (not a single number any more)."""
    value = _fraction(value)
    if value < 0:
        text, _ = _number_text(-value)
        return "-" + text, _PRECEDENCE["neg"]
    if value.denominator == 1:
        return str(value.numerator), _ATOM
    literal = repr(float(value))
    if "inf" not in literal and Fraction(literal) == value:
        return literal, _ATOM
    return f"{value.numerator}/{value.denominator}", _PRECEDENCE["div"]


# --- size bounds -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Size:
    """Bounds on what a subtree becomes in SymPy: its value when it is a constant (an exact Fraction, or an mpf for
    an irrational one), the digits of the largest coefficient once expanded, the degree (how often a value gets
    multiplied by itself), the number of terms once expanded, its generators (x, a reduction, a call, ...), the
    denominator its fractional exponents multiply to (sqrt(sqrt(x)) is x**(1/4)) and how deeply calls nest."""

    value: object
    digits: float
    degree: int
    terms: int
    atoms: frozenset
    polynomial: bool  # a polynomial in its atoms: then at most C(atoms + degree, degree) terms
    root: int = 1
    depth: int = 0


_LN10 = math.log(10)


def _log10(value) -> float:
    """log10 of the magnitude of a nonzero Fraction or mpf, without forming a huge float."""
    if isinstance(value, Fraction):
        return _int_log10(abs(value.numerator)) - _int_log10(value.denominator)
    import mpmath

    return float(mpmath.log10(abs(value)))


def _int_log10(n: int) -> float:
    bits = n.bit_length()
    if bits < 1000:
        return math.log10(n)
    return math.log10(n >> (bits - 64)) + (bits - 64) * math.log10(2)


def _digits(value) -> float:
    """Digits needed to write a constant: above and below the fraction bar (exact), or of its magnitude (irrational)."""
    if value == 0:
        return 0.0
    if isinstance(value, Fraction):
        return max(_int_log10(abs(value.numerator)), _int_log10(value.denominator))
    return abs(_log10(value))


def _mpf(value):
    """A Fraction or mpf as an mpf at the working precision (call inside mpmath.workdps)."""
    import mpmath

    if isinstance(value, Fraction):
        return mpmath.mpf(value.numerator) / value.denominator
    return mpmath.mpf(value)


def _exact_root(value: Fraction, n: int) -> Fraction | None:
    num, exact_num = _integer_nthroot(value.numerator, n)
    den, exact_den = _integer_nthroot(value.denominator, n)
    return Fraction(num, den) if exact_num and exact_den else None


def _integer_nthroot(y: int, n: int) -> tuple[int, bool]:
    """(the integer part of the n-th root of y >= 0, whether it is exact), as sympy.integer_nthroot gives it."""
    if y < 0 or n < 1:
        raise ValueError(f"the {n}-th root of {y} is not a real integer root")
    if y < 2 or n == 1:
        return y, True
    x = 1 << -(-y.bit_length() // n)  # 2**ceil(bits/n) > the root: Newton's steps fall from above to the root
    while True:
        smaller = ((n - 1) * x + y // x ** (n - 1)) // n
        if smaller >= x:
            return x, x**n == y
        x = smaller


class _Sizer:
    """Walks a parsed tree bottom up and refuses, with ExpressionError, a constant that is undefined (division by
    zero, log(0)), complex (sqrt(-1)) or too large, and an expression that would expand beyond the bounds above.
    Every size is estimated from logarithms before anything is computed, so the check itself stays fast."""

    def __init__(self, text: str):
        self.text = text
        self.root_lcm = 1  # the lcm of the denominators of all exponents
        self.degree = 1  # the highest degree of any subtree
        self.exps: dict[tuple, float] = {}  # argument of each exp() -> a bound on the numbers in it

    def check_all(self, tree: tuple) -> None:
        self.visit(tree)
        degree = self.root_lcm * self.degree * math.prod(self.exps.values())
        if degree > MAX_POLY_DEGREE:
            parts = [f"degree {self.degree}"]
            if self.root_lcm > 1:
                parts.append(f"fractional exponents over a common denominator of {self.root_lcm}")
            if self.exps:
                parts.append("the numbers inside exp()")
            self.fail(f"too large to derive: {', '.join(parts)} would make SymPy work with polynomials of degree "
                      f"about {degree:.0f} (at most {MAX_POLY_DEGREE})")

    def fail(self, problem: str):
        raise ExpressionError(self.text, problem)

    def where(self, tree: tuple) -> str:
        return excerpt(tree)

    def visit(self, tree: tuple) -> _Size:
        kind = tree[0]
        if kind == "num":
            return self.constant(tree, _fraction(tree[1]))
        if kind in NAMES:
            return _Size(None, 0.0, 1, 1, frozenset([kind]), True)
        if kind == "call":
            args = [self.visit(t) for t in tree[2:]]
            return self.maximum(tree, *args) if tree[1] == "max" else self.call(tree, tree[1], args[0])
        if kind == "neg":
            arg = self.visit(tree[1])
            return arg if arg.value is None else self.constant(tree, -arg.value, arg.root, arg.depth)
        a, b = self.visit(tree[1]), self.visit(tree[2])
        if kind == "pow":
            return self.power(tree, a, b.value)
        root, depth = math.lcm(a.root, b.root), max(a.depth, b.depth)
        if a.value is not None and b.value is not None:
            return self.constant(tree, self.arithmetic(tree, kind, a.value, b.value), root, depth)
        if kind == "div" and b.value is not None and b.value == 0:
            self.fail(f"division by zero in {self.where(tree)}")
        atoms = a.atoms | b.atoms
        if kind in ("add", "sub"):
            size = _Size(None, max(a.digits, b.digits) + math.log10(2), max(a.degree, b.degree), a.terms + b.terms,
                         atoms, a.polynomial and b.polynomial, root, depth)
        else:  # mul, div: products of terms; like terms add up, at most min(terms) of them into one coefficient
            polynomial = a.polynomial and (b.polynomial if kind == "mul" else b.value is not None)
            size = _Size(None, a.digits + b.digits + math.log10(min(a.terms, b.terms)), a.degree + b.degree,
                         a.terms * b.terms, atoms, polynomial, root, depth)
        return self.check(tree, size)

    def call(self, tree: tuple, name: str, arg: _Size) -> _Size:
        if name in REDUCTIONS:  # a statistic: one more symbol for what uses it
            return self.check(tree, _Size(None, arg.digits, max(1, arg.degree), 1, frozenset([tree]), True,
                                          arg.root, arg.depth))
        root, depth = arg.root * (2 if name == "sqrt" else 1), arg.depth + 1
        if depth > MAX_NESTING:
            self.fail(f"functions nest more than {MAX_NESTING} deep in {self.where(tree)}")
        if name == "exp":
            self.exps[tree[2]] = 10 ** min(arg.digits, MAX_DIGITS)
        if arg.value is not None:
            return self.constant(tree, self.function(tree, name, arg.value), root, depth)
        return self.check(tree, _Size(None, arg.digits, max(1, arg.degree), 1, frozenset([tree]), True, root, depth))

    def maximum(self, tree: tuple, a: _Size, b: _Size) -> _Size:
        root, depth = math.lcm(a.root, b.root), max(a.depth, b.depth) + 1
        if depth > MAX_NESTING:
            self.fail(f"functions nest more than {MAX_NESTING} deep in {self.where(tree)}")
        if a.value is not None and b.value is not None:
            return self.constant(tree, max(a.value, b.value), root, depth)
        return self.check(tree, _Size(None, max(a.digits, b.digits), max(1, a.degree, b.degree), 1,
                                      frozenset([tree]), True, root, depth))

    def note_root(self, tree: tuple, root: int) -> None:
        self.root_lcm = math.lcm(self.root_lcm, root)
        if self.root_lcm > MAX_ROOT:
            self.fail(f"the fractional exponents up to {self.where(tree)} multiply out to a common denominator of "
                      f"{self.root_lcm} (at most {MAX_ROOT}; sqrt counts as **(1/2), sqrt(sqrt(x)) as x**(1/4))")

    def check(self, tree: tuple, size: _Size) -> _Size:
        terms = size.terms
        if size.polynomial:
            terms = min(terms, math.comb(len(size.atoms) + size.degree, size.degree))
        self.degree = max(self.degree, size.degree)
        self.note_root(tree, size.root)
        if size.degree > MAX_DEGREE:
            self.fail(f"{self.where(tree)} has degree {size.degree} once powers are multiplied out "
                      f"(at most {MAX_DEGREE})")
        if terms > MAX_TERMS:
            self.fail(f"{self.where(tree)} would expand to more than {MAX_TERMS} terms")
        if size.digits > MAX_DIGITS:
            self.fail(f"{self.where(tree)} would hold numbers of about {size.digits:.0f} digits once expanded "
                      f"(at most {MAX_DIGITS})")
        return replace(size, terms=terms)

    def constant(self, tree: tuple, value, root: int = 1, depth: int = 0) -> _Size:
        if not isinstance(value, Fraction) and value != 0 and abs(_log10(value)) > MAX_DIGITS:  # an mpf
            self.fail(f"the constant {self.where(tree)} is out of range (its magnitude is 1e{_log10(value):+.0f}; "
                      f"constants must lie within 1e-{MAX_DIGITS}..1e{MAX_DIGITS})")
        digits = _digits(value)
        if digits > MAX_DIGITS:
            self.fail(f"the constant {self.where(tree)} has about {digits:.0f} digits (at most {MAX_DIGITS})")
        if isinstance(value, Fraction):
            root = 1  # folded to a rational: nothing of the roots is left
        self.note_root(tree, root)
        return _Size(value, digits, 0, 1, frozenset(), True, root, depth)

    def arithmetic(self, tree: tuple, kind: str, a, b):
        if kind == "div" and b == 0:
            self.fail(f"division by zero in {self.where(tree)}")
        op = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
              "div": lambda a, b: a / b}[kind]
        if isinstance(a, Fraction) and isinstance(b, Fraction):
            return op(a, b)  # exact
        import mpmath

        with mpmath.workdps(60):
            return op(_mpf(a), _mpf(b))

    def function(self, tree: tuple, name: str, value):
        if name == "abs":
            return abs(value)
        if name == "relu":
            return max(value, Fraction(0))
        if name == "sqrt":
            if value < 0:
                self.fail(f"the square root of a negative number is complex: {self.where(tree)}")
            return self.root(value, Fraction(1, 2))
        if name == "log":
            if value == 0:
                self.fail(f"log(0) is minus infinity: {self.where(tree)}")
            if value < 0:
                self.fail(f"the logarithm of a negative number is complex: {self.where(tree)}")
            if value == 1:
                return Fraction(0)
            import mpmath

            with mpmath.workdps(60):
                return mpmath.log(_mpf(value))
        # exp
        if value == 0:
            return Fraction(1)
        if abs(value) > MAX_DIGITS * _LN10:
            self.fail(f"exp() of a constant beyond +-{MAX_DIGITS * _LN10:.0f} is out of range: {self.where(tree)}")
        import mpmath

        with mpmath.workdps(60):
            return mpmath.exp(_mpf(value))

    def power(self, tree: tuple, base: _Size, exponent: Fraction) -> _Size:
        """base**exponent; the grammar has made the exponent a constant of at most MAX_EXPONENT in magnitude."""
        exponent = Fraction(exponent)
        root = base.root * exponent.denominator  # (x**(1/2))**(1/3) is x**(1/6)
        if base.value is None:
            n = math.ceil(abs(exponent))
            terms = math.comb(base.terms + n - 1, n) if n else 1
            degree = max(1, math.ceil(base.degree * abs(exponent)))
            size = _Size(None, n * (base.digits + math.log10(base.terms)), degree, terms, base.atoms,
                         base.polynomial and exponent.denominator == 1 and exponent >= 0, root, base.depth)
            return self.check(tree, size)
        value = base.value
        if value == 0:
            if exponent < 0:
                self.fail(f"division by zero: 0 to a negative power in {self.where(tree)}")
            return self.constant(tree, Fraction(1) if exponent == 0 else Fraction(0))
        if value < 0 and exponent.denominator != 1:
            self.fail(f"a negative number to a fractional power is complex: {self.where(tree)}")
        digits = _digits(value) * abs(exponent)
        if digits > MAX_DIGITS:  # estimated before the power is formed: (9**8)**8**... never gets computed
            self.fail(f"the constant {self.where(tree)} would have about {digits:.0f} digits (at most {MAX_DIGITS})")
        return self.constant(tree, self.root(value, exponent), root, base.depth)

    @staticmethod
    def root(value, exponent: Fraction):
        if isinstance(value, Fraction):
            inverted = exponent < 0
            whole = value ** abs(exponent.numerator)
            result = whole if exponent.denominator == 1 else _exact_root(whole, exponent.denominator)
            if result is not None:
                return 1 / result if inverted else result
        import mpmath

        with mpmath.workdps(60):
            return mpmath.power(_mpf(value), _mpf(exponent))
