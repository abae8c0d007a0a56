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
from symbn.core.second import GDY, GDZ, GGR, GX, derive_second, prove_second, prove_second_all
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


# --- second order ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_preset_with_every_epilogue_has_a_proven_double_backward(spec):
    modes = ("train", "eval") if spec.tracks_running else ("train",)
    for mode in modes:
        for proof in prove_second_all(derive_second(spec, mode), sizes=(2, 3)):
            assert {"compact gdy", "compact gx", "gbeta = 0"} <= set(proof.checked)
            assert ("gr = 0" in proof.checked) == (spec.epilogue == "add_relu")


def test_a_max_epilogue_over_custom_axes_has_a_proven_double_backward():
    so = derive_second(make(MAX, axes=(0,), param_axes=(1,)))
    assert GGR in so.upstream
    for proof in prove_second_all(so, sizes=(2, 3)):
        assert {"staged gdy", "compact gdy", "compact ggamma", "gr = 0"} <= set(proof.checked)


def test_the_double_backward_joins_the_normalization_s_by_the_masks():
    so = derive_second(preset("batch", "NCHW", epilogue="add_relu"))
    mask = sympy.Heaviside(so.derivation.graph.output.symbol + R)
    assert so.output(so.compact, GDY) == mask * GDZ + mask * GGR
    plain = derive_second(preset("batch", "NCHW"))
    # the normalization's part is the plain double backward with dz for dy
    for symbol, mine in ((GDZ, so.output(so.compact, GDZ)), (GX, so.gx)):
        theirs = plain.output(plain.compact, GDY if symbol == GDZ else symbol)
        assert sympy.simplify(mine.xreplace(dict(so.reductions))
                              - theirs.xreplace(dict(plain.reductions)).xreplace({DY: DZ})) == 0


def _joined(so, change):
    return dataclasses.replace(so, compact=tuple((s, change(e) if s == GDY else e) for s, e in so.compact))


@pytest.mark.parametrize("change", [
    lambda e: e.replace(sympy.Heaviside, lambda *_: sympy.Integer(1)),  # the masks forgotten
    lambda e: e.xreplace({GGR: 0}),  # the residual's upstream gradient dropped
    lambda e: e.xreplace({h: sympy.Heaviside(-h.args[0]) for h in e.atoms(sympy.Heaviside)}),  # masks reversed
    lambda e: e + sympy.Rational(1, 10**6) * GGR * DY,  # a tiny wrong term: the check is exact
])
def test_a_wrong_epilogue_double_backward_fails_the_proof(change):
    so = derive_second(preset("batch", "NC", epilogue="add_relu"))
    prove_second(so, 4)
    with pytest.raises(ProofError):
        prove_second(_joined(so, change), 4)


def test_an_epilogue_with_second_derivatives_is_refused_not_guessed():
    curved = make("relu(gamma*(x - mean(x))/sqrt(mean((x - mean(x))**2) + eps) + beta)*r", axes=(0,),
                  param_axes=(1,))
    with pytest.raises(ValueError, match=r"what: the epilogue of .* has second derivatives \(d2/dzdr"):
        derive_second(curved)


def test_eval_mode_backward_runs_on_the_masked_gradient():
    d = derive(preset("batch", "NC", epilogue="relu"))
    assert DZ in d.output(d.eval_mode, DX).free_symbols and DY not in d.output(d.eval_mode, DX).free_symbols
