"""Progress on stderr: drawn only on a terminal and without --quiet, never mixed into what a command prints; and the
checks that fail fast, outside a checkout, before any long work."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import pytest

from helpers import GENERATED, ROOT
from symbn import cli
from symbn.cli import commands
from symbn import progress as bars


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def as_terminal(monkeypatch) -> Terminal:
    """sys.stderr as a terminal, for the rest of the test. Called in the test's body: pytest puts its capture back in
    place between a fixture's setup and the call."""
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


# --- symbn.progress --------------------------------------------------------------------------------------------


def test_nothing_is_drawn_when_stderr_is_not_a_terminal(capsys):
    items = [1, 2, 3]
    assert bars.progress(items, desc="x") is items  # the iterable itself: no bar, not even tqdm
    with bars.steps(3, "x") as bar:
        for _ in items:
            bar.advance("one more")
        assert bar.done
    assert capsys.readouterr().err == ""


def test_quiet_draws_nothing_on_a_terminal(monkeypatch):
    terminal = as_terminal(monkeypatch)
    items = [1, 2, 3]
    assert bars.progress(items, quiet=True) is items
    with bars.steps(3, "x", quiet=True) as bar:
        bar.show("working")
        bar.advance("done")
    assert terminal.getvalue() == ""


def test_a_terminal_gets_a_bar_that_echo_does_not_break(monkeypatch, capsys):
    terminal = as_terminal(monkeypatch)
    with bars.steps(2, "symbn test") as bar:
        bar.advance("first")
        bars.echo("a line of output")
        bar.advance("second")
    assert "symbn test" in terminal.getvalue()
    assert capsys.readouterr().out == "a line of output\n"
    assert list(bars.progress([1, 2], desc="counted")) == [1, 2]
    assert "counted" in terminal.getvalue()


# --- the commands: nothing extra on stderr when quiet or not a terminal ---------------------------------------


def _prove(capsys, *extra):
    assert cli.main(["derive", "rms", "--layout", "NC", "--prove", *extra]) == 0
    return capsys.readouterr()


def test_derive_prove_is_silent_on_stderr_when_it_is_not_a_terminal(capsys):
    captured = _prove(capsys)
    assert captured.err == ""
    assert captured.out.count("brute-force Jacobian exactly") == 3


def test_derive_prove_quiet_on_a_terminal(monkeypatch, capsys):
    terminal = as_terminal(monkeypatch)
    captured = _prove(capsys, "--quiet")
    assert terminal.getvalue() == ""
    assert captured.out.count("brute-force Jacobian exactly") == 3


def test_derive_prove_on_a_terminal_shows_progress_and_the_same_output(monkeypatch, capsys):
    terminal = as_terminal(monkeypatch)
    captured = _prove(capsys)
    assert "symbn derive --prove" in terminal.getvalue()
    proofs = [line for line in captured.out.splitlines() if "brute-force Jacobian exactly" in line]
    assert [p.strip().split(" (M=")[1][0] for p in proofs] == ["2", "3", "4"]  # one line each, in order


@pytest.mark.parametrize("quiet", [True, False])
def test_check_prints_nothing_extra_on_stderr(quiet, monkeypatch, capsys):
    if quiet:
        as_terminal(monkeypatch)
    path = str(GENERATED / "rms_nc_numpy.py")
    assert cli.main(["check", path] + (["-q"] if quiet else [])) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(path + "\n") and "central differences" in captured.out
    assert (sys.stderr.getvalue() if quiet else captured.err) == ""


def test_bench_reports_cases_only_on_a_terminal(monkeypatch, capsys):
    from symbn.bench import harness

    def run(cases, dtypes, repeat, threads, smoke, progress=None):
        progress("batch_nc float32")
        progress("batch_nc float64")
        raise harness.BenchError("stopped here by the test")

    monkeypatch.setattr(harness, "run", run)
    argv = ["bench", "--smoke", "--cases", "batch_nc", "--json", "none", "--plot", "none"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == "symbn: error: stopped here by the test\n"  # no "measuring ..." lines
    stream = as_terminal(monkeypatch)
    assert cli.main(argv + ["--quiet"]) == 2
    assert stream.getvalue() == "symbn: error: stopped here by the test\n"
    stream.seek(0)
    stream.truncate()
    assert cli.main(argv) == 2
    assert "symbn bench" in stream.getvalue() and stream.getvalue().endswith("stopped here by the test\n")


def test_generate_catalog_progress_passes_every_module_through(tmp_path, monkeypatch):
    """symbn generate --catalog reports each module through a wrapper of the store's entries: with a bar drawn, the
    same modules come out, in the same order."""
    from symbn.codegen.store import catalog_jobs

    as_terminal(monkeypatch)
    assert catalog_jobs(tmp_path, commands._each_module(quiet=False, desc="test")) == catalog_jobs(tmp_path)


# --- outside a checkout: say what was expected, at once ---------------------------------------------------------


def _symbn_in(folder, *argv):
    """Run the command line in *folder* in a fresh interpreter; (exit code, stderr, seconds, modules imported)."""
    code = ("import sys, json; from symbn import cli; rc = cli.main(sys.argv[1:]); "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('symbn.docgen', 'symbn.codegen', "
            "'numba'))))); sys.exit(rc)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=folder, capture_output=True, text=True,
                          timeout=120)
    return done.returncode, done.stderr, time.perf_counter() - start, done.stdout


def test_docs_check_in_an_empty_folder_names_docs_and_exits_at_once(tmp_path):
    rc, err, seconds, modules = _symbn_in(tmp_path, "docs", "--check")
    assert rc == 1
    assert err.startswith("symbn: error: docs/: no such folder here; run symbn docs --check from the repository "
                          "root") and len(err.splitlines()) == 1
    assert "symbn.docgen.document" not in modules and "numba" not in modules  # nothing proved, nothing measured
    assert seconds < 30  # the import of SymPy; before, minutes of proofs and a 7,000-line diff


def test_docs_check_without_generated_names_generated(tmp_path):
    (tmp_path / "docs").mkdir()
    rc, err, _, modules = _symbn_in(tmp_path, "docs", "--check")
    assert rc == 1 and "generated/: no such folder here" in err and "symbn.docgen.document" not in modules


def test_docs_check_of_a_missing_output_folder_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    missing = tmp_path / "nowhere"
    assert cli.main(["docs", "--check", "-o", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"symbn: error: {missing}: no such folder here")


def test_generate_catalog_check_of_a_missing_folder_names_it(tmp_path, capsys):
    missing = tmp_path / "generated"
    assert cli.main(["generate", "--catalog", "--check", "-o", str(missing)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and f"{missing}/: no such folder here" in captured.err


def test_a_document_reports_its_proofs_and_checks_only_on_a_terminal(monkeypatch, capsys):
    from symbn.docgen.document import mask_measured

    argv = ["derive", "rms", "--layout", "NC", "--format", "md"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "Brute-force proof" in captured.out
    document = mask_measured(captured.out)
    terminal = as_terminal(monkeypatch)
    assert cli.main(argv + ["-q"]) == 0
    assert terminal.getvalue() == "" and mask_measured(capsys.readouterr().out) == document
    assert cli.main(argv) == 0
    # tqdm redraws at most every 0.1 s, so a fast run may never draw its last count: the bar itself is what is checked
    # 3 proofs of the backward, 3 of the double backward, 1 check of the kernels
    assert "symbn derive --format md" in terminal.getvalue() and "/7" in terminal.getvalue()
    assert mask_measured(capsys.readouterr().out) == document
