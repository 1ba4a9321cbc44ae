"""Side-by-side benchmark: npvitpose vs PyTorch eager (transformers' VitPose) vs ONNX Runtime.

    pip install -e ".[bench]"
    python tools/bench.py                      # B simple + classic, S, L, H; batch 1, 4, 16 (~20 min)
    python tools/bench.py --variants vitpose-s:classic --batches 1 16 --repeats 2

The same random weights run in every engine. Each engine lives in its own worker process (so peak
RSS is its own); forwards are interleaved across engines round by round, and medians are reported
with min-max, because this kind of machine is noisy. Ratios to ONNX Runtime are each round's own
(median and min-max over rounds): a round the shared machine slows, it slows for every engine. The
matrix-product roofline (NumPy's sgemm at the model's exact GEMM shapes) is measured in the same run. Writes JSON, a markdown table and a PNG.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import npvitpose  # noqa: F401  (first, as the README advises: it sets the thread-pool wait policies)
import numpy as np

ENGINES = ("npvitpose", "npvitpose-bf16", "npvitpose-int8", "torch", "onnxruntime")
DEFAULT_ENGINES = ("npvitpose", "torch", "onnxruntime")


# ---------------------------------------------------------------- the worker side (one engine each)

def hf_model(variant, head, seed=0):
    """transformers' VitPoseForPoseEstimation with seeded random weights of a named variant's shapes."""
    import torch
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    from npvitpose.model import VARIANTS

    cfg = VARIANTS[variant]
    torch.manual_seed(seed)
    backbone = VitPoseBackboneConfig(hidden_size=cfg.dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
                                     intermediate_size=cfg.mlp_hidden, out_indices=[cfg.depth], layer_norm_eps=1e-6)
    model = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, use_simple_decoder=head == "simple",
                                                   num_labels=17))
    return model.eval()


def prepare(variant, head, folder):
    """Write the HF folder, the converted .npz and the ONNX export for one variant into `folder`."""
    import torch

    from npvitpose.convert import convert

    folder = Path(folder)
    model = hf_model(variant, head)
    model.save_pretrained(folder / "hf")
    convert(folder / "hf", folder / "model.npz")

    class Heatmaps(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(pixel_values=x).heatmaps

    x = torch.zeros(1, 3, 256, 192)
    torch.onnx.export(Heatmaps(model), (x,), str(folder / "model.onnx"), input_names=["pixel_values"],
                      output_names=["heatmaps"], dynamic_axes={"pixel_values": {0: "batch"}, "heatmaps": {0: "batch"}},
                      dynamo=False)


def load_engine(engine, folder, threads):
    """A function pixels (B, 3, 256, 192) float32 -> heatmaps, for one engine, on `threads` threads."""
    folder = Path(folder)
    if engine.startswith("npvitpose"):
        import npvitpose
        from npvitpose.threads import set_threads

        set_threads(threads)
        precision = engine.partition("-")[2]
        model = npvitpose.load(folder / "model.npz", **({"precision": precision} if precision else {}))
        return model.forward
    if engine == "torch":
        import torch
        from transformers import VitPoseForPoseEstimation

        torch.set_num_threads(threads)
        model = VitPoseForPoseEstimation.from_pretrained(folder / "hf").eval()

        def run(pixels):
            with torch.inference_mode():
                return model(pixel_values=torch.from_numpy(pixels)).heatmaps.numpy()
        return run
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    return lambda pixels: session.run(None, {"pixel_values": pixels})[0]


def peak_rss_mb():
    """This process's peak resident memory. Not getrusage's ru_maxrss: Linux carries it over exec() from the
    forked parent (this driver, holding a model), so every worker reported the driver's peak."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args):
    """Answer `batch` lines on stdin with one timed forward each; `rss` with the peak RSS so far."""
    run = load_engine(args.engine, args.folder, args.threads)
    model = getattr(run, "__self__", None)  # npvitpose: the Model behind `forward`
    warmed = set()
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "rss":
            out = {"rss_mb": peak_rss_mb()}
        elif cmd[0] == "profile":
            from npvitpose.bench import profile

            total, rows = profile(model, int(cmd[1]))
            out = {"seconds": total, "rows": rows}
        elif cmd[0] == "info":
            from npvitpose.bench import blas_info, ceiling, kernel_info

            out = {"blas": blas_info(), "kernel": kernel_info(),
                   "ceilings": {p: ceiling(p) for p in ("fp32", "bf16", "int8")}}  # None: not this CPU's path
        elif cmd[0] == "roofline":
            from npvitpose.bench import gemm_roofline

            out = {"seconds": gemm_roofline(model, int(cmd[1]))}
        else:
            batch = int(cmd[1])
            pixels = np.random.default_rng(batch).standard_normal((batch, 3, 256, 192)).astype(np.float32)
            if batch not in warmed:
                run(pixels)
                warmed.add(batch)
            t = time.perf_counter()
            run(pixels)
            out = {"seconds": time.perf_counter() - t}
        print(json.dumps(out), flush=True)


