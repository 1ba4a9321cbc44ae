"""Intel AMX tiles for the bf16 and int8 linear layers: 32 x 32 output blocks from `tdpbf16ps` / `tdpbusd`.

AMX (Sapphire Rapids and later) multiplies whole 16-row tiles held in 8 tile registers; where it exists it
is far faster than the AVX-512 dot instructions (on this project's Emerald Rapids, `vdpbf16ps` issues at
a fifth of the FMA rate). Linux hands the 8 KiB tile state to a process only on request
(arch_prctl ARCH_REQ_XCOMP_PERM): `AVAILABLE` is True only when the CPU, Numba's target and the kernel
all agree, and nothing here is compiled otherwise (compiling for a CPU without AMX aborts LLVM).

A block of RT x CT tiles (2 x 2: 4 accumulators, 2 A and 2 B tiles, one tile load per multiply) keeps its
accumulators in tile registers over the whole of K. Layouts:
- A and B: strips of 16 rows (A: 16 rows of x; B: 16 output columns), each (K / 64 bytes) tiles of
  16 x 64 bytes (32 bf16 or 64 u8 of K per tile row) one after the other (`pack_strips`), 64-byte
  aligned: every tile load reads 1 KiB in order, the A and B streams run sequentially through memory;
- C: RT*16 rows x CT*16 columns of fp32 / int32 into one of two scratch blocks (row stride CT * 64 bytes):
  the epilogue of one block runs, a few rows per K step, while the next block multiplies.
"""

import ctypes
import platform
import sys

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .gemm import aligned

TM = 16  # rows of a tile (and output columns of a B tile)
DEPTH = 64  # bytes of K per tile row
TILE = TM * DEPTH  # bytes of one tile
RT, CT = 2, 2  # the block: RT x CT accumulator tiles
_ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA, _SYS_ARCH_PRCTL = 0x1023, 18, 158

_i8, _i64 = ir.IntType(8), ir.IntType(64)
_p8 = _i8.as_pointer()


def _granted():
    """Ask Linux for the AMX tile state of this process (once; the grant covers every thread)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def available(cpu_has, dot_feature):
    return cpu_has("amx-tile") and cpu_has(dot_feature) and _granted()


def tile_config():
    """The 64-byte tile configuration: palette 1, all 8 tiles of 16 rows x 64 bytes."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    cfg[16:32].view(np.uint16)[:] = DEPTH
    cfg[48:56] = TM
    return cfg


def pack_strips(lanes, strips):
    """(N', K') int32 lanes of one output column per row (N' = strips * 16, K' a multiple of 16) -> B tiles:
    (strips, K'/16, 16, 16) int32, tile (s, t) row r = lanes t*16 + r of columns s*16 .. s*16 + 15."""
    kt = lanes.shape[1] // TM
    return np.ascontiguousarray(lanes.reshape(strips, TM, kt, TM).transpose(0, 2, 3, 1))


def _declare(module, name, args):
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, ir.FunctionType(ir.VoidType(), args), name)


def _pointer(context, builder, array_type, array, offset=None):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(data if offset is None else builder.gep(data, [offset]), _p8)


@intrinsic
def begin(typingctx, cfg):
    """Load the tile configuration on this thread (once per parallel task)."""
    def codegen(context, builder, signature, args):
        fn = _declare(builder.module, "llvm.x86.ldtilecfg", [_p8])
        builder.call(fn, [_pointer(context, builder, signature.args[0], args[0])])
        return context.get_dummy_value()

    return types.void(cfg), codegen


@intrinsic
def end(typingctx):
    """Release the tile state of this thread."""
    def codegen(context, builder, signature, args):
        builder.call(_declare(builder.module, "llvm.x86.tilerelease", []), [])
        return context.get_dummy_value()

    return types.void(), codegen


