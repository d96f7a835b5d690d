"""The run folder's records: ``steps.csv`` and ``metrics.csv`` (appended as training goes, truncated on resume),
``config.json``, and the ``loss.png`` drawn from the CSVs."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def start_run_folder(out: Path, doc: dict[str, Any], step: int, epoch: int) -> None:
    """Create the run folder, write ``config.json`` (``doc``) and drop CSV rows after ``step`` / ``epoch`` (a
    resumed run logs its redone steps again)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
    truncate_csv(out / "steps.csv", "step", step)
    truncate_csv(out / "metrics.csv", "epoch", epoch)


def truncate_csv(path: Path, key: str, keep_upto: int) -> None:
    """Drop rows whose ``key`` column exceeds ``keep_upto`` (after a resume, redone steps are logged again)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        fields = rows[0].keys() if rows else None
    if fields is None:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(r for r in rows if int(float(r[key])) <= keep_upto)


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to a CSV file (with a header line when the file is new or empty)."""
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def plot_loss(run_dir: str | os.PathLike) -> Path | None:
    """Draw ``loss.png`` from ``steps.csv`` / ``metrics.csv`` of a run folder (None when there is nothing yet or
    matplotlib is not installed)."""
    run_dir = Path(run_dir)
    steps_path, epochs_path = run_dir / "steps.csv", run_dir / "metrics.csv"
    if not steps_path.is_file():
        return None
    try:
        import matplotlib
    except ImportError:  # the plot is a convenience: training does not need matplotlib
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(steps_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    step = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    epochs = []
    if epochs_path.is_file():
        with open(epochs_path, newline="") as f:
            epochs = list(csv.DictReader(f))
    has_val = any(r.get("val_map") not in (None, "") for r in epochs)
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(10 if has_val else 6, 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot(step, loss, lw=0.6, alpha=0.4, label="step loss")
    if len(loss) >= 5:
        k = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(step[k - 1:], smooth, lw=1.5, label=f"mean of {k} steps")
    if epochs:
        ax.plot([int(r["step"]) for r in epochs], [float(r["train_loss"]) for r in epochs], "o-",
                label="epoch mean")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("heatmap MSE loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(run_dir.name)
    if has_val:
        ax2 = axes[0, 1]
        pts = [(int(r["epoch"]), float(r["val_map"])) for r in epochs if r.get("val_map") not in (None, "")]
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("val PoseTrack mAP (GT boxes)")
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
