"""The argument parser of the symbn command: every subcommand with its description, options and examples."""

from __future__ import annotations

import argparse

from symbn.cli.cache import cmd_cache
from symbn.cli.commands import cmd_bench, cmd_check, cmd_derive, cmd_docs, cmd_generate, cmd_list
from symbn.cli.flags import add_spec_arguments, default_layouts_text
from symbn.version import __version__


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
        "  symbn bench --threads 8 --json out.json --plot out.png\n"
        "  symbn bench --sync --processes 1,2,4    # SyncBatchNorm under mpiexec")
    b.add_argument("--cases", help="comma-separated substrings of case names (default: all)")
    b.add_argument("--dtypes", default="float32,float64", help="comma-separated (default float32,float64)")
    b.add_argument("--repeat", type=int, default=10, help="timed runs per kernel after the warm-up (default 10)")
    b.add_argument("--threads", type=int, help="Numba and PyTorch threads (default: all cores)")
    b.add_argument("--smoke", action="store_true", help="tiny sizes and one run: proves the harness works")
    b.add_argument("--json", default="bench.json", help="result file (default bench.json; 'none' for no file)")
    b.add_argument("--plot", default="bench.png", help="chart (default bench.png; 'none' for no chart)")
    b.add_argument("--sync", action="store_true",
                   help="instead: time SyncBatchNorm's passes under mpiexec (local compute and communication apart, "
                        "bytes per pass); needs mpi4py and mpiexec (pip install \"symbn[mpi]\")")
    b.add_argument("--processes", default="1,2,4", help="with --sync: process counts (default 1,2,4)")
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
