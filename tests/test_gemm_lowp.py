"""bf16 and int8 linear layers against their NumPy twins; the fallbacks in a process without the instructions."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import npvitpose
import twins
from npvitpose.kernels import attention, gemm, gemm_bf16, gemm_int8
from npvitpose.kernels.layernorm import layernorm
from npvitpose.model import Config, random_weights, save_npz

ROOT = Path(__file__).resolve().parents[1]
rng = np.random.default_rng(8)
# (M, K, N): tails of every blocking (8 or 32 rows, 48 or 32 columns, 2 or 4 inputs per lane; an odd K past the
# 32-wide bf16 rounding), one ViT-S shape, one whose rows take two AMX chunks (kernels/gemm_bf16.plan) and one with
# enough rows that the AVX-512 tasks do not split the panels (kernels/gemm_bf16.split)
SHAPES = [(1, 1, 1), (7, 5, 3), (9, 33, 50), (20, 66, 97), (13, 67, 145), (192, 384, 1152), (330, 3072, 40),
          (800, 40, 96)]


@pytest.fixture(params=["amx", "avx512"])
def path(request, monkeypatch):
    """Run each kernel test through the AMX tiles and through the AVX-512 tiles (where the CPU has them)."""
    if request.param == "avx512":
        monkeypatch.setattr(gemm_bf16, "AMX", False)
        monkeypatch.setattr(gemm_int8, "AMX", False)
    elif not (gemm_bf16.AMX or gemm_int8.AMX):
        pytest.skip("no AMX on this CPU")
    return request.param


def case(m, k, n, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((m, k)).astype(np.float32)
    w = (r.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    return x, w, r.standard_normal(n).astype(np.float32), r.standard_normal((m, n)).astype(np.float32)


def rel(a, b):
    return np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30)


def test_bf16_rounding_matches_torch_and_twin():
    x = (rng.standard_normal(100_000) * np.exp(rng.uniform(-30, 30, 100_000))).astype(np.float32)
    bits = x.view(np.uint32)
    x[:1000] = ((bits[:1000] & 0xFFFF0000) | 0x8000).view(np.float32)  # exact ties: to even
    expected = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    assert np.array_equal(gemm_bf16.round_bf16(x), expected)
    assert np.array_equal(twins.bf16(x), expected)
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)
    got = gemm_bf16.round_bf16(special)
    assert got[0] == np.inf and got[1] == -np.inf and np.isnan(got[2]) and got[3] == 0 and np.signbit(got[4])


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("epilogue", ["bias", "gelu", "residual"])
def test_bf16_linear_matches_twin(m, k, n, epilogue, path):
    x, w, b, res = case(m, k, n)
    packed = gemm_bf16.pack_weight(w)
    kw = {"gelu": epilogue == "gelu", "residual": res if epilogue == "residual" else None}
    got = gemm_bf16.linear(x, packed, b, **kw)
    tw = dict(gelu=kw["gelu"], residual=kw["residual"])
    ref = twins.linear(twins.bf16(x), twins.bf16(w), b, **tw)
    # exact bf16 products, fp32 sums: a few fp32 roundings of the partial sums
    assert rel(got, ref) < 2e-6
    if k > 8:  # and bf16 it is: the fp32 product is ~1e-3 away
        assert rel(got, twins.linear(x, w, b, **tw)) > 1e-4


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("epilogue", ["bias", "gelu", "residual"])
def test_int8_linear_matches_twin(m, k, n, epilogue, path):
    x, w, b, res = case(m, k, n, seed=1)
    packed = gemm_int8.pack_weight(w)
    q, sw = twins.int8_weight(w)
    assert np.array_equal(gemm_int8.unpack_weight(packed), q) and np.array_equal(packed.scale, sw)
    u, s, z = gemm_int8.quantize_rows(x)
    tu, ts, tz = twins.uint8_rows(x)
    assert np.array_equal(u, tu) and np.array_equal(s, ts) and np.array_equal(z, tz)
    kw = {"gelu": epilogue == "gelu", "residual": res if epilogue == "residual" else None}
    got = gemm_int8.linear(x, packed, b, **kw)
    # the integer sums are exact: only the final fp32 rounding differs (one unit of acc is ~3e-5 relative)
    assert rel(got, twins.int8_linear(x, w, b, kw["gelu"], kw["residual"])) < 1e-6


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (9, 33, 50), (13, 67, 145), (192, 384, 1152), (330, 3072, 40)])
@pytest.mark.parametrize("module", [gemm_bf16, gemm_int8])
@pytest.mark.parametrize("epilogue", ["bias", "gelu"])
def test_layer_norm_fused_into_the_packing(m, k, n, module, epilogue, path):
    # norm=: the AVX-512 tasks normalise each row as they round or quantise it; AMX normalises first
    x, w, b, _ = case(m, k, n, seed=2)
    x = x * 3 + 1
    gamma, beta = (1 + 0.2 * rng.standard_normal(k)).astype(np.float32), rng.standard_normal(k).astype(np.float32)
    packed, gelu = module.pack_weight(w), epilogue == "gelu"
    got = module.linear(x, packed, b, norm=(gamma, beta, 1e-6), gelu=gelu)
    h = twins.layernorm(x, gamma, beta, 1e-6).astype(np.float32)
    if module is gemm_bf16:
        ref = twins.linear(twins.bf16(h), twins.bf16(w), b, gelu=gelu)
    else:
        ref = twins.int8_linear(h, w, b, gelu, None)
    # h's float32 last bits may round or quantise one value the other way (one bf16 step, one int8 level)
    assert rel(got, ref) < 1e-3
    # and exactly the numbers of the layer norm kernel followed by the unfused product
    assert np.array_equal(got, module.linear(layernorm(x, gamma, beta, 1e-6), packed, b, gelu=gelu))


@pytest.mark.parametrize("module", [gemm, gemm_bf16, gemm_int8])
def test_fused_layer_norm_keeps_nan_in_its_row(module, path):
    x, w, b, _ = case(20, 70, 50, seed=3)
    x[3, 5] = np.nan
    got = module.linear(x, module.pack_weight(w), b, norm=(np.ones(70, np.float32), np.zeros(70, np.float32), 1e-6))
    assert np.isnan(got[3]).all() and np.isfinite(np.delete(got, 3, axis=0)).all()


@pytest.mark.parametrize("module", [gemm_bf16, gemm_int8])
def test_gelu_epilogue_against_torch(module, path):
    """x = 0, so out = GELU(bias) through the epilogue alone (float32 erf, 1.3e-7), against torch's exact GELU."""
    v = np.concatenate([np.linspace(-9, 9, 4001), rng.standard_normal(1000) * 3, [0.0, -0.0, 1e-30, -1e-30]])
    v = np.concatenate([v, [np.inf, -np.inf, np.nan]]).astype(np.float32)
    got = module.linear(np.zeros((3, 64), np.float32), module.pack_weight(np.ones((v.size, 64), np.float32)), v, gelu=True)
    ref = torch.nn.functional.gelu(torch.from_numpy(v.astype(np.float64))).numpy()
    assert np.array_equal(got, np.broadcast_to(got[0], got.shape), equal_nan=True)  # every row alike
    fin = np.isfinite(v)
    err = np.abs(got[0, fin] - ref[fin])
    assert err.max() <= 2e-6 and (err <= 2e-7 * np.abs(v[fin]) + 1e-37).all()
    assert got[0, -3] == np.inf and got[0, -2] == 0 and np.isnan(got[0, -1])


