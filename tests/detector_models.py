"""Test-only person detectors: small random-weight YOLOX-like and ultralytics-like networks exported to ONNX
from PyTorch, and an independent reference for their boxes (onnxruntime plus YOLOX's post-processing
written here from its published definition: `yolox/data/data_augment.py::preproc`,
`demo/ONNXRuntime` `demo_postprocess`, and `yolox/utils/boxes.py::postprocess` with torchvision's NMS).

rtmlib's YOLOX post-processing is not used: rtmlib requires opencv-contrib-python, a second OpenCV that
would replace the cv2 under test.
"""

import warnings

import cv2
import numpy as np
import torch
from skimage import data
from torch import nn

STRIDES = (8, 16, 32)
NUM_CLASSES = 80


def photos():
    """Real photographs (RGB) of different shapes: people, a cup, a cat, a rocket."""
    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea(), "rocket": data.rocket()}


def _cbs(cin, cout, k=3, s=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class TinyYOLOX(nn.Module):
    """A YOLOX in miniature: strided conv backbone with 8/16/32 outputs, YOLOX's decoupled head per level
    (1x1 stem, a classification branch, a regression branch with box and objectness predictions).

    layout "yolox": the raw head, (1, N, 4 + 1 + C) = box offsets and log-sizes, sigmoid objectness,
    sigmoid class scores (YOLOX's export with decode_in_inference=False).
    layout "decoded": YOLOX's layout with centre and size already in input pixels (decode_in_inference=True).
    layout "ultralytics": (1, 4 + C, N) = centre and size in input pixels, sigmoid class scores.
    """

    def __init__(self, layout="yolox", width=16, size=(192, 256)):
        super().__init__()
        self.layout = layout
        self.stem = nn.Sequential(_cbs(3, width, 3, 2), _cbs(width, width, 3, 2), _cbs(width, width, 3, 2))
        self.down16, self.down32 = _cbs(width, width, 3, 2), _cbs(width, width, 3, 2)
        self.heads = nn.ModuleList()
        for _ in STRIDES:
            head = nn.ModuleDict({
                "stem": _cbs(width, width, 1), "cls": _cbs(width, width), "reg": _cbs(width, width),
                "cls_pred": nn.Conv2d(width, NUM_CLASSES, 1), "reg_pred": nn.Conv2d(width, 4, 1),
                "obj_pred": nn.Conv2d(width, 1, 1),
            })
            with torch.no_grad():  # scores spread over (0, 1), persons win often enough, boxes of tens of pixels
                head["cls_pred"].weight *= 6.0
                head["obj_pred"].weight *= 6.0
                head["cls_pred"].bias[0] += 2.0
                head["reg_pred"].weight *= 0.3
                head["reg_pred"].bias[2:] += 1.5
            self.heads.append(head)
        h, w = size
        for i, s in enumerate(STRIDES):  # ultralytics decodes inside the graph: its grid is a constant
            gy, gx = torch.meshgrid(torch.arange(h // s), torch.arange(w // s), indexing="ij")
            self.register_buffer(f"grid{i}", torch.stack([gx, gy]).reshape(1, 2, -1).float())

    def forward(self, x):
        f8 = self.stem(x)
        f16 = self.down16(f8)
        features = (f8, f16, self.down32(f16))
        outs = []
        for i, (f, head, s) in enumerate(zip(features, self.heads, STRIDES)):
            f = head["stem"](f)
            reg, cls = head["reg"](f), head["cls"](f)
            box = head["reg_pred"](reg).flatten(2)  # (B, 4, h*w)
            scores = head["cls_pred"](cls).sigmoid().flatten(2)  # (B, C, h*w)
            if self.layout != "yolox":  # decoded inside the graph: centre and size in input pixels
                grid = getattr(self, f"grid{i}")
                box = torch.cat([(box[:, :2] + grid + 0.5) * s, box[:, 2:].exp() * s], 1)
            if self.layout == "ultralytics":
                outs.append(torch.cat([box, scores], 1))
            else:
                outs.append(torch.cat([box, head["obj_pred"](reg).sigmoid().flatten(2), scores], 1))
        out = torch.cat(outs, 2)  # (B, 5 + C or 4 + C, N)
        return out if self.layout == "ultralytics" else out.permute(0, 2, 1)


def yolox_preproc(image_bgr, height, width):
    """YOLOX's preproc: uint8 canvas of 114, resize by r = min(H / h, W / w), paste at the top-left."""
    padded = np.ones((height, width, 3), dtype=np.uint8) * 114
    r = min(height / image_bgr.shape[0], width / image_bgr.shape[1])
    resized = cv2.resize(image_bgr, (int(image_bgr.shape[1] * r), int(image_bgr.shape[0] * r)),
                         interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    padded[: int(image_bgr.shape[0] * r), : int(image_bgr.shape[1] * r)] = resized
    return np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32)[None], r


def ultralytics_preproc(image_bgr, height, width):
    """ultralytics' LetterBox(auto=False, center=True) then BGR -> RGB and / 255: the picture resized to
    (round(w r), round(h r)), bordered with 114 by round(d - 0.1) above/left and round(d + 0.1) below/right."""
    h, w = image_bgr.shape[:2]
    r = min(height / h, width / w)
    new_unpad = int(round(w * r)), int(round(h * r))
    dw, dh = (width - new_unpad[0]) / 2, (height - new_unpad[1]) / 2
    img = cv2.resize(image_bgr, new_unpad, interpolation=cv2.INTER_LINEAR) if (w, h) != new_unpad else image_bgr
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    blob = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255.0
    # scale_boxes' padding: round((W - w r) / 2 - 0.1), the same as `left`, `top` above for these sizes
    return blob, r, (round((width - w * r) / 2 - 0.1), round((height - h * r) / 2 - 0.1))


def set_batchnorm_from_photos(model, size, layout="yolox"):
    """Running statistics of every batch norm = the statistics of real photos going through the network
    (fed as the layout's own pre-processing feeds them)."""
    preproc = ultralytics_preproc if layout == "ultralytics" else yolox_preproc
    blobs = [preproc(np.ascontiguousarray(p[:, :, ::-1]), *size)[0] for p in photos().values()]
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches seen
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(np.concatenate(blobs)))
    return model.eval()


def export(path, layout="yolox", size=(192, 256), dynamic=False, seed=0):
    """Write a random-weight detector with photo-set batch norms to `path` as ONNX (opset 11, fixed shape)."""
    torch.manual_seed(seed)
    model = set_batchnorm_from_photos(TinyYOLOX(layout, size=size), size, layout)
    axes = {"images": {2: "height", 3: "width"}, "output": {2 if layout == "ultralytics" else 1: "anchors"}}
    with warnings.catch_warnings():  # the TorchScript exporter warns it is the legacy one; it needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, *size), str(path), dynamo=False, opset_version=11,
                          input_names=["images"], output_names=["output"], dynamic_axes=axes if dynamic else None)
    return str(path)


def _nms(boxes_xyxy, scores, thr):
    """Greedy NMS as torchvision.ops.nms defines it: by falling score, drop boxes with IoU > thr."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        lt = np.maximum(boxes_xyxy[i, :2], boxes_xyxy[rest, :2])
        rb = np.minimum(boxes_xyxy[i, 2:], boxes_xyxy[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        order = rest[inter / (area[i] + area[rest] - inter) <= thr]
    return np.array(keep, dtype=np.int64)


def reference_boxes(session, image_bgr, size, score_thr, nms_thr, layout="yolox"):
    """The reference detector: onnxruntime on YOLOX's preproc, YOLOX's decoding, persons, NMS, / r.

    Returns xywh (N, 4), scores (N,), and the scores of every person candidate before NMS."""
    height, width = size
    if layout == "ultralytics":
        blob, r, pad = ultralytics_preproc(image_bgr, height, width)
    else:
        (blob, r), pad = yolox_preproc(image_bgr, height, width), (0, 0)
    out = session.run(None, {session.get_inputs()[0].name: blob})[0].astype(np.float64)
    if layout == "decoded":
        pred = out[0]
        class_scores = pred[:, 5:] * pred[:, 4:5]
    elif layout == "yolox":
        grids, strides = [], []
        for s in STRIDES:
            xv, yv = np.meshgrid(np.arange(width // s), np.arange(height // s))
            grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
            strides.append(np.full((grids[-1].shape[0], 1), s))
        grid, stride = np.concatenate(grids), np.concatenate(strides)
        pred = out[0].copy()
        pred[:, :2] = (pred[:, :2] + grid) * stride
        pred[:, 2:4] = np.exp(pred[:, 2:4]) * stride
        class_scores = pred[:, 5:] * pred[:, 4:5]
    else:
        pred = out[0].T
        class_scores = pred[:, 4:]
    cx, cy, w, h = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    best = class_scores.argmax(axis=1)
    conf = class_scores.max(axis=1)
    person = (best == 0) & (conf >= score_thr)
    candidates = conf[best == 0]
    xyxy, conf = xyxy[person], conf[person]
    keep = _nms(xyxy, conf, nms_thr)
    xyxy, conf = (xyxy[keep] - np.array(pad * 2)) / r, conf[keep]
    if layout == "ultralytics":  # scale_boxes: clipped to the picture
        xyxy = np.clip(xyxy, 0, np.array(image_bgr.shape[1::-1] * 2))
        conf = conf[(xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])]
        xyxy = xyxy[(xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])]
    return np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1), conf, candidates
