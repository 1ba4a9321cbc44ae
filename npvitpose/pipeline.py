"""Top-down pipeline: boxes -> affine crops -> model -> flip-averaged heatmaps -> keypoints (spec 0, 4, 5)."""

import math
import numbers
import os
import platform
from fractions import Fraction

import numpy as np

from .decode import MODES, RULES, decode as decode_heatmaps, flip_back
from .errors import NpvitposeError
from .images import as_rgb, is_bgr_view, read_image
from .kernels.warp import warp_normalize

CROP_W, CROP_H = 192, 256  # model input (width, height)
ASPECT = CROP_W / CROP_H  # spec 4.1: r = 0.75
PADDING = 1.25  # spec 4.1: ROI = 1.25 x the aspect-fixed box
PIXEL_STD = 200.0  # spec 4.1: scale is in units of 200 px
CHUNK = 16  # crops per forward (plus their flips): bounds the activation memory
MAX_PIXELS = 2.0**20  # coordinates and crops up to 2^20 px keep every ROI in the warp's +-2^21 px int32 fixed point
MIN_ROI = 1.0  # below one pixel the float32 classic matrix turns singular far from the origin (centre ulp 1/4 px)


def box_to_center_scale(boxes_xywh):
    """COCO xywh boxes (N, 4) -> center (N, 2) and scale (N, 2), float32 (spec 4.1, `_box2cs`).

    The arithmetic is float64 (Python floats, as the official per-box code) and stored as float32;
    the aspect ratio is fixed to 0.75 by growing w or h, then the scale is multiplied by 1.25.
    """
    b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    x, y, w, h = b.T
    wide, tall = w > ASPECT * h, w < ASPECT * h
    with np.errstate(over="ignore"):  # unvalidated huge boxes become inf; parse_boxes() refuses them first
        center = np.stack([x + w * 0.5, y + h * 0.5], axis=1).astype(np.float32)
        h = np.where(wide, w * 1.0 / ASPECT, h)
        w = np.where(tall, h * ASPECT, w)
        scale = np.stack([w / PIXEL_STD, h / PIXEL_STD], axis=1).astype(np.float32)
        return center, (scale * np.float32(PADDING)).astype(np.float32)


def udp_matrix(center, scale):
    """UDP crop matrix, image -> (192, 256) crop, for (2,) or (N, 2) center/scale (spec 4.3).

    `get_warp_matrix(0, 2c, size - 1, 200 s)` evaluated in float64 as under NumPy 1 and stored as
    float32: the ROI edges land on pixel centres 0 and 191 (255). Returns (2, 3) or (N, 2, 3) float32.
    """
    c = np.asarray(center, dtype=np.float32)
    roi = (np.asarray(scale, dtype=np.float32) * np.float32(PIXEL_STD)).astype(np.float64)
    twice_c = (c * np.float32(2)).astype(np.float64)
    sx = (CROP_W - 1.0) / roi[..., 0]
    sy = (CROP_H - 1.0) / roi[..., 1]
    m = np.zeros(c.shape[:-1] + (2, 3), dtype=np.float32)
    m[..., 0, 0] = sx
    m[..., 0, 2] = sx * (-0.5 * twice_c[..., 0] + 0.5 * roi[..., 0])  # rotation 0: cos = 1, sin = 0
    m[..., 1, 1] = sy
    m[..., 1, 2] = sy * (-0.5 * twice_c[..., 1] + 0.5 * roi[..., 1])
    return m


