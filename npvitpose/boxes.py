"""Read person boxes from a detections JSON file.

Three layouts are accepted:
- a bare list of boxes: `[[x, y, w, h], [x, y, w, h, score], ...]`;
- a list of objects: `[{"bbox": [x, y, w, h], "score": s}, ...]` (other keys are ignored);
- COCO detection results: `[{"image_id": i, "category_id": c, "bbox": [...], "score": s}, ...]`,
  of which only persons (category 1) are kept, grouped by image;
- boxes keyed by image file name: `{"frame_0001.jpg": [[x, y, w, h, score], ...], ...}` (each value
  a bare list or a list of objects, as above).

Boxes come back as float64 (N, 4) xywh plus float64 (N,) scores (1.0 when a box has no score).
Boxes partly or entirely outside the image are kept as they are: the warp pads with zeros, so such a
box simply yields low keypoint scores (nothing is clipped, matching the official pipeline).
"""

import json
import math
import os
import re
import sys

import numpy as np

from .errors import NpvitposeError

BOX_FORMATS = ("xywh", "xyxy")
PERSON_CATEGORY = 1  # COCO category id of "person"


MAX_JSON_BYTES = 1 << 28  # 256 MiB: COCO test-dev detections for every image are under 100 MB
_CHUNK = 1 << 20


def _read_capped(f):
    raw = bytearray()
    while len(raw) <= MAX_JSON_BYTES:  # /dev/zero or an endless pipe stops here
        chunk = f.read(_CHUNK)
        if not chunk:
            break
        raw += chunk
        if len(raw) == len(chunk) and raw.lstrip()[:1] not in (b"[", b"{", b""):
            break  # not JSON from its first byte: no need to read further
    return raw


