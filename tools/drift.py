"""The drift table of the README: bf16 and int8 against fp32, through the whole pipeline, S/B/L/H.

    python tools/drift.py                      # all variants; writes docs/drift.md
    python tools/drift.py --variants vitpose-s --study    # + int8 one layer kind at a time

No trained weights can be downloaded where this was written, so the models are random weights of each
variant's shapes, made closer to trained ViTs where that matters for rounding: a few residual channels
with large layer-norm gains (the outlier channels of trained ViTs, which stretch an int8 row's range).
The photographs are scikit-image's astronaut (a person) and camera (a person, grey), with boxes on the
people; predict runs the official pipeline (UDP crop, flip test, DARK-UDP).
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import npvitpose  # noqa: F401 - before NumPy: thread settings
import numpy as np
import skimage.data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from npvitpose import drift, model as model_mod  # noqa: E402
from npvitpose.kernels import attention_bf16, gemm_bf16, gemm_int8  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "drift.md"
CASES = [  # (image, xywh boxes on the people)
    ("astronaut", [(18.6, 12.3, 352.4, 498.9), (40.0, 20.0, 300.0, 280.0), (150.0, 20.0, 160.0, 180.0)]),
    ("camera", [(110.0, 30.0, 260.0, 450.0), (170.0, 40.0, 150.0, 200.0)]),
]
KINDS = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")
OUTLIERS = 4  # channels of the residual stream with large layer-norm gains
OUTLIER_GAIN = 12.0


def realistic_weights(cfg, seed=0):
    """Random weights (model.random_weights) with OUTLIERS channels of large gain in every layer norm."""
    w = model_mod.random_weights(cfg, seed)
    channels = np.random.default_rng(seed + 1).choice(cfg.dim, OUTLIERS, replace=False)
    for key in w:
        if key.endswith(("norm1.weight", "norm2.weight")):
            w[key][channels] *= OUTLIER_GAIN
    return w


def study_model(weights, meta, int8_kinds, smooth=True):
    """An int8 model whose linear layers of `int8_kinds` only run in int8 (the per-layer measurement)."""
    saved = model_mod.INT8_IN_FP32, model_mod.INT8_SMOOTHED
    model_mod.INT8_IN_FP32 = tuple(k for k in KINDS if k not in int8_kinds)
    if not smooth:
        model_mod.INT8_SMOOTHED = {}
    try:
        return model_mod.from_weights(weights, meta, "int8")
    finally:
        model_mod.INT8_IN_FP32, model_mod.INT8_SMOOTHED = saved


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(model_mod.VARIANTS), choices=list(model_mod.VARIANTS))
    parser.add_argument("--head", default="classic", choices=("classic", "simple"))
    parser.add_argument("--study", action="store_true", help="also int8 one layer kind at a time (which to keep)")
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    args = parser.parse_args(argv)
    cases = [(getattr(skimage.data, name)(), boxes) for name, boxes in CASES]
    lines = [f"Drift against fp32 on random weights ({args.head} head, {OUTLIERS} outlier channels of gain "
             f"{OUTLIER_GAIN:g}); images: {', '.join(n for n, _ in CASES)}; "
             f"kernels: bf16 {gemm_bf16.INSTRUCTION if gemm_bf16.FAST else 'fallback'}, "
             f"int8 {gemm_int8.INSTRUCTION if gemm_int8.FAST else 'fallback'}, "
             f"attention {'bf16 ' + attention_bf16.INSTRUCTION if attention_bf16.FAST else 'fp32'}; int8 keeps in fp32: "
             f"{', '.join(model_mod.INT8_IN_FP32) or 'no layer'}; head deconvolutions at the model's precision",
             "", f"| model | precision | {drift.HEADER} |", "|" + "---|" * 10]
    for variant in args.variants:
        cfg = dataclasses.replace(model_mod.VARIANTS[variant], head=args.head)
        meta = dict(dataclasses.asdict(cfg), dataset="coco", mode="udp")
        weights = realistic_weights(cfg)
        t = time.perf_counter()
        reference = drift.pipeline_outputs(model_mod.from_weights(weights, meta), cases)
        rows = [(p, lambda p=p: model_mod.from_weights(weights, meta, p)) for p in ("bf16", "int8")]
        if args.study:
            rows += [(f"int8 {k.split('.')[1]} only", lambda k=k: study_model(weights, meta, [k])) for k in KINDS]
            rows.append(("int8 all four", lambda: study_model(weights, meta, KINDS)))
            rows.append(("int8 all four, not smoothed", lambda: study_model(weights, meta, KINDS, smooth=False)))
        for name, make in rows:
            d = drift.measure(reference, drift.pipeline_outputs(make(), cases))
            lines.append(f"| {variant} | {name} | {d.row()} |")
            print(lines[-1], flush=True)
        print(f"# {variant}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
