"""Every generated kernel, proven numerically: central differences, Taylor test, backend agreement, invariants."""

import ast
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from helpers import BACKENDS, GENERATED, ROOT, catalogue_module, catalogue_or_cached
from symbn import load, preset
from symbn.codegen import catalogue as catalog
from symbn.codegen import check as checks
from symbn.codegen.module import module_text
from symbn.codegen.store import stale

ENTRIES = [(spec, backend) for spec in catalog.CATALOG for backend in BACKENDS]
IDS = [f"{spec.name}-{backend}" for spec, backend in ENTRIES]


def module(spec, backend):
    return catalogue_module(spec.name, backend)


def params_of(m, data):
    return [data[p] for p in checks.parameter_names(m)]


def test_generated_folder_is_fresh():
    diffs = stale(GENERATED)
    assert not diffs, "generated/ is stale; run `symbn generate --catalog`:\n" + "".join(diffs)[:4000]


def test_the_input_hash_covers_every_module_the_generator_imports():
    """symbn.reductions (imported by generate) was once missing from a hand-kept list, so a change to it left
    generated/ looking fresh and let symbn.load reuse stale cached modules."""
    from symbn.codegen.key import _generator_source

    source = _generator_source()
    package = ROOT / "symbn"
    for name in ("codegen/module", "codegen/reductions", "core/expr", "codegen/backends/numpy", "codegen/elementwise",
                 "core/derive"):
        assert (package / f"{name}.py").read_text() in source, name
    assert (package / "bench/harness.py").read_text() not in source  # not a generator module: editing it changes no hash


def test_the_input_hash_covers_every_kernel_template_a_module_includes():
    """templates/kernels/double_numba.py.j2 was once left out of a hand-kept list: editing it left symbn.load's
    cached modules looking fresh."""
    import re

    from symbn.codegen.key import _kernel_templates

    hashed = "\n".join(_kernel_templates())
    folder = ROOT / "templates" / "kernels"
    included = {"module.py.j2"} | {name for f in folder.glob("*.j2")
                                   for name in re.findall(r'include "kernels/([^"]+)"', f.read_text())}
    included |= {f"{b}.py.j2" for b in ("numpy", "numba")}  # included by name through backend_template
    for name in sorted(included):
        assert (folder / name).read_text() in hashed, name


def test_generation_is_deterministic_across_hash_seeds():
    script = ("from symbn.codegen import catalogue as catalog; from symbn.codegen.module import module_text; "
              "import sys; sys.stdout.write(''.join(module_text(s, b) for s in catalog.CATALOG[5:8] "
              "for b in ('numpy', 'numba')))")
    texts = {subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONHASHSEED=seed),
                            capture_output=True, text=True, check=True).stdout for seed in ("0", "7")}
    assert len(texts) == 1


@pytest.mark.parametrize("spec, backend", ENTRIES, ids=IDS)
def test_finite_differences_taylor_and_invariants(spec, backend):
    results = checks.run(module(spec, backend))
    assert all(r.ok for r in results), "\n".join(map(str, results))
    names = [r.name for r in results]
    assert "Taylor test slope" in names
    if spec.preset != "rms":  # mean-centring: sum(dx) = 0 over each reduction set must have been checked
        assert "sum(dx) over each reduction set" in names


@pytest.mark.parametrize("key", sorted(catalog.custom_specs()))
@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_expressions_generate_correct_kernels(key, backend):
    results = checks.run(load(catalog.custom_specs()[key], backend))
    assert all(r.ok for r in results), "\n".join(map(str, results))


AGREE = {**{spec.name: spec for spec in catalog.CATALOG}, **catalog.custom_specs()}


@pytest.mark.parametrize("spec", list(AGREE.values()), ids=list(AGREE))
def test_numpy_and_numba_agree(spec):
    """Every entry point of the two backends, on the catalogue and on the custom expressions (generated on the fly:
    their block structures differ, e.g. a kept innermost axis that is not the only kept one)."""
    a, b = (catalogue_or_cached(spec, backend) for backend in BACKENDS)
    data = checks.inputs(a, seed=3)
    outs = []
    assert a.RUNNING == b.RUNNING and bool(a.RUNNING) == spec.tracks_running
    for m in (a, b):
        running = [np.full(s, v) for s, v in zip([m._stat_shape(m._sizes(data["x"]))] * len(m.RUNNING),
                                                 np.linspace(0.5, 1.5, len(m.RUNNING)))]
        y, *saved = m.forward_train(data["x"], *params_of(m, data), *running)
        gamma = [data["gamma"]] if "gamma" in data else []
        grads = m.backward(data["dy"], data["x"], *gamma, *saved)
        y_eval = m.forward_eval(data["x"], *params_of(m, data), *running)
        # eval mode's own backward where running statistics are kept; elsewhere eval mode is training's
        grads_eval = m.backward_eval(data["dy"], data["x"], *gamma, *running) if m.RUNNING else []
        outs.append([y, *saved, *grads, *running, y_eval, *grads_eval])
    for u, v in zip(*outs):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("spec", [s for s in catalog.CATALOG if s.preset in ("layer", "rms")], ids=lambda s: s.name)
