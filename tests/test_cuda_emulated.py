"""The CUDA extension's kernels (csrc/*.cu), run on the CPU: a GPU-free check of their index math, fragment layouts
and synchronisation.

tests/cuda_emulation/shim.h runs a block's threads as fibers, and writes out the PTX instructions the kernels use
(ldmatrix, mma.sync, cp.async, cvt.rna.tf32) from the PTX ISA. The kernel sources are compiled as they are, after
two textual rewrites (prepare()): a `<<<...>>>` launch becomes a call into the emulator, and each inline `asm`
statement of csrc/common.cuh the emulated instruction. Each launcher is compared with torch on small shapes,
outputs poisoned first. What it cannot see: timing, races between blocks (blocks run one at a time), and the
hardware's own rounding inside an MMA (the emulator accumulates in float64). Needs g++ (C++20) and the CUDA
headers; skipped without them.

test_kernels_under_address_sanitizer runs the same cases again with the kernels built under AddressSanitizer:
an out-of-bounds read or write of a tensor or of shared memory fails it (compute-sanitizer's memcheck, on a CPU).
"""
from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from gigagan_kernels.attention import attention_ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
EMULATION = os.path.join(ROOT, "tests", "cuda_emulation")
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
LOG2E = 1.4426950408889634
SANITIZE_ENV = "GIGAGAN_EMULATION_ASAN"


# ----------------------------------------------------------------------------------------------
# Building the emulated kernels
# ----------------------------------------------------------------------------------------------
def _rewrite_kernels(text: str) -> str:
    """`kernel<<<grid, block, smem, stream>>>(args)` -> `::emu::launch(kernel, grid, block, smem, stream, args)`;
    `extern __shared__ T name[];` -> a pointer into the emulator's dynamic shared memory."""
    text, launches = re.subn(r"(\w+(?:<[^;]*?>)?)<<<(.*?)>>>\(", r"::emu::launch(\1, \2, ", text, flags=re.S)
    assert launches, "no kernel launch found"
    return re.sub(r"extern __shared__\s+(?:__align__\(\d+\)\s+)?([\w ]+?)\s+(\w+)\[\];",
                  r"\1* \2 = reinterpret_cast<\1*>(::emu::dynamic_smem());", text)


def _emulated_asm(match: re.Match) -> str:
    body = match.group(1)
    if "ldmatrix" in body:
        count = re.search(r"\.x(\d)", body).group(1)
        return f"::emu::ldmatrix<{count}, {'true' if '.trans' in body else 'false'}>(r, p);"
    if "cvt.rna.tf32.f32" in body:
        return "r = ::emu::to_tf32(v);"
    if "mma.sync" in body and "m16n8k16" in body:
        return f"::emu::mma<16>(c, a, b, {1 if '.bf16' in body else 0});"
    if "mma.sync" in body and "m16n8k8" in body and ".tf32" in body:
        return "{ const uint32_t a_[4] = {a0, a1, a2, a3}, b_[2] = {b0, b1}; ::emu::mma<8>(c, a_, b_, 2); }"
    if "cp.async.cg.shared.global" in body:
        return "if (valid) std::memcpy(dst, src, 16); else std::memset(dst, 0, 16);"
    if "cp.async.commit_group" in body or "cp.async.wait_group" in body:
        return "(void)0;"   # the emulated copies complete at once
    raise AssertionError(f"csrc/common.cuh: no emulation for the instruction in: asm({body.strip()[:80]}...)")


def _rewrite_common(text: str) -> str:
    text, count = re.subn(r"asm(?:\s+volatile)?\s*\((.*?)\);", _emulated_asm, text, flags=re.S)
    assert count >= 8, count
    return text


def _cuda_include() -> str | None:
    candidates = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include"), "/usr/local/cuda/include"]
    candidates += sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "*", "include")))
    for d in candidates:
        if all(os.path.isfile(os.path.join(d, h)) for h in ("cuda_fp16.h", "cuda_bf16.h", "cuda_runtime_api.h")):
            return d
    return None


