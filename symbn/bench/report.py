"""What ``symbn bench`` shows: the terminal tables, the JSON file and the chart, all from the result of bench.run."""

from __future__ import annotations

import json
from itertools import groupby
from pathlib import Path

SHORT = {"naive-numpy": "naive", "symbn-numpy": "numpy", "symbn-numba": "numba", "symbn-numba-out": "numba out=",
         "torch": "torch"}


def _blocks(result: dict):
    """Rows grouped by (case, dtype), in the order they were measured."""
    return groupby(result["results"], key=lambda r: (r["case"], r["dtype"]))


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}" if seconds < 0.01 else f"{seconds * 1e3:.1f}"


def header(result: dict) -> str:
    m, bw, s = result["machine"], result["bandwidth"], result["settings"]
    rates = ", ".join(f"{k.removesuffix('_gbps').replace('_', ' ')} {v:.1f}" for k, v in bw.items()
                      if k.endswith("_gbps") and k != "bound_gbps")
    return (f"machine    {m['cpu']}, {m['logical_cpus']} logical CPUs, L3 {m.get('l3', '?')}, "
            f"{m.get('memory_gib', '?')} GiB; numpy {m['numpy']}, numba {m['numba']} "
            f"({m.get('numba_threading_layer')}), torch {m['torch']}\n"
            f"settings   {s['threads']} threads, {s['repeat']} timed runs per kernel after one warm-up, each after "
            f"writing {s.get('cold_cache_bytes', 0) / 2**20:.0f} MiB (cold caches)"
            f"{' (smoke: tiny sizes)' if s['smoke'] else ''}; other processes took "
            f"{_share(m.get('others_cpu_share'))} of the CPU time meanwhile\n"
            f"{_busy_warning(m.get('others_cpu_share'))}"
            f"bandwidth  {bw['array_mib']} MiB float64 arrays, GB/s: {rates}; bound {bw['bound_gbps']:.1f} GB/s\n"
            f"bytes      least bytes a pass moves: {', '.join(f'{p} {b}' for p, b in s['bytes_model'].items())}\n")


def _share(value) -> str:
    return "?" if value is None else f"{value:.0%}"


def _busy_warning(share) -> str:
    if share is None or share < 0.05:
        return ""
    return ("WARNING    other processes were busy: parallel kernels lose whole time slices when a thread is "
            "descheduled; rerun on a quiet machine before comparing\n")


def detail_table(result: dict) -> str:
    lines = []
    cols = f"  {'pass':<17}{'impl':<16}{'median ms':>10} {'min-max ms':>17} {'GB/s':>7} {'bound':>6} " \
           f"{'vs torch (min-max)':>21} {'first ms':>9} {'rel diff':>9}"
    for (case, dtype), rows in _blocks(result):
        rows = list(rows)
        lines += ["", f"{case} {tuple(rows[0]['shape'])} {dtype}", cols]
        for r in rows:
            sp = r.get("speedup_vs_torch")
            vs = f"{sp['median']:.2f}x ({sp['min']:.2f}-{sp['max']:.2f})" if sp else "-"
            lines.append(f"  {r['pass']:<17}{r['impl']:<16}{_ms(r['median_s']):>10} "
                         f"{_ms(r['min_s']) + '-' + _ms(r['max_s']):>17} {r['gbps']:>7.1f} "
                         f"{r['fraction_of_bound']:>6.0%} {vs:>21} {_ms(r['first_call_s']):>9} "
                         f"{r['max_rel_diff_vs_naive']:>9.1e}")
    return "\n".join(lines) + "\n"


def _find(rows, impl, pass_name):
    return next((r for r in rows if r["impl"] == impl and r["pass"] == pass_name), None)


