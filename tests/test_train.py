"""Training loop pieces (loss, schedule, parameter groups, overrides), the run folder, kill-and-resume equality and
the reference-vs-Triton training step."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from glsmamba.cli import main
from glsmamba.model import GLSMambaConfig
from glsmamba.vhpe.synth import SynthConfig, make_dataset
from glsmamba.vhpe.train import TrainConfig, heatmap_loss, lr_at, param_groups, train_step
from tests.harness import assert_close

parse_overrides = GLSMambaConfig.parse_overrides  # the one --set parser

# small and fast: 32 x 24 crops (8 x 6 heatmaps), 3-frame clips
FAST = ["--preset", "tiny", "--set", "num_frames=3", "--input-size", "32x24", "--batch-size", "4", "--lr", "2e-3",
        "--flip-prob", "0", "--threads", "1", "--seed", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_ds")
    make_dataset(root, videos=3, frames=6, seed=5, val_videos=1, cfg=SynthConfig(width=128, height=96))
    return root


@pytest.fixture(autouse=True)
def _restore_threads():
    # the commands run here with --threads 1 (tiny tensors: on a shared 2-core machine intra-op threads only add
    # contention) and that setting is process-wide: restore it for the tests that follow
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------ pieces
def test_heatmap_loss_hand_values():
    pred = torch.zeros(1, 2, 2, 2)
    target = torch.zeros(1, 2, 2, 2)
    target[0, 0, 0, 0] = 1.0  # joint 0: one pixel off by 1
    target[0, 1] = 2.0  # joint 1: every pixel off by 2, but weight 0
    w = torch.tensor([[1.5, 0.0]])
    # 0.5 * mean over 8 values of ((pred - target) * w)^2 = 0.5 * (1.5^2) / 8
    assert heatmap_loss(pred, target, w).item() == pytest.approx(0.5 * 2.25 / 8)
    with pytest.raises(ValueError, match=r"weight must be \(B, J\)"):
        heatmap_loss(pred, target, torch.ones(2))
    with pytest.raises(ValueError, match="pred and target"):
        heatmap_loss(pred, target[:, :1], w)


def test_lr_schedule_is_the_papers_by_default():
    cfg = TrainConfig(data="d", out="o")
    assert (cfg.epochs, cfg.lr, cfg.lr_steps, cfg.lr_factor) == (20, 1e-4, (6, 12), 0.1)
    got = [lr_at(cfg, e, 0) for e in (0, 5, 6, 11, 12, 19)]
    assert got == pytest.approx([1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-6])
    warm = TrainConfig(data="d", out="o", lr=1.0, warmup_steps=4, lr_steps=())
    assert [lr_at(warm, 0, s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_param_groups_keep_ssm_and_norm_parameters_out_of_weight_decay():
    from glsmamba import model
    net = model.GLSMamba("tiny")
    decay, no_decay = param_groups(net, 0.05)
    names = {id(p): n for n, p in net.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    assert {"gsm.0.ssm.A_log", "gsm.0.ssm.D", "gsm.0.ssm.dt_bias", "embed.temporal", "gsm.0.norm1.weight",
            "head.final.bias"} <= nd
    assert {"gsm.0.in_proj.weight", "head.conv.weight", "encoder.stem.0.weight"} <= d
    assert len(d) + len(nd) == sum(1 for p in net.parameters() if p.requires_grad)


def test_parse_overrides_types_and_errors():
    got = parse_overrides(["num_frames=1", "merge=sum", "window=4x3", "freeze_encoder=false", "ffn_ratio=3"])
    assert got == {"num_frames": 1, "merge": "sum", "window": (4, 3), "freeze_encoder": False, "ffn_ratio": 3.0}
    with pytest.raises(ValueError, match="unknown model config field 'nope'"):
        parse_overrides(["nope=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["num_frames"])


def test_progress_line_without_a_terminal():
    import io

    from glsmamba.vhpe.progress import Progress

    buf = io.StringIO()
    p = Progress(5, "epoch 1/2", every=2, stream=buf)
    for n in range(1, 6):
        p.update(n, 4 * n, loss=0.25, lr=1e-3)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3  # steps 2, 4 and the last
    assert lines[0].startswith("epoch 1/2 [2/5] loss 0.25 lr 0.001 ") and " clips/s elapsed " in lines[0]
    assert lines[-1].startswith("epoch 1/2 [5/5]") and "eta 0m00s" in lines[-1]
    buf = io.StringIO()
    Progress(0, "demo", every=1, stream=buf, unit="frames").update(3, 3)
    assert buf.getvalue().startswith("demo [3] ") and "frames/s" in buf.getvalue() and "eta" not in buf.getvalue()


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="amp must be"):
        TrainConfig(data="d", out="o", amp="fp8")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        TrainConfig(data="d", out="o", batch_size=0)


# ------------------------------------------------------------------------------------------------ runs
def test_run_folder_and_kill_resume_equals_uninterrupted(data, tmp_path, capsys):
    """Run A trains 2 epochs; run B is 'killed' one step into epoch 2 and resumed: same final weights."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--data", str(data), "--out", str(a), "--epochs", "2", *FAST]) == 0
    err = capsys.readouterr().err
    assert "epoch 2/2 [" in err and "clips/s" in err and "loss" in err  # the progress line
    cfg = json.loads((a / "config.json").read_text())
    steps_per_epoch = cfg["steps_per_epoch"]
    assert cfg["model"]["num_frames"] == 3 and cfg["model"]["image_size"] == [32, 24] and steps_per_epoch >= 2
    for name in ("final.pth", "last.pth", "loss.png", "metrics.csv", "steps.csv",
                 "checkpoints/epoch_001.pth", "checkpoints/epoch_002.pth"):
        assert (a / name).is_file(), name
    epochs = _rows(a / "metrics.csv")
    assert [int(r["epoch"]) for r in epochs] == [1, 2] and float(epochs[1]["clips_per_s"]) > 0
    steps_a = _rows(a / "steps.csv")
    assert [int(r["step"]) for r in steps_a] == list(range(1, 2 * steps_per_epoch + 1))
    ckpt = torch.load(a / "last.pth", weights_only=True)
    tr = ckpt["extra"]["train"]
    assert tr["epoch"] == 2 and tr["step"] == 2 * steps_per_epoch and tr["optimizer"]["state"]

    # killed one step into epoch 2: only the epoch-1 checkpoint exists
    assert main(["train", "--data", str(data), "--out", str(b), "--epochs", "2", *FAST,
                 "--max-steps", str(steps_per_epoch + 1)]) == 0
    assert not (b / "final.pth").exists()
    assert torch.load(b / "last.pth", weights_only=True)["extra"]["train"]["epoch"] == 1
    assert main(["train", "--data", str(data), "--out", str(b), "--epochs", "2", *FAST, "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().err
    wa = torch.load(a / "final.pth", weights_only=True)["state_dict"]
    wb = torch.load(b / "final.pth", weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    steps_b = _rows(b / "steps.csv")  # the redone step is logged once
    assert [int(r["step"]) for r in steps_b] == [int(r["step"]) for r in steps_a]
    assert [r["loss"] for r in steps_b] == [r["loss"] for r in steps_a]

    # a different model cannot resume this run
    assert main(["train", "--data", str(data), "--out", str(b), "--epochs", "3", *FAST, "--set", "merge=sum",
                 "--resume"]) == 1
    assert "model configuration differs (merge" in capsys.readouterr().err


# drop_path > 0: training draws from the torch RNG, so a resume must restore its state to end bit-identical
DROP = ["--set", "drop_path=0.3"]


@pytest.fixture(scope="module")
def drop_run(data, tmp_path_factory):
    """An uninterrupted 2-epoch run with stochastic depth: (run folder, steps per epoch)."""
    a = tmp_path_factory.mktemp("drop") / "a"
    assert main(["train", "--data", str(data), "--out", str(a), "--epochs", "2", *FAST, *DROP]) == 0
    return a, json.loads((a / "config.json").read_text())["steps_per_epoch"]


def _killed_run(data, out, steps_per_epoch):
    """A run 'killed' one step into epoch 2 (only the epoch-1 checkpoint exists)."""
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "2", *FAST, *DROP,
                 "--max-steps", str(steps_per_epoch + 1)]) == 0
    assert not (out / "final.pth").exists()


def _same_weights(a, b) -> list[str]:
    """Names of the tensors that differ between two checkpoints' weights."""
    wa = torch.load(a, weights_only=True)["state_dict"]
    wb = torch.load(b, weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys()
    return [k for k in wa if not torch.equal(wa[k], wb[k])]


def test_kill_resume_with_drop_path_is_bit_exact(data, drop_run, tmp_path, capsys):
    """With drop_path > 0 the resumed run equals the uninterrupted one bit for bit (the torch RNG state is
    restored). On the way: the temporary file of a kill while writing is removed with one line at startup, and a
    damaged last.pth names the per-epoch checkpoint to continue from, which then gives the same weights."""
    a, steps_per_epoch = drop_run
    b = tmp_path / "b"
    _killed_run(data, b, steps_per_epoch)
    (b / "last.pth.tmp").write_bytes(b"")  # what a kill during torch.save leaves
    last = b / "last.pth"
    last.write_bytes(last.read_bytes()[:1000])  # and a last.pth cut short (say, copied off a full disk)
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--out", str(b), "--epochs", "2", *FAST, *DROP, "--resume"]) == 1
    err = capsys.readouterr().err
    epoch1 = b / "checkpoints" / "epoch_001.pth"
    assert err.count("\n") == 1 and f"{last}: truncated" in err and f"--resume-from {epoch1}" in err
    assert main(["train", "--data", str(data), "--out", str(b), "--epochs", "2", *FAST, *DROP,
                 "--resume-from", str(epoch1)]) == 0
    err = capsys.readouterr().err
    assert f"removed {b / 'last.pth.tmp'}: left by a run killed while writing a checkpoint" in err
    assert "resumed from" in err and not (b / "last.pth.tmp").exists()
    assert _same_weights(a / "final.pth", b / "final.pth") == []


def test_kill_resume_without_the_rng_restore_differs(data, drop_run, tmp_path, monkeypatch):
    """The check above can fail: skip restoring the torch RNG state on resume and the weights differ."""
    from glsmamba.vhpe.train import checkpoints

    a, steps_per_epoch = drop_run
    c = tmp_path / "c"
    _killed_run(data, c, steps_per_epoch)
    monkeypatch.setattr(checkpoints, "set_rng_state", lambda state, device: None)
    assert main(["train", "--data", str(data), "--out", str(c), "--epochs", "2", *FAST, *DROP, "--resume"]) == 0
    assert _same_weights(a / "final.pth", c / "final.pth") != []


def test_train_set_overrides_reach_the_model(data, tmp_path):
    """``--set`` items (repeated, and several after one ``--set``) are typed by GLSMambaConfig.parse_overrides."""
    out = tmp_path / "r"
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", *FAST, "--max-steps", "1",
                 "--set", "merge=sum", "window=2,3", "--set", "dt_rank=none"]) == 0
    m = json.loads((out / "config.json").read_text())["model"]
    assert (m["num_frames"], m["merge"], m["window"], m["dt_rank"]) == (3, "sum", [2, 3], None)


