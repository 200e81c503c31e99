// Torch side of the CUDA adaptive modulated convolution: argument checks that name the argument,
// allocation, dtype dispatch and the launch on the current stream; torch.library registration.
// Autograd and fake (meta) kernels are added from Python (gigagan_kernels/ops/adaptive_modconv2d/cuda.py).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "adaptive_modconv.h"

namespace gigagan {
namespace {

constexpr const char* kOp = "adaptive_modconv2d(impl='cuda'): ";

struct ModconvShape {
    int B, Cin, Cout, H, W, N, ksize;
};

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
    // The kernels index within one sample with 32-bit integers; the sample's grid index is gridDim.y.
    const int64_t P = int64_t{sh.H} * sh.W, R = int64_t{sh.Cin} * sh.ksize * sh.ksize, limit = int64_t{1} << 31;
    TORCH_CHECK(R * P < limit && int64_t{sh.Cout} * P < limit && int64_t{sh.Cout} * R < limit, kOp,
                "one sample's columns (Cin*k*k*H*W = ", R * P, "), output (Cout*H*W = ", sh.Cout * P,
                ") and weights (Cout*Cin*k*k = ", sh.Cout * R, ") must each stay under 2^31 elements");
    TORCH_CHECK(sh.B <= 65535, kOp, "x has batch ", sh.B, "; the CUDA kernels take at most 65535 samples per call");
    return sh;
}

void check_launch(cudaError_t status, const char* kernel) {
    TORCH_CHECK(status == cudaSuccess, kOp, kernel, " failed to launch: ", cudaGetErrorString(status));
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// The samples [b0, b1) of a per-sample tensor, as the kernels see it.
at::Tensor rows(const at::Tensor& t, int64_t b0, int64_t b1) { return t.narrow(0, b0, b1 - b0); }

// Per-sample weights [B, Cout, Cin*k*k] of the samples in `a`/`style` (and d, when given).
void build_weights(const at::Tensor& bank, const at::Tensor& a, const at::Tensor& style, at::Tensor& weights,
                   float* d, double eps, DType dtype, cudaStream_t stream) {
    BuildWeightsParams p{};
    p.B = static_cast<int>(a.size(0));
    p.N = static_cast<int>(bank.size(0));
    p.Cout = static_cast<int>(bank.size(1));
    p.Cin = static_cast<int>(bank.size(2));
    p.KK = static_cast<int>(bank.size(3) * bank.size(4));
    p.weight_bank = bank.data_ptr();
    p.a = a.data_ptr<float>();
    p.style = style.data_ptr();
    copy_strides(p.stride_style, style);
    p.weights = weights.data_ptr();
    p.d = d;
    p.eps = static_cast<float>(eps);
    p.vectorized = (int64_t{p.Cin} * p.KK) % 8 == 0 && aligned16(p.weight_bank) && aligned16(p.weights);
    check_launch(build_weights_cuda(p, dtype, stream), "build_weights_kernel");
}

ColumnsParams columns_params(const at::Tensor& x, int64_t k) {
    ColumnsParams p{};
    p.B = static_cast<int>(x.size(0));
    p.Cin = static_cast<int>(x.size(1));
    p.H = static_cast<int>(x.size(2));
    p.W = static_cast<int>(x.size(3));
    p.ksize = static_cast<int>(k);
    copy_strides(p.stride_x, x);
    return p;
}

at::Tensor im2col(const at::Tensor& x, int64_t k, DType dtype, cudaStream_t stream) {
    at::Tensor cols = at::empty({x.size(0), x.size(1) * k * k, x.size(2) * x.size(3)}, x.options());
    ColumnsParams p = columns_params(x, k);
    p.x = x.data_ptr();
    p.cols = cols.data_ptr();
    check_launch(im2col_cuda(p, dtype, stream), "im2col_kernel");
    return cols;
}

void col2im(const at::Tensor& dcols, at::Tensor dx, int64_t k, DType dtype, cudaStream_t stream) {
    ColumnsParams p = columns_params(dx, k);
    p.grad_x = dx.data_ptr();
    p.cols = dcols.data_ptr();
    check_launch(col2im_cuda(p, dtype, stream), "col2im_kernel");
}

// The conv of the samples in x [b, Cin, H, W] with their weights [b, Cout, Cin*k*k], before the epilogue:
// one cuBLAS batched GEMM on the columns. (cuDNN's grouped convolution, the other form at hand, measured
// ~0.21 ms per group in its backward on the H200: benchmarks/NOTES.md, "The cost model".)
at::Tensor conv(const at::Tensor& x, const at::Tensor& weights, int64_t k, DType dtype, cudaStream_t stream) {
    return at::bmm(weights, im2col(x, k, dtype, stream)).view({x.size(0), weights.size(1), x.size(2), x.size(3)});
}

ModconvShape check_epilogue(const at::Tensor& x, const at::Tensor& weight_bank, const at::Tensor& select_logits,
                            const at::Tensor& style, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& noise, c10::string_view activation) {
    const ModconvShape sh = check_core(x, weight_bank, select_logits, style);
    TORCH_CHECK(activation == "linear" || activation == "lrelu", kOp, "activation must be 'linear' or 'lrelu', got '",
                std::string(activation), "'");
    if (bias) {
        check_like(*bias, "bias", x, x.scalar_type());
        TORCH_CHECK(bias->dim() == 1 && bias->size(0) == sh.Cout, kOp, "bias must have shape [Cout] = [", sh.Cout,
                    "], got ", bias->sizes());
    }
    if (noise) {
        check_like(*noise, "noise", x, x.scalar_type());
        TORCH_CHECK(noise->dim() <= 4 && at::is_expandable_to(noise->sizes(), {sh.B, sh.Cout, sh.H, sh.W}), kOp,
                    "noise must broadcast to the output shape [", sh.B, ", ", sh.Cout, ", ", sh.H, ", ", sh.W,
                    "], got ", noise->sizes());
    }
    return sh;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
        const at::Tensor& x, const at::Tensor& weight_bank, const at::Tensor& select_logits, const at::Tensor& style,
        const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& noise, bool demodulate, double eps,
        c10::string_view activation, double gain, std::optional<double> clamp, bool save_lin, int64_t workspace,
        bool keep_weights) {
    const ModconvShape sh = check_epilogue(x, weight_bank, select_logits, style, bias, noise, activation);
    TORCH_CHECK(eps > 0, kOp, "eps must be > 0, got ", eps);
    TORCH_CHECK(workspace > 0, kOp, "workspace must be > 0 bytes, got ", workspace);
    const c10::cuda::CUDAGuard guard(x.device());
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const DType dtype = dtype_of(x, "x");
    const int64_t k = sh.ksize, R = int64_t{sh.Cin} * k * k;
    // A channels_last input gets a channels_last output (as the Triton path does).
    const bool channels_last = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
    at::Tensor y = at::empty({sh.B, sh.Cout, sh.H, sh.W},
                             x.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous));
    at::Tensor lin = save_lin ? at::empty_like(y) : at::empty({0}, x.options());
    const auto f32 = x.options().dtype(at::kFloat);
    at::Tensor d = demodulate ? at::empty({sh.B, sh.Cout}, f32) : at::ones({sh.B, sh.Cout}, f32);
    const WeightsPlan plan = plan_weights(sh.B, sh.Cin, sh.H, sh.W, sh.Cout, k, x.element_size(), keep_weights,
                                          keep_weights ? -1 : 0, workspace);
    at::Tensor kept = plan.keep ? at::empty({sh.B, sh.Cout, R}, x.options()) : at::empty({0}, x.options());
    if (y.numel() == 0) return {y, lin, d, kept};
    at::Tensor bank = weight_bank.contiguous();
    at::Tensor a = at::softmax(select_logits.to(at::kFloat), 1).contiguous();
    at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();
    at::Tensor noise_full = noise ? noise->expand({sh.B, sh.Cout, sh.H, sh.W}) : at::Tensor();

    EpilogueForwardParams e{};
    e.Cout = sh.Cout;
    e.H = sh.H;
    e.W = sh.W;
    e.bias = bias ? bias_c.data_ptr() : nullptr;
    e.gain = static_cast<float>(gain);
    e.clamp = clamp ? static_cast<float>(*clamp) : 0.f;
    e.has_clamp = clamp.has_value();
    e.lrelu = activation == "lrelu";
    for (int64_t b0 = 0; b0 < sh.B; b0 += plan.forward_chunk) {
        const int64_t b1 = std::min<int64_t>(sh.B, b0 + plan.forward_chunk);
        at::Tensor weights = plan.keep ? rows(kept, b0, b1) : at::empty({b1 - b0, sh.Cout, R}, x.options());
        build_weights(bank, rows(a, b0, b1), rows(style, b0, b1), weights,
                      demodulate ? d.data_ptr<float>() + b0 * sh.Cout : nullptr, eps, dtype, stream);
        at::Tensor out = conv(rows(x, b0, b1), weights, k, dtype, stream);
        at::Tensor y_chunk = rows(y, b0, b1);
        e.B = static_cast<int>(b1 - b0);
        e.conv = out.data_ptr();
        copy_strides(e.stride_conv, out);
        e.d = demodulate ? d.data_ptr<float>() + b0 * sh.Cout : nullptr;
        if (noise) {
            at::Tensor noise_chunk = rows(noise_full, b0, b1);
            e.noise = noise_chunk.data_ptr();
            copy_strides(e.stride_noise, noise_chunk);
        }
        e.y = y_chunk.data_ptr();
        copy_strides(e.stride_y, y_chunk);
        e.lin = save_lin ? rows(lin, b0, b1).data_ptr() : nullptr;
        check_launch(epilogue_forward_cuda(e, dtype, stream), "epilogue_forward_kernel");
    }
    return {y, lin, d, kept};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
        const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight_bank, const at::Tensor& select_logits,
        const at::Tensor& style, const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& noise,
        const at::Tensor& lin, const at::Tensor& d, const at::Tensor& kept, bool demodulate,
        c10::string_view activation, double gain, std::optional<double> clamp, int64_t workspace) {
    const ModconvShape sh = check_epilogue(x, weight_bank, select_logits, style, bias, noise, activation);
    const std::vector<int64_t> out_shape{sh.B, sh.Cout, sh.H, sh.W};
    check_like(grad_y, "grad_y", x, x.scalar_type());
    TORCH_CHECK(grad_y.sizes() == at::IntArrayRef(out_shape), kOp, "grad_y must have the output shape ", out_shape,
                ", got ", grad_y.sizes());
    check_like(lin, "lin", x, x.scalar_type());
    TORCH_CHECK(lin.sizes() == at::IntArrayRef(out_shape), kOp, "lin must have the output shape ", out_shape, ", got ",
                lin.sizes());
    check_like(d, "d", x, at::kFloat);
    TORCH_CHECK(d.sizes() == at::IntArrayRef({sh.B, sh.Cout}), kOp, "d must have shape [B, Cout] = [", sh.B, ", ",
                sh.Cout, "], got ", d.sizes());
    const int64_t k = sh.ksize, R = int64_t{sh.Cin} * k * k, P = int64_t{sh.H} * sh.W;
    if (kept.numel() > 0) {
        check_like(kept, "kept", x, x.scalar_type());
        TORCH_CHECK(kept.sizes() == at::IntArrayRef({sh.B, sh.Cout, R}) && kept.is_contiguous(), kOp,
                    "kept must be the forward's contiguous per-sample weights [", sh.B, ", ", sh.Cout, ", ", R,
                    "], got ", kept.sizes());
    }
    TORCH_CHECK(workspace > 0, kOp, "workspace must be > 0 bytes, got ", workspace);
    const c10::cuda::CUDAGuard guard(x.device());
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const DType dtype = dtype_of(x, "x");
    const auto f32 = x.options().dtype(at::kFloat);
    at::Tensor bank = weight_bank.contiguous();
    at::Tensor empty = at::empty({0}, x.options());
    if (x.numel() == 0 || grad_y.numel() == 0) {
        return {at::zeros_like(x), at::zeros_like(bank), at::zeros_like(select_logits), at::zeros_like(style),
                bias ? at::zeros_like(*bias) : empty, noise ? at::zeros_like(*noise) : empty};
    }
    const WeightsPlan plan = plan_weights(sh.B, sh.Cin, sh.H, sh.W, sh.Cout, k, x.element_size(), true,
                                          kept.numel() > 0 ? 1 : 0, workspace);
    at::Tensor a = at::softmax(select_logits.to(at::kFloat), 1).contiguous();
    at::Tensor d_c = d.contiguous();
    at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();
    at::Tensor noise_full = noise ? noise->expand(out_shape) : at::Tensor();

    // The epilogue's backward, whole batch: gz, c, dbias's per-sample sums and (with noise) g.
    at::Tensor grad_z = at::empty({sh.B, sh.Cout, P}, x.options());
    at::Tensor c = demodulate ? at::empty({sh.B, sh.Cout}, f32) : at::Tensor();
    at::Tensor bias_part = bias ? at::empty({sh.B, sh.Cout}, f32) : at::Tensor();
    at::Tensor grad_lin = noise ? at::empty({sh.B, sh.Cout, sh.H, sh.W}, f32) : at::Tensor();
    {
        EpilogueBackwardParams e{};
        e.B = sh.B;
        e.Cout = sh.Cout;
        e.H = sh.H;
        e.W = sh.W;
        e.grad_y = grad_y.data_ptr();
        copy_strides(e.stride_grad_y, grad_y);
        e.lin = lin.data_ptr();
        copy_strides(e.stride_lin, lin);
        e.d = d_c.data_ptr<float>();
        e.bias = bias ? bias_c.data_ptr() : nullptr;
        if (noise) {
            e.noise = noise_full.data_ptr();
            copy_strides(e.stride_noise, noise_full);
        }
        e.grad_z = grad_z.data_ptr();
        e.c = demodulate ? c.data_ptr<float>() : nullptr;
        e.bias_part = bias ? bias_part.data_ptr<float>() : nullptr;
        e.grad_lin = noise ? grad_lin.data_ptr<float>() : nullptr;
        e.gain = static_cast<float>(gain);
        e.clamp = clamp ? static_cast<float>(*clamp) : 0.f;
        e.has_clamp = clamp.has_value();
        e.lrelu = activation == "lrelu";
        check_launch(epilogue_backward_cuda(e, dtype, stream), "epilogue_backward_kernel");
    }

    at::Tensor grad_x = at::empty_like(x);
    at::Tensor grad_a = at::empty({sh.B, sh.N}, f32);
    at::Tensor grad_style = at::empty({sh.B, sh.Cin}, f32);
    // One reduction launch writes the bank gradient in the bank's dtype; more accumulate in fp32.
    const int64_t launches_per_chunk = (plan.backward_chunk + kModconvReduceSamples - 1) / kModconvReduceSamples;
    const int64_t chunks = (sh.B + plan.backward_chunk - 1) / plan.backward_chunk;
    const bool fp32_grad_bank = bank.scalar_type() == at::kFloat || chunks * launches_per_chunk > 1;
    at::Tensor grad_bank = at::empty(bank.sizes(), fp32_grad_bank ? f32 : bank.options());
    // 16-byte rows: the bank's (a view may start anywhere) and the gradients' (fresh, and chunks of whole rows).
    const bool vectorized = R % 8 == 0 && aligned16(bank.data_ptr()) && aligned16(grad_bank.data_ptr());
    const ReduceTiles tiles = reduce_tiles(sh.N, sh.Cout, sh.Cin, static_cast<int>(k * k), vectorized,
                                           static_cast<int>(x.element_size()));
    bool first = true;
    for (int64_t b0 = 0; b0 < sh.B; b0 += plan.backward_chunk) {
        const int64_t b1 = std::min<int64_t>(sh.B, b0 + plan.backward_chunk);
        at::Tensor x_chunk = rows(x, b0, b1);
        at::Tensor gz = rows(grad_z, b0, b1);
        at::Tensor weights = plan.keep ? rows(kept, b0, b1) : at::empty({b1 - b0, sh.Cout, R}, x.options());
        if (!plan.keep) build_weights(bank, rows(a, b0, b1), rows(style, b0, b1), weights, nullptr, 1.0, dtype, stream);
        at::Tensor dcols = at::bmm(weights.transpose(1, 2), gz);
        weights = at::Tensor();
        col2im(dcols, rows(grad_x, b0, b1), k, dtype, stream);
        dcols = at::Tensor();
        at::Tensor grad_weights = at::bmm(gz, im2col(x_chunk, k, dtype, stream).transpose(1, 2));
        for (int64_t g0 = b0; g0 < b1; g0 += kModconvReduceSamples) {
            const int64_t g1 = std::min<int64_t>(b1, g0 + kModconvReduceSamples);
            at::Tensor gw = rows(grad_weights, g0 - b0, g1 - b0);
            at::Tensor da_part = at::empty({int64_t{tiles.channel_blocks} * tiles.output_blocks, g1 - g0, sh.N}, f32);
            at::Tensor ds_part = at::empty({tiles.output_blocks, g1 - g0, sh.Cin}, f32);
            at::Tensor style_g = rows(style, g0, g1);
            ReduceParams r{};
            r.B = static_cast<int>(g1 - g0);
            r.N = sh.N;
            r.Cout = sh.Cout;
            r.Cin = sh.Cin;
            r.KK = static_cast<int>(k * k);
            r.channels_per_block = tiles.channels_per_block;
            r.outputs_per_block = tiles.outputs_per_block;
            r.grad_weights = gw.data_ptr();
            r.weight_bank = bank.data_ptr();
            r.a = a.data_ptr<float>() + g0 * sh.N;
            r.style = style_g.data_ptr();
            copy_strides(r.stride_style, style_g);
            r.c = demodulate ? c.data_ptr<float>() + g0 * sh.Cout : nullptr;
            r.grad_bank = grad_bank.data_ptr();
            r.da_part = da_part.data_ptr<float>();
            r.ds_part = ds_part.data_ptr<float>();
            r.accumulate = !first;
            r.fp32_grad_bank = fp32_grad_bank;
            r.vectorized = vectorized;
            check_launch(reduce_weight_grad_cuda(r, dtype, stream), "reduce_weight_grad_kernel");
            rows(grad_a, g0, g1).copy_(da_part.sum(0));
            rows(grad_style, g0, g1).copy_(ds_part.sum(0));
            first = false;
        }
    }
    at::Tensor grad_logits = a * (grad_a - (a * grad_a).sum(1, true));   // softmax backward
    at::Tensor grad_bias = bias ? bias_part.sum(0).to(bias->scalar_type()) : empty;
    at::Tensor grad_noise = noise ? grad_lin.sum_to_size(noise->sizes()).to(noise->scalar_type()) : empty;
    return {grad_x, grad_bank.to(bank.scalar_type()), grad_logits.to(select_logits.scalar_type()),
            grad_style.to(style.scalar_type()), grad_bias, grad_noise};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gigagan_kernels_cuda, m) {
    // Returns y, lin (empty unless save_lin), d [B, Cout] fp32, and the per-sample weights when kept for the
    // backward (empty otherwise): the Triton op's contract, with the workspace budget in place of the strategy.
    m.def("adaptive_modconv2d_forward(Tensor x, Tensor weight_bank, Tensor select_logits, Tensor style, "
          "Tensor? bias, Tensor? noise, bool demodulate, float eps, str activation, float gain, float? clamp, "
          "bool save_lin, int workspace, bool keep_weights) -> (Tensor, Tensor, Tensor, Tensor)");
    // Returns dx, dbank, dlogits, dstyle, dbias and dnoise (empty when bias / noise is None).
    m.def("adaptive_modconv2d_backward(Tensor grad_y, Tensor x, Tensor weight_bank, Tensor select_logits, "
          "Tensor style, Tensor? bias, Tensor? noise, Tensor lin, Tensor d, Tensor kept, bool demodulate, "
          "str activation, float gain, float? clamp, int workspace) -> (Tensor, Tensor, Tensor, Tensor, Tensor, "
          "Tensor)");
}

TORCH_LIBRARY_IMPL(gigagan_kernels_cuda, CUDA, m) {
    m.impl("adaptive_modconv2d_forward", &forward);
    m.impl("adaptive_modconv2d_backward", &backward);
}

}  // namespace gigagan
