// Device helpers shared by the CUDA kernels: dtype conversions, tensor-core tiles (mma.sync), cp.async, vector
// accesses and warp sums.
// No torch headers here, so nvcc stays fast (the StyleGAN ops split).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>


namespace gigagan {

constexpr int kWarpSize = 32;

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<half>(half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ half from_float<half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// ---- warp-level tensor-core tiles: mma.sync with documented fragment layouts ------------------------------
// A warp multiplies a 16 x K tile of A by a K x 8 tile of B into a 16 x 8 fp32 tile C: K = 16 for fp16/bf16
// (m16n8k16), K = 8 for fp32 inputs through TF32 (m16n8k8; each operand split in two TF32 parts, see
// Mma<float>). With g = lane / 4 and t = lane % 4 (PTX ISA, "Matrix fragments for mma.m16n8k16 / m16n8k8"):
//   C:  c[0], c[1] = C[g][2t], C[g][2t+1];   c[2], c[3] = C[g+8][2t], C[g+8][2t+1]
//   16-bit A (4 regs of 2 halves): a0 = A[g][2t..], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   16-bit B (2 regs):             b0 = B[2t..][g], b1 = B[2t+8..][g]
//   TF32 A: a0 = A[g][t], a1 = A[g+8][t], a2 = A[g][t+4], a3 = A[g+8][t+4];   B: b0 = B[t][g], b1 = B[t+4][g]
// Because each thread owns whole rows of C, a softmax can rescale an accumulator row in registers.
// Loaders read shared memory with a row stride `ld` (elements); the 16-bit ones use ldmatrix, whose rows are
// 16-byte aligned when ld is a multiple of 8 elements.

__device__ __forceinline__ uint32_t smem_address(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(smem_address(p)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(smem_address(p)));
}

__device__ __forceinline__ uint32_t to_tf32(float v) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
    return r;
}

template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<half>(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
}

// Fragments and loaders per operand type. Names: A is M x K, B is K x N; "_kn" reads a matrix stored
// [k][n] (row-major B), "_nk" one stored [n][k] (B transposed in memory); load_a_t reads A stored [k][m].
template <typename T> struct Mma;

template <typename T> struct Mma16 {
    static constexpr int K = 16;
    using FragA = uint32_t[4];
    using FragB = uint32_t[2];
    __device__ static void load_a(uint32_t (&a)[4], const T* s, int ld, int m0, int k0) {
        const int lane = threadIdx.x % 32;
        ldmatrix_x4(a, s + (m0 + lane % 16) * ld + k0 + (lane / 16) * 8);
    }
    __device__ static void load_a_t(uint32_t (&a)[4], const T* s, int ld, int m0, int k0) {
        const int lane = threadIdx.x % 32, q = lane / 8, i = lane % 8;
        ldmatrix_x4_trans(a, s + (k0 + i + (q / 2) * 8) * ld + m0 + (q % 2) * 8);
    }
    __device__ static void load_b_nk(uint32_t (&b)[2], const T* s, int ld, int k0, int n0) {
        const int lane = threadIdx.x % 16;
        ldmatrix_x2(b, s + (n0 + lane % 8) * ld + k0 + (lane / 8) * 8);
    }
    __device__ static void load_b_kn(uint32_t (&b)[2], const T* s, int ld, int k0, int n0) {
        const int lane = threadIdx.x % 16;
        ldmatrix_x2_trans(b, s + (k0 + lane % 8 + (lane / 8) * 8) * ld + n0);
    }
    // B for an A operand made by a_from_c: the same as load_b_kn for 16-bit types.
    __device__ static void load_b_kn_paired(uint32_t (&b)[2], const T* s, int ld, int k0, int n0) {
        load_b_kn(b, s, ld, k0, n0);
    }
    // The A operand of k-step kk from fp32 C tiles whose columns are this product's k (two n-tiles a step).
    template <int TILES>
    __device__ static void a_from_c(uint32_t (&a)[4], const float (&c)[TILES][4], int kk) {
        a[0] = pack2<T>(c[2 * kk][0], c[2 * kk][1]);
        a[1] = pack2<T>(c[2 * kk][2], c[2 * kk][3]);
        a[2] = pack2<T>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
        a[3] = pack2<T>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
    }
};

template <> struct Mma<half> : Mma16<half> {
    __device__ static void mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                     "{%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
};

template <> struct Mma<__nv_bfloat16> : Mma16<__nv_bfloat16> {
    __device__ static void mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                     "{%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
};

// fp32: each operand splits into TF32 hi + lo parts and a product takes three MMAs (hi hi + hi lo + lo hi),
// fp32-accurate (~1e-6) where one TF32 MMA would round every input to 10 mantissa bits. Fragments hold the
// hi parts in [0, n) and the lo parts in [n, 2n). ldmatrix moves 16-bit pairs, so these loaders read shared
// memory element by element.
__device__ __forceinline__ void split_tf32(float v, uint32_t& hi, uint32_t& lo) {
    hi = to_tf32(v);
    lo = to_tf32(v - __uint_as_float(hi));
}

template <> struct Mma<float> {
    static constexpr int K = 8;
    using FragA = uint32_t[8];
    using FragB = uint32_t[4];
    __device__ static void set_a(FragA& a, float a0, float a1, float a2, float a3) {
        split_tf32(a0, a[0], a[4]);
        split_tf32(a1, a[1], a[5]);
        split_tf32(a2, a[2], a[6]);
        split_tf32(a3, a[3], a[7]);
    }
    __device__ static void set_b(FragB& b, float b0, float b1) {
        split_tf32(b0, b[0], b[2]);
        split_tf32(b1, b[1], b[3]);
    }
    __device__ static void load_a(FragA& a, const float* s, int ld, int m0, int k0) {
        const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
        set_a(a, s[(m0 + g) * ld + k0 + t], s[(m0 + g + 8) * ld + k0 + t], s[(m0 + g) * ld + k0 + t + 4],
              s[(m0 + g + 8) * ld + k0 + t + 4]);
    }
    __device__ static void load_a_t(FragA& a, const float* s, int ld, int m0, int k0) {
        const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
        set_a(a, s[(k0 + t) * ld + m0 + g], s[(k0 + t) * ld + m0 + g + 8], s[(k0 + t + 4) * ld + m0 + g],
              s[(k0 + t + 4) * ld + m0 + g + 8]);
    }
    __device__ static void load_b_nk(FragB& b, const float* s, int ld, int k0, int n0) {
        const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
        set_b(b, s[(n0 + g) * ld + k0 + t], s[(n0 + g) * ld + k0 + t + 4]);
    }
    __device__ static void load_b_kn(FragB& b, const float* s, int ld, int k0, int n0) {
        const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
        set_b(b, s[(k0 + t) * ld + n0 + g], s[(k0 + t + 4) * ld + n0 + g]);
    }
    // a_from_c hands the thread's C columns 2t, 2t+1 to the MMA's k = t, t+4; a sum over k does not care about
    // its order, so B's rows are read in the same permuted order: k = t -> row 2t, k = t + 4 -> row 2t + 1.
    __device__ static void load_b_kn_paired(FragB& b, const float* s, int ld, int k0, int n0) {
        const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
        set_b(b, s[(k0 + 2 * t) * ld + n0 + g], s[(k0 + 2 * t + 1) * ld + n0 + g]);
    }
    template <int TILES>
    __device__ static void a_from_c(FragA& a, const float (&c)[TILES][4], int kk) {
        set_a(a, c[kk][0], c[kk][2], c[kk][1], c[kk][3]);
    }
    __device__ static void mma_tf32(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
        asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                     "{%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
    __device__ static void mma(float (&c)[4], const FragA& a, const FragB& b) {
        mma_tf32(c, a[4], a[5], a[6], a[7], b[0], b[1]);   // small terms first
        mma_tf32(c, a[0], a[1], a[2], a[3], b[2], b[3]);
        mma_tf32(c, a[0], a[1], a[2], a[3], b[0], b[1]);
    }
};

// ---- asynchronous global -> shared copies (sm_80+) --------------------------------------------------------
// 16 bytes, or 16 zero bytes when !valid (the source address must still be a valid one).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(smem_address(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N)); }

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
