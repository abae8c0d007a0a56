"""The ``symbn`` command line: derive output, list, usage errors, --prove and the installed console script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import refused
from symbn import cli

BATCH_DX = "dx = gamma*istd*(M*dy - sum_dy - sum_dy_xhat*xhat)/M"


def run(capsys, *argv: str) -> str:
    assert cli.main(list(argv)) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


fails = refused


def section(out: str, title: str) -> list[str]:
    """The lines of one block of the report (from its title line to the next blank line)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    block = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        block.append(line.strip())
    return block


def compact(out: str) -> dict[str, str]:
    return dict(line.split(" = ", 1) for line in section(out, "compact backward"))


# --- derive ----------------------------------------------------------------------------------------------------


def test_derive_batch_nchw(capsys):
    out = run(capsys, "derive", "batch", "--layout", "NCHW")
    forward = section(out, "forward graph")
    # Batch norm, one node per operation: mu, x - mu, its square, the variance, sqrt(var + eps), 1/std,
    # the normalized x, the scale and the shift.
    assert len(forward) == 9
    numbers = [int(line.split(".", 1)[0]) for line in forward]
    assert numbers == list(range(1, 10))
    names = [line.split(".", 1)[1].split("=", 1)[0].strip() for line in forward]
    assert names == ["mu", "xc", "sq", "var", "std", "istd", "xhat", "scaled", "y"]
    kinds = [re.search(r"\s(per element|per statistic|statistic)$", line).group(1) for line in forward]
    assert kinds == ["statistic", "per element", "per element", "statistic", "per statistic", "per statistic",
                     "per element", "per element", "per element"]
    assert "eps" in forward[4] and "sqrt" in forward[4]
    assert BATCH_DX in section(out, "compact backward")
    # Statistics over N, H, W; parameters per channel.
    assert "reduce axes (0, 2, 3)" in out
    assert "M = N*H*W" in out
    assert "over axes (1,) (C)" in out


def test_derive_batch_staged_backward_has_nine_steps(capsys):
    out = run(capsys, "derive", "batch", "--layout", "NCHW")
    steps = [line for line in section(out, "staged backward") if re.match(r"\d+\. ", line)]
    assert [int(s.split(".")[0]) for s in steps] == list(range(9, 0, -1))


def test_derive_group_norm(capsys):
    out = run(capsys, "derive", "group", "--groups", "4", "--layout", "NCHW")
    c = compact(out)
    assert "dx" in c and "dgamma" in c and "dbeta" in c
    # gamma is per channel and a group holds several channels, so gamma varies inside a statistic's set and cannot
    # be pulled out of the sums: the reductions are of dy*gamma and dy*gamma*xhat.
    assert c["sum_dy_gamma"] == "sum(dy*gamma)"
    assert c["sum_dy_gamma_xhat"] == "sum(dy*gamma*xhat)"
    assert "sum_dy_gamma" in c["dx"] and "istd" in c["dx"]
    assert "G=4" in out and "M = (C/4)*H*W" in out


def test_derive_rms_nc(capsys):
    out = run(capsys, "derive", "rms", "--layout", "NC")
    c = compact(out)
    assert "dx" in c and "dgamma" in c
    assert "dbeta" not in c  # RMS norm has no shift
    # No centring: no plain sum(dy) term, only the projection on xhat.
    assert not any(v == "sum(dy)" or v == "sum(dy*gamma)" for v in c.values())
    assert "xhat" in c["dx"] and "irms" in c["dx"]


@pytest.mark.parametrize("argv", [("layer", "--layout", "NCHW"), ("group", "--groups", "4"), ("instance",), ("rms",)])
def test_derive_per_sample_norms_print_eval_mode_as_training(capsys, argv):
    out = run(capsys, "derive", *argv)
    assert "eval mode: the input's own statistics, as in training (no running statistics: " in out
    assert "statistics do not span the batch axis 0)" in out
    assert "no running statistics" in out.split("\n\n")[0]  # the options line of the spec
    assert "eval-mode backward" not in out and "running statistics (" not in out and "momentum" not in out


def test_derive_custom_expression_with_explicit_axes(capsys):
    out = run(capsys, "derive", "gamma*x/sqrt(mean(x**2) + eps)", "--axes", "0,2", "--param-axes", "1")
    c = compact(out)
    assert "dx" in c and "dgamma" in c
    assert "3-D" in out and "reduce axes (0, 2)" in out
    # gamma is constant over each set here (axis 1 is not reduced), so the sums are of dy*xhat without gamma.
    assert "gamma" not in "".join(v for k, v in c.items() if k.startswith("sum_"))
    assert "gamma" in c["dx"]


def test_derive_custom_expression_like_layer_ddof1(capsys):
    out = run(capsys, "derive", "gamma*(x - mean(x))/(sqrt(mean((x - mean(x))**2)) + eps) + beta",
              "--like", "layer", "--layout", "NC", "--ddof", "1")
    c = compact(out)
    assert "dx" in c
    assert "M - 1" in c["dx"]  # the unbiased variance divides by M - 1
    assert "ddof=1" in out and "reduce axes (1,)" in out


def test_derive_same_spec_same_output(capsys):
    first = run(capsys, "derive", "layer", "--layout", "NCL")
    second = run(capsys, "derive", "layer", "--layout", "NCL")
    assert first == second


def test_options_show_in_the_report(capsys):
    out = run(capsys, "derive", "batch", "--layout", "NC", "--running", "keras", "--eps", "0.001", "--no-center")
    assert "running=keras (momentum 0.99)" in out  # the Keras default momentum
    assert "eps=0.001" in out
    assert "dbeta" not in compact(out)


