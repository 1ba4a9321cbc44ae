"""bf16 linear layers: bf16 weights and activations, fp32 accumulation (AMX `tdpbf16ps` or `vdpbf16ps`).

The contract of kernels/gemm.py (`pack_weight`, `linear`), with the weights kept only as bf16.
- pack_weight(w): w (N, K) float32, the checkpoint's (out, in) layout, rounded to bf16 once
  (round to nearest even) into int32 lanes holding (w[n, 2k], w[n, 2k+1]): AMX tiles of 16 outputs
  (kernels/amx.py) where the CPU has AMX, else column panels of 48 outputs.
- linear(x, packed): activations are rounded to bf16 the same way, in one parallel pass (AMX strips) or
  by each task for its own rows (row-major, read in place by the AVX-512 tiles); every product is exact in
  fp32 and accumulated in fp32, so the only error is the two roundings. AMX: 32 x 32 blocks held in tile
  registers over all of K; else AVX512-BF16 8x48 register tiles over all of K. Either way the epilogue
  (bias, GELU in float32, residual) is applied as the accumulators leave the registers.
Where the CPU (or Numba's target, e.g. NUMBA_CPU_NAME=generic) lacks AVX512-BF16, the same bf16
values are widened to fp32 and multiplied by NumPy's BLAS: the same numbers up to summation order,
slower than fp32. `FAST` says which path runs.
"""

import math
import threading
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import types
from numba.extending import intrinsic

import llvmlite.binding as llvm

from . import amx, gemm
from .layernorm import _normalize, check_norm, layernorm
from ._jit import jit, pjit
from .mlp import _INV_SQRT2, _erf, bias_gelu

MR, NR = 8, 48  # micro-tile: 8 rows x 48 columns = 24 zmm accumulators, no spills


def cpu_has(feature):
    """True when both this CPU and Numba's compile target have `feature` (compiling without it aborts LLVM)."""
    if not numba.config.CPU_NAME or numba.config.CPU_NAME == "host":
        return bool(llvm.get_host_cpu_features().get(feature, False))
    return f"+{feature}" in (numba.config.CPU_FEATURES or "").split(",")  # e.g. NUMBA_CPU_NAME=generic


AMX = amx.available(cpu_has, "amx-bf16")
FAST = AMX or cpu_has("avx512bf16")
INSTRUCTION = "tdpbf16ps (AMX)" if AMX else "vdpbf16ps"  # what FAST runs; the fallback widens to NumPy's BLAS


class PackedBF16(NamedTuple):
    panels: np.ndarray  # AVX-512: (ceil(N/48), K/2 padded to 16, 48) int32 bf16 pairs; AMX: amx.pack_strips tiles
    n: int
    k: int
    amx: bool = False  # panels are AMX tiles: (ceil(N/32) * 2 strips, K/32, 16, 16) int32, zero-padded


