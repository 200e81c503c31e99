"""End-to-end benchmark: the whole model with every layer on one impl (ref, torch, triton, cuda, and auto:
what a user gets by default).

Cases (preset "small" on a GPU under bf16 autocast, "tiny" on CPU in fp32):
  G_fwd_b1, G_fwd_b32 (b4 on CPU)   generator forward latency, text encoding included
  D_fwdbwd_b32 (b4 on CPU)          discriminator forward + backward on a 64 px (32 px) pyramid
  train_step_b32 (b4 on CPU)        one full training step: D phase (matching-aware, lazy R1 on), G phase, EMA
  upsampler_b1                      64 -> 256 (tiny: 16 -> 64)
  paper_G_fwd_b1                    GPU only: the paper preset's 657M-parameter base generator at batch 1,
                                    against the paper's 0.13 s for its whole 512 px pipeline
  G_fwd_b1_compiled                 GPU only, impl auto: tokens -> images through Generator.synthesize under
                                    torch.compile(mode="reduce-overhead") (the CLIP text tower included, the
                                    tokenizer not); the compile's seconds in the log
  upsampler_b1_compiled             the same for Upsampler.synthesize (text tower and mapping included)
  paper_pipeline_{256,512}_b1[_compiled]
                                    GPU only, impl auto: the paper preset's pipeline at batch 1, tokens -> base
                                    generator (64 px) -> upsampler, 4x (preset "paper", 256 px) and 8x (preset
                                    "paper-512", 512 px); eager, and compiled as one graph. The paper: 0.13 s at 512 px
  lucidrains_step_b16 (b2 on CPU)   lucidrains/gigagan-pytorch's own unconditional Generator and Discriminator
                                    (64 px, 21M + 22M parameters; 32 px and tiny on CPU): a D phase and a G
                                    phase (hinge losses on generated images), timed under the providers
                                    "lucidrains" (as published) and "lucidrains_patched" (after
                                    gigagan_kernels.integrations.patch_gigagan_pytorch, impl auto)

    python -m benchmarks.bench_e2e [--shapes G_fwd_b1,...] [--providers ref,triton] [--quick]
"""
from __future__ import annotations

import contextlib
import tempfile
import time
import warnings

import torch

from gigagan_kernels import backend, use_impl

from .common import ResultWriter, bench_main, peak_memory_mb, record, time_fn

OP = "e2e"
PROVIDERS = ("ref", "torch", "triton", "cuda", "auto", "lucidrains", "lucidrains_patched")
LUCIDRAINS_PROVIDERS = ("lucidrains", "lucidrains_patched")
GPU_CASES = {"G_fwd_b1": 1, "G_fwd_b32": 32, "D_fwdbwd_b32": 32, "train_step_b32": 32, "upsampler_b1": 1,
             "paper_G_fwd_b1": 1, "lucidrains_step_b16": 16, "G_fwd_b1_compiled": 1, "upsampler_b1_compiled": 1,
             "paper_pipeline_256_b1": 1, "paper_pipeline_256_b1_compiled": 1, "paper_pipeline_512_b1": 1,
             "paper_pipeline_512_b1_compiled": 1}
# Cases that compile (minutes each on a GPU) or build the paper's networks run under impl auto only.
AUTO_ONLY = ("_compiled", "paper_pipeline")
PAPER_PIPELINE_SECONDS = 0.13          # the paper's 512 px figure (text-to-image, one image)
CPU_CASES = {"G_fwd_b1": 1, "G_fwd_b4": 4, "D_fwdbwd_b4": 4, "train_step_b4": 4, "upsampler_b1": 1,
             "lucidrains_step_b2": 2}
CAPTION = "a small red circle in the top left on a blue background"


