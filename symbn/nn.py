"""Just enough of a NumPy network library to train models with symbn's norm layers: Dense, ReLU, Sigmoid,
Sequential, two losses and two optimizers.

Conventions (shared with symbn.layers): ``forward(x)`` caches what ``backward(dy)`` needs; ``backward`` returns dx and
*sets* (does not accumulate) the layer's gradients; ``parameters()`` and ``gradients()`` are dicts with the same keys,
and optimizers update the parameter arrays in place.
"""

from __future__ import annotations

import numpy as np

from .layers import Layer


class Dense(Layer):
    """y = x @ W + b with W of shape (in_features, out_features), as Keras stores it (PyTorch's Linear stores W.T).

    W starts Glorot-uniform (Keras' default; pass ``rng`` for reproducibility), b at zero.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, rng=None, dtype=np.float64):
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ValueError(f"{name}: expected a positive integer; got {n!r}")
        rng = np.random.default_rng(rng)
        limit = np.sqrt(6.0 / (in_features + out_features))
        self.W = rng.uniform(-limit, limit, (in_features, out_features)).astype(dtype)
        self.b = np.zeros(out_features, dtype) if bias else None
        self.dW, self.db = np.zeros_like(self.W), None if self.b is None else np.zeros_like(self.b)
        self._x = None

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.W.shape[0]:
            raise ValueError(f"x: Dense expects shape (N, {self.W.shape[0]}); got {x.shape}")
        self._x = x
        y = x @ self.W
        return y if self.b is None else y + self.b

    def backward(self, dy):
        if self._x is None:
            raise RuntimeError("Dense.backward: call forward first")
        self.dW = self._x.T @ dy
        if self.b is not None:
            self.db = dy.sum(axis=0)
        return dy @ self.W.T

    def parameters(self):
        return {"W": self.W} if self.b is None else {"W": self.W, "b": self.b}

    def gradients(self):
        return {"W": self.dW} if self.b is None else {"W": self.dW, "b": self.db}

    def __repr__(self):
        return f"Dense({self.W.shape[0]}, {self.W.shape[1]}, bias={self.b is not None})"


class ReLU(Layer):
    def forward(self, x):
        self._mask = x > 0
        return np.where(self._mask, x, 0.0).astype(x.dtype, copy=False)

    def backward(self, dy):
        return np.where(self._mask, dy, 0.0).astype(dy.dtype, copy=False)

    def __repr__(self):
        return "ReLU()"


class Sigmoid(Layer):
    def forward(self, x):
        # exp of a non-positive argument only: no overflow for large |x|.
        e = np.exp(-np.abs(x))
        self._y = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)
        return self._y

    def backward(self, dy):
        return dy * self._y * (1.0 - self._y)

    def __repr__(self):
        return "Sigmoid()"


class Sequential(Layer):
    """Layers applied in order; parameter and state keys are "index.name", as in torch.nn.Sequential."""

    def __init__(self, *layers: Layer):
        self.layers = list(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def train(self, mode: bool = True):
        self.training = bool(mode)
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

    def __repr__(self):
        return "Sequential(\n" + "".join(f"  ({i}) {layer!r}\n" for i, layer in enumerate(self.layers)) + ")"


def binary_cross_entropy(p, target):
    """Mean binary cross-entropy of probabilities *p* and 0/1 targets, and its gradient with respect to p.

    As torch.nn.BCELoss: log terms clamped at -100 and the gradient's denominator p(1 - p) at 1e-12, so a saturated
    sigmoid gives a large finite loss, not inf or nan.
    """
    p, target = np.asarray(p), np.asarray(target, dtype=np.asarray(p).dtype)
    if p.shape != target.shape:
        raise ValueError(f"target: expected the shape of p {p.shape}; got {target.shape}")
    with np.errstate(divide="ignore"):
        log_p, log_q = np.maximum(np.log(p), -100.0), np.maximum(np.log1p(-p), -100.0)
    loss = -np.mean(target * log_p + (1 - target) * log_q)
    dp = (p - target) / np.maximum(p * (1 - p), 1e-12) / p.size
    return float(loss), dp


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) (N, K) against integer labels (N,), and the gradient for the logits."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"labels: expected shape ({logits.shape[0] if logits.ndim else '?'},) of integer classes for "
                         f"logits (N, K); got labels {labels.shape}, logits {logits.shape}")
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
        if form not in ("pytorch", "keras"):
            raise ValueError(f"form: expected 'pytorch' or 'keras'; got {form!r}")
        if not lr > 0:
            raise ValueError(f"lr: expected a positive number; got {lr!r}")
        self.model, self.lr, self.betas, self.eps, self.form = model, lr, tuple(betas), eps, form
        self.m = {k: np.zeros_like(p) for k, p in model.parameters().items()}
        self.v = {k: np.zeros_like(p) for k, p in model.parameters().items()}
        self.t = 0

    def step(self) -> None:
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        grads = self.model.gradients()
        for k, p in self.model.parameters().items():
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
        if not lr > 0:
            raise ValueError(f"lr: expected a positive number; got {lr!r}")
        self.model, self.lr = model, lr

    def step(self) -> None:
        grads = self.model.gradients()
        for k, p in self.model.parameters().items():
            p -= self.lr * grads[k]


def mlp(sizes, activation, *, norm=None, out_activation=None, hidden_bias: bool = True, rng=None,
        dtype=np.float64) -> Sequential:
    """Dense layers of the given sizes (input first); after each hidden Dense, ``norm(width)`` when given, then
    ``activation()``; after the last Dense, ``out_activation()`` when given. hidden_bias=False drops the hidden
    layers' biases (a batch norm after them cancels a bias anyway).

    The Keras example model: ``mlp([20, 64, 32, 1], ReLU, norm=lambda n: BatchNorm.keras(n),
    out_activation=Sigmoid)``.
    """
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes: expected at least an input and an output size; got {sizes}")
    rng = np.random.default_rng(rng)
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
