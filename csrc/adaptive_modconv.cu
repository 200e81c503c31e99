// CUDA kernels for sample-adaptive kernel-selection modulated convolution (docs/design.md §2).
//
// Notation: a = softmax(select_logits) [B,N], s = style [B,Cin], K[b] = sum_n a[b,n] W[n],
// d[b,o] = rsqrt(sum_{i,t} (K[b,o,i,t] s[b,i])^2 + eps). Because s scales input channels and d output
// channels,  lin[b,o,p] = d[b,o] * sum_{i,t} K[b,o,i,t] * s[b,i] x[b,i,p+off(t)],  so every GEMM mixes
// the N bank tiles with a[b] while staging them into shared memory and modulates the *activations*.
// No [B,Cout,Cin,k,k] tensor exists anywhere. The GEMMs run on tensor cores (WMMA: fp16/bf16, TF32 for
// fp32) with fp32 accumulation. The same decomposition as the Triton kernels (adaptive_modconv_triton.py):
//   softmax rows -> demodulation coefficients -> forward implicit GEMM with the fused epilogue;
//   backward: input gradient (transposed implicit GEMM, also the style gradient's sum_p dxs*x) and the
//   bank / selection / style gradient, then the softmax backward.
#include "adaptive_modconv.h"
#include "common.cuh"

