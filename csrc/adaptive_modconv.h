// Parameters of the adaptive modulated convolution kernels, passed by value (the StyleGAN ops layout).
// Shared by adaptive_modconv.cpp (torch side: checks, allocation, the GEMMs through ATen) and
// adaptive_modconv.cu (kernels, no torch headers).
//
// The "weights" decomposition: per-sample weights Wt[b, o, r] = s[b, i] * sum_n a[b, n] W[n, o, r] with
// r = i * k*k + t, the bank's own layout: Wt[b] is a [Cout, Cin*k*k] matrix for cuBLAS, and the build and
// the reduction read the bank and write or read Wt in the same order. Shapes below are those of one chunk.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace gigagan {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

constexpr int kModconvMaxFilters = 32;      // N: the softmax weights of a sample group sit in shared memory
constexpr int kModconvReduceSamples = 32;   // samples per launch of the weight-gradient reduction

// Wt[b] <- s[b] * (a[b] @ W) and d[b, o] <- rsqrt(sum_r Wt[b, o, r]^2 + eps), in one pass over the bank.
struct BuildWeightsParams {
    int B, N, Cout, Cin, KK;
    const void* weight_bank;    // [N, Cout, Cin*KK] contiguous
    const float* a;             // softmax(select_logits) [B, N] fp32 contiguous
    const void* style;          // [B, Cin], strides below
    int64_t stride_style[2];
    void* weights;              // out: [B, Cout, Cin*KK] contiguous, x's dtype
    float* d;                   // out: [B, Cout] fp32 contiguous, or null (no demodulation)
    float eps;
    bool vectorized;            // 16-byte loads and stores: Cin*KK % 8 == 0 and 16-byte aligned pointers
};

// im2col in the weights' row order: cols[b, i*KK + t, p] = x[b, i, p + offset(t)] (0 outside the image);
// col2im is its adjoint, dx[b, i, q] = sum_t dcols[b, i*KK + t, q - offset(t)], gathered (no atomics).
struct ColumnsParams {
    int B, Cin, H, W, ksize;
    const void* x;              // im2col: x [B, Cin, H, W], strides below
    void* grad_x;               // col2im: out dx [B, Cin, H, W], strides below
    int64_t stride_x[4];
    void* cols;                 // [B, Cin*KK, H*W] contiguous; col2im reads it
};

// y = epilogue(d * conv): noise, bias, lrelu * gain, clamp; lin = d * conv for the backward when asked.
struct EpilogueForwardParams {
    int B, Cout, H, W;
    const void* conv;           // [B, Cout, H, W], strides below (the GEMM's output)
    int64_t stride_conv[4];
    const float* d;             // [B, Cout] fp32 contiguous, or null
    const void* bias;           // [Cout] contiguous, or null
    const void* noise;          // broadcast to [B, Cout, H, W] by strides (0 on broadcast dims), or null
    int64_t stride_noise[4];
    void* y;
    int64_t stride_y[4];
    void* lin;                  // same strides as y, or null
    float gain, clamp;
    bool lrelu, has_clamp;
};

// One warp per (b, o) row. With g = dL/dlin: gz = d * g ([B, Cout, H*W] contiguous, the GEMMs' input),
// c[b, o] = d^2 sum_p g * lin (the demodulation term), bias_part[b, o] = sum_p g, and g itself (fp32) when
// noise needs its gradient (summed to the noise's shape by the caller).
struct EpilogueBackwardParams {
    int B, Cout, H, W;
    const void* grad_y;
    int64_t stride_grad_y[4];
    const void* lin;            // the demodulated conv before the epilogue (y itself when the epilogue is identity)
    int64_t stride_lin[4];
    const float* d;             // [B, Cout] fp32 contiguous
    const void* bias;
    const void* noise;
    int64_t stride_noise[4];
    void* grad_z;               // out: [B, Cout, H*W] contiguous
    float* c;                   // out: [B, Cout], or null (no demodulation)
    float* bias_part;           // out: [B, Cout], or null (no bias)
    float* grad_lin;            // out: g [B, Cout, H*W] fp32, or null (no noise)
    float gain, clamp;
    bool lrelu, has_clamp;
};

// From the per-sample weight gradient gw = dL/dWt (demodulation not yet applied) to the op's gradients:
//   G = gw - c[b, o] * Wmix * s  (Wmix = a @ W, recomputed),
//   dbank[n] (+)= sum_b a[b, n] G s,   da_part[block, b, n] = <W[n], G s> over the block's slice,
//   ds_part[o block, b, i] = sum_{o in block, t} G Wmix.
// A block owns a channel block (all taps) and a range of output channels; it keeps the bank slice and its
// gradient in registers and walks the samples (at most kModconvReduceSamples per launch).
struct ReduceParams {
    int B, N, Cout, Cin, KK;
    int channels_per_block, outputs_per_block;
    const void* grad_weights;   // gw [B, Cout, Cin*KK] contiguous
    const void* weight_bank;    // [N, Cout, Cin*KK] contiguous
    const float* a;             // [B, N] fp32 contiguous
    const void* style;
    int64_t stride_style[2];
    const float* c;             // [B, Cout] fp32 contiguous, or null (no demodulation)
    void* grad_bank;            // [N, Cout, Cin*KK] contiguous, x's dtype or fp32 (see accumulate_fp32)
    float* da_part;             // [gridDim.y * gridDim.x, B, N]
    float* ds_part;             // [gridDim.y, B, Cin]
    bool accumulate;            // add to grad_bank (launches after the first); grad_bank is then fp32
    bool fp32_grad_bank;
    bool vectorized;
};

// Host-side tile choices, shared with Python through the extension module (tests compare them).
struct ReduceTiles {
    int elements_per_thread, channels_per_block, outputs_per_block, channel_blocks, output_blocks;
};
ReduceTiles reduce_tiles(int N, int Cout, int Cin, int KK, bool vectorized, int element_size);

// Sample chunks under the workspace budget: plan_weights of gigagan_kernels/ops/adaptive_modconv2d/plans.py with its
// batched-GEMM form (a test checks they agree). keep: the forward's weights stay for the backward.
struct WeightsPlan {
    int64_t forward_chunk, backward_chunk;
    bool keep;
};
WeightsPlan plan_weights(int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int64_t k, int64_t element_size,
                         bool needs_grad, int keep /* -1: decide */, int64_t workspace);

cudaError_t build_weights_cuda(const BuildWeightsParams& p, DType dtype, cudaStream_t stream);
cudaError_t im2col_cuda(const ColumnsParams& p, DType dtype, cudaStream_t stream);
cudaError_t col2im_cuda(const ColumnsParams& p, DType dtype, cudaStream_t stream);
cudaError_t epilogue_forward_cuda(const EpilogueForwardParams& p, DType dtype, cudaStream_t stream);
cudaError_t epilogue_backward_cuda(const EpilogueBackwardParams& p, DType dtype, cudaStream_t stream);
cudaError_t reduce_weight_grad_cuda(const ReduceParams& p, DType dtype, cudaStream_t stream);

}  // namespace gigagan
