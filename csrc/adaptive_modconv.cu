// CUDA kernels of sample-adaptive kernel-selection modulated convolution, the "weights" decomposition
// (docs/design.md §2; benchmarks/NOTES.md, "CUDA C++ v2"). No torch headers: the GEMMs run in
// adaptive_modconv.cpp as cuBLAS batched GEMMs through ATen; here are the memory-bound passes around them,
// each one read of its inputs:
//   build_weights_kernel       the bank row read once per group of samples (16-byte loads), mixed with a[b] on
//                              FMAs, times s, written once; d's sum of squares in the same pass
//   im2col_kernel / col2im     columns in the weights' row order (r = i*k*k + t) for the batched GEMMs
//   epilogue_forward_kernel    d, noise, bias, lrelu * gain, clamp, and lin for the backward
//   epilogue_backward_kernel   a warp per (b, o): gz = d g, the demodulation term c, dbias's per-sample sums
//   reduce_weight_grad_kernel  gw -> dbank, dselect, dstyle, with the bank slice and its gradient in registers
// Index math: a thread owns E consecutive elements of a weight row; its channel index is one division per
// chunk, then stepped, never a division per element.
#include <algorithm>

#include "adaptive_modconv.h"
#include "common.cuh"

namespace gigagan {
namespace {

constexpr int kThreads = 256;
constexpr int kBuildGroup = 8;          // samples mixed per read of a bank row (8 x E fp32 accumulators)

int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

template <typename T> constexpr int vector_elements() { return 16 / static_cast<int>(sizeof(T)); }

// The channel of each of E consecutive row elements starting at e (one division, then stepped).
template <int E>
__device__ __forceinline__ void channels_of(int (&channel)[E], int e, int KK) {
    int i = e / KK, t = e - i * KK;
#pragma unroll
    for (int j = 0; j < E; ++j) {
        channel[j] = i;
        if (++t == KK) { t = 0; ++i; }
    }
}

// style[b, channel[j]] for E consecutive elements; a channel's taps share one load.
template <typename T, int E>
__device__ __forceinline__ void style_of(float (&s)[E], const T* style_row, int64_t stride_c, const int (&channel)[E]) {
    s[0] = to_float(style_row[channel[0] * stride_c]);
#pragma unroll
    for (int j = 1; j < E; ++j) s[j] = channel[j] == channel[j - 1] ? s[j - 1] : to_float(style_row[channel[j] * stride_c]);
}

template <typename T, int E>
__device__ __forceinline__ void load_row(float (&dst)[E], const T* src, bool vectorized, int count) {
    if (vectorized) {
        load_floats<T, E>(dst, src);
    } else {
#pragma unroll
        for (int j = 0; j < E; ++j) dst[j] = j < count ? to_float(src[j]) : 0.f;
    }
}

template <typename T, int E>
__device__ __forceinline__ void store_row(T* dst, const float (&src)[E], bool vectorized, int count) {
    if (vectorized) {
        store_floats<T, E>(dst, src);
    } else {
#pragma unroll
        for (int j = 0; j < E; ++j)
            if (j < count) dst[j] = from_float<T>(src[j]);
    }
}

// Block-wide sum of one value per thread; every thread gets the total. `scratch` holds kThreads/32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    v = warp_sum(v);
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kThreads / kWarpSize; ++w) total += scratch[w];
    return total;
}

