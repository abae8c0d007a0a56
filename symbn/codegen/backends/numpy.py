"""Function bodies of the NumPy backend. Every pass over the input runs in chunks of rows of the first block, so
temporaries stay in cache instead of making whole-array round trips to memory. When the first block is kept, a chunk
holds whole statistics and every pass of a forward or backward runs while the chunk is in cache; when it is reduced,
statistics span chunks, and the statistics of the forward take one pass (symbn.codegen.reductions). Elementwise work:
symbn.codegen.elementwise."""

from __future__ import annotations

import re
from typing import NamedTuple

import sympy

from symbn.codegen.elementwise import SHIFT, XS, Elementwise
from symbn.codegen.printers import kept_cse, needed_first, numpy_code, reads
from symbn.codegen.lowering import Lowering
from symbn.codegen.reductions import Moments
from symbn.core.symbols import BETA, DY, GAMMA, M, R, X


def statements(lw: Lowering) -> dict:
    ctx = _NumpyBodies(lw).context()
    # the small path's passes over the input as one chunk (a fused epilogue has no small path yet)
    ctx["one"] = None if lw.plan.epilogue else _NumpyBodies(lw, single=True).context()
    return ctx


class _NumpyBodies:
    """*single*: the bodies for an input taken whole, as one chunk that holds every statistic (no loop): the
    statistics come from the mean first and then from x shifted by it, whatever the layout."""

    def __init__(self, lw: Lowering, single: bool = False):
        p = self.p = lw.plan
        self.lw = lw
        self.single = single
        self.ew = Elementwise(p)
        self.mean = lw.mean
        self.coordinates = self.ew.coordinates
        self.whole = lw.numpy_whole or single
        # inside a chunk: the chunk's rows of x and dy, and of every array that spans the first block
        self.sliced = (self.ew.stats if self.whole else set()) | ({GAMMA, BETA} if p.blocks[0].param else set())
        self.names = {X: "xc", DY: "dyc", R: "rc"} | {s: f"{s.name}_c" for s in self.sliced}
        self.dr = [("drb", p.dr)] if p.dr is not None else []  # an epilogue's residual gradient, beside dx

    def rows(self, name: str) -> str:
        """The chunk's rows of an array (the array itself when the input is taken whole)."""
        return name if self.single else f"{name}[sl]"

    def code(self, e: sympy.Expr) -> str:
        return numpy_code(e, self.names)

    def output(self, e, shifted, loop):
        return self.ew.output(e, shifted, loop.coefficient)

    def lowered(self, exprs, loop, shifted: bool) -> tuple[list[str], list[sympy.Expr]]:
        """Lines for the shared elementwise parts of *exprs*, and the expressions left (symbn.codegen.elementwise)."""
        shared, reduced = self.ew.lowered(exprs, loop.coefficient, shifted)
        return [f"{s} = {self.code(v)}" for s, v in shared], list(reduced)

    # --- one pass over the chunks ---------------------------------------------------------------------------

    def loop(self, exprs, shifted: bool, computed=()):
        return _Loop(self, exprs, shifted, set(computed))

    # --- function bodies ------------------------------------------------------------------------------------

    def context(self) -> dict:
        p = self.p
        forward = self.forward()
        bodies = dict(forward=forward, backward=self.backward(p.sums, p.dx, p.param_sums, p.saved))
        if p.eval_dx is not None:  # an eval backward of its own only where the spec keeps running statistics
            bodies["backward_eval"] = self.backward((), p.eval_dx, p.eval_param_sums, p.eval_stats)
        if not self.single:
            bodies["forward_eval"] = self.shift(p.eval_stats) + self.map_pass("y", p.y, [], self.mean in p.eval_stats)
        elif p.eval_dx is not None:  # taken whole, inference is two functions (its values kept per parameter set)
            bodies["eval_values"], bodies["eval_apply"], carried = self.eval_split()
        # the names each function body reads: its template leaves out M and marks eps unused where they are not
        uses = {name: sorted(reads(lines)) for name, lines in bodies.items()}
        ctx = dict(whole=self.whole, first="x0 = _first(xb)" in forward, uses=uses, **bodies)
        return ctx | (dict(eval_carried=carried) if "eval_values" in bodies else {})

    def eval_split(self) -> tuple[list[str], list[str], list[str]]:
        """forward_eval's pass over an input taken whole as two parts: the lines that compute what is fixed per
        statistic and parameter (the values: coefficients, the shift), and the lines that apply them to x; and the
        names the second reads from the first. Inference calls a module with the same parameters and running
        statistics again and again: the small path keeps the values per parameter set."""
        p = self.p
        shifted = self.mean in p.eval_stats
        loop = self.loop([p.y], shifted)
        loop.statements([self.output(p.y, shifted, loop)], shifted, into="y")
        values = [item for item in loop.body if isinstance(item, _Value)]
        apply = [item for item in loop.body if not isinstance(item, _Value)]  # values never read the elementwise
        before, values, apply = _printed([loop.before, values, apply], self.code, self.ew.klass)
        if loop.shift is not None and not _shift_into(loop.shift, apply):
            apply.insert(0, f"xs = xc - {loop.shift}")
        elementwise = {n for n, _ in loop.pairs if n in ("xc", "dyc", "rc")}
        head = [f"{n} = {v}" for n, v in loop.pairs if n not in elementwise]
        values = self.shift(p.eval_stats) + head + before + values
        defined = {line.split(" = ", 1)[0] for line in values if " = " in line}
        carried = sorted(reads(apply) & defined)
        return values, [f"{n} = {v}" for n, v in loop.pairs if n in elementwise] + apply, carried

    def step_code(self, s) -> str:
        """A statistic from its step: a reduction's total over its denominator, or a scalar formula."""
        return f"({self.code(s.expr)}) / ({self.code(s.denominator)})" if s.reduce else self.code(s.expr)

    def shift(self, given) -> list[str]:
        return [f"shift = _cast({self.mean.name}, xb)"] if self.mean in given else []

    def forward(self) -> list[str]:
        p = self.p
        red = "axis=_RED, dtype=np.float64, keepdims=True"
        if self.whole:
            outs = [s.name for s in p.train_out]
            loop = self.loop([s.expr for s in p.train_steps] + [p.y], shifted=False,
                             computed={s.symbol for s in p.train_steps} | {SHIFT})
            shifted, powers = False, set()
            for s in p.train_steps:
                if not s.reduce:
                    loop.body.append(_Value(f"{s.symbol.name}_c", s.expr))
                    continue
                about = self.about_shift(s.expr, s.denominator) if shifted else None
                if about is not None:
                    needed, total = about
                    loop.body += [f"p{k}_c = np.add.reduce({'*'.join(['xs'] * k)}, {red})"
                                  for k in needed if k not in powers]
                    powers |= set(needed)
                    loop.body.append(_Value(f"{s.symbol.name}_c", total))
                    continue
                value = f"np.add.reduce({loop.statements([s.expr], shifted)[0]}, {red})"
                if s.denominator != 1:
                    value += f" / ({self.code(s.denominator)})"
                loop.body.append(f"{s.symbol.name}_c = {value}")
                if s.symbol == self.mean:  # the chunk holds the whole statistic: shift by it from here on
                    loop.body += [f"shift_c = _cast({s.symbol.name}_c, xb)", "xs = xc - shift_c"]
                    shifted = s.denominator == M  # then sum(xs) is M*(mean - shift)
            loop.statements([self.output(p.y, shifted, loop)], shifted, into=self.rows("y"))
            loop.body += [f"{self.rows(s)} = {s}_c" for s in outs]
            return ([] if self.single else [f"{s} = _stat(xb)" for s in outs]) + loop.lines()
        if self.lw.moments:
            return self.forward_moments(self.lw.moments)
        out, shifted = [], False
        for s in p.train_steps:
            name = s.symbol.name
            if not s.reduce:
                out.append(f"{name} = {self.code(s.expr)}")
                continue
            loop = self.loop([s.expr], shifted)
            loop.body.append(f"{name} += np.add.reduce({loop.statements([s.expr], shifted)[0]}, {red})")
            out += [f"{name} = _stat(xb)"] + loop.lines()
            if s.denominator != 1:
                out.append(f"{name} /= {self.code(s.denominator)}")
            if s.symbol == self.mean:
                out.append(f"shift = _cast({name}, xb)")
                shifted = True
        return out + self.map_pass("y", p.y, [], shifted)

    def about_shift(self, summand: sympy.Expr, denominator: sympy.Expr):
        """A reduction of a polynomial in x, once the chunk holds the whole statistic and x is shifted by its mean: its
        value (total over *denominator*) from sums of powers of xs, with sum(xs) = M*(mean - shift) known (the variance
        is sum(xs**2)/M - (mean - shift)**2, with no pass forming x - mean). Returns (the powers of xs to sum, the value
        in their sums p2_c, p3_c, ...), or None where the summand is not such a polynomial. mean - shift is below the
        dtype's rounding of the mean, so the terms it enters cancel nothing."""
        e = sympy.expand(summand.xreplace(self.coordinates).xreplace({X: XS + SHIFT}))
        if e.free_symbols & {X, DY, R, GAMMA, BETA}:
            return None
        try:
            poly = sympy.Poly(e, XS)
        except sympy.PolynomialError:
            return None
        if poly.degree() < 2:
            return None
        d = sympy.Dummy("d")
        sums = {0: M, 1: M * d}
        total = sum((c.xreplace({SHIFT: self.mean - d}) * sums.get(k, sympy.Symbol(f"p{k}_c", real=True))
                     for (k,), c in poly.terms()), sympy.Integer(0))
        value = sympy.expand(total / denominator).xreplace({d: sympy.Add(self.mean, -SHIFT, evaluate=False)})
        return sorted(k for (k,), _ in poly.terms() if k > 1), value

    def forward_moments(self, power_sums: Moments) -> list[str]:
        """Statistics spanning the chunks, from one pass of power sums of d = x - x0 (symbn.codegen.reductions.moments);
        d is formed in the input's dtype, where it is exact or nearly so (x0 is a value of the set), and summed in
        float64."""
        red = "axis=_RED, dtype=np.float64, keepdims=True"
        names = [f"p{k}" for k in range(1, power_sums.degree + 1)]
        loop = self.loop([X], shifted=False)
        loop.body.append("d = xc - x0c")
        loop.body += [f"{n} += np.add.reduce({'*'.join(['d'] * k)}, {red})" for k, n in enumerate(names, 1)]
        out = ["x0 = _first(xb)", "x0c = _cast(x0, xb)"] + [f"{n} = _stat(xb)" for n in names] + loop.lines()
        out += [f"{s.symbol.name} = {self.step_code(s)}" for s in power_sums.steps]
        shifted = self.mean is not None
        return out + self.shift([self.mean] if shifted else []) + self.map_pass("y", self.p.y, [], shifted)

    def map_pass(self, out: str, expr, param_sums, shifted: bool, extra=()) -> list[str]:
        """One pass writing an elementwise output (and adding up parameter gradients; *extra*: (name, expression)
        of further outputs, written beside it)."""
        loop = self.loop([expr] + [e for _, e in extra] + [e for _, e in param_sums], shifted)
        for name, e in extra:
            loop.statements([self.output(e, shifted, loop)], shifted, into=self.rows(name))
        exprs = [self.output(expr, shifted, loop)] + [e for _, e in param_sums]
        codes = loop.statements(exprs, shifted, into=self.rows(out))
        loop.body += [self.param_add(s, c) for (s, _), c in zip(param_sums, codes)]
        return self.param_accumulators(param_sums) + loop.lines()

    def backward(self, sums, dx, param_sums, given) -> list[str]:
        red = "axis=_RED, dtype=np.float64, keepdims=True"
        shifted, head = self.mean in given, self.shift(given)
        if not sums:
            return head + self.map_pass("dx", dx, param_sums, shifted, self.dr)
        lw = self.lw
        taken, rest = lw.taken, lw.rest
        split = lw.split if lw.numpy_split else None
        if self.whole:
            summed = split.monomials if split else [(sympy.Symbol(f"{s.name}_c"), e) for s, e in sums]
            exprs = [e for _, e in summed] + [e for _, e in rest]
            loop = self.loop(exprs + [dx] + [e for _, e in self.dr] + list(split.totals if split else []), shifted,
                             computed={s for s, _ in sums})
            codes = loop.statements(exprs, shifted)
            loop.body += [f"{s.name} = np.add.reduce({c}, {red})" for (s, _), c in zip(summed, codes)]
            if split:
                loop.body += [_Value(f"{s.name}_c", total) for (s, _), total in zip(sums, split.totals)]
            loop.body += [self.param_add(s, c) for (s, _), c in zip(rest, codes[len(summed):])]
            loop.body += [self.param_taken(s, st) for s, st in taken]
            for name, e in self.dr:
                loop.statements([self.output(e, shifted, loop)], shifted, into=self.rows(name))
            loop.statements([self.output(dx, shifted, loop)], shifted, into=self.rows("dx"))
            return head + self.param_accumulators(param_sums) + loop.lines()
        param_sums = rest
        # the sums as statistics' coefficients times sums of monomials: the pass forms dy*xs, not xhat
        summed = split.monomials if split else sums
        exprs = [e for _, e in summed] + [e for _, e in param_sums]
        loop = self.loop(exprs, shifted)
        codes = loop.statements(exprs, shifted)
        loop.body += [f"{s.name} += np.add.reduce({c}, {red})" for (s, _), c in zip(summed, codes)]
        loop.body += [self.param_add(s, c) for (s, _), c in zip(param_sums, codes[len(summed):])]
        out = head + [f"{s.name} = _stat(xb)" for s, _ in summed] + self.param_accumulators(param_sums)
        combined = [f"{s.name} = {self.code(total)}" for (s, _), total in zip(sums, split.totals)] if split else []
        combined += [f"{s.name} = np.add.reduce({st.name}, axis=_NONPARAM)" for s, st in taken]
        return out + loop.lines() + combined + self.map_pass("dx", dx, [], shifted, self.dr)

    def param_taken(self, s, st) -> str:
        """A parameter gradient that is the statistic's sum *st* added up over the blocks the parameters do not span:
        that sum as it is, when the input is taken whole and each of those blocks is reduced (one value per set)."""
        if self.single and all(b.reduced for b in self.p.blocks if not b.param):
            return f"{s.name} = {st.name}_c"
        return self.param_add(s, f"{st.name}_c")

    def param_accumulators(self, param_sums) -> list[str]:
        return [] if self.single else [f"{s.name} = _pstat(xb)" for s, _ in param_sums]

    def param_add(self, s, code: str) -> str:
        total = f"np.add.reduce({code}, axis=_NONPARAM, dtype=np.float64)"
        # parameters along the first block: a chunk's rows are its own parameters' whole share
        if self.single:
            return f"{s.name} = {total}"
        return f"{s.name}[sl] = {total}" if self.p.blocks[0].param else f"{s.name} += {total}"


