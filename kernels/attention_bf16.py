"""The attention core in bf16 for the reduced-precision models: both products on `vdpbf16ps` (AVX512-BF16).

The contract of kernels/attention.py (`attention(qkv, tokens, heads, bias, out)`), with the two products'
inputs rounded to bf16 (round to nearest even, as kernels/gemm_bf16.py rounds): the scaled queries and the keys
before the scores q k^T, the softmax's probabilities and the values before p v. Every product is exact in fp32
and summed in fp32; the qkv bias, the scale, the softmax (kernels/attention.py's vector kernel) and the final
normalisation by 1 / sum stay fp32, so the only error is the four roundings.

Per (crop, head) task, the operands are rounded into int32 lanes holding bf16 pairs along each product's K axis
(an odd K padded with a zero): q (biased, scaled) row-major, straight from qkv; keys through the fp32 kernel's
(head dim, 48) panels (_pack_keys: register transposes), two rows to a lane row; values in (tokens / 2, width)
panels, two token rows to a lane row, straight from qkv. Scores come from an 8 x 48 register tile (gemm_bf16's
shape), over all of K in one pass; the fp32 softmax writes the unnormalised probabilities as bf16
(`vcvtneps2bf16`: round to nearest even, and none of them is subnormal); outputs come from the fp32 kernel's tile
shapes (OUT_TILES['avx512']: 12 x 32, 6 x 64, 4 x 80), multiplied by 1 / sum as they leave the registers.
Each task asks for the next one's q, k and v rows in L2 while it computes (in a forward qkv is cold).
Measured (tools/attention_table.py --bf16, Zen 4, ViT-S/B shapes, batch 1 and 16): 0.55-0.69x the fp32 core's
time on 2 threads, 0.53-0.62x on one.

`FAST` says whether this CPU (and Numba's target) has AVX512-BF16; nothing here is compiled otherwise, and the
models keep the fp32 attention there (npvitpose/model.py).
"""

import math

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from . import amx, attention as fp32, gemm, gemm_bf16
from ._jit import jit, pjit

FAST = gemm.ISA == "avx512" and gemm_bf16.cpu_has("avx512bf16")
INSTRUCTION = "vdpbf16ps"

_i32, _i64 = ir.IntType(32), ir.IntType(64)
_v16f, _v16i, _v16b = ir.VectorType(ir.FloatType(), 16), ir.VectorType(_i32, 16), ir.VectorType(ir.IntType(1), 16)
_v32bf = ir.VectorType(gemm_bf16._BFloat(), 32)
MR, NR = gemm_bf16.MR, gemm_bf16.NR  # the scores tile: 8 query rows x 48 keys
_OUT = fp32.OUT_TILES["avx512"]  # the output tiles: (rows, 16-float vectors) per head dim
ROWS = fp32.ROWS  # query rows per block, a multiple of every tile's rows


