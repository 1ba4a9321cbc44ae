"""Multi-head self-attention core: softmax(q k^T / sqrt(d)) v for every crop and head (spec 1.3)."""

import math

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import gemm
from .gemm_bf16 import _BFloat
from ._jit import jit, pjit
from .layernorm import _check, _vec

_ROWS = 4  # query rows per block: each loaded key/value vector feeds 4 accumulators

# exp(r) on |r| <= ln2/2 as a degree-6 polynomial, a relative minimax fit in float64 (max error 1.9e-9,
# tools/fit_exp.py)
_EXP_P = (1.000000000554021, 1.0000000363128017, 0.4999999208076153, 0.16666420216136785,
          0.04166822562897111, 0.008374811957924309, 0.0013836828073136357)
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125  # ln 2 split so k * _LN2_HI is exact in float32 for |k| <= 126 (Cody-Waite)
_LN2_LO = 1.4286068203094172e-06
_EXP_FLOOR = -87.0  # exp below this is under the smallest normal float32; next to the row max's 1 it is nothing


@jit
def _dots(a, a0, rows, b, out):
    # out[x, j] = sum_l a[a0 + x, l] * b[j, l] for x < rows: 4 x 4 tiles of dot products over the contiguous
    # axis l, sixteen scalar accumulators that LLVM turns into vector reductions kept in registers
    nb, length = b.shape
    j = 0
    if rows == 4:
        while j + 4 <= nb:
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0.0)
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = np.float32(0.0)
            for l in range(length):
                x0, x1, x2, x3 = a[a0, l], a[a0 + 1, l], a[a0 + 2, l], a[a0 + 3, l]
                y0, y1, y2, y3 = b[j, l], b[j + 1, l], b[j + 2, l], b[j + 3, l]
                s00 += x0 * y0
                s01 += x0 * y1
                s02 += x0 * y2
                s03 += x0 * y3
                s10 += x1 * y0
                s11 += x1 * y1
                s12 += x1 * y2
                s13 += x1 * y3
                s20 += x2 * y0
                s21 += x2 * y1
                s22 += x2 * y2
                s23 += x2 * y3
                s30 += x3 * y0
                s31 += x3 * y1
                s32 += x3 * y2
                s33 += x3 * y3
            out[0, j], out[0, j + 1], out[0, j + 2], out[0, j + 3] = s00, s01, s02, s03
            out[1, j], out[1, j + 1], out[1, j + 2], out[1, j + 3] = s10, s11, s12, s13
            out[2, j], out[2, j + 1], out[2, j + 2], out[2, j + 3] = s20, s21, s22, s23
            out[3, j], out[3, j + 1], out[3, j + 2], out[3, j + 3] = s30, s31, s32, s33
            j += 4
    for x in range(rows):  # leftovers: the last few columns, or a block of fewer than 4 rows
        for jj in range(j, nb):
            s = np.float32(0.0)
            for l in range(length):
                s += a[a0 + x, l] * b[jj, l]
            out[x, jj] = s


@jit
def _row_max(s):
    # eight running maxima: one chained max per element costs a full max latency each
    n = s.size
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = s[0]
    j = 0
    while j + 8 <= n:
        m0, m1, m2, m3 = max(m0, s[j]), max(m1, s[j + 1]), max(m2, s[j + 2]), max(m3, s[j + 3])
        m4, m5, m6, m7 = max(m4, s[j + 4]), max(m5, s[j + 5]), max(m6, s[j + 6]), max(m7, s[j + 7])
        j += 8
    m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    for jj in range(j, n):
        m = max(m, s[jj])
    return m


@jit
def _softmax_numerator(s, bits):
    # s = exp(s - max(s)) in place, returns the sum. exp(x) = 2^k * P(x - k ln2) so the loop vectorises
    # (np.exp is a scalar libm call per element); 2^k is written as float32 bits into the int32 scratch `bits`
    # and read back through a float32 view, which LLVM folds into a register bitcast
    m = _row_max(s)
    c = _EXP_P
    pow2 = bits.view(np.float32)
    total = np.float32(0.0)
    for j in range(s.size):
        x = s[j] - m
        x = x if not x < _EXP_FLOOR else np.float32(_EXP_FLOOR)  # NaN passes through
        k = np.int32(x * np.float32(_LOG2E) - np.float32(0.5))  # x <= 0: truncation rounds to nearest
        kf = np.float32(k)
        r = (x - kf * np.float32(_LN2_HI)) - kf * np.float32(_LN2_LO)
        p = np.float32(c[6])
        p = p * r + np.float32(c[5])
        p = p * r + np.float32(c[4])
        p = p * r + np.float32(c[3])
        p = p * r + np.float32(c[2])
        p = p * r + np.float32(c[1])
        p = p * r + np.float32(c[0])
        bits[j] = (k + 127) << 23
        e = p * pow2[j]
        s[j] = e
        total += e
    return total


