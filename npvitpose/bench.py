"""`npvitpose bench`: what to expect on this device, in a minute, with no download.

Random weights of a named variant's shapes; per-crop time at a few batch sizes and thread counts,
the share of the time spent in each kernel, and the matrix-product roofline at the model's shapes.
"""

import contextlib
import dataclasses
import sys
import time
import types

import numpy as np
from llvmlite import ir
from numba import prange
from numba import types as nbtypes
from numba.core import cgutils
from numba.extending import intrinsic

from . import model as model_mod
from . import threads
from .errors import NpvitposeError
from .messages import Progress, isatty, note
from .kernels import gemm, gemm_bf16, gemm_int8
from .kernels._jit import pjit
from .model import kernel_name

# the kernels the forward calls by name; everything else in a forward is BLAS matrix products and glue
_KERNELS = ("embed", "layernorm", "attention", "deconv4x4s2", "upsample4", "upsample4_conv3x3")


_CHAINS = 16  # independent chains: more than the instruction's latency x ports on any current core


def _chains_intrinsic(kind):
    """An intrinsic run(steps) -> float32: _CHAINS independent chains of the instruction `kind`'s linear layers
    run on this CPU ("fp32": a <W x float> multiply-add; "bf16": vdpbf16ps; "int8": vpdpbusd), `steps` each."""
    @intrinsic
    def run(typingctx, steps):
        sig = nbtypes.float32(steps)

        def codegen(context, builder, signature, args):
            i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
            n = context.cast(builder, args[0], signature.args[0], nbtypes.int64)
            if kind == "fp32":
                width = max(gemm.W, 4)
                acc = vec = ir.VectorType(f32, width)
                op = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                                    f"llvm.fmuladd.v{width}f32")
                a, b = (ir.Constant(vec, [ir.Constant(f32, c)] * width) for c in (0.999999, 1e-7))
                step = lambda x: builder.call(op, [x, a, b])  # noqa: E731
                start = [ir.Constant(acc, [ir.Constant(f32, 1.0 + c)] * width) for c in range(_CHAINS)]
            else:
                acc = ir.VectorType(f32 if kind == "bf16" else i32, 16)
                lanes = ir.VectorType(gemm_bf16._BFloat(), 32) if kind == "bf16" else ir.VectorType(ir.IntType(8), 64)
                name = "llvm.x86.avx512bf16.dpbf16ps.512" if kind == "bf16" else "llvm.x86.avx512.vpdpbusd.512"
                op = cgutils.get_or_insert_function(builder.module, ir.FunctionType(acc, [acc, lanes, lanes]), name)
                one = builder.bitcast(ir.Constant(ir.VectorType(i32, 16), [0x3F803F80 if kind == "bf16" else 0x01010101]
                                                  * 16), lanes)  # bf16 pairs of 1.0 / int8 ones
                step = lambda x: builder.call(op, [x, one, one])  # noqa: E731
                start = [ir.Constant(acc, [(1.0 + c) if kind == "bf16" else c] * 16) for c in range(_CHAINS)]
            entry = builder.block
            loop, done = builder.append_basic_block("probe.loop"), builder.append_basic_block("probe.done")
            builder.branch(loop)
            builder.position_at_end(loop)
            i = builder.phi(i64)
            accs = [builder.phi(acc) for _ in range(_CHAINS)]
            new = [step(x) for x in accs]
            i_next = builder.add(i, ir.Constant(i64, 1))
            i.add_incoming(ir.Constant(i64, 0), entry)
            i.add_incoming(i_next, loop)
            for x, y, s0 in zip(accs, new, start):
                x.add_incoming(s0, entry)
                x.add_incoming(y, loop)
            builder.cbranch(builder.icmp_signed("<", i_next, n), loop, done)
            builder.position_at_end(done)
            total = new[0]
            for y in new[1:]:
                total = builder.fadd(total, y) if kind != "int8" else builder.add(total, y)
            lane0 = builder.extract_element(total, ir.Constant(i32, 0))
            return lane0 if kind != "int8" else builder.sitofp(lane0, f32)

        return sig, codegen

    return run


_chains_fp32, _chains_bf16, _chains_int8 = (_chains_intrinsic(kind) for kind in ("fp32", "bf16", "int8"))


@pjit
def _probe_fp32(steps, out):
    for t in prange(out.size):
        out[t] = _chains_fp32(steps)


@pjit
def _probe_bf16(steps, out):
    for t in prange(out.size):
        out[t] = _chains_bf16(steps)


@pjit
def _probe_int8(steps, out):
    for t in prange(out.size):
        out[t] = _chains_int8(steps)


# operations per chain step: a W-lane multiply-add is 2 a lane; vdpbf16ps adds 2 products a lane, vpdpbusd 4
_PROBES = {"fp32": (_probe_fp32, 2 * max(gemm.W, 4)), "bf16": (_probe_bf16, 64), "int8": (_probe_int8, 128)}


