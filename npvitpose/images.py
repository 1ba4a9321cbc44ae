"""Image input: files decoded like the official pipeline (OpenCV, BGR -> RGB), arrays validated.

Files are treated as hostile: the bytes are read here (OpenCV never sees a file name, which crashes it
when the name is not UTF-8), the size is read from the header and checked against a pixel limit before
decoding, and a truncated file is refused (OpenCV would decode it to grey with a warning).
"""

import contextlib
import os
import shutil
import stat
import struct
import tempfile

import numpy as np

from .errors import NpvitposeError

MAX_IMAGE_PIXELS = 1 << 27  # 134 M pixels, ~400 MB decoded (12000 x 11000); raise with max_pixels / --max-image-pixels
_BYTES_PER_PIXEL = 8  # the most an uncompressed file stores per pixel (16-bit RGBA): bounds the file size


def read_image(path, max_pixels=None):
    """Read an image file as RGB uint8 (H, W, 3), decoded by OpenCV like mmcv's imread (spec 4.6).

    - EXIF orientation is applied, as cv2.imread's default IMREAD_COLOR does.
    - Grayscale becomes 3 equal channels; an alpha channel is dropped (not composited).
    - 16-bit images are reduced to 8 bits by keeping the high byte (v >> 8), as libpng's
      strip-16 does when OpenCV reads a 16-bit PNG in 8-bit mode.
    - Images above `max_pixels` (default MAX_IMAGE_PIXELS) are refused from their header, before
      decoding; so are truncated files and formats whose header is not understood here.
    The result is a view of OpenCV's BGR buffer in RGB order (a negative channel stride, no copy);
    `np.ascontiguousarray` it before handing it to OpenCV.
    """
    import cv2

    name = os.fspath(path)
    limit = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    data = _read_file(name, limit)
    fmt, width, height = header_size(data)
    if fmt is None:
        raise NpvitposeError(f"cannot decode image file (not an image or unsupported format): {_show(name)}")
    if width <= 0 or height <= 0:
        raise NpvitposeError(f"image file is truncated or its {fmt} header is damaged (size {width} x {height}): "
                             f"{_show(name)}")
    if width * height > limit:
        raise NpvitposeError(
            f"image is {width} x {height} = {width * height} pixels, over the limit of {limit} "
            f"(raise it with --max-image-pixels or max_pixels=): {_show(name)}")
    if not _complete(fmt, data, width, height):
        raise NpvitposeError(f"image file is truncated ({fmt} data ends early): {_show(name)}")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error:
        img = None
    del data
    if img is None or img.size == 0:
        raise NpvitposeError(f"cannot decode image file (not an image or unsupported format): {_show(name)}")
    if sorted(img.shape[:2]) != sorted((height, width)):  # EXIF may turn it by 90 degrees
        raise NpvitposeError(f"image decodes to {img.shape[1]} x {img.shape[0]}, its header says "
                             f"{width} x {height}: {_show(name)}")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise NpvitposeError(f"unsupported image sample type {img.dtype} in {_show(name)}; use 8- or 16-bit images")
    return img[:, :, ::-1]


def _show(name):
    return os.fsdecode(name) if isinstance(name, bytes) else name


