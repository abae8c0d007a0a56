"""Derivation documents (GitHub Markdown, standalone HTML, LaTeX) built from the same Derivation the kernels come from.

The mathematics, down to the stages of the simplification and the identities that act in them, is the Derivation's;
this module names it and explains it, a writer (symbn/docgen/formats.py) spells each piece in its format, and the
templates in templates/ receive finished strings, lists and booleans and only lay them out.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import sympy

from symbn.version import __version__
from symbn.docgen import diagram
from symbn import escape
from symbn.core.derive import DBETA, DGAMMA, DR, DX, Derivation, derive
from symbn.core.second import GDZ, OUTPUTS, derive_second
from symbn.docgen.formats import WRITERS, Writer, tex_lines
from symbn.docgen.formats import tex as latex  # documents print products visibly
from symbn.codegen import shares
from symbn.codegen.plan import plan
from symbn.codegen.store import CATALOGUE_DIR
from symbn.docgen.evidence import BACKWARD, ModuleChecks, ProofOutcome, kernel_excerpt, measure, prove_many, signature
from symbn.docgen import kernelform
from symbn.codegen.elementwise import SHIFT, XS
from symbn.core.graph import ELEM, REDUCE
from symbn.core.printing import latex_name
from symbn.templating import render
from symbn.core.describe import axis_names
from symbn.core.spec import PRESETS, RUNNING, Spec
from symbn.core.symbols import BETA, GAMMA

SIGNATURE = "symbn derivation document"  # in a comment at the top of every file written here
TEMPLATES = {"md": "docs/derivation.md.j2", "html": "docs/derivation.html.j2", "tex": "docs/derivation.tex.j2"}
# Measured numbers (finite-difference errors, the Taylor slope) sit between these markers: they depend on the CPU
# and on Numba's thread count in their last digits, so the freshness check compares everything but them.
MEASURED = {"md": ("<!-- measured -->", "<!-- /measured -->"), "html": ("<!-- measured -->", "<!-- /measured -->"),
            "tex": ("% measured", "% /measured")}


@dataclass(frozen=True)
class Evidence:
    proofs: list[ProofOutcome]
    modules: list[ModuleChecks]
    second: list[ProofOutcome] = field(default_factory=list)  # the double backward's proofs


def gather(specs: list[Spec], jobs: int | None = None, generated: Path = CATALOGUE_DIR) -> dict[Spec, Evidence]:
    proofs, second = prove_many(specs, jobs), prove_many(specs, jobs, order=2)
    return {spec: Evidence(proofs[spec], measure(spec, generated), second[spec]) for spec in specs}


def document(spec: Spec, fmt: str, evidence: Evidence, link_base: str | None) -> str:
    """The document for *spec* in *fmt*; *link_base* is how the document reaches generated/ (None: no links)."""
    w = WRITERS[fmt]
    ctx = _context(derive(spec), w, evidence, link_base)
    ctx["measured_begin"], ctx["measured_end"] = MEASURED[fmt]
    ctx["signature"] = SIGNATURE
    return render(TEMPLATES[fmt], ctx)


# --- naming and small pieces of mathematics -----------------------------------------------------------------------

def _set(d: Derivation) -> dict:
    """Shapes and sizes in the axis names: input, statistics, parameters, M."""
    spec = d.spec
    names = axis_names(spec)
    stat = []
    for a in range(spec.ndim):
        if a not in spec.reduce_axes:
            stat.append(names[a])
        elif spec.groups and a == spec.channel_axis:
            stat.append("G")
    m_parts = [f"({names[a]}/G)" if spec.groups and a == spec.channel_axis else names[a] for a in spec.reduce_axes]
    return dict(names=names, input=_tuple(names), stat=_tuple(stat), param=_tuple([names[a] for a in spec.param_axes]),
                m=r" \cdot ".join(m_parts), rest=[names[a] for a in range(spec.ndim) if a not in spec.param_axes])


def _tuple(parts: list[str]) -> str:
    return "(" + ", ".join(parts) + ")" if parts else "()"


def _number(v: float) -> str:
    text = f"{v:g}"
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    power = f"10^{{{int(exponent)}}}"
    return power if mantissa == "1" else rf"{mantissa} \cdot {power}"


def _assign(symbol: sympy.Symbol, e: sympy.Expr, op: str = "=") -> str:
    return f"{latex_name(symbol.name)} {op} {latex(e)}"


def _display(w: Writer, symbol: sympy.Symbol, e: sympy.Expr, op: str = "=") -> str:
    return w.display_lines(tex_lines(latex_name(symbol.name), e, op))


def _adjoint(symbol: sympy.Symbol) -> str:
    return latex_name("d" + symbol.name)


def _preset_name(spec: Spec) -> str:
    return "RMS" if spec.preset == "rms" else spec.preset.capitalize()


def _axes(axes: tuple[int, ...]) -> str:
    return ("axis " if len(axes) == 1 else "axes ") + ", ".join(map(str, axes))


def _words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --- the sections --------------------------------------------------------------------------------------------------

def _context(d: Derivation, w: Writer, ev: Evidence, link_base: str | None) -> dict:
    spec, g = d.spec, d.graph
    s = _set(d)
    kind = f"{_preset_name(spec)} norm" if spec.preset else "Custom normalization"
    title = f"{kind}" + (f", {spec.layout}" if spec.layout else "") + (f", G = {spec.groups}" if spec.groups else "")
    title += f", then {spec.epilogue}" if spec.epilogue else ", then an epilogue" if d.epilogue is not None else ""
    lay = diagram.layout(g)
    return dict(
        title=w.text(title), name=spec.name, name_code=w.code(spec.name), fmt=w.ext,
        generator=w.prose(f"Generated by symbn {__version__} (SymPy {sympy.__version__}) from spec `{spec.name}`; "
                          "do not edit: regenerate with `symbn docs` (the catalogue) or "
                          f"`symbn derive ... --format {w.ext}`."),
        spec=_spec_section(d, w, s),
        forward=_forward_section(d, w, s),
        mermaid=diagram.mermaid(lay), svg=diagram.svg(lay, f"forward graph of {spec.name}"),
        tikz=diagram.tikz(lay),
        legend=w.prose(f"Rectangles vary per element (shape ${s['input']}$), rounded boxes per statistic "
                       f"(shape ${s['stat']}$); the grey ones are the inputs. Arrows point from operand to result."),
        staged=_staged_section(d, w),
        simplification=_simplification_section(d, w),
        result=[_display(w, sym, e) for sym, e in d.coordinates + d.reductions + d.compact],
        result_note=w.prose(
            f"$\\sum$ runs over the $M = {s['m']}$ elements of one statistic; $\\sum_{{p}}$ over the axes the "
            f"parameters do not span ({', '.join(s['rest']) or 'none'})."),
        primal=d.primal,
        eval_mode=[_display(w, sym, e) for sym, e in d.eval_mode],
        eval_note=w.prose(_eval_note(d)),
        running=_running_section(d, w),
        across=_across_section(d, w),
        proofs=_proof_rows(ev.proofs, w),
        proofs_ok=all(p.error is None for p in ev.proofs),
        modules=_module_rows(ev.modules, w, link_base),
        kernel=_kernel(d, ev.modules, w),
        second=_second_section(d, w, ev.second),
        intro={k: w.prose(v.replace("{count}", str(len(d.steps)))) for k, v in _INTRO.items()},
    )


_INTRO = {
    "staged": ("Reverse mode visits the {count} forward nodes last to first. When a node is visited its adjoint is "
               "complete, because every node that uses it came later in the forward and so earlier here. The node "
               "multiplies its adjoint by its local derivatives and passes the products on to its operands; a "
               "per-element adjoint passed to a statistic is summed over the set, and a statistic's adjoint passed "
               "to its summand reaches every element of the set."),
    "compact": "The compact backward:",
    "primal": "The compact backward, in the primal $x$ (there is no affine normalized coordinate):",
    "proof": ("For each set size $M$ below, the forward is written out element by element for a small tensor with "
              "the spec's axes, groups and parameter axes; SymPy differentiates $L = \\sum \\mathrm{d}y \\cdot y$ directly, "
              "and the staged and the compact programs run on the same tensor with exact rational inputs. Every "
              "difference must be exactly zero."),
    "fd": ("`symbn.codegen.check.run` with seed 0 in float64: central differences of $L = \\sum \\mathrm{d}y \\cdot y$ for every "
           "gradient (relative error), the Taylor test (the remainder after the gradient term must shrink like "
           "$h^2$: slope 2), $\\sum \\mathrm{d}x = 0$ over each set where the forward is shift-invariant, and eval mode: "
           "central differences of `forward_eval` with the running statistics held fixed for `backward_eval`, or, "
           "where there are no running statistics, `forward_eval` equal to `forward_train`'s $y$. These inputs are "
           "small, so the module takes its small-input path; the rows marked (large path) repeat the checks with "
           "the large path forced, and for the NumPy module those marked (one-chunk path) with its small path's "
           "passes over the input as one chunk, which inputs past a few thousand elements take. The measured values "
           "vary in their last digits with the CPU and Numba's thread count."),
}


def _spec_section(d: Derivation, w: Writer, s: dict) -> dict:
    spec = d.spec
    summary = PRESETS[spec.preset].summary if spec.preset else "a forward expression of your own"
    rows = [("input", f"a {spec.ndim}-D tensor of shape ${s['input']}$"
             + (f" (layout `{spec.layout}`)" if spec.layout else ""))]
    reduced = ", ".join(s["names"][a] for a in spec.reduce_axes)
    rows.append(("reduced axes", f"{_axes(spec.reduce_axes)} ({reduced})" + (
        f"; the channel axis {spec.channel_axis} is split into $G = {spec.groups}$ groups of $C/G$ channels, "
        "each group reduced on its own" if spec.groups else "")))
    rows.append(("statistics", f"one per index of ${s['stat']}$, each over $M = {s['m']}$ elements"))
    params = [p for p, on in (("$\\gamma$", spec.scale), ("$\\beta$", spec.center)) if on]
    rows.append(("parameters", f"{' and '.join(params)} of shape ${s['param']}$ ({_axes(spec.param_axes)})"
                 + ("; they vary inside one reduction set" if spec.param_varies else "") if params else "none"))
    rows.append(("eps", f"$\\epsilon = {_number(spec.eps)}$"))
    if any(n.central for n in d.graph.reductions):
        rows.append(("ddof", f"{spec.ddof}: central moments divide by " + (
            "$M$ (biased, as PyTorch and Keras)" if spec.ddof == 0 else "$M - 1$ (unbiased)")))
    else:
        rows.append(("ddof", f"{spec.ddof} (no central moment in this forward, so it changes nothing)"))
    if spec.tracks_running:
        rows.append(("running statistics", f"{spec.running} convention, momentum {spec.momentum:g}"))
    else:
        rows.append(("running statistics", "none: the statistics do not span the batch axis 0, so eval mode uses "
                     "the input's own statistics (section 5)"))
    forward = sympy.Symbol("z" if d.epilogue is not None else "y")
    if d.epilogue is not None:
        backward = ", ".join(f"${_assign(s_, e)}$" for s_, e in d.epilogue.backward)
        rows.append(("epilogue", f"${_assign(sympy.Symbol('y'), d.epilogue.forward)}$ after the normalization "
                     f"${latex_name('z')}$ (in $r$, the residual, where it adds one). Its gradients, by SymPy's diff "
                     f"(the step $\\theta$ is relu's mask, taken as 0 at the kink as PyTorch does): {backward}. Every "
                     "section below derives the normalization $z$, whose upstream gradient is $\\mathrm{d}z$ where "
                     "it would be $\\mathrm{d}y$; the proofs run on the whole fused backward, away from the kinks"))
    off = [f"${latex_name(leaf)} = {value}$" for leaf, value, on in (("beta", 0, spec.center), ("gamma", 1, spec.scale))
           if not on and leaf in spec.expression]
    expression = w.code(spec.expression) + (w.prose(" with " + _words(off)) if off else "")
    return dict(summary=w.prose(summary[0].upper() + summary[1:] + "."), expression=expression,
                full=_display(w, forward, d.graph.definition()),
                rows=[(w.text(k), w.prose(v)) for k, v in rows])


_KIND = {ELEM: "per element", REDUCE: "statistic (a reduction over the set)", "stat": "per statistic"}


def _forward_section(d: Derivation, w: Writer, s: dict) -> list[dict]:
    return [dict(number=i, math=w.math(_assign(n.symbol, n.expr)), op=w.text(n.op), kind=w.text(_KIND[n.kind]),
                 shape=w.math(s["input"] if n.kind == ELEM else s["stat"]))
            for i, n in enumerate(d.graph.nodes, 1)]


def _staged_section(d: Derivation, w: Writer) -> dict:
    total = len(d.steps)
    steps = []
    for k, step in enumerate(d.steps, 1):
        n = step.node
        if step.value is None:
            adjoint = w.prose(f"${latex_name(step.adjoint.name)}$ is given (the gradient arriving at the output).")
        else:
            adjoint = w.prose(f"Its adjoint is complete: ${_assign(step.adjoint, step.value)}$.")
        per_element = " (for each element of the set)" if n.kind == REDUCE else ""
        partials = [w.math(rf"\frac{{\partial {latex_name(n.name)}}}{{\partial {latex_name(c.target.name)}}} = "
                           + latex(c.partial)) + w.text(per_element) for c in step.contributions]
        passes = [w.math(rf"{_adjoint(c.target)} \mathrel{{{{+}}{{=}}}} {latex(c.value)}") for c in step.contributions]
        steps.append(dict(number=k, forward_number=total + 1 - k, name=w.math(latex_name(n.name)),
                          node=w.math(_assign(n.symbol, n.expr)), adjoint=adjoint, partials=partials, passes=passes))
    final = [_display(w, sym, e) for sym, e in d.staged if sym in (DX, DGAMMA, DBETA)]
    return dict(count=total, steps=steps, final=final)


def _simplification_section(d: Derivation, w: Writer) -> list[dict]:
    out = []
    for k, stage in enumerate(d.stages, 1):
        title, explain = _STAGES[stage.key]
        sentence = explain(d) + ("" if stage.changed else " For this spec nothing changes at this stage.")
        out.append(dict(number=k, title=w.text(title), sentence=w.prose(sentence),
                        math=_display(w, DX, stage.dx) if stage.changed else None))
    return out


def _identity_text(d: Derivation) -> str:
    return _words([f"${latex(a)} = {latex(b)}$" for a, b in d.identities]) if d.identities else "none"


def _zero_sums(d: Derivation) -> list[str]:
    return [f"$\\sum {latex_name(s.name)} = \\sum\\left({latex(e)}\\right) = 0$" for s, e in d.vanishing]


def _first_elementwise(d: Derivation, shown: int = 3) -> str:
    nodes = [f"${_assign(n.symbol, n.expr)}$" for n in d.graph.nodes if n.kind == ELEM]
    return _words(nodes[:shown]) + (", ..." if len(nodes) > shown else "")


def _coordinate_text(d: Derivation) -> str:
    if d.primal:
        return ("No affine normalized coordinate exists for this forward (its derivative in $x$ still depends on "
                "$x$), so the result stays in $x$; the set constants are pulled out of the sums once more.")
    c = d.coordinate_change
    text = f"Change to the normalized coordinate ${_assign(c.symbol, c.value)}$"
    if c.x is not None:
        text += f", that is $x = {latex(c.x)}$"
    if c.chain:
        text += ", and write the statistics behind the inverse scale in it: " + _words(
            [f"${_assign(s, e)}$" for s, e in c.chain])
    return text + ". Then pull the set constants out of the sums again: the sums are now of $\\mathrm{d}y$ and $\\hat{x}$."


# Title and explanation of each stage of the simplification, by Stage.key.
_STAGES = {
    "inline": ("Inline", lambda d: (
        f"Substitute each staged adjoint into the ones that use it, so that the {len(d.steps)} separate steps become "
        "one expression for $\\mathrm{d}x$ in the forward's nodes.")),
    "elementwise_in_x": ("Elementwise nodes in x and the statistics", lambda d: (
        "Write every per-element node (" + _first_elementwise(d)
        + ") in $x$ and the statistics, so that each sum shows exactly what varies over the set.")),
    "constants_out": ("Set-constant factors out of the sums", lambda d: (
        "Pull every factor that is constant over one reduction set out of the sums: $\\sum c v = c \\sum v$ and "
        "$\\sum 1 = M$. The statistics are such constants"
        + (", while $\\gamma$ varies inside a set here (it spans reduced axes) and stays inside."
           if d.spec.param_varies and GAMMA in d.graph.leaves else
           (", and so is $\\gamma$ (one value per set)." if GAMMA in d.graph.leaves else ".")))),
    "identities": ("Sums the forward defines", lambda d: (
        "Replace the sums that the forward's own statistics define: " + _identity_text(d) + "."
        + (" This is where " + _words(_zero_sums(d)) + (" act" if len(_zero_sums(d)) > 1 else " acts")
           + ": the terms that carried them cancel."
           if _zero_sums(d) else ""))),
    "coordinate": ("Normalized coordinate", _coordinate_text),
    "named_reductions": ("Named reductions, factored", lambda d: (
        "Give each remaining sum a name (" + _words([f"${_assign(s, e)}$" for s, e in d.reductions] or ["none"])
        + ") and keep the shortest factored form. This is the compact backward the kernels compute.")),
}


def _eval_note(d: Derivation) -> str:
    if not d.spec.tracks_running:
        return _no_running_note(d.spec)
    stats = [f"${latex_name(r.name)}$ from ${latex_name('running_' + r.name)}$" for r in d.graph.reductions]
    return ("In eval mode the statistics are constants, taken from the running statistics (" + _words(stats)
            + ", and whatever is computed from them): the paths through the sums vanish and only the direct "
            "path from $x$ to $y$ is left.")


# What the frameworks keep, for the presets whose statistics are per sample.
_FRAMEWORKS = {
    "instance": ("PyTorch's `InstanceNorm` keeps per-channel running statistics, averaged over the batch, only with "
                 "`track_running_stats=True` (by default it keeps none); `symbn.layers.InstanceNorm` offers the same "
                 "on top of the batch-norm kernels, whose eval mode holds per-channel statistics fixed."),
}


def _no_running_note(spec: Spec) -> str:
    kind = f"{_preset_name(spec)} norm" if spec.preset else "This normalization"
    frameworks = _FRAMEWORKS.get(spec.preset, "PyTorch and Keras keep no running statistics for layer, group and RMS "
                                               "norm either.")
    return (f"Eval mode uses the input's own statistics, as training does. {kind}'s statistics do not span the "
            "batch axis 0: every sample has statistics of its own, so running averages of them would be per sample, "
            "and would depend on the batch (its size and which samples it holds), not on the layer. There are no "
            "running statistics, and eval mode has no backward of its own: it is the compact backward above, with "
            f"the statistics the forward computed from the input. {frameworks}")


def _across_section(d: Derivation, w: Writer) -> dict | None:
    """Statistics across processes (symbn.codegen.shares): what each process sends per pass, how shares join, the
    statistics from a joined share, and the exact proof, run here; None where the spec's statistics do not span the
    batch axis or are not polynomials in x."""
    p = plan(d)
    s = shares.shares(p)
    if s is None:
        return None
    sums = [f"$c_{{{k}}}$" for k in range(2, s.degree + 1)]
    backward = [f"${latex_name(name.name)}$" for name, _ in p.sums]
    intro = (
        "In data-parallel training each process holds some rows of the batch, and the statistics, which span the "
        "batch axis, must be those of all rows. The generated module splits each training pass at its reductions: "
        "`partial_forward`, `combine` and `finish_forward`, then `partial_backward` and `finish_backward` "
        "(`symbn.distributed.SyncBatchNorm` runs them on MPI, one Allreduce per pass). Forward, each process sends "
        f"its count and, per statistic, the mean $m_1$ and the central sums {', '.join(sums)} of its own values: "
        f"$1 + {s.degree} S$ numbers for $S$ statistics. Backward, its count and the sums "
        f"{', '.join(backward)}: $1 + {len(p.sums)} S$ numbers. Central sums about each process's own mean join "
        "exactly, without the cancellation plain sums of powers suffer when the mean is large. Two shares "
        r"$(n_a, m_a, c_{a,k})$ and $(n_b, m_b, c_{b,k})$, with $\delta = m_b - m_a$, join as (Chan, Golub and "
        "LeVeque for $c_2$, Pebay for higher sums):")
    rounds = ""
    for r, sums in enumerate(s.rounds, 1):  # statistics that are not sums of polynomials in x
        plain = ", ".join(f"${latex(t)} = \\sum {latex(e)}$" for t, e in sums)
        rounds += (f"A statistic whose summand is not a polynomial in x waits for the statistics it reads: round {r + 1} "
                   f"of the forward sends the count and the plain sums {plain}, which add up. ")
    known: dict = {}
    statistics = []
    for step in s.steps:
        value = step.expr / step.denominator if step.reduce else step.expr
        value = sympy.simplify(value.xreplace(known))
        if step.reduce:
            known[step.symbol] = value
            statistics.append(_display(w, step.symbol, value))
    return dict(intro=w.prose(intro), join=[_display(w, sym, e) for sym, e in s.join],
                statistics_intro=w.prose(rounds + "The statistics of all rows from the joined share ($M$ its count):"),
                statistics=statistics, proof=w.prose(shares.prove(s, p) + "."))


def _running_section(d: Derivation, w: Writer) -> list[dict]:
    """The running-statistics conventions, this spec's first; none where the spec keeps no running statistics."""
    if not d.spec.tracks_running:
        return []
    out = []
    for convention in sorted(RUNNING, key=lambda c: c != d.spec.running):
        spec = d.spec if convention == d.spec.running else d.spec.with_options(running=convention, momentum=None)
        rule = RUNNING[convention]
        out.append(dict(label=w.text(rule.label), ours=convention == d.spec.running,
                        rule=w.prose(f"{rule.rule_tex}; momentum $m = {spec.momentum:g}$ by default."),
                        lines=[_display(w, s, e, r"\leftarrow") for s, e in derive(spec).running]))
    return out


