"""Just enough of a NumPy network library to train models with symbn's norm layers: Dense, Conv2d, MaxPool2d,
Flatten, ReLU, Sigmoid, Sequential (with a Keras-style summary), two losses and two optimizers.

Conventions (shared with symbn.layers): ``forward(x)`` caches what ``backward(dy)`` needs; ``backward`` returns dx and
*sets* (does not accumulate) the layer's gradients; ``parameters()`` and ``gradients()`` are dicts with the same keys,
and optimizers update the parameter arrays in place.

Bad input is refused as in symbn.layers, before anything changes: an error names the argument (or state key), what
was expected and what was given. A Sequential whose forward is refused by a later layer puts back the buffers
(running statistics) the earlier layers had updated; an optimizer checks every gradient before the first update.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from symbn.layers import Layer, as_array, flag, float_dtype, positive_int, real

#: What a layer's ``rng`` accepts: None (fresh entropy), an integer seed, or a Generator (shared, advanced).
Seed = int | np.random.Generator | None
#: A loss function: (output, target) -> (mean loss, gradient with respect to the output).
Loss = Callable[[np.ndarray, npt.ArrayLike], tuple[float, np.ndarray]]


class Optimizer(Protocol):
    def step(self) -> None: ...


def _rng(rng: Seed) -> np.random.Generator:
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as e:
        raise ValueError(f"rng: expected None, an integer seed or a numpy Generator; got {rng!r} ({e})") from None


def _cached(layer, name: str):
    value = getattr(layer, name, None)
    if value is None:
        raise RuntimeError(f"{type(layer).__name__}.backward: call forward first")
    return value


def _gradient(layer, dy, shape) -> np.ndarray:
    """dy checked against the shape of the last forward's output (no broadcasting) and a real numeric dtype."""
    dy = as_array("dy", dy, "iuf", "real numbers")
    if dy.shape != tuple(shape):
        raise ValueError(f"dy: {type(layer).__name__} expects the shape of the last forward's output {tuple(shape)}; "
                         f"got {dy.shape}")
    return dy


class _Weighted(Layer):
    """A layer with a weight W, an optional bias b (None without one) and their gradients dW and db."""

    W: np.ndarray
    b: np.ndarray | None
    dW: np.ndarray
    db: np.ndarray | None

    def parameters(self) -> dict[str, np.ndarray]:
        return {"W": self.W} if self.b is None else {"W": self.W, "b": self.b}

    def gradients(self) -> dict[str, np.ndarray]:
        return {"W": self.dW} if self.b is None else {"W": self.dW, "b": self.db}


