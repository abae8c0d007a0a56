"""Kernel modules from a plan: the template context (plain strings, lists, booleans) and the rendered text."""

from __future__ import annotations

import sympy

from symbn import escape
from symbn.codegen import stamp
from symbn.codegen.backends import numba as numba_backend
from symbn.codegen.backends import numba_double, numba_small, numba_split
from symbn.codegen.double import levels as double_levels
from symbn.codegen.double import reads as double_reads
from symbn.codegen.backends import numpy as numpy_backend
from symbn.codegen.backends import numpy_small
from symbn.codegen.elementwise import used
from symbn.codegen.lowering import Lowering, lower
from symbn.codegen.plan import plan
from symbn.codegen.printers import numpy_code, reads
from symbn.codegen.key import BACKENDS, DTYPES, input_digest, module_name
from symbn.core.derive import DX, derive
from symbn.core.second import GGR, second_orders
from symbn.core.printing import text
from symbn.core.spec import RUNNING, Spec
from symbn.core.symbols import BETA, DY, GAMMA, GGBETA, GGGAMMA, GGX, MOMENTUM, M, R, X
from symbn.templating import render
from symbn.version import __version__

_NUMPY_NAMES = {X: "xb", DY: "dyb", R: "rb"}


def module_text(spec: Spec, backend: str, command: str = "symbn generate --catalog",
                dtypes: tuple[str, ...] = DTYPES, digest: str | None = None) -> str:
    """The generated module for *spec* and *backend*, with its banner and content hash; *digest*: the input hash
    (symbn.codegen.key.input_digest), when the caller has computed it already (symbn.load, as its cache key)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}; got {backend!r}")
    if not dtypes or any(t not in DTYPES for t in dtypes):
        raise ValueError(f"dtype: expected some of {', '.join(DTYPES)}; got {', '.join(map(str, dtypes)) or 'none'}")
    digest = digest or input_digest(spec, backend, dtypes)
    module_id = f"{module_name(spec, backend, dtypes)}_{digest}"
    d = derive(spec)
    ctx = _context(lower(plan(d, second_orders(d))), backend, command)
    ctx["dtypes"] = "(" + "".join(f"np.dtype(np.{t}), " for t in dtypes).rstrip(" ") + ")"
    ctx["digest"], ctx["module_id"] = digest, module_id
    ctx["dtype_text"] = " or ".join(dtypes)
    body = render("kernels/module.py.j2", ctx)
    return stamp.stamped(body)


def _context(lw: Lowering, backend: str, command: str) -> dict:
    p = lw.plan
    spec, d = p.spec, p.derivation
    reductions = p.batch_stats
    running = [r.name for r, _, _ in p.running]
    params = list(p.params)
    residual = p.dr is not None
    grads = ["dx"] + ["dr"] * residual + ["d" + q for q in params]
    names = p.axis_names
    counts = p.op_counts
    formulas = []
    if d.epilogue is not None:  # the epilogue after z, then the normalization's backward on its gradient dz
        formulas += [f"y = {text(d.epilogue.forward)}"] + [f"{s} = {text(e)}" for s, e in d.epilogue.backward]
    formulas += [f"{s} = {text(e)}" for s, e in d.coordinates + d.reductions + d.compact]
    formulas += [f"eval mode: {s} = {text(e)}" for s, e in d.eval_mode if s == DX]
    formulas += [f"{s} <- {text(e)}" for s, e in d.running]
    eval_lines = [(r.name, run) for r, run in zip(reductions, running)]
    eval_lines += [(s.symbol.name, numpy_code(s.expr, {})) for s in p.eval_steps]
    ctx = dict(
        symbn_version=__version__, sympy_version=sympy.__version__, spec_name=escape.python_comment(spec.name),
        backend_template=f"kernels/{backend}.py.j2", command=escape.python_comment(command),
        title=escape.python_docstring(
            f"{spec.name}: {spec.preset + ' norm' if spec.preset else 'custom normalization'}, {backend} backend."),
        description=[escape.python_docstring(line) for line in p.description], numba=backend == "numba",
        shape_text="(" + ", ".join(names) + ")",
        stat_shape_text=_blocks_text(p, names, lambda b: not b.reduced),
        param_shape_text="(" + ", ".join(names[a] for a in spec.param_axes) + ("," if len(spec.param_axes) == 1 else "") + ")",
        set_size_text=p.set_size_text,
        sig_params="x, " + "r, " * residual + "".join(f"{q}, " for q in params),
        # what backward takes after dy and x: r and the parameters it reads (beta too inside an epilogue's mask)
        sig_backward="r, " * residual + "".join(f"{q}, " for q in p.backward_params),
        params=params, has_gamma="gamma" in params, has_beta="beta" in params, bparams=list(p.backward_params),
        epilogue=p.epilogue, residual=residual,
        epilogue_text=repr(text(d.epilogue.forward)) if d.epilogue is not None else None, r_in=", rb" if residual else "", dr_out=", drb" if residual else "",
        grads=["dx"] + ["d" + q for q in params],
        grads_tuple="(" + ", ".join(grads) + ("," if len(grads) == 1 else "") + ")",
        running_rule=RUNNING[spec.running].rule, tracks_running=spec.tracks_running,
        momentum_ends="Momentum {} leaves them as they are, {} replaces them by the batch's".format(
            *((0, 1) if RUNNING[spec.running].momentum_on_batch else (1, 0))),
        # what _eval_stats computes eval mode's statistics from: the running statistics, or where the spec keeps
        # none, the batch's (for the exact path of forward_train alone)
        eval_inputs=", ".join(running if spec.tracks_running else [r.name for r in reductions]),
        saved=[s.name for s in p.saved], saved_tuple=repr(tuple(s.name for s in p.saved)),
        running=running, running_tuple=repr(tuple(running)), running_convention=spec.running,
        batch_stats=[r.name for r in reductions], train_out=[s.name for s in p.train_out],
        eval_stats=[s.name for s in p.eval_stats], eval_steps=eval_lines,
        running_updates=[_running_update(r, e, {a for r, s, _ in p.running for a in (r, s)}) for r, _, e in p.running],
        central=p.central,
        ndim=spec.ndim, layout=repr(spec.layout), reduce_axes=repr(spec.reduce_axes),
        param_axes=repr(spec.param_axes), groups=repr(spec.groups), channel_axis=repr(spec.channel_axis),
        blocks=repr(tuple((b.axes, b.split, b.reduced, b.param) for b in p.blocks)),
        eps=repr(spec.eps), momentum=repr(spec.momentum), formulas=[escape.python_docstring(f) for f in formulas],
        ops=dict(forward=counts["forward"]["per_element"], backward=counts["backward"]["per_element"]),
    )
    ctx["reduced_blocks"] = repr(tuple(i for i, b in enumerate(p.blocks) if b.reduced))
    ctx["nonparam_blocks"] = repr(tuple(i for i, b in enumerate(p.blocks) if not b.param))
    # the forward nodes the staged backward and the handed-on statistics read (not y, nor gamma*xhat before + beta)
    needed = set(p.train_out) | used(p, [e for _, e in d.staged])
    if d.epilogue is not None:  # the staged backward starts from dz, which reads z
        needed.add(d.graph.output.symbol)
    for n in reversed(d.graph.nodes):
        if n.symbol in needed:
            needed |= n.expr.free_symbols
    ctx["staged_forward"] = [(n.name, numpy_code(n.expr, _NUMPY_NAMES)) for n in d.graph.nodes if n.symbol in needed]
    ctx["staged_backward"] = [(s.name, numpy_code(e, _NUMPY_NAMES)) for s, e in d.staged]
    if d.epilogue is not None:  # the epilogue's gradients first: the staged backward starts from dz
        ctx["staged_backward"][:0] = [(s.name, numpy_code(e, _NUMPY_NAMES))
                                      for s, e in d.epilogue.at(d.graph.output.symbol).backward]
    ctx["staged_uses"] = sorted(reads(ctx["staged_forward"], ctx["staged_backward"]))
    ctx["running_uses"] = sorted(reads(ctx["running_updates"]))
    ctx["split"] = _split(lw)
    # a fused epilogue has no small path yet: every input takes the general kernels
    fused = p.epilogue
    second = p.second[0] is not None
    # what the double backward's kernels take: after an epilogue, r and its upstream gradient ggr, and beta
    ctx["double_inputs"] = (["dyb", "xb", "ggxb"] + ["rb", "ggrb"] * residual + ["gamma", "gggamma", "ggbeta"]
                            + ["beta"] * fused)
    ctx["double"] = _double(lw, split=ctx["split"] is not None) if second else None
    ctx["nbs"] = ctx["nbd"] = None
    if backend == "numpy":
        ctx["np"] = numpy_backend.statements(lw)
        ctx["sm"] = None if fused else numpy_small.small(lw)
    else:
        ctx["nb"] = numba_backend.statements(lw)
        ctx["sm"] = None if fused else numba_small.small(lw)
        ctx["nb"]["math"] = ctx["nb"]["math"] or "math" in reads(ctx["sm"] or [])
        ctx["nbd"] = numba_double.double(lw) if second else None
        ctx["nbs"] = numba_split.split(lw) if ctx["split"] else None
    return ctx


def _split(lw: Lowering) -> dict | None:
    """The split-phase training passes (symbn.codegen.reductions.Shares), in float64 NumPy over the block view: the
    statistics from combined shares, and the backward's sums, dx and parameter gradients."""
    if lw.shares is None or lw.plan.blocks[0].param:  # parameters along the batch axis: no spec of ours
        return None
    p = lw.plan
    names = {X: "xc", DY: "dyc"}  # a chunk of rows, in float64

    def code(e):
        return numpy_code(e, names)

    stats = [(s.symbol.name, f"({code(s.expr)}) / ({code(s.denominator)})" if s.reduce else code(s.expr), r)
             for s, r in zip(lw.shares.steps, lw.shares.step_rounds)]
    rounds = []
    for r, sums in enumerate(lw.shares.rounds, 1):  # plain sums in the chunk's names, statistics read per chunk
        read = sorted({t.name for _, e in sums for t in e.free_symbols} - {X.name})
        chunk = {X: "xc"} | {t: f"{t.name}_c" for _, e in sums for t in e.free_symbols if t != X}
        rounds.append(dict(round=r, names=[t.name for t, _ in sums], stats=read,
                           sums=[(t.name, numpy_code(e, chunk)) for t, e in sums]))
    coordinates = [(c.name, code(e)) for c, e in p.coordinates]
    backward = coordinates + [(s.name, code(e)) for s, e in p.sums] + [(s.name, code(e)) for s, e in lw.rest]
    join = [(s.name, code(e)) for s, e in lw.shares.join]
    return dict(degree=lw.shares.degree, stats=stats, coordinates=coordinates, join=join, rounds=rounds,
                sums=[(s.name, code(e)) for s, e in p.sums], rest=[(s.name, code(e)) for s, e in lw.rest],
                taken=[(g.name, s.name) for g, s in lw.taken], dx=code(p.dx),
                uses=sorted(reads(backward + [("dx", code(p.dx))])), partial_uses=sorted(reads(backward)))


