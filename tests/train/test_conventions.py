"""Frameworks' conventions in symbn.layers (issue 22): makemore's BatchNorm1d (the unbiased variance, kept as is in the
running buffer), Keras' flags and channels-last default, PyTorch's cumulative moving average (momentum=None), state
dicts in PyTorch's and Keras' names, case-insensitive layouts, and InstanceNorm's running statistics as PyTorch keeps
them. The references are written here from each framework's description, or are the frameworks' own modules."""

import numpy as np
import pytest

from symbn import nn
from symbn.layers import DEFAULT, BatchNorm, InstanceNorm, LayerNorm

RNG = np.random.default_rng(22)


def close(a, b, tol=1e-12, what=""):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol, err_msg=what)


# --- makemore's BatchNorm1d ------------------------------------------------------------------------------------

class MakemoreBatchNorm1d:
    """makemore's BatchNorm1d in NumPy, from its description: train mode normalizes with x.mean(0) and x.var(0)
    (PyTorch's var: unbiased) over the batch (and the time axis of (N, L, C) input), and folds both into running
    buffers with momentum 0.1 (running_var starting at ones); eval mode normalizes with the buffers."""

    def __init__(self, dim, eps=1e-5, momentum=0.1):
        self.eps, self.momentum, self.training = eps, momentum, True
        self.gamma, self.beta = np.ones(dim), np.zeros(dim)
        self.running_mean, self.running_var = np.zeros(dim), np.ones(dim)

    def __call__(self, x):
        if self.training:
            axes = 0 if x.ndim == 2 else (0, 1)
            xmean = x.mean(axes, keepdims=True)
            xvar = x.var(axes, keepdims=True, ddof=1)
        else:
            xmean, xvar = self.running_mean, self.running_var
        xhat = (x - xmean) / np.sqrt(xvar + self.eps)
        out = self.gamma * xhat + self.beta
        if self.training:  # makemore's buffers keep the keepdims shape (1, C); flattened here to compare
            m = self.momentum
            self.running_mean = (1 - m) * self.running_mean + m * xmean.reshape(-1)
            self.running_var = (1 - m) * self.running_var + m * xvar.reshape(-1)
        return out


