"""The second order: reverse mode over the backward graph, and the rewrites that make the double backward compact.

The compact backward of a derivation (dx, dgamma, dbeta in dy, x, gamma, the forward's statistics and the named sums
sum_dy = sum(dy), ...) is itself a graph: the forward nodes it reads (the statistics), the normalized coordinate,
the named sums (reductions over the set), dx (elementwise) and dgamma, dbeta (sums over the axes the parameters do
not span). Reverse mode runs over that graph against upstream gradients ggx, gggamma, ggbeta of its outputs, with the
rules of :mod:`symbn.core.derive` and one more for the parameter sums:

* elementwise node ``e = f(a, s)``: ``da += de * df/da``, and a statistic operand gets ``ds += sum(de * df/ds)``;
* statistic node ``s = f(t)``: ``dt += ds * df/dt``;
* reduction ``s = sum(h(a))/D``: ``da += ds * dh/da / D`` (the statistic's adjoint, broadcast over its set);
* parameter sum ``p = psum(h(a))``: ``da += dp * dh/da`` (the parameter's adjoint, broadcast over its elements).

That gives the staged double backward, one step per node of the backward graph, and the gradients of
``L2 = sum(ggx*dx) + sum(gggamma*dgamma) + sum(ggbeta*dbeta)`` with respect to dy (gdy), x (gx) and gamma (ggamma).
The compact form comes from the derivation's own rewrites, never from a formula typed in: inline, write the
elementwise nodes in x, pull factors constant over a set out of the sums, apply the identities the forward's
statistics define (sum(x) = M*mu, ...), change to the normalized coordinate, name the sums.

In eval mode the statistics are held constant (running statistics): the backward graph is the coordinate and the
eval-mode dx, dgamma, dbeta, and nothing reduces over a set.

After an epilogue y = f(z, r) (symbn.core.epilogue) the first-order backward is the normalization's, run on
dz = dy*f_z, with dr = dy*f_r beside it. Where f is linear in z and r between its kinks (relu, max, a residual add:
every second derivative of f is 0 almost everywhere), the masks f_z, f_r do not move under a small change of x, r,
gamma or beta, so the double backward is the normalization's, derived as above with dz as its upstream gradient,
joined by the chain rule: gdy = f_z*gdz + f_r*ggr (ggr the upstream gradient of dr), gx and ggamma as the
normalization's, and the gradients with respect to r and beta are 0. The proof checks all of it, those zeros
included, against the brute-force derivative of the whole fused backward. An epilogue with second derivatives
(relu(z)*r, z**2) is refused.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import sympy

from symbn.core.derive import (DBETA, DGAMMA, DR, DX, Contribution, Derivation, Program, Step, derive,
                               in_inverse_scale, name_reductions, pull_constants, real_diff, shortest_form)
from symbn.core.graph import ELEM, REDUCE, STAT, Node
from symbn.core.spec import Spec
from symbn.core.symbols import BETA, DY, DZ, EPS, GAMMA, GGBETA, GGGAMMA, GGX, M, R, X, Z, psum, rsum, sym
from symbn.core.verify import (ATTEMPTS, POINT_RANGES, Interpreter, Proof, Singular, brute_gradient, check_equal,
                               proof_tensor, require_defined, unproved)

PSUM = "psum"  # a node of the backward graph that sums over the axes the parameters do not span (dgamma, dbeta)
MODES = ("train", "eval")

GDY, GX, GGAMMA = sym("gdy"), sym("gx"), sym("ggamma")
# After an epilogue: the normalization's double backward gives gdz (its upstream gradient is dz), and the residual's
# gradient dr has an upstream gradient of its own.
GDZ, GGR = sym("gdz"), sym("ggr")
#: The upstream gradient of each first-order output, and the second-order output of each input.
UPSTREAM = {DX: GGX, DGAMMA: GGGAMMA, DBETA: GGBETA}
OUTPUTS = {DY: GDY, DZ: GDZ, X: GX, GAMMA: GGAMMA}

# The stages of the simplification from staged to compact, as in derive.STAGES.
STAGES = ("inline", "elementwise_in_x", "constants_out", "identities", "coordinate", "named_reductions")


@dataclass(frozen=True)
class Reads:
    """What one output of the compact double backward reads: what a kernel has to have at hand to compute it."""

    output: sympy.Symbol
    statistics: tuple[sympy.Symbol, ...]  # per set: saved by forward_train (train) or from the running ones (eval),
    # those the coordinate among the elements is computed from included
    sums: tuple[sympy.Symbol, ...]  # named sums over the set (SecondOrder.reductions), first-order ones included
    elements: tuple[sympy.Symbol, ...]  # per element: dy, gamma, ggx, gggamma, ggbeta, the coordinate (xhat) or x


@dataclass(frozen=True)
class SecondOrder:
    """The double backward of one derivation in one mode. Programs are ordered assignments over the same symbols as
    the derivation's (x, dy, gamma, its statistics, its coordinates and named sums) plus ggx, gggamma, ggbeta."""

    derivation: Derivation
    mode: str  # "train" or "eval"
    nodes: tuple[Node, ...]  # the backward graph: forward statistics, coordinate, named sums, dx, dgamma, dbeta
    leaves: tuple[sympy.Symbol, ...]  # dy, x and gamma where the spec has it
    upstream: tuple[sympy.Symbol, ...]  # ggx, and gggamma / ggbeta where the spec has gamma / beta
    steps: tuple[Step, ...]  # one per backward node, last first
    staged: Program  # adjoint of every backward node, then gdy, gx (and ggamma)
    coordinates: Program  # the derivation's: the coordinate and inverse scale in x and the statistics
    first_order: Program  # the first-order named sums the staged form reads (training: derivation.reductions)
    reductions: Program  # named sums the compact double backward needs (first-order ones and new ones)
    compact: Program  # gdy, gx (and ggamma = psum(...)) in the names above
    statistics: tuple[sympy.Symbol, ...]  # per-set statistics the compact form reads, through the coordinate too
    reads: tuple[Reads, ...]  # per output: the statistics, named sums and per-element values it reads
    stages: tuple[tuple[str, Program], ...]  # the outputs after each of STAGES
    # After an epilogue: dz (and dr) from dy, z and r (derivation.epilogue.backward), which every program above reads
    # where it reads dz; z is the normalization's output. () without an epilogue.
    head: Program = ()

    @property
    def outputs(self) -> tuple[sympy.Symbol, ...]:
        return tuple(s for s, _ in self.compact)

    def output(self, program: Program, symbol: sympy.Symbol) -> sympy.Expr:
        return dict(program)[symbol]

    @property
    def gx(self) -> sympy.Expr:
        return self.output(self.compact, GX)

    @property
    def gdy(self) -> sympy.Expr:
        return self.output(self.compact, GDY)

    @property
    def ggamma(self) -> sympy.Expr | None:
        return dict(self.compact).get(GGAMMA)

    @property
    def param_sums(self) -> tuple[tuple[sympy.Symbol, sympy.Expr], ...]:
        """(output, summand) for every output that is a parameter sum: ggamma = psum(summand)."""
        return tuple((s, e.args[0]) for s, e in self.compact if isinstance(e, psum))


