"""convert(): official .pth, HF folders and bare safetensors into dense official float32 weights + metadata.

Expected values are computed here from the source tensors (torch.cat of the expert rows, of q/k/v),
never by the converter itself.
"""

import collections
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file as torch_save_file
from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

import npvitpose
from npvitpose.convert import convert
from npvitpose.datasets import DATASETS
from npvitpose.errors import NpvitposeError
from no_torch import run_without_torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSOC_K = [14, 16, 17, 17, 133]  # spec 1.6: associate heads 0..4 = aic, mpii, ap10k, apt36k, wholebody


def head_sd(prefix, kind, k, dim, g):
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = collections.OrderedDict()
    if kind == "classic":
        sd[prefix + "deconv_layers.0.weight"] = r(dim, 256, 4, 4)
        for layer in (1, 4):
            for name in ("weight", "bias", "running_mean"):
                sd[f"{prefix}deconv_layers.{layer}.{name}"] = r(256)
            sd[f"{prefix}deconv_layers.{layer}.running_var"] = r(256).abs() + 0.5
            sd[f"{prefix}deconv_layers.{layer}.num_batches_tracked"] = torch.tensor(1000)
            if layer == 1:
                sd[prefix + "deconv_layers.3.weight"] = r(256, 256, 4, 4)
        sd[prefix + "final_layer.weight"] = r(k, 256, 1, 1)
    else:
        sd[prefix + "final_layer.weight"] = r(k, dim, 3, 3)
    sd[prefix + "final_layer.bias"] = r(k)
    return sd


