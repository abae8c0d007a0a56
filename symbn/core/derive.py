"""Reverse mode over the forward graph, and the rewrites that turn its result into the compact backward.

Two rules do all the differentiation (SymPy supplies the local derivatives):

* elementwise node ``e = f(a, s)``: ``da += de * df/da`` element by element, and a statistic operand gets
  ``ds += rsum(de * df/ds)``;
* reduction ``s = rsum(a)/D``: ``da += ds / D``.

The compact form then comes from generic rewrites, never from a formula typed in: inline the staged adjoints, write
every node in x and the statistics, pull factors that are constant over a reduction set out of the sums, replace sums
that the forward's own statistics define (sum(x) = M*mu, ...), and change to the normalized coordinate xhat.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import sympy

from symbn.core import epilogue as epilogues
from symbn.core import graph as graphs
from symbn.core.graph import ELEM, REDUCE, Graph, Node
from symbn.core.spec import RUNNING, Spec
from symbn.core.symbols import BETA, DY, DZ, GAMMA, M, MOMENTUM, R, X, XHAT, Z, psum, rsum, sym

DX, DGAMMA, DBETA, DR = sym("dx"), sym("dgamma"), sym("dbeta"), sym("dr")

Program = tuple[tuple[sympy.Symbol, sympy.Expr], ...]


@dataclass(frozen=True)
class Contribution:
    """What one forward step hands back to one operand: the local derivative and the adjoint term it makes."""

    target: sympy.Symbol
    partial: sympy.Expr
    value: sympy.Expr


@dataclass(frozen=True)
class Step:
    """One step of the staged backward: a forward node, its (complete) adjoint, and what it passes on."""

    node: Node
    adjoint: sympy.Symbol
    value: sympy.Expr | None  # None for the output, whose adjoint dy is given
    contributions: tuple[Contribution, ...]


# The stages of the simplification from staged to compact dx, in order; a Stage's key is one of these. They are
# identifiers, not prose: the documents give each its title and explanation.
STAGES = ("inline", "elementwise_in_x", "constants_out", "identities", "coordinate", "named_reductions")


@dataclass(frozen=True)
class Stage:
    """dx after one stage of the simplification, and whether the stage changed it for this spec."""

    key: str  # one of STAGES
    dx: sympy.Expr
    changed: bool  # False where dx is the same expression as after the stage before


@dataclass(frozen=True)
class CoordinateChange:
    """The change from x to the normalized coordinate, both ways, and the statistics it makes redundant."""

    symbol: sympy.Symbol  # xhat (u where the forward's own xhat is something else)
    value: sympy.Expr  # the coordinate in x and the statistics
    x: sympy.Expr | None  # x in the coordinate; None where SymPy finds no single solution
    chain: Program  # the statistics behind the inverse scale, written in it: std = 1/istd, var = 1/istd**2 - eps


@dataclass(frozen=True)
class Epilogue:
    """What follows the normalization z element by element (symbn.core.epilogue): y = f(z, r), and by the chain rule
    the gradients dz = dy*df/dz, on which the normalization's backward runs, and dr = dy*df/dr."""

    forward: sympy.Expr  # y in Z and R; relu(a) is Max(a, 0)
    backward: Program  # (dz, ...), then (dr, ...) where the residual r enters
    residual: bool  # whether r enters

    @property
    def kinks(self) -> tuple[sympy.Expr, ...]:
        """Where the derivative jumps: the arguments of the steps (Heaviside) in the backward, in Z and R. Kernels take
        the step at 0 as 0, as PyTorch's relu does; proofs keep off the kinks."""
        found = {h.args[0] for _, e in self.backward for h in e.atoms(sympy.Heaviside)}
        return tuple(sorted(found, key=sympy.default_sort_key))

    def at(self, z: sympy.Expr) -> Epilogue:
        """The epilogue taking *z* for Z: the normalization's output node, or what it stands for."""
        return Epilogue(self.forward.xreplace({Z: z}), tuple((s, e.xreplace({Z: z})) for s, e in self.backward),
                        self.residual)


