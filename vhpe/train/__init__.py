"""Training GLSMamba on PoseTrack-layout data (real PoseTrack18/21 or ``glsmamba synth`` output).

Defaults follow the paper (``docs/paper.md``): AdamW, lr 1e-4 divided by 10 at epochs 6 and 12, 20 epochs,
MSE loss on the key-frame heatmap weighted per joint (MSRA ``JointsMSELoss``: ``0.5 * mean(((pred - gt) * w)^2)``
with ``w`` = 0 for unlabelled joints, 1.2 elbows/knees, 1.5 wrists/ankles), frozen ViTPose encoder for ``base`` /
``huge``. Not given by the paper and chosen here: weight decay 1e-4 (not on norms, biases, ``A_log``, ``D``,
``dt_bias`` and the temporal embedding), gradient clipping at norm 1, global batch 16, DCPose augmentation.

Run folder (``out``)::

    config.json        the training and model configuration
    metrics.csv        one row per epoch (loss, lr, throughput, optional val mAP)
    steps.csv          one row per optimiser step (loss, lr)
    loss.png           loss curve (matplotlib, Agg)
    last.pth           the newest training checkpoint (weights + config + optimiser + RNG + counters)
    checkpoints/epoch_NNN.pth   per-epoch training checkpoints (the newest ``keep`` are kept)
    final.pth          the trained weights + config (what ``glsmamba eval`` / ``demo`` load)

Every checkpoint is a :mod:`model.checkpoint` file (``model.load`` reads it) whose ``extra["train"]`` holds the
optimiser state and the counters. ``resume`` restarts from the last completed epoch: a run killed mid-epoch redoes
that epoch and ends with the same weights as an uninterrupted run (on CPU with a fixed seed: the data order and the
augmentation are pure functions of ``(seed, epoch, index)`` and the RNG state is checkpointed).

Scale-out: launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), each process trains on its share of
every global batch (``DistributedSampler``), gradients are averaged by ``DistributedDataParallel`` and batch norms
are synchronised (so 1 and N processes compute the same loss on the same global batch); only rank 0 writes files.

Modules: :mod:`.config` (:class:`TrainConfig`; the model overrides of ``--set`` are parsed by
``GLSMambaConfig.parse_overrides``), :mod:`.loop` (loss, schedule, optimiser step, :func:`train`), :mod:`.data`,
:mod:`.distributed`, :mod:`.checkpoints`, :mod:`.records` (CSVs, ``config.json``, ``loss.png``).
"""

from .config import AMP_CHOICES, TrainConfig, model_config
from .data import build_dataset
from .distributed import DistBatchNorm2d, DistInfo, convert_sync_batchnorm, init_distributed
from .loop import TrainResult, heatmap_loss, lr_at, param_groups, resolve_amp, train, train_step
from .records import plot_loss

__all__ = [
    "AMP_CHOICES",
    "DistBatchNorm2d",
    "DistInfo",
    "TrainConfig",
    "TrainResult",
    "build_dataset",
    "convert_sync_batchnorm",
    "heatmap_loss",
    "init_distributed",
    "lr_at",
    "model_config",
    "param_groups",
    "plot_loss",
    "resolve_amp",
    "train",
    "train_step",
]
