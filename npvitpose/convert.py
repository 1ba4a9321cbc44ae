"""Turn an official `.pth`, a Hugging Face VitPose folder or a `.safetensors` file into an npvitpose `.npz`.

The output holds the dense official key names (spec 3.1) in float32 plus a JSON metadata record.
Sizes come from the tensor shapes; what shapes cannot tell (attention heads, LayerNorm eps) comes
from the HF `config.json` when there is one, else from the official variants (spec 1.3, 1.5).
"""

import hashlib
import json
import os
import re

import numpy as np

from .checkpoint import read_pth, read_safetensors
from .datasets import DATASETS
from .errors import NpvitposeError

_HEADS_BY_WIDTH = {384: 12, 768: 12, 1024: 16, 1280: 16}  # spec 1.5: S has 12 heads of 32 (trap 5)
_OFFICIAL_EPS = 1e-6  # spec 1.3: partial(nn.LayerNorm, eps=1e-6)
_HF_DEFAULT_EPS = 1e-12  # spec 1.3: VitPoseBackboneConfig.layer_norm_eps default, never overridden on the hub
_HF_DEFAULT_HEADS = 12  # VitPoseBackboneConfig.num_attention_heads default
_K_TO_DATASET = {17: "coco", 133: "wholebody", 16: "mpii", 14: "aic"}
_MAX_CONFIG_BYTES = 10 << 20

