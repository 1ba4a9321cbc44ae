"""Image input: files decoded like the official pipeline (OpenCV, BGR -> RGB), arrays validated."""

import os

import numpy as np

from .errors import NpvitposeError


def read_image(path):
    """Read an image file as RGB uint8 (H, W, 3), decoded by OpenCV like mmcv's imread (spec 4.6).

    - EXIF orientation is applied, as cv2.imread's default IMREAD_COLOR does.
    - Grayscale becomes 3 equal channels; an alpha channel is dropped (not composited).
    - 16-bit images are reduced to 8 bits by keeping the high byte (v >> 8), as libpng's
      strip-16 does when OpenCV reads a 16-bit PNG in 8-bit mode.
    """
    import cv2

    name = os.fspath(path)
    if not os.path.exists(name):
        raise NpvitposeError(f"image file not found: {name}")
    if not os.path.isfile(name):
        raise NpvitposeError(f"not a file: {name}")
    try:
        data = np.fromfile(name, dtype=np.uint8)  # also works for non-ASCII paths on Windows
    except OSError as err:
        raise NpvitposeError(f"cannot read image file {name}: {err.strerror or err}") from None
    if data.size == 0:
        raise NpvitposeError(f"image file is empty: {name}")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise NpvitposeError(f"cannot decode image file (not an image or unsupported format): {name}")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise NpvitposeError(f"unsupported image sample type {img.dtype} in {name}; use 8- or 16-bit images")
    return np.ascontiguousarray(img[:, :, ::-1])


def as_rgb(image, color="rgb"):
    """Validate an image array from an API user and return it as C-contiguous RGB uint8 (H, W, 3).

    image: uint8 (H, W, 3) in `color` order ("rgb" or "bgr", as OpenCV arrays are), or (H, W) /
    (H, W, 1) grayscale.
    """
    if color not in ("rgb", "bgr"):
        raise NpvitposeError(f"color must be 'rgb' or 'bgr', got {color!r}")
    if not isinstance(image, np.ndarray):
        raise NpvitposeError(f"image must be a numpy array or a file path, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise NpvitposeError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim != 3 or image.shape[2] != 3:
        raise NpvitposeError(f"image must have shape (H, W, 3) or (H, W), got {image.shape}")
    elif color == "bgr":
        image = image[:, :, ::-1]
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise NpvitposeError(f"image is empty: shape {image.shape}")
    return np.ascontiguousarray(image)
