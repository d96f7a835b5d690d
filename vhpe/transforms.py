"""Top-down geometry: box -> centre/scale, the MSRA affine crop, flips, half-body and augmentation sampling.

Conventions (``docs/pose-formats.md`` section 3, the HRNet/DCPose "MSRA" ones):

* A box ``x, y, w, h`` becomes a centre ``(x + w/2, y + h/2)`` and a scale in units of ``PIXEL_STD = 200`` px:
  the box is widened or heightened to the aspect ratio ``w/h = 0.75`` and padded by 1.25.
* :func:`get_affine_transform` maps the scaled box (``scale * 200`` px wide, rotated by ``rot`` degrees about
  the centre) onto an ``output_size = (W, H)`` canvas with the centre at ``(W/2, H/2)``: three point pairs
  (the centre, a point ``scale_w * 200 / 2`` above it, and the point at a right angle) define the affine map,
  as ``cv2.getAffineTransform`` would. The same function with the heatmap size gives the heatmap map, so
  heatmap coordinates are crop coordinates divided by the stride (4).
* :func:`warp_affine` emulates ``cv2.warpAffine(..., INTER_LINEAR, BORDER_CONSTANT=0)``: output pixel
  ``(u, v)`` (integer pixel centres) samples the input bilinearly at ``M^-1 (u, v, 1)``; out-of-image
  neighbours count as 0.
* Horizontal flips of an image of width ``w`` map ``x -> w - 1 - x`` and swap left/right joints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PIXEL_STD = 200.0
ASPECT_RATIO = 0.75  # input width / height = 192 / 256
PADDING = 1.25
INPUT_SIZE = (192, 256)  # (W, H)
HEATMAP_SIZE = (48, 64)  # (W, H)


def _vec2(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.shape != (2,):
        raise ValueError(f"{name} must have 2 values, got shape {np.shape(x)}")
    return a


def box_to_center_scale(box, aspect_ratio: float = ASPECT_RATIO, padding: float = PADDING,
                        pixel_std: float = PIXEL_STD) -> tuple[np.ndarray, np.ndarray]:
    """Person box -> centre and scale (HRNet ``_xywh2cs``).

    Args:
        box: ``(4,)`` ``x, y, w, h`` in pixels.
        aspect_ratio: crop width / height (0.75 for 192 x 256).
        padding: enlargement factor (1.25).
        pixel_std: scale unit in pixels (200).

    Returns:
        center ``(2,)`` and scale ``(2,)`` (in units of ``pixel_std``), float64.
    """
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.shape != (4,):
        raise ValueError(f"box must have 4 values x, y, w, h, got shape {np.shape(box)}")
    x, y, w, h = b
    center = np.array([x + w * 0.5, y + h * 0.5])
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    scale = np.array([w / pixel_std, h / pixel_std]) * padding
    return center, scale


def center_scale_to_box(center, scale, pixel_std: float = PIXEL_STD) -> np.ndarray:
    """The ``x, y, w, h`` box covered by a centre/scale (the padded, aspect-fixed box)."""
    c, s = _vec2(center, "center"), _vec2(scale, "scale") * pixel_std
    return np.array([c[0] - s[0] / 2, c[1] - s[1] / 2, s[0], s[1]])


def _rotate(pt: np.ndarray, rot_rad: float) -> np.ndarray:
    sn, cs = math.sin(rot_rad), math.cos(rot_rad)
    return np.array([pt[0] * cs - pt[1] * sn, pt[0] * sn + pt[1] * cs])


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    return b + np.array([-d[1], d[0]])


def _affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix ``M`` with ``M @ [src_i, 1] = dst_i`` for three point pairs."""
    a = np.concatenate([src, np.ones((3, 1))], axis=1)  # (3, 3)
    return np.linalg.solve(a, dst).T  # (2, 3)


