"""The commands that derive, generate, check, document, list and time (symbn derive, generate, check, docs, list,
bench). Heavy imports (the derivation, code generation, documents, the benchmark, Numba) stay inside the functions:
building the parser needs none of them."""

from __future__ import annotations

import argparse
import re
import sys

from symbn.cli.flags import UsageError, default_layouts, quote, spec_from_args
from symbn.core import spec as specs


DOCUMENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}")


def cmd_derive(a: argparse.Namespace) -> int:
    if a.output is not None and a.format == "text":
        raise UsageError("-o/--output needs --format md|html|tex (text goes to stdout)")
    if a.name is not None:
        if a.output is None:
            raise UsageError("--name names the document file: it needs --format md|html|tex and -o/--output DIR")
        if not DOCUMENT_NAME.fullmatch(a.name):
            raise specs.SpecError("name", a.name, "a file name of letters, digits, _ and - (up to 100, no folder, "
                                  "no extension; symbn adds .md, .html or .tex), e.g. my_rms")
    if a.format != "text":
        return cmd_document(a)

    from symbn.core.derive import derive
    from symbn.core.describe import derivation_text

    d = derive(spec_from_args(a))
    sys.stdout.write(derivation_text(d))
    if a.prove:
        from symbn.core.verify import prove_all
        from symbn.docgen.evidence import proof_sizes
        from symbn.progress import echo, steps

        print("\nproof (brute-force Jacobian of the expanded forward, exact rational inputs)", flush=True)
        sizes = proof_sizes()
        with steps(len(sizes), "symbn derive --prove", a.quiet, unit="proof") as bar:
            for size in sizes:
                bar.show(f"proving at M={size}")
                (proof,) = prove_all(d, sizes=(size,))  # the seed prove_all gives this size
                echo(f"  {proof}")
                bar.advance()
    return 0


def cmd_document(a: argparse.Namespace) -> int:
    """symbn derive SPEC --format md|html|tex [-o DIR [--name NAME]]: the derivation document, to DIR/NAME.EXT
    (NAME: the spec's name unless --name) or stdout."""
    from pathlib import Path

    from symbn.docgen import document as docs

    from symbn.docgen import evidence
    from symbn.progress import steps

    spec = spec_from_args(a)
    out = Path(a.output) if a.output else None
    # the first-order and second-order proofs at each size, then the kernels' checks
    with steps(2 * len(evidence.proof_sizes()) + 1, f"symbn derive --format {a.format}", a.quiet) as bar:
        with evidence.session(progress=bar.advance):
            text, ok = docs.single(spec, a.format, out)
    if out is None:
        sys.stdout.write(text)
    else:
        path = out / f"{a.name or spec.name}.{a.format}"
        docs.write(out, {path.name: text})
        print(f"wrote {path}")
    return 0 if ok else 1


def cmd_docs(a: argparse.Namespace) -> int:
    """symbn docs: a Markdown and an HTML document per catalogue entry, and index pages (after generate --catalog:
    the documents quote generated/ and measure it)."""
    from pathlib import Path

    out = Path(a.output)
    if a.check:
        problem = _docs_check_problem(out, a.output)
        if problem:  # before minutes of proofs and checks, and a diff against every document of a missing folder
            print(f"symbn: error: {problem}", file=sys.stderr)
            return 1

    from symbn.codegen.catalogue import CATALOG
    from symbn.docgen import document as docs
    from symbn.docgen import evidence
    from symbn.progress import steps

    with steps(len(CATALOG) * (2 * len(evidence.proof_sizes()) + 1), "symbn docs", a.quiet) as bar:
        def report(what: str) -> None:
            bar.advance(what)
            if bar.done:
                bar.show("rendering the documents")

        # symbn docs proves afresh and records what it proved; --check recalls an outcome recorded for exactly the
        # same inputs (symbn.docgen.evidence.proof_inputs), unless --reprove.
        with evidence.session(report, recall=a.check and not a.reprove, record=True) as tally:
            files, ok = docs.catalog_documents(specs=list(CATALOG), jobs=a.jobs)
    if a.check:
        diffs = docs.stale(out, files)
        recalled = ""
        if tally.recalled:
            recalled = (f" (the outcomes of {tally.recalled} of {tally.recalled + tally.proved} proofs recalled from "
                        f"{evidence.proof_cache_path()}, recorded by an earlier run for exactly these inputs; "
                        "--reprove runs them again)")
        sys.stdout.write("".join(diffs) or f"{out}: fresh{recalled}\n")
        return 1 if diffs else 0
    changed = docs.write(out, files)
    for name in sorted(files):
        print(f"{'wrote    ' if out / name in changed else 'unchanged'} {out / name}")
    if not ok:
        print("symbn: error: a proof or a check failed; the documents say which", file=sys.stderr)
    return 0 if ok else 1


