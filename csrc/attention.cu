// Flash-style CUDA kernels for L2-distance and dot-product attention with a key padding mask (docs/design.md §3).
//
// L2 logits use  -s||q_i - k_j||^2 = 2s<q_i,k_j> - s||k_j||^2 - s||q_i||^2; the last term is constant
// along a row and cancels in the softmax, so L2 is dot-product attention at scale 2s plus a per-key bias
// -s||k_j||^2, computed once per key (key_bias_kernel, which also writes -inf for masked and padding keys).
// Softmax runs in base 2 with fp32 statistics, online over key tiles; only the per-row log-sum-exp is saved.
// Backward, with dS = P * (dP - delta), delta = rowsum(dO * O):
//   dot: dQ = s dS K,   dK = s dS^T Q;     l2: dQ = 2s dS K,   dK = 2s (dS^T Q - k_j colsum(dS)_j)
// (the l2 dQ term -2s q_i rowsum(dS) vanishes: rows of dS sum to zero). Same math as ops/attention/triton_flash.py.
//
// Products run on mma.sync (common.cuh: m16n8k16 for fp16/bf16, 3xTF32 m16n8k8 for fp32) with the accumulators
// in registers: the forward's running output is rescaled per row in place. K/V (forward) and Q/dO (backward)
// tiles stream through shared memory with cp.async, double-buffered in the forward. The backward is one pass
// over key blocks (FlashAttention-2): a block owns 16 keys a warp, walks the query tiles, keeps dK and dV in
// registers, and adds each tile's dQ to an fp32 buffer with atomics.
#include "attention.h"
#include "common.cuh"

