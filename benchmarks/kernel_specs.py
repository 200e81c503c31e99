"""What the static kernel report (kernel_report.py) compiles: every Triton config the dispatcher can pick, per
input dtype, with the argument types the launchers pass and the integer specialisations Triton's JIT makes at
GigaGAN's shapes (pointers 16-byte aligned, "divisible" integers multiples of 16, "ones" equal to 1).

Each spec: kernel, config (a name), dtype, tensor_cores (a GEMM that must use them), num_warps, num_stages,
pointers {arg: type}, floats (fp32 args), constexprs, optional divisible / ones, optional targets (a config
table kept per architecture compiles only for its own).
"""
from __future__ import annotations

import torch

from gigagan_kernels.ops.adaptive_modconv2d import plans as mc
from gigagan_kernels.ops.adaptive_modconv2d import triton_common as mc_common
from gigagan_kernels.ops.adaptive_modconv2d import triton_fused as mc_fused
from gigagan_kernels.ops.adaptive_modconv2d import triton_weights as mc_weights
from gigagan_kernels.ops.adaptive_modconv2d.common import ACT_LRELU
from gigagan_kernels.ops.attention import plans as at
from gigagan_kernels.ops.attention import triton_flash as at_flash

TL_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def adaptive_modconv_specs():
    specs = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        t = TL_NAMES[dtype]
        dot = dict(DOT_DTYPE=mc_common.dot_dtype(dtype), DOT_PRECISION="tf32" if dtype == torch.float32 else "ieee")
        launch = lambda cfg: {k: cfg[k] for k in ("num_warps", "num_stages")}  # noqa: E731
        blocks = lambda cfg: {k: v for k, v in cfg.items() if k.startswith("BLOCK")}  # noqa: E731
        # Strategy "fused", with the integer hints the JIT specialises at GigaGAN's shapes.
        fused_hints = dict(ones=("stride_ln", "stride_sc"),
                           divisible=("Cin", "Cout", "stride_bank_n", "stride_bank_o", "stride_sb", "stride_xb",
                                      "stride_xc", "stride_gzb", "stride_gzc", "stride_db", "stride_cb"))
        fwd_configs = [(f"n{n_pad}{name}", n_pad, cfg) for n_pad, table in mc.FUSED_FWD_CONFIGS.items()
                       for name, cfg in table.items()]
        fwd_configs += [(f"n16-sweep-{name}", 16, tiles["fwd"]) for name, tiles in mc.FUSED_SWEEP.items()
                        if tiles["fwd"] not in mc.FUSED_FWD_CONFIGS[16].values()]
        dbank_configs = [(f"n{n_pad}", n_pad, cfg) for n_pad, cfg in mc.FUSED_DBANK_CONFIGS.items()]
        dbank_configs += [(f"n16-sweep-{name}", 16, tiles["dbank"]) for name, tiles in mc.FUSED_SWEEP.items()
                          if tiles["dbank"] != mc.FUSED_DBANK_CONFIGS[16]]
        for config, n_pad, cfg in fwd_configs:
            specs.append(dict(
                kernel=mc_fused._fused_fwd_kernel, config=config, dtype=t, tensor_cores=True, **launch(cfg),
                pointers=dict(X_ptr=t, Bank_ptr=t, Logits_ptr=t, S_ptr=t, D_ptr="fp32", Bias_ptr=t,
                              Noise_ptr=t, Y_ptr=t, Lin_ptr=t),
                floats=("eps", "gain", "clamp"),
                constexprs=dict(KSIZE=3, DEMOD=True, HAS_BIAS=True, HAS_NOISE=True, ACT=ACT_LRELU,
                                HAS_CLAMP=True, SAVE_LIN=True, N_PAD=n_pad, GROUP=cfg["GROUP"],
                                MIX_COLS=max(16, cfg["GROUP"]), **dot, **blocks(cfg)), **fused_hints))
            dx = {("BLOCK_I" if name == "BLOCK_O" else name): v for name, v in cfg.items()}
            specs.append(dict(
                kernel=mc_fused._fused_dx_kernel, config=config, dtype=t, tensor_cores=True, **launch(dx),
                pointers=dict(GZ_ptr=t, X_ptr=t, Bank_ptr=t, Logits_ptr=t, S_ptr=t, DX_ptr=t, DS_ptr="fp32"),
                floats=(), constexprs=dict(KSIZE=3, N_PAD=n_pad, GROUP=dx["GROUP"], MIX_COLS=max(16, dx["GROUP"]),
                                           **dot, **blocks(dx)), **fused_hints))
        for config, n_pad, cfg in dbank_configs:
            specs.append(dict(
                kernel=mc_fused._fused_dbank_kernel, config=config, dtype=t, tensor_cores=True, **launch(cfg),
                pointers=dict(GZ_ptr=t, X_ptr=t, Bank_ptr=t, Logits_ptr=t, S_ptr=t, C_ptr="fp32", DBank_ptr=t,
                              DAPart_ptr="fp32", DSR_ptr="fp32"),
                floats=(), constexprs=dict(KSIZE=3, DEMOD=True, N_PAD=n_pad, GROUP=cfg["GROUP"],
                                           MIX_COLS=max(16, cfg["GROUP"]), **dot, **blocks(cfg)), **fused_hints))
        # Strategy "weights": N_PAD 16 covers N <= 16 (GigaGAN's 4 and 8), 32 the rest. The integer hints are
        # what the JIT specialises at GigaGAN's shapes (channels multiples of 16, contiguous a and s,
        # channels-last x and pixel-major gz in the implicit GEMMs).
        split = dtype != torch.float32
        mixing = dict(ones=("stride_ln", "stride_sc"),
                      divisible=("Cin", "Cout", "stride_bank_n", "stride_bank_o", "stride_sb", "stride_wb",
                                 "stride_gwb", "stride_cb", "stride_db"))
        for n_pad in (16, 32):
            for gb, cfg in mc.BUILD_CONFIGS.items():
                specs.append(dict(
                    kernel=mc_weights._build_weights_kernel, config=f"g{gb}n{n_pad}", dtype=t, tensor_cores=True,
                    **launch(cfg),
                    pointers=dict(Bank_ptr=t, Logits_ptr=t, S_ptr=t, Wt_ptr=t, D_ptr="fp32"), floats=("eps",),
                    constexprs=dict(KK=9, DEMOD=True, N_PAD=n_pad, GROUP_B=gb, SPLIT_A=split, **dot,
                                    **blocks(cfg)), **mixing))
            for gb in mc.BUILD_CONFIGS:
                element = 4 if dtype == torch.float32 else 2
                cfg = mc.reduce_config(gb, n_pad, element)
                for k in (3, 1):                            # GigaGAN's 3x3 layers and its 1x1 (to-RGB) ones
                    taps_pad, block_c = mc.reduce_columns(k, gb, n_pad, element)
                    for dbank_type in sorted({t, "fp32"}):      # fp32 when several launches accumulate
                        specs.append(dict(
                            kernel=mc_weights._reduce_dweights_kernel, config=f"g{gb}n{n_pad}k{k}-{dbank_type}",
                            dtype=t, tensor_cores=True, **launch(cfg),
                            pointers=dict(GW_ptr=t, Bank_ptr=t, Logits_ptr=t, S_ptr=t, C_ptr="fp32",
                                          DBank_ptr=dbank_type, DAPart_ptr="fp32", DSPart_ptr="fp32"),
                            floats=(), constexprs=dict(TAPS=k * k, TAPS_PAD=taps_pad, DEMOD=True, N_PAD=n_pad,
                                                       GROUP_B=gb, BLOCK_C=block_c, **dot),
                            **mixing))
        epilogue = dict(DEMOD=True, HAS_BIAS=True, HAS_NOISE=True, ACT=ACT_LRELU, HAS_CLAMP=True, SAVE_LIN=True)
        for name, cfg in mc.CONV_FWD_CONFIGS.items():
            specs.append(dict(
                kernel=mc_weights._conv_fwd_kernel, config=name, dtype=t, tensor_cores=True, **launch(cfg),
                pointers=dict(X_ptr=t, Wt_ptr=t, D_ptr="fp32", Bias_ptr=t, Noise_ptr=t, Y_ptr=t, Lin_ptr=t),
                floats=("gain", "clamp"), constexprs=dict(KSIZE=3, **epilogue, **dot, **blocks(cfg)),
                ones=("stride_xc", "stride_yw", "stride_nw"),
                divisible=("Cin", "Cout", "H", "W", "stride_xb", "stride_xh", "stride_xw", "stride_wb", "stride_db",
                           "stride_nb", "stride_nc", "stride_nh", "stride_yb", "stride_yc", "stride_yh")))
        for name, cfg in mc.CONV_DX_CONFIGS.items():
            specs.append(dict(
                kernel=mc_weights._conv_dx_kernel, config=name, dtype=t, tensor_cores=True, **launch(cfg),
                pointers=dict(GZ_ptr=t, Wt_ptr=t, DX_ptr=t), floats=(),
                constexprs=dict(KSIZE=3, **dot, **blocks(cfg)), ones=("stride_gzc", "stride_dxw"),
                divisible=("Cin", "Cout", "H", "W", "stride_gzb", "stride_gzp", "stride_wb", "stride_dxb",
                           "stride_dxc", "stride_dxh")))
        for name, cfg in mc.CONV_DWEIGHT_CONFIGS.items():
            specs.append(dict(
                kernel=mc_weights._conv_dweight_kernel, config=name, dtype=t, tensor_cores=True, **launch(cfg),
                pointers=dict(GZ_ptr=t, X_ptr=t, GW_ptr=t), floats=(),
                constexprs=dict(KSIZE=3, **dot, **blocks(cfg)), ones=("stride_gzc", "stride_xc"),
                divisible=("Cin", "Cout", "H", "W", "stride_gzb", "stride_gzp", "stride_xb", "stride_xh",
                           "stride_xw", "stride_gwb")))
        for kernel in (mc_weights._im2col_kernel, mc_weights._col2im_kernel):
            specs.append(dict(
                kernel=kernel, config="default", dtype=t, tensor_cores=False, **launch(mc.COLUMNS_CONFIG),
                pointers={name: t for name in kernel.arg_names if name.endswith("_ptr")}, floats=(),
                constexprs=dict(KSIZE=3, **blocks(mc.COLUMNS_CONFIG))))
        specs.append(dict(
            kernel=mc_weights._epilogue_fwd_kernel, config="default", dtype=t, tensor_cores=False,
            **launch(mc.EPILOGUE_CONFIG),
            pointers=dict(Conv_ptr=t, D_ptr="fp32", Bias_ptr=t, Noise_ptr=t, Y_ptr=t, Lin_ptr=t),
            floats=("gain", "clamp"), constexprs=dict(**epilogue, **blocks(mc.EPILOGUE_CONFIG))))
        for noise_grad in (1, 2):
            specs.append(dict(
                kernel=mc_common._epilogue_bwd_kernel, config=f"noise{noise_grad}", dtype=t, tensor_cores=False,
                **launch(mc.EPILOGUE_BWD_CONFIG),
                pointers=dict(GY_ptr=t, Lin_ptr=t, D_ptr="fp32", Bias_ptr=t, Noise_ptr=t, GZ_ptr=t, C_ptr="fp32",
                              BiasPart_ptr="fp32", NoiseGrad_ptr="fp32" if noise_grad == 1 else t),
                floats=("gain", "clamp"),
                constexprs=dict(DEMOD=True, HAS_BIAS=True, HAS_NOISE=True, NOISE_GRAD=noise_grad, ACT=ACT_LRELU,
                                HAS_CLAMP=True, **blocks(mc.EPILOGUE_BWD_CONFIG))))
        for taps in (0, 9):         # "weights" (no per-tap style terms), "fused" at k = 3
            specs.append(dict(
                kernel=mc_common._finish_grads_kernel, config=f"taps{taps}", dtype=t, tensor_cores=False,
                **launch(mc.FINISH_CONFIG),
                pointers=dict(Logits_ptr=t, DAPart_ptr="fp32", DSPart_ptr="fp32", DSR_ptr="fp32", BiasPart_ptr="fp32",
                              NoisePart_ptr="fp32", DLogits_ptr=t, DS_ptr=t, DBias_ptr=t, DNoise_ptr=t),
                floats=(), ones=("stride_ln", "stride_dln", "stride_dsc"),
                constexprs=dict(TAPS=taps, TAPS_PAD=mc.next_power_of_2(taps), HAS_BIAS=True, HAS_NOISE_PART=True,
                                N_PAD=16, **blocks(mc.FINISH_CONFIG))))
    return specs


