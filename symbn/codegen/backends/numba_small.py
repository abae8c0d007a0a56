"""The Numba backend's small-input kernels (symbn.codegen.small) as the template prints them: serial loops over the
block view in memory order, one pass per reduction and per output, with the coefficients of each pass computed per
statistic just before it."""

from __future__ import annotations

from symbn.codegen.backends.numba import flat_index, loop_space
from symbn.codegen.backends.quick import checks
from symbn.codegen.loops import Loop
from symbn.codegen.lowering import Lowering
from symbn.codegen.plan import Plan
from symbn.codegen.printers import cse, reads, scalar_code
from symbn.codegen.reductions import FIRST
from symbn.codegen.small import SmallLoops, small_loops
from symbn.core.symbols import BETA, DY, EPS, GAMMA, MOMENTUM, M, X

_ELEMENT = {X: ("xv", "xb"), DY: ("dyv", "dyb")}
_PARAM = {GAMMA: ("gv", "gamma_f"), BETA: ("bv", "beta_f")}


class _Nest:
    """The loop nest over the block view: the outer loops, the innermost one, and which indices stay fixed over the
    innermost loop (the statistic's where the innermost block is reduced, the parameter's where it is not a
    parameter block): what is indexed by those is read and accumulated outside the innermost loop."""

    def __init__(self, p: Plan):
        # statistics and coordinates get prefixes: a node's name (s, acc, ...) must not meet a name of the kernel
        self.per_stat = {GAMMA: "v_gamma", BETA: "v_beta", FIRST: "v_x0"} | {
            sym: f"v_{sym.name}" for sym in _statistics(p)}
        self.per_elem = {s: v for s, (v, _) in (_ELEMENT | _PARAM).items()} | {
            c: f"e_{c.name}" for c, _ in p.coordinates}
        n = len(p.blocks)
        kept = [i for i in range(n) if not p.blocks[i].reduced]
        param = [i for i in range(n) if p.blocks[i].param]
        self.loops = [f"for i{i} in range(n{i}):" for i in range(n)]
        self.elem = ", ".join(f"i{i}" for i in range(n))
        self.stat, self.pf = flat_index(kept), flat_index(param)
        space = loop_space(kept, [], "s")  # a statistic's block indices from its flat index s
        self.unravel, self.stat_count = space["unravel"], space["count"]
        self.stat_outer = p.blocks[-1].reduced
        self.param_outer = not p.blocks[-1].param

    def pass_(self, lp: Loop, outputs: int, sums: int, params: int) -> dict:
        """One pass of *lp*: its first *outputs* expressions stored per element (out[...]), then *sums* summed per
        statistic into acc[j, s], then *params* summed per parameter into grads[j, p]."""
        names = self.per_elem
        shared, finals = cse(list(lp.exprs))
        body = [e for _, e in lp.coordinates] + [e for _, e in shared] + finals
        read = set().union(set(), *(e.free_symbols for e in body))
        loads = [f"{v} = np.float64({a}[{self.elem}])" for s, (v, a) in _ELEMENT.items() if s in read]
        param_loads = [f"{v} = np.float64({a}[pf])" for s, (v, a) in _PARAM.items() if s in read]
        lines = [f"{names.get(c, c)} = {scalar_code(e, names)}" for c, e in lp.coordinates + tuple(shared)]
        codes = [scalar_code(e, names) for e in finals]
        pre, inner, post = [], [], []
        (pre if self.stat_outer else inner).append(f"s = {self.stat}")
        if params or param_loads:
            (pre if self.param_outer else inner).extend([f"pf = {self.pf}"] + param_loads)
        (pre if self.stat_outer else inner).extend(
            f"{k} = coef[{j}, s]" for j, (k, _) in enumerate(lp.coefficients) if k in read)
        inner += loads + lines
        inner += [f"out[{self.elem}] = {code}" for code in codes[:outputs]]
        # sums into acc[j, s] per statistic, then into grads[j, pf] per parameter: through a float64 register where
        # the index stays fixed over the innermost loop
        for codes_, target, register, outer in ((codes[outputs:outputs + sums], "acc[{}, s]", "a{}", self.stat_outer),
                                               (codes[outputs + sums:], "grads[{}, pf]", "g{}", self.param_outer)):
            for j, code in enumerate(codes_):
                if outer:
                    pre.append(f"{register.format(j)} = 0.0")
                    inner.append(f"{register.format(j)} += {code}")
                    post.append(f"{target.format(j)} += {register.format(j)}")
                else:
                    inner.append(f"{target.format(j)} += {code}")
        return dict(pre=pre, inner=inner, post=post, coefficients=self.coefficients(lp), count=len(lp.coefficients))

    def coefficients(self, lp: Loop) -> list[str]:
        """Per statistic s: the statistics and parameters (where fixed over the set) the coefficients read, then
        coef[j, s]."""
        exprs = [e for _, e in lp.coefficients]
        read = set().union(set(), *(e.free_symbols for e in exprs))
        params = [f"{self.per_stat[s]} = np.float64({a}[pf])" for s, (_, a) in _PARAM.items() if s in read]
        lines = self.unravel + [f"pf = {self.pf}"] + params if params else []
        return lines + self.loads(exprs) + [f"coef[{j}, s] = {self.code(e)}" for j, e in enumerate(exprs)]

    def code(self, e) -> str:
        """Scalar code of a per-statistic expression."""
        return scalar_code(e, self.per_stat)

    def loads(self, exprs: list) -> list[str]:
        """Per statistic s: the statistics *exprs* read, from their arrays (st_<name>)."""
        read = {s for e in exprs for s in e.free_symbols} - {EPS, M, MOMENTUM, GAMMA, BETA}
        return [f"{self.per_stat[s]} = st_{s.name}[s]" for s in sorted(read, key=str)]


