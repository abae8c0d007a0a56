"""symbn: derive normalization layers symbolically and generate kernels from the derivation."""

__version__ = "0.1.0"  # first, because generated banners import it while the package initializes

from .derive import Derivation, derive
from .expr import ExpressionError
from .graph import GraphError
from .output import load
from .spec import PRESETS, LAYOUTS, Spec, SpecError, custom, make, preset

__all__ = ["Derivation", "derive", "ExpressionError", "GraphError", "PRESETS", "LAYOUTS", "Spec", "SpecError",
           "custom", "load", "make", "preset", "__version__"]