def test_prove_prints_three_proofs(capsys):
    out = run(capsys, "derive", "batch", "--layout", "NC", "--prove")
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("proof"))
    proofs = [line for line in lines[start + 1:] if line.strip()]
    assert len(proofs) == 3
    for m, line in zip((2, 3, 4), proofs):
        assert f"(M={m})" in line
        assert "compact dx" in line and "staged dx" in line
        assert "brute-force Jacobian exactly" in line


# --- list ------------------------------------------------------------------------------------------------------


def test_list(capsys):
    out = run(capsys, "list")
    lines = [line.strip() for line in out.splitlines()]
    for preset in ("batch", "layer", "instance", "group", "rms"):
        assert any(line.split()[:1] == [preset] for line in lines if line), preset
    for layout in ("NC", "NCL", "NCHW", "NHWC", "NCDHW"):
        assert any(line.split()[:1] == [layout] for line in lines if line), layout
    nhwc = next(line for line in lines if line.startswith("NHWC"))
    assert "channel 3" in nhwc  # channels last
    assert "--groups" in out  # group norm says it needs G


# --- usage errors ----------------------------------------------------------------------------------------------


def test_unknown_preset(capsys):
    err = fails(capsys, "derive", "batchnorm", "--layout", "NCHW")
    assert "preset" in err and "'batchnorm'" in err
    assert "Traceback" not in err


def test_bad_axes_text(capsys):
    err = fails(capsys, "derive", "gamma*x/sqrt(mean(x**2) + eps)", "--axes", "0,a", "--param-axes", "1")
    assert "--axes" in err and "0,a" in err


def test_group_without_groups(capsys):
    err = fails(capsys, "derive", "group", "--layout", "NCHW")
    assert "groups" in err


def test_groups_on_batch(capsys):
    err = fails(capsys, "derive", "batch", "--layout", "NCHW", "--groups", "2")
    assert "groups" in err and "2" in err


def test_unknown_layout(capsys):
    err = fails(capsys, "derive", "batch", "--layout", "NHCW")
    assert "--layout" in err and "NHCW" in err


def test_axes_out_of_range(capsys):
    err = fails(capsys, "derive", "gamma*x/sqrt(mean(x**2) + eps)", "--axes", "0,5", "--param-axes", "1", "--ndim", "3")
    assert "--axes" in err and "(0, 5)" in err and "reduce_axes" not in err  # the flag, not the Python field


def test_custom_expression_without_axes(capsys):
    err = fails(capsys, "derive", "x/sqrt(mean(x**2) + eps)")
    assert "axes" in err


def test_expression_outside_whitelist(capsys):
    err = fails(capsys, "derive", "x/sqrt(mean(x**2) + y)", "--axes", "1", "--param-axes", "1")
    assert "'y'" in err and "Allowed" in err


def test_not_a_normalization(capsys):
    err = fails(capsys, "derive", "gamma*x + beta", "--axes", "1", "--param-axes", "1")
    assert "mean() or sum()" in err


def test_missing_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2


# --- console script --------------------------------------------------------------------------------------------


def test_console_script_list():
    script = Path(sys.executable).parent / "symbn"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    result = subprocess.run([str(script), "list"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "presets" in result.stdout and "NCHW" in result.stdout


def test_console_script_usage_error():
    script = Path(sys.executable).parent / "symbn"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    result = subprocess.run([str(script), "derive", "group", "--layout", "NCHW"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "groups" in result.stderr and result.stdout == ""


# --- epilogues -------------------------------------------------------------------------------------------------


def test_derive_an_epilogue_shows_it_and_the_normalization_on_its_gradient(capsys):
    out = run(capsys, "derive", "batch", "--layout", "NCHW", "--epilogue", "add_relu")
    assert section(out, "epilogue (after")[0] == "y = Max(0, r + z)"
    assert section(out, "epilogue backward")[:2] == ["dz = dy*Heaviside(r + z)", "dr = dy*Heaviside(r + z)"]
    assert compact(out)["dx"] == "gamma*istd*(M*dz - sum_dz - sum_dz_xhat*xhat)/M"
    assert section(out, "forward graph")[-1].split()[1] == "z"


def test_an_epilogue_is_generated_and_documented(capsys, tmp_path):
    cli.main(["generate", "batch", "--epilogue", "add_relu", "--backend", "numpy", "-o", str(tmp_path / "out")])
    capsys.readouterr()
    (path,) = (tmp_path / "out").glob("*.py")
    assert path.name == "batch_nc_add_relu_numpy.py"
    text = path.read_text()
    assert "def forward_train(x, r, gamma, beta," in text and "-> (dx, dr, dgamma, dbeta)" in text
    assert "def double_backward(ggx, ggr, gggamma, ggbeta, dy, x, r, gamma, beta," in text
    assert cli.main(["derive", "batch", "--epilogue", "relu", "--format", "md", "-o", str(tmp_path / "docs")]) == 0
    doc = (tmp_path / "docs" / "batch_nc_relu.md").read_text()
    assert "# Batch norm, NC, then relu" in doc and "- **epilogue**: $y = " in doc
    assert "\\overline{\\mathrm{d}y} = " in doc and "gbeta = 0" in doc  # the second order's join, and its proof


def test_an_epilogue_on_an_expression_is_refused_as_a_flag(capsys):
    err = fails(capsys, "derive", "relu(x - mean(x))", "--axes", "0", "--param-axes", "none", "--epilogue", "relu")
    assert err.startswith("symbn: error: --epilogue: got 'relu'; expected") and "writes its epilogue" in err
