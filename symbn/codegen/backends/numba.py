"""The Numba backend: scalar loop nests over the block view, printed from the plan."""

from __future__ import annotations

from typing import NamedTuple

import sympy

from symbn.codegen.elementwise import XS, Elementwise, used
from symbn.codegen.plan import Plan
from symbn.codegen.printers import cse, numpy_code, reads, scalar_code
from symbn.codegen.lowering import Lowering
from symbn.core.symbols import BETA, DY, GAMMA, R, X

_SCALAR_NAMES = {X: "xv", DY: "dyv", GAMMA: "gv", BETA: "bv", R: "rv"}

class _Scalar:
    """Scalar code for one loop nest: how an element, a parameter and a statistic are read there."""

    def __init__(self, p: Plan, elem: str, param: str, stat: str | None = None, arrays=("xb", "dyb", "rb")):
        self.p, self.elem, self.param, self.stat, self.arrays = p, elem, param, stat, arrays
        self.stats = {n.symbol for n in p.derivation.graph.nodes if n.kind != "elem"} | {s for s, _ in p.sums}

    def code(self, e: sympy.Expr) -> str:
        return scalar_code(e, _SCALAR_NAMES)

    def stats_in(self, exprs: list[sympy.Expr]) -> list[str]:
        return sorted(s.name for s in used(self.p, exprs) & self.stats)

    def loads(self, exprs: list[sympy.Expr]) -> list[str]:
        """Element loads, statistics (when read per element), coordinates a group of expressions needs."""
        read = used(self.p, exprs)
        x, dy, r = self.arrays
        lines = [line for symbol, line in (
            (X, f"xv = {x}[{self.elem}]"), (DY, f"dyv = {dy}[{self.elem}]"), (R, f"rv = {r}[{self.elem}]"),
            (GAMMA, f"gv = gamma[{self.param}]"), (BETA, f"bv = beta[{self.param}]")) if symbol in read]
        if self.stat:
            lines += [f"{name} = a_{name}[{self.stat}]" for name in self.stats_in(exprs)]
        return lines + [f"{c} = {self.code(e)}" for c, e in self.p.coordinates if c in read]

    def with_cse(self, exprs: list[sympy.Expr]) -> tuple[list[str], list[str]]:
        shared, reduced_exprs = cse(exprs)
        return (self.loads(exprs) + [f"{s} = {self.code(e)}" for s, e in shared],
                [self.code(e) for e in reduced_exprs])


