"""bf16 and int8 linear layers against the fp32 micro-kernel at the ViT linear layers' shapes, interleaved.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/gemm_lowp_table.py --variants vitpose-b --batches 1 4 16

Each row times `linear` with its epilogue (bias; GELU for fc1; the residual for proj and fc2) through
kernels/gemm.py (fp32), gemm_bf16.py and gemm_int8.py in turn, best of --repeats; GFLOP/s counts
2 M K N (for int8: operations).
"""

import argparse
import sys
import time

import npvitpose  # noqa: F401  (first: it sets the thread pools' wait policies)
import numpy as np

from npvitpose import threads
from npvitpose.kernels import gemm, gemm_bf16, gemm_int8
from gemm_table import layers  # tools/ is on sys.path when run as a script
from npvitpose.model import VARIANTS

MODULES = {"fp32": gemm, "bf16": gemm_bf16, "int8": gemm_int8}


def measure(m, k, n, kind, repeats, rng):
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = (rng.standard_normal((n, k), dtype=np.float32) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n, dtype=np.float32)
    packed = {name: mod.pack_weight(w) for name, mod in MODULES.items()}
    out = np.empty((m, n), np.float32)
    residual = rng.standard_normal((m, n), dtype=np.float32)
    kwargs = dict(gelu=kind.get("gelu", False), residual=residual if kind.get("residual") else None, out=out)
    times = {name: [] for name in MODULES}
    for _ in range(repeats + 1):
        for name, mod in MODULES.items():
            t = time.perf_counter()
            mod.linear(x, packed[name], bias, **kwargs)
            times[name].append(time.perf_counter() - t)
    return {name: min(t[1:]) for name, t in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["vitpose-s", "vitpose-b"], choices=sorted(VARIANTS))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    print(f"bf16: {gemm_bf16.INSTRUCTION if gemm_bf16.FAST else 'fallback'}; "
          f"int8: {gemm_int8.INSTRUCTION if gemm_int8.FAST else 'fallback'}; fp32 ISA {gemm.ISA}")
    print("| threads | variant | batch | layer | M x K x N | fp32 GFLOP/s | bf16 GFLOP/s | int8 GOP/s | bf16/fp32 time | int8/fp32 time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for t in args.threads:
        threads.set_threads(t)
        for variant in args.variants:
            for batch in args.batches:
                for name, k, n, kind in layers(VARIANTS[variant]):
                    m = 192 * batch
                    s = measure(m, k, n, kind, args.repeats, rng)
                    f = 2.0 * m * k * n / 1e9
                    print(f"| {t} | {variant} | {batch} | {name} | {m}x{k}x{n} | {f / s['fp32']:.0f} | "
                          f"{f / s['bf16']:.0f} | {f / s['int8']:.0f} | {s['bf16'] / s['fp32']:.2f} | "
                          f"{s['int8'] / s['fp32']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
