"""npvitpose.Detector (cv2.dnn) against onnxruntime + YOLOX's post-processing on the same ONNX files and photos."""

import hashlib
import os
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnxruntime as ort
import pytest

import detector_models as D
from npvitpose import detector as det_mod
from npvitpose.detector import Detector, onnx_summary, parse_size, whole_image
from npvitpose.errors import NpvitposeError
from test_cli import model_path  # noqa: F401 - a fixture
from test_cli import run as cli_run

SIZE = (192, 256)  # (H, W): not square, so a swapped grid would show


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("det")
    return {
        "yolox": D.export(folder / "yolox.onnx", "yolox", SIZE),
        "ultralytics": D.export(folder / "ultra.onnx", "ultralytics", SIZE, seed=1),
        "dynamic": D.export(folder / "dynamic.onnx", "yolox", SIZE, dynamic=True, seed=2),
        "decoded": D.export(folder / "decoded.onnx", "decoded", SIZE, seed=3),
    }


def _match(boxes, ref, tol):
    """Every reference box has its own box within `tol` px (order may differ between near-equal scores)."""
    assert boxes.shape == ref.shape
    dist = np.abs(ref[:, None, :] - boxes[None]).max(axis=2)  # (ref, ours)
    best = dist.argmin(axis=1)
    assert len(set(best.tolist())) == len(ref)
    return dist[np.arange(len(ref)), best].max(initial=0.0)


@pytest.mark.parametrize("layout,thr", [("yolox", 0.5), ("ultralytics", 0.95), ("decoded", 0.5)])
def test_boxes_equal_reference_on_photos(files, layout, thr):
    session = ort.InferenceSession(files[layout])
    detector = Detector(files[layout], score_thr=thr, nms_thr=0.45)
    assert (detector.height, detector.width) == SIZE  # read from the file
    for name, rgb in D.photos().items():
        ref, ref_scores, candidates = D.reference_boxes(session, np.ascontiguousarray(rgb[:, :, ::-1]), SIZE,
                                                        thr, 0.45, layout)
        assert candidates.std() > 0.01 and 3 <= len(ref) < len(candidates), name  # outputs are not constant
        boxes, scores = detector(rgb)
        assert _match(boxes, ref, 0.1) <= 0.1, name
        np.testing.assert_allclose(np.sort(scores), np.sort(ref_scores), atol=1e-4)
        bgr_boxes, _ = detector(np.ascontiguousarray(rgb[:, :, ::-1]), color="bgr")
        np.testing.assert_array_equal(bgr_boxes, boxes)


def test_dynamic_export_at_chosen_size(files):
    size = (224, 320)
    detector = Detector(files["dynamic"], size="320x224", score_thr=0.5, nms_thr=0.45)
    session = ort.InferenceSession(files["dynamic"])
    rgb = D.photos()["astronaut"]
    ref, _, _ = D.reference_boxes(session, np.ascontiguousarray(rgb[:, :, ::-1]), size, 0.5, 0.45)
    assert len(ref) >= 3
    assert _match(detector(rgb)[0], ref, 0.1) <= 0.1
    assert (Detector(files["dynamic"]).height, Detector(files["dynamic"]).width) == (640, 640)


def test_thresholds(files):
    rgb = D.photos()["coffee"]
    loose, loose_scores = Detector(files["yolox"], score_thr=0.3, nms_thr=0.9)(rgb)
    strict, strict_scores = Detector(files["yolox"], score_thr=0.6, nms_thr=0.3)(rgb)
    assert len(strict) < len(loose) and strict_scores.min() >= 0.6
    empty, empty_scores = Detector(files["yolox"], score_thr=1.0)(rgb)
    assert empty.shape == (0, 4) and empty_scores.shape == (0,)


def test_onnx_summary_reads_shapes(files):
    inputs, outputs, ops = onnx_summary(files["yolox"])
    assert inputs == [("images", [1, 3, 192, 256])]
    assert outputs[0][1] == [1, 1008, 85] and "Conv" in ops
    dyn_inputs, _, _ = onnx_summary(files["dynamic"])
    assert dyn_inputs[0][1] == [1, 3, "height", "width"]


