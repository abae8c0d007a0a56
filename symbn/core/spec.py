"""A normalization as data: forward expression, reduced axes, parameter axes and options.

Presets (batch, layer, instance, group, rms) are rows of a table; nothing below them knows their names.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from symbn.core import epilogue as epilogues
from symbn.core import expr

CENTRED = "(x - mean(x))/sqrt(mean((x - mean(x))**2) + eps)"
RMS = "x/sqrt(mean(x**2) + eps)"


@dataclass(frozen=True)
class Layout:
    batch: int
    channel: int
    spatial: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return 2 + len(self.spatial)


BATCH_AXIS = 0  # the batch axis of every layout, and by convention of custom specs with explicit axes

LAYOUTS = {
    "NC": Layout(0, 1, ()),
    "NCL": Layout(0, 1, (2,)),
    "NCHW": Layout(0, 1, (2, 3)),
    "NHWC": Layout(0, 3, (1, 2)),
    "NCDHW": Layout(0, 1, (2, 3, 4)),
}


@dataclass(frozen=True)
class Preset:
    core: str
    reduce: tuple[str, ...]  # roles of the reduced axes: "batch", "channel", "spatial"
    params: str  # "channel": one parameter per channel; "reduced": parameters span the normalized shape
    grouped: bool = False
    center: bool = True
    summary: str = ""


PRESETS = {
    "batch": Preset(CENTRED, ("batch", "spatial"), "channel", summary="statistics per channel over batch and space"),
    "layer": Preset(CENTRED, ("channel", "spatial"), "reduced", summary="statistics per sample; affine over the normalized shape"),
    "instance": Preset(CENTRED, ("spatial",), "channel", summary="statistics per sample and channel over space"),
    "group": Preset(CENTRED, ("channel", "spatial"), "channel", grouped=True, summary="statistics per sample and group of channels"),
    "rms": Preset(RMS, ("channel", "spatial"), "reduced", center=False, summary="root mean square per sample, no centring; gamma only"),
}

@dataclass(frozen=True)
class Convention:
    """How running statistics follow the batch ones, as a framework keeps them: the one place each rule is written."""

    label: str
    momentum: float  # the default
    eps: float  # the framework's default eps (symbn.layers)
    momentum_on_batch: bool  # True: r <- (1 - m) r + m s; False: r <- m r + (1 - m) s
    unbiased: bool  # central moments enter corrected by M/(M - 1) when ddof is 0
    rule: str  # the update in words, for docstrings
    rule_tex: str  # the same for documents ($...$ marks LaTeX)


RUNNING = {
    "pytorch": Convention("PyTorch", 0.1, 1e-5, True, True,
                          "r <- (1 - momentum)*r + momentum*s, central moments corrected by M/(M-1)",
                          "$r \\leftarrow (1 - m)\\, r + m s$; a central moment such as the variance enters "
                          "unbiased, multiplied by $\\frac{M}{M - 1}$, when ddof is 0"),
    "keras": Convention("Keras", 0.99, 1e-3, False, False, "r <- momentum*r + (1 - momentum)*s, uncorrected",
                        "$r \\leftarrow m r + (1 - m)\\, s$, with the statistic as computed"),
}


class SpecError(ValueError):
    """An invalid normalization spec; the message names the field, the value given and what is allowed."""

    def __init__(self, field_name: str, given, expected: str):
        shown = repr(given)
        if len(shown) > 80:
            shown = f"{shown[:60]}... ({type(given).__name__}, {len(shown)} characters)"
        super().__init__(f"{field_name}: got {shown}; expected {expected}")
        self.field = field_name


@dataclass(frozen=True)
class Spec:
    """A normalization: ``expression`` over one element ``x``, reduced over ``reduce_axes`` of an ``ndim`` input.

    ``groups`` splits ``channel_axis`` (which must be reduced) into that many groups, each reduced separately.
    ``param_axes`` are the axes gamma and beta span. ``center``/``scale`` switch beta/gamma on or off;
    ``ddof`` divides central moments by M - ddof; ``running`` picks the running-statistics convention and
    ``momentum`` its momentum (None: the convention's default).

    Axis 0 is the batch axis: in every layout of LAYOUTS, and by convention for a custom spec with explicit axes.
    Running statistics exist only where the statistics do not vary along it, that is where axis 0 is reduced
    (``tracks_running``: batch norm, or a custom spec reducing axis 0). Elsewhere (layer, group, instance, RMS norm)
    each sample has statistics of its own, running averages of them would depend on the batch, and eval mode
    normalizes with the input's own statistics as training does: there ``running`` must stay "pytorch" (the default)
    and ``momentum`` None, which is not replaced by a convention's default.
    """

    expression: str
    ndim: int
    reduce_axes: tuple[int, ...]
    param_axes: tuple[int, ...]
    groups: int | None = None
    channel_axis: int | None = None
    eps: float = 1e-5
    center: bool = True
    scale: bool = True
    ddof: int = 0
    running: str = "pytorch"
    momentum: float | None = None  # None: the convention's default (0.1 pytorch, 0.99 keras); None without running
    layout: str | None = None
    preset: str | None = None
    epilogue: str | None = None  # a preset's epilogue (symbn.core.epilogue.PRESET_EPILOGUES): a label, as layout is
    tree: tuple = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        _validate(self)

    @property
    def name(self) -> str:
        """A canonical identifier: preset, groups, layout and any non-default option; custom expressions carry a
        hash of everything that shapes the derivation, so two different specs never share a name."""
        if self.preset:
            parts = [self.preset + (str(self.groups) if self.groups else "")]
        else:
            parts = ["custom_" + self.digest(structural=True)[:8]]
        if self.layout:
            parts.append(self.layout.lower())
        else:
            where = "r" + "".join(map(str, self.reduce_axes)) + "_p" + "".join(map(str, self.param_axes))
            parts.append(where + f"_nd{self.ndim}" + (f"_g{self.groups}c{self.channel_axis}" if self.groups else ""))
        if self.epilogue:
            parts.append(self.epilogue)
        if self.ddof:
            parts.append(f"ddof{self.ddof}")
        if self.preset:
            if self.center != PRESETS[self.preset].center:
                parts.append("center" if self.center else "nocenter")
            if not self.scale:
                parts.append("noscale")
        if self.running != "pytorch":
            parts.append(self.running)
        if self.eps != 1e-5:
            parts.append("eps" + _token(self.eps))
        if self.momentum is not None and self.momentum != RUNNING[self.running].momentum:
            parts.append("momentum" + _token(self.momentum))
        return "_".join(parts)

    @property
    def tracks_running(self) -> bool:
        """Whether the spec keeps running statistics: True where the batch axis 0 is reduced, so that the statistics
        do not vary along it (batch norm); False where every sample has its own (layer, group, instance, RMS norm),
        whose eval mode is the training computation on the input's own statistics."""
        return BATCH_AXIS in self.reduce_axes

    @property
    def has_epilogue(self) -> bool:
        """Whether the forward ends in an epilogue (symbn.core.epilogue): r, relu() or max() after the
        normalization."""
        return epilogues.has_epilogue(_exact_tree(self))

    @property
    def param_varies(self) -> bool:
        """Whether gamma/beta can take different values inside one reduction set."""
        return bool(set(self.param_axes) & set(self.reduce_axes))

    def digest(self, structural: bool = False) -> str:
        """A hash of everything that determines derived and generated output (*structural*: all but the names,
        eps and momentum, which the name shows on its own)."""
        fields = (expr.to_text(_exact_tree(self)), self.ndim, self.reduce_axes, self.param_axes, self.groups,
                  self.channel_axis, self.center, self.scale, self.ddof, self.running)
        if not structural:
            fields += (repr(self.eps), repr(self.momentum), self.layout, self.preset) + (
                (self.epilogue,) if self.epilogue else ())  # specs without one keep the digests they had
        return _digest(repr(fields))

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Raise SpecError unless *shape* fits this spec (rank, group count dividing the channels)."""
        shape = tuple(shape)
        if len(shape) != self.ndim:
            raise SpecError("shape", shape, f"{self.ndim} dimensions" + (f" ({self.layout})" if self.layout else ""))
        if any(not isinstance(n, int) or n < 1 for n in shape):
            raise SpecError("shape", shape, "positive integer sizes")
        if self.groups and shape[self.channel_axis] % self.groups:
            raise SpecError("groups", self.groups,
                            f"a divisor of the channel count {shape[self.channel_axis]} (axis {self.channel_axis})")

    def set_size(self, shape: tuple[int, ...]) -> int:
        """M: how many elements each statistic sees for an input of *shape*."""
        self.check_shape(shape)
        size = math.prod(shape[a] for a in self.reduce_axes)
        return size // self.groups if self.groups else size

    def with_options(self, **changes) -> Spec:
        return replace(self, **{"tree": None, **changes})  # the tree is rebuilt from the expression (unread: lazy)


class _LazyTree:
    """Spec.tree, the parsed expression with SymPy numbers (what symbn.core.derive reads), built on first use from
    the SymPy-free tree the spec was checked with: making a spec, naming it or loading its cached module never
    imports SymPy. Setting the field (the dataclass's __init__, _validate) stores the SymPy-free tree."""

    def __get__(self, spec, owner=None):
        if spec is None:
            return None  # the field's default
        tree = spec.__dict__.get("_sympy_tree")
        if tree is None:
            tree = spec.__dict__["_sympy_tree"] = expr.sympy_tree(_exact_tree(spec))
        return tree

    def __set__(self, spec, tree) -> None:
        spec.__dict__["_exact_tree"] = tree
        spec.__dict__.pop("_sympy_tree", None)


Spec.tree = _LazyTree()  # after @dataclass, which keeps the field (default None, no compare, no repr)


def _exact_tree(spec: Spec) -> tuple:
    """The spec's tree with its numbers as Fractions (expr.parse_exact)."""
    return spec.__dict__.get("_exact_tree")


def _token(value: float) -> str:
    """1e-3 -> 0p001: a number as part of an identifier."""
    return f"{value:g}".replace("-", "m").replace(".", "p").replace("+", "")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _validate(spec: Spec) -> None:
    tree = expr.parse_exact(spec.expression)
    object.__setattr__(spec, "tree", tree)
    # The spec keeps the expression as rebuilt from the checked tree: the text the user typed (comments, spacing)
    # goes no further than the parser.
    object.__setattr__(spec, "expression", expr.canonical(tree))
    epilogues.split(tree, spec.expression)  # r, relu() and max() only where an epilogue may have them
    if not _is_int(spec.ndim) or not 1 <= spec.ndim <= 8:
        raise SpecError("ndim", spec.ndim, "an integer from 1 to 8")
    object.__setattr__(spec, "ndim", int(spec.ndim))
    reduce_axes = _axes("reduce_axes", spec.reduce_axes, spec.ndim)
    param_axes = _axes("param_axes", spec.param_axes, spec.ndim)
    if not reduce_axes:
        raise SpecError("reduce_axes", spec.reduce_axes, "at least one axis to reduce")
    object.__setattr__(spec, "reduce_axes", reduce_axes)
    object.__setattr__(spec, "param_axes", param_axes)
    if spec.groups is not None:
        if not _is_int(spec.groups) or spec.groups < 1:
            raise SpecError("groups", spec.groups, "a positive integer")
        object.__setattr__(spec, "groups", int(spec.groups))
        if spec.channel_axis not in reduce_axes:
            raise SpecError("channel_axis", spec.channel_axis,
                            f"one of the reduced axes {reduce_axes}, to be split into {spec.groups} groups")
    elif spec.channel_axis is not None and (not _is_int(spec.channel_axis) or not 0 <= spec.channel_axis < spec.ndim):
        raise SpecError("channel_axis", spec.channel_axis, f"None or an axis in [0, {spec.ndim})")
    overlap = set(param_axes) & set(reduce_axes)
    # Parameters may vary inside a reduction set only in the two shapes normalizations use: over the whole normalized
    # shape (layer norm, as in PyTorch) or per channel of a channel axis split into groups (group norm).
    if overlap and param_axes != reduce_axes and not (spec.groups and overlap == {spec.channel_axis}):
        raise SpecError("param_axes", param_axes,
                        f"axes disjoint from reduce_axes {reduce_axes}, or equal to them (layer norm), "
                        "or the grouped channel axis (group norm); axis "
                        f"{sorted(overlap)[0]} is both reduced and a parameter axis")
    object.__setattr__(spec, "eps", _real("eps", spec.eps, "a finite number > 0", lambda v: 0 < v < math.inf))
    if not _is_int(spec.ddof) or spec.ddof not in (0, 1):
        raise SpecError("ddof", spec.ddof, "0 (biased, as PyTorch, Keras and cs231n) or 1 (unbiased)")
    if not isinstance(spec.running, str) or spec.running not in RUNNING:
        raise SpecError("running", spec.running, f"one of {sorted(RUNNING)}")
    if spec.tracks_running:
        if spec.momentum is None:
            object.__setattr__(spec, "momentum", RUNNING[spec.running].momentum)
        object.__setattr__(spec, "momentum", _real("momentum", spec.momentum, MOMENTUM_RANGE, lambda v: 0 <= v <= 1))
    else:
        why = (f"{_kind(spec)} keeps no running statistics (its statistics do not span the batch axis "
               f"{BATCH_AXIS})")
        if spec.running != "pytorch":
            raise SpecError("running", spec.running, f"'pytorch' (the default): {why}")
        if spec.momentum is not None:
            raise SpecError("momentum", spec.momentum, f"None (the default): {why}")
    for flag, leaf in (("center", "beta"), ("scale", "gamma")):
        if not isinstance(getattr(spec, flag), bool):
            raise SpecError(flag, getattr(spec, flag), "True or False")
        if getattr(spec, flag) and not expr.contains(tree, leaf):
            raise SpecError(flag, True, f"False: the expression has no {leaf}")
    _validate_names(spec, tree)


def _validate_names(spec: Spec, tree: tuple) -> None:
    """The preset and layout are labels that go into the spec's name, so they must say what the spec is: a spec
    named batch_nhwc is batch norm over NHWC's axes, never another spec that would share its name and files."""
    if spec.layout is not None:
        if not isinstance(spec.layout, str) or spec.layout not in LAYOUTS:
            raise SpecError("layout", spec.layout, f"None or one of {', '.join(LAYOUTS)}")
        if spec.ndim != LAYOUTS[spec.layout].ndim:
            raise SpecError("layout", spec.layout, f"a layout of {spec.ndim} dimensions (the spec's ndim), or None")
    if spec.epilogue is not None and (not isinstance(spec.epilogue, str) or spec.epilogue not in
                                      epilogues.PRESET_EPILOGUES or spec.preset is None):
        raise SpecError("epilogue", spec.epilogue, f"None, or with a preset one of "
                                                   f"{', '.join(epilogues.PRESET_EPILOGUES)} (a custom expression "
                                                   f"writes its epilogue, e.g. {epilogues.EXAMPLE})")
    if spec.preset is None:
        return
    if not isinstance(spec.preset, str) or spec.preset not in PRESETS:
        raise SpecError("preset", spec.preset, f"None or one of {', '.join(PRESETS)}")
    if tree != expr.parse_exact(_preset_expression(spec.preset, spec.epilogue)):
        what = f"{spec.preset} norm's" + (f" with the {spec.epilogue} epilogue" if spec.epilogue else "")
        raise SpecError("preset", spec.preset, f"None for an expression other than {what}")
    if PRESETS[spec.preset].grouped != bool(spec.groups):
        raise SpecError("groups", spec.groups, "a number of groups for group norm" if PRESETS[spec.preset].grouped
                        else f"None for {spec.preset} norm")
    if spec.layout is not None:
        ndim, reduce_axes, param_axes, channel_axis = _preset_axes(spec.preset, spec.layout)
        if (spec.reduce_axes, spec.param_axes) != (reduce_axes, param_axes) or (
                spec.groups and spec.channel_axis != channel_axis):
            raise SpecError("layout", spec.layout, f"None, or the layout whose axes the spec has: {spec.preset} norm "
                            f"over {spec.layout} reduces {reduce_axes} with parameters over {param_axes}; this "
                            f"spec reduces {spec.reduce_axes} with parameters over {spec.param_axes}")


MOMENTUM_RANGE = "a number from 0 to 1"


def _kind(spec: Spec) -> str:
    """The spec's normalization in words, for messages (its preset need not be checked yet)."""
    if isinstance(spec.preset, str) and spec.preset in PRESETS:
        return f"{spec.preset} norm"
    return "this normalization"


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _real(name: str, value, expected: str, ok) -> float:
    """*value* as a float, or SpecError: a real number (not a bool, string or complex) within float range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SpecError(name, value, expected)
    try:
        number = float(value)
    except OverflowError:
        raise SpecError(name, value, expected) from None
    if not ok(number):
        raise SpecError(name, value, expected)
    return number


def _sequence(name: str, axes) -> tuple:
    if _is_int(axes):
        return (axes,)
    if isinstance(axes, (str, bytes)):
        raise SpecError(name, axes, "a sequence of axis numbers")
    try:
        return tuple(axes)
    except TypeError:
        raise SpecError(name, axes, "a sequence of axis numbers") from None


def _axes(name: str, axes, ndim: int) -> tuple[int, ...]:
    axes = _sequence(name, axes)
    out = []
    for a in axes:
        if not _is_int(a) or not -ndim <= a < ndim:
            raise SpecError(name, axes, f"axes in [{-ndim}, {ndim}) for a {ndim}-dimensional input")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise SpecError(name, axes, "no repeated axis")
    return tuple(sorted(out))


def _preset_axes(name, layout) -> tuple[int, tuple[int, ...], tuple[int, ...], int]:
    """(ndim, reduce_axes, param_axes, channel_axis) of a preset for a layout: what the name promises."""
    if not isinstance(name, str) or name not in PRESETS:
        raise SpecError("preset", name, f"one of {', '.join(PRESETS)}")
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise SpecError("layout", layout, f"one of {', '.join(LAYOUTS)}")
    row, where = PRESETS[name], LAYOUTS[layout]
    roles = {"batch": (where.batch,), "channel": (where.channel,), "spatial": where.spatial}
    reduce_axes = tuple(sorted(a for role in row.reduce for a in roles[role]))
    if not reduce_axes:
        raise SpecError("layout", layout, f"a layout with spatial axes for {name} norm (one of NCL, NCHW, NHWC, NCDHW)")
    param_axes = (where.channel,) if row.params == "channel" else reduce_axes
    return where.ndim, reduce_axes, param_axes, where.channel


def preset(name: str, layout: str | None = None, *, groups: int | None = None, center: bool | None = None,
           scale: bool = True, epilogue: str | None = None, **options: object) -> Spec:
    """The spec of a preset normalization for a layout, e.g. ``preset("group", "NCHW", groups=4)``; *epilogue*
    ("relu", "add_relu": symbn.core.epilogue.PRESET_EPILOGUES) applies relu, or adds a residual r and applies relu,
    to the normalized value."""
    if not isinstance(name, str) or name not in PRESETS:
        raise SpecError("preset", name, f"one of {', '.join(PRESETS)}")
    row = PRESETS[name]
    if layout is None:
        layout = "NCHW" if row.grouped or row.reduce == ("spatial",) else "NC"
    ndim, reduce_axes, param_axes, channel_axis = _preset_axes(name, layout)
    if row.grouped:
        if groups is None:
            raise SpecError("groups", None, "a positive integer number of groups for group norm")
    elif groups is not None:
        raise SpecError("groups", groups, f"no groups for {name} norm (only group norm splits channels)")
    return Spec(
        expression=_preset_expression(name, epilogue),
        ndim=ndim,
        reduce_axes=reduce_axes,
        param_axes=param_axes,
        groups=groups,
        channel_axis=channel_axis,
        center=row.center if center is None else center,
        scale=scale,
        layout=layout,
        preset=name,
        epilogue=epilogue,
        **options,
    )


def _preset_expression(name: str, epilogue: str | None = None) -> str:
    """A preset's forward expression, with its epilogue around it (SpecError for an epilogue that is none)."""
    if epilogue is not None and (not isinstance(epilogue, str) or epilogue not in epilogues.PRESET_EPILOGUES):
        raise SpecError("epilogue", epilogue, f"None or one of {', '.join(epilogues.PRESET_EPILOGUES)}")
    core = f"gamma*({PRESETS[name].core}) + beta"
    return epilogues.PRESET_EPILOGUES[epilogue].format(core) if epilogue else core


def custom(expression: str, *, ndim: int, axes: Sequence[int], param_axes: Sequence[int], groups: int | None = None,
           channel_axis: int | None = None, center: bool | None = None, scale: bool | None = None,
           **options: object) -> Spec:
    """A spec from a forward expression and explicit axes; center/scale default to whether beta/gamma appear."""
    tree = expr.parse_exact(expression)
    return Spec(
        expression=expression,
        ndim=ndim,
        reduce_axes=axes,
        param_axes=param_axes,
        groups=groups,
        channel_axis=channel_axis,
        center=expr.contains(tree, "beta") if center is None else center,
        scale=expr.contains(tree, "gamma") if scale is None else scale,
        **options,
    )


def make(what: str, *, layout: str | None = None, like: str | None = None, axes: Sequence[int] | None = None,
         param_axes: Sequence[int] | None = None, ndim: int | None = None, groups: int | None = None,
         channel_axis: int | None = None, **options: object) -> Spec:
    """One entry point for the CLI and the API: a preset name or an expression, with a layout or explicit axes.

    An expression takes its axes from ``axes``/``param_axes`` (and ``ndim``, by default one more than the largest
    axis), or from the preset ``like`` for ``layout``.
    """
    if not isinstance(what, str):
        raise SpecError("what", what, f"a preset name ({', '.join(PRESETS)}) or a forward expression string")
    if what in PRESETS and axes is None and param_axes is None:
        if like is not None:
            raise SpecError("like", like, f"no like= with the preset {what!r} (it has its own axes)")
        return preset(what, layout, groups=groups, **options)
    if what in PRESETS:  # a preset's forward over explicit axes, e.g. batch norm over axes (0, 2) of a rank-3 input
        if layout is not None or like is not None:
            raise SpecError("layout", layout or like, "no layout or like= with explicit axes")
        row = PRESETS[what]
        options.setdefault("center", row.center)
        epilogue = options.pop("epilogue", None)
        return make(_preset_expression(what, epilogue), axes=axes, param_axes=param_axes, ndim=ndim, groups=groups,
                    channel_axis=channel_axis, **options).with_options(preset=what, epilogue=epilogue)
    if what.isidentifier() and what not in expr.NAMES:
        raise SpecError("preset", what, f"one of {', '.join(PRESETS)}, or a forward expression such as '{RMS}'")
    if like is not None:
        if axes is not None or param_axes is not None:
            raise SpecError("like", like, "either like= with a layout or explicit axes, not both")
        base = preset(like, layout, groups=groups)
        center, scale = options.pop("center", None), options.pop("scale", None)
        return custom(what, ndim=base.ndim, axes=base.reduce_axes, param_axes=base.param_axes, groups=groups,
                      channel_axis=base.channel_axis if groups else None, center=center, scale=scale,
                      **options).with_options(layout=layout or base.layout)
    if axes is None:
        raise SpecError("axes", None, "the axes to reduce (or like=PRESET with a layout) for a custom expression")
    if param_axes is None:
        raise SpecError("param_axes", None, "the axes gamma and beta span (may be empty) for a custom expression")
    if layout is not None:
        raise SpecError("layout", layout, "no layout with explicit axes (or use like=PRESET)")
    axes_t, params_t = _sequence("axes", axes), _sequence("param_axes", param_axes)
    if ndim is None:
        ndim = max((int(a) for a in axes_t + params_t if _is_int(a) and a >= 0), default=0) + 1
    return custom(what, ndim=ndim, axes=axes_t, param_axes=params_t, groups=groups, channel_axis=channel_axis,
                  **options)
