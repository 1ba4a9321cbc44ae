"""The metadata of a model (the `__meta__` record of a converted `.npz`): parsed and checked against one
schema before any field is used, with every size bounded before anything is allocated or looped over.

Unknown keys are ignored (a newer converter may add some); every known key must have its documented type.
"""

import json
import math
import numbers
import re

import numpy as np

from .errors import NpvitposeError

FORMAT_VERSION = 1
MAX_META_CHARS = 1 << 20  # a real record is ~5 KB (133 whole-body keypoint names included)
# generous bounds on the sizes (ViT-H: dim 1280, depth 32, hidden 5120; whole-body: 133 keypoints)
LIMITS = {"dim": 16384, "depth": 512, "heads": 1024, "mlp_hidden": 65536, "num_keypoints": 4096}
HEADS = ("classic", "simple")
MODES = ("udp", "classic")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_TEXT = 4096


def _fail(what):
    raise NpvitposeError(f"model metadata: {what}")


def parse(record) -> dict:
    """The `__meta__` array of an .npz (a 0-d unicode array holding JSON) -> the checked metadata dict."""
    if not isinstance(record, np.ndarray) or record.shape != () or record.dtype.kind != "U":
        _fail("__meta__ is not a single text record")
    if record.dtype.itemsize // 4 > MAX_META_CHARS:
        _fail(f"__meta__ is {record.dtype.itemsize // 4} characters, more than {MAX_META_CHARS}")
    try:
        meta = json.loads(str(record), parse_constant=_no_constant, object_pairs_hook=_unique)
    except NpvitposeError:
        raise
    except RecursionError:
        _fail("__meta__ is nested too deeply")
    except ValueError as e:  # JSONDecodeError, or an integer beyond Python's 4300-digit limit
        _fail(f"__meta__ is not valid JSON ({' '.join(str(e).split())[:100]})")
    if not isinstance(meta, dict):
        _fail("__meta__ is not a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise NpvitposeError(
            f"format version {_short(meta.get('format_version'))}, this npvitpose reads {FORMAT_VERSION}")
    check(meta)
    return meta


def _no_constant(name):
    _fail(f"__meta__ holds {name}, which is not JSON")


def _unique(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            _fail(f"key {_short(key)} appears twice")
        out[key] = value
    return out


def _short(value, limit=40):
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int(meta, key, low=1, high=None):
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(f"{key} must be an integer, got {_short(value)}")
    high = LIMITS.get(key) if high is None else high
    if not low <= value <= high:
        _fail(f"{key} = {value} is outside {low}..{high}")
    return int(value)


def _choice(meta, key, choices, required=True):
    value = meta.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or value not in choices:
        _fail(f"{key} must be one of {', '.join(choices)}, got {_short(value)}")
    return value


def _text(meta, key, pattern=None):
    value = meta.get(key)
    if value is None:
        return
    if not isinstance(value, str) or len(value) > _MAX_TEXT or (pattern and not pattern.fullmatch(value)):
        _fail(f"{key} must be {'a sha256 in hex' if pattern else 'a short text'}, got {_short(value)}")


def _pairs(meta, key, k, distinct):
    """A list of [i, j] keypoint index pairs, each index in 0..k-1 (flip pairs: every index at most once)."""
    value = meta.get(key)
    if value is None:
        return
    if not isinstance(value, (list, tuple)) or len(value) > 4 * k:
        _fail(f"{key} must be a list of at most {4 * k} index pairs")
    seen = set()
    for pair in value:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(
                isinstance(i, numbers.Integral) and not isinstance(i, bool) and 0 <= i < k for i in pair)):
            _fail(f"{key}: {_short(pair) if not isinstance(pair, list) else str(pair)[:40]} is not a pair of "
                  f"keypoint indices 0..{k - 1}")
        if distinct and (pair[0] == pair[1] or pair[0] in seen or pair[1] in seen):
            _fail(f"{key}: keypoint {pair[0] if pair[0] in seen else pair[1]} is swapped twice")
        seen.update(pair)


def check(meta) -> None:
    """Check every known field of `meta` (a dict), cheaply: no field is trusted before this."""
    if not isinstance(meta, dict):
        _fail(f"expected a dict, got {type(meta).__name__}")
    dim, heads = _int(meta, "dim"), _int(meta, "heads")
    for key in ("depth", "mlp_hidden"):
        _int(meta, key)
    k = _int(meta, "num_keypoints")
    if dim % heads:
        _fail(f"dim {dim} is not a multiple of heads {heads}")
    _choice(meta, "head", HEADS)
    eps = meta.get("ln_eps")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and 0 < eps < 1):
        _fail(f"ln_eps must be a number in (0, 1), got {_short(eps)}")
    _choice(meta, "mode", MODES, required=False)
    if meta.get("format_version") not in (None, FORMAT_VERSION):
        _fail(f"format_version {_short(meta.get('format_version'))} is not {FORMAT_VERSION}")
    for key in ("dataset", "source_name", "source_format", "config_source"):
        _text(meta, key)
    _text(meta, "source_sha256", _HEX64)
    names = meta.get("keypoint_names")
    if names is not None and (not isinstance(names, (list, tuple)) or len(names) != k or not all(
            isinstance(n, str) and len(n) <= 200 for n in names)):
        _fail(f"keypoint_names must be {k} short texts")
    _pairs(meta, "skeleton", k, distinct=False)
    _pairs(meta, "flip_pairs", k, distinct=True)
    moe = meta.get("moe")
    if moe is not None and not (isinstance(moe, dict) and set(moe) == {"part_features", "expert"} and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= v <= LIMITS["dim"]
            for v in moe.values())):
        _fail("moe must be null or {\"part_features\": int, \"expert\": int}")


def weight_count(meta) -> int:
    """How many weight arrays a model of these (checked) sizes has: compared before any per-key loop."""
    head = 12 if meta["head"] == "classic" else 2  # spec 2.1/2.2: 2 deconvs + 2 batchnorms + final conv, or one conv
    return 3 + 12 * int(meta["depth"]) + 2 + head
