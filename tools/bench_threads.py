"""Threads on a busy machine (issue 11 item 7): the pose pipeline on each frame of a short video while
busy loops of our own compete for the cores, under several thread settings, interleaved.

Each setting has its own process (OMP_WAIT_POLICY and the threading layer are read when the libraries
load), started before the load: it loads the model and runs one frame (kernels loaded from the cache,
pools started); then, round after round, each times `model(frame, box)` on every frame in turn, with
`--detector` a person detector first, as `infer` without boxes does. The load is `--load N` processes spinning at the same priority, started before the rounds and
killed at the end, also on SIGTERM. Run it as benchmarks run here:

    flock /tmp/bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/bench_threads.py --load 1

Random ViT-S weights (`--variant`), one person box per frame, flip test: two crops per forward.
"""

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout, as the children get it through PYTHONPATH

# name -> (environment, extra infer arguments); "auto" is the default the package picks
SETTINGS = {
    "default": ({}, []),
    "threads 1": ({}, ["--threads", "1"]),
    "threads 2": ({}, ["--threads", "2"]),
    "2, OMP active": ({"OMP_WAIT_POLICY": "ACTIVE"}, ["--threads", "2"]),
    "2, workqueue": ({"NUMBA_THREADING_LAYER": "workqueue"}, ["--threads", "2"]),
    "2, tbb": ({"NUMBA_THREADING_LAYER": "tbb"}, ["--threads", "2"]),
    "2, BLAS 1 thread": ({"OPENBLAS_NUM_THREADS": "1"}, []),  # Numba's 2 threads, OpenBLAS's pool out of the way
    "2, BLAS spinning": ({"OPENBLAS_THREAD_TIMEOUT": "28"}, []),  # OpenBLAS's own default: idle threads spin 2^28
}

CHILD = r"""
import os, sys, time
import npvitpose, numba
import cv2
import numpy as np
from npvitpose import threads
image, video, boxes, model, detector, *extra = sys.argv[1:]
n = int(extra[1]) if extra[:1] == ["--threads"] else None
if n is not None:  # as `infer --threads N` does
    threads.set_threads(n)
    cv2.setNumThreads(n)
if os.environ.get("BENCH_CHUNKSIZE"):
    numba.set_parallel_chunksize(int(os.environ["BENCH_CHUNKSIZE"]))
model = npvitpose.load(model)
det = npvitpose.Detector(detector) if detector != "-" else None
box = [[190, 50, 260, 420]]
frames = []
capture = cv2.VideoCapture(video)
while True:
    ok, frame = capture.read()
    if not ok:
        break
    frames.append(frame)
def one(frame):
    if det is not None:
        det(frame[:, :, ::-1].copy())
    model(frame, box, color="bgr")
one(frames[0])  # warm: kernels loaded, pools started
print("ready", flush=True)
for _ in sys.stdin:  # one timed pass over the video per line
    t = time.perf_counter()
    for frame in frames:
        one(frame)
    print(time.perf_counter() - t, numba.threading_layer(), numba.get_num_threads(), flush=True)
"""


def make_inputs(folder, variant, frames):
    import cv2
    import numpy as np

    from npvitpose import datasets, model

    cfg = model.VARIANTS[variant]
    ds = datasets.DATASETS["coco"]
    meta = {"dim": cfg.dim, "depth": cfg.depth, "heads": cfg.heads, "mlp_hidden": cfg.mlp_hidden,
            "num_keypoints": 17, "head": "classic", "ln_eps": 1e-6, "dataset": "coco",
            "keypoint_names": list(ds.keypoint_names), "skeleton": [list(p) for p in ds.skeleton],
            "flip_pairs": [list(p) for p in ds.flip_pairs], "mode": ds.mode, "source_name": "random",
            "source_format": "npz", "source_sha256": None, "moe": None}
    paths = {k: os.path.join(folder, n) for k, n in
             (("model", "model.npz"), ("image", "one.jpg"), ("video", "clip.avi"), ("boxes", "boxes.json"))}
    model.save_npz(paths["model"], model.random_weights(cfg, seed=0), meta)
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(paths["video"], cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 480))
    for i in range(frames):
        frame = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        cv2.rectangle(frame, (200 + i, 60), (420 + i, 460), (40, 200, 90), -1)
        writer.write(frame)
    writer.release()
    cv2.imwrite(paths["image"], frame)
    with open(paths["boxes"], "w") as f:
        json.dump([[190, 50, 260, 420, 1.0]], f)
    return paths


LOADS = {
    "spin": "while os.getppid() == parent:\n    for _ in range(200000): pass",
    # another parallel program: ViT-S forwards of 2 crops on all cores, as a second npvitpose job would run
    "pose": "import numpy as np\nfrom npvitpose import bench\nm = bench.build('vitpose-s')\n"
            "x = np.zeros((2, 3, 256, 192), np.float32)\nwhile os.getppid() == parent:\n    m.forward(x)",
}


def start_load(n, kind):
    # each runs until its parent is gone, so no load outlives this script even if it is killed (-9)
    code = "import os\nparent = os.getppid()\n" + LOADS[kind]
    return [subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT))
            for _ in range(n)]