namespace gigagan {
namespace {

template <typename T>
__global__ void softmax_rows_kernel(const T* logits, int64_t stride_b, int64_t stride_n, float* a, int B, int N) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    const T* row = logits + b * stride_b;
    float row_max = -INFINITY;
    for (int n = 0; n < N; ++n) row_max = fmaxf(row_max, to_float(row[n * stride_n]));
    float total = 0.f;
    for (int n = 0; n < N; ++n) total += expf(to_float(row[n * stride_n]) - row_max);
    for (int n = 0; n < N; ++n) a[(int64_t)b * N + n] = expf(to_float(row[n * stride_n]) - row_max) / total;
}

// d[b,o]: one warp per (b, o), lanes stride over the contiguous (channel, tap) index of the bank row.
template <typename T>
__global__ void demodulation_kernel(ModconvForwardParams p) {
    const ModconvShape sh = p.shape;
    __shared__ float a_s[kModconvMaxFilters];
    const int b = blockIdx.y;
    if (threadIdx.x < sh.N) a_s[threadIdx.x] = p.a[(int64_t)b * sh.N + threadIdx.x];
    __syncthreads();
    const int lane = threadIdx.x % kWarpSize;
    const int o = blockIdx.x * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
    if (o >= sh.Cout) return;
    const int KK = sh.ksize * sh.ksize;
    const int64_t k_total = (int64_t)sh.Cin * KK;
    const int64_t bank_n = (int64_t)sh.Cout * k_total;
    const T* bank = static_cast<const T*>(p.weight_bank) + o * k_total;
    const T* style = static_cast<const T*>(p.style) + b * p.stride_style[0];
    float sumsq = 0.f;
    for (int64_t k = lane; k < k_total; k += kWarpSize) {
        float w = 0.f;
        for (int n = 0; n < sh.N; ++n) w += a_s[n] * to_float(bank[n * bank_n + k]);
        w *= to_float(style[(k / KK) * p.stride_style[1]]);
        sumsq += w * w;
    }
    sumsq = warp_sum(sumsq);
    if (lane == 0) p.d[(int64_t)b * sh.Cout + o] = rsqrtf(sumsq + p.eps);
}

// Pixel-tiled implicit GEMMs: BM pixels x BN channels per block, BK reduction steps, warps WARPS_M x WARPS_N.
template <int BM_, int BN_, int BK_, int WARPS_M_, int WARPS_N_>
struct PixelTile {
    static constexpr int BM = BM_, BN = BN_, BK = BK_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
    static constexpr int THREADS = kWarpSize * WARPS_M * WARPS_N;
    static constexpr int FM = BM / WARPS_M / 16, FN = BN / WARPS_N / 16;
    static_assert(FM >= 1 && FN >= 1 && FM * WARPS_M * 16 == BM && FN * WARPS_N * 16 == BN, "bad warp layout");
};
// One table for forward and input gradient, picked by pixels per image like the Triton configs.
using TileP16 = PixelTile<16, 128, 32, 1, 4>;   // 4x4 layers: a 16-pixel M tile, wide channel tile
using TileP64 = PixelTile<64, 64, 32, 2, 2>;    // 8x8 layers: one M tile per image
using TileP128 = PixelTile<128, 64, 32, 4, 2>;  // larger images

template <typename T, typename Cfg>
struct PixelTileSmem {
    static constexpr int LDA = padded<T>(Cfg::BK), LDB = padded<T>(Cfg::BN), LDC = padded<float>(Cfg::BN);
    static constexpr int A_BYTES = smem_round(Cfg::BM * LDA * sizeof(T));
    static constexpr int OPERAND_BYTES = A_BYTES + smem_round(Cfg::BK * LDB * sizeof(T));
    static constexpr int OUT_BYTES = Cfg::BM * LDC * sizeof(float);
    // The fp32 output tile reuses the operand tiles after the reduction loop.
    static constexpr int BYTES = OPERAND_BYTES > OUT_BYTES ? OPERAND_BYTES : OUT_BYTES;
};

// Where a pixel-tiled block works: sample b, pixels [p0, p0 + BM), channels [n0, n0 + BN), and this
// warp's output tiles. Pixel tiles vary fastest in the grid, then samples, so the blocks that read one
// channel slice of the bank run together (L2 reuse).
template <typename Cfg>
struct PixelTileBlock {
    int P, p0, n0, m_warp, n_warp;
    int64_t b;
    __device__ explicit PixelTileBlock(const ModconvShape& sh) {
        P = sh.H * sh.W;
        const int num_p = (P + Cfg::BM - 1) / Cfg::BM;
        p0 = (blockIdx.x % num_p) * Cfg::BM;
        b = blockIdx.x / num_p;
        n0 = blockIdx.y * Cfg::BN;
        const int warp = threadIdx.x / kWarpSize;
        m_warp = (warp / Cfg::WARPS_N) * Cfg::FM * 16;
        n_warp = (warp % Cfg::WARPS_N) * Cfg::FN * 16;
    }
    // a[b, :] into shared memory, zero-padded to kModconvMaxFilters.
    __device__ void load_selection(float* a_s, const float* a, int N) const {
        for (int n = threadIdx.x; n < kModconvMaxFilters; n += Cfg::THREADS) a_s[n] = n < N ? a[b * N + n] : 0.f;
    }
};

// y = epilogue(d * conv(x * s, K[b])): M = pixels of one sample, N = Cout, K = Cin * k * k.
template <typename T, typename Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, 1) modconv_forward_kernel(ModconvForwardParams p) {
    using Smem = PixelTileSmem<T, Cfg>;
    constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK;
    __shared__ __align__(128) unsigned char smem[Smem::BYTES];
    __shared__ float a_s[kModconvMaxFilters];
    T* As = reinterpret_cast<T*>(smem);                   // [BM][LDA]: s * x, gathered (im2col on the fly)
    T* Bs = reinterpret_cast<T*>(smem + Smem::A_BYTES);   // [BK][LDB]: the bank mixed with a[b]
    float* Cs = reinterpret_cast<float*>(smem);            // [BM][LDC]: after the loop

    const ModconvShape sh = p.shape;
    const PixelTileBlock<Cfg> tile(sh);
    const int P = tile.P, p0 = tile.p0, co0 = tile.n0, m_warp = tile.m_warp, n_warp = tile.n_warp;
    const int64_t b = tile.b;
    const int KK = sh.ksize * sh.ksize, pad = sh.ksize / 2;
    const int k_total = sh.Cin * KK;
    const int64_t bank_n = (int64_t)sh.Cout * k_total;
    tile.load_selection(a_s, p.a, sh.N);

    const T* x = static_cast<const T*>(p.x) + b * p.stride_x[0];
    const T* style = static_cast<const T*>(p.style) + b * p.stride_style[0];
    const T* bank = static_cast<const T*>(p.weight_bank);
    AccFrag<T> acc[Cfg::FM][Cfg::FN];
    zero_tiles(acc);
    __syncthreads();

    for (int k0 = 0; k0 < k_total; k0 += BK) {
        // Pixels vary fastest across threads: coalesced reads of an NCHW row.
        for (int idx = threadIdx.x; idx < BM * BK; idx += Cfg::THREADS) {
            const int m = idx % BM, kk = idx / BM;
            const int pix = p0 + m, k = k0 + kk;
            float v = 0.f;
            if (pix < P && k < k_total) {
                const int ci = k / KK, tap = k - ci * KK;
                const int ih = pix / sh.W + tap / sh.ksize - pad, iw = pix % sh.W + tap % sh.ksize - pad;
                if (ih >= 0 && ih < sh.H && iw >= 0 && iw < sh.W)
                    v = to_float(x[ci * p.stride_x[1] + ih * p.stride_x[2] + iw * p.stride_x[3]]) *
                        to_float(style[ci * p.stride_style[1]]);
            }
            As[m * Smem::LDA + kk] = from_float<T>(v);
        }
        // The reduction index is the bank's own contiguous (channel, tap) order: coalesced, no repack.
        for (int idx = threadIdx.x; idx < BK * BN; idx += Cfg::THREADS) {
            const int kk = idx % BK, n = idx / BK;
            const int co = co0 + n, k = k0 + kk;
            float v = 0.f;
            if (co < sh.Cout && k < k_total) {
                const T* w = bank + (int64_t)co * k_total + k;
                for (int f = 0; f < sh.N; ++f) v += a_s[f] * to_float(w[f * bank_n]);
            }
            Bs[kk * Smem::LDB + n] = from_float<T>(v);
        }
        __syncthreads();
        warp_mma<T, false, false, Cfg::FM, Cfg::FN, BK>(acc, As, Smem::LDA, Bs, Smem::LDB, m_warp, n_warp);
        __syncthreads();
    }
    store_tiles(acc, Cs, Smem::LDC, m_warp, n_warp);
    __syncthreads();

    const float* d = p.d + b * sh.Cout;
    const T* noise = static_cast<const T*>(p.noise);
    const T* bias = static_cast<const T*>(p.bias);
    T* y = static_cast<T*>(p.y);
    T* lin = static_cast<T*>(p.lin);
    for (int idx = threadIdx.x; idx < BM * BN; idx += Cfg::THREADS) {
        const int m = idx % BM, n = idx / BM;
        const int pix = p0 + m, co = co0 + n;
        if (pix >= P || co >= sh.Cout) continue;
        const int oh = pix / sh.W, ow = pix % sh.W;
        float v = Cs[m * Smem::LDC + n] * d[co];
        const int64_t y_off = b * p.stride_y[0] + co * p.stride_y[1] + oh * p.stride_y[2] + ow * p.stride_y[3];
        if (lin) lin[y_off] = from_float<T>(v);
        if (noise)
            v += to_float(noise[b * p.stride_noise[0] + co * p.stride_noise[1] + oh * p.stride_noise[2] +
                                ow * p.stride_noise[3]]);
        if (bias) v += to_float(bias[co]);
        if (p.lrelu) v = v > 0.f ? v : 0.2f * v;
        v *= p.gain;
        if (p.has_clamp) v = fminf(fmaxf(v, -p.clamp), p.clamp);
        y[y_off] = from_float<T>(v);
    }
}

