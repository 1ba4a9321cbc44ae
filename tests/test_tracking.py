"""Track ids, carried boxes and One-Euro smoothing: synthetic trajectories with known answers, a reference
One-Euro filter written here from the paper's formulas, and the video path of the CLI end to end."""

import json
import math

import cv2
import numpy as np
import pytest

from npvitpose import run as run_module
from npvitpose.datasets import DATASETS
from npvitpose.errors import NpvitposeError
from npvitpose.tracking import OneEuro, OneEuroParams, Smoother, Tracker, boxes_from_keypoints, iou_xywh
from test_cli import model_path  # noqa: F401 - a fixture
from test_cli import run as cli_run
from test_cli import synthetic_image

SIGMAS = np.array(DATASETS["coco"].sigmas)


def person(x, y, w=40.0, h=100.0, k=17, seed=0):
    """A box and keypoints spread inside it."""
    rng = np.random.default_rng(seed)
    return np.array([x, y, w, h]), np.stack([x + rng.uniform(0, w, k), y + rng.uniform(0, h, k)], axis=1)


def test_iou_known_values():
    np.testing.assert_allclose(iou_xywh([0, 0, 10, 10], [[5, 0, 10, 10], [0, 0, 10, 10], [20, 20, 5, 5]]),
                               [50 / 150, 1.0, 0.0])


def test_ids_follow_people_whatever_the_detection_order():
    tracker = Tracker()
    seen = []
    for t in range(12):
        a, ka = person(10 + 3 * t, 20, seed=1)  # walks right
        b, kb = person(200 - 3 * t, 30, seed=2)  # walks left
        people = [(a, ka, "a"), (b, kb, "b")]
        if t >= 5:
            c, kc = person(100, 150 + t, seed=3)  # enters at frame 5
            people.append((c, kc, "c"))
        order = np.random.default_rng(t).permutation(len(people))  # detection order changes every frame
        people = [people[i] for i in order]
        ids = tracker.update(np.array([p[0] for p in people]), np.array([p[1] for p in people]))
        seen.append(dict(zip([p[2] for p in people], ids.tolist())))
    first = seen[0]
    assert sorted(first.values()) == [0, 1]
    assert all(frame["a"] == first["a"] and frame["b"] == first["b"] for frame in seen)
    assert {frame["c"] for frame in seen[5:]} == {2}


def test_a_lost_person_gets_a_new_id_and_a_jump_is_not_matched():
    tracker = Tracker(thr=0.3)
    box, kpts = person(0, 0)
    assert tracker.update(box[None], kpts[None]).tolist() == [0]
    assert tracker.update(np.zeros((0, 4)), np.zeros((0, 17, 2))).tolist() == []
    assert tracker.update(box[None], kpts[None]).tolist() == [1]  # matching is frame to frame, as mmpose
    far, far_k = person(300, 0)
    assert tracker.update(far[None], far_k[None]).tolist() == [2]


def test_greedy_order_decides_between_two_candidates():
    # mmpose's greedy rule: the first person of the frame takes its best match even if a later one overlaps more
    tracker = Tracker(thr=0.1)
    old = np.array([[0.0, 0, 100, 100]])
    tracker.update(old, np.zeros((1, 17, 2)))
    new = np.array([[50.0, 0, 100, 100], [10.0, 0, 100, 100]])
    assert tracker.update(new, np.zeros((2, 17, 2))).tolist() == [0, 1]


def _oks_reference(a, b, area_a, area_b):
    """mmpose's oks_iou for one pair: mean over keypoints of exp(-d^2 / (2 ((a_a + a_b) / 2) (2 sigma)^2))."""
    d2 = ((a - b) ** 2).sum(axis=1)
    return float(np.mean(np.exp(-d2 / ((2 * SIGMAS) ** 2) / ((area_a + area_b) / 2 + np.spacing(1)) / 2)))


