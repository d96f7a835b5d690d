"""Synthetic video-pose data in PoseTrack18 layout: articulated stick figures on textured backgrounds.

Each video shows 1-2 figures with the 15 PoseTrack joints whose root, size and joint angles move smoothly
(sums of slow sinusoids), drawn with thick colour-coded limbs (the person's left side warm, right side cool,
torso filled, head a disc with a nose dot, a marker of the joint's own colour at every joint) on a static
textured background, with optional moving striped occluders on top. Images are rendered at 2x and
box-downsampled (anti-aliased).

Ground truth (one ``annotations/<split>/<video>.json`` per video, the PoseTrack18 per-video format):

* ``keypoints``: 17 slots (ears empty), ``v = 1`` for every joint inside the image - **occluded joints keep
  their true position and stay labelled** (``v = 1``, PoseTrack's convention of labelling invisible joints
  whose position is known); joints outside the image are unlabelled ``(0, 0, 0)``.
* ``occluded``: an extra per-annotation list of 17 ints, 1 where the joint is hidden (by an occluder or a
  figure drawn later), 0 otherwise (and for unlabelled slots). A later experiment can report mAP on these.
* ``bbox``: the labelled joints' extent padded by the limb width (clipped to the image); ``bbox_head``: the
  square around the head disc (PoseTrack's PCKh reference, head size = 0.6 x its diagonal).
* Videos are named ``<seq:06d>_mpii_<split>`` and image ids are ``1SSSSSSFFFF`` so that poseval's converter
  accepts the files (it decodes ids from PoseTrack-style paths); ``vid_id`` is the 6-digit ``seq``.
* Frames with ``frame % label_every != 0`` are unlabelled (``is_labeled`` false, no annotations), as
  PoseTrack's sparsely labelled val videos.

Everything is a pure function of ``seed`` and the video's ``seq`` number (NumPy ``default_rng([seed, seq])``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .formats import Frame, Person, Video, write_posetrack18
from .skeleton import POSETRACK15, SLOTS_15, slots15_to_17

_J = {n: i for i, n in enumerate(POSETRACK15.joints)}
SYNTH_META = "synth.json"  # dataset-level record of the generator settings, next to images/ and annotations/

# marker colour of each joint (15-joint order): every joint has its own colour, the person's left side warm,
# right side cool, so a joint is identifiable from its marker and its place in the figure
JOINT_MARKER_COLORS: tuple[tuple[int, int, int], ...] = (
    (200, 0, 0),  # nose
    (0, 110, 0),  # head_bottom
    (120, 0, 160),  # head_top
    (255, 80, 80), (80, 80, 255),  # shoulders (left, right)
    (255, 160, 0), (0, 160, 255),  # elbows
    (255, 255, 0), (0, 255, 255),  # wrists
    (255, 0, 170), (0, 200, 120),  # hips
    (190, 110, 50), (50, 110, 190),  # knees
    (255, 255, 255), (0, 0, 0),  # ankles
)


@dataclass(frozen=True)
class SynthConfig:
    """Rendering parameters.

    Attributes:
        width, height: image size (256 x 192).
        persons: (min, max) figures per video.
        person_height: (min, max) figure height in pixels (head top to ankles ~ 0.9 of it).
        limb_width: (min, max) limb line width in pixels.
        occluder_prob: probability that a video has a moving occluder.
        label_every: label every k-th frame (1 = all).
        ext: image extension, ``jpg`` or ``png``.
        jpeg_quality: JPEG quality.
    """

    width: int = 256
    height: int = 192
    persons: tuple[int, int] = (1, 2)
    person_height: tuple[float, float] = (110.0, 150.0)
    limb_width: tuple[float, float] = (5.0, 8.0)
    occluder_prob: float = 0.5
    label_every: int = 1
    ext: str = "jpg"
    jpeg_quality: int = 92

    def __post_init__(self):
        if self.width < 32 or self.height < 32:
            raise ValueError(f"width and height must be >= 32, got {self.width} x {self.height}")
        if not 1 <= self.persons[0] <= self.persons[1]:
            raise ValueError(f"persons must be (min, max) with 1 <= min <= max, got {self.persons}")
        if self.label_every < 1:
            raise ValueError(f"label_every must be >= 1, got {self.label_every}")
        if self.ext not in ("jpg", "png"):
            raise ValueError(f"ext must be 'jpg' or 'png', got {self.ext!r}")


def _pil():
    try:
        from PIL import Image, ImageDraw
    except ImportError as e:  # pragma: no cover - Pillow is a dependency
        raise ImportError("synthetic data needs Pillow: pip install pillow") from e
    return Image, ImageDraw


# ------------------------------------------------------------------------------------------------ motion
class _Wave:
    """A smooth scalar signal: base + sum of two sinusoids with random phase (period 16-60 frames)."""

    def __init__(self, rng: np.random.Generator, base: float, amp: float):
        self.base = base
        self.amp = rng.uniform(0.3, 1.0, 2) * amp / 1.3
        self.omega = 2 * math.pi / rng.uniform(16, 60, 2)
        self.phase = rng.uniform(0, 2 * math.pi, 2)

    def __call__(self, t: float) -> float:
        return self.base + float(np.sum(self.amp * np.sin(self.omega * t + self.phase)))


@dataclass
class _Figure:
    x: _Wave
    y: _Wave
    size: _Wave
    lean: _Wave
    tilt: _Wave
    arms: list[tuple[_Wave, _Wave]]  # (left, right) x (shoulder angle, elbow bend)
    legs: list[tuple[_Wave, _Wave]]
    left_sign: float  # +1: the person's left is on the image right (facing the camera)
    limb_width: float
    torso_color: tuple[int, int, int]
    skin: tuple[int, int, int]
    color_jitter: np.ndarray


def _make_figure(rng: np.random.Generator, cfg: SynthConfig, slot: int, n: int, frames: int) -> _Figure:
    w, h = cfg.width, cfg.height
    hp = rng.uniform(*cfg.person_height) * min(1.0, h / 192)
    lo, hi = w * (slot + 0.25) / n, w * (slot + 0.75) / n  # spread figures over the width
    x0 = rng.uniform(lo, hi)
    drift = rng.uniform(-0.15, 0.15) * w
    x = _Wave(rng, x0, 0.0)
    x.amp = np.array([drift, rng.uniform(3, 10)])
    x.omega = np.array([math.pi / max(frames, 1) / 1.0, 2 * math.pi / rng.uniform(20, 50)])
    x.phase = np.array([0.0, rng.uniform(0, 2 * math.pi)])
    return _Figure(
        x=x,
        y=_Wave(rng, h * rng.uniform(0.48, 0.56), h * 0.03),
        size=_Wave(rng, hp, hp * 0.08),
        lean=_Wave(rng, rng.normal(0, 0.05), 0.12),
        tilt=_Wave(rng, 0.0, 0.25),
        arms=[(_Wave(rng, rng.uniform(0.3, 1.2), 0.7), _Wave(rng, rng.uniform(0.0, 1.0), 0.8)) for _ in range(2)],
        legs=[(_Wave(rng, rng.uniform(0.05, 0.3), 0.25), _Wave(rng, rng.uniform(-0.4, 0.1), 0.35)) for _ in range(2)],
        left_sign=float(rng.choice([-1.0, 1.0])),
        limb_width=rng.uniform(*cfg.limb_width),
        torso_color=tuple(int(c) for c in rng.integers(40, 220, 3)),
        skin=tuple(int(c) for c in rng.integers(150, 240, 3)),
        color_jitter=rng.integers(-20, 21, 3),
    )


def _pose(fig: _Figure, t: float) -> tuple[np.ndarray, dict]:
    """15 joints (network order) in image pixels and drawing extras at time ``t``."""
    hp = fig.size(t)
    lean, tilt = fig.lean(t), fig.tilt(t)
    up = np.array([math.sin(lean), -math.cos(lean)])
    right = np.array([math.cos(lean), math.sin(lean)])  # image-right in the torso frame
    pelvis = np.array([fig.x(t), fig.y(t)])
    neck = pelvis + 0.30 * hp * up
    head_dir = np.array([math.sin(lean + tilt), -math.cos(lean + tilt)])
    head_len = 0.15 * hp
    j = np.zeros((15, 2))
    j[_J["head_bottom"]] = neck
    j[_J["head_top"]] = neck + head_len * head_dir
    head_right = np.array([-head_dir[1], head_dir[0]])
    j[_J["nose"]] = neck + 0.42 * head_len * head_dir + 0.12 * head_len * fig.left_sign * head_right
    sh_base = neck - 0.04 * hp * up
    for side, sgn in (("left", fig.left_sign), ("right", -fig.left_sign)):
        out = sgn * right  # away from the body centre on this side
        k = 0 if side == "left" else 1
        sh = sh_base + 0.11 * hp * out
        hip = pelvis + 0.075 * hp * out
        a, b = fig.arms[k][0](t), fig.arms[k][1](t)
        d1 = -up * math.cos(a) + out * math.sin(a)
        d2 = -up * math.cos(a + b) + out * math.sin(a + b)
        elbow = sh + 0.16 * hp * d1
        wrist = elbow + 0.15 * hp * d2
        a, b = fig.legs[k][0](t), fig.legs[k][1](t)
        d1 = -up * math.cos(a) + out * math.sin(a)
        d2 = -up * math.cos(a + b) + out * math.sin(a + b)
        knee = hip + 0.23 * hp * d1
        ankle = knee + 0.22 * hp * d2
        for name, p in (("shoulder", sh), ("hip", hip), ("elbow", elbow), ("wrist", wrist), ("knee", knee),
                        ("ankle", ankle)):
            j[_J[f"{side}_{name}"]] = p
    head_c = neck + 0.5 * head_len * head_dir
    return j, {"head_center": head_c, "head_radius": 0.5 * head_len, "hp": hp}


# ------------------------------------------------------------------------------------------------ drawing
def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    image_cls, draw_cls = _pil()
    base = rng.uniform(70, 190, 3)
    low = rng.normal(0, 28, (5, 7, 3))
    low_img = np.stack([np.asarray(image_cls.fromarray(low[..., c].astype(np.float32)).resize(
        (w, h), image_cls.BICUBIC)) for c in range(3)], axis=-1)
    img = image_cls.fromarray(np.clip(base + low_img, 0, 255).astype(np.uint8))
    d = draw_cls.Draw(img)
    for _ in range(rng.integers(4, 10)):
        c = tuple(int(v) for v in np.clip(base + rng.normal(0, 35, 3), 0, 255))
        x0, y0 = rng.uniform(-20, w), rng.uniform(-20, h)
        x1, y1 = x0 + rng.uniform(15, 90), y0 + rng.uniform(15, 90)
        (d.rectangle if rng.random() < 0.5 else d.ellipse)([x0, y0, x1, y1], fill=c)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 5, (h, w, 3))
    return np.clip(arr, 0, 255)


def _edges_with_colors(fig: _Figure) -> list[tuple[int, int, tuple[int, int, int]]]:
    out = []
    for (a, b), c in zip(POSETRACK15.edges, POSETRACK15.edge_colors, strict=True):
        col = tuple(int(v) for v in np.clip(np.array(c) + fig.color_jitter, 0, 255))
        out.append((a, b, col))
    return out


def _draw_figure(draw, label, fig: _Figure, j: np.ndarray, extra: dict, ss: float, label_value: int) -> None:
    """Draw one figure on the 2x RGB canvas (``draw``) and its id on the 1x label canvas (``label``)."""

    def s(p):  # image px -> supersampled px
        return (ss * p[0] + (ss - 1) / 2, ss * p[1] + (ss - 1) / 2)

    lw = fig.limb_width
    torso = [j[_J["left_shoulder"]], j[_J["right_shoulder"]], j[_J["right_hip"]], j[_J["left_hip"]]]
    draw.polygon([s(p) for p in torso], fill=fig.torso_color)
    label.polygon([tuple(p) for p in torso], fill=label_value)
    for a, b, col in _edges_with_colors(fig):
        if {a, b} <= {_J["nose"], _J["head_top"], _J["head_bottom"]}:
            continue  # inside the head disc
        draw.line([s(j[a]), s(j[b])], fill=col, width=max(1, round(lw * ss)))
        label.line([tuple(j[a]), tuple(j[b])], fill=label_value, width=max(1, round(lw)))
        for p in (j[a], j[b]):
            r = lw * ss / 2
            cx, cy = s(p)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
    hc, hr = extra["head_center"], extra["head_radius"]
    cx, cy = s(hc)
    draw.ellipse([cx - hr * ss, cy - hr * ss, cx + hr * ss, cy + hr * ss], fill=fig.skin, outline=(40, 40, 40),
                 width=max(1, round(ss)))
    label.ellipse([hc[0] - hr, hc[1] - hr, hc[0] + hr, hc[1] + hr], fill=label_value)
    colors = JOINT_MARKER_COLORS
    for k in range(15):
        r = (0.55 if k in (_J["nose"], _J["head_top"], _J["head_bottom"]) else 0.45) * lw * ss
        r = max(r, 1.6 * ss)
        cx, cy = s(j[k])
        dark = tuple(int(v * 0.55) for v in colors[k]) if any(colors[k]) else (128, 128, 128)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colors[k], outline=dark, width=max(1, round(0.5 * ss)))
        r1 = max(r / ss, 1.0)
        label.ellipse([j[k, 0] - r1, j[k, 1] - r1, j[k, 0] + r1, j[k, 1] + r1], fill=label_value)


@dataclass
class _Occluder:
    start: np.ndarray
    end: np.ndarray
    size: np.ndarray
    colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    ellipse: bool
    stripe: float


def _make_occluder(rng: np.random.Generator, cfg: SynthConfig) -> _Occluder:
    w, h = cfg.width, cfg.height
    size = np.array([rng.uniform(0.14, 0.25) * w, rng.uniform(0.2, 0.4) * h])
    y0 = rng.uniform(0.15, 0.85) * h
    left_to_right = rng.random() < 0.5
    xs = (-0.1 * w, 1.1 * w) if left_to_right else (1.1 * w, -0.1 * w)
    g1, g2 = rng.integers(60, 200, 2)
    tint = rng.integers(-25, 26, 3)
    return _Occluder(start=np.array([xs[0], y0]), end=np.array([xs[1], y0 + rng.uniform(-0.2, 0.2) * h]),
                     size=size, colors=(tuple(int(np.clip(g1 + t, 0, 255)) for t in tint),
                                        tuple(int(np.clip(g2 + t, 0, 255)) for t in tint)),
                     ellipse=bool(rng.random() < 0.4), stripe=float(rng.uniform(5, 12)))


def _draw_occluder(draw, label, occ: _Occluder, frac: float, ss: float) -> None:
    c = occ.start + (occ.end - occ.start) * frac
    x0, y0 = c - occ.size / 2
    x1, y1 = c + occ.size / 2
    box = [x0, y0, x1, y1]
    sbox = [ss * x0, ss * y0, ss * x1, ss * y1]
    if occ.ellipse:
        draw.ellipse(sbox, fill=occ.colors[0])
        label.ellipse(box, fill=255)
    else:
        draw.rectangle(sbox, fill=occ.colors[0])
        x = x0 + occ.stripe / 2
        while x < x1:  # vertical stripes
            draw.rectangle([ss * x, ss * y0, ss * min(x + occ.stripe / 2, x1), ss * y1], fill=occ.colors[1])
            x += occ.stripe
        label.rectangle(box, fill=255)


# ------------------------------------------------------------------------------------------------ videos
def render_video(seq: int, frames: int, seed: int = 0, cfg: SynthConfig | None = None):
    """Render one synthetic video.

    Args:
        seq: the video's sequence number (part of its random seed).
        frames: number of frames.
        seed: dataset seed.
        cfg: rendering parameters.

    Returns:
        ``(images, people)``: a list of ``frames`` PIL RGB images and, per frame, a list of
        ``(track_id, joints15 (15, 2), occluded15 (15,) bool, head_box (4,), limb_width)``.
    """
    cfg = cfg or SynthConfig()
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    image_cls, draw_cls = _pil()
    rng = np.random.default_rng([int(seed), int(seq)])
    w, h, ss = cfg.width, cfg.height, 2
    bg = _background(rng, w * ss, h * ss)
    n = int(rng.integers(cfg.persons[0], cfg.persons[1] + 1))
    figs = [_make_figure(rng, cfg, i, n, frames) for i in range(n)]
    order = rng.permutation(n)  # drawing order (depth)
    occs = [_make_occluder(rng, cfg)] if rng.random() < cfg.occluder_prob else []
    images, people = [], []
    for t in range(frames):
        img = image_cls.fromarray(bg.astype(np.uint8))
        lab = image_cls.new("L", (w, h), 0)
        draw, ldraw = draw_cls.Draw(img), draw_cls.Draw(lab)
        poses = {}
        for i in order:
            j, extra = _pose(figs[i], t)
            poses[i] = (j, extra)
            _draw_figure(draw, ldraw, figs[i], j, extra, ss, label_value=int(i) + 1)
        for occ in occs:
            _draw_occluder(draw, ldraw, occ, t / max(frames - 1, 1), ss)
        img = img.resize((w, h), image_cls.BOX)
        lab_arr = np.asarray(lab)
        frame_people = []
        for i in range(n):
            j, extra = poses[i]
            xi = np.clip(np.round(j[:, 0]).astype(int), 0, w - 1)
            yi = np.clip(np.round(j[:, 1]).astype(int), 0, h - 1)
            occluded = lab_arr[yi, xi] != i + 1
            hc, hr = extra["head_center"], extra["head_radius"]
            head = np.array([hc[0] - hr, hc[1] - hr, 2 * hr, 2 * hr])
            frame_people.append((i, j, occluded, head, figs[i].limb_width))
        images.append(img)
        people.append(frame_people)
    return images, people


def _annotation(track: int, j: np.ndarray, occluded: np.ndarray, head: np.ndarray, lw: float, w: int,
                h: int) -> Person | None:
    inside = (j[:, 0] >= 0) & (j[:, 0] <= w - 1) & (j[:, 1] >= 0) & (j[:, 1] <= h - 1)
    if not inside.any():
        return None
    kp15 = np.zeros((15, 3))
    kp15[inside, :2] = j[inside]
    kp15[inside, 2] = 1.0
    occ15 = np.zeros((15, 1))
    occ15[inside, 0] = occluded[inside]
    pts = np.concatenate([j[inside], head[None, :2], head[None, :2] + head[None, 2:]])
    lo = np.clip(pts.min(axis=0) - lw, 0, [w - 1, h - 1])
    hi = np.clip(pts.max(axis=0) + lw, 0, [w - 1, h - 1])
    return Person(
        keypoints=np.round(slots15_to_17(kp15), 2), track_id=int(track),
        bbox=np.round(np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]]), 2),
        bbox_head=np.round(head, 2),
        extra={"occluded": [int(v) for v in slots15_to_17(occ15)[:, 0]]},
    )


def make_video(seq: int, split: str, frames: int, seed: int = 0, cfg: SynthConfig | None = None,
               root: str | Path | None = None) -> Video:
    """Render video ``seq`` and return its PoseTrack18 :class:`Video`; with ``root``, also write the images
    under ``root/images/<split>/<name>/`` (the annotation file is written by :func:`make_dataset`)."""
    cfg = cfg or SynthConfig()
    images, people = render_video(seq, frames, seed, cfg)
    name = f"{seq:06d}_mpii_{split}"
    video = Video(name=name, skeleton="posetrack18")
    for t, (img, ppl) in enumerate(zip(images, people, strict=True)):
        fid = 10_000_000_000 + seq * 10_000 + t
        file_name = f"images/{split}/{name}/{t:06d}.{cfg.ext}"
        labeled = t % cfg.label_every == 0
        frame = Frame(file_name=file_name, id=fid, frame_id=fid, is_labeled=labeled, vid_id=f"{seq:06d}",
                      nframes=frames, width=cfg.width, height=cfg.height)
        if labeled:
            for pi, (track, j, occ, head, lw) in enumerate(ppl):
                p = _annotation(track, j, occ, head, lw, cfg.width, cfg.height)
                if p is not None:
                    p.id = fid * 100 + pi
                    frame.people.append(p)
        video.frames.append(frame)
        if root is not None:
            path = Path(root) / file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            if cfg.ext == "jpg":
                img.save(path, quality=cfg.jpeg_quality)
            else:
                img.save(path)
    return video


def make_dataset(root: str | Path, videos: int, frames: int, seed: int = 0, val_videos: int | None = None,
                 cfg: SynthConfig | None = None) -> dict[str, list[str]]:
    """Write a synthetic dataset in PoseTrack18 layout.

    Layout: ``root/images/{train,val}/<video>/NNNNNN.<ext>``, ``root/annotations/{train,val}/<video>.json`` and
    ``root/synth.json`` (the settings, and ``"mirror_consistent": false``: see :func:`mirror_inconsistent`).
    Videos ``1..videos - val_videos`` go to train, the rest to val.

    Args:
        root: output folder.
        videos: number of videos (>= 1).
        frames: frames per video (>= 1).
        seed: random seed; the output is a pure function of (seed, config, video number).
        val_videos: videos in val; default ``max(1, round(videos / 4))``.
        cfg: rendering parameters.

    Returns:
        ``{"train": [video names], "val": [video names]}``.
    """
    if videos < 1:
        raise ValueError(f"videos must be >= 1, got {videos}")
    n_val = max(1, round(videos / 4)) if val_videos is None else int(val_videos)
    if not 0 <= n_val <= videos:
        raise ValueError(f"val_videos must be in [0, {videos}], got {val_videos}")
    cfg = cfg or SynthConfig()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"generator": "glsmamba synth", "seed": seed, "videos": videos, "frames": frames, "val_videos": n_val,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()},
            "mirror_consistent": False,
            "note": "figures are colour-coded left (warm) / right (cool): a mirrored image contradicts its swapped "
                    "labels, so train without flip augmentation and evaluate without the flip test"}
    (root / SYNTH_META).write_text(json.dumps(meta, indent=1) + "\n")
    out: dict[str, list[str]] = {"train": [], "val": []}
    for seq in range(1, videos + 1):
        split = "train" if seq <= videos - n_val else "val"
        video = make_video(seq, split, frames, seed, cfg, root)
        write_posetrack18(video, root / "annotations" / split / f"{video.name}.json")
        out[split].append(video.name)
    return out


def mirror_inconsistent(root: str | Path) -> bool:
    """True when ``root`` was written by :func:`make_dataset` with left/right colour coding (``synth.json``):
    flip augmentation and the flip test then contradict the labels."""
    path = Path(root) / SYNTH_META
    if not path.is_file():
        return False
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("mirror_consistent") is False


def occluded_mask(person: Person) -> np.ndarray:
    """``(15,)`` bool: the synthetic GT's ``occluded`` flags in network joint order (all False if absent)."""
    occ = person.extra.get("occluded")
    if occ is None:
        return np.zeros(15, dtype=bool)
    return np.asarray(occ, dtype=bool)[list(SLOTS_15)]