def _docs_check_problem(out, given: str) -> str | None:
    """Why symbn docs --check cannot compare here (None: it can): the documents' folder and generated/, whose
    kernels the documents quote and measure, must both be there. Outside a checkout neither is."""
    from symbn.codegen.store import CATALOGUE_DIR

    if not out.is_dir():
        what = "not a folder" if out.exists() else "no such folder here"
        if given == "docs":
            return (f"docs/: {what}; run symbn docs --check from the repository root (it compares docs/ with what "
                    "symbn renders)")
        return (f"{out}: {what}; symbn docs --check -o DIR compares the documents in DIR with what symbn renders "
                f"(symbn docs -o {given} writes them)")
    if not CATALOGUE_DIR.is_dir():
        return (f"{CATALOGUE_DIR}/: no such folder here; the documents quote and measure the kernels in "
                f"{CATALOGUE_DIR}/, so run symbn docs --check from the repository root (or symbn generate --catalog "
                "first)")
    return None


def _each_module(quiet: bool, desc: str):
    """A wrapper for store.catalog_jobs's (spec, backend) entries: a progress bar that names the module in hand."""
    from symbn.codegen.key import module_name
    from symbn.progress import steps

    def each(entries):
        with steps(len(entries), desc, quiet, unit="module") as bar:
            for spec, backend in entries:
                bar.show(module_name(spec, backend))
                yield spec, backend
                bar.advance()

    return each


def cmd_generate(a: argparse.Namespace) -> int:
    import keyword
    from pathlib import Path

    from symbn.codegen.module import BACKENDS, DTYPES, module_name, module_text
    from symbn.codegen.store import OverwriteError, catalog_jobs, stale, write_modules

    out = Path(a.output)
    if a.catalog:
        if a.what is not None:
            raise specs.SpecError("PRESET_OR_EXPR", a.what, "nothing with --catalog (it generates the whole catalogue)")
        if a.check:
            if not out.is_dir():
                what = "not a folder" if out.exists() else "no such folder here"
                print(f"symbn: error: {out}/: {what}; run symbn generate --catalog --check from the repository root "
                      f"(it compares {out}/ with what symbn generates)", file=sys.stderr)
                return 1
            diffs = stale(out, _each_module(a.quiet, "symbn generate --catalog --check"))
            sys.stdout.write("".join(diffs) or f"{out}: fresh\n")
            return 1 if diffs else 0
        jobs = catalog_jobs(out, _each_module(a.quiet, "symbn generate --catalog"))
    else:
        if a.what is None:
            raise specs.SpecError("PRESET_OR_EXPR", None, "a preset or an expression (or --catalog)")
        spec = spec_from_args(a)
        backends = BACKENDS if a.backend == "all" else (a.backend,)
        dtypes = DTYPES if a.dtype == "both" else (a.dtype,)
        if a.name is not None and (not a.name.isidentifier() or keyword.iskeyword(a.name)):
            raise specs.SpecError("name", a.name, "a valid Python identifier for the module name")
        jobs = []
        for backend in backends:
            name = a.name + ("" if len(backends) == 1 else f"_{backend}") if a.name else module_name(spec, backend, dtypes)
            # the expression as symbn keeps it (rebuilt from the checked tree), not as typed
            argv = [spec.expression if arg == a.what else arg for arg in a.argv]
            command = " ".join(["symbn", "generate"] + [quote(arg) for arg in argv])
            jobs.append((out / f"{name}.py", module_text(spec, backend, command=command, dtypes=dtypes)))
    try:
        changed = write_modules(jobs, force=a.force)
    except OverwriteError as err:
        print(f"symbn: error: {err}", file=sys.stderr)
        return 1
    for path, _ in jobs:
        print(f"{'wrote    ' if path in changed else 'unchanged'} {path}")
    return 0


