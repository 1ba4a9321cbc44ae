"""One inference job: inputs (images, folders, a video) + a boxes source + options -> COCO keypoint records.

`process(runner, boxes, path, vis)` handles one input and returns its records (a distributed worker
calls it too); `run(...)` goes through every input, reports a failing one on one line and carries on.
A boxes source is any object with `for_image(path, image) -> (image_id, boxes (N, 4) xywh, scores (N,))`
and `for_frame(index, image) -> (boxes, scores)`: `Detections` reads them from a JSON file.
"""

import contextlib
import os
import sys
from dataclasses import dataclass

import numpy as np

from .errors import NpvitposeError
from .images import cv_path
from .messages import Progress, error, os_message, warn
from .outputs import atomic_output, write_image_atomic

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pnm")
DRAW_EXTS = tuple(e for e in IMAGE_EXTS if e != ".pgm")  # --vis: .pgm holds grey only, drawings are in colour
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
# encoders tried in order; opencv-python's wheels carry no H.264 encoder but do carry VP8 (WebM), which browsers play
VIDEO_FOURCC = {".mp4": ("avc1", "mp4v"), ".mov": ("avc1", "mp4v"), ".avi": ("MJPG",), ".mkv": ("VP80", "MJPG"),
                ".webm": ("VP80", "VP90")}
BROWSER_FOURCC = ("avc1", "VP80", "VP90")
VIS_THR = 0.2  # spec 5.6: keypoints above this count in the instance score


def failure_message(path, e):
    """One line for a failed input, naming it once."""
    message = os_message(e) if isinstance(e, OSError) else (str(e) or "out of memory")
    return message if path in message else f"{path}: {message}"


def ext(path):
    return os.path.splitext(str(path))[1].lower()


def is_camera(path):
    """A bare integer that names no file is a camera index (cv2.VideoCapture(0))."""
    return str(path).isdigit() and not os.path.exists(str(path))


def is_video(path):
    return ext(path) in VIDEO_EXTS or is_camera(path)


def expand_inputs(paths):
    """Files stay as given (a missing one fails later, on its own); a folder gives its images, sorted;
    a pattern the shell did not expand (quoted, or from a script: 'frames/*.jpg') gives its matches, sorted."""
    import glob

    out = []
    for path in paths:
        if not os.path.exists(path) and glob.has_magic(path):
            matches = sorted(glob.glob(path))
            if not matches:
                raise NpvitposeError(f"no file matches {path!r}")
            out.extend(expand_inputs(matches))
        elif os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if ext(n) in IMAGE_EXTS and not n.startswith("."))
            if not names:
                raise NpvitposeError(f"folder {path!r} holds no images ({', '.join(IMAGE_EXTS)})")
            out.extend(os.path.join(path, n) for n in names)
        else:
            out.append(path)
    return out


@dataclass(frozen=True)
class Options:
    """How each input is processed and drawn (the `infer` flags of the same names)."""

    box_format: str = "xywh"
    bbox_thr: float = 0.0
    flip: bool = True
    decode: str = "default"
    nms_thr: float | None = None
    batch_size: int | None = None
    kpt_thr: float = 0.3
    radius: int = 4
    thickness: int = 2
    draw_bbox: bool = False
    skeleton_style: str = "mmpose"
    det_every: int = 1  # video: run the boxes source every N frames, carry boxes from keypoints in between
    track: str = "iou"  # video: greedy matching of people across frames by box IoU or keypoint OKS
    track_thr: float = 0.3  # mmpose's tracking_thr
    smooth: bool = False  # video: One-Euro filter per track (off: per-frame results stay the official pipeline's)
    max_image_pixels: int | None = None  # None: images.MAX_IMAGE_PIXELS
    layout: str = "coco"  # the records: "coco" keypoint results, or "mmpose" (its inferencer's instances)


