"""Video helpers: track ids across frames, boxes carried between detections, One-Euro smoothing.

- Ids: mmpose's greedy matching (`mmpose/apis/inference_tracking.py`, 0.x): people are taken in order,
  each one gets the id of the unmatched person of the previous frame it overlaps most (IoU of the
  boxes, or OKS of the keypoints) when that exceeds the threshold (0.3), else a new id.
- Carried boxes (`--det-every N`): between detections each person's box is the box of their
  confident keypoints, grown 1.25x about its centre, as rtmlib's PoseTracker does (`pose_to_bbox`).
- Smoothing: the One-Euro filter (Casiez et al., CHI 2012) per track and coordinate, with mmpose's
  Smoother defaults (`configs/_base_/filters/one_euro.py`: min_cutoff 0.004, beta 0.7, d_cutoff 1,
  one frame as the time unit).
"""

import math
from dataclasses import dataclass

import numpy as np

from .errors import NpvitposeError

TRACK_METHODS = ("iou", "oks")


def iou_xywh(box, boxes):
    """IoU of one xywh box (4,) with each of boxes (M, 4)."""
    box, boxes = np.asarray(box, dtype=np.float64), np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[:2] + box[2:], boxes[:, :2] + boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=1)
    union = box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


class Tracker:
    """Greedy frame-to-frame matching: `update(boxes, keypoints)` -> one track id per person (ints from 0)."""

    def __init__(self, method="iou", thr=0.3, sigmas=None):
        if method not in TRACK_METHODS:
            raise NpvitposeError(f"tracking method must be one of {', '.join(TRACK_METHODS)}, got {method!r}")
        if method == "oks" and sigmas is None:
            raise NpvitposeError("OKS tracking needs the keypoints' OKS sigmas, which this model's dataset lacks")
        self.method, self.thr = method, float(thr)
        self.sigmas = None if sigmas is None else np.asarray(sigmas, dtype=np.float64)
        self.next_id = 0
        self._last = None  # (ids (M,), boxes (M, 4), keypoints (M, K, 2))

    def _similarity(self, box, kpts, boxes, keypoints):
        if self.method == "iou":
            return iou_xywh(box, boxes)
        from .decode import oks

        areas = boxes[:, 2] * boxes[:, 3]
        return oks(kpts, keypoints, box[2] * box[3], areas, (self.sigmas * 2) ** 2).astype(np.float64)

    def update(self, boxes, keypoints):
        """boxes (N, 4) xywh and keypoints (N, K, 2) of this frame, in priority order -> ids (N,) int64."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        keypoints = np.asarray(keypoints, dtype=np.float64)
        ids = np.empty(len(boxes), dtype=np.int64)
        if self._last is not None:
            last_ids, last_boxes, last_kpts = self._last
            free = np.ones(len(last_ids), dtype=bool)
        for i in range(len(boxes)):
            best = -1
            if self._last is not None and free.any():
                candidates = np.flatnonzero(free)
                sim = self._similarity(boxes[i], keypoints[i], last_boxes[candidates], last_kpts[candidates])
                j = int(np.argmax(sim))
                if sim[j] > self.thr:
                    best = candidates[j]
            if best >= 0:
                ids[i] = last_ids[best]
                free[best] = False
            else:
                ids[i] = self.next_id
                self.next_id += 1
        self._last = (ids.copy(), boxes.copy(), keypoints.copy())
        return ids


def boxes_from_keypoints(keypoints, scores, kpt_thr=0.3, expansion=1.25, min_keypoints=3):
    """Each person's next box: the xywh box of keypoints scoring >= kpt_thr, grown `expansion`x about its centre.

    Returns (boxes (N, 4), keep (N,) bool): a person with fewer than `min_keypoints` such keypoints is lost."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    boxes = np.zeros((len(keypoints), 4))
    keep = np.zeros(len(keypoints), dtype=bool)
    for i, (kp, sc) in enumerate(zip(keypoints, scores)):
        good = kp[(sc >= kpt_thr) & np.isfinite(kp).all(axis=1)]
        if len(good) < max(min_keypoints, 1):
            continue
        lo, hi = good.min(axis=0), good.max(axis=0)
        center, half = (lo + hi) / 2, (hi - lo) / 2 * expansion
        if (half > 0).all():
            boxes[i] = np.concatenate([center - half, 2 * half])
            keep[i] = True
    return boxes, keep


@dataclass(frozen=True)
class OneEuroParams:
    min_cutoff: float = 0.004  # mmpose's Smoother default, in cycles per frame
    beta: float = 0.7  # speed coefficient: higher follows fast moves with less lag
    d_cutoff: float = 1.0  # cutoff of the derivative's own low-pass


def _alpha(cutoff, dt):
    """The paper's smoothing factor: 1 / (1 + tau / T_e) with tau = 1 / (2 pi f_c)."""
    r = 2 * math.pi * cutoff * dt
    return r / (r + 1)


class OneEuro:
    """One-Euro filter of an array signal, one sample per call (time step 1 = one frame)."""

    def __init__(self, params=OneEuroParams()):
        self.params = params
        self.x = self.dx = None

    def __call__(self, x):
        x = np.asarray(x, dtype=np.float64)
        if self.x is None:  # the first sample passes unchanged, its derivative taken as 0
            self.x, self.dx = x.copy(), np.zeros_like(x)
            return x.copy()
        p = self.params
        dx = x - self.x  # (x - x_prev) / T_e with T_e = 1 frame
        self.dx = self.dx + _alpha(p.d_cutoff, 1.0) * (dx - self.dx)
        a = _alpha(p.min_cutoff + p.beta * np.abs(self.dx), 1.0)
        self.x = self.x + a * (x - self.x)
        return self.x.copy()


class Smoother:
    """One One-Euro filter per track id; a track absent from a frame loses its filter (ids never return)."""

    def __init__(self, params=OneEuroParams()):
        self.params = params
        self.filters = {}

    def __call__(self, ids, keypoints):
        """ids (N,), keypoints (N, K, 2) -> smoothed keypoints (N, K, 2) float32."""
        keypoints = np.asarray(keypoints)
        out = np.empty(keypoints.shape, dtype=np.float32)
        filters = {}
        for i, track in enumerate(np.asarray(ids).tolist()):
            f = self.filters.get(track) or OneEuro(self.params)
            filters[track] = f
            out[i] = f(keypoints[i])
        self.filters = filters
        return out
