"""The benchmark harness: the smoke run end to end, the naive staged baseline against the generated kernels, and
usage errors. Nothing here is timed: speed is what ``symbn bench`` measures, never what a test asserts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import have, rel_err as rel
from symbn import cli
from symbn.bench import harness as bench
from symbn.codegen.check import parameter_names

TOL = {"float64": 1e-10, "float32": 1e-4}


@pytest.mark.parametrize("dtype", bench.DTYPES)
@pytest.mark.parametrize("backend", ("numpy", "numba"))
@pytest.mark.parametrize("case", [c for c in bench.CASES if not c.epilogue],  # the staged form has none
                         ids=[c.name for c in bench.CASES if not c.epilogue])
def test_staged_baseline_agrees_with_the_generated_kernels(case, backend, dtype):
    spec = case.spec
    module = bench.load_module(spec, backend)
    data = bench.make_data(spec, case.smoke_shape, np.dtype(dtype), module, seed=3)
    names = parameter_names(module)
    params = [data[p] for p in names]
    staged = bench.Staged(spec)
    assert [p for p in ("gamma", "beta") if (p == "gamma" and staged.has_gamma) or
            (p == "beta" and staged.has_beta)] == names

    y, *saved = module.forward_train(data["x"], *params)
    y_ref, cache = staged.forward_train(data["x"], **dict(zip(names, params)))
    assert y_ref.dtype == np.dtype(dtype)
    assert rel(y, y_ref) < TOL[dtype]

    grads = module.backward(data["dy"], data["x"], *params[:1], *saved)
    grads_ref = staged.backward(data["dy"], cache)
    assert len(grads) == len(grads_ref) == 1 + len(names)
    for what, g, g_ref in zip(["dx"] + [f"d{p}" for p in names], grads, grads_ref):
        assert g.shape == g_ref.shape, what
        assert rel(g, g_ref) < TOL[dtype], what

    assert bool(module.RUNNING) == spec.tracks_running
    if module.RUNNING:
        running = [r + 0.25 for r in data["running"]]  # not the trivial 0/1 start
        y_eval = module.forward_eval(data["x"], *params, *running)
        assert rel(y_eval, staged.forward_eval(data["x"], **dict(zip(names, params)), running=running)) < TOL[dtype]
    else:  # eval mode is the training computation: the input's own statistics
        assert data["running"] == []
        assert rel(module.forward_eval(data["x"], *params), y_ref) < TOL[dtype]


def test_staged_baseline_updates_running_statistics_like_the_module():
    case = next(c for c in bench.CASES if c.name == "batch_nchw")
    module = bench.load_module(case.spec, "numpy")
    data = bench.make_data(case.spec, case.smoke_shape, np.dtype("float64"), module)
    mine = [r.copy() for r in data["running"]]
    theirs = [r.copy() for r in data["running"]]
    bench.Staged(case.spec).forward_train(data["x"], data["gamma"], data["beta"], running=mine)
    module.forward_train(data["x"], data["gamma"], data["beta"], *theirs)
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.torch(optional=True)  # torch's column and speedups where it is installed
@pytest.mark.matplotlib(optional=True)  # the chart where it is installed
def test_smoke_run_writes_table_json_and_chart(tmp_path, capsys):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "chart.png"
    plot = have("matplotlib")
    assert cli.main(["bench", "--smoke", "--json", str(out_json), "--plot", str(out_png) if plot else "none"]) == 0
    text = capsys.readouterr().out
    for case in bench.CASES:
        assert case.name in text
    assert "bandwidth" in text and "numba f+b" in text

    result = json.loads(out_json.read_text())
    assert {"format", "machine", "settings", "bandwidth", "results", "command"} <= set(result)
    assert result["settings"]["smoke"] and result["settings"]["repeat"] == 1
    assert result["bandwidth"]["bound_gbps"] > 0
    impls = set(bench.IMPLS) if have("torch") else set(bench.IMPLS) - {"torch"}
    rows = result["results"]
    # every pass of every implementation, except the second order of the naive formula, which has none, and for a
    # fused epilogue the naive formula, which has no epilogue
    assert {(r["case"], r["dtype"], r["pass"], r["impl"]) for r in rows} == {
        (c.name, d, p, i) for c in bench.CASES for d in bench.DTYPES for p in bench.PASSES for i in impls
        if (p, i) != ("double-backward", "naive-numpy") and not (c.epilogue and i == "naive-numpy")}
    for r in rows:
        assert r["min_s"] <= r["median_s"] <= r["max_s"] and len(r["times_s"]) == 1
        assert r["gbps"] > 0 and r["fraction_of_bound"] > 0 and r["first_call_s"] > 0
        # the fraction is of the bound measured right before the row's case, one per case and dtype
        assert r["fraction_of_bound"] == pytest.approx(r["gbps"] / r["bound_gbps"])
        assert r["max_rel_diff_vs_naive"] < TOL[r["dtype"]] * 10, r
        if "torch" in impls:
            assert r["speedup_vs_torch"]["min"] <= r["speedup_vs_torch"]["median"] <= r["speedup_vs_torch"]["max"]
        if r["impl"] == "symbn-numba":
            assert {"compiled", "loaded_from_cache"} <= set(r["jit"])
    bounds = {(r["case"], r["dtype"]): r["bound_gbps"] for r in rows}
    assert all(r["bound_gbps"] == bounds[r["case"], r["dtype"]] for r in rows)
    assert all(f"bound {b:.1f} GB/s" in text for b in bounds.values())
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" if plot else not out_png.exists()


@pytest.mark.parametrize("argv, message", [
    (["--cases", "batch_nchw,nosuch"], "'nosuch' matches no case"),
    (["--dtypes", "float16"], "'float16' is not supported"),
    (["--threads", "0"], "--threads: expected 1 to"),
    (["--repeat", "0"], "--repeat: expected at least 1"),
])
def test_bad_bench_arguments_fail_clearly(argv, message, tmp_path, capsys):
    # --smoke: should a check ever slip, the test runs the tiny benchmark and fails, rather than the full one
    assert cli.main(["bench", "--smoke", "--json", str(tmp_path / "b.json"), "--plot", "none", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("symbn: error: ") and message in captured.err
    assert not (tmp_path / "b.json").exists()


def test_case_selection_by_substring():
    assert [c.name for c in bench.select(["batch_nchw"])] == ["batch_nchw", "batch_nchw_large", "batch_nchw_add_relu"]
    assert [c.name for c in bench.select(["rms", "layer"])] == ["layer_nc", "rms_nc"]
    assert len(bench.select(None)) == len(bench.CASES)


def test_every_timed_run_starts_after_a_cache_flush():
    calls = []
    rows = bench.measure_case(bench.CASES[0], "float64", repeat=2, smoke=True, bound=1.0, torch=None,
                              cold=lambda: calls.append(1))
    timed = sum(len(row["times_s"]) for row in rows)
    # four implementations without torch, three for the second order (the naive formula has none)
    assert timed == 2 * (4 * len(bench.PASSES) - 1) and len(calls) == timed


@pytest.mark.parametrize("text, size", [("32768K", 32 * 2**20), ("1M", 2**20), ("512", 512), ("1G\n", 2**30)])
def test_sysfs_cache_sizes_parse(text, size):
    assert bench.bandwidth._size(text) == size


def test_cold_cache_buffer_is_twice_the_last_level_cache():
    assert bench.bandwidth.ColdCache().buffer.nbytes == 2 * bench.bandwidth.last_level_cache_bytes()


def test_each_case_is_measured_against_the_bound_taken_right_before_it(monkeypatch):
    # the streaming rate of a shared VM moves by 2x within minutes: a row's fraction is of its own case's bound
    taken = []

    def measure(threads, mib=256, repeat=5):
        taken.append(float(len(taken) + 1))
        return {"array_mib": mib, "repeat": repeat, "sum_1t_gbps": taken[-1], "bound_gbps": taken[-1]}

    monkeypatch.setattr(bench.bandwidth, "measure", measure)
    result = bench.run(cases=["small_4x5"], dtypes=("float32", "float64"), smoke=True)
    assert result["bandwidth"]["bound_gbps"] == 1.0  # the run's first measurement, kept for the header
    for r in result["results"]:
        assert r["bound_gbps"] == {"float32": 2.0, "float64": 3.0}[r["dtype"]]
        assert r["fraction_of_bound"] == pytest.approx(r["gbps"] / r["bound_gbps"])
    assert taken == [1.0, 2.0, 3.0]


def test_the_committed_run_agrees_with_its_json_and_the_docs():
    # docs/bench/bench.txt is the terminal output of the run that wrote bench.json; the summary in docs/bench/README.md
    # is copied from it: regenerating the tables from the JSON file must give the same text
    from pathlib import Path

    from symbn.bench import report

    docs = Path(__file__).resolve().parents[2] / "docs" / "bench"
    result = report.read_json(docs / "bench.json")
    text = (docs / "bench.txt").read_text()
    summary = report.summary_table(result)
    assert report.header(result) in text and report.detail_table(result) in text and summary in text
    table = summary[summary.index("case "):summary.index("times are medians")]
    assert table in (docs / "README.md").read_text()