def _bench_sync(a: argparse.Namespace, fail) -> int:
    import json

    from symbn.bench import sync
    from symbn.bench.harness import BenchError
    from symbn.progress import steps

    try:
        processes = [int(p) for p in a.processes.split(",") if p.strip()]
    except ValueError:
        return fail(f"--processes: expected comma-separated process counts such as 1,2,4; got {a.processes!r}")
    try:
        with steps(len(processes), "symbn bench --sync", a.quiet, unit="run") as bar:
            def progress(what: str) -> None:
                if bar.count:
                    bar.advance()
                bar.show(what)

            result = sync.run(processes, a.repeat, a.smoke, progress)
            bar.advance()
    except BenchError as err:
        return fail(str(err))
    sys.stdout.write(sync.table(result))
    if a.json.lower() != "none":
        from pathlib import Path

        from symbn.codegen.store import write_atomic

        write_atomic(Path(a.json), json.dumps(result, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    from symbn.codegen.check import run
    from symbn.codegen.store import import_path
    from symbn.progress import echo, steps

    failed = False
    with steps(len(a.paths), "symbn check", a.quiet, unit="module") as bar:
        for path in a.paths:
            bar.show(f"checking {path}")
            try:
                module = import_path(path, trust=a.trust)
            except SyntaxError as err:
                raise ImportError(f"{path}: not valid Python ({err.msg}, line {err.lineno})") from None
            missing = [n for n in ("NDIM", "BLOCKS", "PARAM_AXES", "GROUPS", "forward_train", "backward", "_sizes")
                       if not hasattr(module, n)]
            if missing:
                raise ImportError(f"{path}: not a module generated by symbn (it has no {', '.join(missing)})")
            echo(f"{path}")
            for result in run(module):
                echo(f"  {result}")
                failed |= not result.ok
            bar.advance()
    return 1 if failed else 0


def cmd_list(_a: argparse.Namespace) -> int:
    """The presets as `symbn derive PRESET` introduces them (the same name, summary and forward line), and the
    layouts."""
    from symbn.core.describe import describe_spec

    defaults = default_layouts()
    out = ["presets (symbn derive PRESET [--layout LAYOUT])"]
    for name, row in specs.PRESETS.items():
        spec = specs.preset(name, groups=1 if row.grouped else None)
        forward = next(line for line in describe_spec(spec) if line.startswith("forward"))
        out.append(f"  {name:<9} {name} norm: {row.summary}" + ("; needs --groups G" if row.grouped else ""))
        out.append(f"  {'':<9} {forward.removeprefix('forward').strip()}")
        out.append(f"  {'':<9} default layout {defaults[name]}")
    out += ["", "layouts (batch, channel, spatial axes)"]
    for name, lay in specs.LAYOUTS.items():
        out.append(f"  {name:<6} batch {lay.batch}, channel {lay.channel}, spatial {lay.spatial}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from pathlib import Path

    from symbn.bench import harness as bench
    from symbn.bench import report as bench_report

    def fail(message: str) -> int:
        print(f"symbn: error: {message}", file=sys.stderr)
        return 2

    def names(text):
        return [t.strip() for t in (text or "").split(",") if t.strip()]

    if a.sync:
        return _bench_sync(a, fail)
    plot = None if a.plot.lower() == "none" else Path(a.plot)
    if plot is not None:
        try:
            import matplotlib  # noqa: F401  (checked before minutes of measuring, not after)
        except ImportError:
            return fail("--plot needs matplotlib (pip install matplotlib), or pass --plot none")
    from symbn.progress import steps

    try:
        chosen = bench.select(names(a.cases))  # a typo fails now, not after the bandwidth measurement
        dtypes = names(a.dtypes) or bench.DTYPES
        with steps(len(chosen) * len(dtypes), "symbn bench", a.quiet, unit="case") as bar:
            bar.show("measuring the memory bandwidth")
            started = []

            def progress(what: str) -> None:  # bench.run calls it as each case starts
                if started:
                    bar.advance()
                started.append(what)
                bar.show(f"measuring {what}")

            result = bench.run(names(a.cases), dtypes, a.repeat, a.threads, a.smoke, progress=progress)
            bar.advance()
    except bench.BenchError as err:
        return fail(str(err))
    result["command"] = " ".join(["symbn", "bench"] + [quote(arg) for arg in a.argv])
    sys.stdout.write(bench_report.header(result) + bench_report.detail_table(result) + "\n"
                     + bench_report.summary_table(result))
    if a.json.lower() != "none":
        bench_report.write_json(result, Path(a.json))
        print(f"wrote {a.json}")
    if plot is not None:
        bench_report.write_plot(result, plot)
        print(f"wrote {plot}")
    return 0
