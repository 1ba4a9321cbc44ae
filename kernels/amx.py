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
- C: RT*16 rows x CT*16 columns of fp32 / int32 into a scratch block, row stride CT * 64 bytes.
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


def block_intrinsic(dot, rt, ct):
    """block(a, a_off, b, b_off, strip, steps, c): C[rt*16, ct*16] = A[rt*16 rows, steps*64 bytes] . B[.., ct*16].

    A and B in strips of tiles (`pack_strips`; A's rows packed the same way per call): tile k of a strip
    at +k*TILE bytes, strips `strip` bytes apart; a_off, b_off: bytes (into uint8 arrays) of the first
    strips' first tiles. C tiles in tmm0.., then the A tiles, then the B tiles (rt * ct + rt + ct <= 8).
    """
    assert rt * ct + rt + ct <= 8

    @intrinsic
    def block(typingctx, a, a_off, b, b_off, strip, steps, c):
        def codegen(context, builder, signature, args):
            ta, _, tb, _, _, _, tc = signature.args
            a_v, a_off_v, b_v, b_off_v, strip_v, steps_v, c_v = args
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
            k_next = builder.add(k, ir.Constant(_i64, 1))
            k.add_incoming(k_next, loop)
            builder.cbranch(builder.icmp_signed("<", k_next, steps_v), loop, done)
            builder.position_at_end(done)
            c_ptr = _pointer(context, builder, tc, c_v)
            ldc = ct * DEPTH
            for i in range(rt):
                for j in range(ct):
                    builder.call(store, [tc_[i * ct + j], builder.gep(c_ptr, [ir.Constant(_i64, i * TM * ldc + j * DEPTH)]),
                                         ir.Constant(_i64, ldc)])
            return context.get_dummy_value()

        return types.void(a, a_off, b, b_off, strip, steps, c), codegen

    return block


# ---- the epilogue on a finished 32 x 32 block of C, as explicit vectors (Numba's loops over the block's
# short rows stayed scalar: 1.3 ns an element, as long as the products) ----

_f32, _f64, _i32 = ir.FloatType(), ir.DoubleType(), ir.IntType(32)
_v16f, _v8d, _v8i = ir.VectorType(_f32, 16), ir.VectorType(_f64, 8), ir.VectorType(_i32, 8)
BIAS, GELU, RESIDUAL = 0, 1, 2  # the epilogue modes of the linear layers' contract


def _splat(builder, value, vtype):
    v = builder.insert_element(ir.Constant(vtype, ir.Undefined), value, ir.Constant(_i32, 0))
    return builder.shuffle_vector(v, ir.Constant(vtype, ir.Undefined), ir.Constant(ir.VectorType(_i32, vtype.count), None))


def _gelu(builder, x):
    """kernels/mlp.gelu on <8 x double>: 0.5 x (1 + erf(x / sqrt 2)), erf the same fitted polynomial; GELU(-inf) = 0."""
    from .mlp import _ERF_CUT, _ERF_P, _INV_SQRT2

    def const(v):
        return ir.Constant(_v8d, [float(v)] * 8)

    fma = _declare_typed(builder.module, "llvm.fmuladd.v8f64", _v8d, [_v8d] * 3)
    fabs = _declare_typed(builder.module, "llvm.fabs.v8f64", _v8d, [_v8d])
    copysign = _declare_typed(builder.module, "llvm.copysign.v8f64", _v8d, [_v8d, _v8d])
    u = builder.fmul(x, const(_INV_SQRT2))
    t = builder.fmul(u, u)
    p = const(_ERF_P[-1])
    for c in _ERF_P[-2::-1]:
        p = builder.call(fma, [p, t, const(c)])
    big = builder.fcmp_ordered(">=", builder.call(fabs, [u]), const(_ERF_CUT))
    erf = builder.select(big, builder.call(copysign, [const(1.0), u]), builder.fmul(u, p))
    g = builder.fmul(builder.fmul(const(0.5), x), builder.fadd(const(1.0), erf))
    return builder.select(builder.fcmp_ordered("==", x, const(-np.inf)), const(0.0), g)


def _declare_typed(module, name, ret, args):
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, ir.FunctionType(ret, args), name)


def _row_loop(builder, rows, body):
    """for r in range(rows): body(r), as IR."""
    entry = builder.block
    loop, done = builder.append_basic_block("epi.loop"), builder.append_basic_block("epi.done")
    builder.cbranch(builder.icmp_signed(">", rows, ir.Constant(_i64, 0)), loop, done)
    builder.position_at_end(loop)
    r = builder.phi(_i64)
    r.add_incoming(ir.Constant(_i64, 0), entry)
    body(r)
    r_next = builder.add(r, ir.Constant(_i64, 1))
    r.add_incoming(r_next, builder.block)
    builder.cbranch(builder.icmp_signed("<", r_next, rows), loop, done)
    builder.position_at_end(done)


def _data(context, builder, array_type, array):
    return context.make_array(array_type)(context, builder, array).data