def test_train_errors_name_the_problem(data, tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r"), *FAST]) == 1
    assert "annotations" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), *FAST, "--resume"]) == 1
    assert "cannot resume" in capsys.readouterr().err


def test_training_step_same_loss_on_reference_and_triton(device):
    """One AdamW training step (loss, gradients, clipping, update) and the loss after it agree between the
    backends (Triton under the interpreter: one GSM block with all six directions and STMM, one LRM block; width 8,
    as in the other network tests: the interpreted backward costs one step per channel)."""
    from glsmamba import model
    rng = np.random.default_rng(0)
    batch = {"frames": torch.from_numpy(rng.standard_normal((1, 3, 3, 16, 12)).astype(np.float32)),
             "target": torch.from_numpy(rng.random((1, 15, 4, 3)).astype(np.float32)),
             "target_weight": torch.ones(1, 15)}
    batch = {k: v.to(device) for k, v in batch.items()}
    losses, grads = {}, {}
    model.reset_call_counts()
    for backend in ("reference", "triton"):
        torch.manual_seed(0)
        net = model.GLSMamba("tiny", num_frames=3, dim=8, num_gsm=1, num_lrm=1, backend=backend).to(device).train()
        opt = torch.optim.AdamW(param_groups(net, 1e-4), lr=1e-3)
        first = train_step(net, batch, opt, device=device, clip_grad=1.0)
        grads[backend] = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        with torch.no_grad():
            after = heatmap_loss(net(batch["frames"]), batch["target"], batch["target_weight"]).item()
        losses[backend] = torch.tensor([first, after])
    counts = model.call_counts()
    assert counts.get(("ordered_selective_scan", "triton"), 0) > 0
    assert counts.get(("deformable_aggregate", "triton"), 0) > 0
    assert losses["reference"][1] < losses["reference"][0]  # the step did something
    assert_close("training losses (step 1, after the update)", losses["reference"], losses["triton"],
                 torch.float32)
    assert grads["reference"].keys() == grads["triton"].keys() and len(grads["reference"]) > 50
    for n, g in grads["reference"].items():
        assert_close(f"grad {n}", g, grads["triton"][n], torch.float32, kind="grad")