def available(provider, device):
    if provider in LUCIDRAINS_PROVIDERS:
        import importlib.util
        return None if importlib.util.find_spec("gigagan_pytorch") else "gigagan-pytorch is not installed"
    if provider in ("ref", "torch", "auto"):
        return None
    if provider == "triton" and device.type == "cpu":
        return "the Triton interpreter is a correctness tool, not timed"
    return backend.unavailable_reason(provider, device, "adaptive_modconv2d")


def _autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _case_fn(name, batch, device, model, trainer):
    G, D, U = model.generator, model.discriminator, model.upsampler
    captions = [CAPTION] * batch
    if name.startswith("G_fwd"):
        z = torch.randn(batch, G.z_dim, device=device)
        return lambda: G(z, captions, noise_mode="none")[0], "fwd"
    if name.startswith("D_fwdbwd"):
        text = model.clip.encode(captions)
        pyramid = [torch.randn(batch, 3, D.resolution >> i, D.resolution >> i, device=device)
                   for i in range(D.num_levels)]

        def d_step():
            D.zero_grad(set_to_none=True)
            loss = sum(lg.float().mean() for lg in D(pyramid, text))
            loss.backward()
            return loss
        return d_step, "fwd+bwd"
    if name.startswith("train_step"):
        images = torch.rand(batch, 3, G.resolution, G.resolution, device=device) * 2 - 1

        def step():
            trainer.step = 0                                # every timed step includes the lazy R1 term
            return trainer.train_step(images, captions)
        return step, "step"
    if name.startswith("upsampler"):
        x = torch.rand(batch, 3, U.in_resolution, U.in_resolution, device=device) * 2 - 1
        return lambda: U(x, captions, noise_mode="none")[0], "fwd"
    raise KeyError(name)


def run(device: torch.device, shapes=None, providers=PROVIDERS, dtypes=None, csv_path=None, quick=False, log=print,
        deadline=None):
    """dtypes is ignored: the model runs under bf16 autocast on a GPU and in fp32 on a CPU. deadline
    (time.monotonic()): cases not started by then are skipped, and said so."""
    import importlib.util
    if importlib.util.find_spec("open_clip") is None:         # e.g. a bare GPU box with only torch and triton
        log(f"  {OP}: skipped (the model needs open_clip_torch; pip install -r requirements.txt)")
        return csv_path
    from gigagan.training import TrainConfig, Trainer
    from .common import DEFAULT_CSV
    cases = GPU_CASES if device.type == "cuda" else CPU_CASES
    preset = "small" if device.type == "cuda" else "tiny"
    dtype_name = "bfloat16-autocast" if device.type == "cuda" else "float32"
    writer = ResultWriter(csv_path or DEFAULT_CSV, device)
    rep = dict(rep_ms=200 if quick else 1000, warmup_ms=50 if quick else 200, cpu_reps=3 if quick else 5)
    if unknown := [n for n in shapes or () if n not in GPU_CASES and n not in CPU_CASES]:
        raise ValueError(f"shapes: unknown e2e cases {unknown}; choose from {sorted({**GPU_CASES, **CPU_CASES})}")
    if elsewhere := [n for n in shapes or () if n not in cases]:
        for name in elsewhere:
            log(f"  {OP} {name}: skipped ({'GPU only' if device.type == 'cpu' else 'a CPU case'})")
        shapes = [n for n in shapes if n in cases]
        if not shapes:
            return csv_path
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")                    # random CLIP tower: fine for timing
        torch.manual_seed(0)
        trainer = Trainer(TrainConfig(preset=preset, device=device.type, out=tmp, progress=False))
        model = trainer.model
        for name in shapes or list(cases):
            batch = cases[name]
            for provider in providers:
                if name.startswith("lucidrains") != (provider in LUCIDRAINS_PROVIDERS):
                    continue                                # lucidrains' models run only under their providers
                if any(tag in name for tag in AUTO_ONLY) and provider != "auto":
                    continue
                why = available(provider, device)
                if deadline is not None and time.monotonic() > deadline:
                    why = "the benchmark's time budget is spent"
                if why:
                    log(f"  {OP} {name} {provider}: skipped ({why})")
                    continue
                try:
                    with use_impl("auto" if provider in LUCIDRAINS_PROVIDERS else provider), _autocast(device):
                        if name.startswith("lucidrains"):
                            fn, mode = _lucidrains_step(batch, device, patched=provider == "lucidrains_patched")
                        elif name == "paper_G_fwd_b1":
                            fn, mode = _paper_generator(device)
                        elif name.startswith("paper_pipeline"):
                            fn, mode = _paper_pipeline(device, 512 if "_512_" in name else 256,
                                                       name.endswith("_compiled"), log)
                        elif name.endswith("_compiled"):
                            fn, mode = _compiled_entry(name, device, model, log)
                        else:
                            fn, mode = _case_fn(name, batch, device, model, trainer)
                        grad = torch.enable_grad() if mode != "fwd" else torch.no_grad()
                        with grad:
                            t = time_fn(fn, device, **rep)
                            mem = peak_memory_mb(fn, device)
                except torch.OutOfMemoryError:
                    log(f"  {OP} {name} {provider}: out of memory")
                    torch.cuda.empty_cache()
                    continue
                params = {"preset": "paper" if name.startswith("paper") else preset, "batch": batch}
                if name.startswith("paper_pipeline"):
                    params.update(preset="paper-512" if "_512_" in name else "paper",
                                  paper_seconds=PAPER_PIPELINE_SECONDS)
                record(writer, OP, name, params, provider, mode, dtype_name, t, mem)
                writer.flush()
                log(f"  {OP} {name} {provider}: {mode} {t.median_ms:.2f} ms"
                    + (f" / {mem:.0f} MiB" if mem is not None else ""))
    writer.flush()
    return csv_path