class _Loop:
    """One pass over the chunks: coefficients hoisted before it (or into it, where they depend on the chunk), the
    chunk's views, then the statements."""

    def __init__(self, bodies: _NumpyBodies, exprs, shifted: bool, computed: set):
        self.b, self.computed = bodies, computed
        self.before: list[str] = []
        self.body: list[str] = []
        self.known: dict = {}
        used = bodies.ew.used(list(exprs))
        rows = bodies.rows
        pairs = [(n, rows(v)) for s, n, v in ((X, "xc", "xb"), (DY, "dyc", "dyb"), (R, "rc", "rb")) if s in used]
        chunked = (used | ({SHIFT} if shifted and X in used else set())) & bodies.sliced - computed
        pairs += [(bodies.names[s], s.name if bodies.single else f"_part({s.name}, sl)")
                  for s in sorted(chunked, key=str) if s not in bodies.coordinates]
        self.pairs = pairs
        self.views = [", ".join(n for n, _ in pairs) + " = " + ", ".join(v for _, v in pairs)] if pairs else []
        self.shift = bodies.names.get(SHIFT, "shift") if shifted and X in used else None
        self.coordinates_done: set = set()

    def coefficient(self, e: sympy.Expr) -> sympy.Symbol:
        if e not in self.known:
            k = sympy.Symbol(f"k{len(self.known)}", real=True)
            self.known[e] = k
            inside = e.free_symbols & self.b.sliced
            (self.body if inside else self.before).append(_Value(k.name, e, cast=True))
        return self.known[e]

    def statements(self, exprs, shifted: bool, into: str | None = None) -> list[str]:
        """Add the coordinates and shared parts *exprs* need to the body; return their codes. With *into* (an
        output's rows, y[sl]), the first expression is written there by in-place ufuncs instead."""
        used = self.b.ew.used(list(exprs))
        for c, e in self.b.p.coordinates:
            if c in used and c not in self.coordinates_done:
                lines, (value,) = self.b.lowered([e], self, shifted)
                self.body += lines + [f"{c} = {self.b.code(value)}"]
                self.coordinates_done.add(c)
        lines, reduced = self.b.lowered(list(exprs), self, shifted)
        self.body += lines
        if into is not None:
            self.body += [f"out_c = {into}"] + _in_place("out_c", reduced[0], self.b.code, self.b.ew.elementwise)
            reduced = reduced[1:]
        return [self.b.code(e) for e in reduced]

    def lines(self) -> list[str]:
        before, body = _printed([self.before, self.body], self.b.code, self.b.ew.klass)
        shifted = self.shift is not None and not _shift_into(self.shift, body)
        head = self.views + ([f"xs = xc - {self.shift}"] if shifted else [])
        if self.b.single:
            return before + head + body
        return before + ["for sl in _chunks(xb):"] + _indent(head + body)


