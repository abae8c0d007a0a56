"""Fold an eval-mode batch norm into the dense or convolution layer before it.

In eval mode batch norm is a per-channel affine map, y = (z - mean)*s + beta with s = gamma/sqrt(var + eps), so
after z = x @ W + b (or a convolution) it can be absorbed into the weights:

    W' = W*s (per output channel),   b' = (b - mean)*s + beta   (b = 0 when the layer has no bias).

Weight conventions:
- dense, ``layout="in_out"`` (default): W of shape (D_in, D_out), z = x @ W + b (Keras, symbn.nn.Dense);
- dense, ``layout="out_in"``: W of shape (D_out, D_in), z = x @ W.T + b (PyTorch's nn.Linear);
- convolution: W of shape (C_out, C_in, *kernel) (PyTorch's Conv1d/2d/3d, e.g. (C_out, C_in, kh, kw)).

W' keeps W's dtype when W is a float array (float64 otherwise: folded integer weights are not integers). The
batch norm's gamma, beta, mean and var must be finite real numbers and var >= 0 (a never-trained or diverged
batch norm is refused, not folded into NaN weights); errors name the argument.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from symbn.layers import BatchNorm, as_array, real


def _weight(W, what: str) -> np.ndarray:
    return as_array("W", W, "iuf", f"real numbers ({what})")


def _out_dtype(W: np.ndarray) -> np.dtype:
    return W.dtype if W.dtype.kind == "f" else np.dtype(np.float64)


def _scale_shift(n, gamma, beta, mean, var, eps):
    arrays = {}
    for name, a, default in (("gamma", gamma, 1.0), ("beta", beta, 0.0), ("mean", mean, None), ("var", var, None)):
        if a is None and default is not None:
            a = np.full(n, default)
        else:
            a = as_array(name, a, "iuf", "real numbers, one per output channel").astype(np.float64)
        if a.shape != (n,):
            raise ValueError(f"{name}: expected shape ({n},), one value per output channel; got {a.shape}")
        bad = ~np.isfinite(a) | ((a < 0) if name == "var" else False)
        if np.any(bad):
            what = "finite values >= 0" if name == "var" else "finite values"
            raise ValueError(f"{name}: expected {what}; got {a[bad][0]!r} for channel {int(np.argmax(bad))}")
        arrays[name] = a
    eps = real("eps", eps, "a finite number >= 0", lambda v: 0 <= v < math.inf)
    if np.any(arrays["var"] + eps <= 0):
        raise ValueError("var: expected var + eps > 0 for every channel")
    s = arrays["gamma"] / np.sqrt(arrays["var"] + eps)
    return s, arrays["beta"] - arrays["mean"] * s


def _bias(b, n):
    if b is None:
        return np.zeros(n)
    b = as_array("b", b, "iuf", "real numbers, one per output channel").astype(np.float64)
    if b.shape != (n,):
        raise ValueError(f"b: expected shape ({n},), one value per output channel, or None; got {b.shape}")
    return b


def fold_dense(W: ArrayLike, b: ArrayLike | None, gamma: ArrayLike | None, beta: ArrayLike | None, mean: ArrayLike,
               var: ArrayLike, eps: float = 1e-5, layout: str = "in_out") -> tuple[np.ndarray, np.ndarray]:
    """(W', b') for a dense layer followed by an eval-mode batch norm; b=None when the layer has no bias,
    gamma/beta None for a batch norm without affine parameters. W' keeps W's layout and dtype."""
    W = _weight(W, "a 2-D dense weight")
    if W.ndim != 2:
        raise ValueError(f"W: expected a 2-D dense weight; got shape {W.shape}")
    if not isinstance(layout, str) or layout not in ("in_out", "out_in"):
        raise ValueError(f"layout: expected 'in_out' (W is (D_in, D_out)) or 'out_in' (PyTorch); got {layout!r}")
    n = W.shape[1] if layout == "in_out" else W.shape[0]
    s, shift = _scale_shift(n, gamma, beta, mean, var, eps)
    W_new = W * (s if layout == "in_out" else s[:, None])
    dtype = _out_dtype(W)
    return W_new.astype(dtype), (_bias(b, n) * s + shift).astype(dtype)


def fold_conv(W: ArrayLike, b: ArrayLike | None, gamma: ArrayLike | None, beta: ArrayLike | None, mean: ArrayLike,
              var: ArrayLike, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """(W', b') for a convolution with weight (C_out, C_in, *kernel) followed by an eval-mode batch norm over
    its C_out channels; b=None when the convolution has no bias."""
    W = _weight(W, "a convolution weight (C_out, C_in, *kernel)")
    if W.ndim < 3:
        raise ValueError(f"W: expected a convolution weight (C_out, C_in, *kernel); got shape {W.shape}")
    n = W.shape[0]
    s, shift = _scale_shift(n, gamma, beta, mean, var, eps)
    W_new = W * s.reshape((n,) + (1,) * (W.ndim - 1))
    dtype = _out_dtype(W)
    return W_new.astype(dtype), (_bias(b, n) * s + shift).astype(dtype)


def fold_batchnorm(W: ArrayLike, b: ArrayLike | None, bn: BatchNorm, kind: str = "dense",
                   layout: str = "in_out") -> tuple[np.ndarray, np.ndarray]:
    """Fold a symbn.layers.BatchNorm (its running statistics, eps and affine parameters) into W, b.
    kind: "dense" (with *layout* as in fold_dense) or "conv"."""
    if not getattr(bn, "track_running_stats", False):
        raise ValueError("bn: expected a BatchNorm with running statistics (track_running_stats=True); "
                         "without them eval mode depends on the batch and cannot be folded")
    gamma, beta = (bn.gamma, bn.beta) if bn.affine else (None, None)
    if not isinstance(kind, str):
        raise ValueError(f"kind: expected 'dense' or 'conv'; got {kind!r}")
    if kind == "dense":
        return fold_dense(W, b, gamma, beta, bn.running_mean, bn.running_var, bn.eps, layout)
    if kind == "conv":
        return fold_conv(W, b, gamma, beta, bn.running_mean, bn.running_var, bn.eps)
    raise ValueError(f"kind: expected 'dense' or 'conv'; got {kind!r}")
