"""Heatmap codec: Gaussian targets, argmax/quarter-offset and DARK decoding, flip test, back-projection.

Conventions (``docs/pose-formats.md`` section 3):

* Targets (MSRA): input 192 x 256 -> heatmap 48 x 64 (stride 4), sigma 2. A joint at input ``(x, y)`` gets
  centre ``mu = int(x / 4 + 0.5)`` (``int`` truncates toward zero, as the reference code) and the unnormalised
  Gaussian ``exp(-d^2 / (2 sigma^2))`` (peak 1) inside the ``(6 sigma + 1)^2`` window around ``mu``. A joint
  whose window lies wholly outside the map, or that is not visible, gets weight 0 and an empty map. Weights
  are then multiplied by the per-joint loss weights when given.
* Targets (unbiased / DARK): the Gaussian is centred at the float ``mu = x / 4`` over the whole map.
* Decoding: argmax over the flattened map, ``x = idx mod W``, ``y = idx div W``, score = max; a max <= 0 masks
  the location (0 under the ``dcpose`` rule, -1 under ``mmpose1``). Then the quarter offset
  ``+0.25 * sign(neighbour difference)`` per axis. Two boundary rules exist:

  - ``"dcpose"`` (DCPose, HRNet, mmpose 0.x): only when ``1 < x < W-1`` *and* ``1 < y < H-1``;
  - ``"mmpose1"`` (mmpose 1.x ``refine_keypoints``): x offset when ``1 < x < W-1`` and ``0 < y < H``; y offset
    when ``1 < y < H-1`` and ``0 < x < W``.
* DARK: blur each map with an 11 x 11 Gaussian (sigma 2, zero border, rescaled to the original max), take
  ``log(max(h, 1e-10))`` and one Newton step from the argmax using central differences, when
  ``1 < x < W-2`` and ``1 < y < H-2`` and the Hessian is invertible.
* Flip test: flip the crop, run the model, flip its heatmaps back along W, swap left/right channels, shift one
  pixel right (``h[..., 1:] = h[..., :-1]``; off for UDP) and average with the plain output.
* Back-projection: heatmap ``(x, y)`` -> image via the inverse MSRA affine for the heatmap size; at rotation 0
  this is ``X = x * S_w / W + c_x - S_w / 2`` with ``S = scale * 200`` (mmpose 0.x ``transform_preds``).
"""

from __future__ import annotations

import numpy as np

from .transforms import HEATMAP_SIZE, INPUT_SIZE, affine_points, get_affine_transform

DECODE_RULES = ("dcpose", "mmpose1")


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_heatmaps(heatmaps, name: str = "heatmaps") -> np.ndarray:
    h = _as_numpy(heatmaps)
    if h.ndim < 3:
        raise ValueError(f"{name} must have shape (..., K, H, W), got {h.shape}")
    return h.astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------------ encode