// dxs = conv_transpose(gz, K[b]); dx = dxs * s; grad_style[b,i] += sum_p dxs * x.
// M = pixels, N = Cin, K = (Cout, tap); a tap that reads x at p+off in the forward reads gz at p-off.
template <typename T, typename Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, 1) modconv_grad_x_kernel(ModconvBackwardParams p) {
    using Smem = PixelTileSmem<T, Cfg>;
    constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK;
    __shared__ __align__(128) unsigned char smem[Smem::BYTES];
    __shared__ float a_s[kModconvMaxFilters];
    T* As = reinterpret_cast<T*>(smem);
    T* Bs = reinterpret_cast<T*>(smem + Smem::A_BYTES);
    float* Cs = reinterpret_cast<float*>(smem);

    const ModconvShape sh = p.shape;
    const PixelTileBlock<Cfg> tile(sh);
    const int P = tile.P, p0 = tile.p0, ci0 = tile.n0, m_warp = tile.m_warp, n_warp = tile.n_warp;
    const int64_t b = tile.b;
    const int KK = sh.ksize * sh.ksize, pad = sh.ksize / 2;
    const int k_total = sh.Cout * KK;
    const int64_t bank_row = (int64_t)sh.Cin * KK;
    const int64_t bank_n = (int64_t)sh.Cout * bank_row;
    tile.load_selection(a_s, p.a, sh.N);

    const T* gz = static_cast<const T*>(p.grad_z) + b * sh.Cout * (int64_t)P;
    const T* bank = static_cast<const T*>(p.weight_bank);
    AccFrag<T> acc[Cfg::FM][Cfg::FN];
    zero_tiles(acc);
    __syncthreads();

    for (int k0 = 0; k0 < k_total; k0 += BK) {
        for (int idx = threadIdx.x; idx < BM * BK; idx += Cfg::THREADS) {
            const int m = idx % BM, kk = idx / BM;
            const int pix = p0 + m, k = k0 + kk;
            float v = 0.f;
            if (pix < P && k < k_total) {
                const int co = k / KK, tap = k - co * KK;
                const int ih = pix / sh.W - (tap / sh.ksize - pad), iw = pix % sh.W - (tap % sh.ksize - pad);
                if (ih >= 0 && ih < sh.H && iw >= 0 && iw < sh.W) v = to_float(gz[(int64_t)co * P + ih * sh.W + iw]);
            }
            As[m * Smem::LDA + kk] = from_float<T>(v);
        }
        for (int idx = threadIdx.x; idx < BK * BN; idx += Cfg::THREADS) {
            const int kk = idx % BK, n = idx / BK;
            const int ci = ci0 + n, k = k0 + kk;
            float v = 0.f;
            if (ci < sh.Cin && k < k_total) {
                const int co = k / KK, tap = k - co * KK;
                const T* w = bank + co * bank_row + (int64_t)ci * KK + tap;
                for (int f = 0; f < sh.N; ++f) v += a_s[f] * to_float(w[f * bank_n]);
            }
            Bs[kk * Smem::LDB + n] = from_float<T>(v);
        }
        __syncthreads();
        warp_mma<T, false, false, Cfg::FM, Cfg::FN, BK>(acc, As, Smem::LDA, Bs, Smem::LDB, m_warp, n_warp);
        __syncthreads();
    }
    store_tiles(acc, Cs, Smem::LDC, m_warp, n_warp);
    __syncthreads();

    const T* x = static_cast<const T*>(p.x) + b * p.stride_x[0];
    const T* style = static_cast<const T*>(p.style) + b * p.stride_style[0];
    T* grad_x = static_cast<T*>(p.grad_x) + b * p.stride_grad_x[0];
    for (int idx = threadIdx.x; idx < BM * BN; idx += Cfg::THREADS) {
        const int m = idx % BM, n = idx / BM;
        const int pix = p0 + m, ci = ci0 + n;
        float xs_grad = 0.f;
        if (pix < P && ci < sh.Cin) {
            const int oh = pix / sh.W, ow = pix % sh.W;
            const float v = Cs[m * Smem::LDC + n];
            grad_x[ci * p.stride_grad_x[1] + oh * p.stride_grad_x[2] + ow * p.stride_grad_x[3]] =
                from_float<T>(v * to_float(style[ci * p.stride_style[1]]));
            xs_grad = v * to_float(x[ci * p.stride_x[1] + oh * p.stride_x[2] + ow * p.stride_x[3]]);
        }
        Cs[m * Smem::LDC + n] = xs_grad;
    }
    __syncthreads();
    for (int n = threadIdx.x; n < BN; n += Cfg::THREADS) {
        const int ci = ci0 + n;
        if (ci >= sh.Cin) continue;
        float total = 0.f;
        for (int m = 0; m < BM; ++m) total += Cs[m * Smem::LDC + n];
        atomicAdd(p.grad_style + b * sh.Cin + ci, total);
    }
}

