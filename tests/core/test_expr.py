"""The whitelist parser for forward expressions: what it accepts, what it refuses, and that it never runs user text."""

from __future__ import annotations

import pytest
import sympy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symbn import cli
from symbn.core.expr import ExpressionError, parse

X, GAMMA, BETA, EPS = ("x",), ("gamma",), ("beta",), ("eps",)


def num(p, q=1):
    return ("num", sympy.Rational(p, q))


def mean(a):
    return ("call", "mean", a)


def sqrt(a):
    return ("call", "sqrt", a)


def refused(text) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        parse(text)
    return info.value


# --- accepted --------------------------------------------------------------------------------------------------


def test_rms_expression_tree():
    assert parse("gamma*x/sqrt(mean(x**2) + eps)") == (
        "div", ("mul", GAMMA, X), sqrt(("add", mean(("pow", X, num(2))), EPS)))


def test_centred_expression_with_eps_outside_sqrt():
    xc = ("sub", X, mean(X))
    expected = ("add",
                ("div", ("mul", GAMMA, xc), ("add", sqrt(mean(("pow", xc, num(2)))), EPS)),
                BETA)
    assert parse("gamma*(x - mean(x))/(sqrt(mean((x - mean(x))**2)) + eps) + beta") == expected


def test_unary_minus_and_plus():
    assert parse("-x") == ("neg", X)
    assert parse("+x") == X
    assert parse("-(x - mean(x))") == ("neg", ("sub", X, mean(X)))
    assert parse("x**-1") == ("pow", X, ("neg", num(1)))


@pytest.mark.parametrize("text, value", [
    ("1e-5", sympy.Rational(1, 100000)),
    ("0.1", sympy.Rational(1, 10)),  # the decimal the user wrote, not the nearest binary float
    ("2.5", sympy.Rational(5, 2)),
    ("1e3", sympy.Integer(1000)),
    ("3", sympy.Integer(3)),
    ("1_000", sympy.Integer(1000)),
])
def test_number_literals_are_exact_rationals(text, value):
    tree = parse(text)
    assert tree[0] == "num"
    assert isinstance(tree[1], sympy.Rational)
    assert tree[1] == value


def test_float_literal_inside_expression_is_exact():
    tree = parse("x/sqrt(mean(x**2) + 1e-5)")
    assert tree[2][2][2] == num(1, 100000)


@pytest.mark.parametrize("text", [
    "x", "eps*x", "exp(x) - log(abs(x) + 1)", "sum(x)/4", "x**(1/2)", "x**-8", "x**8",
    "  gamma*x/sqrt(mean(x**2) + eps)  ", "(((x)))",
])
def test_more_accepted(text):
    assert isinstance(parse(text), tuple)


def test_whitespace_does_not_change_the_tree():
    assert parse("gamma * x / sqrt( mean( x ** 2 ) + eps )") == parse("gamma*x/sqrt(mean(x**2)+eps)")


# --- refused ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, named", [
    ("x.real", ".real"),  # attribute access
    ("os", "'os'"),  # names outside the list
    ("y", "'y'"),
    ("x + y", "'y'"),
    ("__import__", "'__import__'"),
    ("print(x)", "'print'"),  # calls outside the list
    ("min(x)", "'min'"),
    ("max(x)", "max() takes exactly 2"),  # max takes two arguments, every other function one
    ("max(x, r, 1)", "max() takes exactly 2"),
    ("relu(x, r)", "relu() takes exactly one"),
    ("eval('1')", "'eval'"),
    ("__import__('os').system('touch /tmp/x')", "system"),
    ("lambda: x", "Lambda"),
    ("(lambda x: x)(x)", "Lambda"),
    ("x[0]", "Subscript"),
    ("x < 1", "Lt"),  # comparisons
    ("x == gamma", "Eq"),
    ("mean(x, axis=0)", "mean()"),  # keyword arguments
    ("sqrt(x=1)", "sqrt()"),
    ("mean(x, x)", "mean()"),  # two-argument calls
    ("sum()", "sum()"),
    ("mean(*x)", "mean()"),
    ("'abc'", "'abc'"),  # strings
    ("x + 'a'", "'a'"),
    ("b'x'", "b'x'"),
    ("1j", "1j"),  # complex numbers
    ("x*2j", "2j"),
    ("True", "True"),  # booleans
    ("x*False", "False"),
    ("None", "None"),
    ("x**100", "exponent"),  # huge exponents
    ("x**9", "exponent"),
    ("x**-9", "exponent"),
    ("x**x", "exponent"),  # non-constant exponents
    ("x**mean(x)", "exponent"),
    ("2**(2**3)", "exponent"),
    ("x // 2", "FloorDiv"),
    ("x % 2", "Mod"),
    ("x @ x", "MatMult"),
    ("~x", "Invert"),
    ("not x", "Not"),
    ("x and x", "And"),
    ("x if x else x", "IfExp"),
    ("(x := 1)", "NamedExpr"),
    ("[x]", "List"),
    ("10**13", "exponent"),
    ("10000000000000", "10000000000000"),  # literal larger than the allowed range
    ("1e400", "inf"),
])
def test_refused_with_message(text, named):
    err = refused(text)
    assert "Allowed" in str(err)
    # The allowed vocabulary is spelled out.
    for word in ("x", "gamma", "beta", "eps", "sqrt", "mean", "sum", "**"):
        assert word in str(err).split("Allowed:", 1)[1]
    # The problem (not just the echoed input) names the offending thing.
    assert named in err.problem, err.problem