def encode_heatmaps(joints, visible=None, heatmap_size=HEATMAP_SIZE, image_size=INPUT_SIZE, sigma: float = 2.0,
                    joint_weights=None, unbiased: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian target heatmaps for one person (MSRA, or unbiased/DARK with ``unbiased=True``).

    Args:
        joints: ``(K, 2)`` or ``(K, 3)`` joint coordinates in input-crop pixels (third column ignored).
        visible: ``(K,)`` bool/0-1; joints with ``visible <= 0.5`` get weight 0. Default: all visible.
        heatmap_size: ``(W, H)`` of the heatmap (48, 64).
        image_size: ``(W, H)`` of the input crop (192, 256).
        sigma: Gaussian sigma in heatmap pixels.
        joint_weights: optional ``(K,)`` loss weights multiplied into the target weights.
        unbiased: centre the Gaussian at the float location over the whole map (DARK targets).

    Returns:
        heatmaps ``(K, H, W)`` float32 and target weights ``(K,)`` float32.
    """
    j = np.asarray(joints, dtype=np.float64)
    if j.ndim != 2 or j.shape[1] < 2:
        raise ValueError(f"joints must have shape (K, 2) or (K, 3), got {j.shape}")
    k = j.shape[0]
    vis = np.ones(k) if visible is None else np.asarray(visible, dtype=np.float64).reshape(-1)
    if vis.shape != (k,):
        raise ValueError(f"visible must have shape ({k},), got {np.shape(visible)}")
    hw, hh = int(heatmap_size[0]), int(heatmap_size[1])
    stride = np.array([image_size[0] / hw, image_size[1] / hh], dtype=np.float64)
    heat = np.zeros((k, hh, hw), dtype=np.float32)
    weight = (vis > 0.5).astype(np.float32)
    radius = 3 * sigma
    xs = np.arange(hw, dtype=np.float64)[None, :]
    ys = np.arange(hh, dtype=np.float64)[:, None]
    for i in range(k):
        if weight[i] == 0:
            continue
        if unbiased:
            mu = j[i, :2] / stride
            lo, hi = mu - radius, mu + radius + 1
        else:
            mu = np.trunc(j[i, :2] / stride + 0.5)
            lo, hi = np.trunc(mu - radius), np.trunc(mu + radius + 1)
        if lo[0] >= hw or lo[1] >= hh or hi[0] < 0 or hi[1] < 0:
            weight[i] = 0
            continue
        g = np.exp(-((xs - mu[0]) ** 2 + (ys - mu[1]) ** 2) / (2 * sigma**2))
        if not unbiased:  # the (6 sigma + 1)^2 window [lo, hi)
            win = (xs >= lo[0]) & (xs < hi[0]) & (ys >= lo[1]) & (ys < hi[1])
            g = np.where(win, g, 0.0)
        heat[i] = g
    if joint_weights is not None:
        jw = np.asarray(joint_weights, dtype=np.float32).reshape(-1)
        if jw.shape != (k,):
            raise ValueError(f"joint_weights must have shape ({k},), got {np.shape(joint_weights)}")
        weight = weight * jw
    return heat, weight


# ------------------------------------------------------------------------------------------------ decode
def get_max_preds(heatmaps, masked_value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Argmax of each map.

    Args:
        heatmaps: ``(..., K, H, W)``.
        masked_value: coordinate written where the max is <= 0 (0 for DCPose, -1 for mmpose 1.x).

    Returns:
        coords ``(..., K, 2)`` float32 (x, y) in heatmap pixels and maxvals ``(..., K)`` float32.
    """
    h = _check_heatmaps(heatmaps)
    hh, hw = h.shape[-2:]
    flat = h.reshape(*h.shape[:-2], hh * hw)
    idx = flat.argmax(axis=-1)
    maxvals = np.take_along_axis(flat, idx[..., None], axis=-1)[..., 0]
    coords = np.stack([idx % hw, idx // hw], axis=-1).astype(np.float32)
    coords[maxvals <= 0] = masked_value
    return coords, maxvals.astype(np.float32)


def _quarter_offset(coords: np.ndarray, h: np.ndarray, rule: str) -> np.ndarray:
    hh, hw = h.shape[-2:]
    out = coords.copy()
    flat_h = h.reshape(-1, hh, hw)
    flat_c = out.reshape(-1, 2)
    for n in range(flat_h.shape[0]):
        m = flat_h[n]
        if rule == "dcpose":
            px, py = int(np.floor(flat_c[n, 0] + 0.5)), int(np.floor(flat_c[n, 1] + 0.5))
            if 1 < px < hw - 1 and 1 < py < hh - 1:
                flat_c[n, 0] += 0.25 * np.sign(m[py, px + 1] - m[py, px - 1])
                flat_c[n, 1] += 0.25 * np.sign(m[py + 1, px] - m[py - 1, px])
        else:
            x, y = int(flat_c[n, 0]), int(flat_c[n, 1])
            dx = m[y, x + 1] - m[y, x - 1] if (1 < x < hw - 1 and 0 < y < hh) else 0.0
            dy = m[y + 1, x] - m[y - 1, x] if (1 < y < hh - 1 and 0 < x < hw) else 0.0
            flat_c[n] += 0.25 * np.sign(np.array([dx, dy], dtype=np.float32))
    return out


def decode_heatmaps(heatmaps, method: str = "msra", rule: str = "dcpose",
                    blur_kernel: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps -> keypoints in heatmap pixels.

    Args:
        heatmaps: ``(..., K, H, W)`` numpy array or torch tensor.
        method: ``"msra"`` (argmax + quarter offset) or ``"dark"`` (argmax + DARK Newton step).
        rule: quarter-offset boundary rule, ``"dcpose"`` or ``"mmpose1"`` (module docstring); also sets the
            masked value of non-positive maps (0 or -1).
        blur_kernel: DARK blur kernel size (odd).

    Returns:
        coords ``(..., K, 2)`` float32 and scores ``(..., K)`` float32 (the map maxima).
    """
    if rule not in DECODE_RULES:
        raise ValueError(f"rule must be one of {DECODE_RULES}, got {rule!r}")
    h = _check_heatmaps(heatmaps)
    coords, maxvals = get_max_preds(h, masked_value=0.0 if rule == "dcpose" else -1.0)
    if method == "msra":
        return _quarter_offset(coords, h, rule), maxvals
    if method == "dark":
        return refine_dark(coords, h, blur_kernel), maxvals
    raise ValueError(f"method must be 'msra' or 'dark', got {method!r}")


def gaussian_kernel1d(ksize: int, sigma: float = 0.0) -> np.ndarray:
    """``cv2.getGaussianKernel`` for odd ``ksize > 7`` (sigma <= 0 -> ``0.3((ksize-1)/2 - 1) + 0.8``)."""
    if ksize % 2 != 1 or ksize < 1:
        raise ValueError(f"ksize must be a positive odd integer, got {ksize}")
    if sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def gaussian_blur(heatmaps, kernel: int = 11) -> np.ndarray:
    """DARK's blur: zero-padded separable Gaussian blur of each map, rescaled to the map's original max.

    Args:
        heatmaps: ``(..., H, W)``.
        kernel: odd kernel size (11 -> sigma 2).

    Returns:
        blurred maps, same shape, float32.
    """
    h = np.asarray(heatmaps, dtype=np.float64)
    g = gaussian_kernel1d(kernel)
    b = (kernel - 1) // 2
    hh, hw = h.shape[-2:]
    pad = np.zeros(h.shape[:-2] + (hh + 2 * b, hw + 2 * b))
    pad[..., b:b + hh, b:b + hw] = h
    tmp = sum(g[i] * pad[..., :, i:i + hw] for i in range(kernel))  # along W
    out = sum(g[i] * tmp[..., i:i + hh, :] for i in range(kernel))  # along H
    omax = h.max(axis=(-2, -1), keepdims=True)
    nmax = out.max(axis=(-2, -1), keepdims=True)
    out = out * np.where(nmax != 0, omax / np.where(nmax != 0, nmax, 1.0), 1.0)
    return out.astype(np.float32)


def refine_dark(coords, heatmaps, blur_kernel: int = 11) -> np.ndarray:
    """DARK refinement of integer argmax ``coords (..., K, 2)`` on ``heatmaps (..., K, H, W)``."""
    h = _check_heatmaps(heatmaps)
    hh, hw = h.shape[-2:]
    logh = np.log(np.maximum(gaussian_blur(h, blur_kernel).astype(np.float64), 1e-10)).reshape(-1, hh, hw)
    out = np.array(coords, dtype=np.float32, copy=True)
    flat = out.reshape(-1, 2)
    for n in range(logh.shape[0]):
        m = logh[n]
        x, y = int(flat[n, 0]), int(flat[n, 1])
        if not (1 < x < hw - 2 and 1 < y < hh - 2):
            continue
        dx = 0.5 * (m[y, x + 1] - m[y, x - 1])
        dy = 0.5 * (m[y + 1, x] - m[y - 1, x])
        dxx = 0.25 * (m[y, x + 2] - 2 * m[y, x] + m[y, x - 2])
        dyy = 0.25 * (m[y + 2, x] - 2 * m[y, x] + m[y - 2, x])
        dxy = 0.25 * (m[y + 1, x + 1] - m[y - 1, x + 1] - m[y + 1, x - 1] + m[y - 1, x - 1])
        det = dxx * dyy - dxy**2
        if det != 0:
            hess = np.array([[dxx, dxy], [dxy, dyy]])
            flat[n] -= (np.linalg.inv(hess) @ np.array([dx, dy])).astype(np.float32)
    return out


# ------------------------------------------------------------------------------------------------ flip test
def flip_back(heatmaps, flip_indices, shift: bool = True):
    """Undo a horizontal flip on heatmaps of a flipped crop.

    Args:
        heatmaps: ``(..., K, H, W)`` numpy array or torch tensor (the model output on the flipped crop).
        flip_indices: ``(K,)`` ``flip_indices[j]`` = the channel that joint ``j`` becomes after a flip.
        shift: shift one pixel right (MSRA/DARK; ``False`` for UDP).

    Returns:
        the maps in the unflipped frame (same type and shape).
    """
    k = heatmaps.shape[-3] if len(heatmaps.shape) >= 3 else -1
    idx = list(flip_indices)
    if len(heatmaps.shape) < 3 or len(idx) != k:
        raise ValueError(f"heatmaps must have shape (..., K, H, W) with K = len(flip_indices) = {len(idx)}, "
                         f"got {tuple(heatmaps.shape)}")
    if hasattr(heatmaps, "detach"):  # torch
        out = heatmaps.flip(-1)[..., idx, :, :].clone()
        if shift:
            out[..., 1:] = out[..., :-1].clone()
        return out
    out = np.asarray(heatmaps)[..., ::-1][..., idx, :, :].copy()
    if shift:
        out[..., 1:] = out[..., :-1].copy()
    return out


def flip_test(model, crops, flip_indices, shift: bool = True):
    """Average the model's heatmaps on ``crops`` and on the flipped crops (flipped back).

    Args:
        model: callable ``(N, ..., H_in, W_in) -> (N, K, H, W)``; the last axis of ``crops`` is width.
        crops: torch tensor or numpy array of crops (a clip ``(N, T, 3, H, W)`` works too).
        flip_indices: ``(K,)`` joint permutation of a flip.
        shift: the one-pixel shift (True for MSRA/DARK).

    Returns:
        ``0.5 * (model(crops) + flip_back(model(flip(crops))))``.
    """
    flipped = crops.flip(-1) if hasattr(crops, "detach") else np.ascontiguousarray(np.asarray(crops)[..., ::-1])
    return 0.5 * (model(crops) + flip_back(model(flipped), flip_indices, shift))


# ------------------------------------------------------------------------------------------------ back-projection
def heatmap_to_image(coords, center, scale, heatmap_size=HEATMAP_SIZE, rot: float = 0.0) -> np.ndarray:
    """Heatmap coordinates of one person -> image coordinates (inverse MSRA affine for the heatmap size).

    Args:
        coords: ``(K, 2)`` (or ``(..., 2)``) heatmap coordinates.
        center, scale: the crop's centre ``(2,)`` and scale ``(2,)`` (units of 200 px).
        heatmap_size: ``(W, H)``.
        rot: the crop rotation in degrees (0 at test time).

    Returns:
        ``(..., 2)`` float64 image coordinates.
    """
    inv = get_affine_transform(center, scale, rot, heatmap_size, inv=True)
    return affine_points(coords, inv)


def image_to_heatmap(points, center, scale, heatmap_size=HEATMAP_SIZE, rot: float = 0.0) -> np.ndarray:
    """Image coordinates -> heatmap coordinates of the crop (forward MSRA affine for the heatmap size)."""
    return affine_points(points, get_affine_transform(center, scale, rot, heatmap_size))


def keypoints_from_heatmaps(heatmaps, centers, scales, method: str = "msra", rule: str = "dcpose",
                            heatmap_size=None) -> tuple[np.ndarray, np.ndarray]:
    """Decode a batch and project it back to the image.

    Args:
        heatmaps: ``(N, K, H, W)``.
        centers, scales: ``(N, 2)`` each.
        method, rule: see :func:`decode_heatmaps`.
        heatmap_size: ``(W, H)``; default = the maps' own size.

    Returns:
        keypoints ``(N, K, 2)`` float64 in image pixels and scores ``(N, K)`` float32.
    """
    h = _check_heatmaps(heatmaps)
    if h.ndim != 4:
        raise ValueError(f"heatmaps must have shape (N, K, H, W), got {h.shape}")
    c, s = np.asarray(centers, dtype=np.float64), np.asarray(scales, dtype=np.float64)
    if c.shape != (h.shape[0], 2) or s.shape != (h.shape[0], 2):
        raise ValueError(f"centers and scales must have shape ({h.shape[0]}, 2), got {c.shape} and {s.shape}")
    size = heatmap_size or (h.shape[-1], h.shape[-2])
    coords, scores = decode_heatmaps(h, method=method, rule=rule)
    out = np.stack([heatmap_to_image(coords[n], c[n], s[n], size) for n in range(h.shape[0])])
    return out, scores
