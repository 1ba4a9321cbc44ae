"""What a new user meets first: folders of any names, warnings instead of silent empty results, the
traps of the command line, help, progress and quiet mode, output layouts (issue 11)."""

import importlib.util
import io
import json
import os
import sys

import numpy as np
import pytest

import npvitpose.cli as cli
from npvitpose.cli import _note_compile  # the real one: conftest.py silences it in the other tests
from npvitpose import fetch, messages, run as R
from npvitpose.cli import main
from test_cli import BOXES, model_path, run, synthetic_image, write_image, write_json  # noqa: F401


@pytest.fixture(autouse=True)
def _no_periodic_lines(monkeypatch):
    """A cold JIT cache makes the first forward take long enough for a progress line in a log: the tests
    that check stderr word for word would then depend on the cache. Those about progress set PERIOD."""
    monkeypatch.setattr(messages, "PERIOD", 1e9)


def _no_model(monkeypatch):
    """Fail the test if the command gets as far as finding a model."""
    monkeypatch.setattr(fetch, "resolve", lambda *a, **k: pytest.fail("went on to model work"))


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    write_image(folder / "kitchen.jpg", synthetic_image(seed=1))
    write_image(folder / "street view.png", synthetic_image(seed=2))
    write_image(folder / "empty.jpg", synthetic_image(seed=3))
    return folder


def test_folder_of_any_names_with_boxes_keyed_by_file_name(tmp_path, capsys, model_path, photos):
    dets = write_json(tmp_path / "dets.json", {"kitchen.jpg": BOXES, "street view.png": [BOXES[1][:4]],
                                              "empty.jpg": []})
    code, out, err = run(capsys, "infer", photos, dets, "--model", model_path)
    assert code == 0 and err == ""  # an explicit [] means nobody: no warning
    got = json.loads(out)
    assert [r["image_id"] for r in got] == ["kitchen.jpg", "kitchen.jpg", "street view.png"]
    # the same boxes given one image at a time as a plain list give the same keypoints
    alone = write_json(tmp_path / "one.json", [BOXES[1][:4]])
    _, out1, _ = run(capsys, "infer", photos / "street view.png", alone, "--model", model_path)
    assert json.loads(out1)[0]["keypoints"] == got[2]["keypoints"]


def test_name_keyed_file_missing_an_image_is_refused_before_model_work(tmp_path, capsys, model_path, photos,
                                                                       monkeypatch):
    _no_model(monkeypatch)
    dets = write_json(tmp_path / "dets.json", {"kitchen.jpg": BOXES})
    code, out, err = run(capsys, "infer", photos, dets, "--model", model_path)
    assert code == 1 and out == ""
    assert err == f"npvitpose: error: {photos / 'empty.jpg'}: no entry for it in dets.json " \
                  "(give [] for an image with nobody) (and 1 more)\n"


def test_coco_folder_without_ids_is_refused_before_model_work(tmp_path, capsys, model_path, photos, monkeypatch):
    _no_model(monkeypatch)
    dets = write_json(tmp_path / "dets.json", [{"image_id": 1, "category_id": 1, "bbox": BOXES[0][:4], "score": 1}])
    code, _, err = run(capsys, "infer", photos, dets, "--model", model_path)
    assert code == 1 and err.count("\n") == 1 and "cannot tell its COCO image id" in err
    assert "key the boxes by file name" in err


def test_boxes_from_standard_input(tmp_path, capsys, model_path, monkeypatch):
    image = write_image(tmp_path / "in.jpg")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(BOXES).encode())))
    code, out, err = run(capsys, "infer", image, "-", "--model", model_path)
    assert code == 0 and err == ""
    _, expected, _ = run(capsys, "infer", image, write_json(tmp_path / "b.json", BOXES), "--model", model_path)
    assert out == expected


def test_quoted_glob_expands_and_matching_nothing_is_one_line(tmp_path, capsys, model_path, photos):
    dets = write_json(tmp_path / "dets.json", {"kitchen.jpg": BOXES, "empty.jpg": []})
    code, out, err = run(capsys, "infer", str(photos / "*.jpg"), dets, "--model", model_path)
    assert code == 0 and err == "" and len(json.loads(out)) == 2
    code, _, err = run(capsys, "infer", str(photos / "*.gif"), dets, "--model", model_path)
    assert code == 1 and err == f"npvitpose: error: no file matches {str(photos / '*.gif')!r}\n"


