"""Person detection on OpenCV's DNN module: YOLOX (and ultralytics-layout) ONNX files, no other runtime.

Pre-processing is YOLOX's own (`yolox/data/data_augment.py::preproc`): the image, BGR 0-255 (RGB for a
file published that way), resized by one ratio to fit the network input and pasted at the top-left of a canvas filled with 114.
A YOLOX file's raw output (1, N, 5 + C) is decoded on the 8/16/32-stride grids (`demo_postprocess`):
centre = (offset + cell) * stride, size = exp(log-size) * stride, score = objectness * class score.
An ultralytics-layout file gives (1, 4 + C, N): centre and size in input pixels, class scores; it is fed
as ultralytics does (`LetterBox`: centred, RGB 0-1) and its boxes clipped to the picture (`scale_boxes`).
As in YOLOX's `postprocess` and mmdet, a box belongs to its best class; persons (class 0) whose
score reaches the threshold go through `cv2.dnn.NMSBoxes`, and boxes are mapped back by 1 / ratio.
"""

import os
import sys
from dataclasses import dataclass

import numpy as np

from .errors import NpvitposeError

STRIDES = (8, 16, 32)  # YOLOX's three FPN levels
PAD_VALUE = 114  # YOLOX's letterbox grey
PERSON = 0  # COCO's person in the 80-class order of YOLOX and ultralytics
# a raw head's median log-size: e^6 x stride 8 is a 3000-px box, so a larger median means sizes in pixels
DECODED_LOG_SIZE = 6.0


@dataclass(frozen=True)
class Source:
    url: str  # an https address, or "hf:<repo>/<file>" resolved against HF_ENDPOINT
    file: str  # the name in the cache
    sha256: str | None  # published checksum (None: not published; the hub's header is used when sent)
    size: int  # the export's fixed input side
    licence: str
    rgb: bool = False  # the channel order the file was published with: YOLOX's own is BGR


# The default is Apache-2.0 (never ultralytics' AGPL weights). OpenCV Zoo's YOLOX-S is the file OpenCV
# tests its DNN module with; its sha256 is the git-lfs object id published in the opencv_zoo repository.
# OpenCV Zoo feeds it RGB (demo.py cvtColor BGR2RGB, demo.cpp swapRB=true), the order its COCO figures
# (40.5 AP, 54.1 person AP) were measured in; Megvii's own files take YOLOX's BGR.
DETECTORS = {
    "yolox-s": Source("hf:opencv/object_detection_yolox/object_detection_yolox_2022nov.onnx",
                      "object_detection_yolox_2022nov.onnx",
                      "c5c2d13e59ae883e6af3b45daea64af4833a4951c92d116ec270d9ddbe998063", 640,
                      "Apache-2.0 (YOLOX-S by Megvii, exported by OpenCV Zoo)", rgb=True),
    "yolox-tiny": Source("https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_tiny.onnx",
                         "yolox_tiny.onnx", None, 416, "Apache-2.0 (Megvii YOLOX release 0.1.1rc0)"),
    "yolox-nano": Source("https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_nano.onnx",
                         "yolox_nano.onnx", None, 416, "Apache-2.0 (Megvii YOLOX release 0.1.1rc0)"),
}
DEFAULT_DETECTOR = "yolox-s"
DEFAULT_SCORE_THR = 0.3  # YOLOX's demo --conf and mmpose's demo --bbox-thr
DEFAULT_NMS_THR = 0.3  # YOLOX's demo --nms and mmpose's demo --nms-thr


def detector_path(name, cache=None):
    """Where the published detector `name` lives in the cache (whether or not it is there yet)."""
    from .fetch import cache_folder

    return os.path.join(cache_folder(cache), "detectors", DETECTORS[name].file)