def _lucidrains_step(batch, device, patched):
    """One D phase and one G phase of lucidrains' own unconditional GigaGAN, patched or as published."""
    import gigagan_pytorch as lucidrains
    import torch.nn.functional as F
    from gigagan_kernels.integrations import patch_gigagan_pytorch
    if device.type == "cuda":
        size, style, kw = 64, 256, dict(dim_capacity=16, dim_max=512)
        g_kw, d_kw = dict(self_attn_resolutions=(32, 16)), dict(attn_resolutions=(32, 16))
    else:
        size, style, kw = 32, 32, dict(dim_capacity=4, dim_max=32)
        g_kw = dict(self_attn_resolutions=(8,), self_attn_dim_head=8, self_attn_heads=2)
        d_kw = dict(attn_resolutions=(8,), attn_dim_head=8, attn_heads=2, multiscale_input_resolutions=(16,))
    torch.manual_seed(0)
    G = lucidrains.Generator(image_size=size, style_network=dict(dim=style, depth=2), unconditional=True,
                             cross_attn_resolutions=(), num_conv_kernels=2, **kw, **g_kw).to(device)
    D = lucidrains.Discriminator(image_size=size, unconditional=True, num_conv_kernels=2, **kw, **d_kw).to(device)
    if patched:
        patch_gigagan_pytorch(G)
        patch_gigagan_pytorch(D)

    def step():
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
        images, rgbs = G(noise=torch.randn(batch, style, device=device), return_all_rgbs=True)
        logits, multiscale, _ = D(images.detach(), [r.detach() for r in rgbs], calc_aux_loss=False)
        (F.relu(1 + logits).mean() + sum(F.relu(1 + m).mean() for m in multiscale)).backward()
        logits, multiscale, _ = D(images, rgbs, calc_aux_loss=False)
        loss = -(logits.mean() + sum(m.mean() for m in multiscale))
        loss.backward()
        return loss
    return step, "step"


_PAPER_G = {}


