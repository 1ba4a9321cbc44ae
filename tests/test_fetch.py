"""npvitpose.fetch against a real local HTTP server: full download, resume after a cut, checksum, 404, overrides."""

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from hf_reference import hf_folder_from_numpy, official_to_hf
from npvitpose import fetch as F
from npvitpose.errors import NpvitposeError
from npvitpose.model import Config, load, random_weights

REPO = "usyd-community/vitpose-base"
TINY = Config(dim=32, depth=1, heads=2, mlp_hidden=64, num_keypoints=17, head="simple", ln_eps=1e-6)


def _hf_config_json(cfg):
    """A hub-style config.json (the keys the usyd-community repos carry) for a tiny simple-head model."""
    return json.dumps({
        "architectures": ["VitPoseForPoseEstimation"],
        "model_type": "vitpose",
        "backbone_config": {
            "model_type": "vitpose_backbone", "hidden_size": cfg.dim, "num_hidden_layers": cfg.depth,
            "num_attention_heads": cfg.heads, "mlp_ratio": cfg.mlp_hidden // cfg.dim,
            "image_size": [256, 192], "patch_size": [16, 16], "num_channels": 3, "qkv_bias": True,
            "hidden_act": "gelu", "layer_norm_eps": cfg.ln_eps, "num_experts": 1, "part_features": 256,
            "out_features": [f"stage{cfg.depth}"], "out_indices": [cfg.depth],
        },
        "use_simple_decoder": cfg.head == "simple",
        "scale_factor": 4,
        "num_labels": cfg.num_keypoints,
    }, indent=2)


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory):
    """{file name: bytes} of a tiny HF-format model (config.json + model.safetensors)."""
    folder = tmp_path_factory.mktemp("hf")
    hf_folder_from_numpy(_hf_config_json(TINY), official_to_hf(random_weights(TINY, seed=3)), folder)
    return {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}


class _Server:
    """A hub look-alike: /<repo>/resolve/main/<file> answers 302 with X-Linked-Etag to /cdn/<file>,
    which serves the bytes with Range support. Knobs: `cut` (bytes sent before closing the connection on
    the first body request of a file), `lie` (advertise a wrong sha256), `redirect` (False: serve
    directly with the sha256 as ETag)."""

    def __init__(self, files):
        self.files = dict(files)
        self.cut, self.lie, self.redirect = {}, set(), True
        self.requests = []  # (path, Range header or None)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.requests.append((self.path, self.headers.get("Range")))
                owner.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def sha(self, name):
        digest = hashlib.sha256(self.files[name]).hexdigest()
        return "0" * 64 if name in self.lie else digest

    def handle(self, h):
        prefix = f"/{REPO}/resolve/main/"
        if h.path.startswith(prefix) and h.path[len(prefix):] in self.files:
            name = h.path[len(prefix):]
            if self.redirect:
                h.send_response(302)
                h.send_header("Location", f"/cdn/{name}")
                h.send_header("X-Linked-Etag", f'"{self.sha(name)}"')
                h.send_header("X-Linked-Size", str(len(self.files[name])))
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            return self.body(h, name, etag=f'"{self.sha(name)}"')
        if h.path.startswith("/cdn/") and h.path[5:] in self.files:
            return self.body(h, h.path[5:], etag='"d41d8cd98f00b204e9800998ecf8427e"')  # not a sha256: ignored
        h.send_response(404)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def body(self, h, name, etag):
        data = self.files[name]
        start = 0
        rng = h.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        h.send_header("Content-Length", str(len(data) - start))
        h.send_header("ETag", etag)
        h.end_headers()
        cut = self.cut.pop(name, None)
        if cut is not None:  # announce everything, send a prefix, drop the connection
            h.wfile.write(data[start:start + cut])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(data[start:])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(hf_files):
    with _Server(hf_files) as s:
        yield s


def _dest(tmp_path, name="model.safetensors"):
    return str(tmp_path / "dl" / name)


def test_full_download_follows_redirect_and_verifies(server, tmp_path, hf_files):
    url = F.file_url(server.url, REPO, "model.safetensors")
    path = F.download(url, _dest(tmp_path), progress=False)
    assert open(path, "rb").read() == hf_files["model.safetensors"]
    assert not os.path.exists(path + ".part")
    assert [p for p, _ in server.requests] == [f"/{REPO}/resolve/main/model.safetensors", "/cdn/model.safetensors"]


