"""The NumPy backend's small-input functions: each pass over the whole block view at once, in float64, a NumPy
operation per step of the derivation (the statistics, y, the backward's sums and dx in their compact forms). Below
SMALL elements the chunked kernels' bookkeeping (chunk loops, accumulators, casts, coefficients) costs more than the
arithmetic; these take a few operations per step instead."""

from __future__ import annotations

from symbn.codegen.backends.quick import checks
from symbn.codegen.lowering import Lowering
from symbn.codegen.printers import numpy_code, reads
from symbn.core.symbols import DY, X, psum, rsum

_NAMES = {X: "xb", DY: "dyb"}


def small(lw: Lowering) -> dict:
    p = lw.plan

    def code(e):
        return numpy_code(e, _NAMES)

    train = [(s.symbol.name, code(rsum(s.expr) / s.denominator if s.reduce else s.expr)) for s in p.train_steps]
    sums = dict(p.sums)
    # a parameter gradient that is one of the backward's sums (batch norm: dbeta = sum(dy)) is that sum added up over
    # the blocks the parameters do not span
    grads = [code(psum(p.sums[i][0])) if i is not None else code(psum(e))
             for (_, e), i in zip(p.param_sums, lw.from_sums)]
    backward = [(c.name, code(e)) for c, e in p.coordinates] + [(s.name, code(rsum(e))) for s, e in sums.items()]
    eval_backward = None
    if p.eval_dx is not None:
        eval_backward = dict(lines=[(c.name, code(e)) for c, e in p.coordinates], dx=code(p.eval_dx),
                             grads=[code(psum(e)) for _, e in p.eval_param_sums])
    ctx = checks(p) | dict(
        train=train, y=code(p.y), eval_steps=[(s.symbol.name, code(s.expr)) for s in p.eval_steps],
        backward=backward, dx=code(p.dx), grads=grads, eval_backward=eval_backward,
    )
    # the names each function reads: its template leaves out M and marks eps unused where they are not read
    ctx["uses"] = {name: sorted(reads(*parts)) for name, parts in (
        ("train", (train, ctx["y"])), ("eval", (ctx["y"],)),
        ("small_backward", (backward, ctx["dx"], grads)), ("small_backward_eval", (eval_backward,)))}
    return ctx
