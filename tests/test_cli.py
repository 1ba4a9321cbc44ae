"""`npvitpose` command line, run in-process through `npvitpose.cli.main` with a tiny random model."""

import json
import os
import shutil

import cv2
import numpy as np
import pytest

from npvitpose.cli import main
from npvitpose.run import roi_areas
from npvitpose.datasets import DATASETS
from npvitpose.model import Config, random_weights, save_npz

TINY = Config(dim=64, depth=1, heads=2, mlp_hidden=128, num_keypoints=17, head="simple", ln_eps=1e-6)
BOXES = [[40.0, 30.0, 80.0, 160.0, 0.9], [150.0, 60.0, 60.0, 120.0, 0.6]]


def tiny_meta(cfg=TINY, dataset="coco"):
    ds = DATASETS[dataset]
    return {
        "dim": cfg.dim, "depth": cfg.depth, "heads": cfg.heads, "mlp_hidden": cfg.mlp_hidden,
        "num_keypoints": cfg.num_keypoints, "head": cfg.head, "ln_eps": cfg.ln_eps, "dataset": dataset,
        "keypoint_names": list(ds.keypoint_names), "skeleton": [list(p) for p in ds.skeleton],
        "flip_pairs": [list(p) for p in ds.flip_pairs], "mode": ds.mode, "source_name": "random",
        "source_format": "npz", "source_sha256": None, "moe": None,
    }


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.npz"
    save_npz(str(path), random_weights(TINY, seed=1), tiny_meta())
    return str(path)


def synthetic_image(h=240, w=320, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], axis=-1)
    return np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)  # RGB


def write_image(path, rgb=None):
    rgb = synthetic_image() if rgb is None else rgb
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    return str(path)


def write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def roi_bounds(box):
    """The padded, aspect-fixed ROI of spec 4.1 as (x0, y0, x1, y1)."""
    x, y, w, h = box[:4]
    cx, cy = x + w / 2, y + h / 2
    w2, h2 = (w, w / 0.75) if w > 0.75 * h else (h * 0.75, h)
    return cx - 0.625 * w2, cy - 0.625 * h2, cx + 0.625 * w2, cy + 0.625 * h2


def test_infer_to_file_with_vis(tmp_path, capsys, model_path):
    image = write_image(tmp_path / "in.jpg")
    dets = write_json(tmp_path / "dets.json", BOXES)
    out, vis = tmp_path / "out.json", tmp_path / "vis.jpg"
    code, stdout, err = run(capsys, "infer", image, dets, "--model", model_path, "-o", out, "--vis", vis,
                            "--kpt-thr", 0)
    assert code == 0 and stdout == "" and err == ""
    results = json.loads(out.read_text())
    assert len(results) == 2
    for box, r in zip(BOXES, results):
        assert r["category_id"] == 1 and r["image_id"] == 0
        assert r["bbox"] == pytest.approx(box[:4])
        kp = np.array(r["keypoints"]).reshape(17, 3)
        x0, y0, x1, y1 = roi_bounds(box)
        mx, my = 0.1 * (x1 - x0), 0.1 * (y1 - y0)  # the DARK-UDP Newton step may leave the ROI a little
        assert np.all(kp[:, 0] >= x0 - mx) and np.all(kp[:, 0] <= x1 + mx)
        assert np.all(kp[:, 1] >= y0 - my) and np.all(kp[:, 1] <= y1 + my)
        s = kp[:, 2]
        expected = box[4] * (s[s > 0.2].mean() if (s > 0.2).any() else 0.0)  # spec 5.6 rescoring
        assert r["score"] == pytest.approx(expected, abs=1e-4)
    drawn = cv2.imread(str(vis))
    source = cv2.imread(image)
    assert drawn.shape == source.shape
    assert np.abs(drawn.astype(int) - source.astype(int)).max() > 50  # something was drawn
    assert sorted(os.listdir(tmp_path)) == ["dets.json", "in.jpg", "out.json", "vis.jpg"]  # no temp files left