def _second_section(d: Derivation, w: Writer, proofs: list[ProofOutcome]) -> dict:
    """The double backward (symbn.core.second): the staged steps, the compact result, eval mode, the proofs. Adjoints
    are written with a bar: the upstream gradients are those of dx, dgamma, dbeta, the results those of dy, x, gamma."""
    so = derive_second(d)
    evaluation = derive_second(d, "eval") if d.running else None
    bar = _bars(so) | (_bars(evaluation) if evaluation else {})

    def show(program):
        return [_display(w, s.xreplace(bar), e.xreplace(bar)) for s, e in program]

    def name(s):
        return f"${latex_name(s.xreplace(bar).name)}$"

    firsts = {"ggx": DX, "gggamma": DGAMMA, "ggbeta": DBETA, "ggr": DR}
    terms = " + ".join(f"\\sum {latex_name(u.xreplace(bar).name)}\\, {latex_name(firsts[u.name].name)}"
                       for u in so.upstream)
    outputs = [OUTPUTS[leaf] for leaf in so.leaves]  # after an epilogue gdz is a step on the way, not an output
    intro = (f"The gradient of the gradient, as gradient penalties, Hessian-vector products and meta-learning need: "
             f"given upstream gradients {', '.join(map(name, so.upstream))} of the backward's outputs, the gradients "
             f"{', '.join(map(name, outputs))} with respect to "
             f"{', '.join(f'${latex_name(leaf.name)}$' for leaf in so.leaves)} of $L_2 = {terms}$. symbn runs the same "
             "reverse mode over the compact backward, as a graph with its own statistics and sums, one step per node, "
             "and simplifies the result with the same rewrites. The generated modules run it as `double_backward`.")
    if d.epilogue is not None:
        intro += (" After the epilogue: its masks are flat between the kinks, so the normalization's double backward "
                  "is derived with $\\mathrm{d}z$ as its upstream gradient (giving $\\overline{\\mathrm{d}z}$) "
                  "and joined by the chain rule through the epilogue's own derivatives; the gradients with respect "
                  "to $r$ and $\\beta$ are 0, and the proof checks that too.")
    return dict(
        intro=w.prose(intro),
        staged=show(so.staged),
        compact=show(so.head + so.coordinates + so.reductions + so.compact),
        eval=show(evaluation.compact) if evaluation else [],
        eval_note=w.prose("In eval mode the statistics are constants (the running ones), and the double backward "
                          "needs no sums over the set:" if evaluation else ""),
        proof_note=w.prose("Both forms are checked against SymPy's own derivative of $L_2$, the compact backward "
                           "written out element by element over a small tensor, exactly, as in section 6:"),
        proofs=_proof_rows(proofs, w),
        ok=all(p.error is None for p in proofs),
    )


