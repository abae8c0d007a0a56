"""Trust at the edges (issue 17): every bad input to symbn.layers, symbn.nn, symbn.cs231n, symbn.fold and
symbn.datasets is refused by a clear error (the right type, a message naming the argument or state key) and a
refused call changes nothing: parameters, buffers (running statistics), gradients, bn_param and files on disk are
bit-identical afterwards. One test per class of failure found by the attack list."""

import copy
import math

import numpy as np
import pytest

from symbn import cs231n, datasets, fold, nn
from symbn.layers import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm

RNG = np.random.default_rng(17)
nan, inf = float("nan"), float("inf")


def snapshot(obj) -> dict:
    """Copies of everything a refused call must leave alone: parameters, buffers, gradients."""
    arrays = {**{f"p.{k}": v for k, v in obj.parameters().items()}, **{f"b.{k}": v for k, v in obj.buffers().items()},
              **{f"g.{k}": v for k, v in obj.gradients().items() if v is not None}}
    return {k: np.array(v, copy=True) for k, v in arrays.items()}


def assert_unchanged(obj, before: dict) -> None:
    after = snapshot(obj)
    assert set(after) == set(before)
    for k, v in before.items():
        assert after[k].dtype == v.dtype and after[k].shape == v.shape, k
        assert after[k].tobytes() == v.tobytes(), f"{k} changed by a refused call"


def refused(obj, call, error, *names):
    """call() raises *error* whose message names every one of *names*, and obj is bit-identical afterwards."""
    before = snapshot(obj) if obj is not None else None
    with pytest.raises(error) as info:
        call()
    message = str(info.value.args[0]) if isinstance(info.value, KeyError) else str(info.value)
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    if obj is not None:
        assert_unchanged(obj, before)
    return message


def trained_bn(n=3, **options):
    """A BatchNorm whose parameters, running statistics and count are all away from their initial values."""
    bn = BatchNorm(n, **options)
    bn.gamma[...] = RNG.normal(1, 0.5, n)
    bn.beta[...] = RNG.normal(0, 1, n)
    for _ in range(2):
        bn.forward(RNG.normal(size=(5, n)).astype(bn.dtype))
    bn.backward(RNG.normal(size=(5, n)).astype(bn.dtype))
    return bn


def good_state(n=3):
    return {k: v + (1 if k != "num_batches_tracked" else 0) for k, v in BatchNorm(n).state_dict().items()}


# --- 1. a state dict with one bad entry is refused whole (nothing half-loaded) --------------------------------------

BAD_STATE = [  # (entry overrides on a good state whose gamma and running_mean differ from the layer's, error, name)
    ({"beta": np.ones(4)}, ValueError, "'beta'"),
    ({"beta": np.array(["a", "b", "c"])}, TypeError, "'beta'"),
    ({"beta": np.ones(3) + 1j}, TypeError, "'beta'"),
    ({"beta": np.array([1.0, 2.0, 3.0], object)}, TypeError, "'beta'"),
    ({"beta": np.ones(3, bool)}, TypeError, "'beta'"),
    ({"beta": [[1.0], [2.0, 3.0]]}, TypeError, "'beta'"),
    ({"beta": np.array([1.0, nan, 1.0])}, ValueError, "'beta'"),
    ({"running_var": np.array([1.0, -1.0, 1.0])}, ValueError, "'running_var'"),
    ({"running_var": np.array([1.0, nan, 1.0])}, ValueError, "'running_var'"),
    ({"running_var": np.array([1.0, inf, 1.0])}, ValueError, "'running_var'"),
    ({"num_batches_tracked": None}, TypeError, "'num_batches_tracked'"),
    ({"num_batches_tracked": 2.5}, ValueError, "'num_batches_tracked'"),
    ({"num_batches_tracked": -1}, ValueError, "'num_batches_tracked'"),
    ({"extra": np.ones(3)}, KeyError, "extra"),
]


@pytest.mark.parametrize("override, error, name", BAD_STATE, ids=[f"{list(o)[0]}-{i}" for i, (o, _, _) in
                                                                   enumerate(BAD_STATE)])
def test_state_dict_with_one_bad_entry_is_refused_whole(override, error, name):
    bn = trained_bn()
    refused(bn, lambda: bn.load_state_dict({**good_state(), **override}), error, name, "expected")


