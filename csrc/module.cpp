// The extension module gigagan_kernels._C. Importing it runs the static torch.library registrations of the
// op files (TORCH_LIBRARY_FRAGMENT in adaptive_modconv.cpp and attention.cpp). Its one Python function,
// build_info(), tells `python -m gigagan_kernels` how this binary was built.
#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <string>

#include "adaptive_modconv.h"

#ifndef GIGAGAN_CUDA_ARCHS
#define GIGAGAN_CUDA_ARCHS "unknown"
#endif

TORCH_LIBRARY(gigagan_kernels_cuda, m) {}

namespace {

std::string version_string(int v) {  // CUDA's 1000 * major + 10 * minor
    return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

pybind11::dict build_info() {
    pybind11::dict info;
    info["cuda_archs"] = GIGAGAN_CUDA_ARCHS;  // TORCH_CUDA_ARCH_LIST at build time
    info["cuda_runtime_built"] = version_string(CUDART_VERSION);
    int runtime = 0;
    info["cuda_runtime_loaded"] =
        cudaRuntimeGetVersion(&runtime) == cudaSuccess ? pybind11::cast(version_string(runtime)) : pybind11::none();
#if defined(__clang__)
    info["host_compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    info["host_compiler"] = "gcc " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__);
#endif
    info["cxx_standard"] = static_cast<long>(__cplusplus);
    return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "gigagan_kernels CUDA ops (registered as torch.ops.gigagan_kernels_cuda.*)";
    m.def("build_info", &build_info, "How this extension was built: CUDA archs, CUDA runtime, host compiler.");
    // Host-side plans of the modconv kernels, for tests that hold them to the Python side's rules.
    m.def(
        "modconv_plan_weights",
        [](int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int64_t k, int64_t element_size,
           bool needs_grad, int keep, int64_t workspace) {
            const gigagan::WeightsPlan p =
                gigagan::plan_weights(B, Cin, H, W, Cout, k, element_size, needs_grad, keep, workspace);
            return pybind11::make_tuple(p.forward_chunk, p.backward_chunk, p.keep);
        },
        "(forward_chunk, backward_chunk, keep) of the CUDA modconv for one call; keep=-1 decides.");
    m.def(
        "modconv_reduce_tiles",
        [](int N, int Cout, int Cin, int KK, bool vectorized, int element_size) {
            const gigagan::ReduceTiles t = gigagan::reduce_tiles(N, Cout, Cin, KK, vectorized, element_size);
            return pybind11::make_tuple(t.elements_per_thread, t.channels_per_block, t.outputs_per_block,
                                        t.channel_blocks, t.output_blocks);
        },
        "(elements_per_thread, channels_per_block, outputs_per_block, channel_blocks, output_blocks) of the "
        "CUDA modconv's weight-gradient reduction.");
}
