"""`npvitpose` command line: convert, infer, fetch, bench.

User errors print one line `npvitpose: error: <message>` on stderr and exit 1 (usage errors: 2).
Outputs are written to a temporary file next to the target and renamed, so a failed run leaves no
partial file and an older output in place.
"""

import argparse
import contextlib
import importlib
import json
import os
import sys

import numpy as np

from .errors import NpvitposeError
from .outputs import atomic_output, check_target

PROG = "npvitpose"
# the command's errors are its own one-liners: OpenCV's and FFmpeg's log lines would only add noise to them
os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
DEFAULT_MODEL = "vitpose-b"  # usyd-community/vitpose-base: ViTPose-B, classic head, COCO (spec 7)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pnm")
DRAW_EXTS = tuple(e for e in IMAGE_EXTS if e != ".pgm")  # --vis: .pgm holds grey only, drawings are in colour
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv")
VIDEO_FOURCC = {".mp4": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
DATASET_NAMES = ("coco", "aic", "mpii", "ap10k", "apt36k", "wholebody")
DECODERS = ("default", "argmax", "quarter", "dark-udp")
VIS_THR = 0.2  # spec 5.6: keypoints above this count in the instance score


def _error(message):
    text = " ".join(str(message).split()) or "unknown error"
    sys.stderr.write(f"{PROG}: error: {text}\n")
    sys.stderr.flush()


def _warn(message):
    sys.stderr.write(f"{PROG}: warning: {message}\n")


def _os_message(e):
    name = e.filename if e.filename is not None else ""
    what = e.strerror or str(e) or type(e).__name__
    return f"{what}: {name}" if name else what


# ---------------------------------------------------------------------------------------------- files


def _identity(path):
    """(real path, (device, inode) or None): equal for two names of one file, links included."""
    try:
        st = os.stat(path)
        return os.path.realpath(path), (st.st_dev, st.st_ino)
    except OSError:
        return os.path.realpath(path), None


class _Protected:
    """Files an output must never replace: every input, the detections, the image list, the model."""

    def __init__(self, paths):
        ids = [_identity(p) for p in paths if p is not None]
        self.names = {name for name, _ in ids}
        self.inodes = {inode for _, inode in ids if inode is not None}

    def check(self, target, flag):
        name, inode = _identity(target)
        if name in self.names or (inode is not None and inode in self.inodes):
            raise NpvitposeError(f"{flag} {target!r} is one of the input files; refusing to overwrite it")


def _same_file(a, b):
    (na, ia), (nb, ib) = _identity(a), _identity(b)
    return na == nb or (ia is not None and ia == ib)


def write_text_atomic(path, text):
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_image_atomic(path, image_rgb):
    import cv2

    with atomic_output(path) as tmp:
        try:
            ok = cv2.imwrite(tmp, np.ascontiguousarray(image_rgb[:, :, ::-1]))  # OpenCV encodes BGR
        except cv2.error as e:
            raise NpvitposeError(f"cannot write image {path!r}: {str(e).strip().splitlines()[-1]}") from None
        if not ok:
            raise NpvitposeError(f"cannot write image {path!r} (unsupported extension?)")


def _ext(path):
    return os.path.splitext(str(path))[1].lower()


def _is_video(path):
    return _ext(path) in VIDEO_EXTS


def expand_inputs(paths):
    """Files stay as given (a missing one fails later, on its own); a folder gives its images, sorted."""
    out = []
    for path in paths:
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if _ext(n) in IMAGE_EXTS and not n.startswith("."))
            if not names:
                raise NpvitposeError(f"folder {path!r} holds no images ({', '.join(IMAGE_EXTS)})")
            out.extend(os.path.join(path, n) for n in names)
        else:
            out.append(path)
    return out


# ---------------------------------------------------------------------------------------------- model


def resolve_model(spec, cache=None):
    """`--model`: an existing .npz path, else a published model name, downloaded into the cache on first use."""
    from . import fetch

    if os.path.exists(spec):
        return spec
    try:
        canonical = fetch.canonical_name(spec)
    except NpvitposeError:
        raise NpvitposeError(
            f"model {spec!r}: no such file, and not a known model name (see `npvitpose fetch --list`)"
        ) from None
    path = fetch.model_path(canonical, cache)
    if not os.path.exists(path):
        fetch.endpoint_url()  # a malformed HF_ENDPOINT is reported before the download is announced
        sys.stderr.write(f"{PROG}: model {spec!r} is not in the cache {os.path.dirname(path)!r}; "
                         f"downloading it once from {fetch.SOURCES[canonical].repo}\n")
        path = fetch.fetch(canonical, cache_dir=cache)
    return path