@dataclass(frozen=True)
class Derivation:
    """Everything derived for one spec. Programs are ordered assignments; rsum/psum are the two reductions."""

    spec: Spec
    graph: Graph
    steps: tuple[Step, ...]
    staged: Program  # adjoint of every node, then dx, dgamma, dbeta
    coordinates: Program  # xhat and the inverse scale, in x and the statistics
    reductions: Program  # named reductions the compact backward needs, e.g. sum_dy = rsum(dy)
    compact: Program  # dx, dgamma, dbeta in terms of the names above
    eval_mode: Program  # dx, dgamma, dbeta with the statistics held constant (running statistics); () where the
    # spec keeps none (spec.tracks_running False: eval mode is the training computation, its backward the compact one)
    running: Program  # running-statistic updates, one per reduction node; () where the spec keeps none
    primal: bool  # True when no affine normalized coordinate exists and the compact form stays in x
    stages: tuple[Stage, ...]  # dx after each stage of the simplification, staged to compact
    identities: tuple[tuple[sympy.Expr, sympy.Expr], ...]  # sums the forward's statistics define: sum(x) -> M*mu
    vanishing: Program  # per-element nodes, in x, whose sum over the set the identities make 0: sum(x - mu) = 0
    coordinate_change: CoordinateChange | None  # None when primal
    # Where the forward ends in an epilogue y = f(z, r): everything above is the normalization z's, with dz (DZ) as
    # its upstream gradient where it would be dy. None: the normalization's output is y, its upstream gradient dy.
    epilogue: Epilogue | None = None

    @property
    def upstream(self) -> sympy.Symbol:
        """The gradient the normalization's backward programs start from: dy, or dz after an epilogue."""
        return DY if self.epilogue is None else DZ

    @property
    def rewrites(self) -> tuple[tuple[str, sympy.Expr], ...]:
        """(key, dx) per stage: the stages in their older form."""
        return tuple((stage.key, stage.dx) for stage in self.stages)

    def output(self, program: Program, symbol: sympy.Symbol) -> sympy.Expr:
        return dict(program)[symbol]

    @property
    def dx(self) -> sympy.Expr:
        return self.output(self.compact, DX)

    @property
    def op_counts(self) -> dict[str, dict[str, int]]:
        """Operations per element and per statistic, and how many reductions, for forward and compact backward."""
        fwd = {"per_element": 0, "per_statistic": 0, "reductions": 0}
        for n in self.graph.nodes:
            key = "reductions" if n.kind == REDUCE else "per_element" if n.kind == ELEM else "per_statistic"
            fwd[key] += 1 if n.kind == REDUCE else _ops(n.expr)
        bwd = {"per_element": sum(_ops(e.args[0]) + 1 for _, e in self.reductions) + _ops(self.dx),
               "per_statistic": 0, "reductions": len(self.reductions)}
        bwd["param_reductions"] = sum(1 for s, _ in self.compact if s in (DGAMMA, DBETA))
        return {"forward": fwd, "backward": bwd}

    @property
    def latex(self) -> dict[str, str]:
        """Every derived expression as LaTeX, keyed by the name it is assigned to."""
        from symbn.core.printing import latex

        out = {n.name: latex(n.expr) for n in self.graph.nodes}
        for program in (self.staged, self.coordinates, self.reductions, self.compact, self.running):
            out.update({s.name: latex(e) for s, e in program})
        out.update({"eval_" + s.name: latex(e) for s, e in self.eval_mode})
        return out


def derive(spec: Spec) -> Derivation:
    """Derive staged and compact backward, eval-mode backward and running updates for *spec* (cached); the last two
    only where the spec keeps running statistics (Spec.tracks_running)."""
    if not isinstance(spec, Spec):
        raise TypeError(f"spec: expected a symbn.Spec (from symbn.preset, symbn.custom or symbn.make); "
                        f"got {type(spec).__name__} {spec!r:.60}")
    core, tail = epilogues.split(spec.tree, spec.expression)
    return Derivation(spec, **_derive(core, spec.expression, spec.center, spec.scale, spec.ddof, spec.param_varies,
                                      spec.running if spec.tracks_running else None, tail is not None),
                      epilogue=None if tail is None else _epilogue(tail))


@functools.lru_cache(maxsize=None)
def _epilogue(tree: tuple) -> Epilogue:
    """The epilogue's forward in Z and R from its tree, and its gradients by SymPy's diff."""
    f = _sympy_epilogue(tree)
    backward = [(DZ, DY * real_diff(f, Z))]
    residual = R in f.free_symbols
    if residual:
        backward.append((DR, DY * real_diff(f, R)))
    return Epilogue(f, tuple(backward), residual)


def _sympy_epilogue(tree: tuple) -> sympy.Expr:
    kind = tree[0]
    if kind == "z":
        return Z
    if kind == "r":
        return R
    if kind == "num":
        return tree[1]
    args = [_sympy_epilogue(t) for t in tree[1:] if isinstance(t, tuple)]
    if kind == "call" and tree[1] == "relu":
        return sympy.Max(args[0], 0)
    if kind == "call" and tree[1] == "max":
        return sympy.Max(*args)
    return graphs.apply(tree, args)


