"""Acceptance: ``glsmamba synth`` -> ``train`` (tiny, reference backend, CPU) -> ``eval`` reaches PoseTrack-style
Total mAP >= 70 on the synthetic val split, within a few minutes on 2 cores.

Sizing (measured on the shared 2-core machine, 2026-11-27): 12 videos x 16 frames (9 train / 3 val, 192 / ~70
clips), 64 x 48 crops (16 x 12 heatmaps) with sigma 1, lr 3e-3 (/10 for the last epoch), batch 8, 4 epochs,
mild augmentation (scale 0.25, no rotation, no flip: the synthetic figures are colour-coded left/right). About
7 clips/s single-threaded; the val mAP passes 70 after 2-3 epochs; this test measured 87.9 in 108 s in total.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from glsmamba.cli import main


@pytest.fixture(autouse=True)
def _restore_threads():
    # the commands run single-threaded (--threads 1: on a shared 2-core machine intra-op threads of these small
    # tensors mostly add contention); the setting is process-wide, so restore it afterwards
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_synth_train_eval_reaches_70_map(tmp_path, capsys):
    t0 = time.perf_counter()
    data, run = tmp_path / "synth", tmp_path / "run"
    assert main(["synth", str(data), "--videos", "12", "--frames", "16", "--val", "3", "--width", "128",
                 "--height", "96", "--seed", "1"]) == 0
    assert main(["train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--backend", "reference",
                 "--input-size", "64x48", "--sigma", "1", "--epochs", "4", "--lr", "3e-3", "--lr-steps", "3",
                 "--batch-size", "8", "--rot-factor", "0", "--scale-factor", "0.25", "--flip-prob", "0",
                 "--threads", "1", "--seed", "0", "--device", "cpu"]) == 0
    t_train = time.perf_counter() - t0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "final.pth"), "--data", str(data), "--threads", "1",
                 "--device", "cpu", "--format", "json"]) == 0
    res = json.loads(capsys.readouterr().out)
    elapsed = time.perf_counter() - t0
    assert res["boxes"] == "gt" and res["flip"] is False and res["split"] == "val"
    assert res["input_size"] == [64, 48] and res["num_frames"] == 5
    assert res["metrics"]["Total"] >= 70.0, res["metrics"]
    # the files the eval wrote: PoseTrack18 predictions for every val video and the settings that produced them
    saved = json.loads((run / "eval-val-gt" / "results.json").read_text())
    assert saved["metrics"]["Total"] == res["metrics"]["Total"] and saved["checkpoint"].endswith("final.pth")
    assert len(list((run / "eval-val-gt" / "predictions").glob("*.json"))) == 3
    capsys.readouterr()
    assert main(["eval", "--metric", "posetrack", "--gt", str(data / "annotations" / "val"), "--pred",
                 str(run / "eval-val-gt" / "predictions"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["Total"] == pytest.approx(res["metrics"]["Total"])
    with capsys.disabled():  # shown with pytest -s
        print(f"\nsynth+train {t_train:.0f}s, total {elapsed:.0f}s, val Total mAP {res['metrics']['Total']:.1f}, "
              f"occluded-joint AP {res['occluded']['occluded']['AP']:.1f}")