class Detections:
    """A boxes file, parsed once: one plain box list, COCO results grouped by image id, or boxes keyed by
    file name. `path` "-" reads standard input."""

    def __init__(self, path, box_format="xywh", bbox_thr=0.0, images=None, image_id=None):
        from . import boxes as B

        self.path = path
        self.name = "standard input" if path == "-" else os.path.basename(path)
        data = B.read_json(path)
        self.coco = B.is_coco_results(data)
        self.by_name = B.is_by_name(data)
        self.plain = None
        if self.coco:
            self.groups = B.group_coco(data, box_format, bbox_thr, self.name)
        elif self.by_name:
            self.groups = B.group_by_name(data, box_format, bbox_thr, self.name)
            self.sizes = {os.path.normpath(k): len(v) for k, v in data.items()}
            bases = {}
            for key in self.groups:
                bases.setdefault(os.path.basename(key), []).append(key)
            self._bases = bases
        else:
            self.plain = B.parse_boxes(data, box_format, bbox_thr, self.name)
        self.count = len(data)  # entries in the file, before --bbox-thr: 0 means "nobody", not a mistake
        self.image_list = B.read_image_list(images) if images else None
        self.image_id = None if image_id is None else B.id_key(image_id)

    def key(self, path):
        """The image id (COCO) or file name (keyed by name) under which `path`'s boxes are filed."""
        from . import boxes as B

        if self.by_name:
            normal = os.path.normpath(path)
            if normal in self.groups:
                return normal
            found = self._bases.get(os.path.basename(normal), [])
            if len(found) == 1:
                return found[0]
            if found:
                raise NpvitposeError(f"{path}: {self.name} lists several files of this name ({', '.join(found)})")
            raise NpvitposeError(f"{path}: no entry for it in {self.name} (give [] for an image with nobody)")
        image_id = self.image_id if self.image_id is not None else B.id_for_file(path, self.image_list)
        if image_id is None:
            how = ("it is not in the --images list" if self.image_list is not None else
                   "name it by its id, pass --images or --image-id, or key the boxes by file name")
            raise NpvitposeError(f"{path}: cannot tell its COCO image id ({how})")
        return image_id

    def said_nobody(self, path):
        """True when the file itself gives this image no boxes (`[]`), rather than leaving it out."""
        if self.plain is not None:
            return self.count == 0
        return self.by_name and self.sizes[self.key(path)] == 0

    def for_image(self, path, image=None):
        """-> (image id, boxes (N, 4) xywh, scores (N,)) for one image file."""
        from . import boxes as B

        if self.plain is not None:
            image_id = self.image_id if self.image_id is not None else B.id_for_file(path)
            return (0 if image_id is None else image_id), *self.plain
        key = self.key(path)
        if self.by_name:  # the records' image_id: the COCO id a file is named by, else its name
            image_id = B.id_for_file(path)
            return (os.path.basename(path) if image_id is None else image_id), *self.groups[key]
        return (key, *self._group(key))

    def for_frame(self, index, image=None):
        if self.plain is not None:
            return self.plain
        if self.by_name:
            raise NpvitposeError(f"{self.name}: boxes keyed by file name are for images; "
                                 "a video takes one box list or COCO results with frame indices as image_id")
        return self._group(index)  # a video's detections use the frame index as image_id

    def _group(self, image_id):
        empty = (np.zeros((0, 4)), np.zeros((0,)))
        return self.groups.get(image_id, empty)


class DetectedBoxes:
    """The boxes source of inputs without a boxes file: a person detector, or the whole picture (detector None).

    An image's id is the one --image-id gives, else its numeric file stem, else its place among the inputs."""

    count = 0  # no boxes file: finding nobody is not "the file's boxes matched none of the inputs"

    def __init__(self, detector=None, bbox_thr=0.0, inputs=(), image_id=None):
        from . import boxes as B

        self.detector, self.bbox_thr = detector, float(bbox_thr)
        self.order = {os.fspath(p): i for i, p in enumerate(inputs)}
        self.image_id = None if image_id is None else B.id_key(image_id)

    def detect(self, image):
        from .detector import whole_image

        from .pipeline import MIN_ROI, padded_size

        found, scores = whole_image(image.shape) if self.detector is None else self.detector(image)
        keep = scores >= self.bbox_thr  # --bbox-thr applies to detector boxes too
        if len(found):  # a detector's sub-pixel box is noise, not a person: the pipeline could not crop it
            keep &= (found[:, 2] > 0) & (found[:, 3] > 0) & (padded_size(found) >= MIN_ROI).all(axis=1)
        return found[keep], scores[keep]

    def for_image(self, path, image):
        from . import boxes as B

        image_id = self.image_id if self.image_id is not None else B.id_for_file(path)
        return (self.order.get(os.fspath(path), 0) if image_id is None else image_id), *self.detect(image)

    def for_frame(self, index, image):
        return self.detect(image)


