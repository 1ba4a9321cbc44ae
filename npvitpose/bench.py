"""`npvitpose bench`: what to expect on this device, in a minute, with no download.

Random weights of a named variant's shapes; per-crop time at a few batch sizes and thread counts,
the share of the time spent in each kernel, and the matrix-product roofline at the model's shapes.
"""

import dataclasses
import time

import numpy as np

from . import model as model_mod
from . import threads

# the kernels the forward calls by name; everything else in a forward is BLAS matrix products and glue
_KERNELS = ("im2col", "layernorm", "attention", "bias_gelu", "bias_residual", "deconv4x4s2", "upsample4",
            "conv3x3_taps")


def build(variant="vitpose-b", head="classic", num_keypoints=17, seed=0):
    """A Model with random weights of a named variant's shapes."""
    cfg = dataclasses.replace(model_mod.VARIANTS[variant], head=head, num_keypoints=num_keypoints)
    meta = dict(dataclasses.asdict(cfg), dataset="coco", mode="udp")
    return model_mod.from_weights(model_mod.random_weights(cfg, seed), meta)


def time_forward(model, batch, repeats=3, warmup=1):
    """Median and min/max seconds of one forward at this batch size."""
    pixels = np.random.default_rng(0).standard_normal((batch, 3, 256, 192)).astype(np.float32)
    for _ in range(warmup):
        model.forward(pixels)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.forward(pixels)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(min(times)), float(max(times))


def gemm_shapes(cfg, batch):
    """(M, K, N, count) of every matrix product one forward makes: the part BLAS sets the pace of."""
    tokens = 192 * batch
    shapes = [(tokens, 3 * 16 * 16, cfg.dim, 1),
              (tokens, cfg.dim, 3 * cfg.dim, cfg.depth), (tokens, cfg.dim, cfg.dim, cfg.depth),
              (tokens, cfg.dim, cfg.mlp_hidden, cfg.depth), (tokens, cfg.mlp_hidden, cfg.dim, cfg.depth)]
    if cfg.head == "classic":
        shapes += [(tokens, cfg.dim, 16 * 256, 1), (4 * tokens, 256, 16 * 256, 1),
                   (16 * tokens, 256, cfg.num_keypoints, 1)]
    else:
        shapes += [(tokens, cfg.dim, 9 * cfg.num_keypoints, 1)]
    return shapes


def gemm_roofline(cfg, batch, repeats=3):
    """Seconds per forward for its matrix products alone, at NumPy's BLAS rate on these shapes."""
    rng = np.random.default_rng(0)
    total = 0.0
    for m, k, n, count in gemm_shapes(cfg, batch):
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((n, k), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        np.matmul(a, b.T, out=out)
        best = []
        for _ in range(repeats):
            t = time.perf_counter()
            np.matmul(a, b.T, out=out)
            best.append(time.perf_counter() - t)
        total += float(np.median(best)) * count
    return total


def gemm_flops(cfg, batch):
    return sum(2 * m * k * n * count for m, k, n, count in gemm_shapes(cfg, batch))


def profile(model, batch, repeats=3):
    """Seconds per forward spent in each kernel; the rest is matrix products and NumPy glue."""
    spent = dict.fromkeys(_KERNELS, 0.0)
    originals = {name: getattr(model_mod, name) for name in _KERNELS if hasattr(model_mod, name)}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[name] += time.perf_counter() - t
            return out
        return wrapper

    pixels = np.random.default_rng(0).standard_normal((batch, 3, 256, 192)).astype(np.float32)
    model.forward(pixels)
    try:
        for name, fn in originals.items():
            setattr(model_mod, name, timed(name, fn))
        t = time.perf_counter()
        for _ in range(repeats):
            model.forward(pixels)
        total = (time.perf_counter() - t) / repeats
    finally:
        for name, fn in originals.items():
            setattr(model_mod, name, fn)
    rows = {name: s / repeats for name, s in spent.items() if name in originals and s}
    rows["matrix products + glue"] = total - sum(rows.values())
    return total, rows


def add_arguments(parser):
    parser.add_argument("--model", default="vitpose-b", choices=sorted(model_mod.VARIANTS),
                        help="variant whose shapes to benchmark (random weights, nothing downloaded)")
    parser.add_argument("--head", default="classic", choices=("classic", "simple"))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16], help="batch sizes (crops per forward)")
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1 and all cores)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also print where the time of one forward goes")


def main(args):
    import numba

    counts = args.threads or sorted({1, numba.config.NUMBA_NUM_THREADS})
    model = build(args.model, args.head)
    cfg = model.config
    print(f"{args.model} ({args.head} head), {cfg.depth} blocks of width {cfg.dim}; random weights")
    print(f"{'threads':>7} {'batch':>5} {'ms/crop':>9} {'crops/s':>8} {'GEMM roofline ms/crop':>22} {'of roofline':>11}")
    for n in counts:
        threads.set_threads(n)
        for batch in args.batch:
            med, _, _ = time_forward(model, batch, args.repeats)
            roof = gemm_roofline(cfg, batch)
            print(f"{n:>7} {batch:>5} {1e3 * med / batch:>9.1f} {batch / med:>8.2f} {1e3 * roof / batch:>22.1f}"
                  f" {roof / med:>10.0%}")
    if args.profile:
        batch = args.batch[-1]
        total, rows = profile(model, batch)
        print(f"\nwhere one forward's time goes (batch {batch}, {threads.get_threads()} threads, "
              f"{1e3 * total / batch:.1f} ms/crop):")
        for name, s in sorted(rows.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<24} {1e3 * s / batch:8.2f} ms/crop {s / total:6.1%}")
    return 0
