"""Kernel choice by CPU feature (kernels/cpu.py) and the micro-kernel at every tile shape it ships.

The fallbacks themselves (NUMBA_CPU_NAME=generic: BLAS; an AVX2-only target: the 6 x 16 tile) run a
recorded model in a subprocess in tests/test_reference.py.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

import twins
from npvitpose.kernels import attention, cpu, gemm

X86, ARM = "x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"


@pytest.mark.parametrize("feats,triple,want", [
    ({"avx512f", "avx2", "fma"}, X86, "avx512"),
    ({"avx2", "fma"}, X86, "avx2"),
    ({"avx2"}, X86, "generic"),  # AVX2 without FMA (a VIA or a masked VM): no fused multiply-add
    ({"sse2", "sse4.2"}, X86, "generic"),
    (set(), X86, "generic"),
    (set(), ARM, "neon"),  # Advanced SIMD is baseline ARMv8-A
    ({"neon", "bf16"}, "arm64-apple-darwin23.0.0", "neon"),
    ({"avx512f"}, "powerpc64le-unknown-linux-gnu", "generic"),
])
def test_isa_from_features(feats, triple, want):
    assert cpu.isa(frozenset(feats), triple) == want


def _child(env, code):
    env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


CHOICE = "import json; from npvitpose.kernels import cpu, gemm; print(json.dumps([sorted(cpu.features()), gemm.ISA, gemm.OWN]))"


def test_numba_target_is_followed():
    feats, isa, own = _child({"NUMBA_CPU_NAME": "generic"}, CHOICE)
    assert feats == [] and isa == "generic" and own is False  # Numba compiles generic with no features
    feats, isa, _ = _child({"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "+avx2,+fma,-avx512f"}, CHOICE)
    assert feats == ["avx2", "fma"] and isa == "avx2"
    _, isa, _ = _child({"NUMBA_CPU_NAME": "generic", "NUMBA_ENABLE_AVX": "0"}, CHOICE)
    assert isa == "generic"


def _tile_driver(tile, mr, nr):
    @njit
    def run(x, panels, rows, acc):
        # one tile, its k range in two passes, as gemm._gemm calls it: acc accumulates across passes
        k = x.shape[1]
        half = k // 2
        tile(x, 0, rows, k, 1, half, panels, 0, acc, 0, nr)
        tile(x, half, rows, k, 1, k - half, panels, half * nr, acc, 0, nr)
    return run


SHAPES = sorted({gemm.TILES[isa] for isa in gemm.TILES} |
                {(mr, nv, gemm.TILES[isa][2]) for isa in attention.OUT_TILES for mr, nv in attention.OUT_TILES[isa]})


@pytest.mark.parametrize("shape", SHAPES, ids=lambda t: "%dx%dx%d" % t)  # the GEMM's and attention's output tiles
@pytest.mark.parametrize("rows,k", [(1, 1), (3, 7), (8, 64), (6, 33)])
def test_every_shipped_tile_shape(shape, rows, k):
    # the IR is the same on every target; only the tile shape differs, so each shape runs here too
    mr, nv, w = shape
    nr = nv * w
    rows = min(rows, mr)
    rng = np.random.default_rng(rows * 100 + k)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    wt = rng.standard_normal((nr, k)).astype(np.float32)
    panels = np.ascontiguousarray(wt.T)  # one panel: (K, NR)
    acc = np.full(mr * nr, 0.5, np.float32)
    _tile_driver(gemm._micro_kernel(mr, nv, w), mr, nr)(x, panels, rows, acc)
    want = twins.linear(x, wt) + 0.5
    got = acc.reshape(mr, nr)[:rows]
    assert np.abs(got - want).max() < 1e-5 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("isa", sorted(attention.OUT_TILES))
@pytest.mark.parametrize("hd", [1, 16, 32, 48, 64, 80, 96, 128])
def test_attention_output_tile_pads_least(isa, hd):
    # the output tile chosen for a head dim pads it to the fewest columns of any shipped tile of that ISA, and
    # of those it is the widest (fewest panels)
    tiles, w = attention.OUT_TILES[isa], gemm.TILES[isa][2]
    padded = [-(-hd // (nv * w)) * nv * w for _, nv in tiles]
    chosen = attention.out_tile(hd, tiles, w)
    assert padded[chosen] == min(padded)
    assert tiles[chosen][1] == max(nv for (_, nv), p in zip(tiles, padded) if p == min(padded))