class _Value(NamedTuple):
    """A line of a function body that assigns a per-statistic or per-parameter value (float64, cast to the input's
    dtype where *cast*): kept as an expression until the body is printed, so that values share their common parts."""

    name: str
    expr: sympy.Expr
    cast: bool = False


def _printed(parts: list[list], code, varies) -> list[list[str]]:
    """*parts* (lists of lines and _Values, in the order they run) as lines: the values' common subexpressions each
    computed once, as v0, v1, ..., just before the first value that needs it. On small inputs each NumPy operation on
    a per-statistic array costs about a microsecond whatever its size, and the coefficients of a backward share most
    of their factors (gamma*istd, mu - shift). Shared scalars (1/M) stay inline, where they cost nothing and round
    once; *varies* tells them from the arrays."""
    values = [v for part in parts for v in part if isinstance(v, _Value)]
    temps, reduced = kept_cse([v.expr for v in values], varies, "v")
    done: set = set()
    printed = dict(zip(map(id, values), reduced))
    out = []
    for part in parts:
        lines: list[str] = []
        for item in part:
            if not isinstance(item, _Value):
                lines.append(item)
                continue
            e = printed[id(item)]
            lines += [f"{t} = {code(te)}" for t, te in needed_first(e, temps, done)]
            lines.append(f"{item.name} = _cast({code(e)}, xb)" if item.cast else f"{item.name} = {code(e)}")
        out.append(lines)
    return out


