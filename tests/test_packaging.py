"""Packaging: what a bare ``pip install patchmix`` (torch and numpy only) can do, the extras' one-line errors, the
extension's refusal of a torch it was not built against, one version, and an sdist that builds and installs."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import patchmix
from patchmix._optional import MissingExtraError, missing_extra, require
from patchmix.errors import PatchmixError
from patchmix.ops import _extension

ROOT = Path(__file__).resolve().parents[1]

#: The optional dependencies (every extra's packages): none of them is imported by the light paths.
OPTIONAL = ("deap", "matplotlib", "tqdm", "sklearn", "scipy", "cv2", "safetensors", "timm", "kornia", "mlxtend")

# A subprocess prelude that makes every optional module unimportable, as in an environment where only the core
# requirements are installed (torch's own optional imports of them, e.g. torch.hub's tqdm, fall back as there).
BLOCK = f"""
import sys
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {OPTIONAL!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
sys.meta_path.insert(0, _Blocker())
"""


def _python(code: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)


def test_the_core_runs_without_the_optional_dependencies():
    """``import patchmix``, the ops, ``Mix``, the paper's mixers, ``GuidedPatchMix`` and ``PatchMixLoss`` need
    only torch and numpy."""
    r = _python(BLOCK + """
import numpy as np, torch
import patchmix
from patchmix.models import create_model
from patchmix.search import Policy
x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 4  # every class: the guided pool needs them
mixed, lam = patchmix.ops.grid_mix(x, torch.rand(8, 4, 4) < 0.5, torch.arange(8), torch.arange(8).flip(0))
assert mixed.shape == x.shape and lam.shape == (8,)
model = create_model("small_cnn", num_classes=4, grid_size=4)
loss_fn = patchmix.PatchMixLoss()
for mixer in (patchmix.Mix(patchmix_alpha=1.0, grid_size=4, num_classes=4), patchmix.RandomPatchMix(grid_size=4)):
    batch = mixer(x, y)
    loss_fn(model(batch.images), batch).backward()
policy = Policy([[0, 1], [2, 3]], np.random.default_rng(0).random((2, 4, 4)) < 0.5, ["a", "b", "c", "d"], 4)
batch = patchmix.GuidedPatchMix(policy, y)(x, 4)
assert batch.images.shape == (4, 3, 16, 16)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {OPTIONAL!r})
assert not loaded, loaded
print("ok")
""".replace("{OPTIONAL!r}", repr(OPTIONAL)))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_the_search_without_deap_names_the_extra():
    r = _python(BLOCK + """
from patchmix.search import search
""")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "MissingExtraError" in last and "deap" in last and "pip install 'patchmix[search]'" in last, r.stderr


def test_the_cli_without_the_workflow_extra_says_so_in_one_line(tmp_path):
    """``patchmix run`` needs scikit-learn for its default data: without it, exit 2 and one line naming the extra
    (the CLI prints a :class:`MissingExtraError` as it prints every ``PatchmixError``)."""
    r = _python(BLOCK + f"""
from patchmix.cli import main
sys.exit(main(["train", "--method", "base", "--epochs", "1", "--out", {str(tmp_path / "run")!r}]))
""")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "scikit-learn" in lines[0] and "pip install 'patchmix[workflow]'" in lines[0], lines


def test_require_names_the_distribution_and_the_extra():
    with pytest.raises(MissingExtraError, match=re.escape("the test needs not_installed_anywhere, which is not "
                                                          "installed: pip install 'patchmix[workflow]'")):
        require("not_installed_anywhere", "workflow", "the test")
    err = missing_extra("cv2", "localization", "the localization")
    assert isinstance(err, ImportError) and isinstance(err, PatchmixError) and "opencv-python-headless" in str(err)
    assert require("math", "search", "the test").sqrt(4.0) == 2.0


def test_an_extension_built_against_another_torch_is_refused_in_one_line(tmp_path):
    """The package's copy with ``_C.torch_version`` saying another torch: the extension stays unloaded, one warning
    line names both versions, ``backends()`` says why, and the references serve the CPU."""
    import shutil

    import torch

    shutil.copytree(ROOT / "patchmix", tmp_path / "patchmix", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "patchmix" / "_C.torch_version").write_text("2.11.0+cpu\n")
    r = subprocess.run([sys.executable, "-W", "always", "-c", """