def classic_matrix(center, scale, fused=None):
    """Classic crop matrix (spec 4.4, `get_affine_transform(c, s, 0, (192, 256))`), float64.

    Three float32 point pairs (centre, a point S_w/2 above it, and the third point of the right
    angle) are solved like cv2.getAffineTransform does: a 6x6 system by OpenCV's LU with partial
    pivoting, in double precision. Takes (2,) or (N, 2); returns (2, 3) or (N, 2, 3) float64.
    fused: round as OpenCV's arm64 build (True) or x86-64 build (False); default this machine's.
    """
    c = np.asarray(center, dtype=np.float32)
    s = np.asarray(scale, dtype=np.float32)
    flat_c, flat_s = c.reshape(-1, 2), s.reshape(-1, 2)
    dst = np.array([[96, 128], [96, 32], [0, 32]], dtype=np.float32)  # centre, 96 px up, 96 px left
    out = np.empty((len(flat_c), 2, 3))
    for i, (ci, si) in enumerate(zip(flat_c, flat_s)):
        roi_w = si[0] * np.float32(PIXEL_STD)
        src = np.empty((3, 2), dtype=np.float32)
        src[0] = ci
        src[1] = ci.astype(np.float64) + np.array([0.0, float(roi_w) * -0.5])
        d = src[0] - src[1]
        src[2] = src[1] + np.array([-d[1], d[0]], dtype=np.float32)
        out[i] = _affine_from_points(src, dst, FUSED_LU if fused is None else fused)
    return out.reshape(c.shape[:-1] + (2, 3))


# OpenCV's arm64 wheels compile its LU with fused multiply-adds (the C++ compiler contracts `a += b * c` there),
# its x86-64 wheels without (their SSE3 baseline has no FMA): each platform's matrix is rounded its own way.
FUSED_LU = platform.machine().lower() in ("aarch64", "arm64")


def _fma_exact(a, b, c):
    """a * b + c rounded once, for Pythons before 3.13's math.fma: exact rationals, and int / int rounds correctly."""
    return float(Fraction(a) * Fraction(b) + Fraction(c))


_fma = getattr(math, "fma", _fma_exact)


def _affine_from_points(src, dst, fused):
    """cv2.getAffineTransform: the 6x6 system [x y 1 0 0 0; 0 0 0 x y 1] m = dst, OpenCV LU order."""
    a, b = [], []
    for (x, y), (u, v) in zip(src.astype(np.float64).tolist(), dst.astype(np.float64).tolist()):
        a += [[x, y, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, x, y, 1.0]]
        b += [u, v]
    return np.array(_lu_solve(a, b, _fma if fused else None)).reshape(2, 3)


def _lu_solve(a, b, fma=None):
    """OpenCV's LUImpl on Python floats (IEEE double), each `x += y * z` rounded twice, or once with `fma`."""
    def madd(x, y, z):  # x + y * z as OpenCV's compiled loop computes it on this platform
        return fma(y, z, x) if fma else x + y * z

    m = len(a)
    for i in range(m):
        k = max(range(i, m), key=lambda j: (abs(a[j][i]), -j))  # first largest pivot
        if abs(a[k][i]) < np.finfo(np.float64).eps * 10:
            raise NpvitposeError("degenerate box: the crop matrix is singular")
        if k != i:
            a[i], a[k] = a[k], a[i]
            b[i], b[k] = b[k], b[i]
        d = -1.0 / a[i][i]
        for j in range(i + 1, m):
            alpha = a[j][i] * d
            for col in range(i + 1, m):
                a[j][col] = madd(a[j][col], alpha, a[i][col])
            b[j] = madd(b[j], alpha, b[i])
    for i in range(m - 1, -1, -1):
        s = b[i]
        for col in range(i + 1, m):
            s = madd(s, -a[i][col], b[col])
        b[i] = s / a[i][i]
    return b


def crop_matrices(centers, scales, mode):
    """(N, 2, 3) image -> crop matrices for the warp mode of the model (spec 4.2)."""
    if mode not in MODES:
        raise NpvitposeError(f"unknown warp mode {mode!r}; expected 'udp' or 'classic'")
    return udp_matrix(centers, scales) if mode == "udp" else classic_matrix(centers, scales)


