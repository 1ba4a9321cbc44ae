"""The patch embedding and the heatmap heads, stage by stage: each product on the own fp32 micro-kernel
against the same stage with NumPy's BLAS doing the product, and the two forms of the transposed conv
(kernels/head.py Deconv): the measurement behind the head's choices.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/bench_head.py --batches 1 4 16

Variants of a stage are interleaved, best of --repeats, ms per crop; the first variant of each stage is
what the model runs, "ratio" is a variant's time over it.
"""

import argparse
import sys
import time

import npvitpose  # noqa: F401  (first: it sets the thread pools' wait policies)
import numpy as np

from npvitpose import threads
from npvitpose.bench import blas_info
from npvitpose.kernels import gemm, head, patch_embed
from npvitpose.model import DECONV, VARIANTS



def blas(packed, rows):
    """The same product through BLAS: a Packed without panels (gemm.linear's fallback path)."""
    return gemm.Packed(packed.n, packed.k, rows)


def stages(batch, rng):
    """(stage, {variant: callable}) with the model's variant first."""
    for variant in ("vitpose-b", "vitpose-s"):
        c = VARIANTS[variant].dim
        pixels = rng.standard_normal((batch, 3, 256, 192), dtype=np.float32)
        weight = rng.standard_normal((c, 3, 16, 16), dtype=np.float32) * 0.02
        bias, pos = rng.standard_normal(c, dtype=np.float32), rng.standard_normal((192, c), dtype=np.float32)
        own = patch_embed.embed_weight(weight)
        plain = blas(own, np.ascontiguousarray(weight.reshape(c, -1)))
        yield f"patch embed {variant} 768->{c}", {
            "own": lambda own=own, pixels=pixels, bias=bias, pos=pos: patch_embed.embed(pixels, own, bias, pos),
            "blas": lambda plain=plain, pixels=pixels, bias=bias, pos=pos: patch_embed.embed(pixels, plain, bias, pos)}
    c = VARIANTS["vitpose-b"].dim
    for name, (h, w, cin) in (("deconv1", (16, 12, c)), ("deconv2", (32, 24, DECONV))):
        x = np.maximum(rng.standard_normal((batch, h, w, cin), dtype=np.float32), 0)
        weight = rng.standard_normal((cin, DECONV, 4, 4), dtype=np.float32) * 0.02
        bias = rng.standard_normal(DECONV, dtype=np.float32)
        model = head.deconv_weight(weight)
        forms = {}
        for windows in (model.windows, not model.windows):
            d = head.deconv_weight(weight, windows)
            form = "windows" if windows else "taps"
            forms[f"{form} own"] = d
            forms[f"{form} blas"] = d._replace(packed=blas(d.packed, head.deconv_rows(weight, windows)))
        yield f"{name} {h}x{w}x{cin}->{DECONV}", {
            k: (lambda d=d, x=x, bias=bias: head.deconv4x4s2(x, d, bias, relu=True)) for k, d in forms.items()}
    f = np.maximum(rng.standard_normal((batch * 64 * 48, DECONV), dtype=np.float32), 0)
    wk = rng.standard_normal((17, DECONV), dtype=np.float32) * 0.05
    wt, packed = np.ascontiguousarray(wk.T), gemm.pack_weight(wk)
    yield f"final 1x1 {DECONV}->17", {"blas": lambda: f @ wt, "own": lambda: gemm.linear(f, packed)}
    f = np.maximum(rng.standard_normal((batch * 192, c), dtype=np.float32), 0)
    weight = rng.standard_normal((17, c, 3, 3), dtype=np.float32) * 0.02
    wk = head.conv3x3_weight(weight)  # (9K, C): the (N, K) weight the micro-kernel packs; BLAS reads its transpose
    wt, packed = np.ascontiguousarray(wk.T), gemm.pack_weight(wk)
    yield f"simple head {c}->9x17", {"blas": lambda: f @ wt, "own": lambda: gemm.linear(f, packed)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--threads", type=int, nargs="+", default=[2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: the process's CPU seconds (summed over threads), steadier on a shared machine")
    args = p.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"ISA {gemm.ISA}, micro-kernel {'on' if gemm.OWN else 'absent (BLAS everywhere)'}; BLAS: {blas_info()}; "
          f"{args.clock} clock")
    print("| threads | batch | stage | variant | ms/crop | ratio |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for t in args.threads:
        threads.set_threads(t)
        for batch in args.batches:
            for stage, variants in stages(batch, rng):
                times = {name: [] for name in variants}
                for _ in range(args.repeats + 1):
                    for name, fn in variants.items():
                        start = clock()
                        fn()
                        times[name].append(clock() - start)
                best = {name: min(v[1:] or v) / batch for name, v in times.items()}  # the first round warms up
                first = next(iter(best.values()))
                for name, s in best.items():
                    print(f"| {t} | {batch} | {stage} | {name} | {s * 1e3:.2f} | {s / first:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
