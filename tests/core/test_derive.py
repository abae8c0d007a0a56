"""The engine's output: the compact forms the textbooks give, found by the simplifier for every preset and layout."""

import os
import subprocess
import sys

import pytest
import sympy

from symbn import preset
from symbn.codegen import catalogue as catalog
from symbn import derive
from symbn.core.derive import DBETA, DGAMMA, DX
from symbn.core.graph import ELEM, REDUCE
from symbn.core.symbols import DY, M, MOMENTUM, psum, rsum

PRESETS = catalog.preset_specs()
CENTRING = [s for s in PRESETS if s.preset != "rms"]


def by_name(d, name):
    """A symbol of the derivation, looked up by name so the test does not depend on its assumptions."""
    atoms = set()
    for program in (d.coordinates, d.reductions, d.compact, d.eval_mode, d.running, d.staged):
        for s, e in program:
            atoms |= {s} | e.free_symbols
    for n in d.graph.nodes:
        atoms |= {n.symbol} | n.expr.free_symbols
    (found,) = [a for a in atoms if getattr(a, "name", None) == name]
    return found


def expand_named(d, e):
    """Replace named reductions (sum_dy, ...) by the sums they stand for."""
    return e.xreplace({s: v for s, v in d.reductions})


def textbook_dx(d, ddof=0):
    """dx = gamma*istd/M*(M*dy - sum(dy) - xhat*sum(dy*xhat)), with gamma inside the sums when it varies there
    and M/(M-1) on the last term for the unbiased variance (cs231n, Ioffe & Szegedy 2015, eq. in section 3)."""
    gamma, istd, xhat = by_name(d, "gamma"), by_name(d, "istd"), by_name(d, "xhat")
    factor = M / (M - 1) if ddof else 1
    if d.spec.param_varies:
        g = DY * gamma
        return istd / M * (M * g - rsum(g) - factor * xhat * rsum(g * xhat))
    return gamma * istd / M * (M * DY - rsum(DY) - factor * xhat * rsum(DY * xhat))


@pytest.mark.parametrize("spec", CENTRING, ids=lambda s: s.name)
def test_compact_dx_is_the_textbook_form(spec):
    d = derive(spec)
    assert sympy.simplify(expand_named(d, d.dx) - textbook_dx(d)) == 0
    # Exactly two named reductions: sum(dy) and sum(dy*xhat) (gamma inside them when it varies in the set).
    sums = {str(v) for _, v in d.reductions}
    inner = "dy*gamma" if spec.param_varies else "dy"
    assert sums == {f"sum({inner})", f"sum({inner}*xhat)"}
    assert str(d.output(d.compact, DGAMMA)) == "psum(dy*xhat)"
    assert str(d.output(d.compact, DBETA)) == "psum(dy)"


@pytest.mark.parametrize("name", ["batch", "layer", "group", "instance"])
def test_unbiased_variance_adds_m_over_m_minus_1(name):
    d = derive(preset(name, "NCHW", groups=4 if name == "group" else None, ddof=1))
    assert sympy.simplify(expand_named(d, d.dx) - textbook_dx(d, ddof=1)) == 0


@pytest.mark.parametrize("layout", ["NC", "NCHW", "NHWC"])
def test_rms_compact_dx(layout):
    d = derive(preset("rms", layout))
    irms, xhat, gamma = by_name(d, "irms"), by_name(d, "xhat"), by_name(d, "gamma")
    want = irms / M * (M * DY * gamma - xhat * rsum(DY * gamma * xhat))
    assert sympy.simplify(expand_named(d, d.dx) - want) == 0
    assert [s.name for s, _ in d.compact] == ["dx", "dgamma"]  # rms has no beta by default


def test_batch_norm_staged_form_has_the_classic_nine_steps():
    d = derive(preset("batch", "NCHW"))
    assert [n.op for n in d.graph.nodes] == [
        "mean", "subtract", "power", "mean", "sqrt", "reciprocal", "multiply", "multiply", "add"]
    assert [n.name for n in d.graph.nodes] == ["mu", "xc", "sq", "var", "std", "istd", "xhat", "scaled", "y"]
    assert [n.kind for n in d.graph.nodes].count(REDUCE) == 2
    assert len(d.steps) == 9
    # one adjoint per node (dy is given), then dx, dgamma, dbeta
    assert [s.name for s, _ in d.staged] == [
        "dscaled", "dxhat", "distd", "dstd", "dvar", "dsq", "dxc", "dmu", "dx", "dgamma", "dbeta"]
    staged = dict(d.staged)
    # The statistic istd receives a reduction from the elementwise node xhat = istd*xc (rule 1).
    assert staged[by_name(d, "distd")].func is rsum
    # The reduction var = sum(sq)/M hands back dvar/M to each element (rule 2).
    assert staged[by_name(d, "dsq")] == by_name(d, "dvar") / M


RUNNING_SPECS = [s for s in PRESETS if s.tracks_running]


def test_only_batch_norm_keeps_running_statistics():
    assert {s.preset for s in RUNNING_SPECS} == {"batch"}
    assert {s.preset for s in PRESETS if not s.tracks_running} == {"layer", "instance", "group", "rms"}


