"""Reference side of the fidelity tests: seeded ViTPose weights, Hugging Face `VitPoseForPoseEstimation`.

The weights are generated with NumPy under the OFFICIAL key names (spec 3.1), so a torch-free test can
regenerate them from a seed. The same dict is written as an official mmcv `.pth` and, mapped by spec 3.2,
loaded into transformers' model, whose forward (eager attention, float32, CPU) is the reference.
torch and transformers are imported inside the functions that need them, never at module import.
"""

import json
from dataclasses import dataclass

import numpy as np

IMAGE_HW = (256, 192)
GRID_HW = (16, 12)
NUM_TOKENS = 192
OFFICIAL_LN_EPS = 1e-6  # spec 1.3: official norm_layer eps
HF_DEFAULT_LN_EPS = 1e-12  # spec 1.3: VitPoseBackboneConfig default, kept by the hub configs
ASSOCIATE_KEYPOINTS = (14, 16, 17, 17, 133)  # spec 1.6: associate_keypoint_heads.0..4
DATASET_EXPERT = {"coco": 0, "aic": 1, "mpii": 2, "ap10k": 3, "apt36k": 4, "wholebody": 5}  # spec 1.6


@dataclass(frozen=True)
class Variant:
    """One reference model: its shape, its HF config eps, its seed and batch."""

    name: str
    dim: int
    depth: int
    heads: int
    num_keypoints: int = 17  # K of `keypoint_head`
    simple: bool = False
    experts: int = 1
    part_features: int = 0
    embed_scale: float = 1.0  # < 1 shrinks the token variance so the layer-norm eps matters
    hf_eps: float = HF_DEFAULT_LN_EPS  # layer_norm_eps of the HF folder; the .pth path is always 1e-6
    seed: int = 0
    batch: int = 2

    @property
    def mlp_hidden(self) -> int:
        return 4 * self.dim

    @property
    def moe(self) -> bool:
        return self.experts > 1


VARIANTS = {
    v.name: v
    for v in (
        Variant("b-classic", 768, 12, 12, seed=11),
        Variant("b-simple", 768, 2, 12, simple=True, seed=12),
        Variant("s-classic", 384, 12, 12, seed=13),
        Variant("plus-b-moe", 768, 2, 12, experts=6, part_features=192, seed=14),
        Variant("b-wholebody", 768, 1, 12, num_keypoints=133, seed=15),
        Variant("l-classic-d2", 1024, 2, 16, seed=16),
        Variant("h-simple-d2", 1280, 2, 16, simple=True, seed=17),
        Variant("s-small-variance", 384, 2, 12, embed_scale=3e-4, seed=18),
        Variant("s-eps1e-5-config", 384, 2, 12, embed_scale=3e-3, hf_eps=1e-5, seed=20),  # variance ~1.6e-5
    )
}


def pixels(seed: int, batch: int) -> np.ndarray:
    """(B, 3, 256, 192) float32 normalized input: unit noise plus a smooth colour ramp."""
    rng = np.random.default_rng(10_000 + seed)
    noise = rng.standard_normal((batch, 3, *IMAGE_HW))
    yy, xx = np.meshgrid(np.linspace(-1, 1, IMAGE_HW[0]), np.linspace(-1, 1, IMAGE_HW[1]), indexing="ij")
    ramp = np.stack([xx, yy, xx * yy])[None] * rng.uniform(0.5, 1.5, (batch, 3, 1, 1))
    return (noise + ramp).astype(np.float32)


def _normal(rng, shape, std):
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _gamma(rng, n):
    return (1.0 + 0.25 * rng.standard_normal(n)).astype(np.float32)


def _batchnorm(rng, prefix, n, sd):
    sd[f"{prefix}.weight"] = _gamma(rng, n)
    sd[f"{prefix}.bias"] = _normal(rng, n, 0.2)
    sd[f"{prefix}.running_mean"] = _normal(rng, n, 0.3)
    sd[f"{prefix}.running_var"] = rng.uniform(0.3, 2.0, n).astype(np.float32)
    sd[f"{prefix}.num_batches_tracked"] = np.array(4242, dtype=np.int64)


