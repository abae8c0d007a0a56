"""``symbn bench``: symbn's kernels next to the NumPy people write and PyTorch's CPU kernels, in one process.

Per case, dtype and pass (forward-train, backward, forward+backward, inference, and the second order,
double-backward: the gradients of sum(ggx*dx) + ... with respect to dy, x and gamma, given the backward's statistics)
it times, side by side (the naive NumPy formula has no second order):

- ``naive-numpy``: the textbook staged normalization (one array per step, see :class:`Staged`), written here by hand
  as the reference of what people write;
- ``symbn-numpy`` and ``symbn-numba``: the generated modules (from generated/ for catalogue specs, else symbn.load);
- ``symbn-numba-out``: the same Numba module writing y and dx into arrays reused from call to call (``out=``), as a
  training loop can: a fresh output costs the kernel the first touch of new pages, which on large inputs is a
  large share of the time;
- ``torch``: PyTorch's functional normalization, with autograd for the backward, when torch imports.

Runs are interleaved round by round, so each PyTorch run has a partner run of every other implementation taken at
nearly the same moment; speed-ups are medians of those pairwise ratios. Every timed run starts with cold caches
(bandwidth.ColdCache), so no implementation inherits the inputs its predecessor left in cache. The machine's
streaming bandwidth is measured in the same process (symbn.bench.bandwidth) and every kernel is also reported as GB/s over
the least bytes its pass must move, as a fraction of the bound measured right before that case (the run's first
measurement is kept beside it). Tables, the JSON file and the chart are in symbn.bench.report.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from symbn.bench import bandwidth
from symbn.codegen.check import backward_inputs, forward_inputs, parameter_names
from symbn.codegen.stamp import recorded_hash
from symbn.codegen.store import cache_dir, load
from symbn.core.spec import CENTRED, LAYOUTS, PRESETS, RMS, Spec, preset

PASSES = ("forward", "backward", "forward+backward", "inference", "double-backward")
IMPLS = ("naive-numpy", "symbn-numpy", "symbn-numba", "symbn-numba-out", "torch")
DTYPES = ("float32", "float64")


class BenchError(ValueError):
    """A bad benchmark request (unknown case, dtype, thread count); the message says what is allowed."""


@dataclass(frozen=True)
class Case:
    name: str
    preset: str
    layout: str
    shape: tuple[int, ...]
    smoke_shape: tuple[int, ...]
    groups: int | None = None
    epilogue: str | None = None  # a fused epilogue (symbn.core.epilogue.PRESET_EPILOGUES); PyTorch runs it unfused
    # calls per timed run: a small input is timed over many calls in a row with warm caches, as a training loop on
    # small batches makes them, and reported per call (in µs)
    calls: int = 1

    @property
    def spec(self) -> Spec:
        return preset(self.preset, self.layout, groups=self.groups, epilogue=self.epilogue)


CASES = (
    Case("batch_nchw", "batch", "NCHW", (32, 64, 56, 56), (4, 8, 6, 5)),
    # x alone is 4x a 32 MiB L3 in float32 (8x in float64); any pass moves at least twice that
    Case("batch_nchw_large", "batch", "NCHW", (64, 128, 64, 64), (4, 8, 6, 5)),
    Case("batch_nhwc", "batch", "NHWC", (32, 56, 56, 64), (4, 6, 5, 8)),
    Case("batch_nhwc_large", "batch", "NHWC", (64, 64, 64, 128), (4, 6, 5, 8)),
    Case("batch_nc", "batch", "NC", (1024, 4096), (16, 24)),
    Case("layer_nc", "layer", "NC", (4096, 768), (16, 24)),
    Case("group32_nchw", "group", "NCHW", (32, 64, 56, 56), (2, 64, 4, 3), groups=32),
    Case("instance_nchw", "instance", "NCHW", (32, 64, 56, 56), (4, 8, 6, 5)),
    Case("rms_nc", "rms", "NC", (4096, 4096), (16, 24)),
    # batch norm, a residual add and relu fused, against PyTorch's three operations with autograd
    Case("batch_nchw_add_relu", "batch", "NCHW", (32, 64, 56, 56), (4, 8, 6, 5), epilogue="add_relu"),
    # where the seeds live: makemore's and the Keras model's batch of 32, a wider layer, a cs231n gradient check
    Case("small_32x200", "batch", "NC", (32, 200), (32, 200), calls=200),
    Case("small_64x512", "batch", "NC", (64, 512), (64, 512), calls=200),
    Case("small_4x5", "batch", "NC", (4, 5), (4, 5), calls=200),
)


def select(patterns: list[str] | None) -> list[Case]:
    """The cases whose name contains any of *patterns* (all when none given)."""
    if not patterns:
        return list(CASES)
    chosen = [c for c in CASES if any(p in c.name for p in patterns)]
    unknown = [p for p in patterns if not any(p in c.name for c in CASES)]
    if unknown:
        raise BenchError(f"--cases: {', '.join(map(repr, unknown))} matches no case; "
                         f"cases are {', '.join(c.name for c in CASES)}")
    return chosen


# --- the naive staged baseline --------------------------------------------------------------------------------------


class Staged:
    """The textbook staged normalization ("nine steps": mean, centred input, square, variance, sqrt, inverse, x-hat,
    scale, shift) and its staged backward, one NumPy array per step, as in the well-known batch-norm tutorials
    (``np.ones`` arrays included). Generic over the spec's axes: keepdims reductions over the reduce axes, the
    channel axis reshaped into (G, C/G) for group norm, parameters broadcast over the parameter axes. RMS norm
    drops the centring steps. Deliberately unoptimized: it is the reference, not a contender."""

    def __init__(self, spec: Spec):
        core = PRESETS[spec.preset].core if spec.preset else None
        if core not in (CENTRED, RMS):
            raise BenchError(f"spec {spec.name}: the staged baseline covers the preset normalizations only")
        self.spec, self.centred = spec, core == CENTRED
        self.has_beta = spec.center and self.centred
        self.has_gamma = spec.scale

    def _view(self, shape):
        """The grouped shape and its reduce axes: (..., C, ...) -> (..., G, C/G, ...) with C/G reduced."""
        s, c = self.spec, self.spec.channel_axis
        if not s.groups:
            return tuple(shape), s.reduce_axes
        grouped = tuple(shape[:c]) + (s.groups, shape[c] // s.groups) + tuple(shape[c + 1:])
        return grouped, tuple(a + (a >= c) for a in s.reduce_axes)

    def _param(self, p, shape):
        return p.reshape([n if a in self.spec.param_axes else 1 for a, n in enumerate(shape)])

    def forward_train(self, x, gamma=None, beta=None, running=None):
        shape, red = self._view(x.shape)
        xg = x.reshape(shape)
        # a Python int: a NumPy integer scalar would promote float32 arithmetic to float64
        m = xg.size // int(np.prod([shape[a] for a in range(len(shape)) if a not in red]))
        eps = self.spec.eps
        if self.centred:
            mu = xg.mean(axis=red, keepdims=True)                        # 1 mean
            xmu = xg - mu                                                # 2 centred input
            sq = xmu**2                                                  # 3 square
            var = sq.sum(axis=red, keepdims=True) / (m - self.spec.ddof)  # 4 variance
            sqrtvar = np.sqrt(var + eps)                                 # 5 sqrt
            ivar = 1.0 / sqrtvar                                         # 6 inverse
            xhat = (xmu * ivar).reshape(x.shape)                         # 7 x-hat
        else:
            sq = xg**2
            ms = sq.mean(axis=red, keepdims=True)
            sqrtvar = np.sqrt(ms + eps)
            ivar = 1.0 / sqrtvar
            xhat = (xg * ivar).reshape(x.shape)
            xmu, var, mu = xg, ms, None
        y = self._param(gamma, x.shape) * xhat if self.has_gamma else xhat  # 8 scale
        if self.has_beta:
            y = y + self._param(beta, x.shape)                           # 9 shift
        if running is not None:
            self._update(running, mu, var, m)
        return y, (xhat, gamma, xmu, ivar, sqrtvar, var, red, shape, m)

    def _update(self, running, mu, var, m):
        k = self.spec.momentum
        stats = (mu.reshape(-1), var.reshape(-1) * m / (m - 1)) if self.centred else (var.reshape(-1),)
        for r, s in zip(running, stats):
            r.reshape(-1)[...] = (1 - k) * r.reshape(-1) + k * s

    def backward(self, dy, cache):
        xhat, gamma, xmu, ivar, sqrtvar, var, red, shape, m = cache
        keep = tuple(a for a in range(dy.ndim) if a not in self.spec.param_axes)
        grads = []
        if self.has_gamma:
            grads.append((dy * xhat).sum(axis=keep))                     # 8 dgamma
            dxhat = (dy * self._param(gamma, dy.shape)).reshape(shape)
        else:
            dxhat = dy.reshape(shape)
        if self.has_beta:
            grads.append(dy.sum(axis=keep))                              # 9 dbeta
        divar = (dxhat * xmu).sum(axis=red, keepdims=True)               # 7
        dxmu1 = dxhat * ivar
        dsqrtvar = -1.0 / sqrtvar**2 * divar                             # 6
        dvar = 0.5 / np.sqrt(var + self.spec.eps) * dsqrtvar             # 5
        if self.centred:
            dsq = np.ones_like(xmu) * dvar / (m - self.spec.ddof)        # 4
            dxmu2 = 2 * xmu * dsq                                        # 3
            dx1 = dxmu1 + dxmu2
            dmu = -dx1.sum(axis=red, keepdims=True)                      # 2
            dx2 = np.ones_like(xmu) * dmu / m                            # 1
        else:
            dsq = np.ones_like(xmu) * dvar / m
            dx1, dx2 = dxmu1, 2 * xmu * dsq
        return ((dx1 + dx2).reshape(dy.shape), *grads)

    def forward_eval(self, x, gamma=None, beta=None, running=()):
        shape, red = self._view(x.shape)
        kept = [1 if a in red else n for a, n in enumerate(shape)]
        xg = x.reshape(shape)
        if self.centred:
            rmu, rvar = (r.reshape(kept) for r in running)
            xmu = xg - rmu
        else:
            (rvar,) = (r.reshape(kept) for r in running)
            xmu = xg
        ivar = 1.0 / np.sqrt(rvar + self.spec.eps)
        xhat = (xmu * ivar).reshape(x.shape)
        y = self._param(gamma, x.shape) * xhat if self.has_gamma else xhat
        return y + self._param(beta, x.shape) if self.has_beta else y


# --- the four implementations: each gives one callable per pass and reads back y or dx ---------------------------


def _running_like(names, stat, dtype):
    """PyTorch's initial running statistics: means 0, variances (and mean squares) 1."""
    return [(np.zeros if name.endswith("mu") else np.ones)(stat.shape, dtype) for name in names]