def _set_threads(n):
    if n is None:
        return
    from .threads import set_threads

    used = set_threads(n)  # Numba and BLAS pools together
    if used != n:
        _warn(f"--threads {n}: using {used}, the most this process allows (NUMBA_NUM_THREADS)")


# ---------------------------------------------------------------------------------------------- infer


def roi_areas(boxes):
    """spec 5.5: area = S_w * S_h of the aspect-fixed, 1.25-padded box, as used by OKS-NMS."""
    from .pipeline import padded_size

    return padded_size(np.asarray(boxes, dtype=np.float64)).prod(axis=1)


class Detections:
    """The boxes file, parsed once: either one plain box list or COCO results grouped by image id."""

    def __init__(self, path, args):
        from . import boxes as B

        self.path = path
        self.name = os.path.basename(path)
        data = B.read_json(path)
        self.coco = B.is_coco_results(data)
        if self.coco:
            self.groups = B.group_coco(data, args.box_format, args.bbox_thr, self.name)
            self.plain = None
        else:
            self.plain = B.parse_boxes(data, args.box_format, args.bbox_thr, self.name)
        self.image_list = B.read_image_list(args.images) if args.images else None
        self.image_id = None if args.image_id is None else B.id_key(args.image_id)

    def for_image(self, path):
        """-> (image id, boxes (N, 4) xywh, scores (N,)) for one image file."""
        from . import boxes as B

        if not self.coco:
            image_id = self.image_id if self.image_id is not None else B.id_for_file(path)
            return (0 if image_id is None else image_id), *self.plain
        image_id = self.image_id if self.image_id is not None else B.id_for_file(path, self.image_list)
        if image_id is None:
            how = "it is not in the --images list" if self.image_list is not None else "pass --images or --image-id"
            raise NpvitposeError(f"{path}: cannot tell its COCO image id ({how})")
        return (image_id, *self._group(image_id))

    def for_frame(self, index):
        if not self.coco:
            return self.plain
        return self._group(index)  # a video's detections use the frame index as image_id

    def _group(self, image_id):
        empty = (np.zeros((0, 4)), np.zeros((0,)))
        return self.groups.get(image_id, empty)


class Runner:
    """Runs one model over images or frames and turns each result into COCO keypoint records."""

    def __init__(self, model, args):
        from .datasets import DATASETS

        self.model = model
        self.args = args
        dataset = DATASETS.get(model.meta.get("dataset"))
        self.skeleton = model.meta.get("skeleton") or (dataset.skeleton if dataset else ())
        self.sigmas = dataset.sigmas if dataset is not None else None
        if args.nms_thr is not None and (self.sigmas is None or len(self.sigmas) != model.num_keypoints):
            name = model.meta.get("dataset")
            raise NpvitposeError(f"--nms-thr needs OKS sigmas, which dataset {name!r} does not have")

    def predict(self, image, boxes, box_scores):
        """-> (kept keypoints (N, K, 2), scores (N, K), instance scores (N,), boxes (N, 4))."""
        from .decode import instance_scores, oks_nms
        from .pipeline import predict

        kw = {"box_format": "xywh", "color": "rgb", "flip": not self.args.no_flip, "decode": self.args.decode}
        step = self.args.batch_size or max(len(boxes), 1)  # --batch-size: at most this many people per call
        parts = [predict(self.model, image, boxes[i:i + step], **kw) for i in range(0, max(len(boxes), 1), step)]
        keypoints = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        inst = instance_scores(box_scores, scores, VIS_THR)
        if self.args.nms_thr is not None and len(boxes):
            keep = np.sort(oks_nms(keypoints, inst, roi_areas(boxes), self.sigmas, self.args.nms_thr))
            keypoints, scores, inst, boxes = keypoints[keep], scores[keep], inst[keep], boxes[keep]
        return keypoints, scores, inst, boxes

    def records(self, image_id, keypoints, scores, inst, boxes):
        out = []
        for kp, sc, s, box in zip(keypoints, scores, inst, boxes):
            flat = np.concatenate([kp.astype(np.float64), sc.astype(np.float64)[:, None]], axis=1)
            flat[:, :2] = np.round(flat[:, :2], 3)
            flat[:, 2] = np.round(flat[:, 2], 5)
            out.append({
                "image_id": image_id,
                "category_id": 1,
                "keypoints": flat.reshape(-1).tolist(),
                "score": round(float(s), 5),
                "bbox": [round(float(v), 3) for v in box],
            })
        return out

    def draw(self, image, keypoints, scores):
        from .vis import draw

        a = self.args
        return draw(image, keypoints, scores, self.skeleton, a.kpt_thr, a.radius, a.thickness)