def derive_second(what: Spec | Derivation, mode: str = "train") -> SecondOrder:
    """The double backward of *what* (a spec or its derivation) in *mode* ("train": batch statistics, differentiated
    through; "eval": statistics held constant). Cached on the derivation's fields, as derive() is."""
    if mode not in MODES:
        raise ValueError(f"mode: got {mode!r}; expected one of {MODES}")
    d = what if isinstance(what, Derivation) else derive(what)  # derive() refuses anything but a Spec
    spec = d.spec
    if d.epilogue is not None:
        curved = _second_derivatives(d.epilogue.forward)
        if curved:
            raise ValueError(f"what: the epilogue of {spec.name}, {d.epilogue.forward} in z and r, has second "
                             f"derivatives ({', '.join(curved)}); the double backward covers epilogues linear in z "
                             f"and r between their kinks (relu, max, a residual add)")
    if mode == "eval" and not d.eval_mode:
        raise ValueError(f"mode: got 'eval'; expected 'train': {spec.name} keeps no running statistics (its statistics "
                         "do not span the batch axis), so its eval mode is its training computation")
    key = (spec.tree, spec.expression, spec.center, spec.scale, spec.ddof, spec.param_varies, spec.running,
           bool(d.eval_mode))
    return SecondOrder(d, mode, **_second(d, key, mode))


_CACHE: dict = {}  # (the fields that shape a derivation, as derive._derive is cached on, mode) -> fields


