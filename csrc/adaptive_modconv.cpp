// Torch side of the CUDA adaptive modulated convolution: argument checks that name the argument,
// allocation, dtype dispatch and the launch on the current stream; torch.library registration.
// Autograd and fake (meta) kernels are added from Python (gigagan_kernels/adaptive_modconv.py).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "adaptive_modconv.h"

namespace gigagan {
namespace {

constexpr const char* kOp = "adaptive_modconv2d(impl='cuda'): ";

DType dtype_of(const at::Tensor& t, const char* name) {
    switch (t.scalar_type()) {
        case at::kFloat: return DType::kFloat32;
        case at::kHalf: return DType::kFloat16;
        case at::kBFloat16: return DType::kBFloat16;
        default: TORCH_CHECK(false, kOp, name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
    }
}

void check_like(const at::Tensor& t, const char* name, const at::Tensor& x, at::ScalarType dtype) {
    TORCH_CHECK(t.is_cuda(), kOp, name, " must be a CUDA tensor, got device ", t.device());
    TORCH_CHECK(t.device() == x.device(), kOp, name, " is on ", t.device(), " but x is on ", x.device());
    TORCH_CHECK(t.scalar_type() == dtype, kOp, name, " must have dtype ", dtype, ", got ", t.scalar_type());
}

void check_dim(const at::Tensor& t, const char* name, int64_t dim, const char* layout) {
    TORCH_CHECK(t.dim() == dim, kOp, name, " must be ", dim, "-D ", layout, ", got shape ", t.sizes());
}

template <size_t N> void copy_strides(int64_t (&dst)[N], const at::Tensor& t) {
    for (size_t i = 0; i < N; ++i) dst[i] = t.stride(i);
}

ModconvShape check_core(const at::Tensor& x, const at::Tensor& weight_bank, const at::Tensor& select_logits,
                        const at::Tensor& style) {
    TORCH_CHECK(x.is_cuda(), kOp, "x must be a CUDA tensor, got device ", x.device());
    dtype_of(x, "x");
    check_dim(x, "x", 4, "[B, Cin, H, W]");
    check_dim(weight_bank, "weight_bank", 5, "[N, Cout, Cin, k, k]");
    check_dim(select_logits, "select_logits", 2, "[B, N]");
    check_dim(style, "style", 2, "[B, Cin]");
    check_like(weight_bank, "weight_bank", x, x.scalar_type());
    check_like(select_logits, "select_logits", x, x.scalar_type());
    check_like(style, "style", x, x.scalar_type());
    ModconvShape sh{};
    sh.B = static_cast<int>(x.size(0));
    sh.Cin = static_cast<int>(x.size(1));
    sh.H = static_cast<int>(x.size(2));
    sh.W = static_cast<int>(x.size(3));
    sh.N = static_cast<int>(weight_bank.size(0));
    sh.Cout = static_cast<int>(weight_bank.size(1));
    sh.ksize = static_cast<int>(weight_bank.size(3));
    TORCH_CHECK(weight_bank.size(2) == sh.Cin, kOp, "weight_bank has Cin=", weight_bank.size(2), " but x has Cin=",
                sh.Cin);
    TORCH_CHECK(weight_bank.size(4) == sh.ksize && sh.ksize % 2 == 1, kOp,
                "weight_bank filters must be square with odd k, got shape ", weight_bank.sizes());
    TORCH_CHECK(sh.N >= 1 && sh.N <= kModconvMaxFilters, kOp, "weight_bank must have 1 to ", kModconvMaxFilters,
                " filters, got N=", sh.N);
    TORCH_CHECK(select_logits.size(0) == sh.B && select_logits.size(1) == sh.N, kOp,
                "select_logits must have shape [B, N] = [", sh.B, ", ", sh.N, "], got ", select_logits.sizes());
    TORCH_CHECK(style.size(0) == sh.B && style.size(1) == sh.Cin, kOp, "style must have shape [B, Cin] = [", sh.B,
                ", ", sh.Cin, "], got ", style.sizes());
    TORCH_CHECK(static_cast<int64_t>(sh.H) * sh.W < (int64_t{1} << 31) / 128, kOp, "x has too many pixels per image");
    return sh;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(
        const at::Tensor& x, const at::Tensor& weight_bank, const at::Tensor& select_logits, const at::Tensor& style,
        const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& noise, bool demodulate, double eps,
        c10::string_view activation, double gain, std::optional<double> clamp, bool save_lin) {
    const ModconvShape sh = check_core(x, weight_bank, select_logits, style);
    TORCH_CHECK(activation == "linear" || activation == "lrelu", kOp, "activation must be 'linear' or 'lrelu', got '",
                std::string(activation), "'");
    TORCH_CHECK(eps > 0, kOp, "eps must be > 0, got ", eps);
    if (bias) {
        check_like(*bias, "bias", x, x.scalar_type());
        TORCH_CHECK(bias->dim() == 1 && bias->size(0) == sh.Cout, kOp, "bias must have shape [Cout] = [", sh.Cout,
                    "], got ", bias->sizes());
    }
    at::Tensor noise_view;
    if (noise) {
        check_like(*noise, "noise", x, x.scalar_type());
        TORCH_CHECK(noise->dim() <= 4 && at::is_expandable_to(noise->sizes(), {sh.B, sh.Cout, sh.H, sh.W}), kOp,
                    "noise must broadcast to the output shape [", sh.B, ", ", sh.Cout, ", ", sh.H, ", ", sh.W,
                    "], got ", noise->sizes());
        noise_view = noise->expand({sh.B, sh.Cout, sh.H, sh.W});
    }
    const c10::cuda::CUDAGuard guard(x.device());
    // A channels_last input gets a channels_last output (as the Triton path does).
    const bool channels_last = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
    at::Tensor y = at::empty({sh.B, sh.Cout, sh.H, sh.W},
                             x.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous));
    at::Tensor lin = save_lin ? at::empty_like(y) : at::empty({0}, x.options());
    const auto f32 = x.options().dtype(at::kFloat);
    at::Tensor d = demodulate ? at::empty({sh.B, sh.Cout}, f32) : at::ones({sh.B, sh.Cout}, f32);
    if (y.numel() == 0) return {y, lin, d};
    at::Tensor bank = weight_bank.contiguous();
    at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();
    at::Tensor a = at::empty({sh.B, sh.N}, f32);

    ModconvForwardParams p{};
    p.shape = sh;
    p.x = x.data_ptr();
    p.weight_bank = bank.data_ptr();
    p.select_logits = select_logits.data_ptr();
    p.style = style.data_ptr();
    p.bias = bias ? bias_c.data_ptr() : nullptr;
    p.noise = noise ? noise_view.data_ptr() : nullptr;
    p.a = a.data_ptr<float>();
    p.d = d.data_ptr<float>();
    p.y = y.data_ptr();
    p.lin = save_lin ? lin.data_ptr() : nullptr;
    copy_strides(p.stride_x, x);
    copy_strides(p.stride_logits, select_logits);
    copy_strides(p.stride_style, style);
    if (noise) copy_strides(p.stride_noise, noise_view);
    copy_strides(p.stride_y, y);
    p.eps = static_cast<float>(eps);
    p.gain = static_cast<float>(gain);
    p.clamp = clamp ? static_cast<float>(*clamp) : 0.f;
    p.has_clamp = clamp.has_value();
    p.demodulate = demodulate;
    p.lrelu = activation == "lrelu";
    adaptive_modconv2d_forward_cuda(p, dtype_of(x, "x"), at::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {y, lin, d};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
        const at::Tensor& grad_z, const at::Tensor& c, const at::Tensor& x, const at::Tensor& weight_bank,
        const at::Tensor& select_logits, const at::Tensor& style, bool demodulate) {
    const ModconvShape sh = check_core(x, weight_bank, select_logits, style);
    check_like(grad_z, "grad_z", x, x.scalar_type());
    TORCH_CHECK(grad_z.sizes() == at::IntArrayRef({sh.B, sh.Cout, sh.H, sh.W}), kOp,
                "grad_z must have the output shape [", sh.B, ", ", sh.Cout, ", ", sh.H, ", ", sh.W, "], got ",
                grad_z.sizes());
    check_like(c, "c", x, at::kFloat);
    TORCH_CHECK(c.sizes() == at::IntArrayRef({sh.B, sh.Cout}), kOp, "c must have shape [B, Cout] = [", sh.B, ", ",
                sh.Cout, "], got ", c.sizes());
    const c10::cuda::CUDAGuard guard(x.device());
    const auto f32 = x.options().dtype(at::kFloat);
    at::Tensor bank = weight_bank.contiguous();
    if (x.numel() == 0 || sh.Cout == 0) {
        return {at::zeros_like(x), at::zeros_like(bank), at::zeros_like(select_logits), at::zeros_like(style)};
    }
    at::Tensor grad_x = at::empty_like(x);
    at::Tensor grad_bank = at::empty_like(bank);     // every entry is written by the bank-gradient kernel
    at::Tensor grad_a = at::zeros({sh.B, sh.N}, f32);      // atomics
    at::Tensor grad_logits = at::empty({sh.B, sh.N}, f32);
    at::Tensor grad_style = at::zeros({sh.B, sh.Cin}, f32);  // atomics
    at::Tensor gz = grad_z.contiguous();
    at::Tensor c_c = c.contiguous();
    at::Tensor a = at::empty({sh.B, sh.N}, f32);

    ModconvBackwardParams p{};
    p.shape = sh;
    p.grad_z = gz.data_ptr();
    p.c = c_c.data_ptr<float>();
    p.x = x.data_ptr();
    p.weight_bank = bank.data_ptr();
    p.select_logits = select_logits.data_ptr();
    p.style = style.data_ptr();
    p.a = a.data_ptr<float>();
    p.grad_x = grad_x.data_ptr();
    p.grad_bank = grad_bank.data_ptr();
    p.grad_a = grad_a.data_ptr<float>();
    p.grad_logits = grad_logits.data_ptr<float>();
    p.grad_style = grad_style.data_ptr<float>();
    copy_strides(p.stride_x, x);
    copy_strides(p.stride_logits, select_logits);
    copy_strides(p.stride_style, style);
    copy_strides(p.stride_grad_x, grad_x);
    p.demodulate = demodulate;
    adaptive_modconv2d_backward_cuda(p, dtype_of(x, "x"), at::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {grad_x, grad_bank, grad_logits.to(select_logits.scalar_type()), grad_style.to(style.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gigagan_kernels_cuda, m) {
    m.def("adaptive_modconv2d_forward(Tensor x, Tensor weight_bank, Tensor select_logits, Tensor style, "
          "Tensor? bias, Tensor? noise, bool demodulate, float eps, str activation, float gain, float? clamp, "
          "bool save_lin) -> (Tensor, Tensor, Tensor)");
    m.def("adaptive_modconv2d_backward(Tensor grad_z, Tensor c, Tensor x, Tensor weight_bank, "
          "Tensor select_logits, Tensor style, bool demodulate) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gigagan_kernels_cuda, CUDA, m) {
    m.impl("adaptive_modconv2d_forward", &forward);
    m.impl("adaptive_modconv2d_backward", &backward);
}

}  // namespace gigagan
