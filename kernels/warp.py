"""OpenCV 4.x `cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT 0)` on uint8 images, bit-exact (spec 4.5).

OpenCV 5 computes the bilinear warp differently (trap 14), so the 4.x fixed-point algorithm that mmpose
ran on is re-implemented here: the pull map is the double-precision inverse of M, sampled on a
1/32-pixel grid with 15-bit integer weights. `warp_normalize` fuses it with /255 and the ImageNet
normalization (spec 4.6) and an optional horizontal flip, writing straight into the model's input batch.
"""

import numpy as np
from numba import prange

from ._jit import jit, pjit

AB_BITS = 10  # spec 4.5: coordinates are fixed point with 10 fractional bits ...
INTER_BITS = 5  # ... then cut to 5 bits, i.e. 1/32 pixel

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # spec 4.6: ImageNet mean/std, RGB order
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _normalize_lut():
    """(3, 256) float32: torchvision to_tensor (x / 255) then (x - mean) / std, each step in float32."""
    levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    return ((levels[None, :] - MEAN[:, None]) / STD[:, None]).astype(np.float32)


NORMALIZE_LUT = _normalize_lut()
NORMALIZE_LUT_BGR = np.ascontiguousarray(NORMALIZE_LUT[::-1])


def pull_tables(matrices, dsize):
    """Fixed-point pull map of cv2.warpAffine for each forward matrix (spec 4.5).

    matrices: (n, 2, 3) float32 or float64, image -> output. dsize: (width, height) of the output.
    Returns int64 `adelta, bdelta` (n, width) and `x0, y0` (n, height) such that the source position of
    output pixel (x, y) is ((x0[y] + adelta[x]) >> 5, (y0[y] + bdelta[x]) >> 5) in 1/32 pixels.
    """
    m = np.asarray(matrices, dtype=np.float64)  # float32 -> float64 is exact, like Mat::convertTo
    if m.ndim != 3 or m.shape[1:] != (2, 3):
        raise ValueError(f"matrices must have shape (n, 2, 3), got {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("matrices must be finite")
    m00, m01, m02, m10, m11, m12 = (m[:, i // 3, i % 3] for i in range(6))
    det = m00 * m11 - m01 * m10
    with np.errstate(divide="ignore"):
        d = np.where(det != 0, 1.0 / det, 0.0)  # OpenCV: a singular M gives an all-zero inverse
    a00, a01, a10, a11 = m11 * d, m01 * -d, m10 * -d, m00 * d
    a02 = -a00 * m02 - a01 * m12
    a12 = -a10 * m02 - a11 * m12
    scale = float(1 << AB_BITS)
    half = 1 << (AB_BITS - INTER_BITS - 1)  # round_delta = AB_SCALE / INTER_TAB_SIZE / 2 = 16
    xs = np.arange(dsize[0], dtype=np.float64)[None, :]
    ys = np.arange(dsize[1], dtype=np.float64)[None, :]
    adelta = _round_int(a00[:, None] * xs * scale)
    bdelta = _round_int(a10[:, None] * xs * scale)
    x0 = _round_int((a01[:, None] * ys + a02[:, None]) * scale) + half
    y0 = _round_int((a11[:, None] * ys + a12[:, None]) * scale) + half
    return adelta, bdelta, x0, y0


def _round_int(v):
    """cvRound: nearest, ties to even (np.rint), saturated to int32."""
    return np.clip(np.rint(v), -(2.0**31), 2.0**31 - 1).astype(np.int64)


def warp_affine_u8(image, matrix, dsize):
    """Bit-exact OpenCV 4.x `cv2.warpAffine(image, matrix, dsize, flags=cv2.INTER_LINEAR)` (border 0).

    image: (H, W) or (H, W, C) uint8, C-contiguous. matrix: (2, 3) forward matrix. dsize: (width, height).
    Returns the (height, width[, C]) uint8 output.
    """
    img = _check_image(image)
    w, h = int(dsize[0]), int(dsize[1])
    if w <= 0 or h <= 0:
        raise ValueError(f"dsize must be positive, got {dsize}")
    adelta, bdelta, x0, y0 = pull_tables(np.asarray(matrix)[None], (w, h))
    src = img if img.ndim == 3 else img[:, :, None]
    out = np.empty((h, w, src.shape[2]), dtype=np.uint8)
    _warp_u8(src, adelta[0], bdelta[0], x0[0], y0[0], out)
    return out if img.ndim == 3 else out[:, :, 0]


def warp_normalize(image, matrices, out, flip=False, bgr=False):
    """Warp, normalize and optionally mirror crops of one RGB image into a float32 batch, in place.

    image: (H, W, 3) uint8 RGB, C-contiguous. matrices: (n, 2, 3) forward matrices.
    out: (n, 3, h, w) float32 C-contiguous, or (2n, 3, h, w) with flip=True: out[i] is crop i normalized
    as in spec 4.6, and out[n + i] is the same crop mirrored along W (the `img.flip(3)` of spec 5.1).
    bgr=True takes a BGR image (OpenCV's order) and still writes RGB crops: no full-image channel swap.
    """
    img = _check_image(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {img.shape}")
    matrices = np.asarray(matrices)
    n = matrices.shape[0] if matrices.ndim == 3 else -1
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous float32 array")
    if out.ndim != 4 or out.shape[0] != n * (2 if flip else 1) or out.shape[1] != 3:
        raise ValueError(f"out must have shape ({n * (2 if flip else 1)}, 3, h, w), got {out.shape}")
    adelta, bdelta, x0, y0 = pull_tables(matrices, (out.shape[3], out.shape[2]))
    if n:
        _warp_normalize(img, adelta, bdelta, x0, y0, NORMALIZE_LUT_BGR if bgr else NORMALIZE_LUT, out, flip)
        if bgr:  # the planes came out B, G, R, each normalized by its own statistics: reorder them
            out[:, [0, 2]] = out[:, [2, 0]]
    return out


def _check_image(image):
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError("image must be a uint8 numpy array")
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must be a non-empty (H, W) or (H, W, C) array, got {image.shape}")
    if not image.flags.c_contiguous:
        raise ValueError("image must be C-contiguous")
    return image


@jit
def _source(xy0, delta):
    """Source position in 1/32 pixels -> (integer pixel saturated to int16 like OpenCV, fraction)."""
    p = (xy0 + delta) >> (AB_BITS - INTER_BITS)  # arithmetic shift, also for negative positions
    return min(max(p >> INTER_BITS, -32768), 32767), p & ((1 << INTER_BITS) - 1)


# Bilinear weights: OpenCV's 15-bit table holds (32 - fx)(32 - fy)·32 etc. exactly (the float products are
# multiples of 1/1024, so its rounding and fix-up to a sum of 32768 change nothing for 8-bit data), and
# (sum·32 + 16384) >> 15 == (sum + 512) >> 10, so the kernels use the 10-bit products directly.


@jit
def _blend_border(img, sx, sy, fx, fy, c):
    """Bilinear sample of channel c at the image border: outside neighbours are 0 but keep their weight."""
    acc = np.int32(0)
    for dy in range(2):
        yy = sy + dy
        if 0 <= yy < img.shape[0]:
            wy = np.int32(fy if dy else 32 - fy)
            for dx in range(2):
                xx = sx + dx
                if 0 <= xx < img.shape[1]:
                    acc += wy * np.int32(fx if dx else 32 - fx) * np.int32(img[yy, xx, c])
    return (acc + np.int32(512)) >> 10


@pjit
def _warp_u8(img, adelta, bdelta, x0, y0, out):
    h, w = img.shape[0], img.shape[1]
    for y in prange(out.shape[0]):
        for x in range(out.shape[1]):
            sx, fx = _source(x0[y], adelta[x])
            sy, fy = _source(y0[y], bdelta[x])
            if sx >= 0 and sy >= 0 and sx + 1 < w and sy + 1 < h:
                w00, w01 = np.int32((32 - fx) * (32 - fy)), np.int32(fx * (32 - fy))
                w10, w11 = np.int32((32 - fx) * fy), np.int32(fx * fy)
                for c in range(out.shape[2]):
                    acc = (w00 * np.int32(img[sy, sx, c]) + w01 * np.int32(img[sy, sx + 1, c])
                           + w10 * np.int32(img[sy + 1, sx, c]) + w11 * np.int32(img[sy + 1, sx + 1, c]))
                    out[y, x, c] = (acc + np.int32(512)) >> 10
            else:
                for c in range(out.shape[2]):
                    out[y, x, c] = _blend_border(img, sx, sy, fx, fy, c)


@pjit
def _warp_normalize(img, adelta, bdelta, x0, y0, lut, out, flip):
    n, height, width = adelta.shape[0], x0.shape[1], adelta.shape[1]
    h, w = img.shape[0], img.shape[1]
    for job in prange(n * height):  # one output row of one crop per job
        i = job // height
        y = job - i * height
        for x in range(width):
            sx, fx = _source(x0[i, y], adelta[i, x])
            sy, fy = _source(y0[i, y], bdelta[i, x])
            inside = sx >= 0 and sy >= 0 and sx + 1 < w and sy + 1 < h
            w00, w01 = np.int32((32 - fx) * (32 - fy)), np.int32(fx * (32 - fy))
            w10, w11 = np.int32((32 - fx) * fy), np.int32(fx * fy)
            for c in range(3):
                if inside:
                    acc = (w00 * np.int32(img[sy, sx, c]) + w01 * np.int32(img[sy, sx + 1, c])
                           + w10 * np.int32(img[sy + 1, sx, c]) + w11 * np.int32(img[sy + 1, sx + 1, c]))
                    v = lut[c, (acc + np.int32(512)) >> 10]
                else:
                    v = lut[c, _blend_border(img, sx, sy, fx, fy, c)]
                out[i, c, y, x] = v
                if flip:
                    out[n + i, c, y, width - 1 - x] = v