def _second_derivatives(f: sympy.Expr) -> list[str]:
    """The second derivatives of an epilogue f(z, r) that are not 0 almost everywhere, written out."""
    out = []
    for a, b in ((Z, Z), (Z, R), (R, R)):
        second = _local(_local(f, a), b)
        if second != 0:
            out.append(f"d2/d{a}d{b} = {second}")
    return out


def _second(d: Derivation, key: tuple, mode: str) -> dict:
    if (key, mode) not in _CACHE:
        _CACHE[key, mode] = _build(d, mode)
    return _CACHE[key, mode]


# --- the backward graph -----------------------------------------------------------------------------------------


def backward_graph(d: Derivation, mode: str = "train") -> tuple[tuple[Node, ...], tuple[sympy.Symbol, ...]]:
    """The nodes of the backward graph in order (those its outputs need), and its leaves (dy, x, gamma).

    Training: the forward's nodes the compact backward reads (its statistics and what they are computed from), the
    coordinates, the named sums, then dx, dgamma, dbeta. Eval: the coordinate and the eval-mode outputs; every
    statistic is a constant there, not a node."""
    g = d.graph
    leaves = tuple(s for s in (d.upstream, X, GAMMA) if s == d.upstream or s in g.leaves)
    outputs = d.compact if mode == "train" else d.eval_mode
    defs: dict[sympy.Symbol, Node] = {}
    if mode == "train":
        for n in g.nodes[:-1]:  # the output y is no operand of the backward
            defs[n.symbol] = n
    known = set(leaves) | set(defs)
    for s, e in d.coordinates:
        defs[s] = _node(s, e, "coordinate", known, defs, leaves)
        known.add(s)
    if mode == "train":
        for s, e in d.reductions:
            defs[s] = _node(s, e, "sum", known, defs, leaves, kind=REDUCE)
            known.add(s)
    for s, e in outputs:
        defs[s] = _node(s, e, "backward", known, defs, leaves, kind=PSUM if isinstance(e, psum) else None)
        known.add(s)
    # keep what the outputs need, in the order defined (forward nodes first, then coordinates, sums, outputs)
    needed, stack = set(), [s for s, _ in outputs]
    while stack:
        s = stack.pop()
        if s in defs and s not in needed:
            needed.add(s)
            stack.extend(defs[s].operands)
    order = [n.symbol for n in g.nodes[:-1]] if mode == "train" else []
    order += [s for s, _ in d.coordinates] + ([s for s, _ in d.reductions] if mode == "train" else [])
    order += [s for s, _ in outputs]
    seen, nodes = set(), []
    for s in order:
        if s in needed and s not in seen:
            seen.add(s)
            nodes.append(defs[s])
    # a coordinate may restate a forward node (xhat): it takes the later place, after what it reads
    nodes = _topological(nodes)
    if mode == "eval":  # statistics (and coordinates made of them) are constants in eval mode
        kept = {n.symbol for n in nodes if n.kind != STAT} | set(leaves)
        nodes = [replace(n, operands=tuple(o for o in n.operands if o in kept)) for n in nodes if n.kind != STAT]
    return tuple(nodes), leaves


def _node(s: sympy.Symbol, e: sympy.Expr, op: str, known: set, defs: dict, leaves: tuple,
          kind: str | None = None) -> Node:
    operands = tuple(sorted((a for a in e.free_symbols if a in known), key=lambda a: a.name))
    if kind is None:
        elementwise = any(a in leaves or defs[a].kind == ELEM for a in operands)
        kind = ELEM if elementwise else STAT
    return Node(s.name, s, e, kind, op, operands)


def _topological(nodes: list[Node]) -> list[Node]:
    """*nodes* reordered so that every node comes after its operands (stable otherwise)."""
    by_symbol = {n.symbol: n for n in nodes}
    out, done = [], set()

    def visit(n: Node) -> None:
        if n.symbol in done:
            return
        done.add(n.symbol)
        for o in n.operands:
            if o in by_symbol:
                visit(by_symbol[o])
        out.append(n)

    for n in nodes:
        visit(n)
    return out


# --- reverse mode ----------------------------------------------------------------------------------------------


class _Step(sympy.Function):
    """sign() for differentiation: piecewise constant, so its derivative is 0 wherever it is defined (SymPy leaves
    d sign(u) unevaluated unless it can tell u is real and finite, or writes a Dirac delta). At a number it is sign."""

    nargs = 1
    is_extended_real = True

    @classmethod
    def eval(cls, arg):
        if arg.is_number:
            return sympy.sign(arg)
        return None

    def fdiff(self, argindex=1):  # noqa: ARG002 - SymPy's signature; one argument
        return sympy.Integer(0)