# ---------------------------------------------------------------- the driver

class Worker:
    def __init__(self, engine, folder, variant, head, threads):
        cmd = [sys.executable, __file__, "--worker", engine, "--folder", str(folder), "--variant", variant,
               "--head", head, "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"worker died on {line!r}")
        return json.loads(reply)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def peak_rss(engine, folder, variant, head, threads):
    """Peak RSS of a fresh process that loads the engine and runs batch 1 three times."""
    w = Worker(engine, folder, variant, head, threads)
    for _ in range(3):
        w.ask("forward 1")
    rss = w.ask("rss")["rss_mb"]
    w.close()
    return rss


def startup(folder, image, boxes, repeats=3):
    """Wall time of `npvitpose infer` for one image and one box, cold (a new, empty JIT cache each time) and warm
    (the cache the cold run just left): medians of `repeats` pairs, with every run's figure beside them."""
    runs = {"cold": [], "warm": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            for label in ("cold", "warm"):
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "npvitpose.cli", "infer", str(image), str(boxes), "--model",
                                str(Path(folder) / "model.npz"), "-o", os.path.join(cache, "out.json")],
                               env=env, check=True, capture_output=True)
                runs[label].append(time.perf_counter() - t)
    return {"cold": float(np.median(runs["cold"])), "warm": float(np.median(runs["warm"])),
            "cold_runs": runs["cold"], "warm_runs": runs["warm"]}


def median_range(values):
    return float(np.median(values)), float(min(values)), float(max(values))


def bench_variant(variant, head, batches, repeats, threads, workdir, engines):
    folder = Path(workdir) / f"{variant}-{head}"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "model.onnx").exists():
        subprocess.run([sys.executable, __file__, "--prepare", "--folder", str(folder), "--variant", variant,
                        "--head", head], check=True)
    from npvitpose.bench import build, forward_flops

    result = {"variant": variant, "head": head, "threads": threads, "rss_mb": {}, "per_crop_ms": {},
              "gflop_per_crop": forward_flops(build(variant, head).config) / 1e9}
    for engine in engines:
        result["rss_mb"][engine] = peak_rss(engine, folder, variant, head, threads)
    workers = {e: Worker(e, folder, variant, head, threads) for e in engines}
    ceilings = {}
    samples = {(e, b): [] for e in engines for b in batches}
    roof = {b: [] for b in batches}
    # any npvitpose worker runs the probes and the roofline (both fp32 and NumPy: its precision does not matter)
    ours = workers[next(e for e in engines if e.startswith("npvitpose"))]
    for _ in range(repeats):
        info = ours.ask("info")  # the probes run between rounds, as loaded as the forwards
        for p, c in info.pop("ceilings").items():
            ceilings.setdefault(p, []).append(c)
        result.update(info)
        for b in batches:
            for e in engines:
                samples[e, b].append(1e3 * workers[e].ask(f"forward {b}")["seconds"] / b)
            roof[b].append(1e3 * ours.ask(f"roofline {b}")["seconds"] / b)
    result["fp32_ceiling_gflops"] = max(ceilings["fp32"]) / 1e9
    result["ceiling_gops"] = {p: None if None in c else max(c) / 1e9 for p, c in ceilings.items()}
    if "npvitpose" in workers:
        result["profile"] = {str(b): workers["npvitpose"].ask(f"profile {b}") for b in (batches[0], batches[-1])}
    for w in workers.values():
        w.close()
    for b in batches:
        result["per_crop_ms"][str(b)] = {e: median_range(samples[e, b]) for e in engines}
        result["per_crop_ms"][str(b)]["gemm_roofline"] = median_range(roof[b])
        if "onnxruntime" in engines:  # each round's own ratio: a round the shared machine slows, it slows for all
            ort = samples["onnxruntime", b]
            result.setdefault("vs_ort", {})[str(b)] = {
                e: median_range([t / o for t, o in zip(samples[e, b], ort)]) for e in engines if e != "onnxruntime"}
    return result


