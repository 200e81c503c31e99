// Runs csrc/*.cu kernels on the CPU, for tests without a GPU (tests/test_cuda_emulated.py builds it).
//
// A block's threads are fibers (ucontext) on one OS thread; __syncthreads and a warp's collective operations
// are barriers between them. Blocks run one at a time, so __shared__ variables are function statics. The few
// PTX instructions the kernels use (ldmatrix, mma.sync, cp.async, cvt.rna.tf32) are written out from their
// definitions in the PTX ISA, as warp collectives. Slow, for small shapes: it checks index math, fragment
// layouts and synchronisation logic, not speed.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <ucontext.h>
#include <vector_types.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

namespace emu {

struct Barrier {
    int expected = 0, arrived = 0;
    uint64_t generation = 0;
};

struct Fiber {
    ucontext_t context;
    std::vector<char> stack;
    bool done = false;
    uint3 index;
};

inline dim3 grid_dim, block_dim;
inline uint3 block_index;
inline std::vector<unsigned char> dynamic_shared;
inline std::vector<Fiber> fibers;
inline ucontext_t scheduler;
inline int current = 0;
inline Barrier block_barrier;
inline std::vector<Barrier> warp_barriers;
inline std::vector<std::array<unsigned char, 64>> lane_slots;  // one 64-byte slot per thread
inline std::function<void()> body;

inline unsigned char* dynamic_smem() { return dynamic_shared.data(); }
inline int lane() { return current % 32; }
inline int warp() { return current / 32; }

inline void yield() { swapcontext(&fibers[current].context, &scheduler); }

inline void wait(Barrier& b) {
    const uint64_t generation = b.generation;
    if (++b.arrived == b.expected) {
        b.arrived = 0;
        ++b.generation;
        return;
    }
    while (b.generation == generation) yield();
}

inline void drop(Barrier& b) {
    --b.expected;
    if (b.arrived > 0 && b.arrived == b.expected) {
        b.arrived = 0;
        ++b.generation;
    }
}

// Every lane of the warp publishes `value`; each gets all 32 values (lanes that returned left garbage).
template <typename V> std::array<V, 32> gather(const V& value) {
    static_assert(sizeof(V) <= 64, "one slot per lane");
    std::memcpy(lane_slots[current].data(), &value, sizeof(V));
    wait(warp_barriers[warp()]);
    std::array<V, 32> all;
    for (int l = 0; l < 32; ++l) {
        const int t = warp() * 32 + l;
        if (t < int(lane_slots.size())) std::memcpy(&all[l], lane_slots[t].data(), sizeof(V));
    }
    wait(warp_barriers[warp()]);
    return all;
}

inline void trampoline() {
    body();
    fibers[current].done = true;
    drop(block_barrier);
    drop(warp_barriers[warp()]);
    swapcontext(&fibers[current].context, &scheduler);
}

template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t, Args... args) {
    grid_dim = grid;
    block_dim = block;
    const int threads = int(block.x * block.y * block.z);
    constexpr size_t kStack = 256 * 1024;
    body = [&] { kernel(args...); };
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                block_index = uint3{x, y, z};
                dynamic_shared.assign(std::max<size_t>(smem, 1), 0xff);  // NaN-poisoned; exact size for ASan
                block_barrier = Barrier{threads};
                warp_barriers.assign((threads + 31) / 32, Barrier{});
                for (int w = 0; w < int(warp_barriers.size()); ++w) warp_barriers[w].expected = std::min(32, threads - 32 * w);
                lane_slots.assign(threads, {});
                fibers.assign(threads, Fiber{});
                for (int t = 0; t < threads; ++t) {
                    Fiber& f = fibers[t];
                    f.stack.resize(kStack);
                    f.index = uint3{unsigned(t), 0, 0};
                    getcontext(&f.context);
                    f.context.uc_stack.ss_sp = f.stack.data();
                    f.context.uc_stack.ss_size = kStack;
                    f.context.uc_link = nullptr;
                    makecontext(&f.context, trampoline, 0);
                }
                for (int left = threads; left > 0;) {
                    left = 0;
                    for (int t = 0; t < threads; ++t) {
                        if (fibers[t].done) continue;
                        current = t;
                        swapcontext(&scheduler, &fibers[t].context);
                        left += !fibers[t].done;
                    }
                }
            }
}

inline const uint3& thread_index() { return fibers[current].index; }

}  // namespace emu

#define threadIdx (::emu::thread_index())
#define blockIdx (::emu::block_index)
#define gridDim (::emu::grid_dim)
#define blockDim (::emu::block_dim)