def _bars(so) -> dict:
    """Display names of the second order's adjoints: the upstream gradients as the adjoints of dx, dgamma, dbeta, each
    backward node's adjoint g<node> as bar:<node>."""
    nodes = {n.symbol.name for n in so.nodes} | {leaf.name for leaf in so.leaves}
    out = {u: sympy.Symbol("bar:" + {"ggx": "dx", "gggamma": "dgamma", "ggbeta": "dbeta", "ggr": "dr"}[u.name],
                           real=True) for u in so.upstream}
    out[GDZ] = sympy.Symbol("bar:dz", real=True)  # after an epilogue: the normalization's gradient of dz
    for s, _ in so.staged + so.compact:
        if s.name.startswith("g") and s.name[1:] in nodes:
            out[s] = sympy.Symbol("bar:" + s.name[1:], real=True)
    return out


def _proof_rows(proofs: list[ProofOutcome], w: Writer) -> list[dict]:
    rows = []
    for p in proofs:
        outcome = "equal exactly" if p.error is None else "FAILED: " + p.error
        rows.append(dict(m=str(p.set_size), shape=w.text(str(p.shape) if p.shape else "-"),
                         checked=w.text(", ".join(p.checked) or "-"), outcome=w.text(outcome), ok=p.error is None))
    return rows


