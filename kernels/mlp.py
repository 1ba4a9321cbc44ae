"""Element-wise pieces around the big matrix products: bias + exact GELU, bias + residual."""

import math

import numpy as np
from numba import prange

from ._jit import pjit
from .layernorm import _check, _vec

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


@pjit
def _bias_gelu(h, bias):
    rows, c = h.shape
    for r in prange(rows):
        for j in range(c):
            v = h[r, j] + bias[j]
            # spec 1.3: exact erf GELU, as nn.GELU() and HF's "gelu"; tanh would miss by ~2e-4
            h[r, j] = 0.5 * v * (1.0 + math.erf(v * _INV_SQRT2))


@pjit
def _bias_residual(x, y, bias):
    rows, c = x.shape
    for r in prange(rows):
        for j in range(c):
            x[r, j] += y[r, j] + bias[j]


def bias_gelu(h, bias):
    """In place: h = GELU(h + bias), the fc1 epilogue; h (M, H) float32."""
    _check(h, 2)
    _bias_gelu(h, _vec(bias, h.shape[1]))
    return h


def bias_residual(x, y, bias):
    """In place: x += y + bias, the epilogue of attn.proj and fc2; x, y (M, C) float32."""
    _check(x, 2)
    _check(y, 2)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {x.shape} vs {y.shape}")
    _bias_residual(x, y, _vec(bias, x.shape[1]))
    return x
