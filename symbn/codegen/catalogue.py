"""The single list of specs: what the test matrix proves, what generated/ holds and docs/ documents."""

from __future__ import annotations

from symbn.core.spec import LAYOUTS, PRESETS, Spec, SpecError, make, preset

#: Custom forward expressions the proofs cover, with explicit axes: (id, expression, options).
CUSTOM = (
    # The "(x - mean)/(std + eps)" layer norm of many transformer tutorials, with the unbiased variance.
    ("transformer_ln", "gamma*(x - mean(x))/(sqrt(mean((x - mean(x))**2)) + eps) + beta",
     dict(axes=(1,), param_axes=(1,), ddof=1)),
    # No mean-centring: RMS norm over axes (0, 2) of a rank-3 input, one gamma per channel.
    ("rms_axes02", "gamma*x/sqrt(mean(x**2) + eps)", dict(axes=(0, 2), param_axes=(1,))),
    # Mean absolute deviation instead of the standard deviation: a non-polynomial statistic.
    ("mad", "gamma*(x - mean(x))/(mean(abs(x - mean(x))) + eps) + beta", dict(axes=(0,), param_axes=(1,))),
    # Statistics over axes (0, 2) of a rank-4 input: the innermost axis is kept but is not the only axis kept, so
    # the Numba kernels walk statistic by statistic rather than by column.
    ("batch_axes02", "gamma*(x - mean(x))/sqrt(mean((x - mean(x))**2) + eps) + beta",
     dict(axes=(0, 2), param_axes=(1,), ndim=4)),
    # A softmax: no affine normalized coordinate, so the compact form stays in the primal x.
    ("softmax", "exp(x - mean(x))/sum(exp(x - mean(x)))", dict(axes=(1,), param_axes=())),
)


def custom_specs() -> dict[str, Spec]:
    return {key: make(text, **options) for key, text, options in CUSTOM}


def preset_specs(groups: tuple[int, ...] = (2, 4)) -> list[Spec]:
    """Every preset for every layout it applies to (group norm once per group count)."""
    out = []
    for name, row in PRESETS.items():
        for layout in LAYOUTS:
            for g in groups if row.grouped else (None,):
                try:
                    out.append(preset(name, layout, groups=g))
                except SpecError:
                    continue  # instance norm needs spatial axes: not for NC
    return out


#: What generated/ holds (each for the NumPy and the Numba backend), and what the kernel tests run.
CATALOG = (
    preset("batch", "NC"),
    preset("batch", "NCHW"),
    preset("batch", "NHWC"),
    preset("layer", "NC"),
    preset("layer", "NCHW"),
    preset("instance", "NCHW"),
    preset("group", "NCHW", groups=4),
    preset("group", "NCHW", groups=32),
    preset("rms", "NC"),
)
