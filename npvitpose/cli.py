"""`npvitpose` command line: infer, convert, fetch, cache, eval, bench.

User errors print one line `npvitpose: error: <message>` on stderr and exit 1 (usage errors: 2).
Outputs are written to a temporary file next to the target and renamed, so a failed run leaves no
partial file and an older output in place.
"""

import argparse
import contextlib
import functools
import gc
import importlib
import json
import os
import signal
import sys
import threading

import numpy as np

from .errors import NpvitposeError
from .messages import PROG, error, isatty, note, os_message, set_quiet, warn
from .outputs import Protected, check_target, same_file, write_text_atomic

# the command's errors are its own one-liners: OpenCV's and FFmpeg's log lines would only add noise to them
os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
DEFAULT_MODEL = "vitpose-b"  # usyd-community/vitpose-base: ViTPose-B, classic head, COCO (spec 7)
DATASET_NAMES = ("coco", "aic", "mpii", "ap10k", "apt36k", "wholebody")
DECODERS = ("default", "argmax", "quarter", "dark-udp")
LOAD_NOTE_BYTES = 50_000_000  # loading takes a noticeable moment from about here (ViTPose-S is 100 MB)
EXIT_EMPTY = 3  # nothing produced from a non-empty boxes file: documented in the README and `infer --help`


def _set_threads(n):
    if n is None:
        return
    from .threads import set_threads

    used = set_threads(n)  # Numba and BLAS pools together
    if used != n:
        warn(f"--threads {n}: using {used}, the most this process allows (NUMBA_NUM_THREADS)")


# ---------------------------------------------------------------------------------------------- infer


def _options(args):
    from .run import Options

    return Options(box_format=args.box_format, bbox_thr=args.bbox_thr, flip=not args.no_flip, decode=args.decode,
                   nms_thr=args.nms_thr, batch_size=args.batch_size, kpt_thr=args.kpt_thr, radius=args.radius,
                   thickness=args.thickness, draw_bbox=args.draw_bbox, skeleton_style=args.skeleton_style,
                   det_every=args.det_every, track=args.track, track_thr=args.track_thr, smooth=args.smooth,
                   max_image_pixels=args.max_image_pixels, layout=args.format)


def _boxes_source(args, parser, inputs):
    """The last PATH when it is a .json boxes file, else a detector (or --whole-image) -> (source, its file)."""
    from . import run
    from .detector import DEFAULT_DETECTOR, Detector, resolve_detector

    if args.boxes is not None:
        if args.whole_image or args.detector is not None:
            parser.error("give either a BOXES.json or --detector / --whole-image, not both")
        # before any download: a bad boxes file fails fast
        detections = run.Detections(args.boxes, args.box_format, args.bbox_thr, args.images, args.image_id)
        return detections, args.boxes
    if args.images is not None:
        parser.error("--images matches COCO detections to files; it needs a BOXES.json")
    if args.whole_image:
        if args.detector is not None:
            parser.error("--whole-image uses no detector; leave --detector out")
        return run.DetectedBoxes(None, args.bbox_thr, inputs, args.image_id), None
    run.check_job(inputs, None)  # nothing to read: say so before downloading a detector
    path = resolve_detector(args.detector or DEFAULT_DETECTOR, args.cache, note=note)
    detector = Detector(path, args.det_size, args.det_thr, args.det_nms_thr)
    if args.threads is not None:
        import cv2

        cv2.setNumThreads(args.threads)  # cv2.dnn runs on OpenCV's own thread pool
    return run.DetectedBoxes(detector, args.bbox_thr, inputs, args.image_id), path


def _json(data, readable):
    """Compact JSON, or on a terminal one record per line: readable without scrolling through numbers."""
    try:
        return _json_text(data, readable, functools.partial(json.dumps, allow_nan=False))
    except ValueError:  # NaN and Infinity are not JSON: say so rather than write an unreadable file
        raise NpvitposeError("the results hold NaN or infinity; nothing was written") from None


def _json_text(data, readable, dumps):
    if not readable or not data:
        return dumps(data, separators=(",", ":")) + "\n"
    if isinstance(data, dict):
        items = [f"{dumps(k)}: {dumps(v)}" for k, v in data.items()]
        return "{\n " + ",\n ".join(items) + "\n}\n"
    return "[\n " + ",\n ".join(dumps(r) for r in data) + "\n]\n"


