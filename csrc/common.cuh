// Device helpers shared by the CUDA kernels: dtype conversions and warp-level tensor-core tiles (WMMA).
// No torch headers here, so nvcc stays fast (the StyleGAN ops split).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <type_traits>

namespace gigagan {
namespace wmma = nvcuda::wmma;

constexpr int kWarpSize = 32;

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<half>(half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ half from_float<half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// The tensor-core shape per operand type: 16x16x16 for fp16/bf16, 16x16x8 TF32 for fp32
// (fp32 inputs run TF32 dots, as torch's cuDNN convolutions do by default).
template <typename T> struct MmaTraits;
template <> struct MmaTraits<half> { using Elem = half; static constexpr int K = 16; };
template <> struct MmaTraits<__nv_bfloat16> { using Elem = __nv_bfloat16; static constexpr int K = 16; };
template <> struct MmaTraits<float> { using Elem = wmma::precision::tf32; static constexpr int K = 8; };

// Leading dimension of a shared-memory tile with n columns: WMMA needs a multiple of 16 bytes, and the
// extra 16 bytes per row stagger the rows across shared-memory banks.
template <typename T> __host__ __device__ constexpr int padded(int n) { return n + 16 / int(sizeof(T)); }

template <typename T> using AccFrag = wmma::fragment<wmma::accumulator, 16, 16, MmaTraits<T>::K, float>;

template <int FM, int FN, typename Frag> __device__ __forceinline__ void zero_tiles(Frag (&acc)[FM][FN]) {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
}

// acc[FM][FN] (16x16 fp32 tiles at rows m0 + 16i, columns n0 + 16j) += A[m0.., 0:K] * B[0:K, n0..].
// A lives in shared memory as [M][lda] (row-major) or, with A_COL, as [K][lda] (A transposed in memory);
// B as [K][ldb] or, with B_COL, as [N][ldb]. Pointers must be 32-byte aligned, lda/ldb from padded().
template <typename T, bool A_COL, bool B_COL, int FM, int FN, int K>
__device__ __forceinline__ void warp_mma(AccFrag<T> (&acc)[FM][FN], const T* a, int lda, const T* b, int ldb,
                                         int m0, int n0) {
    using Tr = MmaTraits<T>;
    using LayoutA = std::conditional_t<A_COL, wmma::col_major, wmma::row_major>;
    using LayoutB = std::conditional_t<B_COL, wmma::col_major, wmma::row_major>;
    static_assert(K % Tr::K == 0, "the reduction tile must be a multiple of the MMA K");
    // Unrolled by 2, not fully: a fully unrolled K=128 loop hoisted fragment loads and spilled on sm_90.
#pragma unroll 2
    for (int k0 = 0; k0 < K; k0 += Tr::K) {
        wmma::fragment<wmma::matrix_a, 16, 16, Tr::K, typename Tr::Elem, LayoutA> fa[FM];
        wmma::fragment<wmma::matrix_b, 16, 16, Tr::K, typename Tr::Elem, LayoutB> fb[FN];
#pragma unroll
        for (int i = 0; i < FM; ++i) {
            const int m = m0 + 16 * i;
            wmma::load_matrix_sync(fa[i], A_COL ? a + k0 * lda + m : a + m * lda + k0, lda);
            if constexpr (std::is_same_v<T, float>) {
                for (int e = 0; e < fa[i].num_elements; ++e) fa[i].x[e] = wmma::__float_to_tf32(fa[i].x[e]);
            }
        }
#pragma unroll
        for (int j = 0; j < FN; ++j) {
            const int n = n0 + 16 * j;
            wmma::load_matrix_sync(fb[j], B_COL ? b + n * ldb + k0 : b + k0 * ldb + n, ldb);
            if constexpr (std::is_same_v<T, float>) {
                for (int e = 0; e < fb[j].num_elements; ++e) fb[j].x[e] = wmma::__float_to_tf32(fb[j].x[e]);
            }
        }
#pragma unroll
        for (int i = 0; i < FM; ++i)
#pragma unroll
            for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
}

template <int FM, int FN, typename Frag>
__device__ __forceinline__ void store_tiles(Frag (&acc)[FM][FN], float* c, int ldc, int m0, int n0) {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j)
            wmma::store_matrix_sync(c + (m0 + 16 * i) * ldc + n0 + 16 * j, acc[i][j], ldc, wmma::mem_row_major);
}

template <int FM, int FN, typename Frag>
__device__ __forceinline__ void load_tiles(Frag (&acc)[FM][FN], const float* c, int ldc, int m0, int n0) {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j)
            wmma::load_matrix_sync(acc[i][j], c + (m0 + 16 * i) * ldc + n0 + 16 * j, ldc, wmma::mem_row_major);
}

// E consecutive elements, loaded or stored as one access (E * sizeof(T) = 16 bytes: one LDG.128/STG.128).
template <typename T, int E> struct alignas(sizeof(T) * E) Vec {
    T v[E];
};

template <typename T, int E> __device__ __forceinline__ void load_floats(float (&dst)[E], const T* src) {
    const Vec<T, E> vec = *reinterpret_cast<const Vec<T, E>*>(src);
#pragma unroll
    for (int j = 0; j < E; ++j) dst[j] = to_float(vec.v[j]);
}

template <typename T, int E> __device__ __forceinline__ void store_floats(T* dst, const float (&src)[E]) {
    Vec<T, E> vec;
#pragma unroll
    for (int j = 0; j < E; ++j) vec.v[j] = from_float<T>(src[j]);
    *reinterpret_cast<Vec<T, E>*>(dst) = vec;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Bytes of a shared-memory region rounded up to 128, so that every carved tile stays 32-byte aligned.
__host__ __device__ constexpr int smem_round(int bytes) { return (bytes + 127) / 128 * 128; }

}  // namespace gigagan
