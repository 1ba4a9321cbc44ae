"""Fidelity of the engine against an independent reference: transformers' VitPoseForPoseEstimation.

Live part (needs torch + transformers): seeded checkpoints written in both formats (official `.pth`,
HF folder), converted in a subprocess where torch cannot be imported, run by npvitpose, and compared
layer by layer with the HF forward. Fixture part (always runs): recorded HF outputs of tiny models in
`tests/data/reference/`, rebuilt weights from their seed, converted and compared without torch.
Set NPVITPOSE_REPORT=1 to write the measured errors to /tmp/npvitpose_reference_report.{md,json}.
"""

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hf_reference as R  # tests/ is on sys.path through conftest.py
from no_torch import run_without_torch

import npvitpose


def _installed(*names):
    try:
        return all(importlib.util.find_spec(n) is not None for n in names)
    except (ImportError, ValueError):
        return False


HAVE_TORCH = _installed("torch", "transformers")
live = pytest.mark.skipif(not HAVE_TORCH, reason="torch/transformers not installed")

FIXTURES = Path(__file__).resolve().parent / "data" / "reference"
REPORT_PATH = Path("/tmp/npvitpose_reference_report.md")

HEATMAP_BAR = 1e-5  # the bar: max|err| / max|ref| of the heatmaps
# per-layer bars, relative to the layer's max|ref|; measured worst cases are in the report
LAYER_BAR = {"embeddings": 1e-5, "blocks": 1e-5, "last_norm": 1e-5, "head": 1e-5}

# (variant, checkpoint format, dataset passed to convert())
CASES = [
    ("b-classic", "pth", None), ("b-classic", "hf", None),
    ("b-simple", "pth", None), ("b-simple", "hf", None),
    ("s-classic", "pth", None), ("s-classic", "hf", None),
    ("plus-b-moe", "pth", "aic"), ("plus-b-moe", "pth", "wholebody"),
    ("plus-b-moe", "hf", "coco"),  # the converter refuses other datasets here: HF kept only the COCO head
    ("b-wholebody", "pth", "wholebody"), ("b-wholebody", "hf", None),  # None: K=133 means wholebody
    ("l-classic-d2", "pth", None), ("l-classic-d2", "hf", None),
    ("h-simple-d2", "pth", None), ("h-simple-d2", "hf", None),
    ("s-small-variance", "pth", None), ("s-small-variance", "hf", None),
    ("s-eps1e-5-config", "hf", None),
]

# convert() in a fresh interpreter whose import system refuses torch, transformers and safetensors
_CONVERT = """
import json
from npvitpose.convert import convert
meta = convert(sys.argv[1], sys.argv[2], dataset=None if sys.argv[3] == "-" else sys.argv[3])
print(json.dumps(meta))
"""

_REPORT = {}  # case id -> measured errors
_RUNS = {}  # case -> result dict, shared by the tests that look at one case
_WEIGHTS = {}


def _case_id(case):
    name, fmt, dataset = case
    return f"{name}/{fmt}" + (f"/{dataset}" if dataset else "")


def _weights(name):
    if name not in _WEIGHTS:
        _WEIGHTS.clear()  # one big state dict in memory at a time
        _WEIGHTS[name] = R.official_weights(R.VARIANTS[name])
    return _WEIGHTS[name]


def convert_without_torch(src, out, dataset):
    proc = run_without_torch(_CONVERT, src, out, dataset or "-", timeout=600)
    assert proc.returncode == 0, f"torch-free conversion of {src} failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_taps(ref: dict, got: dict, heat: np.ndarray) -> dict:
    """Relative errors per tap and for the heatmaps; missing engine taps fail."""
    errors = {}
    for key, want in ref.items():
        if key in ("heatmaps", "blocks.0.norm1"):
            continue
        assert key in got, f"engine did not fill tap {key!r} (has {sorted(got)})"
        errors[key] = R.rel_err(got[key], want)
    errors["heatmaps"] = R.rel_err(heat, ref["heatmaps"])
    return errors


