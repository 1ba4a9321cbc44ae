"""Bad and unusual inputs through `npvitpose infer`: a documented result, or one error line and exit 1.

Every failing case also checks: no traceback, no partial output, an older output file left as it was.
"""

import json
import os
import stat
import struct
import zipfile

import cv2
import numpy as np
import pytest

from npvitpose.cli import main
from npvitpose.model import Config, random_weights, save_npz
from test_cli import BOXES, synthetic_image, tiny_meta, write_image, write_json

TINY = Config(dim=64, depth=1, heads=2, mlp_hidden=128, num_keypoints=17, head="simple", ln_eps=1e-6)
OLD = '{"old": true}\n'


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.npz"
    save_npz(str(path), random_weights(TINY, seed=2), tiny_meta(TINY))
    return str(path)


@pytest.fixture
def work(tmp_path):
    """A folder with one good image, good boxes and an older output file."""
    write_image(tmp_path / "good.jpg")
    write_json(tmp_path / "boxes.json", BOXES)
    (tmp_path / "out.json").write_text(OLD)
    return tmp_path


def infer(capsys, *argv):
    code = main(["infer", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def assert_failed(code, out, err, work, *needles):
    """One error line, exit 1, the older output untouched, no stray temp files."""
    assert code == 1
    assert err.startswith("npvitpose: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    assert out == ""
    assert (work / "out.json").read_text() == OLD
    assert not [n for n in os.listdir(work) if ".part" in n]


def results(work):
    return json.loads((work / "out.json").read_text())


# ------------------------------------------------------------------------------------- image files


def test_missing_image(capsys, work, model_path):
    code, out, err = infer(capsys, work / "nope.jpg", work / "boxes.json", "--model", model_path,
                           "-o", work / "out.json")
    assert_failed(code, out, err, work, "nope.jpg")


def test_zero_byte_image(capsys, work, model_path):
    (work / "empty.jpg").write_bytes(b"")
    code, out, err = infer(capsys, work / "empty.jpg", work / "boxes.json", "--model", model_path,
                           "-o", work / "out.json")
    assert_failed(code, out, err, work, "empty.jpg")


def test_text_file_named_jpg(capsys, work, model_path):
    (work / "notes.jpg").write_text("this is not an image\n" * 20)
    code, out, err = infer(capsys, work / "notes.jpg", work / "boxes.json", "--model", model_path,
                           "-o", work / "out.json", "--vis", work / "vis.jpg")
    assert_failed(code, out, err, work, "notes.jpg")
    assert not (work / "vis.jpg").exists()


@pytest.mark.parametrize("kind", ["gray", "rgba", "png16"])
def test_unusual_pixel_formats_are_read_as_rgb(capsys, work, model_path, kind):
    rgb = synthetic_image()
    if kind == "gray":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif kind == "rgba":
        pixels = np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 128, np.uint8)])  # BGRA
    else:
        pixels = rgb[:, :, ::-1].astype(np.uint16) * 257  # 16-bit BGR
    path = work / f"{kind}.png"
    assert cv2.imwrite(str(path), pixels)
    code, _, err = infer(capsys, path, work / "boxes.json", "--model", model_path, "-o", work / "out.json",
                         "--vis", work / f"{kind}_vis.png")
    assert code == 0, err
    assert len(results(work)) == 2
    assert cv2.imread(str(work / f"{kind}_vis.png")).shape == (240, 320, 3)


def test_16bit_png_matches_its_8bit_version(capsys, work, model_path):
    rgb = synthetic_image()
    assert cv2.imwrite(str(work / "p8.png"), rgb[:, :, ::-1])
    assert cv2.imwrite(str(work / "p16.png"), rgb[:, :, ::-1].astype(np.uint16) * 257)
    outs = []
    for name in ("p8.png", "p16.png"):
        code, out, _ = infer(capsys, work / name, work / "boxes.json", "--model", model_path)
        assert code == 0
        outs.append(json.loads(out))
    assert outs[0] == outs[1]  # x*257 >> 8 == x: the same pixels after the 16 -> 8 bit reduction


def test_large_image(capsys, work, model_path):
    big = np.zeros((9000, 12000, 3), np.uint8)
    big[::97] = 200
    big[:, ::89] = 90
    path = work / "big.jpg"
    assert cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 50])
    del big
    boxes = write_json(work / "big_boxes.json", [[5000, 3000, 800, 2000, 1.0]])
    code, _, err = infer(capsys, path, boxes, "--model", model_path, "-o", work / "out.json")
    assert code == 0, err
    kp = np.array(results(work)[0]["keypoints"]).reshape(17, 3)
    assert np.all((kp[:, 0] > 4000) & (kp[:, 0] < 6500) & (kp[:, 1] > 2500) & (kp[:, 1] < 5500))