// Bank gradient tiles: BCO x BCI filter entries of one tap per block; warps WARPS_M x WARPS_N x WARPS_K
// (the last splits the pixel reduction). Each thread keeps EPT entries of all N bank tiles and of their
// gradients in registers, so NPAD * EPT bounds the register budget (<= 32 floats per array).
template <int NPAD_, int BCO_, int BCI_, int BP_, int WARPS_M_, int WARPS_N_, int WARPS_K_>
struct BankTile {
    static constexpr int NPAD = NPAD_, BCO = BCO_, BCI = BCI_, BP = BP_;
    static constexpr int WARPS_M = WARPS_M_, WARPS_N = WARPS_N_, WARPS_K = WARPS_K_;
    static constexpr int THREADS = kWarpSize * WARPS_M * WARPS_N * WARPS_K;
    static constexpr int FM = BCO / WARPS_M / 16, FN = BCI / WARPS_N / 16, KSLICE = BP / WARPS_K;
    static constexpr int EPT = BCO * BCI / THREADS;
    static_assert(EPT * THREADS == BCO * BCI, "tile entries must split evenly over threads");
    static_assert(FM * WARPS_M * 16 == BCO && FN * WARPS_N * 16 == BCI, "bad warp layout");
};
using BankN1 = BankTile<1, 32, 64, 32, 2, 2, 1>;
using BankN2 = BankTile<2, 16, 32, 32, 1, 2, 2>;
using BankN4 = BankTile<4, 16, 16, 64, 1, 1, 4>;
using BankN8 = BankTile<8, 16, 16, 64, 1, 1, 4>;
using BankN16 = BankTile<16, 16, 16, 64, 1, 1, 4>;
using BankN32 = BankTile<32, 16, 16, 64, 1, 1, 4>;