class _NumbaPass:
    """The elementwise work of one loop of a Numba kernel, in the input's dtype: outputs (y, dx), the monomials whose
    sums give the backward's sums (dy, dy*xs), summands of parameter gradients (dy*xhat); x shifted by its mean,
    coefficients hoisted (symbn.codegen.elementwise). Statistic loops (prange over statistics): coefficients fixed per
    statistic are computed once per statistic, parameter ones are arrays the wrapper computes. Column loops: every
    coefficient is an (O, C) array the wrapper computes, read like a statistic. The form (multiply-adds, no
    coefficient added to xs) leaves fast-math nothing to reassociate that would undo the shift. Two passes of one
    kernel name their coefficients apart (*prefix*) and share the parameter arrays (*params*: expression -> name)."""

    def __init__(self, p: Plan, sc: _Scalar, exprs: list[sympy.Expr], shifted: bool, column: bool, array: str,
                 prefix: str = "k", params: dict | None = None):
        self.sc, self.column, self.array, self.prefix = sc, column, array, prefix
        self.params = {} if params is None else params
        self.ew = Elementwise(p)
        self.wrapper: list[tuple[str, str]] = []  # (name, NumPy code) computed by the wrapper, passed in
        self.elem_lines: list[str] = []
        self.known: dict = {}
        self.stat_defs: list[tuple[sympy.Symbol, sympy.Expr]] = []  # once per statistic
        exprs = [self.ew.output(e.xreplace(self.ew.coordinates), shifted, self.coefficient) for e in exprs]
        shared, finals = self.ew.lowered(exprs, self.coefficient, shifted)
        self.shared, self.finals = shared, finals  # what the loads and codes print
        used = self.ew.used(list(finals) + [v for _, v in shared])
        head = [f"xv = {sc.arrays[0]}[{sc.elem}]"] if X in used else []
        head += [f"dyv = {sc.arrays[1]}[{sc.elem}]"] if DY in used else []
        head += [f"rv = {sc.arrays[2]}[{sc.elem}]"] if R in used else []
        if XS in used:
            if column:
                self.wrapper.insert(0, ("shift", f"_cast({self.ew.mean.name}, {array})"))
                head.append("shift = a_shift[o, c]")
            else:
                self.stat_defs.insert(0, (sympy.Symbol("shift"), self.ew.mean))
            head.append("xs = xv - shift")
        self.loads = head + self.elem_lines + [f"{t} = {sc.code(v)}" for t, v in shared]
        self.codes = [sc.code(e) for e in finals]
        exprs = [v for _, v in self.stat_defs]
        loads = [line for symbol, line in ((GAMMA, f"gv = gamma[{sc.param}]"), (BETA, f"bv = beta[{sc.param}]"))
                 if any(symbol in e.free_symbols for e in exprs)]
        self.stat_lines = loads + [f"{k} = {array}.dtype.type({sc.code(v)})" for k, v in self.stat_defs]

    @property
    def arrays(self) -> list[str]:
        """The names the wrapper passes in."""
        return [name for name, _ in self.wrapper]

    def context(self, outputs: int = 1) -> dict:
        """*outputs*: how many of the codes are elementwise outputs (dx, and dr after an epilogue with a residual),
        the others summands of parameter gradients."""
        return dict(stat_lines=self.stat_lines, wrapper=self.wrapper, arrays=self.arrays, loads=self.loads,
                    code=self.codes[0], dr=self.codes[1] if outputs > 1 else None, codes=self.codes,
                    sums=self.codes[outputs:])

    def coefficient(self, e: sympy.Expr) -> sympy.Symbol:
        if e in self.known:
            return self.known[e]
        klass = self.ew.klass(e)
        if klass == "param" and not self.column and e in self.params:  # an array an earlier pass has passed in
            k = self.known[e] = self.params[e]
            self.elem_lines.append(f"{k} = p_{k}[{self.sc.param}]")
            return k
        k = self.known[e] = sympy.Symbol(f"{self.prefix}{len(self.known)}", real=True)
        if self.column:
            self.wrapper.append((str(k), f"np.broadcast_to(_cast({numpy_code(e, {})}, {self.array}), (O, C))"))
            self.elem_lines.append(f"{k} = a_{k}[o, c]")
        elif klass == "stat":
            self.stat_defs.append((k, e))
        elif klass == "param":
            self.params[e] = k
            self.wrapper.append((f"p_{k}", f"_cast({numpy_code(e, {})}, {self.array})"))
            self.elem_lines.append(f"{k} = p_{k}[{self.sc.param}]")
        else:  # varies with both statistic and parameter: computed per element
            self.elem_lines += [f"gv = gamma[{self.sc.param}]"] * (GAMMA in e.free_symbols)
            self.elem_lines += [f"bv = beta[{self.sc.param}]"] * (BETA in e.free_symbols)
            self.elem_lines.append(f"{k} = {self.array}.dtype.type({self.sc.code(e)})")
        return k


class DxLoop(NamedTuple):
    """The training backward's loops over elements as the kernel runs them."""

    scalar: _Scalar  # the scalar printer of the kernel's loop nest
    passes: list[_NumbaPass]  # the pass over the sums of monomials (where the sums split), then the dx pass
    exprs: list[sympy.Expr]  # what the dx pass computes: dx, and the parameter-gradient summands beside it
    shifted: bool  # whether x is shifted by its mean (xs = x - shift)


