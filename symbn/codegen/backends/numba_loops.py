"""Loop kernels of the Numba backend printed from symbn.codegen.loops: the loop structure the lowering chose (loops
over statistics, or over rows of an (O, R, C) view where the statistics run along the contiguous axis) and, for one
Loop, the code of one element: its loads (in float64), its coordinates, shared subexpressions, its expressions, and
how it gets its coefficients (computed in the kernel per statistic, or read from an array the wrapper computed)."""

from __future__ import annotations

from symbn.codegen.backends.numba import flat_index, loop_space
from symbn.codegen.lowering import Lowering
from symbn.codegen.loops import Loop
from symbn.codegen.printers import cse, numpy_code, reads, scalar_code
from symbn.core.second import GGR
from symbn.core.symbols import BETA, DY, GAMMA, GGBETA, GGGAMMA, GGX, R, X

# per element in the kernels, and the arrays they come from (r and ggr after an epilogue with a residual)
ELEMENT = {X: ("xv", "xb"), DY: ("dyv", "dyb"), GGX: ("ggxv", "ggxb"), R: ("rv", "rb"), GGR: ("ggrv", "ggrb")}
PARAM = {GAMMA: ("gv", "gamma"), GGGAMMA: ("gggv", "gggamma"), GGBETA: ("ggbv", "ggbeta"), BETA: ("bv", "beta")}
# where the parameters are fixed over each set: their value for the statistic at hand (in a kernel, or an array of
# one value per statistic in a wrapper)
PER_STAT = {GAMMA: "gamma_s", GGGAMMA: "gggamma_s", GGBETA: "ggbeta_s", BETA: "beta_s"}


def structure(lw: Lowering) -> dict:
    """The element index, the parameter index of an element, and for loops over statistics their loop nest."""
    p = lw.plan
    n = len(p.blocks)
    if lw.columns:
        return dict(column=True, elem="o, r, c", pflat="c" if lw.columns.param_over_c else "0", loops=None)
    kept = [i for i in range(n) if not p.blocks[i].reduced]
    reduced = [i for i in range(n) if p.blocks[i].reduced]
    loops = dict(loop_space(kept, reduced, "s"), sizes=", ".join(f"n{i}" for i in range(n)) + ("," * (n == 1)))
    return dict(column=False, elem=", ".join(f"i{i}" for i in range(n)),
                pflat=flat_index([i for i in range(n) if p.blocks[i].param]), loops=loops)


def loop_code(lp: Loop, st: dict, inline: bool, fixed: dict) -> dict:
    """One element's code for *lp* in structure *st*. *inline*: the coefficients are computed in the kernel per
    statistic (scalar code); else the wrapper computes them (NumPy code, one array per coefficient) and the kernel
    reads them from coef[j, s]. *fixed*: names of the parameters among the coefficients' symbols."""
    names = {s: v for s, (v, _) in (ELEMENT | PARAM).items()}
    shared, finals = cse(list(lp.exprs)) if lp.exprs else ([], [])
    body = [e for _, e in lp.coordinates] + [e for _, e in shared] + finals
    read = set().union(set(), *(e.free_symbols for e in body))
    loads = [f"{v} = np.float64({a}[{st['elem']}])" for s, (v, a) in ELEMENT.items() if s in read]
    loads += [f"{v} = {a}[{st['pflat']}]" for s, (v, a) in PARAM.items() if s in read]
    lines = [f"{c} = {scalar_code(e, names)}" for c, e in lp.coordinates + tuple(shared)]
    coefficients = [(k, e) for k, e in lp.coefficients if k in read]
    if inline:
        head = [f"{k} = {scalar_code(e, fixed)}" for k, e in coefficients]
        wrapper = []
    else:
        head = [f"{k} = coef[{j}, s]" for j, (k, _) in enumerate(coefficients)]
        wrapper = [numpy_code(e, fixed) for _, e in coefficients]
    codes = [scalar_code(e, names) for e in finals]
    return dict(head=head, wrapper=wrapper, loads=loads, lines=lines, codes=codes,
                uses=reads(head, loads, lines, codes) | {"xb"})
