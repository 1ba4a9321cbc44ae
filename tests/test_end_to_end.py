"""The whole pipeline on a real photo against an independent reference: the official evaluation pipeline.

Reference (spec 0): OpenCV 4.x crops recorded by `tools/record_end_to_end.py` (the installed OpenCV is 5.x,
whose warp differs, spec 4.5), NumPy transcriptions of the official normalization, flip test and decoding
(spec 4.6, 5.1-5.5), and transformers' `VitPoseForPoseEstimation` (float32, CPU, eager) on the same seeded
weights. Engine: the checkpoint written to disk, `npvitpose.convert.convert`, `npvitpose.load`, then
`model(image, boxes)` on the whole astronaut photo. Nothing on the reference side calls npvitpose.
Set NPVITPOSE_REPORT=1 to write the measured errors to /tmp/npvitpose_end_to_end_report.json.
"""

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: reach the helper module
import hf_reference as R  # noqa: E402

import npvitpose  # noqa: E402
from npvitpose.convert import convert  # noqa: E402

cv2 = pytest.importorskip("cv2")
skimage_data = pytest.importorskip("skimage.data")
HAVE_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))

FIXTURE = Path(__file__).resolve().parent / "data" / "end_to_end" / "crops_cv4.npz"
REPORT_PATH = Path("/tmp/npvitpose_end_to_end_report.json")

KEYPOINT_MEDIAN_BAR = 0.05  # image px, the bar
KEYPOINT_MAX_BAR = 0.5  # image px
SCORE_BAR = 1e-3
HEATMAP_BAR = 1e-5  # max|err| / max|ref|
# ours, about 25x the measured worst case: the bars alone miss a 4-corner dxy here (median 0.03 px)
TIGHT_KEYPOINT_BAR = 0.01  # image px

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # spec 4.6, RGB
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
HEAT_W, HEAT_H = 48, 64

# spec 5.1 flip-pair table, written out here rather than taken from npvitpose.datasets
COCO_PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]
AIC_PAIRS = [(0, 3), (1, 4), (2, 5), (6, 9), (7, 10), (8, 11)]

# (case id, reference variant, checkpoint format, dataset, warp/decode mode of that dataset's config, spec 4.2)
CASES = {
    "coco-udp-simplehead-hf": (R.Variant("e2e-coco-s-simple", 384, 2, 12, simple=True, seed=32), "hf", "coco",
                               "udp", COCO_PAIRS),
    "aic-classic-deconvhead-pth": (R.Variant("e2e-aic-s-classic", 384, 2, 12, num_keypoints=14, seed=34), "pth",
                                   "aic", "classic", AIC_PAIRS),
}

# Peaked heads. Plain random heads give textured maps whose maximum is barely above the runner-up, so the
# argmax (and the classic quarter shift) could flip on float32 noise. Here each keypoint reads mainly one
# channel that a ReLU threshold has made sparse, and the upsampling taps are lopsided (equal even/odd sums,
# so no checkerboard) so that a peak seldom straddles two equal pixels. test_reference_is_not_trivial
# checks the result; most seeds pass it, one whose keypoint channels are all zero on some crop would not.
UPSAMPLE_TAPS = np.array([1.5, 3.5, 2.5, 0.5], dtype=np.float32) / 4
SMOOTH_TAPS = np.array([0.8, 2.0, 1.2], dtype=np.float32) / 4
THRESHOLD = 0.25  # in units of the normalized activation: about 40% survives the ReLU
ASYMMETRY = 0.3  # what is left of the antisymmetric part: exact symmetry would make exact ties
SECONDARY = 0.5  # weight of each keypoint's second, unshared channel
MIX = 0.01  # weight of the other channels: every map gets some signal even where its channel is all zero


def mirror_mostly(a, axis):
    """The mirror-symmetric part of `a` along `axis` plus ASYMMETRY times its antisymmetric part."""
    flipped = np.flip(a, axis=axis)
    return ((a + flipped) * 0.5 + (a - flipped) * (0.5 * ASYMMETRY)).astype(np.float32)


