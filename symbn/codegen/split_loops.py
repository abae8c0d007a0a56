"""The split-phase pieces (symbn.codegen.shares) lowered for loop kernels: the passes each process runs over its own
rows. partial_forward sums x over each set, then the central sums (x - m1)**k about the local mean m1, k = 2 ..
degree, kept in that form (expanded, they would cancel digits where the mean is large against the spread);
partial_backward takes the backward's named sums; finish_backward writes dx from the statistics and the sums of all
processes; a statistic that is not a sum of polynomials in x takes a plain sum in a later round. None where a
parameter gradient takes sums of its own (those add up per parameter, not per statistic)."""

from __future__ import annotations

from dataclasses import dataclass

from symbn.codegen.loops import Loop, loop
from symbn.codegen.plan import Plan
from symbn.codegen.shares import MEAN, Shares
from symbn.core.symbols import DY, GAMMA, X


@dataclass(frozen=True)
class SplitLoops:
    mean: Loop  # sum(x) over the set
    central: Loop  # (x - m1)**k, k = 2 .. degree
    rounds: tuple[Loop, ...]  # the plain sums of each later round (shares.rounds), reading earlier statistics
    sums: Loop  # the backward's named sums (plan.sums, in order)
    dx: Loop  # finish_backward's dx
    params_in_elements: bool  # the parameters vary within a set: read per element


def split_loops(p: Plan, shares: Shares | None, rest: tuple) -> SplitLoops | None:
    if shares is None or rest or p.blocks[0].param:
        return None
    inside = any(b.reduced and b.param for b in p.blocks)
    elements = {X, DY} | {c for c, _ in p.coordinates} | ({GAMMA} if inside else set())
    return SplitLoops(
        mean=loop([X], [], {X}, "k"),
        central=loop([(X - MEAN)**k for k in range(2, shares.degree + 1)], [], {X}, "k", expand=False),
        rounds=tuple(loop([e for _, e in sums], [], {X}, "k", expand=False) for sums in shares.rounds),
        sums=loop([e for _, e in p.sums], list(p.coordinates), elements, "k"),
        dx=loop([p.dx], list(p.coordinates), elements, "k"),
        params_in_elements=inside)
