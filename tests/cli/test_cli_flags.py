"""The command line speaks in flags: errors name what the user typed, every command explains itself, the cache
command shows and empties only what symbn.load wrote."""

from __future__ import annotations

import pytest

import symbn
from helpers import refused
from symbn import cli

CUSTOM = "gamma*x/sqrt(mean(x**2) + eps)"


def error_of(capsys, *argv: str) -> str:
    """The one stderr line of a refused command (exit code 2, nothing on stdout)."""
    err = refused(capsys, *argv)
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv, says, not_says", [
    (("derive", "group", "--layout", "NCHW"), "--groups: not given", "groups: got None"),
    (("derive", CUSTOM), "--axes: not given", "axes: got None"),
    (("derive", CUSTOM, "--axes", "1"), "--param-axes: not given", "param_axes"),
    (("derive", CUSTOM, "--axes", "0,5", "--param-axes", "1", "--ndim", "3"), "--axes: got (0, 5)", "reduce_axes"),
    (("derive", "x - mean(x)", "--axes", "0", "--param-axes", "none", "--channel-axis", "5"), "--channel-axis: got 5",
     "channel_axis"),
    (("derive", "batch", "--like", "layer"), "--like: got 'layer'", "like="),
    (("derive", "batch", "--momentum", "2"), "--momentum: got 2.0", "momentum: got"),
    # per-sample statistics: no running statistics to choose a convention or a momentum for
    (("derive", "layer", "--running", "keras"), "--running: got 'keras'; expected 'pytorch' (the default): layer norm "
     "keeps no running statistics", "running: got"),
    (("generate", "group", "--groups", "2", "--momentum", "0.5"), "--momentum: got 0.5; expected None (the default): "
     "group norm keeps no running statistics", "momentum: got"),
    (("derive", "batch", "--eps", "-1"), "--eps: got -1.0", "eps: got"),
    (("derive", "batch", "-o", "somewhere"), "-o/--output needs --format", None),
])
def test_errors_name_the_flag(capsys, argv, says, not_says):
    err = error_of(capsys, *argv)
    assert says in err
    if not_says:
        assert not_says not in err.replace(says, "")


def test_the_python_api_keeps_field_names():
    with pytest.raises(symbn.SpecError, match=r"^groups: "):
        symbn.preset("group", "NCHW")


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"symbn {symbn.__version__}\n"


@pytest.mark.parametrize("command", ["derive", "docs", "generate", "check", "list", "bench", "cache"])
def test_every_command_explains_itself_with_examples(capsys, command):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    if command == "derive":
        assert "NC for batch, layer and rms; NCHW for instance and group" in " ".join(out.split())
    if command == "generate":
        assert "--backend" in out
    if command == "check":
        assert "PATH" in out and "--trust" in out


def test_a_named_document_is_written_under_that_name(capsys, tmp_path):
    assert cli.main(["derive", CUSTOM, "--axes", "1", "--param-axes", "1", "--format", "md", "-o", str(tmp_path),
                     "--name", "my_rms", "--quiet"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["my_rms.md"]
    capsys.readouterr()


@pytest.mark.parametrize("name", ["a/b", ".hidden", "my.md", "../up"])
def test_a_document_name_is_a_plain_file_name(capsys, tmp_path, name):
    err = error_of(capsys, "derive", "batch", "--format", "md", "-o", str(tmp_path), "--name", name)
    assert "--name" in err
    assert list(tmp_path.iterdir()) == []


def cache(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["cache", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cache_shows_and_clears_what_load_wrote(capsys, tmp_path, monkeypatch):
    folder = tmp_path / "c"
    monkeypatch.setenv("SYMBN_CACHE", str(folder))
    code, out, _ = cache(capsys)
    assert code == 0 and str(folder) in out
    assert cache(capsys, "clear")[0] == 0  # no folder yet: nothing to remove
    module = symbn.load(symbn.preset("rms", "NC"), "numpy")
    code, out, _ = cache(capsys, "info")
    assert code == 0 and "1 in 1" in " ".join(out.split())
    code, out, _ = cache(capsys, "clear")
    assert code == 0 and "rms_nc_numpy.py" in out
    assert not any(p.suffix == ".py" for p in folder.rglob("*"))
    assert module.__file__  # the imported module is unaffected


def test_cache_clear_refuses_a_folder_symbn_did_not_fill(capsys, tmp_path, monkeypatch):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    monkeypatch.setenv("SYMBN_CACHE", str(folder))
    code, _, err = cache(capsys, "clear")
    assert code == 1 and "notes.txt" in err
    assert (folder / "notes.txt").read_text() == "mine"


def test_cache_clear_refuses_an_edited_module(capsys, tmp_path, monkeypatch):
    folder = tmp_path / "c"
    monkeypatch.setenv("SYMBN_CACHE", str(folder))
    # not a spec loaded earlier in this process: symbn.load hands that one back from sys.modules
    path = symbn.load(symbn.preset("layer", "NC"), "numpy").__file__
    assert path.startswith(str(folder))
    with open(path, "a") as f:
        f.write("# mine\n")
    code, _, err = cache(capsys, "clear")
    assert code == 1 and "edited" in err
    assert open(path).read().endswith("# mine\n")
