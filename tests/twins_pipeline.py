"""Plain NumPy twins of the pipeline kernels and straight transcriptions of the official formulas.

Written from the spec (4.1-4.6, 5.1-5.6), independently of npvitpose: tests compare npvitpose
against these, never against itself. Loops are fine here; speed is not the point.
"""

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def warp_affine_u8(image, matrix, dsize):
    """OpenCV 4.x warpAffine(INTER_LINEAR, BORDER_CONSTANT 0) on uint8, vectorised NumPy (spec 4.5)."""
    img = image if image.ndim == 3 else image[:, :, None]
    h, w, ch = img.shape
    dw, dh = dsize
    m = np.asarray(matrix, dtype=np.float64)
    # inverse of [[a, b], [c, d]] by the adjugate, in double, as invertAffineTransform
    a, b, tx, c, d, ty = m.ravel()
    det = a * d - b * c
    det = 1.0 / det if det != 0 else 0.0
    ia, ib, ic, id_ = d * det, b * -det, c * -det, a * det
    itx = -ia * tx - ib * ty
    ity = -ic * tx - id_ * ty
    xs = np.arange(dw, dtype=np.float64)
    ys = np.arange(dh, dtype=np.float64)
    adelta = np.rint(ia * xs * 1024).astype(np.int64)
    bdelta = np.rint(ic * xs * 1024).astype(np.int64)
    x0 = np.rint((ib * ys + itx) * 1024).astype(np.int64) + 16
    y0 = np.rint((id_ * ys + ity) * 1024).astype(np.int64) + 16
    big_x = (x0[:, None] + adelta[None, :]) >> 5  # (dh, dw) in 1/32 px
    big_y = (y0[:, None] + bdelta[None, :]) >> 5
    sx, fx = big_x >> 5, big_x & 31
    sy, fy = big_y >> 5, big_y & 31
    acc = np.zeros((dh, dw, ch), dtype=np.int64)
    for oy, wy in ((0, 32 - fy), (1, fy)):
        for ox, wx in ((0, 32 - fx), (1, fx)):
            yy, xx = sy + oy, sx + ox
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            val = img[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)].astype(np.int64)
            acc += np.where(inside[..., None], val, 0) * (wy * wx * 32)[..., None]
    out = ((acc + 16384) >> 15).astype(np.uint8)
    return out if image.ndim == 3 else out[:, :, 0]


def normalize(crop_u8):
    """HWC uint8 RGB -> CHW float32: to_tensor (/255) then (x - mean) / std, each step float32 (spec 4.6)."""
    x = crop_u8.astype(np.float32).transpose(2, 0, 1) / np.float32(255)
    return (x - MEAN[:, None, None]) / STD[:, None, None]


def box_to_center_scale(x, y, w, h):
    """Spec 4.1 for one box, Python floats then float32."""
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    if w > 0.75 * h:
        h = w * 1.0 / 0.75
    elif w < 0.75 * h:
        w = h * 0.75
    scale = np.array([w / 200.0, h / 200.0], dtype=np.float32) * np.float32(1.25)
    return center, scale


def flip_back(heatmaps, flip_pairs, shift):
    """Spec 5.1: swap the pair channels, reverse W, then (classic) shift right by one column."""
    out = heatmaps.copy()
    for left, right in flip_pairs:
        out[:, left] = heatmaps[:, right]
        out[:, right] = heatmaps[:, left]
    out = out[..., ::-1].copy()
    if shift:
        out[..., 1:] = out[..., :-1].copy()
    return out


def get_max_preds(heatmaps):
    """Spec 5.2, one map at a time."""
    n, k, h, w = heatmaps.shape
    coords = np.zeros((n, k, 2), dtype=np.float32)
    maxvals = np.zeros((n, k), dtype=np.float32)
    for i in range(n):
        for j in range(k):
            idx = int(np.argmax(heatmaps[i, j]))
            maxvals[i, j] = heatmaps[i, j].ravel()[idx]
            coords[i, j] = (idx % w, idx // w) if maxvals[i, j] > 0 else (-1, -1)
    return coords, maxvals


def dark_udp(heatmaps, coords, blur):
    """Spec 5.3 as the official code does it: whole-map blur (by `blur`), clip, log, edge pad, flat indices.

    Only valid for coords >= 0 (the official code wraps around for -1).
    """
    n, k, h, w = heatmaps.shape
    maps = np.stack([[blur(heatmaps[i, j].copy()) for j in range(k)] for i in range(n)]).astype(np.float32)
    maps = np.log(np.clip(maps, np.float32(0.001), np.float32(50)))
    pad = np.pad(maps, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge").ravel()
    index = coords[..., 0] + 1 + (coords[..., 1] + 1) * (w + 2)
    index = index + (w + 2) * (h + 2) * np.arange(n * k).reshape(n, k)
    index = index.astype(np.int64).reshape(-1)
    i_ = pad[index]
    ix1, ix1_ = pad[index + 1], pad[index - 1]
    iy1, iy1_ = pad[index + w + 2], pad[index - 2 - w]
    ix1y1, ix1_y1_ = pad[index + w + 3], pad[index - w - 3]
    dx = 0.5 * (ix1 - ix1_)
    dy = 0.5 * (iy1 - iy1_)
    dxx = ix1 - 2 * i_ + ix1_
    dyy = iy1 - 2 * i_ + iy1_
    dxy = 0.5 * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_)
    grad = np.stack([dx, dy], axis=1).reshape(n, k, 2, 1)
    hess = np.stack([dxx, dxy, dxy, dyy], axis=1).reshape(n, k, 2, 2)
    hess = np.linalg.inv(hess + np.finfo(np.float32).eps * np.eye(2))
    step = np.einsum("ijmn,ijnk->ijmk", hess, grad.astype(np.float64))[..., 0]
    return (coords.astype(np.float64) - step).astype(np.float32)


def quarter_shift(heatmaps, coords):
    """Spec 5.4, one keypoint at a time."""
    n, k, h, w = heatmaps.shape
    out = coords.copy()
    for i in range(n):
        for j in range(k):
            hm = heatmaps[i, j]
            px, py = int(coords[i, j, 0]), int(coords[i, j, 1])
            if 1 < px < w - 1 and 1 < py < h - 1:
                diff = np.array([hm[py, px + 1] - hm[py, px - 1], hm[py + 1, px] - hm[py - 1, px]])
                out[i, j] += (np.sign(diff) * 0.25).astype(np.float32)
    return out


def transform_preds(coords, center, scale, heatmap_size, udp):
    """Spec 5.5 for one person with NumPy 1 promotion written out: float64 scalars cast into float32 ops."""
    roi = scale.astype(np.float32) * np.float32(200.0)
    out = np.empty_like(coords)
    for a in range(2):
        per_cell = float(roi[a]) / (heatmap_size[a] - (1.0 if udp else 0.0))
        t = coords[:, a] * np.float32(per_cell)
        t = t + np.float32(center[a])
        out[:, a] = t - np.float32(float(roi[a]) * 0.5)
    return out


def oks_nms(keypoints, scores, areas, sigmas, thr):
    """Spec 5.6 greedy OKS-NMS, one pair at a time."""
    order = list(np.argsort(-np.asarray(scores), kind="stable"))
    variances = (np.asarray(sigmas) * 2) ** 2
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        remaining = []
        for j in order:
            d = keypoints[j] - keypoints[i]
            e = (d[:, 0] ** 2 + d[:, 1] ** 2) / variances / ((areas[i] + areas[j]) / 2 + np.spacing(1)) / 2
            if np.mean(np.exp(-e)) <= thr:
                remaining.append(j)
        order = remaining
    return keep
