"""npvitpose.pipeline and npvitpose.images: spec 4.1-4.4 worked examples, OpenCV references, and predict()
with fake models checked against an independent NumPy computation (tests/twins_pipeline.py)."""

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

import twins_pipeline as twins
from npvitpose import pipeline
from npvitpose.errors import NpvitposeError
from npvitpose.images import as_rgb, read_image
from npvitpose.kernels.warp import pull_tables
from npvitpose.pipeline import (
    box_to_center_scale,
    classic_matrix,
    crop_batch,
    parse_boxes,
    predict,
    udp_matrix,
)

FIXTURE = Path(__file__).parent / "data" / "warp_cv4.npz"
ARM_FIXTURE = Path(__file__).parent / "data" / "classic_matrix_arm64.npz"
SPEC_BOX = (384.43, 172.21, 15.12, 35.74)  # spec 4.3 worked example
COCO_PAIRS = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16]]


# ---------------------------------------------------------------- boxes and matrices (spec 4.1, 4.3, 4.4)


def test_box_to_center_scale_worked_example():
    c, s = box_to_center_scale([SPEC_BOX])
    assert c.dtype == np.float32 and s.dtype == np.float32
    assert c[0].tolist() == np.float32([391.99, 190.08]).tolist()
    assert s[0].tolist() == np.float32([0.16753124, 0.223375]).tolist()
    assert (s[0] * np.float32(200)).tolist() == np.float32([33.50625, 44.675]).tolist()


def test_box_to_center_scale_matches_transcription_and_fixture():
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(-50, 500, (30, 2)), rng.uniform(0.5, 400, (30, 2))], axis=1)
    boxes[0, 2:] = [75.0, 100.0]  # exactly 3:4: neither branch
    c, s = box_to_center_scale(boxes)
    for i, box in enumerate(boxes.tolist()):
        wc, ws = twins.box_to_center_scale(*box)
        assert c[i].tolist() == wc.tolist() and s[i].tolist() == ws.tolist()
    f = np.load(FIXTURE)  # recorded by tools/record_warp.py from its own transcription
    c, s = box_to_center_scale(f["box_xywh"])
    assert np.array_equal(c, f["box_center"]) and np.array_equal(s, f["box_scale"])


def test_udp_matrix_worked_example_and_fixture():
    c, s = box_to_center_scale([SPEC_BOX])
    m = udp_matrix(c[0], s[0])
    assert m.dtype == np.float32 and m.shape == (2, 3)
    assert m.tolist() == np.float32([[5.7004294, 0, -2139.0112], [0, 5.7078905, -957.4558]]).tolist()
    f = np.load(FIXTURE)
    assert np.array_equal(udp_matrix(f["box_center"], f["box_scale"]), f["box_udp"])


def test_udp_matrix_maps_roi_edges_to_pixel_centres():
    c, s = np.float32([[300.0, 200.0]]), np.float32([[0.5, 0.6]])  # S = 100 x 120
    m = udp_matrix(c, s)[0].astype(np.float64)
    corners = np.array([[250, 140, 1], [350, 260, 1]], np.float64)
    assert np.allclose(corners @ m.T, [[0, 0], [191, 255]], atol=1e-4)


def test_classic_matrix_worked_example():
    c, s = box_to_center_scale([SPEC_BOX])
    m = classic_matrix(c[0], s[0])
    assert m.dtype == np.float64
    spec = [[5.73027838, 0, -2150.21177], [0, 5.73027316, -961.210333]]
    assert np.allclose(m, spec, rtol=5e-9, atol=1e-14)  # the spec prints 9 digits
    assert 0 < abs(m[1, 0]) < 1e-14  # float32 noise, not exactly 0 (spec 4.4)