def crop_batch(image_rgb, centers, scales, mode, flip=True, out=None):
    """Warp and normalize the crops of one image: pixels (N, 3, 256, 192), or (2N, ...) with flip.

    image_rgb: (H, W, 3) uint8 RGB. With flip the batch holds the N crops then their N mirror images
    (spec 5.1 step 2: the flip of the normalized tensor equals the normalized mirrored crop).
    `out` may be a preallocated C-contiguous float32 array of exactly that shape.
    """
    image = np.asarray(image_rgb)
    bgr = is_bgr_view(image)
    # an RGB view of a BGR buffer (how read_image returns a file) is cropped in place, never copied whole
    image = image[:, :, ::-1] if bgr else np.ascontiguousarray(image)
    matrices = crop_matrices(np.asarray(centers).reshape(-1, 2), np.asarray(scales).reshape(-1, 2), mode)
    shape = (len(matrices) * (2 if flip else 1), 3, CROP_H, CROP_W)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    return warp_normalize(image, matrices, out, flip=flip, bgr=bgr)


def parse_boxes(boxes, box_format="xywh"):
    """Validate boxes (N, 4) or (N, 5) (the 5th column, a detector score, is ignored) -> xywh float64 (N, 4).

    box_format "xywh" (COCO: x, y, width, height) or "xyxy" (corners; width = x2 - x1, no +1).
    Values must be real numbers (not bool or str); every coordinate must lie within MAX_PIXELS of
    the origin and the padded crop (spec 4.1) must measure MIN_ROI to MAX_PIXELS px on each side.
    """
    if box_format not in ("xywh", "xyxy"):
        raise NpvitposeError(f"box_format must be 'xywh' or 'xyxy', got {box_format!r}")
    arr = _real_array(boxes)
    if arr.shape == (0,):  # a bare [] is an empty box list
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] not in (4, 5):
        raise NpvitposeError(f"boxes must have shape (N, 4) or (N, 5), got {arr.shape}")
    raw = arr[:, :4]
    bad = np.flatnonzero(~np.isfinite(raw).all(axis=1))
    if bad.size:
        raise NpvitposeError(f"box {bad[0]} has a non-finite value: {raw[bad[0]].tolist()}")
    bad = np.flatnonzero((np.abs(raw) > MAX_PIXELS).any(axis=1))  # before any arithmetic, which could overflow
    if bad.size:
        raise _out_of_range(bad[0], raw)
    arr = raw.copy()
    if box_format == "xyxy":
        arr[:, 2:] -= arr[:, :2]
    bad = np.flatnonzero((arr[:, 2] <= 0) | (arr[:, 3] <= 0))
    if bad.size:
        w, h = arr[bad[0], 2:]
        raise NpvitposeError(f"box {bad[0]} has zero or negative size (width {w:g}, height {h:g})")
    roi = padded_size(arr)
    bad = np.flatnonzero(((roi < MIN_ROI) | (roi > MAX_PIXELS)).any(axis=1))
    if bad.size:
        raise _out_of_range(bad[0], raw)
    return arr


def padded_size(boxes_xywh):
    """(N, 2) float64 width and height of the crop ROI: the box grown to 3:4, times 1.25 (spec 4.1)."""
    w, h = boxes_xywh[:, 2], boxes_xywh[:, 3]
    return np.stack([np.maximum(w, h * ASPECT), np.maximum(h, w / ASPECT)], axis=1) * PADDING


def _out_of_range(index, raw):
    limit = int(MAX_PIXELS)
    return NpvitposeError(
        f"box {index} is too large or too small to crop: {raw[index].tolist()} (coordinates must be within "
        f"{limit} px of the origin, the padded crop {MIN_ROI:g} to {limit} px per side)"
    )


