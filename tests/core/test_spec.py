"""Specs: preset axes per layout, validation errors that name the field and the value, shapes, set sizes, names,
and the graph errors for expressions that parse but are not normalizations."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from symbn.core import spec as specs
from symbn.core.derive import derive
from symbn.core.expr import ExpressionError
from symbn.core.graph import GraphError
from symbn.core.spec import Spec, SpecError

RMS = "x/sqrt(mean(x**2) + eps)"
CENTRED = "gamma*(x - mean(x))/sqrt(mean((x - mean(x))**2) + eps) + beta"
LAYOUT_NAMES = ("NC", "NCL", "NCHW", "NHWC", "NCDHW")


# --- presets ---------------------------------------------------------------------------------------------------


def roles(layout: str):
    """Batch, channel and spatial axes read off the layout letters: N is the batch, C the channel, the rest space."""
    return layout.index("N"), layout.index("C"), tuple(i for i, c in enumerate(layout) if c not in "NC")


def expected(preset: str, layout: str):
    """Reduced and parameter axes as PyTorch defines each normalization."""
    n, c, spatial = roles(layout)
    if preset == "batch":  # BatchNorm: statistics over batch and space, one gamma/beta per channel
        return tuple(sorted((n, *spatial))), (c,)
    if preset in ("layer", "rms"):  # LayerNorm/RMSNorm over (C, *spatial): affine over the normalized shape
        axes = tuple(sorted((c, *spatial)))
        return axes, axes
    if preset == "instance":  # InstanceNorm: statistics over space per sample and channel, params per channel
        return tuple(sorted(spatial)), (c,)
    if preset == "group":  # GroupNorm: channels split into G groups, each with its space; params per channel
        return tuple(sorted((c, *spatial))), (c,)
    raise AssertionError(preset)


CASES = [(p, lay) for p in ("batch", "layer", "instance", "group", "rms") for lay in LAYOUT_NAMES
         if not (p == "instance" and lay == "NC")]


@pytest.mark.parametrize("preset, layout", CASES)
def test_preset_axes_follow_the_definitions(preset, layout):
    kwargs = {"groups": 2} if preset == "group" else {}
    s = specs.preset(preset, layout, **kwargs)
    reduce_axes, param_axes = expected(preset, layout)
    assert s.ndim == len(layout)
    assert s.reduce_axes == reduce_axes
    assert s.param_axes == param_axes
    assert s.layout == layout and s.preset == preset
    if preset == "group":
        assert s.groups == 2 and s.channel_axis == layout.index("C")
    else:
        assert s.groups is None


def test_preset_axes_spot_checks():
    # Written out by hand for the channels-last layout, where the channel is the last axis.
    assert specs.preset("batch", "NHWC").reduce_axes == (0, 1, 2)
    assert specs.preset("batch", "NHWC").param_axes == (3,)
    assert specs.preset("instance", "NHWC").reduce_axes == (1, 2)
    assert specs.preset("instance", "NHWC").param_axes == (3,)
    assert specs.preset("layer", "NHWC").param_axes == (1, 2, 3)
    assert specs.preset("group", "NHWC", groups=4).channel_axis == 3
    assert specs.preset("batch", "NC").reduce_axes == (0,)
    assert specs.preset("layer", "NC").reduce_axes == (1,)
    assert specs.preset("batch", "NCDHW").reduce_axes == (0, 2, 3, 4)


@pytest.mark.parametrize("preset", ["batch", "layer", "instance", "group"])
def test_centred_presets_have_gamma_and_beta(preset):
    s = specs.preset(preset, "NCHW", **({"groups": 2} if preset == "group" else {}))
    assert s.center and s.scale
    assert "mean(x)" in s.expression


def test_rms_preset_has_no_centring():
    s = specs.preset("rms", "NCHW")
    assert s.scale and not s.center
    assert "mean(x)" not in s.expression.replace(" ", "")


def test_instance_norm_on_nc_is_refused():
    with pytest.raises(SpecError) as info:
        specs.preset("instance", "NC")
    assert info.value.field == "layout"
    assert "'NC'" in str(info.value)


# --- validation ------------------------------------------------------------------------------------------------


def refused(fn, field, value_text=None) -> SpecError:
    with pytest.raises(SpecError) as info:
        fn()
    err = info.value
    assert err.field == field, str(err)
    assert str(err).startswith(f"{field}:")
    if value_text is not None:
        assert value_text in str(err), str(err)
    return err


def custom(**kw):
    base = dict(ndim=3, axes=(1, 2), param_axes=())
    base.update(kw)
    expression = base.pop("expression", RMS)
    return lambda: specs.custom(expression, **base)


@pytest.mark.parametrize("axes", [(3,), (-4,), (0, 7)])
def test_reduce_axes_out_of_range(axes):
    refused(custom(axes=axes), "reduce_axes", repr(axes))


def test_param_axes_out_of_range():
    refused(custom(param_axes=(5,)), "param_axes", "(5,)")


@pytest.mark.parametrize("axes", [(1, 1), (2, -1)])
def test_repeated_axes(axes):
    err = refused(custom(axes=axes), "reduce_axes", repr(axes))
    assert "repeat" in str(err)


def test_non_integer_axes():
    refused(custom(axes=(1.0,)), "reduce_axes", "1.0")
    refused(custom(axes=(True,)), "reduce_axes", "True")


def test_empty_reduce_axes():
    refused(custom(axes=()), "reduce_axes", "()")


@pytest.mark.parametrize("ndim", [0, 9, True])
def test_bad_ndim(ndim):
    refused(custom(ndim=ndim), "ndim", repr(ndim))


def test_parameter_axis_that_is_also_reduced():
    err = refused(custom(expression="gamma*" + RMS, axes=(1, 2), param_axes=(1,)), "param_axes", "(1,)")
    assert "1" in str(err)
    refused(custom(expression="gamma*" + RMS, axes=(0, 1, 2), param_axes=(0, 2)), "param_axes", "(0, 2)")
    # With groups, only the grouped channel axis may be both: a spatial parameter axis is still refused.
    refused(custom(expression="gamma*" + RMS, axes=(1, 2), param_axes=(2,), groups=2, channel_axis=1),
            "param_axes", "(2,)")


def test_parameter_axes_allowed_shapes():
    # Disjoint (batch norm), equal to the reduced axes (layer norm), the grouped channel axis (group norm).
    assert specs.custom("gamma*" + RMS, ndim=3, axes=(0, 2), param_axes=(1,)).param_axes == (1,)
    assert specs.custom("gamma*" + RMS, ndim=3, axes=(1, 2), param_axes=(2, 1)).param_axes == (1, 2)
    s = specs.custom("gamma*" + RMS, ndim=3, axes=(1, 2), param_axes=(1,), groups=2, channel_axis=1)
    assert s.param_varies


@pytest.mark.parametrize("groups", [0, -2, True, 2.0])
def test_groups_not_positive_integer(groups):
    refused(lambda: specs.preset("group", "NCHW", groups=groups), "groups", repr(groups))


def test_groups_need_a_reduced_channel_axis():
    refused(custom(axes=(2,), groups=2, channel_axis=1), "channel_axis", "1")


@pytest.mark.parametrize("preset", ["batch", "layer", "instance", "rms"])
def test_groups_on_a_preset_without_groups(preset):
    refused(lambda: specs.preset(preset, "NCHW", groups=3), "groups", "3")


def test_group_norm_needs_groups():
    err = refused(lambda: specs.preset("group", "NCHW"), "groups", "None")
    assert "group" in str(err)


@pytest.mark.parametrize("eps", [0, 0.0, -1e-5, math.nan, math.inf, -math.inf, True, "1e-5"])
def test_bad_eps(eps):
    refused(lambda: specs.preset("batch", "NCHW", eps=eps), "eps", repr(eps))


@pytest.mark.parametrize("ddof", [2, -1, True])
def test_bad_ddof(ddof):
    refused(lambda: specs.preset("layer", "NC", ddof=ddof), "ddof", repr(ddof))


def test_unknown_preset():
    err = refused(lambda: specs.preset("batchnorm", "NCHW"), "preset", "'batchnorm'")
    assert "batch" in str(err) and "group" in str(err)
    refused(lambda: specs.make("batchnorm", layout="NCHW"), "preset", "'batchnorm'")


def test_unknown_layout():
    err = refused(lambda: specs.preset("batch", "NHCW"), "layout", "'NHCW'")
    assert "NCHW" in str(err)


def test_unknown_running_convention():
    err = refused(lambda: specs.preset("batch", "NC", running="tensorflow"), "running", "'tensorflow'")
    assert "keras" in str(err) and "pytorch" in str(err)


@pytest.mark.parametrize("momentum", [1.5, -0.1, 1 + 1e-15, math.nan, math.inf, True])
def test_momentum_outside_the_unit_interval(momentum):
    err = refused(lambda: specs.preset("batch", "NC", momentum=momentum), "momentum", repr(momentum))
    assert "from 0 to 1" in str(err)


def test_momentum_inside_interval_accepted():
    assert specs.preset("batch", "NC", momentum=0.5).momentum == 0.5
    assert specs.preset("batch", "NC", running="keras", momentum=0.99).running == "keras"


@pytest.mark.parametrize("momentum", [0, 1])
def test_momentum_at_the_ends_accepted(momentum):
    """0 keeps the running statistics where they are, 1 replaces them by each batch's: PyTorch and Keras take both."""
    spec = specs.preset("batch", "NC", momentum=momentum)
    assert spec.momentum == momentum and type(spec.momentum) is float
    assert spec.name == f"batch_nc_momentum{momentum}"