def test_parameter_gradients_over_many_statistics_per_chunk(spec):
    """The Numba kernels add parameter gradients up in the input's dtype over blocks of 16 statistics per chunk, then
    in float64; the small inputs elsewhere give each chunk one or two statistics. Here every chunk holds 40 or more
    (the kernels make up to 8 chunks per thread), in float64 against the NumPy backend and in float32 against
    float64."""
    import numba

    a, b = module(spec, "numpy"), module(spec, "numba")
    rng = np.random.default_rng(4)
    shape = (40 * 8 * numba.get_num_threads() + 7,) + tuple(3 + i for i in range(spec.ndim - 1))
    x, dy = rng.normal(1.0, 2.0, size=shape), rng.normal(size=shape)
    data = {"x": x, "gamma": rng.normal(size=[shape[i] for i in a.PARAM_AXES])}
    data["beta"] = rng.normal(size=data["gamma"].shape)
    params = params_of(a, data)
    grads = [m.backward(dy, x, data["gamma"], *m.forward_train(x, *params)[1:]) for m in (a, b)]
    for u, v in zip(*grads, strict=True):
        np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-12)
    x32, dy32 = x.astype(np.float32), dy.astype(np.float32)
    grads32 = b.backward(dy32, x32, data["gamma"], *b.forward_train(x32, *params)[1:])
    for u, v in zip(grads[0][1:], grads32[1:], strict=True):
        np.testing.assert_allclose(v, u, rtol=1e-5, atol=1e-5 * np.max(np.abs(u)))


def test_column_kernels_with_many_columns_take_rows_in_fours():
    """Column kernels (statistics along the contiguous axis) keep their float64 accumulators in arrays of their own
    while those fit in L1 (C * sums <= 2048), else take rows in fours with a tail; the other tests' inputs are
    narrow. 1100 columns, and 5 or 6 rows per chunk (the kernels make 4 chunks per thread), take the second loop
    nest and its tail."""
    import numba

    spec = next(s for s in catalog.CATALOG if s.name == "batch_nc")
    a, b = module(spec, "numpy"), module(spec, "numba")
    rng = np.random.default_rng(6)
    shape = (20 * numba.get_num_threads() + 3, 1100)
    x, dy = rng.normal(3.0, 2.0, size=shape), rng.normal(size=shape)
    gamma, beta = rng.normal(size=1100), rng.normal(size=1100)
    running = [rng.normal(size=1100), rng.uniform(0.5, 1.5, size=1100)]
    outs = []
    assert a.RUNNING and b.RUNNING
    for m in (a, b):
        y, *saved = m.forward_train(x, gamma, beta)
        outs.append([y, *saved, *m.backward(dy, x, gamma, *saved), m.forward_eval(x, gamma, beta, *running),
                     *m.backward_eval(dy, x, gamma, *running)])
    for u, v in zip(*outs, strict=True):
        np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-12)


RUNNING_ENTRIES = [(spec, backend) for spec, backend in ENTRIES if spec.tracks_running]
PER_SAMPLE_ENTRIES = [(spec, backend) for spec, backend in ENTRIES if not spec.tracks_running]


def test_every_batch_norm_and_nothing_else_keeps_running_statistics():
    assert {spec.preset for spec, _ in RUNNING_ENTRIES} == {"batch"}
    assert {spec.preset for spec, _ in PER_SAMPLE_ENTRIES} == {"layer", "instance", "group", "rms"}
    for spec, backend in ENTRIES:
        assert bool(module(spec, backend).RUNNING) == spec.tracks_running


