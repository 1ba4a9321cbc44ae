"""The bf16 attention core (kernels/attention_bf16.py) against its float64 twin, where the CPU has AVX512-BF16."""

import dataclasses

import numpy as np
import pytest

import twins
from npvitpose import model as model_mod
from npvitpose.kernels import attention, attention_bf16

pytestmark = pytest.mark.skipif(not attention_bf16.FAST, reason="no AVX512-BF16 on this CPU (or Numba's target)")
rng = np.random.default_rng(31)


def case(b, n, heads, hd, scale=1.0):
    qkv = (rng.standard_normal((b * n, 3 * heads * hd)) * scale).astype(np.float32)
    return qkv, rng.standard_normal(3 * heads * hd).astype(np.float32)


def check(got, want):
    # the twin rounds the same values; what is left is fp32 summation order, which now and then moves a
    # probability across a bf16 rounding boundary (one step, 2^-8 of it): rare, small, and far below the
    # rounding's own error (rms 5e-3 of the outputs against exact float64 attention)
    err = np.abs(got - want)
    assert err.max() < 1e-3 * np.abs(want).max()
    assert np.sqrt((err ** 2).mean()) < 3e-5 * np.sqrt((want ** 2).mean())


# ViT-S/B/H head dims on a crop's 192 tokens, 1 and 3 crops; odd token counts and head dims, one token, the
# tails of the 24-row blocks, 48-key panels and the three output tiles
@pytest.mark.parametrize("b,n,heads,hd", [(1, 192, 12, 32), (3, 192, 4, 64), (1, 192, 3, 80), (3, 192, 2, 32),
                                          (2, 193, 2, 64), (1, 7, 3, 5), (2, 13, 2, 17), (1, 1, 2, 2),
                                          (3, 50, 1, 80), (1, 25, 1, 96), (2, 97, 2, 33)])
def test_matches_twin(b, n, heads, hd):
    qkv, bias = case(b, n, heads, hd)
    got = attention_bf16.attention(qkv, n, heads, bias)
    check(got, twins.attention_bf16(qkv, n, heads, bias))
    if n * hd >= 192 * 32:  # and bf16 is really in use: fp32 is within 2e-6 of exact attention
        exact = twins.attention(qkv + bias, n, heads)
        assert np.abs(got - exact).max() > 1e-4 * np.abs(exact).max()


def test_peaked_scores():
    # spreads of scores over 100: nearly one-hot rows, many exponentials under the floor
    qkv, bias = case(2, 192, 2, 64, scale=6.0)
    check(attention_bf16.attention(qkv, 192, 2, bias), twins.attention_bf16(qkv, 192, 2, bias))


def test_writes_into_out_without_bias():
    qkv, _ = case(2, 9, 2, 16)
    out = np.full((18, 32), np.nan, np.float32)
    assert attention_bf16.attention(qkv, 9, 2, out=out) is out
    check(out, twins.attention_bf16(qkv, 9, 2, np.zeros(96, np.float32)))


@pytest.mark.parametrize("where", ["query", "key", "value"])
def test_nan_stays_in_its_crop_and_head(where):
    n, heads, hd = 11, 3, 32
    qkv, bias = case(2, n, heads, hd)
    want = twins.attention_bf16(qkv, n, heads, bias)
    block = {"query": 0, "key": 1, "value": 2}[where]
    qkv[n + 5, block * heads * hd + 1 * hd + 2] = np.nan  # crop 1, head 1, token 5
    got = attention_bf16.attention(qkv, n, heads, bias)
    bad = np.zeros(got.shape, bool)
    if where == "query":  # that query's row of its head
        bad[n + 5, hd:2 * hd] = True
    elif where == "key":  # every row of its head: the softmax's sums
        bad[n:, hd:2 * hd] = True
    else:  # that column of its head in every row
        bad[n:, hd + 2] = True
    assert np.isnan(got[bad]).all()
    check(got[~bad], want[~bad])


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="does not split"):
        attention_bf16.attention(np.zeros((10, 9), np.float32), 5, 2)
    with pytest.raises(ValueError, match="out must be"):
        attention_bf16.attention(np.zeros((10, 12), np.float32), 5, 2, out=np.zeros((10, 5), np.float32))


def test_models_choose_it_at_load(monkeypatch):
    cfg = model_mod.Config(dim=64, depth=1, heads=2, mlp_hidden=128, head="simple")
    meta = dict(dataclasses.asdict(cfg), dataset="coco", mode="udp")
    weights = model_mod.random_weights(cfg)
    chosen = {p: model_mod.from_weights(dict(weights), meta, p)._attention for p in ("fp32", "bf16", "int8")}
    assert chosen == {"fp32": attention.attention, "bf16": attention_bf16.attention, "int8": attention_bf16.attention}
    monkeypatch.setattr(model_mod, "ATTENTION_IN_FP32", True)
    assert model_mod.from_weights(dict(weights), meta, "int8")._attention is attention.attention


def test_profile_times_the_chosen_attention():
    from npvitpose import bench

    cfg = model_mod.Config(dim=64, depth=1, heads=2, mlp_hidden=128, head="simple")
    model = model_mod.from_weights(model_mod.random_weights(cfg), dict(dataclasses.asdict(cfg), dataset="coco",
                                                                         mode="udp"), "bf16")
    _, rows = bench.profile(model, 1, repeats=1)
    assert rows["attention"] > 0 and model._attention is attention_bf16.attention