namespace gigagan {
namespace {

__host__ __device__ inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

// Shared-memory row stride: 16 bytes of padding stagger ldmatrix's eight row addresses across banks.
template <typename T, int HD> __host__ __device__ constexpr int row_stride() { return HD + 16 / static_cast<int>(sizeof(T)); }

// Rows [row0, row0 + ROWS) x the first HD columns of an [L, *] slice (unit column stride, 16-byte rows) into
// shared memory by 16-byte cp.async; rows past L and chunks past `chunks` (ceil(dim / 8) * 8 columns) are zero.
template <typename T, int ROWS, int HD, int THREADS>
__device__ __forceinline__ void load_tile_async(T* dst, const T* src, int64_t stride_row, int row0, int L, int dim) {
    constexpr int PER_CHUNK = 16 / sizeof(T);
    constexpr int CHUNKS = HD / PER_CHUNK;
    const int chunks = (dim + 7) / 8 * 8 / PER_CHUNK;
    for (int idx = threadIdx.x; idx < ROWS * CHUNKS; idx += THREADS) {
        const int r = idx / CHUNKS, c = idx % CHUNKS;
        const bool valid = row0 + r < L && c < chunks;
        cp_async16(dst + r * row_stride<T, HD>() + c * PER_CHUNK,
                   valid ? src + (row0 + r) * stride_row + c * PER_CHUNK : src, valid);
    }
}

// key_bias[bh, j] = -bias_scale ||k_j||^2 (0 for dot), or -inf for a masked key or a padding column j >= Lk.
template <typename T>
__global__ void key_bias_kernel(AttentionParams p) {
    const int warps = blockDim.x / kWarpSize;
    const int64_t idx = (int64_t)blockIdx.x * warps + threadIdx.x / kWarpSize;
    const int lane = threadIdx.x % kWarpSize;
    if (idx >= (int64_t)p.B * p.H * p.Lk_pad) return;
    const int j = static_cast<int>(idx % p.Lk_pad);
    const int64_t bh = idx / p.Lk_pad;
    const int b = static_cast<int>(bh / p.H), h = static_cast<int>(bh % p.H);
    bool visible = j < p.Lk;
    if (visible && p.mask) visible = p.mask[(int64_t)b * p.Lk + j] != 0;
    float sq = 0.f;
    if (visible && p.l2) {
        const T* k = static_cast<const T*>(p.k) + b * p.stride_k[0] + h * p.stride_k[1] + j * p.stride_k[2];
        for (int c = lane; c < p.D; c += kWarpSize) {
            const float kv = to_float(k[c]);
            sq += kv * kv;
        }
        sq = warp_sum(sq);
    }
    if (lane == 0) p.key_bias[idx] = visible ? -p.bias_scale * sq : -INFINITY;
}

template <typename T>
__device__ __forceinline__ const T* head(const void* base, const int64_t (&stride)[4], int b, int h) {
    return static_cast<const T*>(base) + b * stride[0] + h * stride[1];
}

// ---- forward ----------------------------------------------------------------------------------------------
// A block: 4 warps, each owning RT tiles of 16 query rows; key tiles of BN double-buffered. Per warp and key
// tile: S = Q K^T (RT x BN / 8 C tiles), the online softmax on its rows, O = O * alpha + P V with P taken straight
// from S's registers as the A operand. A warp's RT row tiles share every K and V fragment it loads: with RT = 2,
// one ldmatrix feeds two MMAs, which keeps shared memory from bounding the loop (FlashAttention-2's 128-row
// blocks). RT = 1 where S and O of two row tiles would not fit in registers (head dim 128, fp32).
constexpr int kFwdWarps = 4, kFwdThreads = kFwdWarps * kWarpSize;

template <typename T, int HD>
struct FwdSmem {
    static constexpr int RT = HD <= 64 && sizeof(T) == 2 ? 2 : 1;
    static constexpr int BM = 16 * RT * kFwdWarps;
    // Key tiles of 64; 32 for fp32 at head dim 128, whose double-buffered K/V tiles would pass sm_80's 163 KB.
    static constexpr int BN = sizeof(T) == 4 && HD > 64 ? 32 : 64;
    static constexpr int LD = row_stride<T, HD>();
    static constexpr int Q = 0;
    static constexpr int K = Q + smem_round(BM * LD * sizeof(T));         // [2][BN][LD]
    static constexpr int V = K + 2 * smem_round(BN * LD * sizeof(T));     // [2][BN][LD]
    static constexpr int BIAS = V + 2 * smem_round(BN * LD * sizeof(T));  // [2][BN] fp32
    static constexpr int BYTES = BIAS + 2 * smem_round(BN * sizeof(float));
};

template <typename T, int HD>
__global__ void __launch_bounds__(kFwdThreads) attention_forward_kernel(AttentionParams p) {
    using L = FwdSmem<T, HD>;
    using M = Mma<T>;
    constexpr int LD = L::LD, BN = L::BN, RT = L::RT, NT = BN / 8, OT = HD / 8;
    extern __shared__ __align__(128) unsigned char smem[];
    T* Qs = reinterpret_cast<T*>(smem + L::Q);
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
    const int m0 = blockIdx.x * L::BM;
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize, g = lane / 4, t = lane % 4;
    const int row0 = warp * 16 * RT;  // this warp's first row within the block
    const T* q = head<T>(p.q, p.stride_q, b, h);
    const T* k = head<T>(p.k, p.stride_k, b, h);
    const T* v = head<T>(p.v, p.stride_v, b, h);
    const float* key_bias = p.key_bias + (int64_t)bh * p.Lk_pad;
    auto k_tile = [&](int s) { return reinterpret_cast<T*>(smem + L::K + s * smem_round(BN * LD * sizeof(T))); };
    auto v_tile = [&](int s) { return reinterpret_cast<T*>(smem + L::V + s * smem_round(BN * LD * sizeof(T))); };
    auto bias_tile = [&](int s) { return reinterpret_cast<float*>(smem + L::BIAS + s * smem_round(BN * sizeof(float))); };
    auto load_keys = [&](int n0, int s) {
        load_tile_async<T, BN, HD, kFwdThreads>(k_tile(s), k, p.stride_k[2], n0, p.Lk, p.D);
        load_tile_async<T, BN, HD, kFwdThreads>(v_tile(s), v, p.stride_v[2], n0, p.Lk, p.DV);
        for (int c = threadIdx.x; c < BN / 4; c += kFwdThreads)   // key_bias rows are padded past Lk
            cp_async16(bias_tile(s) + 4 * c, key_bias + n0 + 4 * c, true);
    };
    load_tile_async<T, L::BM, HD, kFwdThreads>(Qs, q, p.stride_q[2], m0, p.Lq, p.D);
    load_keys(0, 0);
    cp_async_commit();

    float o[RT][OT][4] = {};
    // Per row tile, this thread's rows g and g + 8. Finite: a fully masked row never computes (-inf) - (-inf).
    float m_i[RT][2], l_i[RT][2] = {};
#pragma unroll
    for (int rt = 0; rt < RT; ++rt) m_i[rt][0] = m_i[rt][1] = -1.0e30f;
    const int tiles = ceil_div(p.Lk, BN);
    for (int it = 0; it < tiles; ++it) {
        const int stage = it % 2;
        if (it + 1 < tiles) load_keys((it + 1) * BN, stage ^ 1);
        cp_async_commit();
        cp_async_wait<1>();  // everything but the prefetch just issued
        __syncthreads();
        const T* Ks = k_tile(stage);
        const T* Vs = v_tile(stage);
        const float* bias = bias_tile(stage);
        float s[RT][NT][4] = {};
#pragma unroll
        for (int kk = 0; kk < HD; kk += M::K) {
            typename M::FragA a[RT];
#pragma unroll
            for (int rt = 0; rt < RT; ++rt) M::load_a(a[rt], Qs, LD, row0 + 16 * rt, kk);
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                typename M::FragB bf;
                M::load_b_nk(bf, Ks, LD, kk, j * 8);
#pragma unroll
                for (int rt = 0; rt < RT; ++rt) M::mma(s[rt][j], a[rt], bf);
            }
        }
        // Online softmax over this thread's rows; a row lives in the 4 lanes of a quad.
#pragma unroll
        for (int rt = 0; rt < RT; ++rt) {
            float row_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                const float b0 = bias[j * 8 + 2 * t], b1 = bias[j * 8 + 2 * t + 1];
                s[rt][j][0] = s[rt][j][0] * p.qk_scale + b0;
                s[rt][j][1] = s[rt][j][1] * p.qk_scale + b1;
                s[rt][j][2] = s[rt][j][2] * p.qk_scale + b0;
                s[rt][j][3] = s[rt][j][3] * p.qk_scale + b1;
                row_max[0] = fmaxf(row_max[0], fmaxf(s[rt][j][0], s[rt][j][1]));
                row_max[1] = fmaxf(row_max[1], fmaxf(s[rt][j][2], s[rt][j][3]));
            }
            float alpha[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(0xffffffffu, row_max[r], 1));
                row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(0xffffffffu, row_max[r], 2));
                const float m_new = fmaxf(m_i[rt][r], row_max[r]);
                alpha[r] = exp2f(m_i[rt][r] - m_new);
                m_i[rt][r] = m_new;
            }
            float row_sum[2] = {0.f, 0.f};
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                s[rt][j][0] = exp2f(s[rt][j][0] - m_i[rt][0]);
                s[rt][j][1] = exp2f(s[rt][j][1] - m_i[rt][0]);
                s[rt][j][2] = exp2f(s[rt][j][2] - m_i[rt][1]);
                s[rt][j][3] = exp2f(s[rt][j][3] - m_i[rt][1]);
                row_sum[0] += s[rt][j][0] + s[rt][j][1];
                row_sum[1] += s[rt][j][2] + s[rt][j][3];
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
                row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
                l_i[rt][r] = l_i[rt][r] * alpha[r] + row_sum[r];
            }
