"""fp32 linear layers: out = x @ w.T + bias, with GELU or a residual add fused into the epilogue.

The contract every precision module (gemm.py, gemm_bf16.py, gemm_int8.py) follows:
    pack_weight(w) -> packed    w (N, K) float32, the checkpoint's (out_features, in_features); once, at load
    linear(x, packed, bias=None, *, gelu=False, residual=None, out=None) -> (M, N) float32
        x (M, K) float32 C-contiguous; gelu: exact GELU after the bias; residual: out = residual + (x @ w.T + bias),
        where residual may be `out` itself (in-place accumulation into the residual stream).
"""

from typing import NamedTuple

import numpy as np
from numba import prange

from ._jit import pjit
from .layernorm import _check, _vec
from .mlp import _bias_gelu  # the one exact GELU of the project (spec 1.3)


class Packed(NamedTuple):
    w: np.ndarray  # (N, K) float32 C-contiguous: BLAS reads it transposed, no copy


def pack_weight(w):
    """Prepare an (N, K) float32 weight for `linear`."""
    w = np.asarray(w)
    if w.dtype != np.float32 or w.ndim != 2:
        raise ValueError(f"weight must be a 2-D float32 array, got {w.dtype} {w.shape}")
    return Packed(np.ascontiguousarray(w))


@pjit
def _bias_residual_into(y, bias, residual, out):
    rows, c = y.shape
    for r in prange(rows):
        for j in range(c):
            out[r, j] = residual[r, j] + (y[r, j] + bias[j])


@pjit
def _bias_into(y, bias):
    rows, c = y.shape
    for r in prange(rows):
        for j in range(c):
            y[r, j] += bias[j]


def linear(x, packed, bias=None, *, gelu=False, residual=None, out=None):
    """(M, K) @ (N, K).T + bias, then GELU or + residual: see the module docstring."""
    w = packed.w
    _check(x, 2)
    m, n = x.shape[0], w.shape[0]
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"x has {x.shape[1]} columns, the weight {w.shape[1]}")
    if gelu and residual is not None:
        raise ValueError("gelu and residual do not combine")
    bias = None if bias is None else _vec(bias, n)
    out = _output(out, m, n)
    if residual is not None:
        if residual.shape != (m, n) or residual.dtype != np.float32:
            raise ValueError(f"residual must be float32 {(m, n)}, got {residual.dtype} {residual.shape}")
        y = np.matmul(x, w.T)  # the residual may be `out`: the product needs its own buffer
        _bias_residual_into(y, _zeros(n) if bias is None else bias, residual, out)
        return out
    np.matmul(x, w.T, out=out)
    if gelu:
        _bias_gelu(out, _zeros(n) if bias is None else bias)
    elif bias is not None:
        _bias_into(out, bias)
    return out


def _zeros(n):
    return np.zeros(n, np.float32)


def _output(out, m, n):
    if out is None:
        return np.empty((m, n), np.float32)
    if out.shape != (m, n) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 {(m, n)} array, got {out.dtype} {out.shape}")
    return out
