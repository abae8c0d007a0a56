"""The Keras batch-norm example model, in NumPy with symbn layers:

    Dense(64) -> BatchNormalization -> ReLU -> Dense(32) -> BatchNormalization -> ReLU -> Dense(1, sigmoid)

trained with Adam (Keras' defaults: lr 1e-3, betas 0.9/0.999, epsilon 1e-7, Keras' form of the update) on binary
cross-entropy, batches of 32, on a seeded synthetic 20-feature binary classification set (no download). The same
model without the batch norms is trained alongside for comparison. After training, the batch norms are folded into
the dense layers (symbn.fold) and the folded network is checked to predict the same, and the state dict is saved
to an .npz file and loaded back.

    python docs/examples/keras_model.py            # writes keras_model.png beside it
"""

import os

# Small matrices: one BLAS thread is faster, and much faster when the cores are busy. Set before numpy loads.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from symbn import nn  # noqa: E402
from symbn.datasets import make_classification  # noqa: E402
from symbn.fold import fold_batchnorm  # noqa: E402
from symbn.layers import BatchNorm  # noqa: E402

HERE = Path(__file__).resolve().parent


def keras_model(batch_norm: bool = True, seed: int = 0, backend: str = "numpy") -> nn.Sequential:
    norm = (lambda n: BatchNorm.keras(n, backend=backend)) if batch_norm else None
    return nn.mlp([20, 64, 32, 1], nn.ReLU, norm=norm, out_activation=nn.Sigmoid, rng=seed)


def accuracy(model, x, y) -> float:
    model.eval()
    return float(((model.forward(x)[:, 0] > 0.5) == (y > 0.5)).mean())


def fit(model, x, y, x_val, y_val, epochs: int, seed: int):
    opt = nn.Adam(model, lr=1e-3, betas=(0.9, 0.999), eps=1e-7, form="keras")
    rng = np.random.default_rng(seed)
    history = {"loss": [], "val_loss": [], "accuracy": [], "val_accuracy": []}
    for _ in range(epochs):
        order = rng.permutation(len(x))  # Keras shuffles every epoch; its last batch may be short
        losses = [nn.train_step(model, opt, nn.binary_cross_entropy, x[b], y[b, None])
                  for b in np.array_split(order, np.arange(32, len(x), 32))]
        model.eval()
        history["loss"].append(float(np.mean(losses)))
        history["val_loss"].append(nn.binary_cross_entropy(model.forward(x_val), y_val[:, None])[0])
        history["accuracy"].append(accuracy(model, x, y))
        history["val_accuracy"].append(accuracy(model, x_val, y_val))
    return history


def folded(model: nn.Sequential) -> nn.Sequential:
    """The inference network with every BatchNorm folded into the Dense layer before it."""
    layers = []
    for layer in model.layers:
        if isinstance(layer, BatchNorm):
            dense = layers[-1]
            W, b = fold_batchnorm(dense.W, dense.b, layer)
            new = nn.Dense(*W.shape)
            new.W[...], new.b[...] = W, b
            layers[-1] = new
        else:
            layers.append(layer)
    return nn.Sequential(*layers).eval()


def plot(histories, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, colour in (("without BN", "tab:blue"), ("with BN", "tab:orange")):
        h = histories[name]
        epochs = np.arange(1, len(h["loss"]) + 1)
        axes[0].plot(epochs, h["loss"], "--", color=colour, label=f"{name}, training (mean over the epoch)")
        axes[0].plot(epochs, h["val_loss"], "-", color=colour, label=f"{name}, validation")
        axes[1].plot(epochs, h["accuracy"], "--", color=colour, label=f"{name}, training")
        axes[1].plot(epochs, h["val_accuracy"], "-", color=colour, label=f"{name}, validation")
    axes[0].set(title="binary cross-entropy", xlabel="epoch")
    axes[1].set(title="accuracy (inference network)", xlabel="epoch")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle("Keras example model in NumPy with symbn BatchNorm (Keras conventions), Adam, batches of 32",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("numpy", "numba"), default="numpy")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "keras_model.png")
    args = parser.parse_args(argv)

    x, y = make_classification(2000, 20, seed=args.seed)
    x_train, y_train, x_val, y_val = x[:1600], y[:1600], x[1600:], y[1600:]
    histories = {}
    for name, batch_norm in (("without BN", False), ("with BN", True)):
        start = time.perf_counter()
        model = keras_model(batch_norm, args.seed, args.backend)
        histories[name] = h = fit(model, x_train, y_train, x_val, y_val, args.epochs, args.seed)
        print(f"{name:>10}: epoch 1 loss {h['loss'][0]:.4f}, final loss {h['loss'][-1]:.4f}, validation loss "
              f"{h['val_loss'][-1]:.4f}, validation accuracy {h['val_accuracy'][-1]:.4f} "
              f"({time.perf_counter() - start:.1f} s)")

    # The trained BN model: fold it, and round-trip its state through an .npz file.
    p = model.eval().forward(x_val)
    gap = np.abs(folded(model).forward(x_val) - p).max()
    print(f"folded network: {sum(isinstance(layer, nn.Dense) for layer in folded(model).layers)} Dense layers, "
          f"no BatchNorm; largest difference in predicted probability {gap:.1e}")
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "model.npz")
        copy = keras_model(True, args.seed + 1, args.backend)
        copy.load(Path(tmp) / "model.npz")
        print(f"state dict: {len(model.state_dict())} arrays saved and loaded; same predictions: "
              f"{np.array_equal(copy.eval().forward(x_val), p)}")
    plot(histories, args.output)
    print(f"figure: {args.output}")
    return histories


if __name__ == "__main__":
    main()
