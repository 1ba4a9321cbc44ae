"""Record OpenCV 4.x `warpAffine` outputs as a small fixture: tests/data/warp_cv4.npz.

The installed OpenCV is 5.x, whose bilinear warp differs from the 4.x one that mmpose ran on (spec 4.5,
trap 14). Run this once under a throwaway venv that holds OpenCV 4.x, outside the repository:

    python3 -m venv /tmp/cv4 && /tmp/cv4/bin/pip install numpy 'opencv-python-headless<5'
    /tmp/cv4/bin/python tools/record_warp.py --photo path/to/astronaut.png

(`astronaut.png` ships with scikit-image, in `skimage/data/`.) The script needs only NumPy and cv2; it
does not import npvitpose, so the matrices below are an independent transcription of spec 4.1/4.3/4.4.

Fixture keys:
- `version`: cv2.__version__ of the recording.
- `img_data`, `img_off`, `img_shape`: the input images (uint8, HxWx3), concatenated flat.
- `case_img`, `case_m` (float64, the matrix exactly as passed to cv2), `case_dsize` (w, h),
  `out_data`, `out_off`: one warp per case, outputs concatenated flat.
- `box_xywh`, `box_center`, `box_scale`, `box_udp` (float32), `box_classic` (float64, from
  cv2.getAffineTransform): matrices for boxes, in the order recorded.
- `blur_in`, `blur_out`: float32 64x48 maps and their cv2.GaussianBlur((11, 11), 0) (spec 5.3).
"""

import argparse
from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "warp_cv4.npz"
CROP_W, CROP_H = 192, 256


def center_scale(box):
    """spec 4.1 under NumPy 1 scalar rules: float64 arithmetic, center and scale stored as float32."""
    x, y, w, h = (float(v) for v in box)
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    ratio = CROP_W / CROP_H
    if w > ratio * h:
        h = w * 1.0 / ratio
    elif w < ratio * h:
        w = h * ratio
    scale = np.array([w / 200.0, h / 200.0], dtype=np.float32) * 1.25
    return center, scale.astype(np.float32)


def udp(center, scale):
    """spec 4.3: get_warp_matrix(0, 2c, size - 1, 200 s) in float64, stored float32."""
    size_in = (center * 2).astype(np.float64)
    size_target = (scale * 200.0).astype(np.float32).astype(np.float64)
    sx = (CROP_W - 1.0) / size_target[0]
    sy = (CROP_H - 1.0) / size_target[1]
    m = np.zeros((2, 3), dtype=np.float32)
    m[0] = [sx, -0.0 * sx, sx * (-0.5 * size_in[0] + 0.5 * size_in[1] * 0.0 + 0.5 * size_target[0])]
    m[1] = [0.0 * sy, sy, sy * (-0.5 * size_in[0] * 0.0 - 0.5 * size_in[1] + 0.5 * size_target[1])]
    return m


def classic(center, scale):
    """spec 4.4: three float32 point pairs, solved by cv2.getAffineTransform (float64)."""
    s = (scale * 200.0).astype(np.float32)
    src = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center.astype(np.float64) + np.array([0.0, s[0] * -0.5])
    d = src[0] - src[1]
    src[2] = src[1] + np.array([-d[1], d[0]], dtype=np.float32)
    dst = np.array([[96, 128], [96, 32], [0, 32]], dtype=np.float32)
    return cv2.getAffineTransform(src, dst)