def small(lw: Lowering) -> dict:
    """The template context of the small-input kernels."""
    p = lw.plan
    sl: SmallLoops = small_loops(lw)
    nest = _Nest(p)
    n = len(p.blocks)
    train, moments = [], None
    if sl.powers is not None:
        steps = [(s.symbol.name, nest.per_stat[s.symbol], f"({nest.code(s.expr)}) / ({nest.code(s.denominator)})"
                  if s.reduce else nest.code(s.expr)) for s in sl.train]
        moments = dict(nest.pass_(sl.powers, 0, len(sl.powers.exprs), 0), steps=steps,
                       powers=[f"p{k} = acc[{k - 1}, s]" for k in range(1, len(sl.powers.exprs) + 1)])
    for step in sl.train if moments is None else ():
        if step.reduce:
            train.append(dict(name=step.symbol.name, reduce=True, denominator=nest.code(step.denominator),
                              **nest.pass_(step.summand, 0, 1, 0)))
        else:
            train.append(dict(name=step.symbol.name, reduce=False, code=nest.code(step.expr),
                              loads=nest.loads([step.expr])))
    param_count = len(p.param_sums)
    ctx = checks(p) | dict(
        loops=nest.loops, elem=nest.elem, stats=nest.stat_count, unravel=nest.unravel, param_flat=nest.pf,
        first=", ".join("0" if b.reduced else f"i{i}" for i, b in enumerate(p.blocks)),
        train=train, moments=moments, train_names=[s.symbol.name for s in sl.train],
        eval_steps=[(s.name, nest.code(e)) for s, e in sl.eval_steps],
        y=nest.pass_(sl.y, 1, 0, 0),
        sums=nest.pass_(sl.sums, 0, len(p.sums), 0) if sl.sums else None,
        sum_names=[s.name for s, _ in p.sums],
        dx=nest.pass_(sl.dx, 1, 0, 0 if sl.params_from_sums else param_count),
        params_from_sums=sl.params_from_sums,
        eval_dx=nest.pass_(sl.eval_dx, 1, 0, len(p.eval_param_sums)) if sl.eval_dx else None,
        param_count=param_count,
        params=" * ".join(f"n{i}" for i in range(n) if p.blocks[i].param) or "1",
        # eval mode: the batch statistics' names bound to the running ones, then its scalar steps
        eval_in=[s.name for _, s, _ in p.running], eval_from=[r.name for r, _, _ in p.running],
        eval_loads=[nest.loads([e]) for _, e in sl.eval_steps], eval_checked=[s.name for s in p.eval_stats],
        running=[(r.name, scalar_code(e, {r: f"{r.name}[s]", s: f"{s.name}[s]"})) for r, s, e in p.running],
        saved_args=[f"a_{s.name}" for s in p.saved], running_args=[f"a_{r.name}" for r, _, _ in p.running],
    )
    # which kernels read M (the template leaves it out of the others)
    ctx["uses_m"] = {name: "M" in reads(*(ctx[k] for k in keys)) for name, keys in (
        ("eval", ("eval_steps", "y")), ("backward", ("sums", "dx")), ("backward_eval", ("eval_steps", "eval_dx")))}
    return ctx

def _statistics(p: Plan) -> set:
    """Every per-statistic value the kernels name: the forward's steps, the saved and eval-mode statistics, the
    backward's sums, the running statistics' batch values."""
    return ({s.symbol for s in p.train_steps} | set(p.saved) | set(p.eval_stats) | {s for s, _ in p.sums}
            | {s for _, s, _ in p.running})