def block_intrinsic(dot, rt, ct, epilogue=None):
    """block(a, a_off, b, b_off, strip, steps, c[, prev]):
    C[rt*16, ct*16] = A[rt*16 rows, steps*64 bytes] . B[.., ct*16].

    A and B in strips of tiles (`pack_strips`; A's rows packed the same way per call): tile k of a strip
    at +k*TILE bytes, strips `strip` bytes apart; a_off, b_off: bytes (into uint8 arrays) of the first
    strips' first tiles. C tiles in tmm0.., then the A tiles, then the B tiles (rt * ct + rt + ct <= 8).
    With `epilogue` (an `epilogue_f32` / `epilogue_int8` mode's row emitter), `prev` is the tuple of that
    epilogue's arguments for the previous block, whose rows are finished a few per K step while the tiles
    multiply (they run on their own unit: done after the block, the epilogue cost as much as the products).
    """
    assert rt * ct + rt + ct <= 8

    def codegen(context, builder, signature, args):
        ta, _, tb, _, _, _, tc = signature.args[:7]
        a_v, a_off_v, b_v, b_off_v, strip_v, steps_v, c_v = args[:7]
        m = builder.module
        zero = _declare(m, "llvm.x86.tilezero", [_i8])
        load = _declare(m, "llvm.x86.tileloadd64", [_i8, _p8, _i64])
        mul = _declare(m, dot, [_i8, _i8, _i8])
        store = _declare(m, "llvm.x86.tilestored64", [_i8, _p8, _i64])
        t = [ir.Constant(_i8, i) for i in range(8)]
        tc_, ta_, tb_ = t[:rt * ct], t[rt * ct:rt * ct + rt], t[rt * ct + rt:rt * ct + rt + ct]
        a_ptr = _pointer(context, builder, ta, a_v, a_off_v)
        b_ptr = _pointer(context, builder, tb, b_v, b_off_v)
        a_rows = [builder.gep(a_ptr, [builder.mul(strip_v, ir.Constant(_i64, i))]) for i in range(rt)]
        b_cols = [builder.gep(b_ptr, [builder.mul(strip_v, ir.Constant(_i64, j))]) for j in range(ct)]
        if epilogue is not None:
            prev_t = signature.args[7]
            prev = [builder.extract_value(args[7], i) for i in range(len(prev_t))]
            body, rows = epilogue(context, builder, list(prev_t.types), prev)
            one = ir.Constant(_i64, 1)
            steps1 = builder.select(builder.icmp_signed(">", steps_v, one), steps_v, one)
            per = builder.sdiv(builder.add(rows, builder.sub(steps1, one)), steps1)  # rows a K step
        row = ir.Constant(_i64, DEPTH)
        for tile in tc_:
            builder.call(zero, [tile])
        entry = builder.block
        loop = builder.append_basic_block("amx.loop")
        done = builder.append_basic_block("amx.done")
        builder.cbranch(builder.icmp_signed(">", steps_v, ir.Constant(_i64, 0)), loop, done)
        builder.position_at_end(loop)
        k = builder.phi(_i64)
        k.add_incoming(ir.Constant(_i64, 0), entry)
        at = builder.mul(k, ir.Constant(_i64, TILE))
        for i in range(rt):
            builder.call(load, [ta_[i], builder.gep(a_rows[i], [at]), row])
        for j in range(ct):
            builder.call(load, [tb_[j], builder.gep(b_cols[j], [at]), row])
        for i in range(rt):
            for j in range(ct):
                builder.call(mul, [tc_[i * ct + j], ta_[i], tb_[j]])
        if epilogue is not None:
            lo = builder.mul(k, per)
            _range_loop(builder, lo, builder.select(builder.icmp_signed("<", builder.add(lo, per), rows),
                                                     builder.add(lo, per), rows), body)
        k_next = builder.add(k, ir.Constant(_i64, 1))
        k.add_incoming(k_next, builder.block)
        builder.cbranch(builder.icmp_signed("<", k_next, steps_v), loop, done)
        builder.position_at_end(done)
        c_ptr = _pointer(context, builder, tc, c_v)
        ldc = ct * DEPTH
        for i in range(rt):
            for j in range(ct):
                builder.call(store, [tc_[i * ct + j], builder.gep(c_ptr, [ir.Constant(_i64, i * TM * ldc + j * DEPTH)]),
                                     ir.Constant(_i64, ldc)])
        return context.get_dummy_value()

    if epilogue is None:
        @intrinsic
        def block(typingctx, a, a_off, b, b_off, strip, steps, c):
            return types.void(a, a_off, b, b_off, strip, steps, c), codegen
    else:
        @intrinsic
        def block(typingctx, a, a_off, b, b_off, strip, steps, c, prev):
            return types.void(a, a_off, b, b_off, strip, steps, c, prev), codegen
    return block