def _module_rows(modules: list[ModuleChecks], w: Writer, link_base: str | None) -> list[dict]:
    out = []
    for m in modules:
        if m.from_catalog and link_base is not None:
            where = w.link(f"generated/{m.path.name}", f"{link_base}/{m.path.name}")
        else:
            where = w.prose(f"`{m.path.name}`, generated on the fly by `symbn.load` (write it with `symbn generate`)")
        rows = [dict(check=w.text(r.name), value=f"{r.value:.2f}" if "slope" in r.name else f"{r.value:.1e}",
                     limit=w.text(r.limit), outcome=w.text("passed" if r.ok else "FAILED"), ok=r.ok)
                for r in m.results]
        out.append(dict(backend=w.text(m.backend), where=where, hash=w.code(m.content_hash),
                        shape=w.text(str(m.shape)), rows=rows, ok=all(r.ok for r in m.results)))
    return out


def _kernel(d: Derivation, modules: list[ModuleChecks], w: Writer) -> dict:
    numba = next(m for m in modules if m.backend == "numba")
    module = numba.path.read_text()
    kernels, text = kernel_excerpt(module)
    where = f"generated/{numba.path.name}" if numba.from_catalog else f"{numba.path.name} (symbn.load)"
    reading = None
    if kernels:
        # checked here, as the document is built: the coefficients give back the compact dx, and the quoted kernel
        # prints them (kernelform.KernelFormError otherwise, and no document)
        form = kernelform.verify(kernelform.kernel_form(d.spec))
        kernelform.check_module(form, text, where)
        reading = _reading(d, form, w, signature(module, "backward_staged"))
    return dict(code=w.verbatim(text), fence=escape.markdown_fence(text), found=bool(kernels), entry=w.code(BACKWARD),
                kernels=w.prose(_words([f"`{k}`" for k in kernels]) if kernels else "none"), where=w.code(where),
                reading=reading)


