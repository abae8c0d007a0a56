"""symbn.codegen.reductions: the backward's sums split into coefficients times sums of monomials give the same numbers as
the sums themselves, for every catalogue plan, with x shifted by its mean or not."""

import numpy as np
import pytest
import sympy

from symbn.codegen import catalogue as catalog
from symbn.core.derive import derive
from symbn.codegen.elementwise import SHIFT, XS, Elementwise
from symbn.codegen.plan import plan
from symbn.codegen.reductions import split_sums
from symbn.core.symbols import BETA, DY, GAMMA, M, X


def _values(free, rng, n):
    """Random values: per element for x, dy, xs and the parameters, one per set for everything else."""
    out = {}
    for s in free:
        per_element = s in (X, DY, XS, GAMMA, BETA)
        v = rng.normal(size=n) if per_element else rng.normal()
        out[s] = abs(v) + 0.5 if s.is_positive or s.is_nonnegative else v
    return out


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("spec", catalog.CATALOG, ids=lambda s: s.name)
def test_split_sums_add_up_to_the_sums(spec, shifted):
    p = plan(derive(spec))
    ew = Elementwise(p)
    if not p.sums or (shifted and ew.mean is None):
        pytest.skip("no sums, or no mean to shift by")
    summands = [e.xreplace(ew.coordinates) for _, e in p.sums]
    split = split_sums(ew, summands, shifted)
    assert split is not None
    monomials, totals = split
    assert len(monomials) <= len(summands)
    rng = np.random.default_rng(0)
    n = 7
    free = set().union(*(e.free_symbols for e in summands)) | {X, DY}
    values = _values(free | ({SHIFT} if shifted else set()), rng, n)
    if shifted:
        values[XS] = values[X] - values[SHIFT]
    q = {name: np.sum(sympy.lambdify(list(values), m)(*values.values()) * np.ones(n)) for name, m in monomials}
    for e, total in zip(summands, totals):
        direct = np.sum(sympy.lambdify(list(values), e)(*values.values()) * np.ones(n))
        combined = float(total.subs({M: n, **q}).subs({k: v for k, v in values.items() if np.ndim(v) == 0}))
        assert combined == pytest.approx(direct, rel=1e-10, abs=1e-10)


def test_a_summand_fixed_over_the_set_sums_to_the_count_times_it():
    p = plan(derive(catalog.CATALOG[0]))
    ew = Elementwise(p)
    istd = next(s for s in ew.stats if s.name == "istd")
    monomials, (total,) = split_sums(ew, [2 * istd], shifted=False)
    assert monomials == [] and sympy.simplify(total - 2 * istd * M) == 0