def _vis_targets(vis, inputs):
    """Where each input's annotated copy goes: a file for a single input, else a folder of same-named files."""
    if vis is None:
        return [None] * len(inputs)
    as_dir = vis.endswith(("/", os.sep)) or os.path.isdir(vis) or len(inputs) > 1 or not _ext(vis)
    if not as_dir:
        want = VIDEO_EXTS if _is_video(inputs[0]) else DRAW_EXTS
        if _ext(vis) not in want:
            kind = "a video" if _is_video(inputs[0]) else "an image"
            raise NpvitposeError(f"--vis {vis!r}: the input is {kind}, so use one of {', '.join(want)}")
        check_target(vis, "--vis")
        return [vis]
    targets = []
    for path in inputs:
        stem, ext = os.path.splitext(os.path.basename(path))
        if _is_video(path):
            ext = ".mp4"
        elif ext.lower() not in DRAW_EXTS:
            ext = ".png"
        targets.append(os.path.join(vis, stem + ext))
    seen = {}
    for path, target in zip(inputs, targets):
        if target in seen:
            raise NpvitposeError(f"--vis: {seen[target]!r} and {path!r} would both be drawn to {target!r}")
        seen[target] = path
    return targets


def _infer_image(runner, detections, path, vis_target):
    from .images import read_image

    image = read_image(path)
    image_id, boxes, box_scores = detections.for_image(path)
    keypoints, scores, inst, boxes = runner.predict(image, boxes, box_scores)
    if vis_target is not None:
        os.makedirs(os.path.dirname(os.path.abspath(vis_target)), exist_ok=True)
        write_image_atomic(vis_target, runner.draw(image, keypoints, scores))
    return runner.records(image_id, keypoints, scores, inst, boxes)


def _infer_video(runner, detections, path, vis_target):
    import cv2

    from .fetch import Progress

    if not os.path.isfile(path):
        raise NpvitposeError(f"cannot read video {path!r}: no such file")
    capture = cv2.VideoCapture(path)
    with contextlib.ExitStack() as stack:
        stack.callback(capture.release)
        if not capture.isOpened():
            raise NpvitposeError(f"cannot read video {path!r}: OpenCV cannot open it")
        announced = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if fps and np.isfinite(fps) and fps > 0 else 25.0
        bar = Progress(max(announced, 0) or None, os.path.basename(path), unit="frames")
        records, index, writer = [], 0, None
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            image = np.ascontiguousarray(frame[:, :, ::-1])  # BGR -> RGB
            boxes, box_scores = detections.for_frame(index)
            keypoints, scores, inst, kept = runner.predict(image, boxes, box_scores)
            records.extend(runner.records(index, keypoints, scores, inst, kept))
            if vis_target is not None:
                if writer is None:
                    os.makedirs(os.path.dirname(os.path.abspath(vis_target)), exist_ok=True)
                    tmp = stack.enter_context(atomic_output(vis_target))  # renamed into place when all went well
                    fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC[_ext(vis_target)])
                    writer = cv2.VideoWriter(tmp, fourcc, fps, (image.shape[1], image.shape[0]))
                    stack.callback(writer.release)  # runs before the rename
                    if not writer.isOpened():
                        raise NpvitposeError(f"cannot write video {vis_target!r}: OpenCV has no encoder for it")
                writer.write(np.ascontiguousarray(runner.draw(image, keypoints, scores)[:, :, ::-1]))
            index += 1
            bar.update()
        bar.close()
        if index == 0:
            raise NpvitposeError(f"cannot read video {path!r}: no frame could be decoded")
        if announced and index < announced:
            _warn(f"{path}: read {index} of {announced} announced frames")
        return records


