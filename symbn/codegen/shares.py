"""Statistics across processes: what each process sends, how shares join, and the proof that joined shares give the
statistics of the whole set.

Data-parallel training splits a batch across processes; a spec whose statistics span the batch axis (axis 0) then
needs the statistics of all rows. Each process's share of a set is its count, the mean of its values and their
central sums c2 .. c<degree>; shares join exactly by the pairwise formulas of Chan, Golub and LeVeque (c2) and Pebay
(higher sums), written here as SymPy expressions, printed into the kernels and proven with exact rationals. Every
statistic of the forward follows from a joined share where each reduction sums a polynomial in x. The backward's sums
are plain sums and join by addition.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction

import sympy

from symbn.codegen.elementwise import XS
from symbn.codegen.plan import Plan, StatStep
from symbn.core.symbols import M, X

MEAN = sympy.Symbol("m1", real=True)  # the mean of a share's values


def central_sum(k: int, side: str = "") -> sympy.Symbol:
    """The sum of the k-th powers of x minus the mean of its share (k >= 2); *side* "a" or "b" names an operand of the
    join."""
    return sympy.Symbol(f"c{side}{k}", real=True)


@dataclass(frozen=True)
class Shares:
    """How one spec's statistics cross processes."""

    degree: int  # central sums c2 .. c<degree> in a forward share
    steps: tuple[StatStep, ...]  # the forward's steps, each reduction's summand replaced by its total: in the share of
    # the first round, or a plain sum of a later one
    join: tuple[tuple[sympy.Symbol, sympy.Expr], ...]  # the joined share's mean and sums from two shares'
    # Rounds after the first, for reductions that are not polynomials in x (mean(abs(x - mean(x)))): each a plain sum
    # (total, summand) over the set, its summand reading statistics of earlier rounds; shares of them add up
    rounds: tuple[tuple[tuple[sympy.Symbol, sympy.Expr], ...], ...] = ()
    step_rounds: tuple[int, ...] = ()  # per step, the round after which it is known


def plain_total(symbol: sympy.Symbol) -> sympy.Symbol:
    """The name of a reduction's plain sum in a later round's share."""
    return sympy.Symbol(f"total_{symbol.name}", real=True)


COUNTS = sympy.symbols("na nb", positive=True)
MEANS = sympy.symbols("ma mb", real=True)
DELTA = sympy.Symbol("delta", real=True)  # mb - ma


def join_formulas(degree: int) -> tuple[tuple[sympy.Symbol, sympy.Expr], ...]:
    """The mean and central sums of two shares together, in na, nb, ma, mb, delta = mb - ma and the sums ca<k>, cb<k>.
    The last term of Pebay's formula, (na nb delta / n)**p (1/nb**(p-1) - (-1/na)**(p-1)), is written without
    dividing by na or nb."""
    na, nb = COUNTS
    ma, _ = MEANS
    n = na + nb
    out = [(MEAN, ma + DELTA * nb / n)]
    for p in range(2, degree + 1):
        c = central_sum(p, "a") + central_sum(p, "b")
        for k in range(1, p - 1):
            c += math.comb(p, k) * DELTA**k * ((-nb / n)**k * central_sum(p - k, "a")
                                               + (na / n)**k * central_sum(p - k, "b"))
        c += DELTA**p * na * nb * (na**(p - 1) - (-nb)**(p - 1)) / n**p
        out.append((central_sum(p), c))
    return tuple(out)


def shares(p: Plan) -> Shares | None:
    """The spec's shares, where every statistic spans the batch axis (axis 0, which a data-parallel run splits across
    processes); else None. A reduction that sums a polynomial in x joins in the first round's share (central sums);
    one that does not waits for the statistics it reads and takes a plain sum in a round after theirs."""
    if 0 not in p.spec.reduce_axes:
        return None
    known: dict = {}  # statistic -> the round after which it is known
    polys: dict = {}
    for step in p.train_steps:
        after = max((known[t] for t in step.expr.free_symbols if t in known), default=0)
        if step.reduce:
            try:
                polys[step.symbol] = sympy.Poly(sympy.expand(step.expr.xreplace({X: XS + MEAN})), XS)
            except sympy.PolynomialError:
                after += 1
        known[step.symbol] = after
    degree = max([2] + [poly.degree() for poly in polys.values()])
    steps = []
    rounds: list[list] = [[] for _ in range(max(known.values(), default=0))]
    for step in p.train_steps:
        if step.symbol in polys:
            # sum((x - m1)**k) over the set: M for k = 0, zero for k = 1 (m1 is its mean), c_k beyond
            total = sum((sympy.factor(c) * (M if k == 0 else central_sum(k)) for (k,), c in polys[step.symbol].terms()
                         if k != 1), sympy.Integer(0))
            steps.append(StatStep(step.symbol, total, True, step.denominator))
        elif step.reduce:
            rounds[known[step.symbol] - 1].append((plain_total(step.symbol), step.expr))
            steps.append(StatStep(step.symbol, plain_total(step.symbol), True, step.denominator))
        else:
            steps.append(step)
    return Shares(degree, tuple(steps), join_formulas(degree), tuple(tuple(r) for r in rounds),
                  tuple(known[step.symbol] for step in p.train_steps))