def _steps(e: sympy.Expr) -> sympy.Expr:
    return e.replace(sympy.sign, _Step) if e.has(sympy.sign) else e


def _local(e: sympy.Expr, s: sympy.Symbol) -> sympy.Expr:
    """de/ds almost everywhere (derive's real_diff, with d sign(u) = 0)."""
    out = real_diff(_steps(e), s)
    out = out.replace(_Step, sympy.sign) if out.has(_Step) else out
    return out.replace(sympy.DiracDelta, lambda *_: sympy.Integer(0)) if out.has(sympy.DiracDelta) else out


def _reverse(nodes: tuple[Node, ...], leaves: tuple, given: dict) -> tuple[tuple[Step, ...], Program]:
    """Staged reverse mode over the backward graph: one step per node, last node first."""
    level = {leaf: ELEM for leaf in leaves} | {n.symbol: ELEM if n.kind in (ELEM, PSUM) else STAT for n in nodes}
    taken = {s.name for s in level} | {s.name for s in given.values()} | {s.name for s in OUTPUTS.values()}
    adjoint = dict(given)
    for n in nodes:
        if n.symbol not in adjoint:
            name, k = "g" + n.name, 2
            while name in taken:
                name, k = f"g{n.name}{k}", k + 1
            taken.add(name)
            adjoint[n.symbol] = sym(name)
    pending: dict[sympy.Symbol, list[sympy.Expr]] = {}
    steps, program = [], []
    for node in reversed(nodes):
        d = adjoint[node.symbol]
        value = None
        if node.symbol not in given:
            value = sympy.Add(*pending.pop(node.symbol, []))
            program.append((d, value))
        contributions = []
        for operand in node.operands:
            if node.kind in (REDUCE, PSUM):
                (inner,) = node.expr.atoms(rsum if node.kind == REDUCE else psum)
                hole = sympy.Dummy()
                partial = real_diff(node.expr.xreplace({inner: hole}), hole) * _local(inner.args[0], operand)
            else:
                partial = _local(node.expr, operand)
                if node.symbol not in given:
                    partial = partial.subs(node.expr, node.symbol)
            term = d * partial
            if node.kind != STAT and level[operand] == STAT:
                term = rsum(term)
            if partial != 0:
                pending.setdefault(operand, []).append(term)
            contributions.append(Contribution(operand, partial, term))
        steps.append(Step(node, d, value, tuple(contributions)))
    for leaf in leaves:
        total = sympy.Add(*pending.get(leaf, []))
        program.append((OUTPUTS[leaf], psum(total) if leaf == GAMMA and total != 0 else total))
    return tuple(steps), tuple(program)


# --- the compact form ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Frame:
    """What the derivation's rewrites work with: the varying symbols, x in the coordinate, the inverse scale."""

    varying: frozenset  # symbols that vary inside a set, in x
    varying_coords: frozenset  # the same after the change to the coordinate
    scale: sympy.Expr | None  # the inverse scale dxhat/dx as the forward has it
    inv: sympy.Symbol | None  # its symbol (a coordinate of its own where it is not a node)
    to_coords: dict  # x and the exposed statistics in the coordinate and the inverse scale


def _frame(d: Derivation, varying: set) -> _Frame:
    """The change to the normalized coordinate as derive._derive makes it (same steps, same helpers)."""
    g = d.graph
    base = g.base()
    to_coords: dict = {}
    scale = inv = None
    coords = varying
    if not d.primal:
        u = base[g.output.symbol].xreplace({GAMMA: 1, BETA: 0})
        scale = real_diff(u, X)
        xhat = d.coordinate_change.symbol
        inv = scale if scale.is_Symbol else dict((e, s) for s, e in d.coordinates)[scale]
        offset = sympy.expand(u - scale * X)
        to_coords = {X: (xhat - offset.subs(scale, inv)) / inv}
        coords = (varying - {X}) | {xhat}
    exposed = {o for n in g.nodes if n.kind == ELEM for o in n.operands if g.node(o) and g.node(o).kind != ELEM}
    for stat in sorted(exposed, key=lambda s: s.name):
        to_coords |= in_inverse_scale(g, stat)
    return _Frame(frozenset(varying), frozenset(coords), scale, inv, to_coords)


