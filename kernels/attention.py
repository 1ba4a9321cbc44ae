"""Multi-head self-attention core: softmax(q k^T / sqrt(d)) v for every crop and head (spec 1.3)."""

import math

import numpy as np
from numba import prange

from ._jit import pjit
from .layernorm import _check


@pjit
def _attention(qkv, n, heads, out):
    rows, c3 = qkv.shape
    c = c3 // 3
    hd = c // heads
    scale = np.float32(1.0 / math.sqrt(hd))
    for task in prange((rows // n) * heads):
        r0 = (task // heads) * n
        q0 = (task % heads) * hd  # spec 1.3: qkv rows are Q, K, V blocks, head-major inside each
        kt = np.empty((hd, n), np.float32)  # this head's keys, transposed so the score loop is unit-stride
        v = np.empty((n, hd), np.float32)
        for j in range(n):
            for d in range(hd):
                kt[d, j] = qkv[r0 + j, c + q0 + d]
                v[j, d] = qkv[r0 + j, 2 * c + q0 + d]
        s = np.empty(n, np.float32)
        o = np.empty(hd, np.float32)
        for i in range(n):
            s[:] = 0.0
            for d in range(hd):
                qd = qkv[r0 + i, q0 + d] * scale  # the official code scales q before q k^T
                for j in range(n):
                    s[j] += qd * kt[d, j]
            m = s.max()
            total = np.float32(0.0)
            for j in range(n):
                e = np.exp(s[j] - m)
                s[j] = e
                total += e
            o[:] = 0.0
            for j in range(n):
                p = s[j]
                for d in range(hd):
                    o[d] += p * v[j, d]
            inv = np.float32(1.0) / total
            for d in range(hd):
                out[r0 + i, q0 + d] = o[d] * inv


def attention(qkv, tokens, heads, out=None):
    """qkv (B*N, 3C) float32 as the qkv Linear writes it -> (B*N, C), heads concatenated in order."""
    _check(qkv, 2)
    rows, c3 = qkv.shape
    if c3 % 3 or (c3 // 3) % heads or rows % tokens:
        raise ValueError(f"qkv {qkv.shape} does not split into {heads} heads over {tokens} tokens")
    if out is None:
        out = np.empty((rows, c3 // 3), np.float32)
    _attention(qkv, tokens, heads, out)
    return out
