"""Heatmaps -> keypoints, as the official mmpose 0.x test pipeline decodes them (spec 5.1-5.6).

This is mmpose decoding, not HF post_process_pose_estimation (other blur, no flip test: trap 20).
Everything is vectorised NumPy over (N people, K keypoints). Precision follows the official code run
under NumPy 1: float32 maps and coordinates, float64 where the official code promoted to it.
"""

from functools import lru_cache

import numpy as np

from .errors import NpvitposeError

RULES = ("default", "argmax", "quarter", "dark-udp")
MODES = ("udp", "classic")
BLUR_SIZE = 11  # spec 5.3: modulate_kernel = 11 in every ViTPose config
BLUR_SIGMA = ((BLUR_SIZE - 1) * 0.5 - 1) * 0.3 + 0.8  # cv2.getGaussianKernel's sigma for sigma=0: 2.0


def flip_back(heatmaps, flip_pairs, shift):
    """Undo the flip of heatmaps predicted on mirrored crops (spec 5.1 steps 3-4).

    heatmaps: (N, K, H, W). Swaps the channels of each (left, right) pair, then reverses W; with
    `shift` (classic configs, trap 10) column j takes column j - 1 for j >= 1 and column 0 stays.
    """
    heatmaps = np.asarray(heatmaps)
    k = heatmaps.shape[1]
    perm = np.arange(k)
    for pair in flip_pairs:
        left, right = int(pair[0]), int(pair[1])
        if not (0 <= left < k and 0 <= right < k):
            raise NpvitposeError(f"flip pair ({left}, {right}) is out of range for {k} keypoints")
        perm[left], perm[right] = right, left
    back = heatmaps[:, perm, :, ::-1]  # spec 5.1: swap channels first, then reverse W
    out = np.empty(heatmaps.shape, dtype=heatmaps.dtype)
    if shift:
        out[..., 0] = back[..., 0]
        out[..., 1:] = back[..., :-1]
    else:
        out[...] = back
    return out


def get_max_preds(heatmaps):
    """Integer argmax and max value per map (spec 5.2).

    heatmaps: (N, K, H, W). Returns coords (N, K, 2) float32 (x, y) and maxvals (N, K) float32.
    The first maximum in row-major order wins; maps whose maximum is <= 0 (or NaN) get coords (-1, -1).
    """
    n, k, _, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    idx = np.argmax(flat, axis=2)
    maxvals = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0].astype(np.float32)
    coords = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
    coords[~(maxvals > 0)] = -1.0
    return coords, maxvals


def gaussian_kernel():
    """cv2.getGaussianKernel(11, 2.0) as OpenCV stores it for float32 images: float64 math, float32 taps."""
    x = np.arange(BLUR_SIZE, dtype=np.float64) - (BLUR_SIZE - 1) * 0.5
    taps = np.exp(-0.5 / (BLUR_SIGMA * BLUR_SIGMA) * x * x)
    return (taps * (1.0 / taps.sum())).astype(np.float32)


def _reflect101(p, n):
    """OpenCV BORDER_REFLECT_101 index (... c b | a b c ...), for any p and n >= 1."""
    if n == 1:
        return 0
    p = abs(p) % (2 * n - 2)
    return 2 * n - 2 - p if p >= n else p


@lru_cache(maxsize=8)
def _blur_matrix(n):
    """(n, n) float64 operator applying the 11-tap kernel along one axis with reflect-101 borders."""
    taps = gaussian_kernel().astype(np.float64)
    half = BLUR_SIZE // 2
    op = np.zeros((n, n))
    for i in range(n):
        for t in range(BLUR_SIZE):
            op[i, _reflect101(i + t - half, n)] += taps[t]
    op.flags.writeable = False  # cached and shared
    return op


def gaussian_blur(heatmaps):
    """cv2.GaussianBlur(map, (11, 11), 0) of every (H, W) map, version-independent (spec 5.3 step 1).

    heatmaps: (..., H, W) float32. Separable, accumulated in float64, stored float32; this matches
    OpenCV's float32 blur to about 1e-7 (OpenCV accumulates in float32).
    """
    h, w = heatmaps.shape[-2:]
    rows = _blur_matrix(h)  # (H, H)
    cols = _blur_matrix(w)  # (W, W)
    return (rows @ (heatmaps.astype(np.float64) @ cols.T)).astype(np.float32)


