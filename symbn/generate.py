"""Kernel modules from a plan: the template context (plain strings, lists, booleans) and the rendered text."""

from __future__ import annotations

import hashlib

import sympy

from . import __version__
from .derive import DX, derive
from .lower import Plan, plan
from .printers import cse, numpy_code, scalar_code, text
from .render import render, template_source
from .report import axis_names, describe_spec, set_size_text
from .spec import Spec
from .symbols import BETA, DY, GAMMA, MOMENTUM, X

BACKENDS = ("numpy", "numba")
DTYPES = ("float32", "float64")
CONTENT_HASH = "# Content hash: "

_RUNNING_RULES = {
    "pytorch": "r <- (1 - momentum)*r + momentum*s, central moments corrected by M/(M-1)",
    "keras": "r <- momentum*r + (1 - momentum)*s, uncorrected",
}
_NUMPY_NAMES = {X: "xb", DY: "dyb"}
_SCALAR_NAMES = {X: "xv", DY: "dyv", GAMMA: "gv", BETA: "bv"}


def module_name(spec: Spec, backend: str, dtypes: tuple[str, ...] = DTYPES) -> str:
    return f"{spec.name}_{backend}" + ("" if tuple(dtypes) == DTYPES else "_" + "_".join(dtypes))


def module_text(spec: Spec, backend: str, command: str = "symbn generate --catalog",
                dtypes: tuple[str, ...] = DTYPES) -> str:
    """The generated module for *spec* and *backend*, with its banner and content hash."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}; got {backend!r}")
    if not dtypes or any(t not in DTYPES for t in dtypes):
        raise ValueError(f"dtype: expected some of {', '.join(DTYPES)}; got {', '.join(map(str, dtypes)) or 'none'}")
    p = plan(derive(spec))
    ctx = _context(p, backend, command)
    ctx["dtypes"] = "(" + "".join(f"np.dtype(np.{t}), " for t in dtypes).rstrip(" ") + ")"
    ctx["digest"] = input_digest(spec, backend, dtypes)
    ctx["module_id"] = f"{module_name(spec, backend, dtypes)}_{ctx['digest']}"
    ctx["dtype_text"] = " or ".join(dtypes)
    body = render("module.py.j2", ctx)
    return _with_content_hash(body)


def input_digest(spec: Spec, backend: str, dtypes: tuple[str, ...] = DTYPES) -> str:
    parts = [spec.digest(), backend, ",".join(dtypes), __version__, sympy.__version__,
             template_source("module.py.j2"), template_source(f"{backend}_kernels.py.j2")]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def content_hash(text_: str) -> str:
    lines = [line for line in text_.splitlines(keepends=True) if not line.startswith(CONTENT_HASH)]
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:16]


def _with_content_hash(body: str) -> str:
    head, rest = body.split("\n", 3)[:3], body.split("\n", 3)[3]
    draft = "\n".join(head) + "\n" + rest
    return "\n".join(head) + f"\n{CONTENT_HASH}{content_hash(draft)}\n" + rest


def _context(p: Plan, backend: str, command: str) -> dict:
    spec, d = p.spec, p.derivation
    reductions = [n.symbol for n in d.graph.reductions]
    running = [r.name for r, _, _ in p.running]
    params = [leaf.name for leaf in (GAMMA, BETA) if leaf in d.graph.leaves]
    names = axis_names(spec)
    counts = d.op_counts
    formulas = [f"{s} = {text(e)}" for s, e in d.coordinates + d.reductions + d.compact]
    formulas += [f"eval mode: {s} = {text(e)}" for s, e in d.eval_mode if s == DX]
    formulas += [f"{s} <- {text(e)}" for s, e in d.running]
    eval_lines = [(r.name, run) for r, run in zip(reductions, running)]
    eval_lines += [(s.symbol.name, numpy_code(s.expr, {})) for s in p.eval_steps]
    ctx = dict(
        symbn_version=__version__, sympy_version=sympy.__version__, spec_name=spec.name,
        backend_template=f"{backend}_kernels.py.j2", command=command,
        title=f"{spec.name}: {spec.preset + ' norm' if spec.preset else 'custom normalization'}, {backend} backend.",
        description=describe_spec(spec), numba=backend == "numba",
        shape_text="(" + ", ".join(names) + ")",
        stat_shape_text=_blocks_text(p, names, lambda b: not b.reduced),
        param_shape_text="(" + ", ".join(names[a] for a in spec.param_axes) + ("," if len(spec.param_axes) == 1 else "") + ")",
        set_size_text=set_size_text(spec),
        sig_params="x, " + "".join(f"{q}, " for q in params), sig_gamma="gamma, " if "gamma" in params else "",
        params=params, has_gamma="gamma" in params, has_beta="beta" in params,
        grads=["dx"] + ["d" + q for q in params],
        grads_tuple="(" + ", ".join(["dx"] + ["d" + q for q in params]) + ("," if not params else "") + ")",
        running_rule=_RUNNING_RULES[spec.running],
        saved=[s.name for s in p.saved], saved_tuple=repr(tuple(s.name for s in p.saved)),
        running=running, running_tuple=repr(tuple(running)), running_convention=spec.running,
        batch_stats=[r.name for r in reductions], train_out=_train_out(p),
        eval_stats=[s.name for s in p.eval_stats], eval_steps=eval_lines,
        running_updates=[(r.name, numpy_code(e, {MOMENTUM: "momentum"})) for r, _, e in p.running],
        central=any(n.central for n in d.graph.reductions),
        ndim=spec.ndim, layout=repr(spec.layout), reduce_axes=repr(spec.reduce_axes),
        param_axes=repr(spec.param_axes), groups=repr(spec.groups), channel_axis=repr(spec.channel_axis),
        blocks=repr(tuple((b.axes, b.split, b.reduced, b.param) for b in p.blocks)),
        eps=repr(spec.eps), momentum=repr(spec.momentum), formulas=formulas,
        ops=dict(forward=counts["forward"]["per_element"], backward=counts["backward"]["per_element"]),
    )
    ctx["reduced_blocks"] = repr(tuple(i for i, b in enumerate(p.blocks) if b.reduced))
    ctx["nonparam_blocks"] = repr(tuple(i for i, b in enumerate(p.blocks) if not b.param))
    needed = d.graph.nodes[:-1] if BETA in d.graph.leaves else d.graph.nodes  # y = ... + beta: its value is unused
    ctx["staged_forward"] = [(n.name, numpy_code(n.expr, _NUMPY_NAMES)) for n in needed]
    ctx["staged_backward"] = [(s.name, numpy_code(e, _NUMPY_NAMES)) for s, e in d.staged]
    if backend == "numpy":
        ctx["np"] = _numpy_statements(p)
    else:
        ctx["nb"] = _numba_statements(p)
    return ctx


def _blocks_text(p: Plan, names: list[str], keep) -> str:
    parts = []
    for b in p.blocks:
        if keep(b):
            label = "*".join(names[a] for a in b.axes)
            parts.append("G" if b.split == "groups" else f"{label}/G" if b.split == "within" else label)
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _numpy_statements(p: Plan) -> dict:
    """Function bodies for the NumPy backend. Every pass over the input runs in chunks of rows of the first block, so
    the float64 temporaries of an expression stay in cache instead of making whole-array round trips to memory. When
    the first block is kept, a chunk holds whole statistics and every pass of a forward or backward runs while the
    chunk is in cache; when it is reduced, statistics span chunks and each reduction is a pass of its own."""
    return _NumpyBodies(p).context()


_XS = sympy.Symbol("xs", real=True)  # x minus its shift, in the input's dtype
_SHIFT = sympy.Symbol("shift", real=True)  # the shift: a mean of x rounded to the input's dtype


class _NumpyBodies:
    """Elementwise work runs in the input's dtype (float32 stays float32: no float64 temporaries, which NumPy casts
    slowly, elementwise); anything per statistic or per parameter is hoisted out of the element loop as a float64
    coefficient and cast once. Accuracy comes from the shift: once a mean of x is known, x is replaced by
    xs + shift, with shift the mean rounded to the dtype, so xs = x - shift is exact or nearly so, and the small
    difference shift - mean enters the coefficients in float64. Reductions accumulate in float64."""

    def __init__(self, p: Plan):
        self.p = p
        self.whole = not p.blocks[0].reduced
        self.stats = {n.symbol for n in p.derivation.graph.nodes if n.kind != "elem"} | {s for s, _ in p.sums}
        self.stats.add(_SHIFT)
        # inside a chunk: the chunk's rows of x and dy, and of every array that spans the first block
        self.sliced = (self.stats if self.whole else set()) | ({GAMMA, BETA} if p.blocks[0].param else set())
        self.names = {X: "xc", DY: "dyc"} | {s: f"{s.name}_c" for s in self.sliced}
        kept = {i for i, b in enumerate(p.blocks) if not b.reduced}
        params = {i for i, b in enumerate(p.blocks) if b.param}
        # parameters fixed over each statistic (batch, instance norm) fold into the statistics' coefficients
        self.param_class = "stat" if params <= kept else "param"
        means = [s.symbol for s in p.train_steps if s.reduce and s.expr == X]
        self.mean = means[0] if means else None
        self.coordinates = dict(p.coordinates)
        self.temps: set = set()  # CSE's names for shared elementwise parts

    # --- expressions -------------------------------------------------------------------------------------------

    def code(self, e: sympy.Expr) -> str:
        return numpy_code(e, self.names)

    def klass(self, e: sympy.Expr) -> str | None:
        """Which arrays a chunk-constant expression spans: statistics, parameters, both or none (a scalar)."""
        kinds = {"stat" if s in self.stats else self.param_class for s in e.free_symbols if s in self.stats
                 or s in (GAMMA, BETA)}
        return kinds.pop() if len(kinds) == 1 else ("both" if kinds else None)

    def elementwise(self, e: sympy.Expr) -> bool:
        return any(s in (X, DY, _XS) or s in self.coordinates or s in self.temps for s in e.free_symbols)

    def hoist(self, e: sympy.Expr, loop) -> sympy.Expr:
        """*e* with every chunk-constant part replaced by a coefficient symbol (k0, k1, ...) of the loop."""
        if not self.elementwise(e):
            return loop.coefficient(e) if self.klass(e) else e
        if e.is_Atom:
            return e
        if isinstance(e, (sympy.Add, sympy.Mul)):
            varying = [self.hoist(a, loop) for a in e.args if self.elementwise(a)]
            groups: dict = {}
            for a in e.args:
                if not self.elementwise(a):
                    groups.setdefault(self.klass(a), []).append(a)
            scalars = groups.pop(None, [])
            if scalars and groups:  # numbers, M and eps join a coefficient rather than cost an elementwise step
                first = next(iter(groups))
                groups[first] = groups[first] + scalars
                scalars = []
            constants = [loop.coefficient(e.func(*args)) for args in groups.values()]
            return e.func(*varying, *constants, *scalars, evaluate=False)
        return e.func(*(self.hoist(a, loop) for a in e.args), evaluate=False)

    def lowered(self, exprs, loop, shifted: bool) -> tuple[list[str], list[str]]:
        """Chunk statements and final codes for *exprs*: x shifted when the mean is known, constants hoisted,
        shared elementwise parts computed once."""
        sub = {X: _XS + _SHIFT} if shifted else {}
        exprs = [e.xreplace(sub) for e in exprs]
        replacements, reduced = cse(exprs, prefix="t")
        self.temps |= {s for s, _ in replacements}
        lines = [f"{s} = {self.code(self.hoist(v, loop))}" for s, v in replacements]
        return lines, [self.code(self.hoist(e, loop)) for e in reduced]

    def used(self, exprs) -> set:
        used = set().union(*(e.free_symbols for e in exprs))
        for c, e in self.p.coordinates:
            if c in used:
                used |= e.free_symbols
        return used | ({X} if _XS in used else set())

    def output(self, e: sympy.Expr, shifted: bool, loop) -> sympy.Expr:
        """An elementwise output as a sum of coefficient * (xs, dy or 1) where it is affine in them and every
        coefficient is per statistic (batch norm: y = xs*k1 + k2), so each element costs a multiply-add or two."""
        if self.param_class != "stat":
            return e
        e = e.xreplace(self.coordinates).xreplace({X: _XS + _SHIFT} if shifted else {})
        elems = [s for s in (_XS, X, DY) if s in e.free_symbols]
        try:
            poly = sympy.Poly(sympy.expand(e), *elems)
        except sympy.PolynomialError:
            return e
        if poly.total_degree() > 1:
            return e
        terms = [loop.coefficient(sympy.factor_terms(c)) * sympy.Mul(*(s**k for s, k in zip(elems, m)))
                 for m, c in poly.terms()]
        return sympy.Add(*terms)

    # --- one pass over the chunks ---------------------------------------------------------------------------

    def loop(self, exprs, shifted: bool, computed=()):
        return _Loop(self, exprs, shifted, set(computed))

    # --- function bodies ------------------------------------------------------------------------------------

    def context(self) -> dict:
        p = self.p
        return dict(whole=self.whole, forward=self.forward(),
                    forward_eval=self.shift(p.eval_stats) + self.map_pass("y", p.y, [], self.mean in p.eval_stats),
                    backward=self.backward(p.sums, p.dx, p.param_sums, p.saved),
                    backward_eval=self.backward((), p.eval_dx, p.eval_param_sums, p.eval_stats))

    def shift(self, given) -> list[str]:
        return [f"shift = _cast({self.mean.name}, xb)"] if self.mean in given else []

    def forward(self) -> list[str]:
        p = self.p
        red = "axis=_RED, dtype=np.float64, keepdims=True"
        if self.whole:
            train_out = _train_out(p)
            loop = self.loop([s.expr for s in p.train_steps] + [p.y], shifted=False,
                             computed={s.symbol for s in p.train_steps} | {_SHIFT})
            shifted = False
            for s in p.train_steps:
                if not s.reduce:
                    loop.body.append(f"{s.symbol.name}_c = {self.code(s.expr)}")
                    continue
                value = f"np.sum({loop.statements([s.expr], shifted)[0]}, {red})"
                if s.denominator != 1:
                    value += f" / ({self.code(s.denominator)})"
                loop.body.append(f"{s.symbol.name}_c = {value}")
                if s.symbol == self.mean:  # the chunk holds the whole statistic: shift by it from here on
                    loop.body += [f"shift_c = _cast({s.symbol.name}_c, xb)", "xs = xc - shift_c"]
                    shifted = True
            loop.body.append(f"y[sl] = {loop.statements([self.output(p.y, shifted, loop)], shifted)[0]}")
            loop.body += [f"{s}[sl] = {s}_c" for s in train_out]
            return [f"{s} = _stat(xb)" for s in train_out] + ["y = np.empty_like(xb)"] + loop.lines()
        out, shifted = [], False
        for s in p.train_steps:
            name = s.symbol.name
            if not s.reduce:
                out.append(f"{name} = {self.code(s.expr)}")
                continue
            loop = self.loop([s.expr], shifted)
            loop.body.append(f"{name} += np.sum({loop.statements([s.expr], shifted)[0]}, {red})")
            out += [f"{name} = _stat(xb)"] + loop.lines()
            if s.denominator != 1:
                out.append(f"{name} /= {self.code(s.denominator)}")
            if s.symbol == self.mean:
                out.append(f"shift = _cast({name}, xb)")
                shifted = True
        return out + self.map_pass("y", p.y, [], shifted)

    def map_pass(self, out: str, expr, param_sums, shifted: bool) -> list[str]:
        """One pass writing an elementwise output (and adding up parameter gradients)."""
        loop = self.loop([expr] + [e for _, e in param_sums], shifted)
        exprs = [self.output(expr, shifted, loop)] + [e for _, e in param_sums]
        codes = loop.statements(exprs, shifted)
        loop.body.append(f"{out}[sl] = {codes[0]}")
        loop.body += [self.param_add(s, c) for (s, _), c in zip(param_sums, codes[1:])]
        return [f"{out} = np.empty_like(xb)"] + self.param_accumulators(param_sums) + loop.lines()

    def backward(self, sums, dx, param_sums, given) -> list[str]:
        red = "axis=_RED, dtype=np.float64, keepdims=True"
        shifted, head = self.mean in given, self.shift(given)
        if not sums:
            return head + self.map_pass("dx", dx, param_sums, shifted)
        exprs = [e for _, e in sums] + [e for _, e in param_sums]
        if self.whole:
            loop = self.loop(exprs + [dx], shifted, computed={s for s, _ in sums})
            codes = loop.statements(exprs, shifted)
            loop.body += [f"{s.name}_c = np.sum({c}, {red})" for (s, _), c in zip(sums, codes)]
            loop.body += [self.param_add(s, c) for (s, _), c in zip(param_sums, codes[len(sums):])]
            loop.body.append(f"dx[sl] = {loop.statements([self.output(dx, shifted, loop)], shifted)[0]}")
            return head + ["dx = np.empty_like(xb)"] + self.param_accumulators(param_sums) + loop.lines()
        loop = self.loop(exprs, shifted)
        codes = loop.statements(exprs, shifted)
        loop.body += [f"{s.name} += np.sum({c}, {red})" for (s, _), c in zip(sums, codes)]
        loop.body += [self.param_add(s, c) for (s, _), c in zip(param_sums, codes[len(sums):])]
        out = head + [f"{s.name} = _stat(xb)" for s, _ in sums] + self.param_accumulators(param_sums)
        return out + loop.lines() + self.map_pass("dx", dx, [], shifted)

    def param_accumulators(self, param_sums) -> list[str]:
        return [f"{s.name} = _pstat(xb)" for s, _ in param_sums]

    def param_add(self, s, code: str) -> str:
        total = f"np.sum({code}, axis=_NONPARAM, dtype=np.float64)"
        # parameters along the first block: a chunk's rows are its own parameters' whole share
        return f"{s.name}[sl] = {total}" if self.p.blocks[0].param else f"{s.name} += {total}"


class _Loop:
    """One pass over the chunks: coefficients hoisted before it (or into it, where they depend on the chunk), the
    chunk's views, then the statements."""

    def __init__(self, bodies: _NumpyBodies, exprs, shifted: bool, computed: set):
        self.b, self.computed = bodies, computed
        self.before: list[str] = []
        self.body: list[str] = []
        self.known: dict = {}
        used = bodies.used(list(exprs))
        pairs = [(n, v) for s, n, v in ((X, "xc", "xb[sl]"), (DY, "dyc", "dyb[sl]")) if s in used]
        chunked = (used | ({_SHIFT} if shifted and X in used else set())) & bodies.sliced - computed
        pairs += [(bodies.names[s], f"_part({s.name}, sl)") for s in sorted(chunked, key=str)
                  if s not in bodies.coordinates]
        self.views = [", ".join(n for n, _ in pairs) + " = " + ", ".join(v for _, v in pairs)] if pairs else []
        self.shift_line = f"xs = xc - {bodies.names.get(_SHIFT, 'shift')}" if shifted and X in used else None
        self.coordinates_done: set = set()

    def coefficient(self, e: sympy.Expr) -> sympy.Symbol:
        if e not in self.known:
            k = sympy.Symbol(f"k{len(self.known)}", real=True)
            self.known[e] = k
            line = f"{k} = _cast({self.b.code(e)}, xb)"
            inside = e.free_symbols & self.b.sliced
            (self.body if inside else self.before).append(line)
        return self.known[e]

    def statements(self, exprs, shifted: bool) -> list[str]:
        """Add the coordinates and shared parts *exprs* need to the body; return their codes."""
        used = self.b.used(list(exprs))
        for c, e in self.b.p.coordinates:
            if c in used and c not in self.coordinates_done:
                lines, (code,) = self.b.lowered([e], self, shifted)
                self.body += lines + [f"{c} = {code}"]
                self.coordinates_done.add(c)
        lines, codes = self.b.lowered(list(exprs), self, shifted)
        self.body += lines
        return codes

    def lines(self) -> list[str]:
        head = self.views + ([self.shift_line] if self.shift_line else [])
        return self.before + ["for sl in _chunks(xb):"] + _indent(head + self.body)


