"""int8 linear layers: u8 x s8 products with int32 accumulation (AMX `tdpbusd` or `vpdpbusd`), fp32 out.

The contract of kernels/gemm.py (`pack_weight`, `linear`), with int8 weights and activations.
- pack_weight(w): per-output-channel scale sw[n] = max|w[n, :]| / 127, q = rint(w / sw) in [-127, 127],
  packed into int32 lanes holding 4 consecutive k (AMX tiles of 16 outputs, else 48-column panels);
  colsum[n] = sum_k q[n, k].
- linear(x, packed): per-row asymmetric activation scale: s = (max(x, 0) - min(x, 0)) / 255,
  zero point z = rint(-min / s), u = clip(rint(x / s) + z, 0, 255), so x ~ s * (u - z). Asymmetric
  (rather than u = q + 128) because post-GELU rows are one-sided: it doubles their resolution.
  acc = sum_k u * q exactly in int32 (|acc - z * colsum| <= 2 * 255 * 127 * K < 2^31: weights wider than
  33000 inputs are refused), then out = f32(acc - z * colsum[n]) * (f32(s) * f32(sw[n])) + bias in float32
  (kernels/amx.epilogue_int8 on the AMX blocks, the same arithmetic on the VNNI tiles' registers; the AMX
  path's last partial block and the fallback in double precision).
  AMX (kernels/amx.py, as in gemm_bf16: activations quantised in one parallel pass, 32 x 32 blocks)
  where the CPU has it, else AVX512-VNNI 8x48 register tiles, each task quantising its own rows.
Where the CPU (or Numba's target) lacks AVX512-VNNI, the same integers are multiplied by NumPy's
float64 BLAS, exact for these sizes: the same numbers, slower than fp32. `FAST` says which path runs.
"""

import math
import threading
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from . import amx, gemm
from .layernorm import _normalize, check_norm, layernorm
from ._jit import jit, pjit
from .gemm_bf16 import (BC, BR, MR, NR, _prefetch_block, amx_buffers, block_padded, check_call, chunk_rows, cpu_has,
                        dot_loop, epilogue, gelu_value, lanes_of)

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


def _padded(v, size):
    out = np.zeros(size, v.dtype)
    out[:len(v)] = v
    return out


def unpack_weight(packed):
    """The int8 weight (N, K) as stored (without its scale)."""
    return np.ascontiguousarray(lanes_of(packed)).view(np.int8)[:packed.n, :packed.k]


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
def _store(tile, stride, sz, out, res, bias, scale, colsum, r0, c0, rows, cols, mode):
    """The AMX blocks' last partial block: out = s * sw * (acc - z * colsum) + bias, then GELU (mode 1) or
    + residual (mode 2), in double precision; sz from row r0."""
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


# ---- AVX512-VNNI: x quantised row-major per task (vectors), 8 x 48 register tiles reading its rows in place,
# the dequantisation and epilogue applied in float32 on the accumulators before they leave the registers ----

_v16i, _v16f, _v64b = amx._v16i, amx._v16f, ir.VectorType(ir.IntType(8), 64)