def ceiling_kind(precision):
    """The instruction whose rate bounds this precision's linear layers here, if the probe can measure it:
    "fp32" (vector FMA), "bf16" (vdpbf16ps), "int8" (vpdpbusd); None where they run elsewhere (AMX tiles, the
    BLAS fallback). Only an instruction this CPU has is ever compiled."""
    if precision == "fp32":
        return "fp32"
    module = {"bf16": gemm_bf16, "int8": gemm_int8}[precision]
    return precision if module.FAST and not module.AMX else None


def ceiling(precision="fp32", seconds=0.3):
    """This machine's measured rate (operations/s) of the instruction behind `precision`'s linear layers, on all
    the threads in force: the best of a few bursts of independent chains, each about `seconds` long; None where
    ceiling_kind is None."""
    kind = ceiling_kind(precision)
    if kind is None:
        return None
    probe, per_step = _PROBES[kind]
    out = np.empty(threads.get_threads(), np.float32)
    probe(1000, out)
    steps, best, bursts = 1 << 16, 0.0, 0
    while bursts < 5:  # steps doubled up to a quarter of `seconds` a burst, then the best of five such bursts
        t = time.perf_counter()
        probe(steps, out)
        dt = time.perf_counter() - t
        best = max(best, per_step * _CHAINS * steps * out.size / dt)
        if dt < seconds / 4:
            steps *= 2
        else:
            bursts += 1
    return best


def fp32_ceiling(seconds=0.3):
    """This machine's measured fp32 FMA rate (FLOP/s) on all the threads in force (see `ceiling`)."""
    return ceiling("fp32", seconds)


def build(variant="vitpose-b", head="classic", num_keypoints=17, seed=0, precision="fp32"):
    """A Model with random weights of a named variant's shapes."""
    cfg = dataclasses.replace(model_mod.VARIANTS[variant], head=head, num_keypoints=num_keypoints)
    meta = dict(dataclasses.asdict(cfg), dataset="coco", mode="udp")
    return model_mod.from_weights(model_mod.random_weights(cfg, seed), meta, precision)


def forward_flops(cfg, batch=1):
    """Multiply-adds x 2 of one forward: patch embedding, the blocks' four linear layers and attention's
    two products, the head (spec 1-2); element-wise work is not counted."""
    n, c, h = 192, cfg.dim, cfg.mlp_hidden
    blocks = cfg.depth * (n * c * (3 * c + c + 2 * h) + 2 * n * n * c)
    embed = n * c * 3 * 16 * 16
    if cfg.head == "classic":
        head = n * c * 16 * 256 + 4 * n * 256 * 16 * 256 + 16 * n * 256 * cfg.num_keypoints
    else:
        head = n * c * 9 * cfg.num_keypoints
    return 2.0 * batch * (blocks + embed + head)