def test_oks_tracking_uses_keypoints_not_boxes():
    box_a, ka = person(0, 0, 100, 200, seed=4)
    box_b, kb = person(0, 0, 100, 200, seed=5)  # the same box, other keypoints
    tracker = Tracker("oks", 0.3, SIGMAS)
    assert tracker.update(np.stack([box_a, box_b]), np.stack([ka, kb])).tolist() == [0, 1]
    # next frame: both boxes identical again, order swapped, keypoints moved 1 px: OKS tells them apart
    ids = tracker.update(np.stack([box_b, box_a]), np.stack([kb + 1, ka + 1]))
    assert ids.tolist() == [1, 0]
    iou_ids = Tracker("iou").update(np.stack([box_a, box_b]), np.stack([ka, kb]))
    assert iou_ids.tolist() == [0, 1]
    assert _oks_reference(ka + 1, ka, 20000, 20000) > 0.9 > _oks_reference(ka + 1, kb, 20000, 20000)
    with pytest.raises(NpvitposeError, match="sigmas"):
        Tracker("oks")
    with pytest.raises(NpvitposeError, match="tracking method"):
        Tracker("hungarian")


def test_boxes_from_keypoints_known_answer():
    kpts = np.array([[[10.0, 20], [30, 60], [20, 40], [500, 500]], [[0, 0], [1, 1], [2, 2], [3, 3]]])
    scores = np.array([[0.9, 0.8, 0.5, 0.1], [0.9, 0.1, 0.1, 0.1]])
    boxes, keep = boxes_from_keypoints(kpts, scores, kpt_thr=0.3)
    assert keep.tolist() == [True, False]  # the second has one confident keypoint: lost
    # keypoints 10..30 x 20..60 (the 0.1-score one ignored), grown 1.25x about (20, 40)
    np.testing.assert_allclose(boxes[0], [7.5, 15.0, 25.0, 50.0])


def _one_euro_reference(samples, min_cutoff, beta, d_cutoff, rate=1.0):
    """The 1-Euro filter of Casiez, Roussel and Vogel (CHI 2012), one scalar signal, written from the paper:
    alpha(fc) = 1 / (1 + tau / Te), tau = 1 / (2 pi fc); dx_hat = LPF_{d_cutoff}(dx);
    fc = min_cutoff + beta |dx_hat|; x_hat = LPF_fc(x). The first sample initialises both filters."""
    te = 1.0 / rate

    def alpha(fc):
        tau = 1.0 / (2 * math.pi * fc)
        return 1.0 / (1.0 + tau / te)

    out, x_prev, dx_prev = [], None, 0.0
    for x in samples:
        if x_prev is None:
            x_prev = x
            out.append(x)
            continue
        dx = (x - x_prev) * rate
        dx_hat = alpha(d_cutoff) * dx + (1 - alpha(d_cutoff)) * dx_prev
        x_hat = alpha(min_cutoff + beta * abs(dx_hat)) * x + (1 - alpha(min_cutoff + beta * abs(dx_hat))) * x_prev
        out.append(x_hat)
        x_prev, dx_prev = x_hat, dx_hat
    return np.array(out)


def test_one_euro_matches_the_paper():
    rng = np.random.default_rng(0)
    t = np.arange(60)
    signal = np.stack([100 + 40 * np.sin(t / 6), 50 + 2 * t], axis=1)[:, None, :] + rng.normal(0, 2, (60, 3, 2))
    for params in (OneEuroParams(), OneEuroParams(min_cutoff=1.0, beta=0.05, d_cutoff=1.0)):
        f = OneEuro(params)
        ours = np.stack([f(frame) for frame in signal])
        for j in range(3):
            for c in range(2):
                ref = _one_euro_reference(signal[:, j, c], params.min_cutoff, params.beta, params.d_cutoff)
                np.testing.assert_allclose(ours[:, j, c], ref, rtol=0, atol=1e-9)


def test_one_euro_known_behaviour():
    f = OneEuro()
    still = np.full((5, 2), 7.0)
    assert all(np.array_equal(f(still), still) for _ in range(10))  # a constant signal stays put
    rng = np.random.default_rng(1)
    # mmpose's parameters damp sub-pixel tremor of a still point and let larger moves through
    jitter = 100 + rng.normal(0, 0.1, (300, 1))
    f = OneEuro()
    smooth = np.array([f(v) for v in jitter])
    assert smooth[20:].std() < 0.6 * jitter[20:].std()
    f = OneEuro()
    ramp = np.array([f(np.array([10.0 * i])) for i in range(100)])
    assert abs(ramp[-1, 0] - 990.0) < 20.0  # fast motion is followed with little lag (beta)