def kill_load(procs):
    """Safe in a signal handler: no Popen.wait (its lock may be held by the code the signal interrupted)."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)


def stop_load(procs):
    kill_load(procs)
    for p in procs:
        p.wait()


def make_cgroup(cpus):
    """A cgroup (v2, else v1 cpu controller; root only) whose processes share `cpus` CPUs' worth of time, as
    `docker --cpus` gives a container; -> its folder. Removed by remove_cgroup."""
    name = f"npvitpose-bench-{os.getpid()}"
    period = 100000
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        folder = os.path.join("/sys/fs/cgroup", name)
        os.mkdir(folder)
        with open(os.path.join(folder, "cpu.max"), "w") as f:
            f.write(f"{int(cpus * period)} {period}")
    else:
        folder = os.path.join("/sys/fs/cgroup/cpu", name)
        os.mkdir(folder)
        with open(os.path.join(folder, "cpu.cfs_period_us"), "w") as f:
            f.write(str(period))
        with open(os.path.join(folder, "cpu.cfs_quota_us"), "w") as f:
            f.write(str(int(cpus * period)))
    return folder


def remove_cgroup(folder):
    for _ in range(50):  # the group empties as its processes are reaped
        try:
            os.rmdir(folder)
            return
        except OSError:
            time.sleep(0.1)


class Worker:
    """One setting's process: started (and warmed) before the load, then timed on request, so each round
    costs only the frames, never an interpreter's start-up."""

    def __init__(self, paths, setting, extra_env, nice=0, cgroup=None):
        env, args = SETTINGS[setting]
        env = dict(os.environ, PYTHONPATH=ROOT, **env, **extra_env.get(setting, {}))
        self.setting = setting
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, paths["image"], paths["video"], paths["boxes"],
                                      paths["model"], paths.get("detector", "-"), *args],
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     preexec_fn=lambda: self._enter(nice, cgroup))

    @staticmethod
    def _enter(nice, cgroup):  # in the child, before it runs Python: the priority and the CPU quota it lives under
        if nice:
            os.nice(nice)
        if cgroup is not None:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    def _line(self):
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.setting}: the worker failed (its stderr is above)")
        return line.split()

    def ready(self):
        assert self._line() == ["ready"]

    def time(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        seconds, layer, threads = self._line()
        return float(seconds), layer, int(threads)

    def close(self):
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="vitpose-s")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--load", type=int, nargs="+", default=[1], help="busy processes (several: one pass each)")
    parser.add_argument("--load-kind", choices=list(LOADS), default="spin",
                        help="spin: a busy loop; pose: ViT-S forwards on all cores in a loop (another parallel job)")
    parser.add_argument("--nice", type=int, default=0, help="run the timed processes at this niceness (the load "
                                                                "stays at 0): a low-priority job among others")
    parser.add_argument("--cpu-quota", type=float, metavar="CPUS",
                        help="run the timed processes in a cgroup with this CPU quota, as `docker --cpus` (root)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--chunksize", nargs="*", default=[], metavar="SETTING=N",
                        help="also numba.set_parallel_chunksize(N) in that setting (a name of its own: 'name=N')")
    parser.add_argument("--detector", nargs="?", const="", metavar="FILE.onnx",
                        help="also run a person detector on every frame (default: a random YOLOX-S, 640, exported "
                             "with torch)")
    parser.add_argument("--tbb-lib", help="folder holding libtbb.so.12 (for the tbb setting)")
    args = parser.parse_args(argv)
    extra_env = {}
    settings = list(args.settings)
    for spec in args.chunksize:
        name, n = spec.rsplit("=", 1)
        base = name.split(" chunk")[0]
        SETTINGS[f"{base} chunk {n}"] = (dict(SETTINGS[base][0], BENCH_CHUNKSIZE=n), SETTINGS[base][1])
        settings.append(f"{base} chunk {n}")
    if args.tbb_lib:
        extra_env["2, tbb"] = {"LD_LIBRARY_PATH": args.tbb_lib}
    load = []

    def stop(signum, frame):
        kill_load(load)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    with tempfile.TemporaryDirectory() as folder:
        paths = make_inputs(folder, args.variant, args.frames)
        if args.detector:
            paths["detector"] = args.detector
        elif args.detector == "":
            sys.path.insert(0, os.path.join(ROOT, "tests"))
            sys.path.insert(0, os.path.join(ROOT, "tools"))
            import bench_detector

            paths["detector"] = os.path.join(folder, "yolox-s.onnx")
            bench_detector.export(paths["detector"], 0.5, 0.33, 640)
        for n in args.load:
            times = {s: [] for s in settings}
            info = {}
            cgroup = make_cgroup(args.cpu_quota) if args.cpu_quota else None
            workers = {s: Worker(paths, s, extra_env, args.nice, cgroup) for s in settings}
            try:
                for w in workers.values():
                    w.ready()
                load[:] = start_load(n, args.load_kind)
                time.sleep(0.5 if args.load_kind == "spin" else 5)
                for r in range(args.rounds):
                    order = settings[r % len(settings):] + settings[:r % len(settings)]  # rotate: no fixed slot
                    for s in order:
                        seconds, layer, threads = workers[s].time()
                        times[s].append(seconds)
                        print(f"round {r + 1}: {s}: {seconds:.2f} s", file=sys.stderr, flush=True)
                        info[s] = f"{layer}, {threads} threads"
            finally:
                stop_load(load)
                for w in workers.values():
                    w.close()
                if cgroup is not None:
                    remove_cgroup(cgroup)
            base = statistics.median(times[settings[0]])
            print(f"\n{args.variant}, {args.frames} frames, 1 box (2 crops per forward)"
                  f"{', YOLOX-S 640 on each frame' if args.detector is not None else ''}, {n} x {args.load_kind} load, "
                  f"{f'timed at nice {args.nice}, ' if args.nice else ''}"
                  f"{f'in a cgroup of {args.cpu_quota:g} CPUs, ' if args.cpu_quota else ''}"
                  f"{os.cpu_count()} CPUs, {args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.1f}")
            print(f"| setting | layer | s per video (median) | min-max | vs {settings[0]} |")
            print("|---|---|---|---|---|")
            for s in settings:
                med = statistics.median(times[s])
                print(f"| {s} | {info[s]} | {med:.2f} | {min(times[s]):.2f}-{max(times[s]):.2f} | {med / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