// ---- build -----------------------------------------------------------------------------------------------
// Grid (sample groups, Cout): the groups of one output channel run side by side, so its bank row comes from
// HBM once and from L2 for the other groups.
template <typename T, int E>
__global__ void __launch_bounds__(kThreads) build_weights_kernel(BuildWeightsParams p) {
    __shared__ float a_s[kBuildGroup][kModconvMaxFilters];
    __shared__ float scratch[kThreads / kWarpSize];
    const int b0 = blockIdx.x * kBuildGroup;
    const int group = min(kBuildGroup, p.B - b0);
    const int64_t o = blockIdx.y;
    for (int idx = threadIdx.x; idx < kBuildGroup * kModconvMaxFilters; idx += kThreads) {
        const int g = idx / kModconvMaxFilters, n = idx % kModconvMaxFilters;
        a_s[g][n] = g < group && n < p.N ? p.a[(int64_t)(b0 + g) * p.N + n] : 0.f;
    }
    __syncthreads();
    const int R = p.Cin * p.KK;
    const int64_t bank_n = (int64_t)p.Cout * R;
    const T* bank_row = static_cast<const T*>(p.weight_bank) + o * R;
    const T* style = static_cast<const T*>(p.style);
    T* out = static_cast<T*>(p.weights);
    float sumsq[kBuildGroup] = {};
    for (int e = threadIdx.x * E; e < R; e += kThreads * E) {
        const int count = min(E, R - e);
        float mixed[kBuildGroup][E] = {};
        for (int n = 0; n < p.N; ++n) {
            float w[E];
            load_row<T, E>(w, bank_row + n * bank_n + e, p.vectorized, count);
#pragma unroll
            for (int g = 0; g < kBuildGroup; ++g) {
                const float an = a_s[g][n];
#pragma unroll
                for (int j = 0; j < E; ++j) mixed[g][j] = fmaf(an, w[j], mixed[g][j]);
            }
        }
        int channel[E];
        channels_of<E>(channel, e, p.KK);
#pragma unroll
        for (int j = 0; j < E; ++j) channel[j] = min(channel[j], p.Cin - 1);  // the tail past R is never stored
#pragma unroll
        for (int g = 0; g < kBuildGroup; ++g) {
            if (g >= group) break;
            const int64_t b = b0 + g;
            float s[E];
            style_of<T, E>(s, style + b * p.stride_style[0], p.stride_style[1], channel);
#pragma unroll
            for (int j = 0; j < E; ++j) {
                mixed[g][j] *= s[j];
                if (j < count) sumsq[g] = fmaf(mixed[g][j], mixed[g][j], sumsq[g]);
            }
            store_row<T, E>(out + (b * p.Cout + o) * R + e, mixed[g], p.vectorized, count);
        }
    }
    if (p.d == nullptr) return;
#pragma unroll
    for (int g = 0; g < kBuildGroup; ++g) {
        if (g >= group) break;  // uniform across the block
        const float total = block_sum(sumsq[g], scratch);
        if (threadIdx.x == 0) p.d[(int64_t)(b0 + g) * p.Cout + o] = rsqrtf(total + p.eps);
    }
}

// ---- columns ---------------------------------------------------------------------------------------------
// Flat over one sample's (row, pixel) pairs, pixels fastest (coalesced columns); grid.y is the sample.
template <typename T>
__global__ void __launch_bounds__(kThreads) im2col_kernel(ColumnsParams p) {
    const int KK = p.ksize * p.ksize, pad = p.ksize / 2, P = p.H * p.W;
    const int idx = blockIdx.x * kThreads + threadIdx.x;
    if (idx >= p.Cin * KK * P) return;
    const int r = idx / P, pix = idx - r * P;
    const int i = r / KK, t = r - i * KK;
    const int64_t b = blockIdx.y;
    const int h = pix / p.W + t / p.ksize - pad, w = pix % p.W + t % p.ksize - pad;
    const T* x = static_cast<const T*>(p.x);
    T value = from_float<T>(0.f);
    if (h >= 0 && h < p.H && w >= 0 && w < p.W)
        value = x[b * p.stride_x[0] + i * p.stride_x[1] + h * p.stride_x[2] + w * p.stride_x[3]];
    static_cast<T*>(p.cols)[b * KK * p.Cin * P + idx] = value;
}