def test_classic_matrix_rounds_like_opencv_on_arm64():
    f = np.load(ARM_FIXTURE)  # cv2.getAffineTransform on emulated arm64, recorded by tools/aarch64_check.py --record
    assert np.array_equal(classic_matrix(f["center"], f["scale"], fused=True), f["cv2_matrix"])
    as_x86 = classic_matrix(f["center"], f["scale"], fused=False)
    assert (as_x86 != f["cv2_matrix"]).any(axis=(1, 2)).sum() > len(as_x86) // 2  # the two roundings differ


def test_classic_matrix_is_bit_identical_to_cv2_get_affine_transform():
    f = np.load(FIXTURE)  # OpenCV 4.x on x86-64, recorded
    assert np.array_equal(classic_matrix(f["box_center"], f["box_scale"], fused=False), f["box_classic"])
    rng = np.random.default_rng(1)  # installed OpenCV, on the official float32 points (spec 4.4)
    boxes = np.concatenate([rng.uniform(-100, 2000, (40, 2)), rng.uniform(1, 900, (40, 2))], axis=1)
    centers, scales = box_to_center_scale(boxes)
    for c, s in zip(centers, scales):
        roi = s * np.float32(200)
        src = np.zeros((3, 2), np.float32)
        src[0] = c
        src[1] = c.astype(np.float64) + [0.0, float(roi[0]) * -0.5]
        d = src[0] - src[1]
        src[2] = src[1] + np.array([-d[1], d[0]], np.float32)
        want = cv2.getAffineTransform(src, np.float32([[96, 128], [96, 32], [0, 32]]))
        assert np.array_equal(classic_matrix(c, s), want)


# ---------------------------------------------------------------- crops


@pytest.mark.parametrize("mode", ["udp", "classic"])
def test_crop_batch_is_normalized_opencv4_warp_then_flips(mode):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    c, s = box_to_center_scale([[10, 5, 40, 60], [-20, 50, 60, 70], [30.3, 40.7, 4.1, 3.2]])
    pixels = crop_batch(img, c, s, mode)
    assert pixels.shape == (6, 3, 256, 192) and pixels.dtype == np.float32
    matrices = udp_matrix(c, s) if mode == "udp" else classic_matrix(c, s)
    for i in range(3):
        want = twins.normalize(twins.warp_affine_u8(img, matrices[i], (192, 256)))
        assert np.array_equal(pixels[i], want)
        assert np.array_equal(pixels[3 + i], want[:, :, ::-1])
    assert np.array_equal(crop_batch(img, c, s, mode, flip=False), pixels[:3])


# ---------------------------------------------------------------- predict with fake models


class MixModel:
    """Heatmaps synthesized from the pixels: per keypoint a channel mix of 4x4-pooled pixels times an
    x-asymmetric ramp, so flips, pairs and shifts all change the result."""

    def __init__(self, mode, k=17, pairs=COCO_PAIRS):
        self.meta = {"mode": mode, "flip_pairs": pairs}
        self.num_keypoints = k
        rng = np.random.default_rng(3)
        self.mix = rng.normal(size=(k, 3)).astype(np.float32)
        self.ramp = (1 + rng.uniform(0, 1, (k, 1, 1)) * np.linspace(-0.5, 0.5, 48)).astype(np.float32)
        self.batches = []

    def forward(self, pixels):
        self.batches.append(len(pixels))
        return np.stack([self.one(p) for p in pixels])

    def one(self, crop):  # (3, 256, 192) -> (K, 64, 48)
        crop = np.ascontiguousarray(crop)  # the reduction order of mean() depends on the memory layout
        pooled = crop.reshape(3, 64, 4, 48, 4).mean(axis=(2, 4))
        return (np.einsum("kc,chw->khw", self.mix, pooled) * self.ramp).astype(np.float32)