@pytest.mark.parametrize("spec", RUNNING_SPECS, ids=lambda s: s.name)
def test_eval_mode_backward_holds_statistics_constant(spec):
    d = derive(spec)
    scale = by_name(d, "irms" if spec.preset == "rms" else "istd")
    gamma = by_name(d, "gamma")
    assert sympy.simplify(d.output(d.eval_mode, DX) - DY * gamma * scale) == 0
    assert len(d.running) == len(d.graph.reductions)


@pytest.mark.parametrize("spec", [s for s in PRESETS if not s.tracks_running], ids=lambda s: s.name)
def test_per_sample_statistics_have_no_eval_mode_or_running_updates(spec):
    """Eval mode is the training computation where the statistics do not span the batch axis: nothing of its own."""
    d = derive(spec)
    assert d.eval_mode == () and d.running == ()
    assert d.compact and d.reductions  # the training backward is all there is


def test_a_custom_spec_reducing_the_batch_axis_keeps_running_statistics():
    d = derive(preset("rms", "NC").with_options(preset=None, layout=None, reduce_axes=(0,), param_axes=(1,)))
    assert d.spec.tracks_running and [s.name for s, _ in d.running] == ["running_ms"]
    assert [s.name for s, _ in d.eval_mode] == ["dx", "dgamma"]


def test_running_statistics_conventions():
    d = derive(preset("batch", "NCHW"))
    torch_style = dict(d.running)
    mu, var, r_mu, r_var = (by_name(d, n) for n in ("mu", "var", "running_mu", "running_var"))
    assert sympy.simplify(torch_style[r_mu] - ((1 - MOMENTUM) * r_mu + MOMENTUM * mu)) == 0
    assert sympy.simplify(torch_style[r_var] - ((1 - MOMENTUM) * r_var + MOMENTUM * var * M / (M - 1))) == 0
    keras_style = dict(derive(preset("batch", "NCHW", running="keras", momentum=0.99)).running)
    assert sympy.simplify(keras_style[r_var] - (MOMENTUM * r_var + (1 - MOMENTUM) * var)) == 0
    unbiased = dict(derive(preset("batch", "NCHW", ddof=1)).running)  # already unbiased: no second correction
    assert sympy.simplify(unbiased[r_var] - ((1 - MOMENTUM) * r_var + MOMENTUM * var)) == 0


def test_center_and_scale_off_remove_beta_and_gamma():
    d = derive(preset("batch", "NC", center=False, scale=False))
    assert [s.name for s, _ in d.compact] == ["dx"]
    assert "gamma" not in str(d.dx) and "beta" not in str(d.graph.output.expr)
    d = derive(preset("layer", "NC", center=False))
    assert [s.name for s, _ in d.compact] == ["dx", "dgamma"]


def test_custom_expressions_derive():
    custom = catalog.custom_specs()
    assert not derive(custom["transformer_ln"]).primal
    assert derive(custom["softmax"]).primal  # no affine normalized coordinate exists
    d = derive(custom["mad"])
    assert {str(v) for _, v in d.reductions} >= {"sum(dy)", "sum(dy*xhat)", "sum(sign(xhat))"}


def test_derivation_carries_latex_and_op_counts():
    d = derive(preset("batch", "NCHW"))
    tex = d.latex
    for key in ("mu", "var", "istd", "xhat", "y", "dxhat", "dx", "dgamma", "dbeta", "sum_dy", "running_var"):
        assert key in tex and tex[key]
    assert r"\gamma" in tex["dx"] and r"\hat{x}" in tex["dx"]
    counts = d.op_counts
    assert counts["forward"]["reductions"] == 2 and counts["backward"]["reductions"] == 2
    assert counts["backward"]["param_reductions"] == 2
    assert counts["forward"]["per_element"] > 0 and counts["backward"]["per_element"] > 0


def test_levels_of_nodes():
    d = derive(preset("batch", "NCHW"))
    kinds = {n.name: n.kind for n in d.graph.nodes}
    assert kinds["xc"] == ELEM and kinds["std"] == "stat" and kinds["mu"] == REDUCE


def test_derivations_are_deterministic_across_hash_seeds():
    script = ("import symbn, symbn.core.describe as r; "
              "print(r.derivation_text(symbn.derive(symbn.preset('group', 'NCHW', groups=4))));"
              "print(r.derivation_text(symbn.derive(symbn.make('gamma*(x - mean(x))/(mean(abs(x - mean(x))) + eps) + beta',"
              " axes=(0,), param_axes=(1,)))))")
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outputs.add(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                   check=True).stdout)
    assert len(outputs) == 1


def test_group_count_does_not_change_the_derivation():
    small, large = derive(preset("group", "NCHW", groups=2)), derive(preset("group", "NCHW", groups=32))
    assert (small.staged, small.compact, small.reductions) == (large.staged, large.compact, large.reductions)


def test_psum_appears_only_in_parameter_gradients():
    for spec in PRESETS:
        d = derive(spec)
        assert not d.dx.atoms(psum)
        assert all(e.func is psum for s, e in d.compact if s != DX)