def _head(rng, prefix, dim, k, simple, sd):
    if simple:
        sd[f"{prefix}.final_layer.weight"] = _normal(rng, (k, dim, 3, 3), 1.5 / np.sqrt(9 * dim))
        sd[f"{prefix}.final_layer.bias"] = _normal(rng, k, 0.2)
        return
    # spec 2.1: ConvTranspose2d weight is (C_in, C_out, 4, 4); each output pixel sums 2x2 taps of C_in
    sd[f"{prefix}.deconv_layers.0.weight"] = _normal(rng, (dim, 256, 4, 4), 1.0 / np.sqrt(4 * dim))
    _batchnorm(rng, f"{prefix}.deconv_layers.1", 256, sd)
    sd[f"{prefix}.deconv_layers.3.weight"] = _normal(rng, (256, 256, 4, 4), 1.0 / np.sqrt(4 * 256))
    _batchnorm(rng, f"{prefix}.deconv_layers.4", 256, sd)
    sd[f"{prefix}.final_layer.weight"] = _normal(rng, (k, 256, 1, 1), 1.5 / np.sqrt(256))
    sd[f"{prefix}.final_layer.bias"] = _normal(rng, k, 0.2)


def official_weights(v: Variant) -> dict:
    """Seeded weights under the official key names, as a real checkpoint of that kind has them.

    Includes what the converter must drop or fold: `backbone.cls_token`, `num_batches_tracked`,
    MoE `mlp.experts.*` and `associate_keypoint_heads.*` (spec 3.1, trap 19).
    """
    rng = np.random.default_rng(v.seed)
    c, h = v.dim, v.mlp_hidden
    s = v.embed_scale
    sd = {}
    sd["backbone.cls_token"] = _normal(rng, (1, 1, c), 0.02)
    sd["backbone.pos_embed"] = _normal(rng, (1, NUM_TOKENS + 1, c), 0.5 * s)
    sd["backbone.patch_embed.proj.weight"] = _normal(rng, (c, 3, 16, 16), s / np.sqrt(3 * 256))
    sd["backbone.patch_embed.proj.bias"] = _normal(rng, c, 0.2 * s)
    shared = c - v.part_features if v.moe else c
    for i in range(v.depth):
        p = f"backbone.blocks.{i}"
        sd[f"{p}.norm1.weight"] = _gamma(rng, c)
        sd[f"{p}.norm1.bias"] = _normal(rng, c, 0.1)
        # q and k rows 1.5x larger than v so attention is peaked, not uniform
        qkv = _normal(rng, (3 * c, c), 1.0 / np.sqrt(c))
        qkv[: 2 * c] *= 1.5
        sd[f"{p}.attn.qkv.weight"] = qkv
        sd[f"{p}.attn.qkv.bias"] = _normal(rng, 3 * c, 0.1)
        sd[f"{p}.attn.proj.weight"] = _normal(rng, (c, c), 1.0 / np.sqrt(c))
        sd[f"{p}.attn.proj.bias"] = _normal(rng, c, 0.05)
        sd[f"{p}.norm2.weight"] = _gamma(rng, c)
        sd[f"{p}.norm2.bias"] = _normal(rng, c, 0.1)
        sd[f"{p}.mlp.fc1.weight"] = _normal(rng, (h, c), 1.0 / np.sqrt(c))
        sd[f"{p}.mlp.fc1.bias"] = _normal(rng, h, 0.1)
        sd[f"{p}.mlp.fc2.weight"] = _normal(rng, (shared, h), 1.0 / np.sqrt(h))
        sd[f"{p}.mlp.fc2.bias"] = _normal(rng, shared, 0.05)
        for e in range(v.experts if v.moe else 0):
            sd[f"{p}.mlp.experts.{e}.weight"] = _normal(rng, (v.part_features, h), 1.0 / np.sqrt(h))
            sd[f"{p}.mlp.experts.{e}.bias"] = _normal(rng, v.part_features, 0.05)
    sd["backbone.last_norm.weight"] = _gamma(rng, c)
    sd["backbone.last_norm.bias"] = _normal(rng, c, 0.1)
    _head(rng, "keypoint_head", c, v.num_keypoints, v.simple, sd)
    if v.moe:
        for j, k in enumerate(ASSOCIATE_KEYPOINTS):
            _head(rng, f"associate_keypoint_heads.{j}", c, k, v.simple, sd)
    return sd


