"""What a derivation document reports as evidence: the brute-force proofs, the finite-difference checks measured on
the generated kernels, and the generated Numba backward kernel itself.

Proofs are the expensive part (each writes out a small tensor and differentiates it exactly), so they run in worker
processes, one task per spec and set size, each exactly as ``prove_all`` runs it.

A caller that runs many of them (``symbn docs``) can ask, with ``session``, to hear of each proof and each module
check as it completes, and to record proof outcomes in a small JSON file in symbn's cache folder: ``symbn docs --check``
then recalls the outcome of a proof whose inputs are exactly those of one proved before (the spec's digest, the set
size and seed, the versions of symbn, SymPy, NumPy and Python, and the source text of every module of symbn/core and
of this one, so any change to the mathematics or to the proof is a miss). Everything else proves afresh.
"""

from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import hashlib
import inspect
import json
import multiprocessing
import os
from collections.abc import Callable
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
    blocks: tuple[int, int] | None = None  # Proof.blocks: (written out, in the shape) when not all were
    recalled: bool = False  # True: the outcome of an earlier run with exactly these inputs (see session)


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


def _prove_one(spec: Spec, size: int, order: int = 1) -> ProofOutcome:
    """The brute-force proof of the backward (*order* 1) or of the double backward (*order* 2) at set size *size*."""
    from symbn.core.derive import derive
    from symbn.core.second import derive_second, prove_second_all
    from symbn.core.verify import ProofError, prove_all

    try:
        if order == 2:
            (proof,) = prove_second_all(derive_second(spec), sizes=(size,))  # seeded as prove_all
        else:
            (proof,) = prove_all(derive(spec), sizes=(size,))  # the seed prove_all gives this size
    except ProofError as err:
        return ProofOutcome(size, None, (), str(err))
    return ProofOutcome(size, proof.shape, proof.checked, None, proof.blocks)


@dataclass
class Session:
    progress: Callable[[str], None] | None = None
    recall: bool = False
    record: bool = False
    proved: int = 0  # proofs run in this session
    recalled: int = 0  # outcomes taken from the proof cache


_session = Session()


@contextlib.contextmanager
def session(progress: Callable[[str], None] | None = None, recall: bool = False, record: bool = False):
    """Within the block, prove_many and measure call *progress* with a few words (e.g. "proved batch_nc, M=3") as
    each proof and each module check completes; prove_many takes the outcome of a proof from the proof cache where
    *recall* and its inputs are exactly those of an outcome recorded there, and records what it proves where
    *record* (only proofs that passed). Outside a session nothing is reported and every proof runs. Yields the
    Session, which counts the proofs run and recalled."""
    global _session
    saved, _session = _session, Session(progress, recall, record)
    try:
        yield _session
    finally:
        _session = saved


def _report(what: str) -> None:
    if _session.progress is not None:
        _session.progress(what)


PROOF_CACHE = "proofs.json"  # in symbn.codegen.store.cache_dir(), beside the modules symbn.load caches
_CACHE_FORMAT = "symbn-proofs/1"


def proof_cache_path() -> Path:
    from symbn.codegen.store import cache_dir

    return cache_dir() / PROOF_CACHE


def proof_inputs() -> str:
    """A hash of everything a proof's outcome depends on besides the spec, the set size and the seed: the versions of
    symbn, SymPy, NumPy and Python, and the source text of symbn/core (the derivation and the proof: it imports
    nothing else of symbn) and of this module (which runs it). A change to any of them invalidates every outcome."""
    import platform

    import numpy
    import sympy

    from symbn.version import __version__

    h = hashlib.sha256()
    for part in (_CACHE_FORMAT, __version__, sympy.__version__, numpy.__version__, platform.python_version()):
        h.update(part.encode() + b"\0")
    for path in _proof_sources():
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _proof_sources() -> list[Path]:
    """The source files of the derivation and the proof: every module of symbn/core, and this one."""
    here = Path(__file__).resolve()
    return sorted((here.parents[1] / "core").glob("*.py")) + [here]


def proof_key(spec: Spec, size: int, order: int = 1) -> str:
    """The entry of one proof: the spec's full digest (every field: expression, axes, groups, options, eps), the set
    size and the seed prove_all gives that size."""
    from symbn.core.verify import prove_all

    seed = inspect.signature(prove_all).parameters["seed"].default + size  # as prove_all seeds this size
    return f"{spec.digest()}/M{size}/seed{seed}" + ("/second" if order == 2 else "")


