"""Builds gigagan_kernels and, where a CUDA toolchain and a CUDA build of torch are present, the CUDA
extension gigagan_kernels._C from csrc/.

GIGAGAN_KERNELS_BUILD_CUDA=1 forces the extension (and fails loudly without a toolchain),
GIGAGAN_KERNELS_BUILD_CUDA=0 skips it; unset means "build when possible". Importing the package
never needs nvcc: without the extension impl="cuda" raises and impl="auto" picks Triton.
"""
import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def cuda_extensions():
    want = os.environ.get("GIGAGAN_KERNELS_BUILD_CUDA", "auto").lower()
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*.cu")))
    if want in ("0", "false", "no") or not sources:
        if want in ("1", "true", "yes") and not sources:
            raise RuntimeError("GIGAGAN_KERNELS_BUILD_CUDA=1 but csrc/ has no sources")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        if want in ("1", "true", "yes"):
            raise
        return [], {}
    if CUDA_HOME is None or torch.version.cuda is None:
        if want in ("1", "true", "yes"):
            raise RuntimeError("GIGAGAN_KERNELS_BUILD_CUDA=1 but nvcc or a CUDA build of torch is missing")
        print("gigagan_kernels: no CUDA toolchain, installing without the CUDA extension")
        return [], {}
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    include_dirs = [os.path.join(HERE, "csrc")]
    # The pip nvidia-* wheels ship the CUDA library headers that torch's headers include (cusparse.h, ...).
    include_dirs += glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "*", "include"))
    ext = CUDAExtension(
        "gigagan_kernels._C", sources, include_dirs=include_dirs,
        extra_compile_args={"cxx": ["-O3", "-std=c++17"],
                            "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "-Xptxas=-v"]},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extensions()

setup(
    name="gigagan-kernels",
    version="0.1.0",
    description="Fused Triton and CUDA kernels for GigaGAN: adaptive modulated convolution and L2 attention",
    packages=find_packages(include=["gigagan_kernels", "gigagan_kernels.*", "gigagan", "gigagan.*", "benchmarks"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.11", "triton>=3.6", "numpy"],
    extras_require={"dev": ["pytest", "pytest-benchmark", "matplotlib"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["gigagan=gigagan.__main__:main"]},
)
