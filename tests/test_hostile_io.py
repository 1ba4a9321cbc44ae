"""Hostile inputs and faults around `npvitpose infer`: names that are not UTF-8, image bombs and
truncated images, inputs that never end, huge integers, SIGTERM, a closed stdout, a full disk, outputs
that must keep their permission bits or whose temporary name would be too long. Each runs the CLI in a
limited child process: one error line and a non-zero exit (or a documented result), nothing left behind."""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib

import cv2
import numpy as np
import pytest

from hostile import ROOT, cli as _cli
from npvitpose.model import Config, random_weights, save_npz
from test_cli import BOXES, tiny_meta, write_image, write_json

TINY = Config(dim=64, depth=1, heads=2, mlp_hidden=128, num_keypoints=17, head="simple", ln_eps=1e-6)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.npz"
    save_npz(str(path), random_weights(TINY, seed=4), tiny_meta(TINY))
    return path


@pytest.fixture
def work(tmp_path):
    write_image(tmp_path / "good.jpg")
    write_json(tmp_path / "boxes.json", BOXES)
    return tmp_path


def cli(*argv, **kw):
    return _cli("infer", *argv, **kw)


def one_error(result, *needles, code=1):
    rc, out, err, seconds, peak = result
    print(f"exit {rc}, {seconds:.2f} s, peak {peak:.0f} MB: {err.strip()}")
    assert rc == code, err
    assert err.startswith("npvitpose: error: ") and err.count("\n") == 1, err
    message = re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/]+/", "", err)  # needles, not test folder names
    for needle in needles:
        assert needle in message, err
    return err


def leftovers(folder):
    return [n for n in os.listdir(folder) if ".part" in n]


# ------------------------------------------------------------------------------- names that are not UTF-8


