"""The cost model against the measurements, for adaptive_modconv2d and attention: per provider and GPU
benchmark shape, the predicted time (gigagan_kernels/cost_model.py: FLOPs, HBM bytes and serial steps at
the card's fitted rates, and for attention a host floor per call) beside the latest committed measurement,
and each prediction's stages.

    python -m benchmarks.cost_model                 # the table, and the "weights" strategy's stages
    python -m benchmarks.cost_model --check         # exit 1 if a committed measurement of a formulation auto
                                                    # ranks (or of a floor) is missed by more than 30%, and list
                                                    # the ranked formulations no committed row measured
    python -m benchmarks.cost_model --csv my.csv    # compare with other measurements (same CSV format)
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

from gigagan_kernels import adaptive_modconv, cost_model

from . import bench_attention
from .bench_adaptive_modconv import GPU_SHAPES, OP, PROVIDERS
from .common import RESULTS_DIR, read_rows
from .summary import latest

TOLERANCE = 0.30
# The formulations auto ranks (its candidates' predicted_seconds): a committed measurement of one of them, as the
# code that wrote the row ran it, is checked; so are the floors the card's rates were fit to.
RANKED = ("ref", "torch_activations", "torch_weights", "torch_gram", "triton_weights", "triton_fused", "cuda")
ATTENTION_RANKED = ("ref", "torch_materialised", "torch", "torch_sdpa_flash", "torch_sdpa_efficient",
                    "torch_sdpa_cudnn", "triton", "cuda")
FITS = ("floor",)


def _shapes(params):
    return (params["B"], params["Cin"], params["H"], params["W"]), (params["N"], params["Cout"], params["Cin"],
                                                                     params["k"], params["k"])


def _old_torch_form(x_shape, bank_shape):
    """The torch composite before per-sample-weight GEMMs (git 10dc7e6, the first H200 run): activations where
    2*Cout*Cin*k^2 > N*(Cin+Cout)*H*W, else the reference's grouped convolution."""
    _, Cin, H, W = x_shape
    N, Cout, _, k, _ = bank_shape
    return "torch_activations" if k == 1 or 2 * Cout * Cin * k * k > N * (Cin + Cout) * H * W else "ref"


# What ran under each provider name in a committed results file whose code has changed since.
MEASURED_AS = {
    "nvidia_h200_2026-11-26.csv": {"torch": _old_torch_form, "triton": lambda *_: "triton_fused_v1",
                                  "triton_fused": lambda *_: "triton_fused_v1",
                                  "cuda": lambda *_: None},      # the first CUDA kernels: not modelled
}


def formulation(provider: str, x_shape, bank_shape, csv_name: str | None = None) -> str | None:
    """The cost model's formulation for a provider, as the code that wrote csv_name ran it (default: today's)."""
    then = MEASURED_AS.get(csv_name or "", {})
    if provider in then:
        return then[provider](x_shape, bank_shape)
    base = provider[:-3] if provider.endswith("_cl") else provider
    if base in ("ref", "peer", "floor", "floor_weights", "triton_weights", "triton_fused", "cuda"):
        return base
    if base.startswith("torch:"):                   # a torch form named as a candidate
        return {"activations": "torch_activations", "bmm": "torch_weights", "grouped": "ref",
                "gram": "torch_gram"}[base.split(":")[1]]
    if base == "torch":
        form = adaptive_modconv.torch_form(x_shape, bank_shape, "cuda")
        return {"activations": "torch_activations", "bmm": "torch_weights", "grouped": "ref"}[form]
    if base == "triton":
        return "triton_" + adaptive_modconv.triton_strategy(x_shape, bank_shape)
    if base == "auto":
        first = adaptive_modconv.auto_cuda_order(x_shape, bank_shape)[0]
        return formulation(first, x_shape, bank_shape)
    return None


def measurements(paths):
    """{(shape, provider, mode): (ms, csv name, row)} from the newest bf16 GPU rows of the modconv."""
    out = {}
    for path in paths:
        rows = [r for r in read_rows(path) if r["op"] == OP and r["metric"] == "median_ms"
                and r["dtype"] == "bfloat16" and not r["device"].startswith("cpu")]
        for r in latest(rows):
            out[(r["shape"], r["provider"], r["mode"])] = (float(r["value"]), os.path.basename(path), r)
    return out


def compare(paths):
    """Rows of (shape, provider, mode, formulation, predicted ms, measured ms or None, csv name)."""
    measured = measurements(paths)
    table = []
    for shape_name, params in GPU_SHAPES.items():
        x_shape, bank_shape = _shapes(params)
        for provider in PROVIDERS:
            for mode in cost_model.MODES:
                ms, csv_name, _ = measured.get((shape_name, provider, mode), (None, None, None))
                form = formulation(provider, x_shape, bank_shape, csv_name)
                if form is None and csv_name is not None:     # measured code that is not modelled: today's
                    ms, csv_name, form = None, None, formulation(provider, x_shape, bank_shape)
                if form is None:
                    continue
                predicted = cost_model.modconv_seconds(form, x_shape, bank_shape, mode) * 1e3
                table.append((shape_name, provider, mode, form, predicted, ms, csv_name))
    return table


def checked(table, ranked):
    """The rows --check holds to the tolerance: measured, and of a ranked formulation or a floor."""
    return [row for row in table if row[5] is not None and (row[3] in ranked or row[1] in FITS)]


def misses(table, ranked, tolerance=TOLERANCE):
    return [row for row in checked(table, ranked) if abs(row[4] / row[5] - 1) > tolerance]