def jit_cache_cold(modules=None):
    """True when no kernel has machine code in Numba's cache: a fresh install (or a new cache folder), whose
    first forward compiles them. Many never compiled is normal: each model, precision and CPU uses only
    some kernels (a simple head never runs the deconvolution, fp32 never the bf16 products)."""
    import glob

    from numba.core.dispatcher import Dispatcher

    if modules is None:
        modules = [m for name, m in list(sys.modules.items()) if name.startswith("npvitpose.kernels.")]
    cached = missing = 0
    for module in modules:
        found = list(vars(module).values())
        # a module's parallel kernels (kernels/_jit.py Parallel) are what Python calls; its plain jit functions
        # are then helpers compiled into them, which never get a cache entry of their own
        kernels = [fn.parallel for fn in found if isinstance(getattr(fn, "parallel", None), Dispatcher)] or found
        for fn in kernels:
            if not isinstance(fn, Dispatcher) or fn.stats.cache_path is None:  # not cache=True
                continue
            index = f"{module.__name__.rsplit('.', 1)[-1]}.{fn.py_func.__qualname__}-*.nbi"  # Numba's index file name
            cached += 1
            missing += not glob.glob(os.path.join(glob.escape(fn.stats.cache_path), index))
    return cached > 0 and missing == cached


def precompile(runner):
    """On a cold cache, compile the kernels of the runner's first forward on two processes at once (kernels/_jit.py
    precompile), following a dry run of one person in a small image, flipped as the options say."""
    from .kernels import _jit
    from .pipeline import predict

    image = np.zeros((64, 48, 3), np.uint8)[:, :, ::-1]  # a BGR buffer seen as RGB, as images.read_image gives
    o = runner.options
    _jit.precompile(lambda: predict(runner.model, image, np.array([[4.0, 4.0, 32.0, 48.0]]), box_format="xywh",
                                    color="rgb", flip=o.flip, decode=o.decode))


def check_job(inputs, boxes):
    """Refuse, before any model work, a job that cannot give a result; -> the images that have no boxes."""
    videos = [p for p in inputs if is_video(p)]
    image_id = getattr(boxes, "image_id", None)
    if videos and len(inputs) > 1:
        raise NpvitposeError("a video must be the only input (its detections use the frame index as image_id)")
    if image_id is not None and videos:
        raise NpvitposeError("--image-id does not apply to a video: its detections use the frame index as image_id")
    if image_id is not None and len(inputs) > 1:
        raise NpvitposeError("--image-id selects the detections of one image; for several, use --images or COCO names")
    if getattr(boxes, "plain", None) is not None and len(inputs) > 1:
        raise NpvitposeError(f"{boxes.name}: a plain box list is for one image; for several, use COCO detection "
                             "results or boxes keyed by file name")
    if not any(os.path.exists(p) or is_camera(p) for p in inputs):  # nothing to do: say so before loading or downloading a model
        raise NpvitposeError(f"image file not found: {inputs[0]}" if len(inputs) == 1 else
                             f"none of the {len(inputs)} inputs exists (first: {inputs[0]})")
    if not isinstance(boxes, Detections) or videos:
        return []
    unknown, empty = [], []
    for path in inputs:
        try:
            _, found, _ = boxes.for_image(path)
        except NpvitposeError as e:
            unknown.append(str(e))
            continue
        if not len(found) and not boxes.said_nobody(path):
            empty.append(path)
    if unknown:  # every image must be matched before the model loads, not one failure per image after it
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise NpvitposeError(unknown[0] + more)
    return empty


