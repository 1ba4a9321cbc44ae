"""npvitpose.boxes: every accepted detections layout, and one-line errors naming the bad entry."""

import json

import numpy as np
import pytest

from npvitpose import boxes as B
from npvitpose import pipeline
from npvitpose.errors import NpvitposeError


def _write(tmp_path, data, name="dets.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_bare_list_with_and_without_scores(tmp_path):
    boxes, scores = B.load_boxes(_write(tmp_path, [[10, 20, 30, 40], [1.5, 2.5, 3.5, 4.5, 0.25]]))
    assert boxes.dtype == np.float64 and boxes.shape == (2, 4)
    np.testing.assert_array_equal(boxes, [[10, 20, 30, 40], [1.5, 2.5, 3.5, 4.5]])
    np.testing.assert_array_equal(scores, [1.0, 0.25])


def test_objects_with_bbox_and_score_ignore_extra_keys(tmp_path):
    data = [{"bbox": [0, 0, 5, 6], "score": 0.5, "area": 30, "id": 7}, {"bbox": [1, 1, 2, 2]}]
    boxes, scores = B.load_boxes(_write(tmp_path, data))
    np.testing.assert_array_equal(boxes, [[0, 0, 5, 6], [1, 1, 2, 2]])
    np.testing.assert_array_equal(scores, [0.5, 1.0])


def test_xyxy_is_converted_to_xywh(tmp_path):
    boxes, _ = B.load_boxes(_write(tmp_path, [[10, 20, 40, 60]]), box_format="xyxy")
    np.testing.assert_array_equal(boxes, [[10, 20, 30, 40]])


def test_xyxy_with_swapped_corners_is_rejected(tmp_path):
    with pytest.raises(NpvitposeError, match="entry 0: box .* zero or negative size"):
        B.load_boxes(_write(tmp_path, [[40, 60, 10, 20]]), box_format="xyxy")


def test_bbox_thr_keeps_scores_at_or_above(tmp_path):
    boxes, scores = B.load_boxes(_write(tmp_path, [[0, 0, 1, 1, 0.1], [0, 0, 2, 2, 0.5], [0, 0, 3, 3, 0.9]]),
                                 bbox_thr=0.5)
    np.testing.assert_array_equal(scores, [0.5, 0.9])
    np.testing.assert_array_equal(boxes[:, 2], [2, 3])


def test_empty_list_is_valid(tmp_path):
    boxes, scores = B.load_boxes(_write(tmp_path, []))
    assert boxes.shape == (0, 4) and scores.shape == (0,)


def test_boxes_outside_any_image_are_kept(tmp_path):
    boxes, _ = B.load_boxes(_write(tmp_path, [[-5000, -5000, 10, 10], [1e6, 1e6, 50, 50]]))
    assert boxes.shape == (2, 4)
    assert np.array_equal(pipeline.parse_boxes(boxes), boxes)  # and predict() crops them (black padding)


@pytest.mark.parametrize("value, cli_message, api_message", [
    (True, "True is not a number", "True is not a real number"),
    ("100", "'100' is not a number", "'100' is not a real number"),
    (None, "None is not a number", "None is not a real number"),
])
def test_file_and_api_refuse_the_same_non_numbers(tmp_path, value, cli_message, api_message):
    box = [0, 0, value, 10]
    with pytest.raises(NpvitposeError, match=cli_message):
        B.load_boxes(_write(tmp_path, [box]))
    with pytest.raises(NpvitposeError, match=api_message):
        pipeline.parse_boxes([box])


def test_valid_file_boxes_beyond_the_crop_range_are_refused_by_the_pipeline(tmp_path):
    boxes, _ = B.load_boxes(_write(tmp_path, [[0, 0, 10, 10], [0, 0, 3e38, 100], [2e38, 0, 100, 100]]))
    assert boxes.shape == (3, 4)  # finite and of positive size: the file itself is fine
    with pytest.raises(NpvitposeError, match="box 1 is too large or too small to crop"):
        pipeline.parse_boxes(boxes)
    with pytest.raises(NpvitposeError, match="box 0 is too large or too small to crop"):
        pipeline.parse_boxes(boxes[2:])


COCO = [
    {"image_id": 139, "category_id": 1, "bbox": [412.8, 157.61, 53.05, 138.01], "score": 0.99},
    {"image_id": 139, "category_id": 3, "bbox": [1, 1, 10, 10], "score": 0.99},  # a car: skipped
    {"image_id": 139, "category_id": 1, "bbox": [384.43, 172.21, 15.12, 35.74], "score": 0.3},
    {"image_id": 285, "category_id": 1, "bbox": [0, 0, 100, 200], "score": 0.8},
]


def test_coco_results_by_image_id(tmp_path):
    path = _write(tmp_path, COCO)
    boxes, scores = B.load_boxes(path, image_id=139)
    np.testing.assert_array_equal(boxes, [[412.8, 157.61, 53.05, 138.01], [384.43, 172.21, 15.12, 35.74]])
    np.testing.assert_array_equal(scores, [0.99, 0.3])
    boxes, _ = B.load_boxes(path, image_id=999)  # an image without person detections
    assert boxes.shape == (0, 4)


def test_coco_results_by_file_name(tmp_path):
    path = _write(tmp_path, COCO)
    boxes, _ = B.load_boxes(path, image_name="/data/000000000285.jpg")  # numeric stem is the id
    np.testing.assert_array_equal(boxes, [[0, 0, 100, 200]])
    images = _write(tmp_path, {"images": [{"id": 139, "file_name": "kitchen.jpg"}]}, "images.json")
    boxes, _ = B.load_boxes(path, image_name="photos/kitchen.jpg", images=images)
    assert boxes.shape == (2, 4)
    plain = _write(tmp_path, [{"id": 285, "file_name": "street.png"}], "plain_images.json")
    boxes, _ = B.load_boxes(path, image_name="street.png", images=plain)
    assert boxes.shape == (1, 4)


def test_coco_results_need_an_image(tmp_path):
    with pytest.raises(NpvitposeError, match="need an image id"):
        B.load_boxes(_write(tmp_path, COCO), image_name="kitchen.jpg")


def test_group_coco_applies_format_and_threshold():
    groups = B.group_coco([dict(d) for d in COCO], box_format="xywh", bbox_thr=0.5)
    assert sorted(groups) == [139, 285]
    np.testing.assert_array_equal(groups[139][1], [0.99])


@pytest.mark.parametrize("text, message", [
    ("[[1, 2, 3", "not valid JSON"),
    ('{"bbox": [1, 2, 3, 4]}', "expected a JSON list of boxes, got a JSON object"),
    ('"boxes"', "got a JSON string"),
    ("[[1, 2, 3]]", "entry 0: expected \\[x, y, w, h\\]"),
    ("[[0, 0, 1, 1], [1, 2, 3, 4, 5, 6]]", "entry 1: expected"),
    ('[[0, 0, 1, 1], [0, 0, "a", 4]]', "entry 1: \"a\" is not a number|entry 1: 'a' is not a number"),
    ("[[0, 0, true, 4]]", "entry 0: True is not a number"),
    ("[[0, 0, NaN, 4]]", "entry 0: nan is not a finite number"),
    ("[[0, 0, Infinity, 4]]", "entry 0: inf is not a finite number"),
    ("[[0, 0, 1e999, 4]]", "entry 0: inf is not a finite number"),
    ("[[0, 0, 0, 4]]", "entry 0: box .* zero or negative size"),
    ("[[0, 0, 5, -4]]", "entry 0: box .* zero or negative size"),
    ("[[0, 0, 5, 4, NaN]]", "entry 0: nan is not a finite number"),
    ('[{"box": [0, 0, 1, 1]}]', 'entry 0: object has no "bbox" key \\(keys: box\\)'),
    ('[{"bbox": [0, 0, 1, 1], "score": "high"}]', "entry 0 score"),
    ('[{"bbox": null}]', "entry 0: a box needs 4 numbers"),
    ("[7]", "entry 0: expected a box list"),
    ('[{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]', "entry 0: missing key category_id"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1], "score": 1}]', "entry 0: box"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}, [0, 0, 1, 1]]',
     "entry 1: expected a COCO detection object"),
    ('[{"image_id": [1], "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]', "entry 0: image_id"),
])
def test_bad_detections_are_one_line_errors(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(NpvitposeError, match=message) as e:
        B.load_boxes(path, image_id=1)
    assert "\n" not in str(e.value)


def test_non_utf8_and_missing_files(tmp_path):
    path = tmp_path / "bin.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(NpvitposeError, match="not UTF-8|not valid JSON"):
        B.load_boxes(str(path))
    with pytest.raises(NpvitposeError, match="cannot read detections file"):
        B.load_boxes(str(tmp_path / "nope.json"))


def test_bad_box_format_and_image_list(tmp_path):
    with pytest.raises(NpvitposeError, match="box format"):
        B.load_boxes(_write(tmp_path, [[0, 0, 1, 1]]), box_format="cxcywh")
    with pytest.raises(NpvitposeError, match='image 0: expected an object with "id" and "file_name"'):
        B.read_image_list(_write(tmp_path, {"images": [{"id": 1}]}, "im.json"))
    with pytest.raises(NpvitposeError, match='no "images" key'):
        B.read_image_list(_write(tmp_path, {"annotations": []}, "im2.json"))
