"""The package as pip installs it: the ops need only torch, triton and numpy; the model and trainer name the
extra that installs what they miss."""
import os
import re
import subprocess
import sys
import textwrap
import tomllib

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


@pytest.mark.parametrize("module, package", [("open_clip", "open_clip_torch"), ("safetensors", "safetensors"),
                                             ("PIL", "pillow")])
def test_the_model_names_the_extra_it_misses(module, package):
    proc = run_blocked([module], "import gigagan")
    assert proc.returncode != 0
    assert f"needs {package}, which is not installed: pip install 'gigagan-kernels[train]'" in proc.stderr


def test_a_missing_plotting_package_names_its_extra():
    code = ("from gigagan.images import plot_losses\n"
            "try:\n    plot_losses('log.jsonl', 'loss.png')\n"
            "except ImportError as e:\n    print('ImportError:', e)\n")
    proc = run_blocked(["matplotlib"], code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ImportError: the loss plot needs matplotlib, which is not installed: pip install 'gigagan-kernels[train]'" \
        in proc.stdout


def test_every_optional_package_is_in_its_extra():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    from gigagan.extras import PACKAGES
    extras = project["optional-dependencies"]
    for module, (package, extra) in PACKAGES.items():
        names = [req.split(">")[0].split("=")[0].split("[")[0].strip().lower() for req in extras[extra]]
        assert package.lower() in names, (module, package, extra, extras[extra])
    assert set(project["dependencies"]) == {"torch>=2.11", "triton>=3.6", "numpy"}
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
    assert "attention self_4096_masked" in out and "adaptive_modconv2d lowres_8x8" in out
    from gigagan_kernels import backend
    if backend.cuda_extension_ops() is not None:
        from gigagan_kernels import _C
        info = _C.build_info()
        assert info["cuda_archs"] == "8.0;9.0" and info["cuda_runtime_built"] == torch.version.cuda
        assert re.search(r"^  cuda_archs +8\.0;9\.0$", out, re.M)
    else:
        assert "gigagan_kernels._C" in out and "not built" in out


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