def test_refused_messages_differ_by_problem():
    assert refused("os").problem != refused("print(x)").problem != refused("x**x").problem


def test_over_long_text():
    text = "x" + "+x" * 500
    assert len(text) > 1000
    err = refused(text)
    assert "Allowed" in str(err)
    assert "1000" in err.problem and str(len(text)) in err.problem
    # The echoed text is cut short rather than repeated whole.
    assert len(str(err)) < len(text)


def test_too_many_nodes():
    err = refused("+".join(["x"] * 150))
    assert "Allowed" in str(err) and "nodes" in err.problem


def test_deep_nesting_is_refused_not_crashing():
    for text in ("(" * 400 + "x" + ")" * 400, "-" * 990 + "x", "sqrt(" * 150 + "x" + ")" * 150):
        err = refused(text)
        assert "Allowed" in str(err)


@pytest.mark.parametrize("text", ["x +", "mean(x", "gamma*/x", "x x", "1 = x", ")", "import os", "x; y"])
def test_syntax_errors(text):
    err = refused(text)
    assert "Allowed" in str(err)
    assert "syntax" in err.problem


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text(text):
    err = refused(text)
    assert "Allowed" in str(err) and "empty" in err.problem


@pytest.mark.parametrize("value, type_name", [(None, "NoneType"), (3, "int"), (1.5, "float"), (b"x", "bytes"),
                                              (["x"], "list")])
def test_non_string_input(value, type_name):
    err = refused(value)
    assert "Allowed" in str(err)
    assert type_name in err.problem


def test_expression_error_is_a_value_error():
    assert issubclass(ExpressionError, ValueError)


# --- hostility -------------------------------------------------------------------------------------------------


def _hostile(tmp_path):
    target = tmp_path / "pwned"
    return target, f"__import__('os').system('touch {target}')"


def test_hostile_text_is_never_run(tmp_path):
    target, text = _hostile(tmp_path)
    with pytest.raises(ExpressionError) as info:
        parse(text)
    assert "Allowed" in str(info.value)
    assert not target.exists()


def test_hostile_text_through_the_cli(tmp_path, capsys):
    target, text = _hostile(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli.main(["derive", text, "--axes", "1", "--param-axes", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Allowed" in err
    assert not target.exists()


@pytest.mark.parametrize("text", [
    "[__import__('os').system('touch {t}') for x in [1]]",
    "(lambda: __import__('os').system('touch {t}'))()",
    "mean(__import__('os').system('touch {t}'))",
    "x + (__builtins__.__import__('os').system('touch {t}'))",
])
def test_other_hostile_shapes(tmp_path, text):
    target = tmp_path / "pwned"
    with pytest.raises(ExpressionError):
        parse(text.format(t=target))
    assert not target.exists()


# --- properties ------------------------------------------------------------------------------------------------

_KINDS = {"x", "gamma", "beta", "eps", "r", "num", "add", "sub", "mul", "div", "pow", "neg", "call"}


def _well_formed(tree) -> bool:
    """Every node is one of the grammar's kinds, calls name an allowed function, numbers are rationals."""
    kind = tree[0]
    if kind not in _KINDS:
        return False
    if kind == "num":
        return len(tree) == 2 and isinstance(tree[1], sympy.Rational)
    if kind == "call":
        arity = 2 if tree[1] == "max" else 1
        return (tree[1] in ("sqrt", "exp", "log", "abs", "mean", "sum", "relu", "max") and len(tree) == 2 + arity
                and all(_well_formed(t) for t in tree[2:]))
    return all(_well_formed(t) for t in tree[1:])


def _parse_or_refuse(text):
    try:
        tree = parse(text)
    except ExpressionError as err:
        assert "Allowed" in str(err)
        return
    assert _well_formed(tree), tree


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_arbitrary_text_only_raises_expression_error(text):
    _parse_or_refuse(text)


_TOKENS = ["x", "gamma", "beta", "eps", "r", "sqrt", "exp", "log", "abs", "mean", "sum", "relu", "max", "(", ")", "+",
           "-", "*", "/",
           "**", "0", "1", "2", "9", "0.5", "1e-5", "1e400", "10000000000000", ".", " ", ",", "y", "os", "j", "_"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_TOKENS), max_size=40).map("".join))
def test_token_soup_only_raises_expression_error(text):
    _parse_or_refuse(text)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="x+-*/()2. ", min_size=995, max_size=1100))
def test_long_text_only_raises_expression_error(text):
    _parse_or_refuse(text)


# --- known bug -------------------------------------------------------------------------------------------------


def test_surrogate_is_refused_with_expression_error():
    refused("x\udcff")


def test_surrogate_through_the_cli_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["derive", "x\udcff", "--axes", "1", "--param-axes", "1"])
    assert info.value.code == 2