def weights_digest(sd: dict) -> str:
    """sha256 over sorted keys and raw bytes: detects a change of NumPy's random stream."""
    import hashlib

    d = hashlib.sha256()
    for k in sorted(sd):
        d.update(k.encode())
        d.update(np.ascontiguousarray(sd[k]).tobytes())
    return d.hexdigest()


def head_prefix(v: Variant, dataset: str | None) -> str:
    """Official prefix of the head a dataset uses (spec 1.6, trap 18)."""
    expert = DATASET_EXPERT[dataset] if dataset else 0
    return "keypoint_head" if not v.moe or expert == 0 else f"associate_keypoint_heads.{expert - 1}"


def official_to_hf(sd: dict, head: str = "keypoint_head") -> dict:
    """spec 3.2 mapping, official -> HF; `head` names which official head becomes `head.*`."""
    out = {}
    for k, t in sd.items():
        if k == "backbone.cls_token":
            continue  # spec 3.2: dropped
        if k.startswith("keypoint_head.") or k.startswith("associate_keypoint_heads."):
            if not k.startswith(head + "."):
                continue
            rest = k[len(head) + 1:]
            for off, hf in (("deconv_layers.0.", "deconv1."), ("deconv_layers.1.", "batchnorm1."),
                            ("deconv_layers.3.", "deconv2."), ("deconv_layers.4.", "batchnorm2."),
                            ("final_layer.", "conv.")):
                if rest.startswith(off):
                    out["head." + hf + rest[len(off):]] = t
                    break
            else:
                raise KeyError(k)
            continue
        if k == "backbone.pos_embed":
            out["backbone.embeddings.position_embeddings"] = t
        elif k.startswith("backbone.patch_embed.proj."):
            out["backbone.embeddings.patch_embeddings.projection." + k.rsplit(".", 1)[1]] = t
        elif k.startswith("backbone.last_norm."):
            out["backbone.layernorm." + k.rsplit(".", 1)[1]] = t
        elif k.startswith("backbone.blocks."):
            i, rest = k[len("backbone.blocks."):].split(".", 1)
            p = f"backbone.encoder.layer.{i}."
            if rest.startswith("attn.qkv."):
                kind = rest.rsplit(".", 1)[1]
                # spec 1.3 / trap 4: rows [0:C] Q, [C:2C] K, [2C:3C] V
                for name, part in zip(("query", "key", "value"), np.split(t, 3, axis=0)):
                    out[f"{p}attention.attention.{name}.{kind}"] = np.ascontiguousarray(part)
            elif rest.startswith("attn.proj."):
                out[p + "attention.output.dense." + rest.rsplit(".", 1)[1]] = t
            elif rest.startswith("norm1."):
                out[p + "layernorm_before." + rest.rsplit(".", 1)[1]] = t
            elif rest.startswith("norm2."):
                out[p + "layernorm_after." + rest.rsplit(".", 1)[1]] = t
            elif rest.startswith("mlp."):
                out[p + rest] = t
            else:
                raise KeyError(k)
        else:
            raise KeyError(k)
    return out


def hf_config(v: Variant, ln_eps: float, num_labels: int):
    from transformers import VitPoseBackboneConfig, VitPoseConfig

    backbone = VitPoseBackboneConfig(
        hidden_size=v.dim, num_hidden_layers=v.depth, num_attention_heads=v.heads, mlp_ratio=4,
        num_experts=v.experts, part_features=v.part_features if v.moe else 256, layer_norm_eps=ln_eps,
        image_size=list(IMAGE_HW), patch_size=[16, 16], out_indices=[v.depth],
    )
    return VitPoseConfig(backbone_config=backbone, use_simple_decoder=v.simple, num_labels=num_labels,
                         attn_implementation="eager")