def test_eval_checkpoint_mode_records_boxes_and_flip(data, tmp_path, capsys):
    from glsmamba import model
    from glsmamba.vhpe.formats import read_videos

    ckpt = tmp_path / "tiny.pth"
    torch.manual_seed(0)
    model.save(model.GLSMamba("tiny", num_frames=3, image_size=(32, 24)), ckpt)
    (video,) = read_videos(data / "annotations" / "val")
    dets = [{"image_id": f.id, "category_id": 1, "bbox": list(map(float, p.bbox)), "score": 0.9}
            for f in video.frames[:3] for p in f.people]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "ev"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--boxes", str(tmp_path / "dets.json"),
                 "--flip", "--out", str(out), "--threads", "1", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert f"boxes {tmp_path / 'dets.json'}, flip on" in text and "Total" in text
    res = json.loads((out / "results.json").read_text())
    assert res["boxes"] == str(tmp_path / "dets.json") and res["flip"] is True and res["clips"] == len(dets)
    assert res["occluded"] is None  # no GT person per detection box
    assert 0.0 <= res["metrics"]["Total"] <= 100.0
    (pred,) = read_videos(out / "predictions")
    assert len(pred.frames) == len(video.frames)  # every GT frame listed, as poseval requires
    assert sum(len(f.people) for f in pred.frames) == len(dets)
    # GT boxes, default output folder next to the checkpoint, JSON output
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--threads", "1", "--format", "json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["boxes"] == "gt" and res["flip"] is False and (tmp_path / "eval-val-gt" / "results.json").is_file()
    assert set(res["occluded"]) == {"occluded", "visible", "all"}
    assert res["occluded"]["all"]["joints"] == res["occluded"]["occluded"]["joints"] + res["occluded"]["visible"][
        "joints"]


