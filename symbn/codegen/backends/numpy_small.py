"""The NumPy backend's small-input functions: each pass over the whole block view at once, in float64, a NumPy
operation per step of the derivation (the statistics, y, the backward's sums and dx in their compact forms). Below
SMALL elements the chunked kernels' bookkeeping (chunk loops, accumulators, casts, coefficients) costs more than the
arithmetic; these take a few operations per step instead."""

from __future__ import annotations

from symbn.codegen.backends.quick import checks
from symbn.codegen.lowering import Lowering
from symbn.codegen.printers import kept_cse, large, needed_first, numpy_code, reads
from symbn.core.symbols import DY, X, psum, rsum

_NAMES = {X: "xb", DY: "dyb"}


def small(lw: Lowering) -> dict:
    p = lw.plan
    arrays = {X, DY} | {c for c, _ in p.coordinates}

    def code(e):
        return numpy_code(e, _NAMES, arrays)

    train, train_y = _shared_steps([(s.symbol, rsum(s.expr) / s.denominator if s.reduce else s.expr)
                                    for s in p.train_steps], p.y, code, arrays)
    sums = dict(p.sums)
    # a parameter gradient that is one of the backward's sums (batch norm: dbeta = sum(dy)) is that sum added up over
    # the blocks the parameters do not span: the sum as it is where each of those is reduced (one value per set)
    as_is = all(b.reduced for b in p.blocks if not b.param)
    grads = [code(p.sums[i][0] if as_is else psum(p.sums[i][0])) if i is not None else code(psum(e))
             for (_, e), i in zip(p.param_sums, lw.from_sums)]
    backward = [(c.name, code(e)) for c, e in p.coordinates] + [(s.name, code(rsum(e))) for s, e in sums.items()]
    eval_backward = None
    if p.eval_dx is not None:
        eval_backward = dict(lines=[(c.name, code(e)) for c, e in p.coordinates], dx=code(p.eval_dx),
                             grads=[code(psum(e)) for _, e in p.eval_param_sums])
    ctx = checks(p) | dict(
        train=train, train_y=train_y, eval_steps=[(s.symbol.name, code(s.expr)) for s in p.eval_steps],
        backward=backward, dx=code(p.dx), grads=grads, eval_backward=eval_backward,
    )
    # the names each function reads: its template leaves out M and marks eps unused where they are not read
    blocks = p.blocks
    ctx.update(
        count_xb=" * ".join(f"xb.shape[{i}]" for i, b in enumerate(blocks) if b.reduced),
        param_view=_view(blocks, lambda b: b.param), stat_view=_view(blocks, lambda b: not b.reduced),
        one_param_view=_view(blocks, lambda b: b.param, always=True),
        # the block sizes eval mode's values span (the statistics' and the parameters'), in their cache key
        eval_key_shape="".join(f"xb.shape[{i}], " for i, b in enumerate(blocks) if b.param or not b.reduced))
    ctx["uses"] = {name: sorted(reads(*parts)) for name, parts in (
        ("train", (train, train_y)),
        ("small_backward", (backward, ctx["dx"], grads)), ("small_backward_eval", (eval_backward,)))}
    return ctx


def _shared_steps(steps, y, code, arrays):
    """The training forward's lines and y, a large array they share (x - mu) computed once: each goes just before
    the first step that reads it. Shared scalars and statistics stay inline (1/M once would round twice)."""
    shared, reduced = kept_cse([e for _, e in steps] + [y], lambda e: large(e, arrays), "t")
    lines, done = [], set()
    for (symbol, _), e in zip(steps, reduced):
        lines += [(t.name, code(te)) for t, te in needed_first(e, shared, done)]
        lines.append((symbol.name, code(e)))
    lines += [(t.name, code(te)) for t, te in needed_first(reduced[-1], shared, done)]
    return lines, code(reduced[-1])


def _view(blocks, spans, always: bool = False) -> str | None:
    """The shape that broadcasts an array over the blocks it *spans* against the block view, as code in xb.shape;
    None where its own shape (a parameter's, or a statistic's as the quick path or the full checks give it) already
    does: one block of one axis, the last (*always*: that shape with the leading ones too). None too where it spans
    none (a spec without parameters)."""
    first = next((i for i, b in enumerate(blocks) if spans(b)), None)
    if first is None:  # no parameters
        return None
    rest = blocks[first:]
    if always:
        first, rest = 0, blocks
    elif len(rest) == 1 and len(rest[0].axes) == 1 and not rest[0].split:
        return None
    return "(" + "".join(f"xb.shape[{first + i}], " if spans(b) else "1, " for i, b in enumerate(rest)) + ")"
