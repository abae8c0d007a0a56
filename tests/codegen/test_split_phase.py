"""Split-phase training passes (statistics across processes), in one process: the shares of uneven parts of a batch,
joined, give what the one-pass kernels give on the whole batch."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import symbn
from helpers import BACKENDS, rel_err

SPECS = {
    "batch_nc": symbn.preset("batch", "NC"),
    "batch_nchw": symbn.preset("batch", "NCHW"),
    "batch_nhwc": symbn.preset("batch", "NHWC"),
    "batch_nc_ddof1_keras": symbn.preset("batch", "NC", ddof=1, running="keras"),
    "rms_axes02": symbn.custom("gamma*x/sqrt(mean(x**2) + eps)", ndim=3, axes=(0, 2), param_axes=(1,)),
    # central sums up to the fourth: the kurtosis-like scale exercises the higher pairwise formulas
    "fourth": symbn.custom("gamma*(x - mean(x))/sqrt(sqrt(mean((x - mean(x))**4)) + eps) + beta", ndim=2, axes=(0,),
                           param_axes=(1,)),
    "third": symbn.custom("gamma*(x - mean(x))/(mean((x - mean(x))**2) + abs(mean((x - mean(x))**3)) + eps) + beta",
                          ndim=2, axes=(0,), param_axes=(1,)),
    # mean absolute deviation: not a sum of polynomials in x, so a second round once the mean of all rows is known
    "mad": symbn.custom("gamma*(x - mean(x))/(mean(abs(x - mean(x))) + eps) + beta", ndim=2, axes=(0,),
                        param_axes=(1,)),
}
TAIL = {2: (5,), 3: (4, 3), 4: (3, 4, 2)}
PARTS = (0, 1, 4, 3)  # rows per process: one with none, one with a single row


@functools.cache
def module(name, backend):
    return symbn.load(SPECS[name], backend)


def batch(m, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    shape = (sum(PARTS),) + TAIL[m.NDIM]
    x = rng.normal(40.0, 2.0, shape).astype(dtype)  # a large mean: plain power sums would cancel digits
    pshape = tuple(shape[a] for a in m.PARAM_AXES)
    params = [rng.normal(1.0, 0.2, pshape) for _ in ("gamma", "beta")[:len(m.PARAM_AXES) and 2]]
    return x, rng.normal(size=shape).astype(dtype), params


def parts(a):
    edges = np.cumsum((0,) + PARTS)
    return [a[s:e] for s, e in zip(edges[:-1], edges[1:])]


def takes_beta(m):
    return "beta" in m.forward_train.__code__.co_varnames[:m.forward_train.__code__.co_argcount]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", SPECS)
def test_shares_give_the_whole_batch(name, backend):
    m = module(name, backend)
    x, dy, (gamma, beta) = batch(m)
    params = (gamma, beta) if takes_beta(m) else (gamma,)
    running = [np.full(m._stat_shape(m._sizes(x)), 0.5 + i) for i in range(len(m.RUNNING))]
    whole_running = [r.copy() for r in running]
    y, *saved = m.forward_train(x, *params, *whole_running, momentum=0.25)
    rng = np.random.default_rng(1)
    totals = []
    for r in range(m.FORWARD_ROUNDS):  # one, but two for the mean absolute deviation
        shares = [m.partial_forward(p, *totals) for p in parts(x)]
        order = rng.permutation(len(shares))
        totals.append(functools.reduce(m.combine if r == 0 else m.add_shares, [shares[i] for i in order]))
    assert m.FORWARD_ROUNDS == (2 if name == "mad" else 1)
    outs = [m.finish_forward(p, *params, *totals, *(running if i == 0 else [None] * len(running)), momentum=0.25)
            for i, p in enumerate(parts(x))]
    assert rel_err(np.concatenate([o[0] for o in outs]), y) < 1e-12
    for got, want in zip(outs[2][1:], saved):
        assert rel_err(got, want) < 1e-12
    for got, want in zip(running, whole_running):
        assert rel_err(got, want) < 1e-12
    grads = m.backward(dy, x, gamma, *saved)
    back = functools.reduce(m.add_shares, [m.partial_backward(d, p, gamma, *saved) for d, p in zip(parts(dy), parts(x))])
    finished = [m.finish_backward(d, p, gamma, *saved, back) for d, p in zip(parts(dy), parts(x))]
    assert rel_err(np.concatenate([f[0] for f in finished]), grads[0]) < 1e-11
    for f in finished:
        for got, want in zip(f[1:], grads[1:]):
            assert rel_err(got, want) < 1e-11


@pytest.mark.parametrize("name", ["batch_nchw", "fourth"])
def test_combine_is_commutative_bit_for_bit_and_associative(name):
    m = module(name, "numpy")
    x, _, _ = batch(m, seed=3)
    a, b, c = (m.partial_forward(p) for p in parts(x)[1:])
    assert m.combine(a, b).tobytes() == m.combine(b, a).tobytes()
    left, right = m.combine(m.combine(a, b), c), m.combine(a, m.combine(b, c))
    assert rel_err(left, right) < 1e-13
    assert rel_err(left, m.partial_forward(np.concatenate(parts(x)[1:]))) < 1e-12
    empty = m.partial_forward(parts(x)[0])
    assert empty[0] == 0 and not empty.any()
    assert m.combine(empty, a).tobytes() == a.tobytes()


def test_float32_rows_give_float32_outputs_close_to_the_one_pass_kernel():
    m = module("batch_nchw", "numba")
    x, dy, (gamma, beta) = batch(m, dtype=np.float32)
    y, mu, istd = m.forward_train(x, gamma, beta)
    total = functools.reduce(m.combine, [m.partial_forward(p) for p in parts(x)])
    ys = [m.finish_forward(p, gamma, beta, total)[0] for p in parts(x)]
    assert all(part.dtype == np.float32 for part in ys)
    assert rel_err(np.concatenate(ys), y) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", [n for n in SPECS if n != "mad"])  # mad: below
def test_double_backward_shares_give_the_whole_batch(name, backend):
    """partial_double on uneven parts (one empty, one of a single row), shares added, finish_double on each part:
    gdy and gx of each part's rows and ggamma of all rows equal double_backward on the whole batch."""
    m = module(name, backend)
    x, dy, (gamma, beta) = batch(m)
    params = (gamma, beta) if takes_beta(m) else (gamma,)
    _, *saved = m.forward_train(x, *params)
    rng = np.random.default_rng(2)
    ggx = rng.normal(size=x.shape)
    upstream = [rng.normal(size=gamma.shape) for _ in params]  # gggamma, and ggbeta where there is beta
    want = m.double_backward(ggx, *upstream, dy, x, gamma, *saved)
    share = functools.reduce(m.add_shares, [m.partial_double(g, *upstream, d, p, gamma, *saved)
                                            for g, d, p in zip(parts(ggx), parts(dy), parts(x))])
    got = [m.finish_double(g, *upstream, d, p, gamma, *saved, share) for g, d, p in zip(parts(ggx), parts(dy), parts(x))]
    assert rel_err(np.concatenate([g[0] for g in got]), want[0]) < 1e-11
    assert rel_err(np.concatenate([g[1] for g in got]), want[1]) < 1e-11
    for g in got:
        assert rel_err(g[2], want[2]) < 1e-11
    # None upstream gradients are zeros, as in double_backward
    none = m.finish_double(None, *[None] * len(upstream), dy, x, gamma, *saved,
                           m.partial_double(None, *[None] * len(upstream), dy, x, gamma, *saved))
    assert all(np.all(a == 0) for a in none)


