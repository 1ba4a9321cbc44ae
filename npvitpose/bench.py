"""`npvitpose bench`: what to expect on this device, in a minute, with no download.

Random weights of a named variant's shapes; per-crop time at a few batch sizes and thread counts,
the share of the time spent in each kernel, and the matrix-product roofline at the model's shapes.
"""

import dataclasses
import time
import types

import numpy as np

from . import model as model_mod
from . import threads
from .errors import NpvitposeError
from .model import kernel_name

# the kernels the forward calls by name; everything else in a forward is BLAS matrix products and glue
_KERNELS = ("im2col", "layernorm", "attention", "deconv4x4s2", "upsample4", "upsample4_conv3x3")


def build(variant="vitpose-b", head="classic", num_keypoints=17, seed=0, precision="fp32"):
    """A Model with random weights of a named variant's shapes."""
    cfg = dataclasses.replace(model_mod.VARIANTS[variant], head=head, num_keypoints=num_keypoints)
    meta = dict(dataclasses.asdict(cfg), dataset="coco", mode="udp")
    return model_mod.from_weights(model_mod.random_weights(cfg, seed), meta, precision)


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


def gemm_roofline(model, batch, repeats=3):
    """Seconds for one forward's matrix products alone: the model's own weights, in the forward's
    order and shapes, through NumPy's BLAS. No forward can be faster than this with that BLAS."""
    cfg, w = model.config, model.weights
    m = 192 * batch
    rng = np.random.default_rng(0)
    products = [(model._patch_w, False)]
    for i in range(cfg.depth):
        p = f"backbone.blocks.{i}."
        products += [(w[p + "attn.qkv.weight"], True), (w[p + "attn.proj.weight"], True),
                     (w[p + "mlp.fc1.weight"], True), (w[p + "mlp.fc2.weight"], True)]
    rows = [m] * len(products)
    if cfg.head == "classic":
        products += [(wmat, False) for wmat, _ in model._deconv] + [(model._final_w, False)]
        rows += [m, 4 * m, 16 * m]
    else:
        products.append((model._final_w, False))
        rows.append(m)
    operands = []
    for (weight, transposed), r in zip(products, rows):
        k, n = weight.shape[::-1] if transposed else weight.shape
        operands.append((rng.standard_normal((r, k), dtype=np.float32), weight.T if transposed else weight,
                         np.empty((r, n), np.float32)))
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        for a, b, out in operands:
            np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


def profile(model, batch, repeats=3):
    """Seconds per forward spent in each kernel ("linear": the blocks' four layers with their epilogues);
    the rest is the patch embedding's and head's matrix products and NumPy glue."""
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
    gemm = model._gemm
    spent["linear"] = 0.0
    try:
        model._gemm = types.SimpleNamespace(linear=timed("linear", gemm.linear))
        for name, fn in originals.items():
            setattr(model_mod, name, timed(name, fn))
        t = time.perf_counter()
        for _ in range(repeats):
            model.forward(pixels)
        total = (time.perf_counter() - t) / repeats
    finally:
        model._gemm = gemm
        for name, fn in originals.items():
            setattr(model_mod, name, fn)
    rows = {name: s / repeats for name, s in spent.items() if s}
    rows["other matrix products + glue"] = total - sum(rows.values())
    return total, rows


def add_arguments(parser):
    from .cli import _positive_int  # the CLI's integer check: 0 is a usage error (exit 2), not a traceback

    parser.add_argument("--model", default="vitpose-b",
                        help=f"variant whose shapes to benchmark ({', '.join(model_mod.VARIANTS)}: random weights, "
                             "nothing downloaded); with --compare also a converted .npz or a published name")
    parser.add_argument("--head", default="classic", choices=("classic", "simple"))
    parser.add_argument("--batch", type=_positive_int, nargs="+", default=[1, 4, 16],
                        help="batch sizes (crops per forward)")
    parser.add_argument("--threads", type=_positive_int, nargs="+", default=None,
                        help="thread counts (default: 1 and all cores)")
    parser.add_argument("--repeats", type=_positive_int, default=3)
    parser.add_argument("--profile", action="store_true", help="also print where the time of one forward goes")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=list(model_mod.PRECISIONS),
                        help="arithmetic of the linear layers; several are timed side by side")
    parser.add_argument("--compare", nargs=2, metavar=("IMAGE", "BOXES"),
                        help="instead of timing: drift of each --precision against fp32 on this image and boxes "
                             "JSON; --model may then be your converted .npz (or a published name)")
    parser.add_argument("--box-format", choices=("xywh", "xyxy"), default="xywh", help="of --compare's boxes")


def compare(args):
    """Drift of each precision against fp32 through the whole pipeline, on the user's model and picture."""
    import os

    from . import drift, fetch
    from .boxes import load_boxes
    from .images import read_image

    image_path, boxes_path = args.compare
    boxes, _ = load_boxes(boxes_path, args.box_format, image_name=image_path)
    image = read_image(image_path)
    random = args.model in model_mod.VARIANTS and not os.path.exists(args.model)
    if random:
        path = None
        print(f"{args.model}: random weights (pass a converted .npz as --model for your own): their heatmaps "
              "have no clear peaks, so keypoint moves overstate what a trained model does")
    else:
        path = fetch.resolve(args.model)
    cases = [(image, boxes)]

    def make(precision):
        return build(args.model, args.head, precision=precision) if random else model_mod.load(path, precision=precision)

    reference = drift.pipeline_outputs(make("fp32"), cases)
    print(f"{len(boxes)} boxes on {image_path}; against fp32:")
    print(f"| precision | {drift.HEADER} |")
    for precision in args.precision:
        if precision != "fp32":
            print(f"| {precision} | {drift.measure(reference, drift.pipeline_outputs(make(precision), cases)).row()} |")
    return 0


def main(args):
    import numba

    if args.compare:
        return compare(args)
    if args.model not in model_mod.VARIANTS:
        raise NpvitposeError(f"--model {args.model!r}: timing uses random weights of {', '.join(model_mod.VARIANTS)}")
    counts = args.threads or sorted({1, numba.config.NUMBA_NUM_THREADS})
    models = {p: build(args.model, args.head, precision=p) for p in args.precision}
    model = models.get("fp32") or build(args.model, args.head)  # the roofline reads the fp32 weights
    cfg = model.config
    print(f"{args.model} ({args.head} head), {cfg.depth} blocks of width {cfg.dim}; random weights; "
          + ", ".join(f"{p}: {kernel_name(p)}" for p in models))
    print(f"{'threads':>7} {'batch':>5} {'precision':>9} {'ms/crop':>9} {'crops/s':>8} {'GEMM roofline ms/crop':>22}"
          f" {'of roofline':>11}")
    for n in counts:
        threads.set_threads(n)
        for batch in args.batch:
            roof = gemm_roofline(model, batch)
            for p, m in models.items():
                med, _, _ = time_forward(m, batch, args.repeats)
                print(f"{n:>7} {batch:>5} {p:>9} {1e3 * med / batch:>9.1f} {batch / med:>8.2f}"
                      f" {1e3 * roof / batch:>22.1f} {roof / med:>10.0%}")
    if args.profile:
        batch = args.batch[-1]
        total, rows = profile(model, batch)
        print(f"\nwhere one forward's time goes (batch {batch}, {threads.get_threads()} threads, "
              f"{1e3 * total / batch:.1f} ms/crop):")
        for name, s in sorted(rows.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<24} {1e3 * s / batch:8.2f} ms/crop {s / total:6.1%}")
    return 0