#pragma unroll
            for (int j = 0; j < OT; ++j) {
                o[rt][j][0] *= alpha[0];
                o[rt][j][1] *= alpha[0];
                o[rt][j][2] *= alpha[1];
                o[rt][j][3] *= alpha[1];
            }
        }
#pragma unroll
        for (int kk = 0; kk < BN / M::K; ++kk) {
            typename M::FragA a[RT];
#pragma unroll
            for (int rt = 0; rt < RT; ++rt) M::a_from_c(a[rt], s[rt], kk);
#pragma unroll
            for (int j = 0; j < OT; ++j) {
                typename M::FragB bf;
                M::load_b_kn_paired(bf, Vs, LD, kk * M::K, j * 8);
#pragma unroll
                for (int rt = 0; rt < RT; ++rt) M::mma(o[rt][j], a[rt], bf);
            }
        }
        __syncthreads();  // this stage's tiles are refilled by the next iteration's prefetch
    }
    T* out = static_cast<T*>(p.out) + b * p.stride_out[0] + h * p.stride_out[1];
#pragma unroll
    for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = m0 + row0 + 16 * rt + g + 8 * r;
            if (row >= p.Lq) continue;
            const float inv = l_i[rt][r] > 0.f ? 1.f / l_i[rt][r] : 0.f;
#pragma unroll
            for (int j = 0; j < OT; ++j) {
                const int col = j * 8 + 2 * t;
                if (col < p.DV)
                    out[row * p.stride_out[2] + col * p.stride_out[3]] = from_float<T>(o[rt][j][2 * r] * inv);
                if (col + 1 < p.DV)
                    out[row * p.stride_out[2] + (col + 1) * p.stride_out[3]] = from_float<T>(o[rt][j][2 * r + 1] * inv);
            }
            // +inf for a row with no visible key: its probabilities recompute as exactly 0 in the backward.
            if (t == 0) p.lse[(int64_t)bh * p.Lq + row] = l_i[rt][r] > 0.f ? m_i[rt][r] + log2f(l_i[rt][r]) : INFINITY;
        }
    }
}