def _vnni_tile(mode):
    """tile(a, a0, stride, rows, b, b0, steps, sz, s0, sw, cs, bias, res, out, o0, ostride): the 8 x 48 tile
    acc[i, j] = sum over lanes q < steps of a's u8 lane (a0 + i * stride + 4q) . b's s8 lane (b0 + 48q + j),
    rows i >= rows repeating row rows - 1; then out[o0 + i * ostride + j] = f32(acc - z * cs[j]) * (f32(s) *
    f32(sw[j])) + bias[j] (GELU | + res at the same index), (s, z) = sz[s0 + i], for i < rows and all 48 j
    (sw, cs, bias: that panel's 48 columns, padded)."""
    @intrinsic
    def tile(typingctx, a, a0, stride, rows, b, b0, steps, sz, s0, sw, cs, bias, res, out, o0, ostride):
        sig = types.void(a, a0, stride, rows, b, b0, steps, sz, s0, sw, cs, bias, res, out, o0, ostride)

        def codegen(context, builder, signature, args):
            i32, i64 = ir.IntType(32), ir.IntType(64)
            tys = signature.args

            def int_arg(i):
                return context.cast(builder, args[i], tys[i], types.int64)

            def data(i):
                return context.make_array(tys[i])(context, builder, args[i]).data

            a0_v, stride_v, rows_v, b0_v, steps_v, s0_v, o0_v, ostride_v = (int_arg(i) for i in (1, 2, 3, 5, 6, 8, 14, 15))
            a_p, b_p, sz_p, sw_p, cs_p, bias_p, res_p, out_p = (data(i) for i in (0, 4, 7, 9, 10, 11, 12, 13))
            last = builder.sub(rows_v, ir.Constant(i64, 1))
            arows = []
            for i in range(MR):
                r = builder.select(builder.icmp_signed("<", ir.Constant(i64, i), rows_v), ir.Constant(i64, i), last)
                row = builder.gep(a_p, [builder.add(a0_v, builder.mul(r, stride_v))])
                arows.append(builder.bitcast(row, i32.as_pointer()))
            bptr = builder.bitcast(builder.gep(b_p, [b0_v]), i32.as_pointer())
            dot = amx._declare_typed(builder.module, "llvm.x86.avx512.vpdpbusd.512", _v16i, [_v16i, _v64b, _v64b])
            finals = dot_loop(builder, arows, bptr, steps_v, dot, _v16i, _v64b, "vnni")
            sw8 = [builder.fptrunc(builder.load(amx._vector_at(builder, sw_p, ir.Constant(i64, 8 * j), amx._v8d), align=8),
                                   amx._v8f) for j in range(NR // 8)]
            sw_v = [amx._join(builder, sw8[2 * j], sw8[2 * j + 1]) for j in range(NR // 16)]
            cs_v = [builder.load(amx._vector_at(builder, cs_p, ir.Constant(i64, 16 * j), _v16i), align=4)
                    for j in range(NR // 16)]
            bias_v = [builder.load(amx._vector_at(builder, bias_p, ir.Constant(i64, 16 * j), _v16f), align=4)
                      for j in range(NR // 16)]
            ys = []
            for i in range(MR):
                ri = builder.select(builder.icmp_signed("<", ir.Constant(i64, i), rows_v), ir.Constant(i64, i), last)
                at = builder.mul(builder.add(s0_v, ri), ir.Constant(i64, 2))
                s = builder.fptrunc(builder.load(builder.gep(sz_p, [at])), amx._f32)
                z = builder.fptosi(builder.load(builder.gep(sz_p, [builder.add(at, ir.Constant(i64, 1))])), i32)
                s_v, z_v = amx._splat(builder, s, _v16f), amx._splat(builder, z, _v16i)
                for j in range(NR // 16):
                    # |acc - z * colsum| <= 2 * 255 * 127 * K: exact in int32 for K up to 33000
                    d = builder.sitofp(builder.sub(finals[i * (NR // 16) + j], builder.mul(z_v, cs_v[j])), _v16f)
                    ys.append(builder.fadd(builder.fmul(d, builder.fmul(s_v, sw_v[j])), bias_v[j]))
            for i in range(MR):
                with builder.if_then(builder.icmp_signed("<", ir.Constant(i64, i), rows_v), likely=True):
                    row = builder.add(o0_v, builder.mul(ir.Constant(i64, i), ostride_v))
                    for j in range(NR // 16):
                        o = builder.add(row, ir.Constant(i64, 16 * j))
                        y = ys[i * (NR // 16) + j]
                        if mode == amx.RESIDUAL:
                            y = builder.fadd(y, builder.load(amx._vector_at(builder, res_p, o, _v16f), align=4))
                        builder.store(y, amx._vector_at(builder, out_p, o, _v16f), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_vnni_bias, _vnni_residual = _vnni_tile(amx.BIAS), _vnni_tile(amx.RESIDUAL)  # GELU: amx.gelu_rows after the bias tile


@intrinsic
def _quantize64(typingctx, x, off, inv, zp, a, a_off):
    """a.flat[a_off:a_off + 64] = clip(rint(float64(x.flat[off + j]) * inv) + zp, 0, 255) as u8, j < 64: amx.quantize64's
    numbers with the rounding done by the conversion (vcvtpd2dq, nearest even as np.rint), zp added and the clip
    done on int32, and one 64-byte store (its eight narrowing stores and double-precision clip took twice as long)."""
    def codegen(context, builder, signature, args):
        tx, _, _, _, ta, _ = signature.args
        x_v, off_v, inv_v, zp_v, a_v, a_off_v = args
        i32, i64 = ir.IntType(32), ir.IntType(64)
        src = builder.gep(context.make_array(tx)(context, builder, x_v).data, [off_v])
        dst = builder.gep(context.make_array(ta)(context, builder, a_v).data, [a_off_v])
        v8d, v8f, v8i = amx._v8d, amx._v8f, amx._v8i
        cvt = amx._declare_typed(builder.module, "llvm.x86.avx512.mask.cvtpd2dq.512", v8i, [v8d, v8i, ir.IntType(8), i32])
        smax = amx._declare_typed(builder.module, "llvm.smax.v16i32", _v16i, [_v16i, _v16i])
        smin = amx._declare_typed(builder.module, "llvm.smin.v16i32", _v16i, [_v16i, _v16i])
        inv8 = amx._splat(builder, inv_v, v8d)
        zp16 = amx._splat(builder, builder.fptosi(zp_v, i32), _v16i)
        parts = []
        for v in range(8):
            f = builder.fpext(builder.load(amx._vector_at(builder, src, ir.Constant(i64, 8 * v), v8f), align=4), v8d)
            # rounding argument 4: the current mode (round to nearest even, as np.rint)
            parts.append(builder.call(cvt, [builder.fmul(f, inv8), ir.Constant(v8i, None), ir.Constant(ir.IntType(8), -1),
                                            ir.Constant(i32, 4)]))
        joined = [builder.shuffle_vector(parts[i], parts[i + 1], ir.Constant(ir.VectorType(i32, 16), list(range(16))))
                  for i in range(0, 8, 2)]
        lo, hi = ir.Constant(_v16i, [0] * 16), ir.Constant(_v16i, [255] * 16)
        v16b = ir.VectorType(ir.IntType(8), 16)
        bytes16 = [builder.trunc(builder.call(smin, [builder.call(smax, [builder.add(q, zp16), lo]), hi]), v16b)
                   for q in joined]
        halves = [builder.shuffle_vector(bytes16[i], bytes16[i + 1], ir.Constant(ir.VectorType(i32, 32), list(range(32))))
                  for i in (0, 2)]
        out = builder.shuffle_vector(halves[0], halves[1], ir.Constant(ir.VectorType(i32, 64), list(range(64))))
        builder.store(out, amx._vector_at(builder, dst, ir.Constant(i64, 0), _v64b), align=1)
        return context.get_dummy_value()

    return types.void(x, off, inv, zp, a, a_off), codegen


@jit
def _scale_zero(lo, hi):
    """A row's scale and zero point: its range [lo, hi] (both bound 0) mapped onto 0..255."""
    s = (hi - lo) / 255.0
    if not s > 0.0 or s == np.inf:  # an all-zero row
        s = 1.0
    return s, np.rint(-lo / s)


@jit
def _quantize_task(x, m0, rows, a, kp, sz, ends, bad, mark, gamma, beta, eps, fused, row):
    """Rows m0.. of x (where `fused`, their layer norm, made one at a time in `row`, (1, >= K)) -> a (row i at
    i * kp: u8, zero padded to kp), sz[i] = (scale, zero point); a row with NaN or inf is packed as zeros and,
    where `mark`, flagged in bad[m0 + i]. Whole 64-input runs through amx.row_range / _quantize64 (the same
    float64 arithmetic as quantize_rows), the tail as scalars."""
    k = x.shape[1]
    full = k // amx.DEPTH * amx.DEPTH
    flat, normed = x.reshape(-1), row.reshape(-1)
    for i in range(rows):
        r = m0 + i
        src, at = flat, r * k
        if fused:
            _normalize(x, gamma, beta, eps, row, r, 0)
            src, at = normed, 0
        row_bad = amx.row_range(src, at, full, ends)
        lo, hi = np.float64(ends[0]), np.float64(ends[1])
        for j in range(full, k):
            v = np.float64(src[at + j])
            if not np.isfinite(v):
                row_bad = 1
            lo, hi = min(lo, v), max(hi, v)
        if mark:
            bad[r] = row_bad
        if row_bad:
            sz[i, 0], sz[i, 1] = 1.0, 0.0
            a[i * kp:(i + 1) * kp] = 0
            continue
        s, zp = _scale_zero(lo, hi)
        sz[i, 0], sz[i, 1] = s, zp
        inv = 1.0 / s
        for t in range(full // amx.DEPTH):
            _quantize64(src, at + t * amx.DEPTH, inv, zp, a, i * kp + t * amx.DEPTH)
        for j in range(full, kp):  # the tail and K's padding
            a[i * kp + j] = np.uint8(min(max(np.rint(np.float64(src[at + j]) * inv) + zp, 0.0), 255.0)) if j < k else 0


@jit
def _tile_call(a, a0, kp, rows, flat, b0, kq, sz, s0, sw, cs, bias, res, out, o0, ostride, mode):
    if mode == amx.BIAS:
        _vnni_bias(a, a0, kp, rows, flat, b0, kq, sz, s0, sw, cs, bias, res, out, o0, ostride)
    elif mode == amx.GELU:
        _vnni_bias(a, a0, kp, rows, flat, b0, kq, sz, s0, sw, cs, bias, res, out, o0, ostride)
        amx.gelu_rows(out, o0, ostride, rows, NR)
    else:
        _vnni_residual(a, a0, kp, rows, flat, b0, kq, sz, s0, sw, cs, bias, res, out, o0, ostride)


@pjit
def _gemm(x, a, sz, ends, bad, panels, sw, cs, bias, res, out, mode, chunk, groups, edge, gamma, beta, eps, fused,
          normed):
    """Task = a chunk of rows (quantised by the task into a[task]: its A stays in L2) x a share of the column
    panels (each panel's B stays in L1 while the chunk's 8-row tiles pass it). Tiles past the last full
    column panel write into edge[task] (and read their residual from it), copied to out afterwards."""
    m, n = out.shape
    npan, kq = panels.shape[0], panels.shape[1]
    kp = 4 * kq
    flat = panels.reshape(-1)
    ores, oout = res.reshape(-1), out.reshape(-1)
    mchunks = (m + chunk - 1) // chunk
    for task in prange(mchunks * groups):
        m0 = (task % mchunks) * chunk
        rows = min(chunk, m - m0)
        g = task // mchunks
        at, st = a[task], sz[task]
        _quantize_task(x, m0, rows, at, kp, st, ends[task], bad, g == 0, gamma, beta, eps, fused, normed[task])
        for p in range(g * npan // groups, (g + 1) * npan // groups):
            c0 = p * NR
            cols = min(NR, n - c0)
            psw, pcs, pb = sw[c0:c0 + NR], cs[c0:c0 + NR], bias[c0:c0 + NR]
            for i0 in range(0, rows, MR):
                tr = min(MR, rows - i0)
                if cols == NR:
                    _tile_call(at, i0 * kp, kp, tr, flat, p * kq * NR, kq, st, i0, psw, pcs, pb, ores, oout,
                               (m0 + i0) * n + c0, n, mode)
                    continue
                e = edge[task]
                if mode == amx.RESIDUAL:
                    for i in range(tr):
                        e[i * NR:i * NR + cols] = res[m0 + i0 + i, c0:]
                _tile_call(at, i0 * kp, kp, tr, flat, p * kq * NR, kq, st, i0, psw, pcs, pb, e, e, 0, NR, mode)
                for i in range(tr):
                    out[m0 + i0 + i, c0:] = e[i * NR:i * NR + cols]


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
        s, zp = _scale_zero(lo_v, hi_v)
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


def linear(x, packed, bias=None, *, norm=None, gelu=False, residual=None, out=None):
    """out = dequant(quant(norm(x)) @ quant(w).T) + bias, then GELU or + residual; x (M, K) float32 -> (M, N).

    A weight packed by kernels/gemm.py (a layer an int8 model keeps in fp32) goes to its fp32 product.
    norm (gamma, beta, eps): the layer norm of x's rows, made by the AVX-512 tasks as they quantise them.
    """
    if not isinstance(packed, PackedInt8):
        return gemm.linear(x, packed, bias, norm=norm, gelu=gelu, residual=residual, out=out)
    bias, res, out, mode = check_call(x, packed.n, packed.k, bias, residual, out, gelu)
    gamma, beta, eps, fused = check_norm(norm, packed.k)
    m = x.shape[0]
    if m == 0:
        return out
    if fused and not (FAST and not packed.amx):  # the other paths normalise first
        x = layernorm(x, gamma, beta, eps, out=gemm._scratch(x.size, "rows").reshape(x.shape))
    if packed.amx:
        steps, a, mc, groups, scratch = amx_buffers(m, packed, np.int32)
        sz, bad = np.empty((m, 2), np.float64), np.empty(m, np.uint8)
        _pack_amx(x, a, steps, sz, bad)
        _gemm_amx(a, m, packed.panels, sz, block_padded(packed.scale), block_padded(packed.colsum), packed.n,
                  block_padded(bias), res, out, mode, mc, groups, _CFG, scratch)
        if bad.any():  # a row with NaN or inf has no scale: it gives NaN, as in fp32, and the others are untouched
            out[bad.view(np.bool_)] = np.nan
        return out
    if FAST:
        a, sz, ends, bad, edge, normed, chunk, groups = _buffers(m, packed)
        sw, cs = packed.scale, packed.colsum
        if packed.n % NR:  # the last panel's tiles read (and ignore) whole panels of the per-column values
            width = packed.panels.shape[0] * NR
            sw, cs, bias = _padded(sw, width), _padded(cs, width), _padded(bias, width)
        _gemm(x, a, sz, ends, bad, packed.panels, sw, cs, bias, res, out, mode, chunk, groups, edge, gamma, beta, eps,
              fused, normed)
        if bad.any():  # a row with NaN or inf has no scale: it gives NaN, as in fp32, and the others are untouched
            out[bad.view(np.bool_)] = np.nan
        return out
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():  # a row with NaN or inf has no scale: it gives NaN, as in fp32, and the others are untouched
        linear(np.where(bad[:, None], np.float32(0), x), packed, bias, gelu=gelu, residual=residual, out=out)
        out[bad] = np.nan
        return out
    u, s, z = quantize_rows(x)
    acc = u.astype(np.float64) @ unpack_weight(packed).astype(np.float64).T  # exact: integers below 2^53
    y = (acc - z[:, None] * packed.colsum) * (s[:, None] * packed.scale)
    return epilogue(y.astype(np.float32), bias, res, out, mode)


_local = threading.local()


def _buffers(m, packed):
    """(a, sz, ends, bad, edge, normed, rows per task, column groups) of one AVX-512 call on m rows (normed: a
    task's layer-norm row, (tasks, 1, kp) float32); the buffers are
    this thread's, reused by its later calls (nothing is allocated inside the parallel region), and the views of
    a shape are kept: working them out again cost ~8 us a call, as much as quantising a ViT-S layer's input."""
    threads = numba.get_num_threads()
    npan, kq = packed.panels.shape[0], packed.panels.shape[1]
    key = (m, npan, kq, threads)
    views = getattr(_local, "views", None)
    if views is not None and key in views:
        return views[key]
    chunk = chunk_rows(m)
    mchunks = -(-m // chunk)
    groups = max(1, min(npan, threads // math.gcd(mchunks, threads)))
    tasks, kp = mchunks * groups, 4 * kq
    sizes = (tasks * chunk * kp, tasks * chunk * 2, tasks * 16, m, tasks * MR * NR, tasks * kp)  # ends: a line a task
    bufs = getattr(_local, "bufs", None) or (None,) * len(sizes)
    if views is None or len(views) > 64 or any(b is None or b.size < s for b, s in zip(bufs, sizes)):
        views = _local.views = {}
    if any(b is None or b.size < s for b, s in zip(bufs, sizes)):  # grown, never shrunk: the layers share them
        bufs = _local.bufs = tuple(gemm.aligned((s if b is None else max(s, b.size),), t) for b, s, t in
                                   zip(bufs, sizes, (np.uint8, np.float64, np.float32, np.uint8, np.float32, np.float32)))
    a, sz, ends, bad, edge, normed = (b[:s] for b, s in zip(bufs, sizes))
    views[key] = (a.reshape(tasks, chunk * kp), sz.reshape(tasks, chunk, 2), ends.reshape(tasks, 16), bad,
                  edge.reshape(tasks, MR * NR), normed.reshape(tasks, 1, kp), chunk, groups)
    return views[key]