def _people(records, layout):
    """How many people the records hold (an mmpose video has one entry per frame)."""
    if layout == "mmpose":
        return sum(len(r["instances"]) if "frame_id" in r else 1 for r in records)
    return len(records)


def _pred_targets(folder, inputs):
    """--pred-out-dir: one `<stem>.json` per input, as mmpose's inferencer writes them."""
    if folder is None:
        return {}
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NpvitposeError(f"--pred-out-dir {folder!r} is a file, not a folder")
    targets = {}
    for path in inputs:
        target = os.path.join(folder, os.path.splitext(os.path.basename(path))[0] + ".json")
        if target in targets.values():
            other = next(p for p, t in targets.items() if t == target)
            raise NpvitposeError(f"--pred-out-dir: {other!r} and {path!r} would both be written to {target!r}")
        targets[path] = target
    return targets


def _note_compile():
    """Say so when the kernels are about to compile (an empty cache); -> whether they are."""
    from .run import jit_cache_cold

    cold = jit_cache_cold()
    if cold:
        note("first run: compiling the kernels for this machine, once (about 10 s, up to a minute on a busy "
             "machine); later runs reuse them")
    return cold


def cmd_infer(args, parser):
    from . import fetch, pipeline, run  # noqa: F401 - pipeline: its kernels count in the compile check
    from .model import kernel_name, load

    # the last PATH is the boxes file when it is .json (or -, standard input); without one a detector finds them
    last = args.paths[-1]
    args.boxes = last if len(args.paths) > 1 and (last == "-" or last.lower().endswith(".json")) else None
    raw_inputs = args.paths[:-1] if args.boxes is not None else args.paths
    if args.boxes is not None and os.path.isdir(args.boxes):
        parser.error("the last argument must be the detections JSON file")
    if "-" in raw_inputs:
        parser.error("'-' (standard input) can only be the boxes file, the last argument")
    inputs = run.expand_inputs(raw_inputs)
    _set_threads(args.threads)
    detections, boxes_file = _boxes_source(args, parser, inputs)
    empty = run.check_job(inputs, detections)  # with a boxes file: every image matched before any model work
    if args.output is not None:
        check_target(args.output, "-o")
    targets = run.vis_targets(args.vis, inputs)
    preds = _pred_targets(args.pred_out_dir, inputs)
    if args.dask is not None and (preds or args.format != "coco"):
        raise NpvitposeError("--dask writes COCO results to one file for now: no --pred-out-dir or --format mmpose")
    _warn_empty(args, detections, inputs, empty)
    readable = args.output is None and isatty(sys.stdout)
    if empty and len(empty) == len(inputs) and detections.count:  # nothing to do: no model work at all
        _write_results([], {}, args, readable)
        return EXIT_EMPTY

    model_path = fetch.resolve(args.model, args.cache, note=note, dataset=args.dataset)
    protected = Protected([p for p in inputs if not run.is_camera(p)] + [boxes_file, args.images, model_path])
    for flag, target in ([("-o", args.output)] + [("--vis", t) for t in targets] +
                         [("--pred-out-dir", t) for t in preds.values()]):
        if target is not None:
            protected.check(target, flag)
            if flag != "-o" and args.output is not None and same_file(target, args.output):
                raise NpvitposeError(f"{flag} {target!r} and -o are the same file")

    stream = args.output is not None and args.output.lower().endswith(".jsonl")
    camera = args.output is None and any(run.is_camera(p) for p in inputs)  # a camera run streams to stdout
    sink = run.JsonLines(args.output if stream else None) if stream or camera else None
    if args.dask is not None and any(run.is_camera(p) for p in inputs):
        raise NpvitposeError("a camera is read live, by one process: it does not apply with --dask")
    per_input = {}

    def done(path, records):
        per_input[path] = records
        if path in preds:
            os.makedirs(args.pred_out_dir, exist_ok=True)
            write_text_atomic(preds[path], _json(records, False))

    try:
        if args.dask is not None:
            results, failed = _infer_dask(args, inputs, detections, targets, sink)
        else:
            size = os.path.getsize(model_path)
            if size >= LOAD_NOTE_BYTES:
                note(f"loading the model {model_path} ({size / 1e6:.0f} MB)")
            model = load(model_path, precision=args.precision)
            if model.precision != "fp32" and not model._gemm.FAST:
                warn(f"--precision {args.precision}: {kernel_name(args.precision)}")
            runner = run.Runner(model, _options(args))
            if _note_compile():
                run.precompile(runner)
            results, failed = run.run(runner, detections, inputs, targets, sink, done)
    finally:
        if sink is not None:
            sink.close()

    if failed < len(inputs) and sink is None:
        _write_results(results, per_input, args, readable)
    if failed:
        if len(inputs) > 1:
            error(f"{failed} of {len(inputs)} inputs failed")
        return 1
    if detections.count and not _people(results, args.format):
        warn(f"no keypoints produced: none of the boxes in {detections.name} belong to the input"
             + ("s" if len(inputs) > 1 else "") + (" (a video's COCO image_id is the frame index)"
                                                   if any(run.is_video(p) for p in inputs) else ""))
        return EXIT_EMPTY
    return 0