# --- the proof, with exact rationals -------------------------------------------------------------------------------

def share_of(values: list[Fraction], degree: int) -> tuple:
    """(count, mean, c2, .., c<degree>) of *values*, exactly; zeros for no values."""
    if not values:
        return (0,) + (Fraction(0),) * degree
    mean = sum(values, Fraction(0)) / len(values)
    return (len(values), mean) + tuple(sum(((v - mean)**k for v in values), Fraction(0)) for k in range(2, degree + 1))


def join(a: tuple, b: tuple, formulas) -> tuple:
    """Two exact shares joined by *formulas* (a share of count 0 leaves the other, as the kernels' combine does)."""
    if b[0] == 0:
        return a
    if a[0] == 0:
        return b
    env = {COUNTS[0]: a[0], COUNTS[1]: b[0], MEANS[0]: a[1], MEANS[1]: b[1], DELTA: b[1] - a[1]}
    for k in range(2, len(a)):
        env[central_sum(k, "a")], env[central_sum(k, "b")] = a[k], b[k]
    return (a[0] + b[0],) + tuple(sympy.Rational(e.xreplace(env)) for _, e in formulas)


def prove(s: Shares, p: Plan, sizes=(0, 1, 3, 4), seed: int = 0) -> str:
    """Check exactly that shares of parts of a set (sizes *sizes*, one of them empty), joined in every order tried,
    equal the share of the whole set, and that the forward's statistics from the joined share equal those computed
    from the whole set directly; raise AssertionError otherwise. Returns what was checked, in words."""
    rng = random.Random(seed)
    parts = [[Fraction(rng.randint(-40, 40), rng.randint(1, 9)) + 30 for _ in range(n)] for n in sizes]
    whole = share_of([v for part in parts for v in part], s.degree)
    shared = [share_of(part, s.degree) for part in parts]
    orders = [list(range(len(parts))), list(reversed(range(len(parts)))), [1, 3, 0, 2][:len(parts)]]
    for order in orders:
        left = shared[order[0]]
        for i in order[1:]:
            left = join(left, shared[i], s.join)
        right = shared[order[-1]]
        for i in reversed(order[:-1]):
            right = join(shared[i], right, s.join)
        for got in (left, right):
            if tuple(map(sympy.Rational, got)) != tuple(map(sympy.Rational, whole)):
                raise AssertionError(f"{p.spec.name}: joined shares {got} differ from the whole set's {whole}")
    values = [sympy.Rational(v) for part in parts for v in part]
    direct, from_shares = {}, {MEAN: sympy.Rational(whole[1]), M: len(values)}
    from_shares |= {central_sum(k): sympy.Rational(whole[k]) for k in range(2, s.degree + 1)}
    for step, joined in zip(p.train_steps, s.steps):
        if step.reduce and joined.expr == plain_total(step.symbol):  # a later round: each part's plain sum, added
            from_shares[joined.expr] = sum((step.expr.xreplace({**direct, M: len(values), X: sympy.Rational(v)})
                                            for part in parts for v in part), sympy.Integer(0))
        if step.reduce:
            env = {**direct, M: len(values)}
            total = sum((step.expr.xreplace({**env, X: v}) for v in values), sympy.Integer(0))
            direct[step.symbol] = sympy.simplify(total / step.denominator.xreplace(env))
            via = sympy.simplify(joined.expr.xreplace({**from_shares, **direct}) / step.denominator.xreplace(env))
            if sympy.simplify(via - direct[step.symbol]) != 0:
                raise AssertionError(f"{p.spec.name}: {step.symbol} from the joined share is {via}, from the whole "
                                     f"set {direct[step.symbol]}")
        else:
            direct[step.symbol] = step.expr.xreplace({**direct, M: len(values)})
    checked = ", ".join(str(n) for n in sizes)
    return (f"Shares of parts of {checked} exact rational values (one part empty), joined in {len(orders) * 2} orders "
            f"and groupings, equal the share of all {len(values)} values; every statistic from the joined share "
            "equals the one-process statistic")

