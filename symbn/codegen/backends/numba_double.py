"""The Numba backend's double backward: loop kernels printed from symbn.codegen.double, in the loop structure the
lowering chose for the first order. Loops over statistics run every pass of a statistic in one body (its sums, its
coefficients, its outputs), so the second read of its elements comes from cache; where the statistics run along the
contiguous axis, each pass walks rows of an (O, R, C) view in parallel chunks with one accumulator per column, and
the wrapper computes the coefficients between passes. Elements are read in the input's dtype; the work is float64."""

from __future__ import annotations

from symbn.codegen.backends.numba import flat_index, loop_space
from symbn.codegen.double import DoubleLowering, Loop
from symbn.codegen.lowering import Lowering
from symbn.codegen.printers import cse, numpy_code, reads, scalar_code
from symbn.core.symbols import DY, GAMMA, GGBETA, GGGAMMA, GGX, X

# per element in the kernels, and the arrays they come from
_ELEMENT = {X: ("xv", "xb"), DY: ("dyv", "dyb"), GGX: ("ggxv", "ggxb")}
_PARAM = {GAMMA: ("gv", "gamma"), GGGAMMA: ("gggv", "gggamma"), GGBETA: ("ggbv", "ggbeta")}
# where the parameters are fixed over each set: their value for the statistic at hand
_PER_STAT = {GAMMA: "gamma_s", GGGAMMA: "gggamma_s", GGBETA: "ggbeta_s"}


def double(lw: Lowering) -> dict:
    """The template context of the double backward's kernels, both modes."""
    p = lw.plan
    n = len(p.blocks)
    if lw.columns:
        elem, pflat, loops = "o, r, c", "c" if lw.columns.param_over_c else "0", None
    else:
        kept = [i for i in range(n) if not p.blocks[i].reduced]
        reduced = [i for i in range(n) if p.blocks[i].reduced]
        elem, pflat = ", ".join(f"i{i}" for i in range(n)), flat_index([i for i in range(n) if p.blocks[i].param])
        loops = dict(loop_space(kept, reduced, "s"), sizes=", ".join(f"n{i}" for i in range(n)) + ("," * (n == 1)))
    modes = [_mode(d, elem, pflat, lw.columns is not None) for d in lw.double if d is not None]
    return dict(modes=modes, loops=loops, column=lw.columns is not None, elem=elem, pflat=pflat)


def _mode(d: DoubleLowering, elem: str, pflat: str, column: bool) -> dict:
    fixed = {} if d.params_in_elements else _PER_STAT  # names of the parameters among the coefficients' symbols
    names = {s: v for s, (v, _) in (_ELEMENT | _PARAM).items()}

    def kernel(lp: Loop) -> dict:
        shared, finals = cse(list(lp.exprs)) if lp.exprs else ([], [])
        body = [e for _, e in lp.coordinates] + [e for _, e in shared] + finals
        read = set().union(set(), *(e.free_symbols for e in body))
        loads = [f"{v} = np.float64({a}[{elem}])" for s, (v, a) in _ELEMENT.items() if s in read]
        loads += [f"{v} = {a}[{pflat}]" for s, (v, a) in _PARAM.items() if s in read]
        lines = [f"{c} = {scalar_code(e, names)}" for c, e in lp.coordinates + tuple(shared)]
        coefficients = [(k, e) for k, e in lp.coefficients if k in read]
        if column:  # arrays over the statistics, computed by the wrapper and read per element
            head = [f"{k} = coef[{j}, s]" for j, (k, _) in enumerate(coefficients)]
            wrapper = [numpy_code(e, fixed) for _, e in coefficients]
        else:  # computed once per statistic in the kernel
            head = [f"{k} = {scalar_code(e, fixed)}" for k, e in coefficients]
            wrapper = []
        codes = [scalar_code(e, names) for e in finals]
        return dict(head=head, wrapper=wrapper, loads=loads, lines=lines, codes=codes,
                    uses=reads(head, loads, lines, codes) | {"xb"})

    levels = [dict(names=[s.name for s in names_], kernel=kernel(lp)) for names_, lp in d.levels]
    out = kernel(d.out)
    parts = [lv["kernel"] for lv in levels] + [out]
    ggamma_stat = d.ggamma_stat
    share = (numpy_code if column else scalar_code)(ggamma_stat, fixed) if ggamma_stat is not None else None
    # what the wrapper (columns) or the kernel's per-statistic head (statistic loops) reads
    head_uses = reads([k["wrapper"] + k["head"] for k in parts], share or "")
    every = set().union(*(k["uses"] for k in parts)) | reads(share or "") | head_uses
    per_stat = [f"{v} = {a}[{pflat}]" for s, (_, a) in _PARAM.items() if (v := fixed.get(s)) and v in every]
    return dict(mode=d.mode, stats=[s.name for s in d.stats], levels=levels, out=out, share=share,
                ggamma_elem=d.has_ggamma and ggamma_stat is None, per_stat=per_stat,
                uses=sorted(every | reads(per_stat)))