def dx_loop(lw: Lowering) -> DxLoop:
    """The passes of the training backward (statistic loops share the parameter arrays between them; column loops
    pass every coefficient in as an array) and the printer they use. The derivation documents read them too."""
    p = lw.plan
    shifted = lw.mean is not None and lw.mean in p.saved
    if lw.columns:
        col = lw.columns
        sc = _Scalar(p, "o, r, c", "c" if col.param_over_c else "0", stat="o, c", arrays=("x3", "dy3", "r3"))
        from_sums = bool(p.param_sums) and not lw.rest
        exprs = [p.dx] + _dr(p) + ([] if from_sums else [e for _, e in p.param_sums])
        column, array, params = True, "x3", None
    else:
        n = len(p.blocks)
        sc = _Scalar(p, ", ".join(f"i{i}" for i in range(n)), flat_index([i for i in range(n) if p.blocks[i].param]))
        exprs = [p.dx] + _dr(p) + ([] if lw.param_per_stat else [e for _, e in p.param_sums])
        column, array, params = False, "xb", {}
    passes = []
    if lw.numba_split:
        passes.append(_NumbaPass(p, sc, [m for _, m in lw.split.monomials], shifted, column, array, "ks", params))
    passes.append(_NumbaPass(p, sc, exprs, shifted, column, array, "k", params))
    return DxLoop(sc, passes, exprs, shifted)


def statements(lw: Lowering) -> dict:
    """The Numba template's context: column loops where the plan chose them, else loops over statistics."""
    if lw.columns:
        column = _column_statements(lw)
        return dict(column=column, param_buffers=False, math="math" in reads(column))
    p = lw.plan
    blocks = p.blocks
    all_ = list(range(len(blocks)))
    kept = [i for i in all_ if not blocks[i].reduced]
    reduced = [i for i in all_ if blocks[i].reduced]
    param = [i for i in all_ if blocks[i].param]
    elem = ", ".join(f"i{i}" for i in all_)
    loop = dx_loop(lw)
    sc = loop.scalar
    first_elem = ", ".join("0" if blocks[i].reduced else f"i{i}" for i in all_)

    def elementwise(exprs, given, prefix="k", params=None, outputs=1):
        shifted = lw.mean is not None and lw.mean in given
        return _NumbaPass(p, sc, list(exprs), shifted, False, "xb", prefix, params).context(outputs)

    split = None
    if lw.numba_split:
        # the sums from sums of monomials in the input's dtype (dy, dy*xs), combined per statistic in float64
        split = dict(names=[q.name for q, _ in lw.split.monomials],
                     totals=[(s.name, sc.code(t)) for (s, _), t in zip(p.sums, lw.split.totals)],
                     param_from=[s.name for _, s in lw.taken], **loop.passes[0].context())
        sum_loads, sum_codes = [], []
    else:
        # Two loops, two CSE groups: the sums are finished before the dx loop starts, so nothing may be shared.
        first = [e for _, e in p.sums] + ([e for _, e in p.param_sums] if lw.param_per_stat else [])
        sum_loads, sum_codes = sc.with_cse(first) if first else ([], [])
    dx = loop.passes[-1].context(1 + len(_dr(p)))
    if split:  # one statistic's body runs both loops: what the sums' loop set up (shift, gamma) is not set up again
        dx["stat_lines"] = [line for line in dx["stat_lines"] if line not in split["stat_lines"]]
    # an eval backward of its own only where the spec keeps running statistics
    eval_dx = (elementwise([p.eval_dx] + _dr(p) + [e for _, e in p.eval_param_sums], p.eval_stats,
                           outputs=1 + len(_dr(p))) if p.eval_dx is not None else None)
    every_stat = {n.symbol for n in p.derivation.graph.nodes}
    moments = _moments(lw, sc.code)
    train_steps = [dict(name=s.symbol.name, reduce=s.reduce, code=sc.code(s.expr), denominator=sc.code(s.denominator),
                        loads=sc.loads([s.expr]) if s.reduce else []) for s in p.train_steps]
    y, y_eval = elementwise([p.y], every_stat), elementwise([p.y], p.eval_stats)
    sums = list(zip([s.name for s, _ in p.sums], sum_codes))
    backward_wrapper = (split["wrapper"] if split else []) + dx["wrapper"]
    # the names each function reads: its template leaves out M and marks unused parameters where they are not read
    uses = dict(
        train_kernel=reads(moments if moments else train_steps, _in_kernel(y)),
        forward_train=reads(y["wrapper"]), map_kernel_y=reads(_in_kernel(y_eval)), forward_eval=reads(y_eval["wrapper"]),
        backward_kernel=reads(_in_kernel(split) + [split["totals"]] if split else [sums, sum_loads],
                              _in_kernel(dx)),
        backward=reads(backward_wrapper),
    )
    if eval_dx is not None:
        uses |= dict(backward_eval_kernel=reads(_in_kernel(eval_dx)), backward_eval=reads(eval_dx["wrapper"]))
    return dict(
        uses={name: sorted(found) for name, found in uses.items()},
        math="math" in set().union(*uses.values()),
        sizes=", ".join(f"n{i}" for i in all_) + ("," if len(all_) == 1 else ""),
        count=" * ".join(f"n{i}" for i in reduced),
        stats=loop_space(kept, reduced, "k"), elem=elem, param_flat=flat_index(param), param_per_stat=lw.param_per_stat,
        # maps with nothing to reduce walk rows (every block but the innermost) and find each row's statistic; where
        # the innermost block is kept a row would hold many statistics, so they walk statistic by statistic
        rows=(dict(loop_space(all_[:-1], all_[-1:], "r"), stat=flat_index(kept)) if blocks[-1].reduced
              else dict(loop_space(kept, reduced, "r"), stat="r")),
        param_fixed_inner=lw.param_fixed_inner, moments=moments, first_elem=first_elem, train_steps=train_steps,
        y=y, y_eval=y_eval, sums=sums, sum_loads=sum_loads, split=split, dx=dx,
        param_count=len(p.param_sums), stat_param_codes=sum_codes[len(p.sums):],
        eval_dx=eval_dx, backward_wrapper=backward_wrapper,
        column=None, param_buffers=lw.param_buffers,
    )