# --- running statistics: only where the statistics do not vary along the batch axis --------------------------------


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_batch_norm_tracks_running_statistics_in_every_layout(layout):
    assert specs.LAYOUTS[layout].batch == specs.BATCH_AXIS == 0
    assert specs.preset("batch", layout).tracks_running


@pytest.mark.parametrize("name, layout, options", [
    ("layer", "NC", {}), ("layer", "NCHW", {}), ("rms", "NC", {}), ("instance", "NCHW", {}),
    ("instance", "NHWC", {}), ("group", "NCHW", {"groups": 4}), ("group", "NHWC", {"groups": 2})])
def test_per_sample_norms_keep_no_running_statistics(name, layout, options):
    spec = specs.preset(name, layout, **options)
    assert not spec.tracks_running
    assert spec.momentum is None and spec.running == "pytorch"  # not filled in with the convention's default
    assert spec.name == f"{name}{options.get('groups', '')}_{layout.lower()}"


def test_custom_specs_track_running_statistics_where_axis_0_is_reduced():
    assert specs.make(RMS, axes=(0, 2), param_axes=()).tracks_running
    assert specs.make(RMS, axes=(0, 2), param_axes=()).momentum == 0.1
    assert not specs.make(RMS, axes=(1, 2), param_axes=()).tracks_running
    assert specs.make(RMS, axes=(1, 2), param_axes=()).momentum is None