// Per (Cout tile, Cin tile, tap), looping over samples; G[b] exists only on chip:
//   G[b,o,i]   = sum_p gz[b,o,p] xs[b,i,p+off]  -  c[b,o] s[b,i]^2 K[b,o,i]   (second term: demodulation)
//   dW[n]     += a[b,n] G[b]        da[b,n] += <W[n], G[b]>        ds[b,i] += -s[b,i] sum_o c[b,o] K[b,o,i]^2
template <typename T, typename Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, 1) modconv_grad_bank_kernel(ModconvBackwardParams p) {
    constexpr int BCO = Cfg::BCO, BCI = Cfg::BCI, BP = Cfg::BP, NPAD = Cfg::NPAD, EPT = Cfg::EPT;
    constexpr int LDA = padded<T>(BP), LDB = padded<T>(BCI), LDC = padded<float>(BCI);
    constexpr int A_BYTES = smem_round(BCO * LDA * sizeof(T)), B_BYTES = smem_round(BP * LDB * sizeof(T));
    __shared__ __align__(128) unsigned char smem[A_BYTES + B_BYTES + Cfg::WARPS_K * BCO * LDC * sizeof(float)];
    __shared__ float a_s[NPAD], da_s[NPAD], s_s[BCI], ds_s[BCI], c_s[BCO];
    T* As = reinterpret_cast<T*>(smem);                               // [BCO][LDA]: gz (Cout x pixels)
    T* Bs = reinterpret_cast<T*>(smem + A_BYTES);                     // [BP][LDB]: s * x shifted by the tap
    float* Cs = reinterpret_cast<float*>(smem + A_BYTES + B_BYTES);   // [WARPS_K][BCO][LDC]

    const ModconvShape sh = p.shape;
    const int P = sh.H * sh.W, KK = sh.ksize * sh.ksize, pad = sh.ksize / 2;
    const int co0 = blockIdx.x * BCO, ci0 = blockIdx.y * BCI, tap = blockIdx.z;
    const int dh = tap / sh.ksize - pad, dw = tap % sh.ksize - pad;
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    const int wk = warp / (Cfg::WARPS_M * Cfg::WARPS_N), wmn = warp % (Cfg::WARPS_M * Cfg::WARPS_N);
    const int m_warp = (wmn / Cfg::WARPS_N) * Cfg::FM * 16, n_warp = (wmn % Cfg::WARPS_N) * Cfg::FN * 16;

    const T* bank = static_cast<const T*>(p.weight_bank);
    float bank_r[NPAD][EPT], grad_r[NPAD][EPT];
#pragma unroll
    for (int e = 0; e < EPT; ++e) {
        const int elem = threadIdx.x + e * Cfg::THREADS;
        const int co = co0 + elem / BCI, ci = ci0 + elem % BCI;
#pragma unroll
        for (int n = 0; n < NPAD; ++n) {
            const bool valid = n < sh.N && co < sh.Cout && ci < sh.Cin;
            bank_r[n][e] = valid ? to_float(bank[(((int64_t)n * sh.Cout + co) * sh.Cin + ci) * KK + tap]) : 0.f;
            grad_r[n][e] = 0.f;
        }
    }

    for (int b = 0; b < sh.B; ++b) {
        for (int n = threadIdx.x; n < NPAD; n += Cfg::THREADS) {
            a_s[n] = n < sh.N ? p.a[(int64_t)b * sh.N + n] : 0.f;
            da_s[n] = 0.f;
        }
        const T* style = static_cast<const T*>(p.style) + b * p.stride_style[0];
        for (int i = threadIdx.x; i < BCI; i += Cfg::THREADS) {
            s_s[i] = ci0 + i < sh.Cin ? to_float(style[(ci0 + i) * p.stride_style[1]]) : 0.f;
            ds_s[i] = 0.f;
        }
        for (int i = threadIdx.x; i < BCO; i += Cfg::THREADS)
            c_s[i] = p.demodulate && co0 + i < sh.Cout ? p.c[(int64_t)b * sh.Cout + co0 + i] : 0.f;
        AccFrag<T> acc[Cfg::FM][Cfg::FN];
        zero_tiles(acc);
        __syncthreads();

        const T* gz = static_cast<const T*>(p.grad_z) + (int64_t)b * sh.Cout * P;
        const T* x = static_cast<const T*>(p.x) + b * p.stride_x[0];
        for (int p0 = 0; p0 < P; p0 += BP) {
            for (int idx = threadIdx.x; idx < BCO * BP; idx += Cfg::THREADS) {
                const int pl = idx % BP, co_l = idx / BP;
                const int pix = p0 + pl, co = co0 + co_l;
                const float v = pix < P && co < sh.Cout ? to_float(gz[(int64_t)co * P + pix]) : 0.f;
                As[co_l * LDA + pl] = from_float<T>(v);
            }
            for (int idx = threadIdx.x; idx < BP * BCI; idx += Cfg::THREADS) {
                const int pl = idx % BP, ci_l = idx / BP;
                const int pix = p0 + pl, ci = ci0 + ci_l;
                const int ih = pix / sh.W + dh, iw = pix % sh.W + dw;
                float v = 0.f;
                if (pix < P && ci < sh.Cin && ih >= 0 && ih < sh.H && iw >= 0 && iw < sh.W)
                    v = to_float(x[ci * p.stride_x[1] + ih * p.stride_x[2] + iw * p.stride_x[3]]) * s_s[ci_l];
                Bs[pl * LDB + ci_l] = from_float<T>(v);
            }
            __syncthreads();
            warp_mma<T, false, false, Cfg::FM, Cfg::FN, Cfg::KSLICE>(acc, As + wk * Cfg::KSLICE, LDA,
                                                                     Bs + wk * Cfg::KSLICE * LDB, LDB, m_warp, n_warp);
            __syncthreads();
        }
        store_tiles(acc, Cs + wk * BCO * LDC, LDC, m_warp, n_warp);
        __syncthreads();

        float da_part[NPAD];
#pragma unroll
        for (int n = 0; n < NPAD; ++n) da_part[n] = 0.f;
#pragma unroll
        for (int e = 0; e < EPT; ++e) {
            const int elem = threadIdx.x + e * Cfg::THREADS;
            const int co_l = elem / BCI, ci_l = elem % BCI;
            float g = 0.f;
#pragma unroll
            for (int k = 0; k < Cfg::WARPS_K; ++k) g += Cs[(k * BCO + co_l) * LDC + ci_l];
            if (p.demodulate) {
                float mixed = 0.f;
#pragma unroll
                for (int n = 0; n < NPAD; ++n) mixed += a_s[n] * bank_r[n][e];
                const float s = s_s[ci_l], c_mixed = c_s[co_l] * mixed;
                g -= c_mixed * s * s;
                if (c_mixed != 0.f) atomicAdd(&ds_s[ci_l], -s * c_mixed * mixed);
            }
#pragma unroll
            for (int n = 0; n < NPAD; ++n) {
                grad_r[n][e] += a_s[n] * g;
                da_part[n] += bank_r[n][e] * g;
            }
        }
#pragma unroll
        for (int n = 0; n < NPAD; ++n) {
            const float total = warp_sum(da_part[n]);
            if (lane == 0) atomicAdd(&da_s[n], total);
        }
        __syncthreads();
        for (int n = threadIdx.x; n < sh.N; n += Cfg::THREADS) atomicAdd(p.grad_a + (int64_t)b * sh.N + n, da_s[n]);
        if (p.demodulate)
            for (int i = threadIdx.x; i < BCI && ci0 + i < sh.Cin; i += Cfg::THREADS)
                atomicAdd(p.grad_style + (int64_t)b * sh.Cin + ci0 + i, ds_s[i]);
        __syncthreads();  // the next sample overwrites a_s, da_s, s_s, ds_s and c_s
    }

    T* grad_bank = static_cast<T*>(p.grad_bank);
#pragma unroll
    for (int e = 0; e < EPT; ++e) {
        const int elem = threadIdx.x + e * Cfg::THREADS;
        const int co = co0 + elem / BCI, ci = ci0 + elem % BCI;
        if (co >= sh.Cout || ci >= sh.Cin) continue;
#pragma unroll
        for (int n = 0; n < NPAD; ++n)
            if (n < sh.N) grad_bank[(((int64_t)n * sh.Cout + co) * sh.Cin + ci) * KK + tap] = from_float<T>(grad_r[n][e]);
    }
}

