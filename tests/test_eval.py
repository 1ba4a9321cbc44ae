"""`npvitpose eval`: COCO keypoint AP/AR on synthetic ground truth whose expected AP follows from the COCO
definition (OKS, 10 thresholds 0.50:0.95, precision interpolated at 101 recall points), computed here."""

import json
import math

import numpy as np
import pytest

from npvitpose.cli import main
from npvitpose.datasets import DATASETS
from npvitpose.eval import evaluate

SIGMAS = np.array(DATASETS["coco"].sigmas)
AREA = 120.0 * 200.0  # "large" in COCO's area ranges (above 96^2)


def ground_truth(n_images, k=17, wholebody=False, seed=0):
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(n_images):
        xy = np.stack([rng.uniform(100, 220, k), rng.uniform(50, 250, k)], axis=1)
        flat = np.concatenate([xy, np.full((k, 1), 2.0)], axis=1)  # every keypoint labelled and visible
        ann = {"id": i + 1, "image_id": 100 + i, "category_id": 1, "iscrowd": 0, "area": AREA,
               "bbox": [100.0, 50.0, 120.0, 200.0], "num_keypoints": k}
        if wholebody:
            parts = np.split(flat, [17, 23, 91, 112])
            for key, part in zip(("keypoints", "foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts"), parts):
                ann[key] = part.reshape(-1).tolist()
        else:
            ann["keypoints"] = flat.reshape(-1).tolist()
        images.append({"id": 100 + i, "file_name": f"{100 + i:012d}.jpg", "width": 400, "height": 400})
        annotations.append(ann)
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}


def moved(gt, oks, scores, sigmas=SIGMAS):
    """One result per person, each keypoint moved along x so that its OKS term, and so the person's OKS, is `oks`:
    exp(-d^2 / (2 area (2 sigma)^2)) = oks  <=>  d = 2 sigma sqrt(-2 area ln oks)."""
    results = []
    for ann, o, s in zip(gt["annotations"], oks, scores):
        flat = np.array(ann.get("keypoints") + sum((ann.get(k, []) for k in
                                                    ("foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts")), []))
        pts = flat.reshape(-1, 3).copy()
        pts[:, 0] += 2 * sigmas * math.sqrt(-2 * AREA * math.log(o))
        pts[:, 2] = 0.9
        results.append({"image_id": ann["image_id"], "category_id": 1, "keypoints": pts.reshape(-1).tolist(),
                        "score": s})
    return results