def naive_calls(spec, data):
    if spec.epilogue:  # the textbook staged form has no epilogue
        return None
    st = Staged(spec)
    params = {p: data[p] for p in ("gamma", "beta") if p in data}
    # statistics over the batch need running statistics at inference; per-sample ones are recomputed
    running = data["running"] if spec.tracks_running else None
    _, cache = st.forward_train(data["x"], **params)

    def fwd_bwd():
        _, c = st.forward_train(data["x"], **params, running=running)
        return st.backward(data["dy"], c)

    inference = ((lambda: st.forward_eval(data["x"], **params, running=running)) if running is not None
                 else (lambda: st.forward_train(data["x"], **params)[0]))
    return {"forward": lambda: st.forward_train(data["x"], **params, running=running)[0],
            "backward": lambda: st.backward(data["dy"], cache)[0], "forward+backward": lambda: fwd_bwd()[0],
            "inference": inference}, lambda out: out


def module_calls(data, module, reuse=False):
    """The module's functions; with *reuse*, y and dx go to arrays allocated once (out=)."""
    x, dy = data["x"], data["dy"]
    y_out, dx_out = (np.empty_like(x), np.empty_like(x)) if reuse else (None, None)
    params = forward_inputs(module, data)  # r first, where an epilogue adds one
    gamma = [data[p] for p in backward_inputs(module)]
    running = dict(zip(module.RUNNING, data["running"]))  # none where the statistics are per sample
    _, *saved = module.forward_train(x, *params)

    def fwd_bwd():
        _, *s = module.forward_train(x, *params, **running, out=y_out)
        return module.backward(dy, x, *gamma, *s, out=dx_out)

    # eval mode: from the running statistics, or where there are none, the training computation itself
    upstream = [data[k] for k in ["ggx"] + ["ggr"] * ("r" in data) + ["gg" + p for p in parameter_names(module)]]
    pair = (np.empty_like(x), np.empty_like(x)) if reuse else None
    calls = {"forward": lambda: module.forward_train(x, *params, **running, out=y_out),
             "backward": lambda: module.backward(dy, x, *gamma, *saved, out=dx_out), "forward+backward": fwd_bwd,
             "inference": lambda: module.forward_eval(x, *params, **running, out=y_out)}
    if hasattr(module, "double_backward"):  # not after an epilogue with second derivatives
        calls["double-backward"] = lambda: module.double_backward(*upstream, dy, x, *gamma, *saved, out=pair)
    return calls, lambda out: out if isinstance(out, np.ndarray) else out[0]


