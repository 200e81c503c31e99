// C entry points over csrc/attention.cu's launchers, run by the CPU emulation (shim.h). The caller does what
// attention.cpp does around them: the kernel layout of q/k/v/dO, the base-2 scales, the workspaces.
#include "shim.h"

#include "attention.cu"

using namespace gigagan;

extern "C" {

// strides: q, k, v, out, grad_out, grad_q, grad_k, grad_v (4 each); pointers as attention.h documents them.
int emu_attention(int backward, int dtype, int B, int H, int Lq, int Lk, int D, int DV, const void* q, const void* k,
                  const void* v, const uint8_t* mask, const int64_t* strides, int l2, float qk_scale,
                  float bias_scale, float grad_scale, float* key_bias, int Lk_pad, void* out, float* lse,
                  const void* grad_out, float* delta, float* grad_q_accum, void* grad_q, void* grad_k,
                  void* grad_v) {
    AttentionParams p{};
    p.B = B, p.H = H, p.Lq = Lq, p.Lk = Lk, p.D = D, p.DV = DV;
    p.q = q, p.k = k, p.v = v, p.mask = mask;
    int64_t* dst[8] = {p.stride_q, p.stride_k, p.stride_v, p.stride_out, p.stride_grad_out, p.stride_grad_q,
                       p.stride_grad_k, p.stride_grad_v};
    for (int t = 0; t < 8; ++t)
        for (int i = 0; i < 4; ++i) dst[t][i] = strides[4 * t + i];
    p.l2 = l2 != 0, p.qk_scale = qk_scale, p.bias_scale = bias_scale, p.grad_scale = grad_scale;
    p.key_bias = key_bias, p.Lk_pad = Lk_pad, p.out = out, p.lse = lse;
    p.grad_out = grad_out, p.delta = delta, p.grad_q_accum = grad_q_accum;
    p.grad_q = grad_q, p.grad_k = grad_k, p.grad_v = grad_v;
    return backward ? attention_backward_cuda(p, DType(dtype), nullptr) : attention_forward_cuda(p, DType(dtype), nullptr);
}

}  // extern "C"
