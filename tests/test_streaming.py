"""load() streams the .npz: headers checked first, then one linear layer at a time read, checked, packed, freed."""

import weakref

import numpy as np
import pytest

import npvitpose
from npvitpose import model as model_mod
from npvitpose import npz
from npvitpose.model import Config, random_weights, save_npz

# the simple head and 8 blocks: the linear layers are most of the file, each a small part of them
CFG = Config(dim=64, depth=8, heads=4, mlp_hidden=256, num_keypoints=17, head="simple")
META = dict(dim=64, depth=8, heads=4, mlp_hidden=256, num_keypoints=17, head="simple", ln_eps=1e-6, dataset="coco")
LINEAR = ("qkv.weight", "proj.weight", "fc1.weight", "fc2.weight")


@pytest.fixture(scope="module")
def weights():
    return random_weights(CFG, seed=7)


@pytest.fixture(scope="module")
def path(tmp_path_factory, weights):
    p = tmp_path_factory.mktemp("stream") / "m.npz"
    save_npz(p, weights, META)
    return p


def is_linear(key):
    return key.startswith("backbone.blocks.") and key.endswith(LINEAR)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("mmap", [False, True])
def test_one_fp32_layer_alive_at_a_time(monkeypatch, path, precision, mmap):
    """While a layer is packed, no other layer's fp32 array read from the file is alive; after load, none."""
    alive = {}
    read = npz.Archive.__getitem__

    def spy(self, name):
        array = read(self, name)
        if is_linear(name):
            alive[name] = weakref.ref(array)
        return array

    packed = []
    pack = model_mod.Model._pack

    def spy_pack(self, key):
        assert [k for k, ref in alive.items() if ref() is not None] == [key]
        packed.append(key)
        return pack(self, key)

    monkeypatch.setattr(npz.Archive, "__getitem__", spy)
    monkeypatch.setattr(model_mod.Model, "_pack", spy_pack)
    model = npvitpose.load(path, mmap=mmap, precision=precision)
    assert len(packed) == 4 * CFG.depth == len(model._linear)
    assert [k for k, ref in alive.items() if ref() is not None] == []


def test_every_header_is_checked_before_any_value(tmp_path, weights):
    """A NaN in the first member and a wrong shape in the last: the shape is named (nothing was read yet)."""
    bad = dict(weights)
    bad["backbone.pos_embed"] = np.full_like(bad["backbone.pos_embed"], np.nan)
    bad["keypoint_head.final_layer.bias"] = np.zeros(16, np.float32)
    save_npz(tmp_path / "m.npz", bad, META)
    with pytest.raises(npvitpose.NpvitposeError, match="'keypoint_head.final_layer.bias' has shape"):
        npvitpose.load(tmp_path / "m.npz")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_bad_last_layer_is_one_error(tmp_path, weights, precision):
    """The last layer packed holds a NaN: the error names it after the others were packed, and load returns
    nothing (a Model is only ever returned whole)."""
    last = f"backbone.blocks.{CFG.depth - 1}.mlp.fc2.weight"
    bad = dict(weights)
    bad[last] = bad[last].copy()
    bad[last][-1, -1] = np.nan
    save_npz(tmp_path / "m.npz", bad, META)
    with pytest.raises(npvitpose.NpvitposeError, match=f"m.npz: weight '{last}' contains NaN"):
        npvitpose.load(tmp_path / "m.npz", precision=precision)


def test_damaged_member_read_late_names_the_file(tmp_path, weights):
    """A deflated member corrupted inside its stream passes the index and fails while streaming: one error."""
    arrays = {k: np.ascontiguousarray(v) for k, v in weights.items()}
    arrays["__meta__"] = np.array(__import__("json").dumps({**META, "format_version": 1}))
    np.savez_compressed(tmp_path / "m.npz", **arrays)
    blob = bytearray((tmp_path / "m.npz").read_bytes())
    name = f"backbone.blocks.{CFG.depth - 1}.mlp.fc1.weight.npy".encode()
    at = blob.index(name) + len(name) + 400  # inside that member's deflate stream, past its .npy header
    blob[at:at + 64] = bytes(64)
    (tmp_path / "m.npz").write_bytes(bytes(blob))
    with pytest.raises(npvitpose.NpvitposeError, match=r"m\.npz: member 'backbone\.blocks\.7\.mlp\.fc1\.weight\.npy'"):
        npvitpose.load(tmp_path / "m.npz")


def test_mmap_load_is_the_same_model_and_keeps_no_mapping(path):
    """mmap=True packs straight from the page cache; afterwards the file is not mapped (a later change to it
    cannot reach the model) and the heatmaps are the same bits."""
    pixels = np.random.default_rng(1).standard_normal((2, 3, 256, 192)).astype(np.float32)
    read = npvitpose.load(path)
    mapped = npvitpose.load(path, mmap=True)
    with open("/proc/self/maps") as f:
        assert str(path) not in f.read()
    np.testing.assert_array_equal(mapped.forward(pixels), read.forward(pixels))
