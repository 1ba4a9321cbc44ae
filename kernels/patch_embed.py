"""Patch embedding as im2col + one product on gemm.linear: 16x16 conv, stride 16, padding 2 (spec 1.1)."""

import numpy as np
from numba import prange

from . import gemm
from ._jit import pjit

PATCH = 16
PAD = 2  # spec 1.1: padding 4 + 2*(1//2 - 1) = 2, so every patch starts 2 px up and left


@pjit
def _im2col(pixels, hp, wp, cols):
    b_, ch, h, w = pixels.shape
    for t in prange(b_ * hp):
        b = t // hp
        py = t % hp
        for px in range(wp):
            row = (b * hp + py) * wp + px
            k = 0
            for c in range(ch):
                for ky in range(PATCH):
                    y = py * PATCH - PAD + ky
                    for kx in range(PATCH):
                        x = px * PATCH - PAD + kx
                        if 0 <= y < h and 0 <= x < w:
                            cols[row, k] = pixels[b, c, y, x]
                        else:
                            cols[row, k] = 0.0  # padding zeros the normalised tensor: "mean colour"
                        k += 1


def grid(height, width):
    """Token grid (Hp, Wp) of the padded stride-16 conv: 256x192 -> 16x12."""
    return (height + 2 * PAD - PATCH) // PATCH + 1, (width + 2 * PAD - PATCH) // PATCH + 1


def im2col(pixels):
    """pixels (B, 3, H, W) float32 -> patches (B*Hp*Wp, 3*16*16), rows in token order (y outer, x inner)."""
    if pixels.dtype != np.float32 or pixels.ndim != 4 or not pixels.flags.c_contiguous:
        raise ValueError(f"pixels must be C-contiguous float32 (B, 3, H, W), got {pixels.dtype} {pixels.shape}")
    b, ch, h, w = pixels.shape
    hp, wp = grid(h, w)
    cols = np.empty((b * hp * wp, ch * PATCH * PATCH), np.float32)
    _im2col(pixels, hp, wp, cols)
    return cols


def embed_weight(weight):
    """Conv2d weight (C, 3, 16, 16) -> packed (C, 3*16*16) operand of gemm.linear (columns in im2col's order)."""
    return gemm.pack_weight(np.ascontiguousarray(weight.reshape(weight.shape[0], -1), dtype=np.float32))


def embed(pixels, packed, bias, pos):
    """Tokens (B*Hp*Wp, C) = the conv's output + bias + pos, pos (Hp*Wp, C) added to every crop;
    the additions in the order of the unfused model, (conv + bias) + pos, in the product's epilogue."""
    cols = im2col(pixels)
    b, n = pixels.shape[0], pos.shape[0]
    if cols.shape[0] != b * n:
        raise ValueError(f"{cols.shape[0] // b} patches per crop, but {n} positions")
    x = np.empty((b, n, packed.n), np.float32)
    x[:] = pos
    x = x.reshape(b * n, packed.n)
    return gemm.linear(cols, packed, bias, residual=x, out=x)  # (B*N, C)