// A thread per (i, q) of one sample, summing its k*k taps in fp32.
template <typename T>
__global__ void __launch_bounds__(kThreads) col2im_kernel(ColumnsParams p) {
    const int KK = p.ksize * p.ksize, pad = p.ksize / 2, P = p.H * p.W;
    const int idx = blockIdx.x * kThreads + threadIdx.x;
    if (idx >= p.Cin * P) return;
    const int i = idx / P, q = idx - i * P;
    const int64_t b = blockIdx.y;
    const int qh = q / p.W, qw = q % p.W;
    const T* cols = static_cast<const T*>(p.cols) + (b * KK * p.Cin + (int64_t)i * KK) * P;
    float acc = 0.f;
    for (int t = 0; t < KK; ++t) {
        const int h = qh - (t / p.ksize - pad), w = qw - (t % p.ksize - pad);
        if (h >= 0 && h < p.H && w >= 0 && w < p.W) acc += to_float(cols[(int64_t)t * P + h * p.W + w]);
    }
    static_cast<T*>(p.grad_x)[b * p.stride_x[0] + i * p.stride_x[1] + qh * p.stride_x[2] + qw * p.stride_x[3]] =
        from_float<T>(acc);
}

// ---- epilogues -------------------------------------------------------------------------------------------
__device__ __forceinline__ float lrelu_gain(float v, bool lrelu, float gain) {
    return (lrelu && v < 0.f ? 0.2f * v : v) * gain;
}

// Flat over one sample's (o, pixel) pairs; grid.y is the sample.
template <typename T>
__global__ void __launch_bounds__(kThreads) epilogue_forward_kernel(EpilogueForwardParams p) {
    const int P = p.H * p.W;
    const int idx = blockIdx.x * kThreads + threadIdx.x;
    if (idx >= p.Cout * P) return;
    const int o = idx / P, pix = idx - o * P;
    const int64_t b = blockIdx.y;
    const int h = pix / p.W, w = pix % p.W;
    float v = to_float(static_cast<const T*>(p.conv)[b * p.stride_conv[0] + o * p.stride_conv[1] +
                                                      h * p.stride_conv[2] + w * p.stride_conv[3]]);
    if (p.d) v *= p.d[b * p.Cout + o];
    const int64_t y_offset = b * p.stride_y[0] + o * p.stride_y[1] + h * p.stride_y[2] + w * p.stride_y[3];
    if (p.lin) static_cast<T*>(p.lin)[y_offset] = from_float<T>(v);
    if (p.noise)
        v += to_float(static_cast<const T*>(p.noise)[b * p.stride_noise[0] + o * p.stride_noise[1] +
                                                     h * p.stride_noise[2] + w * p.stride_noise[3]]);
    if (p.bias) v += to_float(static_cast<const T*>(p.bias)[o]);
    v = lrelu_gain(v, p.lrelu, p.gain);
    if (p.has_clamp) v = fminf(fmaxf(v, -p.clamp), p.clamp);
    static_cast<T*>(p.y)[y_offset] = from_float<T>(v);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) epilogue_backward_kernel(EpilogueBackwardParams p) {
    const int warps = kThreads / kWarpSize;
    const int row = blockIdx.x * warps + threadIdx.x / kWarpSize;  // b * Cout + o
    const int lane = threadIdx.x % kWarpSize;
    if (row >= p.B * p.Cout) return;
    const int64_t b = row / p.Cout;
    const int o = row - static_cast<int>(b) * p.Cout;
    const int P = p.H * p.W;
    const T* grad_y = static_cast<const T*>(p.grad_y) + b * p.stride_grad_y[0] + o * p.stride_grad_y[1];
    const T* lin = static_cast<const T*>(p.lin) + b * p.stride_lin[0] + o * p.stride_lin[1];
    const T* noise = p.noise ? static_cast<const T*>(p.noise) + b * p.stride_noise[0] + o * p.stride_noise[1] : nullptr;
    const float bias = p.bias ? to_float(static_cast<const T*>(p.bias)[o]) : 0.f;
    const float d = p.d[row];
    T* grad_z = static_cast<T*>(p.grad_z) + (int64_t)row * P;
    float* grad_lin = p.grad_lin ? p.grad_lin + (int64_t)row * P : nullptr;
    float g_lin = 0.f, g_sum = 0.f;
    for (int pix = lane; pix < P; pix += kWarpSize) {
        const int h = pix / p.W, w = pix % p.W;
        const float l = to_float(lin[h * p.stride_lin[2] + w * p.stride_lin[3]]);
        float v = l + bias;
        if (noise) v += to_float(noise[h * p.stride_noise[2] + w * p.stride_noise[3]]);
        const float slope = (p.lrelu && v < 0.f ? 0.2f : 1.f) * p.gain;
        float g = to_float(grad_y[h * p.stride_grad_y[2] + w * p.stride_grad_y[3]]) * slope;
        if (p.has_clamp) {
            const float act = v * slope;
            if (!(act >= -p.clamp && act <= p.clamp)) g = 0.f;
        }
        grad_z[pix] = from_float<T>(g * d);
        if (grad_lin) grad_lin[pix] = g;
        g_lin = fmaf(g, l, g_lin);
        g_sum += g;
    }
    g_lin = warp_sum(g_lin);
    g_sum = warp_sum(g_sum);
    if (lane == 0) {
        if (p.c) p.c[row] = g_lin * d * d;
        if (p.bias_part) p.bias_part[row] = g_sum;
    }
}

