"""GPU proof of the model's host path (scripts/gpu_check.sh, phase "host"; needs a CUDA device):

  sync      one forward of the small generator's tensor-only entry (Generator.synthesize) and one training step
            under torch.cuda.set_sync_debug_mode("error"), which turns every synchronising CUDA call into an error.
            The training step's one designed sync (distributed.agree: every rank skips a non-finite step
            together) runs with the mode off, and is counted;
  capture   one torch.compile(mode="reduce-overhead") capture of the entry (CUDA graphs): its images match eager
            bf16 within bf16 rounding, and a replay with other captions gives other images.

Each check prints "ok <name>: ..." or "FAILED <name>: ..." with the traceback of the first synchronising call;
the exit code is the number of failures. Inputs are moved to the GPU before a check starts (a copy from pageable
host memory synchronises).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gigagan import GigaGAN, get_preset                                       # noqa: E402
from gigagan.entry import compile_entry                                      # noqa: E402
from gigagan_kernels import tune, use_impl                                   # noqa: E402

CAPTIONS = ["a small red circle in the top left on a blue background", "a large green square on white"]
OTHER = ["a blue triangle at the bottom right on a yellow background", "two white circles on black"]


def _report(name: str, fn) -> bool:
    try:
        print(f"ok {name}: {fn()}", flush=True)
        return True
    except Exception:                                     # noqa: BLE001 - every failure is reported, then counted
        print(f"FAILED {name}:\n{traceback.format_exc()}", flush=True)
        return False
    finally:
        torch.cuda.set_sync_debug_mode(0)


def generator_forward_without_sync(G, device) -> str:
    z = torch.randn(2, G.z_dim, device=device)
    tokens = G.tokenize(CAPTIONS).to(device)
    with torch.no_grad(), use_impl("auto"), torch.autocast("cuda", dtype=torch.bfloat16):
        tune(G.synthesize, z, tokens, truncation=0.7)     # the first call times candidates: that syncs, by design
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        G.synthesize(z, tokens, truncation=0.7)
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize(device)
    return "Generator.synthesize (truncation 0.7, batch 2, impl auto, bf16 autocast) made no synchronising call"


def training_step_without_sync(device) -> str:
    from gigagan.training import TrainConfig
    from gigagan.training import state as state_module
    from gigagan.training.state import TrainState
    designed = []
    real_agree = state_module.agree

    def agree_counted(*args, **kwargs):                   # the step's one designed sync, with the mode off
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(0)
        try:
            designed.append(1)
            return real_agree(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(mode)
    state_module.agree = agree_counted
    try:
        with tempfile.TemporaryDirectory() as out:
            state = TrainState(TrainConfig(preset="small", batch_size=8, device="cuda", out=out, progress=False,
                                           r1_interval=2), log=lambda msg: None)
            images = (torch.rand(8, 3, state.resolution, state.resolution) * 2 - 1).to(device)
            captions = (CAPTIONS + OTHER) * 2
            with use_impl("auto"):
                tune(state.train_step, images, captions)  # step 0: tuning (and R1)
                state.train_step(images, captions)        # step 1: no R1
                torch.cuda.synchronize(device)
                designed.clear()
                torch.cuda.set_sync_debug_mode("error")
                stats = state.train_step(images, captions)    # step 2: with the lazy R1 term
                torch.cuda.set_sync_debug_mode(0)
    finally:
        state_module.agree = real_agree
    assert len(designed) == 1, f"the step called agree {len(designed)} times, expected once"
    assert "r1" in stats and not stats["skipped"], stats
    return ("one training step of the small preset (batch 8, lazy R1 on, impl auto, bf16) made no synchronising "
            "call besides its one designed agree()")


def reduce_overhead_capture(G, device) -> str:
    z = torch.randn(2, G.z_dim, device=device)
    tokens, other = G.tokenize(CAPTIONS).to(device), G.tokenize(OTHER).to(device)
    with torch.no_grad(), use_impl("auto"), torch.autocast("cuda", dtype=torch.bfloat16):
        eager = G.synthesize(z, tokens)[0].float()
        compiled = compile_entry(G.synthesize, device)
        start = time.perf_counter()
        for _ in range(3):                                # reduce-overhead records the CUDA graph on a later call
            torch.compiler.cudagraph_mark_step_begin()
            out = compiled(z, tokens)[0].float().clone()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        torch.compiler.cudagraph_mark_step_begin()
        replay = compiled(z, other)[0].float().clone()
    err = ((out - eager).norm() / eager.norm()).item()
    assert err < 3e-2, f"compiled vs eager relative error {err:.3g} (bf16: below 3e-2 expected)"
    assert not torch.allclose(replay, out), "a replay with other captions gave the same images"
    from torch._dynamo.utils import counters
    skips = dict(counters["inductor"]).get("cudagraph_skips", 0)
    assert skips == 0, f"Inductor skipped the CUDA graph {skips} time(s); run with TORCH_LOGS=perf_hints for why"
    return f"reduce-overhead compile + 3 calls {seconds:.1f} s, captured (no cudagraph skip); vs eager {err:.2e}"


def main() -> int:
    if not torch.cuda.is_available():
        print("host_check: needs a CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    warnings.simplefilter("ignore")                       # the random-CLIP line
    torch.manual_seed(0)
    G = GigaGAN(get_preset("small")).generator.to(device).eval()
    results = [_report("sync: generator forward", lambda: generator_forward_without_sync(G, device)),
               _report("sync: training step", lambda: training_step_without_sync(device)),
               _report("capture: reduce-overhead", lambda: reduce_overhead_capture(G, device))]
    return results.count(False)


if __name__ == "__main__":
    sys.exit(main())