def peaked_weights(v: R.Variant, pairs) -> dict:
    """hf_reference's seeded official weights, made roughly mirror-symmetric and with peaked heatmaps.

    A trained model predicts nearly the same peak on the mirrored crop, so the flip test (spec 5.1)
    averages two overlapping peaks. Here too: the patch kernels and the position table are symmetric
    under a left-right flip, and the two keypoints of a flip pair share their main channel.
    """
    sd = R.official_weights(v)
    proj = sd["backbone.patch_embed.proj.weight"]  # (C, 3, 16, 16)
    sd["backbone.patch_embed.proj.weight"] = mirror_mostly(proj, axis=-1)
    grid = sd["backbone.pos_embed"][0, 1:].reshape(*R.GRID_HW, v.dim)
    sd["backbone.pos_embed"][0, 1:] = mirror_mostly(grid, axis=1).reshape(-1, v.dim)
    rng = np.random.default_rng(1000 + v.seed)
    k = v.num_keypoints
    channels = v.dim if v.simple else 256
    mix = (rng.standard_normal((k, channels)) * MIX).astype(np.float32)  # (K, C)
    primary = rng.integers(0, channels, k)
    for left, right in pairs:
        primary[right] = primary[left]
    mix[np.arange(k), primary] += 1.0  # shared by a flip pair: the flipped pass peaks at the same place
    mix[np.arange(k), rng.integers(0, channels, k)] += SECONDARY  # its own: left and right maps differ
    sd["keypoint_head.final_layer.bias"] = np.zeros(k, dtype=np.float32)
    if v.simple:  # spec 2.2: ReLU(last_norm) -> bilinear x4 -> 3x3 conv; the threshold is last_norm's bias
        sd["backbone.last_norm.bias"] = sd["backbone.last_norm.bias"] - np.float32(THRESHOLD)
        taps = np.outer(SMOOTH_TAPS, SMOOTH_TAPS[::-1])
        sd["keypoint_head.final_layer.weight"] = (mix[:, :, None, None] * taps).astype(np.float32)
        return sd
    # spec 2.1: deconv -> BN -> ReLU (the threshold) -> deconv (spreads the survivors) -> BN -> ReLU -> 1x1 conv
    taps = np.outer(UPSAMPLE_TAPS[::-1], UPSAMPLE_TAPS)
    proj = (rng.standard_normal((v.dim, 256)) / np.sqrt(v.dim)).astype(np.float32)
    sd["keypoint_head.deconv_layers.0.weight"] = (proj[:, :, None, None] * taps).astype(np.float32)
    sd["keypoint_head.deconv_layers.3.weight"] = (np.eye(256, dtype=np.float32)[:, :, None, None] * taps).astype(
        np.float32)
    for bn, bias in (("1", -THRESHOLD), ("4", 0.0)):
        sd[f"keypoint_head.deconv_layers.{bn}.weight"] = np.ones(256, dtype=np.float32)
        sd[f"keypoint_head.deconv_layers.{bn}.bias"] = np.full(256, bias, dtype=np.float32)
        sd[f"keypoint_head.deconv_layers.{bn}.running_mean"] = np.zeros(256, dtype=np.float32)
        sd[f"keypoint_head.deconv_layers.{bn}.running_var"] = np.ones(256, dtype=np.float32)
    sd["keypoint_head.final_layer.weight"] = mix[:, :, None, None]
    return sd


# ---- reference pipeline: NumPy transcriptions of the official formulas (spec 4.6, 5.1-5.5) ----

def normalize(crops):
    """(N, 256, 192, 3) uint8 RGB -> (N, 3, 256, 192) float32: to_tensor (/255) then NormalizeTensor."""
    x = crops.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(((x - MEAN) / STD).transpose(0, 3, 1, 2))


def flip_back(flipped, pairs, shift):
    """spec 5.1 steps 3-4: swap each left/right channel pair, reverse W, then (classic) shift right by one."""
    out = flipped.copy()
    for left, right in pairs:
        out[:, left] = flipped[:, right]
        out[:, right] = flipped[:, left]
    out = out[..., ::-1].copy()
    if shift:
        out[..., 1:] = out[..., :-1].copy()  # column 0 keeps its value
    return out