def _real_array(boxes):
    """`boxes` as a float64 array; bools, strings, complex numbers and other objects are refused, as in the CLI."""
    if isinstance(boxes, np.ndarray) and boxes.dtype.kind in "iuf":
        with np.errstate(over="ignore"):  # a long double beyond float64 becomes inf, refused as non-finite
            return boxes.astype(np.float64)
    try:
        items = np.asarray(boxes, dtype=object)
    except (TypeError, ValueError):
        raise NpvitposeError("boxes must be a list or array of numbers, shape (N, 4) or (N, 5)") from None
    for value in items.flat:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            nested = isinstance(value, (list, tuple, np.ndarray))
            what = "rows are ragged or nested" if nested else f"{_short(value)} is not a real number"
            raise NpvitposeError(f"boxes must be a list or array of numbers, shape (N, 4) or (N, 5); {what}")
    return np.array([_float(v) for v in items.flat], dtype=np.float64).reshape(items.shape)


def _float(value):
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits, refused later as non-finite like in the CLI
        return float("inf")


def _short(value, limit=40):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _warp_mode(model, decode):
    """The model's warp mode, once the decode rule and the mode are both known ones."""
    if decode not in RULES:
        raise NpvitposeError(f"unknown decode rule {decode!r}; choose one of {', '.join(RULES)}")
    mode = model.meta.get("mode")
    if mode not in MODES:
        raise NpvitposeError(f"unknown warp mode {mode!r} in the model metadata; expected 'udp' or 'classic'")
    return mode