def _finish(e: sympy.Expr, frame: _Frame) -> sympy.Expr:
    """Into the coordinate: x and the exposed statistics replaced, set-constant factors pulled out again, and each
    parameter sum's summand expanded and factored."""
    if frame.inv is not None and frame.inv != frame.scale:
        e = e.subs(frame.scale, frame.inv)
    e = pull_constants(e.xreplace(frame.to_coords), set(frame.varying_coords))
    return e.replace(lambda a: isinstance(a, psum), lambda a: psum(sympy.factor(sympy.expand(a.args[0]))))


def _build(d: Derivation, mode: str) -> dict:
    nodes, leaves = backward_graph(d, mode)
    first = d.compact if mode == "train" else d.eval_mode
    given = {s: UPSTREAM[s] for s, _ in first}
    steps, staged = _reverse(nodes, leaves, given)
    outputs = [OUTPUTS[leaf] for leaf in leaves]

    param_varying = {GAMMA, GGGAMMA, GGBETA} if d.spec.param_varies else set()
    frame = _frame(d, {X, d.upstream, GGX} | param_varying)
    env: dict = {}
    for s, e in staged:
        env[s] = e.xreplace(env)
    inlined = [env[o] for o in outputs]
    base: dict = {}
    for n in nodes:
        if n.kind == ELEM:
            base[n.symbol] = n.expr.xreplace(base)
    in_x = [e.xreplace(base) for e in inlined]
    pulled = [pull_constants(e, set(frame.varying)) for e in in_x]
    rules = dict(d.identities)
    identified = [e.xreplace(rules) for e in pulled]
    in_coords = [_finish(e, frame) for e in identified]
    known = d.reductions if mode == "train" else ()
    named, reductions = _names(in_coords, known)
    sources = _sources(reductions)
    compact = []
    for o, e in zip(outputs, named):
        if isinstance(e, psum):
            compact.append((o, psum(_tidy_second(e.args[0], sources))))
        else:
            compact.append((o, _tidy_second(e, sources)))
    stages = tuple((key, tuple(zip(outputs, es))) for key, es in zip(STAGES, (
        inlined, in_x, pulled, identified, [sympy.factor_terms(sympy.expand(e)) for e in in_coords],
        [e for _, e in compact])))

    reduction_names = {s for s, _ in reductions}
    stat_symbols = {n.symbol for n in d.graph.nodes if n.kind != ELEM} | {s for s, e in d.coordinates
                                                                             if not _elementwise(e, leaves)}
    reads, statistics = [], set()
    coordinate = dict(d.coordinates)
    for o, e in compact:
        free = e.free_symbols - {EPS, M}
        stats = free & stat_symbols
        pending = [c for c in free if c in coordinate]
        while pending:  # the statistics the coordinate is computed from (xhat: mu and istd)
            more = (coordinate[pending.pop()].free_symbols & stat_symbols) - stats
            stats |= more
            pending += [c for c in more if c in coordinate]
        statistics |= stats
        reads.append(Reads(o, *(tuple(sorted(group, key=lambda a: a.name))
                                for group in (stats, free & reduction_names, free - stats - reduction_names))))
    fields = dict(nodes=nodes, leaves=leaves, upstream=tuple(given.values()), steps=steps, staged=staged,
                  coordinates=d.coordinates, first_order=known, reductions=reductions, compact=tuple(compact),
                  statistics=tuple(sorted(statistics, key=lambda s: s.name)), reads=tuple(reads), stages=stages)
    return fields if d.epilogue is None else _join_epilogue(d, fields)


def _join_epilogue(d: Derivation, fields: dict) -> dict:
    """The normalization's double backward (in dz, giving gdz) joined to a piecewise-linear epilogue by the chain
    rule: gdy = f_z*gdz + f_r*ggr, with f_z, f_r the epilogue's own derivatives (d dz/d dy, d dr/d dy)."""
    backward = dict(d.epilogue.backward)
    gdy = real_diff(backward[DZ], DY) * GDZ
    upstream = fields["upstream"]
    if DR in backward:
        gdy += real_diff(backward[DR], DY) * GGR
        upstream += (GGR,)
    reads = fields["reads"] + (Reads(GDY, (), (), tuple(sorted(gdy.free_symbols, key=lambda a: a.name))),)
    return fields | dict(leaves=(DY,) + fields["leaves"][1:], upstream=upstream,
                         staged=fields["staged"] + ((GDY, gdy),), compact=fields["compact"] + ((GDY, gdy),),
                         reads=reads, head=d.epilogue.backward)


