// Flash-style CUDA kernels for L2-distance and dot-product attention with a key padding mask (docs/design.md §3).
//
// L2 logits use  -s||q_i - k_j||^2 = 2s<q_i,k_j> - s||k_j||^2 - s||q_i||^2; the last term is constant
// along a row and cancels in the softmax, so L2 is dot-product attention at scale 2s plus a per-key bias
// -s||k_j||^2, computed from the key tile in shared memory. Softmax runs in base 2 with fp32 statistics
// (online over key tiles); only the per-row log-sum-exp is saved. No Lq x Lk tensor reaches global memory.
// Backward, with dS = P * (dP - delta), delta = rowsum(dO * O):
//   dot: dQ = s dS K,   dK = s dS^T Q;     l2: dQ = 2s dS K,   dK = 2s (dS^T Q - k_j colsum(dS)_j)
// (the l2 dQ term -2s q_i rowsum(dS) vanishes: rows of dS sum to zero). Same math as attention_triton.py.
// The products run on tensor cores (WMMA; TF32 for fp32 inputs); tiles are staged in shared memory, and
// the running output lives there too because WMMA accumulators cannot be rescaled per row in registers.
#include "attention.h"
#include "common.cuh"

namespace gigagan {
namespace {

constexpr int kThreads = 128;  // 4 warps
constexpr int kFwdBM = 64, kFwdBN = 32;   // forward: query rows x key columns per step
constexpr int kBwdBM = 32, kBwdBN = 32;   // backward: query rows x key columns per step

// Loads rows [row0, row0 + ROWS) x columns [0, HD) of an [L, dim] slice into shared memory, zero padded.
template <typename T, int ROWS, int HD>
__device__ __forceinline__ void load_rows(T* dst, int ld, const T* src, int64_t stride_row, int64_t stride_col,
                                          int row0, int L, int dim) {
    for (int idx = threadIdx.x; idx < ROWS * HD; idx += kThreads) {
        const int r = idx / HD, c = idx % HD;
        const int row = row0 + r;
        dst[r * ld + c] = row < L && c < dim ? src[row * stride_row + c * stride_col] : from_float<T>(0.f);
    }
}

// bias[j] = -bias_scale ||k_j||^2 (0 for dot), or -inf for a padded or masked key.
template <typename T, int BN, int HD>
__device__ __forceinline__ void key_bias(float* bias, const T* Ks, int ld, const AttentionParams& p, int b, int n0) {
    for (int j = threadIdx.x; j < BN; j += kThreads) {
        const int key = n0 + j;
        bool visible = key < p.Lk;
        if (visible && p.mask) visible = p.mask[(int64_t)b * p.Lk + key] != 0;
        float sq = 0.f;
        if (p.l2)
            for (int c = 0; c < HD; ++c) {
                const float kv = to_float(Ks[j * ld + c]);
                sq += kv * kv;
            }
        bias[j] = visible ? -p.bias_scale * sq : -INFINITY;
    }
}

// This block's (b, h) slices of q, k, v and dO, and where its rows start in lse and delta.
template <typename T>
struct HeadSlice {
    int b, h;
    int64_t row_base;
    const T *q, *k, *v, *grad_out;
    __device__ explicit HeadSlice(const AttentionParams& p)
        : b(blockIdx.y / p.H), h(blockIdx.y % p.H), row_base(((int64_t)b * p.H + h) * p.Lq),
          q(static_cast<const T*>(p.q) + b * p.stride_q[0] + h * p.stride_q[1]),
          k(static_cast<const T*>(p.k) + b * p.stride_k[0] + h * p.stride_k[1]),
          v(static_cast<const T*>(p.v) + b * p.stride_v[0] + h * p.stride_v[1]),
          grad_out(p.grad_out ? static_cast<const T*>(p.grad_out) + b * p.stride_grad_out[0] +
                                    h * p.stride_grad_out[1] : nullptr) {}
};

template <typename T, int HD>
struct FwdSmem {
    static constexpr int LDH = padded<T>(HD), LDS = padded<float>(kFwdBN), LDP = padded<T>(kFwdBN),
                         LDO = padded<float>(HD);
    static constexpr int Q = 0;
    static constexpr int K = Q + smem_round(kFwdBM * LDH * sizeof(T));
    static constexpr int V = K + smem_round(kFwdBN * LDH * sizeof(T));
    static constexpr int S = V + smem_round(kFwdBN * LDH * sizeof(T));
    static constexpr int P = S + smem_round(kFwdBM * LDS * sizeof(float));
    static constexpr int O = P + smem_round(kFwdBM * LDP * sizeof(T));
    static constexpr int ROWS = O + smem_round(kFwdBM * LDO * sizeof(float));   // alpha, l
    static constexpr int BIAS = ROWS + smem_round(2 * kFwdBM * sizeof(float));
    static constexpr int BYTES = BIAS + smem_round(kFwdBN * sizeof(float));
};

template <typename T, int HD>
__global__ void __launch_bounds__(kThreads, 1) attention_forward_kernel(AttentionParams p) {
    using L = FwdSmem<T, HD>;
    constexpr int BM = kFwdBM, BN = kFwdBN;
    extern __shared__ __align__(128) unsigned char smem[];
    T* Qs = reinterpret_cast<T*>(smem + L::Q);
    T* Ks = reinterpret_cast<T*>(smem + L::K);
    T* Vs = reinterpret_cast<T*>(smem + L::V);
    float* Ss = reinterpret_cast<float*>(smem + L::S);
    T* Ps = reinterpret_cast<T*>(smem + L::P);
    float* Os = reinterpret_cast<float*>(smem + L::O);
    float* alpha_s = reinterpret_cast<float*>(smem + L::ROWS);
    float* l_s = alpha_s + BM;
    float* bias_s = reinterpret_cast<float*>(smem + L::BIAS);

    const HeadSlice<T> at(p);
    const int b = at.b, h = at.h;
    const int m0 = blockIdx.x * BM;
    load_rows<T, BM, HD>(Qs, L::LDH, at.q, p.stride_q[2], p.stride_q[3], m0, p.Lq, p.D);
    for (int idx = threadIdx.x; idx < BM * L::LDO; idx += kThreads) Os[idx] = 0.f;

    const int warp = threadIdx.x / kWarpSize;
    // Two threads per query row, each owning half of the key columns of a step; they are adjacent lanes.
    const int row = threadIdx.x / 2, half = threadIdx.x % 2;
    float m_i = -1.0e30f;  // finite, so that a fully masked row never computes (-inf) - (-inf)
    float l_i = 0.f;
    for (int n0 = 0; n0 < p.Lk; n0 += BN) {
        load_rows<T, BN, HD>(Ks, L::LDH, at.k, p.stride_k[2], p.stride_k[3], n0, p.Lk, p.D);
        load_rows<T, BN, HD>(Vs, L::LDH, at.v, p.stride_v[2], p.stride_v[3], n0, p.Lk, p.DV);
        __syncthreads();
        key_bias<T, BN, HD>(bias_s, Ks, L::LDH, p, b, n0);
        {
            AccFrag<T> s_acc[1][BN / 16];
            zero_tiles(s_acc);
            warp_mma<T, false, true, 1, BN / 16, HD>(s_acc, Qs, L::LDH, Ks, L::LDH, warp * 16, 0);
            store_tiles(s_acc, Ss, L::LDS, warp * 16, 0);
        }
        __syncthreads();
        float* s_row = Ss + row * L::LDS + half * (BN / 2);
        float row_max = -INFINITY;
#pragma unroll
        for (int j = 0; j < BN / 2; ++j) {
            const float s = s_row[j] * p.qk_scale + bias_s[half * (BN / 2) + j];
            s_row[j] = s;
            row_max = fmaxf(row_max, s);
        }
        row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
        const float m_new = fmaxf(m_i, row_max);
        float row_sum = 0.f;
        T* p_row = Ps + row * L::LDP + half * (BN / 2);
#pragma unroll
        for (int j = 0; j < BN / 2; ++j) {
            const float prob = exp2f(s_row[j] - m_new);
            p_row[j] = from_float<T>(prob);
            row_sum += prob;
        }
        row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
        const float alpha = exp2f(m_i - m_new);
        l_i = l_i * alpha + row_sum;
        m_i = m_new;
        if (half == 0) alpha_s[row] = alpha;
        __syncthreads();
        for (int idx = threadIdx.x; idx < BM * HD; idx += kThreads) Os[(idx / HD) * L::LDO + idx % HD] *= alpha_s[idx / HD];
        __syncthreads();
        {
            AccFrag<T> o_acc[1][HD / 16];
            load_tiles(o_acc, Os, L::LDO, warp * 16, 0);
            warp_mma<T, false, false, 1, HD / 16, BN>(o_acc, Ps, L::LDP, Vs, L::LDH, warp * 16, 0);
            store_tiles(o_acc, Os, L::LDO, warp * 16, 0);
        }
        __syncthreads();
    }
    if (half == 0) l_s[row] = l_i;
    if (half == 0 && m0 + row < p.Lq) {
        // +inf for a row with no visible key: its probabilities recompute as exactly 0 in the backward.
        p.lse[((int64_t)b * p.H + h) * p.Lq + m0 + row] = l_i > 0.f ? m_i + log2f(l_i) : INFINITY;
    }
    __syncthreads();
    T* out = static_cast<T*>(p.out) + b * p.stride_out[0] + h * p.stride_out[1];
    for (int idx = threadIdx.x; idx < BM * HD; idx += kThreads) {
        const int r = idx / HD, c = idx % HD;
        if (m0 + r >= p.Lq || c >= p.DV) continue;
        const float l = l_s[r];
        out[(m0 + r) * p.stride_out[2] + c * p.stride_out[3]] = from_float<T>(l > 0.f ? Os[r * L::LDO + c] / l : 0.f);
    }
}

// delta[row] = sum_c dO[row, c] * O[row, c]: one warp per row.
template <typename T>
__global__ void attention_delta_kernel(AttentionParams p) {
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
    const int lane = threadIdx.x % kWarpSize;
    const int64_t rows = (int64_t)p.B * p.H * p.Lq;
    if (row >= rows) return;
    const int i = row % p.Lq;
    const int64_t bh = row / p.Lq;
    const int b = bh / p.H, h = bh % p.H;
    const T* o = static_cast<const T*>(p.out) + b * p.stride_out[0] + h * p.stride_out[1] + i * p.stride_out[2];
    const T* g = static_cast<const T*>(p.grad_out) + b * p.stride_grad_out[0] + h * p.stride_grad_out[1] +
                 i * p.stride_grad_out[2];
    float total = 0.f;
    for (int c = lane; c < p.DV; c += kWarpSize) total += to_float(o[c * p.stride_out[3]]) * to_float(g[c * p.stride_grad_out[3]]);
    total = warp_sum(total);
    if (lane == 0) p.delta[row] = total;
}

template <typename T, int HD>
struct BwdSmem {
    static constexpr int LDH = padded<T>(HD), LDS = padded<float>(kBwdBN), LDP = padded<T>(kBwdBN),
                         LDO = padded<float>(HD);
    static constexpr int ROWS_T = smem_round(kBwdBM * LDH * sizeof(T));     // a [32][HD] operand tile
    static constexpr int SCORES = smem_round(kBwdBM * LDS * sizeof(float));  // a [32][32] fp32 tile
    static constexpr int PROBS = smem_round(kBwdBM * LDP * sizeof(T));       // a [32][32] operand tile
    static constexpr int ACC = smem_round(kBwdBM * LDO * sizeof(float));     // a [32][HD] fp32 accumulator
    static constexpr int VEC = smem_round(kBwdBM * sizeof(float));
    // dK/dV kernel: K, V, Q, dO | S, dP | P, dS | dK, dV | bias, lse, delta, colsum
    static constexpr int DKDV_BYTES = 4 * ROWS_T + 2 * SCORES + 2 * PROBS + 2 * ACC + 4 * VEC;
    // dQ kernel: Q, dO, K, V | S, dP | dS | dQ | bias, lse, delta
    static constexpr int DQ_BYTES = 4 * ROWS_T + 2 * SCORES + PROBS + ACC + 3 * VEC;
};

// Rows [m0, m0 + BM) of the saved LSE and of delta; padding rows get LSE +inf, so their P is 0.
template <int BM>
__device__ __forceinline__ void load_row_stats(float* lse_s, float* delta_s, const AttentionParams& p,
                                               int64_t row_base, int m0) {
    for (int r = threadIdx.x; r < BM; r += kThreads) {
        lse_s[r] = m0 + r < p.Lq ? p.lse[row_base + m0 + r] : INFINITY;
        delta_s[r] = m0 + r < p.Lq ? p.delta[row_base + m0 + r] : 0.f;
    }
}

// P and dS = P * (dP - delta) of one score entry, from the raw Q.K^T, the key's bias and the row's stats.
__device__ __forceinline__ float2 prob_and_grad(float score, float bias, float lse, float dp, float delta,
                                                const AttentionParams& p) {
    const float prob = exp2f(score * p.qk_scale + bias - lse);
    return make_float2(prob, prob * (dp - delta));
}

// S = Q K^T and dP = dO V^T for a [32 x 32] step: the four 16x16 tiles of each, one per warp.
template <typename T, int HD>
__device__ __forceinline__ void scores_and_dp(const T* Qs, const T* dOs, const T* Ks, const T* Vs, float* Ss,
                                              float* dPs) {
    using L = BwdSmem<T, HD>;
    const int warp = threadIdx.x / kWarpSize;
    const int m = (warp / 2) * 16, n = (warp % 2) * 16;
    AccFrag<T> acc[1][1];
    zero_tiles(acc);
    warp_mma<T, false, true, 1, 1, HD>(acc, Qs, L::LDH, Ks, L::LDH, m, n);
    store_tiles(acc, Ss, L::LDS, m, n);
    zero_tiles(acc);
    warp_mma<T, false, true, 1, 1, HD>(acc, dOs, L::LDH, Vs, L::LDH, m, n);
    store_tiles(acc, dPs, L::LDS, m, n);
}

// C[32 x HD] (fp32, shared) += A[32 x 32] B[32 x HD]; A transposed in memory when A_COL. Tiles dealt to warps.
template <typename T, int HD, bool A_COL>
__device__ __forceinline__ void accumulate_rows(float* C, const T* A, const T* Bm) {
    using L = BwdSmem<T, HD>;
    constexpr int FN = HD / 16;
    for (int f = threadIdx.x / kWarpSize; f < 2 * FN; f += kThreads / kWarpSize) {
        const int m = (f / FN) * 16, n = (f % FN) * 16;
        AccFrag<T> acc[1][1];
        load_tiles(acc, C, L::LDO, m, n);
        warp_mma<T, A_COL, false, 1, 1, 32>(acc, A, L::LDP, Bm, L::LDH, m, n);
        store_tiles(acc, C, L::LDO, m, n);
    }
}

// One block per 32 keys: loop over query tiles, accumulate dK and dV.
template <typename T, int HD>
__global__ void __launch_bounds__(kThreads, 1) attention_grad_kv_kernel(AttentionParams p) {
    using L = BwdSmem<T, HD>;
    constexpr int BM = kBwdBM, BN = kBwdBN;
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* cursor = smem;
    auto carve = [&](int bytes) { unsigned char* at = cursor; cursor += bytes; return at; };
    T* Ks = reinterpret_cast<T*>(carve(L::ROWS_T));
    T* Vs = reinterpret_cast<T*>(carve(L::ROWS_T));
    T* Qs = reinterpret_cast<T*>(carve(L::ROWS_T));
    T* dOs = reinterpret_cast<T*>(carve(L::ROWS_T));
    float* Ss = reinterpret_cast<float*>(carve(L::SCORES));
    float* dPs = reinterpret_cast<float*>(carve(L::SCORES));
    T* Ps = reinterpret_cast<T*>(carve(L::PROBS));
    T* dSs = reinterpret_cast<T*>(carve(L::PROBS));
    float* dKs = reinterpret_cast<float*>(carve(L::ACC));
    float* dVs = reinterpret_cast<float*>(carve(L::ACC));
    float* bias_s = reinterpret_cast<float*>(carve(L::VEC));
    float* lse_s = reinterpret_cast<float*>(carve(L::VEC));
    float* delta_s = reinterpret_cast<float*>(carve(L::VEC));
    float* colsum_s = reinterpret_cast<float*>(carve(L::VEC));

    const HeadSlice<T> at(p);
    const int n0 = blockIdx.x * BN;
    load_rows<T, BN, HD>(Ks, L::LDH, at.k, p.stride_k[2], p.stride_k[3], n0, p.Lk, p.D);
    load_rows<T, BN, HD>(Vs, L::LDH, at.v, p.stride_v[2], p.stride_v[3], n0, p.Lk, p.DV);
    for (int idx = threadIdx.x; idx < BN * L::LDO; idx += kThreads) dKs[idx] = dVs[idx] = 0.f;
    for (int j = threadIdx.x; j < BN; j += kThreads) colsum_s[j] = 0.f;
    __syncthreads();
    key_bias<T, BN, HD>(bias_s, Ks, L::LDH, p, at.b, n0);

    for (int m0 = 0; m0 < p.Lq; m0 += BM) {
        load_rows<T, BM, HD>(Qs, L::LDH, at.q, p.stride_q[2], p.stride_q[3], m0, p.Lq, p.D);
        load_rows<T, BM, HD>(dOs, L::LDH, at.grad_out, p.stride_grad_out[2], p.stride_grad_out[3], m0, p.Lq, p.DV);
        load_row_stats<BM>(lse_s, delta_s, p, at.row_base, m0);
        __syncthreads();
        scores_and_dp<T, HD>(Qs, dOs, Ks, Vs, Ss, dPs);
        __syncthreads();
        for (int idx = threadIdx.x; idx < BM * BN; idx += kThreads) {
            const int r = idx / BN, j = idx % BN;
            const float2 pd = prob_and_grad(Ss[r * L::LDS + j], bias_s[j], lse_s[r], dPs[r * L::LDS + j], delta_s[r], p);
            Ps[r * L::LDP + j] = from_float<T>(pd.x);
            dSs[r * L::LDP + j] = from_float<T>(pd.y);
            if (p.l2 && pd.y != 0.f) atomicAdd(&colsum_s[j], pd.y);
        }
        __syncthreads();
        accumulate_rows<T, HD, true>(dVs, Ps, dOs);   // dV += P^T dO
        accumulate_rows<T, HD, true>(dKs, dSs, Qs);   // dK += dS^T Q
        __syncthreads();
    }
    T* grad_k = static_cast<T*>(p.grad_k) + at.b * p.stride_grad_k[0] + at.h * p.stride_grad_k[1];
    T* grad_v = static_cast<T*>(p.grad_v) + at.b * p.stride_grad_v[0] + at.h * p.stride_grad_v[1];
    for (int idx = threadIdx.x; idx < BN * HD; idx += kThreads) {
        const int j = idx / HD, c = idx % HD;
        if (n0 + j >= p.Lk) continue;
        if (c < p.D) {
            float dk = dKs[j * L::LDO + c];
            if (p.l2) dk -= to_float(Ks[j * L::LDH + c]) * colsum_s[j];
            grad_k[(n0 + j) * p.stride_grad_k[2] + c * p.stride_grad_k[3]] = from_float<T>(dk * p.grad_scale);
        }
        if (c < p.DV) grad_v[(n0 + j) * p.stride_grad_v[2] + c * p.stride_grad_v[3]] = from_float<T>(dVs[j * L::LDO + c]);
    }
}

// One block per 32 queries: loop over key tiles, accumulate dQ.
template <typename T, int HD>
__global__ void __launch_bounds__(kThreads, 1) attention_grad_q_kernel(AttentionParams p) {
    using L = BwdSmem<T, HD>;
    constexpr int BM = kBwdBM, BN = kBwdBN;
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* cursor = smem;
    auto carve = [&](int bytes) { unsigned char* at = cursor; cursor += bytes; return at; };
    T* Qs = reinterpret_cast<T*>(carve(L::ROWS_T));
    T* dOs = reinterpret_cast<T*>(carve(L::ROWS_T));
    T* Ks = reinterpret_cast<T*>(carve(L::ROWS_T));
    T* Vs = reinterpret_cast<T*>(carve(L::ROWS_T));
    float* Ss = reinterpret_cast<float*>(carve(L::SCORES));
    float* dPs = reinterpret_cast<float*>(carve(L::SCORES));
    T* dSs = reinterpret_cast<T*>(carve(L::PROBS));
    float* dQs = reinterpret_cast<float*>(carve(L::ACC));
    float* bias_s = reinterpret_cast<float*>(carve(L::VEC));
    float* lse_s = reinterpret_cast<float*>(carve(L::VEC));
    float* delta_s = reinterpret_cast<float*>(carve(L::VEC));

    const HeadSlice<T> at(p);
    const int m0 = blockIdx.x * BM;
    load_rows<T, BM, HD>(Qs, L::LDH, at.q, p.stride_q[2], p.stride_q[3], m0, p.Lq, p.D);
    load_rows<T, BM, HD>(dOs, L::LDH, at.grad_out, p.stride_grad_out[2], p.stride_grad_out[3], m0, p.Lq, p.DV);
    load_row_stats<BM>(lse_s, delta_s, p, at.row_base, m0);
    for (int idx = threadIdx.x; idx < BM * L::LDO; idx += kThreads) dQs[idx] = 0.f;

    for (int n0 = 0; n0 < p.Lk; n0 += BN) {
        load_rows<T, BN, HD>(Ks, L::LDH, at.k, p.stride_k[2], p.stride_k[3], n0, p.Lk, p.D);
        load_rows<T, BN, HD>(Vs, L::LDH, at.v, p.stride_v[2], p.stride_v[3], n0, p.Lk, p.DV);
        __syncthreads();
        key_bias<T, BN, HD>(bias_s, Ks, L::LDH, p, at.b, n0);
        scores_and_dp<T, HD>(Qs, dOs, Ks, Vs, Ss, dPs);
        __syncthreads();
        for (int idx = threadIdx.x; idx < BM * BN; idx += kThreads) {
            const int r = idx / BN, j = idx % BN;
            dSs[r * L::LDP + j] = from_float<T>(
                prob_and_grad(Ss[r * L::LDS + j], bias_s[j], lse_s[r], dPs[r * L::LDS + j], delta_s[r], p).y);
        }
        __syncthreads();
        accumulate_rows<T, HD, false>(dQs, dSs, Ks);   // dQ += dS K
        __syncthreads();
    }
    T* grad_q = static_cast<T*>(p.grad_q) + at.b * p.stride_grad_q[0] + at.h * p.stride_grad_q[1];
    for (int idx = threadIdx.x; idx < BM * HD; idx += kThreads) {
        const int r = idx / HD, c = idx % HD;
        if (m0 + r >= p.Lq || c >= p.D) continue;
        grad_q[(m0 + r) * p.stride_grad_q[2] + c * p.stride_grad_q[3]] = from_float<T>(dQs[r * L::LDO + c] * p.grad_scale);
    }
}

int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

// Raises the kernel's dynamic shared-memory limit past the 48 KB default when it needs more.
template <typename Kernel>
cudaError_t launch(Kernel kernel, dim3 grid, int smem_bytes, cudaStream_t stream, const AttentionParams& p) {
    if (smem_bytes > 48 * 1024) {
        const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
        if (err != cudaSuccess) return err;
    }
    kernel<<<grid, kThreads, smem_bytes, stream>>>(p);
    return cudaSuccess;
}

template <typename T, int HD>
cudaError_t forward(const AttentionParams& p, cudaStream_t stream) {
    return launch(attention_forward_kernel<T, HD>, dim3(ceil_div(p.Lq, kFwdBM), p.B * p.H), FwdSmem<T, HD>::BYTES,
                  stream, p);
}

template <typename T, int HD>
cudaError_t backward(const AttentionParams& p, cudaStream_t stream) {
    constexpr int kRowsPerBlock = 8;
    attention_delta_kernel<T><<<ceil_div((int64_t)p.B * p.H * p.Lq, kRowsPerBlock), kRowsPerBlock * kWarpSize, 0,
                                stream>>>(p);
    using L = BwdSmem<T, HD>;
    cudaError_t err = launch(attention_grad_kv_kernel<T, HD>, dim3(ceil_div(p.Lk, kBwdBN), p.B * p.H),
                             L::DKDV_BYTES, stream, p);
    if (err != cudaSuccess) return err;
    return launch(attention_grad_q_kernel<T, HD>, dim3(ceil_div(p.Lq, kBwdBM), p.B * p.H), L::DQ_BYTES, stream, p);
}

// The head-dim tile: the smallest of 32, 64, 128 that holds both D and DV.
template <typename T, template <typename, int> class Fn>
cudaError_t by_head_dim(const AttentionParams& p, cudaStream_t stream) {
    const int dim = p.D > p.DV ? p.D : p.DV;
    if (dim <= 32) return Fn<T, 32>::run(p, stream);
    if (dim <= 64) return Fn<T, 64>::run(p, stream);
    return Fn<T, 128>::run(p, stream);
}
template <typename T, int HD> struct Forward { static cudaError_t run(const AttentionParams& p, cudaStream_t s) { return forward<T, HD>(p, s); } };
template <typename T, int HD> struct Backward { static cudaError_t run(const AttentionParams& p, cudaStream_t s) { return backward<T, HD>(p, s); } };

}  // namespace

cudaError_t attention_forward_cuda(const AttentionParams& p, DType dtype, cudaStream_t stream) {
    switch (dtype) {
        case DType::kFloat32: return by_head_dim<float, Forward>(p, stream);
        case DType::kFloat16: return by_head_dim<half, Forward>(p, stream);
        case DType::kBFloat16: return by_head_dim<__nv_bfloat16, Forward>(p, stream);
    }
    return cudaErrorInvalidValue;
}

cudaError_t attention_backward_cuda(const AttentionParams& p, DType dtype, cudaStream_t stream) {
    switch (dtype) {
        case DType::kFloat32: return by_head_dim<float, Backward>(p, stream);
        case DType::kFloat16: return by_head_dim<half, Backward>(p, stream);
        case DType::kBFloat16: return by_head_dim<__nv_bfloat16, Backward>(p, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace gigagan
