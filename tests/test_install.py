"""The package as pip installs it: the ops need only torch, triton, numpy and ninja; the model and trainer give a
pip command that installs what they miss. The sdist and wheel carry the CUDA sources, the licence and py.typed."""
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
import zipfile

import pytest
import torch

from tests.helpers import ROOT


def run_blocked(blocked, code):
    """Run code in a fresh interpreter in which the modules `blocked` cannot be imported."""
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_ops_import_without_any_extra():
    from gigagan.extras import PACKAGES
    proc = run_blocked(PACKAGES, "import gigagan_kernels, gigagan_kernels.nn; print(gigagan_kernels.attention)")
    assert proc.returncode == 0, proc.stderr[-2000:]


# What a missing extra's message tells a user of this checkout to run: no package index has gigagan-kernels.
TRAIN_COMMAND = f"pip install -e {shlex.quote(ROOT + '[train]')}"


@pytest.mark.parametrize("module, package", [("open_clip", "open_clip_torch"), ("safetensors", "safetensors"),
                                             ("PIL", "pillow")])
def test_the_model_names_the_extra_it_misses(module, package):
    proc = run_blocked([module], "import gigagan")
    assert proc.returncode != 0
    assert f"needs {package}, which is not installed: {TRAIN_COMMAND}\n" in proc.stderr


def test_the_install_command_works_from_a_checkout_and_from_a_wheel(monkeypatch):
    """From a checkout: the extra of that checkout, by path, so it works from any folder. From an installed wheel
    (no checkout): the package itself."""
    from gigagan import extras
    assert extras.checkout_root() == ROOT and os.path.isfile(os.path.join(ROOT, "pyproject.toml"))
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        assert "train" in tomllib.load(f)["project"]["optional-dependencies"]
    assert extras.install_command("open_clip_torch", "train") == TRAIN_COMMAND
    monkeypatch.setattr(extras, "checkout_root", lambda: None)
    assert extras.install_command("scipy", "eval") == "pip install scipy (the [eval] extra of gigagan-kernels)"


