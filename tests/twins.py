"""Plain NumPy twins of the Numba kernels, written from the spec's formulas, in float64."""

import numpy as np
from scipy.special import erf


def layernorm(x, gamma, beta, eps):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)  # biased variance
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def attention(qkv, tokens, heads):
    rows, c3 = qkv.shape
    c, b = c3 // 3, rows // tokens
    hd = c // heads
    q, k, v = (qkv[:, i * c:(i + 1) * c].astype(np.float64).reshape(b, tokens, heads, hd).transpose(0, 2, 1, 3)
               for i in range(3))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ v).transpose(0, 2, 1, 3).reshape(rows, c)


def attention_bf16(qkv, tokens, heads, bias):
    """kernels/attention_bf16.py's arithmetic: q (biased, scaled in float32) and k rounded to bf16, scores and
    softmax in float64, the unnormalised probabilities and v rounded to bf16, p v over the float64 sum."""
    rows, c3 = qkv.shape
    c, b = c3 // 3, rows // tokens
    hd = c // heads
    x = qkv + bias  # float32, as the kernel adds the bias
    q, k, v = (x[:, i * c:(i + 1) * c].reshape(b, tokens, heads, hd).transpose(0, 2, 1, 3) for i in range(3))
    q, k, v = bf16(q * np.float32(1.0 / np.sqrt(hd))), bf16(k), bf16(v)
    s = q @ k.transpose(0, 1, 3, 2)
    e = np.exp(s - s.max(-1, keepdims=True))
    return ((bf16(e) @ v) / e.sum(-1, keepdims=True)).transpose(0, 2, 1, 3).reshape(rows, c)


def gelu(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def patch_embed_conv(pixels, weight, bias):
    """16x16 conv, stride 16, padding 2 -> (B, Hp*Wp, C) tokens, row-major over the grid."""
    b, ch, h, w = pixels.shape
    p = np.zeros((b, ch, h + 4, w + 4))
    p[:, :, 2:-2, 2:-2] = pixels
    hp, wp = (h + 4 - 16) // 16 + 1, (w + 4 - 16) // 16 + 1
    patches = p[:, :, :hp * 16, :wp * 16].reshape(b, ch, hp, 16, wp, 16)
    out = np.einsum("bcyixj,ocij->byxo", patches, weight.astype(np.float64)) + bias
    return out.reshape(b, hp * wp, -1)


def conv_transpose(x, weight):
    """ConvTranspose2d(k=4, s=2, p=1) by its scatter definition; x (B, Cin, H, W), weight (Cin, Cout, 4, 4)."""
    b, cin, h, w = x.shape
    cout = weight.shape[1]
    full = np.zeros((b, cout, 2 * h + 2, 2 * w + 2))  # output index o = 2i - 1 + k, shifted by +1
    for ky in range(4):
        for kx in range(4):
            full[:, :, ky:ky + 2 * h:2, kx:kx + 2 * w:2] += np.einsum("bchw,co->bohw", x, weight[:, :, ky, kx])
    return full[:, :, 1:2 * h + 1, 1:2 * w + 1]


def batchnorm(x, mean, var, gamma, beta, eps=1e-5):
    """Eval-mode BatchNorm2d on (B, C, H, W)."""
    s = (slice(None), None, None)
    return (x - mean[s]) / np.sqrt(var[s] + eps) * gamma[s] + beta[s]


def upsample_bilinear(x, factor=4):
    """F.interpolate(bilinear, align_corners=False) on (B, C, H, W), per axis as a matrix."""
    def axis_matrix(n):
        m = np.zeros((n * factor, n))
        for d in range(n * factor):
            s = max((d + 0.5) / factor - 0.5, 0.0)
            i0 = int(np.floor(s))
            i1 = min(i0 + 1, n - 1)
            m[d, i0] += 1 - (s - i0)
            m[d, i1] += s - i0
        return m
    my, mx = axis_matrix(x.shape[2]), axis_matrix(x.shape[3])
    return np.einsum("yh,bchw,xw->bcyx", my, x, mx)


def conv2d(x, weight, bias):
    """Conv2d, stride 1, 'same' padding; x (B, C, H, W), weight (K, C, kh, kw)."""
    k, c, kh, kw = weight.shape
    b, _, h, w = x.shape
    p = np.zeros((b, c, h + kh - 1, w + kw - 1))
    p[:, :, kh // 2:kh // 2 + h, kw // 2:kw // 2 + w] = x
    out = np.zeros((b, k, h, w))
    for dy in range(kh):
        for dx in range(kw):
            out += np.einsum("bchw,kc->bkhw", p[:, :, dy:dy + h, dx:dx + w], weight[:, :, dy, dx])
    return out + bias[None, :, None, None]


def linear(x, w, bias=None, gelu=False, residual=None):
    """nn.Linear (x @ w.T + bias) in float64, then exact GELU or + residual."""
    y = x.astype(np.float64) @ w.astype(np.float64).T
    if bias is not None:
        y += bias
    if gelu:
        y = 0.5 * y * (1.0 + erf(y / np.sqrt(2.0)))
    if residual is not None:
        y += residual
    return y


def bf16(x):
    """float32 -> bfloat16 (round to nearest even) -> float64, by arithmetic on frexp's mantissa, not on bits
    (normal numbers only: bf16 keeps 8 significant bits)."""
    x = np.asarray(x, np.float64)
    m, e = np.frexp(x)  # x = m * 2**e, 0.5 <= |m| < 1; bf16 keeps 8 significant bits
    return np.ldexp(np.round(m * 256.0), e - 8)  # np.round: half to even


def int8_weight(w):
    """Symmetric per-output-channel int8: (q (N, K), scale (N,)) with w ~ q * scale."""
    w = np.asarray(w, np.float64)
    scale = np.abs(w).max(1) / 127
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(w / scale[:, None]), -127, 127), scale


def uint8_rows(x):
    """Asymmetric per-row uint8 over [min(x, 0), max(x, 0)]: (u (M, K), scale (M,), zero point (M,))."""
    x = np.asarray(x, np.float64)
    lo, hi = np.minimum(x.min(1), 0), np.maximum(x.max(1), 0)
    scale = np.where(hi > lo, (hi - lo) / 255, 1.0)
    zero = np.round(-lo / scale)
    return np.clip(np.round(x * (1 / scale)[:, None]) + zero[:, None], 0, 255), scale, zero


def int8_linear(x, w, bias=None, gelu=False, residual=None):
    """x @ w.T through the int8 quantisation, the integer products summed exactly (int64)."""
    q, sw = int8_weight(w)
    u, sx, zx = uint8_rows(x)
    acc = (u.astype(np.int64) - zx.astype(np.int64)[:, None]) @ q.astype(np.int64).T
    return linear(acc * (sx[:, None] * sw), np.eye(len(sw)), bias, gelu, residual)  # the epilogue on the exact sums
