"""Just enough of a NumPy network library to train models with symbn's norm layers: Dense, ReLU, Sigmoid,
Sequential, two losses and two optimizers.

Conventions (shared with symbn.layers): ``forward(x)`` caches what ``backward(dy)`` needs; ``backward`` returns dx and
*sets* (does not accumulate) the layer's gradients; ``parameters()`` and ``gradients()`` are dicts with the same keys,
and optimizers update the parameter arrays in place.

Bad input is refused as in symbn.layers, before anything changes: an error names the argument (or state key), what
was expected and what was given. A Sequential whose forward is refused by a later layer puts back the buffers
(running statistics) the earlier layers had updated; an optimizer checks every gradient before the first update.
"""

from __future__ import annotations

import math

import numpy as np

from symbn.layers import Layer, as_array, flag, float_dtype, positive_int, real


def _rng(rng):
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


class Dense(Layer):
    """y = x @ W + b with W of shape (in_features, out_features), as Keras stores it (PyTorch's Linear stores W.T).

    W starts Glorot-uniform (Keras' default; pass ``rng`` for reproducibility), b at zero.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, rng=None, dtype=np.float64):
        in_features = positive_int("in_features", in_features)
        out_features = positive_int("out_features", out_features)
        bias, dtype, rng = flag("bias", bias), float_dtype("dtype", dtype), _rng(rng)
        limit = np.sqrt(6.0 / (in_features + out_features))
        self.W = rng.uniform(-limit, limit, (in_features, out_features)).astype(dtype)
        self.b = np.zeros(out_features, dtype) if bias else None
        self.dW, self.db = np.zeros_like(self.W), None if self.b is None else np.zeros_like(self.b)
        self._x = None

    def forward(self, x):
        x = as_array("x", x, "iuf", "real numbers")
        if x.ndim != 2 or x.shape[1] != self.W.shape[0]:
            raise ValueError(f"x: Dense expects shape (N, {self.W.shape[0]}); got {x.shape}")
        self._x = x
        y = x @ self.W
        return y if self.b is None else y + self.b

    def backward(self, dy):
        x = _cached(self, "_x")
        dy = _gradient(self, dy, (x.shape[0], self.W.shape[1]))
        dW = x.T @ dy
        db = None if self.b is None else dy.sum(axis=0)
        self.dW, self.db = dW, db
        return dy @ self.W.T

    def parameters(self):
        return {"W": self.W} if self.b is None else {"W": self.W, "b": self.b}

    def gradients(self):
        return {"W": self.dW} if self.b is None else {"W": self.dW, "b": self.db}

    def __repr__(self):
        return f"Dense({self.W.shape[0]}, {self.W.shape[1]}, bias={self.b is not None})"


class ReLU(Layer):
    _mask = None

    def forward(self, x):
        x = as_array("x", x, "iuf", "real numbers")
        self._mask = x > 0
        return np.where(self._mask, x, 0).astype(x.dtype, copy=False)

    def backward(self, dy):
        mask = _cached(self, "_mask")
        dy = _gradient(self, dy, mask.shape)
        return np.where(mask, dy, 0).astype(dy.dtype, copy=False)

    def __repr__(self):
        return "ReLU()"


class Sigmoid(Layer):
    _y = None

    def forward(self, x):
        x = as_array("x", x, "iuf", "real numbers")
        if x.dtype.kind != "f":
            x = x.astype(np.float64)  # probabilities of integer input are not integers
        # exp of a non-positive argument only: no overflow for large |x|.
        e = np.exp(-np.abs(x))
        self._y = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)
        return self._y

    def backward(self, dy):
        y = _cached(self, "_y")
        dy = _gradient(self, dy, y.shape)
        return dy * y * (1.0 - y)

    def __repr__(self):
        return "Sigmoid()"


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

    def forward(self, x):
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

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def train(self, mode: bool = True):
        self.training = flag("mode", mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def _collect(self, what: str) -> dict[str, np.ndarray]:
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in getattr(layer, what)().items()}

    def parameters(self):
        return self._collect("parameters")

    def gradients(self):
        return self._collect("gradients")

    def buffers(self):
        return self._collect("buffers")

    def nonnegative(self):
        return {f"{i}.{k}" for i, layer in enumerate(self.layers) for k in getattr(layer, "nonnegative", set)()}

    def __repr__(self):
        return "Sequential(\n" + "".join(f"  ({i}) {layer!r}\n" for i, layer in enumerate(self.layers)) + ")"


def binary_cross_entropy(p, target):
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


def softmax_cross_entropy(logits, labels):
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

    def __init__(self, model: Layer, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-7, form: str = "pytorch"):
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


def _model(model):
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


def mlp(sizes, activation, *, norm=None, out_activation=None, hidden_bias: bool = True, rng=None,
        dtype=np.float64) -> Sequential:
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


def train_step(model: Layer, optimizer, loss_fn, x, target) -> float:
    """One step: forward in training mode, loss, backward, optimizer update. Returns the loss before the update."""
    model.train()
    loss, grad = loss_fn(model.forward(x), target)
    model.backward(grad)
    optimizer.step()
    return loss