def test_only_specs_whose_statistics_span_the_batch_axis_split():
    assert hasattr(module("batch_nc", "numpy"), "partial_forward")
    assert not hasattr(symbn.load(symbn.preset("layer", "NC"), "numpy"), "partial_forward")
    # the mean absolute deviation's ggamma is not a combination of sums (its summand has sign(x - mean)), so its
    # second order has no split; its first order has, in two rounds
    assert hasattr(module("mad", "numpy"), "partial_forward") and not hasattr(module("mad", "numpy"), "partial_double")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_later_round_needs_the_rounds_before(backend):
    m = module("mad", backend)
    x, _, _ = batch(m)
    first = m.partial_forward(x)
    with pytest.raises(ValueError, match=r"known\[0\]: expected a share of shape \(11,\)"):
        m.partial_forward(x, first[:-1])
    with pytest.raises(ValueError, match="known: expected the combined shares of fewer than 2 rounds; got 2"):
        m.partial_forward(x, first, first)
    with pytest.raises(TypeError):
        m.finish_forward(x, *batch(m)[2], first)  # the second round's share is missing


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_shares_are_refused_by_name_and_change_nothing(backend):
    m = module("batch_nc", backend)
    x, dy, (gamma, beta) = batch(m)
    share = m.partial_forward(x)
    running = [np.zeros(5), np.ones(5)]
    before = [r.copy() for r in running]
    with pytest.raises(ValueError, match=r"share: expected a share of shape \(11,\)"):
        m.finish_forward(x, gamma, beta, share[:-1], *running)
    bad = share.copy()
    bad[0] = -1
    with pytest.raises(ValueError, match="share: expected a whole count >= 0"):
        m.finish_forward(x, gamma, beta, bad, *running)
    with pytest.raises(ValueError, match="share: expected a count of all processes' rows per statistic >= 2"):
        m.finish_forward(x[:1], gamma, beta, m.partial_forward(x[:1]), *running)
    with pytest.raises(ValueError, match="combine: expected two shares of one shape"):
        m.combine(share, share[:-1])
    with pytest.raises(ValueError, match=r"x: expected rows of a non-empty shape"):
        m.partial_forward(np.zeros((3, 0)))
    for r, b in zip(running, before):
        np.testing.assert_array_equal(r, b)
    y, mu, istd = m.forward_train(x, gamma, beta)
    with pytest.raises(ValueError, match="share: expected a share of shape"):
        m.finish_backward(dy, x, gamma, mu, istd, m.partial_backward(dy, x, gamma, mu, istd)[:-1])
    share = m.partial_double(dy, None, None, dy, x, gamma, mu, istd)
    out = (np.full_like(x, 7.0), np.full_like(x, 7.0))
    with pytest.raises(ValueError, match=r"share: expected a share of shape \(26,\)"):
        m.finish_double(dy, None, None, dy, x, gamma, mu, istd, share[:-1], out=out)
    with pytest.raises(ValueError, match="out: expected two arrays of their own"):
        m.finish_double(dy, None, None, dy, x, gamma, mu, istd, share, out=(out[0], out[0]))
    assert all(np.all(o == 7.0) for o in out)


@pytest.mark.parametrize("name", SPECS)
def test_joined_shares_are_proven_exactly(name):
    from symbn.codegen import shares
    from symbn.codegen.plan import plan

    p = plan(symbn.derive(SPECS[name]))
    s = shares.shares(p)
    assert "equal the share of all 8 values" in shares.prove(s, p)


def test_a_wrong_term_in_the_join_is_caught():
    import dataclasses

    from symbn.codegen import shares
    from symbn.codegen.plan import plan

    p = plan(symbn.derive(SPECS["fourth"]))
    s = shares.shares(p)
    for i in range(len(s.join)):
        symbol, e = s.join[i]
        for wrong in (e + shares.DELTA**2 / 7, e.xreplace({shares.COUNTS[0]: shares.COUNTS[0] + 1})):
            broken = dataclasses.replace(s, join=s.join[:i] + ((symbol, wrong),) + s.join[i + 1:])
            with pytest.raises(AssertionError, match="differ from the whole set"):
                shares.prove(broken, p)