@pytest.mark.parametrize("spec, backend", PER_SAMPLE_ENTRIES, ids=[f"{s.name}-{b}" for s, b in PER_SAMPLE_ENTRIES])
def test_per_sample_modules_evaluate_with_the_inputs_own_statistics(spec, backend):
    """No running statistics where every sample has its own: no update_running, backward_eval or MOMENTUM, no running
    or momentum arguments, and forward_eval is forward_train's y (also with out=, and in float32)."""
    import inspect

    m = module(spec, backend)
    assert m.RUNNING == ()
    for name in ("backward_eval", "update_running", "MOMENTUM", "_backward_eval", "_momentum", "_running"):
        assert not hasattr(m, name), name
    names = checks.parameter_names(m)
    assert list(inspect.signature(m.forward_train).parameters) == ["x", *names, "eps", "out"]
    assert list(inspect.signature(m.forward_eval).parameters) == ["x", *names, "eps", "out"]
    assert "no running statistics" in m.__doc__.lower() and "backward_eval" in m.__doc__
    for dtype in (np.float64, np.float32):
        data = checks.inputs(m, seed=6, dtype=dtype)
        params = params_of(m, data)
        y, *saved = m.forward_train(data["x"], *params, eps=1e-3)
        np.testing.assert_array_equal(m.forward_eval(data["x"], *params, eps=1e-3), y)
        out = np.full_like(data["x"], np.nan)
        assert m.forward_eval(data["x"], *params, eps=1e-3, out=out) is out
        np.testing.assert_array_equal(out, y)
    # another batch size changes nothing for the samples both batches hold: the statistics are per sample
    data = checks.inputs(m, seed=7)
    params = params_of(m, data)
    np.testing.assert_array_equal(m.forward_eval(data["x"][:1], *params), m.forward_eval(data["x"], *params)[:1])


@pytest.mark.parametrize("spec, backend", RUNNING_ENTRIES, ids=[f"{s.name}-{b}" for s, b in RUNNING_ENTRIES])
def test_eval_mode_backward_matches_central_differences(spec, backend):
    m = module(spec, backend)
    data = checks.inputs(m, seed=5)
    stat_shape = m._stat_shape(m._sizes(data["x"]))
    rng = np.random.default_rng(1)
    running = [rng.uniform(0.5, 1.5, stat_shape) if i else rng.normal(size=stat_shape)
               for i in range(len(m.RUNNING))]
    names = checks.parameter_names(m)

    def loss(values):
        return float(np.sum(data["dy"] * m.forward_eval(values["x"], *[values[p] for p in names], *running)))

    gamma = [data["gamma"]] if "gamma" in data else []
    grads = dict(zip(["x"] + names, m.backward_eval(data["dy"], data["x"], *gamma, *running)))
    h = 1e-6
    for wrt, grad in grads.items():
        numeric = np.zeros_like(grad)
        for i in range(grad.size):
            plus, minus = data[wrt].copy(), data[wrt].copy()
            plus.reshape(-1)[i] += h
            minus.reshape(-1)[i] -= h
            numeric.reshape(-1)[i] = (loss({**data, wrt: plus}) - loss({**data, wrt: minus})) / (2 * h)
        assert checks.relative_error(grad, numeric) <= 1e-7, wrt


@pytest.mark.parametrize("offset", (1e3, 1e6))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", [s for s in catalog.CATALOG if s.preset != "rms"], ids=lambda s: s.name)
def test_float32_variance_survives_a_large_mean(spec, backend, offset):
    """offset + randn in float32 normalizes to within 1e-5 of float64 arithmetic on the same float32 values (the
    kernels sum powers of x minus a value of the set, or take the variance around the finished mean);
    E[x^2] - E[x]^2 would lose every digit here. The backward stays within 2e-6 of float64 whatever the offset: the
    saved statistics are float64 (saved in float32, a mean near 1e6 was off by 0.03, and dx by 5e-3)."""
    m = module(spec, backend)
    rng = np.random.default_rng(0)
    data = checks.inputs(m, seed=0)
    x32 = (offset + rng.normal(size=data["x"].shape)).astype(np.float32)
    params = params_of(m, data)
    y32, *saved32 = m.forward_train(x32, *params)
    y64, *_ = m.forward_train(x32.astype(np.float64), *params)
    assert y32.dtype == np.float32 and all(s.dtype == np.float64 for s in saved32)
    assert np.max(np.abs(y32 - y64)) <= 1e-5 * max(1.0, np.max(np.abs(y64)))
    grads32 = m.backward(data["dy"].astype(np.float32), x32, *params[:1], *saved32)
    assert all(g.dtype == np.float32 for g in grads32)
    x64 = x32.astype(np.float64)
    grads64 = m.backward(data["dy"], x64, *params[:1], *m.forward_train(x64, *params)[1:])
    for g32, g64 in zip(grads32, grads64):
        assert np.max(np.abs(g32 - g64)) <= 2e-6 * max(1.0, np.max(np.abs(g64)))


