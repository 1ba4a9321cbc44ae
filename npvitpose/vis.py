"""Draw keypoints, limbs, boxes and track ids on an RGB image.

Two styles, as mmpose 1.x's `PoseLocalVisualizer(skeleton_style=...)`:
- "mmpose": mmpose's COCO palette (`configs/_base_/datasets/coco.py`): the person's left side green,
  the right side orange, face and torso blue. For any other layout the side is read from the keypoint
  names ("left..." / "right..."), so AIC, MPII, AP-10K and whole-body get the same reading.
- "openpose": COCO's 17 keypoints plus a neck (the shoulders' midpoint) in OpenPose's 18-point order,
  OpenPose's rainbow colours, limbs as translucent ellipses (mmpose's `coco_openpose.py` layout).
"""

import colorsys
import math

import numpy as np

from .errors import NpvitposeError

_MAX_COORD = 1 << 20  # OpenCV draws with int32 (and shifted) coordinates; anything beyond is off-canvas anyway
STYLES = ("mmpose", "openpose")
LEFT, RIGHT, MIDDLE = (0, 255, 0), (255, 128, 0), (51, 153, 255)  # RGB, mmpose's COCO keypoint_info colours
_HEAD = ("eye", "ear", "nose", "mouth", "face", "brow", "lip", "jaw")

# OpenPose's 18 points from COCO's 17 (index 17 = neck) and its limbs, 0-based (OpenPose's limbSeq)
_OPENPOSE_FROM_COCO = (0, 17, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
_OPENPOSE_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
                   (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
_OPENPOSE_COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
                    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
                    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))


def limb_colors(count):
    """`count` distinct RGB colours spread around the hue circle (track ids, layouts without names)."""
    return [
        tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb((i / max(count, 1)) % 1.0, 0.85, 1.0))
        for i in range(count)
    ]


def _side(name):
    """'left', 'right' or None for a keypoint name; face points count as the middle, as in mmpose's palette."""
    n = str(name).lower()
    if any(part in n for part in _HEAD):
        return None
    if n.startswith(("left", "l_")) or "_left" in n:
        return "left"
    if n.startswith(("right", "r_")) or "_right" in n:
        return "right"
    return None


def side_colors(names, skeleton):
    """(keypoint colours, limb colours) of the "mmpose" style: a limb takes its side's colour when both ends
    are on that side and it is not the shoulder-hip edge of the torso; everything else is blue."""
    sides = [_side(n) for n in names]
    kpt = [LEFT if s == "left" else RIGHT if s == "right" else MIDDLE for s in sides]
    limbs = []
    for a, b in skeleton:
        pair = {str(names[a]).lower(), str(names[b]).lower()}
        torso = any("shoulder" in n for n in pair) and any("hip" in n for n in pair)
        same = sides[a] is not None and sides[a] == sides[b]
        limbs.append(kpt[a] if same and not torso else MIDDLE)
    return kpt, limbs


def track_color(track_id):
    """A stable, well-spread colour per track id (golden-ratio hue steps)."""
    hue = (int(track_id) * 0.618033988749895) % 1.0
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.9, 1.0))


def _visible(point, score, kpt_thr):
    return bool(np.isfinite(point).all() and np.isfinite(score) and score >= kpt_thr
                and np.abs(point).max() < _MAX_COORD)


def _pt(p):
    return tuple(int(round(v)) for v in p)


def _openpose(keypoints, scores):
    """COCO-17 people -> OpenPose-18 (neck = shoulders' midpoint, its score the lower of the two)."""
    neck = (keypoints[:, 5] + keypoints[:, 6]) / 2
    neck_score = np.minimum(scores[:, 5], scores[:, 6])
    kp = np.concatenate([keypoints, neck[:, None]], axis=1)[:, _OPENPOSE_FROM_COCO]
    sc = np.concatenate([scores, neck_score[:, None]], axis=1)[:, _OPENPOSE_FROM_COCO]
    return kp, sc