def coco_ap_ar(oks, scores, thresholds=np.arange(10) * 0.05 + 0.5):
    """AP and AR from the COCO definition, one ground truth and one result per image: results ranked by
    score; at threshold t a result is a true positive when its OKS >= t; precision interpolated (the best
    precision at any recall at least r) at r = 0, 0.01, ..., 1, zero beyond the largest recall."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    ranked = np.asarray(oks)[order]
    n = len(ranked)
    aps, ars = [], []
    for t in thresholds:
        tp = np.cumsum(ranked >= t)
        recall, precision = tp / n, tp / np.arange(1, n + 1)
        points = [max((p for rc, p in zip(recall, precision) if rc >= r / 100), default=0.0) for r in range(101)]
        aps.append(np.mean(points))
        ars.append(recall[-1])
    return float(np.mean(aps)), float(np.mean(ars))


def test_perfect_predictions_give_one():
    gt = ground_truth(5)
    metrics = evaluate(moved(gt, [1.0] * 5, [0.9] * 5), gt)["keypoints"]
    assert metrics["AP"] == metrics["AP50"] == metrics["AP75"] == metrics["APl"] == 1.0
    assert metrics["AR"] == metrics["ARl"] == 1.0
    assert metrics["APm"] == -1.0  # no medium-sized person: COCO reports -1


@pytest.mark.parametrize("oks, scores", [
    ([0.97, 0.92, 0.87, 0.81, 0.72, 0.63, 0.45], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]),  # ranked by OKS
    ([0.45, 0.97, 0.63, 0.92, 0.72, 0.87, 0.81], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]),  # misranked
])
def test_predictions_moved_by_a_known_oks(oks, scores):
    gt = ground_truth(len(oks), seed=1)
    metrics = evaluate(moved(gt, oks, scores), gt)["keypoints"]
    ap, ar = coco_ap_ar(oks, scores)
    assert 0.3 < ap < 0.9 and metrics["AP"] == pytest.approx(ap, abs=1e-9)
    assert metrics["AR"] == pytest.approx(ar, abs=1e-9)
    ap50, _ = coco_ap_ar(oks, scores, [0.5])
    ap75, _ = coco_ap_ar(oks, scores, [0.75])
    assert metrics["AP50"] == pytest.approx(ap50, abs=1e-9) and metrics["AP75"] == pytest.approx(ap75, abs=1e-9)


def test_result_images_only_scores_the_covered_images():
    gt = ground_truth(4)
    results = moved(gt, [1.0] * 4, [0.9] * 4)[:2]  # two of the four annotated images
    assert evaluate(results, gt)["keypoints"]["AR"] == pytest.approx(0.5)  # the others count as missed
    assert evaluate(results, gt, result_images_only=True)["keypoints"]["AR"] == 1.0


def test_wholebody_scored_part_by_part():
    sigmas = np.array(DATASETS["wholebody"].sigmas)
    gt = ground_truth(3, k=133, wholebody=True, seed=2)
    perfect = evaluate(moved(gt, [1.0] * 3, [0.9] * 3, sigmas), gt)
    assert list(perfect) == ["body", "foot", "face", "lefthand", "righthand", "wholebody"]
    assert all(m["AP"] == 1.0 and m["AR"] == 1.0 for m in perfect.values())
    oks, scores = [0.93, 0.78, 0.62], [0.9, 0.8, 0.7]  # every part moved by the same OKS (none near a threshold)
    metrics = evaluate(moved(gt, oks, scores, sigmas), gt)
    ap, ar = coco_ap_ar(oks, scores)
    for part in metrics.values():
        assert part["AP"] == pytest.approx(ap, abs=1e-9) and part["AR"] == pytest.approx(ar, abs=1e-9)


def test_wholebody_agrees_with_xtcocotools_where_it_loads():
    try:
        from xtcocotools.coco import COCO
        from xtcocotools.cocoeval import COCOeval
    except Exception as e:  # its 1.14.3 wheels are built for NumPy 1: "numpy.dtype size changed" under NumPy 2
        pytest.skip(f"xtcocotools does not load here: {e}")
    import contextlib
    import io

    from npvitpose.eval import STATS, WHOLEBODY_PARTS

    sigmas = np.array(DATASETS["wholebody"].sigmas)
    gt = ground_truth(7, k=133, wholebody=True, seed=3)
    results = moved(gt, [0.97, 0.45, 0.87, 0.81, 0.92, 0.63, 0.72], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], sigmas)
    ours = evaluate(results, gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        split = [dict({key: r["keypoints"][3 * a:3 * b] for _, key, a, b in WHOLEBODY_PARTS}, image_id=r["image_id"],
                      category_id=1, score=r["score"]) for r in results]
        dt = coco.loadRes(split)
        for part, _, a, b in WHOLEBODY_PARTS + (("wholebody", None, 0, 133),):
            e = COCOeval(coco, dt, f"keypoints_{part}", sigmas[a:b], use_area=True)
            e.evaluate(), e.accumulate(), e.summarize()
            assert [ours[part][s] for s in STATS] == pytest.approx(list(e.stats), abs=1e-9), part


def test_cli_table_metrics_file_and_coverage_warning(tmp_path, capsys):
    gt = ground_truth(7, seed=1)
    oks, scores = [0.97, 0.92, 0.87, 0.81, 0.72, 0.63, 0.45], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(moved(gt, oks, scores)))
    code = main(["eval", tmp_path / "res.json", tmp_path / "gt.json", "-o", tmp_path / "m.json"])
    out, err = capsys.readouterr()
    ap, _ = coco_ap_ar(oks, scores)
    assert code == 0 and err == ""
    header, row = out.splitlines()
    assert header.split() == ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
    assert row.split()[0] == "keypoints" and row.split()[1] == f"{100 * ap:.1f}"
    assert json.loads((tmp_path / "m.json").read_text())["keypoints"]["AP"] == pytest.approx(ap, abs=1e-9)
    (tmp_path / "few.json").write_text(json.dumps(moved(gt, oks, scores)[:3]))
    assert main(["eval", tmp_path / "few.json", tmp_path / "gt.json"]) == 0
    assert "the results cover 3 of the 7 annotated images" in capsys.readouterr().err


@pytest.mark.parametrize("results, message", [
    ([], "holds no results"),
    ({"a.jpg": []}, "expected a list of COCO keypoint results"),
    ([{"image_id": "kitchen.jpg", "category_id": 1, "keypoints": [0] * 51, "score": 1}], "is not a COCO image id"),
    ([{"image_id": 999, "category_id": 1, "keypoints": [0] * 51, "score": 1}], "not in the annotations"),
    ([{"image_id": 100, "category_id": 1, "keypoints": [0] * 30, "score": 1}], "10.0 keypoints, but the annotations have 17"),
    ([{"image_id": 100, "keypoints": [0] * 51}], "not a COCO keypoint result"),
])
def test_bad_results_are_one_line(tmp_path, capsys, results, message):
    (tmp_path / "gt.json").write_text(json.dumps(ground_truth(2)))
    (tmp_path / "res.json").write_text(json.dumps(results))
    assert main(["eval", tmp_path / "res.json", tmp_path / "gt.json", "-o", tmp_path / "m.json"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("npvitpose: error: res.json") and message in err and err.count("\n") == 1
    assert not (tmp_path / "m.json").exists()


def test_detections_instead_of_annotations_and_missing_package(tmp_path, capsys, monkeypatch):
    (tmp_path / "res.json").write_text(json.dumps(moved(ground_truth(1), [1.0], [1.0])))
    (tmp_path / "dets.json").write_text(json.dumps([{"image_id": 100, "bbox": [0, 0, 1, 1], "score": 1}]))
    assert main(["eval", tmp_path / "res.json", tmp_path / "dets.json"]) == 1
    assert "dets.json: not COCO annotations" in capsys.readouterr().err
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name.startswith("pycocotools"):
            raise ModuleNotFoundError(f"No module named {name!r}", name="pycocotools")
        return real(name, *a, **k)

    (tmp_path / "gt.json").write_text(json.dumps(ground_truth(1)))
    monkeypatch.setattr(importlib, "import_module", fake)
    assert main(["eval", tmp_path / "res.json", tmp_path / "gt.json"]) == 1
    assert capsys.readouterr().err == "npvitpose: error: eval needs the package 'pycocotools': " \
                                      "pip install 'npvitpose[eval]'\n"
