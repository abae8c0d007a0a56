"""Brute-force proof of a derivation on a small concrete tensor.

The forward is written out element by element for a tensor of a few elements (with the spec's real axes, groups and
parameter axes; where the tensor holds many independent blocks, such as group norm's groups, the first PROOF_BLOCKS
of them), SymPy differentiates sum(dy * y) directly, and the staged and compact backward programs are run on the same
tensor by a small interpreter. All arithmetic is exact: inputs are random rationals, so values are
algebraic numbers and a difference is checked to be exactly zero, not merely small.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sympy

from symbn.core.derive import DBETA, DGAMMA, DR, DX, Derivation, Program
from symbn.core.graph import GraphError
from symbn.core.symbols import BETA, DY, EPS, GAMMA, M, MOMENTUM, R, X, psum, rsum, sym


@dataclass(frozen=True)
class Proof:
    """Outcome of one brute-force check: the tensor shape, the set size M, and which outputs matched."""

    shape: tuple[int, ...]
    set_size: int
    seed: int
    checked: tuple[str, ...]  # e.g. ("staged dx", "compact dx", "compact dgamma", ...)
    largest_numeric_difference: float
    attempt: int = 0  # how many points were drawn before one where every value is defined (0: the first one was)
    # (blocks written out, blocks in the shape) where the shape holds more than PROOF_BLOCKS independent blocks
    # (group norm with many groups; see independent_blocks); None: all of them were written out.
    blocks: tuple[int, int] | None = None

    def __str__(self) -> str:
        where = f" (point {self.attempt + 1}: the ones before were outside the domain)" if self.attempt else ""
        part = ""
        if self.blocks is not None:
            part = f"; its first {self.blocks[0]} of {self.blocks[1]} independent blocks, each proved whole"
        return (f"shape {self.shape} (M={self.set_size}{part}), seed {self.seed}{where}: {', '.join(self.checked)} "
                f"equal the brute-force Jacobian exactly (largest difference before simplification "
                f"{self.largest_numeric_difference:.1e})")


class ProofError(AssertionError):
    pass


def proof_shape(spec, set_size: int) -> tuple[int, ...]:
    """A small shape for *spec* whose reduction sets hold *set_size* elements, with at least two sets and, where
    parameters vary inside a set, at least two parameter values in it."""
    sizes = [1] * spec.ndim
    free = [a for a in range(spec.ndim) if a not in spec.reduce_axes]
    for a in free:
        if a == free[0] or a in spec.param_axes:
            sizes[a] = 2
    units = [a for a in spec.reduce_axes if not (spec.groups and a == spec.channel_axis)]
    if spec.groups:
        units.insert(0, spec.channel_axis)
    factors = _factors(set_size, len(units))
    for a, f in zip(units, factors):
        sizes[a] = f
    if spec.groups:
        sizes[spec.channel_axis] *= spec.groups
    return tuple(sizes)


def _factors(n: int, slots: int) -> list[int]:
    out = []
    for p in (2, 3, 5, 7):
        while n % p == 0 and len(out) < slots - 1:
            out.append(p)
            n //= p
    return out + [n]


def index_sets(spec, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """For each element (C order): the id of its reduction set and the index of its parameter."""
    set_ids, param_ids = {}, {}
    stat, param = [], []
    for idx in itertools.product(*(range(n) for n in shape)):
        key = tuple(i for a, i in enumerate(idx) if a not in spec.reduce_axes)
        if spec.groups:
            key += (idx[spec.channel_axis] // (shape[spec.channel_axis] // spec.groups),)
        pkey = tuple(idx[a] for a in spec.param_axes)
        stat.append(set_ids.setdefault(key, len(set_ids)))
        param.append(param_ids.setdefault(pkey, len(param_ids)))
    return np.array(stat), np.array(param)


PROOF_BLOCKS = 4  # independent blocks a proof writes out at most (see independent_blocks)


def independent_blocks(stat_ids: np.ndarray, param_ids: np.ndarray,
                       limit: int = PROOF_BLOCKS) -> tuple[np.ndarray, int]:
    """The elements (indices, in C order) of the first *limit* independent blocks of a proof tensor, and how many
    blocks it has. A block joins every reduction set that shares a parameter with another of it: the connected
    components of "element e is in set s and uses parameter p".

    Why writing out only some blocks is still the whole proof. Every sum a program takes, the reductions over a set
    (rsum) and the parameter sums (psum, for dgamma and dbeta), runs over elements of one block, and the count M is
    per set, so each value of the forward, of its brute-force derivative and of both derived programs at an element
    of a block depends on that block's inputs alone: the same whether the other blocks are written out or not. The
    loss is a sum over blocks of terms in disjoint variables, so its derivatives with respect to a block's inputs are
    those of the block's own terms. And the blocks are copies of one another up to renaming: a block is fixed by the
    coordinates that separate both the sets and the parameters (batch norm's channel, group norm's group) and ranges
    over all the rest of a rectangular tensor, so each has the same sets, parameters and M (group norm's blocks are
    its groups, every sample of one group of channels). Checking all G of them checks the same exact identity again at other random
    points, nothing the first ones do not. The cap keeps at least two sets wherever the tensor has two (each block
    has a set or more, and two blocks are kept wherever there are two), so a sum that leaked from one set into another
    would still show; and it leaves every shape of at most four blocks as it was, every preset's but group norm's with
    G > 4. Of the catalogue only G = 32 shrinks, from 128 to 256 elements (M = 2 to 4) to 16 to 32: its proof had
    been most of the time symbn docs took."""
    stat_ids, param_ids = np.asarray(stat_ids), np.asarray(param_ids)
    n_sets = int(stat_ids.max()) + 1
    parent = list(range(n_sets + int(param_ids.max()) + 1))  # sets first, then parameters

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for s, p in zip(stat_ids.tolist(), param_ids.tolist()):
        a, b = root(s), root(n_sets + p)
        if a != b:
            parent[max(a, b)] = min(a, b)
    order: dict[int, int] = {}  # block root -> its number, in order of the block's first element
    blocks = [order.setdefault(root(s), len(order)) for s in stat_ids.tolist()]
    keep = np.array([e for e, b in enumerate(blocks) if b < limit], dtype=int)
    return keep, len(order)


def _renumber(ids: np.ndarray) -> np.ndarray:
    """Ids 0, 1, 2, ... in order of first occurrence (the Interpreter sums over range(max + 1))."""
    seen: dict[int, int] = {}
    return np.array([seen.setdefault(i, len(seen)) for i in ids.tolist()], dtype=int)


class Interpreter:
    """Runs programs of assignments on a flattened tensor: every symbol holds one value per element."""

    def __init__(self, stat_ids: np.ndarray, param_ids: np.ndarray, constants: dict):
        self.stat_ids, self.param_ids = stat_ids, param_ids
        counts = np.bincount(stat_ids)
        self.env: dict = {M: [sympy.Integer(counts[s]) for s in stat_ids]} | {
            k: [v] * len(stat_ids) for k, v in constants.items()}

    def bind(self, symbol: sympy.Symbol, values) -> None:
        self.env[symbol] = list(values)

    def run(self, program: Program) -> None:
        for symbol, expr in program:
            self.env[symbol] = self.evaluate(expr)

    def evaluate(self, expr: sympy.Expr) -> list:
        sums = {}
        for s in expr.atoms(rsum, psum):
            ids = self.stat_ids if isinstance(s, rsum) else self.param_ids
            per_element = self.evaluate(s.args[0])
            totals = [sympy.Add(*(v for v, i in zip(per_element, ids) if i == k)) for k in range(ids.max() + 1)]
            sums[s] = [totals[i] for i in ids]
        free = sorted(expr.free_symbols, key=lambda s: s.name)
        missing = [s for s in free if s not in self.env]
        if missing:
            raise ProofError(f"unbound symbols {missing} in {expr}")
        return [expr.xreplace({s: self.env[s][e] for s in free} | {s: v[e] for s, v in sums.items()})
                for e in range(len(self.stat_ids))]


ATTEMPTS = 25  # points tried before a proof gives up on finding one where everything is defined
# Where the first point is outside the domain, the next ones are drawn from these open intervals in turn (sqrt(x),
# sqrt(-x), sqrt(-log(x)), log(log(x)), ...), with denominators of 64 so that the numbers stay small.
POINT_RANGES = ((0, 4), (-4, 0), (0, 1), (1, 8), (-1, 0), (0, sympy.Rational(1, 4)), (-4, 4), (1, 2))


class DomainError(ProofError, GraphError):
    """No exact point was found where the forward and its derivatives are real and finite (sqrt(-1 - x**2)): a
    proof that cannot run, reported like a failed proof and, at the command line, like a refused expression."""

    def __init__(self, text: str, problem: str):
        GraphError.__init__(self, text, problem)


class Singular(Exception):
    """The point drawn is outside the domain: a value there is infinite, undefined or complex."""

    def __init__(self, what: str, derived: bool = False):
        super().__init__(what)
        self.derived = derived


def prove(derivation: Derivation, set_size: int, seed: int = 0) -> Proof:
    """Check staged and compact dx (and dgamma, dbeta) against SymPy's derivative of the fully expanded forward.

    The inputs are exact random rationals. Where a value is not real and finite there (sqrt(x) at a negative x, 1/x
    at 0), other points are drawn, from the intervals of POINT_RANGES in turn; after ATTEMPTS points, DomainError."""
    spec = derivation.spec
    shape, stat_ids, param_ids, elements, blocks = proof_tensor(spec, set_size)
    n, n_params = len(stat_ids), int(param_ids.max()) + 1
    rng = random.Random(seed)

    def rational(lo=-4, hi=4):
        return sympy.Rational(rng.randint(lo * 8, hi * 8), rng.randint(1, 8)) or sympy.Rational(1, 3)

    xs = sympy.symbols(f"x_0:{n}", real=True)
    gs = sympy.symbols(f"g_0:{n_params}", real=True)
    bs = sympy.symbols(f"b_0:{n_params}", real=True)
    # The first point is drawn as it always was (the same seed gives the same proof); later ones only if it fails.
    constants = {EPS: sympy.Rational(rng.randint(1, 9), 10), MOMENTUM: sympy.Rational(1, 10)}
    point = {s: rational() for s in xs + gs + bs}
    dys = [rational() for _ in range(n)]
    # The residual of an epilogue, drawn after everything else so that the proofs without one keep their points.
    rs = sympy.symbols(f"r_0:{n}", real=True) if derivation.epilogue and derivation.epilogue.residual else ()
    point |= {s: rational() for s in rs}
    problems = []
    for attempt in range(ATTEMPTS):
        if attempt:
            lo, hi = POINT_RANGES[(attempt - 1) % len(POINT_RANGES)]
            constants = {EPS: sympy.Rational(rng.randint(1, 9), 10), MOMENTUM: sympy.Rational(1, 10)}
            point = {s: lo + (hi - lo) * sympy.Rational(rng.randint(1, 63), 64) for s in xs + gs + bs}
            point |= {s: rational() for s in rs}
        try:
            checked, worst = _prove_at(derivation, shape, stat_ids, param_ids, constants, xs, gs, bs, point, dys,
                                       elements.tolist(), rs)
        except Singular as err:
            problems.append(err)
            continue
        return Proof(shape, set_size, seed, checked, worst, attempt, blocks)
    unproved(spec, shape, problems, "backward", "forward", "derivation")


def proof_tensor(spec, set_size: int, limit: int = PROOF_BLOCKS):
    """The tensor a proof writes out: its shape, the reduction set and parameter of each element written out
    (renumbered where only the first *limit* independent blocks are: the others are copies of them), those elements,
    and (limit, blocks in all) where so, else None."""
    shape = proof_shape(spec, set_size)
    stat_ids, param_ids = index_sets(spec, shape)
    elements, total = independent_blocks(stat_ids, param_ids, limit)
    blocks = None
    if len(elements) < len(stat_ids):
        blocks = (limit, total)
        stat_ids, param_ids = _renumber(stat_ids[elements]), _renumber(param_ids[elements])
    return shape, stat_ids, param_ids, elements, blocks


def unproved(spec, shape, problems: list, derived: str, source: str, proved: str):
    """Raise what every point tried (*problems*, Singular) says: ProofError where the derived *derived* was not
    defined where its *source* and the brute-force derivative were, else DomainError (no point was good)."""
    if all(p.derived for p in problems):
        raise ProofError(f"shape {shape}: the derived {derived} is not defined where the {source} and its brute-force "
                         f"derivative are, at each of {ATTEMPTS} points ({problems[0]})")
    raise DomainError(spec.expression, f"no point found where the {source} and its derivatives are real and finite "
                                       f"(tried {ATTEMPTS} exact rational points for shape {shape}; the first: "
                                       f"{problems[0]}), so the {proved} cannot be proved")


def _prove_at(derivation: Derivation, shape, stat_ids, param_ids, constants, xs, gs, bs, point, dys, elements,
              rs=()):
    """The proof at one point; *elements*: the index in *shape* (C order) of each element written out; *rs*: the
    residual's symbols, where an epilogue takes one."""
    forward = tuple((node.symbol, node.expr) for node in derivation.graph.nodes)
    output = derivation.graph.output.symbol
    # the epilogue on the normalization's output; its backward gives the normalization's backward its upstream dz
    epilogue = derivation.epilogue.at(output) if derivation.epilogue is not None else None
    head: Program = ()
    if epilogue is not None:
        output = sym("y")
        forward += ((output, epilogue.forward),)
        head = epilogue.backward

    def inputs(run: Interpreter, symbolic: bool = False) -> Interpreter:
        run.bind(X, xs if symbolic else [point[s] for s in xs])
        run.bind(GAMMA, [gs[p] if symbolic else point[gs[p]] for p in param_ids])
        run.bind(BETA, [bs[p] if symbolic else point[bs[p]] for p in param_ids])
        if rs:
            run.bind(R, rs if symbolic else [point[s] for s in rs])
        if not symbolic:
            run.bind(DY, dys)
        return run

    # The forward at the point first: cheap, and where it is undefined the point is no good.
    values = inputs(Interpreter(stat_ids, param_ids, constants))
    for symbol, expr in forward:
        values.env[symbol] = values.evaluate(expr)
        require_defined(values.env[symbol], f"the forward's {symbol}", elements)
    for kink in epilogue.kinks if epilogue else ():  # where the derivative jumps it is not proved (nor defined)
        at = values.evaluate(kink)
        if any(abs(sympy.N(v, 30)) < 1e-25 for v in at):
            raise Singular(f"the epilogue's {kink} is 0, a kink, at one element")

    # Brute force: y element by element, differentiated by SymPy with no knowledge of the derivation.
    symbolic = inputs(Interpreter(stat_ids, param_ids, constants), symbolic=True)
    symbolic.run(forward)
    gradient = brute_gradient(dys, symbolic.env[output], point)
    expected = {DX: [gradient(s) for s in xs]}
    leaves = derivation.graph.leaves
    if GAMMA in leaves:
        expected[DGAMMA] = [gradient(gs[p]) for p in param_ids]
    if BETA in leaves:
        expected[DBETA] = [gradient(bs[p]) for p in param_ids]
    if rs:
        expected[DR] = [gradient(s) for s in rs]
    for symbol, want in expected.items():
        require_defined(want, f"the brute-force {symbol}", elements)

    results = []
    for label, programs in (("staged", (head, derivation.staged)),
                            ("compact", (head, derivation.coordinates, derivation.reductions, derivation.compact))):
        numeric = inputs(Interpreter(stat_ids, param_ids, constants))
        numeric.run(forward)
        for program in programs:
            numeric.run(program)
        for symbol in expected:
            require_defined(numeric.env[symbol], f"the {label} {symbol}", elements, derived=True)
        results.append((label, numeric))

    checked, worst = [], 0.0
    for label, numeric in results:
        for symbol, want in expected.items():
            got = numeric.env[symbol]
            for e, (a, b) in enumerate(zip(got, want)):
                where = f"{label} {symbol} at element {elements[e]} of shape {shape}"
                worst = max(worst, check_equal(a, b, where))
            checked.append(f"{label} {symbol}")
    return tuple(checked), worst