# ---- the epilogue on a finished 32 x 32 block of C, as explicit vectors (Numba's loops over the block's
# short rows stayed scalar: 1.3 ns an element, as long as the products) ----

_f32, _f64, _i32 = ir.FloatType(), ir.DoubleType(), ir.IntType(32)
_v16f, _v8d, _v8i = ir.VectorType(_f32, 16), ir.VectorType(_f64, 8), ir.VectorType(_i32, 8)
_v16i, _v8f, _v16h = ir.VectorType(_i32, 16), ir.VectorType(_f32, 8), ir.VectorType(ir.IntType(16), 16)
BIAS, GELU, RESIDUAL = 0, 1, 2  # the epilogue modes of the linear layers' contract


def _splat(builder, value, vtype):
    v = builder.insert_element(ir.Constant(vtype, ir.Undefined), value, ir.Constant(_i32, 0))
    return builder.shuffle_vector(v, ir.Constant(vtype, ir.Undefined), ir.Constant(ir.VectorType(_i32, vtype.count), None))


def _declare_typed(module, name, ret, args):
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, ir.FunctionType(ret, args), name)


def _range_loop(builder, lo, hi, body):
    """for r in range(lo, hi): body(r), as IR."""
    entry = builder.block
    loop, done = builder.append_basic_block("epi.loop"), builder.append_basic_block("epi.done")
    builder.cbranch(builder.icmp_signed("<", lo, hi), loop, done)
    builder.position_at_end(loop)
    r = builder.phi(_i64)
    r.add_incoming(lo, entry)
    body(r)
    r_next = builder.add(r, ir.Constant(_i64, 1))
    r.add_incoming(r_next, builder.block)
    builder.cbranch(builder.icmp_signed("<", r_next, hi), loop, done)
    builder.position_at_end(done)


def _data(context, builder, array_type, array):
    return context.make_array(array_type)(context, builder, array).data


def _vector_at(builder, base, index, vtype):
    return builder.bitcast(builder.gep(base, [index]), vtype.as_pointer())


def _join(builder, lo, hi):
    return builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(_i32, 16), list(range(16))))


def _gelu_f32(builder, x):
    """GELU of <16 x float> in float32 (erf: kernels/mlp.py's _ERF32_* two-piece fit, 1.3e-7): the bf16/int8
    epilogues round far coarser than that, and float64 cost them twice the vector work; GELU(-inf) = 0."""
    from .mlp import _ERF32_CUT, _ERF32_MID, _ERF32_P1, _ERF32_P2, _INV_SQRT2

    def const(v):
        return ir.Constant(_v16f, [float(np.float32(v))] * 16)

    fma = _declare_typed(builder.module, "llvm.fmuladd.v16f32", _v16f, [_v16f] * 3)
    fabs = _declare_typed(builder.module, "llvm.fabs.v16f32", _v16f, [_v16f])
    copysign = _declare_typed(builder.module, "llvm.copysign.v16f32", _v16f, [_v16f, _v16f])

    def horner(coef, v):
        p = const(coef[-1])
        for c in coef[-2::-1]:
            p = builder.call(fma, [p, v, const(c)])
        return p

    u = builder.fmul(x, const(_INV_SQRT2))
    a = builder.call(fabs, [u])
    near = builder.fmul(a, horner(_ERF32_P1, builder.fmul(a, a)))
    s = builder.fmul(builder.fsub(a, const((_ERF32_CUT + _ERF32_MID) / 2)), const(2 / (_ERF32_CUT - _ERF32_MID)))
    far = builder.select(builder.fcmp_ordered("<", a, const(_ERF32_CUT)), horner(_ERF32_P2, s), const(1.0))
    erf = builder.call(copysign, [builder.select(builder.fcmp_ordered("<", a, const(_ERF32_MID)), near, far), u])
    g = builder.fmul(builder.fmul(const(0.5), x), builder.fadd(const(1.0), erf))
    return builder.select(builder.fcmp_ordered("==", x, const(-np.inf)), const(0.0), g)


