"""npvitpose.decode against spec 5.1-5.6 transcriptions (tests/twins_pipeline.py), cv2 and known answers."""

from pathlib import Path

import cv2
import numpy as np
import pytest

import twins_pipeline as twins
from npvitpose.decode import (
    dark_udp,
    decode,
    flip_back,
    gaussian_blur,
    gaussian_kernel,
    get_max_preds,
    instance_scores,
    oks_nms,
    quarter_shift,
    to_image,
)
from npvitpose.errors import NpvitposeError

H, W = 64, 48


def cv2_blur(m):
    return cv2.GaussianBlur(m, (11, 11), 0)


def gaussians(centers, sigma=2.0, noise=0.0, seed=0):
    """(N, K, 64, 48) float32 Gaussian bumps of peak 1 at the given (x, y) centres (N, K, 2)."""
    yy, xx = np.mgrid[0:H, 0:W]
    cx, cy = centers[..., 0, None, None], centers[..., 1, None, None]
    maps = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    maps += np.random.default_rng(seed).normal(0, noise, maps.shape)
    return maps.astype(np.float32)


def random_centers(n, k, seed, margin=7.0):
    rng = np.random.default_rng(seed)
    return rng.uniform([margin, margin], [W - 1 - margin, H - 1 - margin], (n, k, 2))


def test_gaussian_kernel_is_opencvs():
    assert np.array_equal(gaussian_kernel(), cv2.getGaussianKernel(11, 0, ktype=cv2.CV_32F).ravel())


def test_blur_matches_cv2_gaussian_blur():
    maps = np.random.default_rng(1).uniform(-0.1, 1.0, (3, 4, H, W)).astype(np.float32)
    want = np.stack([[cv2_blur(m) for m in row] for row in maps])
    assert np.abs(gaussian_blur(maps) - want).max() < 3e-7
    # also near edges and corners, where reflect-101 matters
    spikes = np.zeros((4, H, W), np.float32)
    spikes[0, 0, 0] = spikes[1, H - 1, 3] = spikes[2, 5, W - 1] = spikes[3, 30, 20] = 1
    assert np.abs(gaussian_blur(spikes) - np.stack([cv2_blur(m) for m in spikes])).max() < 3e-8


def test_blur_matches_recorded_opencv4():
    f = np.load(Path(__file__).parent / "data" / "warp_cv4.npz")
    assert np.abs(gaussian_blur(f["blur_in"]) - f["blur_out"]).max() < 3e-7


def test_get_max_preds_matches_official_transcription():
    rng = np.random.default_rng(2)
    maps = rng.uniform(-1, 1, (3, 5, H, W)).astype(np.float32)
    maps[0, 0] = -np.abs(maps[0, 0])  # all negative
    maps[0, 1] = 0  # all zero
    maps[1, 2] = 0.5
    maps[1, 2, 10, 20] = maps[1, 2, 30, 5] = 0.9  # tie: the first in row-major order wins
    coords, maxvals = get_max_preds(maps)
    want_c, want_v = twins.get_max_preds(maps)
    assert coords.dtype == np.float32 and maxvals.dtype == np.float32
    assert np.array_equal(coords, want_c) and np.array_equal(maxvals, want_v)
    assert coords[0, 0].tolist() == [-1, -1] and coords[0, 1].tolist() == [-1, -1]
    assert coords[1, 2].tolist() == [20, 10]


def test_dark_udp_equals_official_formulas():
    # straight transcription: cv2.GaussianBlur on the whole map, flat padded indices, np.linalg.inv
    centers = random_centers(12, 17, seed=3, margin=0.5)
    maps = gaussians(centers, noise=0.02, seed=3)
    coords, _ = get_max_preds(maps)
    got = dark_udp(maps, coords)
    want = twins.dark_udp(maps, coords, cv2_blur)
    assert got.dtype == np.float32
    # only the blur differs (float64 here, float32 in cv2, ~1e-7): a few float32 ulps at most
    assert np.abs(got - want).max() < 5e-5
    assert np.abs(got - coords).max() > 0.1  # the refinement did something


