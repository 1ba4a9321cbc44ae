"""Downloads from a misbehaving server on 127.0.0.1: bodies cut short, longer than announced or endless,
compressed although identity was asked, trickling one byte at a time; two processes fetching one file;
a poisoned cache entry. Each ends in a complete, checked file or one error with nothing left behind."""

import gzip
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hostile import ROOT
from npvitpose import fetch
from npvitpose.errors import NpvitposeError

CONFIG = json.dumps({"model_type": "vitpose", "backbone_config": {"hidden_size": 64}}).encode()
BLOB = os.urandom(200_000)


class Misbehaving(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the connection ends with each response: a short body is just cut
    hits = []

    def log_message(self, *args):
        pass

    def send(self, body, length=None, headers=()):
        self.send_response(200)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        Misbehaving.hits.append(self.path)
        path = self.path
        try:
            if path == "/short.json":
                self.send(CONFIG[: len(CONFIG) // 2])  # no length, no checksum: only its JSON can tell
            elif path == "/good.json":
                self.send(CONFIG, len(CONFIG))
            elif path == "/longer":
                self.send(BLOB, 1000)
            elif path == "/endless.json":
                self.send(b"")
                block = b" " * 65536
                for _ in range(100_000):  # ~6.5 GB at most: the client must stop long before
                    self.wfile.write(block)
            elif path == "/gzip.json":
                self.send(gzip.compress(CONFIG), headers=[("Content-Encoding", "gzip")])
            elif path == "/br.json":
                self.send(b"\x0b\x02\x80", headers=[("Content-Encoding", "br")])
            elif path == "/trickle":
                self.send(b"", 1000)
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            elif path == "/slow":
                etag = hashlib.sha256(BLOB).hexdigest()
                self.send(b"", len(BLOB), [("ETag", f'"{etag}"')])
                for i in range(0, len(BLOB), 10_000):
                    self.wfile.write(BLOB[i:i + 10_000])
                    self.wfile.flush()
                    time.sleep(0.1)
            else:
                self.send_response(404)
                self.end_headers()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def nothing_left(folder, keep=()):
    return sorted(n for n in os.listdir(folder) if not n.endswith(".lock") and n not in keep) == []


def test_json_cut_short_without_a_length_is_refused(server, tmp_path):
    with pytest.raises(NpvitposeError, match="not valid JSON"):
        fetch.download(f"{server}/short.json", str(tmp_path / "config.json"))
    assert nothing_left(tmp_path)


def test_body_longer_than_announced_ends_at_its_length(server, tmp_path):
    """HTTP framing: the bytes after Content-Length are not the file's (they are never read)."""
    dest = fetch.download(f"{server}/longer", str(tmp_path / "w.bin"))
    assert open(dest, "rb").read() == BLOB[:1000]


def test_endless_body_stops_at_the_expected_size(server, tmp_path):
    start = time.monotonic()
    with pytest.raises(NpvitposeError, match="larger than the"):
        fetch.download(f"{server}/endless.json", str(tmp_path / "config.json"))
    assert time.monotonic() - start < 30 and nothing_left(tmp_path)


def test_gzip_encoding_is_decoded_and_others_refused(server, tmp_path):
    dest = fetch.download(f"{server}/gzip.json", str(tmp_path / "config.json"))
    assert open(dest, "rb").read() == CONFIG
    with pytest.raises(NpvitposeError, match="Content-Encoding 'br'"):
        fetch.download(f"{server}/br.json", str(tmp_path / "other.json"))
    assert nothing_left(tmp_path, keep=("config.json",))


def test_a_trickle_is_cut_by_the_minimum_rate_then_by_the_deadline(server, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "STALL_WINDOW", 0.3)
    monkeypatch.setattr(fetch, "MIN_RATE", 100)  # the server sends 20 bytes/s
    start = time.monotonic()
    with pytest.raises(NpvitposeError, match="slowed below 100 bytes/s"):
        fetch.download(f"{server}/trickle", str(tmp_path / "w.bin"))
    assert time.monotonic() - start < 15
    monkeypatch.setattr(fetch, "MIN_RATE", 0)
    monkeypatch.setattr(fetch, "DEADLINE", 1.5)
    start = time.monotonic()
    with pytest.raises(NpvitposeError, match="did not finish within 1.5 s"):
        fetch.download(f"{server}/trickle", str(tmp_path / "w.bin"))
    assert time.monotonic() - start < 10


def test_a_poisoned_cache_entry_repairs_itself(server, tmp_path):
    dest = tmp_path / "config.json"
    dest.write_text('{"model_type": "vitp')  # what a cut transfer used to leave for ever
    fetch.download(f"{server}/good.json", str(dest))
    assert dest.read_bytes() == CONFIG


def test_two_processes_fetching_one_file_both_succeed(server, tmp_path):
    """Before: both appended to one .part and both failed. Now one downloads, the other waits for its lock."""
    code = "import sys; from npvitpose import fetch; print(fetch.download(sys.argv[1], sys.argv[2]))"
    dest = str(tmp_path / "model.bin")
    Misbehaving.hits.clear()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", code, f"{server}/slow", dest], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert open(dest, "rb").read() == BLOB
    assert Misbehaving.hits.count("/slow") == 1  # the second found the file done