def _warn_empty(args, detections, inputs, empty):
    """One warning for the images the boxes file gives no box (and did not say `[]` for)."""
    thr = f" at --bbox-thr {args.bbox_thr}" if args.bbox_thr > 0 else ""
    if len(empty) == 1 and len(inputs) == 1:
        warn(f"{detections.name} has no person boxes{thr} for {empty[0]}" + (
             f" (image id {detections.key(empty[0])!r})" if detections.coco else ""))
    elif empty:
        warn(f"{len(empty)} of {len(inputs)} images have no person boxes{thr} in {detections.name} "
             f"(first: {empty[0]})")


def _write_results(results, per_input, args, readable):
    data = per_input if args.format == "mmpose" else results  # mmpose: {input path: its instances}
    if args.output is None and args.pred_out_dir is not None:
        return  # the results are in the folder's files, as mmpose's --pred-out-dir leaves them
    text = _json(data, readable)
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_text_atomic(args.output, text)


def _infer_dask(args, inputs, detections, targets, sink):
    """The same job over a Dask cluster (--dask ADDRESS or local:N); dask is imported only here."""
    try:
        from . import distributed
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] not in ("dask", "distributed"):
            raise
        raise NpvitposeError(f"--dask needs the package {e.name.split('.')[0]!r}: pip install 'npvitpose[dask]'") from None
    if args.threads is not None and distributed.local_spec(args.dask) is None:
        warn(f"--threads {args.threads} applies to local:N clusters; the workers at {args.dask} keep their own")
    with distributed.connect(args.dask, threads=args.threads, timeout=args.dask_timeout) as client:
        return distributed.run(client, inputs, detections, args.model, _options(args), targets,
                               lambda path, message: error(message), progress=True, timeout=args.dask_timeout,
                               cache=args.cache, sink=sink, precision=args.precision)


# ---------------------------------------------------------------------------------------------- others


def _convert_target(src, dataset):
    """`convert` without -o: <name>[-<dataset>].npz beside the checkpoint, else (a read-only folder) in the cache."""
    from .fetch import cache_folder

    base = os.path.normpath(os.path.abspath(src))
    stem = os.path.basename(base) if os.path.isdir(base) else os.path.splitext(os.path.basename(base))[0]
    name = stem + (f"-{dataset}" if dataset else "") + ".npz"
    beside = os.path.dirname(base)
    if os.access(beside, os.W_OK):
        return os.path.join(beside, name)
    folder = os.path.join(cache_folder(), "converted")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)


def cmd_convert(args, parser):
    from .convert import convert

    if not os.path.exists(args.src):
        raise NpvitposeError(f"{args.src!r}: no such file or folder")
    output = args.output if args.output is not None else _convert_target(args.src, args.dataset)
    inside = [os.path.join(args.src, n) for n in os.listdir(args.src)] if os.path.isdir(args.src) else []
    Protected([args.src, *inside]).check(output, "-o")
    check_target(output, "-o")
    meta = convert(args.src, output, args.dataset)
    print(f"{output}: {meta.get('dataset')} model, {meta.get('head')} head, "
          f"{meta.get('num_keypoints')} keypoints, dim {meta.get('dim')}, depth {meta.get('depth')}")
    return 0