inline void __syncthreads() { emu::wait(emu::block_barrier); }
template <typename V> V __shfl_xor_sync(unsigned, V value, int offset) {
    return emu::gather(value)[emu::lane() ^ offset];
}
inline float atomicAdd(float* address, float value) {  // one fiber runs at a time
    const float old = *address;
    *address = old + value;
    return old;
}
inline float rsqrtf(float v) { return 1.f / std::sqrt(v); }
inline int min(int a, int b) { return a < b ? a : b; }  // CUDA's device overloads
inline int max(int a, int b) { return a > b ? a : b; }
inline float __uint_as_float(uint32_t v) {
    float f;
    std::memcpy(&f, &v, 4);
    return f;
}
template <typename Kernel> cudaError_t emu_set_attribute(Kernel, cudaFuncAttribute, int) { return cudaSuccess; }
#define cudaFuncSetAttribute emu_set_attribute
#define cudaGetLastError() cudaSuccess
#define __cvta_generic_to_shared(p) (reinterpret_cast<uintptr_t>(p))

// ---- PTX instructions (PTX ISA: ldmatrix, mma.m16n8k16 / m16n8k8, cp.async, cvt.rna.tf32.f32) -------------
namespace emu {

// ldmatrix .xN: lane i supplies the address of row i % 8 of matrix i / 8 (16 bytes: 8 b16 elements);
// register j of lane l receives, of matrix j, the elements [l/4][2(l%4)] and [l/4][2(l%4)+1] (low half first),
// or with .trans the elements [2(l%4)][l/4] and [2(l%4)+1][l/4].
template <int N, bool TRANS> void ldmatrix(uint32_t* r, const void* address) {
    const auto addresses = gather(reinterpret_cast<uint64_t>(address));
    const int l = lane(), g = l / 4, t = l % 4;
    for (int m = 0; m < N; ++m) {
        uint16_t rows[8][8];
        for (int i = 0; i < 8; ++i) std::memcpy(rows[i], reinterpret_cast<const void*>(addresses[8 * m + i]), 16);
        const uint16_t lo = TRANS ? rows[2 * t][g] : rows[g][2 * t];
        const uint16_t hi = TRANS ? rows[2 * t + 1][g] : rows[g][2 * t + 1];
        r[m] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
}

inline float half_bits(uint16_t bits, bool bf16) {
    if (bf16) return __uint_as_float(uint32_t(bits) << 16);
    __half h;
    std::memcpy(&h, &bits, 2);
    return __half2float(h);
}

// D = A B + C for one warp, A 16 x K and B K x 8 in the fragments of the PTX ISA (kind 0 f16, 1 bf16, 2 tf32).
template <int K> void mma(float* c, const uint32_t* a, const uint32_t* b, int kind) {
    struct Operands { uint32_t a[4], b[2]; };
    Operands mine;
    std::memcpy(mine.a, a, 16);
    std::memcpy(mine.b, b, 8);
    const auto all = gather(mine);
    float A[16][K], B[K][8];
    for (int src = 0; src < 32; ++src) {
        const int g = src / 4, t = src % 4;
        const uint32_t* ra = all[src].a;
        const uint32_t* rb = all[src].b;
        if (kind == 2) {
            A[g][t] = __uint_as_float(ra[0]);
            A[g + 8][t] = __uint_as_float(ra[1]);
            A[g][t + 4] = __uint_as_float(ra[2]);
            A[g + 8][t + 4] = __uint_as_float(ra[3]);
            B[t][g] = __uint_as_float(rb[0]);
            B[t + 4][g] = __uint_as_float(rb[1]);
            continue;
        }
        const bool bf = kind == 1;
        for (int h = 0; h < 2; ++h) {
            auto part = [&](uint32_t v) { return half_bits(uint16_t(h ? v >> 16 : v & 0xffff), bf); };
            A[g][2 * t + h] = part(ra[0]);
            A[g + 8][2 * t + h] = part(ra[1]);
            A[g][2 * t + 8 + h] = part(ra[2]);
            A[g + 8][2 * t + 8 + h] = part(ra[3]);
            B[2 * t + h][g] = part(rb[0]);
            B[2 * t + 8 + h][g] = part(rb[1]);
        }
    }
    const int g = lane() / 4, t = lane() % 4;
    for (int e = 0; e < 4; ++e) {
        const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
        double acc = c[e];
        for (int k = 0; k < K; ++k) acc += double(A[row][k]) * double(B[k][col]);
        c[e] = float(acc);
    }
}

// cvt.rna.tf32.f32: round to nearest, ties away from zero, at 10 mantissa bits (the low 13 bits zero).
inline uint32_t to_tf32(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    if ((bits & 0x7f800000u) != 0x7f800000u) bits += 0x1000u;
    return bits & 0xffffe000u;
}

}  // namespace emu
