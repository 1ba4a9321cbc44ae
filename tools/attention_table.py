"""The attention core's speed at the ViT shapes, and the output-tile candidates behind kernels/attention.py's
OUT_TILES.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/attention_table.py --batches 1 4
    python tools/attention_table.py --tiles 8x2,12x2,6x4,4x5,5x5 --threads 1
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/attention_table.py --bf16 --batches 1 16 --threads 2

The first form times `attention.attention` per crop (192 tokens, the qkv bias given) for each variant's heads, best
of --repeats, and prints GFLOP/s (4 n^2 d per head) beside the FMA probe of `npvitpose.bench.fp32_ceiling` taken in
the same run. The second times the output product P (24 x n) @ V (n x d) of one row block on each candidate
MR x NV tile, interleaved, median and best of 15, by CPU time (so other jobs' time slices do not count). The third
times the fp32 core against the bf16 one of the reduced-precision models (kernels/attention_bf16.py), interleaved.
"""

import argparse
import time

import npvitpose  # noqa: F401  (first: it sets the thread pools' wait policies)
import numpy as np
from numba import njit

from npvitpose import bench, threads
from npvitpose.kernels import attention, attention_bf16, cpu, gemm
from npvitpose.model import VARIANTS

TOKENS = 192  # a 256 x 192 crop: 16 x 12 patches


def kernel_rows(batches, repeats, rng):
    ceiling = bench.fp32_ceiling()
    print(f"ISA {cpu.ISA}, {threads.get_threads()} threads, FMA probe {ceiling / 1e9:.0f} GFLOP/s")
    for name in ("vitpose-s", "vitpose-b", "vitpose-l", "vitpose-h"):
        cfg = VARIANTS[name]
        hd = cfg.dim // cfg.heads
        for b in batches:
            qkv = rng.standard_normal((b * TOKENS, 3 * cfg.dim), dtype=np.float32)
            bias = rng.standard_normal(3 * cfg.dim, dtype=np.float32)
            out = np.empty((b * TOKENS, cfg.dim), np.float32)
            attention.attention(qkv, TOKENS, cfg.heads, bias, out=out)
            best = min(_timed(lambda: attention.attention(qkv, TOKENS, cfg.heads, bias, out=out)) for _ in range(repeats))
            rate = 4.0 * b * cfg.heads * TOKENS * TOKENS * hd / best
            print(f"{name} heads {cfg.heads}x{hd} batch {b}: {best * 1e3 / b:.3f} ms/crop  {rate / 1e9:.0f} GFLOP/s  "
                  f"{rate / ceiling:.0%} of the probe", flush=True)


def _timed(fn, clock=time.perf_counter):
    t = clock()
    fn()
    return clock() - t


def _product(tile, mr, nro, rows):
    @njit(nogil=True)
    def run(s, vp, o, reps, hd, nk, nd):
        for _ in range(reps):  # the kernel's loop order: panel-outer, rows inner
            for p in range((hd + nro - 1) // nro):
                for x0 in range(0, rows, mr):
                    tile(s, x0 * nk, min(mr, rows - x0), nk, 1, TOKENS, vp, p * TOKENS * nro, o, x0 * nd + p * nro, nd)
    return run


def bf16_rows(batches, repeats, rng, variants):
    """fp32 against bf16 (kernels/attention_bf16.py) on the same qkv, interleaved call by call: median ms per call."""
    print(f"{threads.get_threads()} threads; median (best) of {repeats} interleaved repeats")
    for name in variants:
        cfg = VARIANTS[name]
        for b in batches:
            qkv = rng.standard_normal((b * TOKENS, 3 * cfg.dim), dtype=np.float32)
            bias = rng.standard_normal(3 * cfg.dim, dtype=np.float32)
            out = np.empty((b * TOKENS, cfg.dim), np.float32)
            kernels = {"fp32": attention.attention, "bf16": attention_bf16.attention}
            inner = max(1, 16 // b)  # calls per timing: a batch-1 call is well under a millisecond
            times = {k: [] for k in kernels}
            for k, f in kernels.items():
                f(qkv, TOKENS, cfg.heads, bias, out=out)
            for _ in range(repeats):
                for k, f in kernels.items():
                    times[k].append(_timed(lambda: [f(qkv, TOKENS, cfg.heads, bias, out=out) for _ in range(inner)]) / inner)
            (f32, bf) = (np.median(times[k]) for k in kernels)
            print(f"{name} heads {cfg.heads}x{cfg.dim // cfg.heads} batch {b}: fp32 {f32 * 1e3:.3f} ms "
                  f"({min(times['fp32']) * 1e3:.3f}), bf16 {bf * 1e3:.3f} ms ({min(times['bf16']) * 1e3:.3f}), "
                  f"{f32 / bf:.2f}x", flush=True)


def tile_rows(candidates, head_dims, rows=attention.ROWS):
    w = gemm.W
    runs = {c: _product(gemm._micro_kernel(c[0], c[1], w), c[0], c[1] * w, rows) for c in candidates}
    for hd in head_dims:
        args = {}
        for mr, nv in candidates:
            nro = nv * w
            nd = -(-hd // nro) * nro
            s, vp, o = (gemm.aligned(size) for size in ((rows + mr) * TOKENS, nd * TOKENS, (rows + mr) * nd))
            s[:], vp[:], o[:] = 0.01, 1.0, 0.0  # 64-byte aligned as the kernel's scratch
            args[mr, nv] = [s, vp, o, 1, hd, TOKENS, nd]
            runs[mr, nv](*args[mr, nv])
        flops = 2.0 * rows * TOKENS * hd
        reps = max(1, int(2e8 / flops))
        rates = {c: [] for c in candidates}
        for _ in range(15):
            for c in candidates:
                a = args[c][:3] + [reps] + args[c][4:]
                rates[c].append(flops * reps / _timed(lambda: runs[c](*a), time.process_time))
        print(f"head dim {hd}, {rows} rows: " + "  ".join(
            f"{mr}x{nv * w} {np.median(r) / 1e9:.0f}/{max(r) / 1e9:.0f}" for (mr, nv), r in rates.items()), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tiles", help="output-tile candidates MRxNV,... (NV vectors of the ISA's width) instead")
    p.add_argument("--head-dims", type=int, nargs="+", default=[32, 64, 80])
    p.add_argument("--bf16", action="store_true", help="fp32 against the bf16 core, interleaved (AVX512-BF16 only)")
    p.add_argument("--variants", nargs="+", default=["vitpose-s", "vitpose-b"], choices=list(VARIANTS))
    a = p.parse_args(argv)
    if a.threads:
        threads.set_threads(a.threads)
    if not gemm.OWN:
        print(f"ISA {cpu.ISA}: no vector kernels, attention runs its plain-Numba path")
    if a.bf16:
        if not attention_bf16.FAST:
            print("no AVX512-BF16 here: the bf16 core is not compiled")
            return 1
        bf16_rows(a.batches, a.repeats, np.random.default_rng(0), a.variants)
    elif a.tiles:
        tile_rows([tuple(int(v) for v in t.split("x")) for t in a.tiles.split(",")], a.head_dims)
    else:
        kernel_rows(a.batches, a.repeats, np.random.default_rng(0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