@intrinsic
def gelu_rows(typingctx, out, o0, stride, rows, cols):
    """out.flat[o0 + r * stride + j] = GELU(itself) in float32 (_gelu_f32), r < rows, j < cols <= 48: the bf16/int8
    tiles' GELU, a pass over their freshly stored rows, three vectors a loop step. The 24 vectors' GELU inside the
    tile cost twice as much on Zen 4 (int8 ViT-B fc1 at 16 crops: 6.0 against 3.0 ms over the bias-only tile)."""
    def codegen(context, builder, signature, args):
        o_p = _data(context, builder, signature.args[0], args[0])
        o0_v, stride_v, rows_v, cols_v = (context.cast(builder, args[i], signature.args[i], types.int64)
                                          for i in range(1, 5))
        lane = ir.Constant(_v16i, list(range(16)))
        masks = [builder.icmp_signed("<", lane, _splat(builder, builder.trunc(
            builder.sub(cols_v, ir.Constant(_i64, 16 * j)), _i32), _v16i)) for j in range(3)]
        mload = _declare_typed(builder.module, "llvm.masked.load.v16f32.p0", _v16f,
                               [_v16f.as_pointer(), _i32, ir.VectorType(ir.IntType(1), 16), _v16f])
        mstore = _declare_typed(builder.module, "llvm.masked.store.v16f32.p0", ir.VoidType(),
                                [_v16f, _v16f.as_pointer(), _i32, ir.VectorType(ir.IntType(1), 16)])
        align, zero = ir.Constant(_i32, 4), ir.Constant(_v16f, None)

        def body(r):
            base = builder.add(o0_v, builder.mul(r, stride_v))
            ptrs = [_vector_at(builder, o_p, builder.add(base, ir.Constant(_i64, 16 * j)), _v16f) for j in range(3)]
            ys = [_gelu_f32(builder, builder.call(mload, [q, align, m, zero])) for q, m in zip(ptrs, masks)]
            for y, q, m in zip(ys, ptrs, masks):
                builder.call(mstore, [y, q, align, m])

        _range_loop(builder, ir.Constant(_i64, 0), rows_v, body)
        return context.get_dummy_value()

    return types.void(out, o0, stride, rows, cols), codegen


def rows_f32(mode):
    """The row emitter of epilogue_f32(mode): (context, builder, arg types, arg values) -> (body(r), rows)."""
    def emit(context, builder, tys, vals):
        to = tys[1]
        n = builder.extract_value(context.make_array(to)(context, builder, vals[1]).shape, 1)
        c_p, o_p, e_p, b_p = (_data(context, builder, t, a) for t, a in zip(tys[:4], vals[:4]))
        r0_v, c0_v, rows_v = vals[4:7]
        bias_v = [builder.load(_vector_at(builder, b_p, builder.add(c0_v, ir.Constant(_i64, 16 * v)), _v16f), align=4)
                  for v in range(2)]

        def body(r):
            at = builder.add(builder.mul(builder.add(r0_v, r), n), c0_v)
            for v in range(2):
                t = builder.load(_vector_at(builder, c_p, builder.add(builder.mul(r, ir.Constant(_i64, 32)),
                                                                      ir.Constant(_i64, 16 * v)), _v16f), align=4)
                y = builder.fadd(t, bias_v[v])
                o = builder.add(at, ir.Constant(_i64, 16 * v))
                if mode == GELU:
                    y = _gelu_f32(builder, y)
                elif mode == RESIDUAL:
                    y = builder.fadd(builder.load(_vector_at(builder, e_p, o, _v16f), align=4), y)
                builder.store(y, _vector_at(builder, o_p, o, _v16f), align=4)

        return body, rows_v

    return emit


