"""Throughput of `infer --dask local:N` against the single-process run, and the memory of each worker.

    pip install -e ".[dask]"
    python tools/bench_dask.py                       # vitpose-b, 48 images of 1 person, 3 rounds (~5 min)
    python tools/bench_dask.py --variant vitpose-s --images 96 --people 2

Random weights of the variant's shapes, saved as an .npz; synthetic 640x480 JPEGs with COCO detections.
Engines, all on the same cores, each kept alive across rounds and run in turn round by round (the
machine is noisy: compare the ratios): the single-process job (`run.run`, one forward per image) and
the same with crops batched across images (`pipeline.predict_stream`, what a worker does), each in a
process of its own, and
LocalClusters of 1 worker x all cores and N workers x cores/N (model memory-mapped, and read into each
worker for comparison). Every engine's records must equal the single-process ones. Cluster start-up and
the first job (each worker loading the model) are timed apart from the rounds. Memory per worker is read
from /proc/PID/smaps_rollup after the rounds: Rss, Pss (shared pages split between the processes that map
them) and private bytes. Writes docs/bench_dask.json and docs/bench_dask.md.
"""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import npvitpose  # noqa: F401  (first: it sets the thread-pool wait policies before NumPy loads)
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def memory():
    """This process's Rss, Pss and private memory in MB (Linux smaps_rollup)."""
    fields = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) / 1024
    private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return {"rss_mb": round(fields.get("Rss", 0), 1), "pss_mb": round(fields.get("Pss", 0), 1),
            "private_mb": round(private, 1)}


def blas_info():
    from threadpoolctl import threadpool_info

    return [{k: i.get(k) for k in ("internal_api", "architecture", "num_threads")} for i in threadpool_info()]


def make_job(folder, variant, images, people, seed=0):
    """The model, the images and their COCO detections, written into `folder`."""
    import cv2

    from npvitpose.datasets import DATASETS
    from npvitpose.model import VARIANTS, random_weights, save_npz

    cfg = VARIANTS[variant]
    ds = DATASETS["coco"]
    meta = dict(dataclasses.asdict(cfg), dataset="coco", mode=ds.mode, keypoint_names=list(ds.keypoint_names),
                skeleton=[list(p) for p in ds.skeleton], flip_pairs=[list(p) for p in ds.flip_pairs],
                source_name="random", source_format="npz", source_sha256=None, moe=None)
    model = str(folder / f"{variant}.npz")
    save_npz(model, random_weights(cfg, seed), meta)
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir()
    dets = []
    for i in range(images):
        yy, xx = np.mgrid[0:480, 0:640]
        base = np.stack([xx * 255 // 639, yy * 255 // 479, (xx + yy + i) % 256], axis=-1)
        image = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / "images" / f"{i:012d}.jpg"), image)
        for j in range(people):
            x, y = rng.uniform(0, 400), rng.uniform(0, 160)
            dets.append({"image_id": i, "category_id": 1, "bbox": [x, y, 120.0, 300.0], "score": 0.9})
    boxes = folder / "dets.json"
    boxes.write_text(json.dumps(dets))
    return model, str(folder / "images"), str(boxes)


def _single_process(conn, model, batched, threads, dets):
    """A process of its own, as `npvitpose infer` is: no Dask event loop competing for its GIL."""
    from npvitpose.model import load
    from npvitpose.run import Detections, Runner
    from npvitpose.threads import set_threads

    set_threads(threads)
    runner, boxes = Runner(load(model)), Detections(dets)
    while True:
        inputs = conn.recv()
        if inputs is None:
            conn.send(memory())
            return
        t = time.perf_counter()
        records = _batched(runner, inputs, boxes) if batched else _one_by_one(runner, inputs, boxes)
        conn.send((time.perf_counter() - t, records))


def _one_by_one(runner, inputs, boxes):
    from npvitpose.run import run

    records, failed = run(runner, boxes, inputs)
    assert failed == 0
    return records


def _batched(runner, inputs, boxes):
    from npvitpose.images import read_image
    from npvitpose.pipeline import predict_stream

    def items():
        for path in inputs:
            image_id, found, scores = boxes.for_image(path, None)
            yield path, read_image(path), found, (image_id, found, scores)

    records = []
    for _, (image_id, found, scores), kp, sc in predict_stream(runner.model, items()):
        records.extend(runner.records(image_id, *runner.finish(kp, sc, found, scores)))
    return records


class Single:
    """The single-process job in a spawned process: one forward per image as `npvitpose infer` runs it, or
    with the crops of many images batched as a worker runs them."""

    def __init__(self, model, batched, threads, dets):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_single_process, args=(child, model, batched, threads, dets), daemon=True)
        self.process.start()

    def __call__(self, inputs, boxes):
        self.conn.send(list(inputs))
        self.seconds, records = self.conn.recv()
        return records

    def memory(self):
        self.conn.send(None)
        return [self.conn.recv()]

    def close(self):
        self.process.join(timeout=30)