def unmeasured(table, ranked) -> list:
    """The ranked formulations that no committed row measured at any shape: auto ranks them on predictions alone."""
    measured = {row[3] for row in table if row[5] is not None}
    return sorted(set(ranked) - measured)


# attention: what each provider ran, today and in older results files.
ATTENTION_MEASURED_AS = {"nvidia_h200_2026-11-26.csv": {"torch": "torch_materialised", "triton": "triton_v1",
                                                         "cuda": None}}   # the first CUDA kernels: not modelled


def attention_shape(params):
    return cost_model.AttentionShape(params["B"], params["H"], params["Lq"], params["Lk"], params["D"], params["D"],
                                     params["kind"], params["masked"])


def attention_formulation(provider, params, csv_name=None):
    then = ATTENTION_MEASURED_AS.get(csv_name or "", {})
    if provider in then:
        return then[provider]
    if provider in ("ref", "sdpa_bias", "floor", "torch", "triton", "cuda"):
        return provider
    if provider.startswith("torch:sdpa-"):
        return "torch_sdpa_" + provider.split("-", 1)[1]
    if provider == "auto":
        import torch
        from gigagan_kernels.attention import auto_cuda_order
        q = (params["B"], params["H"], params["Lq"], params["D"])
        k = (params["B"], params["H"], params["Lk"], params["D"])
        return auto_cuda_order(q, k, k, params["kind"], params["masked"], torch.bfloat16)[0]
    return None


def attention_compare(paths):
    measured = {}
    for path in paths:
        rows = [r for r in read_rows(path) if r["op"] == bench_attention.OP and r["metric"] == "median_ms"
                and r["dtype"] == "bfloat16" and not r["device"].startswith("cpu")]
        for r in latest(rows):
            measured[(r["shape"], r["provider"], r["mode"])] = (float(r["value"]), os.path.basename(path))
    table = []
    for shape_name, params in bench_attention.GPU_SHAPES.items():
        for provider in bench_attention.PROVIDERS:
            for mode in cost_model.MODES:
                ms, csv_name = measured.get((shape_name, provider, mode), (None, None))
                form = attention_formulation(provider, params, csv_name)
                if form is None and csv_name is not None:     # measured code that is not modelled: today's
                    ms, csv_name, form = None, None, attention_formulation(provider, params)
                if form is None:
                    continue
                predicted = cost_model.attention_seconds(form, attention_shape(params), mode) * 1e3
                table.append((shape_name, provider, mode, form, predicted, ms, csv_name))
    return table


def stages_text(form: str) -> str:
    lines = []
    for shape_name, params in GPU_SHAPES.items():
        x_shape, bank_shape = _shapes(params)
        for mode in ("fwd", "bwd"):
            stages = cost_model.modconv_stages(form, x_shape, bank_shape, mode)
            total = sum(st.seconds for st in stages) * 1e3
            lines.append(f"  {shape_name} {mode}: {total:.3f} ms = " + " + ".join(
                f"{st.name} {st.seconds * 1e3:.3f} ({st.bound})" for st in stages))
    return "\n".join(lines)


def print_table(table) -> None:
    """compare()'s rows as a markdown table."""
    print("| shape | provider | mode | formulation | predicted ms | measured ms | predicted / measured |")
    print("|---|---|---|---|---|---|---|")
    for shape_name, provider, mode, form, predicted, ms, _ in table:
        ratio = f"{predicted / ms:.2f}" if ms else "unmeasured"
        print(f"| {shape_name} | {provider} | {mode} | {form} | {predicted:.3f} | "
              f"{f'{ms:.3f}' if ms else '-'} | {ratio} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", action="append", help="results CSV(s); default: every committed GPU CSV")
    parser.add_argument("--check", action="store_true", help=f"exit 1 on a miss above {TOLERANCE:.0%} of a "
                        "formulation auto ranks, or of a floor")
    args = parser.parse_args(argv)
    paths = args.csv or sorted(p for p in glob.glob(os.path.join(RESULTS_DIR, "*.csv"))
                               if not os.path.basename(p).startswith(("cpu", "results")))
    table = compare(paths)
    print(f"adaptive_modconv2d on {cost_model.H200.name} (bf16): predicted vs measured "
          f"({', '.join(os.path.basename(p) for p in paths) or 'no measurements'})\n")
    print_table(table)
    print("\nThe \"weights\" strategy's predicted stages (H200, bf16):")
    print(stages_text("triton_weights"))
    attention_table = attention_compare(paths)
    print(f"\nattention on {cost_model.H200_ATTENTION.name} (bf16, B16 H8 d64): predicted vs measured\n")
    print_table(attention_table)
    bad = misses(table, RANKED) + misses(attention_table, ATTENTION_RANKED)
    if args.check:
        held = checked(table, RANKED) + checked(attention_table, ATTENTION_RANKED)
        print(f"\ncheck: {len(held)} measurements of formulations auto ranks and of the floors, {len(bad)} missed "
              f"by more than {TOLERANCE:.0%}")
        print("predicted only (auto ranks them, no committed row measured today's code): modconv "
              f"{', '.join(unmeasured(table, RANKED)) or 'none'}; attention "
              f"{', '.join(unmeasured(attention_table, ATTENTION_RANKED)) or 'none'}")
        for row in bad:
            print("  miss: " + json.dumps(dict(zip(("shape", "provider", "mode", "formulation", "predicted_ms",
                                                    "measured_ms", "csv"), row))))
        return 1 if bad or not held else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
