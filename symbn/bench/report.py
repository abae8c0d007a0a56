"""What ``symbn bench`` shows: the terminal tables, the JSON file and the chart, all from the result of bench.run."""

from __future__ import annotations

import json
import math
from itertools import groupby
from pathlib import Path


def _blocks(result: dict):
    """Rows grouped by (case, dtype), in the order they were measured."""
    return groupby(result["results"], key=lambda r: (r["case"], r["dtype"]))


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}" if seconds < 0.01 else f"{seconds * 1e3:.1f}"


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.3g}" if seconds < 1e-4 else f"{seconds * 1e6:.0f}"


def _per_call(rows) -> bool:
    """Whether a block's rows are timed per call over many calls (small cases: shown in µs)."""
    return rows[0].get("calls_per_run", 1) > 1


def header(result: dict) -> str:
    m, bw, s = result["machine"], result["bandwidth"], result["settings"]
    rates = ", ".join(f"{k.removesuffix('_gbps').replace('_', ' ')} {v:.1f}" for k, v in bw.items()
                      if k.endswith("_gbps") and k != "bound_gbps")
    return (f"machine    {m['cpu']}, {m['logical_cpus']} logical CPUs, L3 {m.get('l3', '?')}, "
            f"{m.get('memory_gib', '?')} GiB; numpy {m['numpy']}, numba {m['numba']} "
            f"({m.get('numba_threading_layer')}), torch {m['torch']}\n"
            f"settings   {s['threads']} threads, {s['repeat']} timed runs per kernel after one warm-up, each after "
            f"writing {s.get('cold_cache_bytes', 0) / 2**20:.0f} MiB (cold caches)"
            f"{', but small cases: per call over many calls, warm' if any(_per_call([r]) for r in result['results']) else ''}"
            f"{' (smoke: tiny sizes)' if s['smoke'] else ''}; other processes took "
            f"{_share(m.get('others_cpu_share'))} of the CPU time meanwhile\n"
            f"{_busy_warning(m.get('others_cpu_share'))}"
            f"bandwidth  {bw['array_mib']} MiB float64 arrays, GB/s: {rates}; bound {bw['bound_gbps']:.1f} GB/s "
            f"(at the start; each case's own, measured right before it, heads its table)\n"
            f"bytes      least bytes a pass moves: {', '.join(f'{p} {b}' for p, b in s['bytes_model'].items())}"
            f"{'; with a residual r (epilogue add_relu) ' + s['residual_bytes'] if s.get('residual_bytes') else ''}\n")


def _share(value) -> str:
    return "?" if value is None else f"{value:.0%}"


def _busy_warning(share) -> str:
    if share is None or share < 0.05:
        return ""
    return ("WARNING    other processes were busy: parallel kernels lose whole time slices when a thread is "
            "descheduled; rerun on a quiet machine before comparing\n")


def detail_table(result: dict) -> str:
    lines = []
    for (case, dtype), rows in _blocks(result):
        rows = list(rows)
        unit, t = ("us", _us) if _per_call(rows) else ("ms", _ms)
        cols = f"  {'pass':<17}{'impl':<16}{'median ' + unit:>10} {'min-max ' + unit:>17} {'GB/s':>7} {'bound':>6} " \
               f"{'vs torch (min-max)':>21} {'first ms':>9} {'rel diff':>9}"
        where = f", per call over {rows[0]['calls_per_run']} calls in a row (warm)" if _per_call(rows) else ""
        lines += ["", f"{case} {tuple(rows[0]['shape'])} {dtype}{where}; bound {_bound(rows[0]):.1f} GB/s", cols]
        for r in rows:
            sp = r.get("speedup_vs_torch")
            vs = f"{sp['median']:.2f}x ({sp['min']:.2f}-{sp['max']:.2f})" if sp else "-"
            lines.append(f"  {r['pass']:<17}{r['impl']:<16}{t(r['median_s']):>10} "
                         f"{t(r['min_s']) + '-' + t(r['max_s']):>17} {r['gbps']:>7.1f} "
                         f"{r['fraction_of_bound']:>6.0%} {vs:>21} {_ms(r['first_call_s']):>9} "
                         f"{r['max_rel_diff_vs_naive']:>9.1e}")
    return "\n".join(lines) + "\n"


def _bound(row: dict) -> float:
    """The bound a row's fraction is of (files written before it was measured per case carry the run's only)."""
    return row["gbps"] / row["fraction_of_bound"]


def _find(rows, impl, pass_name):
    return next((r for r in rows if r["impl"] == impl and r["pass"] == pass_name), None)