def test_eval_mode_errors(data, tmp_path, capsys):
    assert main(["eval", "--checkpoint", "x.pth"]) == 2
    assert "--checkpoint needs --data" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", "x.pth", "--metric", "posetrack", "--data", str(data)]) == 2
    assert "either --checkpoint" in capsys.readouterr().err
    assert main(["eval", "--gt", "a"]) == 2
    assert "required: --metric, --pred" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pth"), "--data", str(data)]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_occlusion_metrics_hand_computed():
    """Two GT people, head size 6 (threshold 3 px). Person 0: joint 0 occluded and predicted 1 px off (correct,
    score 0.9); person 1: joint 0 occluded and 5 px off (wrong, score 0.8), everything else exact."""
    from types import SimpleNamespace

    from glsmamba.vhpe.formats import Person
    from glsmamba.vhpe.infer import Predictions
    from glsmamba.vhpe.metrics.occlusion import occlusion_metrics
    from glsmamba.vhpe.skeleton import slots15_to_17

    head = np.array([0.0, 0.0, 6 / 0.6 / np.sqrt(2), 6 / 0.6 / np.sqrt(2)])  # 0.6 x diagonal = 6
    samples, kps = [], []
    for i, off in enumerate((1.0, 5.0)):
        gt = np.stack([np.arange(15) * 10.0 + 5, np.full(15, 20.0 + i), np.ones(15)], axis=1)
        occ = np.zeros((15, 1))
        occ[0] = 1
        p = Person(keypoints=slots15_to_17(gt), bbox_head=head,
                   extra={"occluded": [int(v) for v in slots15_to_17(occ)[:, 0]]})
        samples.append(SimpleNamespace(person=p))
        kp = gt[:, :2].copy()
        kp[0, 0] += off
        kps.append(kp)
    scores = np.full((2, 15), 0.5)
    scores[:, 0] = [0.9, 0.8]
    preds = Predictions(np.array([1, 2]), np.stack(kps), scores, np.array([0, 0]), np.array([1.0, 1.0]))
    m = occlusion_metrics(SimpleNamespace(samples=samples), preds)
    # occluded: ranking [correct 0.9, wrong 0.8] -> recall (0.5, 0.5), precision (1, 0.5) -> VOC AP 50
    assert m["occluded"] == {"AP": 50.0, "PCKh": 50.0, "joints": 2, "AP_nose": 50.0}
    assert m["visible"]["AP"] == 100.0 and m["visible"]["PCKh"] == 100.0 and m["visible"]["joints"] == 28
    assert m["all"]["joints"] == 30 and m["all"]["AP_nose"] == 50.0
    assert m["all"]["AP"] == pytest.approx((50.0 + 14 * 100.0) / 15)
    no_flags = SimpleNamespace(samples=[SimpleNamespace(person=Person(keypoints=s.person.keypoints,
                                                                      bbox_head=head)) for s in samples])
    assert occlusion_metrics(no_flags, preds) is None


