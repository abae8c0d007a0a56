"""Proof by brute force: both backward forms equal SymPy's own derivative of the fully expanded forward."""

import pytest
import sympy

from symbn import SpecError, make, preset
from symbn.codegen import catalogue as catalog
from symbn import derive
from symbn.core.derive import DX
from symbn.core.symbols import BETA, DY, EPS, GAMMA, X
from symbn.core.verify import Interpreter, ProofError, index_sets, proof_shape, prove

PRESETS = catalog.preset_specs()
CUSTOM = catalog.custom_specs()


@pytest.mark.parametrize("set_size", [2, 3, 4])
@pytest.mark.parametrize("spec", PRESETS, ids=lambda s: s.name)
def test_presets_are_proven(spec, set_size):
    proof = prove(derive(spec), set_size, seed=set_size)
    assert proof.set_size == set_size
    outputs = {"dx"} | {f"d{leaf}" for leaf in ("gamma", "beta") if getattr(spec, {"gamma": "scale", "beta": "center"}[leaf])}
    assert {c.split()[1] for c in proof.checked} == outputs
    assert {c.split()[0] for c in proof.checked} == {"staged", "compact"}


@pytest.mark.parametrize("set_size", [2, 3, 4])
@pytest.mark.parametrize("key", ["transformer_ln", "rms_axes02", "mad"])
def test_custom_expressions_are_proven(key, set_size):
    prove(derive(CUSTOM[key]), set_size, seed=10 + set_size)


def test_primal_custom_expression_is_proven():
    # exp() makes exact simplification slow: one size only.
    prove(derive(CUSTOM["softmax"]), 2, seed=3)


@pytest.mark.parametrize("options", [dict(ddof=1), dict(center=False), dict(scale=False),
                                     dict(center=False, scale=False), dict(running="keras", momentum=0.99)])
def test_options_are_proven(options):
    for size in (2, 3):
        prove(derive(preset("batch", "NHWC", **options)), size, seed=size)


def test_proof_shapes_cover_groups_and_parameter_axes():
    group = preset("group", "NCHW", groups=4)
    shape = proof_shape(group, 4)
    assert shape[1] == 4 * 2  # two channels per group, so gamma varies inside a set
    stat_ids, param_ids = index_sets(group, shape)
    assert len(set(stat_ids)) == shape[0] * 4  # one statistic per sample and group
    for s in set(stat_ids):
        assert len({p for p, t in zip(param_ids, stat_ids) if t == s}) == 2
    batch = preset("batch", "NCHW")
    stat_ids, param_ids = index_sets(batch, proof_shape(batch, 4))
    assert list(stat_ids) == list(param_ids)  # per-channel statistics and parameters coincide


def _tampered(d, program_name, symbol, change):
    program = tuple((s, change(e) if s == symbol else e) for s, e in getattr(d, program_name))
    return type(d)(**{**d.__dict__, program_name: program})


@pytest.mark.parametrize("change", [
    lambda e: e + sympy.Rational(1, 10**6) * DY,  # a tiny wrong term is still caught: the check is exact
    lambda e: e.subs(sympy.Symbol("M", positive=True, integer=True), 2),
    lambda e: sympy.Integer(0),
])
def test_a_wrong_compact_dx_fails_the_proof(change):
    d = derive(preset("batch", "NCHW"))
    with pytest.raises(ProofError):
        prove(_tampered(d, "compact", DX, change), 3)


def test_a_wrong_staged_step_fails_the_proof():
    d = derive(preset("layer", "NC"))
    dvar = next(s for s, _ in d.staged if s.name == "dvar")
    with pytest.raises(ProofError):
        prove(_tampered(d, "staged", dvar, lambda e: 2 * e), 2)


def test_pulling_a_varying_gamma_out_of_a_sum_fails_the_proof():
    # Layer norm's gamma varies inside a reduction set; treating it as constant there (as batch norm may) is wrong.
    d = derive(preset("layer", "NC"))
    (named,) = [s for s, _ in d.reductions if "xhat" in s.name]
    with pytest.raises(ProofError):
        prove(_tampered(d, "reductions", named, lambda e: e.func(e.args[0].subs(GAMMA, 1)) * GAMMA), 3)


@pytest.mark.parametrize("spec", PRESETS + [CUSTOM["transformer_ln"], CUSTOM["mad"]], ids=lambda s: s.name)
def test_staged_and_compact_forms_agree(spec):
    """Run both programs on the same random tensor and compare dx, dgamma, dbeta element by element."""
    d = derive(spec)
    shape = proof_shape(spec, 3)
    stat_ids, param_ids = index_sets(spec, shape)
    values = {X: [sympy.Rational(k * 7 % 11 - 5, 3) for k in range(len(stat_ids))],
              DY: [sympy.Rational(k * 5 % 13 - 6, 4) for k in range(len(stat_ids))],
              GAMMA: [sympy.Rational(p + 2, 3) for p in param_ids], BETA: [sympy.Rational(p - 1) for p in param_ids]}
    results = []
    for programs in ((d.staged,), (d.coordinates, d.reductions, d.compact)):
        run = Interpreter(stat_ids, param_ids, {EPS: sympy.Rational(1, 100)})
        for symbol, vals in values.items():
            run.bind(symbol, vals)
        run.run(tuple((n.symbol, n.expr) for n in d.graph.nodes))
        for program in programs:
            run.run(program)
        results.append({s.name: run.env[s] for s, _ in d.compact})
    staged, compact = results
    for name in compact:
        for a, b in zip(staged[name], compact[name]):
            assert sympy.simplify(sympy.radsimp(a - b)) == 0, name


def test_a_preset_over_explicit_axes_is_proven():
    """Batch norm over axes (0, 2) of a rank-3 input with parameters over axis 1 (no layout needed)."""
    spec = make("batch", axes=(0, 2), param_axes=(1,))
    assert spec.preset == "batch" and spec.name == "batch_r02_p1_nd3"
    for size in (2, 3, 4):
        prove(derive(spec), size, seed=size)
    with pytest.raises(SpecError, match="layout"):
        make("batch", layout="NCL", axes=(0, 2), param_axes=(1,))