def _train_out(p: Plan) -> list[str]:
    """Statistics forward_train hands on: the saved ones and every batch reduction, in graph order."""
    order = [n.symbol for n in p.derivation.graph.nodes]
    chosen = set(p.saved) | {n.symbol for n in p.derivation.graph.reductions}
    return [s.name for s in sorted(chosen, key=order.index)]


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


class _Scalar:
    """Scalar code for one loop nest: how an element, a parameter and a statistic are read there."""

    def __init__(self, p: Plan, elem: str, param: str, stat: str | None = None, arrays=("xb", "dyb")):
        self.p, self.elem, self.param, self.stat, self.arrays = p, elem, param, stat, arrays
        self.stats = {n.symbol for n in p.derivation.graph.nodes if n.kind != "elem"} | {s for s, _ in p.sums}

    def code(self, e: sympy.Expr) -> str:
        return scalar_code(e, _SCALAR_NAMES)

    def used(self, exprs: list[sympy.Expr]) -> set:
        used = set().union(*(e.free_symbols for e in exprs))
        for c, e in self.p.coordinates:
            if c in used:
                used |= e.free_symbols
        return used

    def stats_in(self, exprs: list[sympy.Expr]) -> list[str]:
        return sorted(s.name for s in self.used(exprs) & self.stats)

    def loads(self, exprs: list[sympy.Expr]) -> list[str]:
        """Element loads, statistics (when read per element), coordinates a group of expressions needs."""
        used = self.used(exprs)
        x, dy = self.arrays
        lines = [line for symbol, line in (
            (X, f"xv = {x}[{self.elem}]"), (DY, f"dyv = {dy}[{self.elem}]"),
            (GAMMA, f"gv = gamma[{self.param}]"), (BETA, f"bv = beta[{self.param}]")) if symbol in used]
        if self.stat:
            lines += [f"{name} = a_{name}[{self.stat}]" for name in self.stats_in(exprs)]
        return lines + [f"{c} = {self.code(e)}" for c, e in self.p.coordinates if c in used]

    def with_cse(self, exprs: list[sympy.Expr]) -> tuple[list[str], list[str]]:
        shared, reduced_exprs = cse(exprs)
        return (self.loads(exprs) + [f"{s} = {self.code(e)}" for s, e in shared],
                [self.code(e) for e in reduced_exprs])