def _vector_at(builder, base, index, vtype):
    return builder.bitcast(builder.gep(base, [index]), vtype.as_pointer())


def _halves(builder, v16):
    lo = builder.shuffle_vector(v16, v16, ir.Constant(ir.VectorType(_i32, 8), list(range(8))))
    hi = builder.shuffle_vector(v16, v16, ir.Constant(ir.VectorType(_i32, 8), list(range(8, 16))))
    return lo, hi


def _join(builder, lo, hi):
    return builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(_i32, 16), list(range(16))))


def _gelu_f32(builder, y):
    """GELU of <16 x float> through double precision, as kernels/mlp.gelu."""
    halves = [_gelu(builder, builder.fpext(h, _v8d)) for h in _halves(builder, y)]
    return builder.fptrunc(_join(builder, *halves), _v16f)


def epilogue_f32(mode):
    """epi(c, out, res, bias, r0, c0, rows): out[r0 + r, c0:c0 + 32] = c[r] + bias (GELU | + residual), r < rows.

    c: the block's fp32 accumulators (row stride 32); out and res: (M, N) float32 with 32 columns from c0."""

    @intrinsic
    def epi(typingctx, c, out, res, bias, r0, c0, rows):
        def codegen(context, builder, signature, args):
            tc, to, tr, tb = signature.args[:4]
            n = builder.extract_value(context.make_array(to)(context, builder, args[1]).shape, 1)
            c_p, o_p, e_p, b_p = (_data(context, builder, t, a) for t, a in zip(signature.args[:4], args[:4]))
            r0_v, c0_v, rows_v = args[4:]
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

            _row_loop(builder, rows_v, body)
            return context.get_dummy_value()

        return types.void(c, out, res, bias, r0, c0, rows), codegen

    return epi


def epilogue_int8(mode):
    """epi(c, sz, scale, colsum, out, res, bias, r0, c0, rows): out[r0 + r, c0:c0 + 32] =
    f64(c[r] - z * colsum) * (s * scale) + bias (GELU | + residual) in double precision, (s, z) = sz[r0 + r]."""

    @intrinsic
    def epi(typingctx, c, sz, scale, colsum, out, res, bias, r0, c0, rows):
        def codegen(context, builder, signature, args):
            ptrs = [_data(context, builder, t, a) for t, a in zip(signature.args[:7], args[:7])]
            c_p, sz_p, sw_p, cs_p, o_p, e_p, b_p = ptrs
            n = builder.extract_value(context.make_array(signature.args[4])(context, builder, args[4]).shape, 1)
            r0_v, c0_v, rows_v = args[7:]

            def col(v):
                return builder.add(c0_v, ir.Constant(_i64, 8 * v))

            sw = [builder.load(_vector_at(builder, sw_p, col(v), _v8d), align=8) for v in range(4)]
            cs = [builder.load(_vector_at(builder, cs_p, col(v), _v8i), align=4) for v in range(4)]
            bias = [builder.fpext(builder.load(_vector_at(builder, b_p, col(v), ir.VectorType(_f32, 8)), align=4), _v8d)
                    for v in range(4)]

            def body(r):
                row = builder.add(r0_v, r)
                s = builder.load(builder.gep(sz_p, [builder.mul(row, ir.Constant(_i64, 2))]))
                z = builder.fptosi(builder.load(builder.gep(sz_p, [builder.add(builder.mul(row, ir.Constant(_i64, 2)),
                                                                                ir.Constant(_i64, 1))])), _i32)
                s_v, z_v = _splat(builder, s, _v8d), _splat(builder, z, _v8i)
                at = builder.add(builder.mul(row, n), c0_v)
                for v in range(4):
                    t = builder.load(_vector_at(builder, c_p, builder.add(builder.mul(r, ir.Constant(_i64, 32)),
                                                                          ir.Constant(_i64, 8 * v)), _v8i), align=4)
                    d = builder.sitofp(builder.sub(t, builder.mul(z_v, cs[v])), _v8d)
                    y = builder.fadd(builder.fmul(d, builder.fmul(s_v, sw[v])), bias[v])
                    o = builder.add(at, ir.Constant(_i64, 8 * v))
                    if mode == GELU:
                        y = _gelu(builder, y)
                    elif mode == RESIDUAL:
                        e = builder.load(_vector_at(builder, e_p, o, ir.VectorType(_f32, 8)), align=4)
                        y = builder.fadd(y, builder.fpext(e, _v8d))
                    builder.store(builder.fptrunc(y, ir.VectorType(_f32, 8)), _vector_at(builder, o_p, o, ir.VectorType(_f32, 8)),
                                  align=4)

            _row_loop(builder, rows_v, body)
            return context.get_dummy_value()

        return types.void(c, sz, scale, colsum, out, res, bias, r0, c0, rows), codegen

    return epi


def scratch(tasks, dtype):
    """One 64-byte aligned 32 x 32 C block per parallel task."""
    return aligned((tasks, TM * TM * RT * CT), dtype)