def attention_specs():
    """Every attention config the dispatcher can pick, per dtype and kind."""
    specs = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        t = TL_NAMES[dtype]
        width = "fp32" if dtype == torch.float32 else "16bit"
        precision = "tf32" if width == "fp32" else "ieee"
        for kind in (at_flash.KIND_L2, at_flash.KIND_DOT):
            for (bd, w), cfg in at.FWD_CONFIGS.items():
                if w == width:
                    specs.append(dict(
                        kernel=at_flash._attn_fwd_kernel, config=f"d{bd}-{'l2' if kind else 'dot'}", dtype=t,
                        tensor_cores=True, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                        pointers=dict(Q_ptr=t, K_ptr=t, V_ptr=t, Bias_ptr="fp32", O_ptr=t, LSE_ptr="fp32"),
                        floats=("qk_scale",), divisible=("D", "DV"),
                        ones=("stride_qd", "stride_kd", "stride_vd", "stride_od"),
                        constexprs=dict(HAS_BIAS=kind == at_flash.KIND_L2, DOT_PRECISION=precision,
                                        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=bd, BLOCK_DV=bd)))
            for (bd, w, arch), cfg in at.BWD_CONFIGS.items():
                if w == width:
                    specs.append(dict(
                        kernel=at_flash._attn_bwd_kernel, config=f"d{bd}-{'l2' if kind else 'dot'}-{arch}", dtype=t,
                        targets=(90,) if arch == "sm90" else (80,),
                        tensor_cores=True, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                        pointers=dict(Q_ptr=t, K_ptr=t, V_ptr=t, Mask_ptr="i8", DO_ptr=t, LSE_ptr="fp32",
                                      Delta_ptr="fp32", DQacc_ptr="fp32", DK_ptr=t, DV_ptr=t),
                        floats=("qk_scale", "bias_scale", "grad_scale"), divisible=("D", "DV"),
                        ones=("stride_qd", "stride_kd", "stride_vd", "stride_dod", "stride_dkd", "stride_dvd"),
                        constexprs=dict(KIND=kind, HAS_MASK=kind == at_flash.KIND_DOT, DOT_PRECISION=precision,
                                        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=bd, BLOCK_DV=bd)))
        specs.append(dict(
            kernel=at_flash._key_bias_kernel, config="d128-l2-masked", dtype=t, tensor_cores=False,
            num_warps=at.KEY_BIAS_CONFIG["num_warps"], num_stages=at.KEY_BIAS_CONFIG["num_stages"],
            pointers=dict(K_ptr=t, Mask_ptr="i8", Bias_ptr="fp32"), floats=("bias_scale",),
            constexprs=dict(KIND=at_flash.KIND_L2, HAS_MASK=True, BLOCK_N=at.KEY_BIAS_CONFIG["BLOCK_N"], BLOCK_D=128)))
        specs.append(dict(
            kernel=at_flash._attn_bwd_delta_kernel, config="d128", dtype=t, tensor_cores=False,
            num_warps=at.DELTA_CONFIG["num_warps"], num_stages=at.DELTA_CONFIG["num_stages"],
            pointers=dict(O_ptr=t, DO_ptr=t, Delta_ptr="fp32", DQacc_ptr="fp32"), floats=(),
            constexprs=dict(BLOCK_M=at.DELTA_CONFIG["BLOCK_M"], BLOCK_DV=128, BLOCK_D=128)))
    return specs