def _in_place(dest: str, e: sympy.Expr, code, varies) -> list[str]:
    """Lines that evaluate *e* into the array *dest* by in-place ufuncs: a sum adds its other terms into it, a
    product multiplies by its other factors, so no temporary holds the result and none is copied into the output
    (the operations are those of evaluating e; a sum's terms may be added in another order). *varies* tells
    elementwise parts from coefficients; the costliest elementwise part goes in first, so the others, added or
    multiplied in with a temporary each, are the cheap ones."""
    if not isinstance(e, (sympy.Add, sympy.Mul)) or not any(varies(a) for a in e.args):
        return [f"{dest}[...] = {code(e)}"]
    first = max((a for a in e.args if varies(a)), key=sympy.count_ops)
    rest = list(e.args)
    rest.remove(first)
    if isinstance(e, sympy.Mul):
        if isinstance(first, (sympy.Add, sympy.Mul)):
            return _in_place(dest, first, code, varies) + [f"{dest} *= {code(a)}" for a in rest]
        return [f"np.multiply({code(first)}, {code(rest[0])}, out={dest})"] + [f"{dest} *= {code(a)}"
                                                                                 for a in rest[1:]]

    def add(a):
        return f"{dest} -= {code(-a)}" if a.could_extract_minus_sign() else f"{dest} += {code(a)}"

    if isinstance(first, (sympy.Add, sympy.Mul)):
        return _in_place(dest, first, code, varies) + [add(a) for a in rest]
    a, *others = rest
    head = (f"np.subtract({code(first)}, {code(-a)}, out={dest})" if a.could_extract_minus_sign()
            else f"np.add({code(first)}, {code(a)}, out={dest})")
    return [head] + [add(b) for b in others]


_SCALED_XS = re.compile(r"np\.multiply\(xs, (\w+), out=(\w+)\)")


def _shift_into(shift: str, body: list[str]) -> bool:
    """Whether the one line of *body* that reads xs = x - shift scales it into an output: x - shift then goes into
    the output itself, scaled there (the body rewritten), with no temporary: at (32, 200) float32 a NumPy operation's
    allocation and pass; in the chunked passes one per chunk."""
    users = [i for i, line in enumerate(body) if re.search(r"\bxs\b", line)]
    scaled = _SCALED_XS.fullmatch(body[users[0]].strip()) if len(users) == 1 else None
    if scaled is None:
        return False
    i, (k, dest) = users[0], scaled.groups()
    indent = body[i][:len(body[i]) - len(body[i].lstrip())]
    body[i:i + 1] = [f"{indent}np.subtract(xc, {shift}, out={dest})", f"{indent}{dest} *= {k}"]
    return True


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


