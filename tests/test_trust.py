"""User text never becomes code; files symbn writes, caches and imports are checked; bad API arguments are refused.

One regression test per failure class of issue 17's security and files sections, and properties of the escaping
functions over arbitrary text.
"""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import symbn
from helpers import GENERATED, exit_code as run
from symbn import escape
from symbn.docgen.formats import WRITERS
from symbn.codegen.module import module_text
from symbn.codegen.stamp import stamp_problem
from symbn.codegen.store import OverwriteError, UntrustedError, import_path, load, write_atomic, write_modules

MARKER = "symbn_injected_marker"
# A payload that runs when the text around it is code: a comment the parser ignores, then a quote that closes a
# docstring, a backtick that closes a code span, a tag, a TeX command.
PAYLOAD = f'x - mean(x) # """ + __import__("pathlib").Path("{MARKER}").touch() + """ ` <script> \\input{{/etc/passwd}}'
any_text = st.text(alphabet=st.characters(codec=None), max_size=60)


# --- escaping ---------------------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(any_text)
def test_a_comment_stays_one_comment(text):
    source = f"# {escape.python_comment(text)}\nvalue = 1\n"
    assert len(source.splitlines()) == 2
    tree = ast.parse(source)
    assert [type(n) for n in tree.body] == [ast.Assign]


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_a_docstring_holds_exactly_the_text(text):
    source = f'"""{escape.python_docstring(text)}"""\n'
    tree = ast.parse(source)
    assert len(tree.body) == 1 and ast.literal_eval(source) == text


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_markdown_code_span_cannot_be_closed_from_inside(text):
    span = escape.markdown_code(text)
    fence = span[: len(span) - len(span.lstrip("`"))]
    inner = span[len(fence): len(span) - len(fence)]
    assert fence not in inner and "\n" not in span


@settings(max_examples=200, deadline=None)
@given(any_text)
def test_html_and_tex_text_carry_no_markup(text):
    import html

    assert "<" not in escape.html_text(text) and html.unescape(escape.html_text(text)) == text
    tex = escape.tex_text(text)
    for sequence in escape._TEX.values():  # every special character is one of these sequences, or not there
        tex = tex.replace(sequence, "")
    assert not set(tex) & set("\\{}$&#%^~_<>|")


def test_tex_text_spells_out_every_special_character():
    assert escape.tex_text("a_b$c#d%e&f{g}h\\i~j^k") == (
        r"a\_b\$c\#d\%e\&f\{g\}h\textbackslash{}i\textasciitilde{}j\textasciicircum{}k")


@pytest.mark.parametrize("fmt", ["md", "html", "tex"])
def test_writers_code_escape_their_format(fmt):
    w = WRITERS[fmt]
    code = w.code("a ``` b <i> $c$ \\d")
    if fmt == "md":
        assert code.startswith("````") and code.endswith("````")
    if fmt == "html":
        assert "<i>" not in code
    if fmt == "tex":
        assert "$" not in code.replace(r"\$", "")


# --- expressions: only the canonical text goes on ----------------------------------------------------------------

def test_the_spec_keeps_the_expression_rebuilt_from_the_tree():
    spec = symbn.make(PAYLOAD.replace(" ` <script> \\input{/etc/passwd}", ""), axes=(0,), param_axes=())
    assert spec.expression == "x - mean(x)"
    assert spec == symbn.make("x   -   mean( x )", axes=(0,), param_axes=())


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_comment_in_the_expression_does_not_reach_the_module(tmp_path, backend):
    text = module_text(symbn.make(PAYLOAD, axes=(0,), param_axes=()), backend)
    assert MARKER not in text and "__import__" not in text
    assert stamp_problem(text) is None


def test_generate_and_import_never_run_the_payload(tmp_path):
    out = tmp_path / "kernels"
    assert run("generate", PAYLOAD, "--axes", "0", "--param-axes", "none", "--backend", "numpy",
               "-o", str(out)) == 0
    (path,) = out.glob("*.py")
    assert MARKER not in path.read_text()
    subprocess.run([sys.executable, "-c", f"import runpy; runpy.run_path({str(path)!r})"], cwd=tmp_path, check=True)
    assert not (tmp_path / MARKER).exists()


def test_a_command_line_cannot_break_out_of_the_banner_comment(tmp_path):
    # -o is copied into the banner's "regenerate with" comment: a newline in it must not start a line of code.
    out = tmp_path / f"dir\nimport pathlib; pathlib.Path('{MARKER}').touch()\n#"
    assert run("generate", "rms", "--layout", "NC", "--backend", "numpy", "-o", str(out)) == 0
    (path,) = out.glob("*.py")
    text = path.read_text()
    assert text.splitlines()[2].startswith("# DO NOT EDIT") and "\\x0aimport pathlib" in text.splitlines()[2]
    subprocess.run([sys.executable, "-c", f"import runpy; runpy.run_path({str(path)!r})"], cwd=tmp_path, check=True)
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("fmt", ["md", "html", "tex"])
def test_documents_carry_the_canonical_expression_only(tmp_path, fmt, capsys):
    spec = symbn.make(PAYLOAD, axes=(0,), param_axes=())
    from symbn.docgen import document as docs

    text, _ = docs.single(spec, fmt, None)
    assert MARKER not in text and "<script>" not in text and "/etc/passwd" not in text