def _tile_kernel(mr, nv, scaled=False):
    """An intrinsic tile(a, a0, rows, rs, b, b0, steps, out, c0, crs) on int32 lanes of bf16 pairs, indexing flat
    data: out[c0 + i * crs + j] = sum over k < steps of a[a0 + i * rs + k] . b[b0 + k * nr + j] (a lane's two
    products), for i < mr, j < nr = 16 nv, stored in float32. Rows i >= rows repeat row rows - 1 (they read
    nothing beyond a's rows) and are stored too: the caller leaves room and never reads them.
    scaled=True: tile(a, a0, rows, rs, b, b0, steps, out, c0, crs, inv, i0, cols) stores sum * inv[i0 + i] for
    i < rows and j < cols only (the attention's outputs, normalised as they leave the registers)."""
    nr = 16 * nv

    def codegen(context, builder, signature, args):
        ty = signature.args
        a0, rows, rs, b0, steps, c0, crs = (context.cast(builder, args[i], ty[i], types.int64)
                                            for i in (1, 2, 3, 5, 6, 8, 9))
        dot = amx._declare_typed(builder.module, "llvm.x86.avx512bf16.dpbf16ps.512", _v16f, [_v16f, _v32bf, _v32bf])
        last = builder.sub(rows, ir.Constant(_i64, 1))
        arows = []
        for i in range(mr):
            r = builder.select(builder.icmp_signed("<", ir.Constant(_i64, i), rows), ir.Constant(_i64, i), last)
            arows.append(builder.gep(amx._data(context, builder, ty[0], args[0]), [builder.add(a0, builder.mul(r, rs))]))
        bptr = builder.gep(amx._data(context, builder, ty[4], args[4]), [b0])
        finals = gemm_bf16.dot_loop(builder, arows, bptr, steps, dot, _v16f, _v32bf, "bf16tile", nr)
        cptr = builder.gep(amx._data(context, builder, ty[7], args[7]), [c0])
        if not scaled:
            for i in range(mr):
                for v in range(nv):
                    at = builder.add(builder.mul(ir.Constant(_i64, i), crs), ir.Constant(_i64, 16 * v))
                    builder.store(finals[i * nv + v], amx._vector_at(builder, cptr, at, _v16f), align=4)
            return context.get_dummy_value()
        i0, cols = (context.cast(builder, args[i], ty[i], types.int64) for i in (11, 12))
        inv = builder.gep(amx._data(context, builder, ty[10], args[10]), [i0])
        mstore = amx._declare_typed(builder.module, "llvm.masked.store.v16f32.p0", ir.VoidType(),
                                    [_v16f, _v16f.as_pointer(), _i32, _v16b])
        lanes = ir.Constant(_v16i, list(range(16)))
        masks = [builder.icmp_signed("<", lanes, amx._splat(builder, builder.trunc(
            builder.sub(cols, ir.Constant(_i64, 16 * v)), _i32), _v16i)) for v in range(nv)]
        for i in range(mr):
            row, after = builder.append_basic_block(f"bf16tile.row{i}"), builder.append_basic_block(f"bf16tile.after{i}")
            builder.cbranch(builder.icmp_signed("<", ir.Constant(_i64, i), rows), row, after)
            builder.position_at_end(row)
            f = amx._splat(builder, builder.load(builder.gep(inv, [ir.Constant(_i64, i)])), _v16f)
            for v in range(nv):
                at = builder.add(builder.mul(ir.Constant(_i64, i), crs), ir.Constant(_i64, 16 * v))
                builder.call(mstore, [builder.fmul(finals[i * nv + v], f), amx._vector_at(builder, cptr, at, _v16f),
                                      ir.Constant(_i32, 4), masks[v]])
            builder.branch(after)
            builder.position_at_end(after)
        return context.get_dummy_value()

    if scaled:
        @intrinsic
        def tile(typingctx, a, a0, rows, rs, b, b0, steps, out, c0, crs, inv, i0, cols):
            return types.void(a, a0, rows, rs, b, b0, steps, out, c0, crs, inv, i0, cols), codegen
    else:
        @intrinsic
        def tile(typingctx, a, a0, rows, rs, b, b0, steps, out, c0, crs):
            return types.void(a, a0, rows, rs, b, b0, steps, out, c0, crs), codegen

    return tile