// ---- backward --------------------------------------------------------------------------------------------
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

// A block owns 16 * WARPS keys (16 a warp) and walks the query tiles of BM rows. Per warp and tile, with the
// keys as rows: S^T = K Q^T, dP^T = V dO^T, P^T and dS^T in registers, dV += P^T dO and dK += dS^T Q from
// those registers; dS^T goes through shared memory for the tile's dQ = dS K, which the warps split and add to
// grad_q_accum with atomics.
template <typename T, int HD> struct BwdTile {
    static constexpr int WARPS = sizeof(T) == 2 ? 8 : 4;       // fp32 tiles are twice the bytes
    static constexpr int THREADS = WARPS * kWarpSize;
    static constexpr int BN = 16 * WARPS;                      // keys per block
    static constexpr int BM = HD > 64 ? 32 : 64;               // queries per step: S^T, dP^T, dK, dV in registers
    static constexpr int LD = row_stride<T, HD>();
    static constexpr int LDS = BM + 16 / static_cast<int>(sizeof(T));   // dS^T [BN][LDS]
    static constexpr int K = 0;
    static constexpr int V = K + smem_round(BN * LD * sizeof(T));
    static constexpr int Q = V + smem_round(BN * LD * sizeof(T));
    static constexpr int DO = Q + smem_round(BM * LD * sizeof(T));
    static constexpr int DS = DO + smem_round(BM * LD * sizeof(T));
    static constexpr int BIAS = DS + smem_round(BN * LDS * sizeof(T));
    static constexpr int LSE = BIAS + smem_round(BN * sizeof(float));
    static constexpr int DELTA = LSE + smem_round(BM * sizeof(float));
    static constexpr int BYTES = DELTA + smem_round(BM * sizeof(float));
    // dQ = dS K: (BM / 16) row tiles x (HD / 8) column tiles, dealt to the warps in column chunks.
    static constexpr int ROW_TILES = BM / 16;
    static constexpr int COL_CHUNKS = WARPS / ROW_TILES;
    static constexpr int CHUNK_TILES = HD / 8 / COL_CHUNKS;
    static_assert(WARPS % ROW_TILES == 0 && (HD / 8) % COL_CHUNKS == 0, "dQ tiles must divide among the warps");
};

