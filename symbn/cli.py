"""The ``symbn`` command line: ``symbn derive ...`` and ``symbn list``."""

from __future__ import annotations

import argparse
import os
import sys

from symbn.core import spec as specs
from symbn.core.expr import ExpressionError
from symbn.core.graph import GraphError

USAGE_ERRORS = (specs.SpecError, ExpressionError, GraphError)


def _axes(text: str) -> tuple[int, ...]:
    text = text.strip()
    if text.lower() in ("", "none", "()"):
        return ()
    try:
        return tuple(int(a) for a in text.strip("()").split(",") if a.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated axis numbers such as 0,2,3; got {text!r}")


def add_spec_arguments(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument("what", metavar="PRESET_OR_EXPR", nargs="?" if optional else None,
                   help=f"a preset ({', '.join(specs.PRESETS)}) or a forward expression such as "
                        f"'gamma*x/sqrt(mean(x**2) + eps)'")
    p.add_argument("--layout", choices=list(specs.LAYOUTS), help="input layout for a preset (or with --like)")
    p.add_argument("--like", choices=list(specs.PRESETS), help="take an expression's axes from this preset")
    p.add_argument("--axes", type=_axes, help="explicit axes to reduce, e.g. 0,2")
    p.add_argument("--param-axes", type=_axes, help="axes gamma and beta span, e.g. 1 (or 'none')")
    p.add_argument("--ndim", type=int, help="input rank with explicit axes (default: largest axis + 1)")
    p.add_argument("--channel-axis", type=int, help="the axis --groups splits, with explicit axes")
    p.add_argument("--groups", type=int, help="split the channel axis into G groups (group norm)")
    p.add_argument("--eps", type=float, default=1e-5, help="added to the variance (default 1e-5)")
    p.add_argument("--ddof", type=int, default=0, choices=(0, 1), help="1 divides central moments by M-1")
    p.add_argument("--no-center", action="store_true", help="no beta (shift)")
    p.add_argument("--no-scale", action="store_true", help="no gamma (scale)")
    p.add_argument("--running", choices=list(specs.RUNNING), default="pytorch",
                   help="running-statistics convention (default pytorch)")
    p.add_argument("--momentum", type=float, help="default 0.1 for pytorch, 0.99 for keras")


def spec_from_args(a: argparse.Namespace) -> specs.Spec:
    options = dict(eps=a.eps, ddof=a.ddof, running=a.running, momentum=a.momentum)
    if a.no_center:
        options["center"] = False
    if a.no_scale:
        options["scale"] = False
    return specs.make(a.what, layout=a.layout, like=a.like, axes=a.axes, param_axes=a.param_axes, ndim=a.ndim,
                      groups=a.groups, channel_axis=a.channel_axis, **options)


def cmd_derive(a: argparse.Namespace) -> int:
    from symbn.core.derive import derive
    from symbn.core.describe import derivation_text

    if a.format != "text":
        return cmd_document(a)
    d = derive(spec_from_args(a))
    sys.stdout.write(derivation_text(d))
    if a.prove:
        from symbn.core.verify import prove_all

        print("\nproof (brute-force Jacobian of the expanded forward, exact rational inputs)")
        for proof in prove_all(d):
            print(f"  {proof}")
    return 0


def cmd_document(a: argparse.Namespace) -> int:
    """symbn derive SPEC --format md|html|tex [-o DIR]: the derivation document, to DIR/NAME.EXT or stdout."""
    from pathlib import Path

    from symbn.docgen import document as docs

    spec = spec_from_args(a)
    out = Path(a.output) if a.output else None
    text, ok = docs.single(spec, a.format, out)
    if out is None:
        sys.stdout.write(text)
    else:
        path = out / f"{spec.name}.{a.format}"
        docs.write(out, {path.name: text})
        print(f"wrote {path}")
    return 0 if ok else 1


def cmd_docs(a: argparse.Namespace) -> int:
    """symbn docs: a Markdown and an HTML document per catalogue entry, and index pages (after generate --catalog:
    the documents quote generated/ and measure it)."""
    from pathlib import Path

    from symbn.docgen import document as docs

    out = Path(a.output)
    files, ok = docs.catalog_documents(jobs=a.jobs)
    if a.check:
        diffs = docs.stale(out, files)
        sys.stdout.write("".join(diffs) or f"{out}: fresh\n")
        return 1 if diffs else 0
    changed = docs.write(out, files)
    for name in sorted(files):
        print(f"{'wrote    ' if out / name in changed else 'unchanged'} {out / name}")
    if not ok:
        print("symbn: error: a proof or a check failed; the documents say which", file=sys.stderr)
    return 0 if ok else 1


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
            diffs = stale(out)
            sys.stdout.write("".join(diffs) or f"{out}: fresh\n")
            return 1 if diffs else 0
        jobs = catalog_jobs(out)
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
            command = " ".join(["symbn", "generate"] + [_quote(arg) for arg in argv])
            jobs.append((out / f"{name}.py", module_text(spec, backend, command=command, dtypes=dtypes)))
    try:
        changed = write_modules(jobs, force=a.force)
    except OverwriteError as err:
        print(f"symbn: error: {err}", file=sys.stderr)
        return 1
    for path, _ in jobs:
        print(f"{'wrote    ' if path in changed else 'unchanged'} {path}")
    return 0


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def cmd_check(a: argparse.Namespace) -> int:
    from symbn.codegen.check import run
    from symbn.codegen.store import import_path

    failed = False
    for path in a.paths:
        try:
            module = import_path(path, trust=a.trust)
        except SyntaxError as err:
            raise ImportError(f"{path}: not valid Python ({err.msg}, line {err.lineno})") from None
        missing = [n for n in ("NDIM", "BLOCKS", "PARAM_AXES", "GROUPS", "forward_train", "backward", "_sizes")
                   if not hasattr(module, n)]
        if missing:
            raise ImportError(f"{path}: not a module generated by symbn (it has no {', '.join(missing)})")
        print(f"{path}")
        for result in run(module):
            print(f"  {result}")
            failed |= not result.ok
    return 1 if failed else 0


def cmd_list(a: argparse.Namespace) -> int:
    from symbn.core.describe import list_text

    sys.stdout.write(list_text())
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

    plot = None if a.plot.lower() == "none" else Path(a.plot)
    if plot is not None:
        try:
            import matplotlib  # noqa: F401  (checked before minutes of measuring, not after)
        except ImportError:
            return fail("--plot needs matplotlib (pip install matplotlib), or pass --plot none")
    try:
        bench.select(names(a.cases))  # a typo fails now, not after the bandwidth measurement
        result = bench.run(names(a.cases), names(a.dtypes) or bench.DTYPES, a.repeat, a.threads, a.smoke,
                           progress=lambda what: print(f"measuring {what} ...", file=sys.stderr, flush=True))
    except bench.BenchError as err:
        return fail(str(err))
    result["command"] = " ".join(["symbn", "bench"] + [_quote(arg) for arg in a.argv])
    sys.stdout.write(bench_report.header(result) + bench_report.detail_table(result) + "\n"
                     + bench_report.summary_table(result))
    if a.json.lower() != "none":
        bench_report.write_json(result, Path(a.json))
        print(f"wrote {a.json}")
    if plot is not None:
        bench_report.write_plot(result, plot)
        print(f"wrote {plot}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="symbn", description="Derive normalization layers symbolically.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("derive", help="print the forward graph and the derived backward of a normalization")
    add_spec_arguments(d)
    d.add_argument("--prove", action="store_true", help="also prove both backward forms at M = 2, 3, 4")
    d.add_argument("--format", choices=("text", "md", "html", "tex"), default="text",
                   help="text (default) prints the derivation; md, html and tex write the full document "
                        "(with proofs, finite-difference checks and the Numba kernel)")
    d.add_argument("-o", "--output", help="with --format md|html|tex: folder for NAME.EXT (default: stdout)")
    d.set_defaults(run=cmd_derive)
    dc = sub.add_parser("docs", help="render docs/: a derivation document per catalogue entry (Markdown and HTML)")
    dc.add_argument("-o", "--output", default="docs", help="output folder (default docs/)")
    dc.add_argument("--check", action="store_true", help="only report whether the documents are fresh")
    dc.add_argument("--jobs", type=int, help="processes for the proofs (default: the CPU count)")
    dc.set_defaults(run=cmd_docs)
    g = sub.add_parser("generate", help="write NumPy and Numba kernel modules for a normalization")
    add_spec_arguments(g, optional=True)
    g.add_argument("--catalog", action="store_true", help="regenerate every catalogue module (into generated/)")
    g.add_argument("--check", action="store_true", help="with --catalog: only report whether the files are fresh")
    g.add_argument("--backend", choices=("numpy", "numba", "all"), default="all")
    g.add_argument("--dtype", choices=("float32", "float64", "both"), default="both",
                   help="input dtypes the module accepts (default both)")
    g.add_argument("--name", help="module name (a Python identifier); default: the spec's canonical name")
    g.add_argument("-o", "--output", default="generated", help="output folder (default generated/)")
    g.add_argument("--force", action="store_true", help="overwrite files symbn did not write or that were edited")
    g.set_defaults(run=cmd_generate)
    c = sub.add_parser("check", help="finite-difference, Taylor and invariant checks of generated modules")
    c.add_argument("paths", nargs="+", metavar="PATH.py",
                   help="generated modules; each is imported, which runs its code, so only files exactly as symbn "
                        "wrote them (banner and content hash intact) are accepted")
    c.add_argument("--trust", action="store_true",
                   help="import and check files without an intact symbn banner too (runs their code: only for "
                        "files you trust)")
    c.set_defaults(run=cmd_check)
    ls = sub.add_parser("list", help="show the presets and layouts")
    ls.set_defaults(run=cmd_list)
    b = sub.add_parser("bench", help="time the kernels against naive NumPy and PyTorch, and against the bandwidth")
    b.add_argument("--cases", help="comma-separated substrings of case names (default: all)")
    b.add_argument("--dtypes", default="float32,float64", help="comma-separated (default float32,float64)")
    b.add_argument("--repeat", type=int, default=10, help="timed runs per kernel after the warm-up (default 10)")
    b.add_argument("--threads", type=int, help="Numba and PyTorch threads (default: all cores)")
    b.add_argument("--smoke", action="store_true", help="tiny sizes and one run: proves the harness works")
    b.add_argument("--json", default="bench.json", help="result file (default bench.json; 'none' for no file)")
    b.add_argument("--plot", default="bench.png", help="chart (default bench.png; 'none' for no chart)")
    b.set_defaults(run=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv[1:]
    try:
        return args.run(args)
    except USAGE_ERRORS as err:
        p.exit(2, f"symbn: error: {err}\n")
    except (OSError, ImportError) as err:  # files: missing, unwritable, not ours, not Python
        p.exit(1, f"symbn: error: {_one_line(err)}\n")
    except KeyboardInterrupt:
        p.exit(130, "symbn: interrupted\n")
    except Exception as err:  # a bug of symbn's: one line, the traceback on request
        if os.environ.get("SYMBN_DEBUG"):
            raise
        p.exit(3, f"symbn: internal error: {type(err).__name__}: {_one_line(err)} (please report it; set "
                  "SYMBN_DEBUG=1 for the traceback)\n")


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
