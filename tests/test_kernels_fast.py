"""The fast paths of the MLP and attention kernels: the polynomial erf and exp (scalar and vector), special values,
the register transpose, blocked-loop tails."""

import numpy as np
import pytest
from numba import njit
from scipy.special import erf

import twins
from npvitpose.kernels import attention, mlp

rng = np.random.default_rng(99)


@njit
def erf_all(x, out):
    for i in range(x.size):
        out[i] = mlp._erf(np.float64(x[i]))


def f32(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def test_erf_dense_grid_and_extremes():
    tiny = np.finfo(np.float32).smallest_subnormal
    edges = [0.0, -0.0, tiny, 1e-30, 1e-8, 3.8299999, 3.83, 3.8300001, 5.0, 1e30, 3.4e38]
    x = np.concatenate([np.linspace(-8.0, 8.0, 2_000_001), edges, np.negative(edges)]).astype(np.float32)
    got = np.empty(x.size)
    erf_all(x, got)
    # float32 erf values near 1 are 6e-8 apart: the fit stays within about one spacing
    assert np.abs(got - erf(x.astype(np.float64))).max() < 1e-7
    assert np.abs(got).max() == 1.0  # saturates exactly, never overshoots


def test_erf_special_values():
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)
    got = np.empty(x.size)
    erf_all(x, got)
    assert got[0] == 1.0 and got[1] == -1.0 and np.isnan(got[2])
    assert got[3] == 0.0 and got[4] == 0.0


def test_erf_is_odd():
    x = np.linspace(0.0, 5.0, 100_001).astype(np.float32)
    pos, neg = np.empty(x.size), np.empty(x.size)
    erf_all(x, pos)
    erf_all(-x, neg)
    assert np.array_equal(pos, -neg)


def test_gelu_dense_grid():
    v = np.linspace(-12.0, 12.0, 1_000_001).astype(np.float32)
    got = mlp.bias_gelu(v[None].copy(), np.zeros(v.size, np.float32))[0]
    want = twins.gelu(v)
    assert (np.abs(got - want) / np.maximum(1.0, np.abs(want))).max() < 2e-7


def test_gelu_limits_and_nan():
    v = np.array([[np.nan, np.inf, -np.inf, 3e38, -3e38, 30.0, -30.0, 0.0]], np.float32)
    got = mlp.bias_gelu(v.copy(), np.zeros(v.shape[1], np.float32))[0]
    assert np.isnan(got[0])
    assert got[1] == np.inf and got[2] == 0.0
    assert got[3] == np.float32(3e38) and got[4] == 0.0
    assert got[5] == 30.0 and got[6] == 0.0 and got[7] == 0.0


@pytest.mark.parametrize("rows,c", [(1, 1), (5, 17), (64, 3072)])
def test_gelu_with_bias_odd_shapes(rows, c):
    h, bias = f32(rows, c, scale=4.0), f32(c)
    want = twins.gelu(h.astype(np.float64) + bias)
    got = mlp.bias_gelu(h.copy(), bias)
    assert (np.abs(got - want) / np.maximum(1.0, np.abs(want))).max() < 2e-7


def test_softmax_numerator_matches_exp():
    # differences from the row max down to -100: below about -87 exp is under the float32 normals
    s = np.concatenate([rng.uniform(-100.0, 0.0, 4001), [0.0], rng.uniform(-1.0, 0.0, 50)]).astype(np.float32)
    s += np.float32(3.5)  # the max is subtracted inside
    got = s.copy()
    total = attention._softmax_numerator(got, np.empty(s.size, np.int32))
    want = np.exp(s.astype(np.float64) - s.max())
    normal = want > 1e-37
    assert (np.abs(got - want) / want)[normal].max() < 3e-7
    assert np.abs(got - want)[~normal].max() < 1e-37
    assert abs(total - want.sum()) < 1e-6 * want.sum()


def _softmax_driver(width):
    kernel = attention._softmax_kernel(width)

    @njit
    def run(s, rows, stride, n, inv):
        kernel(s, rows, stride, n, inv)
    return run