template <typename T, int HD>
__global__ void __launch_bounds__(BwdTile<T, HD>::THREADS) attention_backward_kernel(AttentionParams p) {
    using L = BwdTile<T, HD>;
    using M = Mma<T>;
    constexpr int LD = L::LD, BM = L::BM, NT = BM / 8, HT = HD / 8;
    extern __shared__ __align__(128) unsigned char smem[];
    T* Ks = reinterpret_cast<T*>(smem + L::K);
    T* Vs = reinterpret_cast<T*>(smem + L::V);
    T* Qs = reinterpret_cast<T*>(smem + L::Q);
    T* dOs = reinterpret_cast<T*>(smem + L::DO);
    T* dSs = reinterpret_cast<T*>(smem + L::DS);
    float* bias_s = reinterpret_cast<float*>(smem + L::BIAS);
    float* lse_s = reinterpret_cast<float*>(smem + L::LSE);
    float* delta_s = reinterpret_cast<float*>(smem + L::DELTA);
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
    const int n0 = blockIdx.x * L::BN;
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize, g = lane / 4, t = lane % 4;
    const int key0 = warp * 16;  // this warp's keys within the block
    const T* q = head<T>(p.q, p.stride_q, b, h);
    const T* k = head<T>(p.k, p.stride_k, b, h);
    const T* v = head<T>(p.v, p.stride_v, b, h);
    const T* grad_out = head<T>(p.grad_out, p.stride_grad_out, b, h);
    const int64_t row_base = (int64_t)bh * p.Lq;
    load_tile_async<T, L::BN, HD, L::THREADS>(Ks, k, p.stride_k[2], n0, p.Lk, p.D);
    load_tile_async<T, L::BN, HD, L::THREADS>(Vs, v, p.stride_v[2], n0, p.Lk, p.DV);
    for (int j = threadIdx.x; j < L::BN; j += L::THREADS) bias_s[j] = p.key_bias[(int64_t)bh * p.Lk_pad + n0 + j];
    cp_async_commit();

    float dk[HT][4] = {}, dv[HT][4] = {};
    float colsum[2] = {0.f, 0.f};
    for (int m0 = 0; m0 < p.Lq; m0 += BM) {
        load_tile_async<T, BM, HD, L::THREADS>(Qs, q, p.stride_q[2], m0, p.Lq, p.D);
        load_tile_async<T, BM, HD, L::THREADS>(dOs, grad_out, p.stride_grad_out[2], m0, p.Lq, p.DV);
        cp_async_commit();
        for (int r = threadIdx.x; r < BM; r += L::THREADS) {
            // Padding rows: LSE +inf makes their P exactly 0.
            lse_s[r] = m0 + r < p.Lq ? p.lse[row_base + m0 + r] : INFINITY;
            delta_s[r] = m0 + r < p.Lq ? p.delta[row_base + m0 + r] : 0.f;
        }
        cp_async_wait<0>();
        __syncthreads();
        float s[NT][4] = {}, dp[NT][4] = {};
#pragma unroll
        for (int kk = 0; kk < HD; kk += M::K) {
            typename M::FragA ak, av;
            M::load_a(ak, Ks, LD, key0, kk);
            M::load_a(av, Vs, LD, key0, kk);
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                typename M::FragB bq, bo;
                M::load_b_nk(bq, Qs, LD, kk, j * 8);
                M::load_b_nk(bo, dOs, LD, kk, j * 8);
                M::mma(s[j], ak, bq);
                M::mma(dp[j], av, bo);
            }
        }
        // P^T and dS^T: rows are keys (key0 + g, key0 + g + 8), columns queries (8j + 2t, 8j + 2t + 1).
        const float bias0 = bias_s[key0 + g], bias1 = bias_s[key0 + g + 8];
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int col = j * 8 + 2 * t + (e & 1);
                const float prob = exp2f(s[j][e] * p.qk_scale + (e < 2 ? bias0 : bias1) - lse_s[col]);
                const float ds = prob * (dp[j][e] - delta_s[col]);
                s[j][e] = prob;
                dp[j][e] = ds;
                colsum[e / 2] += ds;
            }
            T* row0 = dSs + (key0 + g) * L::LDS + j * 8 + 2 * t;
            T* row1 = row0 + 8 * L::LDS;
            row0[0] = from_float<T>(dp[j][0]);
            row0[1] = from_float<T>(dp[j][1]);
            row1[0] = from_float<T>(dp[j][2]);
            row1[1] = from_float<T>(dp[j][3]);
        }
#pragma unroll
        for (int kk = 0; kk < BM / M::K; ++kk) {
            typename M::FragA ap, ads;
            M::a_from_c(ap, s, kk);
            M::a_from_c(ads, dp, kk);
#pragma unroll
            for (int j = 0; j < HT; ++j) {
                typename M::FragB bo, bq;
                M::load_b_kn_paired(bo, dOs, LD, kk * M::K, j * 8);
                M::load_b_kn_paired(bq, Qs, LD, kk * M::K, j * 8);
                M::mma(dv[j], ap, bo);
                M::mma(dk[j], ads, bq);
            }
        }
        __syncthreads();  // dS^T complete
        {
            const int row_tile = warp % L::ROW_TILES, chunk = warp / L::ROW_TILES;
            float dq[L::CHUNK_TILES][4] = {};
#pragma unroll
            for (int kk = 0; kk < L::BN; kk += M::K) {
                typename M::FragA a;
                M::load_a_t(a, dSs, L::LDS, row_tile * 16, kk);
#pragma unroll
                for (int j = 0; j < L::CHUNK_TILES; ++j) {
                    typename M::FragB bk;
                    M::load_b_kn(bk, Ks, LD, kk, (chunk * L::CHUNK_TILES + j) * 8);
                    M::mma(dq[j], a, bk);
                }
            }
            float* accum = p.grad_q_accum + row_base * p.D;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int row = m0 + row_tile * 16 + g + 8 * r;
                if (row >= p.Lq) continue;
#pragma unroll
                for (int j = 0; j < L::CHUNK_TILES; ++j) {
                    const int col = (chunk * L::CHUNK_TILES + j) * 8 + 2 * t;
                    if (col < p.D) atomicAdd(accum + (int64_t)row * p.D + col, dq[j][2 * r]);
                    if (col + 1 < p.D) atomicAdd(accum + (int64_t)row * p.D + col + 1, dq[j][2 * r + 1]);
                }
            }
        }
        __syncthreads();  // Q, dO and dS^T are overwritten by the next tile
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        colsum[r] += __shfl_xor_sync(0xffffffffu, colsum[r], 1);
        colsum[r] += __shfl_xor_sync(0xffffffffu, colsum[r], 2);
    }
    T* grad_k = static_cast<T*>(p.grad_k) + b * p.stride_grad_k[0] + h * p.stride_grad_k[1];
    T* grad_v = static_cast<T*>(p.grad_v) + b * p.stride_grad_v[0] + h * p.stride_grad_v[1];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int local = key0 + g + 8 * r, key = n0 + local;
        if (key >= p.Lk) continue;