def get_affine_transform(center, scale, rot: float, output_size, shift=(0.0, 0.0), inv: bool = False,
                         pixel_std: float = PIXEL_STD) -> np.ndarray:
    """MSRA affine transform from the image to an ``output_size`` crop (or back with ``inv``).

    Args:
        center: ``(2,)`` box centre in image pixels.
        scale: ``(2,)`` box size / ``pixel_std``; only ``scale[0]`` (the width) sets the zoom, as in MSRA.
        rot: rotation in degrees; positive turns the crop window clockwise in the displayed image (so the
            content appears turned counter-clockwise in the crop), the MSRA sign convention.
        output_size: ``(W, H)`` of the crop (``(192, 256)``) or of the heatmap (``(48, 64)``).
        shift: fractional shift of the centre in units of the box size.
        inv: return the crop -> image transform instead.

    Returns:
        ``(2, 3)`` float64 matrix acting on column vectors ``(x, y, 1)``.
    """
    c, s = _vec2(center, "center"), _vec2(scale, "scale") * pixel_std
    out_w, out_h = (float(v) for v in _vec2(output_size, "output_size"))
    shift = _vec2(shift, "shift")
    rot_rad = math.pi * rot / 180.0
    src_dir = _rotate(np.array([0.0, s[0] * -0.5]), rot_rad)
    dst_dir = np.array([0.0, out_w * -0.5])
    src = np.zeros((3, 2))
    dst = np.zeros((3, 2))
    src[0] = c + s * shift
    src[1] = c + src_dir + s * shift
    dst[0] = [out_w * 0.5, out_h * 0.5]
    dst[1] = dst[0] + dst_dir
    src[2] = _third_point(src[0], src[1])
    dst[2] = _third_point(dst[0], dst[1])
    return _affine_from_points(dst, src) if inv else _affine_from_points(src, dst)


def affine_points(points, mat) -> np.ndarray:
    """Apply a ``(2, 3)`` affine matrix to ``(..., 2)`` points."""
    p = np.asarray(points, dtype=np.float64)
    m = np.asarray(mat, dtype=np.float64)
    if p.shape[-1] != 2:
        raise ValueError(f"points must have shape (..., 2), got {p.shape}")
    if m.shape != (2, 3):
        raise ValueError(f"mat must have shape (2, 3), got {m.shape}")
    return p @ m[:, :2].T + m[:, 2]