class Dense(_Weighted):
    """y = x @ W + b with W of shape (in_features, out_features), as Keras stores it (PyTorch's Linear stores W.T).

    W starts Glorot-uniform (Keras' default; pass ``rng`` for reproducibility), b at zero.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, rng: Seed = None,
                 dtype: npt.DTypeLike = np.float64):
        in_features = positive_int("in_features", in_features)
        out_features = positive_int("out_features", out_features)
        bias, dtype, rng = flag("bias", bias), float_dtype("dtype", dtype), _rng(rng)
        limit = np.sqrt(6.0 / (in_features + out_features))
        self.W = rng.uniform(-limit, limit, (in_features, out_features)).astype(dtype)
        self.b = np.zeros(out_features, dtype) if bias else None
        self.dW, self.db = np.zeros_like(self.W), None if self.b is None else np.zeros_like(self.b)
        self._x = None

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = as_array("x", x, "iuf", "real numbers")
        if x.ndim != 2 or x.shape[1] != self.W.shape[0]:
            raise ValueError(f"x: Dense expects shape (N, {self.W.shape[0]}); got {x.shape}")
        self._x = x
        y = x @ self.W
        return y if self.b is None else y + self.b

    def backward(self, dy: npt.ArrayLike) -> np.ndarray:
        x = _cached(self, "_x")
        dy = _gradient(self, dy, (x.shape[0], self.W.shape[1]))
        dW = x.T @ dy
        db = None if self.b is None else dy.sum(axis=0)
        self.dW, self.db = dW, db
        return dy @ self.W.T

    def __repr__(self) -> str:
        return f"Dense({self.W.shape[0]}, {self.W.shape[1]}, bias={self.b is not None})"


class ReLU(Layer):
    _mask = None

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = as_array("x", x, "iuf", "real numbers")
        self._mask = x > 0
        return np.where(self._mask, x, 0).astype(x.dtype, copy=False)

    def backward(self, dy: npt.ArrayLike) -> np.ndarray:
        mask = _cached(self, "_mask")
        dy = _gradient(self, dy, mask.shape)
        return np.where(mask, dy, 0).astype(dy.dtype, copy=False)

    def __repr__(self) -> str:
        return "ReLU()"


class Sigmoid(Layer):
    _y = None

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = as_array("x", x, "iuf", "real numbers")
        if x.dtype.kind != "f":
            x = x.astype(np.float64)  # probabilities of integer input are not integers
        # exp of a non-positive argument only: no overflow for large |x|.
        e = np.exp(-np.abs(x))
        self._y = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)
        return self._y

    def backward(self, dy: npt.ArrayLike) -> np.ndarray:
        y = _cached(self, "_y")
        dy = _gradient(self, dy, y.shape)
        return dy * y * (1.0 - y)

    def __repr__(self) -> str:
        return "Sigmoid()"


def _pair(name: str, value, least: int) -> tuple[int, int]:
    """An integer or a pair of integers (height, width), each >= least, as PyTorch takes kernel_size, stride and
    padding."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < least
                              for v in items):
        raise ValueError(f"{name}: expected an integer >= {least} or a pair of them (height, width); got {value!r}")
    return int(items[0]), int(items[1])