def _numba_statements(p: Plan) -> dict:
    blocks = p.blocks
    all_ = list(range(len(blocks)))
    kept = [i for i in all_ if not blocks[i].reduced]
    reduced = [i for i in all_ if blocks[i].reduced]
    param = [i for i in all_ if blocks[i].param]
    elem = ", ".join(f"i{i}" for i in all_)
    sc = _Scalar(p, elem, _flat(param))
    y_loads, (y_code,) = sc.with_cse([p.y])
    # Two loops, two CSE groups: the sums are finished before the dx loop starts, so nothing may be shared across.
    # When each statistic's elements share one parameter, dgamma/dbeta are sums over the same set as the named
    # reductions (batch norm: dbeta = sum(dy), dgamma = sum(dy*xhat)): accumulate them in the first loop, where CSE
    # computes each shared summand once.
    param_per_stat = set(param) <= set(kept)
    first = [e for _, e in p.sums] + ([e for _, e in p.param_sums] if param_per_stat else [])
    sum_loads, sum_codes = sc.with_cse(first) if first else ([], [])
    dx_loads, dx_codes = sc.with_cse([p.dx] + ([] if param_per_stat else [e for _, e in p.param_sums]))
    eval_loads, eval_codes = sc.with_cse([p.eval_dx] + [e for _, e in p.eval_param_sums])
    return dict(
        sizes=", ".join(f"n{i}" for i in all_) + ("," if len(all_) == 1 else ""),
        count=" * ".join(f"n{i}" for i in reduced),
        stats=_space(kept, reduced, "k"), elem=elem, param_flat=_flat(param), param_per_stat=param_per_stat,
        param_fixed_inner=reduced[-1] not in param,
        train_steps=[dict(name=s.symbol.name, reduce=s.reduce, code=sc.code(s.expr),
                          denominator=sc.code(s.denominator), loads=sc.loads([s.expr]) if s.reduce else [])
                     for s in p.train_steps],
        y=dict(loads=y_loads, code=y_code),
        sums=list(zip([s.name for s, _ in p.sums], sum_codes)),
        backward=dict(sum_loads=sum_loads, dx_loads=dx_loads), dx=dx_codes[0],
        param_sums=sum_codes[len(p.sums):] if param_per_stat else dx_codes[1:],
        eval_backward=dict(loads=eval_loads), eval_dx=eval_codes[0], eval_param_sums=eval_codes[1:],
        column=_column_statements(p),
    )