#pragma unroll
        for (int j = 0; j < HT; ++j) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int col = j * 8 + 2 * t + e;
                if (col < p.D) {
                    float value = dk[j][2 * r + e];
                    if (p.l2) value -= to_float(Ks[local * LD + col]) * colsum[r];
                    grad_k[key * p.stride_grad_k[2] + col * p.stride_grad_k[3]] = from_float<T>(value * p.grad_scale);
                }
                if (col < p.DV)
                    grad_v[key * p.stride_grad_v[2] + col * p.stride_grad_v[3]] = from_float<T>(dv[j][2 * r + e]);
            }
        }
    }
}

// grad_q = grad_scale * grad_q_accum, in q's dtype and grad_q's strides.
template <typename T>
__global__ void attention_scale_grad_q_kernel(AttentionParams p) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)p.B * p.H * p.Lq * p.D) return;
    const int c = static_cast<int>(idx % p.D);
    const int64_t row = idx / p.D;
    const int i = static_cast<int>(row % p.Lq);
    const int64_t bh = row / p.Lq;
    const int b = static_cast<int>(bh / p.H), h = static_cast<int>(bh % p.H);
    static_cast<T*>(p.grad_q)[b * p.stride_grad_q[0] + h * p.stride_grad_q[1] + i * p.stride_grad_q[2] +
                              c * p.stride_grad_q[3]] = from_float<T>(p.grad_q_accum[idx] * p.grad_scale);
}

// ---- launchers -------------------------------------------------------------------------------------------
// Raises the kernel's dynamic shared-memory limit past the 48 KB default when it needs more.
template <typename Kernel>
cudaError_t launch(Kernel kernel, dim3 grid, int threads, int smem_bytes, cudaStream_t stream,
                   const AttentionParams& p) {
    if (smem_bytes > 48 * 1024) {
        const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
        if (err != cudaSuccess) return err;
    }
    kernel<<<grid, threads, smem_bytes, stream>>>(p);
    return cudaGetLastError();
}

template <typename T>
void launch_key_bias(const AttentionParams& p, cudaStream_t stream) {
    constexpr int kWarps = 8;
    key_bias_kernel<T><<<ceil_div((int64_t)p.B * p.H * p.Lk_pad, kWarps), kWarps * kWarpSize, 0, stream>>>(p);
}

template <typename T, int HD>
cudaError_t forward(const AttentionParams& p, cudaStream_t stream) {
    launch_key_bias<T>(p, stream);
    return launch(attention_forward_kernel<T, HD>, dim3(ceil_div(p.Lq, FwdSmem<T, HD>::BM), p.B * p.H), kFwdThreads,
                  FwdSmem<T, HD>::BYTES, stream, p);
}

template <typename T, int HD>
cudaError_t backward(const AttentionParams& p, cudaStream_t stream) {
    constexpr int kRowsPerBlock = 8;
    attention_delta_kernel<T><<<ceil_div((int64_t)p.B * p.H * p.Lq, kRowsPerBlock), kRowsPerBlock * kWarpSize, 0,
                                stream>>>(p);
    launch_key_bias<T>(p, stream);
    using L = BwdTile<T, HD>;
    const cudaError_t err = launch(attention_backward_kernel<T, HD>, dim3(ceil_div(p.Lk, L::BN), p.B * p.H),
                                   L::THREADS, L::BYTES, stream, p);
    if (err != cudaSuccess) return err;
    constexpr int kThreads = 256;
    attention_scale_grad_q_kernel<T><<<ceil_div((int64_t)p.B * p.H * p.Lq * p.D, kThreads), kThreads, 0, stream>>>(p);
    return cudaGetLastError();
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
