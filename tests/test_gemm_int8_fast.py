"""The int8 kernel's AVX512-VNNI path (vectorised quantisation, float32 epilogue in registers) against NumPy twins."""

import numpy as np
import pytest
import torch

import twins
from test_gemm_lowp import case, rel
from npvitpose.kernels import gemm_int8

pytestmark = pytest.mark.skipif(not gemm_int8.FAST, reason="no AVX512-VNNI on this CPU")


@pytest.fixture(autouse=True)
def avx512(monkeypatch):
    monkeypatch.setattr(gemm_int8, "AMX", False)


def quantised(x, n=48):
    """The u8 rows, scales and zero points the kernel's parallel pass leaves in its buffers."""
    m, k = x.shape
    packed = gemm_int8.pack_weight(np.ones((n, k), np.float32))
    a, sz, ends, bad, edge, normed, chunk, groups = gemm_int8._buffers(m, packed)
    out = np.empty((m, n), np.float32)
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    gemm_int8._gemm(x, a, sz, ends, bad, packed.panels, packed.scale, packed.colsum, np.zeros(n, np.float32),
                    out, out, 0, chunk, groups, edge, one, zero, 0.0, False, normed)
    kp = 4 * packed.panels.shape[1]
    rows = [min(chunk, m - t * chunk) for t in range(-(-m // chunk))]
    u = np.concatenate([a[t].reshape(chunk, kp)[:r] for t, r in enumerate(rows)])
    s = np.concatenate([sz[t][:r] for t, r in enumerate(rows)])
    assert not u[:, k:].any()  # K's padding is zeros
    return u[:, :k], s[:, 0], s[:, 1]


@pytest.mark.parametrize("m,k", [(1, 1), (13, 70), (24, 383), (9, 64), (40, 1536)])
def test_quantisation_is_the_twins(m, k):
    r = np.random.default_rng(m * k)
    x = (r.standard_normal((m, k)) * np.exp(r.uniform(-8, 8, (m, 1)))).astype(np.float32)
    x[::3] = np.abs(x[::3])  # one-sided rows
    x[1::4] = np.round(x[1::4] * 2) / 2  # halves: rint's ties
    x[0] = 0.0
    u, s, z = quantised(x)
    tu, ts, tz = twins.uint8_rows(x)
    assert np.array_equal(u, tu) and np.array_equal(s, ts) and np.array_equal(z, tz)


# M not a multiple of 8 nor of a task's rows, K not a multiple of 4 nor of 64, N not a multiple of 48
@pytest.mark.parametrize("m,k,n", [(5, 7, 3), (13, 70, 50), (197, 383, 100), (8, 64, 48), (3, 1536, 97)])
@pytest.mark.parametrize("epilogue", ["bias", "gelu", "residual", "residual in place"])
def test_linear_matches_twin(m, k, n, epilogue):
    x, w, b, res = case(m, k, n, seed=m + k + n)
    x[m // 2] = 0.0  # a row of zeros
    x[:, k // 3] *= 50.0  # an outlier channel
    packed = gemm_int8.pack_weight(w)
    gelu = epilogue == "gelu"
    residual = res.copy() if epilogue.startswith("residual") else None
    out = residual if epilogue == "residual in place" else None
    got = gemm_int8.linear(x, packed, b, gelu=gelu, residual=residual, out=out)
    ref = twins.int8_linear(x, w, b, gelu, res if residual is not None else None)
    # exact integer sums; the float32 dequantisation and epilogue round a few times
    assert rel(got, ref) < 1e-6
    zero = twins.linear(np.zeros((1, k)), np.zeros((n, k)), b, gelu, res[m // 2:m // 2 + 1] if residual is not None else None)
    np.testing.assert_allclose(got[m // 2], zero[0], rtol=2e-7, atol=1e-6)  # the zero row: bias alone


def test_gelu_against_torch_on_the_vnni_tiles():
    """x = 0: out = GELU(bias) through the float32 epilogue, 48-column panels and a partial one."""
    v = np.concatenate([np.linspace(-9, 9, 2001), [0.0, -0.0, 1e-30, np.inf, -np.inf, np.nan]]).astype(np.float32)
    got = gemm_int8.linear(np.zeros((11, 64), np.float32), gemm_int8.pack_weight(np.ones((v.size, 64), np.float32)), v,
                           gelu=True)
    ref = torch.nn.functional.gelu(torch.from_numpy(v.astype(np.float64))).numpy()
    assert np.array_equal(got, np.broadcast_to(got[0], got.shape), equal_nan=True)
    fin = np.isfinite(v)
    err = np.abs(got[0, fin] - ref[fin])
    assert err.max() <= 2e-6 and (err <= 2e-7 * np.abs(v[fin]) + 1e-37).all()
    assert got[0, -3] == np.inf and got[0, -2] == 0 and np.isnan(got[0, -1])


@pytest.mark.parametrize("m", [3, 200])  # few rows: the column panels split between tasks; many: rows split
def test_nan_row_and_shapes_sharing_buffers(m):
    x, w, b, _ = case(m, 96, 150, seed=4)
    packed, small = gemm_int8.pack_weight(w), gemm_int8.pack_weight(w[:40, :])
    first = gemm_int8.linear(x, packed, b)
    x[1, 7] = np.inf
    got = gemm_int8.linear(x, packed, b)
    assert np.isnan(got[1]).all() and np.array_equal(np.delete(got, 1, 0), np.delete(first, 1, 0))
    gemm_int8.linear(np.ones((m + 50, 96), np.float32), small)  # grows this thread's buffers
    x[1, 7] = 0.5
    again = gemm_int8.linear(x, packed, b)
    assert rel(again, twins.int8_linear(x, w, b)) < 1e-6
