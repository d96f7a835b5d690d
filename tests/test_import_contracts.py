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


def lint_imports() -> str | None:
    """The ``lint-imports`` script: beside this interpreter, beside the base interpreter of a venv that uses the
    system site packages (where a system-wide import-linter put it), else on PATH (a pyenv shim there needs bash,
    which the test's PATH lacks)."""
    here = Path(sys.executable)
    for folder in (here.parent, here.resolve().parent):
        found = shutil.which("lint-imports", path=str(folder))
        if found:
            return found
    return shutil.which("lint-imports")


def test_import_contracts_hold(tmp_path):
    tree = installed_layout(tmp_path / "site")
    lint = lint_imports()
    assert lint, "lint-imports not found (pip install import-linter)"
    proc = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tree,
                          env={"PYTHONPATH": str(tree), "PATH": str(Path(sys.executable).parent)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "KEPT" in proc.stdout and "BROKEN" not in proc.stdout


@pytest.mark.parametrize("module,line", [
    ("reference/space_time.py", "from glsmamba.model import backend"),  # the references know no model
    ("verify/cases.py", "import glsmamba.vhpe"),  # verify and vhpe are independent
    ("model/blocks.py", "import glsmamba.verify.tolerances"),  # verify sits above the model
], ids=["reference->model", "verify->vhpe", "model->verify"])
def test_a_broken_contract_is_reported(tmp_path, module, line):
    """The check can fail: an import against the layers breaks the contracts."""
    tree = installed_layout(tmp_path / "site")
    bad = tree / "glsmamba" / module
    bad.write_text(bad.read_text() + f"\n{line}  # noqa\n")
    lint = lint_imports()
    proc = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tree,
                          env={"PYTHONPATH": str(tree), "PATH": str(Path(sys.executable).parent)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "BROKEN" in proc.stdout
