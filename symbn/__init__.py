"""symbn: derive normalization layers symbolically and generate kernels from the derivation.

The public names load on first use, so `from symbn.layers import BatchNorm` with a cached module never imports SymPy.
"""

from symbn.version import __version__

_PUBLIC = {
    "Derivation": "symbn.core.derive", "derive": "symbn.core.derive", "ExpressionError": "symbn.core.expr",
    "GraphError": "symbn.core.graph", "load": "symbn.codegen.store", "prove_all": "symbn.core.verify",
    "PRESETS": "symbn.core.spec", "LAYOUTS": "symbn.core.spec", "Spec": "symbn.core.spec",
    "SpecError": "symbn.core.spec", "custom": "symbn.core.spec", "make": "symbn.core.spec",
    "preset": "symbn.core.spec",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'symbn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