def max_preds(heatmaps):
    """spec 5.2: first argmax in row-major order and its value; (x, y) float32."""
    n, k, _, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    idx = np.argmax(flat, axis=2)
    maxvals = np.amax(flat, axis=2)
    preds = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
    preds[maxvals <= 0] = -1
    return preds, maxvals


def dark_udp(coords, heatmaps):
    """spec 5.3: cv2 11x11 blur (sigma 0 -> 2), clip, log, edge pad, derivatives, one float64 Newton step."""
    maps = heatmaps.copy()
    for per_person in maps:
        for m in per_person:
            cv2.GaussianBlur(m, (11, 11), 0, m)
    np.clip(maps, 0.001, 50, maps)
    np.log(maps, maps)
    pad = np.pad(maps, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    coords = coords.copy()
    for n in range(coords.shape[0]):
        for k in range(coords.shape[1]):
            x, y = int(coords[n, k, 0]) + 1, int(coords[n, k, 1]) + 1  # indices into the padded map
            p = pad[n, k]
            i = p[y, x]
            dx = 0.5 * (p[y, x + 1] - p[y, x - 1])
            dy = 0.5 * (p[y + 1, x] - p[y - 1, x])
            dxx = p[y, x + 1] - 2 * i + p[y, x - 1]
            dyy = p[y + 1, x] - 2 * i + p[y - 1, x]
            # the 7-point dxy of spec 5.3, not the 4-corner form
            dxy = 0.5 * (p[y + 1, x + 1] - p[y, x + 1] - p[y + 1, x] + i + i - p[y, x - 1] - p[y - 1, x]
                         + p[y - 1, x - 1])
            hess = np.array([[dxx, dxy], [dxy, dyy]], dtype=np.float32) + np.finfo(np.float32).eps * np.eye(2)
            step = np.linalg.inv(hess) @ np.array([dx, dy], dtype=np.float32)
            coords[n, k] = (coords[n, k].astype(np.float64) - step).astype(np.float32)
    return coords


def quarter_shift(coords, heatmaps):
    """spec 5.4: +-0.25 toward the higher neighbour, only for 1 < px < W - 1 and 1 < py < H - 1."""
    coords = coords.copy()
    h, w = heatmaps.shape[2:]
    for n in range(coords.shape[0]):
        for k in range(coords.shape[1]):
            m = heatmaps[n, k]
            px, py = int(coords[n, k, 0] + 0.5), int(coords[n, k, 1] + 0.5)
            if 1 < px < w - 1 and 1 < py < h - 1:
                diff = np.array([m[py, px + 1] - m[py, px - 1], m[py + 1, px] - m[py - 1, px]])
                coords[n, k] += np.sign(diff).astype(np.float32) * np.float32(0.25)
    return coords


def transform_preds(coords, center, scale, udp):
    """spec 5.5: heatmap -> image, dividing the ROI by (W_h - 1, H_h - 1) for UDP, by (W_h, H_h) classic."""
    roi = scale.astype(np.float32) * np.float32(200.0)  # (N, 2)
    cells = np.array([HEAT_W, HEAT_H], dtype=np.float64) - (1.0 if udp else 0.0)
    per_cell = (roi.astype(np.float64) / cells).astype(np.float32)
    out = coords * per_cell[:, None] + center[:, None].astype(np.float32)
    return (out - (roi.astype(np.float64) * 0.5).astype(np.float32)[:, None]).astype(np.float32)


def reference_pipeline(hf, crops, center, scale, mode, pairs):
    """Official test-time pipeline on recorded OpenCV 4 crops.

    Returns the flip-averaged heatmaps (N, K, 64, 48), the integer argmax and the refined heatmap
    coordinates (N, K, 2), the image keypoints (N, K, 2) and the scores (N, K).
    """
    import torch

    x = normalize(crops)
    both = np.concatenate([x, x[..., ::-1]])  # spec 5.1 step 2: img.flip(3)
    with torch.no_grad():
        heat = hf(torch.from_numpy(np.ascontiguousarray(both))).heatmaps.numpy()
    n = len(crops)
    avg = (heat[:n] + flip_back(heat[n:], pairs, shift=mode == "classic")) * np.float32(0.5)  # spec 5.1 step 5
    coords, maxvals = max_preds(avg)
    refined = dark_udp(coords, avg) if mode == "udp" else quarter_shift(coords, avg)
    return avg, coords, refined, transform_preds(refined, center, scale, udp=mode == "udp"), maxvals


# ---- running both sides ----

_RUNS = {}
_REPORT = {}


@pytest.fixture(scope="module")
def recorded():
    f = np.load(FIXTURE)
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def photo():
    return skimage_data.astronaut()


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if os.environ.get("NPVITPOSE_REPORT") and _REPORT:
        REPORT_PATH.write_text(json.dumps(_REPORT, indent=1, sort_keys=True))


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("end_to_end")


def run(case, recorded, photo, tmp_root):
    """Reference and engine outputs for one case (computed once per module)."""
    if case in _RUNS:
        return _RUNS[case]
    v, fmt, dataset, mode, pairs = CASES[case]
    sd = peaked_weights(v, pairs)
    work = tmp_root / case
    work.mkdir()
    if fmt == "pth":
        hf = R.hf_model(v, sd, R.OFFICIAL_LN_EPS)
        src = work / "checkpoint.pth"
        R.write_pth(sd, src)
    else:
        hf = R.hf_model(v, sd, R.HF_DEFAULT_LN_EPS)
        src = work / "hf"
        R.write_hf_folder(hf, src)
    ref_heat, ref_argmax, ref_refined, ref_kpts, ref_scores = reference_pipeline(
        hf, recorded[f"{mode}_crops"], recorded["center"], recorded["scale"], mode, pairs)
    del hf
    meta = convert(src, work / "model.npz", dataset=dataset)
    model = npvitpose.load(work / "model.npz")
    kpts, scores, heat = model(photo, recorded["boxes"], box_format="xywh", color="rgb", return_heatmaps=True)
    _RUNS[case] = {"mode": mode, "meta": meta, "model": model, "kpts": kpts, "scores": scores, "heat": heat,
                   "ref_heat": ref_heat, "ref_argmax": ref_argmax, "ref_refined": ref_refined,
                   "ref_kpts": ref_kpts, "ref_scores": ref_scores}
    return _RUNS[case]


@pytest.fixture(scope="module", params=sorted(CASES))
def result(request, recorded, photo, tmp_root):
    if not HAVE_TORCH:
        pytest.skip("torch/transformers not installed")
    return run(request.param, recorded, photo, tmp_root)


# ---- the fixture itself ----

def test_fixture_is_opencv4_crops_of_the_astronaut(recorded, photo):
    assert str(recorded["version"]).startswith("4.")
    assert str(recorded["photo_sha256"]) == hashlib.sha256(np.ascontiguousarray(photo).tobytes()).hexdigest()
    h, w = photo.shape[:2]
    x, y, bw, bh = recorded["boxes"].T
    assert ((x < 0) & (y < 0)).any(), "no box crosses the left and top edges"
    assert ((x + bw > w) & (y + bh > h)).any(), "no box crosses the right and bottom edges"
    assert (np.maximum(bw / bh, bh / bw) > 8).any(), "no box of extreme aspect ratio"
    assert (bw * bh < 0.01 * w * h).any(), "no small box"
    for mode in ("udp", "classic"):
        crops = recorded[f"{mode}_crops"]
        assert crops.shape == (len(x), 256, 192, 3) and crops.dtype == np.uint8
        outside = (x < 0) | (y < 0) | (x + bw > w) | (y + bh > h)
        black = (crops == 0).all(axis=3).mean(axis=(1, 2))
        assert (black[outside] > 0.2).all()  # the zero border of cv2.warpAffine really is in those crops


def test_engine_centers_scales_and_crops_equal_the_reference(recorded, photo):
    # stage 1 of the pipeline alone, so a failure below can be located
    from npvitpose.pipeline import box_to_center_scale, crop_batch

    center, scale = box_to_center_scale(recorded["boxes"])
    assert np.array_equal(center, recorded["center"]) and np.array_equal(scale, recorded["scale"])
    for mode in ("udp", "classic"):
        pixels = crop_batch(photo, center, scale, mode, flip=True)
        want = normalize(recorded[f"{mode}_crops"])
        n = len(want)
        assert np.array_equal(pixels[:n], want), f"{mode} crops differ from OpenCV 4"
        assert np.array_equal(pixels[n:], want[..., ::-1]), f"{mode} mirrored crops differ"


# ---- the whole pipeline ----

def test_converted_model_has_the_config_mode(result):
    assert result["meta"]["mode"] == result["mode"]
    assert result["model"].meta["mode"] == result["mode"]


def test_reference_is_not_trivial(result):
    # every map has one positive maximum that no engine within the heatmap bar can move to another pixel
    heat, argmax = result["ref_heat"], result["ref_argmax"]
    assert (result["ref_scores"] > 0.01).all()
    top2 = np.sort(heat.reshape(heat.shape[0] * heat.shape[1], -1), axis=1)[:, -2:]
    margin = float((top2[:, 1] - top2[:, 0]).min() / np.abs(heat).max())
    _REPORT.setdefault(result["mode"], {})["reference_argmax_margin"] = margin
    assert margin > 2 * HEATMAP_BAR, f"an argmax runner-up is within {margin:.1e} of the maximum"
    # the peaks move with the image content: a keypoint seldom lands on the same pixel in two boxes
    per_keypoint = [len({tuple(p) for p in argmax[:, k]}) for k in range(argmax.shape[1])]
    assert np.mean(per_keypoint) > 0.9 * len(argmax), "heatmap peaks hardly move between boxes"
    on_edge = (argmax[..., 0] == 0) | (argmax[..., 0] == HEAT_W - 1) | (argmax[..., 1] == 0) | (
        argmax[..., 1] == HEAT_H - 1)
    assert on_edge.mean() < 0.1
    # the refinement did something: DARK-UDP moves (nearly) every peak, the quarter shift most of them
    moved = np.abs(result["ref_refined"] - argmax).max(axis=-1) > 1e-3
    assert moved.mean() > (0.95 if result["mode"] == "udp" else 0.75)


def test_heatmaps_match_reference(result):
    err = R.rel_err(result["heat"], result["ref_heat"])
    _REPORT.setdefault(result["mode"], {})["heatmap_rel_err"] = err
    assert err <= HEATMAP_BAR


def test_argmax_matches_reference(result):
    got = np.stack(np.unravel_index(result["heat"].reshape(*result["heat"].shape[:2], -1).argmax(-1),
                                    result["heat"].shape[2:])[::-1], axis=-1)
    assert np.array_equal(got, result["ref_argmax"].astype(int))


def test_scores_match_reference(result):
    err = float(np.abs(result["scores"].astype(np.float64) - result["ref_scores"]).max())
    _REPORT.setdefault(result["mode"], {})["score_max_err"] = err
    assert result["scores"].shape == result["ref_scores"].shape and result["scores"].dtype == np.float32
    assert err <= SCORE_BAR


def test_keypoints_match_reference(result):
    got, want = result["kpts"], result["ref_kpts"]
    assert got.shape == want.shape and got.dtype == np.float32
    dist = np.hypot(*(got.astype(np.float64) - want).transpose(2, 0, 1))
    stats = {"median_px": float(np.median(dist)), "max_px": float(dist.max()), "keypoints": int(dist.size)}
    _REPORT.setdefault(result["mode"], {}).update(stats)
    assert stats["median_px"] <= KEYPOINT_MEDIAN_BAR and stats["max_px"] <= KEYPOINT_MAX_BAR, stats
    assert stats["max_px"] <= TIGHT_KEYPOINT_BAR, stats


def test_engine_decode_of_reference_heatmaps(result, recorded):
    # decoding alone (same inputs on both sides), so a keypoint failure above can be located
    from npvitpose.decode import decode

    kpts, scores = decode(result["ref_heat"], recorded["center"], recorded["scale"], result["mode"])
    dist = np.hypot(*(kpts.astype(np.float64) - result["ref_kpts"]).transpose(2, 0, 1))
    _REPORT.setdefault(result["mode"], {})["decode_only_max_px"] = float(dist.max())
    assert dist.max() <= TIGHT_KEYPOINT_BAR
    assert np.array_equal(scores, result["ref_scores"])