class Cluster:
    """A LocalCluster of `workers` processes x `threads`, its model plugin loaded by a first job."""

    def __init__(self, workers, threads, model, mmap, inputs, boxes):
        from distributed import Client, LocalCluster

        from npvitpose import distributed as D

        self.model, self.mmap = model, mmap
        t = time.perf_counter()
        self.cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, host="127.0.0.1",
                                    dashboard_address=None, scheduler_kwargs=D.LOOPBACK_HTTP, silence_logs=40)
        self.client = Client(self.cluster, set_as_default=False)
        self.start_s = time.perf_counter() - t
        t = time.perf_counter()
        self(inputs[:workers], boxes)  # each worker loads the model and readies its kernels
        self.first_job_s = time.perf_counter() - t

    def __call__(self, inputs, boxes):
        from npvitpose import distributed as D

        return D.infer(self.client, inputs, boxes, model=self.model, mmap=self.mmap)

    def memory(self):
        return list(self.client.run(memory).values())

    def close(self):
        self.client.close()
        self.cluster.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="vitpose-b")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--people", type=int, default=1, help="people per image")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="N of the N-worker clusters")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench_dask"))
    args = parser.parse_args(argv)

    import logging

    from npvitpose.run import Detections, expand_inputs

    logging.getLogger("distributed").setLevel(logging.ERROR)  # the cluster's start and stop lines are noise here

    cores = len(os.sched_getaffinity(0))
    n = args.workers
    with tempfile.TemporaryDirectory() as tmp:
        model, folder, dets = make_job(Path(tmp), args.variant, args.images, args.people)
        inputs, boxes = expand_inputs([folder]), Detections(dets)
        engines = {
            "one process (one forward per image)": Single(model, False, cores, dets),
            "one process, crops batched across images": Single(model, True, cores, dets),
            f"dask local:1 x {cores} threads": Cluster(1, cores, model, True, inputs, boxes),
            f"dask local:{n} x {max(cores // n, 1)} threads": Cluster(n, max(cores // n, 1), model, True, inputs,
                                                                      boxes),
            f"dask local:{n} x {max(cores // n, 1)} threads, no mmap": Cluster(n, max(cores // n, 1), model, False,
                                                                               inputs, boxes),
        }
        reference, times = None, {name: [] for name in engines}
        try:
            for r in range(args.rounds):
                for name, engine in engines.items():
                    t = time.perf_counter()
                    records = engine(inputs, boxes)
                    times[name].append(getattr(engine, "seconds", time.perf_counter() - t))
                    reference = records if reference is None else reference
                    if records != reference:
                        raise SystemExit(f"{name}: records differ from the single-process run")
                    print(f"round {r + 1}: {name}: {times[name][-1]:.2f} s", file=sys.stderr)
            memories = {name: e.memory() for name, e in engines.items()}
            startup = {name: {"start_s": round(e.start_s, 2), "first_job_s": round(e.first_job_s, 2)}
                       for name, e in engines.items() if isinstance(e, Cluster)}
            here = memory()
        finally:
            for e in engines.values():
                e.close()

    base = float(np.median(times[next(iter(engines))]))
    people = args.images * args.people
    rows = []
    for name, ts in times.items():
        med = float(np.median(ts))
        rows.append({"engine": name, "median_s": round(med, 2), "min_s": round(min(ts), 2),
                     "max_s": round(max(ts), 2), "people_per_s": round(people / med, 2),
                     "speedup": round(base / med, 2), "workers": memories.get(name), **startup.get(name, {})})
    result = {"variant": args.variant, "images": args.images, "people_per_image": args.people, "cores": cores,
              "rounds": args.rounds, "blas": blas_info(), "python": sys.version.split()[0],
              "this_process_memory": here, "rows": rows,
              "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}}
    Path(args.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    Path(args.out + ".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result):
    lines = [f"{result['variant']}, {result['images']} images x {result['people_per_image']} person, "
             f"flip test on, {result['cores']} cores, median of {result['rounds']} interleaved rounds", "",
             "| engine | s per job (min-max) | people/s | vs one process | cluster start s | first job s "
             "| per process Rss / Pss / private MB |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        mem = "; ".join(f"{w['rss_mb']:.0f} / {w['pss_mb']:.0f} / {w['private_mb']:.0f}" for w in r["workers"] or [])
        lines.append(f"| {r['engine']} | {r['median_s']:.2f} ({r['min_s']:.2f}-{r['max_s']:.2f}) | "
                     f"{r['people_per_s']:.2f} | {r['speedup']:.2f}x | {r.get('start_s', '')} | "
                     f"{r.get('first_job_s', '')} | {mem} |")
    m = result["this_process_memory"]
    lines += ["", f"The benchmark process (the clusters' schedulers and nannies, their clients): "
                  f"Rss {m['rss_mb']:.0f} MB, Pss {m['pss_mb']:.0f} MB."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