def summary_table(result: dict) -> str:
    """One line per case and dtype: the Numba kernels against PyTorch and the bound, NumPy against the naive code."""
    head = (f"{'case':<17}{'dtype':<8}{'numba fwd':>10}{'torch fwd':>10}{'x':>6}{'numba f+b':>10}{'torch f+b':>10}"
            f"{'x':>6}{'fwd bound':>10}{'bwd bound':>10}{'out= fwd':>9}{'out= bwd':>9}{'numpy/naive f+b':>16}")
    lines = [head, "-" * len(head)]
    for (case, dtype), rows in _blocks(result):
        rows = list(rows)
        nf, nfb, nb = (_find(rows, "symbn-numba", p) for p in ("forward", "forward+backward", "backward"))
        of, ob = (_find(rows, "symbn-numba-out", p) for p in ("forward", "backward"))
        tf, tfb = (_find(rows, "torch", p) for p in ("forward", "forward+backward"))
        naive, numpy = _find(rows, "naive-numpy", "forward+backward"), _find(rows, "symbn-numpy", "forward+backward")
        gain = naive["median_s"] / numpy["median_s"]

        def ms(r):
            return _ms(r["median_s"]) if r else "-"

        def vs(r):
            return f"{r['speedup_vs_torch']['median']:.2f}" if r and "speedup_vs_torch" in r else "-"

        def bound(r, width):
            return f"{r['fraction_of_bound']:>{width}.0%}" if r else f"{'-':>{width}}"

        lines.append(f"{case:<17}{dtype:<8}{ms(nf):>10}{ms(tf):>10}{vs(nf):>6}{ms(nfb):>10}{ms(tfb):>10}{vs(nfb):>6}"
                     f"{bound(nf, 10)}{bound(nb, 10)}{bound(of, 9)}{bound(ob, 9)}{gain:>15.2f}x")
    lines.append("times are medians in ms; x: median of pairwise PyTorch/numba ratios; bound: GB/s over the least "
                 "bytes as a fraction of the measured bound; out=: numba writing into reused arrays")
    return "\n".join(lines) + "\n"


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def write_plot(result: dict, path: Path) -> None:
    """Rows: passes. Left: speed-up over PyTorch (log scale); right: fraction of the bandwidth bound."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt
    import numpy as np

    settings = result["settings"]
    passes = settings["passes"]
    keys = [k for k, _ in _blocks(result)]
    labels = [f"{case} {dtype.replace('float', 'f')}" for case, dtype in keys]
    rows = {(r["case"], r["dtype"], r["pass"], r["impl"]): r for r in result["results"]}
    fig, axes = plt.subplots(len(passes), 2, figsize=(max(12, 0.9 * len(keys) + 4), 3.6 * len(passes)),
                             squeeze=False)
    x = np.arange(len(keys))
    ours = [impl for impl in settings["impls"] if impl != "torch"]
    for i, p in enumerate(passes):
        for j, (impls, metric) in enumerate(((ours, "speedup"), (settings["impls"], "fraction_of_bound"))):
            ax = axes[i][j]
            width = 0.8 / len(impls)
            for k, impl in enumerate(impls):
                vals = []
                for case, dtype in keys:
                    r = rows.get((case, dtype, p, impl))
                    if metric == "speedup":
                        vals.append(r["speedup_vs_torch"]["median"] if r and "speedup_vs_torch" in r else np.nan)
                    else:
                        vals.append(r[metric] if r else np.nan)
                ax.bar(x + (k - (len(impls) - 1) / 2) * width, vals, width, label=SHORT[impl])
            if metric == "speedup":
                ax.set_yscale("log")
                ax.axhline(1.0, color="black", lw=0.8)
                ax.set_ylabel(f"{p}\nspeed-up over PyTorch")
            else:
                ax.axhline(1.0, color="black", lw=0.8)
                ax.set_ylabel(f"{p}\nfraction of {result['bandwidth']['bound_gbps']:.0f} GB/s")
            ax.set_xticks(x, labels, fontsize=7, rotation=35, ha="right", rotation_mode="anchor")
            ax.grid(axis="y", alpha=0.3)
            if i == 0:
                ax.legend(fontsize=8, ncol=len(impls))
    m = result["machine"]
    fig.suptitle(f"symbn bench: {m['cpu']}, {settings['threads']} threads, median of {settings['repeat']} runs"
                 f"{' (smoke)' if settings['smoke'] else ''}")
    fig.tight_layout(rect=(0, 0, 1, 0.98))  # room for the title above the legends
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