@pytest.mark.parametrize("module", [gemm_bf16, gemm_int8])
def test_residual_in_place_and_no_bias(module, path):
    x, w, _, res = case(40, 64, 100, seed=2)
    packed = module.pack_weight(w)
    expected = res + module.linear(x, packed)
    stream = res.copy()
    assert module.linear(x, packed, residual=stream, out=stream) is stream
    np.testing.assert_allclose(stream, expected, rtol=1e-6, atol=1e-6)
    assert module.linear(x[:0], packed).shape == (0, 100)


def test_bf16_nan_and_inf_stay_in_their_rows(path):
    x, w, b, _ = case(21, 70, 100, seed=6)
    x[3, 5], x[9, 69], x[17, 0] = np.nan, np.inf, -np.inf  # 69: the scalar tail past the 32-wide rounding
    got = gemm_bf16.linear(x, gemm_bf16.pack_weight(w), b)
    assert np.isnan(got[3]).all() and not np.isfinite(got[[9, 17]]).any()
    ok = np.delete(np.arange(21), [3, 9, 17])
    assert rel(got[ok], twins.linear(twins.bf16(x[ok]), twins.bf16(w), b)) < 2e-6


def test_int8_outlier_rows_and_nan(path):
    x, w, b, _ = case(16, 64, 48, seed=3)
    x[3, 5] = 1e4  # one outlier costs its own row's resolution, never another row's
    x[7, 0] = np.nan
    got = gemm_int8.linear(x, gemm_int8.pack_weight(w), b)
    assert np.isnan(got[7]).all() and np.isfinite(np.delete(got, 7, 0)).all()
    ok = np.delete(np.arange(16), [3, 7])
    ref = twins.linear(x[ok], w, b)
    assert rel(got[ok], ref) < 2e-2