def _sources(reductions: Program) -> dict[sympy.Symbol, frozenset]:
    """For each upstream gradient, the symbols that carry it: itself and the named sums of it (sum_ggx_xhat)."""
    return {up: frozenset({up} | {s for s, e in reductions if e.has(up)}) for up in UPSTREAM.values()}


def _tidy_second(e: sympy.Expr, sources: dict) -> sympy.Expr:
    """derive's shortest_form per upstream gradient: every term of the double backward is linear in exactly one of ggx,
    gggamma, ggbeta, so the result is written as the part from ggx, plus the part from gggamma, plus ggbeta's, each
    in its shortest form (factoring the whole, with all three in it, is slow and no shorter)."""
    parts: dict = {}
    for term in sympy.Add.make_args(sympy.expand(e)):
        owner = next((up for up, carriers in sources.items() if term.free_symbols & carriers), None)
        parts.setdefault(owner, []).append(term)
    if len(parts) < 2:
        return shortest_form(e)
    order = sorted(parts, key=lambda up: list(UPSTREAM.values()).index(up) if up is not None else -1)
    return sympy.Add(*(shortest_form(sympy.Add(*parts[up])) for up in order))


def _elementwise(e: sympy.Expr, leaves: tuple) -> bool:
    return bool(e.free_symbols & set(leaves))


def _names(exprs: list[sympy.Expr], known: Program) -> tuple[list[sympy.Expr], Program]:
    """Name the sums of *exprs* as derive does (sum(ggx*xhat) -> sum_ggx_xhat); a sum the first order already names
    keeps its name."""
    by_value = {e: s for s, e in known}
    exprs = [sympy.expand(e).xreplace(by_value) for e in exprs]
    renamed, named = name_reductions(sympy.Tuple(*exprs))
    taken = {s.name for s, _ in known}
    fixes, fresh = {}, []
    for s, e in named:
        if s.name in taken:  # a name the first order gave another sum: number it on
            k = 2
            while f"{s.name}_{k}" in taken:
                k += 1
            fixes[s] = sym(f"{s.name}_{k}")
            s = fixes[s]
        taken.add(s.name)
        fresh.append((s, e))
    renamed = renamed.xreplace(fixes) if fixes else renamed
    used = set().union(*(e.free_symbols for e in renamed)) if exprs else set()
    program = tuple((s, e) for s, e in known if s in used) + tuple(fresh)
    return list(renamed), program


# --- proof -----------------------------------------------------------------------------------------------------


# Independent blocks a proof writes out at most (verify.independent_blocks: every sum runs inside one block, and the
# blocks are copies of one another). Two keep at least two reduction sets wherever the tensor has two, so a sum that
# leaked from one set into another still shows; of the presets only group norm with G = 4 has more blocks.
PROOF_BLOCKS = 2


