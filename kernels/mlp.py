"""The MLP's element-wise piece: bias + exact GELU, the fc1 epilogue (spec 1.3)."""

import math

import numpy as np
from numba import prange

from ._jit import jit, pjit
from .layernorm import _check, _vec

_INV_SQRT2 = 0.7071067811865476

# erf(x) = x * P(x^2) for |x| < _ERF_CUT and +-1 beyond: P is a degree-14 minimax fit made in float64 (Lawson
# reweighting in a Chebyshev basis); max |error| over all x, tail included, is 6.1e-8 (float32 erf spacing ~6e-8)
_ERF_CUT = 3.83  # tools/fit_erf.py reproduces the fit below
_ERF_P = (1.1283786772251396, -0.3761206976379684, 0.11281820180996813, -0.02683405119655443,
          0.005194015611791964, -0.0008369862693513183, 0.00011328449968588278, -1.280425314658645e-05,
          1.1870493385655485e-06, -8.78712642234216e-08, 5.017895680680455e-09, -2.112966795398455e-10,
          6.139053261042357e-12, -1.0940557529668605e-13, 8.983125005950985e-16)

# the bf16/int8 epilogues' float32 erf (kernels/amx.py): x * P1(x^2) below _ERF32_MID, P2((|x| - centre) / half-width)
# up to _ERF32_CUT, +-1 beyond; max |error| 1.3e-7 evaluated in float32 (tools/fit_erf.py --float32 reproduces it)
_ERF32_MID, _ERF32_CUT = 1.0, 3.92
_ERF32_P1 = (1.128379158411576, -0.37612605988542014, 0.11283430148424303, -0.026848592440095402,
             0.005179751594251469, -0.0007942374030962205, 7.6471763796586e-05)
_ERF32_P2 = (0.999496671404463, 0.0038780269165587106, -0.013931479359703541, 0.030602164775864256,
             -0.04500680308162478, 0.04508923401145484, -0.02869287803770128, 0.006556293140054993,
             0.008053955402565538, -0.009132926738569089, 0.0022942896291112264, 0.0016688942067747295,
             -0.0008634025428105233, -1.209759495968085e-05)


@jit
def _erf(x):
    # float64 arithmetic only (no libm call, no division): once inlined, LLVM vectorises the caller's loop
    t = x * x
    c = _ERF_P
    p = c[14]
    p = p * t + c[13]
    p = p * t + c[12]
    p = p * t + c[11]
    p = p * t + c[10]
    p = p * t + c[9]
    p = p * t + c[8]
    p = p * t + c[7]
    p = p * t + c[6]
    p = p * t + c[5]
    p = p * t + c[4]
    p = p * t + c[3]
    p = p * t + c[2]
    p = p * t + c[1]
    p = p * t + c[0]
    return math.copysign(1.0, x) if abs(x) >= _ERF_CUT else x * p  # NaN fails the test and stays NaN


@jit
def gelu(v):
    """Exact erf GELU of a float32 value, computed in float64 (spec 1.3: nn.GELU() and HF's "gelu";
    tanh would miss by ~2e-4); GELU(-inf) = 0, not -inf * 0; NaN stays NaN."""
    x = np.float64(v)
    g = 0.5 * x * (1.0 + _erf(x * _INV_SQRT2))
    return np.float32(g) if x != -np.inf else np.float32(0.0)


@pjit
def _bias_gelu(h, bias):
    rows, c = h.shape
    for r in prange(rows):
        for j in range(c):
            h[r, j] = gelu(h[r, j] + bias[j])


def bias_gelu(h, bias):
    """In place: h = GELU(h + bias), the fc1 epilogue; h (M, H) float32."""
    _check(h, 2)
    _bias_gelu(h, _vec(bias, h.shape[1]))
    return h