def _round_bits(w):
    """float32 -> bf16 bit patterns (uint32 holding 16 bits), round to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(w, np.float32).view(np.uint32)
    r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return np.where(np.isnan(w), (u >> np.uint32(16)) | np.uint32(0x40), r).astype(np.uint32)


def pack_weight(w):
    """(N, K) float32 -> PackedBF16, once at load; the fp32 array is not referenced afterwards."""
    w = np.asarray(w)
    if w.dtype != np.float32 or w.ndim != 2:
        raise ValueError(f"weight must be a 2-D float32 array, got {w.dtype} {w.shape}")
    n, k = w.shape
    width = BC if AMX else NR  # AMX: whole 32-column blocks; AVX-512: 48-column panels
    npan, kp = -(-n // width), -(-k // 32) * 16  # K padded to one AMX tile depth: 32 bf16 = 16 pairs
    bits = np.zeros((npan * width, 2 * kp), np.uint32)
    bits[:n, :k] = _round_bits(w)
    lanes = bits[:, 0::2] | (bits[:, 1::2] << np.uint32(16))  # (N', K/2): element 2k in the low half
    if AMX:
        return PackedBF16(amx.pack_strips(lanes, npan * amx.CT).view(np.int32), n, k, True)
    panels = np.ascontiguousarray(lanes.reshape(npan, NR, kp).transpose(0, 2, 1)).view(np.int32)
    return PackedBF16(panels, n, k)


def lanes_of(packed):
    """The packed panels or tiles back as (N', K') int32 lanes, one output column per row."""
    p = packed.panels
    if packed.amx:
        return p.transpose(0, 3, 1, 2).reshape(p.shape[0] * p.shape[3], -1)
    return p.transpose(0, 2, 1).reshape(-1, p.shape[1])


def unpack_weight(packed):
    """The bf16 weight as float32 (N, K): what the products use."""
    lanes = lanes_of(packed).view(np.uint32)
    bits = np.empty((lanes.shape[0], 2 * lanes.shape[1]), np.uint32)
    bits[:, 0::2] = lanes << np.uint32(16)
    bits[:, 1::2] = lanes & np.uint32(0xFFFF0000)
    return bits.view(np.float32)[:packed.n, :packed.k]


def round_bf16(x):
    """float32 values rounded to bf16 (round to nearest even), as float32."""
    return (_round_bits(x) << np.uint32(16)).view(np.float32)


# ---- the micro-kernel, emitted as LLVM IR (LLVM never forms vdpbf16ps from scalar code) ----

class _BFloat(ir.Type):
    """llvmlite has no bfloat type; LLVM's textual IR only needs the name."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloat)

    def __hash__(self):
        return hash("bfloat")


# ---- a scalar epilogue on a tile in scratch (AMX blocks of a partial width; gemm_int8 uses gelu_value) ----

@jit
def gelu_value(v):
    """Exact erf GELU of a float64 (spec 1.3), with the same fitted erf as kernels/mlp.py."""
    return 0.5 * v * (1.0 + _erf(v * _INV_SQRT2)) if v != -np.inf else 0.0


@jit
def _store(tile, stride, out, res, bias, r0, c0, rows, cols, mode):
    """The contract's epilogue on one tile (row stride `stride`): + bias, then GELU (mode 1) or + residual (mode 2)."""
    for r in range(rows):
        t, o, e, b = tile[r * stride:r * stride + cols], out[r0 + r, c0:c0 + cols], res[r0 + r, c0:c0 + cols], bias[c0:c0 + cols]
        if mode == 0:
            for j in range(cols):
                o[j] = t[j] + b[j]
        elif mode == 1:
            for j in range(cols):
                o[j] = gelu_value(np.float64(t[j] + b[j]))
        else:
            for j in range(cols):
                o[j] = t[j] + b[j] + e[j]


@jit
def _bf16_of(u):
    """float32 bits -> bf16 bits, round to nearest even; NaN stays a quiet NaN (a select: the loop vectorises)."""
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return (u >> 16) | 0x40 if (u & 0x7FFFFFFF) > 0x7F800000 else rounded


# ---- the AVX512-BF16 path: each task rounds its rows of x into row-major bf16 pairs, read in place by an 8 x 48
# micro-kernel whose epilogue (bias, float32 GELU | residual) runs on the accumulators as they leave the registers ----

_i1, _i32, _i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
_v16f, _v16i = ir.VectorType(ir.FloatType(), 16), ir.VectorType(_i32, 16)
_v32bf = ir.VectorType(_BFloat(), 32)


