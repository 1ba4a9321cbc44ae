"""Time of the person detector per image beside the pose model's, on random weights (no download).

The detectors are YOLOX-S (640x640) and YOLOX-Tiny (416x416) rebuilt here in PyTorch from the YOLOX paper
and repository layout (CSPDarknet backbone with Focus stem and SPP, PAFPN neck, decoupled head; 9.0 M and
5.1 M parameters), with batch norms set from real photos, exported to ONNX and run by
npvitpose.Detector (cv2.dnn) and by ONNX Runtime on the same file; the pose model is ViTPose-B with the
flip test (two crops per person). Rounds are interleaved; medians are printed with min-max.

    pip install -e ".[bench]"
    python tools/bench_detector.py              # ~2 min; --rounds, --threads
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def yolox(width, depth):
    """YOLOX with width/depth multipliers (S: 0.5/0.33, Tiny: 0.375/0.33): raw head output (1, N, 85)."""
    import torch
    from torch import nn

    def conv(cin, cout, k=1, s=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())

    class Bottleneck(nn.Module):
        def __init__(self, c, shortcut):
            super().__init__()
            self.a, self.b, self.shortcut = conv(c, c, 1), conv(c, c, 3), shortcut

        def forward(self, x):
            y = self.b(self.a(x))
            return x + y if self.shortcut else y

    class CSP(nn.Module):
        def __init__(self, cin, cout, n, shortcut=True):
            super().__init__()
            h = cout // 2
            self.a, self.b, self.c = conv(cin, h), conv(cin, h), conv(2 * h, cout)
            self.m = nn.Sequential(*[Bottleneck(h, shortcut) for _ in range(n)])

        def forward(self, x):
            return self.c(torch.cat([self.m(self.a(x)), self.b(x)], 1))

    class SPP(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.a, self.b = conv(c, c // 2), conv(c // 2 * 4, c)
            self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13))

        def forward(self, x):
            x = self.a(x)
            return self.b(torch.cat([x] + [p(x) for p in self.pools], 1))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            c = [int(v * width) for v in (64, 128, 256, 512, 1024)]
            n = max(round(3 * depth), 1)
            self.stem = conv(12, c[0], 3)  # Focus: space-to-depth, then a 3x3 conv
            self.dark2 = nn.Sequential(conv(c[0], c[1], 3, 2), CSP(c[1], c[1], n))
            self.dark3 = nn.Sequential(conv(c[1], c[2], 3, 2), CSP(c[2], c[2], 3 * n))
            self.dark4 = nn.Sequential(conv(c[2], c[3], 3, 2), CSP(c[3], c[3], 3 * n))
            self.dark5 = nn.Sequential(conv(c[3], c[4], 3, 2), SPP(c[4]), CSP(c[4], c[4], n, False))
            self.lat0, self.p4 = conv(c[4], c[3]), CSP(2 * c[3], c[3], n, False)
            self.red1, self.p3 = conv(c[3], c[2]), CSP(2 * c[2], c[2], n, False)
            self.bu2, self.n3 = conv(c[2], c[2], 3, 2), CSP(2 * c[2], c[3], n, False)
            self.bu1, self.n4 = conv(c[3], c[3], 3, 2), CSP(2 * c[3], c[4], n, False)
            hw = int(256 * width)
            self.heads = nn.ModuleList()
            for cin in (c[2], c[3], c[4]):
                self.heads.append(nn.ModuleDict({
                    "stem": conv(cin, hw), "cls": nn.Sequential(conv(hw, hw, 3), conv(hw, hw, 3)),
                    "reg": nn.Sequential(conv(hw, hw, 3), conv(hw, hw, 3)), "cls_pred": nn.Conv2d(hw, 80, 1),
                    "reg_pred": nn.Conv2d(hw, 4, 1), "obj_pred": nn.Conv2d(hw, 1, 1)}))
            self.up = nn.Upsample(scale_factor=2, mode="nearest")

        def forward(self, x):
            x = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
            d3 = self.dark3(self.dark2(self.stem(x)))
            d4 = self.dark4(d3)
            d5 = self.dark5(d4)
            f0 = self.lat0(d5)
            f1 = self.red1(self.p4(torch.cat([self.up(f0), d4], 1)))
            p3 = self.p3(torch.cat([self.up(f1), d3], 1))
            n3 = self.n3(torch.cat([self.bu2(p3), f1], 1))
            n4 = self.n4(torch.cat([self.bu1(n3), f0], 1))
            outs = []
            for f, h in zip((p3, n3, n4), self.heads):
                f = h["stem"](f)
                r = h["reg"](f)
                outs.append(torch.cat([h["reg_pred"](r), h["obj_pred"](r).sigmoid(),
                                       h["cls_pred"](h["cls"](f)).sigmoid()], 1).flatten(2))
            return torch.cat(outs, 2).permute(0, 2, 1)

    return Net()


def export(path, width, depth, size):
    import torch
    from detector_models import set_batchnorm_from_photos

    torch.manual_seed(0)
    net = set_batchnorm_from_photos(yolox(width, depth), (size, size))
    params = sum(p.numel() for p in net.parameters()) / 1e6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 3, size, size), path, dynamo=False, opset_version=11,
                          input_names=["images"], output_names=["output"])
    return params


def timed(fn, warmup=2, repeat=5):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)

    import cv2
    import onnxruntime as ort
    from skimage import data

    from npvitpose.detector import Detector, letterbox
    from npvitpose.model import VARIANTS, from_weights, random_weights
    from npvitpose.threads import set_threads
    from npvitpose.datasets import DATASETS

    cv2.setNumThreads(args.threads)
    set_threads(args.threads)
    photo = np.ascontiguousarray(cv2.resize(data.astronaut(), (640, 480)))  # RGB, a VGA frame
    folder = tempfile.mkdtemp(prefix="bench_det_")
    engines = {}
    for name, width, depth, size in (("yolox-s", 0.5, 0.33, 640), ("yolox-tiny", 0.375, 0.33, 416)):
        path = os.path.join(folder, f"{name}.onnx")
        params = export(path, width, depth, size)
        det = Detector(path, score_thr=0.3, nms_thr=0.3)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        blob, _ = letterbox(np.ascontiguousarray(photo[:, :, ::-1]), size, size)
        engines[f"{name} {size} ({params:.1f} M), npvitpose.Detector (cv2.dnn {cv2.__version__})"] = \
            lambda det=det: det(photo)
        engines[f"{name} {size}, cv2.dnn forward alone"] = lambda det=det, blob=blob: det.forward(blob)
        engines[f"{name} {size}, ONNX Runtime {ort.__version__} forward alone"] = \
            lambda s=session, blob=blob: s.run(None, {"images": blob})
    cfg = VARIANTS["vitpose-b"]
    coco = DATASETS["coco"]
    meta = {"dim": cfg.dim, "depth": cfg.depth, "heads": cfg.heads, "mlp_hidden": cfg.mlp_hidden,
            "num_keypoints": 17, "head": "classic", "ln_eps": cfg.ln_eps, "dataset": "coco",
            "keypoint_names": list(coco.keypoint_names), "skeleton": [list(p) for p in coco.skeleton],
            "flip_pairs": [list(p) for p in coco.flip_pairs], "mode": coco.mode}
    model = from_weights(random_weights(cfg), meta)
    box1 = np.array([[220.0, 40.0, 200.0, 420.0]])
    box4 = np.array([[20.0 + 150 * i, 40.0, 140.0, 420.0] for i in range(4)])
    engines["vitpose-b, 1 person (flip test: 2 crops)"] = lambda: model(photo, box1)
    engines["vitpose-b, 4 people (8 crops)"] = lambda: model(photo, box4)
    first = next(k for k in engines if k.startswith("yolox-s") and "Detector" in k)
    # one frame as `infer` runs it: OpenCV's thread pool and Numba's/BLAS's take turns
    engines["yolox-s detection then vitpose-b on 1 person"] = lambda: (engines[first](), model(photo, box1))

    results = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, fn in engines.items():
            results[name].append(timed(fn) * 1000)
    print(f"threads {args.threads}, {args.rounds} interleaved rounds, ms per 640x480 image: median (min-max)")
    for name, ms in results.items():
        print(f"| {name} | {statistics.median(ms):.1f} ({min(ms):.1f}-{max(ms):.1f}) |")
    det = statistics.median(results[first])
    pose = statistics.median(results["vitpose-b, 1 person (flip test: 2 crops)"])
    both = statistics.median(results["yolox-s detection then vitpose-b on 1 person"])
    print(f"yolox-s detection / vitpose-b one person: {det / pose:.2f}x; "
          f"one frame / (detection + pose measured apart): {both / (det + pose):.2f}x")


if __name__ == "__main__":
    main()