def prove_second(so: SecondOrder, set_size: int, seed: int = 0) -> Proof:
    """Check the staged and compact double backward against SymPy's own derivative of
    L2 = sum(ggx*dx) + sum(gggamma*dgamma) + sum(ggbeta*dbeta), the compact first-order backward written out
    element by element over a small tensor (the spec's axes, groups and parameter axes: verify.proof_shape), with
    respect to every entry of dy, x and gamma, exactly, at a random rational point (as verify.prove does; where a
    value is not real and finite there, other points are drawn). In eval mode the statistics are numbers (random
    running statistics per set, the statistics computed from them as the forward's nodes do), not functions of x.
    After an epilogue L2 gains sum(ggr*dr), the first-order backward is the fused one (dz and dr from dy), the
    point keeps off the epilogue's kinks, and the derivatives of L2 with respect to r and beta must be 0."""
    d = so.derivation
    spec = d.spec
    shape, stat_ids, param_ids, elements, blocks = proof_tensor(spec, set_size, PROOF_BLOCKS)
    n, n_params, n_sets = len(stat_ids), int(param_ids.max()) + 1, int(stat_ids.max()) + 1
    rng = random.Random(seed)

    def rational(lo=-4, hi=4):
        return sympy.Rational(rng.randint(lo * 8, hi * 8), rng.randint(1, 8)) or sympy.Rational(1, 3)

    xs = sympy.symbols(f"x_0:{n}", real=True)
    gs = sympy.symbols(f"g_0:{n_params}", real=True)
    dys = sympy.symbols(f"dy_0:{n}", real=True)
    upstream = {GGX: [rational() for _ in range(n)], GGGAMMA: [rational() for _ in range(n_params)],
                GGBETA: [rational() for _ in range(n_params)]}
    reductions = [r for r in d.graph.reductions]

    def stats(positive):  # eval mode: running statistics, one per set; >= 0 where the statistic is (a variance)
        return {r.symbol: [positive() if r.symbol.is_nonnegative else rational() for _ in range(n_sets)]
                for r in reductions}

    constants = {EPS: sympy.Rational(rng.randint(1, 9), 10)}
    point = {s: rational() for s in xs + gs + dys}
    running = stats(lambda: abs(rational()))
    # after an epilogue: beta and the residual enter the backward (through the masks); drawn last so that the proofs
    # without one keep their points
    bs = rs = ()
    if d.epilogue is not None:
        bs = sympy.symbols(f"b_0:{n_params}", real=True)
        rs = sympy.symbols(f"r_0:{n}", real=True) if d.epilogue.residual else ()
        upstream[GGR] = [rational() for _ in range(n)]
        point |= {s: rational() for s in bs + rs}
    problems = []
    for attempt in range(ATTEMPTS):
        if attempt:
            lo, hi = POINT_RANGES[(attempt - 1) % len(POINT_RANGES)]
            constants = {EPS: sympy.Rational(rng.randint(1, 9), 10)}
            point = {s: lo + (hi - lo) * sympy.Rational(rng.randint(1, 63), 64) for s in xs + gs + dys + bs + rs}
            running = stats(lambda: sympy.Rational(rng.randint(1, 63), 16))
        try:
            checked, worst = _prove_second_at(so, shape, stat_ids, param_ids, constants, (xs, gs, dys, bs, rs), point,
                                              upstream, running, elements.tolist())
        except Singular as err:
            problems.append(err)
            continue
        return Proof(shape, set_size, seed, checked, worst, attempt, blocks)
    unproved(spec, shape, problems, "double backward", "first-order backward", "double backward")


