"""fp32 linear layers: out = x @ w.T + bias, with GELU or a residual add fused into the epilogue.

The contract every precision module (gemm.py, gemm_bf16.py, gemm_int8.py) follows:
    pack_weight(w) -> packed    w (N, K) float32, the checkpoint's (out_features, in_features); once, at load
    linear(x, packed, bias=None, *, norm=None, gelu=False, residual=None, out=None) -> (M, N) float32
        x (M, K) float32 C-contiguous; norm: (gamma, beta, eps), the layer norm applied to x's rows first (fused: each
        task normalises its own rows into its packed copy, kernels/layernorm.py's arithmetic); gelu: exact GELU after
        the bias; residual: out = residual + (x @ w.T + bias), where residual may be `out` itself (in-place
        accumulation into the residual stream).

Where the CPU has wide vectors (kernels/cpu.py), the weight is packed at load into panels of NR output
columns, k-major ([N/NR, K, NR]); x is read in place (copying it into k-major row tiles first was never faster,
0.83-1.03x the time, docs/gemm.md); a register-blocked MR x NR micro-kernel written in LLVM IR (explicit
<W x float> vectors, llvm.fmuladd) accumulates MR rows of x against one panel, KC steps of k at a time, in one
parallel region;
bias, GELU or the residual are applied as each finished tile leaves the accumulators. Elsewhere (NUMBA_CPU_NAME=generic, unknown CPUs) NumPy's BLAS does the product.
"""

import threading
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import cpu
from ._jit import jit, pjit
from .layernorm import _check, _normalize, _vec, check_norm, layernorm
from .mlp import gelu as _gelu

# (MR rows, NV vectors of W floats): MR * NV accumulators, NV weight vectors and one broadcast stay in
# registers (32 zmm for AVX-512 and 32 q for NEON, 16 ymm for AVX2); tools/gemm_table.py measures them
TILES = {"avx512": (8, 3, 16), "avx2": (6, 2, 8), "neon": (8, 3, 4)}
KC = 128  # k steps per pass: one panel's KC x NR slice (24 KiB) stays in L1 while MC rows of x stream past it
MC = 96  # rows per task: half a crop; MC x KL of packed x and the accumulators stay in L2 (fc2 K=3072 needed it)
KL = 768  # k steps per sweep over a task's panels: MC x KL of packed x (288 KiB) stays in L2

ISA = cpu.ISA
MR, NV, W = TILES.get(ISA, (1, 1, 1))
NR = NV * W
OWN = ISA in TILES  # the micro-kernel is only ever compiled when the CPU has the vectors it assumes


class Packed(NamedTuple):
    n: int  # output features
    k: int  # input features
    w: np.ndarray  # (N, K) float32 for BLAS (it reads it transposed, no copy), where there is no micro-kernel
    panels: np.ndarray = None  # (ceil(N/NR), K, NR) float32 for the micro-kernel, where the CPU has one


def pack_weight(w):
    """Prepare an (N, K) float32 weight for `linear`: panels for the micro-kernel (the only copy kept: at
    16 crops the micro-kernel is within the noise of OpenBLAS, docs/gemm.md), or as is for BLAS."""
    w = np.asarray(w)
    if w.dtype != np.float32 or w.ndim != 2:
        raise ValueError(f"weight must be a 2-D float32 array, got {w.dtype} {w.shape}")
    n, k = w.shape
    w = np.ascontiguousarray(w)
    if not OWN:
        return Packed(n, k, w)
    full, rest = divmod(n, NR)
    out = aligned((full + (rest > 0), k, NR))
    out[:full] = w[:full * NR].reshape(full, NR, k).transpose(0, 2, 1)
    if rest:
        out[full, :, :rest] = w[full * NR:].T
        out[full, :, rest:] = 0.0  # the last panel's missing columns: computed, never written out
    return Packed(n, k, None, out)


_local = threading.local()