def summary_table(result: dict) -> str:
    """One line per case and dtype: the Numba kernels against PyTorch and the bound, NumPy against the naive code."""
    head = (f"{'case':<20}{'dtype':<8}{'numba fwd':>10}{'torch fwd':>10}{'x':>6}{'numba f+b':>10}{'torch f+b':>10}"
            f"{'x':>6}{'fwd bound':>10}{'bwd bound':>10}{'out= fwd':>9}{'out= bwd':>9}{'numpy/naive f+b':>16}")
    lines = [head, "-" * len(head)]
    for (case, dtype), rows in _blocks(result):
        rows = list(rows)
        nf, nfb, nb = (_find(rows, "symbn-numba", p) for p in ("forward", "forward+backward", "backward"))
        of, ob = (_find(rows, "symbn-numba-out", p) for p in ("forward", "backward"))
        tf, tfb = (_find(rows, "torch", p) for p in ("forward", "forward+backward"))
        naive, numpy = _find(rows, "naive-numpy", "forward+backward"), _find(rows, "symbn-numpy", "forward+backward")
        gain = f"{naive['median_s'] / numpy['median_s']:.2f}x" if naive and numpy else "-"  # no naive epilogue

        def ms(r):  # small cases (timed per call) in µs, marked
            if not r:
                return "-"
            return _us(r["median_s"]) + "us" if _per_call(rows) else _ms(r["median_s"])

        def vs(r):
            return f"{r['speedup_vs_torch']['median']:.2f}" if r and "speedup_vs_torch" in r else "-"

        def bound(r, width):
            return f"{r['fraction_of_bound']:>{width}.0%}" if r else f"{'-':>{width}}"

        lines.append(f"{case:<20}{dtype:<8}{ms(nf):>10}{ms(tf):>10}{vs(nf):>6}{ms(nfb):>10}{ms(tfb):>10}{vs(nfb):>6}"
                     f"{bound(nf, 10)}{bound(nb, 10)}{bound(of, 9)}{bound(ob, 9)}{gain:>16}")
    lines.append("times are medians in ms (us: per call, small cases); x: median of pairwise PyTorch/numba ratios; bound: GB/s over the least "
                 "bytes as a fraction of the bound measured right before the case; out=: numba writing into reused arrays")
    return "\n".join(lines) + "\n"


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def read_json(path: Path) -> dict:
    """The result as write_json wrote it: enough for the tables and the chart again, without measuring anything
    (``write_plot(read_json(Path("docs/bench/bench.json")), Path("docs/bench/bench.png"))``)."""
    return json.loads(Path(path).read_text())


PLOT_PASS = "forward+backward"  # a training step: what the chart shows
PLOT_IMPL = "symbn-numba"  # the generated Numba module, fresh outputs (the summary table's main column)
DTYPE_COLORS = {"float32": "#4C72B0", "float64": "#DD8452"}