def scaling(variant, head, batch, workdir, repeats):
    """npvitpose per-crop ms on 1 and on 2 threads."""
    folder = Path(workdir) / f"{variant}-{head}"
    out = {}
    for n in (1, 2):
        w = Worker("npvitpose", folder, variant, head, n)
        out[n] = float(np.median([1e3 * w.ask(f"forward {batch}")["seconds"] / batch for _ in range(repeats)]))
        w.close()
    return out


_LABELS = {"npvitpose": "npvitpose fp32", "npvitpose-bf16": "npvitpose bf16", "npvitpose-int8": "npvitpose int8",
           "onnxruntime": "ONNX Runtime", "torch": "PyTorch"}


def markdown(results, start, scale):
    engines = [e for e in _LABELS if any(e in row for r in results for row in r["per_crop_ms"].values())]
    ours = [e for e in engines if e.startswith("npvitpose")]
    head = [f"{_LABELS[e]} ms/crop" for e in engines] + [f"{_LABELS[e]} vs ORT" for e in ours if "onnxruntime" in engines]
    # a low precision's share is of its own instruction's ceiling (vdpbf16ps, vpdpbusd), where the probe measured it
    lowp = [(e, e.split("-")[1]) for e in ours if e != "npvitpose"
            and any((r.get("ceiling_gops") or {}).get(e.split("-")[1]) for r in results)]
    head += ["fp32 of ceiling"] + [f"{p} of {p} ceiling" for _, p in lowp] + ["ORT of fp32 ceiling",
                                                                              "BLAS-only GEMM roofline ms/crop"]
    lines = []
    for r in results:
        measured = ", ".join(f"{p} {g:.0f}" for p, g in (r.get("ceiling_gops") or {}).items() if g)
        lines.append(f"- {r['variant']} {r['head']}: {r['gflop_per_crop']:.1f} GFLOP/crop; measured ceilings on "
                     f"{r['threads']} threads (GOP/s): {measured or 'fp32 ' + format(r['fp32_ceiling_gflops'], '.0f')}; "
                     f"linear layers: {r['kernel']}; BLAS: {r['blas']}")
    lines += ["", "| model | batch | " + " | ".join(head) + " |", "|---" * (2 + len(head)) + "|"]
    nan = (float("nan"),) * 3
    for r in results:
        peak = r["fp32_ceiling_gflops"]
        for b, row in r["per_crop_ms"].items():
            cells = [f"{row[e][0]:.1f} ({row[e][1]:.1f}-{row[e][2]:.1f})" if e in row else "-" for e in engines]
            ratio = r.get("vs_ort", {}).get(b, {})
            cells += [f"{ratio[e][0]:.2f}x ({ratio[e][1]:.2f}-{ratio[e][2]:.2f})" if e in ratio else "-"
                      for e in ours if "onnxruntime" in engines]
            def share(e, gops):
                return f"{r['gflop_per_crop'] / (row[e][0] * 1e-3) / gops:.0%}" if e in row and gops else "-"

            cells += [share("npvitpose", peak)] + [share(e, (r.get("ceiling_gops") or {}).get(p)) for e, p in lowp]
            cells += [share("onnxruntime", peak), f"{row.get('gemm_roofline', nan)[0]:.1f}"]
            lines.append(f"| {r['variant']} {r['head']} | {b} | " + " | ".join(cells) + " |")
    lines += ["", "| model | " + " | ".join(f"peak RSS, batch 1, {_LABELS[e]} (MB)" for e in engines) + " |",
              "|---" * (1 + len(engines)) + "|"]
    for r in results:
        lines.append(f"| {r['variant']} {r['head']} | " + " | ".join(
            f"{r['rss_mb'][e]:.0f}" if e in r["rss_mb"] else "-" for e in engines) + " |")
    for r in results:
        for b, prof in r.get("profile", {}).items():
            total = prof["seconds"]
            lines += ["", f"Where one npvitpose forward's time goes: {r['variant']} {r['head']}, batch {b}, "
                          f"{1e3 * total / int(b):.1f} ms/crop", "", "| part | ms/crop | share |", "|---|---|---|"]
            for name, sec in sorted(prof["rows"].items(), key=lambda kv: -kv[1]):
                lines.append(f"| {name} | {1e3 * sec / int(b):.2f} | {sec / total:.1%} |")
        break
    if scale:
        lines += ["", f"Thread scaling (npvitpose, {scale['model']}, batch {scale['batch']}): "
                      f"1 thread {scale[1]:.1f} ms/crop, 2 threads {scale[2]:.1f} ms/crop ({scale[1] / scale[2]:.2f}x)"]
    if start:
        lines += ["", f"`npvitpose infer`, one image and one box (flip test: 2 crops), {start['model']}: cold JIT cache "
                      f"{start['cold']:.2f} s, warm {start['warm']:.2f} s; minus the forward: cold "
                      f"{start['cold'] - start['forward']:.2f} s, warm {start['warm'] - start['forward']:.2f} s"]
    return "\n".join(lines) + "\n"


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, r in zip(axes[0], results):
        batches = [int(b) for b in r["per_crop_ms"]]
        for key, label in list(_LABELS.items()) + [("gemm_roofline", "BLAS-only GEMM roofline")]:
            if key in r["per_crop_ms"][str(batches[0])]:
                ys = [r["per_crop_ms"][str(b)][key][0] for b in batches]
                ax.plot(batches, ys, "o-" if key != "gemm_roofline" else "k--", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch (crops per forward)")
        ax.set_ylabel("ms per crop")
        ax.set_title(f"{r['variant']} {r['head']}")
        ax.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["vitpose-b:simple", "vitpose-b:classic", "vitpose-s:classic",
                                                     "vitpose-l:classic", "vitpose-h:classic"],
                   help="variant:head pairs")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--engines", nargs="+", default=list(DEFAULT_ENGINES), choices=ENGINES,
                   help="npvitpose-bf16 / npvitpose-int8: the opt-in precisions, where this npvitpose has them")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "npvitpose-bench"))
    p.add_argument("--out", default="docs/bench", help="prefix of the .json, .md and .png written")
    p.add_argument("--no-startup", action="store_true", help="skip the `npvitpose infer` start-up timing")
    p.add_argument("--no-scaling", action="store_true", help="skip the 1- vs 2-thread run")
    p.add_argument("--worker", choices=ENGINES, dest="engine", help=argparse.SUPPRESS)
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--head", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.engine:
        return worker(args)
    if args.prepare:
        return prepare(args.variant, args.head, args.folder)
    import inspect

    if not any(e.startswith("npvitpose") for e in args.engines):
        p.error("--engines: name at least one npvitpose engine (it runs the ceiling probes and the roofline)")
    if any("-" in e for e in args.engines) and "precision" not in inspect.signature(npvitpose.load).parameters:
        p.error("this npvitpose has no precision= yet: drop npvitpose-bf16 / npvitpose-int8 from --engines")
    results = []
    for spec in args.variants:
        variant, head = spec.split(":")
        print(f"benchmarking {variant} {head} ...", file=sys.stderr, flush=True)
        results.append(bench_variant(variant, head, args.batches, args.repeats, args.threads, args.workdir,
                                     args.engines))
    first = results[0]
    scale = None if args.no_scaling else dict(
        scaling(first["variant"], first["head"], args.batches[-1], args.workdir, 3),
        model=f"{first['variant']} {first['head']}", batch=args.batches[-1])
    start = None
    if not args.no_startup:
        from skimage import data

        import cv2
        folder = Path(args.workdir) / f"{first['variant']}-{first['head']}"
        image, boxes = folder / "astronaut.jpg", folder / "boxes.json"
        cv2.imwrite(str(image), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
        boxes.write_text(json.dumps([[120, 20, 260, 490]]))
        forward = 2 * first["per_crop_ms"][str(min(int(b) for b in first["per_crop_ms"]))]["npvitpose"][0] / 1e3
        start = dict(startup(folder, image, boxes), forward=forward, model=f"{first['variant']} {first['head']}")
    table = markdown(results, start, scale)
    Path(args.out + ".json").write_text(json.dumps({"results": results, "startup": start, "scaling": scale}, indent=1))
    Path(args.out + ".md").write_text(table)
    plot(results, args.out + ".png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