# What each Coefficient.kind says of a coefficient, in the list of section 7.
_WHERE = {
    "stat": "fixed per statistic",
    "param": "one value per parameter index",
    "both": "varies with the statistic and the parameter index",
    "scalar": "a constant",
}


def _reading(d: Derivation, form: kernelform.KernelForm, w: Writer, staged: str | None) -> dict:
    """Section 7's explanation: the compact dx as the kernel runs it, each coefficient in the document's notation,
    why they are hoisted and why x is shifted, and what was checked (kernelform.verify, already run)."""
    if not form.stages:
        raise kernelform.KernelFormError(f"{d.spec.name}: the kernel's coefficients were not checked")
    spelled = {XS: r"\left(x - " + latex_name("shift") + r"\right)"}

    def name(k: sympy.Symbol) -> str:
        return f"${latex_name(k.name)}$"

    coefficients = list(form.coefficients)
    formula = [w.display(f"{latex_name(t.name)} = {latex(v, spelled)}") for t, v in form.temps]
    formula.append(w.display(f"{latex_name('dx')} = {latex(form.dx, spelled)}"))
    items = [w.math(f"{latex_name(c.symbol.name)} = {latex(c.expr)}")
             + w.prose(f" (`{c.symbol.name}`): {_WHERE[c.kind]}") for c in coefficients]
    if form.shifted:
        items.append(w.math(f"{latex_name('shift')} = {latex_name(form.mean.name)}")
                     + w.prose(f" (`shift`): ${latex_name(form.mean.name)}$ rounded to the input's dtype"))
    temps = f" (and {_words([name(t) for t, _ in form.temps])})" if form.temps else ""
    intro = ("The loop that writes $\\mathrm{d}x$ does not evaluate the compact $\\mathrm{d}x$ of section 4 as written: "
             "it runs it rearranged, in the kernel's names" + (", with $x - \\mathrm{shift}$ for `xs`" if form.shifted
                                                                else "") + ":")
    by_kind = {kind: [name(c.symbol) for c in coefficients if c.kind == kind] for kind in _WHERE}
    hoisted = []
    if form.factors:
        spelled_factors = [f"${latex(f, spelled)}$" for f in form.factors]
        hoisted.append("The coefficients are the compact $\\mathrm{d}x$ multiplied out"
                       + (", with $x = \\left(x - \\mathrm{shift}\\right) + \\mathrm{shift}$," if form.shifted else "")
                       + " and its terms collected by the per-element factor they carry ("
                       + ", ".join(spelled_factors) + " or none).")
    if form.columns:
        hoisted.append(f"`{BACKWARD}` computes every coefficient before the kernel runs, as an array with one value "
                       "per statistic (in float64, cast to the input's dtype), and the kernel reads the value of each "
                       "element's column.")
    else:
        if by_kind["stat"]:
            hoisted.append(f"{_words(by_kind['stat'])} {'are' if len(by_kind['stat']) > 1 else 'is'} computed once "
                           "per statistic, in float64 from the statistics and the sums just taken and cast to the "
                           "input's dtype, before the loop over that statistic's elements starts.")
        if by_kind["param"]:
            hoisted.append(f"{_words(by_kind['param'])} {'vary' if len(by_kind['param']) > 1 else 'varies'} along "
                           f"the parameter axes inside a set: `{BACKWARD}` casts "
                           + ("them" if len(by_kind["param"]) > 1 else "it")
                           + " once to an array, which the loop reads per element.")
        if by_kind["both"]:
            plural = len(by_kind["both"]) > 1
            hoisted.append(f"{_words(by_kind['both'])} {'vary' if plural else 'varies'} with both the statistic and "
                           f"the parameter index and {'are' if plural else 'is'} computed per element.")
    if form.columns or by_kind["stat"]:
        held = ["the statistics", "the named sums"] + [f"${latex_name(leaf.name)}$" for leaf in (GAMMA, BETA) if any(
            leaf in c.expr.free_symbols for c in coefficients if c.kind == "stat")]
        hoisted.append("Everything a per-statistic coefficient holds (" + _words(held)
                       + ") is constant over the $M$ elements of one statistic, so it is worked out once rather than "
                       "$M$ times: each element costs only the few operations of the line above, not the "
                       "whole compact formula.")
    if form.others:
        hoisted.append(f"The loop's other coefficients ({_words([name(k) for k in form.others])}) serve the "
                       "parameter-gradient sums it adds up beside $\\mathrm{d}x$.")
    if form.shifted:
        mu = latex_name(form.mean.name)
        shift = f"$\\mathrm{{shift}}$ is ${mu}$ rounded to the input's dtype."
        if any(XS in m.free_symbols for _, m in form.sums):
            shift += (" The backward's sums are taken just before, in one pass about the same shift, as "
                      + _words([f"${latex_name(q.name)} = \\sum\\left({latex(m, spelled)}\\right)$"
                                for q, m in form.sums])
                      + ", and the named sums formed from them. Summed about zero instead, the sum of products with "
                      f"$x$ would be large wherever ${mu}$ is large against the spread of $x$, and the named sum a "
                      "difference of two such large numbers, most of whose digits cancel; about a shift near "
                      f"${mu}$ the terms are small and nothing cancels.")
        shift += (" In the input's dtype, $x - \\mathrm{shift}$ is then exact or nearly so (float32 stays float32)")
        carry = [name(c.symbol) for c in coefficients if {SHIFT, form.mean} <= c.expr.free_symbols]
        if carry:
            shift += (f", and the small difference between ${mu}$ and the shift enters {_words(carry)} in float64")
        shift += ". The value of the shift changes nothing in exact arithmetic: the check below holds for any value."
    else:
        shift = ("There is no shift here: no mean of $x$ is among the statistics the backward reads, so the loop "
                 "reads $x$ itself.")
    how = "expands to 0" if form.stages == ("expand",) else "simplifies to 0"
    coordinate = (" (with " + _words([f"${_assign(c, e)}$" for c, e in d.coordinates]) + " written out)"
                  if d.coordinates else "")
    check = ("SymPy substitutes these coefficients" + temps + " into the line above"
             + (" and $x - \\mathrm{shift}$ for `xs`" if form.shifted else "")
             + ", and compares the result with the compact $\\mathrm{d}x$ of section 4" + coordinate
             + f": the difference {how}" + (", with the shift left a free symbol" if form.shifted else "")
             + ". This is checked each time the document is built, and the build fails if it does not hold; "
             "it also checks that the kernel above prints exactly these coefficients and this line.")
    return dict(intro=w.prose(intro), formula=formula, coefficients=items, hoisted=w.prose(" ".join(hoisted)),
                shift_title=w.text("Why a shift." if form.shifted else "No shift."), shift=w.prose(shift),
                check=w.prose(check),
                staged=w.prose(f"To set the optimized kernel beside the staged backward of section 3, the module also "
                               f"has `{staged}`: the same gradients, one adjoint per forward node as in section 3, "
                               "in float64; slower, for teaching and checking.") if staged else None)