class _Windowed(Layer):
    """What Conv2d and MaxPool2d share: NCHW input read as windows of ``kernel`` at ``stride`` over the input
    padded by ``padding``, and the way back from the windows' gradients to the input's."""

    in_channels: int | None = None  # None: any number of channels
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    _cache = None

    def _windows(self, x: np.ndarray, fill: float) -> tuple[np.ndarray, tuple[int, ...]]:
        """A view (N, C, Ho, Wo, kh, kw) of the windows of x padded with *fill*, and the padded shape."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        if x.ndim != 4 or (self.in_channels is not None and x.shape[1] != self.in_channels):
            channels = "C" if self.in_channels is None else self.in_channels
            raise ValueError(f"x: {self!r} expects NCHW input of shape (N, {channels}, H, W); got {x.shape}")
        if x.shape[2] + 2 * ph < kh or x.shape[3] + 2 * pw < kw:
            raise ValueError(f"x: {self!r} expects H + 2*{ph} >= {kh} and W + 2*{pw} >= {kw} (the padded input at "
                             f"least one kernel); got shape {x.shape}")
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
        view = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
        return view[:, :, ::sh, ::sw], x.shape

    def _scatter(self, dwindows: np.ndarray, padded: tuple[int, ...]) -> np.ndarray:
        """The input's gradient from its windows' (N, C, Ho, Wo, kh, kw): every window adds back where it was read,
        overlapping windows summing. One strided slice per kernel offset carries all pixels at once."""
        (sh, sw), (ph, pw) = self.stride, self.padding
        n, c, ho, wo, kh, kw = dwindows.shape
        dx = np.zeros(padded, dwindows.dtype)
        for i in range(kh):
            for j in range(kw):
                dx[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += dwindows[:, :, :, :, i, j]
        return dx[:, :, ph:padded[2] - ph, pw:padded[3] - pw]

    def _options(self) -> str:
        return f"kernel_size={self.kernel}, stride={self.stride}, padding={self.padding}"


class Conv2d(_Windowed, _Weighted):
    """2-D convolution of NCHW input as torch.nn.Conv2d (a cross-correlation, zero padding): W has the shape
    (out_channels, in_channels, kh, kw) PyTorch gives it, b one value per output channel.

    im2col: the windows become the rows of one matrix and the convolution one matrix product; backward scatters the
    windows' gradients back with one slice per kernel offset, never a loop over pixels. W starts Glorot-uniform over
    fan-in in_channels*kh*kw and fan-out out_channels*kh*kw (Keras' Conv2D default, as Dense), b at zero.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, *, bias: bool = True,
                 rng: Seed = None, dtype: npt.DTypeLike = np.float64):
        self.in_channels = positive_int("in_channels", in_channels)
        out_channels = positive_int("out_channels", out_channels)
        self.kernel, self.stride = _pair("kernel_size", kernel_size, 1), _pair("stride", stride, 1)
        self.padding = _pair("padding", padding, 0)
        bias, dtype, rng = flag("bias", bias), float_dtype("dtype", dtype), _rng(rng)
        area = self.kernel[0] * self.kernel[1]
        limit = np.sqrt(6.0 / ((self.in_channels + out_channels) * area))
        self.W = rng.uniform(-limit, limit, (out_channels, self.in_channels, *self.kernel)).astype(dtype)
        self.b = np.zeros(out_channels, dtype) if bias else None
        self.dW, self.db = np.zeros_like(self.W), None if self.b is None else np.zeros_like(self.b)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        windows, padded = self._windows(as_array("x", x, "iuf", "real numbers"), 0)
        n, c, ho, wo, kh, kw = windows.shape
        cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)
        y = cols @ self.W.reshape(len(self.W), -1).T
        if self.b is not None:
            y += self.b
        self._cache = cols, padded, windows.shape
        return np.ascontiguousarray(y.reshape(n, ho, wo, -1).transpose(0, 3, 1, 2))

    def backward(self, dy: npt.ArrayLike) -> np.ndarray:
        cols, padded, (n, c, ho, wo, kh, kw) = _cached(self, "_cache")
        out = len(self.W)
        dy = _gradient(self, dy, (n, out, ho, wo)).transpose(0, 2, 3, 1).reshape(-1, out)
        self.dW = (dy.T @ cols).reshape(self.W.shape)
        self.db = None if self.b is None else dy.sum(axis=0)
        dcols = dy @ self.W.reshape(out, -1)
        return self._scatter(dcols.reshape(n, ho, wo, c, kh, kw).transpose(0, 3, 1, 2, 4, 5), padded)

    def __repr__(self) -> str:
        return f"Conv2d({self.in_channels}, {len(self.W)}, {self._options()}, bias={self.b is not None})"


class MaxPool2d(_Windowed):
    """Max pooling of NCHW input as torch.nn.MaxPool2d: stride defaults to kernel_size, padding (at most half the
    kernel, as PyTorch requires) never wins. The gradient goes to the first largest entry of each window (row-major),
    as PyTorch's does; nan wins and propagates, as in PyTorch."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0):
        self.kernel = _pair("kernel_size", kernel_size, 1)
        self.stride = self.kernel if stride is None else _pair("stride", stride, 1)
        self.padding = _pair("padding", padding, 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel)):
            # a window of padding alone would output -inf
            raise ValueError(f"padding: expected at most half of kernel_size {self.kernel}; got {padding!r}")

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = as_array("x", x, "iuf", "real numbers")
        if x.dtype.kind != "f":
            x = x.astype(np.float64)  # the padding is -inf, which integers cannot hold
        windows, padded = self._windows(x, -np.inf)
        n, c, ho, wo, kh, kw = windows.shape
        flat = windows.reshape(n, c, ho, wo, kh * kw)
        first = flat.argmax(axis=-1)  # argmax takes the first largest, and the first nan
        self._cache = first, padded, windows.shape
        return np.take_along_axis(flat, first[..., None], axis=-1)[..., 0]

    def backward(self, dy: npt.ArrayLike) -> np.ndarray:
        first, padded, shape = _cached(self, "_cache")
        dy = _gradient(self, dy, shape[:4])
        dwindows = (np.arange(shape[4] * shape[5]) == first[..., None]) * dy[..., None]
        return self._scatter(dwindows.reshape(shape), padded)

    def __repr__(self) -> str:
        return f"MaxPool2d({self._options()})"


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1*d2*...) in C order, as torch.nn.Flatten: between convolutions and Dense."""

    _shape = None

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        x = as_array("x", x, "iuf", "real numbers")
        if x.ndim < 2:
            raise ValueError(f"x: Flatten expects a batch axis and at least one more; got shape {x.shape}")
        self._shape = x.shape
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, dy: npt.ArrayLike) -> np.ndarray:
        shape = _cached(self, "_shape")
        return _gradient(self, dy, (shape[0], math.prod(shape[1:]))).reshape(shape)

    def __repr__(self) -> str:
        return "Flatten()"