@functools.lru_cache(maxsize=None)
def _derive(tree, text, center, scale, ddof, param_varies, running: str | None, epilogue: bool = False) -> dict:
    """*running*: the running-statistics convention, None where the spec keeps none (no eval mode of its own);
    *epilogue*: whether an epilogue follows (the output is then z, its upstream gradient dz)."""
    up = DZ if epilogue else DY
    g = graphs.build(tree, text=text, center=center, scale=scale, ddof=ddof, output="z" if epilogue else "y")
    steps, staged = _reverse(g, up)
    varying = {X, up} | ({GAMMA, BETA} if param_varies else set())
    base = g.base()
    rules = _identities(g, base, varying)
    vanishing = _vanishing(g, base, rules, varying)

    u = base[g.output.symbol].xreplace({GAMMA: 1, BETA: 0})
    scale_expr = real_diff(u, X)
    primal = scale_expr.has(X) or scale_expr == 0
    coords: list[tuple[sympy.Symbol, sympy.Expr]] = []
    to_coords: dict = {}
    change = None
    if not primal:
        xhat = _coordinate_symbol(g, base, u)
        inv = scale_expr if scale_expr.is_Symbol else sym("a", **graphs.assumptions(scale_expr, graphs.STAT))
        if inv != scale_expr:
            coords.append((inv, scale_expr))
        coords.append((xhat, u))
        offset = sympy.expand(u - scale_expr * X)
        to_coords = {X: (xhat - offset.subs(scale_expr, inv)) / inv}
        varying = (varying - {X}) | {xhat}
        # x in xhat as SymPy solves it, not as to_coords has it: the documents print this form.
        solved = sympy.solve(sympy.Eq(xhat, u), X)
        chain = in_inverse_scale(g, scale_expr) if scale_expr.is_Symbol else {}
        change = CoordinateChange(xhat, u, solved[0] if len(solved) == 1 else None, tuple(chain.items()))
    exposed = {o for n in g.nodes if n.kind == ELEM for o in n.operands if g.node(o) and g.node(o).kind != ELEM}
    for stat in sorted(exposed, key=lambda s: s.name):
        to_coords |= in_inverse_scale(g, stat)

    def finish(e: sympy.Expr, reduce_over_set: bool = True) -> sympy.Expr:
        e = e.subs(scale_expr, inv) if coords and inv != scale_expr else e
        e = e.xreplace(to_coords)
        if reduce_over_set:
            return pull_constants(e, varying)
        return e.replace(lambda a: isinstance(a, psum), lambda a: psum(sympy.factor(sympy.expand(a.args[0]))))

    env: dict = {}
    for s, e in staged:
        env[s] = e.xreplace(env)
    # Each stage is kept for the derivation documents: they show the road from the staged result to the compact one.
    inlined = env[DX]
    in_x = inlined.xreplace(base)
    pulled = pull_constants(in_x, varying | {X})
    identified = pulled.xreplace(rules)
    in_coords = finish(identified)
    dx, reductions = name_reductions(sympy.expand(in_coords))
    compact = [(DX, shortest_form(dx))]
    stages = _stages(inlined, in_x, pulled, identified, sympy.factor_terms(sympy.expand(in_coords)), compact[0][1])
    eval_mode = [(DX, shortest_form(finish(up * real_diff(base[g.output.symbol], X))))] if running else []
    for leaf, d in ((GAMMA, DGAMMA), (BETA, DBETA)):
        if leaf in g.leaves:
            compact.append((d, finish(env[d].xreplace(base), reduce_over_set=False)))
            if running:
                eval_mode.append((d, finish(psum(up * real_diff(base[g.output.symbol], leaf)), reduce_over_set=False)))
    return dict(graph=g, steps=steps, staged=staged, coordinates=tuple(coords), reductions=reductions,
                compact=tuple(compact), eval_mode=tuple(eval_mode),
                running=_running(g, ddof, running) if running else (),
                primal=primal, stages=stages, identities=tuple(rules.items()), vanishing=vanishing,
                coordinate_change=change)


def _stages(*dxs: sympy.Expr) -> tuple[Stage, ...]:
    """One Stage per entry of STAGES from dx after it; the first always changes dx (it leaves the staged program)."""
    pairs = enumerate(zip(STAGES, dxs, strict=True))
    return tuple(Stage(key, dx, k == 0 or dx != dxs[k - 1]) for k, (key, dx) in pairs)