import torch, patchmix
info = patchmix.backends()
print(info["build"]["reason"])
assert info["ops"]["grid_mix"]["cpu"].startswith("reference"), info
assert "patchmix._C" not in __import__("sys").modules
out, lam = patchmix.ops.grid_mix(torch.rand(2, 1, 4, 4), torch.rand(2, 2, 2) < 0.5, None, torch.tensor([1, 0]))
"""], capture_output=True, text=True, cwd=tmp_path, timeout=180,
                       env=dict(os.environ, PYTHONPATH=str(tmp_path), PATCHMIX_DISABLE_TRITON="1"))
    assert r.returncode == 0, r.stderr
    line = f"patchmix._C was built against torch 2.11.0+cpu, but torch {torch.__version__} is installed"
    assert line in r.stdout
    warned = [w for w in r.stderr.splitlines() if "RuntimeWarning" in w]
    assert len(warned) == 1 and line in warned[0], r.stderr


def test_torch_mismatch_compares_the_full_version():
    assert _extension.torch_mismatch("2.13.0+cpu\n", "2.13.0+cpu") is None
    for built, installed in (("2.13.0+cpu", "2.13.0+cu128"), ("2.12.1", "2.13.0")):
        line = _extension.torch_mismatch(built, installed)
        assert f"torch {built}" in line and f"torch {installed}" in line and "\n" not in line


def test_one_version():
    """The version is written once, in ``patchmix/_version.py``; pyproject reads it (setuptools' dynamic
    version) and ``patchmix.__version__`` is it."""
    project = pytest.importorskip("tomllib").loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "patchmix._version.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", patchmix.__version__)


def test_all_names_every_other_extra():
    extras = pytest.importorskip("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = re.fullmatch(r"patchmix\[(.*)\]", extras["all"][0]).group(1).split(",")
    assert len(extras["all"]) == 1 and sorted(named) == sorted(set(extras) - {"all", "test"})


def _site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@pytest.mark.slow
def test_the_sdist_builds_installs_and_loads_the_cpp_kernels(tmp_path):
    """Build the sdist (setuptools' PEP 517 hook, as ``python -m build --sdist`` calls it), install it with
    ``--no-build-isolation`` into a fresh venv that sees this environment's torch through a ``.pth`` file (not
    ``--system-site-packages``, and not the editable install of this tree), import it from outside the source tree
    and check that the C++ kernels serve the CPU and that the wheel pins torch to the version it compiled against."""
    import tarfile

    import torch

    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-c", f"import setuptools.build_meta as b; b.build_sdist({str(dist)!r})"],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    (sdist,) = dist.glob("patchmix-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("csrc/common.h", "csrc/python/module.cpp", "kernels/grid_mix.py", "CMakeLists.txt", "LICENSE",
                   "README.md", "setup.py", "pyproject.toml", "patchmix/py.typed", "patchmix/_version.py"):
        assert needed in names, f"the sdist lacks {needed}"
    assert not [n for n in names if n.endswith((".so", ".torch_version", ".pyc"))], names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    (_site_packages(python) / "outer.pth").write_text(f"{_site_packages(Path(sys.executable))}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PATCHMIX_DISABLE_EXTENSION")}
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-build-isolation", str(sdist)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([str(python), "-W", "error::RuntimeWarning", "-c", """
import importlib.metadata as md, json, patchmix
info = patchmix.backends()
print(json.dumps({"file": patchmix.__file__, "version": patchmix.__version__, "ops": info["ops"],
                  "torch": info["build"].get("torch"), "requires": md.requires("patchmix")}))
"""], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["file"].startswith(str(venv)) and got["version"] == patchmix.__version__
    for op in ("grid_mix", "patchmix_cross_entropy", "population_fitness"):
        assert got["ops"][op]["cpu"] == "C++ (patchmix._C)", got["ops"]
    major, minor = torch.__version__.split(".")[:2]
    assert f"torch<{major}.{int(minor) + 1},>={major}.{minor}" in got["requires"], got["requires"]
