"""Import contracts (pyproject.toml ``[tool.importlinter]``), checked with import-linter on the installed layout.

The repository keeps its packages in top-level folders that install under one namespace (``package-dir``), which
import-linter cannot walk in place; the test lays the sources out as they install (``glsmamba/kernels/...``) in a
temporary folder and runs ``lint-imports`` there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml with tomllib")
pytest.importorskip("importlinter", reason="import-linter is in the test extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[1]


def installed_layout(dest: Path) -> Path:
    """Copy every package's ``.py`` files to ``dest`` as the wheel lays them out; returns ``dest``."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for name, folder in mapping.items():
        src = ROOT / folder
        target = dest.joinpath(*name.split("."))
        for f in src.rglob("*.py"):
            rel = f.relative_to(src)
            if name == "glsmamba" and rel.parts[0] in {n.split(".")[1] for n in mapping if n != "glsmamba"}:
                continue
            if not (f.parent / "__init__.py").exists():
                continue  # not part of a package (scripts under results/, ...)
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, out)
    return dest


def test_import_contracts_hold(tmp_path):
    tree = installed_layout(tmp_path / "site")
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "lint-imports not found (pip install import-linter)"
    proc = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tree,
                          env={"PYTHONPATH": str(tree), "PATH": str(Path(sys.executable).parent)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "KEPT" in proc.stdout and "BROKEN" not in proc.stdout


def test_a_broken_contract_is_reported(tmp_path):
    """The check can fail: a reference module importing the model breaks the contracts."""
    tree = installed_layout(tmp_path / "site")
    bad = tree / "glsmamba" / "reference" / "space_time.py"
    bad.write_text(bad.read_text() + "\nfrom glsmamba.model import backend  # noqa\n")
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    proc = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tree,
                          env={"PYTHONPATH": str(tree), "PATH": str(Path(sys.executable).parent)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "BROKEN" in proc.stdout