def test_smoother_keeps_one_filter_per_track():
    smoother = Smoother()
    a, b = np.zeros((17, 2)), np.full((17, 2), 100.0)
    smoother([0, 1], np.stack([a, b]))
    out = smoother([1, 0], np.stack([b + 10, a + 10]))
    ref = OneEuro()
    ref(b)
    np.testing.assert_allclose(out[0], ref(b + 10), atol=1e-4)
    fresh = smoother([5], (a + 50)[None])  # a new track starts from its own first sample
    np.testing.assert_allclose(fresh[0], a + 50)
    assert set(smoother.filters) == {5}


# ------------------------------------------------------------------------------------------ video, CLI


FRAMES = 6


def _boxes(t):
    """Two people crossing; listed in a different order on odd frames."""
    a = [20.0 + 15 * t, 30.0, 60.0, 140.0]
    b = [220.0 - 15 * t, 50.0, 60.0, 140.0]
    return [a, b] if t % 2 == 0 else [b, a]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    path = folder / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for t in range(FRAMES):
        writer.write(np.ascontiguousarray(np.roll(synthetic_image(seed=t), 5 * t, axis=1)[:, :, ::-1]))
    writer.release()
    dets = [{"image_id": t, "category_id": 1, "bbox": box, "score": 0.9 - 0.1 * i}
            for t in range(FRAMES) for i, box in enumerate(_boxes(t))]
    boxes = folder / "dets.json"
    boxes.write_text(json.dumps(dets))
    return str(path), str(boxes)


def _by_frame(records):
    frames = {}
    for r in records:
        frames.setdefault(r["image_id"], []).append(r)
    return frames


def test_video_track_ids_follow_the_boxes(tmp_path, capsys, model_path, clip):
    video, boxes = clip
    out = tmp_path / "out.json"
    code, _, err = cli_run(capsys, "infer", video, boxes, "--model", model_path, "-o", out)
    assert code == 0, err
    frames = _by_frame(json.loads(out.read_text()))
    assert sorted(frames) == list(range(FRAMES))
    ids = {}
    for t, records in frames.items():
        for r in records:
            who = "a" if abs(r["bbox"][0] - (20 + 15 * t)) < 1e-3 else "b"
            ids.setdefault(who, set()).add(r["track_id"])
    assert ids == {"a": {0}, "b": {1}}  # a (first at frame 0) is 0 throughout, even when listed second


def test_smoothing_is_the_one_euro_of_the_raw_track(tmp_path, capsys, model_path, clip):
    video, boxes = clip
    raw, smooth = tmp_path / "raw.json", tmp_path / "smooth.json"
    assert cli_run(capsys, "infer", video, boxes, "--model", model_path, "-o", raw)[0] == 0
    assert cli_run(capsys, "infer", video, boxes, "--model", model_path, "-o", smooth, "--smooth")[0] == 0
    raw_frames, smooth_frames = _by_frame(json.loads(raw.read_text())), _by_frame(json.loads(smooth.read_text()))
    p = OneEuroParams()
    for track in (0, 1):
        seq = np.array([[r["keypoints"] for r in raw_frames[t] if r["track_id"] == track][0]
                        for t in range(FRAMES)]).reshape(FRAMES, 17, 3)
        got = np.array([[r["keypoints"] for r in smooth_frames[t] if r["track_id"] == track][0]
                        for t in range(FRAMES)]).reshape(FRAMES, 17, 3)
        np.testing.assert_array_equal(got[:, :, 2], seq[:, :, 2])  # scores are not smoothed
        assert np.abs(got[1:, :, :2] - seq[1:, :, :2]).max() > 1.0  # it did smooth
        for j in range(17):
            for c in range(2):
                ref = _one_euro_reference(seq[:, j, c], p.min_cutoff, p.beta, p.d_cutoff)
                np.testing.assert_allclose(got[:, j, c], ref, atol=2e-3)  # records round to 1e-3


def test_det_every_carries_boxes_from_keypoints(tmp_path, capsys, model_path, clip):
    video, boxes = clip
    out = tmp_path / "out.json"
    code, _, err = cli_run(capsys, "infer", video, boxes, "--model", model_path, "-o", out, "--det-every", "3",
                        "--kpt-thr", "0.3")
    assert code == 0, err
    frames = _by_frame(json.loads(out.read_text()))
    for t in range(FRAMES):
        got = np.array(sorted(r["bbox"] for r in frames.get(t, [])))
        if t % 3 == 0:  # a detection frame: the boxes file's boxes
            np.testing.assert_allclose(got, np.array(sorted(_boxes(t))), atol=1e-3)
            continue
        prev = sorted(frames.get(t - 1, []), key=lambda r: r["track_id"])
        kp = np.array([r["keypoints"] for r in prev]).reshape(len(prev), 17, 3)
        expect, alive = boxes_from_keypoints(kp[:, :, :2], kp[:, :, 2], kpt_thr=0.3)
        np.testing.assert_allclose(got, np.array(sorted(expect[alive].tolist())).reshape(-1, 4), atol=2e-2)


