"""Writing generated modules safely, regenerating the catalogue, and loading modules through a cache.

The generator (symbn.codegen.module, and SymPy with it) is imported only where a module must be generated: loading a
cached module needs neither."""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
import tempfile
import types
from pathlib import Path

from symbn.codegen.key import BACKENDS, input_digest, module_name
from symbn.codegen.stamp import stamp_problem
from symbn.core.spec import Spec


class OverwriteError(FileExistsError):
    """Refusing to replace a file symbn did not write, or one edited by hand since."""


class UntrustedError(ImportError):
    """Refusing to import (run) a file that is not a generated module exactly as symbn wrote it."""


def check_overwrite(path: Path) -> None:
    """Raise OverwriteError unless *path* is absent or an untouched symbn output."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_file():
        raise OverwriteError(f"{path}: not a regular file; refusing to replace it")
    problem = stamp_problem(path.read_text(errors="replace"))
    if problem:
        raise OverwriteError(f"{path}: {problem}; refusing to overwrite it (use --force)")


def _mode() -> int:
    """What open() would give a new file: read and write for all, less the umask (read without changing it where
    the platform allows, as it is process-wide state)."""
    try:
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write *text* (or bytes) to a temporary file beside *path*, then rename: readers never see half a file, a
    failure leaves no temporary file, and the file's mode follows the umask as a plain open() would."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; expected a file path to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if isinstance(text, bytes) else os.fdopen(fd, "w", encoding="utf-8")) as f:
            f.write(text)
        os.chmod(tmp, _mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_targets(paths) -> None:
    """Raise OSError unless every path can be written: not a folder, under a folder (or one that can be made) that
    is writable. Checked for all the files of a command before the first is written."""
    for path in map(Path, paths):
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a folder; expected a file path to write")
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise NotADirectoryError(f"{path}: {folder} is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"{path}: the folder {folder} is not writable")


def write_modules(jobs: list[tuple[Path, str]], force: bool = False) -> list[Path]:
    """Write every (path, text) job, after checking them all: a refusal leaves every file as it was."""
    check_targets(path for path, _ in jobs)
    for path, _ in jobs:
        if not force:
            check_overwrite(path)
    changed = []
    for path, text in jobs:
        if not path.is_file() or path.read_text(errors="replace") != text:
            write_atomic(path, text)
            changed.append(path)
    return changed


def catalog_jobs(out_dir: Path, each=lambda entries: entries) -> list[tuple[Path, str]]:
    """(path, text) of every catalogue module; *each* wraps the (spec, backend) entries as they are generated (a
    progress bar)."""
    from symbn.codegen.catalogue import CATALOG
    from symbn.codegen.module import module_text

    entries = [(spec, backend) for spec in CATALOG for backend in BACKENDS]
    return [(out_dir / f"{module_name(spec, backend)}.py", module_text(spec, backend)) for spec, backend in each(entries)]


def stale(out_dir: Path, each=lambda entries: entries) -> list[str]:
    """Unified diffs between what the catalogue generates now and what *out_dir* holds (empty: fresh)."""
    return folder_diffs(out_dir, {path.name: text for path, text in catalog_jobs(out_dir, each)},
                        ours=lambda path: path.suffix == ".py")


def folder_diffs(out_dir: Path, files: dict[str, str], ours, mask=lambda text: text) -> list[str]:
    """Unified diffs between *files* (name -> text) and *out_dir*, both read through *mask*, and the files of
    *out_dir* that *ours* (a path -> bool) says a writer of *files* made but *files* no longer holds."""
    diffs = []
    for name, text in sorted(files.items()):
        path = out_dir / name
        old = mask(path.read_text(errors="replace")) if path.is_file() else ""
        new = mask(text)
        if old != new:
            diffs.append("".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                      f"{path} (committed)", f"{path} (regenerated)")))
    extra = sorted(p for p in out_dir.glob("*") if p.is_file() and p.name not in files and ours(p))
    return diffs + [f"{p}: not in the catalogue any more\n" for p in extra]


def cache_dir() -> Path:
    root = os.environ.get("SYMBN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                        os.path.expanduser("~/.cache"), "symbn")
    return Path(root)


def import_path(path: str | os.PathLike, name: str | None = None, trust: bool = False) -> types.ModuleType:
    """Import (run) a generated module from a file path: one exactly as symbn wrote it (banner and content hash
    intact), or any Python file when *trust* is set. A generated module needs nothing from symbn."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if path.suffix != ".py":
        raise ImportError(f"{path}: not a Python module (expected a .py file)")
    if not trust:
        problem = stamp_problem(path.read_text(errors="replace"))
        if problem:
            raise UntrustedError(f"{path}: {problem}; refusing to import (run) it. If you trust the file, "
                                 "pass --trust (symbn check) or trust=True")
    name = name or f"symbn_generated_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


CATALOGUE_DIR = Path("generated")  # where `symbn generate --catalog` writes, relative to the current directory


def module_file(spec: Spec, backend: str, generated: Path = CATALOGUE_DIR) -> tuple[Path, bool]:
    """The committed catalogue module generated/NAME_BACKEND.py when *spec* is a catalogue entry and the file is
    there (what users of a checkout get), else the module symbn.load caches; and whether it came from *generated*."""
    from symbn.codegen.catalogue import CATALOG

    path = Path(generated) / f"{module_name(spec, backend)}.py"
    if spec in CATALOG and path.is_file():
        return path, True
    return Path(load(spec, backend).__file__), False


def load(spec: Spec, backend: str = "numba") -> types.ModuleType:
    """The generated module for *spec*, generated into the cache (keyed by the input hash) when needed. A cached file
    that is not exactly what symbn wrote (truncated, emptied, edited) is regenerated before it is imported."""
    if not isinstance(spec, Spec):
        raise TypeError(f"spec: expected a symbn.Spec (from symbn.preset, symbn.custom or symbn.make); "
                        f"got {type(spec).__name__} {spec!r:.60}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}; got {backend!r}")
    digest = input_digest(spec, backend)
    name = module_name(spec, backend)
    module_key = f"symbn_cache_{name}_{digest}"
    if module_key in sys.modules:
        return sys.modules[module_key]
    path = cache_dir() / digest / f"{name}.py"
    try:
        intact = path.is_file() and stamp_problem(path.read_text(errors="replace")) is None
        if not intact:
            from symbn.codegen.module import module_text

            write_atomic(path, module_text(spec, backend, command=f"symbn.load(...) (spec {spec.name})", digest=digest))
    except OSError as err:
        raise OSError(f"symbn cache {cache_dir()}: cannot write {path.name} ({err.strerror or err}); set "
                      "SYMBN_CACHE to a writable folder") from err
    return import_path(path, module_key)