def test_dataset_input_size_scales_crops_and_targets(data):
    """input_size (W, H) = (24, 32): crops (T, 3, 32, 24), targets (15, 8, 6) at stride 4, decoded targets land
    within half a heatmap pixel (per axis) of the GT, as at the default 192 x 256."""
    from glsmamba.vhpe.codec import keypoints_from_heatmaps
    from glsmamba.vhpe.dataset import PoseTrackClipDataset

    ds = PoseTrackClipDataset(data, split="val", num_frames=3, input_size=(24, 32))
    default = PoseTrackClipDataset(data, split="val", num_frames=3)
    item, ref = ds[1], default[1]
    assert item["frames"].shape == (3, 3, 32, 24) and item["target"].shape == (15, 8, 6)
    assert ref["frames"].shape == (3, 3, 256, 192) and ref["target"].shape == (15, 64, 48)
    m = item["meta"]
    np.testing.assert_allclose(m["scale"].numpy(), ref["meta"]["scale"].numpy())  # same 0.75 aspect: same box
    kp, _ = keypoints_from_heatmaps(item["target"][None].numpy(), m["center"][None].numpy(), m["scale"][None].numpy())
    px = float(m["scale"][0]) * 200 / 6  # image pixels per heatmap pixel
    lab = (m["joints"][:, 2] > 0).numpy() & (item["target_weight"].numpy() > 0)
    assert lab.sum() >= 10
    err = np.abs(kp[0] - m["joints"][:, :2].numpy())[lab]
    assert err.max() <= 0.5 * px + 1e-6
    wide = PoseTrackClipDataset(data, split="val", num_frames=1, input_size=(32, 32), heatmap_size=(16, 16))
    w_item = wide[1]
    assert w_item["frames"].shape == (1, 3, 32, 32) and w_item["target"].shape == (15, 16, 16)
    assert w_item["meta"]["scale"][0] == pytest.approx(w_item["meta"]["scale"][1])  # aspect 1 boxes
    with pytest.raises(ValueError, match="input_size must be"):
        PoseTrackClipDataset(data, split="val", input_size=(30, 32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_training_steps_track_float32(dtype):
    """The GPU mixed-precision path (autocast; fp16 with a GradScaler), exercised with CPU autocast."""
    from glsmamba import model
    from glsmamba.vhpe.train import resolve_amp

    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None and resolve_amp("off", cpu) is None  # CPU default: float32
    assert resolve_amp("bf16" if dtype == torch.bfloat16 else "fp16", cpu) == dtype
    rng = np.random.default_rng(1)
    batch = {"frames": torch.from_numpy(rng.standard_normal((2, 3, 3, 16, 12)).astype(np.float32)),
             "target": torch.from_numpy(rng.random((2, 15, 4, 3)).astype(np.float32)),
             "target_weight": torch.ones(2, 15)}
    out = {}
    for amp in (None, dtype):
        torch.manual_seed(0)
        net = model.GLSMamba("tiny", num_frames=3, backend="reference").train()
        opt = torch.optim.AdamW(param_groups(net, 1e-4), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu") if amp == torch.float16 else None
        out[amp] = torch.tensor([train_step(net, batch, opt, device=torch.device("cpu"), amp_dtype=amp,
                                            scaler=scaler, clip_grad=1.0) for _ in range(2)])
    assert_close(f"losses under {dtype} autocast", out[None], out[dtype], dtype)
