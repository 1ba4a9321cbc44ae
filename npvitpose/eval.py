"""`npvitpose eval RESULTS.json ANNOTATIONS.json`: COCO keypoint AP/AR, the metric of the published numbers
(spec 6), computed by pycocotools, imported only here (the `eval` extra).

COCO-WholeBody (133 keypoints) is scored part by part with each part's sigmas, as mmpose does through
xtcocotools: body, foot, face, left hand, right hand and the whole body. xtcocotools' own wheels (1.14.3)
fail to load under NumPy 2 ("numpy.dtype size changed"), so each part is given to pycocotools as the
annotations' `keypoints`, with `num_keypoints` counting that part's labelled points: the same OKS (area-
normalised, `use_area=True`), the same rule for ignoring a person with none, and a result's area taken
from its body points; tests/test_eval.py compares the two wherever xtcocotools loads.
"""

import contextlib
import io
import warnings

from .errors import NpvitposeError

STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")  # COCOeval.stats, in order
# COCO-WholeBody: where the result's 133 keypoints sit in the annotations (mmpose's TopDownCocoWholeBodyDataset)
WHOLEBODY_PARTS = (("body", "keypoints", 0, 17), ("foot", "foot_kpts", 17, 23), ("face", "face_kpts", 23, 91),
                   ("lefthand", "lefthand_kpts", 91, 112), ("righthand", "righthand_kpts", 112, 133))


def _tools(package):
    """(COCO, COCOeval) of `package`, with the command's one-line error if it is missing."""
    import importlib

    try:
        return (importlib.import_module(f"{package}.coco").COCO,
                importlib.import_module(f"{package}.cocoeval").COCOeval)
    except ModuleNotFoundError as e:
        top = (e.name or package).split(".")[0]
        raise NpvitposeError(f"eval needs the package {top!r}: pip install 'npvitpose[eval]'") from None


def _check_annotations(data, name):
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise NpvitposeError(f"{name}: not COCO annotations (an object with \"images\" and \"annotations\" lists)")
    people = [a for a in data["annotations"] if isinstance(a, dict) and "keypoints" in a]
    if not people:
        raise NpvitposeError(f"{name}: no annotation has \"keypoints\" (a COCO keypoints file, such as "
                             "person_keypoints_val2017.json, is needed)")
    for i, a in enumerate(people):
        missing = [k for k in ("image_id", "category_id", "keypoints", "area", "id") if k not in a]
        if missing:
            raise NpvitposeError(f"{name}: annotation {i} has no {', '.join(missing)}")
    data.setdefault("categories", [{"id": 1, "name": "person"}])
    wholebody = all(k in people[0] for _, k, _, _ in WHOLEBODY_PARTS)
    count = 133 if wholebody else len(people[0]["keypoints"]) // 3
    return {img["id"] for img in data["images"] if isinstance(img, dict) and "id" in img}, count, wholebody


def _check_results(data, name, count, image_ids):
    if not isinstance(data, list):
        raise NpvitposeError(f"{name}: expected a list of COCO keypoint results (`infer --format coco`), "
                             f"got a JSON {type(data).__name__}")
    if not data:
        raise NpvitposeError(f"{name}: holds no results to evaluate")
    for i, r in enumerate(data):
        where = f"{name}: result {i}"
        if not isinstance(r, dict) or not all(k in r for k in ("image_id", "category_id", "keypoints", "score")):
            raise NpvitposeError(f"{where}: not a COCO keypoint result (image_id, category_id, keypoints, score)")
        if isinstance(r["image_id"], bool) or not isinstance(r["image_id"], int):
            raise NpvitposeError(f"{where}: image_id {r['image_id']!r} is not a COCO image id; infer names an image "
                                 "by id when its file is (000000000139.jpg) or when --images lists it")
        if not isinstance(r["keypoints"], list) or len(r["keypoints"]) != 3 * count:
            got = len(r["keypoints"]) / 3 if isinstance(r["keypoints"], list) else "no"
            raise NpvitposeError(f"{where}: {got} keypoints, but the annotations have {count}")
    unknown = sorted({r["image_id"] for r in data} - image_ids)
    if unknown:
        raise NpvitposeError(f"{name}: {len(unknown)} image id(s) are not in the annotations (first: {unknown[0]})")