def fetch_detector(name, cache=None, endpoint=None, progress=None, note=None):
    """Download the published detector `name` into the cache once (resumed, checksummed); return its path.

    The download is announced through `note(text)`."""
    from . import fetch

    if name not in DETECTORS:
        raise NpvitposeError(f"unknown detector {name!r}; known: {', '.join(DETECTORS)} (or a path to an .onnx file)")
    source, path = DETECTORS[name], detector_path(name, cache)
    if os.path.exists(path):
        return path
    url = source.url
    if url.startswith("hf:"):
        repo, _, file_name = url[3:].rpartition("/")
        url = fetch.file_url(fetch.endpoint_url(endpoint), repo, file_name)
    if note is not None:
        note(f"detector {name!r} is not in the cache {os.path.dirname(path)!r}; "
             f"downloading it once from {url} ({source.licence})")
    try:
        return fetch.download(url, path, source.sha256, progress)
    except NpvitposeError as e:
        raise NpvitposeError(f"{e} (offline: put the file at {path}, or pass --detector FILE.onnx, "
                             f"a boxes file, or --whole-image)") from None


def resolve_detector(spec, cache=None, note=None):
    """A detector given by the user: an existing .onnx path, else a published name (downloaded on first use)."""
    spec = os.fspath(spec)
    if os.path.exists(spec):
        if os.path.isdir(spec):
            raise NpvitposeError(f"detector {spec!r} is a folder, not an .onnx file")
        return spec
    key = spec.strip().lower()
    if key in DETECTORS:
        return fetch_detector(key, cache, note=note)
    if spec.lower().endswith(".onnx"):
        raise NpvitposeError(f"detector file not found: {spec}")
    raise NpvitposeError(f"unknown detector {spec!r}; known: {', '.join(DETECTORS)} (or a path to an .onnx file)")


# ------------------------------------------------------------------------------------- ONNX reading


def _varint(buf, i):
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf, start=0, end=None):
    """(field number, wire type, value) of one protobuf message: ints for varints, memoryviews for bytes."""
    end = len(buf) if end is None else end
    i = start
    while i < end:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > end:
                raise ValueError("truncated field")
            value, i = buf[i:i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            if i + n > end:
                raise ValueError("truncated field")
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"wire type {wire}")
        yield field, wire, value


def _shape(value_info):
    """ValueInfoProto -> (name, [int or str per dim]); a dim without value or name is '?'."""
    name, dims = "", []
    for f, w, v in _fields(value_info):
        if f == 1 and w == 2:
            name = bytes(v).decode("utf-8", "replace")
        elif f == 2 and w == 2:  # TypeProto
            for f2, w2, tensor in _fields(v):
                if f2 == 1 and w2 == 2:  # tensor_type
                    for f3, w3, shape in _fields(tensor):
                        if f3 == 2 and w3 == 2:  # TensorShapeProto
                            for f4, w4, dim in _fields(shape):
                                if f4 == 1 and w4 == 2:
                                    d = "?"
                                    for f5, w5, x in _fields(dim):
                                        d = x if (f5, w5) == (1, 0) else bytes(x).decode("utf-8", "replace")
                                    dims.append(d)
    return name, dims


def onnx_summary(path):
    """Read an ONNX file's graph inputs, outputs and operator types without onnx (protobuf wire format).

    Returns (inputs [(name, dims)], outputs [(name, dims)], op types set); weights are skipped over.
    """
    try:
        with open(path, "rb") as f:
            buf = memoryview(f.read())
    except OSError as e:
        raise NpvitposeError(f"cannot read detector file {path!r}: {e.strerror or e}") from None
    try:
        graph = next((v for f, w, v in _fields(buf) if f == 7 and w == 2), None)
        if graph is None:
            raise ValueError("no graph")
        inputs, outputs, initializers, ops = [], [], set(), set()
        for f, w, v in _fields(graph):
            if w != 2:
                continue
            if f == 1:  # NodeProto: op_type is field 4
                ops.update(bytes(x).decode("utf-8", "replace") for f2, w2, x in _fields(v) if f2 == 4 and w2 == 2)
            elif f == 5:  # TensorProto: name is field 8
                initializers.update(bytes(x).decode("utf-8", "replace") for f2, w2, x in _fields(v) if f2 == 8 and w2 == 2)
            elif f == 11:
                inputs.append(_shape(v))
            elif f == 12:
                outputs.append(_shape(v))
    except (ValueError, UnicodeDecodeError, IndexError):
        raise NpvitposeError(f"{path}: not an ONNX model file (the protobuf is malformed or truncated)") from None
    inputs = [(n, d) for n, d in inputs if n not in initializers]  # old exports list weights as inputs too
    if not inputs or not outputs:
        raise NpvitposeError(f"{path}: not an ONNX model file (no graph inputs or outputs)")
    return inputs, outputs, ops