_scores_tile = _tile_kernel(MR, NR // 16)
_out0, _out1, _out2 = (_tile_kernel(mr, nv, scaled=True) for mr, nv in _OUT)
_softmax_rows = fp32._softmax_kernel(16, bf16=True)


def _round_kernel(pairs):
    """An intrinsic round16(src, lo, hi, bias, b0, scale, count, dst, d0) on flat float32 src and bias: for lanes
    i < count (at most 16), a = (src[lo + i] + bias[b0 + i]) * scale rounded to bf16 (nearest even, NaN quiet).
    pairs=False: dst (uint16) [d0 + i] = a's bits (hi unused). pairs=True: dst (int32) [d0 + i] = the lane
    (a, b), a in the low half, b the same of src[hi + i]; hi < 0: b = 0 (the padding of an odd K)."""

    @intrinsic
    def round16(typingctx, src, lo, hi, bias, b0, scale, count, dst, d0):
        sig = types.void(src, lo, hi, bias, b0, scale, count, dst, d0)

        def codegen(context, builder, signature, args):
            ty = signature.args
            lo, hi, b0, count, d0 = (context.cast(builder, args[i], ty[i], types.int64) for i in (1, 2, 4, 6, 8))
            scale = context.cast(builder, args[5], ty[5], types.float32)
            mask = builder.icmp_signed("<", ir.Constant(_v16i, list(range(16))),
                                       amx._splat(builder, builder.trunc(count, _i32), _v16i))
            mload = amx._declare_typed(builder.module, "llvm.masked.load.v16f32.p0", _v16f,
                                       [_v16f.as_pointer(), _i32, _v16b, _v16f])
            zero, align = ir.Constant(_v16f, None), ir.Constant(_i32, 4)
            src, bias = amx._data(context, builder, ty[0], args[0]), amx._data(context, builder, ty[3], args[3])
            b = builder.call(mload, [amx._vector_at(builder, bias, b0, _v16f), align, mask, zero])
            factor = amx._splat(builder, scale, _v16f)

            def rounded(at):
                x = builder.call(mload, [amx._vector_at(builder, src, at, _v16f), align, mask, zero])
                return amx.bf16_bits(builder, builder.bitcast(builder.fmul(builder.fadd(x, b), factor), _v16i))

            dst = amx._data(context, builder, ty[7], args[7])
            if pairs:
                missing = builder.icmp_signed("<", hi, ir.Constant(_i64, 0))
                high = rounded(builder.select(missing, lo, hi))
                high = builder.select(missing, ir.Constant(_v16i, None), builder.shl(high, ir.Constant(_v16i, [16] * 16)))
                value, vtype = builder.or_(rounded(lo), high), _v16i
            else:
                vtype = ir.VectorType(ir.IntType(16), 16)
                value = builder.trunc(rounded(lo), vtype)
            mstore = amx._declare_typed(builder.module, f"llvm.masked.store.v16i{vtype.element.width}.p0", ir.VoidType(),
                                        [vtype, vtype.as_pointer(), _i32, _v16b])
            builder.call(mstore, [value, amx._vector_at(builder, dst, d0, vtype), ir.Constant(_i32, 2), mask])
            return context.get_dummy_value()

        return sig, codegen

    return round16


_round_q, _round_pairs = _round_kernel(False), _round_kernel(True)


@jit
def _pack_head(qkv, bias, r0, q0, n, hd, scale, nro, kp, zeros, qb, kb, vb):
    # one (crop, head)'s q, k and v, the qkv bias added, as bf16 pairs: q scaled (the official code scales q
    # before q k^T) row-major; keys through the fp32 kernel's (hd, 48) panels, two rows to a lane row; values in
    # (tokens / 2, nro) panels, two token rows to a lane row
    c3 = qkv.shape[1]
    c = c3 // 3
    h2, n2 = (hd + 1) // 2, (n + 1) // 2
    q16 = qb.view(np.uint16)
    for j in range(n):
        for d0 in range(0, hd, 16):
            _round_q(qkv, (r0 + j) * c3 + q0 + d0, -1, bias, q0 + d0, scale, min(16, hd - d0), q16, j * 2 * h2 + d0)
    fp32._pack_keys(qkv, bias, r0, q0, n, hd, kp)
    for p in range((n + NR - 1) // NR):
        for d2 in range(h2):
            d = p * hd + 2 * d2
            for j0 in range(0, NR, 16):
                _round_pairs(kp, d * NR + j0, (d + 1) * NR + j0 if 2 * d2 + 1 < hd else -1, zeros, 0, 1.0, 16, kb,
                             (p * h2 + d2) * NR + j0)
    for p in range((hd + nro - 1) // nro):
        for j2 in range(n2):
            j = r0 + 2 * j2
            for d0 in range(p * nro, min(hd, (p + 1) * nro), 16):
                lo = j * c3 + 2 * c + q0 + d0
                _round_pairs(qkv, lo, lo + c3 if 2 * j2 + 1 < n else -1, bias, 2 * c + q0 + d0, 1.0, min(16, hd - d0),
                             vb, (p * n2 + j2) * nro + d0 - p * nro)


@jit
def _prefetch_head(qkv, r0, q0, n, hd):
    # the cache lines of one (crop, head)'s q, k and v rows, into L2: asked for one task ahead, they arrive while
    # the task before computes (in a forward, qkv was just written, much of it by the other core)
    c3 = qkv.shape[1]
    c = c3 // 3
    for j in range(n):
        for part in range(3):
            at = (r0 + j) * c3 + part * c + q0
            for d in range(0, hd + 15, 16):  # one element per 64-byte line, the last one too
                gemm._prefetch(qkv, at + min(d, hd - 1))


@pjit
def _attention(qkv, bias, n, heads, which, chunks, out):
    rows, c3 = qkv.shape
    hd = c3 // 3 // heads
    h2, n2 = (hd + 1) // 2, (n + 1) // 2  # lanes of a q row (K of the scores), of a p row (K of the outputs)
    ps = (n + 15) // 16 * 16  # bf16 per probability row (the softmax writes whole vectors): ps / 2 lanes
    scale = np.float32(1.0 / math.sqrt(hd))
    mro = _OUT[which][0]
    nro = _OUT[which][1] * 16
    kpanels = (n + NR - 1) // NR
    nk = kpanels * NR  # keys padded to whole panels: their scores are computed and never read
    vpanels = (hd + nro - 1) // nro
    c = c3 // 3
    tasks = (rows // n) * heads
    for chunk in prange(chunks):  # a thread's share of the (crop, head) tasks: its scratch allocated once
        kp = fp32._scratch(kpanels * hd * NR)
        qb = fp32._scratch(n * h2).view(np.int32)
        kb = fp32._scratch(kpanels * h2 * NR).view(np.int32)
        vb = fp32._scratch(vpanels * n2 * nro).view(np.int32)
        qb[:] = 0  # the padding of an odd head dim, never written
        vb[:] = 0  # the missing head columns of the last panel: computed, never written out
        zeros = np.zeros(16, np.float32)
        # a tile stores all its rows, those past the block's too: room for one more tile's rows
        s = fp32._scratch((ROWS + MR) * nk)
        pb = fp32._scratch(ROWS * ps // 2).view(np.int32)
        inv = np.empty(ROWS, np.float32)
        for task in range(chunk * tasks // chunks, (chunk + 1) * tasks // chunks):
            r0 = (task // heads) * n
            q0 = (task % heads) * hd  # spec 1.3: qkv rows are Q, K, V blocks, head-major inside each
            _pack_head(qkv, bias, r0, q0, n, hd, scale, nro, kp, zeros, qb, kb, vb)
            if task + 1 < (chunk + 1) * tasks // chunks:
                _prefetch_head(qkv, ((task + 1) // heads) * n, ((task + 1) % heads) * hd, n, hd)
            for i0 in range(0, n, ROWS):
                m = min(ROWS, n - i0)
                for p in range(kpanels):  # (m, nk) scores, panel-outer: each panel is read from L1 by every tile
                    for x0 in range(0, m, MR):
                        _scores_tile(qb, (i0 + x0) * h2, min(MR, m - x0), h2, kb, p * h2 * NR, h2, s, x0 * nk + p * NR,
                                     nk)
                _softmax_rows(s, m, nk, n, inv, pb.view(np.uint16), ps)  # bf16 probabilities, zeros past n
                for p in range(vpanels):  # (m, hd) outputs times 1 / sum, into out; panel-outer too
                    for x0 in range(0, m, mro):
                        r, a0, b0, c0 = min(mro, m - x0), x0 * ps // 2, p * n2 * nro, (r0 + i0 + x0) * c + q0 + p * nro
                        w = min(nro, hd - p * nro)
                        if which == 0:
                            _out0(pb, a0, r, ps // 2, vb, b0, n2, out, c0, c, inv, x0, w)
                        elif which == 1:
                            _out1(pb, a0, r, ps // 2, vb, b0, n2, out, c0, c, inv, x0, w)
                        else:
                            _out2(pb, a0, r, ps // 2, vb, b0, n2, out, c0, c, inv, x0, w)


def attention(qkv, tokens, heads, bias=None, out=None):
    """kernels/attention.attention with bf16 products: qkv (B*N, 3C) float32 (+ bias (3C,)) -> (B*N, C).
    Only where FAST (a CPU with AVX512-BF16)."""
    if not FAST:
        raise RuntimeError("the bf16 attention needs AVX512-BF16, which this CPU (or Numba's target) lacks")
    bias, out = fp32.check_call(qkv, tokens, heads, bias, out)
    tasks = qkv.shape[0] // tokens * heads
    _attention(qkv, bias, tokens, heads, fp32.out_tile(qkv.shape[1] // 3 // heads, _OUT, 16),
               min(tasks, numba.get_num_threads()), out)
    return out
