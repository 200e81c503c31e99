// Parameters of the flash-style attention kernels, passed by value. Shared by attention.cpp and attention.cu.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "adaptive_modconv.h"  // DType

namespace gigagan {

constexpr int kAttentionMaxHeadDim = 128;
constexpr int kAttentionKeyTile = 128;  // key_bias rows are padded to a multiple of this (with -inf)

struct AttentionParams {
    int B, H, Lq, Lk, D, DV;
    // q, k, v (and grad_out, out) have unit stride along the head dim, 16-byte aligned rows, and at least
    // ceil(D / 8) * 8 (ceil(DV / 8) * 8) readable columns, zero past D (DV): attention.cpp copies what is not.
    const void* q;                 // [B, H, Lq, D]
    const void* k;                 // [B, H, Lk, D]
    const void* v;                 // [B, H, Lk, DV]
    const uint8_t* mask;           // [B, Lk] contiguous, nonzero = attend; or null
    int64_t stride_q[4], stride_k[4], stride_v[4];
    // Logit units are base 2: logit2 = qk_scale <q,k> + key_bias (l2: key_bias = -bias_scale ||k||^2).
    float qk_scale, bias_scale, grad_scale;
    bool l2;
    float* key_bias;               // workspace [B * H, Lk_pad] fp32: the per-key bias, -inf for masked or padding keys
    int Lk_pad;                    // Lk rounded up to kAttentionKeyTile
    void* out;                     // [B, H, Lq, DV]
    int64_t stride_out[4];
    float* lse;                    // [B, H, Lq] fp32 contiguous, base 2; +inf for a row with no visible key
    // Backward only.
    const void* grad_out;          // [B, H, Lq, DV], the same layout rules as q
    int64_t stride_grad_out[4];
    float* delta;                  // workspace [B, H, Lq]: rowsum(grad_out * out)
    float* grad_q_accum;           // workspace [B, H, Lq, D] fp32, zeroed: dQ / grad_scale, accumulated with atomics
    void* grad_q;
    void* grad_k;
    void* grad_v;
    int64_t stride_grad_q[4], stride_grad_k[4], stride_grad_v[4];
};

// Both return cudaSuccess or the error of raising a kernel's shared-memory limit.
cudaError_t attention_forward_cuda(const AttentionParams& p, DType dtype, cudaStream_t stream);
cudaError_t attention_backward_cuda(const AttentionParams& p, DType dtype, cudaStream_t stream);

}  // namespace gigagan