def cmd_fetch(args, parser):
    from . import fetch
    from .detector import DETECTORS, fetch_detector

    if args.list:
        for name, source in fetch.SOURCES.items():
            aliases = sorted(a for a, c in fetch.ALIASES.items() if c == name and "/" not in a)
            print(f"{name:38s} {source.repo}/{source.files[-1]}  (also: {', '.join(aliases)})")
        for name, source in DETECTORS.items():
            print(f"{name:38s} person detector, {source.licence}: {source.url}")
        return 0
    if args.name is None:
        parser.error("fetch needs a model NAME (or --list)")
    if args.name.strip().lower() in DETECTORS:
        print(fetch_detector(args.name.strip().lower(), args.cache, args.endpoint, note=note))
        return 0
    if args.source is not None:  # offline: a file the user has, installed under NAME
        print(fetch.install(args.source, args.name, cache=args.cache, dataset=args.dataset))
        return 0
    print(fetch.fetch(args.name, cache_dir=args.cache, endpoint=args.endpoint, dataset=args.dataset))
    return 0


def _describe(path):
    """One line on a cached model, from its metadata record alone (the weights are not read)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["__meta__"]))
        return (f"{meta.get('dataset')}, {meta.get('head')} head, dim {meta.get('dim')}, "
                f"from {meta.get('source_name')}")
    except Exception:  # a listing never fails on one damaged file: it says so
        return "not a readable npvitpose model"


def cmd_cache(args, parser):
    import shutil

    from . import fetch

    root = fetch.cache_folder(args.cache)
    entries = fetch.cache_entries(args.cache)
    if args.remove:
        wanted = set()
        for name in args.remove:
            hits = [p for _, p, _ in entries if os.path.basename(p) in (name, name + ".npz")]
            if fetch.is_model_name(name):
                hits += [p for _, p, _ in entries if os.path.basename(p).startswith(fetch.canonical_name(name))
                         and p.endswith(".npz") and os.path.dirname(p) == root]
            if not hits:
                raise NpvitposeError(f"{name!r} is not in the cache {root} (see `{PROG} cache`)")
            wanted.update(hits)
        entries = [e for e in entries if e[1] in wanted]
    if args.remove or args.clear:
        for _, path, size in entries:
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            print(f"removed {path} ({size / 1e6:.1f} MB)")
        return 0
    print(f"{root}:" + ("" if entries else " empty"))
    what = {"download": "an unfinished download (the next fetch resumes it)"}
    for kind, path, size in entries:
        shown = os.path.relpath(path, root)
        print(f"  {shown:48s} {size / 1e6:9.1f} MB  {what.get(kind) or _describe(path)}")
    if entries:
        print(f"  {'total':48s} {sum(e[2] for e in entries) / 1e6:9.1f} MB")
    return 0


def cmd_eval(args, parser):
    from . import eval as coco_eval
    from .boxes import read_json

    if args.output is not None:
        Protected([args.results, args.annotations]).check(args.output, "-o")
        check_target(args.output, "-o")
    results = read_json(args.results, "results")
    annotations = read_json(args.annotations, "annotations")
    names = (os.path.basename(args.results), os.path.basename(args.annotations))
    metrics = coco_eval.evaluate(results, annotations, result_images_only=args.result_images_only, names=names)
    covered = len({r["image_id"] for r in results})
    annotated = len({a["image_id"] for a in annotations["annotations"] if "keypoints" in a})
    if not args.result_images_only and covered < annotated:
        warn(f"the results cover {covered} of the {annotated} annotated images; the others count as missed "
             "(--result-images-only scores only the covered ones)")
    if args.output is not None:
        write_text_atomic(args.output, json.dumps(metrics, indent=1) + "\n")
    sys.stdout.write(coco_eval.table(metrics))
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
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or notes: only the results")
    bench.add_arguments(parser)
    args = parser.parse_args(argv)
    set_quiet(args.quiet)
    code = bench.main(args)
    return 0 if code is None else int(code)


def _nonneg_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def _fraction(text):
    """An argparse type: a number from 0 to 1 (scores, IoU thresholds)."""
    value = _nonneg_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 0 to 1")
    return value


def _positive_float(text):
    value = _nonneg_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
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


BOXES_HELP = """\
BOXES.json (the last argument, optional: without it a person detector finds the people;
- reads it from standard input), one of:
  [[x, y, w, h, score], ...]                   the boxes of one image (the score may be left out)
  [{"bbox": [x, y, w, h], "score": s}, ...]    the same, as objects
  {"frame_0001.jpg": [[x, y, w, h, s], ...], "frame_0002.jpg": [], ...}
                                               boxes keyed by image file name (a folder, any names)
  [{"image_id": 42, "category_id": 1, "bbox": [x, y, w, h], "score": s}, ...]
                                               COCO detection results (persons only); an image's id
                                               is its numeric file name (000000000042.jpg), or comes
                                               from --images or --image-id; a video's is the frame index
  --box-format xyxy reads [x1, y1, x2, y2] instead of [x, y, w, h].

