"""Layer norm over the last axis (spec 1.3: biased variance, eps from the checkpoint's format)."""

import numpy as np
from numba import prange

from ._jit import jit, pjit


# up to this many values one thread is faster than a parallel launch (~65 us to wake the pool's threads):
# one crop of ViT-S 21 against 68-84 us, of ViT-H 63 against 102; even at 4 crops of ViT-B (590k), 16 of S 377 against 297
SERIAL_MAX = 1 << 19


@jit
def _normalize(x, gamma, beta, eps, out, r, o):
    """out[o, :C] = the layer norm of x[r] (C = x's columns)."""
    c = x.shape[1]
    # float64 accumulation, two passes: small-variance inputs keep their digits (spec 9 trap 3)
    s = 0.0
    for j in range(c):
        s += x[r, j]
    mean = s / c
    v = 0.0
    for j in range(c):
        d = x[r, j] - mean
        v += d * d
    inv = np.sqrt(1.0 / (v / c + eps))  # not 1 / sqrt: reassoc lets LLVM turn `* inv` into a divide per element (1.4x)
    for j in range(c):
        out[o, j] = (x[r, j] - mean) * inv * gamma[j] + beta[j]


@pjit
def _layernorm(x, gamma, beta, eps, out):
    for r in prange(x.shape[0]):
        _normalize(x, gamma, beta, eps, out, r, r)


@jit
def _layernorm_small(x, gamma, beta, eps, out):
    for r in range(x.shape[0]):
        _normalize(x, gamma, beta, eps, out, r, r)


def layernorm(x, gamma, beta, eps, out=None):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta over the last axis; x (M, C) float32."""
    _check(x, 2)
    if out is None:
        out = np.empty_like(x)
    elif out.shape != x.shape:
        raise ValueError(f"out has shape {out.shape}, expected {x.shape}")
    _check(out, 2)
    run = _layernorm_small if x.size <= SERIAL_MAX else _layernorm
    run(x, _vec(gamma, x.shape[1]), _vec(beta, x.shape[1]), float(eps), out)
    return out


def check_norm(norm, k):
    """A linear layer's `norm` argument: None, or (gamma, beta, eps) of a layer norm over its k inputs, applied
    to x's rows before the product -> (gamma, beta, eps, fused) as the kernels take them."""
    if norm is None:
        return np.ones(1, np.float32), np.zeros(1, np.float32), 0.0, False
    gamma, beta, eps = norm
    return _vec(gamma, k), _vec(beta, k), float(eps), True


def _check(x, ndim):
    if x.dtype != np.float32 or x.ndim != ndim or not x.flags.c_contiguous:
        raise ValueError(f"expected a C-contiguous float32 array of {ndim} dims, got {x.dtype} {x.shape}")


def _vec(v, n):
    v = np.ascontiguousarray(v, dtype=np.float32)
    if v.shape != (n,):
        raise ValueError(f"expected a vector of {n}, got {v.shape}")
    return v