def cmd_infer(args, parser):
    from .fetch import Progress
    from .model import load

    if len(args.paths) < 2:
        parser.error("infer needs at least one INPUT and then a BOXES.json")
    boxes_path, raw_inputs = args.paths[-1], args.paths[:-1]
    if os.path.isdir(boxes_path):
        parser.error("the last argument must be the detections JSON file")
    inputs = expand_inputs(raw_inputs)
    videos = [p for p in inputs if _is_video(p)]
    if videos and len(inputs) > 1:
        raise NpvitposeError("a video must be the only input (its detections use the frame index as image_id)")
    if args.image_id is not None and videos:
        raise NpvitposeError("--image-id does not apply to a video: its detections use the frame index as image_id")
    if args.image_id is not None and len(inputs) > 1:
        raise NpvitposeError("--image-id selects the detections of one image; for several, use --images or COCO names")
    _set_threads(args.threads)

    detections = Detections(boxes_path, args)  # before any download: a bad boxes file fails fast
    if detections.plain is not None and len(inputs) > 1:
        raise NpvitposeError(
            f"{detections.name}: a plain box list is for one image; for several, use COCO detection results"
        )
    if not any(os.path.exists(p) for p in inputs):  # nothing to do: say so before loading or downloading a model
        raise NpvitposeError(f"image file not found: {inputs[0]}" if len(inputs) == 1 else
                             f"none of the {len(inputs)} inputs exists (first: {inputs[0]})")
    model_path = resolve_model(args.model, args.cache)
    protected = _Protected(inputs + [boxes_path, args.images, model_path])
    if args.output is not None:
        protected.check(args.output, "-o")
        check_target(args.output, "-o")
    targets = _vis_targets(args.vis, inputs)
    for target in targets:
        if target is not None:
            protected.check(target, "--vis")
            if args.output is not None and _same_file(target, args.output):
                raise NpvitposeError(f"--vis {target!r} and -o are the same file")

    runner = Runner(load(model_path), args)

    results, failed = [], 0
    bar = Progress(len(inputs), "images", unit="images") if len(inputs) > 1 else None
    for path, target in zip(inputs, targets):
        try:
            if _is_video(path):
                results.extend(_infer_video(runner, detections, path, target))
            else:
                results.extend(_infer_image(runner, detections, path, target))
        except (NpvitposeError, OSError, MemoryError) as e:
            failed += 1
            message = _os_message(e) if isinstance(e, OSError) else (str(e) or "out of memory")
            if bar is not None and bar.enabled:
                sys.stderr.write("\n")
            _error(message if path in message else f"{path}: {message}")
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()

    if failed < len(inputs):
        text = json.dumps(results, separators=(",", ":")) + "\n"
        if args.output is None:
            sys.stdout.write(text)
        else:
            write_text_atomic(args.output, text)
    if failed:
        if len(inputs) > 1:
            _error(f"{failed} of {len(inputs)} inputs failed")
        return 1
    return 0


# ---------------------------------------------------------------------------------------------- others


def cmd_convert(args, parser):
    from .convert import convert

    if not os.path.exists(args.src):
        raise NpvitposeError(f"{args.src!r}: no such file or folder")
    inside = [os.path.join(args.src, n) for n in os.listdir(args.src)] if os.path.isdir(args.src) else []
    _Protected([args.src, *inside]).check(args.output, "-o")
    check_target(args.output, "-o")
    meta = convert(args.src, args.output, args.dataset)
    print(f"{args.output}: {meta.get('dataset')} model, {meta.get('head')} head, "
          f"{meta.get('num_keypoints')} keypoints, dim {meta.get('dim')}, depth {meta.get('depth')}")
    return 0


def cmd_fetch(args, parser):
    from . import fetch

    if args.list:
        for name, source in fetch.SOURCES.items():
            aliases = sorted(a for a, c in fetch.ALIASES.items() if c == name and "/" not in a)
            print(f"{name:38s} {source.repo}/{source.files[-1]}  (also: {', '.join(aliases)})")
        return 0
    if args.name is None:
        parser.error("fetch needs a model NAME (or --list)")
    print(fetch.fetch(args.name, cache_dir=args.cache, endpoint=args.endpoint, dataset=args.dataset))
    return 0


def cmd_bench(argv):
    """Delegate to npvitpose.bench (imported only here): its `add_arguments(parser)` and `main(args)`."""
    try:
        bench = importlib.import_module("npvitpose.bench")
    except ModuleNotFoundError as e:
        if e.name != "npvitpose.bench":
            raise NpvitposeError(f"bench needs the package {e.name!r}: pip install 'npvitpose[bench]'") from None
        raise NpvitposeError("this npvitpose has no bench module") from None
    parser = argparse.ArgumentParser(prog=f"{PROG} bench", description="Speed benchmarks.")
    bench.add_arguments(parser)
    code = bench.main(parser.parse_args(argv))
    return 0 if code is None else int(code)


