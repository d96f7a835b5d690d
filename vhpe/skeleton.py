"""Joint sets: names, flip pairs, skeleton edges, colours, loss weights and OKS sigmas.

Four joint sets are defined, each as a :class:`Skeleton`:

* ``POSETRACK18`` - the 17 *slots* of PoseTrack18/21 files (COCO order, slots 1-2 are ``head_bottom`` and
  ``head_top`` instead of the eyes, slots 3-4 (ears) are always empty ``(0, 0, 0)``).
* ``POSETRACK15`` - the 15 joints the network predicts for PoseTrack (``J = 15``): the 17 slots without the ears,
  in slot order. ``SLOTS_15`` maps network joint ``j`` to file slot ``SLOTS_15[j]``::

      j :  0 nose          1 head_bottom   2 head_top
           3 left_shoulder 4 right_shoulder 5 left_elbow  6 right_elbow  7 left_wrist  8 right_wrist
           9 left_hip     10 right_hip     11 left_knee  12 right_knee  13 left_ankle 14 right_ankle
      slot: 0, 1, 2, 5, 6, ..., 16  (slot = j for j < 3, slot = j + 2 otherwise)

* ``COCO17`` - COCO person keypoints.
* ``JHMDB15`` - Sub-JHMDB (neck, belly, head, ...; a different order from PoseTrack).

PoseTrack17 ``annolist`` files (and poseval) number the 15 PoseTrack joints differently; ``POSEVAL_IDS`` gives
the poseval id of each 15-joint index, and ``slot_to_poseval_id`` / ``poseval_id_to_slot`` convert 17 slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    """A joint set.

    Attributes:
        name: identifier (``"posetrack18"``, ``"posetrack15"``, ``"coco"``, ``"jhmdb"``).
        joints: joint names, index = joint id.
        flip_pairs: (left, right) index pairs swapped by a horizontal flip.
        edges: 0-based (a, b) joint pairs drawn as limbs.
        edge_colors: RGB colour per edge (left limbs warm, right limbs cool, centre green/white).
        joint_weights: loss weight per joint (1.2 elbows/knees, 1.5 wrists/ankles, as MSRA/DCPose).
        sigmas: COCO OKS sigma per joint.
        empty: joints that are always unlabelled placeholders (PoseTrack's ears).
    """

    name: str
    joints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    edges: tuple[tuple[int, int], ...]
    edge_colors: tuple[tuple[int, int, int], ...]
    joint_weights: tuple[float, ...]
    sigmas: tuple[float, ...]
    empty: tuple[int, ...] = ()

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    @property
    def flip_indices(self) -> list[int]:
        """``flip_indices[j]`` = the joint that ``j`` becomes after a horizontal flip."""
        idx = list(range(self.num_joints))
        for a, b in self.flip_pairs:
            idx[a], idx[b] = b, a
        return idx

    def index(self, joint: str) -> int:
        try:
            return self.joints.index(joint)
        except ValueError:
            raise ValueError(f"joint {joint!r} is not in skeleton {self.name!r} ({', '.join(self.joints)})") from None

    def joint_colors(self) -> list[tuple[int, int, int]]:
        """RGB colour per joint: the colour of the first edge that ends at the joint (white if none)."""
        colors: list[tuple[int, int, int]] = [(255, 255, 255)] * self.num_joints
        for (a, b), c in reversed(list(zip(self.edges, self.edge_colors, strict=True))):
            colors[b] = c
            if colors[a] == (255, 255, 255):
                colors[a] = c
        return colors


def _w(names: tuple[str, ...]) -> tuple[float, ...]:
    out = []
    for n in names:
        if n.endswith(("elbow", "knee")):
            out.append(1.2)
        elif n.endswith(("wrist", "ankle")):
            out.append(1.5)
        else:
            out.append(1.0)
    return tuple(out)


def _pairs(names: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    pairs = []
    for i, n in enumerate(names):
        if n.startswith("left_"):
            pairs.append((i, names.index("right_" + n[5:])))
    return tuple(pairs)


# limb colours: left = warm, right = cool, centre = green / white
_LEFT_UP, _LEFT_LOW = (255, 128, 0), (255, 220, 0)
_RIGHT_UP, _RIGHT_LOW = (0, 120, 255), (0, 230, 230)
_LEFT_TORSO, _RIGHT_TORSO, _CENTRE, _HEAD = (230, 60, 60), (150, 60, 230), (60, 200, 60), (255, 255, 255)

# ------------------------------------------------------------------ COCO 17
COCO_JOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
# COCO person skeleton, 1-based as in the annotation files
COCO_SKELETON_1BASED = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9), (8, 10), (9, 11),
    (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)
COCO_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087,
               0.087, 0.089, 0.089)
_COCO_EDGE_COLORS = (
    _LEFT_LOW, _LEFT_UP, _RIGHT_LOW, _RIGHT_UP, _CENTRE, _LEFT_TORSO, _RIGHT_TORSO, _CENTRE, _LEFT_UP, _RIGHT_UP,
    _LEFT_LOW, _RIGHT_LOW, _HEAD, _HEAD, _HEAD, _HEAD, _HEAD, _HEAD, _HEAD,
)

COCO17 = Skeleton(
    name="coco", joints=COCO_JOINTS, flip_pairs=_pairs(COCO_JOINTS),
    edges=tuple((a - 1, b - 1) for a, b in COCO_SKELETON_1BASED), edge_colors=_COCO_EDGE_COLORS,
    joint_weights=_w(COCO_JOINTS), sigmas=COCO_SIGMAS,
)

# ------------------------------------------------------------------ PoseTrack18 17 slots
POSETRACK18_JOINTS = ("nose", "head_bottom", "head_top") + COCO_JOINTS[3:]
# head_bottom / head_top take the eye sigma, as mmpose's posetrack18 metainfo does
POSETRACK18 = Skeleton(
    name="posetrack18", joints=POSETRACK18_JOINTS, flip_pairs=_pairs(POSETRACK18_JOINTS),
    edges=COCO17.edges, edge_colors=_COCO_EDGE_COLORS, joint_weights=_w(POSETRACK18_JOINTS), sigmas=COCO_SIGMAS,
    empty=(3, 4),
)

# ------------------------------------------------------------------ PoseTrack 15 (network order)
SLOTS_15: tuple[int, ...] = (0, 1, 2) + tuple(range(5, 17))
POSETRACK15_JOINTS = tuple(POSETRACK18_JOINTS[s] for s in SLOTS_15)
_PT15_EDGES = (
    ("head_top", "nose", _HEAD), ("nose", "head_bottom", _HEAD),
    ("head_bottom", "left_shoulder", _LEFT_TORSO), ("head_bottom", "right_shoulder", _RIGHT_TORSO),
    ("left_shoulder", "left_elbow", _LEFT_UP), ("left_elbow", "left_wrist", _LEFT_LOW),
    ("right_shoulder", "right_elbow", _RIGHT_UP), ("right_elbow", "right_wrist", _RIGHT_LOW),
    ("left_shoulder", "left_hip", _LEFT_TORSO), ("right_shoulder", "right_hip", _RIGHT_TORSO),
    ("left_hip", "right_hip", _CENTRE),
    ("left_hip", "left_knee", _LEFT_UP), ("left_knee", "left_ankle", _LEFT_LOW),
    ("right_hip", "right_knee", _RIGHT_UP), ("right_knee", "right_ankle", _RIGHT_LOW),
)
POSETRACK15 = Skeleton(
    name="posetrack15", joints=POSETRACK15_JOINTS, flip_pairs=_pairs(POSETRACK15_JOINTS),
    edges=tuple((POSETRACK15_JOINTS.index(a), POSETRACK15_JOINTS.index(b)) for a, b, _ in _PT15_EDGES),
    edge_colors=tuple(c for _, _, c in _PT15_EDGES), joint_weights=_w(POSETRACK15_JOINTS),
    sigmas=tuple(COCO_SIGMAS[s] for s in SLOTS_15),
)

# ------------------------------------------------------------------ PoseTrack17 annolist / poseval ids
# poseval ``Joint``: id -> name (``neck`` of PoseTrack17 is ``head_bottom`` in PoseTrack18)
POSEVAL_JOINTS = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "right_wrist", "right_elbow",
    "right_shoulder", "left_shoulder", "left_elbow", "left_wrist", "head_bottom", "nose", "head_top",
)
# poseval id of each network joint (15 order)
POSEVAL_IDS: tuple[int, ...] = tuple(POSEVAL_JOINTS.index(n) for n in POSETRACK15_JOINTS)


def slot_to_poseval_id(slot: int) -> int | None:
    """poseval joint id of a PoseTrack18 slot (``None`` for the ears)."""
    name = POSETRACK18_JOINTS[slot]
    return POSEVAL_JOINTS.index(name) if name in POSEVAL_JOINTS else None


def poseval_id_to_slot(pid: int) -> int:
    """PoseTrack18 slot of a poseval joint id (0..14)."""
    if not 0 <= pid < len(POSEVAL_JOINTS):
        raise ValueError(f"poseval joint id must be in 0..14, got {pid}")
    return POSETRACK18_JOINTS.index(POSEVAL_JOINTS[pid])


def slots17_to_15(kpts: np.ndarray) -> np.ndarray:
    """``(..., 17, C)`` PoseTrack18 slots -> ``(..., 15, C)`` network joints (drops the ears)."""
    kpts = np.asarray(kpts)
    if kpts.ndim < 2 or kpts.shape[-2] != 17:
        raise ValueError(f"kpts must have shape (..., 17, C), got {kpts.shape}")
    return kpts[..., list(SLOTS_15), :]


def slots15_to_17(kpts: np.ndarray) -> np.ndarray:
    """``(..., 15, C)`` network joints -> ``(..., 17, C)`` PoseTrack18 slots with empty (zero) ears."""
    kpts = np.asarray(kpts)
    if kpts.ndim < 2 or kpts.shape[-2] != 15:
        raise ValueError(f"kpts must have shape (..., 15, C), got {kpts.shape}")
    out = np.zeros(kpts.shape[:-2] + (17,) + kpts.shape[-1:], dtype=kpts.dtype)
    out[..., list(SLOTS_15), :] = kpts
    return out


# ------------------------------------------------------------------ Sub-JHMDB
JHMDB_JOINTS = (
    "neck", "belly", "head", "right_shoulder", "left_shoulder", "right_hip", "left_hip", "right_elbow",
    "left_elbow", "right_knee", "left_knee", "right_wrist", "left_wrist", "right_ankle", "left_ankle",
)
_JHMDB_EDGES = (
    ("neck", "head", _HEAD), ("neck", "right_shoulder", _RIGHT_TORSO), ("neck", "left_shoulder", _LEFT_TORSO),
    ("neck", "belly", _CENTRE),
    ("right_shoulder", "right_elbow", _RIGHT_UP), ("right_elbow", "right_wrist", _RIGHT_LOW),
    ("left_shoulder", "left_elbow", _LEFT_UP), ("left_elbow", "left_wrist", _LEFT_LOW),
    ("belly", "right_hip", _RIGHT_TORSO), ("belly", "left_hip", _LEFT_TORSO),
    ("right_hip", "right_knee", _RIGHT_UP), ("right_knee", "right_ankle", _RIGHT_LOW),
    ("left_hip", "left_knee", _LEFT_UP), ("left_knee", "left_ankle", _LEFT_LOW),
)
# mmpose jhmdb metainfo sigmas
JHMDB_SIGMAS = (0.025, 0.107, 0.025, 0.079, 0.079, 0.107, 0.107, 0.072, 0.072, 0.087, 0.087, 0.062, 0.062, 0.089,
                0.089)
JHMDB15 = Skeleton(
    name="jhmdb", joints=JHMDB_JOINTS, flip_pairs=_pairs(JHMDB_JOINTS),
    edges=tuple((JHMDB_JOINTS.index(a), JHMDB_JOINTS.index(b)) for a, b, _ in _JHMDB_EDGES),
    edge_colors=tuple(c for _, _, c in _JHMDB_EDGES), joint_weights=_w(JHMDB_JOINTS), sigmas=JHMDB_SIGMAS,
)

SKELETONS: dict[str, Skeleton] = {s.name: s for s in (POSETRACK18, POSETRACK15, COCO17, JHMDB15)}


def get_skeleton(name: str | Skeleton) -> Skeleton:
    """Look a skeleton up by name (``posetrack18``, ``posetrack15``, ``coco``, ``jhmdb``)."""
    if isinstance(name, Skeleton):
        return name
    try:
        return SKELETONS[name]
    except KeyError:
        raise ValueError(f"unknown skeleton {name!r}; expected one of {sorted(SKELETONS)}") from None


def skeleton_from_names(names: list[str] | tuple[str, ...]) -> Skeleton:
    """The skeleton whose joint names equal ``names`` (a COCO category's ``keypoints`` list)."""
    names = tuple(names)
    for s in SKELETONS.values():
        if s.joints == names:
            return s
    raise ValueError(f"keypoint names {list(names)} match none of the known skeletons {sorted(SKELETONS)}")