def roi_areas(boxes):
    """spec 5.5: area = S_w * S_h of the aspect-fixed, 1.25-padded box, as used by OKS-NMS."""
    from .pipeline import padded_size

    return padded_size(np.asarray(boxes, dtype=np.float64)).prod(axis=1)


class Runner:
    """Runs one model over images or frames and turns each result into COCO keypoint records."""

    def __init__(self, model, options=Options()):
        from .datasets import DATASETS

        self.model = model
        self.options = options
        dataset = DATASETS.get(model.meta.get("dataset"))
        self.skeleton = model.meta.get("skeleton") or (dataset.skeleton if dataset else ())
        self.sigmas = dataset.sigmas if dataset is not None else None
        if options.skeleton_style == "openpose" and model.num_keypoints != 17:
            raise NpvitposeError(f"--skeleton-style openpose draws COCO's 17 keypoints; this model has "
                                 f"{model.num_keypoints}")
        if options.track == "oks" and (self.sigmas is None or len(self.sigmas) != model.num_keypoints):
            raise NpvitposeError(f"--track oks needs OKS sigmas, which dataset {model.meta.get('dataset')!r} "
                                 f"does not have")
        if options.nms_thr is not None and (self.sigmas is None or len(self.sigmas) != model.num_keypoints):
            name = model.meta.get("dataset")
            raise NpvitposeError(f"--nms-thr needs OKS sigmas, which dataset {name!r} does not have")

    def predict(self, image, boxes, box_scores, with_box_scores=False):
        """-> (kept keypoints (N, K, 2), scores (N, K), instance scores (N,), boxes (N, 4)[, box scores (N,)])."""
        from .pipeline import predict

        o = self.options
        kw = {"box_format": "xywh", "color": "rgb", "flip": o.flip, "decode": o.decode}
        step = o.batch_size or max(len(boxes), 1)  # --batch-size: at most this many people per call
        parts = [predict(self.model, image, boxes[i:i + step], **kw) for i in range(0, max(len(boxes), 1), step)]
        return self.finish(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                           boxes, box_scores, with_box_scores)

    def finish(self, keypoints, scores, boxes, box_scores, with_box_scores=False):
        """Predicted keypoints -> the kept ones with their instance scores (COCO rescoring, --nms-thr),
        and with_box_scores, the kept boxes' scores too."""
        from .decode import instance_scores, oks_nms

        o = self.options
        inst = instance_scores(box_scores, scores, VIS_THR)
        if o.nms_thr is not None and len(boxes):
            keep = np.sort(oks_nms(keypoints, inst, roi_areas(boxes), self.sigmas, o.nms_thr))
            keypoints, scores, inst, boxes = keypoints[keep], scores[keep], inst[keep], boxes[keep]
            box_scores = np.asarray(box_scores)[keep]
        return (keypoints, scores, inst, boxes) + ((np.asarray(box_scores),) if with_box_scores else ())

    def records(self, image_id, keypoints, scores, inst, boxes, box_scores=None):
        """One record per person, in the layout of `options.layout`; keypoints always (x, y)."""
        out = []
        box_scores = [None] * len(boxes) if box_scores is None else box_scores
        for kp, sc, s, box, bs in zip(keypoints, scores, inst, boxes, box_scores):
            xy = np.round(np.asarray(kp, dtype=np.float64), 3)
            sc = np.round(np.asarray(sc, dtype=np.float64), 5)
            x, y, w, h = (round(float(v), 3) for v in box)
            if self.options.layout == "mmpose":  # mmpose.structures.split_instances: bbox is [[x1, y1, x2, y2]]
                out.append({"keypoints": xy.tolist(), "keypoint_scores": sc.tolist(),
                            "bbox": [[x, y, round(x + w, 3), round(y + h, 3)]],
                            "bbox_score": None if bs is None else round(float(bs), 5)})
                continue
            out.append({
                "image_id": image_id,
                "category_id": 1,
                "keypoints": np.concatenate([xy, sc[:, None]], axis=1).reshape(-1).tolist(),
                "score": round(float(s), 5),
                "bbox": [x, y, w, h],
            })
        return out

    def draw(self, image, keypoints, scores, boxes=None, track_ids=None):
        from .vis import draw

        o = self.options
        return draw(image, keypoints, scores, self.skeleton, o.kpt_thr, o.radius, o.thickness,
                    keypoint_names=self.model.meta.get("keypoint_names"), boxes=boxes if o.draw_bbox else None,
                    track_ids=track_ids, style=o.skeleton_style)