@pytest.mark.parametrize("make, name", [
    (lambda **o: specs.preset("layer", "NC", **o), "layer norm"),
    (lambda **o: specs.preset("group", "NCHW", groups=2, **o), "group norm"),
    (lambda **o: specs.make(RMS, axes=(1,), param_axes=(), **o), "this normalization")])
def test_running_options_refused_without_running_statistics(make, name):
    err = refused(lambda: make(running="keras"), "running", "'keras'")
    assert str(err) == (f"running: got 'keras'; expected 'pytorch' (the default): {name} keeps no running "
                        "statistics (its statistics do not span the batch axis 0)")
    err = refused(lambda: make(momentum=0.1), "momentum", "0.1")
    assert str(err).startswith("momentum: got 0.1; expected None (the default): " + name)
    assert make(running="pytorch", momentum=None).momentum is None


def test_center_on_expression_without_beta():
    err = refused(custom(expression="gamma*" + RMS, center=True), "center", "True")
    assert "beta" in str(err)


def test_scale_on_expression_without_gamma():
    err = refused(custom(expression=RMS + " + beta", scale=True), "scale", "True")
    assert "gamma" in str(err)


def test_center_and_scale_default_to_what_the_expression_has():
    s = specs.custom(RMS, ndim=2, axes=1, param_axes=())
    assert not s.center and not s.scale
    s = specs.custom(CENTRED, ndim=2, axes=1, param_axes=1)
    assert s.center and s.scale


