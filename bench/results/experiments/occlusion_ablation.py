"""Occlusion experiment on synthetic data: does temporal global-local modelling recover occluded joints?

Trains five variants of the ``tiny`` preset on the same ``glsmamba synth`` dataset (every video has a moving
occluder) and evaluates each on the val split with GT boxes, reporting the PoseTrack mAP and the same AP restricted
to the joints the synthetic ground truth marks as occluded (``glsmamba eval`` prints both):

* ``T5``        - tiny, 5-frame clips (full model: GSM with STS6D + STMM, then LRM);
* ``T1``        - the same network on 1-frame clips (no temporal context);
* ``T5-gsm``    - GSM blocks only (no LRM), 5 frames;
* ``T5-sum``    - STMM replaced by the plain sum of the scan directions, 5 frames;
* ``T5-lr``     - the trunk at 1/16 instead of 1/4 (GLSMamba-BLR in miniature: the encoder's features average-pooled
  4x4, 4 x 3 tokens per frame, heatmaps upsampled to 16 x 12; the same trainable parameters), 5 frames.

Usage (CPU; ``--parallel 2`` runs two trainings at a time, one thread each)::

    python bench/results/experiments/occlusion_ablation.py --work /tmp/occl --epochs 8 --seeds 0 1

Writes ``<name>.csv`` (one row per variant and seed), ``<name>.png`` (``--name``, default
``occlusion_ablation``) and ``runs/[<name>/]<variant>-s<seed>/{metrics.csv,loss.png,config.json,results.json}``
next to this file; the markdown reports (``occlusion_ablation.md``, ``resolution_ablation.md``) are written by hand
from them.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
VARIANTS = {
    "T5": [],
    "T1": ["--set", "num_frames=1"],
    "T5-gsm": ["--set", "num_lrm=0"],
    "T5-sum": ["--set", "merge=sum"],
    "T5-lr": ["--set", "feature_stride=16"],
}


def sh(cmd: list[str], log: Path | None = None) -> subprocess.Popen:
    print(" ".join(cmd), flush=True)
    out = open(log, "w") if log else None  # noqa: SIM115 - closed by the caller's wait
    return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT if out else None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="scratch folder (dataset, checkpoints)")
    p.add_argument("--videos", type=int, default=20)
    p.add_argument("--val", type=int, default=5)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--input-size", default="64x48")
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (one run per variant each)")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--name", default="occlusion_ablation",
                   help="stem of the CSV and plot written next to this file (default occlusion_ablation; the "
                        "resolution ablation: --variants T5 T5-lr --name resolution_ablation)")
    args = p.parse_args()
    work = Path(args.work)
    data = work / "data"
    py = [sys.executable, "-m", "glsmamba"]
    t_start = time.time()
    if not (data / "annotations").exists():
        sh(py + ["synth", str(data), "--videos", str(args.videos), "--val", str(args.val), "--frames",
                 str(args.frames), "--width", "128", "--height", "96", "--occluder-prob", "1.0", "--seed",
                 str(args.data_seed)]).wait()
    common = ["--data", str(data), "--preset", "tiny", "--input-size", args.input_size, "--sigma", str(args.sigma),
              "--epochs", str(args.epochs), "--lr", str(args.lr), "--lr-steps", str(args.epochs - 1),
              "--batch-size", str(args.batch_size), "--flip-prob", "0", "--rot-factor", "0", "--scale-factor", "0.25",
              "--threads", "1", "--log-every", "50"]
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    commands, timing = {}, {}
    queue = list(jobs)
    running: dict[tuple[str, int], tuple[subprocess.Popen, float]] = {}
    while queue or running:
        while queue and len(running) < args.parallel:
            v, seed = queue.pop(0)
            run = work / f"{v}-s{seed}"
            cmd = py + ["train", "--out", str(run), *common, "--seed", str(seed), *VARIANTS[v]]
            commands[v, seed] = cmd
            if (run / "final.pth").is_file():  # already trained (rerun of the script)
                cfg = json.loads((run / "config.json").read_text())
                if cfg["train"]["seed"] != seed or cfg["train"]["epochs"] != args.epochs:
                    print(f"{run} holds a different run; remove it", file=sys.stderr)
                    return 1
                continue
            run.mkdir(parents=True, exist_ok=True)
            running[v, seed] = (sh(cmd, work / f"{v}-s{seed}.log"), time.time())
        time.sleep(5)
        for key, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                if proc.returncode != 0:
                    print(f"{key} failed, see {work / f'{key[0]}-s{key[1]}.log'}", file=sys.stderr)
                    return 1
                timing[key] = time.time() - t0
                del running[key]
    rows = []
    for v, seed in jobs:
        run = work / f"{v}-s{seed}"
        out = run / "eval"
        if not (out / "results.json").is_file():
            ev = py + ["eval", "--checkpoint", str(run / "final.pth"), "--data", str(data), "--out", str(out),
                       "--threads", "2", "--format", "json"]
            if sh(ev).wait() != 0:
                return 1
        res = json.loads((out / "results.json").read_text())
        occ = res["occluded"]
        with open(run / "metrics.csv", newline="") as f:
            epochs = list(csv.DictReader(f))
        train_s = sum(float(r["time_s"]) for r in epochs)
        rows.append({
            "variant": v, "seed": seed, "flags": " ".join(VARIANTS[v]) or "-", "num_frames": res["num_frames"],
            "map_total": round(res["metrics"]["Total"], 2),
            "ap_occluded": round(occ["occluded"]["AP"], 2), "pckh_occluded": round(occ["occluded"]["PCKh"], 2),
            "ap_visible": round(occ["visible"]["AP"], 2), "pckh_visible": round(occ["visible"]["PCKh"], 2),
            "occluded_joints": occ["occluded"]["joints"], "visible_joints": occ["visible"]["joints"],
            "train_s": round(train_s, 1), "final_loss": epochs[-1]["train_loss"],
            "command": "glsmamba " + " ".join(commands[v, seed][3:]),
        })
        dst = HERE / "runs" / (f"{v}-s{seed}" if args.name == "occlusion_ablation" else f"{args.name}/{v}-s{seed}")
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.csv", "loss.png", "config.json"):
            shutil.copy(run / name, dst / name)
        shutil.copy(out / "results.json", dst / "results.json")
    with open(HERE / f"{args.name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, args.variants, HERE / f"{args.name}.png")
    print(json.dumps({"rows": rows, "total_wall_s": round(time.time() - t_start, 1)}, indent=1))
    return 0


def plot(rows: list[dict], variants: list[str], path: Path) -> None:
    """Bars: the mean over seeds; dots: the individual seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(variants))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for k, (key, label) in enumerate((("map_total", "PoseTrack mAP (all joints)"),
                                      ("ap_occluded", "AP, occluded joints"),
                                      ("ap_visible", "AP, visible joints"))):
        per = [[r[key] for r in rows if r["variant"] == v] for v in variants]
        pos = x + (k - 1) * 0.27
        bars = ax.bar(pos, [np.mean(p) for p in per], 0.27, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        for xi, p in zip(pos, per, strict=True):
            ax.plot([xi] * len(p), p, "k.", ms=3)
    ax.set_xticks(x, variants)
    ax.set_ylabel("AP (%)")
    ax.set_ylim(0, 105)
    n_seeds = len({r["seed"] for r in rows})
    ax.set_title(f"tiny on synthetic occlusion data (val, GT boxes; mean of {n_seeds} seed(s), dots = seeds)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