def vis_targets(vis, inputs):
    """Where each input's annotated copy goes: a file for a single input, else a folder of same-named files."""
    from .outputs import check_target

    if vis is None:
        return [None] * len(inputs)
    as_dir = vis.endswith(("/", os.sep)) or os.path.isdir(vis) or not ext(vis)
    if not as_dir and len(inputs) > 1:
        raise NpvitposeError(f"--vis {vis!r} names one file, but there are {len(inputs)} inputs; "
                             f"give a folder (such as {os.path.splitext(vis)[0]}/) to draw each of them")
    if not as_dir:
        want = VIDEO_EXTS if is_video(inputs[0]) else DRAW_EXTS
        if ext(vis) not in want:
            kind = "a video" if is_video(inputs[0]) else "an image"
            raise NpvitposeError(f"--vis {vis!r}: the input is {kind}, so use one of {', '.join(want)}")
        check_target(vis, "--vis")
        return [vis]
    targets = []
    for path in inputs:
        stem, suffix = os.path.splitext(os.path.basename(path))
        if is_video(path):
            suffix = ".mp4"
        elif suffix.lower() not in DRAW_EXTS:
            suffix = ".png"
        targets.append(os.path.join(vis, stem + suffix))
    seen = {}
    for path, target in zip(inputs, targets):
        if target in seen:
            raise NpvitposeError(f"--vis: {seen[target]!r} and {path!r} would both be drawn to {target!r}")
        seen[target] = path
    return targets


def process_image(runner, boxes, path, vis_target=None, sink=None):
    from .images import read_image

    image = read_image(path, runner.options.max_image_pixels)
    image_id, found, box_scores = boxes.for_image(path, image)
    keypoints, scores, inst, found, found_scores = runner.predict(image, found, box_scores, True)
    if vis_target is not None:
        if len(scores) and not (scores >= runner.options.kpt_thr).any():
            warn(f"{path}: no keypoint scores {runner.options.kpt_thr} (--kpt-thr) or more "
                 f"(highest {float(scores.max()):.3f}); {vis_target} shows none")
        os.makedirs(os.path.dirname(os.path.abspath(vis_target)), exist_ok=True)
        write_image_atomic(vis_target, runner.draw(image, keypoints, scores, found))
    records = runner.records(image_id, keypoints, scores, inst, found, found_scores)
    if sink is not None:
        sink({"image_id": image_id, "file": os.fspath(path)}, records)
    return records


@contextlib.contextmanager
def _quiet_stderr():
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (captured, or closed): nothing to hide
        yield
        return
    sys.stderr.flush()
    saved, null = os.dup(fd), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(null)


class VideoWriter:
    """The --vis video, opened at the first frame: the first encoder of its container this OpenCV has,
    written to a temporary file renamed into place by the caller's `atomic_output`."""

    def __init__(self, target, tmp, fps, size):
        import cv2

        self.frames, self._name = 0, contextlib.ExitStack()
        tmp = self._name.enter_context(cv_path(tmp))  # never a name OpenCV cannot take
        for fourcc in VIDEO_FOURCC[ext(target)]:
            with _quiet_stderr():  # OpenCV prints FFmpeg's tag fallbacks straight to fd 2, past its log level
                self.writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*fourcc), fps, size)
            if self.writer.isOpened():
                break
            self.writer.release()
        else:
            self._name.close()
            raise NpvitposeError(f"cannot write video {target!r}: OpenCV has no encoder for it")
        self.fourcc = fourcc
        if ext(target) in (".mp4", ".mov") and fourcc not in BROWSER_FOURCC:
            warn(f"this OpenCV has no H.264 encoder, so {target} is MPEG-4 Part 2 ({fourcc}), which web browsers "
                 f"do not play; --vis OUT.webm writes VP8, which they do")

    def write(self, image_rgb):
        self.writer.write(np.ascontiguousarray(image_rgb[:, :, ::-1]))
        self.frames += 1

    def release(self):
        self.writer.release()
        self._name.close()