@pytest.mark.parametrize("naming", ["torch", "keras"])
def test_framework_named_state_with_one_bad_entry_is_refused_whole(naming):
    bn = trained_bn()
    state = trained_bn().state_dict(naming=naming)
    variance = "running_var" if naming == "torch" else "moving_variance"
    refused(bn, lambda: bn.load_state_dict({**state, variance: -np.ones(3)}), ValueError, f"'{variance}'", ">= 0")
    refused(bn, lambda: bn.load_state_dict({**state, "gamma" if naming == "keras" else "weight": np.ones(2)}),
            ValueError, "expected shape (3,)")


def test_state_dict_that_is_not_a_mapping_or_misses_a_key_is_refused():
    bn = trained_bn()
    for state in (None, [np.ones(3)], "state"):
        refused(bn, lambda: bn.load_state_dict(state), TypeError, "state", "mapping")
    missing = {k: v for k, v in good_state().items() if k != "beta"}
    refused(bn, lambda: bn.load_state_dict(missing), KeyError, "missing ['beta']")


def test_state_values_must_survive_the_cast_to_the_layer_dtype():
    bn = trained_bn(dtype=np.float32)
    refused(bn, lambda: bn.load_state_dict({**good_state(), "gamma": np.full(3, 1e300)}), ValueError,
            "'gamma'", "float32")
    # what fits is accepted: float64 into float32, integers into floats, integral floats into the count
    bn.load_state_dict({**good_state(), "gamma": np.array([1, 2, 3]), "num_batches_tracked": 7.0})
    assert bn.gamma.dtype == np.float32 and bn.gamma.tolist() == [1, 2, 3] and bn.num_batches_tracked == 7
    bn.load_state_dict({**good_state(), "running_var": np.zeros(3)})  # a zero variance is a valid running variance


def test_sequential_state_dict_with_one_bad_entry_is_refused_whole():
    model = nn.mlp([3, 4, 2], nn.ReLU, norm=lambda n: trained_bn(n), rng=0)
    state = {k: v * 2 for k, v in model.state_dict().items()}
    refused(model, lambda: model.load_state_dict({**state, "1.running_var": -np.ones(4)}), ValueError,
            "'1.running_var'", ">= 0")
    refused(model, lambda: model.load_state_dict({**state, "3.b": np.ones(3)}), ValueError, "'3.b'")
    refused(model, lambda: model.load_state_dict(None), TypeError, "state")


# --- 2. files: missing, corrupt, not .npz, bad entries; unwritable destinations -------------------------------------

