"""Copy a finished GPU run into ``bench/results/<device>/`` for committing.

    python -m glsmamba.bench.store OUT_DIR [--dest bench/results]

Copies results.csv, ordered_scan_fused.csv, the PNGs, summary.md, sweep-*.json and the logs (*.log, env.txt).
The device folder name comes from the CSV's ``device`` column (``NVIDIA H100 80GB HBM3`` ->
``nvidia-h100-80gb-hbm3``). Files of an earlier run in that folder are replaced (git keeps the history).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from glsmamba.bench.harness import device_slug, read_rows

PATTERNS = ("results.csv", "ordered_scan_fused.csv", "*.png", "summary.md", "sweep-*.json", "*.log", "env.txt")


def store(src: Path, dest_root: Path) -> Path:
    """Copy the run in ``src`` to ``dest_root/<device slug>/``; returns that folder."""
    csv_path = src / "results.csv"
    if not csv_path.exists():
        raise FileNotFoundError(f"{csv_path} does not exist (run the sweep first)")
    rows = read_rows(csv_path)
    devices = {r["device"] for r in rows if r["device_kind"] == "cuda"} or {r["device"] for r in rows}
    if len(devices) != 1:
        raise ValueError(f"{csv_path} mixes devices {sorted(devices)}; store one device per folder")
    dest = dest_root / device_slug(devices.pop())
    if dest.exists():
        for old in dest.iterdir():
            if old.is_file():
                old.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    for pattern in PATTERNS:
        for f in sorted(src.glob(pattern)):
            shutil.copy2(f, dest / f.name)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="the folder bench/gpu.sh (or the sweep) wrote")
    p.add_argument("--dest", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    dest = store(args.src, args.dest)
    print(f"stored {len(list(dest.iterdir()))} files in {dest}; commit them with: git add {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
