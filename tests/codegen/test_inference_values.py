"""The NumPy modules' inference keeps the values fixed per parameter set (coefficients, shift): the same arrays again
are served their values again while they hold the same bytes, an array changed in place is computed again, and what
is kept stays bounded."""

import numpy as np
import pytest

from helpers import catalogue_module

NAMES = ("batch_nc", "batch_nchw", "batch_nhwc")


@pytest.fixture
def counted(monkeypatch):
    """A catalogue module with an empty store of values, and the list of the calls that computed new ones."""
    made = []

    def prepare(name):
        m = catalogue_module(name, "numpy")
        monkeypatch.setattr(m, "_eval_kept", {})
        compute = m._eval_values_one

        def counting(*args):
            made.append(args)
            return compute(*args)

        monkeypatch.setattr(m, "_eval_values_one", counting)
        return m

    prepare.made = made
    return prepare


def _arguments(m, dtype=np.float64, n=6, seed=0):
    rng = np.random.default_rng(seed)
    shape = {"NC": (n, 5), "NCHW": (n, 5, 3, 2), "NHWC": (n, 3, 2, 5)}[m.LAYOUT]
    x = (rng.normal(size=shape) * 3 + 1).astype(dtype)
    c = 5
    params = [rng.normal(size=c).astype(dtype), rng.normal(size=c).astype(dtype)]
    running = [rng.normal(size=c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)]
    return x, params, running


def _formula(x, gamma, beta, mu, var, eps, axis):
    shape = [1] * x.ndim
    shape[axis] = -1
    x, gamma, beta, mu, var = (np.asarray(a, np.float64) for a in (x, gamma, beta, mu, var))
    return (x - mu.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * gamma.reshape(shape) + beta.reshape(shape)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_parameter_set_seen_before_is_served_its_values_again(counted, name, dtype):
    m = counted(name)
    x, params, running = _arguments(m, dtype)
    first = m.forward_eval(x, *params, *running)
    other = _arguments(m, dtype, n=2, seed=1)[0]  # another batch, another batch size: the same parameters
    second = m.forward_eval(other, *params, *running)
    assert len(counted.made) == 1 and len(m._eval_kept) == 1
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)
    for xi, y in ((x, first), (other, second)):
        assert y.dtype == dtype
        np.testing.assert_allclose(y, _formula(xi, *params, *running, m.EPS, m.CHANNEL_AXIS), **tol)


@pytest.mark.parametrize("name", NAMES)
def test_a_set_changed_in_place_is_a_new_set(counted, name):
    """Running statistics updated in place (a training step between two evaluations) and a parameter changed in place
    give the new values' result, the same as a call with copies of them."""
    m = counted(name)
    x, (gamma, beta), (mu, var) = _arguments(m)
    before = m.forward_eval(x, gamma, beta, mu, var)
    m.update_running(mu, var, mu + 1.0, var * 2.0, 10, momentum=0.5)
    after = m.forward_eval(x, gamma, beta, mu, var)
    gamma *= -2.0
    last = m.forward_eval(x, gamma, beta, mu, var)
    assert len(counted.made) == 3
    assert not np.allclose(before, after) and not np.allclose(after, last)
    np.testing.assert_array_equal(last, m.forward_eval(x, gamma.copy(), beta.copy(), mu.copy(), var.copy()))
    np.testing.assert_allclose(last, _formula(x, gamma, beta, mu, var, m.EPS, m.CHANNEL_AXIS), rtol=1e-13, atol=1e-13)


def test_dtype_and_eps_are_part_of_the_set(counted):
    m = counted("batch_nc")
    x, params, running = _arguments(m)
    y64 = m.forward_eval(x, *params, *running)
    y32 = m.forward_eval(x.astype(np.float32), *(a.astype(np.float32) for a in params + running))
    wide = m.forward_eval(x, *params, *running, eps=0.5)
    assert len(counted.made) == 3 and (y64.dtype, y32.dtype) == (np.float64, np.float32)
    np.testing.assert_allclose(wide, _formula(x, *params, *running, 0.5, 1), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(y32, y64, rtol=2e-6, atol=2e-6)


def test_what_is_kept_stays_bounded(counted):
    """At most _EVAL_KEEP sets, the oldest dropped first; a set of more than _EVAL_KEEP_BYTES is computed, not kept."""
    m = counted("batch_nc")
    x, (gamma, beta), running = _arguments(m)
    sets = [gamma + i for i in range(m._EVAL_KEEP + 3)]  # held: a set is found by its arrays
    for g in sets:
        m.forward_eval(x, g, beta, *running)
    assert len(m._eval_kept) == m._EVAL_KEEP
    made = len(counted.made)
    m.forward_eval(x, sets[-1], beta, *running)  # the newest: kept
    assert len(counted.made) == made
    y = m.forward_eval(x, sets[0], beta, *running)  # the oldest: dropped
    assert len(counted.made) == made + 1
    np.testing.assert_allclose(y, _formula(x, sets[0], beta, *running, m.EPS, 1), rtol=1e-13, atol=1e-13)
    c = m._EVAL_KEEP_BYTES // 8  # four arrays of this many float64 values: four times the bytes
    rng = np.random.default_rng(3)
    wide = rng.normal(size=(2, c)), np.ones(c), np.zeros(c), np.zeros(c), np.ones(c)
    kept = list(m._eval_kept)
    y = m.forward_eval(*wide)
    assert list(m._eval_kept) == kept and len(counted.made) == made + 2
    np.testing.assert_allclose(y, _formula(*wide, m.EPS, 1), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_input_whose_steps_overflow_gives_what_the_large_path_gives(counted, monkeypatch, dtype):
    """float32: the small path's guard hands the call to the large path, which computes in float64 (finite where
    float32 steps overflowed). float64: no guard, as the large path has no wider arithmetic; the same values."""
    m = counted("batch_nc")
    x, (gamma, beta), running = _arguments(m, dtype)
    big = 1e30 if dtype == np.float32 else 1e300
    gamma = (gamma * big).astype(dtype)
    x = (x * 1e7 if dtype == np.float32 else x * 1e10).astype(dtype)
    with np.errstate(all="ignore"):
        small = m.forward_eval(x, gamma, beta, *running)
        monkeypatch.setattr(m, "SMALL", 0)
        large = m.forward_eval(x, gamma, beta, *running)
    np.testing.assert_array_equal(small, large)
    assert np.isinf(small).any() == (dtype == np.float64)


@pytest.mark.parametrize("name", NAMES)
def test_a_call_that_takes_the_full_checks_keeps_nothing(counted, name):
    """Mixed dtypes and a strided input take the full checks, which hand over new parameter arrays on every call: a
    set kept for them would never be found again. They compute their values and leave the kept sets as they were."""
    m = counted(name)
    x, params, running = _arguments(m)
    m.forward_eval(x, *params, *running)
    kept = dict(m._eval_kept)
    assert len(kept) == 1
    narrow = [a.astype(np.float32) for a in running]
    strided = np.repeat(x, 2, axis=0)[::2]
    assert not strided.flags.c_contiguous
    for _ in range(3):
        mixed = m.forward_eval(x, *params, *narrow)
        view = m.forward_eval(strided, *params, *running)
    assert m._eval_kept == kept and len(counted.made) == 1 + 6
    np.testing.assert_allclose(mixed, _formula(x, *params, *narrow, m.EPS, m.CHANNEL_AXIS), rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(view, m.forward_eval(x, *params, *running))
    assert len(counted.made) == 1 + 6  # the quick path's set is still there