__global__ void softmax_backward_kernel(const float* a, const float* grad_a, float* grad_logits, int B, int N) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    const float* a_row = a + (int64_t)b * N;
    const float* g_row = grad_a + (int64_t)b * N;
    float dot = 0.f;
    for (int n = 0; n < N; ++n) dot += a_row[n] * g_row[n];
    for (int n = 0; n < N; ++n) grad_logits[(int64_t)b * N + n] = a_row[n] * (g_row[n] - dot);
}

int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

template <typename T>
void launch_softmax(const void* logits, const int64_t* stride, float* a, int B, int N, cudaStream_t stream) {
    softmax_rows_kernel<T><<<ceil_div(B, 128), 128, 0, stream>>>(static_cast<const T*>(logits), stride[0], stride[1],
                                                                  a, B, N);
}

template <typename T, typename Cfg>
void launch_forward_gemm(const ModconvForwardParams& p, cudaStream_t stream) {
    const ModconvShape& sh = p.shape;
    const dim3 grid(ceil_div(sh.H * sh.W, Cfg::BM) * sh.B, ceil_div(sh.Cout, Cfg::BN));
    modconv_forward_kernel<T, Cfg><<<grid, Cfg::THREADS, 0, stream>>>(p);
}

template <typename T, typename Cfg>
void launch_grad_x(const ModconvBackwardParams& p, cudaStream_t stream) {
    const ModconvShape& sh = p.shape;
    const dim3 grid(ceil_div(sh.H * sh.W, Cfg::BM) * sh.B, ceil_div(sh.Cin, Cfg::BN));
    modconv_grad_x_kernel<T, Cfg><<<grid, Cfg::THREADS, 0, stream>>>(p);
}