def predict(model, image, boxes, box_format="xywh", color="rgb", flip=True, decode="default",
            return_heatmaps=False):
    """Top-down pose estimation of the people in `boxes` (spec 0).

    model: has `.meta` ("mode", "flip_pairs"), `.num_keypoints` and `.forward(pixels) -> heatmaps`.
    image: (H, W, 3) uint8 array in `color` order ("rgb" or "bgr"), (H, W) grayscale, or a file path.
    boxes: (N, 4) or (N, 5) in `box_format` ("xywh" or "xyxy"). flip: average with the mirrored crop
    (spec 5.1). decode: "default", "argmax", "quarter" or "dark-udp" (see `decode.decode`).
    Returns keypoints (N, K, 2) float32 (x, y), scores (N, K) float32 (maxval of the flip-averaged
    heatmap, spec 5.2) and, with return_heatmaps, the averaged heatmaps (N, K, 64, 48) float32.
    """
    mode = _warp_mode(model, decode)
    rgb = read_image(image) if isinstance(image, (str, os.PathLike)) else as_rgb(image, color)
    centers, scales = box_to_center_scale(parse_boxes(boxes, box_format))
    k = int(model.num_keypoints)
    if len(centers) == 0:
        empty = (np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32))
        return empty + (np.zeros((0, k, CROP_H // 4, CROP_W // 4), np.float32),) if return_heatmaps else empty
    heatmaps = model_heatmaps(model, rgb, centers, scales, mode, flip)
    keypoints, scores = decode_heatmaps(heatmaps, centers, scales, mode, decode)
    return (keypoints, scores, heatmaps) if return_heatmaps else (keypoints, scores)


def model_heatmaps(model, image_rgb, centers, scales, mode, flip=True):
    """Heatmaps (N, K, H, W) float32 of the N crops, flip-averaged if `flip` (spec 5.1).

    Runs `model.forward` on CHUNK crops (plus their mirror images) at a time to bound memory.
    """
    n = len(centers)
    shift = mode == "classic"  # spec 5.1 step 4 / trap 10: only classic configs shift the flipped map
    pairs = model.meta.get("flip_pairs") or []
    heatmaps, buffer = None, None
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        shape = (m * (2 if flip else 1), 3, CROP_H, CROP_W)
        if buffer is None or buffer.shape != shape:
            buffer = np.empty(shape, dtype=np.float32)
        sl = slice(start, start + m)
        out = _heatmaps_of(model, crop_batch(image_rgb, centers[sl], scales[sl], mode, flip=flip, out=buffer))
        if flip:
            out = _flip_average(out, pairs, shift)
        if heatmaps is None:
            heatmaps = np.empty((n,) + out.shape[1:], dtype=np.float32)
        heatmaps[sl] = out
    return heatmaps


def _heatmaps_of(model, pixels):
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, in one line
        out = np.asarray(model.forward(pixels), dtype=np.float32)
    k = int(model.num_keypoints)
    if out.ndim != 4 or out.shape[:2] != (len(pixels), k):
        raise NpvitposeError(f"model returned heatmaps of shape {out.shape}, expected ({len(pixels)}, {k}, H, W)")
    if not np.isfinite(out).all():  # weights that passed the load checks can still overflow float32
        raise NpvitposeError("the model's heatmaps hold NaN or infinity: its weights are broken")
    return out


def _flip_average(out, pairs, shift):
    """(2m, K, H, W) heatmaps of m crops then their mirror images -> (m, K, H, W) (spec 5.1 step 5)."""
    m = len(out) // 2
    return (out[:m] + flip_back(out[m:], pairs, shift)) * np.float32(0.5)


class _Pending:
    """One image of `predict_stream` whose crops are not all through the model yet."""

    def __init__(self, key, payload, centers, scales, k):
        self.key, self.payload, self.centers, self.scales = key, payload, centers, scales
        self.keypoints = np.zeros((len(centers), k, 2), np.float32)
        self.scores = np.zeros((len(centers), k), np.float32)
        self.left = len(centers)


def predict_stream(model, items, flip=True, decode="default"):
    """`predict` over a stream of images, their crops batched across images: every forward but the last
    takes CHUNK people (plus their mirror images), however few each image holds.

    items: iterable of (key, image, boxes, payload): image an RGB uint8 array, boxes (N, 4) xywh, payload
    anything (handed back; None lets the image go as soon as it is cropped). Yields (key, payload,
    keypoints (N, K, 2), scores (N, K)) in input order. Each result equals `predict` on its image alone:
    the forward and the decoders treat every crop on its own (tests/test_distributed.py checks it).
    """
    mode = _warp_mode(model, decode)
    k, copies = int(model.num_keypoints), 2 if flip else 1
    shift, pairs = mode == "classic", model.meta.get("flip_pairs") or []  # spec 5.1 step 4 / trap 10
    buffer = np.empty((CHUNK * copies, 3, CROP_H, CROP_W), dtype=np.float32)
    waiting, pieces = [], []  # images not complete, in input order; (image, start, stop) cropped into the buffer

    def run():
        out, at = _heatmaps_of(model, buffer[:sum(b - a for _, a, b in pieces) * copies]), 0
        for p, a, b in pieces:
            heatmaps, at = out[at:at + (b - a) * copies], at + (b - a) * copies
            heatmaps = _flip_average(heatmaps, pairs, shift) if flip else heatmaps
            p.keypoints[a:b], p.scores[a:b] = decode_heatmaps(heatmaps, p.centers[a:b], p.scales[a:b], mode, decode)
            p.left -= b - a
        pieces.clear()

    for key, image, boxes, payload in items:
        rgb = as_rgb(image)
        p = _Pending(key, payload, *box_to_center_scale(parse_boxes(boxes)), k)
        waiting.append(p)
        start, n = 0, len(p.centers)
        while start < n:
            fill = sum(b - a for _, a, b in pieces)
            stop = start + min(CHUNK - fill, n - start)
            view = buffer[fill * copies:(fill + stop - start) * copies]  # this piece's crops, then their mirrors
            crop_batch(rgb, p.centers[start:stop], p.scales[start:stop], mode, flip=flip, out=view)
            pieces.append((p, start, stop))
            start = stop
            if fill + len(view) // copies == CHUNK:
                run()
        del rgb, image
        while waiting and waiting[0].left == 0:
            done = waiting.pop(0)
            yield done.key, done.payload, done.keypoints, done.scores
    if pieces:
        run()
    for done in waiting:
        yield done.key, done.payload, done.keypoints, done.scores
