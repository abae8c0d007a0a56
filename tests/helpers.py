"""What several test files share: where the repository is, the catalogue modules in generated/, central differences
and relative errors, the command line's exit code, and whether an optional peer (torch, matplotlib, scikit-learn,
chromium, mlxtend) is here. Importable as ``helpers`` (pyproject's pytest ``pythonpath`` puts tests/ on sys.path)."""

from __future__ import annotations

import functools
import importlib
import inspect
import shutil
import sys
from pathlib import Path

import numpy as np

from symbn import cli
from symbn.codegen.catalogue import CATALOG
from symbn.codegen.store import import_path, load, module_file
from symbn.core.spec import LAYOUTS

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "generated"
BACKENDS = ("numpy", "numba")
SPECS = {spec.name: spec for spec in CATALOG}
FUNCTIONS = ("forward_train", "forward_eval", "backward", "backward_eval")  # a batch-norm module's entry points


def functions(what) -> tuple[str, ...]:
    """The entry points of a generated module, or of the modules of a spec: backward_eval only where running
    statistics are kept (module.RUNNING, spec.tracks_running); elsewhere eval mode is the training computation."""
    running = bool(what.RUNNING) if hasattr(what, "RUNNING") else what.tracks_running
    return FUNCTIONS if running else FUNCTIONS[:3]


# --- optional peers ---------------------------------------------------------------------------------------------

#: The optional peers, by marker name (also the module name, but for chromium: a program), and how to install each.
PEERS = {
    "torch": "pip install torch",
    "matplotlib": "pip install matplotlib",
    "sklearn": "pip install scikit-learn",
    "chromium": "apt-get install chromium",
    "mlxtend": "pip install mlxtend",
    "mpi": 'pip install mpi4py mpich (or pip install -e ".[mpi]"), for mpiexec',
}


def chromium() -> str | None:
    """The headless browser's path, or None."""
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@functools.cache
def optional(name: str):
    """The module *name* if it imports, else None (imported at most once)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def have(peer: str) -> bool:
    """Whether the optional peer named by its marker is installed."""
    if peer == "chromium":
        return chromium() is not None
    if peer == "mpi":  # mpi4py and an MPI launcher (the mpich wheel brings mpiexec into the environment's bin)
        return optional("mpi4py") is not None and mpiexec() is not None
    return optional(peer) is not None


def mpiexec() -> str | None:
    """The mpiexec of this Python's environment (where the mpich wheel puts it), else one on PATH."""
    here = Path(sys.executable).with_name("mpiexec")
    return str(here) if here.is_file() else shutil.which("mpiexec")


# --- catalogue modules ------------------------------------------------------------------------------------------


@functools.cache
def catalogue_module(name: str, backend: str):
    """The committed generated/NAME_BACKEND.py, imported once per test session."""
    assert name in SPECS, f"{name} is no longer in the catalogue"
    return import_path(GENERATED / f"{name}_{backend}.py")


def catalogue_or_cached(spec, backend: str):
    """The committed catalogue module for *spec* where there is one, else the module symbn.load caches."""
    _, committed = module_file(spec, backend, GENERATED)
    return catalogue_module(spec.name, backend) if committed else load(spec, backend)


def shape_of(spec, n=4, c=8, spatial=(5, 3)):
    """An input shape for *spec*'s layout: n samples, c channels, the first spatial sizes."""
    layout = LAYOUTS[spec.layout]
    shape = list(spatial[: len(layout.spatial)])
    for axis, size in sorted([(layout.batch, n), (layout.channel, c)]):
        shape.insert(axis, size)
    return tuple(shape)


def stat_shape(spec, shape):
    """One value per statistic: the kept axes, the grouped channel axis as its group count (derived from the spec
    here, independently of the module)."""
    out = []
    for axis, n in enumerate(shape):
        if spec.groups and axis == spec.channel_axis:
            out.append(spec.groups)
        elif axis not in spec.reduce_axes:
            out.append(n)
    return tuple(out)


def takes(module, fn, arg) -> bool:
    """Whether the module's function *fn* has a parameter *arg*."""
    return arg in inspect.signature(getattr(module, fn)).parameters


def call(module, fn, args, **extra):
    """module.fn called with the entries of *args* it takes, by name."""
    f = getattr(module, fn)
    return f(**{k: args[k] for k in inspect.signature(f).parameters if k in args}, **extra)


# --- numbers ------------------------------------------------------------------------------------------------------


def numeric_grad(f, a, h=1e-6):
    """Central differences of the scalar f() with respect to array a (perturbed in place)."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        fp = f()
        a[i] = old - h
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def rel_err(a, b):
    """The largest difference relative to the largest entry of the reference *b*."""
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


# --- the command line ---------------------------------------------------------------------------------------------


def exit_code(*args) -> int:
    """`symbn ARGS...` in this process: its exit status (argparse's usage errors included)."""
    try:
        return cli.main(list(args))
    except SystemExit as exit_:
        return exit_.code


def refused(capsys, *argv: str) -> str:
    """stderr of a command line that symbn refuses as a usage error (exit code 2, nothing on stdout)."""
    import pytest

    from symbn import cli

    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err