def torch_calls(spec, data, torch):
    """PyTorch's functional form for the spec, channels moved to axis 1 as a view (NHWC becomes a channels_last
    NCHW tensor, which PyTorch's kernels handle natively), gradients by autograd for x, gamma and beta."""
    F = torch.nn.functional
    channel = LAYOUTS[spec.layout].channel
    leaf = torch.from_numpy(data["x"]).requires_grad_()
    x = leaf.movedim(channel, 1)
    dy_leaf = torch.from_numpy(data["dy"]).requires_grad_()  # a leaf: the second order differentiates by dy
    dy = dy_leaf.movedim(channel, 1)
    params = [torch.from_numpy(data[p]).requires_grad_() for p in ("gamma", "beta") if p in data]
    gamma, beta = (params + [None, None])[:2]
    running = [torch.from_numpy(r) for r in data["running"]]
    k = len(spec.reduce_axes)
    trailing = spec.reduce_axes == tuple(range(spec.ndim - k, spec.ndim)) == spec.param_axes
    eps = spec.eps
    if spec.preset == "batch":
        def f(train):
            return F.batch_norm(x, *running, gamma, beta, training=train, momentum=spec.momentum, eps=eps)
    elif spec.preset == "instance":
        def f(_train):  # no running statistics: one computation in both modes
            return F.instance_norm(x, weight=gamma, bias=beta, eps=eps)
    elif spec.preset == "group":
        def f(_train):  # no running statistics: one computation in both modes
            return F.group_norm(x, spec.groups, gamma, beta, eps)
    elif spec.preset == "layer" and trailing:
        def f(_train):  # no running statistics: one computation in both modes
            return F.layer_norm(x, x.shape[-k:], gamma, beta, eps)
    elif spec.preset == "rms" and trailing:
        def f(_train):  # no running statistics: one computation in both modes
            return F.rms_norm(x, x.shape[-k:], gamma, eps)
    else:
        return None
    inputs = [leaf] + params
    if spec.epilogue:  # PyTorch's unfused sequence: the normalization, the residual add, relu
        r_leaf = torch.from_numpy(data["r"]).requires_grad_() if "r" in data else None
        inputs = [leaf] + ([r_leaf] if r_leaf is not None else []) + params
        norm = f

        def f(train):
            z = norm(train)
            return torch.relu(z + r_leaf.movedim(channel, 1) if r_leaf is not None else z)
    y = f(True)
    def inference():
        with torch.no_grad():
            return f(False)

    calls = {"forward": lambda: f(True),
             "backward": lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True),
             "forward+backward": lambda: torch.autograd.grad(f(True), inputs, dy),
             "inference": inference}
    # the second order: the backward as a graph (create_graph), the penalty sum(ggx*dx) (+ sum(ggr*dr)) + ..., built
    # once; the pass timed is its gradient with respect to dy, x and gamma
    grads = torch.autograd.grad(f(True), inputs, dy, create_graph=True)
    names = ["ggx"] + ["ggr"] * ("r" in data) + ["gg" + p for p in ("gamma", "beta") if p in data]
    upstream = [torch.from_numpy(data[k]) for k in names]
    penalty = sum((u * g).sum() for u, g in zip(upstream, grads, strict=True))
    wrt = [dy_leaf, leaf] + params[:1]
    calls["double-backward"] = lambda: torch.autograd.grad(penalty, wrt, retain_graph=True)

    def primary(out):
        return (out[0] if isinstance(out, tuple) else out.movedim(1, channel)).detach().numpy()

    return calls, primary


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def load_module(spec: Spec, backend: str):
    """The committed module in generated/ for catalogue specs (what users get), else one generated into the cache."""
    from symbn.codegen.store import import_path, module_file

    path, from_catalogue = module_file(spec, backend)
    return import_path(path, f"symbn_bench_{spec.name}_{backend}") if from_catalogue else load(spec, backend)


