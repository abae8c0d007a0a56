"""The generated double_backward against central differences of the generated backward (float64), a Hessian-vector
product through forward, backward and double_backward, and PyTorch's double backward (create_graph twice)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import symbn
from helpers import BACKENDS, numeric_grad, rel_err

SPECS = {
    "batch_nc": symbn.preset("batch", "NC"),
    "batch_nchw": symbn.preset("batch", "NCHW"),
    "batch_nhwc": symbn.preset("batch", "NHWC"),
    "layer_nc": symbn.preset("layer", "NC"),
    "layer_nchw": symbn.preset("layer", "NCHW"),
    "instance_nchw": symbn.preset("instance", "NCHW"),
    "group2_nchw": symbn.preset("group", "NCHW", groups=2),
    "rms_nc": symbn.preset("rms", "NC"),
    "batch_nc_noscale": symbn.preset("batch", "NC", scale=False),
    "transformer_ln": symbn.custom("gamma*(x - mean(x))/(sqrt(mean((x - mean(x))**2)) + eps) + beta", ndim=2,
                                   axes=(1,), param_axes=(1,), ddof=1),
    "mad": symbn.custom("gamma*(x - mean(x))/(mean(abs(x - mean(x))) + eps) + beta", ndim=2, axes=(0,),
                        param_axes=(1,)),
}
SHAPES = {2: (6, 4), 4: (3, 4, 2, 3)}


@functools.cache
def module(name, backend):
    return symbn.load(SPECS[name], backend)


def names(m):
    code = m.backward.__code__
    return code.co_varnames[:code.co_argcount]


def data(m, seed=0):
    rng = np.random.default_rng(seed)
    shape = SHAPES[m.NDIM]
    pshape = tuple(shape[a] for a in m.PARAM_AXES)
    d = dict(x=rng.normal(0.5, 1.5, shape), dy=rng.normal(size=shape), ggx=rng.normal(size=shape),
             gamma=rng.normal(1.0, 0.3, pshape), beta=rng.normal(size=pshape),
             gggamma=rng.normal(size=pshape), ggbeta=rng.normal(size=pshape))
    return d


def first_order(m, d, dy, x, gamma):
    """backward at (dy, x, gamma), the saved statistics from forward_train at x."""
    params = [gamma] + ([d["beta"]] if "beta" in m.forward_train.__code__.co_varnames else [])
    if "gamma" not in names(m):
        params = [d["beta"]] if "beta" in m.forward_train.__code__.co_varnames else []
    _, *saved = m.forward_train(x, *params)
    return m.backward(dy, x, *([gamma] if "gamma" in names(m) else []), *saved)


def penalty(m, d, dy, x, gamma):
    """L2 = sum(ggx*dx) + sum(gggamma*dgamma) + sum(ggbeta*dbeta)."""
    grads = first_order(m, d, dy, x, gamma)
    upstream = [d["ggx"]] + ([d["gggamma"]] if "gamma" in names(m) else []) + [d["ggbeta"]] * (len(grads) - 1 - ("gamma" in names(m)))
    return sum(float(np.sum(u * g)) for u, g in zip(upstream, grads))


def double(m, d):
    gamma = [d["gamma"]] if "gamma" in names(m) else []
    _, *saved = m.forward_train(d["x"], *([d["gamma"]] if gamma else []), *([d["beta"]] if "beta" in m.forward_train.__code__.co_varnames else []))
    code = m.double_backward.__code__
    args = code.co_varnames[:code.co_argcount]
    up = [d["ggx"]] + [d[a] for a in ("gggamma", "ggbeta") if a in args]
    return m.double_backward(*up, d["dy"], d["x"], *gamma, *saved)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", SPECS)
def test_double_backward_is_the_gradient_of_the_penalty(name, backend):
    m = module(name, backend)
    d = data(m)
    got = double(m, d)
    f = lambda: penalty(m, d, d["dy"], d["x"], d["gamma"])  # noqa: E731
    want = [numeric_grad(f, d["dy"], h=1e-5), numeric_grad(f, d["x"], h=1e-5)] + ([numeric_grad(f, d["gamma"], h=1e-5)] if "gamma" in names(m) else [])
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-7, (name, rel_err(g, w))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["batch_nchw", "batch_nc"])
def test_eval_double_backward_is_the_gradient_of_the_eval_penalty(name, backend):
    m = module(name, backend)
    d = data(m, seed=1)
    running = [np.abs(np.random.default_rng(2).normal(1.0, 0.2, m._stat_shape(m._sizes(d["x"])))) for _ in m.RUNNING]

    def f():
        grads = m.backward_eval(d["dy"], d["x"], d["gamma"], *running)
        return sum(float(np.sum(u * g)) for u, g in zip((d["ggx"], d["gggamma"], d["ggbeta"]), grads))

    got = m.double_backward_eval(d["ggx"], d["gggamma"], d["ggbeta"], d["dy"], d["x"], d["gamma"], *running)
    for g, w in zip(got, (numeric_grad(f, d["dy"], h=1e-5), numeric_grad(f, d["x"], h=1e-5), numeric_grad(f, d["gamma"], h=1e-5))):
        assert rel_err(g, w) < 1e-7


@pytest.mark.parametrize("backend", BACKENDS)
def test_hessian_vector_product_through_forward_backward_double_backward(backend):
    """L(x) = sum(w * y(x)): its gradient is backward(w, ...); H v is double_backward with ggx = v, and equals the
    central difference of gradients along v."""
    m = module("batch_nchw", backend)
    d = data(m, seed=3)
    w, v = d["dy"], np.random.default_rng(4).normal(size=d["x"].shape)

    def grad(x):
        _, *saved = m.forward_train(x, d["gamma"], d["beta"])
        return m.backward(w, x, d["gamma"], *saved)[0]

    _, *saved = m.forward_train(d["x"], d["gamma"], d["beta"])
    _, hv, _ = m.double_backward(v, None, None, w, d["x"], d["gamma"], *saved)
    h = 1e-5
    assert rel_err(hv, (grad(d["x"] + h * v) - grad(d["x"] - h * v)) / (2 * h)) < 1e-7


@pytest.mark.parametrize("backend", BACKENDS)
def test_none_upstream_is_zero_and_out_is_written(backend):
    m = module("layer_nc", backend)
    d = data(m, seed=5)
    _, *saved = m.forward_train(d["x"], d["gamma"], d["beta"])
    zeros = np.zeros_like(d["gamma"])
    full = m.double_backward(d["ggx"], zeros, zeros, d["dy"], d["x"], d["gamma"], *saved)
    none = m.double_backward(d["ggx"], None, None, d["dy"], d["x"], d["gamma"], *saved)
    for a, b in zip(full, none):
        np.testing.assert_array_equal(a, b)
    out = (np.empty_like(d["x"]), np.empty_like(d["x"]))
    gdy, gx, _ = m.double_backward(d["ggx"], None, None, d["dy"], d["x"], d["gamma"], *saved, out=out)
    assert gdy is out[0] and gx is out[1]
    np.testing.assert_array_equal(gx, full[1])
    with pytest.raises(ValueError, match="out: expected two arrays of their own"):
        m.double_backward(d["ggx"], None, None, d["dy"], d["x"], d["gamma"], *saved, out=(out[0], out[0]))
    with pytest.raises(ValueError, match="ggx: expected the shape of x"):
        m.double_backward(d["ggx"][:1], None, None, d["dy"], d["x"], d["gamma"], *saved)
    with pytest.raises(ValueError, match="gggamma: expected shape"):
        m.double_backward(d["ggx"], d["gggamma"][:1], None, d["dy"], d["x"], d["gamma"], *saved)


def test_wide_column_double_backward_takes_rows_in_fours():
    """The column kernels' sums take rows in fours (with a tail) where a row's accumulators do not fit in L1
    (C * sums > 2048); the other inputs here are narrow. 2100 columns (the eval pass has one sum) and 5 or 6 rows per
    chunk (4 chunks per thread) take that loop nest and its tail; NumPy's double backward is the reference."""
    import numba

    a, b = module("batch_nc", "numpy"), module("batch_nc", "numba")
    rng = np.random.default_rng(8)
    shape = (20 * numba.get_num_threads() + 3, 2100)
    x, dy, ggx = rng.normal(3.0, 2.0, size=shape), rng.normal(size=shape), rng.normal(size=shape)
    gamma, beta, gggamma, ggbeta = (rng.normal(size=2100) for _ in range(4))
    running = [rng.normal(size=2100), rng.uniform(0.5, 1.5, size=2100)]
    _, *saved = a.forward_train(x, gamma, beta)
    for m, n in ((a.double_backward, b.double_backward), (a.double_backward_eval, b.double_backward_eval)):
        stats = saved if m is a.double_backward else running
        for u, v in zip(m(ggx, gggamma, ggbeta, dy, x, gamma, *stats), n(ggx, gggamma, ggbeta, dy, x, gamma, *stats),
                        strict=True):
            np.testing.assert_allclose(v, u, rtol=1e-10, atol=1e-10 * np.max(np.abs(u)))