_LAYER_METHODS = ("forward", "backward", "train", "parameters", "gradients", "buffers")


class Sequential(Layer):
    """Layers applied in order; parameter and state keys are "index.name", as in torch.nn.Sequential."""

    def __init__(self, *layers: Layer):
        for i, layer in enumerate(layers):
            missing = [m for m in _LAYER_METHODS if not callable(getattr(layer, m, None))]
            if missing:
                raise TypeError(f"layers: expected Layer instances (with {', '.join(_LAYER_METHODS)}); got "
                                f"{type(layer).__name__} at position {i}, without {', '.join(missing)}")
        self.layers = list(layers)

    def forward(self, x: npt.ArrayLike) -> np.ndarray:
        """Each layer's forward in turn. When one refuses its input, the buffers the layers before it updated
        (running statistics) are put back, and the error says which layer refused."""
        saved = {k: np.array(v, copy=True) for k, v in self.buffers().items()}
        for i, layer in enumerate(self.layers):
            try:
                x = layer.forward(x)
            except Exception as e:
                for k, v in self.buffers().items():
                    if k in saved:
                        v[...] = saved[k]
                e.add_note(f"in Sequential layer {i}: {layer!r}")
                raise
        return x

    def backward(self, dy: npt.ArrayLike) -> np.ndarray:
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def train(self, mode: bool = True) -> Sequential:
        self.training = flag("mode", mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def _collect(self, what: str) -> dict[str, np.ndarray]:
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in getattr(layer, what)().items()}

    def parameters(self) -> dict[str, np.ndarray]:
        return self._collect("parameters")

    def gradients(self) -> dict[str, np.ndarray]:
        return self._collect("gradients")

    def buffers(self) -> dict[str, np.ndarray]:
        return self._collect("buffers")

    def nonnegative(self) -> set[str]:
        return {f"{i}.{k}" for i, layer in enumerate(self.layers) for k in getattr(layer, "nonnegative", set)()}

    def summary(self, input_shape: Sequence[int] | None = None, *,
                print_fn: Callable[[str], object] | None = print) -> ModelSummary:
        """Keras' ``model.summary()``: each layer's output shape and parameter count, and the model's trainable,
        non-trainable and total counts. Printed through *print_fn* (None: not printed) and returned as a
        ModelSummary, whose fields hold the numbers.

        input_shape is one example's shape, without the batch axis (Keras' ``Input(shape=...)``); by default the
        first layer's, where a Dense fixes it. Trainable: the parameters. Non-trainable: the floating-point buffers,
        which are Keras' non-trainable weights (a batch norm's moving mean and variance); an integer counter such as
        num_batches_tracked is bookkeeping, not a weight, and is not counted, as Keras has none and PyTorch does not
        count it among the parameters. The shapes come from an eval-mode forward of zeros through copies of the
        layers: the model's mode, running statistics and cached forward are left as they were.
        """
        if input_shape is None:
            first = self
            while isinstance(first, Sequential) and first.layers:
                first = first.layers[0]
            if not isinstance(first, Dense):
                raise ValueError(f"input_shape: expected the shape of one example without the batch axis, e.g. "
                                 f"(1, 28, 28), which the first layer does not fix ({first!r}); got None")
            input_shape = (first.W.shape[0],)
        try:
            shape = tuple(positive_int("input_shape", n) for n in input_shape)
        except (TypeError, ValueError):
            shape = ()
        if not shape:
            raise ValueError(f"input_shape: expected a non-empty sequence of positive integers, one example's shape "
                             f"without the batch axis; got {input_shape!r}")
        x, rows = np.zeros((2, *shape)), []  # two examples: a batch norm without running statistics needs two
        for i, layer in enumerate(self.layers):
            try:
                x = _probe(layer, x)
            except Exception as e:
                e.add_note(f"in Sequential.summary, layer {i}: {layer!r}, for input_shape {shape}")
                raise
            rows.append(LayerSummary(f"{i} ({type(layer).__name__})", (None, *x.shape[1:]),
                                     sum(p.size for p in layer.parameters().values()),
                                     sum(b.size for b in layer.buffers().values() if b.dtype.kind == "f")))
        result = ModelSummary((None, *shape), tuple(rows))
        if print_fn is not None:
            print_fn(str(result))
        return result

    def __repr__(self) -> str:
        return "Sequential(\n" + "".join(f"  ({i}) {layer!r}\n" for i, layer in enumerate(self.layers)) + ")"


