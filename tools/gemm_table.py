"""Own fp32 micro-kernel against NumPy's BLAS at the ViT linear layers' shapes: the measurement behind
kernels/gemm.py's choice of kernel.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/gemm_table.py --variants vitpose-b --batches 1 16

Each row times `gemm.linear` with its epilogue (bias; GELU for fc1; the residual for proj and fc2), once
through the packed micro-kernel and once through BLAS + the same epilogue, interleaved, best of --repeats.
"""

import argparse
import sys
import time

import npvitpose  # noqa: F401  (first: it sets the thread pools' wait policies)
import numpy as np

from npvitpose import threads
from npvitpose.bench import blas_info
from npvitpose.kernels import cpu, gemm
from npvitpose.model import VARIANTS


def layers(cfg):
    c, h = cfg.dim, cfg.mlp_hidden
    return (("qkv", c, 3 * c, {}), ("proj", c, c, {"residual": True}), ("fc1", c, h, {"gelu": True}),
            ("fc2", h, c, {"residual": True}))


def measure(m, k, n, kind, repeats, rng, clock):
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = (rng.standard_normal((n, k), dtype=np.float32) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n, dtype=np.float32)
    own, blas = gemm.pack_weight(w), gemm.Packed(n, k, w)
    out = np.empty((m, n), np.float32)
    residual = rng.standard_normal((m, n), dtype=np.float32)
    kwargs = dict(gelu=kind.get("gelu", False), residual=residual if kind.get("residual") else None, out=out)
    times = {"own": [], "blas": []}
    for _ in range(repeats + 1):
        for name, packed in (("own", own), ("blas", blas)):
            t = clock()
            gemm.linear(x, packed, bias, **kwargs)
            times[name].append(clock() - t)
    a = gemm.linear(x, own, bias, **dict(kwargs, out=None))
    b = gemm.linear(x, blas, bias, **dict(kwargs, out=None))
    diff = float(np.abs(a - b).max() / np.abs(b).max())
    return min(times["own"][1:]), min(times["blas"][1:]), diff


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["vitpose-s", "vitpose-b"], choices=sorted(VARIANTS))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: the process's CPU seconds (summed over threads), steadier on a shared machine")
    args = p.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if not gemm.OWN:
        print(f"ISA {cpu.ISA}: no micro-kernel on this CPU, BLAS runs everything")
        return 0
    print(f"ISA {cpu.ISA}, tile {gemm.MR}x{gemm.NR}, KC {gemm.KC}; BLAS: {blas_info()}; {args.clock} clock")
    print("| threads | variant | batch | layer | M x K x N | own GFLOP/s | BLAS GFLOP/s | own/BLAS time | max diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for t in args.threads:
        threads.set_threads(t)
        for variant in args.variants:
            for batch in args.batches:
                for name, k, n, kind in layers(VARIANTS[variant]):
                    m = 192 * batch
                    own, blas, diff = measure(m, k, n, kind, args.repeats, rng, clock)
                    flop = 2.0 * m * k * n
                    print(f"| {t} | {variant} | {batch} | {name} | {m}x{k}x{n} | {flop / own / 1e9:.0f} | "
                          f"{flop / blas / 1e9:.0f} | {own / blas:.2f} | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