# --- files: what symbn imports, caches and writes -----------------------------------------------------------------

def test_check_refuses_a_file_symbn_did_not_write_unless_trusted(tmp_path, capsys):
    script = tmp_path / "script.py"
    script.write_text(f"import pathlib\npathlib.Path({str(tmp_path / MARKER)!r}).touch()\n")
    assert run("check", str(script)) == 1
    err = capsys.readouterr().err
    assert "no symbn banner" in err and "--trust" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / MARKER).exists()
    assert run("check", "--trust", str(script)) == 1  # runs it, as asked, then says it is not a kernel module
    assert (tmp_path / MARKER).exists() and "not a module generated by symbn" in capsys.readouterr().err


@pytest.mark.parametrize("make_path", [
    lambda d: d / "missing.py",
    lambda d: d,
    lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt",
    lambda d: (d / "bad.py").write_text("def (") and d / "bad.py",
], ids=["missing", "folder", "not-python", "syntax-error"])
def test_check_says_what_is_wrong_with_a_path_in_one_line(tmp_path, capsys, make_path):
    assert run("check", "--trust", str(make_path(tmp_path))) == 1
    err = capsys.readouterr().err
    assert err.startswith("symbn: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("damage", [
    lambda t: t[: len(t) // 2],
    lambda t: "",
    lambda t: t.replace("EPS = 1e-05", "EPS = 1e-03"),
    lambda t: t + f"\nimport pathlib\npathlib.Path({MARKER!r}).touch()\n",
], ids=["truncated", "emptied", "edited", "appended"])
def test_load_regenerates_a_damaged_cached_module(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("SYMBN_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    spec = symbn.preset("rms", "NC", eps=2e-5)

    def forget():  # a new process, as far as the cache is concerned
        for key in [k for k in sys.modules if k.startswith("symbn_cache_rms_nc_eps2em05")]:
            del sys.modules[key]

    forget()
    path = Path(load(spec, "numpy").__file__)
    assert path.is_relative_to(tmp_path)
    good = path.read_text()
    path.write_text(damage(good))
    forget()
    again = load(spec, "numpy")
    assert path.read_text() == good and again.EPS == 2e-5 and not (tmp_path / MARKER).exists()


def test_load_says_which_cache_cannot_be_written(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SYMBN_CACHE", str(blocker / "cache"))
    with pytest.raises(OSError, match="SYMBN_CACHE"):
        load(symbn.preset("rms", "NC", eps=3e-5), "numpy")


def test_load_refuses_what_is_not_a_spec():
    with pytest.raises(TypeError, match="spec: expected a symbn.Spec"):
        load("batch")
    with pytest.raises(ValueError, match="backend"):
        load(symbn.preset("batch", "NC"), "cuda")


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "m.py"
        write_atomic(path, "a = 1\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o027)
        write_atomic(path, "a = 2\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    with pytest.raises(TypeError):
        write_atomic(tmp_path / "m.py", 12345)  # not text: the write fails after the temporary file exists
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["generate", "docs"])
def test_unwritable_targets_fail_in_one_line_before_anything_is_written(tmp_path, capsys, command):
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    args = ["generate", "rms", "--layout", "NC"] if command == "generate" else ["derive", "rms", "--layout", "NC",
                                                                                 "--format", "md"]
    assert run(*args, "-o", str(blocker / "sub")) == 1
    err = capsys.readouterr().err
    assert err.startswith("symbn: error: ") and "not a folder" in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "keep"


def test_a_folder_where_a_module_goes_is_refused_before_any_file_is_written(tmp_path, capsys):
    (tmp_path / "rms_nc_numba.py").mkdir()
    assert run("generate", "rms", "--layout", "NC", "-o", str(tmp_path)) == 1
    assert "is a folder" in capsys.readouterr().err
    assert not (tmp_path / "rms_nc_numpy.py").exists()  # numpy comes first: checked, not written


def test_overwrite_refuses_a_file_it_did_not_write(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("mine = 1\n")
    with pytest.raises(OverwriteError, match="no symbn banner"):
        write_modules([(path, "x = 1\n")])
    assert path.read_text() == "mine = 1\n"


def test_import_path_refuses_a_foreign_file_unless_trusted(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("value = 3\n")
    with pytest.raises(UntrustedError, match="no symbn banner"):
        import_path(path)
    assert import_path(path, trust=True).value == 3


# --- spec arguments ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, field", [
    (lambda: symbn.make(None), "what"),
    (lambda: symbn.make(3), "what"),
    (lambda: symbn.preset("batch", "NC", eps=10**400), "eps"),
    (lambda: symbn.preset("batch", "NC", eps=float("nan")), "eps"),
    (lambda: symbn.preset("batch", "NC", eps="1e-5"), "eps"),
    (lambda: symbn.preset("batch", "NC", momentum=complex(0.1)), "momentum"),
    (lambda: symbn.preset("batch", "NC", running=["pytorch"]), "running"),
    (lambda: symbn.preset("batch", "NC", ddof=1.0), "ddof"),
    (lambda: symbn.preset("batch", "NC", center=1), "center"),
    (lambda: symbn.preset(["batch"], "NC"), "preset"),
    (lambda: symbn.preset("batch", ["NC"]), "layout"),
    (lambda: symbn.make("gamma*x/sqrt(mean(x**2) + eps)", axes=(0,), param_axes=(1,), channel_axis="1"),
     "channel_axis"),
    (lambda: symbn.make("gamma*x/sqrt(mean(x**2) + eps)", axes=(1,), param_axes=(1,), groups=1, channel_axis="1"),
     "channel_axis"),
])
def test_wrong_types_name_the_argument(call, field):
    with pytest.raises(symbn.SpecError) as err:
        call()
    assert err.value.field == field and len(str(err.value)) < 300


@pytest.mark.parametrize("changes, field", [
    (dict(layout="NHWC"), "layout"),  # batch_nhwc is another spec: same name, other axes
    (dict(layout="NC"), "layout"),
    (dict(layout="XYZW"), "layout"),
    (dict(preset="layer"), "layout"),
    (dict(preset="magic"), "preset"),
    (dict(expression="gamma*x/sqrt(mean(x**2) + eps) + beta"), "preset"),
])
def test_with_options_cannot_make_a_spec_named_like_another(changes, field):
    with pytest.raises(symbn.SpecError) as err:
        symbn.preset("batch", "NCHW").with_options(**changes)
    assert err.value.field == field


def test_names_still_tell_specs_apart():
    nchw = symbn.preset("batch", "NCHW")
    assert nchw.with_options(layout=None).name != nchw.name
    assert nchw.with_options(eps=1).eps == 1.0 and nchw.with_options(eps=1).name == "batch_nchw_eps1"


@pytest.mark.parametrize("damage", ["index", "data", "both"])
def test_a_damaged_numba_cache_is_recompiled_not_fatal(tmp_path, damage):
    import shutil

    shutil.copy(GENERATED / "rms_nc_numba.py", tmp_path)
    script = ("import numpy as np, importlib.util\n"
              "s = importlib.util.spec_from_file_location('m', 'rms_nc_numba.py')\n"
              "m = importlib.util.module_from_spec(s); s.loader.exec_module(m)\n"
              "x = np.arange(20.0).reshape(4, 5)\n"
              "print(repr(float(m.forward_train(x, np.ones(5))[0].sum())))\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}

    def call():
        done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = call()
    cache = tmp_path / "__pycache__"
    files = list(cache.glob("*.nbi")) * (damage != "data") + list(cache.glob("*.nbc")) * (damage != "index")
    assert files
    for path in files:
        path.write_bytes(b"garbage")
    assert call() == first and call() == first


def test_derive_refuses_what_is_not_a_spec():
    with pytest.raises(TypeError, match="spec: expected a symbn.Spec"):
        symbn.derive("batch")


_TOKENS = st.sampled_from(["x", "gamma", "beta", "eps", "mean(", "sum(", "sqrt(", "log(", "abs(", "exp(", "(", ")",
                           "+", "-", "*", "/", "**", "^", "%", "#", '"""', "`", "\\", "\n", "0", "1", "2.5", "1e-5",
                           "1e309", "9**9**9", "__import__", ".", ",", " "])
_AXES = st.sampled_from(["0", "1", "0,1", "none", "-1", "9", "a", "", "0,0", "1,2,3"])


@settings(max_examples=60, deadline=None)
@given(expression=st.lists(_TOKENS, min_size=1, max_size=12).map("".join), axes=_AXES, params=_AXES,
       extra=st.sampled_from([[], ["--eps", "nan"], ["--eps", "-1"], ["--momentum", "2"], ["--groups", "0"],
                              ["--ndim", "0"], ["--ddof", "1"], ["--layout", "NCHW"], ["--like", "layer"]]))
def test_the_cli_answers_any_derive_in_one_line_or_a_derivation(expression, axes, params, extra):
    import contextlib
    import io

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = run("derive", expression, "--axes", axes, "--param-axes", params, *extra)
    assert code in (0, 2), (code, err.getvalue())
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue()
    if code == 0:
        assert "compact backward" in out.getvalue()
    else:
        last = err.getvalue().strip().splitlines()[-1]  # argparse prints its usage first
        assert last.startswith(("symbn: error: ", "symbn derive: error: ")), err.getvalue()