output (-o, standard output, --pred-out-dir):
  --format coco (default): [{"image_id": 42, "category_id": 1, "keypoints": [x, y, score, ...],
    "score": s, "bbox": [x, y, w, h]}, ...]; keypoints are always x then y, in image pixels; the
    score is the box score times the mean of the keypoint scores above 0.2. A file keyed by name
    gives image_id = its numeric file name, else the file name.
  --format mmpose: per input [{"keypoints": [[x, y], ...], "keypoint_scores": [...],
    "bbox": [[x1, y1, x2, y2]], "bbox_score": s}, ...] (a video: [{"frame_id": i, "instances": [...]}]);
    -o then holds {input path: that list}.
  --pred-out-dir DIR writes DIR/<input name>.json for each input, as mmpose does (stdout then stays empty).
  -o OUT.jsonl streams one line per image or frame: {"image_id", "file" or "time", "people": [...]}.

exit status: 0 done; 1 an error, or some inputs failed (the others are written); 2 a wrong command
  line; 3 nothing produced: the boxes file has boxes, but none for these inputs (or all below --bbox-thr).
"""


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help line (where it has one), the epilog kept as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) \
                and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser():
    from . import __version__

    parser = argparse.ArgumentParser(prog=PROG, description="ViTPose pose estimation on NumPy and Numba.",
                                     formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress or notes (warnings and errors stay)")

    def command(name, run, **kw):
        p = sub.add_parser(name, parents=[common], formatter_class=_Help, **kw)
        p.set_defaults(run=run, parser=p)  # the command's own usage in its errors
        return p

    p = command("convert", cmd_convert, help="convert a .pth / .safetensors / HF folder into an npvitpose .npz")
    p.add_argument("src", metavar="SRC", help="official .pth, HF model.safetensors, or an HF model folder")
    p.add_argument("-o", "--output", metavar="OUT.npz",
                   help="where to write it (default: SRC's name with .npz, beside it)")
    p.add_argument("--dataset", choices=DATASET_NAMES, help="head / expert of a multi-dataset checkpoint")

    p = command("infer", cmd_infer, help="keypoints of the people in images, a folder, a video or a camera",
                usage=f"{PROG} infer [options] INPUT... [BOXES.json]", epilog=BOXES_HELP,
                description="Keypoints of the people in images, folders of images (or quoted globs such as "
                            "'frames/*.jpg'), one video or a camera, in the boxes of BOXES.json or found by a "
                            "person detector.")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="images, folders of images, one video or a camera index (0), then optionally the boxes "
                        "(a .json, or - for standard input: see below)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"a converted .npz; an official .pth or a Hugging Face folder (converted once into the "
                        f"cache); or a model name, published (`{PROG} fetch --list`, downloaded on first use) or "
                        f"installed (`{PROG} fetch --from FILE NAME`)")
    p.add_argument("--dataset", choices=DATASET_NAMES, help="the expert of a ViTPose+ checkpoint given as --model")
    p.add_argument("--cache", metavar="DIR", help="cache folder for fetched model names "
                                                  "(default: $NPVITPOSE_CACHE or ~/.cache/npvitpose)")
    p.add_argument("-o", "--output", metavar="OUT.json",
                   help="the results (default: standard output); OUT.jsonl streams one line per image or frame")
    p.add_argument("--pred-out-dir", metavar="DIR", help="write one DIR/<input name>.json per input (also -o if given; "
                                                         "nothing on standard output)")
    p.add_argument("--format", choices=("coco", "mmpose"), default="coco", help="layout of the results")
    p.add_argument("--vis", metavar="OUT.jpg|DIR", help="also draw the keypoints (an image, a video, or a "
                                                        "folder for several inputs)")
    p.add_argument("--box-format", choices=("xywh", "xyxy"), default="xywh", help="how the boxes are written")
    p.add_argument("--bbox-thr", type=_nonneg_float, default=0.0, help="skip boxes scoring below this")
    p.add_argument("--kpt-thr", type=_nonneg_float, default=0.3, help="draw keypoints scoring at least this")
    # bounded: OpenCV's drawing fails on absurd sizes (a thickness over 32767, a radius over 2^31)
    p.add_argument("--radius", type=_int_at_least(0, 1000), default=4, help="keypoint radius in --vis, pixels")
    p.add_argument("--thickness", type=_int_at_least(1, 1000), default=2, help="limb width in --vis, pixels")
    p.add_argument("--no-flip", action="store_true", help="skip the flip test (about 2x faster)")
    p.add_argument("--decode", choices=DECODERS, default="default",
                   help="heatmap decoding: the model's own (DARK-UDP or quarter shift), or another rule to "
                        "compare with other tools")
    p.add_argument("--nms-thr", type=_nonneg_float, metavar="T", help="OKS-NMS threshold (0.9 in COCO eval; "
                                                                       "default: no NMS)")
    p.add_argument("--image-id", metavar="N", help="image_id of the one input in COCO detections")
    p.add_argument("--images", metavar="COCO_IMAGES.json", help="COCO image list to match file names to ids")
    p.add_argument("--threads", type=_positive_int, metavar="N",
                   help="threads for the kernels and BLAS together (default: NPVITPOSE_THREADS, else the CPUs this "
                        "process may use: its affinity and CPU quota)")
    p.add_argument("--batch-size", type=_positive_int, metavar="N",
                   help="people per pipeline call, to bound memory (default: all the boxes of an image)")
    p.add_argument("--max-image-pixels", type=_positive_int, metavar="N",
                   help="refuse larger images, from their header, before decoding (default: 2^27 = 134 M)")
    p.add_argument("--dask", metavar="ADDRESS|local:N",
                   help="run over a Dask cluster: a scheduler address, or local:N to start N worker processes here")
    p.add_argument("--dask-timeout", type=_positive_float, default=10.0, metavar="S",
                   help="seconds to reach the scheduler, and that a cluster may stay without workers")
    g = p.add_argument_group("person detection (when no BOXES.json is given)")
    g.add_argument("--detector", metavar="NAME|FILE.onnx",
                   help="a YOLOX (or ultralytics-layout) ONNX file run by cv2.dnn, or a published name: "
                        "yolox-s (default, Apache-2.0, downloaded on first use), yolox-tiny, yolox-nano")
    g.add_argument("--det-thr", type=_fraction, default=0.3, metavar="T", help="detector score threshold")
    g.add_argument("--det-nms-thr", type=_fraction, default=0.3, metavar="T", help="detector NMS IoU threshold")
    g.add_argument("--det-size", metavar="N|WxH", help="detector input size (default: the file's own)")
    g.add_argument("--whole-image", action="store_true", help="no detector: the whole picture is one person box")
    g = p.add_argument_group("video")
    g.add_argument("--det-every", type=_positive_int, default=1, metavar="N",
                   help="find boxes every N frames; in between, each person's box follows their keypoints")
    g.add_argument("--track", choices=("iou", "oks"), default="iou", help="match people across frames by")
    g.add_argument("--track-thr", type=_fraction, default=0.3, metavar="T", help="least IoU/OKS to keep an id")
    g.add_argument("--smooth", action="store_true", help="One-Euro smoothing of each track's keypoints")
    g = p.add_argument_group("drawing")
    g.add_argument("--draw-bbox", action="store_true", help="outline each person's box")
    g.add_argument("--skeleton-style", choices=("mmpose", "openpose"), default="mmpose",
                   help="limb colours and layout")
    p.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="arithmetic of the linear layers: fp32 (exact), bf16 or int8 (faster, drift: README)")

    p = command("fetch", cmd_fetch, help="download and convert a published checkpoint into the cache")
    p.add_argument("name", nargs="?", metavar="NAME",
                   help="e.g. vitpose-b, vitpose-plus-s, original-vitpose-b, or a person detector: yolox-s")
    p.add_argument("--list", action="store_true", help="list the known names")
    p.add_argument("--cache", metavar="DIR", help="cache folder (default: $NPVITPOSE_CACHE or ~/.cache/npvitpose)")
    p.add_argument("--endpoint", metavar="URL", help="hub address (default: $HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("--dataset", choices=DATASET_NAMES, help="head / expert of a multi-dataset checkpoint")
    p.add_argument("--from", dest="source", metavar="FILE",
                   help="offline: install FILE (a converted .npz, an official .pth or a Hugging Face folder) under "
                        "NAME instead of downloading, so --model NAME finds it")

    p = command("cache", cmd_cache, help="list the cached models (or remove them)",
                description="The models fetched, installed or converted on use, and unfinished downloads.")
    p.add_argument("--cache", metavar="DIR", help="cache folder (default: $NPVITPOSE_CACHE or ~/.cache/npvitpose)")
    p.add_argument("--remove", nargs="+", metavar="NAME", help="remove these (names or file names)")
    p.add_argument("--clear", action="store_true", help="remove everything in the cache")

    p = command("eval", cmd_eval, help="COCO keypoint AP/AR of infer's results against COCO annotations",
                description="COCO keypoint AP and AR (OKS 0.50:0.95, the metric of the published ViTPose numbers) "
                            "by pycocotools, or xtcocotools for COCO-WholeBody (pip install 'npvitpose[eval]').")
    p.add_argument("results", metavar="RESULTS.json", help="infer's COCO keypoint results (--format coco)")
    p.add_argument("annotations", metavar="ANNOTATIONS.json", help="COCO keypoint annotations, such as "
                                                                   "person_keypoints_val2017.json")
    p.add_argument("-o", "--output", metavar="METRICS.json", help="also write the metrics (fractions) as JSON")
    p.add_argument("--result-images-only", action="store_true",
                   help="score only the images the results cover (the official metric scores every annotated "
                        "image)")

    sub.add_parser("bench", help="speed and accuracy benchmarks (options: npvitpose bench --help)")
    return parser


class Terminated(BaseException):
    """SIGTERM or SIGHUP (timeout, systemd, docker stop, a closed terminal): unwinds like Ctrl-C, so every
    temporary output is deleted on the way out."""


def _terminate(signum, frame):
    raise Terminated(signal.Signals(signum).name)


def _stdout_closed():
    """stdout's reader went away (`| head -c0`): later flushes, at exit too, must not raise again."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    error("standard output was closed before the results were written")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in argv]
    parser = build_parser()
    if argv[:1] == ["bench"]:
        run = lambda: cmd_bench(argv[1:])  # noqa: E731 - the bench module parses its own options
    else:
        args = parser.parse_args(argv)
        set_quiet(args.quiet)
        run = lambda: args.run(args, args.parser)  # noqa: E731
    handlers = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        handlers = {s: signal.signal(s, _terminate) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        code = run()
        sys.stdout.flush()
        return code
    except NpvitposeError as e:
        error(e)
    except BrokenPipeError:
        _stdout_closed()
    except OSError as e:
        error(os_message(e))
    except MemoryError:
        error("out of memory")
    except KeyboardInterrupt:
        error("interrupted")
    except Terminated as e:
        error(f"terminated ({e})")
        return 128 + signal.SIGTERM
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return 1


def command():
    """The `npvitpose` program: main(), then an exit that skips the interpreter's final garbage collection of
    Numba's many objects (0.2-0.6 s, more than a warm run's model load). Nothing depends on it: every output is
    written, closed and flushed by then; atexit handlers still run."""
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(command())