def _scratch(size, use="acc"):
    """A 64-byte-aligned float32 buffer of `size`, one per use, reused by this thread's calls (an allocation costs
    ~10 us, a large one its page faults too)."""
    buf = getattr(_local, use, None)
    if buf is None or buf.size < size:
        buf = aligned((size,))
        setattr(_local, use, buf)
    return buf[:size]


def aligned(shape, dtype=np.float32):
    """An uninitialised array starting on a 64-byte line: a vector or tile load from a misaligned buffer
    straddles two cache lines (NumPy's large allocations start 16 bytes into a page)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def linear(x, packed, bias=None, *, norm=None, gelu=False, residual=None, out=None):
    """norm(M, K) @ (N, K).T + bias, then GELU or + residual: see the module docstring."""
    _check(x, 2)
    m, n = x.shape[0], packed.n
    if x.shape[1] != packed.k:
        raise ValueError(f"x has {x.shape[1]} columns, the weight {packed.k}")
    if gelu and residual is not None:
        raise ValueError("gelu and residual do not combine")
    bias = np.zeros(n, np.float32) if bias is None else _vec(bias, n)
    out = _output(out, m, n)
    if residual is not None and (residual.shape != (m, n) or residual.dtype != np.float32):
        raise ValueError(f"residual must be float32 {(m, n)}, got {residual.dtype} {residual.shape}")
    mode = _GELU if gelu else _RESIDUAL if residual is not None else _BIAS
    residual = out if residual is None else residual
    gamma, beta, eps, fused = check_norm(norm, packed.k)
    if m == 0 or n == 0:
        return out
    if packed.panels is not None:
        mblocks = -(-m // MC)
        threads = numba.get_num_threads()
        groups = 1 if mblocks >= 4 * threads else min(packed.panels.shape[0], -(-2 * threads // mblocks))
        per = (-(-packed.panels.shape[0] // groups) if packed.k > KL else 1) * MC * NR  # one task's accumulators
        tasks, k = mblocks * groups, packed.k
        rows = _scratch(tasks * MC * k if fused else k, "rows").reshape(-1, MC if fused else 1, k)
        _gemm(x, m, packed.panels, bias, residual, mode, groups, _scratch(tasks * per).reshape(-1, per),
              gamma, beta, eps, fused, rows, out)
        return out
    if fused:
        x = layernorm(x, gamma, beta, eps, out=_scratch(x.size, "rows").reshape(x.shape))
    if mode == _RESIDUAL:
        y = np.matmul(x, packed.w.T)  # the residual may be `out`: the product needs its own buffer
        _epilogue_rows(y, bias, residual, mode, out)
    else:
        np.matmul(x, packed.w.T, out=out)
        _epilogue_rows(out, bias, residual, mode, out)
    return out


_BIAS, _GELU, _RESIDUAL = 0, 1, 2


def _output(out, m, n):
    if out is None:
        return np.empty((m, n), np.float32)
    if out.shape != (m, n) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 {(m, n)} array, got {out.dtype} {out.shape}")
    return out


@pjit
def _epilogue_rows(y, bias, residual, mode, out):
    rows, c = y.shape
    for r in prange(rows):
        for j in range(c):
            v = y[r, j] + bias[j]
            if mode == _GELU:
                v = _gelu(v)
            elif mode == _RESIDUAL:
                v = residual[r, j] + v  # the order of the unfused forward: x += (x @ w.T + b)
            out[r, j] = v


def _micro_kernel(mr, nv, width):
    """An intrinsic tile(a, a0, rows, rs, ks, kc, panels, b0, acc, c0, crs) for C-contiguous float32 arrays,
    indexing their flat data: acc[c0 + i * crs + j] += sum over k < kc of a[a0 + i * rs + k * ks] *
    panels[b0 + k * nr + j], for i < mr, j < nr = nv * width. Rows i >= rows repeat row rows - 1 (so they
    read nothing beyond a's rows); the caller never writes their results out."""
    nr = nv * width

    @intrinsic
    def tile(typingctx, a, a0, rows, rs, ks, kc, panels, b0, acc, c0, crs):
        sig = types.void(a, a0, rows, rs, ks, kc, panels, b0, acc, c0, crs)

        def codegen(context, builder, signature, args):
            i64, f32 = ir.IntType(64), ir.FloatType()
            vec = ir.VectorType(f32, width)
            a0, rows, rs, ks, kc, b0, c0, crs = (context.cast(builder, args[i], signature.args[i], types.int64)
                                                 for i in (1, 2, 3, 4, 5, 7, 9, 10))

            def data(i):
                return context.make_array(signature.args[i])(context, builder, args[i]).data

            last = builder.sub(rows, ir.Constant(i64, 1))
            arows = []
            for i in range(mr):
                r = builder.select(builder.icmp_signed("<", ir.Constant(i64, i), rows), ir.Constant(i64, i), last)
                arows.append(builder.gep(data(0), [builder.add(a0, builder.mul(r, rs))]))
            bptr = builder.gep(data(6), [b0])
            cptr = builder.gep(data(8), [c0])

            def vector_at(base, index):
                return builder.bitcast(builder.gep(base, [index]), vec.as_pointer())

            slots = [[vector_at(cptr, builder.add(builder.mul(ir.Constant(i64, i), crs), ir.Constant(i64, v * width)))
                      for v in range(nv)] for i in range(mr)]
            start = [[builder.load(p, align=4) for p in line] for line in slots]
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                                 f"llvm.fmuladd.v{width}f32")
            entry = builder.block
            loop, done = builder.append_basic_block("tile.loop"), builder.append_basic_block("tile.done")
            builder.cbranch(builder.icmp_signed(">", kc, ir.Constant(i64, 0)), loop, done)
            builder.position_at_end(loop)
            k = builder.phi(i64)
            accs = [[builder.phi(vec) for _ in range(nv)] for _ in range(mr)]
            bk = builder.mul(k, ir.Constant(i64, nr))
            wv = [builder.load(vector_at(bptr, builder.add(bk, ir.Constant(i64, v * width))), align=4)
                  for v in range(nv)]
            undef, lane0 = ir.Constant(vec, ir.Undefined), ir.Constant(ir.IntType(32), 0)
            splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), width), None)
            new = []
            for i in range(mr):
                s = builder.load(builder.gep(arows[i], [builder.mul(k, ks)]), align=4)
                s = builder.shuffle_vector(builder.insert_element(undef, s, lane0), undef, splat_mask)  # a(i, k) x nr
                new.append([builder.call(fma, [s, wv[v], accs[i][v]]) for v in range(nv)])
            k_next = builder.add(k, ir.Constant(i64, 1))
            k.add_incoming(ir.Constant(i64, 0), entry)
            k.add_incoming(k_next, loop)
            for i in range(mr):
                for v in range(nv):
                    accs[i][v].add_incoming(start[i][v], entry)
                    accs[i][v].add_incoming(new[i][v], loop)
            builder.cbranch(builder.icmp_signed("<", k_next, kc), loop, done)
            builder.position_at_end(done)
            finals = []
            for i in range(mr):
                for v in range(nv):
                    finals.append(builder.phi(vec))  # every phi before the first store: LLVM wants them first
                    finals[-1].add_incoming(start[i][v], entry)
                    finals[-1].add_incoming(new[i][v], loop)
            for final, slot in zip(finals, (p for line in slots for p in line)):
                builder.store(final, slot, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile = _micro_kernel(MR, NV, W) if OWN else None


def prefetch_intrinsic(write, locality):
    """An intrinsic prefetch(a, index) asking for the cache line of a's flat element `index` (llvm.prefetch:
    for reading or writing; locality 3 = every level, 2 = L2 and out); a no-op where the CPU has none."""
    @intrinsic
    def prefetch(typingctx, a, index):
        sig = types.void(a, index)

        def codegen(context, builder, signature, args):
            i32, i8p = ir.IntType(32), ir.IntType(8).as_pointer()
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            ptr = builder.gep(data, [context.cast(builder, args[1], signature.args[1], types.int64)])
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                                "llvm.prefetch.p0")
            builder.call(fn, [builder.bitcast(ptr, i8p)] + [ir.Constant(i32, v) for v in (int(write), locality, 1)])
            return context.get_dummy_value()

        return sig, codegen

    return prefetch