def _open_capture(path):
    import cv2

    if is_camera(path):
        capture = cv2.VideoCapture(int(path))
        if not capture.isOpened():
            capture.release()
            raise NpvitposeError(f"cannot open camera {path}: OpenCV finds no such device")
        return capture
    if not os.path.isfile(path):
        raise NpvitposeError(f"cannot read video {path!r}: no such file")
    with cv_path(path) as name:  # never a name OpenCV cannot take; the open file outlives the link
        capture = cv2.VideoCapture(name)
    if not capture.isOpened():
        capture.release()
        raise NpvitposeError(f"cannot read video {path!r}: OpenCV cannot open it")
    return capture


class VideoTracks:
    """One video's people from frame to frame, fed every frame in order: track ids (--track), the boxes
    --det-every carries from the keypoints, --smooth. A distributed run feeds it on the client."""

    def __init__(self, runner):
        from .tracking import Smoother, Tracker

        o = runner.options
        self.runner, self.options = runner, o
        self.tracker = Tracker(o.track, o.track_thr, runner.sigmas)
        self.smoother = Smoother() if o.smooth else None
        self.carried = None  # (boxes, scores) for the next frame when it is not a detection frame

    def boxes(self, index, source, image):
        """This frame's boxes: the source's on every det_every-th frame, else those carried from the last."""
        if self.carried is not None and index % self.options.det_every:
            return self.carried
        return source.for_frame(index, image)

    def frame(self, index, keypoints, scores, inst, kept, kept_scores):
        """One frame's predictions -> (its records with track_id, the keypoints to show, the track ids)."""
        from .tracking import boxes_from_keypoints

        ids = self.tracker.update(kept, keypoints)
        if self.options.det_every > 1:
            carry, alive = boxes_from_keypoints(keypoints, scores, self.options.kpt_thr)
            self.carried = (carry[alive], np.asarray(kept_scores)[alive])
        shown = self.smoother(ids, keypoints) if self.smoother is not None else keypoints
        records = self.runner.records(index, shown, scores, inst, kept, kept_scores)
        for record, track in zip(records, ids.tolist()):
            record["track_id"] = track
        return records, shown, ids


def video_fps(capture):
    """The frame rate a video announces, or 25 when it announces none (or nonsense)."""
    import cv2

    fps = capture.get(cv2.CAP_PROP_FPS)
    return fps if fps and np.isfinite(fps) and 0 < fps < 1000 else 25.0


