"""Packaging: one import namespace (``glsmamba``) mapped onto the repository's top-level folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml with tomllib")

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed():
    cfg = _setuptools_config()
    listed, mapping = set(cfg["packages"]), cfg["package-dir"]
    found = set()
    for name, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found == listed, f"missing from pyproject: {sorted(found - listed)}; stale: {sorted(listed - found)}"


def test_console_script_is_the_glsmamba_cli():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"glsmamba": "glsmamba.cli:main"}


def test_wheel_installs_only_the_glsmamba_namespace(tmp_path):
    """The built wheel holds one top-level package, so ``import model`` cannot resolve to this project."""
    src = tmp_path / "src"  # a copy, so the build leaves no build/ folder in the repository
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, src / name)
    for folder in set(_setuptools_config()["package-dir"].values()):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "results"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip()[-300:]}")
    (wheel,) = tmp_path.glob("glsmamba-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"glsmamba"}
    for sub in ("kernels/selective_scan.py", "reference/selective_scan.py", "reference/_cpu_kernels.cpp",
                "model/glsmamba.py", "vhpe/codec.py", "bench/harness.py", "cli.py", "__main__.py"):
        assert f"glsmamba/{sub}" in names, sub


def test_python_dash_m_glsmamba_lists_every_command():
    from glsmamba.cli import COMMANDS

    proc = subprocess.run([sys.executable, "-m", "glsmamba", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in COMMANDS:
        assert name in proc.stdout
