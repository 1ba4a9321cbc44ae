"""Intel AMX tiles for the bf16 and int8 linear layers: 16 x 48 output tiles from `tdpbf16ps` / `tdpbusd`.

AMX (Sapphire Rapids and later) multiplies whole 16-row tiles held in 8 tile registers; where it exists it
is far faster than the AVX-512 dot instructions (on this project's Emerald Rapids, `vdpbf16ps` issues at
a fifth of the FMA rate). Linux hands the 8 KiB tile state to a process only on request
(arch_prctl ARCH_REQ_XCOMP_PERM): `AVAILABLE` is True only when the CPU, Numba's target and the kernel
all agree, and nothing here is compiled otherwise (compiling for a CPU without AMX aborts LLVM).

Layouts (the weight panels are the AVX-512 kernels' own, with K padded to one tile depth):
- A: row-major, 16 rows per tile, 64 bytes of K per tile row (32 bf16 or 64 u8), row stride `lda` bytes;
- B: the packed panel, (K/64 bytes) rows of 48 int32 lanes; a tile is 16 rows x 16 lanes, stride 192 bytes;
- C: 16 rows x 48 columns of fp32 / int32 into a scratch tile, row stride 192 bytes.
"""

import ctypes
import platform
import sys

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

TM, TN = 16, 48  # output tile: 16 rows x 3 tiles of 16 columns
DEPTH = 64  # bytes of K per tile row
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
    """The 64-byte tile configuration: palette 1, tiles 0-6 of 16 rows x 64 bytes."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    cfg[16:30].view(np.uint16)[:] = DEPTH
    cfg[48:55] = TM
    return cfg


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


def tile_intrinsic(dot):
    """tile(a, a_off, lda, b, b_off, depth, c): C[16, 48] = A[16, depth * 64 bytes] . B panel, with `dot`.

    Tiles: C in tmm0-2, A in tmm3, B in tmm4-6; a_off and b_off count elements of a and b.
    """

    @intrinsic
    def tile(typingctx, a, a_off, lda, b, b_off, depth, c):
        def codegen(context, builder, signature, args):
            ta, _, _, tb, _, _, tc = signature.args
            a_v, a_off_v, lda_v, b_v, b_off_v, depth_v, c_v = args
            m = builder.module
            zero = _declare(m, "llvm.x86.tilezero", [_i8])
            load = _declare(m, "llvm.x86.tileloadd64", [_i8, _p8, _i64])
            mul = _declare(m, dot, [_i8, _i8, _i8])
            store = _declare(m, "llvm.x86.tilestored64", [_i8, _p8, _i64])
            t = [ir.Constant(_i8, i) for i in range(7)]
            a_ptr = _pointer(context, builder, ta, a_v, a_off_v)
            b_ptr = _pointer(context, builder, tb, b_v, b_off_v)
            for j in range(3):
                builder.call(zero, [t[j]])
            entry = builder.block
            loop = builder.append_basic_block("amx.loop")
            done = builder.append_basic_block("amx.done")
            builder.branch(loop)
            builder.position_at_end(loop)
            k = builder.phi(_i64)
            k.add_incoming(ir.Constant(_i64, 0), entry)
            builder.call(load, [t[3], builder.gep(a_ptr, [builder.mul(k, ir.Constant(_i64, DEPTH))]), lda_v])
            b_k = builder.gep(b_ptr, [builder.mul(k, ir.Constant(_i64, TM * TN * 4))])
            for j in range(3):
                builder.call(load, [t[4 + j], builder.gep(b_k, [ir.Constant(_i64, 64 * j)]), ir.Constant(_i64, TN * 4)])
            for j in range(3):
                builder.call(mul, [t[j], t[3], t[4 + j]])
            k_next = builder.add(k, ir.Constant(_i64, 1))
            k.add_incoming(k_next, loop)
            builder.cbranch(builder.icmp_signed("<", k_next, depth_v), loop, done)
            builder.position_at_end(done)
            c_ptr = _pointer(context, builder, tc, c_v)
            for j in range(3):
                builder.call(store, [t[j], builder.gep(c_ptr, [ir.Constant(_i64, 64 * j)]), ir.Constant(_i64, TN * 4)])
            return context.get_dummy_value()

        return types.void(a, a_off, lda, b, b_off, depth, c), codegen

    return tile
