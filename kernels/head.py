"""Heatmap-head kernels, channels-last (B, H, W, C) throughout (spec 2).

Classic: transposed conv 4x4 / stride 2 / padding 1 on gemm.linear (the own fp32 micro-kernel) plus a
gather into the output, batchnorm (eval) folded or applied, ReLU; then a 1x1 conv (gemm.linear, in model.py).
Simple: ReLU + bilinear x4 (align_corners=False) + 3x3 conv. docs/head.md: which product runs where.
"""

from typing import NamedTuple

import numpy as np
from numba import prange

from . import gemm
from ._jit import jit, pjit


@pjit
def _col2im_s2(cols, h, w, cout, bias, relu, out):
    # spec 2.1: out[o] += in[i] * W[k] with o = 2i - 1 + k. Stride 2 splits the taps by parity: an even
    # output row 2m takes input rows m (k 1) and m - 1 (k 3), an odd one 2m + 1 rows m (k 2) and m + 1
    # (k 0); likewise columns. So every pixel sums exactly 2 x 2 taps; those falling off the map read the
    # zero row past the crops' rows, and the channel loop runs branch-free over contiguous slices
    b_ = out.shape[0]
    stride = cols.shape[1]
    flat, zero = cols.reshape(-1), (cols.shape[0] - 1) * stride
    for t in prange(b_ * 2 * h):
        b = t // (2 * h)
        oy = t % (2 * h)
        m, py = oy // 2, oy % 2
        iy0, ky0, iy1, ky1 = (m, 1, m - 1, 3) if py == 0 else (m, 2, m + 1, 0)
        y0 = (b * h + iy0) * w * stride
        y1 = (b * h + iy1) * w * stride if 0 <= iy1 < h else -1
        o = out[b, oy]
        for ox in range(2 * w):
            n, px = ox // 2, ox % 2
            ix0, kx0, ix1, kx1 = (n, 1, n - 1, 3) if px == 0 else (n, 2, n + 1, 0)
            x1 = ix1 * stride if 0 <= ix1 < w else -1
            s00 = y0 + ix0 * stride + (ky0 * 4 + kx0) * cout
            s01 = (y0 + x1 if x1 >= 0 else zero) + (ky0 * 4 + kx1) * cout
            s10 = (y1 + ix0 * stride if y1 >= 0 else zero) + (ky1 * 4 + kx0) * cout
            s11 = (y1 + x1 if y1 >= 0 and x1 >= 0 else zero) + (ky1 * 4 + kx1) * cout
            p = o[ox]
            if relu:
                for co in range(cout):
                    v = bias[co] + flat[s00 + co] + flat[s01 + co] + flat[s10 + co] + flat[s11 + co]
                    p[co] = 0.0 if v < 0.0 else v  # NaN stays NaN
            else:
                for co in range(cout):
                    p[co] = bias[co] + flat[s00 + co] + flat[s01 + co] + flat[s10 + co] + flat[s11 + co]


@pjit
def _windows(x, cols):
    # every 2x2 window of the input padded by one zero pixel: row (b, a, c) holds x[b, a - 1 + dy, c - 1 + dx]
    # for dy, dx in 0, 1 (zeros outside the map): (H + 1) x (W + 1) rows of 4 * Cin values
    b_, h, w, cin = x.shape
    for t in prange(b_ * (h + 1)):
        b = t // (h + 1)
        a = t % (h + 1)
        for c in range(w + 1):
            row = cols[(b * (h + 1) + a) * (w + 1) + c]
            for dy in range(2):
                for dx in range(2):
                    iy, ix = a - 1 + dy, c - 1 + dx
                    dst = row[(dy * 2 + dx) * cin:(dy * 2 + dx + 1) * cin]
                    if 0 <= iy < h and 0 <= ix < w:
                        dst[:] = x[b, iy, ix]
                    else:
                        dst[:] = 0.0


@pjit
def _depth_to_space(y, h, w, cout, relu, out):
    # window (a, c) holds output pixels (2a - 1 + sy, 2c - 1 + sx) in its columns (sy, sx, co); the border
    # windows' outer halves fall off the map
    b_ = out.shape[0]
    for t in prange(b_ * 2 * h):
        b = t // (2 * h)
        oy = t % (2 * h)
        a, sy = (oy + 1) // 2, (oy + 1) % 2
        for ox in range(2 * w):
            c, sx = (ox + 1) // 2, (ox + 1) % 2
            src = y[(b * (h + 1) + a) * (w + 1) + c, (sy * 2 + sx) * cout:(sy * 2 + sx + 1) * cout]
            dst = out[b, oy, ox]
            if relu:
                for co in range(cout):
                    v = src[co]
                    dst[co] = 0.0 if v < 0.0 else v  # NaN stays NaN
            else:
                dst[:] = src