# ------------------------------------------------------------------------------------- the detector


def parse_size(text):
    """'640' or '640x480' (width x height) -> (height, width), multiples of 32 (YOLOX's largest stride)."""
    parts = str(text).lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) < 32 or max(values) > 4096 or any(v % 32 for v in values):
        raise NpvitposeError(f"detector size {text!r} must be N or WxH, multiples of 32 from 32 to 4096")
    w, h = (values[0], values[0]) if len(values) == 1 else values
    return h, w


def letterbox(image_bgr, height, width):
    """YOLOX's preproc: resize by r = min(H / h, W / w) to (int(w r), int(h r)), paste top-left on 114 grey.

    Returns (blob (1, 3, H, W) float32 BGR 0-255, r)."""
    import cv2

    h, w = image_bgr.shape[:2]
    r = min(height / h, width / w)
    nw, nh = max(int(w * r), 1), max(int(h * r), 1)
    canvas = np.full((height, width, 3), PAD_VALUE, dtype=np.uint8)
    canvas[:nh, :nw] = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32), r


def letterbox_centered(image_rgb, height, width):
    """ultralytics' LetterBox: resize by r to (round(w r), round(h r)), pad 114 evenly around the picture
    (the odd pixel below and right), RGB scaled to 0-1. Returns (blob (1, 3, H, W), r, (left, top))."""
    import cv2

    h, w = image_rgb.shape[:2]
    r = min(height / h, width / w)
    nw, nh = max(int(round(w * r)), 1), max(int(round(h * r)), 1)
    dw, dh = (width - nw) / 2, (height - nh) / 2
    left, top = int(round(dw - 0.1)), int(round(dh - 0.1))
    canvas = np.full((height, width, 3), PAD_VALUE, dtype=np.uint8)
    canvas[top:top + nh, left:left + nw] = cv2.resize(image_rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    blob = canvas.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255)
    # boxes come back through scale_boxes' own offsets, from the unrounded size (a pixel off the border at times)
    return np.ascontiguousarray(blob), r, (round((width - w * r) / 2 - 0.1), round((height - h * r) / 2 - 0.1))


