"""int8 linear layers: u8 x s8 products with int32 accumulation (AMX `tdpbusd` or `vpdpbusd`), fp32 out.

The contract of kernels/gemm.py (`pack_weight`, `linear`), with int8 weights and activations.
- pack_weight(w): per-output-channel scale sw[n] = max|w[n, :]| / 127, q = rint(w / sw) in [-127, 127],
  packed into int32 lanes holding 4 consecutive k (AMX tiles of 16 outputs, else 48-column panels);
  colsum[n] = sum_k q[n, k].
- linear(x, packed): per-row asymmetric activation scale: s = (max(x, 0) - min(x, 0)) / 255,
  zero point z = rint(-min / s), u = clip(rint(x / s) + z, 0, 255), so x ~ s * (u - z). Asymmetric
  (rather than u = q + 128) because post-GELU rows are one-sided: it doubles their resolution.
  acc = sum_k u * q exactly in int32 (|acc - z * colsum| <= 2 * 255 * 127 * K < 2^31: weights wider than
  33000 inputs are refused), then out = s * sw[n] * (acc - z * colsum[n]) + bias (in float32 on the AMX
  blocks, kernels/amx.epilogue_int8; in double precision elsewhere).
  AMX (kernels/amx.py, as in gemm_bf16: activations quantised in one parallel pass, 32 x 32 blocks)
  where the CPU has it, else AVX512-VNNI 8x48 register tiles.
Where the CPU (or Numba's target) lacks AVX512-VNNI, the same integers are multiplied by NumPy's
float64 BLAS, exact for these sizes: the same numbers, slower than fp32. `FAST` says which path runs.
"""

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import prange

from . import amx, gemm
from ._jit import jit, pjit
from .gemm_bf16 import (BC, BR, MR, NR, _prefetch_block, amx_buffers, block_padded, check_call, chunk_rows, cpu_has,
                        epilogue, gelu_value, lanes_of, tile_intrinsic)

AMX = amx.available(cpu_has, "amx-int8")
FAST = AMX or cpu_has("avx512vnni")
INSTRUCTION = "tdpbusd (AMX)" if AMX else "vpdpbusd"  # what FAST runs; the fallback widens to NumPy's BLAS


class PackedInt8(NamedTuple):
    panels: np.ndarray  # AVX-512: (ceil(N/48), K/4 padded to 16, 48) int32, 4 s8 per lane; AMX: amx.pack_strips
    scale: np.ndarray  # (N,) float64: per-output-channel weight scale
    colsum: np.ndarray  # (N,) int32: sum_k q[n, k], for the activations' zero point
    n: int
    k: int
    amx: bool = False  # panels are AMX tiles: (ceil(N/32) * 2 strips, K/64, 16, 16) int32, zero-padded


def quantize_weight(w):
    """(N, K) float32 -> (q (N, K) int8, scale (N,) float64), symmetric per output channel."""
    w = np.asarray(w, np.float64)
    scale = np.abs(w).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8), scale


