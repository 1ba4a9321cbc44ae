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
if not all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers")):
    pytest.skip("torch/transformers not installed", allow_module_level=True)

FIXTURE = Path(__file__).resolve().parent / "data" / "end_to_end" / "crops_cv4.npz"
REPORT_PATH = Path("/tmp/npvitpose_end_to_end_report.json")

KEYPOINT_MEDIAN_BAR = 0.05  # image px, the bar
KEYPOINT_MAX_BAR = 0.5  # image px
SCORE_BAR = 1e-3
HEATMAP_BAR = 1e-5  # max|err| / max|ref|

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # spec 4.6, RGB
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
HEAT_W, HEAT_H = 48, 64

# spec 5.1 flip-pair table, written out here rather than taken from npvitpose.datasets
COCO_PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]
WHOLEBODY_PAIRS = (
    COCO_PAIRS
    + [(17, 20), (18, 21), (19, 22)]
    + [(23, 39), (24, 38), (25, 37), (26, 36), (27, 35), (28, 34), (29, 33), (30, 32), (40, 49), (41, 48),
       (42, 47), (43, 46), (44, 45), (54, 58), (55, 57), (59, 68), (60, 67), (61, 66), (62, 65), (63, 70),
       (64, 69), (71, 77), (72, 76), (73, 75), (78, 82), (79, 81), (83, 87), (84, 86), (88, 90)]
    + [(91 + i, 112 + i) for i in range(21)]
)

# (case id, reference variant, checkpoint format, dataset, warp/decode mode of that dataset's config, spec 4.2)
CASES = {
    "coco-udp-simple-hf": (R.Variant("e2e-coco-s-simple", 384, 2, 12, simple=True, seed=31), "hf", "coco",
                           "udp", COCO_PAIRS),
    "wholebody-classic-pth": (R.Variant("e2e-wholebody-s-classic", 384, 2, 12, num_keypoints=133, seed=32), "pth",
                              "wholebody", "classic", WHOLEBODY_PAIRS),
}

# Peaked heads. Random heads give textured maps whose maximum is barely above the runner-up, so the
# argmax (and the classic quarter shift) could flip on float32 noise. Here each keypoint reads mainly one
# channel that a ReLU threshold has made sparse, and the upsampling taps are lopsided (equal even/odd
# sums, so no checkerboard) so a peak does not sit on the half-pixel point between two equal pixels.
UPSAMPLE_TAPS = np.array([1.5, 3.5, 2.5, 0.5], dtype=np.float32) / 4
SMOOTH_TAPS = np.array([0.8, 2.0, 1.2], dtype=np.float32) / 4
THRESHOLD = 1.0  # in units of the normalized activation: keeps roughly the top sixth
MIX = 0.01


def peaked_weights(v: R.Variant) -> dict:
    """hf_reference's seeded official weights with the head (and, for a simple head, last_norm) reshaped."""
    sd = R.official_weights(v)
    rng = np.random.default_rng(1000 + v.seed)
    k = v.num_keypoints
    channels = v.dim if v.simple else 256
    mix = (rng.standard_normal((k, channels)) * MIX).astype(np.float32)
    mix[np.arange(k), rng.integers(0, channels, k)] += 1.0  # (K, C): one dominant channel per keypoint
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
    """Official test-time pipeline on recorded OpenCV 4 crops: heatmaps (N, K, 64, 48), keypoints, scores."""
    import torch

    x = normalize(crops)
    both = np.concatenate([x, x[..., ::-1]])  # spec 5.1 step 2: img.flip(3)
    with torch.no_grad():
        heat = hf(torch.from_numpy(np.ascontiguousarray(both))).heatmaps.numpy()
    n = len(crops)
    avg = (heat[:n] + flip_back(heat[n:], pairs, shift=mode == "classic")) * np.float32(0.5)  # spec 5.1 step 5
    coords, maxvals = max_preds(avg)
    refined = dark_udp(coords, avg) if mode == "udp" else quarter_shift(coords, avg)
    return avg, coords, transform_preds(refined, center, scale, udp=mode == "udp"), maxvals


# ---- running both sides ----

_RUNS = {}
_REPORT = {}


@pytest.fixture(scope="module")
def fixture():
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


