"""Markdown summary and PNG plots, drawn from the long-format results CSV (latest run per case)."""
from __future__ import annotations

import argparse
import os
import re
from collections import defaultdict

from .common import DEFAULT_CSV, MODES, RESULTS_DIR, read_rows

KEY = ("device", "op", "shape", "provider", "mode", "dtype")


def latest(rows):
    """Keep, for each case and metric, the row of the newest run."""
    best = {}
    for r in rows:
        k = tuple(r[c] for c in KEY) + (r["metric"],)
        if k not in best or r["timestamp"] >= best[k]["timestamp"]:
            best[k] = r
    return list(best.values())


def _cases(rows):
    from .host import HOST_METRICS
    cases = defaultdict(dict)  # (device, op, dtype, shape, mode) -> provider -> metric -> (value, row)
    for r in rows:
        if r["metric"] == "load_average_1m" or r["metric"] in HOST_METRICS:       # host rows: their own tables
            continue
        cases[(r["device"], r["op"], r["dtype"], r["shape"], r["mode"])].setdefault(r["provider"], {})[r["metric"]] = (
            float(r["value"]), r)
    return cases


ORDER = ["ref", "ref_cl", "peer", "sdpa_bias", "torch", "triton", "triton_weights", "triton_fused", "cuda", "auto",
         "floor", "floor_cl", "floor_weights"]
# The providers a user can pick (the floors and the reference are yardsticks).
USABLE = ("auto", "cuda", "triton", "triton_weights", "triton_fused", "torch")


def _order(key):
    device, op, dtype, shape, mode = key
    return (device, op, dtype, shape, ["fwd", "bwd", "fwd+bwd"].index(mode) if mode in MODES else 9)


def _load_averages(rows) -> dict:
    """(device, op) -> the load averages recorded at the start of its runs."""
    loads = defaultdict(set)
    for r in rows:
        if r["metric"] == "load_average_1m":
            loads[(r["device"], r["op"])].add(f"{float(r['value']):.1f}")
    return loads


def markdown(rows) -> str:
    """One table per device, op and dtype. A noisy case (spread over 20% of its median, or fwd+bwd below fwd) is
    marked "~" and no speed-up is drawn from it."""
    loads = _load_averages(rows)
    rows = latest(rows)
    cases = _cases(rows)
    out = []
    groups = defaultdict(list)
    for key in sorted(cases, key=_order):
        groups[key[:3]].append(key)
    for (device, op, dtype), keys in groups.items():
        providers = sorted({p for k in keys for p in cases[k]},
                           key=lambda p: ORDER.index(p) if p in ORDER else 99)
        sha = sorted({r["git_sha"] for r in rows if r["device"] == device and r["op"] == op})
        load = loads.get((device, op))
        load_note = f"; load average at the start {', '.join(sorted(load))}" if load else ""
        out.append(f"### {op} on {device}, {dtype} (git {', '.join(sha)}{load_note})\n")
        out.append("| shape | mode | " + " | ".join(f"{p} ms" for p in providers)
                   + " | fastest vs ref | fastest vs floor | cuda / triton | "
                   + " | ".join(f"{p} MiB" for p in providers)
                   + " |")
        out.append("|" + "---|" * (2 * len(providers) + 5))
        for key in keys:
            per = cases[key]
            ms = {p: per[p]["median_ms"][0] for p in providers if p in per and "median_ms" in per[p]}
            mem = {p: per[p]["peak_mem_mb"][0] for p in providers if p in per and "peak_mem_mb" in per[p]}
            noisy = {p for p in providers if p in per and "noisy" in per[p]}
            # "fastest" is the fastest provider a user can pick; cuda / triton is the CUDA path's time over
            # Triton's (the CUDA target is <= 1.0x on every shape). A ratio is drawn only between clean rows.
            fused = min((p for p in USABLE if p in ms), key=lambda p: ms[p], default=None)

            def ratio(a, b, text):
                return "noisy" if {a, b} & noisy else text.format(ms[a] / ms[b])

            speed = ratio("ref", fused, "{:.2f}x faster") if fused and "ref" in ms else "-"
            floor = ratio(fused, "floor", "{:.2f}x floor") if fused and "floor" in ms else "-"
            versus = ratio("cuda", "triton", "{:.2f}x") if "cuda" in ms and "triton" in ms else "-"
            out.append(f"| {key[3]} | {key[4]} | " + " | ".join(
                (f"{ms[p]:.3f}" + ("~" if p in noisy else "")) if p in ms else "-" for p in providers)
                       + f" | {speed} | {floor} | {versus} | "
                       + " | ".join(f"{mem[p]:.0f}" if p in mem else "-" for p in providers) + " |")
        out.append("")
    out += _against_the_paper(rows)
    from .host import markdown as host_markdown
    host = host_markdown(rows)
    return "\n".join(out) + ("\n" + host if host else "")


