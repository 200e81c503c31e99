// Torch side of the CUDA flash-style attention: argument checks that name the argument, allocation,
// dtype dispatch and the launch on the current stream; torch.library registration. Autograd and fake
// kernels are added from Python (gigagan_kernels/ops/attention/cuda.py).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <cmath>

#include "attention.h"

namespace gigagan {
namespace {

constexpr const char* kOp = "attention(impl='cuda'): ";
constexpr double kLog2e = 1.4426950408889634;

DType dtype_of(const at::Tensor& t) {
    switch (t.scalar_type()) {
        case at::kFloat: return DType::kFloat32;
        case at::kHalf: return DType::kFloat16;
        case at::kBFloat16: return DType::kBFloat16;
        default: TORCH_CHECK(false, kOp, "q must be float32, float16 or bfloat16, got ", t.scalar_type());
    }
}

void check_like(const at::Tensor& t, const char* name, const at::Tensor& q) {
    TORCH_CHECK(t.is_cuda(), kOp, name, " must be a CUDA tensor, got device ", t.device());
    TORCH_CHECK(t.device() == q.device(), kOp, name, " is on ", t.device(), " but q is on ", q.device());
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), kOp, name, " has dtype ", t.scalar_type(), " but q has dtype ",
                q.scalar_type());
    TORCH_CHECK(t.dim() == 4, kOp, name, " must be 4-D [B, H, L, D], got shape ", t.sizes());
}

template <size_t N> void copy_strides(int64_t (&dst)[N], const at::Tensor& t) {
    for (size_t i = 0; i < N; ++i) dst[i] = t.stride(i);
}

// Shapes, kind, scale and mask: everything both directions share. Returns the mask as contiguous bytes.
AttentionParams check_common(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, c10::string_view kind,
                             double scale, const std::optional<at::Tensor>& mask, at::Tensor& mask_bytes) {
    TORCH_CHECK(q.is_cuda(), kOp, "q must be a CUDA tensor, got device ", q.device());
    dtype_of(q);
    check_like(q, "q", q);
    check_like(k, "k", q);
    check_like(v, "v", q);
    TORCH_CHECK(kind == "l2" || kind == "dot", kOp, "kind must be 'l2' or 'dot', got '", std::string(kind), "'");
    TORCH_CHECK(std::isfinite(scale) && scale > 0, kOp, "scale must be a finite positive number, got ", scale);
    AttentionParams p{};
    p.B = static_cast<int>(q.size(0));
    p.H = static_cast<int>(q.size(1));
    p.Lq = static_cast<int>(q.size(2));
    p.D = static_cast<int>(q.size(3));
    p.Lk = static_cast<int>(k.size(2));
    p.DV = static_cast<int>(v.size(3));
    TORCH_CHECK(k.size(0) == p.B && k.size(1) == p.H && k.size(3) == p.D, kOp, "k must have shape [B, H, Lk, D] = [",
                p.B, ", ", p.H, ", Lk, ", p.D, "], got ", k.sizes());
    TORCH_CHECK(v.size(0) == p.B && v.size(1) == p.H && v.size(2) == p.Lk, kOp,
                "v must have shape [B, H, Lk, Dv] = [", p.B, ", ", p.H, ", ", p.Lk, ", Dv], got ", v.sizes());
    TORCH_CHECK(p.D <= kAttentionMaxHeadDim && p.DV <= kAttentionMaxHeadDim, kOp, "head dims must be <= ",
                kAttentionMaxHeadDim, ", got D=", p.D, " and Dv=", p.DV);
    TORCH_CHECK(static_cast<int64_t>(p.B) * p.H <= 65535, kOp, "B * H must be <= 65535 (one grid row each), got ",
                static_cast<int64_t>(p.B) * p.H);
    if (mask) {
        TORCH_CHECK(mask->scalar_type() == at::kBool, kOp, "key_padding_mask must be bool (True = attend), got ",
                    mask->scalar_type());
        TORCH_CHECK(mask->device() == q.device(), kOp, "key_padding_mask is on ", mask->device(), " but q is on ",
                    q.device());
        TORCH_CHECK(mask->dim() == 2 && mask->size(0) == p.B && mask->size(1) == p.Lk, kOp,
                    "key_padding_mask must have shape [B, Lk] = [", p.B, ", ", p.Lk, "], got ", mask->sizes());
        mask_bytes = mask->contiguous().view(at::kByte);
        p.mask = mask_bytes.data_ptr<uint8_t>();
    }
    p.l2 = kind == "l2";
    // Base-2 units: exp2 of these logits is the softmax numerator (see attention.h).
    p.qk_scale = static_cast<float>((p.l2 ? 2.0 * scale : scale) * kLog2e);
    p.bias_scale = p.l2 ? static_cast<float>(scale * kLog2e) : 0.f;
    p.grad_scale = static_cast<float>(p.l2 ? 2.0 * scale : scale);
    return p;
}

// What the kernels read: unit stride along the head dim, 16-byte aligned rows, and ceil(dim / 8) * 8 readable
// columns (zero past dim). A tensor that is not so already (a transposed view, an odd head dim) is copied.
at::Tensor kernel_layout(const at::Tensor& t) {
    const int64_t dim = t.size(3), padded = (dim + 7) / 8 * 8, per16 = 16 / t.element_size();
    const bool ok = t.stride(3) == 1 && dim == padded && t.stride(2) % per16 == 0 && t.stride(1) % per16 == 0 &&
                    t.stride(0) % per16 == 0 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
    if (ok) return t;
    at::Tensor copy = at::zeros({t.size(0), t.size(1), t.size(2), padded}, t.options());
    copy.narrow(3, 0, dim).copy_(t);
    return copy;
}