def test_a_missing_plotting_package_names_its_extra():
    code = ("from gigagan.images import plot_losses\n"
            "try:\n    plot_losses('log.jsonl', 'loss.png')\n"
            "except ImportError as e:\n    print('ImportError:', e)\n")
    proc = run_blocked(["matplotlib"], code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"ImportError: the loss plot needs matplotlib, which is not installed: {TRAIN_COMMAND}\n" in proc.stdout


def test_every_optional_package_is_in_its_extra():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    from gigagan.extras import PACKAGES
    extras = project["optional-dependencies"]
    for module, (package, extra) in PACKAGES.items():
        names = [req.split(">")[0].split("=")[0].split("[")[0].strip().lower() for req in extras[extra]]
        assert package.lower() in names, (module, package, extra, extras[extra])
    assert set(project["dependencies"]) == {"torch>=2.11", "triton>=3.6", "numpy", "ninja"}
    assert project["scripts"]["gigagan"] == "gigagan.__main__:main"


def test_environment_report():
    """`python -m gigagan_kernels` names every backend of both ops, auto's pick per benchmark shape, and the
    extension's build (read from the extension through pybind11) or why there is none."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "gigagan_kernels"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for op in ("adaptive_modconv2d", "attention"):
        for impl in ("ref", "torch", "triton", "cuda"):
            assert re.search(rf"^  {op} {impl} +(available|unavailable: \S.+)$", out, re.M), (op, impl)
    assert re.search(r"^  attention triton +" + ("available" if torch.cuda.is_available() else
                                                 "unavailable: Triton kernels need CUDA tensors"), out, re.M)
    # auto's untimed pick per shape and mode, each labelled: measured (by which committed file) or predicted; no
    # committed row measured today's kernels, so each pick is a prediction.
    for op_shape in ("adaptive_modconv2d lowres_8x8", "attention self_4096_masked"):
        for mode in ("fwd", "fwd+bwd"):
            assert re.search(rf"^  {op_shape} {re.escape(mode)} +\S+ [0-9.]+ ms \((predicted|measured \(\S+\.csv: "
                             rf"[0-9.]+ ms\))\)$", out, re.M), (op_shape, mode)
    assert re.search(r"^  adaptive_modconv2d cuda +.*\(opt-in, unmeasured\)$", out, re.M)
    assert re.search(r"^  autotune +off \(GIGAGAN_KERNELS_AUTOTUNE\); decisions in ", out, re.M)   # the suite's setting
    from gigagan_kernels import cuda_extension
    module = cuda_extension.load()                       # never compiles, as the report does not
    if module is not None:
        info, archs = module.build_info(), cuda_extension.arch_list()
        assert info["cuda_archs"] == archs and info["cuda_runtime_built"] == torch.version.cuda
        assert re.search(rf"^  cuda_archs +{re.escape(archs)}$", out, re.M)
        assert re.search(r"^  compiled +\S+ in \d+ s$", out, re.M)
    else:
        assert re.search(r"^  gigagan_kernels\._C +the CUDA extension gigagan_kernels\._C is not built", out, re.M)


def test_tensorboard_missing_degrades_to_a_warning(tmp_path):
    """--tensorboard without the tensorboard package: a warning, and the run finishes."""
    code = textwrap.dedent(f"""
        import warnings
        from gigagan.training import TrainConfig, Trainer
        cfg = TrainConfig(preset="tiny", steps=1, batch_size=2, out={str(tmp_path / "run")!r}, impl="ref",
                          sample_every=0, ckpt_every=1, progress=False, device="cpu", tensorboard=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = Trainer(cfg).fit()
        print("step", result["step"], any("--tensorboard: no TensorBoard logs" in str(w.message) for w in caught))
    """)
    proc = run_blocked(["tensorboard", "torch.utils.tensorboard"], code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step 1 True" in proc.stdout


def test_the_packages_do_not_import_the_benchmarks():
    proc = run_blocked([], "import sys, gigagan, gigagan.cli, gigagan.training, gigagan_kernels.nn\n"
                           "print(sorted(m for m in sys.modules if m.split('.')[0] == 'benchmarks'))")
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]


def test_bench_without_a_checkout_says_so(monkeypatch, capsys):
    from gigagan import cli
    from gigagan.__main__ import main
    monkeypatch.setattr(cli, "_checkout_root", lambda: None)
    assert main(["bench"]) == 2
    err = capsys.readouterr().err.strip()
    assert "a checkout of the repository" in err and len(err.splitlines()) == 1


def test_the_version_is_one_fact_that_the_package_prints():
    import gigagan_kernels
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        config = tomllib.load(f)
    assert "version" not in config["project"] and "version" in config["project"]["dynamic"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "gigagan_kernels.__version__"}
    proc = subprocess.run([sys.executable, "-m", "gigagan_kernels", "--version"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout == f"gigagan_kernels {gigagan_kernels.__version__}\n", proc.stderr
    with open(os.path.join(ROOT, "CHANGELOG.md")) as f:
        assert f"\n## {gigagan_kernels.__version__} " in f.read()


def test_licence_and_typing_markers():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    with open(os.path.join(ROOT, "LICENSE")) as f:
        text = f.read()
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the gigagan-kernels authors" in text
    for package in ("gigagan_kernels", "gigagan"):
        assert os.path.isfile(os.path.join(ROOT, package, "py.typed"))


def _pins(path):
    """{name: version} of the `name==version` lines of a requirements file."""
    with open(os.path.join(ROOT, path)) as f:
        pairs = (line.split("#")[0].strip().split("==") for line in f)
        return {p[0].lower(): p[1] for p in pairs if len(p) == 2}


def test_the_cpu_only_torch_is_the_pinned_release():
    """requirements-cpu.txt swaps in the CPU-only builds (local version +cpu) of the torch and torchvision releases
    that requirements.txt pins; pip counts 2.14.1+cpu as satisfying ==2.14.1, so the two files agree."""
    pinned, cpu = _pins("requirements.txt"), _pins("requirements-cpu.txt")
    assert set(cpu) == {"torch", "torchvision"}
    for name, version in cpu.items():
        assert version == pinned[name] + "+cpu", (name, version, pinned[name])
    with open(os.path.join(ROOT, "requirements-cpu.txt")) as f:
        assert "--extra-index-url https://download.pytorch.org/whl/cpu\n" in f.read()


def test_a_bad_build_switch_names_the_variable(tmp_path):
    env = dict(os.environ, GIGAGAN_KERNELS_BUILD_CUDA="yes")
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "GIGAGAN_KERNELS_BUILD_CUDA='yes': expected 1 (compile the CUDA extension now) or 0 / unset" in proc.stderr


CSRC = sorted(name for name in os.listdir(os.path.join(ROOT, "csrc")) if name.endswith((".cpp", ".cu", ".h", ".cuh")))


def test_the_wheel_and_sdist_carry_the_cuda_sources_and_install(tmp_path):
    """`python -m build` (sdist, then the wheel from the sdist) ships csrc/ as gigagan_kernels/csrc, the licence
    and py.typed; the wheel installs into a fresh venv, imports there, and finds the build folder that a checkout
    fills: an installed user compiles the same sources once, and never a second time."""
    pytest.importorskip("build", reason="`python -m build` needs the build package (requirements.txt)")
    dist = tmp_path / "dist"
    # --no-isolation: the build runs on this environment's setuptools, so the test downloads nothing.
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), ROOT],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import gigagan_kernels
    version = gigagan_kernels.__version__
    wheel = dist / f"gigagan_kernels-{version}-py3-none-any.whl"
    sdist = dist / f"gigagan_kernels-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), os.listdir(dist)
    import tarfile
    with tarfile.open(sdist) as tar:
        names = set(tar.getnames())
    top = f"gigagan_kernels-{version}"
    assert {f"{top}/csrc/{name}" for name in CSRC} <= names
    assert {f"{top}/LICENSE", f"{top}/CHANGELOG.md", f"{top}/gigagan/py.typed"} <= names
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(f"gigagan_kernels-{version}.dist-info/METADATA").decode()
    assert {f"gigagan_kernels/csrc/{name}" for name in CSRC} <= names
    assert {"gigagan_kernels/py.typed", "gigagan/py.typed", f"gigagan_kernels-{version}.dist-info/licenses/LICENSE",
            "gigagan_kernels/cuda_extension.py"} <= names
    assert not any(n.startswith(("benchmarks/", "tests/")) or n.endswith(".so") for n in names)
    assert "License-Expression: MIT" in metadata and "Requires-Dist: ninja" in metadata

    # A fresh venv, as on a machine whose system python has torch: --system-site-packages. Here the system
    # python has none, so a .pth lends it this environment's packages (torch, triton); the .pth files in there,
    # this checkout's editable install among them, are not read, so `gigagan_kernels` is the wheel's
    # (--ignore-installed: pip would otherwise take that editable install, of the same version, as the wheel).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True,
                   timeout=300)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True,
                          capture_output=True, text=True).stdout.strip()
    import site as this_site
    with open(os.path.join(site, "lent.pth"), "w") as f:
        f.write("\n".join(this_site.getsitepackages()) + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                           "--no-build-isolation", "--ignore-installed", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check = ("import gigagan, gigagan_kernels, gigagan_kernels.nn\n"
             "from gigagan_kernels import cuda_extension\n"
             "print(gigagan_kernels.__file__)\nprint(gigagan.__file__)\n"
             "print(cuda_extension.source_dir())\nprint(cuda_extension.build_dir())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    proc = subprocess.run([python, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kernels_file, gigagan_file, sources, folder = proc.stdout.split()
    for path in (kernels_file, gigagan_file, sources):
        assert path.startswith(site), (path, site)
    assert set(CSRC) <= set(os.listdir(sources))
    from gigagan_kernels import cuda_extension
    assert folder == cuda_extension.build_dir()
    proc = subprocess.run([python, "-m", "gigagan_kernels", "--version"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout == f"gigagan_kernels {version}\n", proc.stderr[-2000:]