def test_infer_to_stdout_and_xyxy(tmp_path, capsys, model_path):
    image = write_image(tmp_path / "in.png")
    code, out_xywh, _ = run(capsys, "infer", image, write_json(tmp_path / "a.json", BOXES), "--model", model_path)
    assert code == 0
    xyxy = [[x, y, x + w, y + h, s] for x, y, w, h, s in BOXES]
    code, out_xyxy, _ = run(capsys, "infer", image, write_json(tmp_path / "b.json", xyxy), "--model", model_path,
                            "--box-format", "xyxy")
    assert code == 0
    a, b = json.loads(out_xywh), json.loads(out_xyxy)
    np.testing.assert_allclose([r["bbox"] for r in a], [r["bbox"] for r in b], atol=1e-9)
    np.testing.assert_allclose([r["keypoints"] for r in a], [r["keypoints"] for r in b], atol=2e-3)


def test_decode_and_flip_options_change_the_result(tmp_path, capsys, model_path):
    image = write_image(tmp_path / "in.png")
    dets = write_json(tmp_path / "d.json", BOXES[:1])
    outs = {}
    for extra in ([], ["--no-flip"], ["--decode", "argmax"]):
        code, out, _ = run(capsys, "infer", image, dets, "--model", model_path, *extra)
        assert code == 0
        outs[" ".join(extra)] = np.array(json.loads(out)[0]["keypoints"])
    assert not np.array_equal(outs[""], outs["--no-flip"])
    assert not np.array_equal(outs[""], outs["--decode argmax"])
    kp = outs["--decode argmax"].reshape(17, 3)
    x0, y0, x1, y1 = roi_bounds(BOXES[0])  # UDP argmax lands on the 48x64 grid spanning the ROI exactly
    assert np.all((kp[:, 0] >= x0 - 1e-2) & (kp[:, 0] <= x1 + 1e-2) & (kp[:, 1] >= y0 - 1e-2) & (kp[:, 1] <= y1 + 1e-2))
    np.testing.assert_allclose((kp[:, 0] - x0) / (x1 - x0) * 47, np.round((kp[:, 0] - x0) / (x1 - x0) * 47), atol=1e-3)


def test_bbox_thr_drops_low_boxes(tmp_path, capsys, model_path):
    image = write_image(tmp_path / "in.png")
    code, out, _ = run(capsys, "infer", image, write_json(tmp_path / "d.json", BOXES), "--model", model_path,
                       "--bbox-thr", 0.7)
    assert code == 0 and [r["bbox"] for r in json.loads(out)] == [BOXES[0][:4]]


def test_oks_nms_removes_duplicates(tmp_path, capsys, model_path):
    image = write_image(tmp_path / "in.png")
    dets = write_json(tmp_path / "d.json", [BOXES[0], BOXES[0], BOXES[1]])
    code, out, _ = run(capsys, "infer", image, dets, "--model", model_path)
    assert code == 0 and len(json.loads(out)) == 3
    code, out, _ = run(capsys, "infer", image, dets, "--model", model_path, "--nms-thr", 0.9)
    assert code == 0
    assert sorted(tuple(r["bbox"]) for r in json.loads(out)) == sorted([tuple(BOXES[0][:4]), tuple(BOXES[1][:4])])


def test_roi_area_follows_spec():
    # spec 4.1/5.5: w=30 < 0.75*80 -> w'=60, h'=80; area = (1.25*60)*(1.25*80)
    np.testing.assert_allclose(roi_areas(np.array([[0, 0, 30, 80.0], [0, 0, 120, 80.0]])),
                               [75 * 100, 150 * 200])