def _probe(layer: Layer, x: np.ndarray) -> np.ndarray:
    """layer's eval-mode output for x, leaving the layer as it was: the forward runs on a shallow copy, whose mode
    and cache are its own (an eval forward reads the shared arrays, never writes them); a Sequential's layers each
    on theirs, since a copy of it would share, and switch, its layers."""
    if isinstance(layer, Sequential):
        for sub in layer.layers:
            x = _probe(sub, x)
        return x
    probe = copy.copy(layer)
    probe.training = False
    return probe.forward(x)


@dataclass(frozen=True)
class LayerSummary:
    """One row of Sequential.summary()."""

    name: str  #: "index (type)": the index is the prefix of the layer's state-dict keys
    output_shape: tuple[int | None, ...]  #: None stands for the batch axis, as Keras prints it
    trainable: int
    non_trainable: int

    @property
    def params(self) -> int:
        return self.trainable + self.non_trainable


@dataclass(frozen=True)
class ModelSummary:
    """What Sequential.summary() prints, as numbers; str() is the printed table."""

    input_shape: tuple[int | None, ...]
    layers: tuple[LayerSummary, ...]

    @property
    def trainable(self) -> int:
        return sum(row.trainable for row in self.layers)

    @property
    def non_trainable(self) -> int:
        return sum(row.non_trainable for row in self.layers)

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable

    def __str__(self) -> str:
        table = [("Layer (type)", "Output Shape", "Param #")]
        table += [(row.name, _shape_text(row.output_shape), f"{row.params:,}") for row in self.layers]
        widths = [max(len(r[k]) for r in table) + 4 for k in range(3)]
        width = sum(widths) + 1

        def line(row):
            return (f" {row[0]:<{widths[0]}}{row[1]:<{widths[1]}}{row[2]:>{widths[2] - 4}}").rstrip()

        return "\n".join([f"Sequential, input shape {_shape_text(self.input_shape)}", "_" * width, line(table[0]),
                          "=" * width, *map(line, table[1:]), "=" * width, f"Total params: {self.total:,}",
                          f"Trainable params: {self.trainable:,}", f"Non-trainable params: {self.non_trainable:,}",
                          "_" * width])


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def binary_cross_entropy(p: npt.ArrayLike, target: npt.ArrayLike) -> tuple[float, np.ndarray]:
    """Mean binary cross-entropy of probabilities *p* and 0/1 targets, and its gradient with respect to p.

    As torch.nn.BCELoss: log terms clamped at -100 and the gradient's denominator p(1 - p) at 1e-12, so a saturated
    sigmoid gives a large finite loss, not inf or nan.
    """
    p = as_array("p", p, "iuf", "probabilities")
    if p.dtype.kind != "f":
        p = p.astype(np.float64)
    target = as_array("target", target, "biuf", "0/1 targets (or probabilities)")
    if p.shape != target.shape:
        raise ValueError(f"target: expected the shape of p {p.shape}; got {target.shape}")
    if p.size == 0:
        raise ValueError(f"p: expected at least one probability; got shape {p.shape}")
    for name, a in (("p", p), ("target", target)):
        inside = (a >= 0) & (a <= 1)  # False for nan
        if not np.all(inside):
            raise ValueError(f"{name}: expected values in [0, 1]; got {a[~inside].flat[0]!r} "
                             f"({int(np.sum(~inside))} of {a.size} outside)")
    target = target.astype(p.dtype)
    with np.errstate(divide="ignore"):
        log_p, log_q = np.maximum(np.log(p), -100.0), np.maximum(np.log1p(-p), -100.0)
    loss = -np.mean(target * log_p + (1 - target) * log_q)
    dp = (p - target) / np.maximum(p * (1 - p), 1e-12) / p.size
    return float(loss), dp