class _RealAbs(sympy.Function):
    """abs() of a real value, for differentiation only: d|a| = sign(a)*da. SymPy's Abs, unsure whether a subexpression
    such as log(x) is real, differentiates it through re(), im() and arg(), which no kernel can print."""

    nargs = 1
    is_extended_real = True

    def fdiff(self, argindex=1):  # noqa: ARG002 - SymPy's signature; one argument, so argindex is always 1
        return sympy.sign(self.args[0])


def real_diff(e: sympy.Expr, s: sympy.Symbol) -> sympy.Expr:
    """d e / d s where every value is real (the forward is refused or unproved where it is not)."""
    if not e.has(sympy.Abs):
        return sympy.diff(e, s)
    return sympy.diff(e.replace(sympy.Abs, _RealAbs), s).replace(_RealAbs, sympy.Abs)


def _reverse(g: Graph, up: sympy.Symbol = DY) -> tuple[tuple[Step, ...], Program]:
    """Staged reverse mode: one step per forward node, last node first; *up*: the output's given adjoint."""
    level = {X: ELEM, GAMMA: ELEM, BETA: ELEM} | {n.symbol: n.kind for n in g.nodes}
    adjoint = {n.symbol: sym("d" + n.name) for n in g.nodes} | {X: DX, GAMMA: DGAMMA, BETA: DBETA}
    adjoint[g.output.symbol] = up
    pending: dict[sympy.Symbol, list[sympy.Expr]] = {}
    steps, program = [], []
    for node in reversed(g.nodes):
        d = adjoint[node.symbol]
        value = None if node is g.output else sympy.Add(*pending.pop(node.symbol))
        if value is not None:
            program.append((d, value))
        contributions = []
        for operand in node.operands:
            if node.kind == REDUCE:
                partial = sympy.diff(node.expr.xreplace({rsum(operand): operand}), operand)
                term = d * partial
            else:
                partial = sympy.diff(node.expr, operand).subs(node.expr, node.symbol)
                term = d * partial
                if node.kind == ELEM and level[operand] != ELEM:
                    term = rsum(term)
            pending.setdefault(operand, []).append(term)
            contributions.append(Contribution(operand, partial, term))
        steps.append(Step(node, d, value, tuple(contributions)))
    program.append((DX, sympy.Add(*pending.get(X, []))))
    for leaf in (GAMMA, BETA):
        if leaf in g.leaves:
            program.append((adjoint[leaf], psum(sympy.Add(*pending[leaf]))))
    return tuple(steps), tuple(program)


def _varies(e: sympy.Expr, varying: set) -> bool:
    sums = e.atoms(rsum, psum)
    masked = e.xreplace({s: sympy.Dummy() for s in sums}) if sums else e
    return bool(masked.free_symbols & varying)


def pull_constants(e: sympy.Expr, varying: set) -> sympy.Expr:
    """rsum(c*v + ...) -> c*rsum(v) + ... for every factor c that is constant over the set; rsum(1) -> M."""

    def split(arg: sympy.Expr) -> sympy.Expr:
        out = []
        for term in sympy.Add.make_args(sympy.expand(arg)):
            const, var = [], []
            for f in sympy.Mul.make_args(term):
                (var if _varies(f, varying) else const).append(f)
            v = sympy.Mul(*var)
            out.append(sympy.Mul(*const) * (M if v == 1 else rsum(v)))
        return sympy.Add(*out)

    return e.replace(lambda a: isinstance(a, rsum), lambda a: split(a.args[0]))


def _identities(g: Graph, base: dict, varying: set) -> dict:
    """Sums the forward defines: mean(x) = mu gives rsum(x) = M*mu; mean((x-mu)**2) = var gives rsum(x**2) = ..."""
    rules: dict = {}
    for r in g.reductions:
        (arg,) = r.operands
        denominator = sympy.simplify(rsum(arg) / r.expr)
        total = sympy.expand(pull_constants(rsum(base.get(arg, arg)), varying).xreplace(rules))
        new = sorted(total.atoms(rsum) - set(rules), key=lambda a: (sympy.count_ops(a), sympy.default_sort_key(a)))
        if not new:
            continue
        lead, hole = new[-1], sympy.Dummy()
        linear = total.xreplace({lead: hole})
        coeff = sympy.diff(linear, hole)
        rest = linear.xreplace({hole: 0})
        rules[lead] = sympy.expand((denominator * r.symbol - rest) / coeff)
    return rules