@pjit
def _attention(qkv, bias, n, heads, out):
    rows, c3 = qkv.shape
    c = c3 // 3
    hd = c // heads
    scale = np.float32(1.0 / math.sqrt(hd))
    for task in prange((rows // n) * heads):
        r0 = (task // heads) * n
        q0 = (task % heads) * hd  # spec 1.3: qkv rows are Q, K, V blocks, head-major inside each
        # one packing per (crop, head): contiguous q and k rows, v transposed so both products are row dots
        q = np.empty((n, hd), np.float32)
        k = np.empty((n, hd), np.float32)
        vt = np.empty((hd, n), np.float32)
        for j in range(n):
            for d in range(hd):
                # the qkv Linear's bias is added here, in the one pass that reads q, k and v anyway;
                # the official code scales q before q k^T
                q[j, d] = (qkv[r0 + j, q0 + d] + bias[q0 + d]) * scale
                k[j, d] = qkv[r0 + j, c + q0 + d] + bias[c + q0 + d]
                vt[d, j] = qkv[r0 + j, 2 * c + q0 + d] + bias[2 * c + q0 + d]
        s = np.empty((_ROWS, n), np.float32)
        o = np.empty((_ROWS, hd), np.float32)
        inv = np.empty(_ROWS, np.float32)
        bits = np.empty(n, np.int32)
        for i0 in range(0, n, _ROWS):
            m = min(_ROWS, n - i0)
            _dots(q, i0, m, k, s)  # (m, n) scores
            for x in range(m):
                inv[x] = np.float32(1.0) / _softmax_numerator(s[x], bits)
            _dots(s, 0, m, vt, o)  # (m, hd) unnormalised outputs
            for x in range(m):
                for d in range(hd):
                    out[r0 + i0 + x, q0 + d] = o[x, d] * inv[x]


# Where the CPU has vector micro-kernels (kernels/gemm.py), both products run on their IR tiles: scores on the
# GEMM's MR x NR tile (k = head dim), outputs on an (MR rows, NV vectors) tile picked per head dim (k = tokens),
# and the softmax on explicit vectors (Intel targets tune auto-vectorised loops to 256 bits). Each product
# loops panel-outer, so a panel (keys: head dim x NR; values: tokens x tile width) is read from L1 by all of
# a block's tiles. Output tiles (tools/attention_table.py --tiles, one thread, interleaved): on AVX-512 12x32 for
# head dim 32 (S), 6x64 for 64 (B, L; 1.05-1.1x two panels of 12x32 or 8x32) and 4x80 for 80 (H; 1.3x 8x32 or
# 12x32 over three padded panels, on par with 5x80), 24 zmm accumulators or 20; AVX2 has 16 ymm, so the GEMM's
# 6x16 over 2, 4 or 5 panels; NEON 6x16 (24 of its 32 q registers accumulate)
OUT_TILES = {"avx512": ((12, 2), (6, 4), (4, 5)), "avx2": ((6, 2),), "neon": ((6, 4),)}
MR, NR, W = gemm.MR, gemm.NR, gemm.W
_scores_tile = gemm._tile
_OUT = OUT_TILES.get(gemm.ISA, ((1, 1),))
_out0, _out1, _out2 = (tuple(gemm._micro_kernel(mr, nv, W) for mr, nv in _OUT) * 3)[:3] if gemm.OWN else (None,) * 3
ROWS = 24  # query rows per block, a multiple of every tile's rows: its scores (24 x 192) stay in L1


def out_tile(hd, tiles=None, width=None):
    """Index into OUT_TILES[ISA] of the output tile for head dim hd: the least padding, then the widest."""
    tiles, width = tiles or _OUT, width or W
    return min(range(len(tiles)), key=lambda i: (-(-hd // (tiles[i][1] * width)) * tiles[i][1], -tiles[i][1]))


def _softmax_kernel(width, bf16=False):
    """An intrinsic softmax_rows(s, rows, stride, n, inv) on <width x float> vectors, for rows x n scores at
    s[x * stride:] (stride a multiple of width, at least n): each row becomes exp(s - max(row)) in place (the
    method of _softmax_numerator) and inv[x] = 1 / its sum. Whole vectors are read and written up to
    ceil(n / width) * width per row; the lanes past n are left out of the max and the sum, their values unused.
    All rows' maxima come first, then all rows' exponentials: a row alone is a chain of dependent steps, and
    rows side by side let the core overlap them.
    bf16=True (kernels/attention_bf16.py; AVX512-BF16 only, width 16): softmax_rows(s, rows, stride, n, inv, p,
    pstride) leaves s as it is and writes the exponentials' bf16 bits (round to nearest even, NaN quiet) to the
    uint16 p[x * pstride:], ceil(n / width) * width per row, zeros past n."""

    def codegen(context, builder, signature, args):
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        vec, ivec = ir.VectorType(f32, width), ir.VectorType(i32, width)
        rows, stride, n = (context.cast(builder, args[i], signature.args[i], types.int64) for i in (1, 2, 3))
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        invs = context.make_array(signature.args[4])(context, builder, args[4]).data
        if bf16:  # vcvtneps2bf16, vcvtne2ps2bf16 (AVX512-BF16): round to nearest even, NaN quiet, subnormals to 0
            pdata = context.make_array(signature.args[5])(context, builder, args[5]).data
            pstride = context.cast(builder, args[6], signature.args[6], types.int64)
            bf = _BFloat()
            convert = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VectorType(bf, width), [vec]),
                                                     f"llvm.x86.avx512bf16.cvtneps2bf16.{32 * width}")
            convert2 = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
                ir.VectorType(bf, 2 * width), [vec, vec]), f"llvm.x86.avx512bf16.cvtne2ps2bf16.{32 * width}")
        undef = ir.Constant(vec, ir.Undefined)

        def splat(x, t=vec):
            one = builder.insert_element(ir.Constant(t, ir.Undefined), x, ir.Constant(i32, 0))
            return builder.shuffle_vector(one, ir.Constant(t, ir.Undefined), ir.Constant(ivec, None))

        def const(x):
            return ir.Constant(vec, [float(x)] * width)

        def at(row, v):  # vector v of a row
            return builder.bitcast(builder.gep(data, [builder.add(builder.mul(row, stride), builder.mul(
                v, ir.Constant(i64, width)))]), vec.as_pointer())

        def fold(x, pick):  # log2(width) halvings down to lane 0
            step = width // 2
            while step:
                moved = builder.shuffle_vector(x, undef, ir.Constant(ivec, [(i + step) % width for i in range(width)]))
                x = pick(x, moved)
                step //= 2
            return builder.extract_element(x, ir.Constant(i32, 0))

        def bigger(a, b):  # b where b > a: NaN never wins (its own exp is NaN and makes the sum NaN)
            return builder.select(builder.fcmp_ordered(">", b, a), b, a)

        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                             f"llvm.fmuladd.v{width}f32")
        full = builder.sdiv(n, ir.Constant(i64, width))
        partial = builder.icmp_signed(">", builder.srem(n, ir.Constant(i64, width)), ir.Constant(i64, 0))
        left = builder.trunc(builder.srem(n, ir.Constant(i64, width)), i32)
        tail = builder.icmp_signed("<", ir.Constant(ivec, list(range(width))), splat(left, ivec))  # lanes < n
        chains = 4  # running maxima and sums per row
        accs = [cgutils.alloca_once(builder, vec) for _ in range(chains)]
        by_chains = builder.mul(builder.sdiv(full, ir.Constant(i64, chains)), ir.Constant(i64, chains))

        def over_row(start, step, emit=None):
            # accs[c] = step(accs[c], vector) over the row's vectors; emit(values, v) takes the steps' vectors
            # from vector v on, two at a time in the 4-chain loop
            for acc in accs:
                builder.store(start, acc)
            with cgutils.for_range_slice(builder, ir.Constant(i64, 0), by_chains, ir.Constant(i64, chains)) as (v, _):
                done = []
                for c, acc in enumerate(accs):
                    value, out = step(builder.load(acc), builder.add(v, ir.Constant(i64, c)), False)
                    builder.store(value, acc)
                    done.append(out)
                if emit:
                    for c in range(0, chains, 2):
                        emit(done[c:c + 2], builder.add(v, ir.Constant(i64, c)))
            with cgutils.for_range_slice(builder, by_chains, full, ir.Constant(i64, 1)) as (v, _):
                value, out = step(builder.load(accs[0]), v, False)
                builder.store(value, accs[0])
                if emit:
                    emit([out], v)
            with builder.if_then(partial):
                value, out = step(builder.load(accs[0]), full, True)
                builder.store(value, accs[0])
                if emit:
                    emit([out], full)
            return [builder.load(acc) for acc in accs]

        def to_max(best, v, last):
            x = builder.load(at(row, v), align=4)
            return bigger(best, builder.select(tail, x, const(-np.inf)) if last else x), None

        with cgutils.for_range(builder, rows) as loop:
            row = loop.index
            m = over_row(const(-np.inf), to_max)
            m = fold(bigger(bigger(m[0], m[1]), bigger(m[2], m[3])), bigger)
            builder.store(m, builder.gep(invs, [row]))

        def to_sum(total, v, last):  # exp(s - m) for vector v, stored in place (bf16: returned), added to the total
            ptr = at(row, v)
            x = builder.fsub(builder.load(ptr, align=4), m)
            below = builder.fcmp_ordered("<", x, const(_EXP_FLOOR))
            x = builder.select(below, const(_EXP_FLOOR), x)  # NaN passes through
            # k from a NaN-free copy: fptosi of NaN is poison to LLVM
            kx = builder.select(builder.fcmp_ordered(">=", x, const(_EXP_FLOOR)), x, const(_EXP_FLOOR))
            k = builder.fptosi(builder.call(fma, [kx, const(_LOG2E), const(-0.5)]), ivec)  # x <= 0: rounds
            kf = builder.sitofp(k, vec)
            r = builder.call(fma, [kf, const(-_LN2_HI), x])
            r = builder.call(fma, [kf, const(-_LN2_LO), r])
            p = const(_EXP_P[6])
            for c in _EXP_P[5::-1]:
                p = builder.call(fma, [p, r, const(c)])
            scale = builder.bitcast(builder.shl(builder.add(k, ir.Constant(ivec, [127] * width)),
                                                ir.Constant(ivec, [23] * width)), vec)
            e = builder.fmul(p, scale)
            if not bf16:
                builder.store(e, ptr, align=4)
            e = builder.select(tail, e, const(0.0)) if last else e
            return builder.fadd(total, e), e

        def to_bf16(values, v):  # one or two vectors of exponentials -> bf16 at p[row * pstride + v * width]
            # e is never subnormal (exp(_EXP_FLOOR) is a normal float32): vcvtne(2)ps2bf16 flush nothing
            if len(values) == 2:
                bits = builder.call(convert2, values[::-1])  # the second operand fills the low half
            else:
                bits = builder.call(convert, values)
            at16 = builder.gep(pdata, [builder.add(builder.mul(row, pstride), builder.mul(v, ir.Constant(i64, width)))])
            hvec = ir.VectorType(ir.IntType(16), width * len(values))
            builder.store(builder.bitcast(bits, hvec), builder.bitcast(at16, hvec.as_pointer()), align=2)

        with cgutils.for_range(builder, rows) as loop:
            row = loop.index
            slot = builder.gep(invs, [row])
            m = splat(builder.load(slot))
            t = over_row(const(0.0), to_sum, to_bf16 if bf16 else None)
            total = fold(builder.fadd(builder.fadd(t[0], t[1]), builder.fadd(t[2], t[3])), builder.fadd)
            builder.store(builder.fdiv(ir.Constant(f32, 1.0), total), slot)
        return context.get_dummy_value()

    if bf16:
        @intrinsic
        def softmax_rows(typingctx, s, rows, stride, n, inv, p, pstride):
            return types.void(s, rows, stride, n, inv, p, pstride), codegen
    else:
        @intrinsic
        def softmax_rows(typingctx, s, rows, stride, n, inv):
            return types.void(s, rows, stride, n, inv), codegen

    return softmax_rows


_softmax_rows = _softmax_kernel(W) if gemm.OWN else None


@jit
def _scratch(size):
    # float32 scratch starting on a 64-byte line: vector loads from it never straddle two lines
    raw = np.empty(size + 16, np.float32)
    start = (64 - raw.ctypes.data % 64) % 64 // 4
    return raw[start:start + size]


def _transpose_kernel(width):
    """An intrinsic transpose(src, s0, srs, bias, b0, dst, d0, drs) for C-contiguous float32 arrays, indexing
    their flat data: dst[d0 + j * drs + i] = src[s0 + i * srs + j] + bias[b0 + j] for i, j < width, the block
    held in width vectors and transposed by log2(width) rounds of two-vector shuffles."""

    @intrinsic
    def transpose(typingctx, src, s0, srs, bias, b0, dst, d0, drs):
        sig = types.void(src, s0, srs, bias, b0, dst, d0, drs)

        def codegen(context, builder, signature, args):
            i32, i64 = ir.IntType(32), ir.IntType(64)
            vec = ir.VectorType(ir.FloatType(), width)
            s0, srs, b0, d0, drs = (context.cast(builder, args[i], signature.args[i], types.int64) for i in (1, 2, 4, 6, 7))

            def vector_at(i, at):
                data = context.make_array(signature.args[i])(context, builder, args[i]).data
                return builder.bitcast(builder.gep(data, [at]), vec.as_pointer())

            b = builder.load(vector_at(3, b0), align=4)
            rows = [builder.fadd(builder.load(vector_at(0, builder.add(s0, builder.mul(srs, ir.Constant(i64, i)))),
                                              align=4), b) for i in range(width)]
            block = width // 2
            while block:  # swap the off-diagonal block x block blocks of every 2 block x 2 block block
                for i in range(width):
                    if i // block % 2 == 0:
                        upper = [c if c // block % 2 == 0 else width + c - block for c in range(width)]
                        lower = [c + block if c // block % 2 == 0 else width + c for c in range(width)]
                        a, z = rows[i], rows[i + block]
                        rows[i] = builder.shuffle_vector(a, z, ir.Constant(ir.VectorType(i32, width), upper))
                        rows[i + block] = builder.shuffle_vector(a, z, ir.Constant(ir.VectorType(i32, width), lower))
                block //= 2
            for j, row in enumerate(rows):
                builder.store(row, vector_at(5, builder.add(d0, builder.mul(drs, ir.Constant(i64, j)))), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return transpose


_transpose = _transpose_kernel(W) if gemm.OWN else None


@jit
def _pack_keys(qkv, bias, r0, q0, n, hd, kp):
    # one (crop, head)'s keys with the qkv bias added, as (hd, NR) panels (also kernels/attention_bf16.py)
    c = qkv.shape[1] // 3
    kpanels = (n + NR - 1) // NR
    nw, dw = n - n % W, hd - hd % W  # keys and head columns in whole W x W blocks
    for j0 in range(0, nw, W):  # keys: W x W blocks transposed in registers
        p = j0 // NR
        for d0 in range(0, dw, W):
            _transpose(qkv, (r0 + j0) * 3 * c + c + q0 + d0, 3 * c, bias, c + q0 + d0, kp,
                       (p * hd + d0) * NR + j0 - p * NR, NR)
    for j in range(n):  # the rest one by one, and zeros for the missing keys of the last panel
        p = j // NR
        dst = kp[p * hd * NR + j - p * NR:]
        for d in range(0 if j >= nw else dw, hd):
            dst[d * NR] = qkv[r0 + j, c + q0 + d] + bias[c + q0 + d]
    for j in range(n, kpanels * NR):  # the missing keys of the last panel: scores computed, never read
        dst = kp[(kpanels - 1) * hd * NR + j - (kpanels - 1) * NR:]
        for d in range(hd):
            dst[d * NR] = 0.0


@jit
def _pack_head(qkv, bias, r0, q0, n, hd, scale, q, kp, vp, nro):
    # one (crop, head)'s q, k and v with the qkv bias added (the official code scales q before q k^T): q
    # row-major (the broadcast side), keys as (hd, NR) panels, values as (n, nro) panels
    c = qkv.shape[1] // 3
    bq, bv = bias[q0:q0 + hd], bias[2 * c + q0:2 * c + q0 + hd]
    for j in range(n):
        src, dst = qkv[r0 + j, q0:q0 + hd], q[j * hd:(j + 1) * hd]
        for d in range(hd):
            dst[d] = (src[d] + bq[d]) * scale
    _pack_keys(qkv, bias, r0, q0, n, hd, kp)
    for p in range((hd + nro - 1) // nro):
        d0 = p * nro
        w = min(nro, hd - d0)
        for j in range(n):
            src, dst = qkv[r0 + j, 2 * c + q0 + d0:2 * c + q0 + d0 + w], vp[(p * n + j) * nro:(p * n + j + 1) * nro]
            for d in range(w):
                dst[d] = src[d] + bv[d0 + d]
            for d in range(w, nro):  # the missing head columns of the last panel: computed, never written out
                dst[d] = 0.0


@pjit
def _attention_tiled(qkv, bias, n, heads, which, out):
    rows, c3 = qkv.shape
    hd = c3 // 3 // heads
    scale = np.float32(1.0 / math.sqrt(hd))
    mro = _OUT[which][0]
    nro = _OUT[which][1] * W
    kpanels = (n + NR - 1) // NR
    nk = kpanels * NR  # keys padded to whole panels: their scores are computed and never read
    vpanels = (hd + nro - 1) // nro
    nd = vpanels * nro
    for task in prange((rows // n) * heads):
        r0 = (task // heads) * n
        q0 = (task % heads) * hd  # spec 1.3: qkv rows are Q, K, V blocks, head-major inside each
        q = np.empty(n * hd, np.float32)
        kp = _scratch(kpanels * hd * NR)
        vp = _scratch(vpanels * n * nro)
        _pack_head(qkv, bias, r0, q0, n, hd, scale, q, kp, vp, nro)
        # a tile stores all its rows, those past the block's too: room for one more tile's rows
        s = _scratch((ROWS + MR) * nk)
        o = _scratch((ROWS + mro) * nd)
        inv = np.empty(ROWS, np.float32)
        for i0 in range(0, n, ROWS):
            m = min(ROWS, n - i0)
            s[:(m + MR - 1) // MR * MR * nk] = 0.0  # every row a tile touches: no stale denormals in its FMAs
            for p in range(kpanels):  # (m, nk) scores; panel-outer, so each panel is read from L1 by every tile
                for x0 in range(0, m, MR):
                    _scores_tile(q, (i0 + x0) * hd, min(MR, m - x0), hd, 1, hd, kp, p * hd * NR, s, x0 * nk + p * NR, nk)
            _softmax_rows(s, m, nk, n, inv)
            o[:(m + mro - 1) // mro * mro * nd] = 0.0
            for p in range(vpanels):  # (m, nd) unnormalised outputs, panel-outer too
                for x0 in range(0, m, mro):
                    r = min(mro, m - x0)
                    if which == 0:
                        _out0(s, x0 * nk, r, nk, 1, n, vp, p * n * nro, o, x0 * nd + p * nro, nd)
                    elif which == 1:
                        _out1(s, x0 * nk, r, nk, 1, n, vp, p * n * nro, o, x0 * nd + p * nro, nd)
                    else:
                        _out2(s, x0 * nk, r, nk, 1, n, vp, p * n * nro, o, x0 * nd + p * nro, nd)
            for x in range(m):
                dst, src, f = out[r0 + i0 + x, q0:q0 + hd], o[x * nd:x * nd + hd], inv[x]
                for d in range(hd):
                    dst[d] = src[d] * f


def check_call(qkv, tokens, heads, bias, out):
    """The contract's argument checks, shared with kernels/attention_bf16.py; returns (bias, out)."""
    _check(qkv, 2)
    rows, c3 = qkv.shape
    if c3 % 3 or (c3 // 3) % heads or rows % tokens:
        raise ValueError(f"qkv {qkv.shape} does not split into {heads} heads over {tokens} tokens")
    bias = np.zeros(c3, np.float32) if bias is None else _vec(bias, c3)
    if out is None:
        out = np.empty((rows, c3 // 3), np.float32)
    elif out.shape != (rows, c3 // 3) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 of shape {(rows, c3 // 3)}")
    return bias, out


def attention(qkv, tokens, heads, bias=None, out=None):
    """qkv (B*N, 3C) float32 as the qkv matrix product writes it, plus its bias (3C,) if given
    -> (B*N, C), heads concatenated in order."""
    bias, out = check_call(qkv, tokens, heads, bias, out)
    c3 = qkv.shape[1]
    if gemm.OWN:
        _attention_tiled(qkv, bias, tokens, heads, out_tile(c3 // 3 // heads), out)
    else:
        _attention(qkv, bias, tokens, heads, out)
    return out
