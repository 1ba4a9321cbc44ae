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
from .messages import Progress, error, os_message, warn
from .outputs import atomic_output, write_image_atomic

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pnm")
DRAW_EXTS = tuple(e for e in IMAGE_EXTS if e != ".pgm")  # --vis: .pgm holds grey only, drawings are in colour
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv")
VIDEO_FOURCC = {".mp4": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
VIS_THR = 0.2  # spec 5.6: keypoints above this count in the instance score


def failure_message(path, e):
    """One line for a failed input, naming it once."""
    message = os_message(e) if isinstance(e, OSError) else (str(e) or "out of memory")
    return message if path in message else f"{path}: {message}"


def ext(path):
    return os.path.splitext(str(path))[1].lower()


def is_video(path):
    return ext(path) in VIDEO_EXTS


def expand_inputs(paths):
    """Files stay as given (a missing one fails later, on its own); a folder gives its images, sorted."""
    out = []
    for path in paths:
        if os.path.isdir(path):
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


class Detections:
    """A boxes file, parsed once: either one plain box list or COCO results grouped by image id."""

    def __init__(self, path, box_format="xywh", bbox_thr=0.0, images=None, image_id=None):
        from . import boxes as B

        self.path = path
        self.name = os.path.basename(path)
        data = B.read_json(path)
        self.coco = B.is_coco_results(data)
        if self.coco:
            self.groups = B.group_coco(data, box_format, bbox_thr, self.name)
            self.plain = None
        else:
            self.plain = B.parse_boxes(data, box_format, bbox_thr, self.name)
        self.image_list = B.read_image_list(images) if images else None
        self.image_id = None if image_id is None else B.id_key(image_id)

    def for_image(self, path, image=None):
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

    def for_frame(self, index, image=None):
        if not self.coco:
            return self.plain
        return self._group(index)  # a video's detections use the frame index as image_id

    def _group(self, image_id):
        empty = (np.zeros((0, 4)), np.zeros((0,)))
        return self.groups.get(image_id, empty)


def check_job(inputs, boxes):
    """Refuse, before any model work, a job that cannot give a result."""
    videos = [p for p in inputs if is_video(p)]
    image_id = getattr(boxes, "image_id", None)
    if videos and len(inputs) > 1:
        raise NpvitposeError("a video must be the only input (its detections use the frame index as image_id)")
    if image_id is not None and videos:
        raise NpvitposeError("--image-id does not apply to a video: its detections use the frame index as image_id")
    if image_id is not None and len(inputs) > 1:
        raise NpvitposeError("--image-id selects the detections of one image; for several, use --images or COCO names")
    if getattr(boxes, "plain", None) is not None and len(inputs) > 1:
        raise NpvitposeError(
            f"{boxes.name}: a plain box list is for one image; for several, use COCO detection results")
    if not any(os.path.exists(p) for p in inputs):  # nothing to do: say so before loading or downloading a model
        raise NpvitposeError(f"image file not found: {inputs[0]}" if len(inputs) == 1 else
                             f"none of the {len(inputs)} inputs exists (first: {inputs[0]})")


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
        if options.nms_thr is not None and (self.sigmas is None or len(self.sigmas) != model.num_keypoints):
            name = model.meta.get("dataset")
            raise NpvitposeError(f"--nms-thr needs OKS sigmas, which dataset {name!r} does not have")

    def predict(self, image, boxes, box_scores):
        """-> (kept keypoints (N, K, 2), scores (N, K), instance scores (N,), boxes (N, 4))."""
        from .pipeline import predict

        o = self.options
        kw = {"box_format": "xywh", "color": "rgb", "flip": o.flip, "decode": o.decode}
        step = o.batch_size or max(len(boxes), 1)  # --batch-size: at most this many people per call
        parts = [predict(self.model, image, boxes[i:i + step], **kw) for i in range(0, max(len(boxes), 1), step)]
        return self.finish(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                           boxes, box_scores)

    def finish(self, keypoints, scores, boxes, box_scores):
        """Predicted keypoints -> the kept ones with their instance scores (COCO rescoring, --nms-thr)."""
        from .decode import instance_scores, oks_nms

        o = self.options
        inst = instance_scores(box_scores, scores, VIS_THR)
        if o.nms_thr is not None and len(boxes):
            keep = np.sort(oks_nms(keypoints, inst, roi_areas(boxes), self.sigmas, o.nms_thr))
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

        o = self.options
        return draw(image, keypoints, scores, self.skeleton, o.kpt_thr, o.radius, o.thickness)


def vis_targets(vis, inputs):
    """Where each input's annotated copy goes: a file for a single input, else a folder of same-named files."""
    from .outputs import check_target

    if vis is None:
        return [None] * len(inputs)
    as_dir = vis.endswith(("/", os.sep)) or os.path.isdir(vis) or len(inputs) > 1 or not ext(vis)
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


def process_image(runner, boxes, path, vis_target=None):
    from .images import read_image

    image = read_image(path)
    image_id, found, box_scores = boxes.for_image(path, image)
    keypoints, scores, inst, found = runner.predict(image, found, box_scores)
    if vis_target is not None:
        os.makedirs(os.path.dirname(os.path.abspath(vis_target)), exist_ok=True)
        write_image_atomic(vis_target, runner.draw(image, keypoints, scores))
    return runner.records(image_id, keypoints, scores, inst, found)


def process_video(runner, boxes, path, vis_target=None):
    import cv2

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
            found, box_scores = boxes.for_frame(index, image)
            keypoints, scores, inst, kept = runner.predict(image, found, box_scores)
            records.extend(runner.records(index, keypoints, scores, inst, kept))
            if vis_target is not None:
                if writer is None:
                    os.makedirs(os.path.dirname(os.path.abspath(vis_target)), exist_ok=True)
                    tmp = stack.enter_context(atomic_output(vis_target))  # renamed into place when all went well
                    fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC[ext(vis_target)])
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
            warn(f"{path}: read {index} of {announced} announced frames")
        return records


def process(runner, boxes, path, vis_target=None):
    """The records of one input (an image or a video); raises NpvitposeError/OSError if it fails."""
    if is_video(path):
        return process_video(runner, boxes, path, vis_target)
    return process_image(runner, boxes, path, vis_target)


def run(runner, boxes, inputs, vis=None):
    """Every input in order -> (records, number failed); a failing input is reported on one line and skipped."""
    vis = [None] * len(inputs) if vis is None else vis
    results, failed = [], 0
    bar = Progress(len(inputs), "images", unit="images") if len(inputs) > 1 else None
    for path, target in zip(inputs, vis):
        try:
            results.extend(process(runner, boxes, path, target))
        except (NpvitposeError, OSError, MemoryError) as e:
            failed += 1
            if bar is not None and bar.enabled:
                sys.stderr.write("\n")
            error(failure_message(path, e))
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return results, failed