void set_inputs(AttentionParams& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    p.q = q.data_ptr();
    p.k = k.data_ptr();
    p.v = v.data_ptr();
    copy_strides(p.stride_q, q);
    copy_strides(p.stride_k, k);
    copy_strides(p.stride_v, v);
}

at::Tensor key_bias_workspace(AttentionParams& p, const at::Tensor& q) {
    p.Lk_pad = (p.Lk + kAttentionKeyTile - 1) / kAttentionKeyTile * kAttentionKeyTile;
    at::Tensor key_bias = at::empty({int64_t{p.B} * p.H, p.Lk_pad}, q.options().dtype(at::kFloat));
    p.key_bias = key_bias.data_ptr<float>();
    return key_bias;
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           c10::string_view kind, double scale,
                                           const std::optional<at::Tensor>& key_padding_mask) {
    at::Tensor mask_bytes;
    AttentionParams p = check_common(q, k, v, kind, scale, key_padding_mask, mask_bytes);
    const c10::cuda::CUDAGuard guard(q.device());
    at::Tensor out = at::empty({p.B, p.H, p.Lq, p.DV}, q.options());
    at::Tensor lse = at::empty({p.B, p.H, p.Lq}, q.options().dtype(at::kFloat));
    if (out.numel() == 0 && lse.numel() == 0) return {out, lse};
    TORCH_CHECK(p.Lk > 0, kOp, "k has no keys (Lk=0); the Python wrapper routes that case to the reference");
    const at::Tensor q_k = kernel_layout(q), k_k = kernel_layout(k), v_k = kernel_layout(v);
    set_inputs(p, q_k, k_k, v_k);
    const at::Tensor key_bias = key_bias_workspace(p, q);
    p.out = out.data_ptr();
    copy_strides(p.stride_out, out);
    p.lse = lse.data_ptr<float>();
    C10_CUDA_CHECK(attention_forward_cuda(p, dtype_of(q), at::cuda::getCurrentCUDAStream()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& q,
                                                        const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                                        const at::Tensor& lse, c10::string_view kind, double scale,
                                                        const std::optional<at::Tensor>& key_padding_mask) {
    at::Tensor mask_bytes;
    AttentionParams p = check_common(q, k, v, kind, scale, key_padding_mask, mask_bytes);
    check_like(grad_out, "grad_out", q);
    check_like(out, "out", q);
    // Owned storage: an IntArrayRef built from a braced list points at a temporary that dies with the statement
    // (stack-use-after-scope).
    const std::array<int64_t, 4> out_dims{p.B, p.H, p.Lq, p.DV};
    const at::IntArrayRef out_shape(out_dims);
    TORCH_CHECK(grad_out.sizes() == out_shape, kOp, "grad_out must have shape ", out_shape, ", got ", grad_out.sizes());
    TORCH_CHECK(out.sizes() == out_shape, kOp, "out must have shape ", out_shape, ", got ", out.sizes());
    const std::array<int64_t, 3> lse_dims{p.B, p.H, p.Lq};
    TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.is_cuda() && lse.sizes() == at::IntArrayRef(lse_dims), kOp,
                "lse must be a float32 CUDA tensor of shape [B, H, Lq], got ", lse.scalar_type(), " ", lse.sizes());
    const c10::cuda::CUDAGuard guard(q.device());
    at::Tensor grad_q = at::empty_like(q), grad_k = at::empty_like(k), grad_v = at::empty_like(v);
    if (q.numel() == 0 || k.numel() == 0 || p.Lq == 0 || p.Lk == 0) {
        return {grad_q.zero_(), grad_k.zero_(), grad_v.zero_()};
    }
    const at::Tensor q_k = kernel_layout(q), k_k = kernel_layout(k), v_k = kernel_layout(v);
    const at::Tensor grad_out_k = kernel_layout(grad_out);
    set_inputs(p, q_k, k_k, v_k);
    const at::Tensor key_bias = key_bias_workspace(p, q);
    at::Tensor lse_c = lse.contiguous();
    const auto f32 = q.options().dtype(at::kFloat);
    at::Tensor delta = at::empty({p.B, p.H, p.Lq}, f32);
    at::Tensor grad_q_accum = at::zeros({p.B, p.H, p.Lq, p.D}, f32);
    p.out = const_cast<void*>(out.data_ptr());
    copy_strides(p.stride_out, out);
    p.lse = lse_c.data_ptr<float>();
    p.grad_out = grad_out_k.data_ptr();
    copy_strides(p.stride_grad_out, grad_out_k);
    p.delta = delta.data_ptr<float>();
    p.grad_q_accum = grad_q_accum.data_ptr<float>();
    p.grad_q = grad_q.data_ptr();
    p.grad_k = grad_k.data_ptr();
    p.grad_v = grad_v.data_ptr();
    copy_strides(p.stride_grad_q, grad_q);
    copy_strides(p.stride_grad_k, grad_k);
    copy_strides(p.stride_grad_v, grad_v);
    C10_CUDA_CHECK(attention_backward_cuda(p, dtype_of(q), at::cuda::getCurrentCUDAStream()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {grad_q, grad_k, grad_v};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gigagan_kernels_cuda, m) {
    m.def("attention_forward(Tensor q, Tensor k, Tensor v, str kind, float scale, Tensor? key_padding_mask) "
          "-> (Tensor, Tensor)");
    m.def("attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, str kind, "
          "float scale, Tensor? key_padding_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gigagan_kernels_cuda, CUDA, m) {
    m.impl("attention_forward", &forward);
    m.impl("attention_backward", &backward);
}

}  // namespace gigagan