def grids(height, width):
    """Cell (x, y) and stride of every anchor, in YOLOX's output order: stride 8 rows first, row-major."""
    cells, strides = [], []
    for s in STRIDES:
        gy, gx = np.meshgrid(np.arange(height // s), np.arange(width // s), indexing="ij")
        cells.append(np.stack([gx.ravel(), gy.ravel()], axis=1))
        strides.append(np.full(gx.size, s))
    return np.concatenate(cells).astype(np.float64), np.concatenate(strides).astype(np.float64)[:, None]


def decode(output, height, width):
    """A raw network output -> (centre-size boxes (N, 4) in input pixels, best class (N,), its score (N,)).

    (1, N, 5 + C): YOLOX raw head, N anchors of the 8/16/32 grids (or already decoded to pixels, as YOLOX's
    export with --decode_in_inference gives); (1, 4 + C, N): ultralytics layout.
    """
    out = np.asarray(output, dtype=np.float64)
    cells, strides = grids(height, width)
    n = len(cells)
    if out.ndim == 3 and out.shape[0] == 1 and out.shape[1] == n and out.shape[2] > 5:
        raw = out[0]  # (N, 5 + C)
        if np.median(raw[:, 2:4]) > DECODED_LOG_SIZE:  # an export with decode_in_inference: pixels already
            boxes = raw[:, :4]
        else:
            with np.errstate(over="ignore"):  # an overflowing size is an infinite box, dropped later
                boxes = np.concatenate([(raw[:, :2] + cells) * strides, np.exp(raw[:, 2:4]) * strides], axis=1)
        cls = raw[:, 5:] * raw[:, 4:5]  # objectness x class score
    elif out.ndim == 3 and out.shape[0] == 1 and out.shape[2] == n and out.shape[1] > 4:
        raw = out[0].T  # (N, 4 + C)
        boxes, cls = raw[:, :4], raw[:, 4:]
    else:
        raise NpvitposeError(
            f"detector output of shape {tuple(out.shape)} is neither YOLOX's raw (1, {n}, 5 + classes) nor "
            f"ultralytics' (1, 4 + classes, {n}) for a {width}x{height} input (an export with NMS inside is "
            f"not supported: export the raw head)")
    label = np.argmax(cls, axis=1)
    return boxes, label, cls[np.arange(len(cls)), label]


def person_boxes(boxes_cxcywh, label, score, ratio, score_thr, nms_thr, pad=(0, 0)):
    """Persons scoring at least `score_thr`, NMS-ed by cv2.dnn.NMSBoxes -> (xywh (M, 4), scores (M,)) in image px
    (input pixels less the letterbox's `pad` (left, top), over its ratio)."""
    import cv2

    sane = np.isfinite(boxes_cxcywh).all(axis=1) & (boxes_cxcywh[:, 2] > 0) & (boxes_cxcywh[:, 3] > 0)
    keep = (label == PERSON) & (score >= score_thr) & sane
    b, s = boxes_cxcywh[keep], score[keep]
    xywh = np.concatenate([b[:, :2] - b[:, 2:] / 2 - np.asarray(pad, dtype=np.float64), b[:, 2:]], axis=1) / ratio
    if not len(xywh):
        return np.zeros((0, 4)), np.zeros((0,))
    # the threshold was applied above (>=, as YOLOX's postprocess); NMSBoxes also drops scores of exactly 0
    idx = np.asarray(cv2.dnn.NMSBoxes([tuple(map(float, r)) for r in xywh], s.astype(float).tolist(), 0.0,
                                      float(nms_thr)), dtype=np.int64).reshape(-1)
    return xywh[idx], s[idx]


def _stderr_note(text):
    sys.stderr.write(f"npvitpose: {text}\n")


class Detector:
    """A person detector: `boxes, scores = Detector()(image)`, boxes (N, 4) xywh in image pixels.

    model: a published name (`DETECTORS`, default yolox-s, downloaded on first use) or an .onnx path.
    size: the network input (height, width) or 'N' / 'WxH'; default the export's own input size.
    rgb: feed the network RGB instead of YOLOX's BGR; default: as the file was published (a published
    name, or a file whose sha256 is one of theirs), else BGR.
    """

    def __init__(self, model=DEFAULT_DETECTOR, size=None, score_thr=DEFAULT_SCORE_THR, nms_thr=DEFAULT_NMS_THR,
                 cache=None, note=_stderr_note, rgb=None):
        import cv2

        self.path = resolve_detector(model, cache, note)
        key = str(model).strip().lower()
        if rgb is None:
            rgb = DETECTORS[key].rgb if key in DETECTORS and not os.path.exists(model) else _published_rgb(self.path)
        self.rgb = bool(rgb)
        for name, value in (("score_thr", score_thr), ("nms_thr", nms_thr)):
            if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
                raise NpvitposeError(f"detector {name} must be a number from 0 to 1, got {value!r}")
        self.score_thr, self.nms_thr = float(score_thr), float(nms_thr)
        inputs, outputs, ops = onnx_summary(self.path)
        where = f"detector {self.path!r}"
        if "NonMaxSuppression" in ops:
            raise NpvitposeError(f"{where} has NMS inside its graph, which cv2.dnn {cv2.__version__} does not run; "
                                 f"export the raw head (YOLOX: tools/export_onnx.py without --decode_in_inference)")
        if len(inputs) != 1 or len(inputs[0][1]) != 4:
            raise NpvitposeError(f"{where} must have one (1, 3, H, W) image input, has "
                                 f"{', '.join(f'{n} {d}' for n, d in inputs)}")
        fixed = inputs[0][1][2:]
        fixed = tuple(fixed) if all(isinstance(v, int) and v > 0 for v in fixed) else None
        if size is None:
            size = fixed if fixed is not None else (640, 640)  # a dynamic export: YOLOX's usual test size
        elif isinstance(size, str):
            size = parse_size(size)
        else:
            size = parse_size("x".join(str(int(v)) for v in tuple(size)[::-1]))
        if any(v % 32 for v in size):
            raise NpvitposeError(f"{where} takes {size[1]}x{size[0]} inputs, not multiples of 32 as YOLOX needs")
        self.exported = fixed
        self.height, self.width = int(size[0]), int(size[1])
        self._net = self._read_net()  # now, so a file cv2.dnn cannot read fails here
        self._dynamic = any(not isinstance(v, int) or v <= 0 for _, d in inputs + outputs for v in d)
        dims = outputs[0][1]
        if len(dims) != 3 or not all(isinstance(v, int) and v > 0 for v in dims):  # dynamic: ask the network
            dims = self.forward(np.full((1, 3, self.height, self.width), PAD_VALUE, np.float32)).shape
        # (1, 4 + C, N) is ultralytics' layout, fed as ultralytics feeds it; (1, N, 5 + C) is YOLOX's
        self.layout = "ultralytics" if len(dims) == 3 and dims[1] < dims[2] else "yolox"

    @property
    def net(self):
        """The cv2.dnn network (read again after unpickling: a Dask worker receives the path, not the net)."""
        if self._net is None:
            self._net = self._read_net()
        return self._net

    def _read_net(self):
        import cv2

        try:
            return cv2.dnn.readNetFromONNX(self.path)
        except cv2.error as e:
            raise NpvitposeError(f"cv2.dnn {cv2.__version__} cannot load detector {self.path!r}: "
                                 f"{_cv_message(e)}") from None

    def __getstate__(self):
        return dict(self.__dict__, _net=None)

    def __call__(self, image, color="rgb"):
        """image: (H, W, 3) uint8 in `color` order, (H, W) grey, or a file path -> (xywh (N, 4), scores (N,))."""
        from .images import as_rgb, read_image

        rgb = read_image(image) if isinstance(image, (str, os.PathLike)) else as_rgb(image, color)
        if self.layout == "ultralytics":
            blob, ratio, pad = letterbox_centered(rgb, self.height, self.width)
        else:
            blob, ratio = letterbox(rgb if self.rgb else np.ascontiguousarray(rgb[:, :, ::-1]), self.height, self.width)
            pad = (0, 0)
        try:
            decoded = decode(self.forward(blob), self.height, self.width)
        except NpvitposeError as e:
            if self.exported is None or self.exported == (self.height, self.width):
                raise
            raise NpvitposeError(f"{e}; the file was exported for {self.exported[1]}x{self.exported[0]}, "
                                 f"leave --det-size out") from None
        boxes, scores = person_boxes(*decoded, ratio, self.score_thr, self.nms_thr, pad)
        if self.layout == "ultralytics":  # ultralytics' scale_boxes clips to the picture
            h, w = rgb.shape[:2]
            x1, y1 = np.clip(boxes[:, 0], 0, w), np.clip(boxes[:, 1], 0, h)
            x2, y2 = np.clip(boxes[:, 0] + boxes[:, 2], 0, w), np.clip(boxes[:, 1] + boxes[:, 3], 0, h)
            boxes = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
            keep = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
            boxes, scores = boxes[keep], scores[keep]
        return boxes, scores

    def forward(self, blob):
        """The network's raw output for a (1, 3, H, W) float32 blob."""
        import cv2

        try:
            self.net.setInput(blob)
            return self.net.forward()
        except cv2.error as e:
            if self.exported is not None and self.exported != (self.height, self.width):
                why = f" at {self.width}x{self.height} (it was exported for {self.exported[1]}x{self.exported[0]})"
            else:
                why = " (its shapes are dynamic)" if self._dynamic else ""
            raise NpvitposeError(f"cv2.dnn {cv2.__version__} cannot run detector {self.path!r}{why}: "
                                 f"{_cv_message(e)}") from None

    def __repr__(self):
        return (f"Detector({self.path!r}, size={self.width}x{self.height}, score_thr={self.score_thr}, "
                f"nms_thr={self.nms_thr}, rgb={self.rgb})")


def _published_rgb(path):
    """The channel order of a published detector file, recognised by its sha256; BGR for any other file."""
    import hashlib

    wanted = {src.sha256: src.rgb for src in DETECTORS.values() if src.sha256}
    if not any(src.rgb for src in DETECTORS.values()) or os.path.getsize(path) > 1 << 30:
        return False
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return wanted.get(h.hexdigest(), False)


def _cv_message(e):
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def whole_image(image_shape):
    """mmpose's whole_image convention: one box covering the picture, score 1 -> (xywh (1, 4), scores (1,))."""
    h, w = image_shape[:2]
    return np.array([[0.0, 0.0, float(w), float(h)]]), np.ones(1)