def read_json(path, what="detections"):
    """Parse a JSON file (or pipe) of at most MAX_JSON_BYTES; any read or syntax problem is one NpvitposeError."""
    label = repr(os.fsdecode(path))
    try:
        if str(path) == "-":  # the usual spelling of standard input
            raw = _read_capped(sys.stdin.buffer)
        else:
            with open(path, "rb") as f:
                raw = _read_capped(f)
    except OSError as e:
        raise NpvitposeError(f"cannot read {what} file {label}: {e.strerror or e}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise NpvitposeError(f"{what} file {label} is larger than {MAX_JSON_BYTES >> 20} MiB")
    try:
        return json.loads(bytes(raw))
    except UnicodeDecodeError:
        raise NpvitposeError(f"{what} file {label} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise NpvitposeError(
            f"{what} file {label} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except RecursionError:
        raise NpvitposeError(f"{what} file {label} is nested too deeply") from None
    except ValueError:  # the only other ValueError json raises: an integer beyond Python's 4300-digit limit
        raise NpvitposeError(f"{what} file {label} holds an integer of more than 4300 digits") from None


def _number(value, where):
    # bool is an int subclass in Python but `true` is never a coordinate
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NpvitposeError(f"{where}: {value!r} is not a number")
    try:
        value = float(value)
    except OverflowError:  # a JSON integer of hundreds of digits (found by tests/test_fuzz_boxes.py)
        value = math.inf
    if not math.isfinite(value):
        raise NpvitposeError(f"{where}: {value!r} is not a finite number")
    return value


def _box(values, box_format, where):
    """Check one [x, y, w, h] (or x1, y1, x2, y2) list and return it as xywh floats."""
    if not isinstance(values, list) or len(values) != 4:
        raise NpvitposeError(f"{where}: a box needs 4 numbers, got {_short(values)}")
    x, y, a, b = (_number(v, where) for v in values)
    w, h = (a - x, b - y) if box_format == "xyxy" else (a, b)
    if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
        raise NpvitposeError(f"{where}: box {_short(values)} has zero or negative size")
    return x, y, w, h


def _short(value, limit=60):
    text = json.dumps(value) if _jsonable(value) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(value):
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


def _check_format(box_format):
    if box_format not in BOX_FORMATS:
        raise NpvitposeError(f"box format must be one of {', '.join(BOX_FORMATS)}, not {box_format!r}")


def _entry(item, index, box_format, name):
    """One entry of a plain list -> (xywh tuple, score)."""
    where = f"{name}: entry {index}"
    if isinstance(item, list):
        if len(item) not in (4, 5):
            raise NpvitposeError(f"{where}: expected [x, y, w, h] or [x, y, w, h, score], got {_short(item)}")
        score = _number(item[4], where) if len(item) == 5 else 1.0
        return _box(item[:4], box_format, where), score
    if isinstance(item, dict):
        if "bbox" not in item:
            raise NpvitposeError(f"{where}: object has no \"bbox\" key (keys: {', '.join(map(str, item)) or 'none'})")
        score = _number(item["score"], where + " score") if "score" in item else 1.0
        return _box(item["bbox"], box_format, where), score
    raise NpvitposeError(f"{where}: expected a box list or an object with \"bbox\", got {_short(item)}")


def _arrays(rows, scores, bbox_thr):
    boxes = np.asarray(rows, dtype=np.float64).reshape(-1, 4)  # (N, 4) xywh
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)  # (N,)
    keep = scores >= bbox_thr  # OFF keeps det score >= det_bbox_thr (spec 5.6)
    return np.ascontiguousarray(boxes[keep]), np.ascontiguousarray(scores[keep])


def is_coco_results(data):
    """True when `data` looks like COCO detection results (objects carrying "image_id")."""
    return isinstance(data, list) and any(isinstance(d, dict) and "image_id" in d for d in data)


def is_by_name(data):
    """True when `data` maps image file names to box lists."""
    return isinstance(data, dict) and "annotations" not in data and all(isinstance(v, list) for v in data.values())


def group_by_name(data, box_format="xywh", bbox_thr=0.0, name="detections"):
    """{file name: box list} -> {normalised file name: (boxes (N, 4) xywh, scores (N,))}."""
    _check_format(box_format)
    thr = _number(bbox_thr, "bbox threshold")
    groups = {}
    for key, rows in data.items():
        where = f"{name}: {_short(key)}"
        if not os.path.splitext(key.strip())[1]:  # {"boxes": [...]} is a mistake, not an image called "boxes"
            raise NpvitposeError(f"{where} is not an image file name: expected a JSON list of boxes, "
                                 "COCO detection results, or boxes keyed by file name")
        if is_coco_results(rows):
            raise NpvitposeError(f"{where}: holds COCO detection results; give plain boxes under each file name")
        parsed = [_entry(item, i, box_format, where) for i, item in enumerate(rows)]
        normal = os.path.normpath(key)
        if normal in groups:
            raise NpvitposeError(f"{where}: the file is listed twice")
        groups[normal] = _arrays([b for b, _ in parsed], [s for _, s in parsed], thr)
    return groups


def parse_boxes(data, box_format="xywh", bbox_thr=0.0, name="detections"):
    """A bare list or a list of {"bbox", "score"} objects -> (boxes (N, 4) xywh, scores (N,))."""
    _check_format(box_format)
    if isinstance(data, dict) and "annotations" in data:
        raise NpvitposeError(f"{name}: a COCO annotation file, not detections; give person boxes "
                             "(a list, COCO detection results or boxes keyed by file name)")
    if not isinstance(data, list):
        raise NpvitposeError(f"{name}: expected a JSON list of boxes, got a JSON {_kind(data)}")
    if is_coco_results(data):
        raise NpvitposeError(f"{name}: holds COCO detection results; select an image (image id or file name)")
    rows, scores = [], []
    for i, item in enumerate(data):
        box, score = _entry(item, i, box_format, name)
        rows.append(box)
        scores.append(score)
    return _arrays(rows, scores, _number(bbox_thr, "bbox threshold"))


def _kind(data):
    return {dict: "object", str: "string", bool: "boolean", type(None): "null"}.get(
        type(data), "number" if isinstance(data, (int, float)) else type(data).__name__
    )


def _image_id(value, where):
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise NpvitposeError(f"{where}: image_id {value!r} is not an integer or a string")
    return id_key(value)


_MAX_ID_DIGITS = 30  # COCO ids are 64-bit integers; a longer digit string stays a string id


def id_key(value):
    """One form for every spelling of an image id: 42, "42" and "000000000042" all become 42."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    digits = text.lstrip("-").lstrip("0")
    return int(text) if re.fullmatch(r"-?[0-9]+", text) and len(digits) <= _MAX_ID_DIGITS else text


def group_coco(data, box_format="xywh", bbox_thr=0.0, name="detections"):
    """COCO detection results -> {image_id: (boxes (N, 4) xywh, scores (N,))}, persons only."""
    _check_format(box_format)
    thr = _number(bbox_thr, "bbox threshold")
    rows = {}
    for i, item in enumerate(data):
        where = f"{name}: entry {i}"
        if not isinstance(item, dict):
            raise NpvitposeError(f"{where}: expected a COCO detection object, got {_short(item)}")
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in item]
        if missing:
            raise NpvitposeError(f"{where}: missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        image_id = _image_id(item["image_id"], where)
        category = _number(item["category_id"], where + " category_id")
        box = _box(item["bbox"], box_format, where)
        score = _number(item["score"], where + " score")
        if category != PERSON_CATEGORY:
            continue
        rows.setdefault(image_id, ([], []))
        rows[image_id][0].append(box)
        rows[image_id][1].append(score)
    return {k: _arrays(b, s, thr) for k, (b, s) in rows.items()}


def read_image_list(path):
    """A COCO image list (`{"images": [...]}` or a plain list of {"id", "file_name"}) -> {file name: id}."""
    data = read_json(path, "image list")
    name = os.path.basename(str(path))
    if isinstance(data, dict):
        if "images" not in data:
            raise NpvitposeError(f"{name}: object has no \"images\" key")
        data = data["images"]
    if not isinstance(data, list):
        raise NpvitposeError(f"{name}: expected a list of images, got a JSON {_kind(data)}")
    table = {}
    for i, item in enumerate(data):
        where = f"{name}: image {i}"
        if not isinstance(item, dict) or "id" not in item or "file_name" not in item:
            raise NpvitposeError(f"{where}: expected an object with \"id\" and \"file_name\"")
        if not isinstance(item["file_name"], str):
            raise NpvitposeError(f"{where}: file_name {item['file_name']!r} is not a string")
        base, image_id = os.path.basename(item["file_name"]), _image_id(item["id"], where)
        if table.get(base, image_id) != image_id:
            raise NpvitposeError(f"{where}: file name {base!r} is listed with two ids, {table[base]!r} and {image_id!r}")
        table[base] = image_id
    return table


def id_for_file(path, image_list=None):
    """The COCO image id of an image file: looked up in the image list, else its numeric stem, else None."""
    base = os.path.basename(str(path))
    if image_list is not None:
        return image_list.get(base)
    stem = os.path.splitext(base)[0]
    # COCO files are named by their zero-padded id; "²" is a digit to str.isdigit, not to int()
    return id_key(stem) if re.fullmatch(r"[0-9]+", stem) else None


def load_boxes(path, box_format="xywh", bbox_thr=0.0, image_id=None, image_name=None, images=None):
    """Boxes for one image from any accepted layout -> (boxes (N, 4) float64 xywh, scores (N,) float64).

    For COCO results, the image is chosen by `image_id`, else by `image_name` through the image
    list file `images` (or its numeric stem); an image with no person detections gets empty arrays.
    """
    data = read_json(path)
    name = os.path.basename(str(path))
    if not is_coco_results(data):
        return parse_boxes(data, box_format, bbox_thr, name)
    groups = group_coco(data, box_format, bbox_thr, name)
    if image_id is None and image_name is not None:
        image_id = id_for_file(image_name, read_image_list(images) if images is not None else None)
    if image_id is None:
        raise NpvitposeError(f"{name}: COCO detection results need an image id (--image-id or --images)")
    return groups.get(image_id, _arrays([], [], 0.0))