// ---- weight-gradient reduction ---------------------------------------------------------------------------
// Sums NV values over the warp's 32 lanes in log2(32) halving steps (NV - 1 + 5 - log2(NV) shuffles, not 5 NV):
// each step keeps the half of the values that the lane's bit selects and adds the partner's copy of it.
// Lane l returns the total of value l / (32 / NV).
template <int NV>
__device__ __forceinline__ float warp_reduce_scatter(float (&v)[NV]) {
    static_assert(NV >= 1 && NV <= kWarpSize && (NV & (NV - 1)) == 0, "NV must be a power of two <= 32");
    const int lane = threadIdx.x % kWarpSize;
    int count = NV;
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        const bool upper = (lane & offset) != 0;
        if (count > 1) {
            const int half = count / 2;
#pragma unroll
            for (int k = 0; k < NV / 2; ++k) {
                if (k >= half) break;
                const float keep = upper ? v[half + k] : v[k];
                const float give = upper ? v[k] : v[half + k];
                v[k] = keep + __shfl_xor_sync(0xffffffffu, give, offset);
            }
            count = half;
        } else {
            v[0] += __shfl_xor_sync(0xffffffffu, v[0], offset);
        }
    }
    return v[0];
}

// NMAX bank slices of E elements and their gradients live in registers: NMAX * E <= 64 keeps the kernel under
// 255 registers (16-byte rows up to N = 8; 8- and 4-byte rows for N <= 16 and 32).
template <typename T, typename TOut, int NMAX, int E>
__global__ void __launch_bounds__(kThreads) reduce_weight_grad_kernel(ReduceParams p) {
    __shared__ float a_s[kModconvReduceSamples][NMAX];
    __shared__ float da_s[kModconvReduceSamples][NMAX];
    extern __shared__ float ds_s[];  // [B][channels_per_block]
    const int CI = p.channels_per_block;
    const int i0 = blockIdx.x * CI;
    const int channels = min(CI, p.Cin - i0);
    const int R = p.Cin * p.KK;
    const int elements = channels * p.KK;
    for (int idx = threadIdx.x; idx < kModconvReduceSamples * NMAX; idx += kThreads) {
        const int b = idx / NMAX, n = idx % NMAX;
        a_s[b][n] = b < p.B && n < p.N ? p.a[b * p.N + n] : 0.f;
        da_s[b][n] = 0.f;
    }
    for (int idx = threadIdx.x; idx < p.B * CI; idx += kThreads) ds_s[idx] = 0.f;
    __syncthreads();

    const int64_t bank_n = (int64_t)p.Cout * R;
    const T* bank = static_cast<const T*>(p.weight_bank);
    const T* grad_w = static_cast<const T*>(p.grad_weights);
    const T* style = static_cast<const T*>(p.style);
    TOut* grad_bank = static_cast<TOut*>(p.grad_bank);
    const int o_begin = blockIdx.y * p.outputs_per_block;
    const int o_end = min(p.Cout, o_begin + p.outputs_per_block);
    const int lane = threadIdx.x % kWarpSize;

    // The block's (channel, tap) elements in passes of kThreads * E (one pass unless k is large); every thread
    // runs every pass, so the warp-wide reductions see all lanes.
    for (int o = o_begin; o < o_end; ++o) {
        for (int base = 0; base < elements; base += kThreads * E) {
            const int e_local = base + threadIdx.x * E;
            const bool active = e_local < elements;
            const int count = active ? min(E, elements - e_local) : 0;
            const int e = i0 * p.KK + e_local;
            int channel[E];
            channels_of<E>(channel, e_local, p.KK);  // local channel index, 0..CI-1
#pragma unroll
            for (int j = 0; j < E; ++j) channel[j] = min(channel[j], max(channels - 1, 0));
            float w[NMAX][E], dw[NMAX][E];
#pragma unroll
            for (int n = 0; n < NMAX; ++n) {
#pragma unroll
                for (int j = 0; j < E; ++j) w[n][j] = dw[n][j] = 0.f;
                if (n < p.N && active)
                    load_row<T, E>(w[n], bank + n * bank_n + (int64_t)o * R + e, p.vectorized, count);
            }
            for (int b = 0; b < p.B; ++b) {
                float g[E] = {}, s[E] = {}, mix[E] = {};
                if (active) {
                    load_row<T, E>(g, grad_w + ((int64_t)b * p.Cout + o) * R + e, p.vectorized, count);
                    style_of<T, E>(s, style + b * p.stride_style[0] + (int64_t)i0 * p.stride_style[1],
                                   p.stride_style[1], channel);
#pragma unroll
                    for (int n = 0; n < NMAX; ++n)
#pragma unroll
                        for (int j = 0; j < E; ++j) mix[j] = fmaf(a_s[b][n], w[n][j], mix[j]);
                    if (p.c) {
                        const float c = p.c[(int64_t)b * p.Cout + o];
#pragma unroll
                        for (int j = 0; j < E; ++j) g[j] -= c * mix[j] * s[j];
                    }
                    // dstyle: G * Wmix over the taps of each channel, one shared-memory atomic per channel run.
                    float run = 0.f;
#pragma unroll
                    for (int j = 0; j < E; ++j) {
                        run = fmaf(g[j], mix[j], run);
                        const bool last = j == E - 1 || channel[j + 1 < E ? j + 1 : j] != channel[j] || j + 1 >= count;
                        if (last && j < count) {
                            atomicAdd(&ds_s[b * CI + channel[j]], run);
                            run = 0.f;
                        }
                    }
                }
                // G s, then dbank and this thread's share of dselect, summed over the warp in one pass.
#pragma unroll
                for (int j = 0; j < E; ++j) g[j] *= s[j];
                float part[NMAX];
#pragma unroll
                for (int n = 0; n < NMAX; ++n) {
                    part[n] = 0.f;
#pragma unroll
                    for (int j = 0; j < E; ++j) {
                        dw[n][j] = fmaf(a_s[b][n], g[j], dw[n][j]);
                        part[n] = fmaf(w[n][j], g[j], part[n]);
                    }
                }
                const float total = warp_reduce_scatter<NMAX>(part);
                if (lane % (kWarpSize / NMAX) == 0) atomicAdd(&da_s[b][lane / (kWarpSize / NMAX)], total);
            }
            if (active) {
#pragma unroll
                for (int n = 0; n < NMAX; ++n) {
                    if (n >= p.N) break;
                    TOut* dst = grad_bank + n * bank_n + (int64_t)o * R + e;
                    if (p.accumulate) {
                        float prev[E];
                        load_row<TOut, E>(prev, dst, p.vectorized, count);
#pragma unroll
                        for (int j = 0; j < E; ++j) dw[n][j] += prev[j];
                    }
                    store_row<TOut, E>(dst, dw[n], p.vectorized, count);
                }
            }
        }
    }
    __syncthreads();
    const int64_t block = (int64_t)blockIdx.y * gridDim.x + blockIdx.x;
    for (int idx = threadIdx.x; idx < p.B * p.N; idx += kThreads)
        p.da_part[block * p.B * p.N + idx] = da_s[idx / p.N][idx % p.N];
    for (int idx = threadIdx.x; idx < p.B * channels; idx += kThreads) {
        const int b = idx / channels, ci = idx - b * channels;
        p.ds_part[((int64_t)blockIdx.y * p.B + b) * p.Cin + i0 + ci] = ds_s[b * CI + ci];
    }
}

