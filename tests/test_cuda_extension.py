"""The CUDA extension's build on first use (gigagan_kernels/cuda_extension.py): one folder per version of the
sources, compiled once under a lock however many processes ask, never by impl="auto" or an import. The compile
itself is replaced by a stand-in here (a real one takes minutes); test_backend.py builds the real extension."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from gigagan_kernels import backend, cuda_extension
from gigagan_kernels.__main__ import main as gigagan_kernels_main
from tests.helpers import ROOT
from tests.test_backend import chosen


@pytest.fixture
def fresh_extension_state(monkeypatch, tmp_path):
    """An empty cache, nothing loaded or looked for in this process, and a toolchain that is present."""
    monkeypatch.setenv(cuda_extension.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(cuda_extension, "_module", None)
    monkeypatch.setattr(cuda_extension, "_checked", False)
    monkeypatch.setattr(cuda_extension, "_failure", None)
    monkeypatch.setattr(cuda_extension, "_on_load", [])
    monkeypatch.setattr(cuda_extension, "toolchain_problem", lambda directory=None: None)
    return tmp_path


def _fake_sources(folder, body="int tiny() { return 1; }\n"):
    os.makedirs(folder, exist_ok=True)
    for name in ("tiny.cpp", "tiny.cu"):
        with open(os.path.join(folder, name), "w") as f:
            f.write(body)
    return str(folder)


def test_the_build_folder_is_keyed_by_sources_torch_python_and_targets(fresh_extension_state, monkeypatch):
    src = _fake_sources(fresh_extension_state / "src")
    folder = cuda_extension.build_dir(src)
    assert folder.startswith(str(fresh_extension_state / "cache" / "cuda" / f"{torch.__version__}-cp3"))
    assert cuda_extension.build_dir(src) == folder                      # deterministic
    _fake_sources(src, body="int tiny() { return 2; }\n")
    changed = cuda_extension.build_dir(src)
    assert changed != folder
    with open(os.path.join(src, "tiny.h"), "w") as f:                  # headers count too
        f.write("#pragma once\n")
    assert cuda_extension.build_dir(src) != changed
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    default_targets = cuda_extension.build_dir(src)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert cuda_extension.build_dir(src) != default_targets


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(cuda_extension.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cuda_extension.cache_root() == str(tmp_path / "xdg" / "gigagan_kernels")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cuda_extension.cache_root() == str(tmp_path / "home" / ".cache" / "gigagan_kernels")
    monkeypatch.setenv(cuda_extension.CACHE_ENV, str(tmp_path / "mine"))
    assert cuda_extension.cache_root() == str(tmp_path / "mine")


def test_the_checkout_and_an_installed_copy_share_a_build(fresh_extension_state):
    """The wheel ships csrc/ as gigagan_kernels/csrc: a copy of the same files must find the same folder."""
    import shutil
    copy = fresh_extension_state / "site-packages" / "gigagan_kernels" / "csrc"
    shutil.copytree(os.path.join(ROOT, "csrc"), copy)
    assert cuda_extension.source_dir() == os.path.join(ROOT, "csrc")
    assert cuda_extension.build_dir(str(copy)) == cuda_extension.build_dir()


CONCURRENT_BUILD = textwrap.dedent("""
    import os, sys, time
    from gigagan_kernels import cuda_extension
    src, signals = sys.argv[1], sys.argv[2]

    def fake_compile(directory, folder, verbose):
        # Wait until the other process is about to build too, so that the two overlap for certain.
        deadline = time.time() + 60
        while len(os.listdir(signals)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        with open(os.path.join(signals, "..", "compiles"), "a") as f:
            f.write(f"{os.getpid()}\\n")
        library = os.path.join(folder, "fake_C.so")
        with open(library, "w") as f:
            f.write("not a library")
        return library

    cuda_extension._compile = fake_compile
    cuda_extension.toolchain_problem = lambda directory=None: None
    open(os.path.join(signals, str(os.getpid())), "w").close()
    print(cuda_extension.build(directory=src))
""")


def test_two_processes_compile_once(tmp_path):
    """Two processes ask for the same build at once: one compiles, the other waits for it and gets its library."""
    src = _fake_sources(tmp_path / "src")
    (tmp_path / "signals").mkdir()
    env = dict(os.environ, PYTHONPATH=ROOT, **{cuda_extension.CACHE_ENV: str(tmp_path / "cache")})
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_BUILD, src, str(tmp_path / "signals")], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert all(rc == 0 for _, _, rc in results), [err[-2000:] for _, err, _ in results]
    with open(tmp_path / "compiles") as f:
        assert len(f.read().split()) == 1
    libraries = {out.strip() for out, _, _ in results}
    assert len(libraries) == 1 and os.path.isfile(libraries.pop())
    messages = [err for _, err, _ in results]
    assert sum("gigagan_kernels: compiling the CUDA extension" in m for m in messages) == 1
    assert sum("waiting for another process" in m for m in messages) == 1
    assert sum("compiled the CUDA extension in" in m for m in messages) == 1


def test_auto_never_compiles_and_an_explicit_cuda_compiles_once(fresh_extension_state, monkeypatch):
    """impl="auto" skips an extension that is not built; impl="cuda" compiles it (once: a failed compile is not
    tried again in the process) and says so."""
    compiles = []

    def failing_compile(directory, folder, verbose):
        compiles.append(folder)
        raise RuntimeError("Error building extension 'gigagan_kernels_C': nvcc fell over\nmore compiler output")

    monkeypatch.setattr(cuda_extension, "_compile", failing_compile)
    cuda = torch.device("cuda")
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    assert "cuda" not in chosen("attention", "auto", device="cuda", dtype=torch.float16)
    assert "is not built: impl=\"cuda\" compiles it on first use" in \
        backend.unavailable_reason("cuda", cuda, "attention", torch.float16)
    assert compiles == []
    for _ in range(2):
        with pytest.raises(backend.BackendUnavailableError,
                           match=r"attention: impl='cuda' is unavailable: the CUDA extension failed to compile or "
                                 r"load: Error building extension 'gigagan_kernels_C': nvcc fell over$"):
            chosen("attention", "cuda", device="cuda", dtype=torch.float16)
    assert len(compiles) == 1
    # CPU tensors and float64 are refused before anything compiles.
    monkeypatch.setattr(cuda_extension, "_failure", None)
    with pytest.raises(backend.BackendUnavailableError, match="needs CUDA tensors"):
        chosen("attention", "cuda")
    with pytest.raises(backend.BackendUnavailableError, match="not float64"):
        chosen("attention", "cuda", device="cuda", dtype=torch.float64)
    assert len(compiles) == 1


def test_a_load_runs_the_registrations_that_were_waiting(fresh_extension_state, monkeypatch):
    """What the ops register for the CUDA ops (fused_op.register_cuda_op) runs once, as the extension loads, before
    load() returns; registered after the load, it runs at once."""
    import types
    ran = []
    cuda_extension.on_load(lambda: ran.append("before"))
    monkeypatch.setattr(cuda_extension, "built_library", lambda: "/nowhere/gigagan_kernels_C.so")
    monkeypatch.setattr(cuda_extension, "_import", lambda library: types.SimpleNamespace(__file__=library))
    assert ran == [] and cuda_extension.load().__file__ == "/nowhere/gigagan_kernels_C.so"
    assert ran == ["before"]
    cuda_extension.load()
    cuda_extension.on_load(lambda: ran.append("after"))
    assert ran == ["before", "after"]


def test_importing_the_ops_compiles_and_loads_nothing():
    code = ("import sys, gigagan_kernels, gigagan_kernels.nn\n"
            "from gigagan_kernels import cuda_extension\n"
            "cuda_extension._compile = None  # a compile would raise\n"
            "print(cuda_extension._module, cuda_extension._checked, 'gigagan_kernels._C' in sys.modules,\n"
            "      'torch._dynamo' in sys.modules, 'triton' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    # Nor does it import torch._dynamo or Triton (1.5 s more at every start; Triton aborts under AddressSanitizer).
    assert proc.returncode == 0 and proc.stdout.split() == ["None", "False", "False", "False", "False"], \
        proc.stderr[-2000:]


def test_auto_decides_alike_under_torch_compile(tmp_path):
    """torch.compile(fullgraph=True) traces the dispatcher, the extension's lookup included, on a first call in a
    fresh process: it neither breaks the graph nor compiles the extension."""
    code = textwrap.dedent("""
        import torch
        from gigagan_kernels import backend, cuda_extension
        cuda_extension._compile = None  # a compile would raise

        from tests.test_backend import _call
        from gigagan_kernels import dispatcher
        call = _call("attention", device="cuda")

        @torch.compile(fullgraph=True, backend="eager")
        def pick(x):
            return x + (1 if dispatcher.choose("attention", "auto", call).name == "cuda" else 2)

        print(pick(torch.zeros(1)).item(), cuda_extension._module)
    """)
    env = dict(os.environ, **{cuda_extension.CACHE_ENV: str(tmp_path / "empty")})
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.split() == ["2.0", "None"], proc.stderr[-3000:]


def test_the_toolchain_problem_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert cuda_extension.toolchain_problem() == f"torch {torch.__version__} is a CPU-only build"
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no_toolkit"))
    assert cuda_extension.toolchain_problem() == "no nvcc found (install the CUDA toolkit, or set CUDA_HOME)"
    nvcc = tmp_path / "toolkit" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "toolkit"))
    monkeypatch.setattr(cuda_extension, "_ninja_dir", lambda: None)
    assert cuda_extension.toolchain_problem() == "ninja is not installed (pip install ninja)"


def test_build_cuda_command_without_a_toolchain(fresh_extension_state, monkeypatch, capsys):
    """`python -m gigagan_kernels build-cuda` says in one line why it cannot compile; --skip-without-toolchain
    (what scripts/setup_env.sh passes) exits 0 there."""
    monkeypatch.setattr(cuda_extension, "toolchain_problem", lambda directory=None: "no nvcc found (set CUDA_HOME)")
    assert gigagan_kernels_main(["build-cuda"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "gigagan_kernels build-cuda: cannot compile the CUDA extension: no nvcc found (set CUDA_HOME)"
    assert gigagan_kernels_main(["build-cuda", "--skip-without-toolchain"]) == 0
    assert capsys.readouterr().err.strip() == "gigagan_kernels build-cuda: skipped: no nvcc found (set CUDA_HOME)"


def test_build_cuda_command_reports_an_existing_build(fresh_extension_state, monkeypatch, capsys):
    monkeypatch.setattr(cuda_extension, "_compile", None)       # would raise if called
    library = "/cache/cuda/x/gigagan_kernels_C.so"
    monkeypatch.setattr(cuda_extension, "built_library", lambda: library)
    assert gigagan_kernels_main(["build-cuda"]) == 0
    assert capsys.readouterr().out.strip() == f"gigagan_kernels build-cuda: up to date: {library}"
