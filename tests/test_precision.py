"""precision="bf16" / "int8": drift against transformers, weight memory, load/CLI plumbing."""

import json

import numpy as np
import pytest

import hf_reference as R
import npvitpose
from npvitpose import model as model_mod
from npvitpose.cli import main
from npvitpose.kernels import gemm_bf16, gemm_int8

CFG = model_mod.Config(dim=384, depth=2, heads=12, mlp_hidden=1536)
META = dict(dim=384, depth=2, heads=12, mlp_hidden=1536, num_keypoints=17, head="classic", ln_eps=1e-6,
            dataset="coco", mode="udp")
# Bounds on max|heatmap - transformers| / max|transformers| for this depth-2 model (8 linear layers).
# bf16 rounds both operands of every product to 8 significant bits (relative error <= 2^-9 each): errors
# adding up without amplification give 8 * 2 * 2^-9 = 3.1%. int8 steps are 1/255 of a row's range and
# 1/254 of a weight row's maximum, half a step each: 8 * (1/510 + 1/254) = 4.7%. Measured: 0.38%, 1.4%.
BOUND = {"bf16": 8 * 2 * 2.0 ** -9, "int8": 8 * (1 / 510 + 1 / 254)}


@pytest.fixture(scope="module")
def reference():
    v = R.Variant("s-d2-precision", 384, 2, 12, seed=21)
    sd = R.official_weights(v)
    weights = {k: np.asarray(sd[k], np.float32) for k in model_mod.weight_shapes(CFG)}
    x = R.pixels(v.seed, 2)
    return weights, x, R.capture(R.hf_model(v, sd, 1e-6), x)["heatmaps"]


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_drift_against_transformers(reference, precision):
    weights, x, ref = reference
    heat = model_mod.from_weights(weights, META, precision).forward(x)
    err = R.rel_err(heat, ref)
    assert err < BOUND[precision]
    assert err > 1e-4  # and the reduced precision is really in use (fp32 is within 1e-5)


def test_weights_kept_only_packed(tmp_path):
    path = tmp_path / "m.npz"
    model_mod.save_npz(path, model_mod.random_weights(CFG), META)
    fp32 = npvitpose.load(path)
    linear = list(fp32._linear)  # the four linear layers of every block
    assert len(linear) == 4 * CFG.depth
    assert not set(linear) & set(fp32.weights)  # fp32 too keeps only the packed form
    assert all(a.base is None for a in fp32.weights.values())
    fp32_bytes = sum(4 * p.n * p.k for p in fp32._linear.values())
    outputs = sum(p.n for p in fp32._linear.values())
    # int8 adds a float64 scale and an int32 column sum per output channel
    for precision, module, share, extra in (("bf16", gemm_bf16, 0.5, 0), ("int8", gemm_int8, 0.25, 12)):
        m = npvitpose.load(path, precision=precision)
        assert m.precision == precision and m._gemm is module
        assert not set(linear) & set(m.weights)  # the fp32 copies are gone ...
        assert all(a.base is None for a in m.weights.values())  # ... and nothing holds the .npz block
        packed = sum(a.nbytes for p in m._linear.values() for a in p if isinstance(a, np.ndarray))
        assert packed == share * fp32_bytes + extra * outputs  # (widths are multiples of 48 and 4: no padding)


def test_unknown_precision_is_one_error(tmp_path):
    with pytest.raises(npvitpose.NpvitposeError, match="precision 'fp16'"):
        npvitpose.load(tmp_path / "missing.npz", precision="fp16")


def test_cli_precision_and_compare(tmp_path, capsys):
    import cv2

    path = tmp_path / "m.npz"
    model_mod.save_npz(path, model_mod.random_weights(model_mod.Config(64, 1, 2, 128, head="simple")),
                       dict(META, dim=64, depth=1, heads=2, mlp_hidden=128, head="simple"))
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (200, 160, 3), dtype=np.uint8))
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([[20, 10, 100, 170]]))
    results = {}
    for precision in ("fp32", "int8"):
        assert main(["infer", str(image), str(boxes), "--model", str(path), "--precision", precision]) == 0
        out, err = capsys.readouterr()
        results[precision] = np.array(json.loads(out)[0]["keypoints"]).reshape(-1, 3)
    assert 0 < np.abs(results["int8"] - results["fp32"]).max() < 200  # ran, and in int8
    with pytest.raises(SystemExit) as e:
        main(["infer", str(image), str(boxes), "--model", str(path), "--precision", "fp16"])
    assert e.value.code == 2
    capsys.readouterr()
    assert main(["bench", "--model", str(path), "--precision", "bf16", "int8", "--compare", str(image), str(boxes)]) == 0
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.startswith(("| bf16", "| int8"))]
    assert len(rows) == 2 and all(line.count("|") == 10 for line in rows), out
