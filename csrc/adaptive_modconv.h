// Parameters of the adaptive modulated convolution kernels, passed by value (the StyleGAN ops layout).
// Shared by adaptive_modconv.cpp (torch side: checks, allocation) and adaptive_modconv.cu (kernels).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace gigagan {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

constexpr int kModconvMaxFilters = 32;  // N; the bank-gradient kernel keeps N tiles in registers

struct ModconvShape {
    int B, Cin, Cout, H, W, N, ksize;
};

struct ModconvForwardParams {
    ModconvShape shape;
    const void* x;              // [B, Cin, H, W], strides below
    const void* weight_bank;    // [N, Cout, Cin, k, k] contiguous
    const void* select_logits;  // [B, N], strides below
    const void* style;          // [B, Cin], strides below
    const void* bias;           // [Cout] contiguous, or null
    const void* noise;          // broadcast to [B, Cout, H, W] by strides (0 on broadcast dims), or null
    float* a;                   // out: softmax(select_logits) [B, N] fp32 contiguous
    float* d;                   // out: demodulation coefficients [B, Cout] fp32 contiguous
    void* y;                    // out: [B, Cout, H, W], strides below
    void* lin;                  // out: the conv before the epilogue, same strides as y, or null
    int64_t stride_x[4], stride_logits[2], stride_style[2], stride_noise[4], stride_y[4];
    float eps, gain, clamp;
    bool demodulate, lrelu, has_clamp;
};

struct ModconvBackwardParams {
    ModconvShape shape;
    const void* grad_z;         // d * dL/dlin, [B, Cout, H, W] contiguous
    const float* c;             // d^2 * sum_p dL/dlin * lin, [B, Cout] fp32 contiguous (demodulation term)
    const void* x;
    const void* weight_bank;
    const void* select_logits;
    const void* style;
    float* a;                   // workspace: softmax(select_logits) [B, N]
    void* grad_x;               // [B, Cin, H, W], strides below
    void* grad_bank;            // [N, Cout, Cin, k, k] contiguous
    float* grad_a;              // [B, N] fp32, zero-initialised (atomics)
    float* grad_logits;         // [B, N] fp32
    float* grad_style;          // [B, Cin] fp32, zero-initialised (atomics)
    int64_t stride_x[4], stride_logits[2], stride_style[2], stride_grad_x[4];
    bool demodulate;
};

void adaptive_modconv2d_forward_cuda(const ModconvForwardParams& p, DType dtype, cudaStream_t stream);
void adaptive_modconv2d_backward_cuda(const ModconvBackwardParams& p, DType dtype, cudaStream_t stream);

}  // namespace gigagan