@pytest.mark.parametrize("width", [4, 8, 16])  # NEON, AVX2 and AVX-512 vectors: the IR is the same on every target
@pytest.mark.parametrize("n", [1, 5, 16, 17, 192, 193])
def test_vector_softmax_rows(width, n):
    # rows of spreads down to -100 (exp underflows below about -87), their stride rounded up to whole vectors; the
    # lanes past n hold garbage that must not reach the max or the sum
    rows, stride = 5, -(-n // width) * width
    s = np.full((rows, stride), 1e30, np.float32)
    s[:, :n] = rng.uniform(-100.0, 0.0, (rows, n)) + rng.uniform(-5.0, 5.0, (rows, 1))
    s[1, :n] = rng.uniform(-1.0, 1.0, n)
    s[2, n - 1] = np.nan  # a NaN score makes its own row NaN, and no other
    inv = np.empty(rows, np.float32)
    got = s.copy()
    _softmax_driver(width)(got.reshape(-1), rows, stride, n, inv)
    want = np.exp((s[:, :n] - s[:, :n].max(1, keepdims=True)).astype(np.float64))  # the kernel subtracts in float32
    normal = want > 1e-37
    ok = np.arange(rows) != 2
    assert (np.abs(got[:, :n] - want) / want)[normal & ok[:, None]].max() < 3e-7
    assert np.abs(got[:, :n] - want)[~normal & ok[:, None]].max(initial=0.0) < 1e-37
    assert np.abs(inv[ok] * want[ok].sum(1) - 1.0).max() < 1e-6
    assert np.isnan(inv[2])


def _transpose_driver(width):
    kernel = attention._transpose_kernel(width)

    @njit
    def run(src, s0, srs, bias, b0, dst, d0, drs):
        kernel(src, s0, srs, bias, b0, dst, d0, drs)
    return run


@pytest.mark.parametrize("width", [4, 8, 16])
def test_register_transpose(width):
    # one width x width block out of a wider array, bias added per source column, into rows of a wider panel
    src, bias = f32(width + 3, 2 * width + 5), f32(3 * width)
    dst = np.full((width + 2, 3 * width), np.nan, np.float32)
    _transpose_driver(width)(src, 1 * src.shape[1] + 2, src.shape[1], bias, 7, dst, 1 * dst.shape[1] + 4, dst.shape[1])
    want = dst.copy()
    want[1:1 + width, 4:4 + width] = (src[1:1 + width, 2:2 + width] + bias[7:7 + width]).T
    assert np.array_equal(dst, want, equal_nan=True)


@pytest.mark.parametrize("b,n,heads,hd", [(2, 9, 3, 4), (1, 13, 2, 8), (1, 4, 1, 1), (2, 1, 2, 2), (1, 193, 2, 17),
                                          (3, 6, 1, 9), (1, 50, 2, 80), (2, 35, 3, 48), (1, 25, 1, 96)])
def test_attention_block_tails(b, n, heads, hd):
    # token counts around the row blocks, tiles and panels, head dims off the vector width and the output tiles
    qkv = f32(b * n, 3 * heads * hd)
    assert np.abs(attention.attention(qkv, n, heads) - twins.attention(qkv, n, heads)).max() < 2e-6


def test_attention_peaked_scores():
    # score spreads over 100: rows are nearly one-hot and many exponentials underflow. Small integer q and k
    # with head dim 16 (scale 1/4) keep the float32 scores exact, so only the softmax itself can differ
    n, heads, hd = 192, 4, 16
    qkv = f32(2 * n, 3 * heads * hd)
    qkv[:, :2 * heads * hd] = rng.integers(-9, 10, (2 * n, 2 * heads * hd))
    want = twins.attention(qkv, n, heads)
    got = attention.attention(qkv, n, heads)
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()


def test_attention_writes_into_out():
    qkv = f32(2 * 7, 3 * 2 * 5)
    out = np.full((14, 10), np.nan, np.float32)
    assert attention.attention(qkv, 7, 2, out=out) is out
    assert np.abs(out - twins.attention(qkv, 7, 2)).max() < 2e-6


def test_attention_nan_stays_in_its_crop_and_head():
    n, heads, hd = 11, 3, 4
    qkv = f32(2 * n, 3 * heads * hd)
    want = twins.attention(qkv, n, heads)
    qkv[n + 5, heads * hd + 1 * hd + 2] = np.nan  # crop 1, head 1, one key entry
    got = attention.attention(qkv, n, heads)
    bad = np.zeros(got.shape, bool)
    bad[n:, hd:2 * hd] = True
    assert np.isnan(got[bad]).all()
    assert np.abs(got[~bad] - want[~bad]).max() < 2e-6