// ---- launchers -------------------------------------------------------------------------------------------
template <typename T>
void launch_build(const BuildWeightsParams& p, cudaStream_t stream) {
    const dim3 grid(ceil_div(p.B, kBuildGroup), p.Cout);
    if (p.vectorized) build_weights_kernel<T, vector_elements<T>()><<<grid, kThreads, 0, stream>>>(p);
    else build_weights_kernel<T, 4><<<grid, kThreads, 0, stream>>>(p);
}

template <typename T, typename TOut, int NMAX>
void launch_reduce_n(const ReduceParams& p, const ReduceTiles& tiles, cudaStream_t stream) {
    const dim3 grid(tiles.channel_blocks, tiles.output_blocks);
    const size_t smem = sizeof(float) * p.B * p.channels_per_block;
    constexpr int E = std::min(64 / NMAX, vector_elements<T>());
    reduce_weight_grad_kernel<T, TOut, NMAX, E><<<grid, kThreads, smem, stream>>>(p);
}

template <typename T, typename TOut>
void launch_reduce(const ReduceParams& p, const ReduceTiles& tiles, cudaStream_t stream) {
    const dim3 grid(tiles.channel_blocks, tiles.output_blocks);
    const size_t smem = sizeof(float) * p.B * p.channels_per_block;
    // Unaligned rows (Cin not a multiple of 8): one element a thread, any N.
    if (!p.vectorized) reduce_weight_grad_kernel<T, TOut, 32, 1><<<grid, kThreads, smem, stream>>>(p);
    else if (p.N <= 4) launch_reduce_n<T, TOut, 4>(p, tiles, stream);
    else if (p.N <= 8) launch_reduce_n<T, TOut, 8>(p, tiles, stream);
    else if (p.N <= 16) launch_reduce_n<T, TOut, 16>(p, tiles, stream);
    else launch_reduce_n<T, TOut, 32>(p, tiles, stream);
}