def test_refusals_are_one_line(tmp_path, files):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    boxes = helper.make_tensor("boxes", TensorProto.FLOAT, [1, 2, 4], [0, 0, 1, 1, 0, 0, 1, 1])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["b"], value=boxes),
         helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=0),
         helper.make_node("Reshape", ["m", "shape"], ["s"]),
         helper.make_node("NonMaxSuppression", ["b", "s"], ["selected"])],
        "nms", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])],
        [helper.make_tensor("shape", TensorProto.INT64, [3], [1, 1, 1])])
    nms_file = tmp_path / "nms.onnx"
    onnx.save(helper.make_model(graph), str(nms_file))
    with pytest.raises(NpvitposeError, match="NMS inside"):
        Detector(str(nms_file))

    data = open(files["yolox"], "rb").read()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.onnx").write_text("not a model\n")
    for bad in ("cut.onnx", "text.onnx"):
        with pytest.raises(NpvitposeError) as e:
            Detector(str(tmp_path / bad))
        assert "\n" not in str(e.value)
    with pytest.raises(NpvitposeError, match="not found"):
        Detector(str(tmp_path / "missing.onnx"))
    with pytest.raises(NpvitposeError, match="unknown detector"):
        Detector("yolox-huge")
    with pytest.raises(NpvitposeError, match="from 0 to 1"):
        Detector(files["yolox"], score_thr=2)
    with pytest.raises(NpvitposeError, match="multiples of 32"):
        parse_size("100")
    assert parse_size("320x224") == (224, 320) and parse_size("64") == (64, 64)


def test_wrong_output_layout_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "classifier.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Conv2d(3, 8, 3, 32), torch.zeros(1, 3, 64, 64), str(path), dynamo=False,
                          input_names=["images"], output_names=["out"])
    with pytest.raises(NpvitposeError, match="neither YOLOX"):
        Detector(str(path))(np.zeros((50, 60, 3), np.uint8))


def test_whole_image_box():
    boxes, scores = whole_image((120, 200, 3))
    np.testing.assert_array_equal(boxes, [[0, 0, 200, 120]])
    np.testing.assert_array_equal(scores, [1.0])


class _Files(BaseHTTPRequestHandler):
    payload = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = self.payload.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_published_detector_downloads_once_and_checks_sha(tmp_path, files, server, monkeypatch, capsys):
    httpd, url = server
    body = open(files["yolox"], "rb").read()
    _Files.payload = {"/det.onnx": body, "/opencv/zoo/resolve/main/zoo.onnx": body}
    sha = hashlib.sha256(body).hexdigest()
    monkeypatch.setitem(det_mod.DETECTORS, "tiny", det_mod.Source(f"{url}/det.onnx", "tiny.onnx", sha, 192, "test"))
    monkeypatch.setitem(det_mod.DETECTORS, "hub", det_mod.Source("hf:opencv/zoo/zoo.onnx", "zoo.onnx", sha, 192, "t"))
    monkeypatch.setitem(det_mod.DETECTORS, "bad", det_mod.Source(f"{url}/det.onnx", "bad.onnx", "0" * 64, 192, "t"))
    cache = tmp_path / "cache"
    first = Detector("tiny", cache=str(cache))
    assert first.path == str(cache / "detectors" / "tiny.onnx") and os.path.getsize(first.path) == len(body)
    assert "downloading it once" in capsys.readouterr().err
    _Files.payload = {}
    Detector("tiny", cache=str(cache))  # cached: no request needed
    assert capsys.readouterr().err == ""
    _Files.payload = {"/opencv/zoo/resolve/main/zoo.onnx": body}
    monkeypatch.setenv("HF_ENDPOINT", url)
    assert os.path.exists(Detector("hub", cache=str(cache)).path)
    code, out, _ = cli_run(capsys, "fetch", "tiny", "--cache", tmp_path / "other")  # the fetch command too
    assert code == 1  # served nothing now
    _Files.payload = {"/det.onnx": body}
    code, out, err = cli_run(capsys, "fetch", "tiny", "--cache", tmp_path / "other")
    assert code == 0 and out.strip() == str(tmp_path / "other" / "detectors" / "tiny.onnx"), err
    assert "yolox-s" in cli_run(capsys, "fetch", "--list")[1]
    with pytest.raises(NpvitposeError, match="checksum mismatch"):
        Detector("bad", cache=str(cache))
    assert not os.path.exists(cache / "detectors" / "bad.onnx")
    _Files.payload = {}
    monkeypatch.setitem(det_mod.DETECTORS, "gone", det_mod.Source(f"{url}/gone.onnx", "gone.onnx", None, 192, "t"))
    with pytest.raises(NpvitposeError, match="offline: put the file at"):
        Detector("gone", cache=str(cache))


def test_default_detector_is_apache_yolox():
    source = det_mod.DETECTORS[det_mod.DEFAULT_DETECTOR]
    assert "Apache-2.0" in source.licence and len(source.sha256) == 64 and source.size == 640


# ------------------------------------------------------------------------------------------ CLI and API


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    import cv2

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"  # lossless: the reference reads the same pixels
    cv2.imwrite(str(path), np.ascontiguousarray(D.photos()["astronaut"][:, :, ::-1]))
    return str(path)


