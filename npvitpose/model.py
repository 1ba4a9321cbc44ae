"""The ViTPose network on NumPy + Numba: weights under their checkpoint names, one forward pass."""

import json
import os
import threading
from dataclasses import dataclass

import numpy as np

from . import meta as metadata
from . import threads
from .errors import NpvitposeError
from .kernels import attention_bf16, gemm, gemm_bf16, gemm_int8
from .kernels.attention import attention
from .kernels.head import conv3x3_weight, deconv4x4s2, deconv_weight, fold_batchnorm, upsample4, upsample4_conv3x3
from .kernels.layernorm import layernorm
from .kernels.patch_embed import embed, embed_weight, grid
from .npz import Archive
from .outputs import atomic_output

FORMAT_VERSION = metadata.FORMAT_VERSION
MAX_WEIGHT = 1e6  # |value| bound of any weight, checked at load
HEIGHT, WIDTH = 256, 192  # spec 1.2: the position table only fits 256x192 crops
DECONV = 256  # spec 2.1: classic head deconv filters
# the arithmetic of the linear layers, chosen at load (the .npz stays fp32); see README "Precision"
PRECISIONS = {"fp32": gemm, "bf16": gemm_bf16, "int8": gemm_int8}
INT8_IN_FP32 = ()  # layers an int8 model keeps in fp32: none, measured by tools/drift.py --study (README)
# int8: the layer norm feeding these layers hands its per-channel gain to the weight's columns (SmoothQuant's
# migration, exact in real arithmetic), so a few large-gain channels no longer stretch every row's int8 range
INT8_SMOOTHED = {"attn.qkv.weight": "norm1", "mlp.fc1.weight": "norm2"}
HEAD_IN_FP32 = False  # bf16/int8 run the head's two deconvolutions at their precision too (2.8 of ViT-B's 37 GFLOP)
# bf16/int8 run attention's two products in bf16 where the CPU has AVX512-BF16 (kernels/attention_bf16.py)
ATTENTION_IN_FP32 = False


@dataclass(frozen=True)
class Config:
    dim: int
    depth: int
    heads: int
    mlp_hidden: int
    num_keypoints: int = 17
    head: str = "classic"  # "classic" (2 deconvs + 1x1) or "simple" (ReLU, bilinear x4, 3x3)
    ln_eps: float = 1e-6  # spec 1.3: 1e-6 in official checkpoints, HF configs run 1e-12


# spec 1.5; S has 12 heads of 32 and H head_dim 80 (trap 5)
VARIANTS = {
    "vitpose-s": Config(dim=384, depth=12, heads=12, mlp_hidden=1536),
    "vitpose-b": Config(dim=768, depth=12, heads=12, mlp_hidden=3072),
    "vitpose-l": Config(dim=1024, depth=24, heads=16, mlp_hidden=4096),
    "vitpose-h": Config(dim=1280, depth=32, heads=16, mlp_hidden=5120),
}


def weight_shapes(cfg):
    """Every key of a dense official checkpoint with its shape (spec 3.1)."""
    c, k, ntok = cfg.dim, cfg.num_keypoints, grid(HEIGHT, WIDTH)
    shapes = {
        "backbone.pos_embed": (1, ntok[0] * ntok[1] + 1, c),
        "backbone.patch_embed.proj.weight": (c, 3, 16, 16),
        "backbone.patch_embed.proj.bias": (c,),
    }
    for i in range(cfg.depth):
        p = f"backbone.blocks.{i}."
        shapes.update({
            p + "norm1.weight": (c,), p + "norm1.bias": (c,),
            p + "attn.qkv.weight": (3 * c, c), p + "attn.qkv.bias": (3 * c,),
            p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
            p + "norm2.weight": (c,), p + "norm2.bias": (c,),
            p + "mlp.fc1.weight": (cfg.mlp_hidden, c), p + "mlp.fc1.bias": (cfg.mlp_hidden,),
            p + "mlp.fc2.weight": (c, cfg.mlp_hidden), p + "mlp.fc2.bias": (c,),
        })
    shapes["backbone.last_norm.weight"] = (c,)
    shapes["backbone.last_norm.bias"] = (c,)
    if cfg.head == "classic":
        for layer, cin in ((0, c), (3, DECONV)):
            shapes[f"keypoint_head.deconv_layers.{layer}.weight"] = (cin, DECONV, 4, 4)
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"keypoint_head.deconv_layers.{layer + 1}.{name}"] = (DECONV,)
        shapes["keypoint_head.final_layer.weight"] = (k, DECONV, 1, 1)
    else:
        shapes["keypoint_head.final_layer.weight"] = (k, c, 3, 3)
    shapes["keypoint_head.final_layer.bias"] = (k,)
    return shapes


