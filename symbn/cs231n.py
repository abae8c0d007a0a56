"""The normalization functions of cs231n (2020) assignment 2, over symbn kernels: course code switches by changing
one import (``from symbn.cs231n import batchnorm_forward, ...``).

Semantics follow the assignment's layers.py:

- ``bn_param``: ``mode`` ('train' or 'test', required), ``eps`` (1e-5), ``momentum`` (0.9); ``running_mean`` and
  ``running_var`` are created as zeros of x's dtype on first use, stored in the dict and updated in place with
  running = momentum*running + (1 - momentum)*batch, the batch variance uncorrected (symbn's "keras" convention).
  Test mode normalizes with the running statistics.
- ``ln_param`` / ``gn_param``: ``eps`` (1e-5); layer and group norm use each sample's statistics in both modes.
- Arrays: x, gamma, beta and dout may be any real arrays, as NumPy code takes them (lists too): integers and bools
  become float64, float32 stays float32 (other floats become float64); complex, object and string arrays are refused
  naming the argument. The generated kernels underneath keep their strict float32/float64 dtypes.
- Shapes: batchnorm and layernorm x (N, D) with gamma, beta (D,); spatial batchnorm x (N, C, H, W) with gamma, beta
  (C,); spatial groupnorm x (N, C, H, W) with gamma, beta (1, C, 1, 1). Backward returns dx, dgamma, dbeta with the
  shapes of x, gamma, beta.

``batchnorm_backward`` uses the engine's staged form (one adjoint per forward node, the step-by-step backward the
assignment asks for first); ``batchnorm_backward_alt`` and the others use the compact form. Caches are opaque (the
saved statistics keep whatever dtype the kernels return).

Bad arguments are refused by an error naming them (``bn_param['eps']``, ``dout``, ``cache``, ...) before anything
changes: a refused forward neither creates nor updates ``bn_param``'s running statistics.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
from numpy.typing import ArrayLike

from symbn.layers import as_array, real
from symbn.codegen.store import load
from symbn.core.spec import preset

Grads = tuple[np.ndarray, np.ndarray, np.ndarray]  # (dx, dgamma, dbeta)

BACKEND = "numpy"  # assignment-sized arrays: the NumPy kernels need no compilation


def _kernels(name: str, layout: str, **options) -> ModuleType:
    # symbn.load caches modules by spec, so this is cheap after the first call.
    return load(preset(name, layout, **options), BACKEND)


def _real(name: str, a: ArrayLike) -> np.ndarray:
    """*a* as the kernels take it: float32 kept, any other real dtype (integers, bools) as float64."""
    a = as_array(name, a, "biuf", "real numbers")
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


def _array(name: str, a: ArrayLike, ndim: int) -> np.ndarray:
    a = _real(name, a)
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions; got shape {a.shape}")
    return a


def _param_dict(name: str, param: object) -> dict:
    if not isinstance(param, dict):
        raise TypeError(f"{name}: expected a dict; got {type(param).__name__}")
    return param


def _eps(name: str, param: dict) -> float:
    return real(f"{name}['eps']", param.get("eps", 1e-5), "a finite number >= 0", lambda v: 0 <= v < math.inf)


def _running(param: dict, key: str, n: int, dtype: np.dtype) -> np.ndarray:
    """param[key] as a writeable float array the kernel can update in place: the caller's array when it is one,
    else a new one (zeros on first use) that the caller stores in param once the forward succeeds."""
    name = f"bn_param[{key!r}]"
    r = param.get(key)
    if r is None:
        r = np.zeros(n, dtype)
    elif not (isinstance(r, np.ndarray) and r.flags.writeable and r.dtype in (np.float32, np.float64)):
        r = np.array(as_array(name, r, "iuf", "real numbers"), dtype=np.float64)
    if r.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},); got {r.shape}")
    bad = ~np.isfinite(r) | ((r < 0) if key == "running_var" else False)
    if np.any(bad):
        expected = "finite values >= 0" if key == "running_var" else "finite values"
        raise ValueError(f"{name}: expected {expected}; got {r[bad][0]!r}")
    return r


def _batchnorm(x: np.ndarray, gamma: ArrayLike, beta: ArrayLike, bn_param: object, layout: str) -> tuple:
    gamma, beta = _real("gamma", gamma), _real("beta", beta)
    bn_param = _param_dict("bn_param", bn_param)
    if "mode" not in bn_param:
        raise KeyError("bn_param: expected a 'mode' key, 'train' or 'test'")
    mode = bn_param["mode"]
    if not (isinstance(mode, str) and mode in ("train", "test")):
        raise ValueError(f'Invalid forward batchnorm mode "{mode}"')  # the assignment's own message
    eps = _eps("bn_param", bn_param)
    momentum = real("bn_param['momentum']", bn_param.get("momentum", 0.9), "a number in [0, 1]",
                    lambda v: 0 <= v <= 1)
    kernels = _kernels("batch", layout, running="keras")
    channels = x.shape[1]
    mean = _running(bn_param, "running_mean", channels, x.dtype)
    var = _running(bn_param, "running_var", channels, x.dtype)
    if mode == "train":
        out, mu, istd = kernels.forward_train(x, gamma, beta, mean, var, momentum=momentum, eps=eps)
        cache = ("train", kernels, x, gamma, _shapes(gamma, beta), (mu, istd), eps)
    else:
        out = kernels.forward_eval(x, gamma, beta, mean, var, eps=eps)
        cache = ("test", kernels, x, gamma, _shapes(gamma, beta), (mean.copy(), var.copy()), eps)
    bn_param["running_mean"], bn_param["running_var"] = mean, var  # stored once the forward succeeded
    return out, cache


def _shapes(gamma: np.ndarray, beta: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes backward gives dgamma and dbeta: those of the parameters as the caller passed them."""
    return np.shape(gamma), np.shape(beta)