def layer_kind(key):
    return "blocks" if key.startswith("blocks.") else "head" if key.startswith("head.") else key


def run_case(case, tmp_root: Path):
    """Reference taps and engine taps of one (variant, format, dataset); its heatmaps are kept in _RUNS."""
    name, fmt, dataset = case
    v = R.VARIANTS[name]
    sd = _weights(name)
    x = R.pixels(v.seed, v.batch)
    expert = R.DATASET_EXPERT[dataset] if dataset and v.moe else 0
    work = tmp_root / _case_id(case).replace("/", "_")
    work.mkdir(parents=True)
    if fmt == "pth":
        eps = R.OFFICIAL_LN_EPS  # spec 1.3: the official norm eps
        hf = R.hf_model(v, sd, eps, head=R.head_prefix(v, dataset))
        src = work / f"{name}.pth"
        R.write_pth(sd, src)
    else:
        eps = v.hf_eps
        hf = R.hf_model(v, sd, eps)  # HF keeps only the COCO head (spec 3.2), whatever the expert
        src = work / name
        R.write_hf_folder(hf, src)
    ref = R.capture(hf, x, dataset_index=expert)
    ref64 = None
    if os.environ.get("NPVITPOSE_REPORT"):  # float64 HF run: the float32 noise floor, for the report only
        ref64 = R.capture(hf.double(), x.astype(np.float64), dataset_index=expert)["heatmaps"]
    del hf
    out = work / "model.npz"
    meta = convert_without_torch(src, out, dataset)
    if src.is_dir():
        shutil.rmtree(src)
    else:
        src.unlink()
    model = npvitpose.load(out)
    taps = {}
    heat = model.forward(x, taps=taps)
    out.unlink()
    _RUNS[case] = {"eps": eps, "heat": heat, "ref_heat": ref["heatmaps"]}
    return {"variant": v, "eps": eps, "expert": expert, "meta": meta, "ref": ref, "taps": taps, "heat": heat,
            "ref64": ref64}


def run_heatmaps(case, tmp_root: Path):
    """Engine and reference heatmaps of a case, from an earlier test when it ran already."""
    if case not in _RUNS:
        run_case(case, tmp_root)
    return _RUNS[case]


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("reference")


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if os.environ.get("NPVITPOSE_REPORT") and _REPORT:
        write_report(_REPORT)


