"""Top-down transforms and the heatmap codec: hand-computed conventions and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from glsmamba.vhpe.codec import (
    decode_heatmaps,
    encode_heatmaps,
    flip_back,
    flip_test,
    gaussian_kernel1d,
    heatmap_to_image,
    image_to_heatmap,
    keypoints_from_heatmaps,
)
from glsmamba.vhpe.skeleton import COCO17, JHMDB15, POSETRACK15, POSETRACK18
from glsmamba.vhpe.transforms import (
    Augment,
    affine_points,
    box_to_center_scale,
    flip_joints,
    get_affine_transform,
    warp_affine,
)

# codec outputs are float32; comparisons of float32 results against float64 hand values use this bound
F32 = 1e-5


# ----------------------------------------------------------------------------------------------- transforms
def test_box_to_center_scale_hand_values():
    c, s = box_to_center_scale([10, 20, 60, 100])  # tall: w = 0.75 * 100 = 75
    np.testing.assert_array_equal(c, [40, 70])
    np.testing.assert_array_equal(s, [75 / 200 * 1.25, 100 / 200 * 1.25])
    c, s = box_to_center_scale([0, 0, 200, 100])  # wide: h = 200 / 0.75
    np.testing.assert_array_equal(c, [100, 50])
    np.testing.assert_allclose(s, [1.25, 200 / 0.75 / 200 * 1.25], rtol=1e-15)
    with pytest.raises(ValueError, match=r"box must have 4 values x, y, w, h, got shape \(3,\)"):
        box_to_center_scale([1, 2, 3])


def test_affine_hand_values():
    # 240 x 320 px box centred at (100, 100) onto 192 x 256: zoom 0.8, centre -> (96, 128)
    m = get_affine_transform([100, 100], [1.2, 1.6], 0, (192, 256))
    np.testing.assert_allclose(m, [[0.8, 0, 16], [0, 0.8, 48]], atol=1e-12)
    np.testing.assert_allclose(get_affine_transform([100, 100], [1.2, 1.6], 0, (192, 256), inv=True),
                               [[1.25, 0, -20], [0, 1.25, -60]], atol=1e-12)
    # rot = 90: x' = y + 100, y' = -x + 100 (image right -> crop up)
    m = get_affine_transform([0, 0], [1, 1], 90, (200, 200))
    np.testing.assert_allclose(m, [[0, 1, 100], [-1, 0, 100]], atol=1e-12)
    # heatmap transform = crop transform / 4
    mi = get_affine_transform([50, 70], [0.9, 1.2], 30, (192, 256))
    mh = get_affine_transform([50, 70], [0.9, 1.2], 30, (48, 64))
    np.testing.assert_allclose(mh, mi / 4, atol=1e-12)


def test_back_projection_formula_at_rot0():
    """mmpose 0.x transform_preds: X = x * S_w / W + c_x - S_w / 2 with S = scale * 200."""
    rng = np.random.default_rng(0)
    c, s = np.array([123.4, 77.7]), np.array([0.8, 1.0667])
    pts = rng.uniform(0, 48, (20, 2))
    got = heatmap_to_image(pts, c, s, (48, 64))
    sw = s[0] * 200  # MSRA zooms by the width; the aspect is already 0.75
    want = np.stack([pts[:, 0] * sw / 48 + c[0] - sw / 2, pts[:, 1] * sw / 48 + c[1] - (sw / 48 * 64) / 2], 1)
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_crop_back_projection_is_identity():
    rng = np.random.default_rng(1)
    for _ in range(20):
        c, s = box_to_center_scale(rng.uniform([0, 0, 20, 20], [300, 200, 200, 300]))
        rot = rng.uniform(-90, 90)
        pts = rng.uniform(-50, 400, (15, 2))
        hm = image_to_heatmap(pts, c, s, (48, 64), rot)
        crop = affine_points(pts, get_affine_transform(c, s, rot, (192, 256)))
        np.testing.assert_allclose(hm * 4, crop, atol=1e-9)
        np.testing.assert_allclose(heatmap_to_image(hm, c, s, (48, 64), rot), pts, atol=1e-9)


def test_warp_affine_hand_values():
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = warp_affine(img, np.array([[1.0, 0, 1], [0, 1, 0]]), (4, 3))  # shift right by 1
    np.testing.assert_array_equal(out, [[0, 0, 1, 2], [0, 4, 5, 6], [0, 8, 9, 10]])
    out = warp_affine(img, np.array([[1.0, 0, -0.5], [0, 1, 0]]), (4, 3))  # half-pixel left shift
    np.testing.assert_allclose(out[0], [0.5, 1.5, 2.5, 1.5])  # last: 0.5 * 3 + 0.5 * (outside = 0)
    out = warp_affine(img, np.array([[2.0, 0, 0], [0, 2, 0]]), (8, 6))  # 2x zoom: output (u,v) <- (u/2, v/2)
    assert out[2, 3] == pytest.approx(0.5 * (img[1, 1] + img[1, 2]))
    rgb = np.stack([img, img + 1, img + 2], -1)
    assert warp_affine(rgb, np.eye(2, 3), (4, 3)).shape == (3, 4, 3)


def test_flip_joints_and_pairs():
    j = np.array([[10.0, 5, 1], [20, 6, 1], [30, 7, 0]])
    f = flip_joints(j, 100, [(1, 2)])
    np.testing.assert_array_equal(f, [[89, 5, 1], [69, 7, 0], [79, 6, 1]])
    assert POSETRACK15.flip_indices == [0, 1, 2, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13]
    assert POSETRACK18.flip_pairs == ((3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
    for sk in (POSETRACK15, POSETRACK18, COCO17, JHMDB15):
        for a, b in sk.flip_pairs:
            assert sk.joints[a].replace("left", "right") == sk.joints[b]
    s, r, fl = Augment(rot_prob=1.0, flip_prob=1.0).sample(np.random.default_rng(0))
    assert 0.65 <= s <= 1.35 and -90 <= r <= 90 and fl


# ----------------------------------------------------------------------------------------------- encode
def test_msra_target_hand_values():
    heat, w = encode_heatmaps([[50.0, 30.0]])  # /4 = (12.5, 7.5) -> mu = int(13.0), int(8.0)
    assert heat.shape == (1, 64, 48) and w[0] == 1
    assert heat[0, 8, 13] == 1.0
    assert heat[0, 8, 14] == pytest.approx(math.exp(-1 / 8), abs=F32)
    assert heat[0, 8, 19] == pytest.approx(math.exp(-36 / 8), abs=F32)  # window edge: mu + 3 sigma
    assert heat[0, 8, 20] == 0 and heat[0, 15, 13] == 0  # outside the 13 x 13 window
    assert heat[0, 14, 13] == pytest.approx(math.exp(-36 / 8), abs=F32)
    assert np.count_nonzero(heat) == 13 * 13


@pytest.mark.parametrize(
    "x, weight, col47",
    [
        (-30.0, 1.0, 0.0),  # mu = int(-7.0) = -7: window [-13, 0) - off the map but kept (HRNet's br < 0 test)
        (-34.0, 0.0, 0.0),  # mu = -8: br = -1 < 0 -> weight 0
        (211.0, 1.0, math.exp(-36 / 8)),  # mu = int(53.25) = 53: column 47 = mu - 6
        (215.0, 0.0, 0.0),  # mu = 54: ul = 48 >= W -> weight 0
    ],
)
def test_msra_target_border_rules(x, weight, col47):
    heat, w = encode_heatmaps([[x, 100.0]])
    assert w[0] == weight
    assert heat[0, 25, 47] == pytest.approx(col47, abs=F32)


def test_target_weights_visibility_and_joint_weights():
    j = np.array([[50.0, 30, 1], [60, 40, 0], [70, 50, 1]])
    heat, w = encode_heatmaps(j, visible=j[:, 2], joint_weights=[1.0, 1.2, 1.5])
    np.testing.assert_allclose(w, [1.0, 0.0, 1.5])
    assert heat[1].max() == 0
    assert POSETRACK15.joint_weights[POSETRACK15.index("left_wrist")] == 1.5
    assert POSETRACK15.joint_weights[POSETRACK15.index("right_knee")] == 1.2


# ----------------------------------------------------------------------------------------------- decode
def test_quarter_offset_hand_values():
    h = np.zeros((1, 1, 64, 48), dtype=np.float32)
    h[0, 0, 20, 10] = 1.0
    h[0, 0, 20, 11], h[0, 0, 20, 9] = 0.5, 0.2  # right higher -> +0.25 x
    h[0, 0, 19, 10], h[0, 0, 21, 10] = 0.3, 0.3  # equal -> no y offset
    for rule in ("dcpose", "mmpose1"):
        c, s = decode_heatmaps(h, rule=rule)
        np.testing.assert_array_equal(c[0, 0], [10.25, 20.0])
        assert s[0, 0] == 1.0
    # peak at x = 1: DCPose needs 1 < x and 1 < y together -> no offset; mmpose 1.x still offsets y
    h = np.zeros((1, 1, 64, 48), dtype=np.float32)
    h[0, 0, 30, 1], h[0, 0, 31, 1], h[0, 0, 30, 2] = 1.0, 0.4, 0.6
    np.testing.assert_array_equal(decode_heatmaps(h, rule="dcpose")[0][0, 0], [1.0, 30.0])
    np.testing.assert_array_equal(decode_heatmaps(h, rule="mmpose1")[0][0, 0], [1.0, 30.25])
    # peak at y = 63 (last row): DCPose none; mmpose 1.x x offset only
    h = np.zeros((1, 1, 64, 48), dtype=np.float32)
    h[0, 0, 63, 20], h[0, 0, 63, 19] = 1.0, 0.5
    np.testing.assert_array_equal(decode_heatmaps(h, rule="dcpose")[0][0, 0], [20.0, 63.0])
    np.testing.assert_array_equal(decode_heatmaps(h, rule="mmpose1")[0][0, 0], [19.75, 63.0])
    # non-positive maps are masked: 0 (DCPose) / -1 (mmpose 1.x)
    h = -np.ones((1, 1, 64, 48), dtype=np.float32)
    h[0, 0, 5, 7] = 0.0
    np.testing.assert_array_equal(decode_heatmaps(h, rule="dcpose")[0][0, 0], [0.0, 0.0])
    np.testing.assert_array_equal(decode_heatmaps(h, rule="mmpose1")[0][0, 0], [-1.0, -1.0])


def test_gaussian_kernel_matches_opencv_rule():
    g = gaussian_kernel1d(11)  # sigma = 0.3 * ((11 - 1) / 2 - 1) + 0.8 = 2
    x = np.arange(-5, 6)
    want = np.exp(-(x**2) / 8)
    np.testing.assert_allclose(g, want / want.sum(), rtol=1e-12)


def test_encode_decode_subpixel_accuracy():
    """Float-centred Gaussians decode within 1/4 heatmap px (argmax + offset) and < 0.1 px (DARK)."""
    rng = np.random.default_rng(2)
    # points >= 6 heatmap px from the border: DARK's 11 x 11 blur of a map cut off by the border is biased
    # (up to ~0.2 px at 3 px from the edge, as in mmpose); the argmax bound holds everywhere we test too
    pts = rng.uniform([24, 24], [164, 228], (300, 2))
    heat, w = encode_heatmaps(pts, unbiased=True)
    assert (w == 1).all()
    true = pts / 4
    c, _ = decode_heatmaps(heat[None], method="msra")
    assert np.abs(c[0] - true).max() <= 0.25 + F32
    c, _ = decode_heatmaps(heat[None], method="dark")
    assert np.linalg.norm(c[0] - true, axis=1).max() < 0.1
    # MSRA (integer-centred) targets decode to the rounded centre: within half a pixel
    heat, _ = encode_heatmaps(pts)
    c, _ = decode_heatmaps(heat[None], method="msra")
    assert np.abs(c[0] - true).max() <= 0.5 + F32


def test_keypoints_from_heatmaps_roundtrip():
    rng = np.random.default_rng(3)
    c, s = box_to_center_scale([40, 30, 90, 150])
    pts_img = rng.uniform([50, 40], [120, 170], (15, 2))
    crop_pts = affine_points(pts_img, get_affine_transform(c, s, 0, (192, 256)))
    heat, _ = encode_heatmaps(crop_pts, unbiased=True)
    kp, sc = keypoints_from_heatmaps(heat[None], c[None], s[None], method="dark")
    px = s[0] * 200 / 48  # image pixels per heatmap pixel
    assert np.abs(kp[0] - pts_img).max() < 0.1 * px
    assert sc.shape == (1, 15) and (sc > 0.9).all()


# ----------------------------------------------------------------------------------------------- flip test
def test_flip_back_hand_values_numpy_and_torch():
    h = np.zeros((1, 15, 64, 48), dtype=np.float32)
    lw = POSETRACK15.index("left_wrist")
    rw = POSETRACK15.index("right_wrist")
    h[0, lw, 7, 10] = 1.0
    for arr in (h, torch.from_numpy(h)):
        out = np.asarray(flip_back(arr, POSETRACK15.flip_indices, shift=True))
        assert out[0, rw, 7, 38] == 1.0 and out.sum() == 1.0  # column 47 - 10 = 37, shifted right -> 38
        out = np.asarray(flip_back(arr, POSETRACK15.flip_indices, shift=False))
        assert out[0, rw, 7, 37] == 1.0
    # the shift keeps column 0 and drops the last column
    h2 = np.zeros((1, 15, 4, 48), dtype=np.float32)
    h2[0, 0, :, 47] = 2.0  # mirrored to column 0
    out = flip_back(h2, POSETRACK15.flip_indices, shift=True)
    assert (out[0, 0, :, 0] == 2).all() and (out[0, 0, :, 1] == 2).all()
    np.testing.assert_array_equal(flip_back(flip_back(h, POSETRACK15.flip_indices, False),
                                            POSETRACK15.flip_indices, False), h)
    with pytest.raises(ValueError, match="K = len"):
        flip_back(h[:, :14], POSETRACK15.flip_indices)


def _equivariant_model(k: int, flip_indices: list[int], seed: int = 0):
    """A linear 'model' that commutes with flips: kernels of paired joints are mirror images, centre joints'
    kernels are symmetric, so model(mirror(x))[j] = mirror(model(x))[flip(j)]."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(k, 3, 5, 5, generator=g)
    kern = base.clone()
    for j in range(k):
        f = flip_indices[j]
        if f == j:
            kern[j] = 0.5 * (base[j] + base[j].flip(-1))
        elif j > f:
            kern[j] = base[f].flip(-1)
    return lambda x: torch.nn.functional.conv2d(x, kern, padding=2)