# spec 3.2, read backwards: HF name pattern -> official name template
_HF_TO_OFFICIAL = [
    (r"backbone\.embeddings\.position_embeddings", r"backbone.pos_embed"),
    (r"backbone\.embeddings\.patch_embeddings\.projection\.(weight|bias)", r"backbone.patch_embed.proj.\1"),
    (r"backbone\.encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)", r"backbone.blocks.\1.norm1.\2"),
    (r"backbone\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"backbone.blocks.\1.attn.proj.\2"),
    (r"backbone\.encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)", r"backbone.blocks.\1.norm2.\2"),
    (r"backbone\.encoder\.layer\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"backbone.blocks.\1.mlp.\2.\3"),
    (r"backbone\.encoder\.layer\.(\d+)\.mlp\.experts\.(\d+)\.(weight|bias)", r"backbone.blocks.\1.mlp.experts.\2.\3"),
    (r"backbone\.layernorm\.(weight|bias)", r"backbone.last_norm.\1"),
    (r"head\.deconv1\.weight", r"keypoint_head.deconv_layers.0.weight"),
    (r"head\.batchnorm1\.(\w+)", r"keypoint_head.deconv_layers.1.\1"),
    (r"head\.deconv2\.weight", r"keypoint_head.deconv_layers.3.weight"),
    (r"head\.batchnorm2\.(\w+)", r"keypoint_head.deconv_layers.4.\1"),
    (r"head\.conv\.(weight|bias)", r"keypoint_head.final_layer.\1"),
]
_HF_QKV = re.compile(r"backbone\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")
_EXPERT = re.compile(r"backbone\.blocks\.(\d+)\.mlp\.experts\.(\d+)\.(weight|bias)")
_BLOCK = re.compile(r"backbone\.blocks\.(\d+)\.")


def convert(src, out, dataset=None) -> dict:
    """Convert `src` and write `out` (.npz); returns the recorded metadata.

    dataset: picks the expert and head of a ViTPose+ (MoE) checkpoint (required there); for a
    dense checkpoint it defaults from the keypoint count (17 -> coco, 133 -> wholebody,
    16 -> mpii, 14 -> aic) and, if given, must agree with it (e.g. "ap10k" for a split AP-10K file).
    """
    weights, meta = convert_weights(src, dataset)
    from .model import save_npz  # the model module pulls in the Numba kernels; only needed here

    save_npz(out, weights, meta)
    return meta


def convert_weights(src, dataset=None) -> tuple[dict, dict]:
    """The dense official float32 weights and the metadata `convert` would write, without writing."""
    src = os.fspath(src)
    if dataset is not None and dataset not in DATASETS:
        raise NpvitposeError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    source_format, weights_path, config, config_path = _locate(src)
    name = os.path.basename(os.path.normpath(src))
    raw = read_pth(weights_path) if source_format == "pth" else read_safetensors(weights_path)
    hf_names = "backbone.embeddings.position_embeddings" in raw
    state = _from_hf_names(raw, name) if hf_names else dict(raw)
    weights, sizes = _dense_weights(state, name, dataset, hf_names)
    sizes["heads"], sizes["ln_eps"], config_source = _settings(config, config_path, sizes, hf_names, name)
    ds = DATASETS[sizes.pop("dataset")]
    meta = {
        "format_version": 1,
        "dim": sizes["dim"],
        "depth": sizes["depth"],
        "heads": sizes["heads"],
        "mlp_hidden": sizes["mlp_hidden"],
        "num_keypoints": sizes["num_keypoints"],
        "head": sizes["head"],
        "ln_eps": sizes["ln_eps"],
        "dataset": ds.name,
        "keypoint_names": list(ds.keypoint_names),
        "skeleton": [list(e) for e in ds.skeleton],
        "flip_pairs": [list(p) for p in ds.flip_pairs],
        "mode": ds.mode,
        "source_name": name,
        "source_format": source_format,
        "source_sha256": _sha256(weights_path),
        "config_source": config_source,
        "moe": sizes["moe"],
    }
    return weights, meta


def source_files(src) -> list:
    """The files converting `src` reads (the weights, and a config.json if any): what its result depends on."""
    _, weights, _, config_path = _locate(os.fspath(src))
    return [weights] + ([config_path] if config_path else [])


def _locate(src: str):
    """-> (source_format, weights file, parsed HF config or None, its path or None)."""
    if os.path.isdir(src):
        weights = os.path.join(src, "model.safetensors")
        config_path = os.path.join(src, "config.json")
        if not os.path.isfile(weights):
            sharded = os.path.isfile(os.path.join(src, "model.safetensors.index.json"))
            raise NpvitposeError(
                f"{src}: no model.safetensors" + (" (sharded folders are not supported)" if sharded else "")
            )
        if not os.path.isfile(config_path):
            raise NpvitposeError(f"{src}: no config.json next to model.safetensors")
        config = _read_config(config_path)
        if config is None:
            raise NpvitposeError(f"{config_path} is not a VitPose config (model_type 'vitpose' with a backbone_config)")
        return "hf", weights, config, config_path
    if not os.path.isfile(src):
        raise NpvitposeError(f"{src}: no such file or folder")
    if src.lower().endswith(".safetensors"):
        config_path = os.path.join(os.path.dirname(os.path.abspath(src)), "config.json")
        config = _read_config(config_path) if os.path.isfile(config_path) else None
        return "safetensors", src, config, config_path if config is not None else None
    return "pth", src, None, None


def _read_config(path: str):
    """The HF VitPoseConfig dict, or None when the JSON is some other model's config."""
    try:
        if os.path.getsize(path) > _MAX_CONFIG_BYTES:
            raise NpvitposeError(f"{path} is too large for a config.json")
        with open(path, "rb") as f:
            config = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise NpvitposeError(f"{path}: not a readable JSON config ({type(e).__name__})") from None
    if not isinstance(config, dict) or config.get("model_type") != "vitpose":
        return None
    if not isinstance(config.get("backbone_config", {}), dict):
        raise NpvitposeError(f"{path}: backbone_config is not an object")
    return config


def _from_hf_names(raw: dict, name: str) -> dict:
    """Rename HF keys to official ones and re-join query/key/value rows into qkv, Q then K then V (spec 3.2)."""
    state, qkv = {}, {}
    for key, value in raw.items():
        m = _HF_QKV.fullmatch(key)
        if m:
            qkv.setdefault((int(m.group(1)), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, template in _HF_TO_OFFICIAL:
            m = re.fullmatch(pattern, key)
            if m:
                key = m.expand(template)
                break
        state[key] = value  # an unmatched key keeps its HF name and is reported as unknown later
    for (block, param), parts in sorted(qkv.items()):
        for part in ("query", "key", "value"):
            if part not in parts:
                hf_key = f"backbone.encoder.layer.{block}.attention.attention.{part}.{param}"
                raise NpvitposeError(f"{name}: missing key {hf_key}")
        state[f"backbone.blocks.{block}.attn.qkv.{param}"] = np.concatenate(
            [_f32(parts["query"]), _f32(parts["key"]), _f32(parts["value"])], axis=0
        )
    return state


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _show(key) -> str:
    """A key as it reads in a one-line message: plain when printable, else escaped and cut."""
    if isinstance(key, str) and key.isprintable() and len(key) <= 120:
        return key
    text = repr(key)
    return text if len(text) <= 120 else text[:117] + "..."


def _require(state: dict, key: str, name: str):
    if key not in state:
        raise NpvitposeError(f"{name}: missing key {key}")
    return state[key]


def _dense_weights(state: dict, name: str, dataset, hf_names: bool):
    """Pick the dense weights out of an official-named state dict: fold a MoE expert, choose the head."""
    pos = _require(state, "backbone.pos_embed", name)
    if pos.ndim != 3 or pos.shape[:2] != (1, 193):
        raise NpvitposeError(f"{name}: backbone.pos_embed has shape {pos.shape}, expected (1, 193, C) for 256x192")
    dim = pos.shape[2]
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK.match(k))}
    depth = max(blocks) + 1 if blocks else 0
    if depth == 0:
        raise NpvitposeError(f"{name}: missing key backbone.blocks.0.mlp.fc2.weight (no transformer blocks)")
    fc2 = _require(state, "backbone.blocks.0.mlp.fc2.weight", name)
    has_experts = any(_EXPERT.fullmatch(k) for k in state)
    # spec 1.6: a MoE fc2 has C - p rows; model_split output has dense fc2 and leftover experts (trap 19)
    moe = has_experts and fc2.ndim == 2 and fc2.shape[0] < dim
    if moe:
        dataset = _moe_dataset(dataset, name, hf_names)
        expert = DATASETS[dataset].expert
        # spec 1.6 / trap 18: COCO uses keypoint_head, the others associate_keypoint_heads.{expert - 1}
        head_prefix = "keypoint_head." if expert == 0 else f"associate_keypoint_heads.{expert - 1}."
    else:
        expert, head_prefix = None, "keypoint_head."

    weights = {}
    for key, value in state.items():
        if key == "backbone.cls_token" or key.endswith(".num_batches_tracked"):
            continue  # trap 19: unused multi-task token and BatchNorm counters
        if _EXPERT.fullmatch(key) or key.startswith("associate_keypoint_heads."):
            if key.startswith(head_prefix):
                weights["keypoint_head." + key[len(head_prefix):]] = _f32(value)
            continue  # the experts are folded below; other datasets' heads are dropped
        if key.startswith("keypoint_head.") and head_prefix != "keypoint_head.":
            continue  # the COCO head of a MoE checkpoint converted for another dataset
        weights[key] = _f32(value)
    if moe:
        part = dim - fc2.shape[0]
        for i in range(depth):
            for param in ("weight", "bias"):
                shared = f"backbone.blocks.{i}.mlp.fc2.{param}"
                extra = _require(state, f"backbone.blocks.{i}.mlp.experts.{expert}.{param}", name)
                if extra.shape[:1] != (part,):
                    raise NpvitposeError(
                        f"{name}: expert {expert} of block {i} has shape {extra.shape}, expected {part} rows"
                    )
                # spec 1.6 / trap 17: dense fc2 = shared rows, then the chosen expert's rows
                weights[shared] = np.concatenate([_f32(_require(state, shared, name)), _f32(extra)], axis=0)

    if moe and not any(k.startswith(head_prefix) for k in state):
        raise NpvitposeError(f"{name}: missing key {head_prefix}final_layer.weight (the {dataset} head)")
    final = _require(weights, "keypoint_head.final_layer.weight", name)
    if final.ndim == 4 and final.shape[2:] == (3, 3):
        head = "simple"  # spec 2.2: (K, C, 3, 3) without deconvs
    elif final.ndim == 4 and final.shape[2:] == (1, 1):
        head = "classic"  # spec 2.1: (K, 256, 1, 1) after two deconvs
    else:
        raise NpvitposeError(f"{name}: keypoint_head.final_layer.weight has shape {final.shape}, not a ViTPose head")
    k = final.shape[0]
    if moe:
        if DATASETS[dataset].num_keypoints != k:
            expected = DATASETS[dataset].num_keypoints
            raise NpvitposeError(f"{name}: the {dataset} head has {k} keypoints, {dataset} has {expected}")
    elif dataset is None:
        dataset = _K_TO_DATASET.get(k)
        if dataset is None:
            raise NpvitposeError(f"{name}: {k} keypoints match no known dataset ({', '.join(DATASETS)})")
    elif DATASETS[dataset].num_keypoints != k:
        raise NpvitposeError(f"{name}: the head has {k} keypoints but {dataset} has {DATASETS[dataset].num_keypoints}")
    mlp_hidden = _require(weights, "backbone.blocks.0.mlp.fc1.weight", name).shape[0]
    sizes = {
        "dim": int(dim), "depth": depth, "mlp_hidden": int(mlp_hidden), "num_keypoints": int(k), "head": head,
        "dataset": dataset, "moe": {"part_features": int(part), "expert": expert} if moe else None,
    }
    _check_keys(weights, sizes, name)
    return weights, sizes


def _moe_dataset(dataset, name: str, hf_names: bool) -> str:
    if hf_names:
        # spec 3.2 / trap 18: the HF port dropped the associate heads, only the COCO head exists
        if dataset not in (None, "coco"):
            raise NpvitposeError(
                f"{name}: Hugging Face ViTPose+ weights keep only the COCO head, so {dataset} cannot be built "
                "from them; convert the official vitpose+_*.pth instead"
            )
        if dataset is None:
            raise NpvitposeError(
                f"{name} is a ViTPose+ (MoE) checkpoint: choose --dataset coco (the only head it keeps)"
            )
    elif dataset is None:
        raise NpvitposeError(f"{name} is a ViTPose+ (MoE) checkpoint: choose --dataset from {', '.join(DATASETS)}")
    return dataset


def _check_keys(weights: dict, sizes: dict, name: str) -> None:
    from .model import Config, weight_shapes  # shapes of the dense model, shared with the loader

    cfg = Config(dim=sizes["dim"], depth=sizes["depth"], heads=1, mlp_hidden=sizes["mlp_hidden"],
                 num_keypoints=sizes["num_keypoints"], head=sizes["head"])
    expected = weight_shapes(cfg)
    for key in weights:
        if key not in expected:
            raise NpvitposeError(f"{name}: unknown key {_show(key)}")
    for key, shape in expected.items():
        value = _require(weights, key, name)
        if value.shape != tuple(shape):
            raise NpvitposeError(f"{name}: {key} has shape {value.shape}, expected {tuple(shape)}")
        if not np.isfinite(value).all():
            raise NpvitposeError(f"{name}: {key} contains NaN or inf")


def _settings(config, config_path, sizes: dict, hf_names: bool, name: str):
    """-> (heads, ln_eps, where they came from)."""
    dim = sizes["dim"]
    if config is not None:
        bb = config.get("backbone_config", {})
        heads = bb.get("num_attention_heads", _HF_DEFAULT_HEADS)
        eps = bb.get("layer_norm_eps", _HF_DEFAULT_EPS)
        checks = [("hidden_size", 768, dim), ("num_hidden_layers", 12, sizes["depth"])]
        if sizes["moe"] is not None:
            checks.append(("part_features", 256, sizes["moe"]["part_features"]))
        for field, default, actual in checks:
            if bb.get(field, default) != actual:
                raise NpvitposeError(f"{config_path}: {field} is {bb.get(field, default)}, the weights have {actual}")
        if bb.get("hidden_act", "gelu") != "gelu":
            act = bb.get("hidden_act")
            raise NpvitposeError(f"{config_path}: hidden_act {act!r} is not the exact GELU ViTPose uses")
        if not isinstance(heads, int) or isinstance(heads, bool) or heads <= 0 or dim % heads:
            raise NpvitposeError(f"{config_path}: num_attention_heads {heads!r} does not divide the width {dim}")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0.0 < eps < 1.0:
            raise NpvitposeError(f"{config_path}: layer_norm_eps {eps!r} is out of range")
        return heads, float(eps), "config.json"
    if dim not in _HEADS_BY_WIDTH:
        raise NpvitposeError(
            f"{name}: width {dim} is not a ViTPose variant (384, 768, 1024, 1280), so the head count is unknown"
        )
    # no config: official widths; eps 1e-6 for official names, HF's default 1e-12 for HF names (spec 1.3)
    return _HEADS_BY_WIDTH[dim], (_HF_DEFAULT_EPS if hf_names else _OFFICIAL_EPS), "defaults"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as e:
        raise NpvitposeError(f"cannot read {path}: {e.strerror or e}") from None
    return digest.hexdigest()