def _paper_generator(device):
    """The paper preset's base generator, built once in bf16 on the GPU."""
    from gigagan import get_preset
    from gigagan.generator import Generator
    from gigagan.text import FrozenCLIPText
    if "G" not in _PAPER_G:
        cfg = get_preset("paper")
        with torch.device(device):
            G = Generator(cfg.generator, FrozenCLIPText(cfg.text)).to(torch.bfloat16).eval()
        _PAPER_G["G"] = G
    G = _PAPER_G["G"]
    z = torch.randn(1, G.z_dim, device=device, dtype=torch.bfloat16)
    return (lambda: G(z, [CAPTION], noise_mode="none")[0]), "fwd"


def _compile(fn, device, args, log, what):
    """fn under torch.compile(mode="reduce-overhead") as the sampling commands run it (gigagan.entry), after one
    eager call under tune() (the dispatcher's decisions must be in the table before a compile traces it); the
    compile's seconds go to the log. Returns a call that starts a new CUDA graph step."""
    from gigagan.entry import compile_entry
    from gigagan_kernels import tune
    with torch.no_grad():
        tune(fn, *args)
        compiled = compile_entry(fn, device)
        start = time.perf_counter()
        compiled(*args)
        compiled(*args)                                    # reduce-overhead records its graph on a later call
        torch.cuda.synchronize(device)
    log(f"  {OP} {what}: compiled in {time.perf_counter() - start:.1f} s")

    def call():
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args)
    return call


def _compiled_entry(name, device, model, log):
    """tokens -> images through the tensor-only entry, compiled: G.synthesize, or Upsampler.synthesize."""
    G, U = model.generator, model.upsampler
    tokens = G.tokenize([CAPTION]).to(device)
    if name.startswith("G_fwd"):
        args = (torch.randn(1, G.z_dim, device=device), tokens)
        fn = _compile(G.synthesize, device, args, log, name)
    else:
        x = torch.rand(1, 3, U.in_resolution, U.in_resolution, device=device) * 2 - 1
        args = (x, torch.randn(1, U.z_dim, device=device), U.text_encoder.clip.tokenize([CAPTION]).to(device))
        fn = _compile(U.synthesize, device, args, log, name)
    return (lambda: fn()[0]), "fwd"


_PAPER_PIPELINES = {}


def _paper_pipeline(device, size, compiled, log):
    """The paper preset's pipeline at batch 1 in bf16 (fp32 on a CPU, whose bilinear resize has no bf16; the tests
    run it there): tokens -> base generator (64 px) -> upsampler (4x: preset "paper", 8x: "paper-512"), with the
    upsampler's input noise; one function, so a compile makes it one graph."""
    from gigagan import get_preset
    from gigagan.generator import Generator
    from gigagan.text import FrozenCLIPText
    from gigagan.upsampler import Upsampler
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if size not in _PAPER_PIPELINES:
        _PAPER_PIPELINES.clear()                           # one pair of paper networks in memory at a time
        cfg = get_preset("paper-512" if size == 512 else "paper")
        with torch.device(device):
            clip = FrozenCLIPText(cfg.text)
            G = Generator(cfg.generator, clip).to(dtype).eval()
            U = Upsampler(cfg.upsampler, clip).to(dtype).eval()
        _PAPER_PIPELINES[size] = (G, U)
    G, U = _PAPER_PIPELINES[size]

    def pipeline(z, tokens, z_up, input_noise):
        image = G.synthesize(z, tokens)[0]
        return U.synthesize(image, z_up, tokens, input_noise=input_noise)[0]
    tokens = G.tokenize([CAPTION]).to(device)
    args = (torch.randn(1, G.z_dim, device=device, dtype=dtype), tokens,
            torch.randn(1, U.z_dim, device=device, dtype=dtype),
            torch.randn(1, 3, G.resolution, G.resolution, device=device, dtype=dtype))
    if compiled:
        call = _compile(pipeline, device, args, log, f"paper pipeline {size} px")
        return call, "fwd"
    return (lambda: pipeline(*args)), "fwd"


def main(argv=None):
    bench_main(run, PROVIDERS, argv, __doc__)


if __name__ == "__main__":
    main()
