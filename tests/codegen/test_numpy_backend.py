"""symbn.codegen.backends.numpy: outputs written into their rows by in-place ufuncs, values fixed per statistic printed
with their common parts once, and reductions taken about the shift all give what evaluating their expressions gives."""

import re

import numpy as np
import pytest
import sympy

from symbn.codegen.backends.numpy import _in_place
from symbn.codegen.printers import numpy_code

xs, dyc = sympy.symbols("xs dyc", real=True)
k0, k1, k2, k3 = sympy.symbols("k0:4", real=True)
SHAPES = {xs: (5, 3), dyc: (5, 3), k0: (5, 1), k1: (1, 3), k2: (5, 1), k3: ()}


def _mul(*args):
    return sympy.Mul(*args, evaluate=False)


def _add(*args):
    return sympy.Add(*args, evaluate=False)


@pytest.mark.parametrize("e", [
    _add(_mul(k3, _add(_mul(k1, xs), k2)), k0),  # layer norm's y = gamma*(istd*xs + c) + beta
    _add(_mul(dyc, k1, k2), _mul(k0, xs), k3),  # dx with a coefficient per row and one per column
    _add(_mul(-1, dyc, k1), _mul(k0, xs), -k2),  # terms that subtract
    _add(xs, -k2),  # an elementwise symbol first
    _mul(dyc, xs),  # two elementwise factors
    xs,  # nothing to do in place
    sympy.sqrt(_add(_mul(xs, xs), k3)),  # a function: evaluated, then copied
])
def test_in_place_matches_evaluation(e):
    rng = np.random.default_rng(0)
    env = {"np": np} | {s.name: rng.normal(size=shape).astype(np.float32) for s, shape in SHAPES.items()}
    env["k3"] = np.float32(2.5)
    expected = np.broadcast_to(eval(numpy_code(e, {}), dict(env)), (5, 3))
    dest = np.full((5, 3), np.nan, np.float32)
    exec("\n".join(_in_place("dest", e, lambda a: numpy_code(a, {}), lambda a: bool({xs, dyc} & a.free_symbols))),
         env | {"dest": dest})
    np.testing.assert_allclose(dest, expected, rtol=1e-6, atol=1e-6)


# --- values fixed per statistic: common parts once, moments about the shift --------------------------------------

gamma, beta, istd, mu, shift, q, M = sympy.symbols("gamma beta istd mu shift q M", real=True)


def test_printed_values_share_their_common_parts_and_give_what_evaluating_gives():
    from symbn.codegen.backends.numpy import _printed, _Value

    d = sympy.Add(mu, -shift, evaluate=False)
    values = [_Value("k0", gamma * istd, cast=True), _Value("k1", beta - gamma * istd * d, cast=True),
              _Value("k2", -gamma * istd**2 * q * d / M, cast=True), _Value("s", istd * q - istd * d / M)]
    parts = [values[:2], ["q = q_given"] + values[2:]]
    before, body = _printed(parts, lambda e: numpy_code(e, {}), lambda e: bool(e.free_symbols - {M}))
    code = "\n".join(before + body)
    assert len(re.findall(r"gamma\*istd\b(?!\*)", code)) == 1 and code.count("mu - shift") == 1  # each part once
    assert body[0] == "q = q_given"  # a line given stays where it was, and what reads it comes after it
    temps = [line.split(" = ")[1] for line in before + body if re.match(r"v\d+ = ", line)]
    assert temps and all(re.search(r"[a-z]", t.replace("M", "")) for t in temps)  # 1/M alone stays inline: it
    # costs nothing as a scalar, and rounds once
    rng = np.random.default_rng(1)
    env = {"np": np, "M": 7, "_cast": lambda a, _: np.asarray(a, np.float32), "xb": None,
           **{s.name: rng.normal(size=(1, 4)) for s in (gamma, beta, istd, mu, shift)}, "q_given": rng.normal(size=(1, 4))}
    exec(code, env)
    want = {v.name: eval(numpy_code(v.expr, {}), {**env, "q": env["q_given"]}) for v in values}
    for name, value in want.items():
        np.testing.assert_allclose(env[name], value, rtol=1e-6 if name.startswith("k") else 1e-14)