def test_expression_errors_come_through_the_spec():
    with pytest.raises(ExpressionError):
        specs.custom("x.real/sqrt(mean(x**2))", ndim=2, axes=1, param_axes=())


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)


# --- make ------------------------------------------------------------------------------------------------------


def test_make_expression_needs_axes_or_like():
    refused(lambda: specs.make(RMS), "axes")
    refused(lambda: specs.make(RMS, layout="NCHW"), "axes")
    refused(lambda: specs.make(RMS, axes=(1,)), "param_axes")


def test_make_expression_with_like():
    s = specs.make("gamma*" + RMS, like="layer", layout="NHWC")
    assert (s.reduce_axes, s.param_axes, s.ndim, s.layout) == ((1, 2, 3), (1, 2, 3), 4, "NHWC")
    assert s.preset is None and s.scale and not s.center
    g = specs.make(CENTRED, like="group", layout="NCHW", groups=4)
    assert (g.reduce_axes, g.param_axes, g.groups, g.channel_axis) == ((1, 2, 3), (1,), 4, 1)


def test_make_expression_with_explicit_axes_infers_ndim():
    s = specs.make("gamma*" + RMS, axes=(0, 2), param_axes=(1,))
    assert s.ndim == 3 and s.reduce_axes == (0, 2) and s.param_axes == (1,)
    assert specs.make("gamma*" + RMS, axes=(0, 2), param_axes=(1,), ndim=5).ndim == 5


def test_make_conflicting_arguments():
    refused(lambda: specs.make("batch", layout="NC", axes=(0,)), "layout")  # a preset takes a layout or axes
    refused(lambda: specs.make(RMS, like="layer", axes=(1,), param_axes=()), "like")
    refused(lambda: specs.make(RMS, layout="NC", axes=(1,), param_axes=()), "layout", "'NC'")
    refused(lambda: specs.make(RMS, like="instance", layout="NC"), "layout", "'NC'")


def test_make_preset_matches_preset():
    assert specs.make("group", layout="NHWC", groups=2) == specs.preset("group", "NHWC", groups=2)


# --- shapes and set sizes --------------------------------------------------------------------------------------


def test_check_shape_wrong_rank():
    s = specs.preset("batch", "NCHW")
    for shape in [(8, 3, 5), (8, 3, 5, 7, 1)]:
        err = refused(lambda: s.check_shape(shape), "shape", repr(shape))
        assert "4" in str(err) and "NCHW" in str(err)
    s.check_shape((8, 3, 5, 7))


def test_check_shape_non_positive_sizes():
    s = specs.preset("batch", "NC")
    refused(lambda: s.check_shape((0, 3)), "shape", "(0, 3)")
    refused(lambda: s.check_shape((2, 1.5)), "shape", "1.5")


@pytest.mark.parametrize("layout, shape, channels", [("NCHW", (2, 6, 3, 3), 6), ("NHWC", (2, 3, 3, 6), 6),
                                                     ("NCL", (2, 10, 5), 10), ("NCHW", (2, 2, 4, 4), 2)])
def test_check_shape_groups_must_divide_channels(layout, shape, channels):
    s = specs.preset("group", layout, groups=4)
    err = refused(lambda: s.check_shape(shape), "groups", "4")
    assert f"channel count {channels}" in str(err)


