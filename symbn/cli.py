"""The ``symbn`` command line: ``symbn derive ...``, ``generate``, ``check``, ``docs``, ``list``, ``bench``, ``cache``.

Heavy imports (the derivation, code generation, documents, the benchmark, Numba) stay inside the command functions:
building the parser needs only symbn.core.spec.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from symbn.core import spec as specs
from symbn.core.expr import ExpressionError
from symbn.core.graph import GraphError
from symbn.version import __version__


class UsageError(ValueError):
    """A command line that asks for something the CLI does not do (exit status 2); the message is shown as is."""


USAGE_ERRORS = (specs.SpecError, ExpressionError, GraphError, UsageError)

# The flag (or positional) the CLI reports for each field a SpecError names; the Python API keeps the field names.
FLAGS = {
    "what": "PRESET_OR_EXPR",
    "preset": "PRESET_OR_EXPR",
    "layout": "--layout",
    "like": "--like",
    "axes": "--axes",
    "reduce_axes": "--axes",
    "param_axes": "--param-axes",
    "ndim": "--ndim",
    "groups": "--groups",
    "channel_axis": "--channel-axis",
    "eps": "--eps",
    "ddof": "--ddof",
    "running": "--running",
    "momentum": "--momentum",
    "center": "center (--no-center)",
    "scale": "scale (--no-scale)",
    "name": "--name",
    "PRESET_OR_EXPR": "PRESET_OR_EXPR",
}

# Field names and keyword arguments inside the "expected ..." part of a message, as the CLI spells them.
_EXPECTED_WORDS = (
    (re.compile(r"\blike=PRESET\b"), "--like PRESET"),
    (re.compile(r"\blike="), "--like"),
    (re.compile(r"\bno layout\b"), "no --layout"),
    (re.compile(r"\breduce_axes\b"), "--axes"),
    (re.compile(r"\bparam_axes\b"), "--param-axes"),
    (re.compile(r"\bchannel_axis\b"), "--channel-axis"),
)


def flag_message(err: Exception, args: argparse.Namespace | None = None) -> str:
    """The one-line message of a usage error as the CLI shows it: SpecError's field as the flag that sets it."""
    text = " ".join(str(err).split())
    if isinstance(err, GraphError):
        return text.replace(": ddof=1 needs a central moment", ": --ddof 1 needs a central moment")
    if not isinstance(err, specs.SpecError) or err.field not in FLAGS:
        return text
    head = f"{err.field}: got "
    shown, sep, expected = text[len(head):].rpartition("; expected ")
    if not text.startswith(head) or not sep:
        return text
    flag = FLAGS[err.field]
    if err.field == "layout" and args is not None and getattr(args, "layout", None) is None \
            and getattr(args, "like", None) is not None:
        flag = "--like"  # make() reports a stray like= under layout
    for pattern, words in _EXPECTED_WORDS:
        expected = pattern.sub(words, expected)
    if flag == "PRESET_OR_EXPR" and expected.startswith("one of "):
        expected = "a preset, " + expected
    if expected.startswith("None or "):
        expected = expected[len("None or "):] + f" (or no {flag})"
    given = "not given" if shown == "None" else f"got {shown}"
    if err.field == "ndim" and args is not None and getattr(args, "ndim", 0) is None:
        given += " (the default: the largest of --axes and --param-axes, plus one)"
    return f"{flag}: {given}; expected {expected}"


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
    p.add_argument("--layout", choices=list(specs.LAYOUTS),
                   help=f"input layout of a preset, or of --like PRESET (default: {default_layouts_text()})")
    p.add_argument("--like", choices=list(specs.PRESETS), metavar="PRESET",
                   help="take an expression's axes from this preset (with --layout)")
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


def default_layouts() -> dict[str, str]:
    """The layout each preset gets without --layout (what symbn.preset picks)."""
    return {name: specs.preset(name, groups=1 if row.grouped else None).layout for name, row in specs.PRESETS.items()}