def softmax_cross_entropy(logits: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) (N, K) against integer labels (N,), and the gradient for the logits."""
    logits = as_array("logits", logits, "iuf", "real numbers")
    labels = as_array("labels", labels, "iuf", "integer classes")
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"labels: expected shape ({logits.shape[0] if logits.ndim else '?'},) of integer classes for "
                         f"logits (N, K); got labels {labels.shape}, logits {logits.shape}")
    if logits.size == 0:
        raise ValueError(f"logits: expected at least one row and one class; got shape {logits.shape}")
    if logits.dtype.kind != "f":
        logits = logits.astype(np.float64)
    k = logits.shape[1]
    valid = (labels >= 0) & (labels < k) & (labels == np.floor(labels))  # False for nan
    if not np.all(valid):
        raise ValueError(f"labels: expected integer classes in [0, {k}) for logits of {k} columns; got "
                         f"{labels[~valid][0]!r}")
    labels = labels.astype(np.intp)
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = len(labels)
    loss = -log_p[np.arange(n), labels].mean()
    d = np.exp(log_p)
    d[np.arange(n), labels] -= 1
    return float(loss), d / n


class Adam:
    """Adam over a model's parameters (updated in place).

    form="pytorch" (default) is torch.optim.Adam: p -= lr/(1 - b1^t) * m / (sqrt(v)/sqrt(1 - b2^t) + eps).
    form="keras" is Keras' Adam, which adds eps to sqrt(v) before the bias correction of v:
    p -= lr*sqrt(1 - b2^t)/(1 - b1^t) * m / (sqrt(v) + eps). The two differ only through eps.
    eps defaults to Keras' 1e-7 (PyTorch's default is 1e-8).
    """

    def __init__(self, model: Layer, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-7,
                 form: Literal["pytorch", "keras"] = "pytorch"):
        if not isinstance(form, str) or form not in ("pytorch", "keras"):
            raise ValueError(f"form: expected 'pytorch' or 'keras'; got {form!r}")
        model, lr = _model(model), _lr(lr)
        try:
            betas = tuple(betas)
        except TypeError:
            betas = (betas,)
        if len(betas) != 2:
            raise ValueError(f"betas: expected two numbers in [0, 1); got {betas!r}")
        betas = tuple(real("betas", b, "two numbers in [0, 1)", lambda v: 0 <= v < 1) for b in betas)
        eps = real("eps", eps, "a finite number >= 0", lambda v: 0 <= v < math.inf)
        self.model, self.lr, self.betas, self.eps, self.form = model, lr, betas, eps, form
        self.m = {k: np.zeros_like(p) for k, p in model.parameters().items()}
        self.v = {k: np.zeros_like(p) for k, p in model.parameters().items()}
        self.t = 0

    def step(self) -> None:
        """One update of every parameter, after checking every gradient (and that the model's parameters are still
        those Adam was created for): a refused step changes nothing."""
        params, grads = _checked(self, self.model)
        changed = sorted(set(params) ^ set(self.m))
        changed += sorted(k for k in params if k in self.m and params[k].shape != self.m[k].shape)
        if changed:
            raise KeyError(f"model: parameter {changed[0]!r} is not one Adam was created for (its keys and shapes "
                           f"changed since); create a new Adam for the changed model")
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for k, p in params.items():
            g = grads[k]
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            if self.form == "pytorch":
                p -= (self.lr / c1) * self.m[k] / (np.sqrt(self.v[k]) / np.sqrt(c2) + self.eps)
            else:
                p -= (self.lr * np.sqrt(c2) / c1) * self.m[k] / (np.sqrt(self.v[k]) + self.eps)


class SGD:
    """Plain stochastic gradient descent: p -= lr * g."""

    def __init__(self, model: Layer, lr: float = 0.01):
        self.model, self.lr = _model(model), _lr(lr)

    def step(self) -> None:
        """p -= lr * g for every parameter, after checking every gradient: a refused step changes nothing."""
        params, grads = _checked(self, self.model)
        for k, p in params.items():
            p -= self.lr * grads[k]


def _model(model: Layer) -> Layer:
    if not (callable(getattr(model, "parameters", None)) and callable(getattr(model, "gradients", None))):
        raise TypeError(f"model: expected a Layer (with parameters() and gradients()); got {type(model).__name__}")
    return model


def _lr(lr) -> float:
    return real("lr", lr, "a finite number > 0", lambda v: 0 < v < math.inf)


def _checked(optimizer, model):
    """The model's parameters and gradients, after checking that their keys, shapes and dtypes agree."""
    params, grads = model.parameters(), model.gradients()
    name = type(optimizer).__name__
    if set(params) != set(grads):
        raise KeyError(f"gradients: {name} expects the keys of the parameters {sorted(params)}; got {sorted(grads)}")
    for k, p in params.items():
        g = grads[k]
        if not isinstance(g, np.ndarray) or g.dtype.kind not in "iuf" or g.shape != p.shape:
            got = f"shape {g.shape} dtype {g.dtype}" if isinstance(g, np.ndarray) else type(g).__name__
            raise ValueError(f"gradients[{k!r}]: {name} expects a real array of the parameter's shape {p.shape}; "
                             f"got {got} (call backward after forward before step)")
    return params, grads