@pytest.mark.parametrize("preset, layout, groups, shape, size", [
    ("batch", "NCHW", None, (8, 3, 5, 7), 8 * 5 * 7),
    ("batch", "NHWC", None, (8, 5, 7, 3), 8 * 5 * 7),
    ("batch", "NC", None, (8, 3), 8),
    ("layer", "NCHW", None, (8, 3, 5, 7), 3 * 5 * 7),
    ("instance", "NCHW", None, (8, 3, 5, 7), 5 * 7),
    ("instance", "NCDHW", None, (2, 3, 4, 5, 6), 4 * 5 * 6),
    ("rms", "NCL", None, (2, 3, 11), 3 * 11),
    ("group", "NCHW", 4, (2, 8, 3, 3), 2 * 3 * 3),  # C/G * H * W
    ("group", "NHWC", 4, (2, 3, 3, 8), 3 * 3 * 2),
    ("group", "NCHW", 1, (2, 8, 3, 3), 8 * 3 * 3),  # one group: layer norm statistics
    ("group", "NCHW", 8, (2, 8, 3, 3), 3 * 3),  # one channel per group: instance norm statistics
])
def test_set_size(preset, layout, groups, shape, size):
    s = specs.preset(preset, layout, **({"groups": groups} if groups else {}))
    assert s.set_size(shape) == size


def test_set_size_checks_the_shape():
    with pytest.raises(SpecError):
        specs.preset("batch", "NCHW").set_size((8, 3))


# --- names -----------------------------------------------------------------------------------------------------


def _all_preset_specs():
    out = []
    for preset in ("batch", "layer", "instance", "group", "rms"):
        for layout in LAYOUT_NAMES:
            if preset == "instance" and layout == "NC":
                continue
            for groups in ((2, 4) if preset == "group" else (None,)):
                g = {"groups": groups} if groups else {}
                base = specs.preset(preset, layout, **g)
                out.append(base)
                out.append(specs.preset(preset, layout, ddof=1, **g))
                out.append(specs.preset(preset, layout, center=not base.center, **g))
                out.append(specs.preset(preset, layout, scale=False, **g))
                if base.tracks_running:
                    out.append(specs.preset(preset, layout, running="keras", momentum=0.99, **g))
                    out.append(specs.preset(preset, layout, ddof=1, scale=False, running="keras", **g))
                    out.append(specs.preset(preset, layout, momentum=0.5, **g))
    return out


def test_names_are_distinct_across_presets_layouts_and_options():
    all_specs = _all_preset_specs()
    names = [s.name for s in all_specs]
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)
    # Specs that are equal get the same name.
    assert len({s.name for s in set(all_specs)}) == len(set(all_specs))


def test_names_are_identifiers():
    for s in _all_preset_specs():
        assert s.name.isidentifier() and s.name == s.name.lower()


def test_names_are_deterministic():
    for make in (lambda: specs.preset("group", "NHWC", groups=4, ddof=1),
                 lambda: specs.make("gamma*" + RMS, axes=(0, 2), param_axes=(1,))):
        assert make().name == make().name


def test_custom_names_distinguish_expressions_and_axes():
    names = {
        specs.make("gamma*" + RMS, axes=(0, 2), param_axes=(1,)).name,
        specs.make("gamma*" + RMS, axes=(0, 2), param_axes=()).name,
        specs.make("gamma*" + RMS, axes=(0,), param_axes=(1,)).name,
        specs.make("gamma*" + RMS, axes=(0, 2), param_axes=(1,), ndim=4).name,
        specs.make("gamma*x/sqrt(mean(x**2) + 2*eps)", axes=(0, 2), param_axes=(1,)).name,
        specs.make("gamma*" + RMS, axes=(1, 2), param_axes=(1,), groups=2, channel_axis=1).name,
        specs.make("gamma*" + RMS, axes=(1, 2), param_axes=(1,), groups=4, channel_axis=1).name,
        specs.make("gamma*" + RMS, axes=(0, 2), param_axes=(1,), ddof=0, running="keras").name,
    }
    assert len(names) == 8