def test_vis_file_with_several_inputs_is_refused(tmp_path, capsys, model_path, photos, monkeypatch):
    _no_model(monkeypatch)
    dets = write_json(tmp_path / "dets.json", {"kitchen.jpg": BOXES, "empty.jpg": []})
    code, _, err = run(capsys, "infer", str(photos / "*.jpg"), dets, "--vis", tmp_path / "two.jpg")
    assert code == 1 and "names one file, but there are 2 inputs" in err
    assert not (tmp_path / "two.jpg").exists()


@pytest.mark.parametrize("argv, usage", [
    (["infer", "a.jpg", "b.json", "--whole-image"], "usage: npvitpose infer"),
    (["fetch"], "usage: npvitpose fetch"),
    (["infer", "a.jpg", "-", "-", "--model", "m.npz"], "usage: npvitpose infer"),
])
def test_usage_errors_show_the_command_usage(capsys, argv, usage):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(usage) and f"{usage[7:]}: error:" in err


def test_help_shows_defaults_formats_exit_status_and_version(capsys):
    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("(default: 0.3)", "--radius RADIUS keypoint radius in --vis, pixels (default: 4)",
                   "(default: 2)", "(default: vitpose-b)", "(default: coco)", "(default: xywh)",
                   '[[x, y, w, h, score], ...]', '{"frame_0001.jpg":', '"image_id": 42, "category_id": 1',
                   "exit status:", "3 nothing produced", "keypoints are always x then y"):
        assert needle in text, needle
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"npvitpose {__import__('npvitpose').__version__}\n"


