"""Builds gigagan_kernels and, where a CUDA toolchain and a CUDA build of torch are present, the CUDA
extension gigagan_kernels._C from csrc/.

GIGAGAN_KERNELS_BUILD_CUDA=1 forces the extension (and fails loudly without a toolchain),
GIGAGAN_KERNELS_BUILD_CUDA=0 skips it; unset means "build when possible". Importing the package
never needs nvcc: without the extension impl="cuda" raises and impl="auto" never picks it. An install
that builds no extension says so, and why, on its output.
"""
import glob
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _without_extension(reason: str):
    print(f"gigagan_kernels: installing without the CUDA extension (impl=\"cuda\" will be absent): {reason}. "
          "See README, Install; `python -m gigagan_kernels` reports what runs.")
    return [], {}


def cuda_extensions():
    want = os.environ.get("GIGAGAN_KERNELS_BUILD_CUDA", "auto").lower()
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*.cu")))
    if want in ("0", "false", "no") or not sources:
        if want in ("1", "true", "yes") and not sources:
            raise RuntimeError("GIGAGAN_KERNELS_BUILD_CUDA=1 but csrc/ has no sources")
        return _without_extension("GIGAGAN_KERNELS_BUILD_CUDA=0" if sources else "csrc/ is absent")
    # torch guesses CUDA_HOME from the nvcc on PATH, which may be a bare symlink outside the toolkit (then the
    # toolkit headers are missing); the standard install location is the better guess.
    if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.isfile("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        if want in ("1", "true", "yes"):
            raise
        return _without_extension("torch is not importable in the build environment (install torch first and "
                                  "pass --no-build-isolation to pip)")
    if CUDA_HOME is None or torch.version.cuda is None:
        if want in ("1", "true", "yes"):
            raise RuntimeError("GIGAGAN_KERNELS_BUILD_CUDA=1 but nvcc or a CUDA build of torch is missing")
        return _without_extension("no nvcc found" if CUDA_HOME is None else
                                  f"torch {torch.__version__} is a CPU-only build")
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    # The pip nvidia-* wheels ship the CUDA library headers that torch's headers include (cusparse.h, ...).
    # -idirafter: searched after the toolkit's own headers, which they must not shadow (crt/host_defines.h).
    library_headers = sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "*", "include")))
    cxx_flags = ["-O3", "-std=c++20", f'-DGIGAGAN_CUDA_ARCHS="{arch}"'] + \
        [flag for d in library_headers for flag in ("-idirafter", d)]
    ext = CUDAExtension(
        "gigagan_kernels._C", sources, include_dirs=[os.path.join(HERE, "csrc")],
        # The .cu files include no torch headers (kernels only), so nvcc stays at C++17 and compiles fast.
        extra_compile_args={"cxx": cxx_flags,
                            "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "-Xptxas=-v"]},
    )

    class BuildCudaExtension(BuildExtension):
        """csrc/<op>.cpp and csrc/<op>.cu share a stem (the StyleGAN ops layout); give the .cu object its own
        name (<op>.cuda.o, as torch.utils.cpp_extension.load does) so the two do not collide."""

        def build_extensions(self):
            object_filenames = self.compiler.object_filenames

            def distinct(sources, strip_dir=0, output_dir=""):
                names = object_filenames(sources, strip_dir, output_dir)
                return [name[:-2] + ".cuda.o" if src.endswith(".cu") else name for src, name in zip(sources, names)]

            self.compiler.object_filenames = distinct
            super().build_extensions()

    return [ext], {"build_ext": BuildCudaExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extensions()

# The package metadata and extras live in pyproject.toml; this file adds only the extension.
setup(ext_modules=ext_modules, cmdclass=cmdclass)