def test_jsonl_streams_frames_and_an_interrupt_keeps_them(tmp_path, capsys, model_path, clip, monkeypatch):
    from npvitpose import run

    video, boxes = clip
    out = tmp_path / "out.jsonl"
    assert cli_run(capsys, "infer", video, boxes, "--model", model_path, "-o", out)[0] == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [rec["image_id"] for rec in lines] == list(range(FRAMES))
    assert lines[1]["time"] == pytest.approx(0.1) and len(lines[0]["people"]) == 2
    assert {"track_id", "keypoints", "bbox", "score"} <= set(lines[0]["people"][0])

    calls = {"n": 0}
    original = run.Runner.predict

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(run.Runner, "predict", interrupted)
    cut = tmp_path / "cut.jsonl"
    code, _, err = cli_run(capsys, "infer", video, boxes, "--model", model_path, "-o", cut)
    assert code == 1 and "interrupted" in err
    kept = [json.loads(line) for line in cut.read_text().splitlines()]
    assert [rec["image_id"] for rec in kept] == [0, 1, 2]
    assert kept == lines[:3]


def test_vis_video_plays_and_mp4_says_what_it_wrote(tmp_path, capsys, model_path, clip):
    video, boxes = clip
    webm = tmp_path / "vis.webm"
    code, _, err = cli_run(capsys, "infer", video, boxes, "--model", model_path, "-o", tmp_path / "o.json", "--vis",
                        webm, "--draw-bbox", "--skeleton-style", "openpose")
    assert code == 0, err
    capture = cv2.VideoCapture(str(webm))
    assert capture.get(cv2.CAP_PROP_FOURCC) and int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or FRAMES) == FRAMES
    assert capture.read()[0]
    capture.release()
    mp4 = tmp_path / "vis.mp4"
    code, _, err = cli_run(capsys, "infer", video, boxes, "--model", model_path, "-o", tmp_path / "o2.json", "--vis", mp4)
    assert code == 0 and mp4.stat().st_size > 0
    probe = cv2.VideoWriter(str(tmp_path / "probe.mp4"), cv2.VideoWriter_fourcc(*"avc1"), 10, (64, 64))
    has_h264 = probe.isOpened()
    probe.release()
    assert ("no H.264 encoder" in err) != has_h264


def test_missing_camera_is_one_line(tmp_path, capsys, model_path):
    code, _, err = cli_run(capsys, "infer", "9", "--whole-image", "--model", model_path, "-o", tmp_path / "o.json")
    assert code == 1 and err.count("\n") == 1 and "camera 9" in err
    assert not (tmp_path / "o.json").exists()


class _FakeCamera:
    """cv2.VideoCapture(0) stand-in: three frames, then the user presses Ctrl-C."""

    def __init__(self, index):
        self.index, self.frames = index, 0

    def isOpened(self):
        return self.index == 0

    def get(self, prop):
        return 0.0

    def read(self):
        self.frames += 1
        if self.frames > 3:
            raise KeyboardInterrupt
        return True, np.ascontiguousarray(synthetic_image(seed=self.frames)[:, :, ::-1])

    def release(self):
        pass


def test_camera_streams_to_stdout_and_ctrl_c_ends_it_cleanly(tmp_path, capsys, model_path, monkeypatch):
    monkeypatch.setattr(run_module, "_open_capture", lambda path: _FakeCamera(int(path)))  # cv2 stays real: the --vis video is read back
    code, out, err = cli_run(capsys, "infer", "0", "--whole-image", "--model", model_path,
                             "--vis", tmp_path / "live.avi")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [rec["image_id"] for rec in lines] == [0, 1, 2]
    assert all(rec["people"][0]["bbox"] == [0, 0, 320, 240] and rec["people"][0]["track_id"] == 0 for rec in lines)
    monkeypatch.undo()
    capture = cv2.VideoCapture(str(tmp_path / "live.avi"))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == 3  # the drawing of every frame seen before Ctrl-C
