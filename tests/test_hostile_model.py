"""Converted models that lie: a `__meta__` record with wrong types, nesting or sizes, weights that would
give NaN. Loading refuses each one on one line before using the field (or allocating by it); nothing
ever writes NaN into a JSON output."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npvitpose
from hostile import cli
from npvitpose.model import Config, random_weights, save_npz
from test_cli import BOXES, tiny_meta, write_image, write_json

TINY = Config(dim=64, depth=1, heads=2, mlp_hidden=128, num_keypoints=17, head="classic", ln_eps=1e-6)


@pytest.fixture(scope="module")
def weights():
    return random_weights(TINY, seed=3)


def write(path, weights, meta=None, raw_meta=None):
    arrays = dict(weights)
    arrays["__meta__"] = np.array(raw_meta if raw_meta is not None else json.dumps(meta))
    np.savez(path, **arrays)
    return path


META = dict(tiny_meta(TINY), format_version=1)


@pytest.mark.parametrize("change, needle", [
    ({"depth": 10**6}, "depth = 1000000 is outside"),
    ({"depth": 500}, "weights, but a depth-500"),
    ({"dim": "64"}, "dim must be an integer"),
    ({"num_keypoints": True}, "num_keypoints must be an integer"),
    ({"flip_pairs": [[1, [2]]]}, "flip_pairs"),
    ({"flip_pairs": [[1, 2], [2, 3]]}, "swapped twice"),
    ({"flip_pairs": [[1, 99]]}, "flip_pairs"),
    ({"flip_pairs": {"1": 2}}, "flip_pairs must be a list"),
    ({"skeleton": [[0, 1, 2]]}, "skeleton"),
    ({"skeleton": "0-1"}, "skeleton must be a list"),
    ({"dataset": ["coco"]}, "dataset must be a short text"),
    ({"keypoint_names": ["nose"]}, "keypoint_names must be 17"),
    ({"mode": "fancy"}, "mode must be one of"),
    ({"ln_eps": -1e-6}, "ln_eps"),
    ({"ln_eps": 1e400}, "Infinity, which is not JSON"),
    ({"source_sha256": "abc"}, "sha256"),
    ({"moe": [1, 2]}, "moe must be"),
    ({"format_version": 2}, "format version 2"),
])
def test_lying_metadata_is_refused_on_one_line(tmp_path, weights, change, needle):
    path = write(tmp_path / "m.npz", weights, {**META, **change})
    with pytest.raises(npvitpose.NpvitposeError, match=needle):
        npvitpose.load(path)


@pytest.mark.parametrize("raw, needle", [
    ('{"dim": NaN}', "NaN, which is not JSON"),
    ('{"dim": 64, "dim": 65}', "appears twice"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"dim": 1' + "0" * 5000 + "}", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ("not json", "not valid JSON"),
])
def test_malformed_metadata_text(tmp_path, weights, raw, needle):
    with pytest.raises(npvitpose.NpvitposeError, match=needle):
        npvitpose.load(write(tmp_path / "m.npz", weights, raw_meta=raw))


def test_metadata_that_is_not_one_text_record(tmp_path, weights):
    arrays = dict(weights, __meta__=np.array([json.dumps(META)] * 2))
    np.savez(tmp_path / "m.npz", **arrays)
    with pytest.raises(npvitpose.NpvitposeError, match="not a single text record"):
        npvitpose.load(tmp_path / "m.npz")


def test_claimed_depth_fails_fast_and_small(tmp_path, weights):
    """Seconds and gigabytes on the old loader, which built every key of 10^6 blocks before comparing."""
    write_image(tmp_path / "img.jpg")
    write_json(tmp_path / "boxes.json", BOXES)
    for depth, needle in ((10**6, "outside"), (512, "weights, but a depth-512")):
        path = write(tmp_path / "deep.npz", weights, {**META, "depth": depth})
        code, out, err, seconds, peak = cli("infer", tmp_path / "img.jpg", tmp_path / "boxes.json", "--model", path)
        print(f"depth {depth} of 1: exit {code}, {seconds:.2f} s, peak {peak:.0f} MB: {err.strip()}")
        assert code == 1 and needle in err and err.count("\n") == 1, err
        assert peak < 400


@pytest.mark.parametrize("key, value, needle", [
    ("keypoint_head.deconv_layers.1.running_var", -1.0, "negative variance"),
    ("backbone.blocks.0.mlp.fc1.weight", 1e30, "beyond"),
    ("backbone.pos_embed", np.nan, "NaN"),
])
def test_weights_that_would_give_nan_are_refused_at_load(tmp_path, weights, key, value, needle):
    bad = dict(weights)
    bad[key] = bad[key].copy()
    bad[key].flat[3] = value
    with pytest.raises(npvitpose.NpvitposeError, match=needle):
        npvitpose.load(write(tmp_path / "m.npz", bad, META))


def test_weights_that_overflow_in_the_forward_give_an_error_not_nan_json(tmp_path, weights):
    """Every value within the load bound, yet float32 overflows: one line, no out.json written."""
    bad = dict(weights)
    for key in bad:  # a head of 1e6 gains after constant features: ~1e43 at the output
        if key.startswith("keypoint_head"):
            fill = 0.0 if key.endswith(("bias", "running_mean", "running_var")) else 1e6
            bad[key] = np.full_like(bad[key], fill)
    bad["backbone.last_norm.bias"] = np.ones_like(bad["backbone.last_norm.bias"])
    model = tmp_path / "big.npz"
    save_npz(str(model), bad, tiny_meta(TINY))
    write_image(tmp_path / "img.jpg")
    write_json(tmp_path / "boxes.json", BOXES)
    code, out, err, _, _ = cli("infer", tmp_path / "img.jpg", tmp_path / "boxes.json", "--model", model,
                               "-o", tmp_path / "out.json")
    assert code == 1 and "NaN or infinity" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out.json").exists()


_json = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
                     | st.text(max_size=8), lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(META)), value=_json)
def test_any_field_of_any_json_type_fails_cleanly(tmp_path, weights, key, value):
    path = write(tmp_path / "m.npz", weights, {**META, key: value})
    try:
        model = npvitpose.load(path)
        model(np.zeros((64, 48, 3), np.uint8), [[4, 4, 30, 50]])  # a field that passed must also work
    except npvitpose.NpvitposeError as e:
        assert "\n" not in str(e)