@functools.cache
def library():
    """The emulated kernels as a shared library, built once per version of their sources."""
    compiler, include = shutil.which("g++"), _cuda_include()
    if compiler is None or include is None:
        pytest.skip("needs g++ and the CUDA headers (cuda_fp16.h) to compile the kernels for the CPU")
    sources = {name: open(os.path.join(CSRC, name)).read()
               for name in ("adaptive_modconv.cu", "adaptive_modconv.h", "attention.cu", "attention.h", "common.cuh")}
    harness = {name: open(os.path.join(EMULATION, name)).read()
               for name in ("shim.h", "harness_modconv.cpp", "harness_attention.cpp")}
    sanitize = os.environ.get(SANITIZE_ENV) == "1"
    digest = hashlib.sha256(repr(sorted({**sources, **harness}.items())).encode()).hexdigest()[:16]
    build = os.path.join(ROOT, "build", "cuda_emulation", digest + ("-asan" if sanitize else ""))
    path = os.path.join(build, "libemulated_kernels.so")
    if not os.path.isfile(path):
        os.makedirs(build, exist_ok=True)
        for name, text in sources.items():
            if name.endswith(".cu"):
                text = _rewrite_kernels(text)
            elif name == "common.cuh":
                text = _rewrite_common(text)
            # Written whole and renamed: xdist workers may build the same version side by side.
            with open(os.path.join(build, f"{name}.{os.getpid()}"), "w") as f:
                f.write(text)
            os.replace(os.path.join(build, f"{name}.{os.getpid()}"), os.path.join(build, name))
        cmd = [compiler, "-std=c++20", "-O1", "-shared", "-fPIC", "-w", f"-I{build}", f"-I{EMULATION}",
               *(("-fsanitize=address", "-fno-omit-frame-pointer", "-g") if sanitize else ()),
               f"-I{include}", os.path.join(EMULATION, "harness_modconv.cpp"),
               os.path.join(EMULATION, "harness_attention.cpp"), "-o", f"{path}.{os.getpid()}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-4000:]
        os.replace(f"{path}.{os.getpid()}", path)
    return ctypes.CDLL(path)


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else ctypes.c_void_p(0)


def _strides(t, dims=4):
    return (ctypes.c_int64 * dims)(*(t.stride() if t is not None else (0,) * dims))


def _poisoned(*shape, dtype=torch.float32):
    return torch.full(shape, float("nan"), dtype=dtype)


def _close(out, ref, tol, name):
    out, ref = out.double(), ref.double()
    assert not torch.isnan(out).any(), f"{name}: NaN (an element the kernel never wrote)"
    err = ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


# ----------------------------------------------------------------------------------------------
# adaptive_modconv2d's kernels
# ----------------------------------------------------------------------------------------------
def _expanded_style(s, KK):
    return s.repeat_interleave(KK, dim=1)  # [B, Cin * KK] in the weights' row order r = i * KK + t


@pytest.mark.parametrize("dtype, Cin, N, B", [(torch.float32, 5, 3, 11), (torch.float16, 16, 8, 9),
                                              (torch.bfloat16, 24, 20, 3), (torch.float32, 8, 1, 17)])
def test_build_weights(dtype, Cin, N, B):
    lib = library()
    torch.manual_seed(Cin + N)
    Cout, k = 6, 3
    KK = k * k
    bank = torch.randn(N, Cout, Cin, k, k).to(dtype)
    a = torch.softmax(torch.randn(B, N), 1)
    style = torch.randn(Cin, B).to(dtype).t()              # strided, as a view of the caller's tensor may be
    weights, d = _poisoned(B, Cout, Cin * KK, dtype=dtype), _poisoned(B, Cout)
    vectorized = (Cin * KK) % 8 == 0
    assert lib.emu_build_weights(DTYPE_CODES[dtype], B, N, Cout, Cin, KK, _ptr(bank), _ptr(a), _ptr(style),
                                 _strides(style, 2), _ptr(weights), _ptr(d), ctypes.c_float(1e-8),
                                 int(vectorized)) == 0
    mixed = (a.double() @ bank.double().reshape(N, -1)).view(B, Cout, Cin * KK)
    expected = mixed * _expanded_style(style.double(), KK)[:, None, :]
    _close(weights, expected, TOL[dtype], "weights")
    _close(d, torch.rsqrt(expected.square().sum(2) + 1e-8), TOL[torch.float32] * 10, "d")


@pytest.mark.parametrize("dtype, k, channels_last", [(torch.float32, 3, False), (torch.float16, 5, True),
                                                     (torch.bfloat16, 1, False)])
def test_columns(dtype, k, channels_last):
    lib = library()
    torch.manual_seed(k)
    B, Cin, H, W = 2, 3, 5, 7
    x = torch.randn(B, Cin, H, W).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    cols = _poisoned(B, Cin * k * k, H * W, dtype=dtype)
    assert lib.emu_columns(DTYPE_CODES[dtype], 1, B, Cin, H, W, k, _ptr(x), None, _strides(x), _ptr(cols)) == 0
    assert torch.equal(cols, F.unfold(x.float(), k, padding=k // 2).to(dtype))
    dcols = torch.randn(B, Cin * k * k, H * W).to(dtype)
    dx = _poisoned(B, Cin, H, W, dtype=dtype)
    if channels_last:
        dx = dx.contiguous(memory_format=torch.channels_last)
    assert lib.emu_columns(DTYPE_CODES[dtype], 0, B, Cin, H, W, k, None, _ptr(dx), _strides(dx), _ptr(dcols)) == 0
    _close(dx, F.fold(dcols.double(), (H, W), k, padding=k // 2), TOL[dtype], "col2im")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lrelu, clamp, noise", [(True, 0.5, "pixel"), (False, None, "full"), (True, None, None)])
def test_epilogues(dtype, lrelu, clamp, noise):
    lib = library()
    torch.manual_seed(3)
    B, Cout, H, W = 3, 5, 4, 6
    gain = 1.3
    conv = torch.randn(B, H, W, Cout).to(dtype).permute(0, 3, 1, 2)   # the GEMM's output in any layout
    d = torch.rand(B, Cout) + 0.5
    bias = torch.randn(Cout).to(dtype)
    noise_t = None if noise is None else torch.randn((B, 1, H, W) if noise == "pixel" else (B, Cout, H, W)).to(dtype)
    noise_full = None if noise_t is None else noise_t.expand(B, Cout, H, W)
    y, lin = _poisoned(B, Cout, H, W, dtype=dtype), _poisoned(B, Cout, H, W, dtype=dtype)
    has_clamp = clamp is not None
    assert lib.emu_epilogue_forward(DTYPE_CODES[dtype], B, Cout, H, W, _ptr(conv), _strides(conv), _ptr(d),
                                    _ptr(bias), _ptr(noise_full), _strides(noise_full), _ptr(y), _strides(y),
                                    _ptr(lin), ctypes.c_float(gain), ctypes.c_float(clamp or 0.0), int(lrelu),
                                    int(has_clamp)) == 0
    lin_ref = conv.double() * d.double()[:, :, None, None]
    v = lin_ref + bias.double()[None, :, None, None] + (0 if noise_full is None else noise_full.double())
    act = torch.where(v > 0, v, 0.2 * v) if lrelu else v
    y_ref = act * gain
    if has_clamp:
        y_ref = y_ref.clamp(-clamp, clamp)
    _close(lin, lin_ref, TOL[dtype], "lin")
    _close(y, y_ref, TOL[dtype] * 2, "y")
    # Backward, from the lin it wrote.
    grad_y = torch.randn(B, Cout, H, W).to(dtype)
    grad_z = _poisoned(B, Cout, H * W, dtype=dtype)
    c, bias_part, grad_lin = _poisoned(B, Cout), _poisoned(B, Cout), _poisoned(B, Cout, H, W)
    assert lib.emu_epilogue_backward(DTYPE_CODES[dtype], B, Cout, H, W, _ptr(grad_y), _strides(grad_y), _ptr(lin),
                                     _strides(lin), _ptr(d), _ptr(bias), _ptr(noise_full), _strides(noise_full),
                                     _ptr(grad_z), _ptr(c), _ptr(bias_part), _ptr(grad_lin), ctypes.c_float(gain),
                                     ctypes.c_float(clamp or 0.0), int(lrelu), int(has_clamp)) == 0
    v = lin.double() + bias.double()[None, :, None, None] + (0 if noise_full is None else noise_full.double())
    slope = torch.where(v > 0, 1.0, 0.2) * gain if lrelu else torch.full_like(v, gain)
    g = grad_y.double() * slope
    if has_clamp:
        g = torch.where((v * slope).abs() <= clamp, g, 0.0)
    _close(grad_z.view(B, Cout, H, W), g * d.double()[:, :, None, None], TOL[dtype] * 2, "grad_z")
    _close(c, (g * lin.double()).sum((2, 3)) * d.double() ** 2, TOL[dtype] * 2, "c")
    _close(bias_part, g.sum((2, 3)), TOL[dtype] * 2, "bias_part")
    _close(grad_lin, g, TOL[dtype] * 2, "grad_lin")


@pytest.mark.parametrize("dtype, N, Cin, Cout, k, B", [
    (torch.float32, 3, 5, 7, 3, 6),       # scalar rows (Cin * 9 not a multiple of 8): the N <= 32, 1-element tile
    (torch.float32, 8, 16, 6, 3, 9),      # 16-byte rows, N <= 8 (4 elements a thread in fp32)
    (torch.bfloat16, 8, 24, 5, 3, 32),    # N <= 8 (8 elements a thread), a full launch of 32 samples
    (torch.float16, 4, 8, 3, 1, 5),       # N <= 4, 1x1 filters: one tap
    (torch.bfloat16, 12, 16, 4, 3, 7),    # N <= 16
    (torch.float32, 20, 8, 3, 5, 4),      # N <= 32, 5x5
    (torch.float32, 2, 300, 2, 1, 3),     # 1x1 with more channels than a block takes: 2 channel blocks
    (torch.float16, 2, 8, 1100, 1, 2),    # more output channels than blocks: 3 walked by each block
])
@pytest.mark.parametrize("accumulate", [False, True])
def test_reduce_weight_grad(dtype, N, Cin, Cout, k, B, accumulate):
    lib = library()
    torch.manual_seed(N * Cin + k)
    KK, R = k * k, Cin * k * k
    vectorized = R % 8 == 0
    bank = torch.randn(N, Cout, Cin, k, k).to(dtype)
    a = torch.softmax(torch.randn(B, N), 1)
    style = torch.randn(B, Cin).to(dtype)
    c = torch.randn(B, Cout)
    grad_w = torch.randn(B, Cout, R).to(dtype)
    fp32_out = accumulate or dtype == torch.float32
    previous = torch.randn(N, Cout, Cin, k, k)
    grad_bank = previous.clone() if accumulate else _poisoned(N, Cout, Cin, k, k,
                                                              dtype=torch.float32 if fp32_out else dtype)
    tiles = (ctypes.c_int * 5)()
    code = DTYPE_CODES[dtype]
    lib.emu_reduce(code, B, N, Cout, Cin, KK, None, None, None, None, None, None, None, None, None, 0, 0,
                   int(vectorized), tiles)
    _, _, _, channel_blocks, output_blocks = tiles
    da_part = _poisoned(channel_blocks * output_blocks, B, N)
    ds_part = _poisoned(output_blocks, B, Cin)
    assert lib.emu_reduce(code, B, N, Cout, Cin, KK, _ptr(grad_w), _ptr(bank), _ptr(a), _ptr(style),
                          _strides(style, 2), _ptr(c), _ptr(grad_bank), _ptr(da_part), _ptr(ds_part), int(accumulate),
                          int(fp32_out), int(vectorized), tiles) == 0
    s = _expanded_style(style.double(), KK)[:, None, :]
    w = bank.double().reshape(N, Cout, R)
    mixed = torch.einsum("bn,nor->bor", a.double(), w)
    G = grad_w.double() - c.double()[:, :, None] * mixed * s
    Gs = G * s
    expected_bank = torch.einsum("bn,bor->nor", a.double(), Gs).view(N, Cout, Cin, k, k)
    if accumulate:
        expected_bank = expected_bank + previous.double()
    tol = TOL[torch.float32 if fp32_out else dtype] * 10
    _close(grad_bank, expected_bank, tol, "dbank")
    _close(da_part.sum(0), torch.einsum("nor,bor->bn", w, Gs), TOL[torch.float32] * 10, "dselect")
    _close(ds_part.sum(0), (G * mixed).view(B, Cout, Cin, KK).sum((1, 3)), TOL[torch.float32] * 10, "dstyle")


# ----------------------------------------------------------------------------------------------
# attention's kernels
# ----------------------------------------------------------------------------------------------
def _kernel_layout(t):
    """attention.cpp's kernel_layout: unit stride along the head dim, rows of a multiple of 8 elements."""
    dim = t.shape[-1]
    padded = -(-dim // 8) * 8
    out = torch.zeros(*t.shape[:-1], padded, dtype=t.dtype)
    out[..., :dim] = t
    return out


def _attention(q, k, v, mask, kind, scale, grad_out=None):
    """The launchers with attention.cpp's set-up around them: (out, lse) or (grad_q, grad_k, grad_v)."""
    lib = library()
    B, H, Lq, D = q.shape
    Lk, DV = k.shape[2], v.shape[3]
    l2 = kind == "l2"
    qk_scale = (2 * scale if l2 else scale) * LOG2E
    bias_scale = scale * LOG2E if l2 else 0.0
    grad_scale = 2 * scale if l2 else scale
    Lk_pad = -(-Lk // 128) * 128
    key_bias = _poisoned(B * H, Lk_pad)
    qk, kk, vk = (_kernel_layout(t) for t in (q, k, v))
    mask_bytes = mask.to(torch.uint8).contiguous() if mask is not None else None
    out, lse = _poisoned(B, H, Lq, DV, dtype=q.dtype), _poisoned(B, H, Lq)
    backward = grad_out is not None
    if backward:
        out, lse = _attention(q, k, v, mask, kind, scale)
        gk = _kernel_layout(grad_out)
        delta, accum = _poisoned(B, H, Lq), torch.zeros(B, H, Lq, D)
        grads = (_poisoned(B, H, Lq, D, dtype=q.dtype), _poisoned(B, H, Lk, D, dtype=q.dtype),
                 _poisoned(B, H, Lk, DV, dtype=q.dtype))
    else:
        gk = delta = accum = None
        grads = (None, None, None)
    strides = (ctypes.c_int64 * 32)(*[s for t in (qk, kk, vk, out, gk, *grads)
                                      for s in (t.stride() if t is not None else (0, 0, 0, 0))])
    assert lib.emu_attention(int(backward), DTYPE_CODES[q.dtype], B, H, Lq, Lk, D, DV, _ptr(qk), _ptr(kk), _ptr(vk),
                             _ptr(mask_bytes), strides, int(l2), ctypes.c_float(qk_scale),
                             ctypes.c_float(bias_scale), ctypes.c_float(grad_scale), _ptr(key_bias), Lk_pad,
                             _ptr(out), _ptr(lse), _ptr(gk), _ptr(delta), _ptr(accum), *(_ptr(g) for g in grads)) == 0
    return grads if backward else (out, lse)


ATTENTION_CASES = [
    # dtype, B, H, Lq, Lk, D, Dv, kind, mask: partial query and key tiles, head dims off the 8-multiple
    (torch.float32, 1, 2, 37, 45, 24, 20, "l2", None),
    (torch.float16, 2, 1, 70, 9, 16, 16, "dot", "with_empty_row"),
    (torch.bfloat16, 1, 1, 20, 130, 64, 64, "l2", "random"),       # 3 key tiles forward, 2 key blocks backward
    (torch.float32, 1, 1, 33, 17, 100, 100, "l2", "random"),       # head-dim tile 128, fp32's 32-key tiles
    (torch.float16, 1, 1, 66, 40, 128, 128, "dot", None),          # 32-query backward tiles at head dim 128
    (torch.bfloat16, 1, 2, 150, 70, 64, 48, "dot", "random"),      # two 128-row forward blocks (2 row tiles a warp)
]


def _mask(B, Lk, kind, gen):
    if kind is None:
        return None
    m = torch.rand(B, Lk, generator=gen) > 0.3
    m[:, 0] = True
    if kind == "with_empty_row":
        m[-1] = False
    return m


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: f"{c[0]}-{c[3]}x{c[4]}-d{c[5]}-{c[7]}-{c[8]}")
def test_attention_forward_and_backward(case):
    dtype, B, H, Lq, Lk, D, Dv, kind, mask_kind = case
    gen = torch.Generator().manual_seed(Lq * Lk + D)
    q, k, v = (torch.randn(B, H, L, d, generator=gen).to(dtype) for L, d in ((Lq, D), (Lk, D), (Lk, Dv)))
    mask = _mask(B, Lk, mask_kind, gen)
    scale = 1.0 / math.sqrt(D)
    out, lse = _attention(q, k, v, mask, kind, scale)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref = attention_ref(q64, k64, v64, kind=kind, scale=scale, key_padding_mask=mask)
    # The kernels' products round their 16-bit inputs as the hardware does; the emulated MMA adds in float64.
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    _close(out, ref, tol, "out")
    if mask_kind == "with_empty_row":
        assert torch.equal(out[-1], torch.zeros_like(out[-1])) and torch.isinf(lse[-1]).all()
    grad_out = torch.randn(B, H, Lq, Dv, generator=gen).to(dtype)
    grads = _attention(q, k, v, mask, kind, scale, grad_out=grad_out)
    expected = torch.autograd.grad(ref, (q64, k64, v64), grad_out.double())
    for name, got, want in zip(("dq", "dk", "dv"), grads, expected):
        _close(got, want, tol * 2, name)


def test_kernels_under_address_sanitizer():
    """Every case above once more, in a process with the kernels built under AddressSanitizer."""
    if os.environ.get(SANITIZE_ENV) == "1":
        pytest.skip("this process is the sanitized run")
    library()  # skips without a compiler
    runtime = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(runtime) or not os.path.isfile(runtime):
        pytest.skip("no AddressSanitizer runtime (libasan.so) for g++")
    env = dict(os.environ, **{SANITIZE_ENV: "1", "LD_PRELOAD": runtime,
                              "ASAN_OPTIONS": "detect_leaks=0:detect_stack_use_after_return=0:abort_on_error=0"})
    env.pop("PYTEST_XDIST_WORKER", None)
    # Triton's own library aborts under AddressSanitizer as it loads (its pybind module throws through an
    # uninstrumented __cxa_throw), and importing the package imports it through torch._dynamo: the sanitized run
    # blocks triton, which the emulated kernels do not use.
    code = ("import sys; sys.modules['triton'] = None; import pytest; "
            f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-p', 'no:xdist', {os.path.abspath(__file__)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    report = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0 and "AddressSanitizer" not in report, report
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) >= 30, report