def pack_weight(w):
    """(N, K) float32 -> PackedInt8, once at load; the fp32 array is not referenced afterwards."""
    w = np.asarray(w)
    if w.dtype != np.float32 or w.ndim != 2:
        raise ValueError(f"weight must be a 2-D float32 array, got {w.dtype} {w.shape}")
    n, k = w.shape
    if k > 33000:
        raise ValueError(f"{k} inputs: the int32 sums could overflow beyond 33000")
    q, scale = quantize_weight(w)
    width = BC if AMX else NR  # AMX: whole 32-column blocks; AVX-512: 48-column panels
    npan, kq = -(-n // width), -(-k // 64) * 16  # K padded to one AMX tile depth: 64 bytes = 16 lanes
    padded = np.zeros((npan * width, 4 * kq), np.int8)
    padded[:n, :k] = q
    lanes = padded.view(np.int32)  # (N', K/4): bytes k..k+3 of one lane, little-endian like vpdpbusd reads them
    colsum = q.sum(axis=1, dtype=np.int32)
    if AMX:
        return PackedInt8(amx.pack_strips(lanes, npan * amx.CT), scale, colsum, n, k, True)
    panels = np.ascontiguousarray(lanes.reshape(npan, NR, kq).transpose(0, 2, 1))
    return PackedInt8(panels, scale, colsum, n, k)


def unpack_weight(packed):
    """The int8 weight (N, K) as stored (without its scale)."""
    return np.ascontiguousarray(lanes_of(packed)).view(np.int8)[:packed.n, :packed.k]


@jit
def _row_scale(x, r):
    """Scale and zero point of row r: the range [min(x, 0), max(x, 0)] mapped onto 0..255."""
    lo, hi = 0.0, 0.0
    for j in range(x.shape[1]):
        v = np.float64(x[r, j])
        lo = min(lo, v)
        hi = max(hi, v)
    s = (hi - lo) / 255.0
    if not s > 0.0 or s == np.inf:  # an all-zero row (or NaN/inf, which linear() refuses beforehand)
        s = 1.0
    return s, np.rint(-lo / s)


def quantize_rows(x):
    """NumPy form of the activations' quantisation: (u (M, K) uint8, s (M,), z (M,)) as the kernel makes them."""
    x = np.asarray(x, np.float64)
    lo, hi = np.minimum(x.min(axis=1), 0.0), np.maximum(x.max(axis=1), 0.0)
    s = (hi - lo) / 255.0
    s[~(s > 0) | (s == np.inf)] = 1.0
    z = np.rint(-lo / s)
    u = np.clip(np.rint(x * (1.0 / s)[:, None]) + z[:, None], 0, 255).astype(np.uint8)
    return u, s, z


@jit
def _pack_rows(x, r0, rows, kq, apack, sz):
    """Rows r0.. of x -> 8-row panels of 4 u8 per lane, (rows/8, kq, 8) int32; sz[i] = (scale, zero point)."""
    k = x.shape[1]
    for s in range((rows + MR - 1) // MR):
        for r in range(MR):
            m = s * MR + r
            base = s * kq * MR + r
            if m >= rows:
                for q in range(kq):
                    apack[base + q * MR] = 0
                continue
            scale, zp = _row_scale(x, r0 + m)
            sz[m, 0], sz[m, 1] = scale, zp
            for q in range(kq):
                lane = 0
                for b in range(4):
                    if 4 * q + b < k:
                        lane |= _quantize(x[r0 + m, 4 * q + b], scale, zp) << (8 * b)
                apack[base + q * MR] = np.int32(np.uint32(lane))


@jit
def _quantize(v, scale, zp):
    return int(min(max(np.rint(np.float64(v) * (1.0 / scale)) + zp, 0.0), 255.0))


@jit
def _store(tile, stride, sz, out, res, bias, scale, colsum, r0, c0, rows, cols, mode):
    """out = s * sw * (acc - z * colsum) + bias, then GELU (mode 1) or + residual (mode 2); sz from row r0."""
    for r in range(rows):
        s, zp = sz[r, 0], np.int32(sz[r, 1])
        t, o, e = tile[r * stride:r * stride + cols], out[r0 + r, c0:c0 + cols], res[r0 + r, c0:c0 + cols]
        sw, cs, b = scale[c0:c0 + cols], colsum[c0:c0 + cols], bias[c0:c0 + cols]
        # |acc - z * colsum| <= 2 * 255 * 127 * K: exact in int32 for K up to 33000
        if mode == 0:
            for j in range(cols):
                o[j] = np.float64(t[j] - zp * cs[j]) * (s * sw[j]) + b[j]
        elif mode == 1:
            for j in range(cols):
                o[j] = gelu_value(np.float64(t[j] - zp * cs[j]) * (s * sw[j]) + b[j])
        else:
            for j in range(cols):
                o[j] = np.float64(t[j] - zp * cs[j]) * (s * sw[j]) + b[j] + e[j]


_tile = tile_intrinsic("llvm.x86.avx512.vpdpbusd.512", ir.VectorType(ir.IntType(32), 16),
                       ir.VectorType(ir.IntType(8), 64))


@pjit
def _gemm(x, panels, scale, colsum, n, bias, res, out, mode, chunk):
    m = x.shape[0]
    npan, kq = panels.shape[0], panels.shape[1]
    flat = panels.reshape(-1)
    tasks = (m + chunk - 1) // chunk
    for t in prange(tasks):
        r0 = t * chunk
        rows = min(chunk, m - r0)
        nsub = (rows + MR - 1) // MR
        apack = np.empty(nsub * kq * MR, np.int32)
        sz = np.empty((rows, 2), np.float64)
        tile = np.empty(MR * NR, np.int32)
        _pack_rows(x, r0, rows, kq, apack, sz)
        for p in range(npan):
            cols = min(NR, n - p * NR)
            for s in range(nsub):
                _tile(apack, s * kq * MR, flat, p * kq * NR, kq, tile)
                _store(tile, NR, sz[s * MR:], out, res, bias, scale, colsum, r0 + s * MR, p * NR,
                       min(MR, rows - s * MR), cols, mode)


@pjit
def _pack_amx(x, a, steps, sz, bad):
    """x -> A for the tiles: u8 in strips of 16 rows (amx.pack_strips' layout), rows padded to the block and
    K to steps * 64 with zeros; sz[r] = (scale, zero point); bad[r] = 1 where row r holds NaN or inf (it is
    packed as zeros). Whole 64-input runs go through amx.row_range / amx.quantize64, the tail as scalars."""
    m, k = x.shape
    full = k // amx.DEPTH * amx.DEPTH
    flat = x.reshape(-1)
    ends = np.zeros((m, 2), np.float32)
    for r in prange(a.size // (steps * amx.DEPTH)):
        base = (r // amx.TM) * steps * amx.TILE + (r % amx.TM) * amx.DEPTH
        if r >= m:
            for t in range(steps):
                a[base + t * amx.TILE:base + t * amx.TILE + amx.DEPTH] = 0
            continue
        row_bad = amx.row_range(flat, r * k, full, ends[r])
        lo_v, hi_v = np.float64(ends[r, 0]), np.float64(ends[r, 1])
        for j in range(full, k):
            v = np.float64(x[r, j])
            if not np.isfinite(v):
                row_bad = 1
            lo_v, hi_v = min(lo_v, v), max(hi_v, v)
        if row_bad:
            bad[r], sz[r, 0], sz[r, 1] = 1, 1.0, 0.0
            for t in range(steps):
                a[base + t * amx.TILE:base + t * amx.TILE + amx.DEPTH] = 0
            continue
        bad[r] = 0
        s = (hi_v - lo_v) / 255.0
        if not s > 0.0 or s == np.inf:  # an all-zero row
            s = 1.0
        zp = np.rint(-lo_v / s)
        sz[r, 0], sz[r, 1] = s, zp
        inv = 1.0 / s
        for t in range(full // amx.DEPTH):
            amx.quantize64(flat, r * k + t * amx.DEPTH, inv, zp, a, base + t * amx.TILE)
        for t in range(full // amx.DEPTH, steps):  # the tail and K's padding
            j0 = t * amx.DEPTH
            dst = a[base + t * amx.TILE:base + t * amx.TILE + amx.DEPTH]
            dst[:] = 0
            for j in range(j0, min(k, j0 + amx.DEPTH)):
                dst[j - j0] = np.uint8(min(max(np.rint(np.float64(x[r, j]) * inv) + zp, 0.0), 255.0))


@pjit
def _gemm_amx(a, m, tiles, sz, scale, colsum, n, bias, res, out, mode, mc, groups, cfg, scratch):
    strips, steps = tiles.shape[0], tiles.shape[1]
    b = tiles.reshape(-1).view(np.uint8)
    strip = steps * amx.TILE
    blocks = strips // amx.CT
    mchunks = (m + mc - 1) // mc
    for task in prange(mchunks * groups):  # as gemm_bf16._gemm_amx
        m0 = (task % mchunks) * mc
        m1 = min(m, m0 + mc)
        g = task // mchunks
        slot, pr0, pc0, prows = 0, 0, 0, 0
        amx.begin(cfg)
        for nb in range(g * blocks // groups, (g + 1) * blocks // groups):
            c0 = nb * BC
            for r0 in range(m0, m1, BR):
                rows = min(BR, m1 - r0)
                _prefetch_block(out, res, r0, c0, rows, mode)
                c = scratch[task, slot]
                prev = (scratch[task, 1 - slot], sz, scale, colsum, out, res, bias, pr0, pc0, prows)
                if mode == amx.BIAS:
                    _block_bias(a, r0 * steps * amx.DEPTH, b, nb * amx.CT * strip, strip, steps, c, prev)
                elif mode == amx.GELU:
                    _block_gelu(a, r0 * steps * amx.DEPTH, b, nb * amx.CT * strip, strip, steps, c, prev)
                else:
                    _block_residual(a, r0 * steps * amx.DEPTH, b, nb * amx.CT * strip, strip, steps, c, prev)
                if c0 + BC > n:  # the last block of a width that is not a multiple of 32: done here
                    _store(c, BC, sz[r0:], out, res, bias, scale, colsum, r0, c0, rows, n - c0, mode)
                    prows = 0
                else:
                    slot, pr0, pc0, prows = 1 - slot, r0, c0, rows
        c = scratch[task, 1 - slot]
        if mode == amx.BIAS:
            _epi_bias(c, sz, scale, colsum, out, res, bias, pr0, pc0, prows)
        elif mode == amx.GELU:
            _epi_gelu(c, sz, scale, colsum, out, res, bias, pr0, pc0, prows)
        else:
            _epi_residual(c, sz, scale, colsum, out, res, bias, pr0, pc0, prows)
        amx.end()


_block_bias, _block_gelu, _block_residual = (
    amx.block_intrinsic("llvm.x86.tdpbusd", amx.RT, amx.CT, amx.rows_int8(mode)) for mode in (amx.BIAS, amx.GELU, amx.RESIDUAL))
_epi_bias, _epi_gelu, _epi_residual = (amx.epilogue_int8(mode) for mode in (amx.BIAS, amx.GELU, amx.RESIDUAL))
_CFG = amx.tile_config()


def linear(x, packed, bias=None, *, gelu=False, residual=None, out=None):
    """out = dequant(quant(x) @ quant(w).T) + bias, then GELU or + residual; x (M, K) float32 -> (M, N).

    A weight packed by kernels/gemm.py (a layer an int8 model keeps in fp32) goes to its fp32 product.
    """
    if not isinstance(packed, PackedInt8):
        return gemm.linear(x, packed, bias, gelu=gelu, residual=residual, out=out)
    bias, res, out, mode = check_call(x, packed.n, packed.k, bias, residual, out, gelu)
    m = x.shape[0]
    if m == 0:
        return out
    if packed.amx:
        steps, a, mc, groups, scratch = amx_buffers(m, packed, np.int32)
        sz, bad = np.empty((m, 2), np.float64), np.empty(m, np.uint8)
        _pack_amx(x, a, steps, sz, bad)
        _gemm_amx(a, m, packed.panels, sz, block_padded(packed.scale), block_padded(packed.colsum), packed.n,
                  block_padded(bias), res, out, mode, mc, groups, _CFG, scratch)
        if bad.any():  # a row with NaN or inf has no scale: it gives NaN, as in fp32, and the others are untouched
            out[bad.view(np.bool_)] = np.nan
        return out
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():  # a row with NaN or inf has no scale: it gives NaN, as in fp32, and the others are untouched
        linear(np.where(bad[:, None], np.float32(0), x), packed, bias, gelu=gelu, residual=residual, out=out)
        out[bad] = np.nan
        return out
    residual = res
    if FAST:
        _gemm(x, packed.panels, packed.scale, packed.colsum, packed.n, bias, residual, out, mode,
              chunk_rows(x.shape[0]))
        return out
    u, s, z = quantize_rows(x)
    acc = u.astype(np.float64) @ unpack_weight(packed).astype(np.float64).T  # exact: integers below 2^53
    y = (acc - z[:, None] * packed.colsum) * (s[:, None] * packed.scale)
    return epilogue(y.astype(np.float32), bias, residual, out, mode)