def _files(tmp_path):
    good = BatchNorm(3).save(tmp_path / "good.npz")
    raw = good.read_bytes()
    (tmp_path / "half.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "random.npz").write_bytes(RNG.bytes(300))
    (tmp_path / "empty.npz").write_bytes(b"")
    np.save(tmp_path / "plain.npy", np.ones(3))
    corrupt = bytearray(raw)
    corrupt[len(raw) // 3] ^= 0xFF
    (tmp_path / "corrupt.npz").write_bytes(bytes(corrupt))
    np.savez(tmp_path / "objects.npz", **{**good_state(), "gamma": np.array([1, "a", None], object)})
    np.savez(tmp_path / "negative.npz", **{**good_state(), "running_var": -np.ones(3)})
    return good


@pytest.mark.parametrize("name, error", [
    ("missing.npz", FileNotFoundError), (".", IsADirectoryError), ("half.npz", ValueError),
    ("random.npz", ValueError), ("empty.npz", ValueError), ("plain.npy", ValueError), ("corrupt.npz", ValueError),
    ("objects.npz", ValueError), ("negative.npz", ValueError),
])
def test_unreadable_or_unfit_npz_is_refused_naming_the_path(tmp_path, name, error):
    _files(tmp_path)
    bn = trained_bn()
    path = tmp_path / name
    refused(bn, lambda: bn.load(path), error, str(path).rstrip("/."))
    with pytest.raises(TypeError, match="path: expected a file path"):
        bn.load(None)


def test_load_of_a_name_save_completed_with_npz_says_so(tmp_path):
    bn = trained_bn()
    written = bn.save(tmp_path / "model")
    assert written == tmp_path / "model.npz"
    message = refused(bn, lambda: bn.load(tmp_path / "model"), FileNotFoundError, "model.npz")
    assert "appends .npz" in message
    fresh = BatchNorm(3)
    fresh.load(written)
    np.testing.assert_array_equal(fresh.running_var, bn.running_var)


def test_save_to_an_unwritable_path_is_a_clear_error_and_an_earlier_file_stays_whole(tmp_path, monkeypatch):
    good = _files(tmp_path)
    bn = trained_bn()
    for path, error in ((good / "m.npz", NotADirectoryError), (tmp_path / "no" / "m.npz", FileNotFoundError),
                        (tmp_path, IsADirectoryError), (None, TypeError)):
        with pytest.raises(error) as info:
            bn.save(path)
        assert "path" in str(info.value) and (path is None or str(path) in str(info.value))
    # a save that fails while writing leaves the earlier file as it was, and no temporary file behind
    before = good.read_bytes()

    def failing_savez(f, **arrays):
        f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="good.npz"):
        bn.save(good)
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# --- 3. constructor options, checked at construction ----------------------------------------------------------------

@pytest.mark.parametrize("make, error, name", [
    (lambda: BatchNorm(3, eps=nan), ValueError, "eps"),
    (lambda: BatchNorm(3, eps=-1.0), ValueError, "eps"),
    (lambda: BatchNorm(3, eps=inf), ValueError, "eps"),
    (lambda: BatchNorm(3, eps="1e-5"), ValueError, "eps"),
    (lambda: BatchNorm(3, eps=10 ** 400), ValueError, "eps"),
    (lambda: BatchNorm(3, eps=True), ValueError, "eps"),
    (lambda: BatchNorm(3, momentum=2), ValueError, "momentum"),
    (lambda: BatchNorm(3, momentum=-1), ValueError, "momentum"),
    (lambda: BatchNorm(3, momentum=nan), ValueError, "momentum"),
    (lambda: BatchNorm(3, momentum="0.1"), ValueError, "momentum"),
    (lambda: BatchNorm("3"), ValueError, "num_features"),
    (lambda: BatchNorm(3, dtype="banana"), TypeError, "dtype"),
    (lambda: BatchNorm(3, dtype=object()), TypeError, "dtype"),
    (lambda: BatchNorm(3, dtype=np.float16), TypeError, "dtype"),
    (lambda: BatchNorm(3, ["NC"]), ValueError, "layout"),
    (lambda: BatchNorm(3, running=["keras"]), ValueError, "running"),
    (lambda: BatchNorm(3, affine="no"), ValueError, "affine"),
    (lambda: BatchNorm(3, track_running_stats="False"), ValueError, "track_running_stats"),
    (lambda: GroupNorm(3, 4), ValueError, "num_channels"),
    (lambda: GroupNorm(2, 4, eps=nan), ValueError, "eps"),
    (lambda: InstanceNorm(3, affine=None), ValueError, "affine"),
    (lambda: LayerNorm(None), ValueError, "normalized_shape"),
    (lambda: LayerNorm(5.0), ValueError, "normalized_shape"),
    (lambda: LayerNorm(5, elementwise_affine="yes"), ValueError, "elementwise_affine"),
    (lambda: RMSNorm(6, eps=-1e-6), ValueError, "eps"),
    (lambda: BatchNorm(3, ddof=2), ValueError, "ddof"),
    (lambda: BatchNorm(3, ddof=True), ValueError, "ddof"),
    (lambda: BatchNorm(3, ddof="1"), ValueError, "ddof"),
    (lambda: BatchNorm(3, center="no"), ValueError, "center"),
    (lambda: BatchNorm.keras(3, scale=None), ValueError, "scale"),
    (lambda: BatchNorm(3, 3), ValueError, "layout"),
    (lambda: BatchNorm(3, "channels_first"), ValueError, "layout"),
    (lambda: GroupNorm(2, 4, "channels_last"), ValueError, "layout"),
    (lambda: InstanceNorm(3, momentum=None), ValueError, "momentum"),
    (lambda: InstanceNorm(3, momentum=1.5), ValueError, "momentum"),
    (lambda: InstanceNorm(3, track_running_stats="yes"), ValueError, "track_running_stats"),
    (lambda: BatchNorm(3).state_dict(naming="tf"), ValueError, "naming"),
    (lambda: BatchNorm(3).state_dict(naming=None), ValueError, "naming"),
])
def test_bad_constructor_option_is_refused_naming_it(make, error, name):
    refused(None, make, error, name)


def test_numpy_scalars_are_good_options_and_bad_mode_is_refused():
    bn = BatchNorm(3, eps=np.float32(1e-3), momentum=np.float32(0.5))
    assert type(bn.eps) is float and type(bn.momentum) is float and bn.momentum == 0.5
    refused(bn, lambda: bn.train("eval"), ValueError, "mode")
    assert bn.training


# --- 4. a refused forward leaves running statistics (and the last forward's cache) untouched -------------------------

@pytest.mark.parametrize("x, error", [
    (np.ones((4, 3), int), TypeError), (np.ones((4, 3), bool), TypeError), (np.ones((4, 3), complex), TypeError),
    (np.ones((4, 3), object), TypeError), ("abc", TypeError), (None, TypeError),
    (np.ones((4, 3), np.float16), TypeError),
    ([[1.0, 2.0, 3.0], [1.0]], TypeError), (np.ones((4, 3, 2)), ValueError), (np.ones((4, 5)), ValueError),
    (np.zeros((0, 3)), ValueError), (np.ones((1, 3)), ValueError),
], ids=["int", "bool", "complex", "object", "str", "None", "float16", "ragged", "rank", "channels", "empty", "one"])
def test_refused_forward_leaves_running_statistics_untouched(x, error):
    bn = trained_bn()
    dy = RNG.normal(size=(5, 3))
    dx = bn.backward(dy)
    refused(bn, lambda: bn.forward(x), error, "x:")
    np.testing.assert_array_equal(bn.backward(dy), dx)  # the last good forward's cache is still the one used


@pytest.mark.parametrize("make", [lambda: trained_bn(momentum=None), lambda: BatchNorm(3, momentum=None),
                                  lambda: BatchNorm.makemore(3)], ids=["cumulative", "cumulative-first", "makemore"])
def test_refused_forward_with_other_conventions_leaves_running_statistics_untouched(make):
    bn = make()
    for x in (np.ones((1, 3)), np.ones((4, 2)), np.ones((4, 3), complex)):
        refused(bn, lambda: bn.forward(x), (ValueError, TypeError), "x:")


def test_refused_forward_of_instance_norm_with_running_statistics_changes_nothing():
    layer = InstanceNorm(3, affine=True, track_running_stats=True)
    layer.forward(RNG.normal(size=(2, 3, 2, 2)))
    for x in (np.ones((2, 3, 1, 1)), np.ones((2, 4, 2, 2)), np.ones((2, 3, 2))):
        refused(layer, lambda: layer.forward(x), ValueError, "x:")


def test_refused_forward_of_the_other_layers_names_x():
    for layer, x in ((GroupNorm(2, 4), np.ones((2, 6, 3, 3))), (InstanceNorm(3), np.ones((2, 3, 1, 1))),
                     (LayerNorm(5), np.ones(5)), (LayerNorm((3, 4)), np.ones((2, 4, 3))),
                     (RMSNorm(6), np.ones((2, 6), complex))):
        refused(layer, lambda: layer.forward(x), (ValueError, TypeError), "x:")


# --- 5. backward: before forward, dy of the wrong shape or dtype ----------------------------------------------------

@pytest.mark.parametrize("dy, error", [
    (np.ones((5, 2)), ValueError), (np.ones((1, 3)), ValueError), (None, TypeError),
    (np.ones((5, 3), complex), TypeError), (np.full((5, 3), "a"), TypeError), (np.full((5, 3), None), TypeError),
    (np.ones((5, 3), int), TypeError), (np.ones((5, 3), bool), TypeError),
], ids=["shape", "broadcastable", "None", "complex", "str", "object", "int", "bool"])
def test_bad_dy_is_refused_and_gradients_are_untouched(dy, error):
    bn = trained_bn()
    refused(bn, lambda: bn.backward(dy), error, "dy:")


def test_backward_before_forward_is_a_runtime_error_for_every_layer():
    for layer in (BatchNorm(3), LayerNorm(3), nn.Dense(3, 2), nn.ReLU(), nn.Sigmoid(),
                  nn.Sequential(nn.Dense(3, 2), nn.Sigmoid())):
        refused(layer, lambda: layer.backward(np.ones((2, 3))), RuntimeError, "call forward first")


def test_eval_backward_uses_the_statistics_of_its_forward():
    bn = trained_bn().eval()
    x, dy = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    bn.forward(x)
    dx = bn.backward(dy)
    bn.load_state_dict({**bn.state_dict(), "running_var": bn.running_var * 4})
    np.testing.assert_array_equal(bn.backward(dy), dx)


# --- 6. saved statistics in float64 for float32 input (the kernels' coming change) ----------------------------------

class Float64Saved:
    """A generated module whose forward_train returns its saved statistics in float64 whatever x's dtype."""

    def __init__(self, kernels):
        self.kernels = kernels

    def __getattr__(self, name):
        return getattr(self.kernels, name)

    def forward_train(self, *args, **options):
        y, *saved = self.kernels.forward_train(*args, **options)
        return (y, *(np.asarray(s, dtype=np.float64) for s in saved))


@pytest.mark.parametrize("make, shape", [(lambda: BatchNorm(3, dtype=np.float32), (6, 3)),
                                         (lambda: GroupNorm(2, 4, dtype=np.float32), (2, 4, 3, 3)),
                                         (lambda: LayerNorm(5, dtype=np.float32), (4, 5))])
def test_layers_pass_float64_saved_statistics_through(make, shape):
    plain, wrapped = make(), make()
    wrapped.kernels = Float64Saved(wrapped.kernels)
    x, dy = RNG.normal(size=shape).astype(np.float32), RNG.normal(size=shape).astype(np.float32)
    for layer in (plain, wrapped):
        assert layer.forward(x).dtype == np.float32
        assert layer.backward(dy).dtype == np.float32 and layer.dgamma.dtype == np.float32
    np.testing.assert_allclose(wrapped.backward(dy), plain.backward(dy), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(wrapped.state_dict()["gamma"], plain.state_dict()["gamma"])


def test_cs231n_passes_float64_saved_statistics_through(monkeypatch):
    real_kernels = cs231n._kernels
    monkeypatch.setattr(cs231n, "_kernels", lambda *a, **k: Float64Saved(real_kernels(*a, **k)))
    x, dout = RNG.normal(size=(6, 3)).astype(np.float32), RNG.normal(size=(6, 3)).astype(np.float32)
    bn_param = {"mode": "train"}
    out, cache = cs231n.batchnorm_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32), bn_param)
    assert out.dtype == np.float32 and bn_param["running_mean"].dtype == np.float32
    for backward in (cs231n.batchnorm_backward, cs231n.batchnorm_backward_alt):
        dx, dgamma, dbeta = backward(dout, cache)
        assert dx.dtype == np.float32 and dx.shape == x.shape and dgamma.shape == (3,)
    out, cache = cs231n.layernorm_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32), {})
    assert cs231n.layernorm_backward(dout, cache)[0].dtype == np.float32