def random_matrix(rng, img_hw, dsize):
    """A forward matrix that lands the image roughly on the output, with rotation, shear and flips."""
    h, w = img_hw
    dw, dh = dsize
    kind = rng.integers(4)
    if kind == 0:  # axis-aligned scale, like the crops
        a = np.diag(np.exp(rng.uniform(np.log(0.2), np.log(8.0), 2)))
    elif kind == 1:  # dyadic scales and offsets: many exact rounding ties (spec 4.5 round-half-even)
        a = np.diag(rng.choice([0.25, 0.5, 1.0, 2.0, 4.0, 32.0, 2048.0], 2))
        a *= rng.choice([-1.0, 1.0], 2)
    else:  # general affine
        t = rng.uniform(-np.pi, np.pi)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        a = rot @ np.diag(np.exp(rng.uniform(np.log(0.3), np.log(5.0), 2)))
        a[0, 1] += rng.uniform(-0.3, 0.3)
    src_c = np.array([w / 2, h / 2]) + rng.uniform(-0.6, 0.6, 2) * [w, h]
    dst_c = np.array([dw / 2, dh / 2])
    b = dst_c - a @ src_c
    if kind == 1:
        b = np.round(b * 64) / 64
    return np.hstack([a, b[:, None]])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", required=True, help="a real RGB photo, e.g. skimage's astronaut.png")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    rng = np.random.default_rng(20240607)

    bgr = cv2.imread(args.photo, cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read {args.photo}")
    photo = np.ascontiguousarray(bgr[40:220, 150:310, ::-1])  # a 180x160 RGB crop holding a face
    sizes = [(1, 1), (1, 7), (2, 3), (5, 9), (13, 17), (24, 31), (33, 40)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    images[4][:, :, :] = 255  # flat bright image: border blending is the only source of change
    images.append(photo)

    cases = []  # (image index, matrix as passed to cv2, dsize)
    for _ in range(160):
        i = int(rng.integers(len(images) - 1))
        dsize = (int(rng.integers(1, 41)), int(rng.integers(1, 41)))
        m = random_matrix(rng, images[i].shape[:2], dsize)
        cases.append((i, m.astype(np.float32) if rng.integers(2) else m, dsize))

    ph, pw = photo.shape[:2]
    boxes = [
        (40.0, 30.0, 80.0, 120.0),  # inside: scale-up
        (-30.5, -20.25, 90.0, 70.0),  # top-left corner outside
        (120.3, 140.7, 60.1, 90.9),  # bottom-right corner outside
        (-200.0, -100.0, 600.0, 500.0),  # much larger than the image: scale-down
        (70.0, 80.0, 3.3, 7.9),  # tiny box: strong scale-up
        (384.43 - 330, 172.21 - 110, 15.12, 35.74),  # spec 4.3 worked-example box size
    ]
    for _ in range(24):
        w, h = np.exp(rng.uniform(np.log(2.0), np.log(400.0), 2))
        x, y = rng.uniform(-0.5, 1.2) * pw - w / 2, rng.uniform(-0.5, 1.2) * ph - h / 2
        boxes.append((float(x), float(y), float(w), float(h)))
    boxes.append((384.43, 172.21, 15.12, 35.74))  # the spec's worked example, for the matrices only
    boxes.append((412.8, 157.61, 53.05, 138.01))

    photo_i = len(images) - 1
    centers, scales, udps, classics = [], [], [], []
    for k, box in enumerate(boxes):
        c, s = center_scale(box)
        mu, mc = udp(c, s), classic(c, s)
        centers.append(c), scales.append(s), udps.append(mu), classics.append(mc)
        if k < 30:
            small = k >= 3  # full-size crops for the first boxes, small outputs for the rest
            dsize = (48, 64) if small else (CROP_W, CROP_H)
            down = np.diag([dsize[0] / CROP_W, dsize[1] / CROP_H, 1.0])[:2]
            for m in (mu, mc):
                mm = m if not small else (down @ np.vstack([m.astype(np.float64), [0, 0, 1]])).astype(m.dtype)
                cases.append((photo_i, mm, dsize))

    outs = []
    for i, m, dsize in cases:
        out = cv2.warpAffine(images[i], m, dsize, flags=cv2.INTER_LINEAR)
        outs.append(out.reshape(dsize[1], dsize[0], 3))

    blur_in = rng.uniform(-0.1, 1.0, (6, 64, 48)).astype(np.float32)
    yy, xx = np.mgrid[0:64, 0:48]
    for j, (cx, cy) in enumerate([(10.3, 20.7), (0.2, 63.0), (47.0, 0.4)]):
        blur_in[j] = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8.0).astype(np.float32)
    blur_out = np.stack([cv2.GaussianBlur(b, (11, 11), 0) for b in blur_in])

    np.savez_compressed(
        args.out,
        version=np.array(cv2.__version__),
        img_data=np.concatenate([im.ravel() for im in images]),
        img_off=np.cumsum([0] + [im.size for im in images]),
        img_shape=np.array([im.shape for im in images]),
        case_img=np.array([c[0] for c in cases]),
        case_m=np.array([c[1].astype(np.float64) for c in cases]),
        case_dsize=np.array([c[2] for c in cases]),
        out_data=np.concatenate([o.ravel() for o in outs]),
        out_off=np.cumsum([0] + [o.size for o in outs]),
        box_xywh=np.array(boxes),
        box_center=np.array(centers),
        box_scale=np.array(scales),
        box_udp=np.array(udps),
        box_classic=np.array(classics),
        blur_in=blur_in,
        blur_out=blur_out,
    )
    print(f"wrote {args.out}: {len(cases)} warps, OpenCV {cv2.__version__}, {Path(args.out).stat().st_size} bytes")


if __name__ == "__main__":
    main()