template <typename T, typename Cfg>
void launch_grad_bank(const ModconvBackwardParams& p, cudaStream_t stream) {
    const ModconvShape& sh = p.shape;
    const dim3 grid(ceil_div(sh.Cout, Cfg::BCO), ceil_div(sh.Cin, Cfg::BCI), sh.ksize * sh.ksize);
    modconv_grad_bank_kernel<T, Cfg><<<grid, Cfg::THREADS, 0, stream>>>(p);
}

template <typename T>
void forward(const ModconvForwardParams& p, cudaStream_t stream) {
    const ModconvShape& sh = p.shape;
    launch_softmax<T>(p.select_logits, p.stride_logits, p.a, sh.B, sh.N, stream);
    if (p.demodulate) {
        constexpr int kWarps = 8;
        demodulation_kernel<T><<<dim3(ceil_div(sh.Cout, kWarps), sh.B), kWarps * kWarpSize, 0, stream>>>(p);
    }
    const int P = sh.H * sh.W;
    if (P <= 16) launch_forward_gemm<T, TileP16>(p, stream);
    else if (P <= 64) launch_forward_gemm<T, TileP64>(p, stream);
    else launch_forward_gemm<T, TileP128>(p, stream);
}

template <typename T>
void backward(const ModconvBackwardParams& p, cudaStream_t stream) {
    const ModconvShape& sh = p.shape;
    launch_softmax<T>(p.select_logits, p.stride_logits, p.a, sh.B, sh.N, stream);
    const int P = sh.H * sh.W;
    if (P <= 16) launch_grad_x<T, TileP16>(p, stream);
    else if (P <= 64) launch_grad_x<T, TileP64>(p, stream);
    else launch_grad_x<T, TileP128>(p, stream);
    if (sh.N <= 1) launch_grad_bank<T, BankN1>(p, stream);
    else if (sh.N <= 2) launch_grad_bank<T, BankN2>(p, stream);
    else if (sh.N <= 4) launch_grad_bank<T, BankN4>(p, stream);
    else if (sh.N <= 8) launch_grad_bank<T, BankN8>(p, stream);
    else if (sh.N <= 16) launch_grad_bank<T, BankN16>(p, stream);
    else launch_grad_bank<T, BankN32>(p, stream);
    softmax_backward_kernel<<<ceil_div(sh.B, 128), 128, 0, stream>>>(p.a, p.grad_a, p.grad_logits, sh.B, sh.N);
}

}  // namespace

void adaptive_modconv2d_forward_cuda(const ModconvForwardParams& p, DType dtype, cudaStream_t stream) {
    switch (dtype) {
        case DType::kFloat32: forward<float>(p, stream); break;
        case DType::kFloat16: forward<half>(p, stream); break;
        case DType::kBFloat16: forward<__nv_bfloat16>(p, stream); break;
    }
}

void adaptive_modconv2d_backward_cuda(const ModconvBackwardParams& p, DType dtype, cudaStream_t stream) {
    switch (dtype) {
        case DType::kFloat32: backward<float>(p, stream); break;
        case DType::kFloat16: backward<half>(p, stream); break;
        case DType::kBFloat16: backward<__nv_bfloat16>(p, stream); break;
    }
}

}  // namespace gigagan