def blas_info():
    """The BLAS NumPy runs and the kernel it picked (threadpoolctl's 'architecture'), if threadpoolctl is there."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (pip install threadpoolctl to see it)"
    return ", ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
                     for i in threadpool_info() if i.get("user_api") == "blas") or "none found"


def kernel_info():
    """Which fp32 matrix-product kernel the linear layers use on this CPU."""
    if gemm.OWN:
        return f"npvitpose {gemm.ISA} {gemm.MR}x{gemm.NR} micro-kernel"
    return f"BLAS (no vector micro-kernel for ISA {gemm.ISA})"


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
    cfg = model.config
    m = 192 * batch
    rng = np.random.default_rng(0)

    def random(packed):  # the model keeps only packed weights: same shapes, random values
        return rng.standard_normal((packed.n, packed.k), dtype=np.float32), True

    products = [random(model._patch_w)]
    for i in range(cfg.depth):
        p = f"backbone.blocks.{i}."
        products += [random(model._linear[p + name]) for name in ("attn.qkv.weight", "attn.proj.weight",
                                                                   "mlp.fc1.weight", "mlp.fc2.weight")]
    rows = [m] * len(products)
    if cfg.head == "classic":
        for (deconv, _), (h, w) in zip(model._deconv, ((16, 12), (32, 24))):  # the head's products as it runs them
            products.append(random(deconv.packed))
            rows.append((h + 1) * (w + 1) * batch if deconv.windows else h * w * batch)
        products.append(random(model._final_w))
        rows.append(16 * m)
    else:
        products.append(random(model._final_w))
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
    # attention: the model's own choice at load (fp32, or bf16 for bf16/int8 models), like its linear layers
    originals = {name: getattr(model_mod, name) for name in _KERNELS if name != "attention" and hasattr(model_mod, name)}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[name] += time.perf_counter() - t
            return out
        return wrapper

    pixels = np.random.default_rng(0).standard_normal((batch, 3, 256, 192)).astype(np.float32)
    model.forward(pixels)
    gemm, attention = model._gemm, model._attention
    spent["linear"] = 0.0
    try:
        model._gemm = types.SimpleNamespace(linear=timed("linear", gemm.linear))
        model._attention = timed("attention", attention)
        for name, fn in originals.items():
            setattr(model_mod, name, timed(name, fn))
        t = time.perf_counter()
        for _ in range(repeats):
            model.forward(pixels)
        total = (time.perf_counter() - t) / repeats
    finally:
        model._gemm, model._attention = gemm, attention
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
                        help="thread counts (default: 1 and the CPUs this process may use: affinity and CPU quota)")
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

    note(f"bench: fp32 reference, {len(boxes)} boxes on {image_path}")
    reference = drift.pipeline_outputs(make("fp32"), cases)
    _row(f"{len(boxes)} boxes on {image_path}; against fp32:")
    _row(f"| precision | {drift.HEADER} |")
    for precision in args.precision:
        if precision != "fp32":
            note(f"bench: {precision}")
            _row(f"| {precision} | {drift.measure(reference, drift.pipeline_outputs(make(precision), cases)).row()} |")
    return 0


@contextlib.contextmanager
def _stage(label, forwards, models):
    """Say what one timed stage does: a line as it starts where stderr is a log (a bar on a terminal), then
    a line every messages.PERIOD seconds; each forward of these models counts one step. Quiet under -q."""
    if not isatty(sys.stderr):
        note(f"bench: {label}")
    bar = Progress(forwards, label, unit="forwards")
    for m in models:
        def counted(pixels, taps=None, _forward=m.forward):
            out = _forward(pixels, taps)
            bar.update()
            return out
        m.forward = counted  # an instance attribute over the method: profile() and time_forward() call it
    try:
        yield
    finally:
        for m in models:
            del m.forward
        bar.close()


def _threads(n):
    return f"{n} thread" + "s" * (n != 1)


def _row(text):
    print(text, flush=True)  # a row as soon as it is measured, also into a file or a pipe


def main(args):
    from .cli import _note_compile

    if args.compare:
        return compare(args)
    if args.model not in model_mod.VARIANTS:
        raise NpvitposeError(f"--model {args.model!r}: timing uses random weights of {', '.join(model_mod.VARIANTS)}")
    counts = args.threads or sorted({1, threads.get_threads()})  # threads.py: affinity and cgroup quota
    note(f"bench: random weights of {args.model} ({args.head} head), {', '.join(args.precision)}")
    models = {p: build(args.model, args.head, precision=p) for p in args.precision}
    model = models.get("fp32") or build(args.model, args.head)  # the roofline reads the fp32 weights
    cfg = model.config
    _note_compile()
    _row(f"{args.model} ({args.head} head), {cfg.depth} blocks of width {cfg.dim}; random weights; "
         f"{forward_flops(cfg) / 1e9:.1f} GFLOP/crop; " + ", ".join(f"{p}: {kernel_name(p)}" for p in models))
    _row(f"fp32 linear layers: {kernel_info()}; BLAS: {blas_info()}")
    _row(f"{'threads':>7} {'batch':>5} {'precision':>9} {'ms/crop':>9} {'crops/s':>8} {'GEMM roofline ms/crop':>22}"
         f" {'of roofline':>11} {'ceiling GOP/s':>14} {'of ceiling':>10}")
    for n in counts:
        threads.set_threads(n)
        peaks = {p: ceiling(p) for p in models}  # each precision's own instruction (fp32 FMA, vdpbf16ps, vpdpbusd)
        for batch in args.batch:
            with _stage(f"{_threads(n)}, batch {batch}", (args.repeats + 1) * len(models),
                        models.values()):
                roof = gemm_roofline(model, batch)
                measured = {p: time_forward(m, batch, args.repeats)[0] for p, m in models.items()}
            for p, med in measured.items():
                peak = peaks[p]
                _row(f"{n:>7} {batch:>5} {p:>9} {1e3 * med / batch:>9.1f} {batch / med:>8.2f}"
                     f" {1e3 * roof / batch:>22.1f} {roof / med:>10.0%}"
                     + (f" {peak / 1e9:>14.0f} {forward_flops(cfg, batch) / med / peak:>9.0%}" if peak else
                        f" {'-':>14} {'-':>10}"))
    if args.profile:
        batch, repeats = args.batch[-1], 3
        with _stage(f"profile, batch {batch}, {_threads(threads.get_threads())}", repeats + 1, [model]):
            total, rows = profile(model, batch, repeats)
        _row(f"\nwhere one forward's time goes (batch {batch}, {threads.get_threads()} threads, "
             f"{1e3 * total / batch:.1f} ms/crop):")
        for name, s in sorted(rows.items(), key=lambda kv: -kv[1]):
            _row(f"  {name:<24} {1e3 * s / batch:8.2f} ms/crop {s / total:6.1%}")
    return 0