def _double(lw: Lowering, split: bool) -> dict:
    """The second order (symbn.core.second) for the NumPy backend, in float64 over chunks of rows: per mode, the
    statistics it reads, its named sums pass by pass (symbn.codegen.double), and gdy, gx, ggamma. Where the module has
    split-phase pieces, the training mode's split too: one pass of sums (a share that adds up across processes), and
    ggamma from those sums, so that it is global on every process without a second exchange."""
    p = lw.plan
    chunk = {X: "xc", DY: "dyc", GGX: "ggxc", R: "rc", GGR: "ggrc", GAMMA: "gamma_c", GGGAMMA: "gggamma_c",
             GGBETA: "ggbeta_c", BETA: "beta_c"}

    def mode(so, given: tuple) -> dict:
        out = {s.name: e for s, e in so.compact}
        coordinates, stats = double_reads(so, given)
        sums = [s for s, _ in so.reductions]
        names = chunk | {s: f"{s.name}_c" for s in stats + sums}

        def code(e):
            return numpy_code(e, names)

        passes = [[(s.name, code(e)) for s, e in level] for level in double_levels(so)]
        pieces = dict(gdy=code(out["gdy"]), gx=code(out["gx"]),
                      ggamma=code(out["ggamma"].args[0]) if "ggamma" in out else None)
        return dict(stats=[s.name for s in stats], sums=[s.name for s in sums], passes=passes,
                    coordinates=[(c.name, code(e)) for c, e in coordinates], **pieces,
                    uses=sorted(reads(passes, list(pieces.values()), [code(e) for _, e in coordinates])))

    train, evaluation = p.second
    ctx = dict(train=mode(train, p.saved), eval=mode(evaluation, p.eval_stats) if evaluation else None, split=None)
    low = lw.double[0]
    if split and low and len(low.summands) == 1 and (low.ggamma_stat is not None or not low.has_ggamma):
        (share,) = low.summands
        if not any(e.has(M) for _, e in share):  # a share knows its own rows' count, not the global one
            names = chunk | {s: f"{s.name}_c" for s in low.stats}
            sums = [(s.name, numpy_code(e, names)) for s, e in share]
            train = ctx["train"]
            partial = _chunk_lines(sums, train["coordinates"])
            finish = _chunk_lines([train["gdy"], train["gx"]], train["coordinates"])
            ggamma = numpy_code(low.ggamma_stat, {}) if low.ggamma_stat is not None else None
            ctx["split"] = dict(names=[s.name for s, _ in share], sums=sums, ggamma=ggamma, partial_lines=partial,
                                finish_lines=finish, partial_uses=sorted(reads(sums, partial)),
                                finish_uses=sorted(reads(finish, train["gdy"], train["gx"], ggamma or "")))
    return ctx