def rows_int8(mode):
    """The row emitter of epilogue_int8(mode), as rows_f32."""
    def emit(context, builder, tys, vals):
        c_p, sz_p, sw_p, cs_p, o_p, e_p, b_p = (_data(context, builder, t, a) for t, a in zip(tys[:7], vals[:7]))
        n = builder.extract_value(context.make_array(tys[4])(context, builder, vals[4]).shape, 1)
        r0_v, c0_v, rows_v = vals[7:10]

        def col(v, width):
            return builder.add(c0_v, ir.Constant(_i64, width * v))

        sw8 = [builder.fptrunc(builder.load(_vector_at(builder, sw_p, col(v, 8), _v8d), align=8), _v8f)
               for v in range(4)]
        sw = [_join(builder, sw8[2 * v], sw8[2 * v + 1]) for v in range(2)]
        cs = [builder.load(_vector_at(builder, cs_p, col(v, 16), _v16i), align=4) for v in range(2)]
        bias = [builder.load(_vector_at(builder, b_p, col(v, 16), _v16f), align=4) for v in range(2)]

        def body(r):
            row = builder.add(r0_v, r)
            s = builder.load(builder.gep(sz_p, [builder.mul(row, ir.Constant(_i64, 2))]))
            z = builder.fptosi(builder.load(builder.gep(sz_p, [builder.add(builder.mul(row, ir.Constant(_i64, 2)),
                                                                            ir.Constant(_i64, 1))])), _i32)
            s_v, z_v = _splat(builder, builder.fptrunc(s, _f32), _v16f), _splat(builder, z, _v16i)
            at = builder.add(builder.mul(row, n), c0_v)
            for v in range(2):
                t = builder.load(_vector_at(builder, c_p, builder.add(builder.mul(r, ir.Constant(_i64, 32)),
                                                                      ir.Constant(_i64, 16 * v)), _v16i), align=4)
                d = builder.sitofp(builder.sub(t, builder.mul(z_v, cs[v])), _v16f)
                y = builder.fadd(builder.fmul(d, builder.fmul(s_v, sw[v])), bias[v])
                o = builder.add(at, ir.Constant(_i64, 16 * v))
                if mode == GELU:
                    y = _gelu_f32(builder, y)
                elif mode == RESIDUAL:
                    y = builder.fadd(y, builder.load(_vector_at(builder, e_p, o, _v16f), align=4))
                builder.store(y, _vector_at(builder, o_p, o, _v16f), align=4)

        return body, rows_v

    return emit


def epilogue_f32(mode):
    """epi(c, out, res, bias, r0, c0, rows): out[r0 + r, c0:c0 + 32] = c[r] + bias (GELU | + residual), r < rows.

    c: the block's fp32 accumulators (row stride 32); out and res: (M, N) float32 with 32 columns from c0."""
    emit = rows_f32(mode)

    @intrinsic
    def epi(typingctx, c, out, res, bias, r0, c0, rows):
        def codegen(context, builder, signature, args):
            body, rows_v = emit(context, builder, signature.args, args)
            _range_loop(builder, ir.Constant(_i64, 0), rows_v, body)
            return context.get_dummy_value()

        return types.void(c, out, res, bias, r0, c0, rows), codegen

    return epi


def epilogue_int8(mode):
    """epi(c, sz, scale, colsum, out, res, bias, r0, c0, rows): out[r0 + r, c0:c0 + 32] =
    f32(c[r] - z * colsum) * (f32(s) * f32(scale)) + bias (GELU | + residual) in float32, (s, z) = sz[r0 + r]:
    a few float32 roundings, against the int8 quantisation's ~4e-3."""
    emit = rows_int8(mode)

    @intrinsic
    def epi(typingctx, c, sz, scale, colsum, out, res, bias, r0, c0, rows):
        def codegen(context, builder, signature, args):
            body, rows_v = emit(context, builder, signature.args, args)
            _range_loop(builder, ir.Constant(_i64, 0), rows_v, body)
            return context.get_dummy_value()

        return types.void(c, sz, scale, colsum, out, res, bias, r0, c0, rows), codegen

    return epi