def test_interrupted_transfer_resumes_with_range(server, tmp_path, hf_files):
    data = hf_files["model.safetensors"]
    server.cut["model.safetensors"] = len(data) // 3
    path = F.download(F.file_url(server.url, REPO, "model.safetensors"), _dest(tmp_path), progress=False)
    assert open(path, "rb").read() == data
    ranges = [r for p, r in server.requests if p.startswith("/cdn/")]
    assert ranges == [None, f"bytes={len(data) // 3}-"]


def test_leftover_part_file_is_resumed(server, tmp_path, hf_files):
    data = hf_files["model.safetensors"]
    dest = _dest(tmp_path)
    os.makedirs(os.path.dirname(dest))
    with open(dest + ".part", "wb") as f:
        f.write(data[:1000])
    F.download(F.file_url(server.url, REPO, "model.safetensors"), dest, progress=False)
    assert open(dest, "rb").read() == data
    assert [r for p, r in server.requests if p.startswith("/cdn/")] == ["bytes=1000-"]


def test_checksum_mismatch_deletes_and_errors(server, tmp_path):
    server.lie.add("model.safetensors")
    dest = _dest(tmp_path)
    with pytest.raises(NpvitposeError, match="checksum mismatch") as e:
        F.download(F.file_url(server.url, REPO, "model.safetensors"), dest, progress=False)
    assert "\n" not in str(e.value)
    assert not os.path.exists(dest) and not os.path.exists(dest + ".part")


def test_known_sha256_overrides_headers(server, tmp_path, hf_files):
    dest = _dest(tmp_path)
    with pytest.raises(NpvitposeError, match="checksum mismatch"):
        F.download(F.file_url(server.url, REPO, "model.safetensors"), dest, sha256="ab" * 32, progress=False)
    assert not os.listdir(os.path.dirname(dest))


def test_plain_etag_sha256_is_checked_without_redirect(server, tmp_path):
    server.redirect = False
    server.lie.add("config.json")
    with pytest.raises(NpvitposeError, match="checksum mismatch"):
        F.download(F.file_url(server.url, REPO, "config.json"), _dest(tmp_path, "config.json"), progress=False)


def test_404_is_one_line_error(server, tmp_path):
    dest = _dest(tmp_path, "missing.bin")
    with pytest.raises(NpvitposeError, match="HTTP 404") as e:
        F.download(F.file_url(server.url, REPO, "missing.bin"), dest, progress=False)
    assert "\n" not in str(e.value)
    assert not os.path.exists(dest) and not os.path.exists(dest + ".part")


def test_unreachable_server_is_one_line_error(tmp_path):
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as s:
        port = s.server_address[1]  # bound then closed: nothing listens there any more
    with pytest.raises(NpvitposeError, match="cannot reach") as e:
        F.download(f"http://127.0.0.1:{port}/x", _dest(tmp_path), progress=False)
    assert "\n" not in str(e.value)


def test_progress_bar_when_asked(server, tmp_path, capsys):
    F.download(F.file_url(server.url, REPO, "config.json"), _dest(tmp_path, "config.json"), progress=True)
    err = capsys.readouterr().err
    assert "config.json" in err and "100%" in err


def test_fetch_uses_hf_endpoint_and_cache_env(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.url + "/")
    monkeypatch.setenv("NPVITPOSE_CACHE", str(tmp_path / "envcache"))
    out = F.fetch("vitpose-b", progress=False)
    assert out == str(tmp_path / "envcache" / "vitpose-base.npz")
    model = load(out)
    assert model.config.dim == TINY.dim and model.config.head == "simple" and model.num_keypoints == 17
    assert {p for p, _ in server.requests} >= {f"/{REPO}/resolve/main/config.json",
                                               f"/{REPO}/resolve/main/model.safetensors"}
    count = len(server.requests)
    assert F.fetch("usyd-community/vitpose-base", progress=False) == out  # cached: no network
    assert len(server.requests) == count