def brute_gradient(dys: list, ys: list, point: dict):
    """d/ds of the loss L = sum_e dy_e * y_e at *point*, for any input symbol s, by SymPy's own diff.

    Each derivative is taken of the terms whose y_e contains s, not of the whole sum: d(dy_e * y_e)/ds is
    identically 0 when s is not a free symbol of y_e, so by linearity this is exactly sympy.diff(L, s), term for term.
    It is read off the expanded expressions themselves (their free symbols), not from the reduction sets or from
    anything the derivation says, so the brute force stays independent of what it checks. What it saves: each diff
    walked all n terms, n**2 in all, where now it walks the terms of its own set (and, for a parameter, of the sets
    it spans); and a parameter that occurs at several elements is differentiated once, its value shared."""
    terms = [dy * y for dy, y in zip(dys, ys)]
    where: dict = {}
    for e, y in enumerate(ys):
        for s in y.free_symbols:
            where.setdefault(s, []).append(e)
    done: dict = {}

    def gradient(s: sympy.Symbol) -> sympy.Expr:
        if s not in done:
            done[s] = sympy.Add(*(sympy.diff(terms[e], s) for e in where.get(s, ()))).xreplace(point)
        return done[s]

    return gradient


def require_defined(values: list, what: str, elements: list[int], derived: bool = False) -> None:
    """Raise Singular unless every value is real and finite."""
    for e, v in enumerate(values):
        if not _real_and_finite(v):
            raise Singular(f"{what} is {v} at element {elements[e]}", derived)


def _real_and_finite(v: sympy.Expr) -> bool:
    if v.is_Rational:
        return True
    if v.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        return False
    try:
        n = sympy.N(v, 30)
    except (TypeError, ValueError, ArithmeticError):
        return False
    return bool(n.is_Number and n.is_finite and n.is_extended_real)


def check_equal(a: sympy.Expr, b: sympy.Expr, where: str) -> float:
    difference = a - b
    scale = max(1.0, abs(complex(sympy.N(b, 30))))
    numeric = abs(complex(sympy.N(difference, 60))) / scale
    if numeric > 1e-40:
        raise ProofError(f"{where}: derived {a} != brute force {b} (difference {numeric:.3e})")
    if difference != 0 and sympy.simplify(sympy.radsimp(difference)) != 0:
        raise ProofError(f"{where}: difference {difference} does not simplify to 0")
    return numeric


def prove_all(derivation: Derivation, sizes: Sequence[int] = (2, 3, 4), seed: int = 0) -> list[Proof]:
    return [prove(derivation, m, seed + m) for m in sizes]