def _read_cache(inputs: str) -> dict:
    """The recorded outcomes under *inputs* (empty when there is no cache, it is unreadable, or it was written for
    other inputs)."""
    try:
        data = json.loads(proof_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT or data.get("inputs") != inputs:
        return {}
    outcomes = data.get("outcomes")
    return outcomes if isinstance(outcomes, dict) else {}


def _recalled(entry, size: int) -> ProofOutcome | None:
    try:
        outcome = ProofOutcome(size, tuple(entry["shape"]), tuple(entry["checked"]), None,
                               tuple(entry["blocks"]) if entry.get("blocks") else None, recalled=True)
    except (TypeError, KeyError, ValueError):
        return None
    ok = (entry.get("set_size") == size and all(isinstance(n, int) for n in outcome.shape)
          and outcome.checked and all(isinstance(c, str) for c in outcome.checked))
    return outcome if ok else None


def _write_cache(inputs: str, outcomes: dict) -> None:
    """Record *outcomes* (key -> entry) under *inputs*, replacing outcomes recorded for other inputs. The cache only
    saves time: a failure to write it is ignored."""
    from symbn.codegen.store import write_atomic

    text = json.dumps(dict(format=_CACHE_FORMAT, inputs=inputs, outcomes=outcomes), indent=1, sort_keys=True)
    try:
        write_atomic(proof_cache_path(), text + "\n")
    except OSError:
        pass


def prove_many(specs: list[Spec], jobs: int | None = None, order: int = 1) -> dict[Spec, list[ProofOutcome]]:
    """prove_all (*order* 1) or prove_second_all (*order* 2) for every spec, spread over *jobs* processes (default: the
    CPU count; 1 runs in this process); in a session, reporting each outcome as it arrives and recalling or recording
    outcomes as the session says."""
    tasks = [(spec, size) for spec in specs for size in proof_sizes()]
    what = "" if order == 1 else " (second order)"
    done: dict[tuple[Spec, int], ProofOutcome] = {}
    inputs = proof_inputs() if _session.recall or _session.record else ""
    cache = _read_cache(inputs) if inputs else {}
    if _session.recall:
        for spec, size in tasks:
            outcome = _recalled(cache.get(proof_key(spec, size, order)), size)
            if outcome is not None:
                done[spec, size] = outcome
                _session.recalled += 1
                _report(f"recalled {spec.name}, M={size}{what}")
    todo = [t for t in tasks if t not in done]
    _session.proved += len(todo)
    jobs = min(jobs or os.cpu_count() or 1, len(todo))
    if jobs <= 1:
        for spec, size in todo:
            done[spec, size] = _prove_one(spec, size, order)
            _report(f"proved {spec.name}, M={size}{what}")
    elif todo:
        # spawn, not fork: this process may already run Numba's worker threads.
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_prove_one, spec, size, order): (spec, size) for spec, size in todo}
            for future in concurrent.futures.as_completed(futures):
                spec, size = futures[future]
                done[spec, size] = future.result()
                _report(f"proved {spec.name}, M={size}{what}")
    # Recorded only when the sources still read as they did before the proofs: an edit made meanwhile (the workers
    # import them when they start) may or may not be what was proved.
    if _session.record and todo and proof_inputs() == inputs:
        for spec, size in todo:
            o = done[spec, size]
            if o.error is None:
                cache[proof_key(spec, size, order)] = dict(set_size=size, shape=list(o.shape), checked=list(o.checked),
                                                    blocks=list(o.blocks) if o.blocks else None)
        _write_cache(inputs, cache)
    out: dict[Spec, list[ProofOutcome]] = {spec: [] for spec in specs}
    for spec, size in tasks:
        out[spec].append(done[spec, size])
    return out


def measure(spec: Spec, generated: Path) -> list[ModuleChecks]:
    """symbn.codegen.check.run (fixed seed 0) on the NumPy and the Numba module of *spec*, Numba on one thread."""
    from symbn.codegen import check as checks
    from symbn.codegen.store import import_path, module_file

    out = []
    for backend in ("numpy", "numba"):
        path, from_catalog = module_file(spec, backend, generated)
        text = path.read_text()
        module = import_path(path, f"symbn_docs_{path.stem}_{recorded_hash(text)}")
        with _one_numba_thread():
            results = tuple(checks.run(module, seed=0))
        out.append(ModuleChecks(backend, path, from_catalog, recorded_hash(text), checks.test_shape(module), results))
    _report(f"checked {spec.name}")
    return out


@contextlib.contextmanager
def _one_numba_thread():
    """Numba's parallel loops on one thread, for the checks of the documents (symbn check itself uses them all).

    The checks call a kernel about a thousand times on a tensor of some hundred elements: Ridders' extrapolation,
    step after step, for every gradient. Each call opens a parallel region that waits for all of Numba's threads,
    and on a machine whose cores are busy with anything else, each wait is a slice of the scheduler's time: with two
    threads on two busy cores the checks of the catalogue took 35 s, on one thread 2 s. What they check is the same:
    the arithmetic of the kernel, which does not depend on the thread count; the chunked parameter sums still run in
    min(statistics, 8 * threads) chunks, so with two statistics or more in two or more; and the documents already
    say the measured digits vary with the thread count (the freshness check compares everything but them)."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


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


def signature(text: str, name: str) -> str | None:
    """How the module defines the top-level function *name*: 'name(arguments)', or None where it has none."""
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return f"{name}({ast.unparse(node.args)})"
    return None
