"""Fuzz the detections parser: any JSON value, and random byte damage to valid files, either parse
into finite boxes of positive size or raise NpvitposeError; nothing else escapes."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npvitpose.boxes import load_boxes
from npvitpose.errors import NpvitposeError

FUZZ = settings(max_examples=300, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

numbers = st.one_of(st.integers(-10**400, 10**400), st.floats(allow_nan=True, allow_infinity=True), st.booleans())
scalars = st.one_of(st.none(), numbers, st.text(max_size=5))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.sampled_from(["bbox", "score", "image_id", "category_id", "x"]),
                                                 inner, max_size=5)), max_leaves=30)
box = st.lists(numbers, min_size=0, max_size=6)
entry = st.one_of(box, st.fixed_dictionaries({"bbox": box}, optional={"score": numbers}),
                  st.fixed_dictionaries({"image_id": st.integers(0, 3), "category_id": st.integers(0, 2),
                                         "bbox": box, "score": numbers}))

VALID = json.dumps([[10, 20, 30, 40, 0.9], {"bbox": [1, 2, 3, 4], "score": 0.5}]).encode()


def check(path, box_format="xywh"):
    try:
        boxes, scores = load_boxes(path, box_format=box_format, image_id=1)
    except NpvitposeError as e:
        assert "\n" not in str(e)
        return
    assert boxes.shape == (len(scores), 4) and boxes.dtype == np.float64
    assert np.isfinite(boxes).all() and np.isfinite(scores).all()
    assert (boxes[:, 2:] > 0).all()


@FUZZ
@given(data=st.one_of(json_values, st.lists(entry, max_size=8)), box_format=st.sampled_from(["xywh", "xyxy"]))
def test_any_json_value(tmp_path, data, box_format):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(data, allow_nan=True))
    check(path, box_format)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=5),
       cut=st.one_of(st.none(), st.integers(0, len(VALID))))
def test_damaged_bytes(tmp_path, edits, cut):
    data = bytearray(VALID)
    for pos, byte in edits:
        data[pos] = byte
    path = tmp_path / "boxes.json"
    path.write_bytes(bytes(data if cut is None else data[:cut]))
    check(path)


def test_deep_nesting_is_one_error(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(NpvitposeError):
        load_boxes(path)