class Deconv(NamedTuple):
    """A transposed conv 4x4 / stride 2 / padding 1 packed for gemm.linear in one of two forms:
    taps (windows False): (16 Cout, Cin), rows (ky, kx, co), one product per input pixel, then col2im;
    windows: (4 Cout, 4 Cin), rows (sy, sx, co), columns (dy, dx, ci): every 2x2 window of the zero-padded
    input yields a 2x2 block of output pixels, so the taps are summed inside the product.
    module: the precision module whose pack_weight made `packed` and whose linear runs it (gemm: fp32)."""
    packed: tuple
    cout: int
    windows: bool
    module: object = gemm


def deconv_weight(weight, windows=None, module=gemm):
    """ConvTranspose2d weight (Cin, Cout, 4, 4) (spec 2.1 trap 7) -> Deconv for deconv4x4s2.

    windows=None chooses by shape: the window form does (H+1)(W+1)/(HW) more arithmetic (+7% for
    ViTPose's 32x24 -> 64x48, +15% for 16x12 -> 32x24), but its product writes about the output's size
    where the tap form's writes 4x it (16 Cout per input pixel) for col2im to read back. Measured
    (docs/head.md): windows win where Cin <= Cout (the second deconv) and lose at Cin 768."""
    cin, cout = weight.shape[:2]
    windows = cin <= cout if windows is None else windows
    return Deconv(module.pack_weight(deconv_rows(weight, windows)), cout, windows, module)


def deconv_rows(weight, windows):
    """The (N, K) matrix deconv_weight packs: (4 Cout, 4 Cin) for windows, else (16 Cout, Cin)."""
    cin, cout = weight.shape[:2]
    if windows:
        k = 2 + np.arange(2)[:, None] - 2 * np.arange(2)[None, :]  # tap k[s, d]: output 2a - 1 + s, input a - 1 + d
        w6 = weight[:, :, k[:, None, :, None], k[None, :, None, :]]  # (ci, co, sy, sx, dy, dx)
        rows = w6.transpose(2, 3, 1, 4, 5, 0).reshape(4 * cout, 4 * cin)
    else:
        rows = weight.transpose(2, 3, 1, 0).reshape(16 * cout, cin)
    return np.ascontiguousarray(rows, dtype=np.float32)


_COLS_BYTES = 8 << 20  # the products' operands and outputs of a few crops at a time: in cache, allocated once