def default_layouts_text() -> str:
    """E.g. 'NC for batch, layer and rms; NCHW for instance and group'."""
    by_layout: dict[str, list[str]] = {}
    for name, layout in default_layouts().items():
        by_layout.setdefault(layout, []).append(name)
    return "; ".join(f"{layout} for " + (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0])
                     for layout, names in by_layout.items())


def spec_from_args(a: argparse.Namespace) -> specs.Spec:
    options = dict(eps=a.eps, ddof=a.ddof, running=a.running, momentum=a.momentum)
    if a.no_center:
        options["center"] = False
    if a.no_scale:
        options["scale"] = False
    return specs.make(a.what, layout=a.layout, like=a.like, axes=a.axes, param_axes=a.param_axes, ndim=a.ndim,
                      groups=a.groups, channel_axis=a.channel_axis, **options)


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
    with steps(len(evidence.proof_sizes()) + 1, f"symbn derive --format {a.format}", a.quiet) as bar:
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

    with steps(len(CATALOG) * (len(evidence.proof_sizes()) + 1), "symbn docs", a.quiet) as bar:
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


def _command(sub, name: str, summary: str, description: str, examples: str) -> argparse.ArgumentParser:
    """A subcommand with a one-line summary (in symbn --help), a description and examples (in symbn NAME --help)."""
    return sub.add_parser(name, help=summary, description=description, epilog="examples:\n" + examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar on stderr (there is none either when stderr is not a terminal)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="symbn", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Derive normalization layers symbolically: the backward of batch, layer, instance, group and RMS "
                    "norm,\nor of your own forward expression, proved, as text, documents and NumPy/Numba kernels.",
        epilog="examples:\n"
               "  symbn list                                  # presets and layouts\n"
               "  symbn derive batch --layout NCHW --prove    # derive batch norm's backward and prove it\n"
               "  symbn generate rms --layout NC -o mykernels # write NumPy and Numba kernels\n"
               "  symbn check mykernels/rms_nc_numba.py       # check a generated kernel\n"
               "  symbn cache                                 # where symbn.load caches its modules\n\n"
               "symbn COMMAND --help shows a command's options and examples.")
    p.add_argument("--version", action="version", version=f"symbn {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = _command(
        sub, "derive", "print the forward graph and the derived backward of a normalization",
        "Derive the backward of a normalization and print it: the spec, the forward graph (one node per\n"
        "operation), the staged backward (one step per node), the compact backward, eval mode, the running\n"
        "statistics and operation counts. With --format md|html|tex, the full derivation document instead\n"
        "(with the proofs, finite-difference checks and the Numba kernel), to stdout or to -o DIR.\n\n"
        "A preset takes its axes from --layout (default: " + default_layouts_text() + ").\n"
        "An expression takes them from --like PRESET (with --layout), or from --axes and --param-axes\n"
        "(with --ndim, --groups and --channel-axis). symbn list shows the presets and layouts.",
        "  symbn derive batch                          # batch norm over NC, the default layout for batch\n"
        "  symbn derive batch --layout NCHW --prove    # also prove the backward at M = 2, 3, 4\n"
        "  symbn derive group --groups 4 --layout NCHW\n"
        "  symbn derive rms --layout NC\n"
        "  symbn derive layer --layout NC --ddof 1\n"
        "  symbn derive 'gamma*x/sqrt(mean(x**2) + eps)' --axes 0,2 --param-axes 1\n"
        "  symbn derive 'gamma*(x - mean(x))/(sqrt(mean((x - mean(x))**2)) + eps) + beta' --like layer --layout NC\n"
        "  symbn derive group --groups 8 --layout NHWC --format html -o mydocs    # mydocs/group8_nhwc.html\n"
        "  symbn derive 'gamma*x/sqrt(mean(x**2) + eps)' --axes 1 --param-axes 1 --format md -o mydocs --name my_rms")
    add_spec_arguments(d)
    d.add_argument("--prove", action="store_true",
                   help="also prove both backward forms at M = 2, 3, 4 (documents always include the proofs)")
    d.add_argument("--format", choices=("text", "md", "html", "tex"), default="text",
                   help="text (default) prints the derivation; md, html and tex make the full document "
                        "(with proofs, finite-difference checks and the Numba kernel)")
    d.add_argument("-o", "--output", metavar="DIR",
                   help="with --format md|html|tex: write DIR/NAME.EXT instead of printing the document")
    d.add_argument("--name", help="with -o: the document's file name NAME (letters, digits, _ and -); default: the "
                                  "spec's name, e.g. batch_nchw (custom_<hash>_... for an expression)")
    _quiet(d)
    d.set_defaults(run=cmd_derive)

    dc = _command(
        sub, "docs", "render docs/: a derivation document per catalogue entry (Markdown and HTML)",
        "Render a Markdown and an HTML derivation document per catalogue entry, and the index pages.\n"
        "The documents quote and measure the kernels in generated/: run symbn generate --catalog first.\n"
        "Exit status 1 when a proof or a check fails (the documents say which). symbn docs records the outcome\n"
        "of each proof in symbn's cache folder; symbn docs --check recalls it where the spec, the versions and\n"
        "the source of the derivation and the proof are exactly the same (--reprove: prove them all again).",
        "  symbn docs                   # (re)write docs/\n"
        "  symbn docs --check           # only report whether docs/ is fresh (exit status 1 if not)\n"
        "  symbn docs -o /tmp/docs --jobs 4")
    dc.add_argument("-o", "--output", default="docs", metavar="DIR", help="output folder (default docs/)")
    dc.add_argument("--check", action="store_true", help="only report whether the documents are fresh")
    dc.add_argument("--jobs", type=int, help="processes for the proofs (default: the CPU count)")
    dc.add_argument("--reprove", action="store_true",
                    help="with --check: run every proof again, rather than recall the outcome symbn docs recorded for "
                         "exactly the same spec, symbn, SymPy and source code (symbn cache shows where)")
    _quiet(dc)
    dc.set_defaults(run=cmd_docs)

    g = _command(
        sub, "generate", "write NumPy and Numba kernel modules for a normalization",
        "Write self-contained kernel modules for a normalization (they import numpy, and numba for the Numba\n"
        "backend, never symbn): forward for training and inference, the running-statistics update, and the\n"
        "training and eval-mode backward. Each file is NAME_BACKEND.py, NAME the spec's name unless --name.\n"
        "Every target is checked before the first is written; files symbn did not write, or that were edited\n"
        "since, are not overwritten without --force. The spec options are those of symbn derive.",
        "  symbn generate batch --layout NCHW -o mykernels      # batch_nchw_numpy.py and batch_nchw_numba.py\n"
        "  symbn generate group --groups 8 --layout NHWC --backend numba -o mykernels\n"
        "  symbn generate 'gamma*x/sqrt(mean(x**2) + eps)' --axes 1 --param-axes 1 --name my_rms "
        "--backend numpy -o mykernels\n"
        "  symbn generate --catalog          # regenerate generated/\n"
        "  symbn generate --catalog --check  # only report whether generated/ is fresh")
    add_spec_arguments(g, optional=True)
    g.add_argument("--catalog", action="store_true", help="regenerate every catalogue module (into generated/)")
    g.add_argument("--check", action="store_true", help="with --catalog: only report whether the files are fresh")
    g.add_argument("--backend", choices=("numpy", "numba", "all"), default="all",
                   help="numpy (plain NumPy), numba (compiled loops, parallel) or all: one module each "
                        "(default all)")
    g.add_argument("--dtype", choices=("float32", "float64", "both"), default="both",
                   help="input dtypes the module accepts (default both)")
    g.add_argument("--name", help="module name (a Python identifier); default: the spec's canonical name")
    g.add_argument("-o", "--output", default="generated", metavar="DIR", help="output folder (default generated/)")
    g.add_argument("--force", action="store_true", help="overwrite files symbn did not write or that were edited")
    _quiet(g)
    g.set_defaults(run=cmd_generate)

    c = _command(
        sub, "check", "finite-difference, Taylor and invariant checks of generated modules",
        "Import each generated module PATH and check its kernels on small random inputs: central\n"
        "differences against the backward, a Taylor test of the error's order, and invariants such as\n"
        "sum(dx) = 0 where they hold. Importing runs the file's code, so only modules exactly as symbn wrote\n"
        "them (banner and content hash intact) are accepted, unless --trust. Exit status 1 when a check fails.",
        "  symbn check generated/batch_nchw_numba.py\n"
        "  symbn check mykernels/*.py\n"
        "  symbn check --trust my_edited_kernel.py   # a file you edited and trust")
    c.add_argument("paths", nargs="+", metavar="PATH",
                   help="a module written by symbn generate (NAME_BACKEND.py); each is imported, which runs its "
                        "code, so only files exactly as symbn wrote them (banner and content hash intact) are "
                        "accepted")
    c.add_argument("--trust", action="store_true",
                   help="import and check files without an intact symbn banner too (runs their code: only for "
                        "files you trust)")
    _quiet(c)
    c.set_defaults(run=cmd_check)

    ls = _command(
        sub, "list", "show the presets and layouts",
        "Show the presets (name, summary, forward expression, default layout) and the layouts (which\n"
        "axis is the batch, the channel and the spatial axes).",
        "  symbn list\n"
        "  symbn derive rms          # a preset from the list, over its default layout")
    ls.set_defaults(run=cmd_list)

    b = _command(
        sub, "bench", "time the kernels against naive NumPy and PyTorch, and against the bandwidth",
        "Time the generated kernels (forward and backward, float32 and float64) against naive NumPy, against\n"
        "PyTorch where it is installed, and against the memory bandwidth measured first. Prints a table and\n"
        "writes the result as JSON and, with matplotlib, a chart. Takes minutes; --smoke takes seconds.",
        "  symbn bench --smoke --json none --plot none   # proves the harness works\n"
        "  symbn bench --cases batch_nchw,rms --dtypes float32 --repeat 20\n"
        "  symbn bench --threads 8 --json out.json --plot out.png")
    b.add_argument("--cases", help="comma-separated substrings of case names (default: all)")
    b.add_argument("--dtypes", default="float32,float64", help="comma-separated (default float32,float64)")
    b.add_argument("--repeat", type=int, default=10, help="timed runs per kernel after the warm-up (default 10)")
    b.add_argument("--threads", type=int, help="Numba and PyTorch threads (default: all cores)")
    b.add_argument("--smoke", action="store_true", help="tiny sizes and one run: proves the harness works")
    b.add_argument("--json", default="bench.json", help="result file (default bench.json; 'none' for no file)")
    b.add_argument("--plot", default="bench.png", help="chart (default bench.png; 'none' for no chart)")
    _quiet(b)
    b.set_defaults(run=cmd_bench)

    ca = _command(
        sub, "cache", "show or clear the cache of modules symbn.load generates",
        "symbn.load(spec) generates the kernel module of a spec once and keeps it in a cache folder, one\n"
        "folder per input hash (with Numba's compiled code): SYMBN_CACHE if set, else XDG_CACHE_HOME/symbn,\n"
        "else ~/.cache/symbn. symbn docs records the outcomes of its proofs there too (proofs.json). info (the\n"
        "default) shows where it is, how many modules it holds and its size; clear removes them. clear checks\n"
        "first that every file there is one symbn.load or symbn docs wrote, and removes nothing otherwise.",
        "  symbn cache                           # same as symbn cache info\n"
        "  symbn cache clear\n"
        "  SYMBN_CACHE=/tmp/symbn-cache symbn cache clear")
    ca.add_argument("action", nargs="?", choices=("info", "clear"), default="info", metavar="ACTION",
                    help="info (default): where, how many modules, how large; clear: remove the cached modules")
    ca.set_defaults(run=cmd_cache)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv[1:]
    try:
        return args.run(args)
    except USAGE_ERRORS as err:
        p.exit(2, f"symbn: error: {flag_message(err, args)}\n")
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