def _against_the_paper(rows) -> list:
    """The e2e cases that carry the paper's figure (paper_seconds: its 0.13 s for one 512 px image), against it."""
    import json
    lines = []
    for r in sorted(rows, key=lambda r: (r["device"], r["shape"], r["provider"])):
        paper = json.loads(r["params"] or "{}").get("paper_seconds") if r["metric"] == "median_ms" else None
        if paper:
            seconds = float(r["value"]) / 1e3
            lines.append(f"- {r['device']}: {r['shape']} ({r['provider']}) {seconds * 1e3:.1f} ms, "
                         f"{seconds / paper:.2f}x the paper's {paper * 1e3:.0f} ms")
    return ["### Against the paper's 512 px latency\n", *lines, ""] if lines else []


def plots(rows, out_dir) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = latest(rows)
    cases = _cases(rows)
    by_fig = defaultdict(list)
    for key in sorted(cases):
        by_fig[key[:3]].append(key)
    paths = []
    for (device, op, dtype), keys in by_fig.items():
        modes = sorted({k[4] for k in keys}, key=lambda m: (MODES.index(m) if m in MODES else len(MODES), m))
        fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4), squeeze=False)
        for ax, mode in zip(axes[0], modes):
            mk = [k for k in keys if k[4] == mode]
            providers = sorted({p for k in mk for p in cases[k]})
            width = 0.8 / max(1, len(providers))
            for j, p in enumerate(providers):
                vals = [cases[k].get(p, {}).get("median_ms", (float("nan"),))[0] for k in mk]
                ax.bar([i + j * width for i in range(len(mk))], vals, width, label=p)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(mk))], [k[3] for k in mk], rotation=20, fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("median ms (log)")
            ax.set_title(f"{mode}")
            ax.legend(fontsize=7)
        fig.suptitle(f"{op} - {device} - {dtype}", fontsize=9)
        fig.tight_layout()
        slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{op}_{device}_{dtype}").strip("_")[:80]
        path = os.path.join(out_dir, f"{slug}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def write(csv_path=DEFAULT_CSV, out_dir=RESULTS_DIR, make_plots=True):
    rows = read_rows(csv_path)
    text = markdown(rows)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "SUMMARY.md"), "w") as f:
        f.write("# Benchmark summary (generated from results.csv; latest run per case)\n\n"
                "A time marked ~ is noisy: its spread (p80 - p20) exceeds 20% of its median, or its fwd+bwd is below "
                "its fwd; no speed-up is computed from it.\n\n" + text)
    paths = plots(rows, out_dir) if make_plots else []
    return text, paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--csv", default=DEFAULT_CSV)
    parser.add_argument("--out", default=RESULTS_DIR)
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    text, paths = write(args.csv, args.out, not args.no_plots)
    print(text)
    for p in paths:
        print(f"plot: {p}")


if __name__ == "__main__":
    main()
