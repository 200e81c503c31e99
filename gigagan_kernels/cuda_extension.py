"""The CUDA extension gigagan_kernels._C: compiled from csrc/ on first use, once per version of its sources.

Installing compiles nothing. The first explicit impl="cuda" call, or `python -m gigagan_kernels build-cuda` ahead
of time, compiles csrc/*.cpp and csrc/*.cu with ninja through torch.utils.cpp_extension.load (as StyleGAN3's custom
ops are) into one build folder per version:

    $GIGAGAN_KERNELS_CACHE_DIR, else $XDG_CACHE_HOME/gigagan_kernels, else ~/.cache/gigagan_kernels
      cuda/<torch version>-<python tag>-<hash of the sources and build flags>/

A file lock around the build makes concurrent processes (test workers, DDP ranks) compile once: the others wait,
then load what the first one built. impl="auto" never compiles: it considers the extension only when it is loaded,
or when the folder for these sources is already built (checked once per process).

The sources are csrc/ of the checkout, or the copy that the wheel ships as gigagan_kernels/csrc/; both hash alike,
so an installed package finds what a checkout built. TORCH_CUDA_ARCH_LIST (default "8.0;9.0") picks the targets
and is part of the hash.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shlex
import shutil
import sys
import threading
import time
from typing import Callable

import torch

CACHE_ENV = "GIGAGAN_KERNELS_CACHE_DIR"
DEFAULT_ARCHS = "8.0;9.0"
MODULE_NAME = "gigagan_kernels_C"   # TORCH_EXTENSION_NAME: PyInit_<name> in the library
PACKAGE_MODULE = "gigagan_kernels._C"
RECORD = "gigagan_kernels_build.json"    # written last, so its presence means "built"
COMPILED = ("*.cpp", "*.cu")
HASHED = COMPILED + ("*.h", "*.cuh")
CXX_FLAGS = ("-O3", "-std=c++20")
# The .cu files include no torch headers (kernels only), so nvcc stays at C++17 and compiles fast.
NVCC_FLAGS = ("-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "-Xptxas=-v")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class CudaExtensionUnavailable(RuntimeError):
    """The extension cannot be compiled or loaded here; the message says why in one line."""


# ----------------------------------------------------------------------------------------------
# What gets compiled, with which flags, and where
# ----------------------------------------------------------------------------------------------
def source_dir() -> str | None:
    """The folder of the CUDA sources: gigagan_kernels/csrc in a wheel install, csrc/ of a checkout (editable
    install, or PYTHONPATH); None when neither has them."""
    for candidate in (os.path.join(_PACKAGE_DIR, "csrc"), os.path.join(os.path.dirname(_PACKAGE_DIR), "csrc")):
        if glob.glob(os.path.join(candidate, "*.cu")):
            return candidate
    return None


def _files(directory: str, patterns) -> list[str]:
    return sorted(path for pattern in patterns for path in glob.glob(os.path.join(directory, pattern)))


def arch_list() -> str:
    return os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or DEFAULT_ARCHS


def _library_headers() -> list[str]:
    """The pip nvidia-* wheels ship the CUDA library headers that torch's headers include (cusparse.h, ...)."""
    return sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "*", "include")))


def _cxx_flags(arch: str) -> list[str]:
    # -idirafter: searched after the toolkit's own headers, which they must not shadow (crt/host_defines.h).
    # Quoted: load() writes these flags into the ninja file unquoted, and the shell would eat the define's quotes.
    flags = [*CXX_FLAGS, f'-DGIGAGAN_CUDA_ARCHS="{arch}"']
    flags += [flag for d in _library_headers() for flag in ("-idirafter", d)]
    return [shlex.quote(flag) for flag in flags]