# --- 7. the small nn: options, forward, backward, a refused forward inside a Sequential -----------------------------

@pytest.mark.parametrize("call, error, name", [
    (lambda: nn.Dense(3, 4, dtype=np.int64), TypeError, "dtype"),
    (lambda: nn.Dense(3, 4, dtype="banana"), TypeError, "dtype"),
    (lambda: nn.Dense(3, 4, rng="x"), ValueError, "rng"),
    (lambda: nn.Dense(3, 4, bias="no"), ValueError, "bias"),
    (lambda: nn.Sequential(nn.ReLU(), "relu"), TypeError, "layers"),
    (lambda: nn.mlp(5, nn.ReLU), ValueError, "sizes"),
    (lambda: nn.mlp([3, 4, 1], None), TypeError, "activation"),
    (lambda: nn.Dense(3, 4).forward(np.ones((2, 3), complex)), TypeError, "x:"),
    (lambda: nn.Dense(3, 4).forward(np.full((2, 3), "a")), TypeError, "x:"),
    (lambda: nn.ReLU().forward(np.full(3, "a")), TypeError, "x:"),
])
def test_bad_nn_argument_is_refused_naming_it(call, error, name):
    refused(None, call, error, name)


def test_nn_backward_refuses_dy_that_would_broadcast():
    for layer, x, dy in ((nn.Dense(3, 4), np.ones((2, 3)), np.ones((1, 4))), (nn.Dense(3, 4), np.ones((2, 3)), None),
                         (nn.ReLU(), np.ones((2, 3)), np.ones((1, 3))),
                         (nn.Sigmoid(), np.ones((2, 3)), np.ones((2, 1)))):
        layer.forward(x)
        refused(layer, lambda: layer.backward(dy), (ValueError, TypeError), "dy:")