def test_a_shared_part_made_from_another_stays_an_array():
    """2*gamma*istd/M in two values: CSE names gamma*istd, then 2*v/M, which reads no statistic itself but is an array
    made from one; inlined as a scalar, it once read a name that the renumbering had given to another part."""
    from symbn.codegen.backends.numpy import _printed, _Value

    a, b = sympy.symbols("a b", real=True)
    values = [_Value("k0", 2 / M), _Value("k1", 2 * q / M), _Value("k2", gamma * istd * a),
              _Value("k3", 2 * gamma * istd / M + a), _Value("k4", 2 * gamma * istd / M + b)]
    (lines,) = _printed([values], lambda e: numpy_code(e, {}), lambda e: bool(e.free_symbols & {gamma, istd, a, b, q}))
    rng = np.random.default_rng(2)
    env = {"np": np, "M": 5, **{s.name: rng.normal(size=(1, 3)) for s in (gamma, istd, a, b, q)}}
    exec("\n".join(lines), env)
    for v in values:
        np.testing.assert_allclose(env[v.name], eval(numpy_code(v.expr, {}), dict(env)), rtol=1e-14)


@pytest.mark.parametrize("power", [2, 3, 4])
def test_reductions_about_the_shift_give_the_central_moments(power):
    """The whole-chunk forward sums powers of xs = x - shift and corrects by mean - shift (sum(xs) known from the
    mean): each central moment it prints equals the moment computed directly, with a mean 1e4 times the spread."""
    from symbn.codegen.backends.numpy import _NumpyBodies
    from symbn.codegen.lowering import lower
    from symbn.codegen.plan import plan
    from symbn.core.derive import derive
    from symbn.core.symbols import X
    from symbn import custom

    spec = custom(f"gamma*(x - mean(x))/(mean((x - mean(x))**{power})**2 + eps) + beta", ndim=2, axes=(1,),
                  param_axes=(1,))
    bodies = _NumpyBodies(lower(plan(derive(spec))), single=True)
    step = next(s for s in bodies.p.train_steps if s.reduce and s.expr != X)
    needed, value = bodies.about_shift(step.expr, step.denominator)
    assert needed == list(range(2, power + 1))
    x = np.random.default_rng(power).normal(1e4, 1.0, (3, 50)).astype(np.float32)
    mean = x.astype(np.float64).mean(axis=1, keepdims=True)
    xs = x - mean.astype(np.float32)
    env = {"np": np, "M": x.shape[1], f"{bodies.mean.name}_c": mean, "shift_c": mean.astype(np.float32)}
    env |= {f"p{k}_c": np.add.reduce(xs.astype(np.float64)**k, axis=1, keepdims=True) for k in needed}
    got = eval(bodies.code(value), env)
    want = np.mean((x.astype(np.float64) - mean)**power, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_every_path_of_a_fourth_moment_scale_matches_the_float64_formula(path):
    """A reduction of degree 4 taken about the shift (p2, p3 and p4 of xs) on every path of a generated NumPy module,
    float32 x with a mean 100 times its spread: y against the formula in float64, the gradients against the float64
    kernels' (the small path, proven elsewhere against PyTorch and the reference)."""
    import symbn

    spec = symbn.custom("gamma*(x - mean(x))/sqrt(sqrt(mean((x - mean(x))**4)) + eps) + beta", ndim=2, axes=(1,),
                        param_axes=(1,))
    m = symbn.load(spec, "numpy")
    rng = np.random.default_rng(4)
    x = rng.normal(100.0, 1.0, (16, 40)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    gamma, beta = (rng.normal(1.0, 0.2, 40).astype(np.float32) for _ in range(2))
    want_grads = m.backward(dy, x, gamma, *m.forward_train(x, gamma, beta)[1:])  # the float64 kernels: 640 elements
    path(m)
    y, *saved = m.forward_train(x, gamma, beta)
    grads = m.backward(dy, x, gamma, *saved)
    x64 = x.astype(np.float64)
    centred = x64 - x64.mean(axis=1, keepdims=True)
    want_y = gamma * centred / (np.mean(centred**4, axis=1, keepdims=True)**0.25 + m.EPS) + beta
    assert np.max(np.abs(y - want_y)) <= 4e-6 * np.max(np.abs(want_y))
    for got, want in zip(grads, want_grads):
        assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