def reference_predict(model, img, boxes_xywh, mode, flip=True):
    """Spec 0 step by step with the twins: crops, forward, flip back, average, decode, map back."""
    centers, scales = [], []
    for box in boxes_xywh:
        c, s = twins.box_to_center_scale(*box)
        centers.append(c), scales.append(s)
    heatmaps = []
    for c, s in zip(centers, scales):
        m = udp_matrix(c, s) if mode == "udp" else classic_matrix(c, s)  # checked against OpenCV above
        crop = twins.normalize(twins.warp_affine_u8(img, m, (192, 256)))
        h = model.one(crop)[None]
        if flip:
            hf = twins.flip_back(model.one(crop[:, :, ::-1].copy())[None], model.meta["flip_pairs"], mode == "classic")
            h = (h + hf) * np.float32(0.5)
        heatmaps.append(h[0])
    heatmaps = np.stack(heatmaps)
    coords, maxvals = twins.get_max_preds(heatmaps)
    if mode == "udp":
        refined = twins.dark_udp(heatmaps, coords, lambda m: cv2.GaussianBlur(m, (11, 11), 0))
        coords = np.where(maxvals[..., None] > 0, refined, coords)  # npvitpose keeps -1 (trap 21) by design
    else:
        coords = twins.quarter_shift(heatmaps, coords)
    kpts = [twins.transform_preds(coords[i], centers[i], scales[i], (48, 64), mode == "udp") for i in range(len(coords))]
    kpts = np.stack(kpts)
    return kpts, maxvals, heatmaps


@pytest.fixture(scope="module")
def photo():
    f = np.load(FIXTURE)
    i = len(f["img_shape"]) - 1  # the real photo crop stored in the fixture
    return f["img_data"][f["img_off"][i] : f["img_off"][i + 1]].reshape(f["img_shape"][i])


BOXES = [[40.0, 30.0, 80.0, 120.0], [-30.5, -20.25, 90.0, 70.0], [120.3, 140.7, 60.1, 90.9], [70.0, 80.0, 13.3, 17.9]]


@pytest.mark.parametrize("mode", ["udp", "classic"])
def test_predict_matches_independent_pipeline(photo, mode):
    model = MixModel(mode)
    kpts, scores, heatmaps = predict(model, photo, BOXES, return_heatmaps=True)
    want_k, want_s, want_h = reference_predict(model, photo, BOXES, mode)
    assert kpts.shape == (4, 17, 2) and kpts.dtype == np.float32 and scores.dtype == np.float32
    assert heatmaps.shape == (4, 17, 64, 48)
    assert np.array_equal(heatmaps, want_h)
    assert np.array_equal(scores, want_s)  # maxval of the flip-averaged map (trap 12)
    if mode == "udp":  # the DARK blur is float64 here, float32 in cv2; these non-Gaussian maps amplify it
        assert np.abs(kpts - want_k).max() < 1e-2 and np.median(np.abs(kpts - want_k)) < 1e-4
    else:
        assert np.array_equal(kpts, want_k)
    plain = predict(model, photo, BOXES, flip=False, return_heatmaps=True)
    assert np.array_equal(plain[1], reference_predict(model, photo, BOXES, mode, flip=False)[1])
    assert not np.array_equal(plain[2], heatmaps)


def test_flip_pairs_and_shift_matter(photo):
    base = predict(MixModel("classic"), photo, BOXES, return_heatmaps=True)[2]
    no_pairs = predict(MixModel("classic", pairs=[]), photo, BOXES, return_heatmaps=True)[2]
    assert not np.array_equal(base[:, 1], no_pairs[:, 1]) and np.array_equal(base[:, 0], no_pairs[:, 0])
    udp_model = MixModel("classic")
    udp_model.meta = {"mode": "udp", "flip_pairs": COCO_PAIRS}
    assert not np.array_equal(predict(udp_model, photo, BOXES, return_heatmaps=True)[2], base)


