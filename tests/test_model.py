"""The model file: validation of every key, shape, dtype and metadata field; batching; imports."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import npvitpose
from npvitpose.model import Config, from_weights, random_weights, save_npz
from npvitpose.npz import read_npz

CFG = Config(dim=64, depth=2, heads=4, mlp_hidden=128, num_keypoints=17, head="classic")
META = dict(dim=64, depth=2, heads=4, mlp_hidden=128, num_keypoints=17, head="classic", ln_eps=1e-6, dataset="coco")


@pytest.fixture(scope="module")
def weights():
    return random_weights(CFG, seed=3)


def write(tmp_path, weights, meta=META, name="m.npz"):
    path = tmp_path / name
    save_npz(path, weights, meta)
    return path


def test_roundtrip_and_metadata(tmp_path, weights):
    path = write(tmp_path, weights)
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # an ordinary file, not mkstemp's 0600
    model = npvitpose.load(path)
    assert model.num_keypoints == 17 and model.meta["dataset"] == "coco" and model.meta["format_version"] == 1
    stored = read_npz(path)
    for key, a in weights.items():
        assert np.array_equal(stored[key], a)
    # only what the forward reads as is stays: the layer norms and biases (the rest is kept only packed or folded)
    kept = {k for k in weights if k.startswith("backbone.") and k.endswith(("norm1.weight", "norm2.weight",
                                                                            "last_norm.weight", ".bias"))}
    assert set(model.weights) == kept | {"keypoint_head.final_layer.bias"}
    for key, a in model.weights.items():
        assert np.array_equal(a, weights[key])


@pytest.mark.parametrize("head", ["classic", "simple"])
def test_any_batch_size_gives_the_same_per_crop_result(head):
    cfg = Config(**{**CFG.__dict__, "head": head})
    model = from_weights(random_weights(cfg, seed=5), {**META, "head": head})
    pixels = np.random.default_rng(0).standard_normal((5, 3, 256, 192)).astype(np.float32)
    batch = model.forward(pixels)
    assert batch.shape == (5, 17, 64, 48) and batch.dtype == np.float32
    for i in (0, 4):
        one = model.forward(pixels[i:i + 1])
        assert np.abs(one[0] - batch[i]).max() <= 1e-5 * np.abs(batch[i]).max()
    assert model.forward(np.zeros((0, 3, 256, 192), np.float32)).shape == (0, 17, 64, 48)


def test_wrong_pixel_shape_is_refused(weights):
    model = from_weights(weights, META)
    with pytest.raises(npvitpose.NpvitposeError, match="pixels must have shape"):
        model.forward(np.zeros((1, 3, 224, 224), np.float32))


@pytest.mark.parametrize("damage,message", [
    (lambda w: w.pop("backbone.blocks.1.mlp.fc2.bias"), "missing weight 'backbone.blocks.1.mlp.fc2.bias'"),
    (lambda w: w.update({"backbone.cls_token": np.zeros((1, 1, 64), np.float32)}), "unexpected weight 'backbone.cls_token'"),
    (lambda w: w.update({"backbone.pos_embed": np.zeros((1, 192, 64), np.float32)}), "'backbone.pos_embed' has shape"),
    (lambda w: w.update({"backbone.last_norm.weight": np.full(64, np.nan, np.float32)}), "NaN or inf"),
])
def test_damaged_weights_are_named(tmp_path, weights, damage, message):
    w = dict(weights)
    damage(w)
    with pytest.raises(npvitpose.NpvitposeError, match=message.replace("(", r"\(")):
        npvitpose.load(write(tmp_path, w))


def test_wrong_dtype_is_named(tmp_path, weights):
    path = tmp_path / "m.npz"
    arrays = dict(weights, **{"__meta__": np.array(json.dumps({**META, "format_version": 1}))})
    arrays["backbone.pos_embed"] = arrays["backbone.pos_embed"].astype(np.float16)
    np.savez(path, **arrays)
    with pytest.raises(npvitpose.NpvitposeError, match="'backbone.pos_embed' has dtype float16"):
        npvitpose.load(path)


@pytest.mark.parametrize("meta,message", [
    ({**META, "head": "fancy"}, "head must be one of classic, simple"),
    ({k: v for k, v in META.items() if k != "heads"}, "heads must be an integer"),
    ({**META, "heads": 5}, "not a multiple of heads"),
    ({**META, "ln_eps": 0}, "ln_eps"),
])
def test_bad_metadata(tmp_path, weights, meta, message):
    with pytest.raises(npvitpose.NpvitposeError, match=message):
        npvitpose.load(write(tmp_path, weights, meta))


def test_not_a_model_file(tmp_path, weights):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(npvitpose.NpvitposeError, match="not an .npz"):
        npvitpose.load(text)
    with pytest.raises(npvitpose.NpvitposeError, match="no such file"):
        npvitpose.load(tmp_path / "missing.npz")
    with pytest.raises(npvitpose.NpvitposeError, match="no model.safetensors"):
        npvitpose.load(tmp_path)  # a folder is taken for a Hugging Face one, to convert: it has no weights
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(npvitpose.NpvitposeError, match="no __meta__"):
        npvitpose.load(plain)
    good = write(tmp_path, weights)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(npvitpose.NpvitposeError):
        npvitpose.load(truncated)


def test_object_arrays_are_refused(tmp_path, weights):
    path = tmp_path / "obj.npz"
    np.savez(path, __meta__=np.array(json.dumps({**META, "format_version": 1})), x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(npvitpose.NpvitposeError, match="Python objects"):
        npvitpose.load(path)


def test_save_is_atomic_and_leaves_nothing_on_failure(tmp_path, weights):
    path = write(tmp_path, weights)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_npz(path, weights, {**META, "bad": object()})  # not JSON-serialisable
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_import_loads_numpy_and_numba_only():
    # anything numba itself pulls in (it imports scipy when present) is not ours to judge
    probe = ("import sys; {}; print(sorted({{m.split('.')[0] for m in sys.modules}} & "
             "{{'torch', 'transformers', 'onnxruntime', 'cv2', 'scipy', 'safetensors', 'PIL'}}))")
    run = [sys.executable, "-c"]
    base = subprocess.run(run + [probe.format("import numpy, numba")], capture_output=True, text=True, check=True)
    ours = subprocess.run(run + [probe.format("import npvitpose, npvitpose.model")], capture_output=True, text=True,
                          check=True)
    assert ours.stdout == base.stdout
    assert "cv2" not in ours.stdout and "torch" not in ours.stdout