def process_video(runner, boxes, path, vis_target=None, sink=None):
    """Every frame: boxes (from the source every det_every frames, else carried from the keypoints), poses,
    track ids, optional smoothing; records carry `track_id`. A camera runs until Ctrl-C, which ends it cleanly."""
    import cv2

    capture = _open_capture(path)
    camera = is_camera(path)
    tracks = VideoTracks(runner)
    with contextlib.ExitStack() as stack:
        stack.callback(capture.release)
        announced = 0 if camera else int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = video_fps(capture)
        bar = Progress(max(announced, 0) or None, os.path.basename(str(path)), unit="frames")
        records, index, writer = [], 0, None
        while True:
            try:
                ok, frame = capture.read()
                if not ok or frame is None:
                    break
                image = np.ascontiguousarray(frame[:, :, ::-1])  # BGR -> RGB
                found, box_scores = tracks.boxes(index, boxes, image)
                keypoints, scores, inst, kept, kept_scores = runner.predict(image, found, box_scores, True)
                frame_records, shown, ids = tracks.frame(index, keypoints, scores, inst, kept, kept_scores)
                if vis_target is not None:
                    if writer is None:
                        os.makedirs(os.path.dirname(os.path.abspath(vis_target)), exist_ok=True)
                        tmp = stack.enter_context(atomic_output(vis_target))  # renamed into place if all went well
                        stack.push(lambda failed, *_: None if failed else _check_video(tmp, vis_target, writer.frames))
                        writer = VideoWriter(vis_target, tmp, fps, (image.shape[1], image.shape[0]))
                        stack.callback(writer.release)  # runs before the check and the rename
                    writer.write(runner.draw(image, shown, scores, kept, ids))
            except KeyboardInterrupt:
                if not camera:
                    raise
                break  # Ctrl-C is how a camera run ends: the frames done so far are written as usual
            if runner.options.layout == "mmpose":  # its inferencer's video layout: one entry per frame
                records.append({"frame_id": index, "instances": frame_records})
            else:
                records.extend(frame_records)
            if sink is not None:
                sink({"image_id": index, "time": round(index / fps, 4)}, frame_records)
            index += 1
            bar.update()
        bar.close()
        if index == 0:
            what = f"camera {path}" if camera else f"video {path!r}"
            raise NpvitposeError(f"cannot read {what}: no frame could be decoded")
        if announced and index < announced:
            warn(f"{path}: read {index} of {announced} announced frames")
        return records


def _check_video(tmp, target, frames):
    """VideoWriter reports no write error (a full disk gives a file of no readable frame): read it back."""
    import cv2

    with cv_path(tmp) as name:
        capture = cv2.VideoCapture(name)
        try:
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if capture.isOpened() else -1
            if count == 0:  # containers without an index: count the frames
                while count < frames and capture.grab():
                    count += 1
        finally:
            capture.release()
    if count != frames:
        raise NpvitposeError(f"cannot write video {target!r}: {max(count, 0)} of {frames} frames could be read "
                             "back (is the disk full?)")


def process(runner, boxes, path, vis_target=None, sink=None):
    """The records of one input (an image or a video); raises NpvitposeError/OSError if it fails.

    sink(header, records), if given, receives each image's or frame's records as soon as they are made."""
    if is_video(path):
        return process_video(runner, boxes, path, vis_target, sink)
    return process_image(runner, boxes, path, vis_target, sink)


class JsonLines:
    """Streamed results: one JSON line per image or frame, `{"image_id", "file" or "time", "people": [...]}`,
    flushed as soon as it is made, so an interrupted run keeps every finished frame. The file is opened at
    the first line: a run that fails before any result leaves an older file untouched."""

    def __init__(self, path=None):
        self.path, self.file = path, None  # path None: standard output

    def __call__(self, header, records):
        import json

        people = [{k: v for k, v in r.items() if k != "image_id"} for r in records]
        if self.file is None:
            self.file = sys.stdout if self.path is None else open(self.path, "w", encoding="utf-8")
        self.file.write(json.dumps(dict(header, people=people), separators=(",", ":")) + "\n")
        self.file.flush()

    def close(self):
        if self.file is not None and self.file is not sys.stdout:
            self.file.close()


def run(runner, boxes, inputs, vis=None, sink=None, done=None):
    """Every input in order -> (records, number failed); a failing input is reported on one line and skipped.

    sink(header, records) receives each image's or frame's records as they are made (see `process`);
    done(path, records) each input's, once it is finished."""
    vis = [None] * len(inputs) if vis is None else vis
    results, failed = [], 0
    bar = Progress(len(inputs), "images", unit="images") if len(inputs) > 1 else None
    for path, target in zip(inputs, vis):
        try:
            records = process(runner, boxes, path, target, sink)
            if done is not None:
                done(path, records)
            results.extend(records)
        except (NpvitposeError, OSError, MemoryError) as e:
            failed += 1
            error(failure_message(path, e))
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return results, failed