# --- the catalogue: docs/ --------------------------------------------------------------------------------------------

DOC_FORMATS = ("md", "html")


def index(specs: list[Spec], fmt: str) -> str:
    w = WRITERS[fmt]
    rows = []
    for spec in specs:
        d = derive(spec)
        s = _set(d)
        kind = f"{_preset_name(spec)} norm" if spec.preset else "custom"
        rows.append(dict(name=w.code(spec.name), kind=w.text(kind + (f", {spec.layout}" if spec.layout else "")
                                                               + (f", G = {spec.groups}" if spec.groups else "")),
                         m=w.math(f"M = {s['m']}"), dx=w.math(f"{latex_name('dx')} = {latex(d.dx)}"),
                         md=w.link("Markdown", f"{spec.name}.md"), html=w.link("HTML", f"{spec.name}.html")))
    return render("docs/derivation_index." + fmt + ".j2", dict(
        rows=rows, signature=SIGNATURE, generator=w.prose(f"Generated by symbn {__version__} (SymPy {sympy.__version__}) with "
                                     "`symbn docs`; do not edit."),
        intro=w.prose("One document per catalogue entry: the spec, the forward graph, the staged backward (one step "
                      "per forward node), the simplification to the compact form, eval mode and running statistics, "
                      "the proofs and finite-difference checks, and the generated Numba backward kernel. In the compact "
                      "$\\mathrm{d}x$ below, $\\Sigma_{\\mathrm{d}y} = \\sum \\mathrm{d}y$, "
                      "$\\Sigma_{\\mathrm{d}y\\,\\hat{x}} = \\sum \\mathrm{d}y \\cdot \\hat{x}$ and so on "
                      "are sums over the $M$ elements one statistic sees.")))