def _prove_second_at(so, shape, stat_ids, param_ids, constants, symbols, point, upstream, running, elements):
    d = so.derivation
    g = d.graph
    xs, gs, dys, bs, rs = symbols
    train = so.mode == "train"
    first = (d.reductions + d.compact) if train else d.eval_mode
    has_gamma = GAMMA in g.leaves
    epilogue = d.epilogue.at(g.output.symbol) if d.epilogue is not None else None
    if epilogue is None:
        forward = tuple((n.symbol, n.expr) for n in g.nodes[:-1] if train or n.kind == STAT)
        head: Program = ()
    else:  # the normalization's output z too (the masks read it), and the epilogue's dz, dr from dy
        forward = tuple((n.symbol, n.expr) for n in g.nodes if train or n.kind != REDUCE)
        head = epilogue.backward

    def new(x_values, g_values, dy_values, b_values=None, r_values=None) -> Interpreter:
        run = Interpreter(stat_ids, param_ids, constants)
        run.bind(X, x_values)
        run.bind(GAMMA, [g_values[p] for p in param_ids])
        run.bind(DY, dy_values)
        if epilogue is not None:
            run.bind(BETA, [(b_values or [point[b] for b in bs])[p] for p in param_ids])
            if rs:
                run.bind(R, r_values or [point[r] for r in rs])
        if not train:
            for s, values in running.items():
                run.bind(s, [values[i] for i in stat_ids])
        return run

    # The first-order backward at the point first: where it is undefined the point is no good.
    values = new([point[s] for s in xs], [point[s] for s in gs], [point[s] for s in dys])
    for symbol, expr in forward + head + d.coordinates + first:
        values.env[symbol] = values.evaluate(expr)
        require_defined(values.env[symbol], f"the backward's {symbol}", elements)
    for kink in epilogue.kinks if epilogue else ():  # where the masks jump nothing is differentiable
        if any(v == 0 for v in values.evaluate(kink)):
            raise Singular(f"the epilogue's {kink} is 0, a kink, at one element")

    # Brute force: dx, dgamma, dbeta (and dr) element by element in symbols, L2 differentiated by SymPy. A partial
    # derivative at the point depends only on L2 along its own variable, so the entries of x and gamma are symbols
    # with dy at its values, then the entries of dy with x and gamma at theirs: the same derivatives, from smaller
    # expressions; after an epilogue the entries of beta and r likewise.
    rep = {}  # one element of each parameter: where its dgamma, dbeta are read
    for e, p in enumerate(param_ids.tolist()):
        rep.setdefault(p, e)

    def loss_gradient(run: Interpreter):
        run.run(forward + head + d.coordinates + first)
        weights, terms = list(upstream[GGX]), list(run.env[DX])
        if rs:
            weights, terms = weights + upstream[GGR], terms + list(run.env[DR])
        for d_symbol, up in ((DGAMMA, GGGAMMA), (DBETA, GGBETA)):
            if d_symbol in run.env:
                weights += upstream[up]
                terms += [run.env[d_symbol][rep[p]] for p in range(len(rep))]
        return brute_gradient(weights, [_steps(t) for t in terms], point)

    at = {s: [point[v] for v in vs] for s, vs in (("x", xs), ("g", gs), ("dy", dys))}
    in_x = loss_gradient(new(xs, gs, at["dy"]))
    in_dy = loss_gradient(new(at["x"], at["g"], dys))
    expected = {GDY: [in_dy(s) for s in dys], GX: [in_x(s) for s in xs]}
    if has_gamma:
        expected[GGAMMA] = [in_x(gs[p]) for p in param_ids]
    for symbol, want in expected.items():
        require_defined(want, f"the brute-force {symbol}", elements)
    zeros = []  # after an epilogue: r and beta move L2 by nothing (the masks are flat between the kinks)
    if epilogue is not None:
        in_rb = loss_gradient(new(at["x"], at["g"], at["dy"], list(bs), list(rs) or None))
        zeros = [("gbeta", [in_rb(b) for b in bs])] + ([("gr", [in_rb(r) for r in rs])] if rs else [])

    results = []
    for label, programs in (("staged", (so.staged,)), ("compact", (so.reductions, so.compact))):
        numeric = new(at["x"], at["g"], at["dy"])
        numeric.bind(GGX, upstream[GGX])
        numeric.bind(GGGAMMA, [upstream[GGGAMMA][p] for p in param_ids])
        numeric.bind(GGBETA, [upstream[GGBETA][p] for p in param_ids])
        if rs:
            numeric.bind(GGR, upstream[GGR])
        numeric.run(forward + head + d.coordinates + first)
        for program in programs:
            numeric.run(program)
        for symbol in expected:
            require_defined(numeric.env[symbol], f"the {label} {symbol}", elements, derived=True)
        results.append((label, numeric))

    checked, worst = [], 0.0
    for label, numeric in results:
        for symbol, want in expected.items():
            for e, (a, b) in enumerate(zip(numeric.env[symbol], want)):
                where = f"{so.mode} {label} {symbol} at element {elements[e]} of shape {shape}"
                worst = max(worst, _equal(a, b, where))
            checked.append(f"{label} {symbol}")
    for name, values in zeros:
        for i, v in enumerate(values):
            worst = max(worst, _equal(v, sympy.Integer(0), f"{so.mode} {name} = 0 at entry {i} of shape {shape}"))
        checked.append(f"{name} = 0")
    return tuple(checked), worst


def _equal(a: sympy.Expr, b: sympy.Expr, where: str) -> float:
    """verify.check_equal, with one quicker exact test first: a difference that together() and cancel() take to 0
    is 0 (each step is an identity of rational functions in its atoms, exp(1/3) or sqrt(2) alike), and is reported
    as 0; where they do not (relations between the atoms, such as sqrt(8) = 2*sqrt(2)), verify's numeric check and
    simplify() decide."""
    difference = a - b
    if difference == 0 or sympy.cancel(sympy.together(difference)) == 0:
        return 0.0
    return check_equal(a, b, where)


def prove_second_all(so: SecondOrder, sizes: Sequence[int] = (2, 3, 4), seed: int = 0) -> list[Proof]:
    return [prove_second(so, m, seed + m) for m in sizes]


def second_orders(d: Derivation) -> tuple[SecondOrder | None, SecondOrder | None]:
    """The training double backward and, where the spec keeps running statistics, the eval-mode one; (None, None)
    after an epilogue with second derivatives (derive_second says why)."""
    if d.epilogue is not None and _second_derivatives(d.epilogue.forward):
        return None, None
    return derive_second(d), derive_second(d, "eval") if d.running else None
