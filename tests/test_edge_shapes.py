"""Edge shapes: an empty batch through every registry op and the whole network on both backends; sizes of 0 on
the command line."""

from __future__ import annotations

import pytest
import torch

from glsmamba import model
from glsmamba.cli import main
from glsmamba.kernels._utils import launch_config
from glsmamba.model.backend import OPS, get_op
from glsmamba.verify.cases import OP_CASES
from glsmamba.verify.driver import level_plan

# the inputs of the verify cases that carry the batch dimension first
BATCHED = {"u", "delta", "B", "C", "z", "x", "ys", "offsets", "mask"}
CASES = list(OP_CASES.values())
SIZES = level_plan("quick", on_gpu=False)[0]  # the sizes of `glsmamba verify --quick` on a CPU


def _outputs(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def test_the_cases_cover_every_registry_op():
    assert {c.op for c in CASES} == set(OPS)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}-{c.variant}" for c in CASES])
def test_every_op_with_an_empty_batch(case, backend, device):
    """Batch 0: outputs shaped like the batch-2 outputs with batch 0, and a backward pass whose gradients are
    absent or zero, shaped like their inputs."""
    _check_empty_batch(case, backend, device)


SCANS = [c for c in CASES if c.op in ("ordered_selective_scan", "selective_scan")]


@pytest.mark.parametrize("case", SCANS, ids=[f"{c.op}-{c.variant}" for c in SCANS])
def test_triton_scans_with_an_empty_batch_in_the_cuda_geometry(case, device):
    """The same with the launchers choosing the CUDA geometry, as on a GPU: the ordered scan's backward once
    divided by zero choosing its channel ranges for zero programs, the selective scan's forward choosing its
    chunks."""
    with launch_config(cuda_geometry=True):
        _check_empty_batch(case, "triton", device)


def _check_empty_batch(case, backend, device):
    full = case.inputs(SIZES, torch.float32, device, torch.Generator().manual_seed(0))
    want = [(0, *o.shape[1:]) for o in _outputs(get_op(case.op, backend="reference")(**full))]
    kwargs = {k: (v[:0] if k in BATCHED and v is not None else v) for k, v in full.items()}
    kwargs = {k: (v.detach().clone().requires_grad_(True) if k in case.grads else v) for k, v in kwargs.items()}
    outs = _outputs(get_op(case.op, backend=backend)(**kwargs))
    assert [tuple(o.shape) for o in outs] == want
    batched = [v for k, v in kwargs.items() if k in BATCHED and v is not None]  # in argument order, not set order
    assert outs[0].dtype == batched[0].dtype
    diff = [o for o in outs if o.requires_grad]
    assert diff, "the output is not connected to its inputs"
    grads = torch.autograd.grad(diff, [kwargs[k] for k in case.grads], [torch.ones_like(o) for o in diff],
                                allow_unused=True)
    for name, g in zip(case.grads, grads, strict=True):
        if g is not None:
            assert g.shape == kwargs[name].shape and not g.any(), name


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_network_with_an_empty_batch(backend, device):
    torch.manual_seed(0)
    net = model.GLSMamba("tiny", num_frames=3, image_size=(32, 24), backend=backend).to(device).train()
    frames = torch.zeros(0, 3, 3, 32, 24, device=device, requires_grad=True)
    out = net(frames)
    assert out.shape == (0, net.config.num_joints, 32 // 4, 24 // 4)  # J heatmaps at 1/4 of the input
    net.zero_grad()
    out.sum().backward()  # an empty loss: every gradient that exists is zero
    assert frames.grad.shape == frames.shape
    assert all(not p.grad.any() for p in net.parameters() if p.grad is not None)
    with torch.no_grad():
        assert net.eval()(frames).shape == out.shape


@pytest.mark.parametrize("argv, words", [
    (["train", "--data", "d", "--out", "o", "--input-size", "0x48"], "--input-size: H and W must be positive"),
    (["train", "--data", "d", "--out", "o", "--input-size", "64x-48"], "--input-size: H and W must be positive"),
    (["train", "--data", "d", "--out", "o", "--input-size", "64"], "--input-size: expected HxW"),
    (["train", "--data", "d", "--out", "o", "--batch-size", "0"], "--batch-size: must be a positive integer"),
    (["summary", "--size", "0", "48"], "--size: must be a positive integer, got 0"),
    (["summary", "--frames", "0"], "--frames: must be a positive integer"),
    (["synth", "out", "--width", "0"], "--width: must be a positive integer"),
    (["synth", "out", "--frames", "0"], "--frames: must be a positive integer"),
    (["eval", "--checkpoint", "c.pth", "--data", "d", "--batch-size", "0"], "--batch-size: must be a positive"),
    (["demo", "v.mp4", "--checkpoint", "c.pth", "--batch-size", "-1"], "--batch-size: must be a positive"),
    (["bench", "--hw", "0x12"], "--hw sizes must be >= 1"),
    (["bench", "--T", "5", "0"], "--T: must be a positive integer"),
    (["bench", "--C", "0"], "--C: must be a positive integer"),
])
def test_sizes_must_be_positive(argv, words, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert words in capsys.readouterr().err
