"""symbn cache: where symbn.load caches its modules, what the cache holds, and clearing it, touching nothing that
symbn did not write."""

from __future__ import annotations

import argparse
import os
import re
import sys


# What symbn.load leaves in its cache: one folder per input hash holding NAME.py (stamped), the temporary file of an
# interrupted atomic write, and __pycache__ with Python's bytecode and Numba's compiled functions. Beside them, the
# proof outcomes symbn docs records (symbn.docgen.evidence.PROOF_CACHE) and the temporary file of its atomic write.
_HASH_FOLDER = re.compile(r"[0-9a-f]{16}")
_TEMPORARY = re.compile(r"\.[^/]+\.py\.[^/]+\.tmp")
_PROOF_CACHE = "proofs.json"  # symbn.docgen.evidence.PROOF_CACHE (not imported: it would import SymPy's neighbours)
_PROOF_TEMPORARY = re.compile(r"\.proofs\.json\.[^/]+\.tmp")
_COMPILED = (".pyc", ".nbi", ".nbc")


def _cache_where() -> str:
    if os.environ.get("SYMBN_CACHE"):
        return "set by SYMBN_CACHE"
    if os.environ.get("XDG_CACHE_HOME"):
        return "XDG_CACHE_HOME/symbn; set SYMBN_CACHE to move it"
    return "the default; set SYMBN_CACHE or XDG_CACHE_HOME to move it"


def _cache_scan(root) -> tuple[list, int, int, list[str], list]:
    """(folders, modules, bytes, problems, files) of cache folder *root*: every entry must be something symbn.load
    writes, every .py file a module exactly as symbn wrote it, or the proof outcomes symbn docs records (*files*).
    Symbolic links are never followed."""
    from symbn.codegen.stamp import stamp_problem

    folders, modules, size, problems, files = [], 0, 0, [], []

    def foreign(path, why):
        problems.append(f"{path}: {why}")

    for entry in sorted(root.iterdir()):
        if not entry.is_symlink() and entry.is_file() and (entry.name == _PROOF_CACHE
                                                           or _PROOF_TEMPORARY.fullmatch(entry.name)):
            files.append(entry)
            size += entry.stat().st_size
            continue
        if entry.is_symlink() or not entry.is_dir() or not _HASH_FOLDER.fullmatch(entry.name):
            foreign(entry, "not an input-hash folder of symbn.load")
            continue
        folders.append(entry)
        for item in sorted(entry.iterdir()):
            if item.is_symlink():
                foreign(item, "a symbolic link")
            elif item.is_file() and item.suffix == ".py":
                problem = stamp_problem(item.read_text(errors="replace"))
                if problem:
                    foreign(item, problem)
                modules += 1
                size += item.stat().st_size
            elif item.is_file() and _TEMPORARY.fullmatch(item.name):
                size += item.stat().st_size
            elif item.is_dir() and item.name == "__pycache__":
                for compiled in sorted(item.iterdir()):
                    if compiled.is_symlink() or not compiled.is_file() or compiled.suffix not in _COMPILED:
                        foreign(compiled, "not compiled code of a cached module")
                    else:
                        size += compiled.stat().st_size
            else:
                foreign(item, "not a file symbn.load writes")
    return folders, modules, size, problems, files


def _recorded_proofs(path) -> int | None:
    """How many proof outcomes the proof cache at *path* holds (None: no such file)."""
    import json

    if not path.is_file():
        return None
    try:
        outcomes = json.loads(path.read_text()).get("outcomes")
    except (OSError, ValueError, AttributeError):
        return 0
    return len(outcomes) if isinstance(outcomes, dict) else 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def cmd_cache(a: argparse.Namespace) -> int:
    """symbn cache [info]: where symbn.load caches, how many modules, how large; symbn cache clear: remove them."""
    import shutil

    from symbn.codegen.store import cache_dir

    root = cache_dir()
    exists = root.exists() or root.is_symlink()
    if exists and not root.is_dir():
        if a.action == "info":
            print(f"cache    {root} ({_cache_where()})\nmodules  none: {root} is not a folder")
            return 0
        raise NotADirectoryError(f"{root}: the symbn cache is not a folder; refusing to touch it")
    folders, modules, size, problems, files = _cache_scan(root) if exists else ([], 0, 0, [], [])
    foreign = problems and (f"{root} does not look like a symbn cache ({problems[0]}"
                            + (f"; and {len(problems) - 1} more" if len(problems) > 1 else "") + ")")
    if a.action == "info":
        print(f"cache    {root} ({_cache_where()})")
        if not exists:
            print("modules  0 (the folder does not exist yet; symbn.load makes it)")
            return 0
        print(f"modules  {modules} in {_plural(len(folders), 'input-hash folder')}")
        recorded = _recorded_proofs(root / _PROOF_CACHE)
        if recorded is not None:
            print(f"proofs   {_plural(recorded, 'proof outcome')} symbn docs recorded ({_PROOF_CACHE}; symbn docs "
                  "--check recalls them)")
        print(f"size     {_size(size)}, with Numba's compiled code" + (" and the proof outcomes" if files else ""))
        if problems:
            print(f"warning  {foreign}; symbn cache clear will not touch it")
        return 0
    if not exists:
        print(f"{root}: no cache folder; nothing to remove")
        return 0
    if problems:
        print(f"symbn: error: {foreign}; refusing to clear it (remove what is not symbn's, or set SYMBN_CACHE "
              "to the cache folder)", file=sys.stderr)
        return 1
    if not folders and not files:
        print(f"{root}: empty; nothing to remove")
        return 0
    for path in files:
        path.unlink(missing_ok=True)
        print(f"removed  {path}" + (" (the proof outcomes symbn docs recorded)" if path.name == _PROOF_CACHE else ""))
    for folder in folders:
        names = sorted(path.name for path in folder.glob("*.py"))
        compiled = (folder / "__pycache__").is_dir()
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:  # removed meanwhile by another process (another symbn cache clear)
            if folder.exists():
                raise
        print(f"removed  {folder}" + (f" ({', '.join(names)}" if names else " (no module")
              + (" and its compiled code)" if compiled else ")"))
    print(f"removed {_plural(modules, 'cached module')} ({_size(size)}) from {root}")
    return 0