def test_relu_takes_lists_and_sigmoid_of_integers_is_a_probability():
    assert nn.ReLU().forward([[1.0, -1.0]]).tolist() == [[1.0, 0.0]]
    y = nn.Sigmoid().forward(np.array([0, 1, -1]))
    assert y.dtype == np.float64 and y[0] == 0.5


def test_sequential_refused_late_puts_back_the_running_statistics():
    model = nn.Sequential(nn.Dense(3, 4, rng=0), trained_bn(4), nn.ReLU(), nn.Dense(5, 1, rng=1))
    message = refused(model, lambda: model.forward(RNG.normal(size=(5, 3))), ValueError, "x: Dense expects")
    with pytest.raises(ValueError) as info:
        model.forward(RNG.normal(size=(5, 3)))
    assert any("Sequential layer 3" in note for note in info.value.__notes__), message


# --- 8. optimizers: options, and a step that would fail midway changes nothing -------------------------------------

def _model():
    model = nn.mlp([3, 4, 1], nn.ReLU, norm=lambda n: BatchNorm(n), out_activation=nn.Sigmoid, rng=0)
    model.forward(RNG.normal(size=(5, 3)))
    model.backward(RNG.normal(size=(5, 1)))
    return model


@pytest.mark.parametrize("make, name", [
    (lambda m: nn.SGD(m, lr="0.1"), "lr"), (lambda m: nn.SGD(m, lr=None), "lr"), (lambda m: nn.SGD(m, lr=inf), "lr"),
    (lambda m: nn.SGD("model"), "model"), (lambda m: nn.Adam(m, betas=(1.5, 0.9)), "betas"),
    (lambda m: nn.Adam(m, betas=(0.9,)), "betas"), (lambda m: nn.Adam(m, betas=None), "betas"),
    (lambda m: nn.Adam(m, eps=-1), "eps"), (lambda m: nn.Adam(m, eps=nan), "eps"), (lambda m: nn.Adam(None), "model"),
    (lambda m: nn.Adam(m, lr="1e-3"), "lr"),
])
def test_bad_optimizer_option_is_refused_naming_it(make, name):
    model = _model()
    refused(model, lambda: make(model), (ValueError, TypeError), name)