template <typename T>
void launch_reduce_dtype(const ReduceParams& p, cudaStream_t stream) {
    const ReduceTiles tiles = reduce_tiles(p.N, p.Cout, p.Cin, p.KK, p.vectorized, sizeof(T));
    if (p.fp32_grad_bank) launch_reduce<T, float>(p, tiles, stream);
    else launch_reduce<T, T>(p, tiles, stream);
}

template <template <typename> class Launch, typename Params>
cudaError_t dispatch(const Params& p, DType dtype, cudaStream_t stream) {
    switch (dtype) {
        case DType::kFloat32: Launch<float>::run(p, stream); break;
        case DType::kFloat16: Launch<half>::run(p, stream); break;
        case DType::kBFloat16: Launch<__nv_bfloat16>::run(p, stream); break;
    }
    return cudaGetLastError();
}

template <typename T> struct BuildLaunch { static void run(const BuildWeightsParams& p, cudaStream_t s) { launch_build<T>(p, s); } };
template <typename T> struct Im2colLaunch {
    static void run(const ColumnsParams& p, cudaStream_t s) {
        im2col_kernel<T><<<dim3(ceil_div((int64_t)p.Cin * p.ksize * p.ksize * p.H * p.W, kThreads), p.B), kThreads, 0,
                           s>>>(p);
    }
};
template <typename T> struct Col2imLaunch {
    static void run(const ColumnsParams& p, cudaStream_t s) {
        col2im_kernel<T><<<dim3(ceil_div((int64_t)p.Cin * p.H * p.W, kThreads), p.B), kThreads, 0, s>>>(p);
    }
};
template <typename T> struct EpilogueForwardLaunch {
    static void run(const EpilogueForwardParams& p, cudaStream_t s) {
        epilogue_forward_kernel<T><<<dim3(ceil_div((int64_t)p.Cout * p.H * p.W, kThreads), p.B), kThreads, 0, s>>>(p);
    }
};
template <typename T> struct EpilogueBackwardLaunch {
    static void run(const EpilogueBackwardParams& p, cudaStream_t s) {
        epilogue_backward_kernel<T><<<ceil_div((int64_t)p.B * p.Cout, kThreads / kWarpSize), kThreads, 0, s>>>(p);
    }
};
template <typename T> struct ReduceLaunch { static void run(const ReduceParams& p, cudaStream_t s) { launch_reduce_dtype<T>(p, s); } };

}  // namespace

