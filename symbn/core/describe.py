"""A derivation as readable text: the spec, the forward graph, staged and compact backward, eval mode, running."""

from __future__ import annotations

from symbn.core.derive import Derivation
from symbn.core.graph import ELEM, REDUCE
from symbn.core.printing import text
from symbn.core.spec import PRESETS, Spec

_KIND = {ELEM: "per element", REDUCE: "statistic", "stat": "per statistic"}


def axis_names(spec: Spec) -> list[str]:
    if spec.layout:
        return list(spec.layout)
    return [f"n{a}" for a in range(spec.ndim)]


def set_size_text(spec: Spec) -> str:
    """M in the sizes of the axes, e.g. N*H*W, or C/G*H*W for group norm."""
    names = axis_names(spec)
    parts = []
    for a in spec.reduce_axes:
        parts.append(f"({names[a]}/{spec.groups})" if spec.groups and a == spec.channel_axis else names[a])
    return "*".join(parts)


def describe_spec(spec: Spec) -> list[str]:
    names = axis_names(spec)
    kind = f"{spec.preset} norm" if spec.preset else "custom normalization"
    lines = [f"spec      {spec.name}: {kind}" + (f", layout {spec.layout}" if spec.layout else "")]
    if spec.preset:
        lines.append(f"          {PRESETS[spec.preset].summary}")
    lines.append(f"forward   y = {spec.expression}" + _switched(spec))
    lines.append(f"input     {spec.ndim}-D ({', '.join(names)}); reduce axes {spec.reduce_axes}"
                 + (f", channel axis {spec.channel_axis} split into G={spec.groups} groups" if spec.groups else ""))
    lines.append(f"          each statistic sees M = {set_size_text(spec)} elements")
    if spec.center or spec.scale:
        which = ", ".join(p for p, on in (("gamma", spec.scale), ("beta", spec.center)) if on)
        shape = ", ".join(names[a] for a in spec.param_axes) or "scalar"
        lines.append(f"params    {which} over axes {spec.param_axes} ({shape})")
    else:
        lines.append("params    none (center and scale off)")
    if spec.tracks_running:
        running = f"running={spec.running} (momentum {spec.momentum:g})"
    else:
        running = "no running statistics"
    lines.append(f"options   eps={spec.eps:g}, ddof={spec.ddof}, {running}")
    return lines


def no_running_text(spec: Spec) -> str:
    """Why a spec keeps no running statistics, in words."""
    kind = f"{spec.preset} norm's" if spec.preset else "its"
    return f"{kind} statistics do not span the batch axis 0"


def _switched(spec: Spec) -> str:
    off = [f"{leaf}={value}" for leaf, value, on in (("beta", 0, spec.center), ("gamma", 1, spec.scale))
           if not on and leaf in spec.expression]
    return f"   with {', '.join(off)}" if off else ""


def derivation_text(d: Derivation) -> str:
    spec = d.spec
    out = describe_spec(spec)
    out += ["", "forward graph"]
    width = max(len(n.name) for n in d.graph.nodes)
    for i, n in enumerate(d.graph.nodes, 1):
        out.append(f"  {i:2}. {n.name:<{width}} = {text(n.expr):<34} {n.op:<11} {_KIND[n.kind]}")
    if d.epilogue:
        out += ["", "epilogue (after the normalization z, element by element)", f"  y = {text(d.epilogue.forward)}",
                "", "epilogue backward (chain rule; the normalization's backward below starts from dz)"]
        out += [f"  {s} = {text(e)}" for s, e in d.epilogue.backward]
        out.append("  Heaviside(a) is 1 where a > 0 and 0 elsewhere: the kernels take the step at a kink as 0, as "
                   "PyTorch's relu does")
    out += ["", "staged backward (reverse mode: one step per forward node, last first)"]
    for i, step in zip(range(len(d.steps), 0, -1), d.steps):
        passed = "; ".join(f"d{c.target} += {text(c.value)}" for c in step.contributions)
        out.append(f"  {i:2}. {step.node.name}: {passed}")
    out.append("      then " + "; ".join(f"{s} = {text(e)}" for s, e in d.staged[-len(d.graph.leaves):]))
    out += ["", "compact backward" + (" (in the primal x: no affine normalized coordinate)" if d.primal else "")]
    for s, e in d.coordinates + d.reductions + d.compact:
        out.append(f"  {s} = {text(e)}")
    if spec.tracks_running:
        out += ["", "eval-mode backward (statistics are constants: the running statistics)"]
        out += [f"  {s} = {text(e)}" for s, e in d.eval_mode]
        out += ["", f"running statistics ({spec.running} convention, momentum = {spec.momentum:g})"]
        out += [f"  {s} <- {text(e)}" for s, e in d.running]
    else:
        out += ["", f"eval mode: the input's own statistics, as in training (no running statistics: "
                    f"{no_running_text(spec)})",
                "  each sample has statistics of its own; running averages of them would depend on the batch.",
                "  The eval backward is the compact backward above."]
    counts = d.op_counts
    out += ["", "operation counts"]
    for phase, c in counts.items():
        out.append(f"  {phase:<9} " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in c.items()))
    names = axis_names(spec)
    rest = tuple(a for a in range(spec.ndim) if a not in spec.param_axes)
    out += ["", f"sum(.) runs over the M elements of one statistic; psum(.) over the axes the parameters do not span "
                f"{rest} ({', '.join(names[a] for a in rest)})"]
    return "\n".join(out) + "\n"