def _exif_orientation_jpeg(jpeg_bytes, orientation):
    """Insert an APP1 Exif segment holding only the Orientation tag right after the JPEG SOI marker."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    assert jpeg_bytes[:2] == b"\xff\xd8"
    return jpeg_bytes[:2] + segment + jpeg_bytes[2:]


def test_exif_rotated_jpeg_is_read_upright(capsys, work, model_path):
    """Documented: the EXIF orientation is applied (as OpenCV's imread does), so boxes refer to the
    upright image a viewer shows; orientation 6 turns a 320x240 file into a 240x320 picture."""
    ok, buf = cv2.imencode(".jpg", synthetic_image()[:, :, ::-1])
    assert ok
    path = work / "rotated.jpg"
    path.write_bytes(_exif_orientation_jpeg(buf.tobytes(), 6))
    boxes = write_json(work / "rot_boxes.json", [[20, 200, 150, 100, 1.0]])  # only fits the rotated frame
    code, _, err = infer(capsys, path, boxes, "--model", model_path, "-o", work / "out.json",
                         "--vis", work / "rot_vis.png")
    assert code == 0, err
    assert cv2.imread(str(work / "rot_vis.png")).shape == (320, 240, 3)


# ------------------------------------------------------------------------------------- boxes


def test_empty_box_list_gives_empty_results(capsys, work, model_path):
    code, _, err = infer(capsys, work / "good.jpg", write_json(work / "none.json", []), "--model", model_path,
                         "-o", work / "out.json")
    assert code == 0 and err == "" and results(work) == []


@pytest.mark.parametrize("boxes, needle", [
    ("[[0, 0, 10, 10], [0, 0, NaN, 10]]", "entry 1"),
    ("[[0, 0, Infinity, 10]]", "entry 0"),
    ("[[0, 0, -10, 10]]", "entry 0"),
    ("[[0, 0, 10, 0]]", "entry 0"),
    ('{"boxes": [[0, 0, 10, 10]]}', "expected a JSON list"),
    ('[{"box": [0, 0, 10, 10]}]', "no \"bbox\" key"),
    ("[[0, 0, 10, 10]", "not valid JSON"),
    ("", "not valid JSON"),
])
def test_bad_boxes(capsys, work, model_path, boxes, needle):
    (work / "bad.json").write_text(boxes)
    code, out, err = infer(capsys, work / "good.jpg", work / "bad.json", "--model", model_path,
                           "-o", work / "out.json", "--vis", work / "vis.jpg")
    assert_failed(code, out, err, work, "bad.json", needle)
    assert not (work / "vis.jpg").exists()


def test_boxes_entirely_outside_the_image(capsys, work, model_path):
    """Documented: kept; the crop is all padding, so the keypoints come back with low scores."""
    boxes = write_json(work / "outside.json", [[-500, -500, 100, 200, 1.0], [5000, 100, 100, 200, 1.0]])
    code, _, err = infer(capsys, work / "good.jpg", boxes, "--model", model_path, "-o", work / "out.json")
    assert code == 0, err
    res = results(work)
    assert len(res) == 2
    assert all(np.isfinite(r["keypoints"]).all() for r in res)


def test_thousand_boxes(capsys, work, model_path):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 250, (1000, 2))
    wh = rng.uniform(10, 120, (1000, 2))
    boxes = write_json(work / "many.json", np.hstack([xy, wh]).tolist())
    code, _, err = infer(capsys, work / "good.jpg", boxes, "--model", model_path, "-o", work / "out.json",
                         "--no-flip", "--decode", "argmax")  # the fast paths: this is about the many boxes
    assert code == 0, err
    assert len(results(work)) == 1000


def test_plain_list_with_several_images_is_refused(capsys, work, model_path):
    write_image(work / "second.jpg")
    code, out, err = infer(capsys, work / "good.jpg", work / "second.jpg", work / "boxes.json",
                           "--model", model_path, "-o", work / "out.json")
    assert_failed(code, out, err, work, "plain box list")


def test_coco_results_without_a_way_to_match(capsys, work, model_path):
    dets = write_json(work / "coco.json", [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 9], "score": 1}])
    code, out, err = infer(capsys, work / "good.jpg", dets, "--model", model_path, "-o", work / "out.json")
    assert_failed(code, out, err, work, "good.jpg", "image id")


# ------------------------------------------------------------------------------------- model files


def test_model_that_is_not_an_npz(capsys, work):
    (work / "model.npz").write_text("hello")
    code, out, err = infer(capsys, work / "good.jpg", work / "boxes.json", "--model", work / "model.npz",
                           "-o", work / "out.json")
    assert_failed(code, out, err, work, "model.npz")


def test_truncated_model(capsys, work, model_path):
    data = open(model_path, "rb").read()
    (work / "cut.npz").write_bytes(data[: len(data) // 2])
    code, out, err = infer(capsys, work / "good.jpg", work / "boxes.json", "--model", work / "cut.npz",
                           "-o", work / "out.json")
    assert_failed(code, out, err, work, "cut.npz")


def test_npz_without_metadata(capsys, work):
    np.savez(work / "plain.npz", a=np.zeros(3, np.float32))
    code, out, err = infer(capsys, work / "good.jpg", work / "boxes.json", "--model", work / "plain.npz",
                           "-o", work / "out.json")
    assert_failed(code, out, err, work, "plain.npz")


def test_npz_with_a_wrong_shape(capsys, work, model_path):
    with np.load(model_path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["backbone.last_norm.bias"] = np.zeros(5, np.float32)
    np.savez(work / "bad.npz", **arrays)
    code, out, err = infer(capsys, work / "good.jpg", work / "boxes.json", "--model", work / "bad.npz",
                           "-o", work / "out.json")
    assert_failed(code, out, err, work, "last_norm")


def test_missing_model(capsys, work):
    code, out, err = infer(capsys, work / "good.jpg", work / "boxes.json", "--model", work / "nope.npz",
                           "-o", work / "out.json")
    assert_failed(code, out, err, work, "nope.npz")


# ------------------------------------------------------------------------------------- outputs


def test_output_onto_an_input_is_refused(capsys, work, model_path):
    before = (work / "good.jpg").read_bytes()
    for flag, target in (("-o", "good.jpg"), ("-o", "boxes.json"), ("--vis", "good.jpg"), ("-o", "tiny.npz")):
        target = work / target if target != "tiny.npz" else model_path
        code, out, err = infer(capsys, work / "good.jpg", work / "boxes.json", "--model", model_path, flag, target)
        assert_failed(code, out, err, work, "refusing to overwrite")
    assert (work / "good.jpg").read_bytes() == before


def test_vis_folder_equal_to_input_folder_is_refused(capsys, work, model_path):
    folder = work / "imgs"
    folder.mkdir()
    write_image(folder / "000000000001.jpg")
    dets = write_json(work / "coco.json", [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 9], "score": 1}])
    code, out, err = infer(capsys, folder, dets, "--model", model_path, "--vis", folder, "-o", work / "out.json")
    assert_failed(code, out, err, work, "refusing to overwrite")


def test_output_in_a_missing_folder(capsys, work, model_path):
    code, out, err = infer(capsys, work / "good.jpg", work / "boxes.json", "--model", model_path,
                           "-o", work / "no" / "such" / "out.json")
    assert_failed(code, out, err, work, "does not exist")


def test_output_that_is_a_folder_is_refused_before_work(capsys, work, model_path, monkeypatch):
    import npvitpose.pipeline

    monkeypatch.setattr(npvitpose.pipeline, "predict", lambda *a, **k: pytest.fail("ran before refusing"))
    (work / "odir").mkdir()
    code, out, err = infer(capsys, work / "good.jpg", work / "boxes.json", "--model", model_path, "-o", work / "odir")
    assert_failed(code, out, err, work, "is a folder")  # (--vis DIR is a folder of drawings, by design)
    assert main(["convert", model_path, "-o", str(work / "odir")]) == 1
    assert "is a folder" in capsys.readouterr().err


def test_output_through_a_symlink_keeps_the_link(capsys, work, model_path):
    (work / "real.json").write_text(OLD)
    os.symlink("real.json", work / "link.json")
    code, _, _ = infer(capsys, work / "good.jpg", work / "boxes.json", "--model", model_path, "-o", work / "link.json")
    assert code == 0 and os.path.islink(work / "link.json") and os.readlink(work / "link.json") == "real.json"
    assert json.loads((work / "real.json").read_text())[0]["bbox"] == BOXES[0][:4]


def test_output_into_a_pipe_writes_through_it(capsys, work, model_path):
    # a FIFO stands for /dev/stdout or /dev/null: it must be written to, never replaced by a regular file
    import threading

    fifo = work / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()), daemon=True)
    reader.start()
    code, _, _ = infer(capsys, work / "good.jpg", work / "boxes.json", "--model", model_path, "-o", fifo)
    reader.join(timeout=10)
    assert code == 0 and len(json.loads(got[0])) == len(BOXES)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert not [n for n in os.listdir(work) if ".part" in n]


def test_drawing_sizes_are_bounded(capsys, work, model_path):
    for flag in ("--thickness", "--radius"):
        with pytest.raises(SystemExit) as e:
            main(["infer", str(work / "good.jpg"), str(work / "boxes.json"), "--model", model_path, "--vis",
                  str(work / "v.jpg"), flag, "32768"])
        assert e.value.code == 2 and not (work / "v.jpg").exists()
    assert "Traceback" not in capsys.readouterr().err


def test_vis_format_that_cannot_hold_colour_is_refused_before_work(capsys, work, model_path):
    code, out, err = infer(capsys, work / "good.jpg", work / "boxes.json", "--model", model_path, "--vis",
                           work / "v.pgm", "-o", work / "out.json")
    assert_failed(code, out, err, work, "v.pgm")


def test_no_opencv_log_lines_around_the_error(work, model_path):
    # a separate process: OpenCV reads its log settings once, when it loads
    import subprocess
    import sys

    (work / "fake.mp4").write_text("not a video")
    proc = subprocess.run([sys.executable, "-m", "npvitpose.cli", "infer", str(work / "fake.mp4"),
                           str(work / "boxes.json"), "--model", model_path, "-q"],  # -q: no first-run compile note
                          capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "npvitpose: error: cannot read video 'fake.mp4': OpenCV cannot open it\n".replace(
        "'fake.mp4'", repr(str(work / "fake.mp4")))


def test_interrupt_leaves_no_output(capsys, work, model_path, monkeypatch):
    import npvitpose.pipeline

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(npvitpose.pipeline, "predict", stop)
    code, out, err = infer(capsys, work / "good.jpg", work / "boxes.json", "--model", model_path,
                           "-o", work / "out.json")
    assert_failed(code, out, err, work, "interrupted")


# ------------------------------------------------------------------------------------- folders, videos


def test_folder_with_a_bad_image_in_the_middle(capsys, work, model_path):
    folder = work / "imgs"
    folder.mkdir()
    write_image(folder / "000000000001.jpg")
    (folder / "000000000002.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    write_image(folder / "000000000003.jpg")
    dets = write_json(work / "coco.json", [
        {"image_id": i, "category_id": 1, "bbox": BOXES[0][:4], "score": 1.0} for i in (1, 2, 3)
    ])
    code, _, err = infer(capsys, folder, dets, "--model", model_path, "-o", work / "out.json",
                         "--vis", work / "vis")
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 2 and "000000000002.jpg" in lines[0] and lines[1].endswith("1 of 3 inputs failed")
    assert sorted(r["image_id"] for r in results(work)) == [1, 3]  # the good images' results are written
    assert sorted(os.listdir(work / "vis")) == ["000000000001.jpg", "000000000003.jpg"]


def test_unreadable_video(capsys, work, model_path):
    (work / "clip.mp4").write_bytes(b"not a video at all")
    dets = write_json(work / "coco.json", [])
    code, out, err = infer(capsys, work / "clip.mp4", dets, "--model", model_path, "-o", work / "out.json",
                           "--vis", work / "vis.mp4")
    assert_failed(code, out, err, work, "clip.mp4")
    assert not (work / "vis.mp4").exists()


def test_video_must_be_alone(capsys, work, model_path):
    (work / "clip.mp4").write_bytes(b"")
    code, out, err = infer(capsys, work / "clip.mp4", work / "good.jpg", work / "boxes.json",
                           "--model", model_path, "-o", work / "out.json")
    assert_failed(code, out, err, work, "only input")


def test_npz_zip_bomb_member_names_do_not_crash(capsys, work, model_path):
    with zipfile.ZipFile(work / "odd.npz", "w") as z:
        z.writestr("../evil.npy", b"\x93NUMPY garbage")
    code, out, err = infer(capsys, work / "good.jpg", work / "boxes.json", "--model", work / "odd.npz",
                           "-o", work / "out.json")
    assert_failed(code, out, err, work, "odd.npz")