class SamplingModel:
    """An 'ideal' model: heatmap cell (j, i) is the crop's brightness at the crop point that cell stands
    for under the model's mode (UDP: i * 191/47; classic: 4 i), sampled bilinearly."""

    def __init__(self, mode):
        self.meta = {"mode": mode, "flip_pairs": []}
        self.num_keypoints = 1
        if mode == "udp":
            xs, ys = np.arange(48) * 191 / 47, np.arange(64) * 255 / 63
        else:
            xs, ys = np.arange(48) * 4.0, np.arange(64) * 4.0
        self.grid = np.stack(np.meshgrid(ys, xs, indexing="ij"))

    def forward(self, pixels):
        bright = pixels.mean(axis=1)  # (N, 256, 192)
        return np.stack([map_coordinates(b, self.grid, order=1)[None] for b in bright]).astype(np.float32)


@pytest.mark.parametrize("mode", ["udp", "classic"])
def test_predict_finds_a_blob_at_its_true_position(mode):
    h, w = 300, 400
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(4)
    for _ in range(4):
        bx, by = rng.uniform(120, 280), rng.uniform(100, 200)
        img = (255 * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * 9.0**2))).astype(np.uint8)
        box = [bx - rng.uniform(20, 80), by - rng.uniform(20, 80), 120.0, 150.0]
        kpts, scores = predict(SamplingModel(mode), img, [box], decode="dark-udp")
        # UDP is exactly aligned; the classic flip-back is 1/4 cell off after its shift (why mmpose shifts)
        tol = 0.3 if mode == "udp" else 1.0
        assert np.abs(kpts[0, 0] - [bx, by]).max() < tol
        assert scores[0, 0] > 1.0  # the normalized brightness of the blob peak


def test_chunking_does_not_change_results(photo, monkeypatch):
    boxes = BOXES + [[b[0] + 5, b[1] - 3, b[2] * 0.9, b[3] * 1.1] for b in BOXES[:3]]
    model = MixModel("udp")
    whole = predict(model, photo, boxes, return_heatmaps=True)
    assert model.batches == [14]
    monkeypatch.setattr(pipeline, "CHUNK", 3)
    model.batches = []
    chunked = predict(model, photo, boxes, return_heatmaps=True)
    assert model.batches == [6, 6, 2]
    for a, b in zip(whole, chunked):
        assert np.array_equal(a, b)


def test_box_formats_colors_and_image_kinds(photo, tmp_path):
    model = MixModel("udp")
    want = predict(model, photo, BOXES)
    xyxy = [[x, y, x + w, y + h] for x, y, w, h in BOXES]
    got = predict(model, photo, xyxy, box_format="xyxy")
    assert np.allclose(got[0], want[0], atol=1e-3) and np.allclose(got[1], want[1], atol=1e-6)
    with_scores = np.hstack([np.array(BOXES), np.full((4, 1), 0.3)])
    assert np.array_equal(predict(model, photo, with_scores)[0], want[0])
    assert np.array_equal(predict(model, photo[:, :, ::-1].copy(), BOXES, color="bgr")[0], want[0])
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), photo[:, :, ::-1])
    assert np.array_equal(predict(model, path, BOXES)[0], want[0])
    gray = photo[:, :, 1].copy()
    assert np.array_equal(predict(model, gray, BOXES)[0], predict(model, np.dstack([gray] * 3), BOXES)[0])


def test_empty_boxes_give_empty_outputs(photo):
    model = MixModel("udp")
    for empty in ([], np.zeros((0,)), np.zeros((0, 4)), np.zeros((0, 5)), np.zeros((0, 4), np.int32)):
        kpts, scores, heatmaps = predict(model, photo, empty, return_heatmaps=True)
        assert kpts.shape == (0, 17, 2) and scores.shape == (0, 17) and heatmaps.shape == (0, 17, 64, 48)
        assert kpts.dtype == np.float32 and scores.dtype == np.float32
    assert model.batches == []


