"""The epilogues' derivation, evaluated in float64 NumPy straight from the derived programs: equal to central
differences of the forward and to PyTorch's autograd through its own normalization, add and relu.

There are no epilogue kernels yet; this checks the mathematics they will print, on the two layouts whose sums are
plain NumPy axis sums (statistics over axis 0, batch norm; over axis 1, layer and RMS norm)."""

import numpy as np
import pytest
import sympy

from symbn import derive, preset
from symbn.core.derive import DBETA, DGAMMA, DR, DX
from symbn.core.symbols import BETA, DY, EPS, GAMMA, M, R, X, Z

_maximum = sympy.Function("maximum")
_step = sympy.Function("step")

CASES = [("batch", "add_relu"), ("batch", "relu"), ("layer", "add_relu"), ("rms", "add_relu"), ("rms", "relu")]


class Evaluator:
    """Runs a derivation's programs on arrays of shape (N, C): sets are columns (axis 0 reduced) or rows (axis 1)."""

    def __init__(self, d, env: dict):
        self.d, self.env = d, dict(env)
        axis = d.spec.reduce_axes[0]
        self.rsum = lambda a: np.sum(a, axis=axis, keepdims=True)
        self.psum = lambda a: np.sum(a, axis=0)  # the parameters span axis 1 in every case here
        self.env[M] = env[X].shape[axis]

    def value(self, e: sympy.Expr):
        e = e.replace(lambda a: isinstance(a, sympy.Max), lambda a: _maximum(*a.args))
        e = e.replace(lambda a: isinstance(a, sympy.Heaviside), lambda a: _step(a.args[0]))
        symbols = sorted(e.free_symbols, key=lambda s: s.name)
        f = sympy.lambdify(symbols, e, modules=[{"rsum": self.rsum, "psum": self.psum, "maximum": np.maximum,
                                                  "step": lambda a: (a > 0).astype(np.float64)}, "numpy"])
        return f(*(self.env[s] for s in symbols))

    def run(self, program) -> None:
        for s, e in program:
            self.env[s] = self.value(e)

    def forward(self):
        self.run(tuple((n.symbol, n.expr) for n in self.d.graph.nodes))
        z = self.d.graph.output.symbol
        return self.value(self.d.epilogue.forward.xreplace({Z: z}))

    def backward(self) -> dict:
        self.forward()
        z = self.d.graph.output.symbol
        self.run(tuple((s, e.xreplace({Z: z})) for s, e in self.d.epilogue.backward))
        self.run(self.d.coordinates + self.d.reductions + self.d.compact)
        return {s: self.env[s] for s in (DX, DGAMMA, DBETA, DR) if s in self.env}


def _inputs(d, seed=0, shape=(5, 4)):
    rng = np.random.default_rng(seed)
    env = {X: rng.standard_normal(shape) * 2 + 1, GAMMA: rng.uniform(0.5, 2, shape[1]),
           BETA: rng.standard_normal(shape[1]) * 0.3, DY: rng.standard_normal(shape), EPS: 1e-5}
    if d.epilogue.residual:
        env[R] = rng.standard_normal(shape)
    if BETA not in d.graph.leaves:
        env.pop(BETA)
    return env


def _spec(name, epilogue):
    return preset(name, "NC", epilogue=epilogue)


@pytest.mark.parametrize("name, epilogue", CASES)
def test_the_derived_gradients_match_central_differences(name, epilogue):
    d = derive(_spec(name, epilogue))
    env = _inputs(d)
    got = Evaluator(d, env).backward()
    assert 0 < np.mean(Evaluator(d, env).forward() > 0) < 1  # the mask takes both values

    def loss(leaf, values):
        return float(np.sum(env[DY] * Evaluator(d, env | {leaf: values}).forward()))

    leaves = {DX: X, DGAMMA: GAMMA, DBETA: BETA, DR: R}
    h = 1e-6
    for grad, leaf in leaves.items():
        if grad not in got:
            continue
        numeric = np.zeros_like(env[leaf])
        for i in np.ndindex(env[leaf].shape):
            up, down = env[leaf].copy(), env[leaf].copy()
            up[i] += h
            down[i] -= h
            numeric[i] = (loss(leaf, up) - loss(leaf, down)) / (2 * h)
        error = np.max(np.abs(numeric - got[grad])) / max(1.0, np.max(np.abs(numeric)))
        assert error <= 1e-7, (grad, error)


@pytest.mark.torch
@pytest.mark.parametrize("name, epilogue", CASES)
def test_the_derived_gradients_match_pytorch(name, epilogue):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    d = derive(_spec(name, epilogue))
    env = _inputs(d, seed=1)
    got = Evaluator(d, env).backward()
    t = {s: torch.tensor(v, requires_grad=True) for s, v in env.items() if isinstance(v, np.ndarray) and s != DY}
    x, gamma, beta = t[X], t[GAMMA], t.get(BETA)
    if name == "batch":
        z = F.batch_norm(x, None, None, gamma, beta, training=True, eps=1e-5)
    elif name == "layer":
        z = F.layer_norm(x, (x.shape[1],), gamma, beta, eps=1e-5)
    else:
        z = F.rms_norm(x, (x.shape[1],), gamma, eps=1e-5)
    y = torch.relu(z + t[R]) if R in t else torch.relu(z)
    assert np.allclose(y.detach().numpy(), Evaluator(d, env).forward(), rtol=1e-12, atol=1e-12)
    leaves = [(DX, x), (DGAMMA, gamma)] + [(DBETA, beta)] * (beta is not None) + [(DR, t.get(R))] * (R in t)
    grads = torch.autograd.grad(y, [v for _, v in leaves], torch.tensor(env[DY]))
    for (symbol, _), want in zip(leaves, grads):
        want = want.numpy()
        error = np.max(np.abs(got[symbol] - want)) / max(1.0, np.max(np.abs(want)))
        assert error <= 1e-10, (symbol, error)
