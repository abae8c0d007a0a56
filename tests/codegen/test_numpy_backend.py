"""symbn.codegen.backends.numpy: outputs written into their rows by in-place ufuncs give what evaluating the expression gives."""

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