def official_sd(dim=384, depth=1, head="simple", k=17, part=None, split=False, assoc=(), assoc_head="simple",
                cls_token=False, seed=0):
    """An official-layout state dict. part: MoE part_features (fc2 has dim - part rows unless split,
    which mimics model_split.py: dense fc2 with the experts left in); assoc: associate head Ks."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    hidden = 4 * dim
    sd = collections.OrderedDict()
    sd["backbone.pos_embed"] = r(1, 193, dim)
    if cls_token:
        sd["backbone.cls_token"] = r(1, 1, dim)
    sd["backbone.patch_embed.proj.weight"] = r(dim, 3, 16, 16)
    sd["backbone.patch_embed.proj.bias"] = r(dim)
    for i in range(depth):
        p = f"backbone.blocks.{i}."
        sd[p + "norm1.weight"], sd[p + "norm1.bias"] = r(dim), r(dim)
        sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"] = r(3 * dim, dim), r(3 * dim)
        sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = r(dim, dim), r(dim)
        sd[p + "norm2.weight"], sd[p + "norm2.bias"] = r(dim), r(dim)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = r(hidden, dim), r(hidden)
        rows = dim - part if part and not split else dim
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = r(rows, hidden), r(rows)
        if part:
            for e in range(6):
                sd[f"{p}mlp.experts.{e}.weight"], sd[f"{p}mlp.experts.{e}.bias"] = r(part, hidden), r(part)
    sd["backbone.last_norm.weight"], sd["backbone.last_norm.bias"] = r(dim), r(dim)
    sd.update(head_sd("keypoint_head.", head, k, dim, g))
    for j, kk in enumerate(assoc):
        sd.update(head_sd(f"associate_keypoint_heads.{j}.", assoc_head if j == 1 else "simple", kk, dim, g))
    return sd


def save_pth(path, sd, wrap=True):
    meta = {"mmcv_version": "1.3.9", "config": "model = dict(type='TopDown')\n", "epoch": 210, "hook_msgs": {}}
    torch.save({"state_dict": sd, "meta": meta} if wrap else sd, path)
    return path


def read_npz(path):
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"]))
        return {k: z[k] for k in z.files if k != "__meta__"}, meta


def dense_expected(sd, head_prefix="keypoint_head.", expert=None):
    """The dense official weights, computed from the source tensors."""
    out = {}
    for key, value in sd.items():
        if key == "backbone.cls_token" or key.endswith("num_batches_tracked") or ".experts." in key:
            continue
        if key.startswith(("keypoint_head.", "associate_keypoint_heads.")):
            if key.startswith(head_prefix):
                out["keypoint_head." + key[len(head_prefix):]] = value.float().numpy()
            continue
        if expert is not None and ".mlp.fc2." in key:
            value = torch.cat([value, sd[key.replace("fc2.", f"experts.{expert}.")]], dim=0)
        out[key] = value.float().numpy()
    return out


def assert_weights_equal(got, expected):
    assert sorted(got) == sorted(expected)
    for key, ref in expected.items():
        assert got[key].dtype == np.float32, key
        assert got[key].shape == ref.shape, key
        np.testing.assert_array_equal(got[key], ref, err_msg=key)


def test_official_pth_classic(tmp_path):
    sd = official_sd(dim=384, depth=2, head="classic")
    src = save_pth(tmp_path / "vitpose-s.pth", sd)
    meta = convert(src, tmp_path / "s.npz")
    weights, stored = read_npz(tmp_path / "s.npz")
    assert_weights_equal(weights, dense_expected(sd))
    assert stored == meta
    coco = DATASETS["coco"]
    assert meta["format_version"] == 1
    # trap 5: S has 12 heads
    assert (meta["dim"], meta["depth"], meta["heads"], meta["mlp_hidden"]) == (384, 2, 12, 1536)
    assert (meta["num_keypoints"], meta["head"], meta["ln_eps"]) == (17, "classic", 1e-6)
    assert (meta["dataset"], meta["mode"], meta["moe"]) == ("coco", "udp", None)
    assert meta["keypoint_names"] == list(coco.keypoint_names)
    assert meta["flip_pairs"] == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16]]
    assert meta["skeleton"] == [list(e) for e in coco.skeleton]
    assert (meta["source_name"], meta["source_format"]) == ("vitpose-s.pth", "pth")
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    model = npvitpose.load(tmp_path / "s.npz")  # the loader accepts what the converter writes
    assert model.num_keypoints == 17


def test_official_pth_simple_bare_dict(tmp_path):
    sd = official_sd(dim=768, depth=1, head="simple")
    meta = convert(save_pth(tmp_path / "b.pth", sd, wrap=False), tmp_path / "b.npz")
    weights, _ = read_npz(tmp_path / "b.npz")
    assert_weights_equal(weights, dense_expected(sd))
    assert (meta["dim"], meta["heads"], meta["mlp_hidden"], meta["head"]) == (768, 12, 3072, "simple")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_sources_are_exact(tmp_path, dtype):
    sd = collections.OrderedDict((k, v.to(dtype) if v.is_floating_point() else v) for k, v in official_sd().items())
    convert(save_pth(tmp_path / "h.pth", sd), tmp_path / "h.npz")
    weights, _ = read_npz(tmp_path / "h.npz")
    assert_weights_equal(weights, dense_expected(sd))  # .float() of a half/bf16 tensor is exact


# ---------------------------------------------------------------------------------------------
# Hugging Face


def hf_model(dim=384, depth=2, heads=6, simple=False, k=17, experts=1, part=0, eps=None, seed=0):
    torch.manual_seed(seed)
    extra = {"layer_norm_eps": eps} if eps is not None else {}
    bc = VitPoseBackboneConfig(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
                               out_indices=[depth], num_experts=experts, part_features=part, **extra)
    model = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=bc, use_simple_decoder=simple, num_labels=k)).eval()
    with torch.no_grad():  # BatchNorm starts at mean 0 / var 1: give it values worth checking
        for name, buf in model.named_buffers():
            if "running" in name:
                buf.copy_(torch.rand(buf.shape) + 0.5)
    return model


# spec 3.2, written out independently of the converter's table
HF_TO_OFFICIAL = {
    "backbone.embeddings.position_embeddings": "backbone.pos_embed",
    "backbone.embeddings.patch_embeddings.projection.weight": "backbone.patch_embed.proj.weight",
    "backbone.embeddings.patch_embeddings.projection.bias": "backbone.patch_embed.proj.bias",
    "backbone.layernorm.weight": "backbone.last_norm.weight",
    "backbone.layernorm.bias": "backbone.last_norm.bias",
    "head.deconv1.weight": "keypoint_head.deconv_layers.0.weight",
    "head.deconv2.weight": "keypoint_head.deconv_layers.3.weight",
    "head.conv.weight": "keypoint_head.final_layer.weight",
    "head.conv.bias": "keypoint_head.final_layer.bias",
}
for _bn, _layer in (("batchnorm1", 1), ("batchnorm2", 4)):
    for _n in ("weight", "bias", "running_mean", "running_var"):
        HF_TO_OFFICIAL[f"head.{_bn}.{_n}"] = f"keypoint_head.deconv_layers.{_layer}.{_n}"
for _i in range(4):
    for _n in ("weight", "bias"):
        HF_TO_OFFICIAL[f"backbone.encoder.layer.{_i}.layernorm_before.{_n}"] = f"backbone.blocks.{_i}.norm1.{_n}"
        HF_TO_OFFICIAL[f"backbone.encoder.layer.{_i}.layernorm_after.{_n}"] = f"backbone.blocks.{_i}.norm2.{_n}"
        HF_TO_OFFICIAL[f"backbone.encoder.layer.{_i}.attention.output.dense.{_n}"] = (
            f"backbone.blocks.{_i}.attn.proj.{_n}")
        HF_TO_OFFICIAL[f"backbone.encoder.layer.{_i}.mlp.fc1.{_n}"] = f"backbone.blocks.{_i}.mlp.fc1.{_n}"
        HF_TO_OFFICIAL[f"backbone.encoder.layer.{_i}.mlp.fc2.{_n}"] = f"backbone.blocks.{_i}.mlp.fc2.{_n}"


def hf_expected(model, expert=None):
    sd = model.state_dict()
    out = {}
    for key, value in sd.items():
        if key in HF_TO_OFFICIAL:
            out[HF_TO_OFFICIAL[key]] = value.numpy()
    depth = model.config.backbone_config.num_hidden_layers
    for i in range(depth):
        a = f"backbone.encoder.layer.{i}.attention.attention."
        for n in ("weight", "bias"):
            out[f"backbone.blocks.{i}.attn.qkv.{n}"] = torch.cat(
                [sd[f"{a}query.{n}"], sd[f"{a}key.{n}"], sd[f"{a}value.{n}"]], dim=0).numpy()  # trap 4: Q, K, V rows
            if expert is not None:
                m = f"backbone.encoder.layer.{i}.mlp."
                out[f"backbone.blocks.{i}.mlp.fc2.{n}"] = torch.cat(
                    [sd[f"{m}fc2.{n}"], sd[f"{m}experts.{expert}.{n}"]], dim=0).numpy()
    return out


def test_hf_folder_classic(tmp_path):
    model = hf_model(heads=6, eps=1e-6)
    model.save_pretrained(tmp_path / "hf")
    meta = convert(tmp_path / "hf", tmp_path / "hf.npz")
    weights, _ = read_npz(tmp_path / "hf.npz")
    assert_weights_equal(weights, hf_expected(model))
    # heads and eps come from config.json (6 heads, not the width rule's 12; eps 1e-6, not HF's default)
    assert (meta["heads"], meta["ln_eps"], meta["config_source"]) == (6, 1e-6, "config.json")
    assert (meta["head"], meta["source_format"], meta["source_name"]) == ("classic", "hf", "hf")
    assert meta["dataset"] == "coco"
    st = (tmp_path / "hf" / "model.safetensors").read_bytes()
    assert meta["source_sha256"] == hashlib.sha256(st).hexdigest()


def test_hf_folder_runs_like_transformers(tmp_path):
    model = hf_model(heads=6, simple=True)
    model.save_pretrained(tmp_path / "hf")
    meta = convert(tmp_path / "hf", tmp_path / "hf.npz")
    assert meta["ln_eps"] == 1e-12  # trap 3: HF configs run with the 1e-12 default
    pixels = torch.randn(2, 3, 256, 192, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(pixels).heatmaps.numpy()
    got = npvitpose.load(tmp_path / "hf.npz").forward(pixels.numpy())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * float(np.abs(expected).max()))


def test_bare_safetensors_uses_defaults(tmp_path):
    model = hf_model(heads=12, simple=True, depth=1)
    (tmp_path / "lone").mkdir()
    torch_save_file(model.state_dict(), str(tmp_path / "lone" / "vitpose.safetensors"))
    meta = convert(tmp_path / "lone" / "vitpose.safetensors", tmp_path / "lone.npz")
    weights, _ = read_npz(tmp_path / "lone.npz")
    assert_weights_equal(weights, hf_expected(model))
    assert (meta["heads"], meta["ln_eps"]) == (12, 1e-12)
    assert (meta["config_source"], meta["source_format"]) == ("defaults", "safetensors")


def test_bare_safetensors_with_official_names(tmp_path):
    sd = official_sd()
    torch_save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "official.safetensors"))
    meta = convert(tmp_path / "official.safetensors", tmp_path / "o.npz")
    weights, _ = read_npz(tmp_path / "o.npz")
    assert_weights_equal(weights, dense_expected(sd))
    assert meta["ln_eps"] == 1e-6


def test_hf_plus_only_has_the_coco_head(tmp_path):
    model = hf_model(dim=384, depth=1, heads=12, experts=6, part=96)
    model.save_pretrained(tmp_path / "plus")
    meta = convert(tmp_path / "plus", tmp_path / "plus.npz", dataset="coco")
    weights, _ = read_npz(tmp_path / "plus.npz")
    assert_weights_equal(weights, hf_expected(model, expert=0))
    assert meta["moe"] == {"part_features": 96, "expert": 0}
    with pytest.raises(NpvitposeError, match="only the COCO head"):
        convert(tmp_path / "plus", tmp_path / "x.npz", dataset="aic")
    with pytest.raises(NpvitposeError, match="coco"):
        convert(tmp_path / "plus", tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def test_hf_missing_value_is_named(tmp_path):
    sd = hf_model(depth=1, heads=12, simple=True).state_dict()
    del sd["backbone.encoder.layer.0.attention.attention.value.weight"]
    torch_save_file(sd, str(tmp_path / "m.safetensors"))
    with pytest.raises(NpvitposeError, match=r"attention\.attention\.value\.weight"):
        convert(tmp_path / "m.safetensors", tmp_path / "m.npz")


def test_hf_folder_problems(tmp_path):
    model = hf_model(depth=1, heads=12, simple=True)
    model.save_pretrained(tmp_path / "hf")
    os.rename(tmp_path / "hf" / "config.json", tmp_path / "config.bak")
    with pytest.raises(NpvitposeError, match="config.json"):
        convert(tmp_path / "hf", tmp_path / "x.npz")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(NpvitposeError, match="not a VitPose config"):
        convert(tmp_path / "hf", tmp_path / "x.npz")
    (tmp_path / "hf" / "config.json").write_text("{broken")
    with pytest.raises(NpvitposeError, match="JSON"):
        convert(tmp_path / "hf", tmp_path / "x.npz")
    config = json.loads((tmp_path / "config.bak").read_text())
    config["backbone_config"]["hidden_size"] = 768
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(NpvitposeError, match="hidden_size"):
        convert(tmp_path / "hf", tmp_path / "x.npz")
    config["backbone_config"].update(hidden_size=384, num_attention_heads=7)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(NpvitposeError, match="num_attention_heads"):
        convert(tmp_path / "hf", tmp_path / "x.npz")
    os.remove(tmp_path / "hf" / "model.safetensors")
    with pytest.raises(NpvitposeError, match="model.safetensors"):
        convert(tmp_path / "hf", tmp_path / "x.npz")
    with pytest.raises(NpvitposeError, match="no such file"):
        convert(tmp_path / "absent.pth", tmp_path / "x.npz")


# ---------------------------------------------------------------------------------------------
# ViTPose+ (MoE) and the other multi-dataset layouts


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_moe_pth_folds_the_expert_and_picks_the_head(tmp_path, dataset):
    sd = official_sd(dim=384, depth=2, part=96, head="classic" if dataset == "mpii" else "simple", assoc=ASSOC_K,
                     assoc_head="classic")
    src = save_pth(tmp_path / "vitpose+_small.pth", sd)
    meta = convert(src, tmp_path / f"{dataset}.npz", dataset=dataset)
    weights, _ = read_npz(tmp_path / f"{dataset}.npz")
    expert = {"coco": 0, "aic": 1, "mpii": 2, "ap10k": 3, "apt36k": 4, "wholebody": 5}[dataset]  # spec 1.6
    head = "keypoint_head." if expert == 0 else f"associate_keypoint_heads.{expert - 1}."
    assert_weights_equal(weights, dense_expected(sd, head, expert))
    assert weights["backbone.blocks.1.mlp.fc2.weight"].shape == (384, 1536)
    assert meta["moe"] == {"part_features": 96, "expert": expert}
    assert meta["num_keypoints"] == [17, 14, 16, 17, 17, 133][expert]
    assert meta["dataset"] == dataset
    assert meta["mode"] == ("udp" if dataset in ("coco", "mpii") else "classic")  # spec 4.2
    assert meta["flip_pairs"] == [list(p) for p in DATASETS[dataset].flip_pairs]


def test_moe_without_dataset_lists_the_choices(tmp_path):
    src = save_pth(tmp_path / "plus.pth", official_sd(part=96, assoc=ASSOC_K))
    with pytest.raises(NpvitposeError) as info:
        convert(src, tmp_path / "x.npz")
    assert all(name in str(info.value) for name in DATASETS)


def test_moe_missing_associate_head_is_named(tmp_path):
    src = save_pth(tmp_path / "plus.pth", official_sd(part=96, assoc=[14]))
    with pytest.raises(NpvitposeError, match=r"missing key associate_keypoint_heads\.1\.final_layer\.weight"):
        convert(src, tmp_path / "x.npz", dataset="mpii")
    with pytest.raises(NpvitposeError, match=r"missing key backbone\.blocks\.0\.mlp\.experts\.5\.weight"):
        sd = official_sd(part=96, assoc=ASSOC_K)
        for key in [k for k in sd if ".experts.5." in k]:
            del sd[key]
        convert(save_pth(tmp_path / "few.pth", sd), tmp_path / "x.npz", dataset="wholebody")


def test_model_split_output_ignores_leftover_experts(tmp_path):
    sd = official_sd(part=96, split=True, k=16)  # mpii.pth from model_split: dense fc2, experts left in
    meta = convert(save_pth(tmp_path / "mpii.pth", sd), tmp_path / "mpii.npz")
    weights, _ = read_npz(tmp_path / "mpii.npz")
    assert_weights_equal(weights, dense_expected(sd))
    assert (meta["dataset"], meta["moe"], meta["num_keypoints"], meta["mode"]) == ("mpii", None, 16, "udp")
    sd = official_sd(part=96, split=True, k=17)
    meta = convert(save_pth(tmp_path / "ap10k.pth", sd), tmp_path / "ap10k.npz", dataset="ap10k")
    assert (meta["dataset"], meta["mode"]) == ("ap10k", "classic")


def test_multitask_extras_are_ignored(tmp_path):
    sd = official_sd(cls_token=True, assoc=[14, 16], head="simple")  # COCO+AIC+MPII, not MoE
    meta = convert(save_pth(tmp_path / "multi.pth", sd), tmp_path / "multi.npz")
    weights, _ = read_npz(tmp_path / "multi.npz")
    assert_weights_equal(weights, dense_expected(sd))
    assert meta["dataset"] == "coco"


@pytest.mark.parametrize("k, dataset", [(133, "wholebody"), (14, "aic"), (16, "mpii")])
def test_dataset_defaults_from_keypoint_count(tmp_path, k, dataset):
    meta = convert(save_pth(tmp_path / "w.pth", official_sd(k=k)), tmp_path / "w.npz")
    assert meta["dataset"] == dataset and meta["num_keypoints"] == k
    assert len(meta["keypoint_names"]) == k


def test_bad_sources_are_named(tmp_path):
    out = tmp_path / "x.npz"
    sd = official_sd(depth=2)
    sd["backbone.blocks.0.attn.extra.weight"] = torch.zeros(3)
    with pytest.raises(NpvitposeError, match=r"unknown key backbone\.blocks\.0\.attn\.extra\.weight"):
        convert(save_pth(tmp_path / "extra.pth", sd), out)
    sd = official_sd(depth=2)
    del sd["backbone.blocks.1.attn.proj.bias"]
    with pytest.raises(NpvitposeError, match=r"missing key backbone\.blocks\.1\.attn\.proj\.bias"):
        convert(save_pth(tmp_path / "missing.pth", sd), out)
    sd = official_sd()
    sd["backbone.blocks.0.mlp.fc1.bias"] = torch.zeros(7)
    with pytest.raises(NpvitposeError, match=r"backbone\.blocks\.0\.mlp\.fc1\.bias has shape"):
        convert(save_pth(tmp_path / "shape.pth", sd), out)
    sd = official_sd()
    sd["backbone.pos_embed"] = torch.zeros(1, 192, 384)
    with pytest.raises(NpvitposeError, match="pos_embed"):
        convert(save_pth(tmp_path / "pos.pth", sd), out)
    sd = official_sd()
    sd["backbone.last_norm.bias"][3] = float("nan")
    with pytest.raises(NpvitposeError, match="NaN"):
        convert(save_pth(tmp_path / "nan.pth", sd), out)
    with pytest.raises(NpvitposeError, match="width 256"):
        convert(save_pth(tmp_path / "narrow.pth", official_sd(dim=256)), out)
    with pytest.raises(NpvitposeError, match="17 keypoints but mpii has 16"):
        convert(save_pth(tmp_path / "coco.pth", official_sd()), out, dataset="mpii")
    with pytest.raises(NpvitposeError, match="unknown dataset"):
        convert(tmp_path / "coco.pth", out, dataset="crowdpose")
    with pytest.raises(NpvitposeError, match="5 keypoints"):
        convert(save_pth(tmp_path / "five.pth", official_sd(k=5)), out)
    assert not out.exists()


def mirror(name):
    if name[:2] in ("L_", "R_"):  # AP-10K spells sides L_ / R_
        return {"L_": "R_", "R_": "L_"}[name[:2]] + name[2:]
    return name.replace("left", "#").replace("right", "left").replace("#", "right")


def test_dataset_tables_are_consistent():
    for ds in DATASETS.values():
        k = ds.num_keypoints
        assert len(set(ds.keypoint_names)) == k and len(ds.sigmas) == k
        assert all(0 <= i < k and 0 <= j < k and i != j for i, j in ds.skeleton + ds.flip_pairs)
        flat = [i for pair in ds.flip_pairs for i in pair]
        assert len(flat) == len(set(flat))  # each keypoint swaps with at most one other
        for i, j in ds.flip_pairs:  # a flip pair is a left/right mirror by name (face points are numbered)
            a, b = ds.keypoint_names[i], ds.keypoint_names[j]
            if not a.startswith("face-"):
                assert mirror(a) == b, (ds.name, a, b)
    assert [DATASETS[d].num_keypoints for d in ("coco", "aic", "mpii", "ap10k", "apt36k", "wholebody")] == \
        [17, 14, 16, 17, 17, 133]  # spec 2.3
    assert len(DATASETS["wholebody"].flip_pairs) == 61  # spec 5.1


def test_convert_needs_no_torch(tmp_path):
    sd = official_sd(part=96, assoc=ASSOC_K)
    save_pth(tmp_path / "plus.pth", sd)
    hf = hf_model(depth=1, heads=12, simple=True)
    hf.save_pretrained(tmp_path / "hf")
    result = run_without_torch(f"""
        from npvitpose.convert import convert
        convert({str(tmp_path / "plus.pth")!r}, {str(tmp_path / "plus.npz")!r}, dataset="aic")
        convert({str(tmp_path / "hf")!r}, {str(tmp_path / "hf.npz")!r})
    """, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert_weights_equal(read_npz(tmp_path / "plus.npz")[0], dense_expected(sd, "associate_keypoint_heads.0.", 1))
    assert_weights_equal(read_npz(tmp_path / "hf.npz")[0], hf_expected(hf))