def deconv4x4s2(x, deconv, bias, relu=False):
    """Transposed conv k=4, s=2, p=1: x (B, H, W, Cin) -> (B, 2H, 2W, Cout), deconv from deconv_weight."""
    if x.dtype != np.float32 or x.ndim != 4 or not x.flags.c_contiguous:
        raise ValueError(f"x must be C-contiguous float32 (B, H, W, C), got {x.dtype} {x.shape}")
    b, h, w, cin = x.shape
    packed, cout = deconv.packed, deconv.cout
    groups = 4 if deconv.windows else 1
    if packed.k != groups * cin or packed.n != 16 // groups * cout or bias.shape != (cout,):
        raise ValueError(f"weight {(packed.n, packed.k)} / bias {bias.shape} do not fit input channels {cin}")
    bias = np.ascontiguousarray(bias, np.float32)
    out = np.empty((b, 2 * h, 2 * w, cout), np.float32)
    if deconv.windows:
        rows = (h + 1) * (w + 1)
        step = max(1, _COLS_BYTES // (rows * 4 * (cin + cout) * 4))
        cols = np.empty((min(step, b) * rows, 4 * cin), np.float32)
        y = np.empty((min(step, b) * rows, 4 * cout), np.float32)
        bias4 = np.tile(bias, 4)
        for start in range(0, b, step):
            n = min(step, b - start)
            _windows(x[start:start + n], cols[:n * rows])
            deconv.module.linear(cols[:n * rows], packed, bias4, out=y[:n * rows])  # (n*(H+1)*(W+1), 4*Cout)
            _depth_to_space(y, h, w, cout, relu, out[start:start + n])
        return out
    step = max(1, _COLS_BYTES // (h * w * 16 * cout * 4))
    cols = np.empty((min(step, b) * h * w + 1, 16 * cout), np.float32)
    cols[-1] = 0.0  # the zero row col2im reads for taps off the map
    for start in range(0, b, step):
        n = min(step, b - start)
        deconv.module.linear(x[start:start + n].reshape(n * h * w, cin), packed, out=cols[:n * h * w])  # (n*H*W, 16*Cout)
        _col2im_s2(cols, h, w, cout, bias, relu, out[start:start + n])
    return out


def fold_batchnorm(weight, mean, var, gamma, beta, eps=1e-5):
    """Fold eval-mode BatchNorm (spec 2.1, eps 1e-5) into the bias-free deconv before it.

    weight (Cin, Cout, 4, 4) -> (scaled weight, bias (Cout,)), computed in float64, stored float32.
    """
    k = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    w = weight.astype(np.float64) * k[None, :, None, None]
    b = beta.astype(np.float64) - mean.astype(np.float64) * k
    return w.astype(np.float32), b.astype(np.float32)


@pjit
def _batchnorm(x, scale, shift):
    rows, c = x.shape
    for r in prange(rows):
        for j in range(c):
            x[r, j] = x[r, j] * scale[j] + shift[j]


def batchnorm(x, mean, var, gamma, beta, eps=1e-5):
    """In place eval-mode BatchNorm on channels-last x (..., C): (x - mean) / sqrt(var + eps) * gamma + beta."""
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous float32")
    k = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    shift = beta.astype(np.float64) - mean.astype(np.float64) * k
    _batchnorm(x.reshape(-1, x.shape[-1]), k.astype(np.float32), shift.astype(np.float32))
    return x


@jit
def _source(d, n):
    # spec 2.2, bilinear x4 with align_corners=False: output index d reads (d + 0.5) / 4 - 0.5,
    # clamped at 0, and its neighbour clamped at the edge -> (i0, i1, weight of i1)
    s = max((d + 0.5) / 4.0 - 0.5, 0.0)
    i0 = int(s)
    return i0, min(i0 + 1, n - 1), np.float32(s - i0)


@pjit
def _upsample4(x, relu, out):
    b_, h, w, c = x.shape
    for t in prange(b_ * 4 * h):
        b = t // (4 * h)
        oy = t % (4 * h)
        y0, y1, ly = _source(oy, h)
        for ox in range(4 * w):
            x0, x1, lx = _source(ox, w)
            for ch in range(c):
                a = x[b, y0, x0, ch]
                bb = x[b, y0, x1, ch]
                cc = x[b, y1, x0, ch]
                d = x[b, y1, x1, ch]
                if relu:
                    a, bb, cc, d = max(a, 0.0), max(bb, 0.0), max(cc, 0.0), max(d, 0.0)
                top = a * (1 - lx) + bb * lx
                bot = cc * (1 - lx) + d * lx
                out[b, oy, ox, ch] = top * (1 - ly) + bot * ly


def upsample4(x, relu=False):
    """Bilinear x4, align_corners=False, optionally ReLU first: (B, H, W, C) -> (B, 4H, 4W, C)."""
    if x.dtype != np.float32 or x.ndim != 4 or not x.flags.c_contiguous:
        raise ValueError(f"x must be C-contiguous float32 (B, H, W, C), got {x.dtype} {x.shape}")
    b, h, w, c = x.shape
    out = np.empty((b, 4 * h, 4 * w, c), np.float32)
    _upsample4(x, relu, out)
    return out


@pjit
def _upsample4_conv3x3(z, bias, out):
    # out[b, k, y, x] = bias[k] + sum over taps t = (dy, dx) of up(z[..., t, k])[y + dy - 1, x + dx - 1],
    # zero outside the map: the 3x3 conv's padding (spec 2.2); up() is the same lerp as _upsample4
    b_, h, w, taps, k = z.shape
    oh, ow = 4 * h, 4 * w
    for t in prange(b_ * k):
        b = t // k
        kk = t % k
        for y in range(oh):
            for x in range(ow):
                s = bias[kk]
                for dy in range(3):
                    u = y + dy - 1
                    if u < 0 or u >= oh:
                        continue
                    u0, u1, lu = _source(u, h)
                    for dx in range(3):
                        v = x + dx - 1
                        if v < 0 or v >= ow:
                            continue
                        v0, v1, lv = _source(v, w)
                        tap = dy * 3 + dx
                        top = z[b, u0, v0, tap, kk] * (1 - lv) + z[b, u0, v1, tap, kk] * lv
                        bot = z[b, u1, v0, tap, kk] * (1 - lv) + z[b, u1, v1, tap, kk] * lv
                        s += top * (1 - lu) + bot * lu
                out[b, kk, y, x] = s


def conv3x3_weight(weight):
    """Conv2d weight (K, C, 3, 3) -> the (9*K, C) weight of gemm.pack_weight: rows taps row-major, then keypoints."""
    k, c, _, _ = weight.shape
    return np.ascontiguousarray(weight.transpose(2, 3, 0, 1).reshape(9 * k, c), dtype=np.float32)


def upsample4_conv3x3(z, bias):
    """The simple head after its channel mix: z (B, H, W, 9, K), each tap's projection of the
    low-resolution map, -> bilinear x4 of every tap, summed as a 3x3 / padding 1 conv: (B, K, 4H, 4W).

    Bilinear upsampling works per channel and the conv mixes channels per pixel, so projecting
    first and upsampling the 9K projections equals conv3x3(upsample4(x)), with 16x fewer FLOPs.
    """
    if z.dtype != np.float32 or z.ndim != 5 or z.shape[3] != 9 or not z.flags.c_contiguous:
        raise ValueError(f"z must be C-contiguous float32 (B, H, W, 9, K), got {z.dtype} {z.shape}")
    b, h, w, _, k = z.shape
    out = np.empty((b, k, 4 * h, 4 * w), np.float32)
    _upsample4_conv3x3(z, np.ascontiguousarray(bias, np.float32), out)
    return out

