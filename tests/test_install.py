"""The package as pip installs it: the ops need only torch, triton and numpy; the model and trainer name the
extra that installs what they miss."""
import os
import subprocess
import sys
import tomllib

import pytest

from helpers import ROOT


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