def random_weights(cfg, seed=0):
    """Random float32 weights of the right shapes, for benchmarks and tests (no download)."""
    rng = np.random.default_rng(seed)
    weights = {}
    for key, shape in weight_shapes(cfg).items():
        if key.endswith("running_var"):
            w = rng.uniform(0.5, 1.5, shape)
        elif key.endswith(("norm1.weight", "norm2.weight", "last_norm.weight", "1.weight", "4.weight")):
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            w = rng.standard_normal(shape) * (0.02 if len(shape) == 1 else 1.0 / np.sqrt(fan_in))
        weights[key] = w.astype(np.float32)
    return weights


class Model:
    """A loaded ViTPose: `forward` maps normalised crops to heatmaps; calling it runs the whole pipeline."""

    def __init__(self, weights, meta, precision="fp32", *, copy=True):
        """weights: float32 arrays under the checkpoint's names, in a dict or an npz.Archive (load() streams one:
        each linear layer is read, checked, packed and freed before the next is read, so the peak is the
        packed weights plus one fp32 layer). copy=False hands a dict over: its entries are removed as read.
        Every key, dtype and shape is checked before any value is read, every value before it is used."""
        self.precision = _check_precision(precision)
        self.meta = dict(meta)
        self.config = _config_from_meta(self.meta, weights)
        self.num_keypoints = self.config.num_keypoints
        _validate(weights.headers() if isinstance(weights, Archive) else
                  {k: (v.dtype, v.shape) for k, v in weights.items()}, self.config)
        self._lock = threading.Lock()  # one forward at a time: each already uses every core
        self._gemm = PRECISIONS[self.precision]  # the module every linear layer goes through (pack_weight / linear)
        lowp = self.precision != "fp32" and not ATTENTION_IN_FP32 and attention_bf16.FAST
        self._attention = attention_bf16.attention if lowp else attention  # README "Precision"
        take = weights.pop if isinstance(weights, Archive) or not copy else weights.__getitem__
        self.weights = {}
        self._prepare(lambda key: _checked(key, take(key)))
        self.weights = {k: np.array(v) for k, v in self.weights.items()}  # own copies: nothing else is kept alive

    def _prepare(self, take):
        """Lay out, once, what the forward needs in GEMM-ready form; the names stay the checkpoint's.
        `take(key)` gives a checked weight; self.weights keeps only what _forward reads (norms, biases)."""
        w, cfg = self.weights, self.config
        linear = [k for k in weight_shapes(cfg) if k.startswith("backbone.blocks.")
                  and k.endswith(("qkv.weight", "proj.weight", "fc1.weight", "fc2.weight"))]
        for key in weight_shapes(cfg):  # all but the linear layers first: int8's _pack rescales the norms
            if key not in linear:
                w[key] = take(key)
        pos = w.pop("backbone.pos_embed")[0]
        self._pos = np.ascontiguousarray(pos[1:] + pos[0])  # spec 1.2: slot 0 is added to every token
        # the patch embedding and the head's 1x1 stay fp32 at every precision
        self._patch_w = embed_weight(w.pop("backbone.patch_embed.proj.weight"))
        if cfg.head == "classic":
            self._deconv = []
            for layer in (0, 3):
                bn = [w.pop(f"keypoint_head.deconv_layers.{layer + 1}.{name}")
                      for name in ("running_mean", "running_var", "weight", "bias")]
                wt, b = fold_batchnorm(w.pop(f"keypoint_head.deconv_layers.{layer}.weight"), *bn)
                self._deconv.append((deconv_weight(wt, module=gemm if HEAD_IN_FP32 else self._gemm), b))
            final = np.ascontiguousarray(w.pop("keypoint_head.final_layer.weight")[:, :, 0, 0])  # (K, 256)
        else:
            final = conv3x3_weight(w.pop("keypoint_head.final_layer.weight"))  # (9K, C)
        # fp32 micro-kernel, not BLAS: after a threaded OpenBLAS call its idle workers spin (2^28 cycles unless
        # OPENBLAS_THREAD_TIMEOUT was set before NumPy loaded) on the cores the next kernels need
        self._final_w = gemm.pack_weight(final)
        self._linear = {}  # last, one layer at a time: the head's transients above stay out of this peak
        trim = _heap_trim()
        for key in linear:
            w[key] = take(key)
            self._linear[key] = self._pack(key)
            del w[key]  # the forward reads only the packed form; freed here, before the next layer is read
            trim()

    def _pack(self, key):
        """One linear layer's weight packed for this precision (int8: INT8_IN_FP32 and INT8_SMOOTHED)."""
        w = self.weights[key]
        if self.precision != "int8":
            return self._gemm.pack_weight(w)
        if key.endswith(INT8_IN_FP32):
            return gemm.pack_weight(np.array(w))  # a copy: the .npz block is freed
        kind = key.split(".", 3)[3]  # backbone.blocks.{i}.attn.qkv.weight -> attn.qkv.weight
        if kind in INT8_SMOOTHED:
            norm = key[:-len(kind)] + INT8_SMOOTHED[kind]
            gain, shift = self.weights[norm + ".weight"], self.weights[norm + ".bias"]
            # the norm's output range per channel (a normalised value spans about +-4) against the column's
            spread, column = 4.0 * np.abs(gain) + np.abs(shift), np.abs(w).max(axis=0)
            s = np.where((spread > 0) & (column > 0), np.sqrt(spread / np.maximum(column, 1e-30)), 1.0)
            s = s.astype(np.float32)
            self.weights[norm + ".weight"], self.weights[norm + ".bias"] = gain / s, shift / s
            w = w * s
        return gemm_int8.pack_weight(w)

    def forward(self, pixels, taps=None):
        """pixels (B, 3, 256, 192) float32, normalised RGB -> heatmaps (B, K, 64, 48) float32."""
        pixels = _check_pixels(pixels)
        with self._lock:
            threads.apply()
            return self._forward(pixels, taps)

    def _forward(self, pixels, taps):
        w, cfg = self.weights, self.config
        b = pixels.shape[0]
        hp, wp = grid(HEIGHT, WIDTH)
        n = hp * wp
        x = embed(pixels, self._patch_w, w["backbone.patch_embed.proj.bias"], self._pos)  # (B*N, C)
        _tap(taps, "embeddings", x, b)
        a = np.empty_like(x)  # (B*N, C) buffer reused by every block
        qkv = np.empty((b * n, 3 * cfg.dim), np.float32)
        hidden = np.empty((b * n, cfg.mlp_hidden), np.float32)
        linear, packed, eps = self._gemm.linear, self._linear, cfg.ln_eps
        for i in range(cfg.depth):
            p = f"backbone.blocks.{i}."
            # the pre-norms run inside the products that read them: each task normalises its own rows
            norm1 = (w[p + "norm1.weight"], w[p + "norm1.bias"], eps)
            norm2 = (w[p + "norm2.weight"], w[p + "norm2.bias"], eps)
            linear(x, packed[p + "attn.qkv.weight"], norm=norm1, out=qkv)  # (B*N, 3C); its bias is added in attention
            self._attention(qkv, n, cfg.heads, bias=w[p + "attn.qkv.bias"], out=a)  # (B*N, C)
            linear(a, packed[p + "attn.proj.weight"], w[p + "attn.proj.bias"], residual=x, out=x)
            linear(x, packed[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"], norm=norm2, gelu=True, out=hidden)  # (B*N, 4C)
            linear(hidden, packed[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"], residual=x, out=x)
            _tap(taps, f"blocks.{i}", x, b)
        x = layernorm(x, w["backbone.last_norm.weight"], w["backbone.last_norm.bias"], eps, out=a)
        del qkv, hidden  # freed before the head allocates its own (ViT-H, 16 crops: ~157 MB)
        _tap(taps, "last_norm", x, b)
        f = x.reshape(b, hp, wp, cfg.dim)  # (B, 16, 12, C): tokens are already channels-last feature maps
        k = cfg.num_keypoints
        if cfg.head == "classic":
            for stage, (deconv, bias) in enumerate(self._deconv, 1):
                f = deconv4x4s2(f, deconv, bias, relu=True)  # (B, 2H, 2W, 256), batchnorm folded in
                if taps is not None:
                    taps[f"head.stage{stage}"] = f.transpose(0, 3, 1, 2).copy()
            heat = gemm.linear(f.reshape(-1, DECONV), self._final_w, w["keypoint_head.final_layer.bias"])  # (B*64*48, K)
            return np.ascontiguousarray(heat.reshape(b, 4 * hp, 4 * wp, k).transpose(0, 3, 1, 2))
        if taps is not None:
            taps["head.upsampled"] = upsample4(np.ascontiguousarray(f), relu=True).transpose(0, 3, 1, 2).copy()
        # spec 2.2 reordered: the 3x3 conv's channel mix commutes with the per-channel bilinear x4,
        # so project the 16x12 map to 9 taps x K first and upsample those (16x fewer FLOPs)
        z = gemm.linear(np.maximum(f, 0).reshape(b * n, cfg.dim), self._final_w)  # (B*N, 9K)
        return upsample4_conv3x3(z.reshape(b, hp, wp, 9, k), w["keypoint_head.final_layer.bias"])  # (B, K, 64, 48)

    def __call__(self, image, boxes=None, box_format="xywh", color="rgb", **kwargs):
        """Keypoints for the person boxes in one image: see `npvitpose.pipeline.predict`.

        With no boxes, `self.detector` finds the people first (by default npvitpose.Detector(): YOLOX-S,
        downloaded on first use; assign another Detector to change it)."""
        from .pipeline import predict

        if boxes is None:
            from .images import as_rgb, read_image

            image = read_image(image) if isinstance(image, (str, os.PathLike)) else as_rgb(image, color)
            boxes, box_format, color = self.detector(image)[0], "xywh", "rgb"
        return predict(self, image, boxes, box_format=box_format, color=color, **kwargs)

    @property
    def detector(self):
        """The person detector used when no boxes are given (created on first use)."""
        if getattr(self, "_detector", None) is None:
            from .detector import Detector

            self._detector = Detector()
        return self._detector

    @detector.setter
    def detector(self, value):
        self._detector = value

    def __repr__(self):
        c = self.config
        return (f"Model(dim={c.dim}, depth={c.depth}, heads={c.heads}, head={c.head!r}, "
                f"keypoints={c.num_keypoints}, dataset={self.meta.get('dataset')!r})")


def _tap(taps, name, x, b):
    if taps is not None:
        taps[name] = x.reshape(b, -1, x.shape[-1]).copy()


def kernel_name(precision):
    """What runs the linear layers at this precision on this CPU, e.g. "int8: vpdpbusd"."""
    if precision == "fp32":
        return "fp32"
    module = PRECISIONS[_check_precision(precision)]
    return f"{precision} ({module.INSTRUCTION if module.FAST else module.INSTRUCTION + ' missing: emulated, slower than fp32'})"


def _check_precision(precision):
    if precision not in PRECISIONS:
        raise NpvitposeError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


def _check_pixels(pixels):
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or pixels.shape[1:] != (3, HEIGHT, WIDTH):
        raise NpvitposeError(f"pixels must have shape (N, 3, {HEIGHT}, {WIDTH}), got {pixels.shape}")
    return np.ascontiguousarray(pixels, dtype=np.float32)


def _config_from_meta(meta, weights):
    metadata.check(meta)  # every field typed and bounded before use
    if metadata.weight_count(meta) > 2 * len(weights) + 64:  # before looping over `depth` keys; else name the key
        raise NpvitposeError(f"{len(weights)} weights, but a depth-{meta['depth']} {meta['head']} model has "
                             f"{metadata.weight_count(meta)}")
    return Config(dim=int(meta["dim"]), depth=int(meta["depth"]), heads=int(meta["heads"]),
                  mlp_hidden=int(meta["mlp_hidden"]), num_keypoints=int(meta["num_keypoints"]),
                  head=meta["head"], ln_eps=float(meta["ln_eps"]))


def _heap_trim():
    """glibc's malloc_trim(0), or nothing elsewhere: packing's freed temporaries leave holes in the heap that stay
    resident (ViT-L int8 load: 85 MB; trimmed after each layer, peak RSS 599 -> 527 MB; bf16/int8 load ~0.3 s slower at B)."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


def _validate(headers, cfg):
    """Every key, dtype and shape ({key: (dtype, shape)}), before any value is read."""
    expected = weight_shapes(cfg)
    for key in sorted(set(headers) - set(expected)):
        raise NpvitposeError(f"unexpected weight {key!r} for a {cfg.head} model of depth {cfg.depth}")
    for key, shape in expected.items():
        if key not in headers:
            raise NpvitposeError(f"missing weight {key!r}")
        dtype, got = headers[key]
        if dtype != np.float32:
            raise NpvitposeError(f"weight {key!r} has dtype {dtype}, expected float32")
        if got != shape:
            raise NpvitposeError(f"weight {key!r} has shape {got}, expected {shape}")


def _checked(key, a):
    """One weight's values, before use."""
    # NaN fails both comparisons; no trained weight comes near 1e6, and such values overflow float32 later
    if not (a.size == 0 or -MAX_WEIGHT <= a.min() and a.max() <= MAX_WEIGHT):
        raise NpvitposeError(f"weight {key!r} contains NaN or inf, or values beyond +-{MAX_WEIGHT:g}")
    if key.endswith("running_var") and a.size and a.min() < 0:
        raise NpvitposeError(f"weight {key!r} holds a negative variance")
    return a


def from_weights(weights, meta, precision="fp32"):
    """A Model from a dict of float32 arrays under official names and its metadata dict."""
    return Model(weights, meta, precision)


def load(path, mmap=False, precision="fp32"):
    """Load a converted `.npz` (see `npvitpose convert`), checking every key, shape and dtype.

    The file is streamed: its headers are checked first, then each layer is read, checked and packed in turn,
    so the peak is the packed model plus one fp32 layer. mmap=True maps each layer while it is packed instead
    of reading it (no copy); either way nothing of the file stays in memory or mapped once loaded.

    precision: "fp32" (default, exact), "bf16" or "int8" for the linear layers, opt-in (README "Precision");
    bf16 and int8 also run attention's two products in bf16 where the CPU has AVX512-BF16.
    """
    path = os.fspath(path)
    _check_precision(precision)
    if os.path.isdir(path) or path.endswith((".pth", ".safetensors")):
        raise NpvitposeError(
            f"{path}: a checkpoint, not a converted model; run `npvitpose convert {path} -o MODEL.npz`")
    with Archive(path, mmap=mmap) as archive:  # the member table and every header checked here
        try:
            if "__meta__" not in archive:
                raise NpvitposeError("not an npvitpose model (no __meta__ record; convert it first)")
            return Model(archive, metadata.parse(archive.pop("__meta__")), precision)
        except NpvitposeError as e:
            raise NpvitposeError(f"{path}: {e}") from None


def save_npz(path, weights, meta):
    """Write weights (float32, official names) and metadata to `path` atomically (temp file + rename)."""
    path = os.fspath(path)
    meta = dict(meta, format_version=FORMAT_VERSION)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    arrays["__meta__"] = np.array(json.dumps(meta, allow_nan=False))  # NaN is not JSON
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


