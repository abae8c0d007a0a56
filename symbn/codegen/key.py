"""What a generated module is called and what it depends on: its name, and the hash of its inputs (spec, templates,
generator code, versions) that keys symbn.load's cache. Computed before anything is derived, so nothing here imports
SymPy (SymPy's version is read from its installed metadata): loading a cached module needs none of the generator."""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path

from symbn.core.spec import Spec
from symbn.templating import template_source, templates_dir
from symbn.version import __version__

DTYPES = ("float32", "float64")
BACKENDS = ("numpy", "numba")


def module_name(spec: Spec, backend: str, dtypes: tuple[str, ...] = DTYPES) -> str:
    return f"{spec.name}_{backend}" + ("" if tuple(dtypes) == DTYPES else "_" + "_".join(dtypes))


def input_digest(spec: Spec, backend: str, dtypes: tuple[str, ...] = DTYPES) -> str:
    """What a generated module depends on: the spec, the templates and the generator's own code (so a cached module
    made by an older generator of the same version is not reused)."""
    parts = [spec.digest(), backend, ",".join(dtypes), __version__, sympy_version(), *_kernel_templates(),
             _generator_source()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


@functools.cache
def _kernel_templates() -> tuple[str, ...]:
    """Every kernel template (name and text), so that one a module includes joins without anyone keeping a list."""
    folder = templates_dir() / "kernels"
    return tuple(f"{f.name}\0{template_source('kernels/' + f.name)}" for f in sorted(folder.glob("*.j2")))


@functools.cache
def sympy_version() -> str:
    """sympy.__version__, read from SymPy's installed metadata (the same string) without importing SymPy."""
    try:
        return importlib.metadata.version("sympy")
    except importlib.metadata.PackageNotFoundError:  # SymPy without metadata (a source tree on the path): ask it
        import sympy

        return sympy.__version__


@functools.cache
def _generator_source() -> str:
    """The text of the module that prints kernel modules and of every symbn module it imports, directly or not (read
    from the import statements, so a new module joins without anyone keeping a list)."""
    root = Path(__file__).resolve().parents[1]  # the symbn package
    texts, todo = {}, ["symbn.codegen.module"]
    while todo:
        name = todo.pop()
        path = _source_path(root, name)
        if name in texts or path is None:
            continue
        texts[name] = path.read_text()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(texts[name])):
            if isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                    else node.module or ""
                todo += [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                todo += [a.name for a in node.names]
    return "".join(texts[name] for name in sorted(texts))


_BODIES = (ast.stmt, ast.excepthandler, ast.match_case)


def _imports(tree: ast.Module):
    """The import statements of a module at any depth (inside functions too). Statements sit only in the bodies of
    statements (and of except and case clauses), never inside an expression, so the walk skips expressions: the
    imports ast.walk would find, in a fraction of the time (this runs on the first symbn.load of a process)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        for _, value in ast.iter_fields(node):
            if isinstance(value, list):
                todo += [child for child in value if isinstance(child, _BODIES)]


def _source_path(root: Path, name: str) -> Path | None:
    """The file of symbn module *name*, or None for names outside the package (and for names that are not modules)."""
    head, _, rest = name.partition(".")
    if head != "symbn":
        return None
    base = root.joinpath(*rest.split(".")) if rest else root
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None