def hf_model(v: Variant, sd: dict, ln_eps: float, head: str = "keypoint_head"):
    """transformers VitPoseForPoseEstimation holding `sd` (strict load), eval, float32, eager attention."""
    import torch
    from transformers import VitPoseForPoseEstimation

    # shares memory with `sd` (no copy): the reference model is only ever run in eval mode
    hf_sd = {k: torch.from_numpy(np.ascontiguousarray(t)) for k, t in official_to_hf(sd, head).items()}
    num_labels = hf_sd["head.conv.weight"].shape[0]
    with torch.device("meta"):  # skip the random init: every tensor comes from `sd`
        model = VitPoseForPoseEstimation(hf_config(v, ln_eps, num_labels))
    model.load_state_dict(hf_sd, strict=True, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise AssertionError(f"HF tensors not loaded: {left}")
    if model.config._attn_implementation != "eager":
        raise AssertionError("reference must use eager attention")
    return model.eval().float()


def capture(model, x: np.ndarray, dataset_index: int | None = None) -> dict:
    """Reference taps (the engine's tap names) plus heatmaps, as float32 NumPy arrays."""
    import torch

    taps = {}
    hooks = []

    def keep(name):
        def hook(_module, _inputs, output):
            taps[name] = output.detach().numpy().copy()
        return hook

    bb = model.backbone
    hooks.append(bb.embeddings.register_forward_hook(keep("embeddings")))
    for i, layer in enumerate(bb.encoder.layer):
        hooks.append(layer.register_forward_hook(keep(f"blocks.{i}")))
    hooks.append(bb.encoder.layer[0].layernorm_before.register_forward_hook(keep("blocks.0.norm1")))
    hooks.append(bb.layernorm.register_forward_hook(keep("last_norm")))
    head = model.head
    if hasattr(head, "upsampling"):
        hooks.append(head.upsampling.register_forward_hook(keep("head.upsampled")))
    else:
        hooks.append(head.relu1.register_forward_hook(keep("head.stage1")))
        hooks.append(head.relu2.register_forward_hook(keep("head.stage2")))
    try:
        with torch.no_grad():
            kw = {}
            if model.config.backbone_config.num_experts > 1:
                kw["dataset_index"] = torch.full((x.shape[0],), dataset_index or 0, dtype=torch.long)
            out = model(torch.from_numpy(np.ascontiguousarray(x)), **kw)
    finally:
        for h in hooks:
            h.remove()
    taps["heatmaps"] = out.heatmaps.detach().numpy().copy()
    return taps


def official_forward_torch(v: Variant, sd: dict, x: np.ndarray, ln_eps: float, dataset: str | None = None):
    """Official-layout forward written from spec 1-2 with torch.nn.functional (fused qkv, q scaled first).

    Used only to check that `official_to_hf` and the written checkpoint mean the same network.
    """
    import torch
    import torch.nn.functional as F

    t = {k: torch.from_numpy(np.array(a)) for k, a in sd.items()}
    b = x.shape[0]
    c, nh = v.dim, v.heads
    hd = c // nh
    with torch.no_grad():
        y = F.conv2d(torch.from_numpy(x), t["backbone.patch_embed.proj.weight"], t["backbone.patch_embed.proj.bias"],
                     stride=16, padding=2)  # spec 1.1
        y = y.flatten(2).transpose(1, 2)
        pe = t["backbone.pos_embed"]
        y = y + pe[:, 1:] + pe[:, :1]  # spec 1.2
        expert = DATASET_EXPERT[dataset] if dataset else 0
        for i in range(v.depth):
            p = f"backbone.blocks.{i}."
            z = F.layer_norm(y, (c,), t[p + "norm1.weight"], t[p + "norm1.bias"], ln_eps)
            qkv = F.linear(z, t[p + "attn.qkv.weight"], t[p + "attn.qkv.bias"])
            q, k, val = qkv.reshape(b, NUM_TOKENS, 3, nh, hd).permute(2, 0, 3, 1, 4)
            a = ((q * hd ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
            z = (a @ val).transpose(1, 2).reshape(b, NUM_TOKENS, c)
            y = y + F.linear(z, t[p + "attn.proj.weight"], t[p + "attn.proj.bias"])
            z = F.layer_norm(y, (c,), t[p + "norm2.weight"], t[p + "norm2.bias"], ln_eps)
            z = F.gelu(F.linear(z, t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"]))
            out = F.linear(z, t[p + "mlp.fc2.weight"], t[p + "mlp.fc2.bias"])
            if v.moe:  # spec 1.6: [shared, expert]
                e = f"{p}mlp.experts.{expert}."
                out = torch.cat([out, F.linear(z, t[e + "weight"], t[e + "bias"])], dim=-1)
            y = y + out
        y = F.layer_norm(y, (c,), t["backbone.last_norm.weight"], t["backbone.last_norm.bias"], ln_eps)
        f = y.transpose(1, 2).reshape(b, c, *GRID_HW)
        h = head_prefix(v, dataset) + "."
        if v.simple:  # spec 2.2
            f = F.interpolate(F.relu(f), scale_factor=4, mode="bilinear", align_corners=False)
            return F.conv2d(f, t[h + "final_layer.weight"], t[h + "final_layer.bias"], padding=1).numpy()
        for conv, bn in (("0", "1"), ("3", "4")):  # spec 2.1
            f = F.conv_transpose2d(f, t[h + f"deconv_layers.{conv}.weight"], stride=2, padding=1)
            f = F.batch_norm(f, t[h + f"deconv_layers.{bn}.running_mean"], t[h + f"deconv_layers.{bn}.running_var"],
                             t[h + f"deconv_layers.{bn}.weight"], t[h + f"deconv_layers.{bn}.bias"], eps=1e-5)
            f = F.relu(f)
        return F.conv2d(f, t[h + "final_layer.weight"], t[h + "final_layer.bias"]).numpy()


def write_pth(sd: dict, path) -> None:
    """Official mmcv-style checkpoint: {'state_dict': OrderedDict of tensors, 'meta': plain values} (spec 3.1)."""
    from collections import OrderedDict

    import torch

    state = OrderedDict((k, torch.from_numpy(np.array(t))) for k, t in sd.items())
    meta = {"epoch": 1, "iter": 1000, "mmcv_version": "1.3.9", "time": "Thu Jan  1 00:00:00 2022",
            "config": "model = dict(type='TopDown', backbone=dict(type='ViT'))", "CLASSES": None}
    torch.save({"state_dict": state, "meta": meta}, str(path))


def write_hf_folder(model, path) -> None:
    """HF folder: config.json + model.safetensors via save_pretrained.

    At the default eps, `layer_norm_eps` is removed from config.json as the hub configs omit it (spec 1.3).
    """
    from pathlib import Path

    model.save_pretrained(str(path), safe_serialization=True)
    cfg_path = Path(path) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if cfg["backbone_config"].get("layer_norm_eps") == HF_DEFAULT_LN_EPS:
        del cfg["backbone_config"]["layer_norm_eps"]
        cfg_path.write_text(json.dumps(cfg, indent=2))


def hf_folder_from_numpy(config_json: str, hf_sd: dict, path) -> None:
    """HF folder written without torch (safetensors' NumPy API), for the torch-free fixture test."""
    from pathlib import Path

    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(config_json)
    save_file({k: np.ascontiguousarray(a) for k, a in hf_sd.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})


def official_safetensors_from_numpy(sd: dict, path) -> None:
    """Official-named weights in one .safetensors (no config.json), written without torch."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(a) for k, a in sd.items()}, str(path), metadata={"format": "pt"})


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref| (float64)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise AssertionError(f"shape {got.shape} != reference {ref.shape}")
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def argmax_margin(heat: np.ndarray) -> float:
    """Smallest (top1 - top2) / max|heat| over every (sample, keypoint) map: how safe argmax equality is."""
    flat = heat.reshape(heat.shape[0] * heat.shape[1], -1).astype(np.float64)
    top2 = np.sort(flat, axis=1)[:, -2:]
    return float(np.min(top2[:, 1] - top2[:, 0]) / np.max(np.abs(flat)))


def layer_norm_np(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """spec 1.3 LayerNorm in float64 (biased variance over the last axis)."""
    x = x.astype(np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def config_json(path) -> str:
    """config.json text of a written HF folder."""
    from pathlib import Path

    return (Path(path) / "config.json").read_text()