# --- measurement --------------------------------------------------------------------------------------------------


def make_data(spec: Spec, shape, dtype, module, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    data = {"x": rng.standard_normal(shape, dtype=dtype) * 2 + 0.5, "dy": rng.standard_normal(shape, dtype=dtype)}
    pshape = tuple(shape[a] for a in spec.param_axes)
    for p in parameter_names(module):
        data[p] = (rng.standard_normal(pshape) * 0.5 + (1.0 if p == "gamma" else 0.0)).astype(dtype)
        data["gg" + p] = rng.standard_normal(pshape).astype(dtype)  # the second order's upstream gradients
    data["ggx"] = rng.standard_normal(shape, dtype=dtype)
    if spec.epilogue == "add_relu":
        data["r"] = rng.standard_normal(shape, dtype=dtype)
        data["ggr"] = rng.standard_normal(shape, dtype=dtype)  # the second order's upstream gradient of dr
    _, *saved = module.forward_train(data["x"], *forward_inputs(module, data))
    data["running"] = _running_like(module.RUNNING, saved[0], dtype)
    return data


def _provenance(module) -> dict | None:
    """Which generated file was timed: generated/ may be regenerated while a long run goes on."""
    if module is None:
        return None
    path = Path(module.__file__)
    digest = recorded_hash(path.read_text())
    cached = path.resolve().is_relative_to(cache_dir().resolve())
    return {"file": path.name, "from": "cache" if cached else "generated", "content_hash": digest}


def _jit_counts(module) -> tuple[int, int]:
    """(compiled, loaded from the disk cache) over the module's Numba dispatchers so far."""
    compiled = loaded = 0
    for obj in vars(module).values():
        stats = getattr(obj, "stats", None)
        if hasattr(obj, "py_func") and stats is not None:
            compiled += sum(stats.cache_misses.values())
            loaded += sum(stats.cache_hits.values())
    return compiled, loaded


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _per_call(fn, calls: int) -> float:
    """Seconds per call over *calls* calls in a row."""
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls


def _rel_diff(a, ref) -> float:
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(a - ref)) / max(np.max(np.abs(ref)), 1e-300))