def scratch(tasks, dtype):
    """Two 64-byte aligned 32 x 32 C blocks per parallel task: one filling while the other's epilogue runs."""
    return aligned((tasks, 2, TM * TM * RT * CT), dtype)


# ---- packing the activations into A, as explicit vectors (Numba's loops over them stayed scalar: the int8
# quantisation cost up to half of fc2's time, the bf16 rounding a tenth) ----

def _element_ptr(context, builder, array_type, array, offset):
    return builder.gep(_data(context, builder, array_type, array), [offset])


@intrinsic
def row_range(typingctx, x, off, count, ends):
    """Over x.flat[off:off + count] (count a multiple of 64) and 0: ends[0] = min, ends[1] = max; returns 1
    when a value is NaN or inf (then ends is meaningless), else 0."""
    def codegen(context, builder, signature, args):
        tx, _, _, te = signature.args
        x_v, off_v, count_v, ends_v = args
        base = _element_ptr(context, builder, tx, x_v, off_v)
        v1 = ir.VectorType(ir.IntType(1), 16)
        exp = ir.Constant(_v16i, [0x7F800000] * 16)
        entry = builder.block
        loop, done = builder.append_basic_block("range.loop"), builder.append_basic_block("range.done")
        zero = ir.Constant(_v16f, [0.0] * 16)
        builder.cbranch(builder.icmp_signed(">", count_v, ir.Constant(_i64, 0)), loop, done)
        builder.position_at_end(loop)
        j = builder.phi(_i64)
        j.add_incoming(ir.Constant(_i64, 0), entry)
        lo = [builder.phi(_v16f) for _ in range(4)]
        hi = [builder.phi(_v16f) for _ in range(4)]
        bad = builder.phi(v1)
        for p in lo + hi:
            p.add_incoming(zero, entry)
        bad.add_incoming(ir.Constant(v1, [0] * 16), entry)
        new_lo, new_hi, new_bad = [], [], bad
        for u in range(4):
            bits = builder.load(_vector_at(builder, base, builder.add(j, ir.Constant(_i64, 16 * u)), _v16i), align=4)
            v = builder.bitcast(bits, _v16f)
            new_lo.append(builder.select(builder.fcmp_ordered("<", v, lo[u]), v, lo[u]))
            new_hi.append(builder.select(builder.fcmp_ordered(">", v, hi[u]), v, hi[u]))
            new_bad = builder.or_(new_bad, builder.icmp_unsigned("==", builder.and_(bits, exp), exp))
        j_next = builder.add(j, ir.Constant(_i64, 64))
        j.add_incoming(j_next, loop)
        for p, v in zip(lo + hi + [bad], new_lo + new_hi + [new_bad]):
            p.add_incoming(v, loop)
        builder.cbranch(builder.icmp_signed("<", j_next, count_v), loop, done)
        builder.position_at_end(done)
        outs = []
        for v0, v in [(zero, w) for w in new_lo + new_hi] + [(ir.Constant(v1, [0] * 16), new_bad)]:
            p = builder.phi(v.type)
            p.add_incoming(v0, entry)
            p.add_incoming(v, loop)
            outs.append(p)
        m_lo, m_hi = outs[0], outs[4]
        for u in range(1, 4):
            m_lo = builder.select(builder.fcmp_ordered("<", outs[u], m_lo), outs[u], m_lo)
            m_hi = builder.select(builder.fcmp_ordered(">", outs[4 + u], m_hi), outs[4 + u], m_hi)
        reduce_min = _declare_typed(builder.module, "llvm.vector.reduce.fmin.v16f32", _f32, [_v16f])
        reduce_max = _declare_typed(builder.module, "llvm.vector.reduce.fmax.v16f32", _f32, [_v16f])
        reduce_or = _declare_typed(builder.module, "llvm.vector.reduce.or.v16i1", ir.IntType(1), [v1])
        e_p = _data(context, builder, te, ends_v)
        builder.store(builder.call(reduce_min, [m_lo]), e_p)
        builder.store(builder.call(reduce_max, [m_hi]), builder.gep(e_p, [ir.Constant(_i64, 1)]))
        return builder.zext(builder.call(reduce_or, [outs[8]]), _i32)

    return types.int32(x, off, count, ends), codegen