def test_image_id_with_no_detections_warns_and_exits_3_without_a_model(tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    image = write_image(tmp_path / "in.jpg")
    dets = write_json(tmp_path / "dets.json", [{"image_id": 1, "category_id": 1, "bbox": BOXES[0][:4], "score": 1}])
    code, out, err = run(capsys, "infer", image, dets, "--image-id", 7, "-o", tmp_path / "out.json")
    assert code == cli.EXIT_EMPTY == 3 and out == ""
    assert err == f"npvitpose: warning: dets.json has no person boxes for {image} (image id 7)\n"
    assert json.loads((tmp_path / "out.json").read_text()) == []


def test_all_boxes_under_bbox_thr_warns_and_exits_3(tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    image = write_image(tmp_path / "in.jpg")
    code, out, err = run(capsys, "infer", image, write_json(tmp_path / "b.json", BOXES), "--bbox-thr", 0.95)
    assert code == 3 and json.loads(out) == [] and "no person boxes at --bbox-thr 0.95" in err


def test_video_whose_detections_match_no_frame_exits_3(tmp_path, capsys, model_path):
    import cv2

    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5, (320, 240))
    for i in range(2):
        writer.write(synthetic_image(seed=i)[:, :, ::-1].copy())
    writer.release()
    dets = write_json(tmp_path / "d.json", [{"image_id": 9, "category_id": 1, "bbox": BOXES[0][:4], "score": 1}])
    code, out, err = run(capsys, "infer", video, dets, "--model", model_path)
    assert code == 3 and json.loads(out) == []
    assert err == "npvitpose: warning: no keypoints produced: none of the boxes in d.json belong to the input " \
                  "(a video's COCO image_id is the frame index)\n"


def test_vis_with_every_score_below_kpt_thr_warns(tmp_path, capsys, model_path):
    image = write_image(tmp_path / "in.jpg")
    dets = write_json(tmp_path / "b.json", BOXES)
    code, _, err = run(capsys, "infer", image, dets, "--model", model_path, "--vis", tmp_path / "v.jpg",
                       "--kpt-thr", 1000)
    assert code == 0 and err.startswith(f"npvitpose: warning: {image}: no keypoint scores 1000.0 (--kpt-thr) or more")
    assert (tmp_path / "v.jpg").exists()


def test_pred_out_dir_and_mmpose_layout(tmp_path, capsys, model_path, photos):
    dets = write_json(tmp_path / "dets.json", {"kitchen.jpg": BOXES, "street view.png": [], "empty.jpg": []})
    code, out, _ = run(capsys, "infer", photos, dets, "--model", model_path, "--pred-out-dir", tmp_path / "preds")
    assert code == 0 and out == ""  # the results are in the folder, as mmpose leaves them
    code, _, _ = run(capsys, "infer", photos, dets, "--model", model_path, "--pred-out-dir", tmp_path / "again",
                     "-o", tmp_path / "all.json")
    coco = json.loads((tmp_path / "all.json").read_text())
    assert sorted(os.listdir(tmp_path / "preds")) == ["empty.json", "kitchen.json", "street view.json"]
    assert json.loads((tmp_path / "preds" / "kitchen.json").read_text()) == coco
    assert json.loads((tmp_path / "preds" / "empty.json").read_text()) == []
    code, out, _ = run(capsys, "infer", photos, dets, "--model", model_path, "--format", "mmpose",
                       "--pred-out-dir", tmp_path / "mm", "-o", tmp_path / "mm.json")
    mm = json.loads((tmp_path / "mm.json").read_text())
    assert code == 0 and list(mm) == [str(photos / n) for n in ("empty.jpg", "kitchen.jpg", "street view.png")]
    assert json.loads((tmp_path / "mm" / "kitchen.json").read_text()) == mm[str(photos / "kitchen.jpg")]
    for person, record in zip(mm[str(photos / "kitchen.jpg")], coco):  # the same numbers, mmpose's layout
        flat = np.array(record["keypoints"]).reshape(-1, 3)
        assert person["keypoints"] == flat[:, :2].tolist() and person["keypoint_scores"] == flat[:, 2].tolist()
        x, y, w, h = record["bbox"]
        assert person["bbox"] == [[x, y, round(x + w, 3), round(y + h, 3)]]
    assert [p["bbox_score"] for p in mm[str(photos / "kitchen.jpg")]] == [b[4] for b in BOXES]


def test_pred_out_dir_name_clash_is_refused(tmp_path, capsys, model_path, monkeypatch):
    _no_model(monkeypatch)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    images = [write_image(a / "x.jpg"), write_image(b / "x.png")]
    dets = write_json(tmp_path / "d.json", {images[0]: BOXES, images[1]: BOXES})
    code, _, err = run(capsys, "infer", *images, dets, "--pred-out-dir", tmp_path / "p")
    assert code == 1 and "would both be written to" in err


def test_stdout_is_one_record_per_line_on_a_terminal(tmp_path, capsys, model_path, monkeypatch):
    image = write_image(tmp_path / "in.jpg")
    dets = write_json(tmp_path / "b.json", BOXES)
    _, compact, _ = run(capsys, "infer", image, dets, "--model", model_path)
    monkeypatch.setattr(cli, "isatty", lambda stream: True)
    _, readable, _ = run(capsys, "infer", image, dets, "--model", model_path)
    assert compact.count("\n") == 1 and readable.count("\n") == len(BOXES) + 2
    assert json.loads(readable) == json.loads(compact)


def test_progress_lines_in_a_log_and_quiet(capsys, monkeypatch):
    monkeypatch.setattr(messages, "PERIOD", 0.0)  # every step is "a while" later
    bar = messages.Progress(3, "frames", unit="frames")
    for _ in range(3):
        bar.update()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("frames: 1/3 frames (33%), ") and lines[-1].startswith("frames: 3/3 frames (100%)")
    assert "\r" not in "".join(lines)
    messages.set_quiet(True)
    try:
        bar = messages.Progress(3, "frames", unit="frames")
        bar.update(3)
        bar.close()
        messages.note("loading")
        messages.warn("still said")
    finally:
        messages.set_quiet(False)
    assert capsys.readouterr().err == "npvitpose: warning: still said\n"


def test_load_note_and_quiet(tmp_path, capsys, model_path, monkeypatch):
    image = write_image(tmp_path / "in.jpg")
    dets = write_json(tmp_path / "b.json", BOXES)
    monkeypatch.setattr(cli, "LOAD_NOTE_BYTES", 0)  # the tiny test model counts as large
    code, _, err = run(capsys, "infer", image, dets, "--model", model_path)
    assert code == 0 and err == f"npvitpose: loading the model {model_path} ({os.path.getsize(model_path) / 1e6:.0f} MB)\n"
    code, _, err = run(capsys, "infer", image, dets, "--model", model_path, "-q")
    assert code == 0 and err == ""


def test_jit_cache_cold_sees_a_missing_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "nbcache"))
    source = tmp_path / "probe_kernels.py"
    source.write_text("from numba import njit\n\n@njit(cache=True)\ndef twice(x):\n    return 2 * x\n\n"
                      "@njit\ndef uncached(x):\n    return x\n")
    spec = importlib.util.spec_from_file_location("probe_kernels", source)
    module = importlib.util.module_from_spec(spec)
    import numba.core.config

    monkeypatch.setattr(numba.core.config, "CACHE_DIR", str(tmp_path / "nbcache"))
    spec.loader.exec_module(module)
    assert R.jit_cache_cold([module])  # the one cached kernel is not compiled yet; the uncached never counts
    assert module.twice(3) == 6
    assert not R.jit_cache_cold([module])