def write_plot(result: dict, path: Path) -> None:
    """Two panels, one row per case and a bar per dtype, for the generated Numba module's forward+backward:
    left, its speed-up over PyTorch (log scale, bars growing from the 1x line: right is faster, left slower);
    right, its rate as a fraction of the measured memory-bandwidth bound. Every other figure is in the tables."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, NullLocator

    settings = result["settings"]
    rows = {(r["case"], r["dtype"]): r for r in result["results"]
            if r["pass"] == PLOT_PASS and r["impl"] == PLOT_IMPL}
    cases = list(dict.fromkeys(case for case, _ in rows))
    dtypes = [d for d in DTYPE_COLORS if any(dt == d for _, dt in rows)]
    dtypes += sorted({dt for _, dt in rows} - set(dtypes))
    colors = {d: DTYPE_COLORS.get(d, f"C{i + 2}") for i, d in enumerate(dtypes)}
    height = 0.8 / max(len(dtypes), 1)

    def offset(k):
        return (k - (len(dtypes) - 1) / 2) * height

    def label(case):
        shape = next(r["shape"] for (c, _), r in rows.items() if c == case)
        return case + "\n" + "\u00d7".join(str(n) for n in shape)

    bounds = [_bound(r) for r in rows.values()] or [result["bandwidth"]["bound_gbps"]]
    span = f"{min(bounds):.1f}" if max(bounds) - min(bounds) < 0.05 else f"{min(bounds):.1f}\u2013{max(bounds):.1f}"
    with plt.rc_context({"font.size": 13, "axes.titlesize": 15, "axes.labelsize": 13, "ytick.labelsize": 13,
                         "xtick.labelsize": 12, "legend.fontsize": 13}):
        fig, (left, right) = plt.subplots(1, 2, sharey=True, figsize=(14, 1.6 + 0.8 * max(len(cases), 3)),
                                          gridspec_kw={"width_ratios": (1.15, 1)})
        y = list(range(len(cases)))

        # speed-up over PyTorch, bars from the 1x line
        speedups = {key: r["speedup_vs_torch"]["median"] for key, r in rows.items() if "speedup_vs_torch" in r}
        left.set_xscale("log")
        lo = min([0.5, *(0.4 * v for v in speedups.values())])  # room for labels
        hi = max([4.0, *(2.0 * v for v in speedups.values())])
        left.set_xlim(lo, hi)
        left.axvspan(lo, 1.0, color="0.92", zorder=0)
        left.axvline(1.0, color="black", lw=2, zorder=3)
        for k, d in enumerate(dtypes):
            for i, case in enumerate(cases):
                v = speedups.get((case, d))
                if v is None:
                    continue
                left.barh(i + offset(k), v - 1.0, height, left=1.0, color=colors[d], zorder=2)
                left.text(v * 1.04 if v >= 1 else v / 1.04, i + offset(k), f"{v:.2f}x" if v < 10 else f"{v:.1f}x",
                          va="center", ha="left" if v >= 1 else "right", fontsize=11)
        steps = (1, 2, 3, 5) if hi / lo < 100 else (1, 2, 5) if hi / lo < 1000 else (1,)
        ticks = [float(f"{s}e{e}") for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                 for s in steps if lo <= s * 10.0 ** e <= hi]
        left.xaxis.set_major_locator(FixedLocator(ticks))
        left.xaxis.set_minor_locator(NullLocator())
        left.set_xticklabels([f"{t:g}x" for t in ticks])
        left.grid(axis="x", alpha=0.35, zorder=1)
        left.set_title("Speed-up over PyTorch", pad=26)
        left.set_xlabel("PyTorch time / symbn time (log scale; median of paired runs)")
        left.text(1.0, 1.0, " faster \u2192", transform=left.get_xaxis_transform(), ha="left", va="bottom",
                  fontsize=12)
        left.text(1.0, 1.0, "\u2190 slower ", transform=left.get_xaxis_transform(), ha="right", va="bottom",
                  fontsize=12)
        if not speedups:
            left.text(0.5, 0.5, "PyTorch was not measured in this run", transform=left.transAxes, ha="center",
                      va="center", fontsize=14, color="0.3",
                      bbox={"facecolor": "white", "edgecolor": "none"})

        # fraction of the bandwidth bound
        fractions = {key: r["fraction_of_bound"] for key, r in rows.items()}
        for k, d in enumerate(dtypes):
            for i, case in enumerate(cases):
                v = fractions.get((case, d))
                if v is None:
                    continue
                right.barh(i + offset(k), v, height, color=colors[d], zorder=2)
                right.text(v + 0.01, i + offset(k), f"{v:.0%}", va="center", ha="left", fontsize=11)
        right.axvline(1.0, color="black", lw=2, zorder=3)
        right.text(1.0, 1.0, "bound", transform=right.get_xaxis_transform(), ha="center", va="bottom", fontsize=12)
        right.set_xlim(0, max([1.12, *(v + 0.12 for v in fractions.values())]))
        right.xaxis.set_major_locator(FixedLocator([0, 0.25, 0.5, 0.75, 1.0]))
        right.set_xticklabels(["0", "25%", "50%", "75%", "100%"])
        right.grid(axis="x", alpha=0.35, zorder=1)
        right.set_title("Fraction of the memory-bandwidth bound", pad=26)
        least = settings.get("bytes_model", {}).get(PLOT_PASS, "5*E*s").replace("*", "\u00b7")
        right.set_xlabel(f"GB/s over the least bytes moved ({least}) / the bound")
        right.tick_params(axis="y", left=False)

        left.set_yticks(y, [label(c) for c in cases])
        left.set_ylim(len(cases) - 0.5, -0.5)  # the first case measured on top
        left.tick_params(axis="y", length=0)
        m = result["machine"]
        inch = 1 / fig.get_figheight()  # the header keeps its size in inches whatever the number of cases
        fig.text(0.01, 1 - 0.12 * inch, f"symbn's generated Numba kernels, {PLOT_PASS}", ha="left", va="top",
                 fontsize=17)
        fig.text(0.01, 1 - 0.48 * inch, f"{'SMOKE RUN (tiny sizes, not a measurement): ' if settings['smoke'] else ''}"
                 f"{m['cpu']}, {settings['threads']} threads, median of {settings['repeat']} cold-cache runs; "
                 f"bound: streaming rate measured right before each case ({span} GB/s)", ha="left", va="top", fontsize=12,
                 color="0.3")
        fig.legend(handles=[Patch(color=colors[d], label=d) for d in dtypes], loc="upper right", ncol=len(dtypes),
                   frameon=False, bbox_to_anchor=(0.99, 1 - 0.05 * inch))
        fig.subplots_adjust(left=0.13, right=0.985, wspace=0.05, top=1 - 1.25 * inch, bottom=0.75 * inch)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