def _dr(p: Plan) -> list[sympy.Expr]:
    """dr, where an epilogue takes a residual: an output of the dx pass beside dx."""
    return [p.dr] if p.dr is not None else []


def _in_kernel(part: dict) -> list:
    """The code of a pass that runs inside its kernel (not what the wrapper computes and passes in)."""
    return [part.get(key, []) for key in ("stat_lines", "loads", "codes")]


def _moments(lw: Lowering, code) -> dict | None:
    """The one-pass statistics (symbn.codegen.reductions.moments) as the template prints them."""
    m = lw.moments
    if m is None:
        return None
    steps = [(s.symbol.name, f"({code(s.expr)}) / ({code(s.denominator)})" if s.reduce else code(s.expr))
             for s in m.steps]
    return dict(degree=m.degree, steps=steps, powers=["*".join(["d"] * k) for k in range(1, m.degree + 1)])


def _column_statements(lw: Lowering) -> dict:
    """Column loops over the (O, R, C) view (symbn.codegen.lowering.Columns): over rows, with one accumulator per
    column."""
    p, col = lw.plan, lw.columns
    loop = dx_loop(lw)
    sc = loop.scalar

    def kernel(exprs):
        loads, codes = sc.with_cse(list(exprs))
        return dict(stats=sc.stats_in(list(exprs)), loads=loads, codes=codes, wrapper=[])

    def elementwise(exprs, given, prefix="k"):
        """Elementwise work in the input's dtype: an output and the summands of the sums beside it (parameter
        gradients, added up in float64 per column), or the monomials of the backward's sums."""
        return _column_part(_NumbaPass(p, sc, list(exprs), lw.mean is not None and lw.mean in given, True, "x3",
                                       prefix))

    steps = []
    for s in p.train_steps:
        step = dict(name=s.symbol.name, reduce=s.reduce, code_np=numpy_code(s.expr, {}),
                    denominator_np=numpy_code(s.denominator, {}))
        if s.reduce:
            step |= kernel([s.expr])
        steps.append(step)
    # dgamma, dbeta as sums the backward takes anyway (the same summand; the reduction set is within the columns)
    param_from_sums = [s.name for _, s in lw.taken] if p.param_sums and not lw.rest else None
    every_stat = {n.symbol for n in p.derivation.graph.nodes}
    if lw.numba_split:  # the sums from sums of monomials in the input's dtype (dy, dy*xs), combined per column
        sums = _column_part(loop.passes[0]) | dict(
            names=[q.name for q, _ in lw.split.monomials],
            totals=[(s.name, numpy_code(t, {})) for (s, _), t in zip(p.sums, lw.split.totals)])
    else:
        sums = kernel([e for _, e in p.sums]) | dict(names=[s.name for s, _ in p.sums], totals=[]) if p.sums else None
    dx = _column_part(loop.passes[-1])
    if sums:  # what the sums' wrapper computed (the shift) is not computed again
        dx["wrapper"] = [w for w in dx["wrapper"] if w not in sums["wrapper"]]
    moments = _moments(lw, lambda e: numpy_code(e, {}))
    y, y_eval = elementwise([p.y], every_stat), elementwise([p.y], p.eval_stats)
    eval_dx = (elementwise([p.eval_dx] + _dr(p) + [e for _, e in p.eval_param_sums], p.eval_stats)
               if p.eval_dx is not None else None)  # only where the spec keeps running statistics
    kernels = dict(col_y=y, col_y_eval=y_eval, col_dx=dx) | ({"col_dx_eval": eval_dx} if eval_dx else {})
    kernels |= {"col_sums": sums} if sums else {}
    kernels |= {f"col_sum_{s['name']}": s for s in steps if s["reduce"]}
    # the names each function reads: its template leaves out M and marks unused parameters where they are not read
    uses = {name: reads(k["loads"], k["codes"]) for name, k in kernels.items()}
    uses |= dict(
        forward_train=reads(moments["steps"] if moments else [(s["code_np"], s["denominator_np"]) for s in steps],
                            y["wrapper"]),
        forward_eval=reads(y_eval["wrapper"]),
        backward=reads(sums["wrapper"], sums["totals"], dx["wrapper"]) if sums else reads(dx["wrapper"]),
    )
    if eval_dx is not None:
        uses["backward_eval"] = reads(eval_dx["wrapper"])
    return dict(
        uses={name: sorted(found) for name, found in uses.items()},
        outer=repr(col.outer), reduced=repr(col.reduced), param_over_c=col.param_over_c,
        accumulators_in_l1=lw.column_accumulators_in_l1,
        train_steps=steps, moments=moments, y=y, y_eval=y_eval, sums=sums, dx=dx, param_from_sums=param_from_sums,
        eval_dx=eval_dx,
    )


def _column_part(ps: _NumbaPass) -> dict:
    return dict(stats=ps.arrays, loads=ps.loads, codes=ps.codes, wrapper=ps.wrapper)


def flat_index(indices: list[int]) -> str:
    """The flat (C-order) index of the given blocks, e.g. i0 * n2 + i2."""
    if not indices:
        return "0"
    terms = []
    for pos, i in enumerate(indices):
        terms.append(" * ".join([f"i{i}"] + [f"n{j}" for j in indices[pos + 1:]]))
    return " + ".join(terms)


def loop_space(outer: list[int], inner: list[int], var: str) -> dict:
    """A parallel loop over the flattened *outer* blocks (unravelled from *var*) around loops over *inner*."""
    unravel, rest = [], var
    for i in reversed(outer[1:]):
        unravel.append(f"i{i} = {rest} % n{i}")
        rest = f"({rest} // n{i})"
    if outer:
        unravel.append(f"i{outer[0]} = {rest}")
    loops = [f"for i{i} in range(n{i}):" for i in inner]
    return dict(count=" * ".join(f"n{i}" for i in outer) or "1", unravel=unravel, loops=loops)