def _vanishing(g: Graph, base: dict, rules: dict, varying: set) -> Program:
    """Per-element nodes whose sum over the set the identities make zero (sum(x - mu) = 0), with their value in x:
    these are what cancel terms of dx. The output and the nodes gamma or beta enter are left out: the documents cite
    the normalization's own sums, which those only restate (sum(gamma*xhat) = gamma*sum(xhat))."""
    out = []
    for n in g.nodes:
        if n.kind != ELEM or n.symbol == g.output.symbol:
            continue
        e = base[n.symbol]
        if not e.has(GAMMA) and not e.has(BETA) and sympy.expand(pull_constants(rsum(e), varying).xreplace(rules)) == 0:
            out.append((n.symbol, e))
    return tuple(out)


def _coordinate_symbol(g: Graph, base: dict, u: sympy.Expr) -> sympy.Symbol:
    node = next((n for n in g.nodes if n.name == "xhat"), None)
    if node is None:
        return XHAT
    return node.symbol if sympy.expand(base[node.symbol] - u) == 0 else sym("u")


def in_inverse_scale(g: Graph, inv: sympy.Symbol) -> dict:
    """Walk from the inverse scale down its chain of statistics (istd = 1/std, std = sqrt(var + eps)), inverting
    each step, so every statistic on the chain is written in the inverse scale: std = 1/istd, var = 1/istd**2 - eps."""
    out: dict = {}
    node = g.node(inv)
    while node is not None and node.kind == graphs.STAT:
        stats = [o for o in node.operands if g.node(o) is not None]
        if len(stats) != 1:
            break
        (operand,) = stats
        solutions = sympy.solve(sympy.Eq(node.symbol, node.expr), operand)
        if len(solutions) != 1:
            break
        out[operand] = solutions[0].xreplace(out)
        node = g.node(operand)
    return out


def name_reductions(dx: sympy.Expr) -> tuple[sympy.Expr, Program]:
    """sum(dy*xhat) becomes the symbol sum_dy_xhat, and so on, in a deterministic order."""
    named, taken = [], set()
    for s in sorted(dx.atoms(rsum), key=lambda a: (sympy.count_ops(a), sympy.default_sort_key(a))):
        parts = []
        for f in sorted(sympy.Mul.make_args(s.args[0]), key=sympy.default_sort_key):
            b, e = f.as_base_exp()
            if b.is_Symbol and e != 1:  # x**2 -> x2, x**-1 -> xm1, x**(1/2) -> x1_2: always an identifier
                parts.append(f"{b}{str(e).replace('-', 'm').replace('/', '_')}")
            else:
                parts.append(re.sub(r"\W+", "_", str(f)).strip("_"))
        name = re.sub(r"\W+", "_", "sum_" + "_".join(parts))
        # Different sums can share a name (sum(dy*exp(x)) and sum(dy*exp(-x))): the later one gets a number.
        unique, k = name, 2
        while unique in taken:
            unique, k = f"{name}_{k}", k + 1
        taken.add(unique)
        named.append((sym(unique), s))
    return dx.xreplace({s: n for n, s in named}), tuple(named)


def shortest_form(e: sympy.Expr) -> sympy.Expr:
    """The shortest of: fully factored; 'common factor / M * (...)' (keeps M/(M-1) visible); collected by the named
    reductions with each coefficient factored."""
    sums = sorted((s for s in e.free_symbols if s.name.startswith("sum_")), key=lambda s: s.name)
    expanded = sympy.expand(e)
    collected = sympy.collect(expanded, sums, evaluate=False)
    by_sum = sympy.Add(*(sympy.factor(c) * k for k, c in collected.items()))
    candidates = [sympy.factor(e), sympy.factor_terms(sympy.expand(M * e)) / M, sympy.factor_terms(by_sum)]
    return min(candidates, key=lambda c: (sympy.count_ops(c), len(str(c))))


def _running(g: Graph, ddof: int, convention: str) -> Program:
    """The running-statistic updates of the convention (symbn.core.spec.RUNNING)."""
    rule = RUNNING[convention]
    out = []
    for r in g.reductions:
        running = sym("running_" + r.name)
        value = r.symbol * (M / (M - 1) if rule.unbiased and r.central and ddof == 0 else 1)
        if rule.momentum_on_batch:
            out.append((running, (1 - MOMENTUM) * running + MOMENTUM * value))
        else:
            out.append((running, MOMENTUM * running + (1 - MOMENTUM) * value))
    return tuple(out)


def _ops(e: sympy.Expr) -> int:
    return int(sympy.count_ops(e))