def test_flip_test_on_symmetric_input_is_symmetric():
    fi = POSETRACK15.flip_indices
    model = _equivariant_model(15, fi)
    x = torch.rand(2, 3, 64, 48)
    # an equivariant model makes the (unshifted) flip test a no-op
    torch.testing.assert_close(flip_test(model, x, fi, shift=False), model(x), rtol=0, atol=1e-5)
    xs = 0.5 * (x + x.flip(-1))  # a mirror-symmetric input
    out = flip_test(model, xs, fi, shift=False)
    torch.testing.assert_close(out, out.flip(-1)[:, fi], rtol=0, atol=1e-5)  # symmetric, channels swapped
    coords, _ = decode_heatmaps(out, rule="mmpose1")
    for a, b in POSETRACK15.flip_pairs:  # decoded pairs mirror about the centre column (W - 1) / 2
        np.testing.assert_allclose(coords[:, a, 0] + coords[:, b, 0], 47.0, atol=F32)
        np.testing.assert_allclose(coords[:, a, 1], coords[:, b, 1], atol=F32)
    # with the shift: 0.5 * (out + out shifted right one pixel, column 0 kept)
    m = model(xs)
    shifted = m.clone()
    shifted[..., 1:] = m[..., :-1]
    torch.testing.assert_close(flip_test(model, xs, fi, shift=True), 0.5 * (m + shifted), rtol=0, atol=1e-5)
