"""What the command line shares: the spec flags, their parsing, and errors that name the flag rather than the
Python field."""

from __future__ import annotations

import argparse
import re

from symbn.core import epilogue as epilogues
from symbn.core import spec as specs
from symbn.core.expr import ExpressionError
from symbn.core.graph import GraphError


class UsageError(ValueError):
    """A command line that asks for something the CLI does not do (exit status 2); the message is shown as is."""


USAGE_ERRORS = (specs.SpecError, ExpressionError, GraphError, UsageError)

# The flag (or positional) the CLI reports for each field a SpecError names; the Python API keeps the field names.
FLAGS = {
    "what": "PRESET_OR_EXPR",
    "preset": "PRESET_OR_EXPR",
    "layout": "--layout",
    "like": "--like",
    "axes": "--axes",
    "reduce_axes": "--axes",
    "param_axes": "--param-axes",
    "ndim": "--ndim",
    "groups": "--groups",
    "channel_axis": "--channel-axis",
    "eps": "--eps",
    "ddof": "--ddof",
    "running": "--running",
    "momentum": "--momentum",
    "epilogue": "--epilogue",
    "center": "center (--no-center)",
    "scale": "scale (--no-scale)",
    "name": "--name",
    "PRESET_OR_EXPR": "PRESET_OR_EXPR",
}

# Field names and keyword arguments inside the "expected ..." part of a message, as the CLI spells them.
_EXPECTED_WORDS = (
    (re.compile(r"\blike=PRESET\b"), "--like PRESET"),
    (re.compile(r"\blike="), "--like"),
    (re.compile(r"\bno layout\b"), "no --layout"),
    (re.compile(r"\breduce_axes\b"), "--axes"),
    (re.compile(r"\bparam_axes\b"), "--param-axes"),
    (re.compile(r"\bchannel_axis\b"), "--channel-axis"),
)


def flag_message(err: Exception, args: argparse.Namespace | None = None) -> str:
    """The one-line message of a usage error as the CLI shows it: SpecError's field as the flag that sets it."""
    text = " ".join(str(err).split())
    if isinstance(err, GraphError):
        return text.replace(": ddof=1 needs a central moment", ": --ddof 1 needs a central moment")
    if not isinstance(err, specs.SpecError) or err.field not in FLAGS:
        return text
    head = f"{err.field}: got "
    shown, sep, expected = text[len(head):].rpartition("; expected ")
    if not text.startswith(head) or not sep:
        return text
    flag = FLAGS[err.field]
    if err.field == "layout" and args is not None and getattr(args, "layout", None) is None \
            and getattr(args, "like", None) is not None:
        flag = "--like"  # make() reports a stray like= under layout
    for pattern, words in _EXPECTED_WORDS:
        expected = pattern.sub(words, expected)
    if flag == "PRESET_OR_EXPR" and expected.startswith("one of "):
        expected = "a preset, " + expected
    if expected.startswith("None or "):
        expected = expected[len("None or "):] + f" (or no {flag})"
    given = "not given" if shown == "None" else f"got {shown}"
    if err.field == "ndim" and args is not None and getattr(args, "ndim", 0) is None:
        given += " (the default: the largest of --axes and --param-axes, plus one)"
    return f"{flag}: {given}; expected {expected}"


def _axes(text: str) -> tuple[int, ...]:
    text = text.strip()
    if text.lower() in ("", "none", "()"):
        return ()
    try:
        return tuple(int(a) for a in text.strip("()").split(",") if a.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated axis numbers such as 0,2,3; got {text!r}")


def add_spec_arguments(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument("what", metavar="PRESET_OR_EXPR", nargs="?" if optional else None,
                   help=f"a preset ({', '.join(specs.PRESETS)}) or a forward expression such as "
                        f"'gamma*x/sqrt(mean(x**2) + eps)'")
    p.add_argument("--layout", choices=list(specs.LAYOUTS),
                   help=f"input layout of a preset, or of --like PRESET (default: {default_layouts_text()})")
    p.add_argument("--like", choices=list(specs.PRESETS), metavar="PRESET",
                   help="take an expression's axes from this preset (with --layout)")
    p.add_argument("--axes", type=_axes, help="explicit axes to reduce, e.g. 0,2")
    p.add_argument("--param-axes", type=_axes, help="axes gamma and beta span, e.g. 1 (or 'none')")
    p.add_argument("--ndim", type=int, help="input rank with explicit axes (default: largest axis + 1)")
    p.add_argument("--channel-axis", type=int, help="the axis --groups splits, with explicit axes")
    p.add_argument("--groups", type=int, help="split the channel axis into G groups (group norm)")
    p.add_argument("--eps", type=float, default=1e-5, help="added to the variance (default 1e-5)")
    p.add_argument("--ddof", type=int, default=0, choices=(0, 1), help="1 divides central moments by M-1")
    p.add_argument("--no-center", action="store_true", help="no beta (shift)")
    p.add_argument("--no-scale", action="store_true", help="no gamma (scale)")
    p.add_argument("--running", choices=list(specs.RUNNING), default="pytorch",
                   help="running-statistics convention (default pytorch)")
    p.add_argument("--momentum", type=float, help="default 0.1 for pytorch, 0.99 for keras")
    p.add_argument("--epilogue", choices=list(epilogues.PRESET_EPILOGUES),
                   help="after a preset: relu (y = relu(norm)) or add_relu (y = relu(norm + r), r a residual "
                        "input); an expression writes its own, e.g. 'relu(gamma*x/sqrt(mean(x**2) + eps) + r)'")


def default_layouts() -> dict[str, str]:
    """The layout each preset gets without --layout (what symbn.preset picks)."""
    return {name: specs.preset(name, groups=1 if row.grouped else None).layout for name, row in specs.PRESETS.items()}


def default_layouts_text() -> str:
    """E.g. 'NC for batch, layer and rms; NCHW for instance and group'."""
    by_layout: dict[str, list[str]] = {}
    for name, layout in default_layouts().items():
        by_layout.setdefault(layout, []).append(name)
    return "; ".join(f"{layout} for " + (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0])
                     for layout, names in by_layout.items())


def spec_from_args(a: argparse.Namespace) -> specs.Spec:
    options = dict(eps=a.eps, ddof=a.ddof, running=a.running, momentum=a.momentum)
    if a.epilogue is not None:  # only where given: an expression's spec has no epilogue= (it writes its own)
        options["epilogue"] = a.epilogue
    if a.no_center:
        options["center"] = False
    if a.no_scale:
        options["scale"] = False
    return specs.make(a.what, layout=a.layout, like=a.like, axes=a.axes, param_axes=a.param_axes, ndim=a.ndim,
                      groups=a.groups, channel_axis=a.channel_axis, **options)


def quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
