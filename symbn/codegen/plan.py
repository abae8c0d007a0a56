"""From a derivation to a kernel plan: the block view of the input and the statements of every kernel.

The input is viewed through *blocks*: adjacent axes that are all reduced or all kept, and all inside or all outside
the parameter axes, are merged (a grouped channel axis becomes a kept block of G and a reduced block of C/G). Batch
norm NCHW becomes (N | C | H*W) with N and H*W reduced; group norm NHWC becomes (N | H*W | G | C/G). Every layout is
then one loop nest over kept blocks (one statistic each) around loops over reduced blocks, the last block
innermost, which is the contiguous one. The plan holds SymPy expressions; printers turn them into code per backend.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy

from symbn.core.derive import DR, DX, Derivation
from symbn.core.describe import axis_names, describe_spec, set_size_text
from symbn.core.graph import ELEM, REDUCE
from symbn.core.second import GDY, GDZ
from symbn.core.symbols import BETA, DZ, EPS, GAMMA, M, Z, rsum


@dataclass(frozen=True)
class Block:
    axes: tuple[int, ...]  # axes of the input merged into this block
    split: str | None  # "groups" or "within" when the block is a part of the grouped channel axis
    reduced: bool
    param: bool


@dataclass(frozen=True)
class StatStep:
    """One per-statistic step of a forward: a reduction (a pass over the set) or a scalar formula."""

    symbol: sympy.Symbol
    expr: sympy.Expr  # the summand (reductions) or the formula (scalar steps)
    reduce: bool
    denominator: sympy.Expr = sympy.Integer(1)


@dataclass(frozen=True)
class Plan:
    derivation: Derivation
    blocks: tuple[Block, ...]
    train_steps: tuple[StatStep, ...]  # statistics of the batch, in order
    # Eval mode's statistics: computed from the running ones, or, where the spec keeps none, from the batch's (only
    # the exact path of forward_train then maps batch statistics to y through them)
    eval_steps: tuple[StatStep, ...]  # the scalar steps eval mode needs, computed from the reductions' values
    eval_stats: tuple[sympy.Symbol, ...]  # statistics the eval-mode kernels (y from given statistics) read
    y: sympy.Expr  # output element in x, gamma, beta and statistics
    saved: tuple[sympy.Symbol, ...]  # statistics forward_train returns for backward
    running: tuple[tuple[sympy.Symbol, sympy.Symbol, sympy.Expr], ...]  # (running, batch statistic, update); ()
    # where the spec keeps no running statistics
    coordinates: tuple[tuple[sympy.Symbol, sympy.Expr], ...]
    sums: tuple[tuple[sympy.Symbol, sympy.Expr], ...]  # named reductions: (name, summand)
    dx: sympy.Expr
    param_sums: tuple[tuple[sympy.Symbol, sympy.Expr], ...]  # (dgamma | dbeta, summand of psum)
    eval_dx: sympy.Expr | None  # None where the spec keeps no running statistics: no eval backward of its own
    eval_param_sums: tuple[tuple[sympy.Symbol, sympy.Expr], ...]
    uses_eps: bool
    # what the later stages need of the derivation, taken here so that none of them goes back into symbn.core
    train_out: tuple[sympy.Symbol, ...]  # statistics forward_train hands on: the saved ones and every batch reduction
    batch_stats: tuple[sympy.Symbol, ...]  # the reductions of the forward, in graph order
    params: tuple[str, ...]  # "gamma", "beta": the parameters the forward has
    central: bool  # a reduction is a central moment (training needs M > 1)
    op_counts: dict
    description: tuple[str, ...]  # the spec in words (symbn.core.describe)
    axis_names: tuple[str, ...]
    set_size_text: str  # M in the sizes of the axes, e.g. N*H*W
    second: tuple  # the double backward, training and eval mode (None without running statistics): core.second
    # An epilogue (symbn.core.epilogue) is fused: y above is the epilogue's output, and every backward expression
    # reads dy through dz = dy*f'(z, r), with z recomputed from x and the statistics; dr its gradient of r.
    epilogue: bool = False
    dr: sympy.Expr | None = None  # None: no residual input
    backward_params: tuple[str, ...] = ()  # the parameters the backward reads: gamma, and beta inside an epilogue

    @property
    def spec(self):
        return self.derivation.spec


def blocks(spec) -> tuple[Block, ...]:
    parts = []
    for a in range(spec.ndim):
        reduced, param = a in spec.reduce_axes, a in spec.param_axes
        if spec.groups and a == spec.channel_axis:
            parts.append(Block((a,), "groups", False, param))
            parts.append(Block((a,), "within", True, param))
        else:
            parts.append(Block((a,), None, reduced, param))
    merged: list[Block] = []
    for b in parts:
        last = merged[-1] if merged else None
        if last and not last.split and not b.split and (last.reduced, last.param) == (b.reduced, b.param):
            merged[-1] = Block(last.axes + b.axes, None, b.reduced, b.param)
        else:
            merged.append(b)
    return tuple(merged)


def plan(d: Derivation, second: tuple = (None, None)) -> Plan:
    """The plan of *d*'s kernels; *second*: its double backward (symbn.core.second.second_orders), derived beside it
    before planning, so that no later stage goes back into symbn.core."""
    g = d.graph
    order = [n.symbol for n in g.nodes]
    stat_symbols = {n.symbol for n in g.nodes if n.kind != ELEM}
    base = g.base()
    steps = []
    for n in g.nodes:
        if n.kind == REDUCE:
            (arg,) = n.operands
            (summed,) = n.expr.atoms(rsum)
            steps.append(StatStep(n.symbol, base.get(arg, arg), True, sympy.simplify(summed / n.expr)))
        elif n.kind != ELEM:
            steps.append(StatStep(n.symbol, n.expr, False))

    def stats_in(exprs) -> list[sympy.Symbol]:
        found = {s for e in exprs for s in e.free_symbols if s in stat_symbols}
        return sorted(found, key=order.index)

    y = base[g.output.symbol]
    fused, dr = {}, None
    if d.epilogue is not None:  # the epilogue after z, and dz in place of the upstream gradient
        epilogue = d.epilogue.at(y)
        fused = {DZ: d.output(epilogue.backward, DZ)}
        second = tuple(_fused_second(so, {Z: y} | fused) if so is not None else None for so in second)
        dr = d.output(epilogue.backward, DR) if epilogue.residual else None
        y = epilogue.forward
    sums = tuple((s, e.args[0].xreplace(fused)) for s, e in d.reductions)
    param_sums = tuple((s, e.args[0].xreplace(fused)) for s, e in d.compact if s != DX)
    eval_dx = d.output(d.eval_mode, DX).xreplace(fused) if d.eval_mode else None
    eval_param_sums = tuple((s, e.args[0].xreplace(fused)) for s, e in d.eval_mode if s != DX)
    dx = d.dx.xreplace(fused)
    backward = [e for _, e in d.coordinates + sums + param_sums] + [dx] + ([dr] if dr is not None else [])
    evaluation = [e for _, e in d.coordinates + eval_param_sums] + [e for e in (eval_dx, y) if e is not None]
    needed = _closure(set(stats_in(evaluation)), steps)
    everything = backward + evaluation + [s.expr for s in steps]
    saved = tuple(stats_in(backward))
    batch_stats = tuple(n.symbol for n in g.reductions)
    return Plan(
        derivation=d,
        blocks=blocks(d.spec),
        train_steps=tuple(steps),
        eval_steps=tuple(s for s in steps if not s.reduce and s.symbol in needed),
        eval_stats=tuple(stats_in(evaluation)),
        y=y,
        saved=saved,
        running=tuple((r, n.symbol, e) for (r, e), n in zip(d.running, g.reductions)),
        coordinates=d.coordinates,
        sums=sums,
        dx=dx,
        param_sums=param_sums,
        eval_dx=eval_dx,
        eval_param_sums=eval_param_sums,
        uses_eps=any(e.has(EPS) for e in everything),
        train_out=tuple(sorted(set(saved) | set(batch_stats), key=order.index)),
        batch_stats=batch_stats,
        params=tuple(leaf.name for leaf in (GAMMA, BETA) if leaf in g.leaves),
        central=any(n.central for n in g.reductions),
        op_counts=d.op_counts,
        description=tuple(describe_spec(d.spec)),
        axis_names=tuple(axis_names(d.spec)),
        set_size_text=set_size_text(d.spec),
        second=tuple(second),
        epilogue=d.epilogue is not None,
        dr=dr,
        backward_params=tuple(leaf.name for leaf in (GAMMA, BETA) if leaf in g.leaves
                              and (leaf == GAMMA or d.epilogue is not None)),
    )


def _fused_second(so, fused: dict):
    """The double backward after an epilogue as the loop kernels take it: dz as dy times its mask and z as the
    normalization's output (*fused*), and the normalization's gdz written into gdy = f_z*gdz + f_r*ggr."""
    out = dict(so.compact)
    gdy = out.pop(GDY).xreplace({GDZ: out.pop(GDZ)})
    compact = tuple((s, e.xreplace(fused)) for s, e in [(GDY, gdy)] + list(out.items()))
    return replace(so, compact=compact, reductions=tuple((s, e.xreplace(fused)) for s, e in so.reductions))


def _closure(needed: set, steps) -> set:
    """The statistics *needed* and every scalar step they depend on."""
    out = set(needed)
    for s in reversed(steps):
        if s.symbol in out and not s.reduce:
            out |= s.expr.free_symbols - {EPS, M}
    return out