def test_non_utf8_names_for_input_and_vis(work, model):
    bad = os.fsencode(work) + b"/a\xff.jpg"
    os.link(work / "good.jpg", bad)
    vis = os.fsencode(work) + b"/drawn\xfe.jpg"
    rc, out, err, _, _ = cli(bad, work / "boxes.json", "--model", model, "--vis", vis, "-o", work / "out.json")
    assert rc == 0, err
    assert json.loads((work / "out.json").read_text())[0]["category_id"] == 1
    drawn = cv2.imdecode(np.fromfile(os.fsdecode(vis), np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == cv2.imread(str(work / "good.jpg")).shape


def test_non_utf8_video_names(work, model):
    src = os.fsencode(work) + b"/clip\xff.avi"
    writer = cv2.VideoWriter(str(work / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    os.rename(work / "clip.avi", src)
    vis = os.fsencode(work) + b"/out\xfe.avi"
    rc, out, err, _, _ = cli(src, work / "boxes.json", "--model", model, "--vis", vis)
    assert rc == 0, err
    assert len({r["image_id"] for r in json.loads(out)}) == 3
    assert os.path.getsize(vis) > 0 and not leftovers(work)


def test_unicode_digit_names_are_not_ids(work, model):
    os.link(work / "good.jpg", work / "².jpg")
    coco = [{"image_id": 2, "category_id": 1, "bbox": BOXES[0][:4], "score": 0.9}]
    write_json(work / "coco.json", coco)
    one_error(cli(work / "².jpg", work / "coco.json", "--model", model), "cannot tell its COCO image id")


# ------------------------------------------------------------------------------- image bombs


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_jpeg_claiming_16000_squared_pixels_is_refused_from_its_header(work, model):
    """631 bytes that OpenCV decodes to 16000 x 16000 grey (1.6 GB) and processes with exit 0."""
    ok, small = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(small.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 16000, 16000)
    (work / "bomb.jpg").write_bytes(bytes(data[:-2]))  # and no end marker
    err = one_error(cli(work / "bomb.jpg", work / "boxes.json", "--model", model), "16000 x 16000")
    assert "--max-image-pixels" in err


def test_truncated_images_are_refused(work, model):
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), np.uint8)
    for ext in (".jpg", ".png", ".bmp", ".tif", ".webp", ".ppm"):
        ok, data = cv2.imencode(ext, image)
        cut = data.tobytes()[: int(len(data) * 0.6)]
        (work / f"cut{ext}").write_bytes(cut)
        one_error(cli(work / f"cut{ext}", work / "boxes.json", "--model", model), "truncated")


def test_pixel_limit_flag_and_peak_memory_of_a_huge_png(work, model):
    """A 14000 x 14000 PNG (a few hundred KB): refused by default, processed with the limit raised. OpenCV 5's
    decoder alone peaks at twice the decoded 588 MB; the pipeline adds no image-sized copy to that."""
    ok, data = cv2.imencode(".png", np.zeros((14000, 14000, 3), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    (work / "huge.png").write_bytes(data.tobytes())
    one_error(cli(work / "huge.png", work / "boxes.json", "--model", model), "over the limit")
    rc, out, err, seconds, peak = cli(work / "huge.png", work / "boxes.json", "--model", model,
                                      "--max-image-pixels", str(200_000_000), cpu_s=120)
    print(f"14000 x 14000 PNG ({len(data) >> 10} KB): exit {rc}, {seconds:.1f} s, peak {peak:.0f} MB")
    assert rc == 0, err
    assert peak < 588 * 2 + 250  # cv2.imdecode's own peak plus the interpreter, NumPy and Numba


# ------------------------------------------------------------------------------- inputs that never end


def test_dev_zero_as_boxes_fails_fast(work, model):
    os.symlink("/dev/zero", work / "zero.json")  # a boxes file is named .json
    one_error(cli(work / "good.jpg", work / "zero.json", "--model", model, cpu_s=20), "not valid JSON")


def test_endless_json_is_capped(work, model):
    code = ("import sys, npvitpose.boxes as b; b.MAX_JSON_BYTES = 1 << 20\n"
            "from npvitpose.cli import main; sys.exit(main(sys.argv[1:]))")
    from hostile import limited

    fifo = work / "endless.json"
    os.mkfifo(fifo)
    feeder = subprocess.Popen(["sh", "-c", f"(printf '['; yes '1,') > {fifo}"], stderr=subprocess.DEVNULL)
    try:
        result = limited(code, "infer", work / "good.jpg", fifo, "--model", model, cpu_s=20)
    finally:
        feeder.kill()
        feeder.wait()
    one_error(result, "larger than 1 MiB")


@pytest.mark.parametrize("where", ["coordinate", "image_id"])
def test_integers_beyond_the_digit_limit_are_user_errors(work, model, where):
    big = "9" * 5000
    if where == "coordinate":
        (work / "b.json").write_text(f"[[1, 2, {big}, 4]]")
    else:
        (work / "b.json").write_text(f'[{{"image_id": {big}, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 1}}]')
    one_error(cli(work / "good.jpg", work / "b.json", "--model", model), "b.json")


def test_image_id_flag_of_5000_digits(work, model):
    write_json(work / "coco.json", [{"image_id": 1, "category_id": 1, "bbox": BOXES[0][:4], "score": 0.9}])
    rc, out, err, _, _ = cli(work / "good.jpg", work / "coco.json", "--model", model, "--image-id", "9" * 5000)
    # no box has that id: nothing produced from a non-empty boxes file is exit 3 with a warning (README)
    assert rc == 3 and json.loads(out) == [] and "warning" in err and "Traceback" not in err, err


# ------------------------------------------------------------------------------- outputs under faults


def test_sigterm_cleans_up_and_says_so(work, model):
    (work / "out.json").write_text("old\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = ("import sys, time, npvitpose.run as r\n"
            "slow = r.process\n"
            "r.process = lambda *a, **k: (time.sleep(30), slow(*a, **k))[1]\n"
            "from npvitpose.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "infer", work / "good.jpg", work / "boxes.json",
                             "--model", model, "-o", work / "out.json", "--vis", work / "drawn.jpg"],
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    time.sleep(6)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.decode().strip() == "npvitpose: error: terminated (SIGTERM)"
    assert (work / "out.json").read_text() == "old\n" and not leftovers(work)


def test_closed_stdout_is_one_line(work, model):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    reader = subprocess.Popen(["head", "-c0"], stdin=subprocess.PIPE)
    proc = subprocess.run([sys.executable, "-m", "npvitpose.cli", "infer", work / "good.jpg", work / "boxes.json",
                           "--model", model], env=env, stdout=reader.stdin, stderr=subprocess.PIPE, timeout=120)
    reader.stdin.close()
    reader.wait()
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err.count("\n") == 1 and "standard output was closed" in err, err


def test_replacing_an_output_keeps_its_permission_bits(work, model):
    (work / "out.json").write_text("old\n")
    os.chmod(work / "out.json", 0o640)
    rc, out, err, _, _ = cli(work / "good.jpg", work / "boxes.json", "--model", model, "-o", work / "out.json")
    assert rc == 0, err
    assert (work / "out.json").stat().st_mode & 0o777 == 0o640


def test_long_output_names(work, model):
    limit = os.pathconf(work, "PC_NAME_MAX")
    fits = work / ("o" * (limit - 5) + ".json")  # valid, but its old temporary name was not
    rc, out, err, _, _ = cli(work / "good.jpg", work / "boxes.json", "--model", model, "-o", fits)
    assert rc == 0 and fits.exists(), err
    too_long = work / ("o" * limit + ".json")
    one_error(cli(work / "good.jpg", work / "boxes.json", "--model", model, "-o", too_long), "longer than")


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MiB tmpfs (root only); skipped where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_disk_while_writing_a_video(work, model, full_disk):
    writer = cv2.VideoWriter(str(work / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (640, 480))
    noise = np.random.default_rng(1)
    for _ in range(12):
        writer.write(noise.integers(0, 256, (480, 640, 3), np.uint8))  # ~0.5 MB a frame in MJPG
    writer.release()
    one_error(cli(work / "clip.avi", work / "boxes.json", "--model", model, "--vis", full_disk / "out.avi",
                  cpu_s=120), "out.avi")
    assert os.listdir(full_disk) == []


def test_full_disk_while_writing_json(work, model, full_disk):
    (full_disk / "filler").write_bytes(b"x" * ((2 << 20) - 4096))
    boxes = [[10 + i % 50, 10, 50, 100] for i in range(300)]
    write_json(work / "many.json", boxes)
    one_error(cli(work / "good.jpg", work / "many.json", "--model", model, "-o", full_disk / "out.json",
                  "--no-flip", cpu_s=120), "space")
    assert sorted(os.listdir(full_disk)) == ["filler"]