def mlp(sizes: Iterable[int], activation: Callable[[], Layer], *, norm: Callable[[int], Layer] | None = None,
        out_activation: Callable[[], Layer] | None = None, hidden_bias: bool = True, rng: Seed = None,
        dtype: npt.DTypeLike = np.float64) -> Sequential:
    """Dense layers of the given sizes (input first); after each hidden Dense, ``norm(width)`` when given, then
    ``activation()``; after the last Dense, ``out_activation()`` when given. hidden_bias=False drops the hidden
    layers' biases (a batch norm after them cancels a bias anyway).

    The Keras example model: ``mlp([20, 64, 32, 1], ReLU, norm=lambda n: BatchNorm.keras(n),
    out_activation=Sigmoid)``.
    """
    try:
        sizes = list(sizes)
    except TypeError:
        raise ValueError(f"sizes: expected a sequence of layer widths, input first; got {sizes!r}") from None
    for name, f in (("activation", activation), ("norm", norm), ("out_activation", out_activation)):
        if (f is not None or name == "activation") and not callable(f):
            raise TypeError(f"{name}: expected a layer class or a function making a layer; got {f!r}")
    if len(sizes) < 2:
        raise ValueError(f"sizes: expected at least an input and an output size; got {sizes}")
    rng = _rng(rng)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        hidden = i < len(sizes) - 2
        layers.append(Dense(n_in, n_out, bias=hidden_bias or not hidden, rng=rng, dtype=dtype))
        if hidden:
            layers += ([norm(n_out)] if norm else []) + [activation()]
    if out_activation:
        layers.append(out_activation())
    return Sequential(*layers)


def train_step(model: Layer, optimizer: Optimizer, loss_fn: Loss, x: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """One step: forward in training mode, loss, backward, optimizer update. Returns the loss before the update."""
    model.train()
    loss, grad = loss_fn(model.forward(x), target)
    model.backward(grad)
    optimizer.step()
    return loss