def passed(evidence: Evidence) -> bool:
    return (all(p.error is None for p in evidence.proofs + evidence.second)
            and all(r.ok for m in evidence.modules for r in m.results))


def catalog_documents(specs: list[Spec] | None = None, jobs: int | None = None,
                      generated: Path = CATALOGUE_DIR) -> tuple[dict[str, str], bool]:
    """Every file of docs/ by name (NAME.md and NAME.html per spec, index.md and index.html), and whether every
    proof and check passed."""
    from symbn.codegen.catalogue import CATALOG

    specs = list(CATALOG if specs is None else specs)
    evidence = gather(specs, jobs, generated)
    files = {f"{spec.name}.{fmt}": document(spec, fmt, evidence[spec], link_base="../generated")
             for spec in specs for fmt in DOC_FORMATS}
    files.update({f"index.{fmt}": index(specs, fmt) for fmt in DOC_FORMATS})
    return files, all(passed(e) for e in evidence.values())


def single(spec: Spec, fmt: str, out_dir: Path | None, jobs: int | None = None,
           generated: Path = CATALOGUE_DIR) -> tuple[str, bool]:
    """The document for one spec (``symbn derive --format``), linking *generated* relative to *out_dir*."""
    evidence = gather([spec], jobs, generated)[spec]
    text = document(spec, fmt, evidence, link_base=relative_link(generated, out_dir or Path.cwd()))
    return text, passed(evidence)


def mask_measured(text: str) -> str:
    """*text* with every number between the measured-value markers replaced by '#'."""
    for begin, end in {v for v in MEASURED.values()}:
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        text = pattern.sub(lambda m: re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "#", m.group(0)), text)
    return text


def stale(out_dir: Path, files: dict[str, str]) -> list[str]:
    """Differences between *files* and *out_dir*, measured values aside (empty: fresh). Only documents written here
    count as left over: docs/ holds other documents too."""
    from symbn.codegen.store import folder_diffs

    def ours(path: Path) -> bool:
        return path.suffix in (".md", ".html") and SIGNATURE in path.read_text(errors="replace")[:300]

    return folder_diffs(out_dir, files, ours, mask_measured)


def write(out_dir: Path, files: dict[str, str]) -> list[Path]:
    from symbn.codegen.store import check_targets, write_atomic

    check_targets(out_dir / name for name in files)
    changed = []
    for name, text in sorted(files.items()):
        path = out_dir / name
        if not path.is_file() or path.read_text(errors="replace") != text:
            write_atomic(path, text)
            changed.append(path)
    return changed


def relative_link(generated: Path, out_dir: Path) -> str:
    return os.path.relpath(generated, out_dir).replace(os.sep, "/")