def _backward(dout: ArrayLike, cache: object, staged: bool = False) -> Grads:
    # gamma as the kernel takes it (flat for group norm); shapes: the caller's parameter shapes
    if not (isinstance(cache, tuple) and len(cache) == 7 and isinstance(cache[0], str) and cache[0] in ("train", "test")
            and hasattr(cache[1], "backward") and isinstance(cache[2], np.ndarray)):
        raise TypeError(f"cache: expected the cache returned by the matching forward; got {type(cache).__name__}"
                        + (f" of length {len(cache)}" if isinstance(cache, tuple) else ""))
    mode, kernels, x, gamma, shapes, stats, eps = cache
    dout = _real("dout", dout)
    if dout.shape != x.shape:
        raise ValueError(f"dout: expected the shape of x {x.shape}; got {dout.shape}")
    dout = dout.astype(x.dtype, copy=False)
    if mode == "test":
        dx, dgamma, dbeta = kernels.backward_eval(dout, x, gamma, *stats, eps=eps)
    elif staged:
        dx, dgamma, dbeta = kernels.backward_staged(dout, x, gamma, eps=eps)
    else:
        dx, dgamma, dbeta = kernels.backward(dout, x, gamma, *stats, eps=eps)
    return dx, dgamma.reshape(shapes[0]), dbeta.reshape(shapes[1])


def batchnorm_forward(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike,
                      bn_param: dict) -> tuple[np.ndarray, tuple]:
    """Batch norm of x (N, D), gamma and beta (D,): (out, cache); running statistics updated in bn_param."""
    return _batchnorm(_array("x", x, 2), gamma, beta, bn_param, "NC")


def batchnorm_backward(dout: ArrayLike, cache: tuple) -> Grads:
    """(dx, dgamma, dbeta) by the staged backward: the forward graph's nodes differentiated one by one."""
    return _backward(dout, cache, staged=True)


def batchnorm_backward_alt(dout: ArrayLike, cache: tuple) -> Grads:
    """(dx, dgamma, dbeta) from the compact form dx = gamma*istd/M*(M*dy - sum(dy) - xhat*sum(dy*xhat))."""
    return _backward(dout, cache)


def layernorm_forward(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike,
                      ln_param: dict) -> tuple[np.ndarray, tuple]:
    """Layer norm of each row of x (N, D), gamma and beta (D,): (out, cache). Uses ln_param['eps'] (1e-5)."""
    x, gamma, beta = _array("x", x, 2), _real("gamma", gamma), _real("beta", beta)
    eps = _eps("ln_param", _param_dict("ln_param", ln_param))
    kernels = _kernels("layer", "NC")
    out, mu, istd = kernels.forward_train(x, gamma, beta, eps=eps)
    return out, ("train", kernels, x, gamma, _shapes(gamma, beta), (mu, istd), eps)


def layernorm_backward(dout: ArrayLike, cache: tuple) -> Grads:
    return _backward(dout, cache)


def spatial_batchnorm_forward(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike,
                              bn_param: dict) -> tuple[np.ndarray, tuple]:
    """Batch norm of x (N, C, H, W) per channel, gamma and beta (C,): (out, cache)."""
    return _batchnorm(_array("x", x, 4), gamma, beta, bn_param, "NCHW")


def spatial_batchnorm_backward(dout: ArrayLike, cache: tuple) -> Grads:
    return _backward(dout, cache)


def spatial_groupnorm_forward(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, G: int,
                              gn_param: dict) -> tuple[np.ndarray, tuple]:
    """Group norm of x (N, C, H, W) in G groups of C // G channels, gamma and beta (1, C, 1, 1): (out, cache)."""
    x, gamma, beta = _array("x", x, 4), _real("gamma", gamma), _real("beta", beta)
    eps = _eps("gn_param", _param_dict("gn_param", gn_param))
    if isinstance(G, bool) or not isinstance(G, (int, np.integer)) or G < 1:
        raise ValueError(f"G: expected a positive number of groups; got {G!r}")
    if x.shape[1] % G:
        raise ValueError(f"G: expected a divisor of the channel count {x.shape[1]}; got {G}")
    c = x.shape[1]
    for name, p in (("gamma", gamma), ("beta", beta)):
        if np.shape(p) != (1, c, 1, 1):
            raise ValueError(f"{name}: expected shape (1, {c}, 1, 1); got {np.shape(p)}")
    kernels = _kernels("group", "NCHW", groups=int(G))
    g, b = np.reshape(gamma, c), np.reshape(beta, c)
    out, mu, istd = kernels.forward_train(x, g, b, eps=eps)
    return out, ("train", kernels, x, g, _shapes(gamma, beta), (mu, istd), eps)


def spatial_groupnorm_backward(dout: ArrayLike, cache: tuple) -> Grads:
    return _backward(dout, cache)
