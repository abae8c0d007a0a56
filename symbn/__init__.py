"""symbn: derive normalization layers symbolically and generate kernels from the derivation."""

from .derive import Derivation, derive
from .expr import ExpressionError
from .graph import GraphError
from .spec import PRESETS, LAYOUTS, Spec, SpecError, custom, make, preset

__version__ = "0.1.0"

__all__ = ["Derivation", "derive", "ExpressionError", "GraphError", "PRESETS", "LAYOUTS", "Spec", "SpecError",
           "custom", "make", "preset", "__version__"]