def draw(image_rgb, keypoints, scores, skeleton, kpt_thr=0.3, radius=4, thickness=2, keypoint_names=None,
         boxes=None, track_ids=None, style="mmpose"):
    """Return a copy of `image_rgb` (H, W, 3) uint8 with keypoints (N, K, 2) (x, y) and limbs drawn.

    A keypoint is drawn when its score (N, K) is at least `kpt_thr`; a limb [i, j] when both ends are.
    keypoint_names (K,) give the left/right colours (without them each limb gets its own hue);
    boxes (N, 4) xywh are outlined; track_ids (N,) are written above each person.
    """
    import cv2

    image = np.asarray(image_rgb)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise NpvitposeError(f"draw needs an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    keypoints = np.asarray(keypoints, dtype=np.float64)  # (N, K, 2)
    scores = np.asarray(scores, dtype=np.float64)  # (N, K)
    if keypoints.ndim != 3 or keypoints.shape[2] != 2 or scores.shape != keypoints.shape[:2]:
        raise NpvitposeError(f"draw needs keypoints (N, K, 2) and scores (N, K), got {keypoints.shape}, {scores.shape}")
    if style not in STYLES:
        raise NpvitposeError(f"skeleton style must be one of {', '.join(STYLES)}, got {style!r}")
    n, k = keypoints.shape[:2]
    limbs = [(int(a), int(b)) for a, b in skeleton]
    if any(not (0 <= a < k and 0 <= b < k) for a, b in limbs) and n:
        raise NpvitposeError(f"skeleton refers to a keypoint outside 0..{k - 1}")
    radius, thickness = max(int(radius), 0), max(int(thickness), 1)
    out = np.ascontiguousarray(image.copy())
    if style == "openpose":
        if k != 17:
            raise NpvitposeError(f"the openpose style draws COCO's 17 keypoints; this model has {k}")
        keypoints, scores = _openpose(keypoints, scores)
        limbs, k = list(_OPENPOSE_LIMBS), 18
        kpt_colors, limb_cols = list(_OPENPOSE_COLORS), list(_OPENPOSE_COLORS[:len(_OPENPOSE_LIMBS)])
    elif keypoint_names is not None and len(keypoint_names) == k:
        kpt_colors, limb_cols = side_colors(keypoint_names, limbs)
    else:
        limb_cols = limb_colors(len(limbs))
        kpt_colors = [(255, 255, 255)] * k
        for (a, b), color in reversed(list(zip(limbs, limb_cols))):  # a joint takes its first limb's colour
            kpt_colors[a] = kpt_colors[b] = color
    for i in range(n):
        person, person_scores = keypoints[i], scores[i]
        shown = [_visible(person[j], person_scores[j], kpt_thr) for j in range(k)]
        if style == "openpose":
            _openpose_limbs(out, person, shown, limbs, limb_cols, thickness)
        else:
            for (a, b), color in zip(limbs, limb_cols):
                if shown[a] and shown[b]:
                    cv2.line(out, _pt(person[a]), _pt(person[b]), color, thickness, cv2.LINE_AA)
        if radius > 0:
            for j in range(k):
                if shown[j]:
                    cv2.circle(out, _pt(person[j]), radius, kpt_colors[j], -1, cv2.LINE_AA)
        _label(out, i, person, shown, boxes, track_ids, thickness)
    return out


def _openpose_limbs(out, person, shown, limbs, colors, thickness):
    """Limbs as filled ellipses blended at 60%, the way OpenPose's own renderer draws them."""
    import cv2

    layer = out.copy()
    drawn = False
    for (a, b), color in zip(limbs, colors):
        if not (shown[a] and shown[b]):
            continue
        (xa, ya), (xb, yb) = person[a], person[b]
        length = math.hypot(xb - xa, yb - ya)
        angle = math.degrees(math.atan2(yb - ya, xb - xa))
        center = _pt(((xa + xb) / 2, (ya + yb) / 2))
        axes = (max(int(round(length / 2)), 1), max(thickness * 2, 1))
        polygon = cv2.ellipse2Poly(center, axes, int(round(angle)), 0, 360, 1)
        cv2.fillConvexPoly(layer, polygon, color, cv2.LINE_AA)
        drawn = True
    if drawn:
        cv2.addWeighted(layer, 0.6, out, 0.4, 0, dst=out)


def _label(out, i, person, shown, boxes, track_ids, thickness):
    """The person's box (in the track's colour when tracked) and '#id' above it or above the keypoints."""
    import cv2

    color = track_color(track_ids[i]) if track_ids is not None else (0, 255, 0)
    top_left = None
    if boxes is not None:
        x, y, w, h = (float(v) for v in boxes[i])
        if all(math.isfinite(v) and abs(v) < _MAX_COORD for v in (x, y, w, h)):
            cv2.rectangle(out, _pt((x, y)), _pt((x + w, y + h)), color, thickness, cv2.LINE_AA)
            top_left = (x, y)
    if track_ids is None or int(track_ids[i]) < 0:
        return
    if top_left is None:
        seen = person[np.asarray(shown, dtype=bool)]
        if not len(seen):
            return
        top_left = (seen[:, 0].min(), seen[:, 1].min())
    scale = max(out.shape[0], out.shape[1]) / 1000 + 0.3
    text = f"#{int(track_ids[i])}"
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(thickness // 2, 1))
    x, y = _pt(top_left)
    y = max(y, th + base + 2)
    cv2.rectangle(out, (x, y - th - base - 2), (x + tw + 4, y), color, -1)
    cv2.putText(out, text, (x + 2, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), max(thickness // 2, 1),
                cv2.LINE_AA)
