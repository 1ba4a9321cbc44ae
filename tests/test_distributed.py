"""`--dask` and `npvitpose.distributed` against the single-process run, on a LocalCluster the tests start
(worker processes, loopback only) with a tiny random model. The reference is the single-process command:
the distributed output must be the same bytes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

pytest.importorskip("distributed")

from distributed import Client, LocalCluster  # noqa: E402

from npvitpose import distributed as D  # noqa: E402
from npvitpose.cli import main  # noqa: E402
from npvitpose.errors import NpvitposeError  # noqa: E402
from npvitpose.model import load, random_weights, save_npz  # noqa: E402
from npvitpose.pipeline import CHUNK, predict, predict_stream  # noqa: E402
from npvitpose.run import Detections, Options, Runner  # noqa: E402
from npvitpose.run import run as run_single  # noqa: E402
from test_cli import TINY, synthetic_image, tiny_meta, write_image, write_json  # noqa: E402


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.npz"
    save_npz(str(path), random_weights(TINY, seed=1), tiny_meta())
    return str(path)


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      scheduler_kwargs=D.LOOPBACK_HTTP, silence_logs=40) as cluster, \
            Client(cluster, set_as_default=False) as c:
        yield c


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def person_boxes(count, seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 200, (count, 2))
    wh = rng.uniform(30, 150, (count, 2))
    return np.concatenate([xy, wh], axis=1)


def coco(groups):
    """{image_id: boxes (N, 4)} -> COCO detection results, scores falling with the box index."""
    return [{"image_id": i, "category_id": 1, "bbox": [float(v) for v in box], "score": round(0.95 - 0.1 * j, 2)}
            for i, boxes in groups.items() for j, box in enumerate(boxes)]


def folder(tmp_path, people):
    """Images 0..n-1 named by COCO id with people[i] boxes each, plus one undecodable file in the middle."""
    root = tmp_path / "frames"
    root.mkdir()
    groups = {}
    for i, n in enumerate(people):
        write_image(root / f"{i:012d}.jpg", synthetic_image(seed=i))
        groups[i] = person_boxes(n, seed=i)
    (root / f"{len(people) // 2:012d}.png").write_text("not an image")  # named by an id, so it fails on reading
    return root, write_json(tmp_path / "dets.json", coco(groups))


def write_video(path, fourcc, frames, seed):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (320, 240))
    for i in range(frames):
        writer.write(np.ascontiguousarray(synthetic_image(seed=seed + i)[:, :, ::-1]))
    writer.release()
    return str(path)


def test_predict_stream_equals_predict_per_image(model_path):
    model = load(model_path)
    counts = [0, 3, 1, CHUNK + 5, 2, 0, CHUNK]  # pieces straddle forwards; empty images in between
    images = [synthetic_image(seed=s) for s in range(len(counts))]
    boxes = [person_boxes(n, seed=s) for s, n in enumerate(counts)]
    for flip in (True, False):
        items = ((i, img, b, None) for i, (img, b) in enumerate(zip(images, boxes)))
        got = list(predict_stream(model, items, flip=flip))
        assert [g[0] for g in got] == list(range(len(counts)))
        for (_, _, keypoints, scores), img, b in zip(got, images, boxes):
            want_kp, want_sc = predict(model, img, b, flip=flip)
            assert keypoints.shape == want_kp.shape
            np.testing.assert_array_equal(keypoints, want_kp)  # bit for bit: every crop is computed on its own
            np.testing.assert_array_equal(scores, want_sc)


def test_split_fills_tasks_and_every_worker():
    assert D.split([1.0] * 10, parts=1, most=4) == [(0, 4), (4, 8), (8, 10)]
    assert D.split([1.0] * 10, parts=5, most=64) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]  # small job: all busy
    assert D.split([0.25, 100.0, 0.25], parts=2, most=64) == [(0, 2), (2, 3)]  # one heavy item makes its own task
    assert D.split([], parts=2) == []


def test_folder_and_vis_same_bytes_as_single_process(tmp_path, capsys, model_path, client):
    images, dets = folder(tmp_path, [2, 0, 5, 1, 3, 1, 0, 4])
    single = ["infer", images, dets, "--model", model_path, "--nms-thr", "0.9"]
    code1, _, err1 = cli(capsys, *single, "-o", tmp_path / "one.json", "--vis", tmp_path / "vis1")
    address = client.scheduler.address
    code2, _, err2 = cli(capsys, *single, "-o", tmp_path / "dask.json", "--vis", tmp_path / "vis2", "--dask", address)
    assert code1 == code2 == 1  # the broken image is reported and skipped by both
    assert err1 == err2 and "000000000004.png" in err2 and "1 of 9 inputs failed" in err2
    assert (tmp_path / "dask.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    drawn = sorted(os.listdir(tmp_path / "vis1"))
    assert len(drawn) == 8 and sorted(os.listdir(tmp_path / "vis2")) == drawn
    for name in drawn:
        assert (tmp_path / "vis2" / name).read_bytes() == (tmp_path / "vis1" / name).read_bytes()


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_precision_on_workers_same_bytes_as_single_process(tmp_path, capsys, model_path, client, precision):
    images, dets = folder(tmp_path, [2, 1, 3])
    single = ["infer", images, dets, "--model", model_path, "--precision", precision]
    assert cli(capsys, *single, "-o", tmp_path / "one.json")[0] == 1  # the broken image, as above
    assert cli(capsys, *single, "-o", tmp_path / "dask.json", "--dask", client.scheduler.address)[0] == 1
    assert (tmp_path / "dask.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    fp32 = tmp_path / "fp32.json"
    assert cli(capsys, "infer", images, dets, "--model", model_path, "-o", fp32, "--dask", client.scheduler.address)[0] == 1
    assert fp32.read_bytes() != (tmp_path / "one.json").read_bytes()  # the workers did run the other precision


def test_video_local_cluster_same_bytes_as_single_process(tmp_path, capsys, model_path):
    video = write_video(tmp_path / "clip.avi", "MJPG", 30, seed=100)
    dets = write_json(tmp_path / "dets.json", coco({f: person_boxes(f % 4, seed=f) for f in range(30) if f != 7}))
    base = ["infer", video, dets, "--model", model_path]
    code1, _, err1 = cli(capsys, *base, "-o", tmp_path / "one.json", "--vis", tmp_path / "one.avi")
    code2, _, err2 = cli(capsys, *base, "-o", tmp_path / "dask.json", "--vis", tmp_path / "dask.avi",
                         "--dask", "local:2")
    assert code1 == code2 == 0, err2
    one = (tmp_path / "one.json").read_bytes()
    assert (tmp_path / "dask.json").read_bytes() == one
    assert {r["image_id"] for r in json.loads(one)} == {f for f in range(30) if f % 4 and f != 7}
    assert (tmp_path / "dask.avi").read_bytes() == (tmp_path / "one.avi").read_bytes()


def test_streamed_whole_image_folder_and_det_every_video_same_bytes(tmp_path, capsys, model_path, client):
    images, _ = folder(tmp_path, [0, 0, 0])  # boxes from a source of its own (the whole image), on the workers
    video = write_video(tmp_path / "clip.avi", "MJPG", 14, seed=300)
    dets = write_json(tmp_path / "dets.json", coco({f: person_boxes(1 + f % 2, f) for f in range(14)}))
    address = client.scheduler.address
    for job in (["infer", images, "--whole-image"], ["infer", video, dets, "--det-every", "3", "--track", "oks"]):
        outputs = []
        for extra in ([], ["--dask", address]):
            out = tmp_path / f"out{len(outputs)}.jsonl"  # streamed: one line per image or frame, in order
            code, _, err = cli(capsys, *job, "--model", model_path, "-o", out, *extra)
            outputs.append((code, err, out.read_bytes()))
        assert outputs[0] == outputs[1] and outputs[0][2].count(b"\n") in (3, 14)


def test_video_ranges_without_vis_match(tmp_path, model_path, client):
    video = write_video(tmp_path / "clip.mp4", "mp4v", 25, seed=200)
    dets = Detections(write_json(tmp_path / "dets.json", coco({f: person_boxes(1 + f % 2, f) for f in range(25)})))
    want, failed = run_single(Runner(load(model_path)), dets, [video])
    got = D.infer(client, video, dets, model=model_path, task_people=6)  # several ranges, each after a seek
    assert failed == 0 and got == want and len(got) == sum(1 + f % 2 for f in range(25))


def test_detector_boxes_travel_to_workers(tmp_path, capsys, model_path, client):
    import detector_models

    images, _ = folder(tmp_path, [1, 1, 1])
    onnx = detector_models.export(tmp_path / "det.onnx", "yolox", (192, 256))
    single = ["infer", images, "--model", model_path, "--detector", onnx, "--det-thr", "0.5"]
    code1, _, err1 = cli(capsys, *single, "-o", tmp_path / "one.json")
    code2, _, err2 = cli(capsys, *single, "-o", tmp_path / "dask.json", "--dask", client.scheduler.address)
    assert code1 == code2 == 1 and err1 == err2  # the broken image, as above
    one = (tmp_path / "one.json").read_bytes()
    assert (tmp_path / "dask.json").read_bytes() == one and len(json.loads(one)) > 3


def test_api_reports_failures_in_order_or_raises(tmp_path, model_path, client):
    images, dets = folder(tmp_path, [1, 2, 1])
    inputs = sorted(str(p) for p in images.iterdir())
    seen = []
    records = D.infer(client, inputs, dets, model=model_path, on_error=lambda path, message: seen.append(path))
    assert seen == [p for p in inputs if p.endswith(".png")] and len(records) == 4
    assert {r["image_id"] for r in records} == {0, 1, 2}
    with pytest.raises(NpvitposeError, match=r"000000000001\.png"):
        D.infer(client, inputs, dets, model=model_path)


def test_worker_without_the_model_is_one_clear_error(tmp_path, client):
    plugin = D.ModelPlugin(str(tmp_path / "missing.npz"))
    with pytest.raises(NpvitposeError, match="worker tcp://127.0.0.1:.*missing.npz"):
        client.register_plugin(plugin, name=plugin.name)
    client.unregister_worker_plugin(plugin.name)


def test_unreachable_scheduler_is_one_line(tmp_path, capsys, model_path):
    image = write_image(tmp_path / "in.jpg")
    dets = write_json(tmp_path / "dets.json", [[40.0, 30.0, 80.0, 160.0, 0.9]])
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    code, out, err = cli(capsys, "infer", image, dets, "--model", model_path, "-o", tmp_path / "out.json",
                         "--dask", f"tcp://127.0.0.1:{port}", "--dask-timeout", "1")
    assert time.monotonic() - start < 15
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith(f"npvitpose: error: cannot reach the Dask scheduler at 'tcp://127.0.0.1:{port}'")
    assert not (tmp_path / "out.json").exists()
    for bad in ("foo://1.2.3.4:5", "local:0", "local:x"):
        code, _, err = cli(capsys, "infer", image, dets, "--model", model_path, "--dask", bad)
        assert code == 1 and err.count("\n") == 1 and err.startswith("npvitpose: error: --dask"), err


def test_cluster_without_workers_gives_up(tmp_path, model_path):
    image = write_image(tmp_path / "in.jpg")
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None, scheduler_kwargs=D.LOOPBACK_HTTP) as cluster, \
            Client(cluster, set_as_default=False) as c:
        with pytest.raises(NpvitposeError, match="no Dask worker joined"):
            D.infer(c, image, [[40.0, 30.0, 80.0, 160.0]], model=model_path, timeout=0.5)


def test_dask_is_imported_only_by_distributed():
    probe = ("import sys, npvitpose, npvitpose.cli, npvitpose.run, npvitpose.pipeline; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'distributed'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_worker_killed_mid_run_loses_and_doubles_nothing(tmp_path, model_path, client):
    images, dets = folder(tmp_path, [2] * 30)
    inputs = sorted(str(p) for p in images.iterdir() if p.suffix != ".png")
    want, _ = run_single(Runner(load(model_path)), Detections(dets), inputs)
    pids = client.run(os.getpid)
    killed = []

    class KillOnFirstResult:
        """When the first task's result is in, SIGKILL a worker that is running or holding others."""

        def update(self, n):
            if killed:
                return
            busy = [w for w, keys in client.processing().items() if keys] + list(client.has_what())
            victim = busy[0]
            killed.append((victim, sum(len(k) for k in client.processing().values())))
            os.kill(pids[victim], signal.SIGKILL)

    got, failed = D.run(client, inputs, Detections(dets), model_path, Options(), None, pytest.fail,
                        progress=KillOnFirstResult(), task_people=4)
    assert killed and killed[0][1] > 0  # the kill came while tasks were still running
    assert failed == 0 and got == want  # every record once, in order
    client.wait_for_workers(2, timeout=60)  # the nanny brought the worker back