_prefetch = prefetch_intrinsic(write=False, locality=2)  # the next weight slice, into L2
prefetch_write = prefetch_intrinsic(write=True, locality=3)  # output lines ahead of an epilogue (prefetchw)


@pjit
def _gemm(x, m, panels, bias, residual, mode, groups, accs, gamma, beta, eps, fused, normed, out):
    npanels, k = panels.shape[0], panels.shape[1]
    mblocks = (m + MC - 1) // MC
    for task in prange(mblocks * groups):  # one crop's rows x a range of panels
        m0 = (task % mblocks) * MC
        rows = min(MC, m - m0)
        group = task // mblocks
        src, s0 = x, m0 * k  # the task's rows: x's, or their layer norm in the task's own copy
        if fused:
            src, s0 = normed[task], 0
            for i in range(rows):
                _normalize(x, gamma, beta, eps, src, m0 + i, i)
        first, last = group * npanels // groups, (group + 1) * npanels // groups
        acc = accs[task]  # MC x NR accumulators per panel of the group (one, reused, in a single sweep), aligned
        span = last - first if k > KL else 1
        for kl in range(0, k, KL):
            for p in range(first, last):
                a0 = (p - first) % span * MC * NR
                if kl == 0:
                    acc[a0:a0 + MC * NR] = 0.0
                for k0 in range(kl, min(kl + KL, k), KC):
                    kc = min(KC, k - k0)
                    # the weight slice after this one (the next k0 of this panel, the next panel, the next sweep)
                    # is fetched into L2 a share per tile: weights stream from memory, each used once per task
                    nxt = -1
                    if k0 + KC < min(kl + KL, k):
                        nxt = (p * k + k0 + KC) * NR
                    elif p + 1 < last:
                        nxt = ((p + 1) * k + kl) * NR
                    elif kl + KL < k:
                        nxt = (first * k + kl + KL) * NR
                    lines = KC * NR // 16 if nxt >= 0 else 0  # 64-byte lines
                    share = -(-lines // -(-rows // MR))
                    for i0 in range(0, rows, MR):
                        _tile(src, s0 + i0 * k + k0, min(MR, rows - i0), k, 1, kc, panels, (p * k + k0) * NR,
                              acc, a0 + i0 * NR, NR)
                        for line in range(i0 // MR * share, min(lines, (i0 // MR + 1) * share)):
                            _prefetch(panels, min(nxt + 16 * line, panels.size - 1))
                if kl + KL >= k:  # the panel's last sweep: apply the epilogue while its tile is warm
                    _flush(acc, a0, rows, p * NR, m0, bias, residual, mode, out)


@jit
def _flush(acc, a0, rows, c0, m0, bias, residual, mode, out):
    w = min(NR, out.shape[1] - c0)
    b = bias[c0:c0 + w]
    for i in range(rows):  # contiguous row slices, one loop per mode: LLVM vectorises each
        o, a = out[m0 + i, c0:c0 + w], acc[a0 + i * NR:a0 + i * NR + w]
        if mode == _GELU:
            for j in range(w):
                o[j] = _gelu(a[j] + b[j])
        elif mode == _RESIDUAL:
            r = residual[m0 + i, c0:c0 + w]
            for j in range(w):
                o[j] = r[j] + (a[j] + b[j])  # the order of the unfused forward: x += (x @ w.T + b)
        else:
            for j in range(w):
                o[j] = a[j] + b[j]