def test_custom_name_ignores_spelling_of_the_same_expression():
    a = specs.make("gamma*x/sqrt(mean(x**2)+eps)", axes=(1,), param_axes=())
    b = specs.make("gamma * x / sqrt( mean( x ** 2 ) + eps )", axes=(1,), param_axes=())
    assert a.name == b.name


def test_custom_name_is_the_same_in_another_process():
    code = ("from symbn.core import spec; print(spec.make('gamma*x/sqrt(mean(x**2) + eps)', axes=(0, 2), "
            "param_axes=(1,)).name)")
    here = specs.make("gamma*x/sqrt(mean(x**2) + eps)", axes=(0, 2), param_axes=(1,)).name
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        assert out.stdout.strip() == here


def test_custom_names_with_like_distinguish_the_axes():
    e = "gamma*" + RMS
    a = specs.make(e, like="layer", layout="NCHW")
    b = specs.make(e, like="batch", layout="NCHW")
    c = specs.make(e, like="group", layout="NCHW", groups=2)
    d = specs.make(e, like="group", layout="NCHW", groups=4)
    assert len({a.reduce_axes + a.param_axes, b.reduce_axes + b.param_axes}) == 2  # they do differ
    assert len({a.name, b.name, c.name, d.name}) == 4


def test_custom_names_distinguish_center_and_scale():
    e = CENTRED
    on = specs.make(e, axes=(1,), param_axes=(1,))
    off = specs.make(e, axes=(1,), param_axes=(1,), center=False)
    noscale = specs.make(e, axes=(1,), param_axes=(1,), scale=False)
    assert on.digest() != off.digest()
    assert len({on.name, off.name, noscale.name}) == 3


# --- graph errors: parse, pass spec validation, but are not normalizations ------------------------------------


def graph_refused(expression, problem, **kw) -> GraphError:
    kw.setdefault("axes", (1,))
    kw.setdefault("param_axes", (1,))
    s = specs.make(expression, **kw)  # valid as a spec: the refusal comes from the graph
    with pytest.raises(GraphError) as info:
        derive(s)
    assert problem in str(info.value), str(info.value)
    assert repr(expression) in str(info.value)
    return info.value


def test_expression_without_reduction():
    graph_refused("gamma*x + beta", "mean() or sum()")


def test_gamma_inside_a_reduction():
    graph_refused("x/sqrt(mean(gamma*x**2) + eps)", "inside mean()")
    graph_refused("x - sum(beta + x)", "inside sum()")


def test_mean_of_a_constant():
    graph_refused("x - mean(2)", "mean() must be taken of an expression that varies with x", param_axes=())
    graph_refused("x/sum(eps)", "sum() must be taken", param_axes=())


def test_output_that_does_not_vary_with_x():
    graph_refused("mean(x)", "vary with x", param_axes=())
    graph_refused("x - x + mean(x)", "vary with x", param_axes=())


def test_ddof_without_a_central_moment():
    graph_refused(RMS, "ddof=1", param_axes=(), ddof=1)
    # The same expression is fine with ddof=0, and a central moment is fine with ddof=1.
    assert derive(specs.make(RMS, axes=(1,), param_axes=())).dx is not None
    assert derive(specs.make(CENTRED, axes=(1,), param_axes=(1,), ddof=1)).dx is not None


def test_graph_error_for_a_preset_never_happens():
    for s in [specs.preset("batch", "NC"), specs.preset("rms", "NC"), specs.preset("layer", "NC", ddof=1)]:
        derive(s)  # no GraphError


def test_graph_error_is_a_value_error():
    assert issubclass(GraphError, ValueError)


def test_spec_is_frozen():
    s = specs.preset("batch", "NC")
    with pytest.raises(Exception):
        s.eps = 1.0  # type: ignore[misc]
    assert isinstance(s, Spec)
