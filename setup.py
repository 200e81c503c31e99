"""Ships csrc/ inside the package (gigagan_kernels/csrc in the wheel and sdist), so that an installed package can
compile the CUDA extension on first use (gigagan_kernels/cuda_extension.py). Installing compiles nothing, except
with GIGAGAN_KERNELS_BUILD_CUDA=1, which runs `python -m gigagan_kernels build-cuda` once the package is built
(into the same cache folder a first impl="cuda" use would fill; needs --no-build-isolation, so torch is there).
The package metadata and extras live in pyproject.toml.
"""
import importlib.util
import os
import subprocess
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_ENV = "GIGAGAN_KERNELS_BUILD_CUDA"


class BuildPyThenCuda(build_py):
    """build_py (wheel and editable builds alike), then the CUDA extension when GIGAGAN_KERNELS_BUILD_CUDA=1."""

    def run(self):
        super().run()
        want = os.environ.get(BUILD_ENV, "").strip()
        if want not in ("", "0", "1"):
            raise SystemExit(f"{BUILD_ENV}={want!r}: expected 1 (compile the CUDA extension now) or 0 / unset")
        if want == "1":
            if importlib.util.find_spec("torch") is None:
                raise SystemExit(f"{BUILD_ENV}=1 compiles against the installed torch, which this build environment "
                                 "lacks: pass --no-build-isolation to pip (or python -m build)")
            env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
            subprocess.run([sys.executable, "-m", "gigagan_kernels", "build-cuda"], env=env, cwd=HERE, check=True)


# The benchmarks run from the repository (python -m benchmarks, gigagan bench), never installed.
packages = find_packages(include=["gigagan_kernels", "gigagan_kernels.*", "gigagan", "gigagan.*"])
setup(
    packages=packages + ["gigagan_kernels.csrc"],
    # csrc/ stays at the repository root (one stem per op, beside the Python package); installed, it is a data
    # folder inside the package. Not a Python package: it has no __init__.py.
    package_dir={"gigagan_kernels.csrc": "csrc"},
    package_data={"gigagan_kernels.csrc": ["*.cpp", "*.cu", "*.h", "*.cuh"],
                  "gigagan_kernels": ["py.typed"], "gigagan": ["py.typed"]},
    cmdclass={"build_py": BuildPyThenCuda},
)