def test_compile_note_is_said_once_when_the_cache_is_cold(tmp_path, capsys, model_path, monkeypatch):
    image = write_image(tmp_path / "in.jpg")
    dets = write_json(tmp_path / "b.json", BOXES)
    monkeypatch.setattr(cli, "_note_compile", _note_compile)
    monkeypatch.setattr(R, "jit_cache_cold", lambda: True)
    shared = []  # a cold run compiles on two processes (tests/test_startup.py), a warm one does not try
    monkeypatch.setattr(R, "precompile", lambda runner: shared.append(runner.model.num_keypoints))
    code, _, err = run(capsys, "infer", image, dets, "--model", model_path)
    assert code == 0 and err.startswith("npvitpose: first run: compiling the kernels for this machine, once")
    assert run(capsys, "infer", image, dets, "--model", model_path, "--quiet")[2] == ""
    assert len(shared) == 2
    monkeypatch.setattr(R, "jit_cache_cold", lambda: False)
    assert run(capsys, "infer", image, dets, "--model", model_path)[2] == ""
    assert len(shared) == 2


def test_bench_says_what_it_is_doing_and_quiet_silences_it(capsys, monkeypatch):
    import npvitpose.bench as bench
    from npvitpose.model import Config, from_weights, random_weights
    from test_cli import tiny_meta

    tiny = Config(dim=64, depth=1, heads=2, mlp_hidden=128, num_keypoints=17, head="classic", ln_eps=1e-6)
    monkeypatch.setattr(bench, "build", lambda *a, precision="fp32", **k: from_weights(
        random_weights(tiny, seed=0), tiny_meta(tiny), precision))
    monkeypatch.setattr(bench, "ceiling", lambda precision="fp32", seconds=0.3: 1e11)
    monkeypatch.setattr(messages, "PERIOD", 0.0)  # every forward is "a while" after the last line
    argv = ["bench", "--model", "vitpose-s", "--batch", "1", "2", "--threads", "1", "--repeats", "2", "--profile"]
    code, out, err = run(capsys, *argv)
    assert code == 0
    lines = err.splitlines()
    stages = [line for line in lines if line.startswith("npvitpose: bench: ")]
    assert stages == ["npvitpose: bench: random weights of vitpose-s (classic head), fp32",
                      "npvitpose: bench: 1 thread, batch 1", "npvitpose: bench: 1 thread, batch 2",
                      "npvitpose: bench: profile, batch 2, 1 thread"]
    # between them, one line per forward (3 per batch: warm-up and 2 timed; 4 for the profile)
    assert [line.split(" forwards")[0] for line in lines if "forwards (" in line][:3] == \
        ["1 thread, batch 1: 1/3", "1 thread, batch 1: 2/3", "1 thread, batch 1: 3/3"]
    assert any(line.startswith("profile, batch 2, 1 thread: 4/4 forwards (100%)") for line in lines)
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["1"]]
    assert [r[:3] for r in rows] == [["1", "1", "fp32"], ["1", "2", "fp32"]] and "where one forward" in out
    code, out_q, err_q = run(capsys, *argv, "-q")
    assert code == 0 and err_q == "" and out_q.count("\n") == out.count("\n")


def test_bench_ceilings_probe_only_the_instructions_the_linear_layers_run_here(monkeypatch):
    import math

    import npvitpose.bench as bench
    from npvitpose.kernels import gemm_bf16, gemm_int8

    for precision, module in (("bf16", gemm_bf16), ("int8", gemm_int8)):
        assert bench.ceiling_kind(precision) == (precision if module.FAST and not module.AMX else None)
        rate = bench.ceiling(precision, seconds=0.02)
        assert (rate is None) == (bench.ceiling_kind(precision) is None)
        assert rate is None or (math.isfinite(rate) and rate > 0)
        with monkeypatch.context() as m:  # a CPU without the instruction: nothing compiled, no figure
            m.setattr(module, "FAST", False)
            assert bench.ceiling_kind(precision) is None and bench.ceiling(precision) is None
        with monkeypatch.context() as m:  # AMX tiles run the layers there: the vector probe would not bound them
            m.setattr(module, "AMX", True)
            assert bench.ceiling_kind(precision) is None
    assert bench.ceiling_kind("fp32") == "fp32" and bench.fp32_ceiling(seconds=0.02) > 0


def test_detector_boxes_too_small_to_crop_are_dropped_not_fatal():
    # a random-weight YOLOX found a 0.3 x 0.7 px "person" and the whole video failed on it
    found = np.array([[10.0, 10.0, 50.0, 80.0], [300.0, 200.0, 0.3, 0.7], [5.0, 5.0, 0.0, 20.0]])
    source = R.DetectedBoxes(lambda image: (found, np.array([0.9, 0.95, 0.8])))
    boxes, scores = source.for_frame(0, np.zeros((480, 640, 3), np.uint8))
    np.testing.assert_array_equal(boxes, found[:1])
    np.testing.assert_array_equal(scores, [0.9])