def test_fetch_argument_overrides_env(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: would fail if used
    monkeypatch.setenv("NPVITPOSE_CACHE", str(tmp_path / "unused"))
    out = F.fetch("vitpose-base", cache_dir=str(tmp_path / "argcache"), endpoint=server.url, progress=False)
    assert out == str(tmp_path / "argcache" / "vitpose-base.npz") and os.path.exists(out)
    assert not (tmp_path / "unused").exists()
    w = np.load(out, allow_pickle=False)
    assert "keypoint_head.final_layer.weight" in w.files


def test_unknown_name_lists_choices(tmp_path):
    with pytest.raises(NpvitposeError, match="unknown model name"):
        F.fetch("vitpose-xxl", cache_dir=str(tmp_path))


def test_aliases_resolve():
    assert F.canonical_name("vitpose-b") == "vitpose-base"
    assert F.canonical_name("VITPOSE-B-SIMPLE") == "vitpose-base-simple"
    assert F.canonical_name("vitpose-plus-s") == "vitpose-plus-small"
    assert F.canonical_name("usyd-community/vitpose-plus-huge") == "vitpose-plus-huge"
    assert F.canonical_name("original-vitpose-plus-b") == "original-vitpose-plus-base"
    assert F.SOURCES["original-vitpose-plus-base"].files == ("vitpose+_base.pth",)
    assert F.file_url("http://h", "nielsr/vitpose-original-checkpoints", "vitpose+_base.pth").endswith(
        "/nielsr/vitpose-original-checkpoints/resolve/main/vitpose%2B_base.pth")


def test_cli_fetch_error_is_one_line(server, tmp_path, capsys):
    from npvitpose.cli import main

    server.lie.add("model.safetensors")
    code = main(["fetch", "vitpose-b", "--cache", str(tmp_path), "--endpoint", server.url])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("npvitpose: error: checksum mismatch") and err.count("\n") == 1
    assert not (tmp_path / "vitpose-base.npz").exists()


def test_infer_downloads_its_default_model_on_first_use(server, tmp_path, monkeypatch, capsys):
    import cv2

    from npvitpose.cli import main

    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("NPVITPOSE_CACHE", str(tmp_path / "cache"))
    image, boxes = str(tmp_path / "in.png"), tmp_path / "boxes.json"
    cv2.imwrite(image, np.full((120, 100, 3), 90, np.uint8))
    boxes.write_text("[[10, 10, 60, 90, 0.8]]")
    # nothing to run on: refused before any download
    assert main(["infer", str(tmp_path / "missing.jpg"), str(boxes)]) == 1
    assert capsys.readouterr().err == f"npvitpose: error: image file not found: {tmp_path / 'missing.jpg'}\n"
    assert server.requests == []
    # `npvitpose infer image.jpg boxes.json`, no --model: vitpose-b is fetched, converted and used
    assert main(["infer", image, str(boxes), "-o", str(tmp_path / "out.json")]) == 0
    assert "downloading it once from usyd-community/vitpose-base" in capsys.readouterr().err
    results = json.loads((tmp_path / "out.json").read_text())
    assert len(results) == 1 and len(results[0]["keypoints"]) == 17 * 3
    assert os.path.exists(tmp_path / "cache" / "vitpose-base.npz")
    count = len(server.requests)
    assert main(["infer", image, str(boxes)]) == 0  # second run: from the cache, no network
    assert len(server.requests) == count and "downloading" not in capsys.readouterr().err


def test_load_takes_a_published_name(server, tmp_path, monkeypatch):
    import npvitpose

    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("NPVITPOSE_CACHE", str(tmp_path / "cache"))
    model = npvitpose.load("vitpose-b")  # downloaded and converted into the cache on first use
    assert model.config.dim == TINY.dim and os.path.exists(tmp_path / "cache" / "vitpose-base.npz")
    count = len(server.requests)
    assert npvitpose.load("vitpose-base").config == model.config and len(server.requests) == count
    with pytest.raises(NpvitposeError, match="no such file"):
        npvitpose.load(str(tmp_path / "vitpose-b"))  # a path, not a name


@pytest.mark.parametrize("endpoint", ["hf-mirror.com", "not a url", "ftp://mirror.example/"])
def test_malformed_endpoint_is_one_line(tmp_path, monkeypatch, capsys, endpoint):
    from npvitpose.cli import main

    assert main(["fetch", "vitpose-b", "--cache", str(tmp_path), "--endpoint", endpoint]) == 1
    assert capsys.readouterr().err == f"npvitpose: error: hub address {endpoint!r} (--endpoint) must look like https://host[:port]\n"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(NpvitposeError, match=r"\(HF_ENDPOINT\)"):
        F.fetch("vitpose-b", cache_dir=str(tmp_path))