@pytest.mark.parametrize("module", [gemm_bf16, gemm_int8])
def test_bad_arguments(module):
    x, w, b, _ = case(8, 16, 8)
    packed = module.pack_weight(w)
    with pytest.raises(ValueError):
        module.linear(x.astype(np.float64), packed)
    with pytest.raises(ValueError):
        module.linear(x[:, :8].copy(), packed)
    with pytest.raises(ValueError):
        module.linear(x, packed, gelu=True, residual=np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError):
        module.pack_weight(w.astype(np.float64))


_CHILD = """
import json, sys
import numpy as np
import npvitpose
from npvitpose.kernels import attention_bf16, gemm, gemm_bf16, gemm_int8
from npvitpose.kernels.layernorm import layernorm
x, w, b, pixels = (np.load(sys.argv[1])[k] for k in ("x", "w", "b", "pixels"))
np.savez(sys.argv[2], bf16=gemm_bf16.linear(x, gemm_bf16.pack_weight(w), b, gelu=True),
         int8=gemm_int8.linear(x, gemm_int8.pack_weight(w), b, gelu=True),
         **{"model_" + p: npvitpose.load(sys.argv[3], precision=p).forward(pixels) for p in ("bf16", "int8")})
print(json.dumps([gemm_bf16.FAST, gemm_int8.FAST, attention_bf16.FAST]))
"""


def test_fallbacks_without_the_instructions(tmp_path):
    """NUMBA_CPU_NAME=generic: the intrinsics are never compiled (that would abort), the results stay."""
    x, w, b, _ = case(30, 70, 60, seed=4)
    cfg = Config(dim=64, depth=1, heads=2, mlp_hidden=128, head="simple")
    meta = dict(dataclasses.asdict(cfg), dataset="coco", mode="udp")
    save_npz(tmp_path / "m.npz", random_weights(cfg), meta)
    pixels = np.random.default_rng(5).standard_normal((2, 3, 256, 192)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x, w=w, b=b, pixels=pixels)
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "in.npz"), str(tmp_path / "out.npz"),
                           str(tmp_path / "m.npz")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == [False, False, False]  # the models keep the fp32 attention
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(out["bf16"], twins.linear(twins.bf16(x), twins.bf16(w), b, True), rtol=0, atol=2e-6)
    np.testing.assert_allclose(out["int8"], twins.int8_linear(x, w, b, True), rtol=0, atol=2e-6)
    fp32 = npvitpose.load(tmp_path / "m.npz").forward(pixels)
    for p in ("bf16", "int8"):  # the whole model, against the instructions' result here: the sums run in
        # another order, and each last-bit difference can move a later bf16/int8 rounding by one step, which the
        # head's two deconvolutions (also bf16/int8) and the random model amplify; still the two stay much closer
        # to each other than to fp32. The child's models keep the fp32 attention: so does this one here
        model = npvitpose.load(tmp_path / "m.npz", precision=p)
        model._attention = attention.attention
        fast = model.forward(pixels)
        assert np.abs(out["model_" + p] - fast).max() <= 0.5 * np.abs(fast - fp32).max()
