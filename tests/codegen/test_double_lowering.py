"""The double backward as the Numba kernels compute it (symbn.codegen.double): put back together, every lowered
expression equals the derived one exactly; ggamma's share of a statistic, taken from sums, equals the sum of its
summand over the set; and the Numba modules agree with the NumPy ones to rounding, in both modes."""

from __future__ import annotations

import functools
import inspect
import random

import numpy as np
import pytest
import sympy

import symbn
from symbn.codegen.catalogue import CATALOG, custom_specs
from symbn.codegen.double import lower_double
from symbn.codegen.plan import plan
from symbn.core.second import second_orders
from symbn.core.symbols import EPS, M, psum

SPECS = {s.name: s for s in CATALOG} | custom_specs()


@functools.cache
def lowerings(name):
    d = symbn.derive(SPECS[name])
    so = second_orders(d)
    p = plan(d, so)
    return [(s, lower_double(p, s, given)) for s, given in zip(so, (p.saved, p.eval_stats)) if s is not None]


def rebuilt(loop, e):
    """A lowered expression with its coefficients and coordinates put back: in x and per-statistic symbols."""
    back = dict(loop.coefficients)
    coordinates = {c: v.xreplace(back) for c, v in loop.coordinates}
    return e.xreplace(coordinates).xreplace(back)


def in_x(so, e):
    return e.xreplace(dict(so.coordinates))


def same(a, b) -> bool:
    diff = a - b
    return sympy.expand(diff) == 0 or sympy.simplify(diff) == 0


@pytest.mark.parametrize("name", SPECS)
def test_lowered_outputs_and_sums_are_the_derived_ones(name):
    for so, low in lowerings(name):
        compact = {s.name: e for s, e in so.compact}
        expected = [compact["gdy"], compact["gx"]]
        if low.has_ggamma and low.ggamma_stat is None:
            expected.append(compact["ggamma"].args[0])
        assert len(low.out.exprs) == len(expected)
        for lowered, derived in zip(low.out.exprs, expected):
            assert same(rebuilt(low.out, lowered), in_x(so, derived)), (name, so.mode, lowered)
        named = {s: e.args[0] for s, e in so.reductions}
        for names, loop in low.levels:
            for s, lowered in zip(names, loop.exprs):
                if s in named:  # a monomial sum of ggamma's share has no derived counterpart: the next test
                    assert same(rebuilt(loop, lowered), in_x(so, named[s])), (name, so.mode, s)


def test_a_wrong_coefficient_is_caught():
    so, low = lowerings("batch_nchw")[0]
    k, e = low.out.coefficients[0]
    wrong = type(low.out)(((k, 2 * e),) + low.out.coefficients[1:], low.out.coordinates, low.out.exprs)
    gdy = {s.name: v for s, v in so.compact}["gdy"]
    assert same(rebuilt(low.out, low.out.exprs[0]), in_x(so, gdy))
    assert not same(rebuilt(wrong, wrong.exprs[0]), in_x(so, gdy))


def _rational(rng):
    return sympy.Rational(rng.randint(-9, 9) or 1, rng.randint(1, 7))


@pytest.mark.parametrize("name", [n for n in SPECS if any(low.ggamma_stat is not None for _, low in lowerings(n))])
def test_ggamma_share_from_sums_is_the_sum_of_its_summand(name):
    """Exactly, at rational points: three elements of one set, any statistics and parameters."""
    rng = random.Random(7)
    for so, low in lowerings(name):
        if low.ggamma_stat is None:
            continue
        elements = [{s: _rational(rng) for s in so.leaves + so.upstream if s.name in ("x", "dy", "ggx")}
                    for _ in range(3)]
        fixed = {s: abs(_rational(rng)) + 1 for s in so.statistics + low.stats}
        fixed |= {s: _rational(rng) for s in so.leaves + so.upstream if s.name in ("gamma", "gggamma", "ggbeta")}
        fixed |= {M: 3, EPS: sympy.Rational(1, 10)}

        def at(e, element):
            return in_x(so, e).xreplace(element).xreplace(fixed)

        sums = {}
        for names, loop in low.levels:
            for s, lowered in zip(names, loop.exprs):
                sums[s] = sum(rebuilt(loop, lowered).xreplace(sums).xreplace(el).xreplace(fixed)
                              for el in elements)
        ggamma = {s.name: e for s, e in so.compact}["ggamma"]
        assert isinstance(ggamma, psum)
        direct = sum(at(ggamma.args[0].xreplace(sums), el) for el in elements)
        assert sympy.simplify(low.ggamma_stat.xreplace(sums).xreplace(fixed) - direct) == 0, (name, so.mode)


def _shape(spec):
    if spec.groups == 32:
        return (2, 64, 4, 3)
    return {2: (6, 8), 3: (4, 6, 5), 4: (4, 8, 6, 5)}[spec.ndim]


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("name", SPECS)
def test_numba_and_numpy_double_backward_agree(name, dtype, tol):
    spec = SPECS[name]
    a, b = symbn.load(spec, "numpy"), symbn.load(spec, "numba")
    rng = np.random.default_rng(3)
    shape = _shape(spec)
    pshape = tuple(shape[i] for i in a.PARAM_AXES)
    x = rng.normal(2, 3, shape).astype(dtype)
    dy, ggx = (rng.normal(size=shape).astype(dtype) for _ in range(2))
    forward = inspect.signature(a.forward_train).parameters
    params = {n: rng.normal(size=pshape).astype(dtype) for n in ("gamma", "beta") if n in forward}
    _, *saved = a.forward_train(x, **params)
    signature = inspect.signature(a.double_backward).parameters
    upstream = [rng.normal(size=pshape).astype(dtype) for n in ("gggamma", "ggbeta") if n in signature]
    gamma = [params["gamma"]] if "gamma" in signature else []
    calls = [("double_backward", saved)]
    if hasattr(a, "double_backward_eval"):
        calls.append(("double_backward_eval", [np.abs(s) + 0.5 for s in saved[:len(a.RUNNING)]]))
    for function, stats in calls:
        expected = getattr(a, function)(ggx, *upstream, dy, x, *gamma, *stats)
        got = getattr(b, function)(ggx, *upstream, dy, x, *gamma, *stats)
        for e, g in zip(expected, got):
            assert g.dtype == e.dtype and g.shape == e.shape
            scale = np.max(np.abs(e.astype(np.float64))) or 1.0
            assert np.max(np.abs(g.astype(np.float64) - e.astype(np.float64))) / scale <= tol, (name, function)
