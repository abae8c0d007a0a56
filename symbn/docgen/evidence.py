"""What a derivation document reports as evidence: the brute-force proofs, the finite-difference checks measured on
the generated kernels, and the generated Numba backward kernel itself.

Proofs are the expensive part (group norm with G=32 writes out a tensor of a few hundred elements and differentiates
it exactly), so they run in worker processes, one task per spec and set size, each exactly as ``prove_all`` runs it.
"""

from __future__ import annotations

import ast
import concurrent.futures
import inspect
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

from symbn.core.spec import Spec

BACKWARD = "_backward"  # the private entry point backward() hands the blocked arrays to


@dataclass(frozen=True)
class ProofOutcome:
    set_size: int
    shape: tuple[int, ...] | None
    checked: tuple[str, ...]
    error: str | None  # None when every output equalled the brute-force Jacobian exactly


@dataclass(frozen=True)
class ModuleChecks:
    backend: str
    path: Path
    from_catalog: bool  # True: generated/NAME.py; False: generated on the fly into symbn's cache
    content_hash: str
    shape: tuple[int, ...]
    results: tuple  # symbn.codegen.check.Result


def proof_sizes() -> tuple[int, ...]:
    from symbn.core.verify import prove_all

    return tuple(inspect.signature(prove_all).parameters["sizes"].default)


def _prove_one(spec: Spec, size: int) -> ProofOutcome:
    from symbn.core.derive import derive
    from symbn.core.verify import ProofError, prove_all

    try:
        (proof,) = prove_all(derive(spec), sizes=(size,))  # the seed prove_all gives this size
    except ProofError as err:
        return ProofOutcome(size, None, (), str(err))
    return ProofOutcome(size, proof.shape, proof.checked, None)


def prove_many(specs: list[Spec], jobs: int | None = None) -> dict[Spec, list[ProofOutcome]]:
    """prove_all for every spec, spread over *jobs* processes (default: the CPU count; 1 runs in this process)."""
    tasks = [(spec, size) for spec in specs for size in proof_sizes()]
    jobs = min(jobs or os.cpu_count() or 1, len(tasks))
    if jobs <= 1:
        outcomes = [_prove_one(*t) for t in tasks]
    else:
        # spawn, not fork: this process may already run Numba's worker threads.
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            outcomes = list(pool.map(_prove_one, *zip(*tasks)))
    out: dict[Spec, list[ProofOutcome]] = {spec: [] for spec in specs}
    for (spec, _), outcome in zip(tasks, outcomes):
        out[spec].append(outcome)
    return out


def measure(spec: Spec, generated: Path) -> list[ModuleChecks]:
    """symbn.codegen.check.run (fixed seed 0) on the NumPy and the Numba module of *spec*."""
    from symbn.codegen import check as checks
    from symbn.codegen.store import import_path, module_file

    out = []
    for backend in ("numpy", "numba"):
        path, from_catalog = module_file(spec, backend, generated)
        text = path.read_text()
        module = import_path(path, f"symbn_docs_{path.stem}_{recorded_hash(text)}")
        out.append(ModuleChecks(backend, path, from_catalog, recorded_hash(text),
                                checks.test_shape(module), tuple(checks.run(module, seed=0))))
    return out


def recorded_hash(text: str) -> str:
    from symbn.codegen.stamp import recorded_hash

    return recorded_hash(text) or "none recorded"


def _jitted(decorator: ast.expr) -> bool:
    """A Numba compilation decorator: numba.njit(...) itself or the module's _jit(...) around it."""
    text = ast.unparse(decorator)
    return "njit" in text or text.startswith("_jit(")


def kernel_excerpt(text: str, entry: str = BACKWARD) -> tuple[list[str], str]:
    """The Numba training backward as the module has it: the function *entry* and the compiled kernels it runs
    (each with its decorators, in file order). Which kernels those are depends on the layout (one chunked kernel, or
    column kernels when the innermost axis is kept), so they are found by what *entry* refers to."""
    tree = ast.parse(text)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    if entry not in functions:
        return [], ""
    used = {n.id for n in ast.walk(functions[entry]) if isinstance(n, ast.Name)}
    jitted = [f for name, f in functions.items() if name in used and any(_jitted(d) for d in f.decorator_list)]
    lines = text.splitlines()
    parts = []
    for f in [functions[entry]] + jitted:
        start = min([d.lineno for d in f.decorator_list] + [f.lineno])
        parts.append("\n".join(lines[start - 1: f.end_lineno]))
    return [f.name for f in jitted], "\n\n\n".join(parts)