def test_dark_udp_recovers_subpixel_centres():
    centers = random_centers(20, 17, seed=4)
    maps = gaussians(centers)
    coords, _ = get_max_preds(maps)
    refined = dark_udp(maps, coords)
    assert np.abs(coords - centers).max() > 0.4  # argmax alone is off by up to half a pixel
    assert np.abs(refined - centers).max() < 0.01
    noisy = gaussians(centers, noise=0.01, seed=5)
    c, _ = get_max_preds(noisy)
    err = np.abs(dark_udp(noisy, c) - centers)
    assert err.mean() < 0.05 and err.max() < 0.3


def test_degenerate_maps_stay_at_minus_one_without_wraparound():
    centers = random_centers(2, 4, seed=6)
    maps = gaussians(centers)
    maps[0, 1] = 0.0  # all zero
    maps[1, 3] = -np.abs(maps[1, 3]) - 0.1  # all negative
    maps[1, 0, 0, 0] = np.nan  # NaN: argmax picks it, max is NaN, not > 0
    coords, maxvals = get_max_preds(maps)
    refined = dark_udp(maps, coords)
    for i, j in [(0, 1), (1, 3), (1, 0)]:
        assert refined[i, j].tolist() == [-1.0, -1.0]
        assert not maxvals[i, j] > 0
    valid = np.ones((2, 4), bool)
    valid[0, 1] = valid[1, 3] = valid[1, 0] = False
    assert np.abs(refined[valid] - centers[valid]).max() < 0.01  # neighbours in the batch are unaffected
    kpts, scores = decode(maps, np.full((2, 2), 100, np.float32), np.ones((2, 2), np.float32), "udp")
    assert np.isfinite(kpts).all() and scores[0, 1] == 0 and scores[1, 3] < 0


def test_quarter_shift_matches_official_loop_including_strict_bounds():
    rng = np.random.default_rng(7)
    maps = rng.uniform(0, 1, (4, 17, H, W)).astype(np.float32)
    maps[0, 0, 5, 9] = maps[0, 0, 5, 10] = 2  # equal neighbours: sign(0) = 0 along x after the argmax
    spots = [(1, 20), (2, 20), (W - 2, 20), (W - 1, 20), (20, 1), (20, 2), (20, H - 2), (20, H - 1), (0, 0)]
    for j, (x, y) in enumerate(spots, start=1):
        maps[1, j, y, x] = 5
    coords, _ = get_max_preds(maps)
    coords[2, 3] = -1
    got = quarter_shift(maps, coords)
    assert np.array_equal(got, twins.quarter_shift(maps, coords))
    assert got[1, 1].tolist() == [1, 20] and got[1, 2, 0] != 2  # px = 1 excluded, px = 2 shifted
    assert got[1, 3, 0] != W - 2 and got[1, 4].tolist() == [W - 1, 20]


@pytest.mark.parametrize("shift", [False, True])
def test_flip_back_matches_official(shift):
    maps = np.random.default_rng(8).normal(size=(3, 17, H, W)).astype(np.float32)
    pairs = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16]]
    got = flip_back(maps, pairs, shift)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, twins.flip_back(maps, pairs, shift))


def test_flip_back_rejects_pairs_out_of_range():
    with pytest.raises(NpvitposeError, match=r"flip pair \(1, 17\)"):
        flip_back(np.zeros((1, 17, 4, 4), np.float32), [[1, 17]], False)


@pytest.mark.parametrize("mode", ["udp", "classic"])
def test_to_image_matches_transform_preds(mode):
    rng = np.random.default_rng(9)
    coords = rng.uniform(-1, 63, (5, 17, 2)).astype(np.float32)
    centers = rng.uniform(0, 1000, (5, 2)).astype(np.float32)
    scales = rng.uniform(0.05, 3, (5, 2)).astype(np.float32)
    got = to_image(coords, centers, scales, mode)
    want = np.stack([twins.transform_preds(coords[i], centers[i], scales[i], (W, H), mode == "udp") for i in range(5)])
    assert got.dtype == np.float32 and np.array_equal(got, want)


