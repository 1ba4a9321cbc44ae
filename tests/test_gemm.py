"""The fp32 linear layer (kernels/gemm.py) against its float64 twin: epilogues, odd shapes, in-place residual."""

import numpy as np
import pytest

import twins
from npvitpose.kernels import gemm
from npvitpose.kernels.layernorm import layernorm

rng = np.random.default_rng(2024)


def f32(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture(autouse=True, params=["micro-kernel", "blas"])
def path(request, monkeypatch):
    """Every test runs through both paths: the micro-kernel (where the CPU has one) and BLAS."""
    if request.param == "micro-kernel" and not gemm.OWN:
        pytest.skip(f"no micro-kernel for ISA {gemm.ISA}")
    if request.param == "blas":
        monkeypatch.setattr(gemm, "OWN", False)  # pack_weight then keeps the (N, K) array for BLAS
    return request.param


def rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


# float32 sums of K products in k order: the error grows like sqrt(K) eps; 2.3e-6 seen at K = 3072
TOL = 5e-6
SHAPES = [(1, 1, 1), (5, 7, 3), (13, 33, 50), (37, 100, 96), (192, 768, 2304), (200, 3072, 768)]


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_plain_and_bias(m, k, n):
    x, w, bias = f32(m, k), f32(n, k, scale=k ** -0.5), f32(n)
    packed = gemm.pack_weight(w)
    assert rel_err(gemm.linear(x, packed), twins.linear(x, w)) < TOL
    assert rel_err(gemm.linear(x, packed, bias), twins.linear(x, w, bias)) < TOL


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_gelu_epilogue(m, k, n):
    x, w, bias = f32(m, k, scale=2.0), f32(n, k, scale=k ** -0.5), f32(n)
    got = gemm.linear(x, gemm.pack_weight(w), bias, gelu=True)
    want = twins.linear(x, w, bias, gelu=True)
    assert np.abs(got - want).max() < TOL * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("gelu", [False, True])
def test_layer_norm_fused_into_the_product(m, k, n, gelu):
    # norm=: each task normalises its own rows (groups of tasks sharing rows each make their own copy)
    x, w, bias = f32(m, k, scale=3.0) + 1.0, f32(n, k, scale=k ** -0.5), f32(n)
    gamma, beta = 1.0 + f32(k, scale=0.2), f32(k)
    packed = gemm.pack_weight(w)
    got = gemm.linear(x, packed, bias, norm=(gamma, beta, 1e-6), gelu=gelu)
    want = twins.linear(twins.layernorm(x, gamma, beta, 1e-6), w, bias, gelu=gelu)
    assert np.abs(got - want).max() < TOL * max(1.0, np.abs(want).max())
    # the same numbers as the layer norm kernel followed by the product: fusing changes no arithmetic
    unfused = gemm.linear(layernorm(x, gamma, beta, 1e-6), packed, bias, gelu=gelu)
    assert np.array_equal(got, unfused)


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_residual_in_place(m, k, n):
    x, w, bias, r = f32(m, k), f32(n, k, scale=k ** -0.5), f32(n), f32(m, n, scale=3.0)
    want = twins.linear(x, w, bias, residual=r)
    stream = r.copy()
    assert gemm.linear(x, gemm.pack_weight(w), bias, residual=stream, out=stream) is stream
    assert rel_err(stream, want) < TOL
    fresh = r.copy()
    got = gemm.linear(x, gemm.pack_weight(w), bias, residual=fresh)  # a new output; the residual is kept
    assert rel_err(got, want) < TOL and np.array_equal(fresh, r)


def test_writes_into_out_and_keeps_nan_local():
    x, w = f32(9, 16), f32(24, 16)
    x[4, 3] = np.nan
    out = np.full((9, 24), 7.0, np.float32)
    assert gemm.linear(x, gemm.pack_weight(w), out=out) is out
    assert np.isnan(out[4]).all() and not np.isnan(np.delete(out, 4, 0)).any()
    assert rel_err(np.delete(out, 4, 0), np.delete(twins.linear(x, w), 4, 0)) < TOL


def test_rejects_misfits():
    packed = gemm.pack_weight(f32(8, 4))
    for bad in (f32(3, 5), f32(3, 4).astype(np.float64), f32(4, 3).T):
        with pytest.raises(ValueError):
            gemm.linear(bad, packed)
    with pytest.raises(ValueError):
        gemm.linear(f32(3, 4), packed, f32(7))
    with pytest.raises(ValueError):
        gemm.linear(f32(3, 4), packed, out=np.empty((3, 9), np.float32))
    with pytest.raises(ValueError):
        gemm.linear(f32(3, 4), packed, gelu=True, residual=f32(3, 8))
    with pytest.raises(ValueError):
        gemm.pack_weight(np.zeros((3, 4)))
