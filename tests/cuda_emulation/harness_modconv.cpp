// C entry points over csrc/adaptive_modconv.cu's launchers, run by the CPU emulation (shim.h). The .cu is
// included as tests/test_cuda_emulated.py rewrote it: launches and dynamic shared memory in the shim's terms.
#include "shim.h"

#include "adaptive_modconv.cu"

using namespace gigagan;

namespace {
template <size_t N> void strides(int64_t (&dst)[N], const int64_t* src) {
    for (size_t i = 0; i < N; ++i) dst[i] = src[i];
}
}  // namespace

extern "C" {

int emu_build_weights(int dtype, int B, int N, int Cout, int Cin, int KK, const void* bank, const float* a,
                      const void* style, const int64_t* stride_style, void* weights, float* d, float eps,
                      int vectorized) {
    BuildWeightsParams p{};
    p.B = B, p.N = N, p.Cout = Cout, p.Cin = Cin, p.KK = KK;
    p.weight_bank = bank, p.a = a, p.style = style, p.weights = weights, p.d = d, p.eps = eps;
    strides(p.stride_style, stride_style);
    p.vectorized = vectorized != 0;
    return build_weights_cuda(p, DType(dtype), nullptr);
}

int emu_columns(int dtype, int to_columns, int B, int Cin, int H, int W, int k, const void* x, void* grad_x,
                const int64_t* stride_x, void* cols) {
    ColumnsParams p{};
    p.B = B, p.Cin = Cin, p.H = H, p.W = W, p.ksize = k;
    p.x = x, p.grad_x = grad_x, p.cols = cols;
    strides(p.stride_x, stride_x);
    return to_columns ? im2col_cuda(p, DType(dtype), nullptr) : col2im_cuda(p, DType(dtype), nullptr);
}

int emu_epilogue_forward(int dtype, int B, int Cout, int H, int W, const void* conv, const int64_t* stride_conv,
                         const float* d, const void* bias, const void* noise, const int64_t* stride_noise, void* y,
                         const int64_t* stride_y, void* lin, float gain, float clamp, int lrelu, int has_clamp) {
    EpilogueForwardParams p{};
    p.B = B, p.Cout = Cout, p.H = H, p.W = W;
    p.conv = conv, p.d = d, p.bias = bias, p.noise = noise, p.y = y, p.lin = lin;
    strides(p.stride_conv, stride_conv);
    strides(p.stride_noise, stride_noise);
    strides(p.stride_y, stride_y);
    p.gain = gain, p.clamp = clamp, p.lrelu = lrelu != 0, p.has_clamp = has_clamp != 0;
    return epilogue_forward_cuda(p, DType(dtype), nullptr);
}

int emu_epilogue_backward(int dtype, int B, int Cout, int H, int W, const void* grad_y, const int64_t* stride_grad_y,
                          const void* lin, const int64_t* stride_lin, const float* d, const void* bias,
                          const void* noise, const int64_t* stride_noise, void* grad_z, float* c, float* bias_part,
                          float* grad_lin, float gain, float clamp, int lrelu, int has_clamp) {
    EpilogueBackwardParams p{};
    p.B = B, p.Cout = Cout, p.H = H, p.W = W;
    p.grad_y = grad_y, p.lin = lin, p.d = d, p.bias = bias, p.noise = noise;
    strides(p.stride_grad_y, stride_grad_y);
    strides(p.stride_lin, stride_lin);
    strides(p.stride_noise, stride_noise);
    p.grad_z = grad_z, p.c = c, p.bias_part = bias_part, p.grad_lin = grad_lin;
    p.gain = gain, p.clamp = clamp, p.lrelu = lrelu != 0, p.has_clamp = has_clamp != 0;
    return epilogue_backward_cuda(p, DType(dtype), nullptr);
}

// tiles (out): elements_per_thread, channels_per_block, outputs_per_block, channel_blocks, output_blocks.
int emu_reduce(int dtype, int B, int N, int Cout, int Cin, int KK, const void* grad_weights, const void* bank,
               const float* a, const void* style, const int64_t* stride_style, const float* c, void* grad_bank,
               float* da_part, float* ds_part, int accumulate, int fp32_grad_bank, int vectorized, int* tiles_out) {
    const ReduceTiles tiles = reduce_tiles(N, Cout, Cin, KK, vectorized != 0, dtype == 0 ? 4 : 2);
    if (da_part == nullptr) {  // a query for the partial buffers' sizes
        const int out[5] = {tiles.elements_per_thread, tiles.channels_per_block, tiles.outputs_per_block,
                            tiles.channel_blocks, tiles.output_blocks};
        std::memcpy(tiles_out, out, sizeof(out));
        return 0;
    }
    ReduceParams p{};
    p.B = B, p.N = N, p.Cout = Cout, p.Cin = Cin, p.KK = KK;
    p.channels_per_block = tiles.channels_per_block, p.outputs_per_block = tiles.outputs_per_block;
    p.grad_weights = grad_weights, p.weight_bank = bank, p.a = a, p.style = style, p.c = c;
    strides(p.stride_style, stride_style);
    p.grad_bank = grad_bank, p.da_part = da_part, p.ds_part = ds_part;
    p.accumulate = accumulate != 0, p.fp32_grad_bank = fp32_grad_bank != 0, p.vectorized = vectorized != 0;
    return reduce_weight_grad_cuda(p, DType(dtype), nullptr);
}

}  // extern "C"