def _ground_truth(COCO, data):
    coco = COCO()  # from the parsed dict: the file is read (and checked) once, by us
    coco.dataset = data
    coco.createIndex()
    return coco


def _parts(annotations, wholebody, count):
    """(name, first, end, annotations holding that part as `keypoints`) for each part to score."""
    if not wholebody:
        yield "keypoints", 0, count, annotations
        return
    for part, _, a, b in WHOLEBODY_PARTS + (("wholebody", None, 0, 133),):
        fields = [key for _, key, pa, pb in WHOLEBODY_PARTS if a <= pa and pb <= b]
        people = []
        for ann in annotations["annotations"]:
            flat = [v for key in fields for v in ann.get(key, [])] if "keypoints" in ann else None
            people.append(ann if flat is None else dict(ann, keypoints=flat, num_keypoints=sum(v > 0 for v in flat[2::3])))
        yield part, a, b, dict(annotations, annotations=people)


def _summarize(evaluator, image_ids):
    if image_ids is not None:
        evaluator.params.imgIds = image_ids
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return dict(zip(STATS, (float(v) for v in evaluator.stats)))


def evaluate(results, annotations, sigmas=None, result_images_only=False, names=("results", "annotations")):
    """COCO keypoint AP/AR -> {part: {"AP": ..., ..., "ARl": ...}}, fractions in [0, 1] (-1: no such people).

    results: a list of COCO keypoint results; annotations: a COCO keypoints ground-truth dict. The part is
    "keypoints" for COCO, else body, foot, face, lefthand, righthand and wholebody. sigmas: one per keypoint
    (default: COCO's, or COCO-WholeBody's for 133 keypoints). result_images_only: score only the images the
    results cover (the official metric scores every annotated image: one without results counts as missed).
    """
    import numpy as np

    from .datasets import DATASETS

    image_ids, count, wholebody = _check_annotations(annotations, names[1])
    _check_results(results, names[0], count, image_ids)
    if sigmas is None:
        known = {len(d.sigmas): d.sigmas for d in DATASETS.values() if d.sigmas is not None and d.name != "apt36k"}
        if count not in known:
            raise NpvitposeError(f"no OKS sigmas are known for {count} keypoints")
        sigmas = known[count]
    sigmas = np.asarray(sigmas, dtype=np.float64)
    subset = sorted({r["image_id"] for r in results}) if result_images_only else None
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), warnings.catch_warnings():  # their progress prints, not ours
        warnings.simplefilter("ignore")
        try:
            COCO, COCOeval = _tools("pycocotools")
            out = {}
            for part, a, b, gt_part in _parts(annotations, wholebody, count):
                gt = _ground_truth(COCO, gt_part)
                dt = gt.loadRes([dict(r, keypoints=r["keypoints"][3 * a:3 * b]) for r in results])
                if wholebody:  # as xtcocotools: a result's area (for APm/APl) is the extent of its 17 body points
                    for r, ann in zip(results, dt.dataset["annotations"]):
                        x, y = r["keypoints"][0:51:3], r["keypoints"][1:51:3]
                        ann["area"] = (max(x) - min(x)) * (max(y) - min(y))
                evaluator = COCOeval(gt, dt, "keypoints")
                evaluator.params.kpt_oks_sigmas = sigmas[a:b]
                out[part] = _summarize(evaluator, subset)
            return out
        except NpvitposeError:
            raise
        except Exception as e:  # their asserts and KeyErrors on malformed entries: one line, not a traceback
            raise NpvitposeError(f"COCO evaluation failed: {type(e).__name__}: {e}") from None


def table(metrics):
    """The metrics as the published tables show them: percent, one decimal."""
    width = max(len(p) for p in metrics)
    lines = [" " * width + "".join(f"{s:>7}" for s in STATS)]
    for part, stats in metrics.items():
        lines.append(f"{part:<{width}}" + "".join(f"{100 * stats[s]:7.1f}" if stats[s] >= 0 else f"{'-':>7}"
                                                  for s in STATS))
    return "\n".join(lines) + "\n"
