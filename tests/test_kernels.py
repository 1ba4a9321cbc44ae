"""Each Numba kernel against its plain NumPy twin, at tiny odd shapes and at real ViT-B shapes."""

import numpy as np
import pytest

import twins
from npvitpose.kernels import attention, head, layernorm, mlp, patch_embed

rng = np.random.default_rng(1234)


def f32(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


# the last shape is past SERIAL_MAX: the parallel build
@pytest.mark.parametrize("rows,c,eps", [(7, 5, 1e-6), (3 * 192, 768, 1e-6), (33, 1280, 1e-12), (600, 1000, 1e-6)])
def test_layernorm(rows, c, eps):
    x, g, b = f32(rows, c, scale=3.0) + 2.0, f32(c), f32(c)
    assert rel_err(layernorm.layernorm(x, g, b, eps), twins.layernorm(x, g, b, eps)) < 2e-6


def test_layernorm_small_variance_uses_eps():
    # variance ~1e-8, comparable with eps: the result must depend on eps exactly as the formula says
    x = (1.0 + 1e-4 * rng.standard_normal((5, 384))).astype(np.float32)
    g, b = np.ones(384, np.float32), np.zeros(384, np.float32)
    for eps in (1e-6, 1e-12):
        assert rel_err(layernorm.layernorm(x, g, b, eps), twins.layernorm(x, g, b, eps)) < 1e-5
    assert rel_err(layernorm.layernorm(x, g, b, 1e-6), twins.layernorm(x, g, b, 1e-12)) > 1e-2


@pytest.mark.parametrize("b,n,heads,hd", [(1, 5, 1, 3), (3, 7, 2, 5), (2, 192, 12, 64), (1, 192, 12, 32), (1, 192, 16, 80)])
def test_attention(b, n, heads, hd):
    qkv = f32(b * n, 3 * heads * hd)
    got = attention.attention(qkv, n, heads)
    assert got.shape == (b * n, heads * hd)
    assert rel_err(got, twins.attention(qkv, n, heads)) < 1e-5


def test_attention_rejects_bad_split():
    with pytest.raises(ValueError):
        attention.attention(f32(10, 9), 5, 2)


@pytest.mark.parametrize("rows,c", [(3, 7), (192, 3072)])
def test_bias_gelu(rows, c):
    h, bias = f32(rows, c, scale=3.0), f32(c)
    want = twins.gelu(h.astype(np.float64) + bias)
    got = mlp.bias_gelu(h.copy(), bias)
    assert np.abs(got - want).max() < 2e-6 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("b,h,w,c", [(1, 35, 21, 4), (2, 256, 192, 768)])
def test_patch_embedding(b, h, w, c):
    pixels = f32(b, 3, h, w)
    weight, bias = f32(c, 3, 16, 16, scale=0.05), f32(c)
    want = twins.patch_embed_conv(pixels, weight, bias)
    pos = f32(want.shape[1], c)
    got = patch_embed.embed(pixels, patch_embed.embed_weight(weight), bias, pos).reshape(b, -1, c)
    assert got.shape == want.shape
    assert rel_err(got, want + pos) < 1e-5


def test_patch_grid_keeps_padding_two():
    assert patch_embed.grid(256, 192) == (16, 12)
    # a single bright pixel at (2, 2) lands in patch 0 at kernel offset (4, 4): padding is 2, not 0
    pixels = np.zeros((1, 1, 32, 32), np.float32)
    pixels[0, 0, 2, 2] = 1.0
    cols = patch_embed.im2col(pixels)
    assert cols[0, 4 * 16 + 4] == 1.0 and cols.sum() == 1.0


@pytest.mark.parametrize("windows", [False, True])  # both forms of the product at every shape
@pytest.mark.parametrize("b,h,w,cin,cout", [(1, 3, 5, 4, 3), (2, 16, 12, 768, 256), (3, 32, 24, 16, 256), (1, 1, 1, 2, 5)])
def test_deconv(b, h, w, cin, cout, windows):
    x, weight, bias = f32(b, h, w, cin), f32(cin, cout, 4, 4, scale=0.05), f32(cout)
    deconv = head.deconv_weight(weight, windows)
    got = head.deconv4x4s2(x, deconv, bias)  # (B, 2H, 2W, Cout)
    want = twins.conv_transpose(x.transpose(0, 3, 1, 2).astype(np.float64), weight) + bias[None, :, None, None]
    assert rel_err(got.transpose(0, 3, 1, 2), want) < 1e-5
    relu = head.deconv4x4s2(x, deconv, bias, relu=True)
    # scaled by the pre-ReLU output: a tiny case can be all negative, depending on the tests run before it
    assert np.abs(relu.transpose(0, 3, 1, 2) - np.maximum(want, 0)).max() < 1e-5 * np.abs(want).max()


def test_deconv_chunks_and_nan():
    # more crops than one chunk of the products (_COLS_BYTES: 1 crop per chunk for taps, 2 for windows), and
    # NaN kept by the fused ReLU
    x, weight, bias = f32(3, 32, 24, 8), f32(8, 256, 4, 4, scale=0.05), f32(256)
    x[2, 5, 7, 0] = np.nan  # in the last chunk
    want = twins.conv_transpose(x.transpose(0, 3, 1, 2).astype(np.float64), weight) + bias[None, :, None, None]
    for windows in (False, True):
        got = head.deconv4x4s2(x, head.deconv_weight(weight, windows), bias, relu=True).transpose(0, 3, 1, 2)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        assert np.abs(got[ok] - np.maximum(want[ok], 0)).max() < 1e-5 * np.abs(want[ok]).max()


def test_batchnorm_kernel_and_fold():
    b, h, w, cin, cout = 2, 4, 3, 6, 5
    x, weight = f32(b, h, w, cin), f32(cin, cout, 4, 4)
    mean, var, gamma, beta = f32(cout), rng.uniform(0.2, 2, cout).astype(np.float32), f32(cout), f32(cout)
    conv = twins.conv_transpose(x.transpose(0, 3, 1, 2).astype(np.float64), weight)
    want = twins.batchnorm(conv, mean, var, gamma, beta)
    plain = head.deconv4x4s2(x, head.deconv_weight(weight), np.zeros(cout, np.float32))
    assert rel_err(head.batchnorm(plain, mean, var, gamma, beta).transpose(0, 3, 1, 2), want) < 1e-5
    wf, bf = head.fold_batchnorm(weight, mean, var, gamma, beta)
    folded = head.deconv4x4s2(x, head.deconv_weight(wf), bf)
    assert rel_err(folded.transpose(0, 3, 1, 2), want) < 1e-5


@pytest.mark.parametrize("b,h,w,c", [(1, 3, 2, 5), (2, 16, 12, 768)])
def test_upsample(b, h, w, c):
    x = f32(b, h, w, c)
    want = twins.upsample_bilinear(x.transpose(0, 3, 1, 2).astype(np.float64))
    assert rel_err(head.upsample4(x).transpose(0, 3, 1, 2), want) < 1e-6
    want_relu = twins.upsample_bilinear(np.maximum(x, 0).transpose(0, 3, 1, 2).astype(np.float64))
    assert rel_err(head.upsample4(x, relu=True).transpose(0, 3, 1, 2), want_relu) < 1e-6


@pytest.mark.parametrize("b,h,w,c,k", [(1, 3, 2, 5, 2), (2, 16, 12, 768, 17), (1, 16, 12, 96, 133)])
def test_simple_head(b, h, w, c, k):
    # ReLU, bilinear x4, 3x3 conv (spec 2.2), computed as channel mix first, then upsample4_conv3x3
    x, weight, bias = f32(b, h, w, c), f32(k, c, 3, 3, scale=0.05), f32(k)
    z = (np.maximum(x, 0).reshape(-1, c) @ head.conv3x3_weight(weight).T).reshape(b, h, w, 9, k)
    want = twins.conv2d(twins.upsample_bilinear(np.maximum(x, 0).transpose(0, 3, 1, 2).astype(np.float64)),
                        weight, bias)
    assert rel_err(head.upsample4_conv3x3(z, bias), want) < 1e-5


def test_kernels_reject_wrong_dtype():
    with pytest.raises(ValueError):
        layernorm.layernorm(np.zeros((2, 3)), np.ones(3), np.zeros(3), 1e-6)
    with pytest.raises(ValueError):
        head.upsample4(np.zeros((1, 2, 2, 3), np.float32)[:, :, ::-1])