@pytest.mark.parametrize(
    "boxes, fmt, message",
    [
        ([[0, 0, 10, 10], [1, 2, np.nan, 4]], "xywh", "box 1 has a non-finite value"),
        ([[0, 0, 10, 10], [0, 0, 5, 5], [1, 2, 3, np.inf]], "xywh", "box 2 has a non-finite value"),
        ([[0, 0, 0, 10]], "xywh", "box 0 has zero or negative size"),
        ([[0, 0, 10, 10], [5, 5, -1, 3]], "xywh", "box 1 has zero or negative size"),
        ([[10, 10, 5, 20]], "xyxy", "box 0 has zero or negative size"),
        ([[0, 0, 10, 10], [1e39, 0, 10, 10]], "xywh", "box 1 is too large or too small"),
        ([[0, 0, 1e-46, 1e-46]], "xywh", "box 0 is too large or too small"),
        ([[0, 0, 3e38, 100]], "xywh", r"box 0 is too large or too small to crop: \[0.0, 0.0, 3e\+38, 100.0\]"),
        ([[2e38, 0, 100, 100]], "xywh", "box 0 is too large or too small to crop"),
        ([[0, 0, 100, 3e38]], "xywh", "box 0 is too large or too small to crop"),
        ([[0, 0, 10, 10], [0, 0, 1e300, 1e300]], "xywh", "box 1 is too large or too small to crop"),
        ([[-1e308, 0, 1e308, 10]], "xyxy", "box 0 is too large or too small to crop"),  # x2 - x1 would overflow
        ([[-1e6, -1e6, 1e6, 1e6]], "xyxy", "box 0 is too large or too small to crop"),  # corners fine, crop not
        ([[2.0**20 + 1, 0, 50, 50]], "xywh", "box 0 is too large or too small to crop"),  # sane size, too far
        ([[0, 0, 2.0**20 * 0.8, 1]], "xywh", "box 0 is too large or too small to crop"),  # 3:4 fix: crop height > 2^20
        ([[0, 0, 1e-38, 1e-38]], "xywh", "box 0 is too large or too small to crop"),  # 192 / crop width overflows
        ([[5, 5, 0.5, 0.5]], "xywh", "box 0 is too large or too small to crop"),  # padded crop under 1 px
        ([[0, 0, 10]], "xywh", r"shape \(N, 4\) or \(N, 5\)"),
        (np.zeros((5, 0)), "xywh", r"shape \(N, 4\) or \(N, 5\), got \(5, 0\)"),
        ([[]], "xywh", r"shape \(N, 4\) or \(N, 5\), got \(1, 0\)"),
        ([[0, 0, 10, 10], [1, 2]], "xywh", "list or array of numbers.*ragged or nested"),
        ([["a", 0, 1, 1]], "xywh", "list or array of numbers.*'a' is not a real number"),
        ([["100", "0", "10", "10"]], "xywh", "'100' is not a real number"),
        (np.array([["100", "0", "10", "10"]]), "xywh", "'100' is not a real number"),
        ([[True, True, True, True]], "xywh", "True is not a real number"),
        (np.ones((1, 4), dtype=bool), "xywh", "True is not a real number"),
        ([[0, 0, 10, 10], [0, 0, True, 10]], "xywh", "True is not a real number"),  # no silent promotion to 1
        ([[0, 0, 10, 10j]], "xywh", r"10j is not a real number"),
        (np.full((1, 4), 10 + 0j), "xywh", r"\(10\+0j\) is not a real number"),
        ([[0, None, 10, 10]], "xywh", "None is not a real number"),
        ([[10**400, 0, 10, 10]], "xywh", "box 0 has a non-finite value"),  # as the CLI: a huge integer is inf
        ([[0, 0, 10, 10]], "cxcywh", "box_format"),
    ],
)
def test_bad_boxes_raise_one_line_errors(photo, boxes, fmt, message):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before any arithmetic: no overflow RuntimeWarning either
        with pytest.raises(NpvitposeError, match=message) as err:
            predict(MixModel("udp"), photo, boxes, box_format=fmt)
    assert "\n" not in str(err.value)