def _makemore_batches(steps=20, n=32, c=10):
    """Batches as makemore's models see them: (N, C) and, for its WaveNet, (N, L, C)."""
    return [RNG.normal(0.5, 2.0, (n, c) if i % 4 else (n // 4, 4, c)) for i in range(steps)]


def test_makemore_batchnorm_matches_its_numpy_reimplementation_over_20_steps():
    ours, ref = BatchNorm.makemore(10), MakemoreBatchNorm1d(10)
    ours.gamma[...] = ref.gamma[...] = RNG.normal(1, 0.3, 10)
    ours.beta[...] = ref.beta[...] = RNG.normal(0, 0.3, 10)
    for step, x in enumerate(_makemore_batches()):
        close(ours.forward(x), ref(x), what=f"forward, step {step}")
        close(ours.running_mean, ref.running_mean, what=f"running_mean, step {step}")
        close(ours.running_var, ref.running_var, what=f"running_var, step {step}")
    ours.eval()
    ref.training = False
    x = RNG.normal(0.5, 2.0, (7, 10))
    close(ours.forward(x), ref(x), what="eval")


def test_makemore_convention_differs_from_pytorchs_batchnorm_where_it_should():
    # Same batch, same running rule: only the variance differs, by the factor (M - 1)/M on the normalization's side.
    x = RNG.normal(size=(8, 3))
    makemore, torch_like = BatchNorm.makemore(3), BatchNorm(3)
    y1, y0 = makemore.forward(x), torch_like.forward(x)
    assert np.max(np.abs(y1 - y0)) > 1e-2
    close(y1, (x - x.mean(0)) / np.sqrt(x.var(0, ddof=1) + 1e-5))
    close(makemore.running_var, torch_like.running_var)  # both keep the unbiased variance
    assert makemore.spec.ddof == 1 and "ddof=1" in repr(makemore)


@pytest.mark.torch
def test_makemore_training_matches_torch_autograd_of_its_formula_over_20_steps():
    torch = pytest.importorskip("torch")
    ours, ref = BatchNorm.makemore(10), MakemoreBatchNorm1d(10)
    gamma, beta = torch.ones(10, dtype=torch.float64, requires_grad=True), torch.zeros(10, dtype=torch.float64,
                                                                                        requires_grad=True)
    lr = 0.1
    for step, x in enumerate(_makemore_batches()):
        dy = RNG.normal(size=x.shape)
        xt = torch.from_numpy(x).requires_grad_(True)
        axes = 0 if x.ndim == 2 else (0, 1)
        # makemore's forward, as written there (x.var is unbiased in PyTorch)
        yt = gamma * (xt - xt.mean(axes, keepdim=True)) / torch.sqrt(xt.var(axes, keepdim=True) + 1e-5) + beta
        yt.backward(torch.from_numpy(dy))
        y = ours.forward(x)
        dx = ours.backward(dy)
        ref(x)
        close(y, yt.detach().numpy(), what=f"forward, step {step}")
        close(dx, xt.grad.numpy(), what=f"dx, step {step}")
        close(ours.dgamma, gamma.grad.numpy(), what=f"dgamma, step {step}")
        close(ours.dbeta, beta.grad.numpy(), what=f"dbeta, step {step}")
        close(ours.running_var, ref.running_var, what=f"running_var, step {step}")
        with torch.no_grad():  # each side steps with its own gradients
            gamma -= lr * gamma.grad
            beta -= lr * beta.grad
            gamma.grad = beta.grad = None
            ref.gamma, ref.beta = gamma.numpy().copy(), beta.numpy().copy()
        nn.SGD(ours, lr=lr).step()
    close(ours.gamma, gamma.detach().numpy())
    close(ours.running_mean, ref.running_mean)


# --- Keras -------------------------------------------------------------------------------------------------------

def test_keras_constructor_is_channels_last_for_any_rank():
    for shape in ((6, 3), (4, 5, 3), (2, 4, 3, 3), (2, 2, 2, 2, 3)):
        bn = BatchNorm.keras(3)
        x = RNG.normal(1, 2, shape)
        axes = tuple(range(x.ndim - 1))
        close(bn.forward(x), (x - x.mean(axes)) / np.sqrt(x.var(axes) + 1e-3), what=str(shape))
        close(bn.running_mean, 0.01 * x.mean(axes))
        close(bn.running_var, 0.99 + 0.01 * x.var(axes))
        with pytest.raises(ValueError, match=r"x: .* expects 3 channels on axis -1"):
            bn.forward(RNG.normal(size=shape[:-1] + (4,)))


def test_channels_last_agrees_with_the_nhwc_kernel():
    a, b = BatchNorm.keras(3), BatchNorm.keras(3, "NHWC")
    assert (a.layout, b.layout) == ("channels_last", "NHWC")
    for _ in range(3):
        x, dy = RNG.normal(size=(2, 4, 5, 3)), RNG.normal(size=(2, 4, 5, 3))
        close(a.forward(x), b.forward(x))
        close(a.backward(dy), b.backward(dy))
        close(a.dgamma, b.dgamma)
    close(a.running_var, b.running_var)


@pytest.mark.parametrize("center, scale, trained", [(True, True, {"gamma", "beta"}), (False, True, {"gamma"}),
                                                    (True, False, {"beta"}), (False, False, set())])
def test_keras_center_and_scale_flags(center, scale, trained):
    bn = BatchNorm.keras(4, center=center, scale=scale)
    assert set(bn.parameters()) == set(bn.gradients()) == trained
    assert set(bn.state_dict(naming="keras")) == trained | {"moving_mean", "moving_variance"}
    for p in bn.parameters().values():
        p[...] = RNG.normal(1, 0.5, 4)
    x, dy = RNG.normal(size=(5, 4)), RNG.normal(size=(5, 4))
    gamma = bn.gamma if scale else 1.0
    beta = bn.beta if center else 0.0
    close(bn.forward(x), gamma * (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3) + beta)
    bn.backward(dy)
    xhat = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3)
    expected = {"gamma": (dy * xhat).sum(0), "beta": dy.sum(0)}
    for name, g in bn.gradients().items():
        close(g, expected[name], what=name)
    # what is not trained stays at Keras' fixed values
    assert (scale or np.all(bn.gamma == 1)) and (center or np.all(bn.beta == 0))


def test_affine_sets_both_and_center_or_scale_override_one():
    assert set(BatchNorm(3, affine=False, scale=True).parameters()) == {"gamma"}
    assert set(BatchNorm(3, center=False).parameters()) == {"gamma"}
    assert BatchNorm(3, affine=False).parameters() == {}


# --- PyTorch's cumulative moving average (momentum=None) --------------------------------------------------------

@pytest.mark.parametrize("running", ["pytorch", "keras"])
def test_momentum_none_is_the_cumulative_average_of_the_batch_statistics(running):
    bn = BatchNorm(3, "NCHW", momentum=None, running=running)
    assert bn.momentum is None and "momentum=None" in repr(bn)
    batches = [RNG.normal(i, 1 + i, (4, 3, 2, 2)) for i in range(5)]
    ddof = 1 if running == "pytorch" else 0  # PyTorch keeps the unbiased variance, Keras the one it normalized with
    for i, x in enumerate(batches, 1):
        bn.forward(x)
        seen = batches[:i]
        close(bn.running_mean, np.mean([b.mean((0, 2, 3)) for b in seen], axis=0), what=f"mean after {i}")
        close(bn.running_var, np.mean([b.var((0, 2, 3), ddof=ddof) for b in seen], axis=0), what=f"var after {i}")
        assert int(bn.num_batches_tracked) == i


@pytest.mark.parametrize("running", ["pytorch", "keras"])
def test_momentum_at_either_end_keeps_or_replaces_the_running_statistics(running):
    """Momentum 0 and 1, which PyTorch and Keras accept: one end keeps the running statistics, the other replaces
    them by each batch's (PyTorch's 1 and Keras' 0; the first batch of the cumulative average is the same)."""
    keep, replace = (0.0, 1.0) if running == "pytorch" else (1.0, 0.0)
    ddof = 1 if running == "pytorch" else 0
    x = RNG.normal(2, 3, (5, 3, 2, 2))
    kept = BatchNorm(3, "NCHW", momentum=keep, running=running)
    kept.forward(x)
    np.testing.assert_array_equal(kept.running_mean, np.zeros(3))
    np.testing.assert_array_equal(kept.running_var, np.ones(3))
    for momentum in (replace, None):  # None: the cumulative average, whose first batch weighs 1
        bn = BatchNorm(3, "NCHW", momentum=momentum, running=running)
        bn.forward(x)
        close(bn.running_mean, x.mean((0, 2, 3)), what=f"mean, momentum {momentum}")
        close(bn.running_var, x.var((0, 2, 3), ddof=ddof), what=f"var, momentum {momentum}")
    assert InstanceNorm(3, momentum=1.0).momentum == 1.0 and InstanceNorm(3, momentum=0).momentum == 0.0


def test_default_momentum_is_the_conventions_and_loaded_counts_continue_the_average():
    assert BatchNorm(3).momentum == 0.1 and BatchNorm(3, momentum=DEFAULT, running="keras").momentum == 0.99
    bn = BatchNorm(2, momentum=None)
    state = {**bn.state_dict(), "running_mean": np.array([1.0, 2.0]), "num_batches_tracked": 3}
    bn.load_state_dict(state)
    x = RNG.normal(size=(6, 2))
    bn.forward(x)
    close(bn.running_mean, (3 * np.array([1.0, 2.0]) + x.mean(0)) / 4)


@pytest.mark.torch
def test_momentum_none_matches_pytorch_over_several_steps():
    torch = pytest.importorskip("torch")
    ours, theirs = BatchNorm(3, "NCHW", momentum=None), torch.nn.BatchNorm2d(3, momentum=None).double()
    for step in range(6):
        x = RNG.normal(step, 2, (4, 3, 3, 2))
        close(ours.forward(x), theirs(torch.from_numpy(x)).detach().numpy(), what=f"step {step}")
        close(ours.running_mean, theirs.running_mean.numpy(), what=f"running_mean, step {step}")
        close(ours.running_var, theirs.running_var.numpy(), what=f"running_var, step {step}")
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 6


# --- state dicts in the frameworks' names ----------------------------------------------------------------------

def _trained(layer, shape, steps=3):
    for p in layer.parameters().values():
        p[...] = RNG.normal(1, 0.5, p.shape)
    for _ in range(steps):
        layer.forward(RNG.normal(1, 2, shape))
    return layer


def test_state_dict_namings_and_their_round_trips():
    bn = _trained(BatchNorm(3, "NCHW"), (4, 3, 2, 2))
    assert set(bn.state_dict(naming="torch")) == {"weight", "bias", "running_mean", "running_var",
                                                  "num_batches_tracked"}
    assert set(bn.state_dict(naming="keras")) == {"gamma", "beta", "moving_mean", "moving_variance"}
    np.testing.assert_array_equal(bn.state_dict(naming="torch")["weight"], bn.gamma)
    np.testing.assert_array_equal(bn.state_dict(naming="keras")["moving_variance"], bn.running_var)
    for naming in ("symbn", "torch", "keras"):
        other = BatchNorm(3, "NCHW")
        other.num_batches_tracked[...] = 9
        other.load_state_dict(bn.state_dict(naming=naming))
        for k in ("gamma", "beta", "running_mean", "running_var"):
            np.testing.assert_array_equal(getattr(other, k), getattr(bn, k), err_msg=f"{naming}: {k}")
        # Keras keeps no batch count: its state leaves the layer's as it was
        assert int(other.num_batches_tracked) == (9 if naming == "keras" else 3)


def test_sequential_and_npz_files_take_the_namings_too(tmp_path):
    model = nn.Sequential(nn.Dense(3, 4, rng=0), _trained(BatchNorm(4), (5, 4)), nn.ReLU())
    state = model.state_dict(naming="torch")
    assert {"0.W", "1.weight", "1.running_var", "1.num_batches_tracked"} <= set(state)
    fresh = nn.Sequential(nn.Dense(3, 4, rng=1), BatchNorm(4), nn.ReLU())
    fresh.load(model.save(tmp_path / "model", naming="keras"))
    np.testing.assert_array_equal(fresh.layers[1].running_var, model.layers[1].running_var)
    np.testing.assert_array_equal(fresh.layers[0].W, model.layers[0].W)


def test_a_state_mixing_namings_or_missing_a_key_is_refused_naming_the_keys():
    bn = _trained(BatchNorm(3), (5, 3))
    before = bn.state_dict()
    torch_state = bn.state_dict(naming="torch")
    mixed = {**{k: v for k, v in torch_state.items() if k != "running_var"}, "moving_variance": bn.running_var}
    with pytest.raises(KeyError) as info:
        bn.load_state_dict(mixed)
    message = info.value.args[0]
    assert "torch naming" in message and "missing ['running_var']" in message and "'moving_variance'" in message
    with pytest.raises(ValueError, match=r"state\['weight'\]: expected shape \(3,\)"):
        bn.load_state_dict({**torch_state, "weight": np.ones(4)})
    with pytest.raises(ValueError, match="naming: expected one of 'symbn', 'torch', 'keras'; got 'tf'"):
        bn.state_dict(naming="tf")
    for k, v in before.items():
        np.testing.assert_array_equal(bn.state_dict()[k], v)


@pytest.mark.torch
def test_a_trained_torch_batchnorm2d_state_dict_loads_and_gives_its_eval_output():
    torch = pytest.importorskip("torch")
    theirs = torch.nn.BatchNorm2d(3).double()
    optimizer = torch.optim.SGD(theirs.parameters(), lr=0.5)
    for _ in range(4):
        x = torch.from_numpy(RNG.normal(1, 2, (4, 3, 3, 3)))
        optimizer.zero_grad()
        (theirs(x) * torch.from_numpy(RNG.normal(size=(4, 3, 3, 3)))).sum().backward()
        optimizer.step()
    ours = BatchNorm(3, "nchw")
    ours.load_state_dict(theirs.state_dict())
    assert int(ours.num_batches_tracked) == 4
    x = RNG.normal(1, 2, (2, 3, 4, 4))
    close(ours.eval().forward(x), theirs.eval()(torch.from_numpy(x)).detach().numpy())


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_an_exported_state_dict_loads_strictly_into_torch_batchnorm2d(dtype):
    torch = pytest.importorskip("torch")
    ours = _trained(BatchNorm(3, "NCHW", dtype=dtype), (4, 3, 2, 2))
    theirs = torch.nn.BatchNorm2d(3).to(torch.float64 if dtype == np.float64 else torch.float32)
    result = theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict(naming="torch").items()},
                                    strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert int(theirs.num_batches_tracked) == 3
    x = RNG.normal(1, 2, (2, 3, 5, 5)).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    close(ours.eval().forward(x), theirs.eval()(torch.from_numpy(x)).detach().numpy(), tol)


# --- layouts ---------------------------------------------------------------------------------------------------

def test_layout_names_are_case_insensitive():
    assert BatchNorm(3, "nchw").layout == "NCHW" and BatchNorm(3, "Nhwc").layout == "NHWC"
    assert BatchNorm(3, "CHANNELS_LAST").layout == "channels_last"
    assert InstanceNorm(3, "ncl").layout == "NCL"
    x = RNG.normal(size=(2, 3, 2, 2))
    close(BatchNorm(3, "nchw").forward(x), BatchNorm(3, "NCHW").forward(x))
    with pytest.raises(ValueError, match=r"layout: expected one of NCL, NCHW, NHWC, NCDHW \(in any case\); got 'nc'"):
        InstanceNorm(3, "nc")


# --- InstanceNorm's running statistics (track_running_stats=True) ----------------------------------------------

def test_instance_norm_running_statistics_are_the_batch_average_of_per_sample_ones():
    layer = InstanceNorm(3, "NCHW", track_running_stats=True)
    x = RNG.normal(1, 2, (4, 3, 3, 2))
    layer.forward(x)
    close(layer.running_mean, 0.1 * x.mean((2, 3)).mean(0))
    close(layer.running_var, 0.9 + 0.1 * x.var((2, 3), ddof=1).mean(0))
    assert int(layer.num_batches_tracked) == 0  # kept for PyTorch's state dict, not counted (as PyTorch)
    layer.eval()
    x = RNG.normal(size=(1, 3, 1, 1))  # one value per channel: fine with running statistics
    c = (slice(None), None, None)
    close(layer.forward(x), (x - layer.running_mean[c]) / np.sqrt(layer.running_var[c] + 1e-5))
    assert InstanceNorm(3).buffers() == {}


@pytest.mark.torch
@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NCL"])
def test_instance_norm_with_running_statistics_matches_pytorch(layout):
    torch = pytest.importorskip("torch")
    make = torch.nn.InstanceNorm1d if layout == "NCL" else torch.nn.InstanceNorm2d
    theirs = make(3, affine=True, track_running_stats=True, momentum=0.2).double()
    ours = InstanceNorm(3, layout, affine=True, track_running_stats=True, momentum=0.2)
    ours.gamma[...], ours.beta[...] = RNG.normal(1, 0.5, 3), RNG.normal(0, 0.5, 3)
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(ours.gamma))
        theirs.bias.copy_(torch.from_numpy(ours.beta))
    spatial = (4,) if layout == "NCL" else (4, 3)
    to_t = (lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)) if layout == "NHWC" else torch.from_numpy
    for mode, batch in [(True, 4)] * 4 + [(False, 2), (False, 7)]:  # eval with other batch sizes
        ours.train(mode), theirs.train(mode)
        shape = (batch, *spatial, 3) if layout == "NHWC" else (batch, 3, *spatial)
        x, dy = RNG.normal(1, 2, shape), RNG.normal(size=shape)
        xt = to_t(x).clone().requires_grad_(True)
        theirs.zero_grad()
        yt = theirs(xt)
        yt.backward(to_t(dy))
        what = f"{layout}, {'train' if mode else 'eval'} batch {batch}"
        close(to_t(ours.forward(x)).numpy(), yt.detach().numpy(), what=what)
        close(to_t(ours.backward(dy)).numpy(), xt.grad.numpy(), 1e-10, what=what)
        close(ours.dgamma, theirs.weight.grad.numpy(), 1e-10, what=what)
        close(ours.dbeta, theirs.bias.grad.numpy(), 1e-10, what=what)
        close(ours.running_mean, theirs.running_mean.numpy(), what=what)
        close(ours.running_var, theirs.running_var.numpy(), what=what)
    fresh = make(3, affine=True, track_running_stats=True).double()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict(naming="torch").items()}, strict=True)
    close(fresh.running_var.numpy(), ours.running_var)


def test_layer_norm_has_no_running_statistics_and_the_same_output_in_eval():
    layer = LayerNorm(4)
    x = RNG.normal(size=(3, 4))
    np.testing.assert_array_equal(layer.forward(x), layer.eval().forward(x))
    assert layer.buffers() == {} and set(layer.state_dict(naming="torch")) == {"weight", "bias"}