def _chunk_lines(codes, coordinates) -> list[str]:
    """What a chunk of rows sets up for *codes* (float64 NumPy in the names module._double prints): its share of x,
    dy, ggx, the parameters, statistics and sums (each *_c name the codes read), and the coordinates they read."""
    needed = reads(codes)
    kept = []
    for name, code in reversed(coordinates):
        if name in needed:
            kept.insert(0, (name, code))
            needed |= reads(code)
    loads = [f"{a}c = {a}b[sl].astype(np.float64)" for a in ("x", "dy", "ggx") if f"{a}c" in needed]
    loads += [f"{a}_c = _rows({a}, sl)" for a in ("gamma", "gggamma", "ggbeta") if f"{a}_c" in needed]
    loads += [f"{n[:-2]}_c = _rows({n[:-2]}, sl)" for n in sorted(needed) if n.endswith("_c") and n[:-2] not in
              ("gamma", "gggamma", "ggbeta")]
    return loads + [f"{name} = {code}" for name, code in kept]


def _blocks_text(p, names: list[str], keep) -> str:
    parts = []
    for b in p.blocks:
        if keep(b):
            label = "*".join(names[a] for a in b.axes)
            parts.append("G" if b.split == "groups" else f"{label}/G" if b.split == "within" else label)
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _running_update(r: sympy.Symbol, e: sympy.Expr, arrays: set) -> str:
    """The update of running statistic *r* in place: the last addition writes into it (no temporary and copy), the
    scalar coefficients multiply first (one operation on the statistics per term)."""
    names = {MOMENTUM: "momentum"}
    if not e.is_Add:
        return f"{r.name}[...] = {numpy_code(e, names, arrays)}"
    first, *rest = e.as_ordered_terms()
    return f"np.add({numpy_code(first, names, arrays)}, {numpy_code(sympy.Add(*rest), names, arrays)}, out={r.name})"
