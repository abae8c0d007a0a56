"""Epilogues: relu(), max() and a residual r after the normalization, derived by the chain rule and proved."""

import dataclasses

import pytest
import sympy

from symbn import derive, make, preset
from symbn.core import expr
from symbn.core.derive import DR, DX
from symbn.core.epilogue import PRESET_EPILOGUES, split
from symbn.core.epilogue import Z as Z_LEAF
from symbn.core.expr import ExpressionError
from symbn.core.second import derive_second
from symbn.core.spec import PRESETS, SpecError
from symbn.core.symbols import DY, DZ, M, R, Z, rsum
from symbn.core.verify import ProofError, prove, prove_all


LAYOUT = {"batch": "NCHW", "layer": "NC", "instance": "NCHW", "group": "NHWC", "rms": "NC"}
SPECS = [preset(name, LAYOUT[name], groups=2 if PRESETS[name].grouped else None, epilogue=e)
         for name in PRESETS for e in PRESET_EPILOGUES]
MAX = "max(gamma*(x - mean(x))/sqrt(mean((x - mean(x))**2) + eps) + beta, 2*r) - r"


def by_name(d, name):
    """A symbol of the derivation's graph or compact backward, by name (its assumptions aside)."""
    atoms = {n.symbol for n in d.graph.nodes} | {a for _, e in d.coordinates + d.compact for a in e.free_symbols}
    (found,) = [a for a in atoms if a.name == name]
    return found


# --- grammar and splitting -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["relu(x - mean(x)) + r", "max(x - mean(x), 2*r)", "-max(-(x - mean(x)), -r)",
                                  "relu(relu(x/sqrt(mean(x**2) + eps)) + 1/2*r)"])
def test_epilogue_expressions_round_trip_through_their_canonical_text(text):
    tree = expr.parse_exact(text)
    assert expr.parse_exact(expr.canonical(tree)) == tree


@pytest.mark.parametrize("text, problem", [
    ("max(x)", "max() takes exactly 2 positional arguments"),
    ("relu(x, r)", "relu() takes exactly one positional argument"),
    ("min(x, r)", "-max(-a, -b)"),
    ("x - mean(relu(x))", "may not appear inside mean()"),
    ("x - mean(x) + sum(r)", "may not appear inside sum()"),
    ("max(x, x - mean(x))", "uses x in more than one operand"),
    ("relu(x - mean(x)) + gamma", "uses gamma or beta"),
    ("relu(x - mean(x)) + mean(x)", "uses x in more than one operand"),
    ("relu(x - mean(x) + eps*r)", "uses eps"),
])
def test_misplaced_epilogues_are_refused_with_what_to_write(text, problem):
    with pytest.raises(ExpressionError) as err:
        split(expr.parse_exact(text), text)
    assert problem in str(err.value)


def test_the_split_leaves_the_normalization_whole_and_the_epilogue_around_it():
    text = "relu(gamma*x/sqrt(mean(x**2) + eps) + r)"
    core, tail = split(expr.parse_exact(text), text)
    assert expr.canonical(core) == "gamma*x/sqrt(mean(x**2) + eps)"
    assert tail == ("call", "relu", ("add", Z_LEAF, ("r",)))
    plain = expr.parse_exact("x - mean(x)")
    assert split(plain, "x - mean(x)") == (plain, None)


# --- specs -----------------------------------------------------------------------------------------------------


def test_preset_epilogues_name_the_spec_and_write_the_expression():
    spec = preset("batch", "NCHW", epilogue="add_relu")
    assert spec.name == "batch_nchw_add_relu"
    assert spec.expression == "relu(gamma*((x - mean(x))/sqrt(mean((x - mean(x))**2) + eps)) + beta + r)"
    assert spec.has_epilogue and not preset("batch", "NCHW").has_epilogue
    explicit = make("batch", axes=(0, 2), param_axes=(1,), epilogue="relu")
    assert explicit.name == "batch_r02_p1_nd3_relu" and explicit.expression.startswith("relu(")
    assert preset("batch", "NCHW").digest() != preset("batch", "NCHW", epilogue="relu").digest()


@pytest.mark.parametrize("make_spec, field", [
    (lambda: preset("batch", epilogue="gelu"), "epilogue"),
    (lambda: preset("batch", epilogue=1), "epilogue"),
    (lambda: make("x - mean(x)", axes=(0,), param_axes=(), epilogue="relu"), "epilogue"),
    (lambda: preset("batch", "NC").with_options(epilogue="relu"), "preset"),
])
def test_bad_epilogue_options_name_the_field(make_spec, field):
    with pytest.raises(SpecError) as err:
        make_spec()
    assert err.value.field == field


# --- derivation and proof --------------------------------------------------------------------------------------


def test_batch_norm_add_relu_is_the_textbook_backward_on_the_masked_gradient():
    d = derive(preset("batch", "NCHW", epilogue="add_relu"))
    z = d.graph.output.symbol
    mask = sympy.Heaviside(z + R)
    assert dict(d.epilogue.backward) == {DZ: DY * mask, DR: DY * mask}
    gamma, istd, xhat = by_name(d, "gamma"), by_name(d, "istd"), by_name(d, "xhat")
    textbook = gamma * istd / M * (M * DZ - rsum(DZ) - xhat * rsum(DZ * xhat))
    assert sympy.simplify(d.dx.xreplace(dict(d.reductions)) - textbook) == 0
    assert d.epilogue.forward.xreplace({Z: 1, R: -3}) == 0 and d.epilogue.forward.xreplace({Z: 1, R: 2}) == 3


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_preset_with_every_epilogue_is_proven(spec):
    for proof in prove_all(derive(spec), sizes=(2, 3)):
        assert "compact dx" in proof.checked and ("compact dr" in proof.checked) == (spec.epilogue == "add_relu")


def test_a_max_epilogue_over_custom_axes_is_proven():
    spec = make(MAX, axes=(0,), param_axes=(1,))
    d = derive(spec)
    assert len(d.epilogue.kinks) == 2  # z - 2r for dz, 2r - z for dr
    for proof in prove_all(d, sizes=(2, 3, 4)):
        assert {"staged dr", "compact dr"} <= set(proof.checked)


def _with_backward(d, change):
    epilogue = dataclasses.replace(d.epilogue, backward=tuple((s, change(s, e)) for s, e in d.epilogue.backward))
    return dataclasses.replace(d, epilogue=epilogue)


@pytest.mark.parametrize("change", [
    lambda s, e: DY if s.name == "dz" else e,  # the mask forgotten on the normalization's gradient
    lambda s, e: DY if s.name == "dr" else e,  # ... on the residual's
    lambda s, e: e.xreplace({h: sympy.Heaviside(-h.args[0]) for h in e.atoms(sympy.Heaviside)}),  # the mask the wrong way round
])
def test_a_wrong_epilogue_gradient_fails_the_proof(change):
    # The proof points hold elements on both sides of the kink, so no mask error hides behind an all-ones mask.
    d = derive(preset("batch", "NCHW", epilogue="add_relu"))
    prove(d, 4)
    with pytest.raises(ProofError):
        prove(_with_backward(d, change), 4)


def test_the_second_order_of_an_epilogue_is_refused_not_guessed():
    with pytest.raises(ValueError, match="epilogue"):
        derive_second(preset("batch", "NC", epilogue="relu"))


def test_eval_mode_backward_runs_on_the_masked_gradient():
    d = derive(preset("batch", "NC", epilogue="relu"))
    assert DZ in d.output(d.eval_mode, DX).free_symbols and DY not in d.output(d.eval_mode, DX).free_symbols
