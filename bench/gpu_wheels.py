"""Wheels for a CUDA machine without network: every package the tests and benchmarks need that its image lacks
(``gpu_machine_packages.txt``), with the whole dependency closure, for CPython 3.12 on manylinux x86-64.

    python bench/gpu_wheels.py fetch [--dir .whl]   # on a machine with network: download the closure
    python bench/gpu_wheels.py check [--dir .whl]   # is every Requires-Dist of every wheel satisfied?

Dependencies are read from each wheel's ``METADATA`` (``Requires-Dist``, markers evaluated for Linux, x86-64,
CPython 3.12, no extras); one version per package (two versions of one package stop ``pip install``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

HERE = Path(__file__).resolve().parent
WANTED = ["deap==1.4.4", "kornia==0.9.0"]  # the search (deap, imported by patchmix.search) and the optional peer
PYTHON = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
ENVIRONMENT = {**default_environment(), "python_version": PYTHON, "python_full_version": f"{PYTHON}.3",
               "implementation_name": "cpython", "platform_python_implementation": "CPython",
               "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
               "extra": ""}


def preinstalled() -> set[str]:
    names = set()
    for line in (HERE / "gpu_machine_packages.txt").read_text().splitlines():
        if not line.startswith("#"):
            names.update(canonicalize_name(n) for n in line.split())
    return names


def requirements(wheel: Path) -> list[Requirement]:
    """The wheel's ``Requires-Dist`` entries that apply on the CUDA machine."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in text.splitlines() if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(ENVIRONMENT)]


def wheels(folder: Path) -> dict[str, Path]:
    found = {}
    for w in sorted(folder.glob("*.whl")):
        name = canonicalize_name(parse_wheel_filename(w.name)[0])
        if name in found:
            raise SystemExit(f"two wheels of {name} in {folder}: {found[name].name}, {w.name}; keep one")
        found[name] = w
    return found


def fetch(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    have = preinstalled()
    queue = [Requirement(w) for w in WANTED]
    while queue:
        req = queue.pop(0)
        name = canonicalize_name(req.name)
        if name in have or name in wheels(folder):
            continue
        platforms = [a for p in PLATFORMS for a in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", PYTHON, "--implementation", "cp", *platforms, "-d", str(folder), str(req)],
                       check=True)
        wheel = wheels(folder)[name]
        print(f"fetched {wheel.name}")
        queue += requirements(wheel)


def check(folder: Path) -> list[str]:
    """Unmet requirements of the wheels in ``folder`` (none: the closure is complete)."""
    have, found = preinstalled(), wheels(folder)
    missing = []
    for wheel in found.values():
        for req in requirements(wheel):
            dep = canonicalize_name(req.name)
            if dep in have:
                continue
            if dep not in found:
                missing.append(f"{wheel.name} needs {req}, which is neither preinstalled nor in {folder}")
            elif req.specifier and parse_wheel_filename(found[dep].name)[1] not in req.specifier:
                missing.append(f"{wheel.name} needs {req}, {folder} holds {found[dep].name}")
    for want in WANTED:
        if canonicalize_name(Requirement(want).name) not in found:
            missing.append(f"{want} is not in {folder}")
    return missing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["fetch", "check"])
    ap.add_argument("--dir", type=Path, default=HERE.parent / ".whl")
    a = ap.parse_args(argv)
    if a.command == "fetch":
        fetch(a.dir)
    missing = check(a.dir)
    for m in missing:
        print("missing:", m)
    if not missing:
        print(f"{len(wheels(a.dir))} wheels in {a.dir}: every requirement is met on the CUDA machine")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