@pytest.mark.parametrize("make", [lambda m: nn.SGD(m, lr=0.1), lambda m: nn.Adam(m)], ids=["SGD", "Adam"])
def test_optimizer_step_with_a_bad_gradient_changes_no_parameter(make):
    model = _model()
    optimizer = make(model)
    model.layers[3].db = np.ones(3)  # the last gradient (of "3.b") cannot update its parameter
    moments = copy.deepcopy((getattr(optimizer, "m", None), getattr(optimizer, "v", None), getattr(optimizer, "t", 0)))
    refused(model, optimizer.step, ValueError, "gradients['3.b']")
    after = (getattr(optimizer, "m", None), getattr(optimizer, "v", None), getattr(optimizer, "t", 0))
    assert repr(after) == repr(moments)


def test_adam_refuses_a_model_whose_parameters_changed():
    model = _model()
    optimizer = nn.Adam(model)
    model.layers.append(nn.Dense(1, 1, rng=3))
    model.forward(RNG.normal(size=(5, 3)))
    model.backward(RNG.normal(size=(5, 1)))
    refused(model, optimizer.step, KeyError, "'5.W'")
    assert optimizer.t == 0


# --- 9. losses --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, name", [
    (lambda: nn.binary_cross_entropy(np.array([1.5, 0.2]), np.array([1.0, 0.0])), "p:"),
    (lambda: nn.binary_cross_entropy(np.array([-0.5, 0.2]), np.array([1.0, 0.0])), "p:"),
    (lambda: nn.binary_cross_entropy(np.array([nan, 0.2]), np.array([1.0, 0.0])), "p:"),
    (lambda: nn.binary_cross_entropy(np.array([0.5, 0.2]), np.array([2.0, 0.0])), "target:"),
    (lambda: nn.binary_cross_entropy(np.zeros(0), np.zeros(0)), "p:"),
    (lambda: nn.binary_cross_entropy(np.array(["a"]), np.array([1.0])), "p:"),
    (lambda: nn.softmax_cross_entropy(np.zeros((2, 3)), np.array([0.5, 1.0])), "labels:"),
    (lambda: nn.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3])), "labels:"),
    (lambda: nn.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, -1])), "labels:"),
    (lambda: nn.softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, int)), "logits:"),
    (lambda: nn.softmax_cross_entropy(np.full((2, 3), "a"), np.array([0, 1])), "logits:"),
])
def test_bad_loss_input_is_refused_naming_it(call, name):
    refused(None, call, (ValueError, TypeError), name)