def dot_loop(builder, arows, bptr, steps, dot, acc_type, lane_type, name, nr=None):
    """Emit the K loop of an MR x NR register tile on int32 lanes (bf16 pairs, 4 int8): per step k, the NR / 16
    lane vectors of the panel at bptr[k * NR], each row's lane arows[i][k] broadcast, MR * NR / 16 `dot`s into
    acc_type accumulators. Returns them after the loop (zeros when steps <= 0), row-major, as phis of the exit
    block, where the builder is left. MR = len(arows); nr: the panel's width (default NR)."""
    mr, nr = len(arows), NR if nr is None else nr
    zero = ir.Constant(acc_type, None)
    entry = builder.block
    loop, done = builder.append_basic_block(f"{name}.loop"), builder.append_basic_block(f"{name}.done")
    builder.cbranch(builder.icmp_signed(">", steps, ir.Constant(_i64, 0)), loop, done)
    builder.position_at_end(loop)
    k = builder.phi(_i64)
    accs = [builder.phi(acc_type) for _ in range(mr * nr // 16)]
    bk = builder.gep(bptr, [builder.mul(k, ir.Constant(_i64, nr))])
    bs = [builder.bitcast(builder.load(builder.bitcast(builder.gep(bk, [ir.Constant(_i64, 16 * j)]),
                                                       _v16i.as_pointer()), align=4), lane_type)
          for j in range(nr // 16)]
    new = []
    for i in range(mr):
        av = builder.bitcast(amx._splat(builder, builder.load(builder.gep(arows[i], [k]), align=4), _v16i), lane_type)
        new += [builder.call(dot, [accs[i * (nr // 16) + j], av, bs[j]]) for j in range(nr // 16)]
    k_next = builder.add(k, ir.Constant(_i64, 1))
    k.add_incoming(ir.Constant(_i64, 0), entry)
    k.add_incoming(k_next, loop)
    for acc, val in zip(accs, new):
        acc.add_incoming(zero, entry)
        acc.add_incoming(val, loop)
    builder.cbranch(builder.icmp_signed("<", k_next, steps), loop, done)
    builder.position_at_end(done)
    finals = []
    for val in new:
        finals.append(builder.phi(acc_type))  # every phi before the first other instruction
        finals[-1].add_incoming(zero, entry)
        finals[-1].add_incoming(val, loop)
    return finals


def _fused_tile(mode):
    """tile(a, a0, rs, rows, b, b0, steps, out, res, bias, r0, c0): out[r0 + i, c0 + j] = epilogue(sum over
    k < steps of a[a0 + i * rs + k] . b[b0 + k * 48 + j]) for i < rows, j < min(48, N - c0).

    a, b: int32 lanes of bf16 pairs (x row-major, row stride rs; the weight's 48-column panel); rows i >= rows
    read row rows - 1 and are never written; columns past N are masked off (bias and residual too)."""

    @intrinsic
    def tile(typingctx, a, a0, rs, rows, b, b0, steps, out, res, bias, r0, c0):
        sig = types.void(a, a0, rs, rows, b, b0, steps, out, res, bias, r0, c0)

        def codegen(context, builder, signature, args):
            ty = signature.args
            a0_v, rs_v, rows_v, b0_v, steps_v, r0_v, c0_v = (context.cast(builder, args[i], ty[i], types.int64)
                                                             for i in (1, 2, 3, 5, 6, 10, 11))

            def data(i):
                return context.make_array(ty[i])(context, builder, args[i]).data

            dot = amx._declare_typed(builder.module, "llvm.x86.avx512bf16.dpbf16ps.512", _v16f, [_v16f, _v32bf, _v32bf])
            last = builder.sub(rows_v, ir.Constant(_i64, 1))
            arows = []
            for i in range(MR):
                r = builder.select(builder.icmp_signed("<", ir.Constant(_i64, i), rows_v), ir.Constant(_i64, i), last)
                arows.append(builder.gep(data(0), [builder.add(a0_v, builder.mul(r, rs_v))]))
            bptr = builder.gep(data(4), [b0_v])
            zero = ir.Constant(_v16f, None)
            finals = dot_loop(builder, arows, bptr, steps_v, dot, _v16f, _v32bf, "tile")
            n = builder.extract_value(context.make_array(ty[7])(context, builder, args[7]).shape, 1)
            o_p, e_p, b_p = data(7), data(8), data(9)
            left = builder.sub(n, c0_v)  # columns of this panel that exist
            lane = ir.Constant(_v16i, list(range(16)))
            masks = [builder.icmp_signed("<", lane, amx._splat(builder, builder.trunc(
                builder.sub(left, ir.Constant(_i64, 16 * j)), _i32), _v16i)) for j in range(NR // 16)]
            mload = amx._declare_typed(builder.module, "llvm.masked.load.v16f32.p0", _v16f,
                              [_v16f.as_pointer(), _i32, ir.VectorType(_i1, 16), _v16f])
            mstore = amx._declare_typed(builder.module, "llvm.masked.store.v16f32.p0", ir.VoidType(),
                               [_v16f, _v16f.as_pointer(), _i32, ir.VectorType(_i1, 16)])
            align = ir.Constant(_i32, 4)

            def at(base, index):
                return builder.bitcast(builder.gep(base, [index]), _v16f.as_pointer())

            bias_v = [builder.call(mload, [at(b_p, builder.add(c0_v, ir.Constant(_i64, 16 * j))), align, masks[j],
                                           zero]) for j in range(NR // 16)]

            def emit_row(i):
                base = builder.add(builder.mul(builder.add(r0_v, ir.Constant(_i64, i)), n), c0_v)
                for j in range(NR // 16):
                    o = builder.add(base, ir.Constant(_i64, 16 * j))
                    y = builder.fadd(finals[i * (NR // 16) + j], bias_v[j])
                    if mode == amx.RESIDUAL:
                        y = builder.fadd(builder.call(mload, [at(e_p, o), align, masks[j], zero]), y)
                    builder.call(mstore, [y, at(o_p, o), align, masks[j]])

            for i in range(MR):  # rows i < rows only
                row, after = builder.append_basic_block(f"tile.row{i}"), builder.append_basic_block(f"tile.after{i}")
                builder.cbranch(builder.icmp_signed("<", ir.Constant(_i64, i), rows_v), row, after)
                builder.position_at_end(row)
                emit_row(i)
                builder.branch(after)
                builder.position_at_end(after)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile_bias, _tile_residual = _fused_tile(amx.BIAS), _fused_tile(amx.RESIDUAL)  # GELU: amx.gelu_rows after the bias tile


@jit
def _round_rows(x, xu, m0, rows, a16, lanes, gamma, beta, eps, fused, row, rowu):
    """Rows m0.. of x (xu its uint32 view, (M, K)); where `fused`, their layer norm, made one at a time in `row`
    ((1, >= K) float32, rowu its uint32 view) -> a16[:rows * 2 * lanes]: bf16 bits row-major (row stride
    2 * lanes), round to nearest even, zero padded."""
    k = xu.shape[1]
    flat = xu.reshape(-1)
    full = k // 32 * 32
    for r in range(rows):
        src, at, base = flat, (m0 + r) * k, r * 2 * lanes
        if fused:
            _normalize(x, gamma, beta, eps, row, m0 + r, 0)
            src, at = rowu, 0
        for j in range(0, full, 32):
            amx.bf16_32(src, at + j, a16, base + j)
        for j in range(full, 2 * lanes):
            a16[base + j] = _bf16_of(np.uint32(src[at + j])) if j < k else 0


@pjit
def _gemm(x, xu, m, panels, bias, res, out, mode, mc, groups, a, a16, gamma, beta, eps, fused, normed, normedu):
    npan, steps = panels.shape[0], panels.shape[1]
    n = out.shape[1]
    flat = panels.reshape(-1)
    chunks = (m + mc - 1) // mc
    for task in prange(chunks * groups):  # a chunk of rows x a range of panels
        m0 = (task % chunks) * mc
        rows = min(mc, m - m0)
        g = task // chunks
        at, a_t = a[task], a16[task]
        # in the task: one launch, and the rows stay in this core's caches
        ln = task % normed.shape[0]  # one buffer for every task when not fused
        _round_rows(x, xu, m0, rows, a_t, steps, gamma, beta, eps, fused, normed[ln], normedu[ln])
        for p in range(g * npan // groups, (g + 1) * npan // groups):
            for i0 in range(0, rows, MR):
                r = min(MR, rows - i0)
                if mode == 0:
                    _tile_bias(at, i0 * steps, steps, r, flat, p * steps * NR, steps, out, res, bias, m0 + i0, p * NR)
                elif mode == 1:
                    _tile_bias(at, i0 * steps, steps, r, flat, p * steps * NR, steps, out, res, bias, m0 + i0, p * NR)
                    amx.gelu_rows(out, (m0 + i0) * n + p * NR, n, r, min(NR, n - p * NR))
                else:
                    _tile_residual(at, i0 * steps, steps, r, flat, p * steps * NR, steps, out, res, bias, m0 + i0,
                                   p * NR)


@pjit
def _pack_amx(xu, a, steps):
    """x (uint32 view) -> A for the tiles: bf16 in strips of 16 rows (amx.pack_strips' layout), rows
    padded to the block and K to steps * 32 with zeros."""
    m, k = xu.shape
    flat = xu.reshape(-1)
    for r in prange(a.size // (steps * 32)):
        base = (r // amx.TM) * steps * 512 + (r % amx.TM) * 32  # 512 bf16 a tile, 32 a tile row
        for s in range(steps):
            dst = a[base + s * 512:base + s * 512 + 32]
            j0 = s * 32
            if r < m and j0 + 32 <= k:
                amx.bf16_32(flat, r * k + j0, a, base + s * 512)
            else:  # the padding
                for j in range(32):
                    dst[j] = _bf16_of(np.uint32(xu[r, j0 + j])) if r < m and j0 + j < k else 0


@jit
def _prefetch_block(out, res, r0, c0, rows, mode):
    """Start the block's output (and residual) lines on their way while the tiles multiply: strided
    writes to rows far apart miss every cache, and waiting for them cost as much as the products."""
    n = out.shape[1]
    last = min(c0 + BC, n) - 1
    for r in range(r0, r0 + rows):
        for j in (c0, c0 + 16, last):  # 128 bytes: three lines when the row is not 64-byte aligned
            gemm.prefetch_write(out, r * n + j)
            if mode == 2:
                gemm.prefetch_write(res, r * n + j)


@pjit
def _gemm_amx(a, m, tiles, n, bias, res, out, mode, mc, groups, cfg, scratch):
    strips, steps = tiles.shape[0], tiles.shape[1]
    b = tiles.reshape(-1).view(np.uint8)
    strip = steps * amx.TILE
    blocks = strips // amx.CT
    mchunks = (m + mc - 1) // mc
    for task in prange(mchunks * groups):  # a chunk of rows (its A stays in L2) x a range of column blocks
        m0 = (task % mchunks) * mc
        m1 = min(m, m0 + mc)
        g = task // mchunks
        slot, pr0, pc0, prows = 0, 0, 0, 0  # the previous block, its epilogue still to do (prows > 0)
        amx.begin(cfg)
        for nb in range(g * blocks // groups, (g + 1) * blocks // groups):  # B's block stays in L1/L2 ...
            c0 = nb * BC
            for r0 in range(m0, m1, BR):  # ... while the chunk's rows stream past it
                rows = min(BR, m1 - r0)
                _prefetch_block(out, res, r0, c0, rows, mode)
                c, prev = scratch[task, slot], (scratch[task, 1 - slot], out, res, bias, pr0, pc0, prows)
                if mode == amx.BIAS:
                    _block_bias(a, r0 * steps * amx.DEPTH, b, nb * amx.CT * strip, strip, steps, c, prev)
                elif mode == amx.GELU:
                    _block_gelu(a, r0 * steps * amx.DEPTH, b, nb * amx.CT * strip, strip, steps, c, prev)
                else:
                    _block_residual(a, r0 * steps * amx.DEPTH, b, nb * amx.CT * strip, strip, steps, c, prev)
                if c0 + BC > n:  # the last block of a width that is not a multiple of 32: done here
                    _store(c, BC, out, res, bias, r0, c0, rows, n - c0, mode)
                    prows = 0
                else:
                    slot, pr0, pc0, prows = 1 - slot, r0, c0, rows
        c = scratch[task, 1 - slot]
        if mode == amx.BIAS:
            _epi_bias(c, out, res, bias, pr0, pc0, prows)
        elif mode == amx.GELU:
            _epi_gelu(c, out, res, bias, pr0, pc0, prows)
        else:
            _epi_residual(c, out, res, bias, pr0, pc0, prows)
        amx.end()


BR, BC = amx.RT * amx.TM, amx.CT * amx.TM  # one AMX block: 32 rows x 32 columns
_block_bias, _block_gelu, _block_residual = (
    amx.block_intrinsic("llvm.x86.tdpbf16ps", amx.RT, amx.CT, amx.rows_f32(mode)) for mode in (amx.BIAS, amx.GELU, amx.RESIDUAL))
_epi_bias, _epi_gelu, _epi_residual = (amx.epilogue_f32(mode) for mode in (amx.BIAS, amx.GELU, amx.RESIDUAL))
_CFG = amx.tile_config()


def chunk_rows(m, max_chunk=96, unit=MR):
    """Rows per parallel task: a multiple of `unit`, at most `max_chunk`, tasks a multiple of the thread count."""
    t = numba.get_num_threads()
    tasks = max(t, -(-m // max_chunk))
    tasks = -(-tasks // t) * t
    per_task = -(-m // tasks)
    return -(-per_task // unit) * unit


def check_call(x, n, k, bias, residual, out, gelu):
    """The contract's argument checks, shared by the reduced-precision kernels; returns (bias, residual, out, mode)."""
    if x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous:
        raise ValueError(f"x must be a C-contiguous 2-D float32 array, got {x.dtype} {x.shape}")
    if x.shape[1] != k:
        raise ValueError(f"x has {x.shape[1]} columns, the weight expects {k}")
    if gelu and residual is not None:
        raise ValueError("gelu and residual are exclusive epilogues")
    m = x.shape[0]
    if out is None:
        out = np.empty((m, n), np.float32)
    elif out.dtype != np.float32 or out.shape != (m, n) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {(m, n)}")
    bias = np.zeros(n, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32).reshape(n)
    mode = 1 if gelu else 2 if residual is not None else 0
    if residual is None:
        residual = out
    elif residual.dtype != np.float32 or residual.shape != (m, n) or not residual.flags.c_contiguous:
        raise ValueError(f"residual must be a C-contiguous float32 array of shape {(m, n)}")
    return bias, residual, out, mode


def epilogue(y, bias, residual, out, mode):
    """The fallbacks' epilogue in NumPy, the fast kernels' in float32 as well: out = y + bias (GELU | + residual)."""
    if mode == 1:
        bias_gelu(y, bias)
    else:
        y += bias
        if mode == 2:
            y += residual
    out[...] = y
    return out


def plan(m, row_bytes, blocks):
    """(rows per task chunk, column groups) for the AMX kernels: a chunk's A (row_bytes per row) fits in
    L2 beside a block of B; tasks = chunks x groups, a multiple of the thread count."""
    threads = numba.get_num_threads()
    rows = -(-m // BR) * BR
    mc = max(BR, min(rows, L2_ROWS_BYTES // row_bytes // BR * BR))
    chunks = -(-rows // mc)
    mc = -(-rows // chunks // BR) * BR  # even chunks
    return mc, max(1, min(blocks, threads // math.gcd(chunks, threads)))


L2_ROWS_BYTES = 1 << 20  # a chunk's A: half of the 2 MiB L2 of this CPU's cores (Emerald Rapids)


def block_padded(v):
    """v zero-padded to whole 32-column blocks: the blocks read their columns' bias (scale, colsum) before
    they know whether the block they finish is a full one."""
    return np.concatenate([v, np.zeros(-len(v) % BC, v.dtype)]) if len(v) % BC else v


def amx_buffers(m, packed, acc_type):
    """(K steps, the A buffer, rows per chunk, column groups, C scratch) of one AMX call on m rows."""
    steps = packed.panels.shape[1]
    mc, groups = plan(m, steps * amx.DEPTH, packed.panels.shape[0] // amx.CT)
    return (steps, gemm.aligned(-(-m // BR) * BR * steps * amx.DEPTH, np.uint8), mc, groups,
            amx.scratch(-(-m // mc) * groups, acc_type))


_local = threading.local()


def _scratch(size):
    """A 64-byte-aligned int32 buffer of `size` for x's bf16 copy, reused by this thread's calls."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < size:
        buf = _local.buf = gemm.aligned((size,), np.int32)
    return buf[:size]


A_BYTES = 1 << 19  # a task's bf16 rows: half of this CPU's 1 MiB L2, beside a 48-column panel of the weight


def split(m, steps, panels):
    """(rows per task, panel groups) of the AVX-512 kernel: chunks of rows whose bf16 copy (steps lanes a row) stays in
    L2, as few as the threads allow (each chunk streams the whole weight); too few chunks for the threads split the
    panels in groups, so that the threads read disjoint parts of a weight that is cold in the whole forward."""
    threads = numba.get_num_threads()
    rows = max(MR, A_BYTES // (4 * steps) // MR * MR)
    chunks = -(-m // rows)
    if chunks >= threads:
        chunks = -(-chunks // threads) * threads
    per = -(-m // chunks)
    return -(-per // MR) * MR, max(1, min(panels, threads // chunks))


def linear(x, packed, bias=None, *, norm=None, gelu=False, residual=None, out=None):
    """out = bf16(norm(x)) @ bf16(w).T + bias, then GELU or + residual; x (M, K) float32 -> (M, N) float32.
    norm (gamma, beta, eps): the layer norm of x's rows, made by the AVX-512 tasks as they round them."""
    bias, residual, out, mode = check_call(x, packed.n, packed.k, bias, residual, out, gelu)
    gamma, beta, eps, fused = check_norm(norm, packed.k)
    m = x.shape[0]
    if m == 0:
        return out
    if fused and not (FAST and not packed.amx):  # the other paths normalise first
        x = layernorm(x, gamma, beta, eps, out=gemm._scratch(x.size, "rows").reshape(x.shape))
    if packed.amx:
        steps, a, mc, groups, scratch = amx_buffers(m, packed, np.float32)
        _pack_amx(x.view(np.uint32), a.view(np.uint16), steps)
        _gemm_amx(a, m, packed.panels, packed.n, block_padded(bias), residual, out, mode, mc, groups, _CFG, scratch)
        return out
    if FAST:
        lanes = packed.panels.shape[1]
        mc, groups = split(m, lanes, packed.panels.shape[0])
        tasks, k = -(-m // mc) * groups, packed.k
        a = _scratch(tasks * mc * lanes).reshape(-1, mc * lanes)
        normed = gemm._scratch(tasks * k if fused else 1, "ln").reshape(tasks if fused else 1, 1, -1)
        _gemm(x, x.view(np.uint32), m, packed.panels, bias, residual, out, mode, mc, groups, a, a.view(np.uint16),
              gamma, beta, eps, fused, normed, normed.reshape(normed.shape[0], -1).view(np.uint32))
        return out
    return epilogue(round_bf16(x) @ unpack_weight(packed).T, bias, residual, out, mode)