def test_huge_box_is_refused_by_a_classic_model_instead_of_giving_nan(photo):
    model = MixModel("classic")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(NpvitposeError, match="box 0 is too large or too small to crop"):
            predict(model, photo, [[0, 0, 100, 3e38]])
    assert model.batches == []  # refused before any crop was made


L = pipeline.MAX_PIXELS
EXTREME_BOXES = [  # the accepted limits: corners at +-2^20, crop sides of 2^20 and of 1 px, extreme aspects
    [-L, -L, 0.75 * L / 1.25, L / 1.25],
    [L - 0.75 * L / 1.25, L - L / 1.25, 0.75 * L / 1.25, L / 1.25],
    [L, -L, 0.8, 1.0 / 0.9375],
    [-L, L, 0.8, 1e-3],
    [L, L, 0.75 * L / 1.25, 1e-3],
    [-L, 0.5, 1.0, L / 1.25],
    [1e6, -1e6, 50.0, 80.0],
    [-5000.0, 7000.0, 100.0, 200.0],
]


def test_extreme_accepted_boxes_keep_the_warp_in_fixed_point_range():
    xywh = parse_boxes(EXTREME_BOXES)
    centers, scales = box_to_center_scale(xywh)
    roi = scales.astype(np.float64) * 200
    assert 1 - 1e-6 <= roi.min() < 1.001 and L * 0.999 < roi.max() <= L * (1 + 1e-6)  # both limits are reached
    for mode in ("udp", "classic"):
        tables = pull_tables(pipeline.crop_matrices(centers, scales, mode), (192, 256))
        assert max(np.abs(t).max() for t in tables) < 2**31 - 1  # no int32 saturation: crops sample the true ROI


class EdgeModel:
    """Heatmaps that exercise every decode path: random, all-negative (argmax -1), flat zero and one huge spike."""

    def __init__(self, mode, kind):
        self.meta = {"mode": mode, "flip_pairs": [[1, 2]]}
        self.num_keypoints = 3
        self.kind = kind
        self.rng = np.random.default_rng(5)

    def forward(self, pixels):
        shape = (len(pixels), 3, 64, 48)
        if self.kind == "random":
            return self.rng.normal(size=shape).astype(np.float32)
        if self.kind == "negative":
            return np.full(shape, -1.0, np.float32)
        if self.kind == "zero":
            return np.zeros(shape, np.float32)
        out = np.zeros(shape, np.float32)
        out[:, :, 63, 0] = 1e30
        return out