def _nonneg_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def _int_at_least(minimum, maximum=None):
    """An argparse type: an integer >= minimum (and <= maximum if given)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be >= {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text!r} must be <= {maximum}")
        return value
    return parse


_positive_int = _int_at_least(1)


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description="ViTPose pose estimation on NumPy and Numba.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("convert", help="convert a .pth / .safetensors / HF folder into an npvitpose .npz")
    p.add_argument("src", metavar="SRC", help="official .pth, HF model.safetensors, or an HF model folder")
    p.add_argument("-o", "--output", required=True, metavar="OUT.npz")
    p.add_argument("--dataset", choices=DATASET_NAMES, help="head / expert of a multi-dataset checkpoint")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("infer", help="keypoints for person boxes in images, a folder or a video",
                       usage=f"{PROG} infer [options] INPUT... BOXES.json [--model MODEL]")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="images, folders of images or one video, then the detections JSON")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"a converted .npz, or a published model name, downloaded on first use "
                        f"(default: {DEFAULT_MODEL}; see `{PROG} fetch --list`)")
    p.add_argument("--cache", metavar="DIR", help="cache folder for fetched model names")
    p.add_argument("-o", "--output", metavar="OUT.json", help="COCO keypoint results (default: stdout)")
    p.add_argument("--vis", metavar="OUT.jpg|DIR", help="also draw the keypoints (an image, a video or a folder)")
    p.add_argument("--box-format", choices=("xywh", "xyxy"), default="xywh")
    p.add_argument("--bbox-thr", type=_nonneg_float, default=0.0, help="skip boxes scoring below this")
    p.add_argument("--kpt-thr", type=_nonneg_float, default=0.3, help="draw keypoints scoring at least this")
    # bounded: OpenCV's drawing fails on absurd sizes (a thickness over 32767, a radius over 2^31)
    p.add_argument("--radius", type=_int_at_least(0, 1000), default=4)
    p.add_argument("--thickness", type=_int_at_least(1, 1000), default=2)
    p.add_argument("--no-flip", action="store_true", help="skip the flip test (about 2x faster)")
    p.add_argument("--decode", choices=DECODERS, default="default",
                   help="default: the model's own (DARK-UDP or quarter shift)")
    p.add_argument("--nms-thr", type=_nonneg_float, metavar="T", help="OKS-NMS threshold (0.9 in COCO eval)")
    p.add_argument("--image-id", metavar="N", help="image_id of the one input in COCO detections")
    p.add_argument("--images", metavar="COCO_IMAGES.json", help="COCO image list to match file names to ids")
    p.add_argument("--threads", type=_positive_int, metavar="N",
                   help="threads for the kernels and BLAS together (default: all cores, or NPVITPOSE_THREADS)")
    p.add_argument("--batch-size", type=_positive_int, metavar="N", help="people per pipeline call (bounds memory)")
    p.set_defaults(run=cmd_infer)

    p = sub.add_parser("fetch", help="download and convert a published checkpoint into the cache")
    p.add_argument("name", nargs="?", metavar="NAME", help="e.g. vitpose-b, vitpose-plus-s, original-vitpose-b")
    p.add_argument("--list", action="store_true", help="list the known names")
    p.add_argument("--cache", metavar="DIR", help="cache folder (default $NPVITPOSE_CACHE or ~/.cache/npvitpose)")
    p.add_argument("--endpoint", metavar="URL", help="hub address (default $HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("--dataset", choices=DATASET_NAMES, help="head / expert of a multi-dataset checkpoint")
    p.set_defaults(run=cmd_fetch)

    sub.add_parser("bench", help="speed and accuracy benchmarks (options: npvitpose bench --help)")
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser()
    if argv[:1] == ["bench"]:
        run = lambda: cmd_bench(argv[1:])  # noqa: E731 - the bench module parses its own options
    else:
        args = parser.parse_args(argv)
        run = lambda: args.run(args, parser)  # noqa: E731
    try:
        return run()
    except NpvitposeError as e:
        _error(e)
    except OSError as e:
        _error(_os_message(e))
    except MemoryError:
        _error("out of memory")
    except KeyboardInterrupt:
        _error("interrupted")
    return 1


if __name__ == "__main__":
    sys.exit(main())
