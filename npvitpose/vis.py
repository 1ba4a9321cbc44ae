"""Draw keypoints and limbs on an RGB image (any keypoint count: the skeleton comes from the model meta)."""

import colorsys

import numpy as np

from .errors import NpvitposeError

_MAX_COORD = 1 << 20  # OpenCV draws with int32 (and shifted) coordinates; anything beyond is off-canvas anyway


def limb_colors(count):
    """`count` distinct RGB colours spread around the hue circle, one per limb."""
    return [
        tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb((i / max(count, 1)) % 1.0, 0.85, 1.0))
        for i in range(count)
    ]


def _visible(point, score, kpt_thr):
    return bool(np.isfinite(point).all() and np.isfinite(score) and score >= kpt_thr
                and np.abs(point).max() < _MAX_COORD)


def draw(image_rgb, keypoints, scores, skeleton, kpt_thr=0.3, radius=4, thickness=2):
    """Return a copy of `image_rgb` (H, W, 3) uint8 with keypoints (N, K, 2) (x, y) and limbs drawn.

    A keypoint is drawn when its score (N, K) is at least `kpt_thr`; a limb [i, j] when both ends are.
    """
    import cv2

    image = np.asarray(image_rgb)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise NpvitposeError(f"draw needs an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    keypoints = np.asarray(keypoints, dtype=np.float64)  # (N, K, 2)
    scores = np.asarray(scores, dtype=np.float64)  # (N, K)
    if keypoints.ndim != 3 or keypoints.shape[2] != 2 or scores.shape != keypoints.shape[:2]:
        raise NpvitposeError(f"draw needs keypoints (N, K, 2) and scores (N, K), got {keypoints.shape}, {scores.shape}")
    k = keypoints.shape[1]
    limbs = [(int(a), int(b)) for a, b in skeleton]
    if any(not (0 <= a < k and 0 <= b < k) for a, b in limbs) and len(keypoints):
        raise NpvitposeError(f"skeleton refers to a keypoint outside 0..{k - 1}")
    radius, thickness = max(int(radius), 0), max(int(thickness), 1)
    out = np.ascontiguousarray(image.copy())
    colors = limb_colors(len(limbs))
    # a keypoint takes the colour of the first limb that uses it, so joints match their bones
    point_color = {}
    for (a, b), color in zip(limbs, colors):
        point_color.setdefault(a, color)
        point_color.setdefault(b, color)
    for person, person_scores in zip(keypoints, scores):
        shown = [_visible(person[j], person_scores[j], kpt_thr) for j in range(k)]
        for (a, b), color in zip(limbs, colors):
            if shown[a] and shown[b]:
                pa = tuple(int(round(v)) for v in person[a])
                pb = tuple(int(round(v)) for v in person[b])
                cv2.line(out, pa, pb, color, thickness, cv2.LINE_AA)
        if radius > 0:
            for j in range(k):
                if shown[j]:
                    center = tuple(int(round(v)) for v in person[j])
                    cv2.circle(out, center, radius, point_color.get(j, (255, 255, 255)), -1, cv2.LINE_AA)
    return out