def test_folder_with_coco_detections(tmp_path, capsys, model_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in (1, 2, 3):
        write_image(folder / f"{i:012d}.jpg", synthetic_image(seed=i))
    dets = write_json(tmp_path / "dets.json", [
        {"image_id": 1, "category_id": 1, "bbox": BOXES[0][:4], "score": 0.9},
        {"image_id": 3, "category_id": 1, "bbox": BOXES[1][:4], "score": 0.8},
        {"image_id": 3, "category_id": 1, "bbox": BOXES[0][:4], "score": 0.7},
        {"image_id": 3, "category_id": 2, "bbox": BOXES[0][:4], "score": 0.7},
    ])
    vis = tmp_path / "vis"
    code, out, err = run(capsys, "infer", folder, dets, "--model", model_path, "--vis", vis)
    # image 2 has no person detections: said once, and the others are processed
    assert code == 0 and err == f"npvitpose: warning: 1 of 3 images have no person boxes in dets.json " \
                                f"(first: {folder / '000000000002.jpg'})\n"
    assert sorted(r["image_id"] for r in json.loads(out)) == [1, 3, 3]
    assert sorted(os.listdir(vis)) == [f"{i:012d}.jpg" for i in (1, 2, 3)]


def test_images_list_matches_file_names(tmp_path, capsys, model_path):
    a = write_image(tmp_path / "kitchen.jpg")
    b = write_image(tmp_path / "street.jpg", synthetic_image(seed=5))
    images = write_json(tmp_path / "images.json", {"images": [{"id": 7, "file_name": "x/kitchen.jpg"},
                                                              {"id": 8, "file_name": "street.jpg"}]})
    dets = write_json(tmp_path / "dets.json", [{"image_id": 8, "category_id": 1, "bbox": BOXES[0][:4], "score": 1}])
    code, out, _ = run(capsys, "infer", a, b, dets, "--model", model_path, "--images", images)
    assert code == 0 and [r["image_id"] for r in json.loads(out)] == [8]
    code, out, _ = run(capsys, "infer", a, dets, "--model", model_path, "--image-id", 8)
    assert code == 0 and [r["image_id"] for r in json.loads(out)] == [8]


def test_image_ids_match_however_they_are_spelled(tmp_path, capsys, model_path):
    image = write_image(tmp_path / "000000000042.jpg")
    dets = write_json(tmp_path / "dets.json", [
        {"image_id": "000000000042", "category_id": 1, "bbox": BOXES[0][:4], "score": 1},
        {"image_id": 42, "category_id": 1, "bbox": BOXES[1][:4], "score": 1},
        {"image_id": "kitchen-1", "category_id": 1, "bbox": BOXES[1][:4], "score": 1},
    ])
    for extra in ([], ["--image-id", "000000000042"], ["--image-id", "42"]):
        code, out, _ = run(capsys, "infer", image, dets, "--model", model_path, *extra)
        assert code == 0 and [r["image_id"] for r in json.loads(out)] == [42, 42]
    code, out, _ = run(capsys, "infer", image, dets, "--model", model_path, "--image-id", "kitchen-1")
    assert code == 0 and [r["image_id"] for r in json.loads(out)] == ["kitchen-1"]


def test_image_list_naming_a_file_twice_is_refused(tmp_path, capsys, model_path):
    image = write_image(tmp_path / "kitchen.jpg")
    images = write_json(tmp_path / "images.json", [{"id": 7, "file_name": "kitchen.jpg"},
                                                   {"id": 9, "file_name": "other/kitchen.jpg"}])
    dets = write_json(tmp_path / "dets.json", [{"image_id": 9, "category_id": 1, "bbox": BOXES[0][:4], "score": 1}])
    code, out, err = run(capsys, "infer", image, dets, "--model", model_path, "--images", images)
    assert code == 1 and out == "" and "'kitchen.jpg' is listed with two ids, 7 and 9" in err


def test_video_with_per_frame_detections(tmp_path, capsys, model_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    for i in range(5):
        writer.write(np.ascontiguousarray(synthetic_image(seed=10 + i)[:, :, ::-1]))
    writer.release()
    dets = write_json(tmp_path / "dets.json", [
        {"image_id": f, "category_id": 1, "bbox": BOXES[f % 2][:4], "score": 0.9} for f in (0, 1, 3)
    ])
    out_json, out_video = tmp_path / "res.json", tmp_path / "annotated.mp4"
    code, _, err = run(capsys, "infer", video, dets, "--model", model_path, "-o", out_json, "--vis", out_video)
    assert code == 0, err
    results = json.loads(out_json.read_text())
    assert [r["image_id"] for r in results] == [0, 1, 3]
    capture = cv2.VideoCapture(str(out_video))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 5
    assert sorted(os.listdir(tmp_path)) == ["annotated.mp4", "clip.mp4", "dets.json", "res.json"]


def test_model_by_fetched_name(tmp_path, capsys, model_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(model_path, cache / "vitpose-base.npz")
    image = write_image(tmp_path / "in.png")
    dets = write_json(tmp_path / "d.json", BOXES)
    code, out, _ = run(capsys, "infer", image, dets, "--model", "vitpose-b", "--cache", cache)
    assert code == 0 and len(json.loads(out)) == 2
    code, out, _ = run(capsys, "infer", image, dets, "--cache", cache)  # vitpose-b is the default
    assert code == 0 and len(json.loads(out)) == 2
    # a name not in the cache is downloaded on first use (tests/test_fetch.py serves one); nothing listens here
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    code, out, err = run(capsys, "infer", image, dets, "--model", "vitpose-plus-h", "--cache", cache, "-o",
                         tmp_path / "res.json")
    assert code == 1 and out == "" and "usyd-community/vitpose-plus-huge" in err
    assert err.splitlines()[-1].startswith("npvitpose: error: download failed: cannot reach") and err.count("\n") == 2
    assert not (tmp_path / "res.json").exists() and sorted(os.listdir(cache)) == ["vitpose-base.npz"]  # no empty download left


def test_fetch_list(capsys):
    code, out, _ = run(capsys, "fetch", "--list")
    assert code == 0 and "usyd-community/vitpose-base/model.safetensors" in out and "(also: vitpose-b)" in out


def test_usage_errors_exit_2(capsys, model_path):
    for argv in (["infer", "a.jpg", "b.json", "--whole-image", "--model", model_path],
                 ["infer", "a.jpg", "b.json", "--model", model_path, "--bbox-thr", "-1"], ["nope"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_bench_missing_module_is_one_line(capsys, monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a):
        if name == "npvitpose.bench":
            raise ModuleNotFoundError("No module named 'npvitpose.bench'", name="npvitpose.bench")
        return real(name, *a)

    monkeypatch.setattr(importlib, "import_module", fake)
    code, _, err = run(capsys, "bench", "--anything")
    assert code == 1 and err == "npvitpose: error: this npvitpose has no bench module\n"


def test_convert_command(tmp_path, capsys):
    from hf_reference import hf_folder_from_numpy, official_to_hf
    from test_fetch import _hf_config_json

    from npvitpose.model import load
    from npvitpose.npz import read_npz

    cfg = Config(dim=32, depth=1, heads=2, mlp_hidden=64, num_keypoints=17, head="simple", ln_eps=1e-6)
    weights = random_weights(cfg, seed=9)
    hf_folder_from_numpy(_hf_config_json(cfg), official_to_hf(weights), tmp_path / "hf")
    out = tmp_path / "m.npz"
    code, stdout, err = run(capsys, "convert", tmp_path / "hf", "-o", out)
    assert code == 0 and err == "" and "coco model, simple head, 17 keypoints" in stdout
    load(str(out))
    np.testing.assert_array_equal(read_npz(str(out))["backbone.blocks.0.attn.qkv.weight"],
                                  weights["backbone.blocks.0.attn.qkv.weight"])
    before = (tmp_path / "hf" / "model.safetensors").read_bytes()
    code, _, err = run(capsys, "convert", tmp_path / "hf", "-o", tmp_path / "hf" / "model.safetensors")
    assert code == 1 and "refusing to overwrite" in err and err.count("\n") == 1
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == before
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    code, _, err = run(capsys, "convert", tmp_path / "junk.pth", "-o", tmp_path / "j.npz")
    assert code == 1 and err.startswith("npvitpose: error: ") and err.count("\n") == 1
    assert not (tmp_path / "j.npz").exists()


@pytest.mark.parametrize("dataset", ["coco", "wholebody", "aic", "mpii"])
def test_draw_any_keypoint_count(dataset):
    from npvitpose.vis import draw

    ds = DATASETS[dataset]
    k = ds.num_keypoints
    rng = np.random.default_rng(k)
    image = np.zeros((120, 100, 3), np.uint8)
    keypoints = rng.uniform(5, 95, (2, k, 2))
    high = draw(image, keypoints, np.ones((2, k)), ds.skeleton)
    assert high.shape == image.shape and high.dtype == np.uint8 and high.any()
    assert not image.any()  # the input is not drawn on
    low = draw(image, keypoints, np.full((2, k), 0.1), ds.skeleton, kpt_thr=0.3)
    assert not low.any()  # every keypoint under the threshold: nothing drawn
    far = draw(image, np.full((1, k, 2), 1e12), np.ones((1, k)), ds.skeleton)
    assert not far.any()  # absurd coordinates are skipped, not passed to OpenCV


def test_bench_delegates_parsing_and_run(capsys, monkeypatch):
    import sys
    import types

    seen = {}
    fake = types.ModuleType("npvitpose.bench")
    fake.add_arguments = lambda p: p.add_argument("--repeats", type=int, default=3)
    fake.main = lambda args: seen.setdefault("repeats", args.repeats) and 0
    monkeypatch.setitem(sys.modules, "npvitpose.bench", fake)
    code, _, _ = run(capsys, "bench", "--repeats", 7)
    assert code == 0 and seen == {"repeats": 7}