def test_to_image_maps_heatmap_corners_to_the_roi():
    center, scale = np.array([[100.0, 200.0]], np.float32), np.array([[0.24, 0.32]], np.float32)  # S = 48 x 64
    corners = np.array([[[0, 0], [W - 1, H - 1], [W, H]]], np.float32)
    udp = to_image(corners, center, scale, "udp")[0]
    classic = to_image(corners, center, scale, "classic")[0]
    assert np.allclose(udp[:2], [[76, 168], [124, 232]])  # UDP: first/last cell centres hit the ROI edges
    assert np.allclose(classic[[0, 2]], [[76, 168], [124, 232]])  # classic: cell edges do


def test_decode_rules():
    centers = random_centers(2, 5, seed=10)
    maps = gaussians(centers)
    c, s = np.array([[50, 60], [70, 80]], np.float32), np.array([[0.3, 0.4], [0.6, 0.8]], np.float32)
    raw, _ = get_max_preds(maps)
    k_udp, scores = decode(maps, c, s, "udp")
    assert np.array_equal(k_udp, to_image(dark_udp(maps, raw), c, s, "udp"))
    assert np.array_equal(scores, get_max_preds(maps)[1])
    k_cls, _ = decode(maps, c, s, "classic")
    assert np.array_equal(k_cls, to_image(quarter_shift(maps, raw), c, s, "classic"))
    assert np.array_equal(decode(maps, c, s, "udp", "argmax")[0], to_image(raw, c, s, "udp"))
    assert np.array_equal(decode(maps, c, s, "udp", "quarter")[0], to_image(quarter_shift(maps, raw), c, s, "udp"))
    assert np.array_equal(decode(maps, c, s, "classic", "dark-udp")[0], to_image(dark_udp(maps, raw), c, s, "classic"))
    with pytest.raises(NpvitposeError, match="decode rule"):
        decode(maps, c, s, "udp", "unbiased")
    with pytest.raises(NpvitposeError, match="mode"):
        decode(maps, c, s, "megvii")


def test_instance_scores():
    kpt = np.array([[0.9, 0.1, 0.5, 0.2], [0.1, 0.0, 0.2, 0.15]], np.float32)
    got = instance_scores([0.8, 0.7], kpt)
    assert got.dtype == np.float64
    assert got[0] == pytest.approx(0.8 * (float(np.float32(0.9)) + float(np.float32(0.5))) / 2, rel=1e-15)
    assert got[1] == 0.0  # no keypoint above 0.2 (strict): the mean counts as 0


def test_oks_nms_matches_transcription():
    rng = np.random.default_rng(11)
    base = rng.uniform(0, 300, (4, 17, 2)).astype(np.float32)
    kpts = np.concatenate([base, base + rng.normal(0, 1.5, base.shape).astype(np.float32)])  # near-duplicates
    kpts = np.concatenate([kpts, base[:2] + 40]).astype(np.float32)
    scores = rng.uniform(0, 1, len(kpts))
    areas = np.full(len(kpts), 150.0 * 200.0, np.float32)
    sigmas = np.array([26, 25, 25, 35, 35, 79, 79, 72, 72, 62, 62, 107, 107, 87, 87, 89, 89]) / 1000  # COCO
    keep = oks_nms(kpts, scores, areas, sigmas, 0.9)
    assert keep.tolist() == twins.oks_nms(kpts, scores, areas, sigmas, 0.9)
    assert 4 <= len(keep) < len(kpts)  # duplicates removed, distinct people kept
    assert oks_nms(np.zeros((0, 17, 2)), [], [], sigmas).tolist() == []