@intrinsic
def quantize64(typingctx, x, off, inv, zp, a, a_off):
    """a.flat[a_off:a_off + 64] = clip(rint(float64(x.flat[off + j]) * inv) + zp, 0, 255) as u8, j < 64."""
    def codegen(context, builder, signature, args):
        tx, _, _, _, ta, _ = signature.args
        x_v, off_v, inv_v, zp_v, a_v, a_off_v = args
        src = _element_ptr(context, builder, tx, x_v, off_v)
        dst = _element_ptr(context, builder, ta, a_v, a_off_v)
        rint = _declare_typed(builder.module, "llvm.rint.v8f64", _v8d, [_v8d])
        vmax = _declare_typed(builder.module, "llvm.maxnum.v8f64", _v8d, [_v8d, _v8d])
        vmin = _declare_typed(builder.module, "llvm.minnum.v8f64", _v8d, [_v8d, _v8d])
        inv8, zp8 = _splat(builder, inv_v, _v8d), _splat(builder, zp_v, _v8d)
        lo, hi = ir.Constant(_v8d, [0.0] * 8), ir.Constant(_v8d, [255.0] * 8)
        v8b = ir.VectorType(_i8, 8)
        for v in range(8):
            f = builder.fpext(builder.load(_vector_at(builder, src, ir.Constant(_i64, 8 * v), _v8f), align=4), _v8d)
            q = builder.fadd(builder.call(rint, [builder.fmul(f, inv8)]), zp8)
            q = builder.call(vmin, [builder.call(vmax, [q, lo]), hi])
            builder.store(builder.trunc(builder.fptosi(q, _v8i), v8b), _vector_at(builder, dst, ir.Constant(_i64, 8 * v), v8b),
                          align=1)
        return context.get_dummy_value()

    return types.void(x, off, inv, zp, a, a_off), codegen


def bf16_bits(builder, u):
    """float32 bits (<16 x i32>) -> bf16 bits in the low half, round to nearest even; NaN stays a quiet NaN."""
    def c(v):
        return ir.Constant(_v16i, [v] * 16)

    high = builder.lshr(u, c(16))
    rounded = builder.lshr(builder.add(builder.add(u, c(0x7FFF)), builder.and_(high, c(1))), c(16))
    nan = builder.icmp_unsigned(">", builder.and_(u, c(0x7FFFFFFF)), c(0x7F800000))
    return builder.select(nan, builder.or_(high, c(0x40)), rounded)


@intrinsic
def bf16_32(typingctx, xu, off, a, a_off):
    """a.flat[a_off:a_off + 32] = bf16 bits of xu.flat[off + j] (float32 bits), round to nearest even, NaN quiet."""
    def codegen(context, builder, signature, args):
        tx, _, ta, _ = signature.args
        x_v, off_v, a_v, a_off_v = args
        src = _element_ptr(context, builder, tx, x_v, off_v)
        dst = _element_ptr(context, builder, ta, a_v, a_off_v)

        for v in range(2):
            u = builder.load(_vector_at(builder, src, ir.Constant(_i64, 16 * v), _v16i), align=4)
            b = bf16_bits(builder, u)
            builder.store(builder.trunc(b, _v16h), _vector_at(builder, dst, ir.Constant(_i64, 16 * v), _v16h), align=2)
        return context.get_dummy_value()

    return types.void(xu, off, a, a_off), codegen