def test_losses_take_bool_targets_and_integral_float_labels():
    assert nn.binary_cross_entropy(np.array([0.5, 0.2]), np.array([True, False]))[0] > 0
    z = RNG.normal(size=(2, 3))
    assert nn.softmax_cross_entropy(z, np.array([0.0, 2.0]))[0] == nn.softmax_cross_entropy(z, np.array([0, 2]))[0]


# --- 10. cs231n: a refused forward neither creates nor updates bn_param's statistics ------------------------------

G3, B3 = np.ones(3), np.zeros(3)


@pytest.mark.parametrize("bn_param, x, gamma, error, name", [
    ({"mode": "eval"}, (4, 3), G3, ValueError, "mode"),
    ({"mode": ["train"]}, (4, 3), G3, ValueError, "mode"),
    ({"mode": "train"}, (4, 3), np.ones(4), ValueError, "gamma"),
    ({"mode": "train"}, (1, 3), G3, ValueError, "x:"),
    ({"mode": "train", "eps": -1.0}, (4, 3), G3, ValueError, "bn_param['eps']"),
    ({"mode": "train", "eps": nan}, (4, 3), G3, ValueError, "bn_param['eps']"),
    ({"mode": "train", "eps": "1e-5"}, (4, 3), G3, ValueError, "bn_param['eps']"),
    ({"mode": "train", "momentum": 2.0}, (4, 3), G3, ValueError, "bn_param['momentum']"),
    ({"mode": "train", "momentum": None}, (4, 3), G3, ValueError, "bn_param['momentum']"),
    ({"mode": "train", "running_mean": np.ones(3, complex)}, (4, 3), G3, TypeError, "bn_param['running_mean']"),
    ({"mode": "train", "running_mean": ["a", "b", "c"]}, (4, 3), G3, TypeError, "bn_param['running_mean']"),
    ({"mode": "train", "running_mean": [0.0, 0.0, 0.0], "running_var": np.ones(4)}, (4, 3), G3, ValueError,
     "bn_param['running_var']"),
    ({"mode": "test", "running_mean": np.zeros(3), "running_var": -np.ones(3)}, (4, 3), G3, ValueError,
     "bn_param['running_var']"),
    ({"mode": "train", "running_mean": np.zeros(3), "running_var": np.array([1, nan, 1])}, (4, 3), G3, ValueError,
     "bn_param['running_var']"),
])
def test_cs231n_refused_batchnorm_leaves_bn_param_as_it_was(bn_param, x, gamma, error, name):
    before = copy.deepcopy(bn_param)
    with pytest.raises(error) as info:
        cs231n.batchnorm_forward(RNG.normal(size=x), gamma, B3, bn_param)
    assert name in str(info.value)
    assert set(bn_param) == set(before)
    for k, v in before.items():
        assert type(bn_param[k]) is type(v) and repr(bn_param[k]) == repr(v), k


@pytest.mark.parametrize("call, error, name", [
    (lambda: cs231n.layernorm_forward(np.ones((4, 3)), G3, B3, None), TypeError, "ln_param"),
    (lambda: cs231n.layernorm_forward(np.ones((4, 3)), G3, B3, {"eps": nan}), ValueError, "ln_param['eps']"),
    (lambda: cs231n.spatial_groupnorm_forward(np.ones((2, 4, 3, 3)), np.ones((1, 4, 1, 1)), np.zeros((1, 4, 1, 1)),
                                              2, None), TypeError, "gn_param"),
    (lambda: cs231n.batchnorm_backward_alt(np.ones((4, 3)), None), TypeError, "cache"),
    (lambda: cs231n.layernorm_backward(np.ones((4, 3)), (1, 2, 3)), TypeError, "cache"),
    (lambda: cs231n.batchnorm_backward_alt(np.ones((4, 3), complex), _cache()), TypeError, "dout"),
    (lambda: cs231n.batchnorm_backward(np.full((4, 3), "a"), _cache()), TypeError, "dout"),
    (lambda: cs231n.batchnorm_backward(np.ones((4, 2)), _cache()), ValueError, "dout"),
])
def test_cs231n_bad_param_dict_cache_or_dout_is_refused_naming_it(call, error, name):
    refused(None, call, error, name)