def _column_statements(p: Plan) -> dict | None:
    """Layouts whose innermost block is kept (batch norm NHWC and NC, instance norm NHWC): statistics run along the
    contiguous axis, so the loops go over rows and keep one accumulator per column. The input is viewed as
    (O, R, C): kept outer blocks, reduced blocks, the kept innermost block, with parameters (if any) over C only."""
    b = p.blocks
    n = len(b)
    if b[-1].reduced:
        return None
    first_reduced = next(i for i, block in enumerate(b) if block.reduced)
    if any(block.reduced for block in b[:first_reduced]) or not all(block.reduced for block in b[first_reduced:-1]):
        return None
    if any(block.param for block in b[:-1]):
        return None
    sc = _Scalar(p, "o, r, c", "c" if b[-1].param else "0", stat="o, c", arrays=("x3", "dy3"))

    def kernel(exprs, extra=()):
        loads, codes = sc.with_cse(list(exprs))
        return dict(stats=sc.stats_in(list(exprs)), loads=loads, codes=codes)

    steps = []
    for s in p.train_steps:
        step = dict(name=s.symbol.name, reduce=s.reduce, code_np=numpy_code(s.expr, {}),
                    denominator_np=numpy_code(s.denominator, {}))
        if s.reduce:
            step |= kernel([s.expr])
        steps.append(step)
    return dict(
        outer=repr(tuple(range(first_reduced))), reduced=repr(tuple(range(first_reduced, n - 1))),
        param_over_c=b[-1].param,
        train_steps=steps, y=kernel([p.y]),
        sums=kernel([e for _, e in p.sums]) | dict(names=[s.name for s, _ in p.sums]) if p.sums else None,
        dx=kernel([p.dx] + [e for _, e in p.param_sums]),
        eval_dx=kernel([p.eval_dx] + [e for _, e in p.eval_param_sums]),
    )


def _flat(indices: list[int]) -> str:
    """The flat (C-order) index of the given blocks, e.g. i0 * n2 + i2."""
    if not indices:
        return "0"
    terms = []
    for pos, i in enumerate(indices):
        terms.append(" * ".join([f"i{i}"] + [f"n{j}" for j in indices[pos + 1:]]))
    return " + ".join(terms)


def _space(outer: list[int], inner: list[int], var: str) -> dict:
    """A parallel loop over the flattened *outer* blocks (unravelled from *var*) around loops over *inner*."""
    unravel, rest = [], var
    for i in reversed(outer[1:]):
        unravel.append(f"i{i} = {rest} % n{i}")
        rest = f"({rest} // n{i})"
    if outer:
        unravel.append(f"i{outer[0]} = {rest}")
    loops = ["    " * depth + f"for i{i} in range(n{i}):" for depth, i in enumerate(inner)]
    return dict(count=" * ".join(f"n{i}" for i in outer) or "1", unravel=unravel, loops=loops,
                indent="    " * len(inner), inner_indent="    " * (len(inner) - 1))