def test_keras_running_statistics_convention():
    spec = preset("batch", "NC", running="keras")  # momentum defaults to 0.99 for this convention
    m = load(spec, "numpy")
    rng = np.random.default_rng(2)
    x = rng.normal(2.0, 3.0, size=(16, 5))
    r_mu, r_var = np.zeros(5), np.ones(5)
    m.forward_train(x, np.ones(5), np.zeros(5), r_mu, r_var)
    np.testing.assert_allclose(r_mu, 0.99 * 0 + 0.01 * x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(r_var, 0.99 * 1 + 0.01 * x.var(axis=0), rtol=1e-12)  # biased, uncorrected


def test_generated_modules_need_only_numpy_and_numba():
    for path in sorted(GENERATED.glob("*.py")):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add((node.module or "").split(".")[0])
        assert imported <= {"numpy", "numba", "math", "sys", "threading", "types", "weakref"}, (path.name, imported)
    # and they run where symbn cannot be imported at all
    script = ("import sys; sys.modules['symbn'] = None; import importlib.util, numpy as np; "
              f"s = importlib.util.spec_from_file_location('m', {str(GENERATED / 'layer_nc_numpy.py')!r}); "
              "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
              "y, mu, istd = m.forward_train(np.arange(12.0).reshape(3, 4), np.ones(4), np.zeros(4)); "
              "print(round(float(y.sum()), 9))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() in ("0.0", "-0.0")


def test_banner_docstrings_and_formulas():
    text = (GENERATED / "batch_nchw_numba.py").read_text()
    head = text.splitlines()[:4]
    assert head[0].startswith("# Generated by symbn") and "batch_nchw" in head[0]
    assert "SymPy" in head[0] and "Input hash:" in head[1] and "DO NOT EDIT" in head[2]
    assert head[3].startswith("# Content hash: ")
    assert "dx = gamma*istd*(M*dy - sum_dy - sum_dy_xhat*xhat)/M" in text
    assert "operations per element" in text and "(N, C, H, W)" in text


def test_load_caches_by_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMBN_CACHE", str(tmp_path))
    spec = preset("layer", "NC", eps=1e-3)
    first = load(spec, "numpy")
    assert load(spec, "numpy") is first
    files = list(tmp_path.rglob("*.py"))
    assert len(files) == 1 and files[0].read_text() == module_text(spec, "numpy",
                                                                   command=f"symbn.load(...) (spec {spec.name})")
    assert first.EPS == 1e-3


def test_wheel_carries_the_templates(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("symbn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for template in ("kernels/module.py.j2", "kernels/numpy.py.j2", "kernels/numba.py.j2"):
        assert f"symbn/templates/{template}" in names


def test_numba_disk_cache_survives_a_different_import_name(tmp_path):
    """Numba's cache re-imports the module the kernels were compiled in; the generated file pins that name."""
    path = tmp_path / "layer_nc_numba.py"
    path.write_text((GENERATED / "layer_nc_numba.py").read_text())
    script = ("import importlib.util, sys, numpy as np; "
              f"s = importlib.util.spec_from_file_location(sys.argv[1], {str(path)!r}); "
              "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
              "y, mu, istd = m.forward_train(np.arange(12.0).reshape(3, 4), np.ones(4), np.zeros(4)); "
              "print(abs(float(y.sum())) < 1e-12)")
    for name in ("first_name", "another_name"):  # the second run loads the kernels from the disk cache
        out = subprocess.run([sys.executable, "-c", script, name], capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]
    assert list((tmp_path / "__pycache__").glob("*.nbi"))


@pytest.mark.parametrize("spec, backend", ENTRIES, ids=IDS)
def test_staged_backward_kernel_matches_the_compact_one(spec, backend):
    """backward_staged runs the engine's staged program (one adjoint per node); backward its compact form."""
    m = module(spec, backend)
    data = checks.inputs(m, seed=7)
    y, *saved = m.forward_train(data["x"], *params_of(m, data))
    gamma = [data["gamma"]] if "gamma" in data else []
    compact = m.backward(data["dy"], data["x"], *gamma, *saved)
    staged = m.backward_staged(data["dy"], data["x"], *gamma)
    for a, b in zip(compact, staged, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


LARGE_KERNELS = ("_forward_train", "_forward_eval", "_backward", "_backward_eval")


@pytest.mark.parametrize("spec, backend", ENTRIES, ids=IDS)
def test_inputs_up_to_small_take_the_small_path_and_larger_ones_the_large(spec, backend, monkeypatch):
    """Every entry point of a small input runs without the large kernels (which raise here), quick checks or not
    (a strided view takes the full checks, then the same small path); an input one element past SMALL uses them."""
    m = module(spec, backend)

    def refused(name):
        def kernel(*_):
            raise AssertionError(f"{name} ran")
        return kernel

    for name in LARGE_KERNELS:
        if hasattr(m, name):
            monkeypatch.setattr(m, name, refused(name))
    data = checks.inputs(m)
    for x in (data["x"], np.repeat(data["x"], 2, axis=-1)[..., ::2]):
        assert x.size <= m.SMALL
        y, *saved = m.forward_train(x, *params_of(m, data))
        m.forward_eval(x, *params_of(m, data), *checks.running_statistics(m, data))
        m.backward(data["dy"], x, *params_of(m, data)[:1 if "gamma" in checks.parameter_names(m) else 0], *saved)
    monkeypatch.setattr(m, "SMALL", data["x"].size - 1)
    with pytest.raises(AssertionError, match="_forward_train ran"):
        m.forward_train(data["x"], *params_of(m, data))


@pytest.mark.parametrize("spec, backend", ENTRIES, ids=IDS)
def test_what_a_small_call_returns_passes_the_quick_checks_of_the_next(spec, backend, monkeypatch):
    """A training step hands forward_train's statistics to backward: they pass the quick checks (the full ones raise
    here). The arrays a compiled kernel returns carry a float64 dtype equal to NumPy's, not the same object, and an
    identity test once sent every such backward through the full checks (28 against 5 us at (4, 5))."""
    m = module(spec, backend)

    def full_checks(*_):
        raise AssertionError("the full checks ran")

    data = checks.inputs(m)
    y, *saved = m.forward_train(data["x"], *params_of(m, data))
    monkeypatch.setattr(m, "_input", full_checks)
    gamma = params_of(m, data)[:1 if "gamma" in checks.parameter_names(m) else 0]
    dx = m.backward(data["dy"], data["x"], *gamma, *saved, out=np.empty_like(y))[0]
    m.backward(data["dy"], y, *gamma, *saved, out=dx)
    with pytest.raises(AssertionError, match="full checks"):  # the test can tell: a strided x takes the full checks
        m.backward(data["dy"], np.repeat(data["x"], 2, axis=-1)[..., ::2], *gamma, *saved)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_outputs_reuse_memory_only_once_no_view_of_it_is_left(backend):
    """A new output of 1 MiB or more takes the memory of an earlier one of its size once that output and all its
    views are gone, never while a view of it is alive."""
    m = catalogue_module("layer_nc", backend)
    rng = np.random.default_rng(0)
    x, other = rng.normal(size=(2, 512, 512))  # 2 MiB each in float64: over SMALL, and pooled
    gamma, beta = np.ones(512), np.zeros(512)
    first = m.forward_train(x, gamma, beta)[0]
    address, view, kept = first.ctypes.data, first[1:].T, first[1:].T.copy()
    del first
    second = m.forward_train(other, gamma, beta)[0]
    assert second.ctypes.data != address and np.array_equal(view, kept)  # the view's memory is not reused
    assert np.array_equal(second, m.forward_train(other, gamma, beta, out=np.empty_like(other))[0])
    addresses = {address, second.ctypes.data}
    del view, second
    third = m.forward_train(x, gamma, beta)[0]
    assert third.ctypes.data in addresses and third.flags.writeable and third.flags.c_contiguous


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_first_large_output_of_a_size_leaves_a_spare_for_the_next(backend):
    """A loop holds its last output while it makes the next: the first output of a size leaves a spare block in the
    pool, so the second takes that, not new memory, and it is not the first output's memory."""
    m = catalogue_module("layer_nc", backend)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 37449))  # 2 MiB in float64, a size no other test makes
    gamma, beta = np.ones(37449), np.zeros(37449)
    assert x.nbytes not in m._pool_seen
    first = m.forward_train(x, gamma, beta)[0]
    (spare,) = m._pool[x.nbytes]
    second = m.forward_train(x, gamma, beta)[0]
    assert second.ctypes.data == spare.ctypes.data != first.ctypes.data
    assert np.array_equal(first, second) and not m._pool[x.nbytes]