@pytest.mark.parametrize("name, arrays", [
    ("x", {"x": np.ones((4, 3), complex)}), ("x", {"x": np.full((4, 3), "a")}), ("x", {"x": [[1.0, 2.0], [1.0]]}),
    ("gamma", {"gamma": np.ones(3, complex)}), ("gamma", {"gamma": None}), ("gamma", {"gamma": ["a", "b", "c"]}),
    ("beta", {"beta": np.array([1.0, 2.0, 3.0], object)}), ("beta", {"beta": np.ones(3) + 1j}),
])
def test_cs231n_non_real_arrays_are_refused_naming_the_argument(name, arrays):
    args = {"x": RNG.normal(size=(4, 3)), "gamma": G3, "beta": B3, **arrays}
    bn_param = {"mode": "train"}
    for forward, params in ((cs231n.batchnorm_forward, bn_param), (cs231n.layernorm_forward, {})):
        message = refused(None, lambda: forward(args["x"], args["gamma"], args["beta"], params), TypeError, name)
        assert "expected" in message and "real numbers" in message
    assert bn_param == {"mode": "train"}  # nothing created by the refused forward
    refused(None, lambda: cs231n.batchnorm_backward(np.full((4, 3), None), _cache()), TypeError, "dout")


def _cache():
    return cs231n.batchnorm_forward(RNG.normal(size=(4, 3)), G3, B3, {"mode": "train"})[1]


# --- 11. fold ----------------------------------------------------------------------------------------------------

WD, Z2, O2 = RNG.normal(size=(3, 2)), np.zeros(2), np.ones(2)


@pytest.mark.parametrize("call, error, name", [
    (lambda: fold.fold_dense(np.full((3, 2), "a"), None, None, None, Z2, O2), TypeError, "W:"),
    (lambda: fold.fold_dense(np.ones((3, 2), complex), None, None, None, Z2, O2), TypeError, "W:"),
    (lambda: fold.fold_dense(None, None, None, None, Z2, O2), TypeError, "W:"),
    (lambda: fold.fold_dense(WD, None, ["a", "b"], None, Z2, O2), TypeError, "gamma:"),
    (lambda: fold.fold_dense(WD, None, np.ones(2, complex), None, Z2, O2), TypeError, "gamma:"),
    (lambda: fold.fold_dense(WD, None, None, None, Z2, np.array([1, nan])), ValueError, "var:"),
    (lambda: fold.fold_dense(WD, None, None, None, Z2, np.array([1, -1e-6])), ValueError, "var:"),
    (lambda: fold.fold_dense(WD, None, None, None, np.array([0, inf]), O2), ValueError, "mean:"),
    (lambda: fold.fold_dense(WD, None, None, None, Z2, O2, eps=inf), ValueError, "eps:"),
    (lambda: fold.fold_dense(WD, ["a", "b"], None, None, Z2, O2), TypeError, "b:"),
    (lambda: fold.fold_batchnorm(WD, None, BatchNorm(2).eval(), kind=["dense"]), ValueError, "kind:"),
])
def test_fold_bad_input_is_refused_naming_it(call, error, name):
    refused(None, call, error, name)


def test_fold_of_integer_weights_is_float():
    W2, b2 = fold.fold_dense(np.array([[1, 2], [3, 4]]), None, None, None, Z2, np.full(2, 3.0), eps=0.0)
    assert W2.dtype == np.float64 and b2.dtype == np.float64
    np.testing.assert_allclose(W2, np.array([[1, 2], [3, 4]]) / math.sqrt(3), rtol=1e-15)


# --- 12. datasets --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, name", [
    (lambda: datasets.make_classification(-1), "n_samples"),
    (lambda: datasets.make_classification(10, "20"), "n_features"),
    (lambda: datasets.make_classification(10, flip=2.0), "flip"),
    (lambda: datasets.make_classification(10, flip=10 ** 400), "flip"),
    (lambda: datasets.make_classification(10, n_informative=0), "n_informative"),
    (lambda: datasets.make_classification(10, seed="x"), "seed"),
    (lambda: datasets.load_digits(-5), "test_size"),
])
def test_bad_dataset_argument_is_refused_naming_it(call, name):
    refused(None, call, ValueError, name)


def test_truncated_gzip_idx_names_the_path(tmp_path):
    path = tmp_path / "t.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00abc")
    refused(None, lambda: datasets.read_idx(path), ValueError, str(path))