def dark_udp(heatmaps, coords):
    """DARK-UDP refinement: one Newton step on the blurred log-heatmap (spec 5.3).

    heatmaps: (N, K, H, W) float32, coords: (N, K, 2) float32 integer argmax from `get_max_preds`.
    Returns new float32 coords. Keypoints with coords -1 (maxval <= 0) are left at -1 on purpose
    instead of reading wrapped-around indices like the official code (trap 21); so are the rare
    keypoints whose regularised Hessian is singular (the official code would raise there).
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    coords = np.array(coords, dtype=np.float32)
    n, k, h, w = heatmaps.shape
    valid = coords[..., 0] >= 0
    if not valid.any():
        return coords
    pn, pk = np.nonzero(valid)
    px = coords[pn, pk, 0].astype(np.int64)
    py = coords[pn, pk, 1].astype(np.int64)
    # spec 5.3 step 3: edge padding by one pixel == clamping the 3x3 neighbourhood into the map
    ys = np.clip(py[:, None] + np.arange(-1, 2), 0, h - 1)  # (M, 3)
    xs = np.clip(px[:, None] + np.arange(-1, 2), 0, w - 1)  # (M, 3)
    # step 1, only where step 3 reads it: the 3x3 patch of the blurred map, rows(ys) @ map @ cols(xs).T
    maps = heatmaps[pn, pk].astype(np.float64)  # (M, H, W)
    rows, cols = _blur_matrix(h)[ys], _blur_matrix(w)[xs]  # (M, 3, H), (M, 3, W)
    patch = ((rows @ maps) @ cols.transpose(0, 2, 1)).astype(np.float32)  # (M, 3, 3)
    patch = np.log(np.clip(patch, np.float32(0.001), np.float32(50.0)))  # spec 5.3 step 2, float32
    i_, ix1, ix1_ = patch[:, 1, 1], patch[:, 1, 2], patch[:, 1, 0]
    iy1, iy1_ = patch[:, 2, 1], patch[:, 0, 1]
    ix1y1, ix1_y1_ = patch[:, 2, 2], patch[:, 0, 0]
    # float32 derivatives, evaluated left to right like the official expressions
    dx = np.float32(0.5) * (ix1 - ix1_)
    dy = np.float32(0.5) * (iy1 - iy1_)
    dxx = ix1 - np.float32(2) * i_ + ix1_
    dyy = iy1 - np.float32(2) * i_ + iy1_
    # spec 5.3: the 7-point dxy, not the 4-corner form
    dxy = np.float32(0.5) * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_)
    hess = np.stack([dxx, dxy, dxy, dyy], axis=-1).reshape(-1, 2, 2)
    hess = hess + np.finfo(np.float32).eps * np.eye(2)  # float64 from here on (spec 5.3 step 4)
    inv, ok = _inv2x2(hess)
    grad = np.stack([dx, dy], axis=-1).astype(np.float64)  # (M, 2)
    step = np.einsum("mij,mj->mi", inv, grad)
    refined = (coords[pn, pk].astype(np.float64) - step).astype(np.float32)
    coords[pn[ok], pk[ok]] = refined[ok]
    return coords


def _inv2x2(mats):
    """np.linalg.inv over a (M, 2, 2) float64 stack, like the official code; singular ones flagged."""
    det = mats[:, 0, 0] * mats[:, 1, 1] - mats[:, 0, 1] * mats[:, 1, 0]
    ok = np.isfinite(mats).all(axis=(1, 2)) & (det != 0)
    safe = np.where(ok[:, None, None], mats, np.eye(2))
    try:
        inv = np.linalg.inv(safe)
    except np.linalg.LinAlgError:  # LU can hit an exact zero pivot where det does not
        inv = np.empty_like(safe)
        for i, m in enumerate(safe):
            try:
                inv[i] = np.linalg.inv(m)
            except np.linalg.LinAlgError:
                inv[i], ok[i] = np.eye(2), False
    ok &= np.isfinite(inv).all(axis=(1, 2))
    return inv, ok


def quarter_shift(heatmaps, coords):
    """Classic 'default' post-processing: move 0.25 px toward the higher neighbour (spec 5.4).

    Applies only where 1 < x < W - 1 and 1 < y < H - 1 (strict); sign(0) = 0. Returns new float32 coords.
    """
    n, k, h, w = heatmaps.shape
    coords = np.array(coords, dtype=np.float32)
    px = coords[..., 0].astype(np.int64)
    py = coords[..., 1].astype(np.int64)
    inner = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
    pxc = np.clip(px, 1, w - 2)
    pyc = np.clip(py, 1, h - 2)
    ni, ki = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")
    diff = np.stack(
        [
            heatmaps[ni, ki, pyc, pxc + 1] - heatmaps[ni, ki, pyc, pxc - 1],
            heatmaps[ni, ki, pyc + 1, pxc] - heatmaps[ni, ki, pyc - 1, pxc],
        ],
        axis=-1,
    ).astype(np.float32)
    shift = np.sign(diff) * np.float32(0.25)
    return np.where(inner[..., None], coords + shift, coords).astype(np.float32)


def to_image(coords, centers, scales, mode, heatmap_size=(48, 64)):
    """Heatmap coords -> image coords (spec 5.5), float32 like the official `transform_preds`.

    coords (N, K, 2), centers and scales (N, 2) float32, heatmap_size (W_h, H_h).
    UDP divides the ROI by (W_h - 1, H_h - 1), classic by (W_h, H_h).
    """
    _check_mode(mode)
    coords = np.asarray(coords, dtype=np.float32)
    centers = np.asarray(centers, dtype=np.float32)
    roi = np.asarray(scales, dtype=np.float32) * np.float32(200.0)  # (N, 2) S = s * 200
    cells = np.asarray(heatmap_size, dtype=np.float32) - np.float32(1 if mode == "udp" else 0)
    per_cell = roi / cells  # float32, same as the float64-then-float32 division of NumPy 1
    out = coords * per_cell[:, None, :] + centers[:, None, :]
    return (out - roi[:, None, :] * np.float32(0.5)).astype(np.float32)


def decode(heatmaps, centers, scales, mode, rule="default"):
    """Flip-averaged heatmaps (N, K, H, W) -> keypoints (N, K, 2) float32 (x, y), scores (N, K) float32.

    rule: "default" (DARK-UDP for udp, the quarter shift for classic, as the official configs),
    "argmax" (no refinement), "quarter" or "dark-udp" (either refinement, whatever the mode).
    The scores are the heatmap maxima at the integer argmax, before refinement (trap 12).
    """
    _check_mode(mode)
    if rule not in RULES:
        raise NpvitposeError(f"unknown decode rule {rule!r}; choose one of {', '.join(RULES)}")
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    coords, maxvals = get_max_preds(heatmaps)
    if rule == "default":
        rule = "dark-udp" if mode == "udp" else "quarter"  # spec 4.2 / trap 11
    if rule == "dark-udp":
        coords = dark_udp(heatmaps, coords)
    elif rule == "quarter":
        coords = quarter_shift(heatmaps, coords)
    size = (heatmaps.shape[3], heatmaps.shape[2])
    return to_image(coords, centers, scales, mode, size), maxvals


def instance_scores(box_scores, kpt_scores, thr=0.2):
    """COCO rescoring (spec 5.6): box score x mean of the keypoint scores above thr (0 if none).

    box_scores (N,), kpt_scores (N, K). Returns float64 (N,), summed in keypoint order like the
    official Python loop.
    """
    kpt = np.asarray(kpt_scores, dtype=np.float32)
    above = kpt > thr
    total = np.cumsum(np.where(above, kpt.astype(np.float64), 0.0), axis=1)[:, -1] if kpt.shape[1] else 0.0
    count = above.sum(axis=1)
    mean = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    return mean * np.asarray(box_scores, dtype=np.float64)


def oks_nms(keypoints, scores, areas, sigmas, thr=0.9):
    """Greedy OKS non-maximum suppression (spec 5.6). Returns the kept indices, best score first.

    keypoints (N, K, 2) (x, y), scores (N,), areas (N,) = S_w * S_h, sigmas (K,) COCO-style OKS sigmas.
    A candidate is dropped when its OKS with a kept instance exceeds thr. Equal scores keep input order.
    """
    kpts = np.asarray(keypoints, dtype=np.float32)
    areas = np.asarray(areas, dtype=np.float32)
    variances = (np.asarray(sigmas, dtype=np.float64) * 2) ** 2
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        order = rest[oks(kpts[i], kpts[rest], areas[i], areas[rest], variances) <= thr]
    return np.array(keep, dtype=np.int64)


def oks(kpts, others, area, areas, variances):
    """OKS of one instance's keypoints (K, 2) with others (M, K, 2), float32 as the official code (spec 5.6).

    area, areas (M,): S_w * S_h; variances (K,) = (2 sigma)^2. Also the OKS of mmpose's pose tracking."""
    kpts, others = np.asarray(kpts, dtype=np.float32), np.asarray(others, dtype=np.float32)
    area, areas = np.float32(area), np.asarray(areas, dtype=np.float32)
    d = others - kpts  # float32, as the official flattened arrays
    sq = d[..., 0] ** 2 + d[..., 1] ** 2
    norm = (area + areas) / np.float32(2) + np.float32(np.spacing(1))
    e = sq / variances / norm[:, None].astype(np.float64) / 2
    return (np.sum(np.exp(-e), axis=1) / max(kpts.shape[0], 1)).astype(np.float32)


def _check_mode(mode):
    if mode not in MODES:
        raise NpvitposeError(f"unknown warp/decode mode {mode!r}; expected 'udp' or 'classic'")