def test_infer_without_boxes_detects_people(tmp_path, capsys, files, model_path, photo):
    import cv2
    import json

    out, vis = tmp_path / "out.json", tmp_path / "vis.jpg"
    code, _, err = cli_run(capsys, "infer", photo, "-o", out, "--vis", vis, "--model", model_path,
                        "--detector", files["yolox"], "--det-thr", "0.5", "--det-nms-thr", "0.45", "--draw-bbox")
    assert code == 0, err
    records = json.loads(out.read_text())
    session = ort.InferenceSession(files["yolox"])
    ref, ref_scores, _ = D.reference_boxes(session, cv2.imread(photo), SIZE, 0.5, 0.45)
    got = np.array([r["bbox"] for r in records])
    assert len(records) == len(ref) >= 3 and _match(got, ref, 0.1) <= 0.1  # detector boxes go in unchanged
    assert cv2.imread(str(vis)).shape == (512, 512, 3)

    code, _, err = cli_run(capsys, "infer", photo, "-o", out, "--model", model_path, "--detector", files["yolox"],
                        "--det-thr", "0.5", "--det-nms-thr", "0.45", "--bbox-thr", "0.7")
    assert code == 0, err
    assert len(json.loads(out.read_text())) == int((ref_scores >= 0.7).sum()) < len(ref)


def test_whole_image_and_conflicting_sources(tmp_path, capsys, files, model_path, photo):
    import json

    out = tmp_path / "out.json"
    code, _, err = cli_run(capsys, "infer", photo, "-o", out, "--model", model_path, "--whole-image")
    assert code == 0, err
    (record,) = json.loads(out.read_text())
    assert record["bbox"] == [0, 0, 512, 512]
    boxes = tmp_path / "b.json"
    boxes.write_text("[[10, 10, 50, 100]]")
    for extra in (["--whole-image"], ["--detector", files["yolox"]]):
        with pytest.raises(SystemExit) as e:
            cli_run(capsys, "infer", photo, boxes, "--model", model_path, *extra)
        assert e.value.code == 2 and "not both" in capsys.readouterr().err
    code, _, err = cli_run(capsys, "infer", photo, "--model", model_path, "--detector", tmp_path / "none.onnx")
    assert code == 1 and "detector file not found" in err and err.count("\n") == 1


def test_default_detector_offline_is_one_line(tmp_path, capsys, model_path, photo, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    out = tmp_path / "out.json"
    code, _, err = cli_run(capsys, "infer", photo, "-o", out, "--model", model_path, "--cache", tmp_path / "cache")
    assert code == 1 and "offline" in err and "--whole-image" in err
    assert err.strip().splitlines()[-1].startswith("npvitpose: error: ") and not out.exists()


def test_model_call_without_boxes_runs_its_detector(files, model_path, photo):
    from npvitpose.model import load

    model = load(model_path)
    model.detector = Detector(files["yolox"], score_thr=0.5)
    boxes, _ = model.detector(photo)
    keypoints, scores = model(photo)
    expect_k, expect_s = model(photo, boxes)
    assert keypoints.shape == (len(boxes), 17, 2)
    np.testing.assert_array_equal(keypoints, expect_k)
    np.testing.assert_array_equal(scores, expect_s)


def test_detector_pickles_without_its_net(files):
    import pickle

    detector = Detector(files["yolox"], score_thr=0.5)
    clone = pickle.loads(pickle.dumps(detector))  # a Dask worker gets it this way
    rgb = D.photos()["coffee"]
    np.testing.assert_array_equal(clone(rgb)[0], detector(rgb)[0])


def test_channel_order_follows_the_published_file(files, monkeypatch):
    body = open(files["yolox"], "rb").read()
    source = det_mod.Source("hf:x/y.onnx", "y.onnx", hashlib.sha256(body).hexdigest(), 192, "t", rgb=True)
    monkeypatch.setitem(det_mod.DETECTORS, "rgb-published", source)
    detector = Detector(files["yolox"], score_thr=0.5, nms_thr=0.45)  # a path, recognised by its sha256
    assert detector.rgb and not Detector(files["yolox"], rgb=False).rgb
    rgb = D.photos()["chelsea"]
    session = ort.InferenceSession(files["yolox"])
    ref, _, _ = D.reference_boxes(session, rgb, SIZE, 0.5, 0.45)  # the network fed RGB
    assert len(ref) >= 3 and _match(detector(rgb)[0], ref, 0.1) <= 0.1
    assert det_mod.DETECTORS["yolox-s"].rgb  # OpenCV Zoo's file, fed as OpenCV Zoo feeds it


def test_bad_detector_flags(tmp_path, capsys, files, model_path, photo):
    with pytest.raises(SystemExit) as e:
        cli_run(capsys, "infer", photo, "--model", model_path, "--detector", files["yolox"], "--det-thr", "2")
    assert e.value.code == 2 and "from 0 to 1" in capsys.readouterr().err
    code, _, err = cli_run(capsys, "infer", photo, "--model", model_path, "--detector", files["yolox"],
                           "--det-size", "100", "-o", tmp_path / "o.json")
    assert code == 1 and "multiples of 32" in err and err.count("\n") == 1 and not (tmp_path / "o.json").exists()