def version_key(directory: str | None = None) -> str:
    """<torch version>-<python tag>-<16 hex digits of the sources' names and contents and the build flags>."""
    directory = directory or source_dir()
    if directory is None:
        raise CudaExtensionUnavailable("the CUDA sources (csrc/) are not in this checkout or install")
    digest = hashlib.sha256()
    for path in _files(directory, HASHED):
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + b"\0" + f.read() + b"\0")
    arch = arch_list()
    # Flags, not paths: the include folders follow from the torch version, which names the folder.
    digest.update(json.dumps({"archs": arch, "cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS}).encode())
    python_tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return f"{torch.__version__}-{python_tag}-{digest.hexdigest()[:16]}"


def cache_root() -> str:
    root = os.environ.get(CACHE_ENV, "").strip()
    if root:
        return os.path.abspath(os.path.expanduser(root))
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "gigagan_kernels")


def build_dir(directory: str | None = None) -> str:
    """The build folder of the sources in `directory` (default: source_dir()) for this torch and python."""
    return os.path.join(cache_root(), "cuda", version_key(directory))


def build_record(folder: str) -> dict | None:
    """What build() wrote after compiling in `folder` (the library's name, seconds, flags), or None when the
    folder holds no finished build."""
    try:
        with open(os.path.join(folder, RECORD)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not os.path.isfile(os.path.join(folder, record.get("library", ""))):
        return None
    return record


def cuda_home() -> str | None:
    """CUDA_HOME / CUDA_PATH, else /usr/local/cuda, else the folder above nvcc on PATH. torch guesses from nvcc
    on PATH first, which may be a bare symlink outside the toolkit (then the toolkit headers are missing)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    if os.path.isfile("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def _ninja_dir() -> str | None:
    """The folder of the ninja binary: the pip package's (beside the interpreter, which need not be on PATH, as
    with .venv/bin/python), else the one on PATH."""
    try:
        import ninja
        if ninja.BIN_DIR and os.path.isfile(os.path.join(ninja.BIN_DIR, "ninja")):
            return ninja.BIN_DIR
    except ImportError:
        pass
    found = shutil.which("ninja")
    return os.path.dirname(found) if found else None


def toolchain_problem(directory: str | None = None) -> str | None:
    """Why the sources in `directory` (default: source_dir()) cannot be compiled here, or None."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    home = cuda_home()
    if home is None or not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return "no nvcc found (install the CUDA toolkit, or set CUDA_HOME)"
    if _ninja_dir() is None:
        return "ninja is not installed (pip install ninja)"
    if (directory or source_dir()) is None:
        return "the CUDA sources (csrc/) are not in this checkout or install"
    return None


# ----------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------
def _say(message: str) -> None:
    print(f"gigagan_kernels: {message}", file=sys.stderr, flush=True)


class _Scoped:
    """Environment variables and torch.utils.cpp_extension.CUDA_HOME for one build, restored after it."""

    def __init__(self, env: dict, home: str):
        self.env, self.home = env, home

    def __enter__(self):
        self.saved_env = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        from torch.utils import cpp_extension   # a first import reads CUDA_HOME from the environment set above
        self.saved_home = cpp_extension.CUDA_HOME
        cpp_extension.CUDA_HOME = self.home     # an earlier import guessed it; the build reads the module global
        return self

    def __exit__(self, *exc):
        from torch.utils import cpp_extension
        for k, v in self.saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        cpp_extension.CUDA_HOME = self.saved_home


def _compile(directory: str, folder: str, verbose: bool) -> str:
    """Compile and link the sources in `directory` into `folder`; return the library's path."""
    home, arch = cuda_home(), arch_list()
    env = {"TORCH_CUDA_ARCH_LIST": arch, "CUDA_HOME": home,
           "PATH": os.pathsep.join(filter(None, (_ninja_dir(), os.environ.get("PATH"))))}
    with _Scoped(env, home):
        from torch.utils import cpp_extension
        # is_python_module=False: returns the library's path (and registers its ops); load() imports it.
        return cpp_extension.load(MODULE_NAME, _files(directory, COMPILED), extra_cflags=_cxx_flags(arch),
                                  extra_cuda_cflags=list(NVCC_FLAGS), extra_include_paths=[directory],
                                  build_directory=folder, verbose=verbose, with_cuda=True, is_python_module=False)


def build(*, verbose: bool = False, directory: str | None = None) -> str:
    """Compile the extension unless its folder is already built; return the library's path. Holds a file lock
    while it checks and compiles, so concurrent callers compile once. Raises CudaExtensionUnavailable without a
    toolchain, and torch's RuntimeError (with the compiler's output) when the compile fails."""
    from filelock import FileLock
    directory = directory or source_dir()
    folder = build_dir(directory)
    record = build_record(folder)
    if record is not None:
        return os.path.join(folder, record["library"])
    problem = toolchain_problem(directory)
    if problem is not None:
        raise CudaExtensionUnavailable(f"cannot compile the CUDA extension: {problem}")
    os.makedirs(folder, exist_ok=True)
    # A lock beside the folder, not torch's inside it: the kernel releases it when its holder dies.
    lock = FileLock(folder + ".lock")
    try:
        lock.acquire(timeout=0)
    except TimeoutError:
        _say(f"waiting for another process that is compiling the CUDA extension in {folder}")
        lock.acquire()
    try:
        record = build_record(folder)
        if record is not None:                 # the process we waited for built it
            return os.path.join(folder, record["library"])
        _say(f"compiling the CUDA extension (once per version of csrc/ and torch; 1.5-3 min on 2 cores) "
             f"into {folder}")
        start = time.perf_counter()
        library = _compile(directory, folder, verbose)
        seconds = time.perf_counter() - start
        record = {"library": os.path.basename(library), "seconds": round(seconds, 1), "cuda_archs": arch_list(),
                  "cuda_home": cuda_home(), "sources": [os.path.basename(p) for p in _files(directory, HASHED)],
                  "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        partial = os.path.join(folder, f"{RECORD}.{os.getpid()}")
        with open(partial, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(partial, os.path.join(folder, RECORD))
        _say(f"compiled the CUDA extension in {seconds:.0f} s")
        return library
    finally:
        lock.release()


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
_lock = threading.RLock()
_module = None                 # the loaded extension
_checked = False               # load() found nothing built: not looked for again in this process (auto's question)
_failure: str | None = None    # why a build or load failed in this process: not tried again
_on_load: list[Callable[[], None]] = []


def on_load(callback: Callable[[], None]) -> None:
    """Run callback once the extension is loaded (now, if it is), before load() returns it: the ops add their fake
    kernels and autograd this way, so raw torch.ops calls have them from the start."""
    with _lock:
        if _module is None:
            _on_load.append(callback)
            return
    callback()


def _import(library: str):
    import importlib.util
    name = os.path.splitext(os.path.basename(library))[0]   # PyInit_<name>: torch may have named it <name>_v1
    spec = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # `from gigagan_kernels import _C` keeps working (the modconv's host-side plan comes from it).
    sys.modules[PACKAGE_MODULE] = module
    setattr(sys.modules[__package__], "_C", module)
    return module


def load(*, allow_compile: bool = False):
    """The extension module, or None. It loads when its folder is built; allow_compile=True (an explicit
    impl="cuda") compiles it first if it is not, and raises CudaExtensionUnavailable when that cannot be done.
    Without it a process looks once; unavailable_reason() says why there is none."""
    global _module, _checked, _failure
    if _module is not None:
        return _module
    if not allow_compile and (_checked or _failure):
        return None
    with _lock:
        if _module is not None:
            return _module
        if _failure:
            if allow_compile:
                raise CudaExtensionUnavailable(_failure)
            return None
        try:
            library = build() if allow_compile else built_library()
            if library is None:
                _checked = True
                return None
            module = _import(library)
        except CudaExtensionUnavailable as e:
            _failure = str(e)
            raise
        except Exception as e:   # torch's RuntimeError from a failed compile carries the compiler's output
            _failure = f"the CUDA extension failed to {'compile or ' if allow_compile else ''}load: " + \
                (str(e).splitlines() or [type(e).__name__])[0]
            if allow_compile:
                raise CudaExtensionUnavailable(_failure) from e
            return None
        for callback in _on_load:
            callback()
        _on_load.clear()
        _module = module
    return module


def _constant_under_compile(fn):
    """torch.compiler.assume_constant_result without its import of torch._dynamo (which imports Triton, ~1.5 s at
    every `import gigagan_kernels`): the mark dynamo reads, set on the function."""
    fn._dynamo_marked_constant = True
    return fn


# torch.compile traces the dispatcher, and with it these two: it runs them as they are (files, locks) and keeps
# their answer as a constant, so impl="auto" decides alike in eager and compiled code.
@_constant_under_compile
def available(allow_compile: bool = False) -> bool:
    """Whether load(allow_compile=...) gives the extension."""
    return load(allow_compile=allow_compile) is not None


def built_library() -> str | None:
    """The path of the built library for these sources, torch and flags, or None. Compiles nothing."""
    if _module is not None:
        return _module.__file__
    if source_dir() is None:
        return None
    folder = build_dir()
    record = build_record(folder)
    return os.path.join(folder, record["library"]) if record else None


@_constant_under_compile
def unavailable_reason() -> str:
    """Why load() gives no extension, in one line."""
    if _failure:
        return _failure
    problem = toolchain_problem()
    if problem is not None:
        return f"the CUDA extension gigagan_kernels._C is not built, and cannot be here: {problem}"
    return ("the CUDA extension gigagan_kernels._C is not built: impl=\"cuda\" compiles it on first use, or run "
            "`python -m gigagan_kernels build-cuda`")