def invert_affine(mat) -> np.ndarray:
    """Inverse of a ``(2, 3)`` affine matrix."""
    m = np.vstack([np.asarray(mat, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(m)[:2]


def warp_affine(image, mat, output_size, border_value: float = 0.0) -> np.ndarray:
    """Bilinear affine warp of an image (``cv2.warpAffine`` INTER_LINEAR, constant border).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array (any real dtype).
        mat: ``(2, 3)`` image -> output matrix.
        output_size: ``(W_out, H_out)``.
        border_value: value of pixels outside the image.

    Returns:
        ``(H_out, W_out[, C])`` float32 array.
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must have shape (H, W) or (H, W, C), got {img.shape}")
    squeeze = img.ndim == 2
    if squeeze:
        img = img[:, :, None]
    h, w, c = img.shape
    out_w, out_h = (int(v) for v in _vec2(output_size, "output_size"))
    inv = invert_affine(mat)
    u = np.arange(out_w, dtype=np.float64)[None, :]
    v = np.arange(out_h, dtype=np.float64)[:, None]
    # source coordinates, clamped to [-1, w] x [-1, h]: beyond that both neighbours are border pixels
    sx = np.clip(inv[0, 0] * u + inv[0, 1] * v + inv[0, 2], -1.0, float(w)).reshape(-1)
    sy = np.clip(inv[1, 0] * u + inv[1, 1] * v + inv[1, 2], -1.0, float(h)).reshape(-1)
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = (sx - x0).astype(np.float32)[:, None], (sy - y0).astype(np.float32)[:, None]
    # image padded with the border value: 1 pixel before, 2 after, so indices -1..w+1 are valid
    pw = w + 3
    pad = np.full((h + 3, pw, c), border_value, dtype=np.float32)
    pad[1:h + 1, 1:w + 1] = img
    flat = pad.reshape(-1, c)
    i00 = (y0.astype(np.int64) + 1) * pw + (x0.astype(np.int64) + 1)
    out = ((1 - fy) * ((1 - fx) * flat[i00] + fx * flat[i00 + 1])
           + fy * ((1 - fx) * flat[i00 + pw] + fx * flat[i00 + pw + 1]))
    out = out.reshape(out_h, out_w, c)
    return out[:, :, 0] if squeeze else out


def flip_joints(joints, width: float, flip_pairs) -> np.ndarray:
    """Mirror ``(K, D)`` joints (``x, y, ...``) in an image of ``width``: ``x -> width - 1 - x``, swap pairs.

    Every row is mirrored (callers keep using the visibility column, which moves with its joint).
    """
    j = np.array(joints, dtype=np.float64, copy=True)
    if j.ndim != 2 or j.shape[1] < 2:
        raise ValueError(f"joints must have shape (K, D>=2), got {j.shape}")
    j[:, 0] = width - 1 - j[:, 0]
    for a, b in flip_pairs:
        j[[a, b]] = j[[b, a]]
    return j


def half_body_center_scale(joints, visible, upper_ids, lower_ids, rng: np.random.Generator,
                           aspect_ratio: float = ASPECT_RATIO, pixel_std: float = PIXEL_STD,
                           factor: float = 1.5) -> tuple[np.ndarray, np.ndarray] | None:
    """HRNet half-body crop: pick the upper or lower body's visible joints and box them.

    Args:
        joints: ``(K, >=2)`` joints in image pixels.
        visible: ``(K,)`` bool.
        upper_ids, lower_ids: joint indices of the two halves.
        rng: random generator. As HRNet, the upper half is taken when ``N(0, 1) < 0.5`` (probability ~0.69)
            and it has more than 2 visible joints, else the lower half if it has more than 2, else the upper.
        factor: box enlargement (1.5).

    Returns:
        ``(center, scale)`` or ``None`` when the chosen half has fewer than two visible joints.
    """
    vis = np.asarray(visible, dtype=bool)
    upper = [i for i in upper_ids if vis[i]]
    lower = [i for i in lower_ids if vis[i]]
    sel = upper if (rng.standard_normal() < 0.5 and len(upper) > 2) else (lower if len(lower) > 2 else upper)
    if len(sel) < 2:
        return None
    pts = np.asarray(joints, dtype=np.float64)[sel, :2]
    center = pts.mean(axis=0)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    w, h = hi - lo
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w / pixel_std, h / pixel_std]) * factor


@dataclass(frozen=True)
class Augment:
    """Training augmentation (DCPose/HRNet defaults).

    Attributes:
        scale_factor: scale *= clip(N(0,1) * sf + 1, 1 - sf, 1 + sf).
        rot_factor: rot = clip(N(0,1) * rf, -2 rf, 2 rf) with probability ``rot_prob``, else 0.
        rot_prob: probability of rotating.
        flip_prob: probability of a horizontal flip.
        half_body_prob: probability of a half-body crop when more than ``half_body_min_joints`` are visible.
        half_body_min_joints: see above (8 in HRNet).
    """

    scale_factor: float = 0.35
    rot_factor: float = 45.0
    rot_prob: float = 0.6
    flip_prob: float = 0.5
    half_body_prob: float = 0.0
    half_body_min_joints: int = 8

    def sample(self, rng: np.random.Generator) -> tuple[float, float, bool]:
        """-> (scale multiplier, rotation in degrees, flip)."""
        sf, rf = self.scale_factor, self.rot_factor
        s = float(np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf))
        r = float(np.clip(rng.standard_normal() * rf, -2 * rf, 2 * rf)) if rng.random() < self.rot_prob else 0.0
        return s, r, bool(rng.random() < self.flip_prob)