ReduceTiles reduce_tiles(int N, int Cout, int Cin, int KK, bool vectorized, int element_size) {
    const int nmax = N <= 4 ? 4 : N <= 8 ? 8 : N <= 16 ? 16 : 32;
    const int E = vectorized ? std::min(64 / nmax, 16 / element_size) : 1;
    // Channels per block: the block's threads cover all taps of them; a multiple of 8 keeps rows 16-byte aligned.
    int channels = std::max(1, kThreads * E / KK);
    if (vectorized) channels = std::max(8, channels / 8 * 8);
    channels = std::min({channels, Cin, 256});
    const int channel_blocks = ceil_div(Cin, channels);
    // ~4 blocks per SM of a 132-SM card; each walks outputs_per_block output channels.
    const int outputs = std::max(1, ceil_div((int64_t)Cout * channel_blocks, 4 * 132));
    return ReduceTiles{E, channels, outputs, channel_blocks, ceil_div(Cout, outputs)};
}

WeightsPlan plan_weights(int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int64_t k, int64_t element_size,
                         bool needs_grad, int keep, int64_t workspace) {
    const int64_t P = H * W, R = Cin * k * k;
    WeightsPlan plan{};
    const int64_t weights = Cout * R * element_size;   // one sample's weights (or their gradient)
    const int64_t cols = R * P * element_size;         // its columns
    const int64_t out = Cout * P * element_size;       // the batched GEMM's output before the epilogue
    plan.keep = keep < 0 ? needs_grad && B * weights <= workspace / 2 : keep != 0;
    const int64_t left = workspace - (plan.keep ? B * weights : 0);
    const auto balanced = [B](int64_t most) {          // the fewest chunks of at most `most`, evenly
        most = std::max<int64_t>(1, std::min(B, most));
        const int64_t chunks = (B + most - 1) / most;
        return (B + chunks - 1) / chunks;
    };
    plan.forward_chunk = balanced(left / (cols + out + (plan.keep ? 0 : weights)));
    // Backward, per sample: the weights (unless kept) with the columns' gradient, then the columns with the
    // weight gradient; never all four at once.
    plan.backward_chunk = balanced(left / (weights + cols));
    return plan;
}

cudaError_t build_weights_cuda(const BuildWeightsParams& p, DType dtype, cudaStream_t stream) {
    return dispatch<BuildLaunch>(p, dtype, stream);
}
cudaError_t im2col_cuda(const ColumnsParams& p, DType dtype, cudaStream_t stream) {
    return dispatch<Im2colLaunch>(p, dtype, stream);
}
cudaError_t col2im_cuda(const ColumnsParams& p, DType dtype, cudaStream_t stream) {
    return dispatch<Col2imLaunch>(p, dtype, stream);
}
cudaError_t epilogue_forward_cuda(const EpilogueForwardParams& p, DType dtype, cudaStream_t stream) {
    return dispatch<EpilogueForwardLaunch>(p, dtype, stream);
}
cudaError_t epilogue_backward_cuda(const EpilogueBackwardParams& p, DType dtype, cudaStream_t stream) {
    return dispatch<EpilogueBackwardLaunch>(p, dtype, stream);
}
cudaError_t reduce_weight_grad_cuda(const ReduceParams& p, DType dtype, cudaStream_t stream) {
    return dispatch<ReduceLaunch>(p, dtype, stream);
}

}  // namespace gigagan