def measure_case(case: Case, dtype: str, repeat: int, smoke: bool, bound: float, torch=None,
                 cold=lambda: None) -> list[dict]:
    """Rows of the result for one case and dtype; *cold* runs before every timed run (see bandwidth.ColdCache) of the
    cases timed one call per run; small cases are timed per call over case.calls calls with warm caches."""
    spec, shape = case.spec, case.smoke_shape if smoke else case.shape
    per_run = min(case.calls, 2) if smoke else case.calls
    modules = {"symbn-numpy": load_module(spec, "numpy"), "symbn-numba": load_module(spec, "numba")}
    data = make_data(spec, shape, np.dtype(dtype), modules["symbn-numpy"])
    jit_before = _jit_counts(modules["symbn-numba"])
    # Each factory runs one training forward (backward needs its saved statistics): that is the first forward call,
    # Numba's compile or cache load included.
    factories = {"naive-numpy": lambda: naive_calls(spec, data),
                 "symbn-numpy": lambda: module_calls(data, modules["symbn-numpy"]),
                 "symbn-numba": lambda: module_calls(data, modules["symbn-numba"]),
                 "symbn-numba-out": lambda: module_calls(data, modules["symbn-numba"], reuse=True),
                 "torch": lambda: torch_calls(spec, data, torch) if torch is not None else None}
    impls, first_forward = {}, {}
    for name, factory in factories.items():
        first_forward[name], calls = _timed(factory)
        if calls is not None:
            impls[name] = calls
    elements, itemsize = int(np.prod(shape)), np.dtype(dtype).itemsize
    rows = []
    for pass_name in PASSES:
        present = {name: impl for name, impl in impls.items() if pass_name in impl[0]}
        first, times, outs = {}, {name: [] for name in present}, {}
        for name, (calls, primary) in present.items():
            first[name], out = _timed(calls[pass_name])
            outs[name] = primary(out)
            if pass_name == "forward":
                first[name] = first_forward[name]
        gc.disable()  # as timeit does: no collector pause inside a timing (arrays are freed by reference counts)
        try:
            for _ in range(repeat):
                for name, (calls, _) in present.items():
                    if per_run == 1:
                        cold()
                        times[name].append(_timed(calls[pass_name])[0])
                    else:
                        times[name].append(_per_call(calls[pass_name], per_run))
        finally:
            gc.enable()
        nbytes = bandwidth.min_bytes(pass_name, elements, itemsize, residual="r" in data)
        reference = "naive-numpy" if "naive-numpy" in outs else "symbn-numpy"
        for name, ts in times.items():
            row = {"case": case.name, "spec": spec.name, "shape": list(shape), "dtype": dtype, "pass": pass_name,
                   "impl": name, "module": _provenance(modules.get(name.removesuffix("-out"))),
                   "first_call_s": first[name], "calls_per_run": per_run,
                   "times_s": ts, "median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                   "min_bytes": nbytes, "max_rel_diff_vs_naive": _rel_diff(outs[name], outs[reference])}
            row["gbps"] = nbytes / row["median_s"] / 1e9
            row["bound_gbps"] = bound
            row["fraction_of_bound"] = row["gbps"] / bound
            if "torch" in times:
                ratios = [t / u for t, u in zip(times["torch"], ts)]
                row["speedup_vs_torch"] = dict(median=statistics.median(ratios), min=min(ratios), max=max(ratios))
            rows.append(row)
    compiled, loaded = (a - b for a, b in zip(_jit_counts(modules["symbn-numba"]), jit_before))
    for row in rows:
        if row["impl"] == "symbn-numba":  # the -out row runs the same compiled kernels
            row["jit"] = dict(compiled=compiled, loaded_from_cache=loaded)
    return rows


def run(cases=None, dtypes=DTYPES, repeat: int = 10, threads: int | None = None, smoke: bool = False,
        progress=None) -> dict:
    """Measure *cases* (names or substrings; all when None); the result is what the JSON file holds."""
    import numba

    chosen = select(cases)
    for d in dtypes:
        if d not in DTYPES:
            raise BenchError(f"--dtypes: {d!r} is not supported; choose from {', '.join(DTYPES)}")
    if repeat < 1:
        raise BenchError(f"--repeat: expected at least 1; got {repeat}")
    most = numba.config.NUMBA_NUM_THREADS
    threads = most if threads is None else threads
    if not 1 <= threads <= most:
        raise BenchError(f"--threads: expected 1 to {most} (the cores Numba may use); got {threads}")
    repeat = 1 if smoke else repeat
    numba.set_num_threads(threads)
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
    busy_before = bandwidth.cpu_seconds()

    def bound():
        return bandwidth.measure(threads, mib=8 if smoke else 256, repeat=1 if smoke else 5)

    bw = bound()
    results, cold = [], bandwidth.ColdCache()
    for case in chosen:
        for dtype in dtypes:
            if progress:
                progress(f"{case.name} {dtype}")
            # measured again right before each case: this VM's streaming rate moves by 2x within minutes, and a
            # bound taken at the start of a long run would describe another machine than the one the case ran on
            results += measure_case(case, dtype, repeat, smoke, bound()["bound_gbps"], torch, cold)
            if not smoke:
                gc.collect()  # the next case starts without this one's garbage (a collection costs ~0.2 s)
    info = bandwidth.machine(torch)
    info["others_cpu_share"] = bandwidth.others_share(busy_before, bandwidth.cpu_seconds())
    return {"format": "symbn-bench/1", "machine": info,
            "settings": dict(cases=[c.name for c in chosen], dtypes=list(dtypes), repeat=repeat, threads=threads,
                             smoke=smoke, cold_cache_bytes=cold.buffer.nbytes, passes=list(PASSES), impls=[i for i in IMPLS if torch or i != "torch"],
                             bytes_model={p: f"{k}*E*s" for p, k in bandwidth.TENSORS_MOVED.items()},
                             residual_bytes=", ".join(f"{p} +{k}*E*s" for p, k in bandwidth.RESIDUAL_MOVED.items()
                                                      if k)),
            "bandwidth": bw, "results": results}

