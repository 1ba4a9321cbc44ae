"""Heatmap-head kernels, channels-last (B, H, W, C) throughout (spec 2).

Classic: transposed conv 4x4 / stride 2 / padding 1 as one GEMM plus a col2im gather, batchnorm
(eval) folded or applied, ReLU. Simple: ReLU + bilinear x4 (align_corners=False) + 3x3 conv.
"""

import numpy as np
from numba import prange

from ._jit import jit, pjit


@pjit
def _col2im_s2(cols, h, w, cout, bias, relu, out):
    # spec 2.1: out[o] += in[i] * W[k] with o = 2i - 1 + k; each output pixel gathers 2x2 (i, k) pairs
    b_ = out.shape[0]
    for t in prange(b_ * 2 * h):
        b = t // (2 * h)
        oy = t % (2 * h)
        for ox in range(2 * w):
            for co in range(cout):
                out[b, oy, ox, co] = bias[co]
            for ky in range(4):
                iy2 = oy + 1 - ky
                if iy2 % 2 or iy2 < 0 or iy2 >= 2 * h:
                    continue
                iy = iy2 // 2
                for kx in range(4):
                    ix2 = ox + 1 - kx
                    if ix2 % 2 or ix2 < 0 or ix2 >= 2 * w:
                        continue
                    row = (b * h + iy) * w + ix2 // 2
                    base = (ky * 4 + kx) * cout
                    for co in range(cout):
                        out[b, oy, ox, co] += cols[row, base + co]
            if relu:
                for co in range(cout):
                    if out[b, oy, ox, co] < 0.0:
                        out[b, oy, ox, co] = 0.0


def deconv_weight(weight):
    """ConvTranspose2d weight (Cin, Cout, 4, 4) (spec 2.1 trap 7) -> GEMM operand (Cin, 4*4*Cout)."""
    cin, cout, kh, kw = weight.shape
    return np.ascontiguousarray(weight.transpose(0, 2, 3, 1).reshape(cin, kh * kw * cout), dtype=np.float32)


_COLS_BYTES = 8 << 20


def deconv4x4s2(x, wmat, bias, relu=False):
    """Transposed conv k=4, s=2, p=1: x (B, H, W, Cin) -> (B, 2H, 2W, Cout); wmat from deconv_weight."""
    if x.dtype != np.float32 or x.ndim != 4 or not x.flags.c_contiguous:
        raise ValueError(f"x must be C-contiguous float32 (B, H, W, C), got {x.dtype} {x.shape}")
    b, h, w, cin = x.shape
    cout = wmat.shape[1] // 16
    if wmat.shape[0] != cin or wmat.shape[1] != 16 * cout or bias.shape != (cout,):
        raise ValueError(f"weight {wmat.shape} / bias {bias.shape} do not fit input channels {cin}")
    bias = np.ascontiguousarray(bias, np.float32)
    out = np.empty((b, 2 * h, 2 * w, cout), np.float32)
    # the GEMM writes 16x the output's size: a few crops at a time keep it in cache and allocated once
    step = max(1, _COLS_BYTES // (h * w * 16 * cout * 4))
    cols = np.empty((min(step, b) * h * w, 16 * cout), np.float32)
    for start in range(0, b, step):
        n = min(step, b - start)
        part = cols[:n * h * w]
        np.matmul(x[start:start + n].reshape(n * h * w, cin), wmat, out=part)  # (n*H*W, 16*Cout)
        _col2im_s2(part, h, w, cout, bias, relu, out[start:start + n])
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
    """Conv2d weight (K, C, 3, 3) -> GEMM operand (C, 9*K), taps row-major then keypoints."""
    k, c, _, _ = weight.shape
    return np.ascontiguousarray(weight.transpose(1, 2, 3, 0).reshape(c, 9 * k), dtype=np.float32)


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