def _read_file(name, limit):
    """The file's bytes, refusing before reading what no image within the pixel limit could be."""
    try:
        with open(name, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise NpvitposeError(f"not a file: {_show(name)}")
            cap = _BYTES_PER_PIXEL * limit + (1 << 20)
            if st.st_size > cap:
                raise NpvitposeError(f"image file is {st.st_size} bytes, more than any image within the "
                                     f"{limit}-pixel limit: {_show(name)}")
            data = f.read(cap + 1)
    except FileNotFoundError:
        raise NpvitposeError(f"image file not found: {_show(name)}") from None
    except IsADirectoryError:
        raise NpvitposeError(f"not a file: {_show(name)}") from None
    except OSError as err:
        raise NpvitposeError(f"cannot read image file {_show(name)}: {err.strerror or err}") from None
    if not data:
        raise NpvitposeError(f"image file is empty: {_show(name)}")
    return data


# ---------------------------------------------------------------------------------------------- headers


def header_size(data):
    """(format, width, height) from the first bytes of an image file, or (None, 0, 0) if not understood."""
    for fmt, magic in _MAGIC:
        if data.startswith(magic):
            try:
                return (fmt, *_SIZE[fmt](data))
            except (struct.error, ValueError, IndexError):
                return fmt, 0, 0
    if data[:1] == b"P" and data[1:2] in b"1234567F" and len(data) > 2:
        try:
            return ("pnm", *_pnm_size(data)[:2])
        except (ValueError, IndexError):
            return "pnm", 0, 0
    return None, 0, 0


def _png_size(data):
    if data[12:16] != b"IHDR":
        raise ValueError
    return struct.unpack(">II", data[16:24])


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_segments(data):
    """(marker, offset) of each header segment up to the first start of scan."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        yield marker, pos
        if marker == 0xDA:
            return
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]


def _jpeg_size(data):
    for marker, pos in _jpeg_segments(data):
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
    raise ValueError


def _bmp_size(data):
    dib = struct.unpack("<I", data[14:18])[0]
    if dib == 12:
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return width, abs(height)


def _tiff_ifd(data):
    """{tag: [values]} of the first IFD of a classic TIFF (the page OpenCV decodes)."""
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset:offset + 2])
    sizes = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}
    tags = {}
    for i in range(min(count, 4096)):
        entry = data[offset + 2 + 12 * i:offset + 14 + 12 * i]
        tag, kind, n = struct.unpack(order + "HHI", entry[:8])
        if kind not in sizes or n > len(data):
            continue
        code, size = sizes[kind]
        raw = entry[8:12] if n * size <= 4 else data[struct.unpack(order + "I", entry[8:12])[0]:][:n * size]
        if len(raw) < n * size:
            raise ValueError
        tags[tag] = list(struct.unpack(order + code * n, raw[:n * size]))
    return tags


def _tiff_size(data):
    tags = _tiff_ifd(data)
    return tags[256][0], tags[257][0]


def _webp_size(data):
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise ValueError


def _jp2_size(data):
    if data.startswith(b"\xff\x4f\xff\x51"):  # a bare codestream: SIZ marker
        xs, ys, x0, y0 = struct.unpack(">IIII", data[8:24])
        return xs - x0, ys - y0
    at = data.find(b"ihdr", 0, 4096)
    if at < 0:
        raise ValueError
    height, width = struct.unpack(">II", data[at + 4:at + 12])
    return width, height


def _gif_size(data):
    return struct.unpack("<HH", data[6:10])


def _sun_size(data):
    return struct.unpack(">II", data[4:12])


def _pnm_size(data):
    """(width, height, header length, maxval, channels) of a PNM/PAM/PFM header."""
    kind = data[1:2]
    if kind == b"7":
        end = data.index(b"ENDHDR\n")
        fields = dict(line.split(None, 1) for line in data[3:end].decode("ascii").splitlines()
                      if line.strip() and not line.startswith("#") and " " in line.strip())
        return (int(fields["WIDTH"]), int(fields["HEIGHT"]), end + 7, int(fields.get("MAXVAL", 255)),
                int(fields.get("DEPTH", 1)))
    wanted = 2 if kind in b"14" else 3
    values, pos = [], 2
    while len(values) < wanted:
        while data[pos:pos + 1].isspace() or data[pos:pos + 1] == b"#":
            if data[pos:pos + 1] == b"#":
                pos = data.index(b"\n", pos)
            pos += 1
        start = pos
        while pos < len(data) and not data[pos:pos + 1].isspace() and len(values) < wanted:
            pos += 1
        values.append(data[start:pos])
        if pos - start > 12:
            raise ValueError
    channels = {b"1": 1, b"2": 1, b"3": 3, b"4": 1, b"5": 1, b"6": 3, b"F": 3, b"f": 1}[kind]
    maxval = 1 if kind in b"14" else float(values[2])
    return int(values[0]), int(values[1]), pos + 1, maxval, channels


_MAGIC = (
    ("png", b"\x89PNG\r\n\x1a\n"),
    ("jpeg", b"\xff\xd8"),
    ("bmp", b"BM"),
    ("tiff", b"II*\x00"),
    ("tiff", b"MM\x00*"),
    ("webp", b"RIFF"),
    ("jp2", b"\x00\x00\x00\x0cjP  \r\n\x87\n"),
    ("jp2", b"\xff\x4f\xff\x51"),
    ("gif", b"GIF87a"),
    ("gif", b"GIF89a"),
    ("sun", b"\x59\xa6\x6a\x95"),
)
_SIZE = {"png": _png_size, "jpeg": _jpeg_size, "bmp": _bmp_size, "tiff": _tiff_size, "webp": _webp_size,
         "jp2": _jp2_size, "gif": _gif_size, "sun": _sun_size}


def _complete(fmt, data, width, height):
    """False when the file visibly ends before its image data does (checked from its structure)."""
    try:
        if fmt == "png":
            pos = 8
            while pos + 8 <= len(data):
                length, kind = struct.unpack(">I4s", data[pos:pos + 8])
                pos += 12 + length
                if kind == b"IEND":
                    return pos <= len(data)
            return False
        if fmt == "jpeg":
            sos = max(pos for marker, pos in _jpeg_segments(data) if marker == 0xDA)
            return data.rfind(b"\xff\xd9") > sos  # entropy-coded data never holds FF D9; only EOI does
        if fmt in ("jp2",):
            return data.rfind(b"\xff\xd9") > 0
        if fmt == "gif":
            return data.rstrip(b"\x00")[-1:] == b";"
        if fmt == "webp":
            return struct.unpack("<I", data[4:8])[0] + 8 <= len(data)
        if fmt == "bmp":
            offset, dib = struct.unpack("<I", data[10:14])[0], struct.unpack("<I", data[14:18])[0]
            bits, compression = (struct.unpack("<H", data[24:26])[0], 0) if dib == 12 else \
                struct.unpack("<HI", data[28:34])
            if compression not in (0, 3):  # run-length coded: no fixed size
                return True
            return offset + ((bits * width + 31) // 32) * 4 * height <= len(data)
        if fmt == "tiff":
            tags = _tiff_ifd(data)
            offsets, counts = tags.get(273) or tags.get(324), tags.get(279) or tags.get(325)
            return bool(offsets and counts) and max(o + c for o, c in zip(offsets, counts)) <= len(data)
        if fmt == "pnm":
            w, h, start, maxval, channels = _pnm_size(data)
            kind = data[1:2]
            if kind in b"123":  # plain text: no fixed size
                return True
            if kind == b"4":
                return start + (w + 7) // 8 * h <= len(data)
            sample = 4 if kind in b"Ff" else (2 if maxval > 255 else 1)
            return start + w * h * channels * sample <= len(data)
        return True
    except (struct.error, ValueError, IndexError, KeyError):
        return False


# ---------------------------------------------------------------------------------------------- paths


@contextlib.contextmanager
def cv_path(path):
    """A name OpenCV can take for `path` (its file-name APIs crash on names that are not UTF-8): the name
    itself when it encodes, else a symbolic link with a plain name in a private temporary folder."""
    name = os.fsdecode(path)
    try:
        name.encode("utf-8")
        yield name
        return
    except UnicodeEncodeError:
        pass
    folder = tempfile.mkdtemp(prefix="npvitpose-")
    try:
        link = os.path.join(folder, "file" + "".join(c for c in os.path.splitext(name)[1] if c.isascii()))
        os.symlink(os.path.abspath(os.fsencode(path)), os.fsencode(link))
        yield link
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def as_rgb(image, color="rgb"):
    """Validate an image array from an API user and return it as RGB uint8 (H, W, 3).

    image: uint8 (H, W, 3) in `color` order ("rgb" or "bgr", as OpenCV arrays are), or (H, W) /
    (H, W, 1) grayscale. Returned C-contiguous, except that a BGR array comes back as an RGB view of it.
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
    return image if is_bgr_view(image) else np.ascontiguousarray(image)


def is_bgr_view(image):
    """True for an RGB view of a C-contiguous BGR buffer: crops are taken from the buffer, never a copy."""
    return image.ndim == 3 and image.strides[2] < 0 and image[:, :, ::-1].flags.c_contiguous
