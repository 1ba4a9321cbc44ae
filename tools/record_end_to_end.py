"""Record OpenCV 4.x crops of a real photo for the end-to-end test: tests/data/end_to_end/crops_cv4.npz.

The end-to-end test compares npvitpose with the official evaluation pipeline (spec 0), whose crops come
from OpenCV 4.x `cv2.warpAffine`; the installed OpenCV is 5.x and warps differently (spec 4.5, trap 14).
Run this once with a throwaway OpenCV 4.x environment, outside the repository:

    python3 -m venv /tmp/cv4 && /tmp/cv4/bin/pip install numpy 'opencv-python-headless<5'
    /tmp/cv4/bin/python tools/record_end_to_end.py --photo "$(python3 -c 'import skimage.data, os; \
        print(os.path.join(os.path.dirname(skimage.data.__file__), "astronaut.png"))')"

The photo is scikit-image's `astronaut.png` (see tests/data/README.md). The script needs only NumPy and
cv2 and does not import npvitpose: center/scale and both matrices are transcribed from spec 4.1/4.3/4.4.

Fixture keys:
- `version`: cv2.__version__ of the recording; `photo_sha256`, `photo_shape`: the RGB uint8 photo warped.
- `boxes` (B, 4) float64 xywh; `center`, `scale` (B, 2) float32 (spec 4.1).
- `udp_matrix` (B, 2, 3) float32 (spec 4.3); `classic_matrix` (B, 2, 3) float64 (spec 4.4).
- `udp_crops`, `classic_crops` (B, 256, 192, 3) uint8 RGB: cv2.warpAffine(photo, M, (192, 256), INTER_LINEAR).
"""

import argparse
import hashlib
from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "end_to_end" / "crops_cv4.npz"
CROP_W, CROP_H = 192, 256

# xywh on the 512 x 512 astronaut photo
BOXES = [
    (18.6, 12.3, 352.4, 498.9),  # the astronaut, whole body in frame
    (196.3, 88.7, 24.6, 31.2),  # small: around her eye
    (-60.4, -35.8, 190.2, 260.5),  # partly outside the left and top edges (the flag)
    (380.7, 330.2, 185.9, 240.6),  # partly outside the right and bottom edges (the helmet)
    (92.5, 281.4, 301.7, 22.7),  # extreme aspect ratio (13:1, wide)
]


def center_scale(box):
    """spec 4.1 (`_box2cs`) under NumPy 1 scalar rules: float64 arithmetic, stored as float32."""
    x, y, w, h = (float(v) for v in box)
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    ratio = CROP_W / CROP_H
    if w > ratio * h:
        h = w * 1.0 / ratio
    elif w < ratio * h:
        w = h * ratio
    scale = np.array([w / 200.0, h / 200.0], dtype=np.float32) * 1.25
    return center, scale.astype(np.float32)


def udp_matrix(center, scale):
    """spec 4.3: get_warp_matrix(0, 2c, (191, 255), 200 s) with rotation 0, in float64, stored float32."""
    size_in = (center * 2).astype(np.float64)
    size_target = (scale * 200.0).astype(np.float32).astype(np.float64)
    sx = (CROP_W - 1.0) / size_target[0]
    sy = (CROP_H - 1.0) / size_target[1]
    m = np.zeros((2, 3), dtype=np.float32)
    m[0] = [sx, 0.0, sx * (-0.5 * size_in[0] + 0.5 * size_target[0])]
    m[1] = [0.0, sy, sy * (-0.5 * size_in[1] + 0.5 * size_target[1])]
    return m


def classic_matrix(center, scale):
    """spec 4.4: get_affine_transform(c, s, 0, (192, 256)), three float32 point pairs -> cv2 (float64)."""
    s = (scale * 200.0).astype(np.float32)
    src = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center.astype(np.float64) + np.array([0.0, s[0] * -0.5])  # the point S_w/2 above the centre
    d = src[0] - src[1]
    src[2] = src[1] + np.array([-d[1], d[0]], dtype=np.float32)  # third point of the right angle
    dst = np.array([[96, 128], [96, 32], [0, 32]], dtype=np.float32)
    return cv2.getAffineTransform(src, dst)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", required=True, help="scikit-image's astronaut.png")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    if not cv2.__version__.startswith("4."):
        raise SystemExit(f"needs OpenCV 4.x (spec 4.5), this is {cv2.__version__}")

    bgr = cv2.imread(args.photo, cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read {args.photo}")
    photo = np.ascontiguousarray(bgr[:, :, ::-1])  # spec 4.6: the official loader converts to RGB

    centers, scales, udps, classics, udp_crops, classic_crops = [], [], [], [], [], []
    for box in BOXES:
        c, s = center_scale(box)
        mu, mc = udp_matrix(c, s), classic_matrix(c, s)
        centers.append(c), scales.append(s), udps.append(mu), classics.append(mc)
        udp_crops.append(cv2.warpAffine(photo, mu, (CROP_W, CROP_H), flags=cv2.INTER_LINEAR))
        classic_crops.append(cv2.warpAffine(photo, mc, (CROP_W, CROP_H), flags=cv2.INTER_LINEAR))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        version=np.array(cv2.__version__),
        photo_sha256=np.array(hashlib.sha256(photo.tobytes()).hexdigest()),
        photo_shape=np.array(photo.shape),
        boxes=np.array(BOXES, dtype=np.float64),
        center=np.array(centers),
        scale=np.array(scales),
        udp_matrix=np.array(udps),
        classic_matrix=np.array(classics),
        udp_crops=np.array(udp_crops),
        classic_crops=np.array(classic_crops),
    )
    print(f"wrote {out}: {len(BOXES)} boxes x 2 modes, OpenCV {cv2.__version__}, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