def run(case, fixture, photo, tmp_root):
    """Reference and engine outputs for one case (computed once per module)."""
    if case in _RUNS:
        return _RUNS[case]
    v, fmt, dataset, mode, pairs = CASES[case]
    sd = peaked_weights(v)
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
    ref_heat, ref_argmax, ref_kpts, ref_scores = reference_pipeline(
        hf, fixture[f"{mode}_crops"], fixture["center"], fixture["scale"], mode, pairs)
    del hf
    meta = convert(src, work / "model.npz", dataset=dataset)
    model = npvitpose.load(work / "model.npz")
    kpts, scores, heat = model(photo, fixture["boxes"], box_format="xywh", color="rgb", return_heatmaps=True)
    _RUNS[case] = {"mode": mode, "meta": meta, "model": model, "ref_heat": ref_heat, "ref_argmax": ref_argmax,
                   "ref_kpts": ref_kpts, "ref_scores": ref_scores, "kpts": kpts, "scores": scores, "heat": heat}
    return _RUNS[case]


@pytest.fixture(scope="module", params=sorted(CASES))
def result(request, fixture, photo, tmp_root):
    return run(request.param, fixture, photo, tmp_root)


# ---- the fixture itself ----

def test_fixture_is_opencv4_crops_of_the_astronaut(fixture, photo):
    assert str(fixture["version"]).startswith("4.")
    assert str(fixture["photo_sha256"]) == hashlib.sha256(np.ascontiguousarray(photo).tobytes()).hexdigest()
    h, w = photo.shape[:2]
    x, y, bw, bh = fixture["boxes"].T
    assert ((x < 0) & (y < 0)).any(), "no box crosses the left and top edges"
    assert ((x + bw > w) & (y + bh > h)).any(), "no box crosses the right and bottom edges"
    assert (np.maximum(bw / bh, bh / bw) > 8).any(), "no box of extreme aspect ratio"
    assert (bw * bh < 0.01 * w * h).any(), "no small box"
    for mode in ("udp", "classic"):
        crops = fixture[f"{mode}_crops"]
        assert crops.shape == (len(x), 256, 192, 3) and crops.dtype == np.uint8
        outside = (x < 0) | (y < 0) | (x + bw > w) | (y + bh > h)
        black = (crops == 0).all(axis=3).mean(axis=(1, 2))
        assert (black[outside] > 0.2).all()  # the zero border of cv2.warpAffine really is in those crops


def test_engine_centers_scales_and_crops_equal_the_reference(fixture, photo):
    # stage 1 of the pipeline alone, so a failure below can be located
    from npvitpose.pipeline import box_to_center_scale, crop_batch

    center, scale = box_to_center_scale(fixture["boxes"])
    assert np.array_equal(center, fixture["center"]) and np.array_equal(scale, fixture["scale"])
    for mode in ("udp", "classic"):
        pixels = crop_batch(photo, center, scale, mode, flip=True)
        want = normalize(fixture[f"{mode}_crops"])
        n = len(want)
        assert np.array_equal(pixels[:n], want), f"{mode} crops differ from OpenCV 4"
        assert np.array_equal(pixels[n:], want[..., ::-1]), f"{mode} mirrored crops differ"


# ---- the whole pipeline ----

def test_converted_model_has_the_config_mode(result):
    assert result["meta"]["mode"] == result["mode"]
    assert result["model"].meta["mode"] == result["mode"]


def test_reference_is_not_trivial(result):
    # every map has one clear positive maximum, and the keypoints move with the image content
    heat, argmax = result["ref_heat"], result["ref_argmax"]
    assert (result["ref_scores"] > 0).all()
    flat = heat.reshape(heat.shape[0] * heat.shape[1], -1)
    top2 = np.sort(flat, axis=1)[:, -2:]
    margin = (top2[:, 1] - top2[:, 0]) / np.abs(flat).max(axis=1)
    assert margin.min() > 20 * HEATMAP_BAR, f"argmax runner-up within {margin.min():.1e} of the maximum"
    per_keypoint = [len({tuple(p) for p in argmax[:, k]}) for k in range(argmax.shape[1])]
    assert np.mean(per_keypoint) > 0.8 * len(argmax), "heatmap peaks hardly move between boxes"
    on_edge = (argmax[..., 0] == 0) | (argmax[..., 0] == HEAT_W - 1) | (argmax[..., 1] == 0) | (
        argmax[..., 1] == HEAT_H - 1)
    assert on_edge.mean() < 0.1


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


def test_engine_decode_of_reference_heatmaps(result, fixture):
    # decoding alone (same inputs on both sides), so a keypoint failure above can be located
    from npvitpose.decode import decode

    kpts, scores = decode(result["ref_heat"], fixture["center"], fixture["scale"], result["mode"])
    dist = np.hypot(*(kpts.astype(np.float64) - result["ref_kpts"]).transpose(2, 0, 1))
    _REPORT.setdefault(result["mode"], {})["decode_only_max_px"] = float(dist.max())
    assert dist.max() <= 1e-3
    assert np.array_equal(scores, result["ref_scores"])