def write_report(report: dict) -> None:
    REPORT_PATH.with_suffix(".json").write_text(json.dumps(report, indent=1, sort_keys=True))
    kinds = ["embeddings", "blocks.0", "blocks (max)", "last_norm", "head.stage1", "head.stage2",
             "head.upsampled", "heatmaps", "argmax margin", "engine vs f64", "HF f32 vs f64"]
    lines = ["# npvitpose vs transformers VitPoseForPoseEstimation (float32, CPU, eager)", "",
             "Relative error = max|engine - ref| / max|ref| per layer; 'argmax margin' = smallest "
             "(top1 - top2) / max|ref| over the reference heatmaps; the last two columns compare the heatmaps "
             "of the engine and of HF float32 with HF run in float64.", "",
             "| case | eps | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for cid in sorted(report):
        r = report[cid]
        if not r["errors"]:
            continue
        cells = []
        for k in kinds:
            if k == "blocks (max)":
                vals = [e for key, e in r["errors"].items() if key.startswith("blocks.")]
                cells.append(f"{max(vals):.2e}" if vals else "")
            elif k == "argmax margin":
                cells.append(f"{r['margin']:.1e}")
            elif k in ("engine vs f64", "HF f32 vs f64"):
                f64 = r.get("float64")
                cells.append(f"{f64['engine' if k == 'engine vs f64' else 'hf_float32']:.2e}" if f64 else "")
            else:
                cells.append(f"{r['errors'][k]:.2e}" if k in r["errors"] else "")
        lines.append(f"| {cid} | {r['eps']:g} | " + " | ".join(cells) + " |")
    extra = {k: v for k, v in report.items() if "notes" in v}
    if extra:
        lines += ["", "## Notes"]
        for cid, r in sorted(extra.items()):
            lines += [f"- {cid}: {note}" for note in r["notes"]]
    REPORT_PATH.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------ live


@live
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_engine_matches_transformers(case, tmp_root):
    dataset = case[2]
    r = run_case(case, tmp_root)
    v, ref, meta = r["variant"], r["ref"], r["meta"]
    margin = R.argmax_margin(ref["heatmaps"])
    # precondition: every reference map has a unique argmax with room above the error bar
    assert margin > 2 * HEATMAP_BAR, f"reference heatmaps too flat (margin {margin:.2e}); change the seed"

    k = ref["heatmaps"].shape[1]
    assert (meta["dim"], meta["depth"], meta["heads"], meta["num_keypoints"]) == (v.dim, v.depth, v.heads, k)
    assert meta["head"] == ("simple" if v.simple else "classic") and meta["mlp_hidden"] == v.mlp_hidden
    assert meta["dataset"] == (dataset or {17: "coco", 133: "wholebody"}[k])
    assert meta["ln_eps"] == pytest.approx(r["eps"], rel=1e-9)
    assert (meta["moe"] or {}).get("expert") == (r["expert"] if v.moe else None)

    errors = compare_taps(ref, r["taps"], r["heat"])
    _REPORT[_case_id(case)] = {"eps": r["eps"], "errors": errors, "margin": margin}
    if r["ref64"] is not None:
        _REPORT[_case_id(case)]["float64"] = {"engine": R.rel_err(r["heat"], r["ref64"]),
                                              "hf_float32": R.rel_err(ref["heatmaps"], r["ref64"])}
    bad = {key: e for key, e in errors.items()
           if e > (HEATMAP_BAR if key == "heatmaps" else LAYER_BAR[layer_kind(key)])}
    assert not bad, f"layers above their bar: {bad}"
    got_arg = r["heat"].reshape(*r["heat"].shape[:2], -1).argmax(-1)
    want_arg = ref["heatmaps"].reshape(*ref["heatmaps"].shape[:2], -1).argmax(-1)
    np.testing.assert_array_equal(got_arg, want_arg)


@live
@pytest.mark.parametrize("name", ["s-classic", "b-simple", "plus-b-moe"])
def test_reference_checkpoint_means_the_hf_model(name):
    """The official-layout dict (what the .pth holds) and the HF model built from it are one network.

    An official-layout forward written from spec 1-2 (fused qkv, q scaled before q.k) reproduces HF,
    so the spec 3.2 mapping used to build the reference is right, for every head of a MoE checkpoint.
    """
    v = R.VARIANTS[name]
    sd = _weights(name)
    x = R.pixels(v.seed, 1)
    for dataset in (["aic", "wholebody", None] if v.moe else [None]):
        hf = R.hf_model(v, sd, R.OFFICIAL_LN_EPS, head=R.head_prefix(v, dataset))
        want = R.capture(hf, x, dataset_index=R.DATASET_EXPERT[dataset] if dataset else 0)["heatmaps"]
        got = R.official_forward_torch(v, sd, x, R.OFFICIAL_LN_EPS, dataset)
        assert R.rel_err(got, want) < 1e-5


@live
def test_pth_file_round_trips(tmp_path):
    """The written .pth holds exactly the state dict (and plain meta), as torch.load sees it."""
    import torch

    v = R.VARIANTS["plus-b-moe"]
    sd = _weights(v.name)
    R.write_pth(sd, tmp_path / "m.pth")
    ck = torch.load(tmp_path / "m.pth", map_location="cpu", weights_only=True)
    assert set(ck) == {"state_dict", "meta"} and ck["meta"]["epoch"] == 1
    assert list(ck["state_dict"]) == list(sd)
    for key, want in sd.items():
        np.testing.assert_array_equal(ck["state_dict"][key].numpy(), want, err_msg=key)
    assert "associate_keypoint_heads.4.final_layer.weight" in sd and "backbone.cls_token" in sd


@live
@pytest.mark.parametrize("name", ["s-small-variance", "s-eps1e-5-config"])
def test_layer_norm_eps_matters(name, tmp_root):
    """With a token variance near the eps, the eps changes the answer: a wrong eps could not pass the bar."""
    v = R.VARIANTS[name]
    sd = _weights(name)
    x = R.pixels(v.seed, v.batch)
    right, wrong = v.hf_eps, R.OFFICIAL_LN_EPS
    ref = R.capture(R.hf_model(v, sd, right), x)
    var = float(ref["embeddings"].astype(np.float64).var(-1).mean())
    assert var < 10 * max(right, wrong), var  # the eps is not negligible against the variance

    # spec 1.3 layer norm of the reference embeddings: right eps matches HF's norm1, wrong eps does not
    g, b = sd["backbone.blocks.0.norm1.weight"], sd["backbone.blocks.0.norm1.bias"]
    ok = R.rel_err(R.layer_norm_np(ref["embeddings"], g, b, right), ref["blocks.0.norm1"])
    off = R.rel_err(R.layer_norm_np(ref["embeddings"], g, b, wrong), ref["blocks.0.norm1"])
    assert ok < 1e-5 and off > 1e-2, (ok, off)

    # the reference itself at the wrong eps misses the heatmap bar by orders of magnitude
    other = R.capture(R.hf_model(v, sd, wrong), x)["heatmaps"]
    sensitivity = R.rel_err(other, ref["heatmaps"])
    assert sensitivity > 1000 * HEATMAP_BAR, sensitivity

    # and the engine: each checkpoint path matches its own eps, not the other path's
    notes = [f"layer-norm input variance {var:.1e}; numpy LN err right eps {ok:.1e}, wrong eps {off:.1e}; "
             f"HF heatmaps eps {right:g} vs {wrong:g} differ by {sensitivity:.2e}"]
    fmts = ["pth", "hf"] if name == "s-small-variance" else ["hf"]
    for fmt in fmts:
        r = run_heatmaps((name, fmt, None), tmp_root)
        other_eps = R.HF_DEFAULT_LN_EPS if fmt == "pth" else R.OFFICIAL_LN_EPS
        other_ref = R.capture(R.hf_model(v, sd, other_eps), x)["heatmaps"]
        own = R.rel_err(r["heat"], r["ref_heat"])
        cross = R.rel_err(r["heat"], other_ref)
        assert own <= HEATMAP_BAR and cross > 1000 * HEATMAP_BAR, (fmt, own, cross)
        notes.append(f"engine({fmt}, eps {r['eps']:g}) vs HF at eps {r['eps']:g}: {own:.1e}; "
                     f"vs HF at eps {other_eps:g}: {cross:.2e}")
    _REPORT[f"{name}/eps-sensitivity"] = {"eps": right, "errors": {}, "margin": float("nan"), "notes": notes}


# --------------------------------------------------------------------------------------------- fixtures


def _fixture_files():
    return sorted(FIXTURES.glob("*.npz"))


def test_fixtures_present():
    files = _fixture_files()
    assert len(files) >= 3, f"expected recorded fixtures in {FIXTURES}; run tools/record_reference.py"
    assert sum(f.stat().st_size for f in files) < 5_000_000


def _converted_fixture(path, tmp_path):
    """Rebuild a fixture's seeded weights, write them with safetensors' NumPy API (an HF folder, or official
    names in one file for the MoE expert/head choice) and convert without torch: (record, info, pixels)."""
    with np.load(path, allow_pickle=False) as f:
        rec = {k: f[k] for k in f.files}
    info = json.loads(str(rec.pop("__info__")))
    v = R.Variant(**info["variant"])
    sd = R.official_weights(v)
    assert R.weights_digest(sd) == info["weights_sha256"], "NumPy's random stream changed: re-record fixtures"
    x = R.pixels(v.seed, v.batch)
    assert hashlib.sha256(x.tobytes()).hexdigest() == info["pixels_sha256"], "input changed: re-record fixtures"

    if info["source"] == "hf-folder":
        src = tmp_path / v.name
        R.hf_folder_from_numpy(info["config_json"], R.official_to_hf(sd), src)
    else:
        src = tmp_path / f"{v.name}.safetensors"
        R.official_safetensors_from_numpy(sd, src)
    meta = convert_without_torch(src, tmp_path / "m.npz", info["dataset"])
    assert meta["ln_eps"] == pytest.approx(info["ln_eps"], rel=1e-9)
    want_expert = R.DATASET_EXPERT[info["dataset"]] if v.moe else None
    assert (meta["moe"] or {}).get("expert") == want_expert
    return rec, info, x


@pytest.mark.parametrize("path", _fixture_files(), ids=lambda p: p.stem)
def test_engine_matches_recorded_reference(path, tmp_path):
    """Without torch: a recorded fixture's model, converted, run, compared with the HF outputs recorded by
    tools/record_reference.py."""
    rec, info, x = _converted_fixture(path, tmp_path)
    model = npvitpose.load(tmp_path / "m.npz")
    taps = {}
    heat = model.forward(x, taps=taps)
    errors = compare_taps(rec, taps, heat)
    assert errors["heatmaps"] <= HEATMAP_BAR, errors
    bad = {k: e for k, e in errors.items() if k != "heatmaps" and e > LAYER_BAR[layer_kind(k)]}
    assert not bad, bad
    np.testing.assert_array_equal(heat.reshape(*heat.shape[:2], -1).argmax(-1),
                                  rec["heatmaps"].reshape(*heat.shape[:2], -1).argmax(-1))
    _REPORT[f"fixture:{path.stem}"] = {"eps": info["ln_eps"], "errors": errors,
                                       "margin": R.argmax_margin(rec["heatmaps"])}


# Numba targets without AVX-512: the generic CPU (no vector kernels compiled at all: BLAS does the linear
# layers) and an AVX2 + FMA core (the 6 x 16 micro-kernel), each in a fresh process with its own JIT cache
_FALLBACKS = {
    "generic": {"NUMBA_CPU_NAME": "generic"},
    "avx2": {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES":
             "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+lzcnt,+movbe,+popcnt,+sse4.2,+cx16,-avx512f"},
}
_FALLBACK_RUN = """
import json, sys
import numpy as np
import npvitpose
from npvitpose.kernels import gemm
model = npvitpose.load(sys.argv[1])
np.save(sys.argv[3], model.forward(np.load(sys.argv[2])))
print(json.dumps([gemm.ISA, gemm.OWN]))
"""


@pytest.mark.parametrize("target", sorted(_FALLBACKS))
def test_fallback_kernels_match_recorded_reference(target, tmp_path):
    from npvitpose.kernels import cpu

    if target == "avx2" and not {"avx2", "fma"} <= cpu.features():
        pytest.skip("this CPU cannot run AVX2 + FMA code")
    rec, _, x = _converted_fixture(FIXTURES / "tiny-s-classic.npz", tmp_path)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, **_FALLBACKS[target], "NUMBA_CACHE_DIR": str(tmp_path / "jit"),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _FALLBACK_RUN, str(tmp_path / "m.npz"), str(tmp_path / "x.npy"),
                          str(tmp_path / "heat.npy")], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    # NEON is part of every ARMv8-A core, so LLVM's generic aarch64 target keeps the NEON tile (kernels/cpu.py)
    expected = ["neon", True] if target == "generic" and platform.machine() in ("aarch64", "arm64") else \
        [target, target != "generic"]
    assert json.loads(out.stdout.splitlines()[-1]) == expected
    heat = np.load(tmp_path / "heat.npy")
    err = float(np.abs(heat - rec["heatmaps"]).max() / np.abs(rec["heatmaps"]).max())
    assert err <= HEATMAP_BAR, err
