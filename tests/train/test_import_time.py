"""Import cost: a layer over a cached module is made and run without SymPy (the issue: `from symbn.layers import
BatchNorm` took about two seconds, most of it importing SymPy for nothing). SymPy loads when something must be
derived. Behavioural checks on sys.modules in a fresh interpreter; nothing here asserts on time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from symbn.codegen import key
from symbn.core import expr

HEAVY = ("sympy", "mpmath", "symbn.codegen.module", "symbn.core.derive")


def _run(code: str, env: dict | None = None) -> dict:
    """Run *code* in a fresh interpreter; it prints one JSON object as its last line."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, **(env or {})))
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


LAYER_RUN = """
import json, sys
import numpy as np
from symbn.layers import BatchNorm
import symbn.cs231n, symbn.fold, symbn.nn  # the other training modules, as a user would import them

layer = BatchNorm(8)
y = layer.forward(np.random.default_rng(0).standard_normal((4, 8)))
dx = layer.backward(np.ones_like(y))
print(json.dumps({"loaded": sorted(m for m in %r if m in sys.modules), "kernels": layer.kernels.__file__,
                  "finite": bool(np.isfinite(dx).all() and np.isfinite(layer.dgamma).all())}))
""" % (HEAVY,)


def test_a_layer_over_a_cached_module_never_imports_sympy(tmp_path):
    env = {"SYMBN_CACHE": str(tmp_path)}
    # Generate what BatchNorm(8) loads into an empty cache (in a fresh interpreter: in this one symbn.load may
    # answer from sys.modules without writing to the cache).
    warm = _run("import json, symbn; print(json.dumps({'file': symbn.load(symbn.preset('batch'), 'numpy').__file__}))",
                env)
    assert warm["file"].startswith(str(tmp_path))
    result = _run(LAYER_RUN, env)
    assert result["kernels"] == warm["file"]  # the cached module, not a new one
    assert result["finite"]
    assert result["loaded"] == [], f"imported although the module was cached: {result['loaded']}"


def test_deriving_imports_sympy_when_it_is_needed():
    result = _run("""
import json, sys
import symbn
before = "sympy" in sys.modules
spec = symbn.preset("batch")
made = "sympy" in sys.modules
derivation = symbn.derive(spec)  # a lazy attribute of the package
print(json.dumps({"before": before, "made": made, "after": "sympy" in sys.modules,
                  "kind": type(derivation).__name__}))
""")
    assert result == {"before": False, "made": False, "after": True, "kind": "Derivation"}


def test_a_spec_parses_without_sympy_and_gives_sympy_numbers_to_the_derivation():
    result = _run("""
import json, sys
from symbn.core import expr, spec as specs

def numbers(tree):
    return [tree[1]] if tree[0] == "num" else [v for t in tree[1:] if isinstance(t, tuple) for v in numbers(t)]

s = specs.make("gamma*(x - mean(x))/sqrt(mean((x - mean(x))**2) + 1e-3) + 0.5*beta", like="batch", layout="NCHW")
names = [s.name, s.digest(), s.with_options(eps=1e-3).name, s.expression]  # what loading a module reads
without = "sympy" not in sys.modules and "mpmath" not in sys.modules
tree = s.tree  # what derive reads: SymPy numbers, built now
print(json.dumps({"without": without, "same": tree == expr.parse(s.expression),
                  "numbers": sorted({type(n).__name__ for n in numbers(tree)})}))
""")
    assert result == {"without": True, "same": True, "numbers": ["Half", "Integer", "Rational"]}


def test_the_exact_tree_equals_the_sympy_tree():
    for text in ("gamma*(x - mean(x))/sqrt(mean((x - mean(x))**2) + eps) + beta", "x*1e-5 + 0.25*x**(1/3)",
                 "exp(-x**2/2)/sqrt(mean(x**2) + 1e-7)", "log(abs(x) + 3) - 2.5"):
        exact = expr.parse_exact(text)
        assert exact == expr.parse(text) == expr.sympy_tree(exact)
        assert expr.canonical(exact) == expr.canonical(expr.parse(text))
        assert expr.to_text(exact) == expr.to_text(expr.parse(text))


def test_the_input_hash_reads_the_version_sympy_reports():
    import sympy

    assert key.sympy_version() == sympy.__version__
