"""Multi-head self-attention core: softmax(q k^T / sqrt(d)) v for every crop and head (spec 1.3)."""

import math

import numpy as np
from numba import prange

from . import gemm
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


# where the CPU has vector micro-kernels (kernels/gemm.py), both products run on them: scores on the GEMM's
# MR x NR tile, outputs on an MR x NRO tile narrow enough for head dims of 32, 64 and 80 (S, B/L, H)
_OUT_NV = {"avx512": 2, "avx2": 2, "neon": 3}
MR, NR = gemm.MR, gemm.NR
NRO = _OUT_NV.get(gemm.ISA, 1) * gemm.W
_scores_tile = gemm._tile
_output_tile = gemm._micro_kernel(MR, _OUT_NV[gemm.ISA], gemm.W) if gemm.OWN else None


@pjit
def _attention_tiled(qkv, bias, n, heads, out):
    rows, c3 = qkv.shape
    c = c3 // 3
    hd = c // heads
    scale = np.float32(1.0 / math.sqrt(hd))
    kpanels = (n + NR - 1) // NR
    nk = kpanels * NR  # keys padded to whole panels: their scores are computed and never read
    vpanels = (hd + NRO - 1) // NRO
    nd = vpanels * NRO
    for task in prange((rows // n) * heads):
        r0 = (task // heads) * n
        q0 = (task % heads) * hd  # spec 1.3: qkv rows are Q, K, V blocks, head-major inside each
        # one packing per (crop, head), the qkv bias added on the way (the official code scales q first):
        # q row-major (the broadcast side), keys as (hd, NR) panels, values as (n, NRO) panels
        q = np.empty(n * hd, np.float32)
        kp = np.zeros(kpanels * hd * NR, np.float32)
        vp = np.zeros(vpanels * n * NRO, np.float32)
        for j in range(n):
            for d in range(hd):
                q[j * hd + d] = (qkv[r0 + j, q0 + d] + bias[q0 + d]) * scale
                kp[((j // NR) * hd + d) * NR + j % NR] = qkv[r0 + j, c + q0 + d] + bias[c + q0 + d]
                vp[((d // NRO) * n + j) * NRO + d % NRO] = qkv[r0 + j, 2 * c + q0 + d] + bias[2 * c + q0 + d]
        s = np.empty(MR * nk, np.float32)
        o = np.empty(MR * nd, np.float32)
        inv = np.empty(MR, np.float32)
        bits = np.empty(n, np.int32)
        for i0 in range(0, n, MR):
            m = min(MR, n - i0)
            s[:] = 0.0
            for p in range(kpanels):  # (m, nk) scores
                _scores_tile(q, i0 * hd, m, hd, 1, hd, kp, p * hd * NR, s, p * NR, nk)
            for x in range(m):
                inv[x] = np.float32(1.0) / _softmax_numerator(s[x * nk:x * nk + n], bits)
            o[:] = 0.0
            for p in range(vpanels):  # (m, nd) unnormalised outputs
                _output_tile(s, 0, m, nk, 1, n, vp, p * n * NRO, o, p * NRO, nd)
            for x in range(m):
                for d in range(hd):
                    out[r0 + i0 + x, q0 + d] = o[x * nd + d] * inv[x]


def attention(qkv, tokens, heads, bias=None, out=None):
    """qkv (B*N, 3C) float32 as the qkv matrix product writes it, plus its bias (3C,) if given
    -> (B*N, C), heads concatenated in order."""
    _check(qkv, 2)
    rows, c3 = qkv.shape
    if c3 % 3 or (c3 // 3) % heads or rows % tokens:
        raise ValueError(f"qkv {qkv.shape} does not split into {heads} heads over {tokens} tokens")
    bias = np.zeros(c3, np.float32) if bias is None else _vec(bias, c3)
    if out is None:
        out = np.empty((rows, c3 // 3), np.float32)
    elif out.shape != (rows, c3 // 3) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 of shape {(rows, c3 // 3)}")
    (_attention_tiled if gemm.OWN else _attention)(qkv, bias, tokens, heads, out)
    return out