@pytest.mark.parametrize("mode", ["udp", "classic"])
@pytest.mark.parametrize("flip", [True, False])
def test_keypoints_are_finite_for_every_accepted_box(photo, mode, flip):
    boxes = EXTREME_BOXES + [[5.0, 5.0, 0.8, 0.8 / 0.75]]
    xywh = parse_boxes(boxes)
    centers, scales = box_to_center_scale(xywh)
    roi = scales.astype(np.float64)[:, None, :] * 200
    cell = roi / (np.array([47, 63]) if mode == "udp" else np.array([48, 64]))
    low, high = centers[:, None, :] - roi / 2 - cell, centers[:, None, :] + roi / 2 + cell
    models = [MixModel(mode)] + [EdgeModel(mode, kind) for kind in ("random", "negative", "zero", "spike")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for model in models:
            for rule in pipeline.RULES:
                kpts, scores = predict(model, photo, boxes, flip=flip, decode=rule)
                assert kpts.shape == (len(boxes), model.num_keypoints, 2)
                assert np.isfinite(kpts).all() and np.isfinite(scores).all(), (type(model).__name__, rule)
                if rule == "argmax":  # an integer heatmap cell, or -1: inside the ROI give or take one cell
                    assert ((kpts >= low - 1) & (kpts <= high + 1)).all()


def test_numeric_object_arrays_and_numpy_scalars_are_accepted():
    want = parse_boxes([[1.0, 2.0, 30.0, 40.0]])
    assert np.array_equal(parse_boxes(np.array([[1, 2, 30, 40]], dtype=object)), want)
    assert np.array_equal(parse_boxes([[np.float32(1), np.int8(2), 30, 40.0]]), want)
    assert np.array_equal(parse_boxes(np.array([[1, 2, 30, 40, 0.5]], np.float16)), want)


def test_bad_arguments_raise(photo):
    model = MixModel("udp")
    with pytest.raises(NpvitposeError, match="decode rule"):
        predict(model, photo, BOXES, decode="unbiased")
    with pytest.raises(NpvitposeError, match="color"):
        predict(model, photo, BOXES, color="hsv")
    with pytest.raises(NpvitposeError, match="uint8"):
        predict(model, photo.astype(np.float32), BOXES)
    model.meta = {"mode": "rotated", "flip_pairs": []}
    with pytest.raises(NpvitposeError, match="mode"):
        predict(model, photo, BOXES)


def test_parse_boxes_single_xyxy():
    assert parse_boxes([[1, 2, 11, 22]], "xyxy").tolist() == [[1, 2, 10, 20]]  # width = x2 - x1, no +1


# ---------------------------------------------------------------- images


def test_read_image_matches_cv2_imread_in_rgb(tmp_path, photo):
    for name in ("a.png", "b.jpg", "c.bmp"):
        path = tmp_path / name
        cv2.imwrite(str(path), photo[:, :, ::-1])
        got = read_image(path)
        assert got.dtype == np.uint8 and got[:, :, ::-1].flags.c_contiguous  # an RGB view of the decoded BGR, no copy
        assert np.array_equal(got, cv2.imread(str(path))[:, :, ::-1])
    assert np.array_equal(read_image(tmp_path / "a.png"), photo)


def test_read_image_gray_alpha_and_16_bit(tmp_path):
    rng = np.random.default_rng(5)
    gray = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    assert np.array_equal(read_image(tmp_path / "g.png"), np.dstack([gray] * 3))
    bgra = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    assert np.array_equal(read_image(tmp_path / "a.png"), bgra[:, :, 2::-1])  # alpha dropped, not blended
    deep = rng.integers(0, 65536, (9, 7, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    assert np.array_equal(read_image(tmp_path / "d.png"), (deep[:, :, ::-1] >> 8).astype(np.uint8))
    assert np.array_equal(read_image(tmp_path / "d.png"), cv2.imread(str(tmp_path / "d.png"))[:, :, ::-1])


def test_read_image_applies_exif_orientation(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:6, :12] = [255, 0, 0]  # red block top-left of the stored (landscape) image
    exif = pil.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    pil.fromarray(rgb).save(path, exif=exif.tobytes(), quality=95)
    got = read_image(path)
    assert got.shape == (40, 20, 3)  # portrait after applying the orientation
    assert got[:12, -6:, 0].mean() > 200 and got[-12:, :6, 0].mean() < 50  # red block now top-right


def test_read_image_errors(tmp_path):
    cases = {"missing.png": "not found", "": "not a file", "empty.png": "empty", "junk.jpg": "cannot decode"}
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"this is not a jpeg at all")
    for name, message in cases.items():
        with pytest.raises(NpvitposeError, match=message) as err:
            read_image(tmp_path / name if name else tmp_path)
        assert "\n" not in str(err.value)


def test_as_rgb_validates_and_converts():
    bgr = np.random.default_rng(6).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    assert np.array_equal(as_rgb(bgr, "bgr"), bgr[:, :, ::-1])
    assert as_rgb(bgr[:, ::2], "rgb").flags.c_contiguous
    assert as_rgb(bgr[:, :, :1], "rgb").shape == (5, 4, 3)
    for bad, message in [
        (bgr.astype(np.float32), "uint8"),
        (bgr[:, :, :2], "shape"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        ([[1, 2]], "numpy array"),
    ]:
        with pytest.raises(NpvitposeError, match=message):
            as_rgb(bad)
