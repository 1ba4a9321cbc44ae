"""Download published ViTPose weights (standard library only) and convert them to an npvitpose .npz.

Files land in `<cache>/downloads/<owner>--<repo>/`, the converted model in `<cache>/<name>.npz`;
the cache is `~/.cache/npvitpose` unless `NPVITPOSE_CACHE` or the `cache_dir` argument says otherwise.
Downloads resume from a `.part` file with an HTTP Range request, are checked against the sha256 the
Hugging Face hub sends for LFS files (`X-Linked-Etag`) and, where no checksum exists (config.json, a
mirror), against their announced size and format; they are renamed into place only when complete.
One process at a time downloads a file (fcntl.flock); DEADLINE bounds each file however slow the server.
"""

import contextlib
import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from typing import NamedTuple

from .errors import NpvitposeError
from .messages import Progress

DEFAULT_ENDPOINT = "https://huggingface.co"
_CHUNK = 1 << 20
_ATTEMPTS = 5  # a transfer cut mid-body is resumed at most this many times
_TIMEOUT = 60.0  # seconds without data before a connection counts as failed
DEADLINE = 4 * 3600.0  # seconds for one file, all attempts and waiting for another process included
STALL_WINDOW, MIN_RATE = 60.0, 1024  # a transfer under 1 KB/s over a minute counts as cut (and is resumed)
_MAX_JSON = 10 << 20  # a config.json is ~2 KB
_MAX_FILE = 16 << 30  # the largest published checkpoint (ViTPose+-H .pth) is ~3.7 GB
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Source(NamedTuple):
    repo: str  # Hugging Face repo id
    files: tuple  # files to download; the last one is the weights
    sha256: tuple  # known sha256 per file, or None where not recorded (the hub's X-Linked-Etag is used then)
    convert_from: str  # "folder" (HF config.json + model.safetensors) or "file" (an official .pth)


def _hf(repo):
    return Source(repo, ("config.json", "model.safetensors"), (None, None), "folder")


def _pth(file_name):
    return Source("nielsr/vitpose-original-checkpoints", (file_name,), (None,), "file")


# spec 7: the transformers-format repos of usyd-community and the official .pth mirror of nielsr
SOURCES = {
    "vitpose-base-simple": _hf("usyd-community/vitpose-base-simple"),
    "vitpose-base": _hf("usyd-community/vitpose-base"),
    "vitpose-base-coco-aic-mpii": _hf("usyd-community/vitpose-base-coco-aic-mpii"),
    "vitpose-plus-small": _hf("usyd-community/vitpose-plus-small"),
    "vitpose-plus-base": _hf("usyd-community/vitpose-plus-base"),
    "vitpose-plus-large": _hf("usyd-community/vitpose-plus-large"),
    "vitpose-plus-huge": _hf("usyd-community/vitpose-plus-huge"),
    "original-vitpose-base-simple": _pth("vitpose-b-simple.pth"),
    "original-vitpose-base": _pth("vitpose-b.pth"),
    "original-vitpose-base-coco-aic-mpii": _pth("vitpose_base_coco_aic_mpii.pth"),
    "original-vitpose-plus-small": _pth("vitpose+_small.pth"),
    "original-vitpose-plus-base": _pth("vitpose+_base.pth"),
    "original-vitpose-plus-large": _pth("vitpose+_large.pth"),
    "original-vitpose-plus-huge": _pth("vitpose+_huge.pth"),
}

_SHORT = {"small": "s", "base": "b", "large": "l", "huge": "h"}


def _aliases():
    """Short names (vitpose-b, vitpose-plus-s, original-vitpose-b-simple, ...) and HF repo ids."""
    table = {}
    for name, source in SOURCES.items():
        short = "-".join(_SHORT.get(part, part) for part in name.split("-"))
        table[short] = name
        if source.convert_from == "folder":
            table[source.repo.lower()] = name
    return table


ALIASES = _aliases()


def canonical_name(name):
    """A known model name or alias -> its canonical name; NpvitposeError for anything else."""
    key = str(name).strip().lower()
    if key in SOURCES:
        return key
    if key in ALIASES:
        return ALIASES[key]
    raise NpvitposeError(f"unknown model name {name!r}; known: {', '.join(SOURCES)} (and short forms like vitpose-b)")


def is_model_name(name):
    """True for a name `canonical_name` accepts."""
    try:
        canonical_name(name)
    except NpvitposeError:
        return False
    return True


def cache_folder(path=None):
    """The cache folder: the argument, else $NPVITPOSE_CACHE, else ~/.cache/npvitpose."""
    if path:
        return os.path.abspath(os.path.expanduser(str(path)))
    env = os.environ.get("NPVITPOSE_CACHE")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "npvitpose")


def model_path(name, cache=None, dataset=None):
    """Where `fetch(name, cache, dataset=dataset)` puts its .npz (whether or not it exists yet)."""
    stem = canonical_name(name) + (f"-{dataset}" if dataset else "")
    return os.path.join(cache_folder(cache), stem + ".npz")


def endpoint_url(endpoint=None):
    """The hub address: the argument, else $HF_ENDPOINT (the usual mirror switch), else huggingface.co."""
    url = endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        where = "--endpoint" if endpoint else "HF_ENDPOINT"
        raise NpvitposeError(f"hub address {url!r} ({where}) must look like https://host[:port]")
    return url.rstrip("/")


def file_url(endpoint, repo, file_name):
    return f"{endpoint}/{repo}/resolve/main/{urllib.parse.quote(file_name)}"


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Keeps the headers of redirect responses: the hub puts X-Linked-Etag on its 302 to the CDN."""

    def __init__(self):
        self.headers = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Cut(Exception):
    """The transfer stopped before the end: worth resuming."""


def _sha_from_headers(header_sets):
    """The sha256 the server vouches for: X-Linked-Etag (LFS files on the hub), else a 64-hex ETag."""
    for key in ("X-Linked-Etag", "ETag"):
        for headers in header_sets:
            value = (headers.get(key) or "").strip()
            value = value[2:] if value.startswith("W/") else value
            value = value.strip('"').lower()
            if _HEX64.fullmatch(value):
                return value
    return None


def _content_range(value):
    """'bytes 100-199/1000' -> (100, 1000); None when absent or unparseable (total may be None for '*')."""
    m = re.fullmatch(r"\s*bytes\s+(\d{1,18})-(\d{1,18})/(\d{1,18}|\*)\s*", value or "")
    if not m:
        return None
    return int(m.group(1)), (None if m.group(3) == "*" else int(m.group(3)))


class _Body:
    """The bytes of a response as the file holds them: gzip/deflate Content-Encoding decoded (in bounded
    steps), anything else refused; each read returns what one receive gives, so that a trickling server
    meets the deadline and the minimum rate."""

    def __init__(self, response, url, end):
        encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
            raise NpvitposeError(f"download failed: {url} is sent with Content-Encoding {encoding!r}, "
                                 "which npvitpose does not decode")
        self.response, self.url, self.end = response, url, end
        self.encoded = encoding != "identity"
        self.z = zlib.decompressobj(31 if "gzip" in encoding else 15) if self.encoded else None
        self.window, self.window_bytes = time.monotonic(), 0

    def _recv(self):
        _wait(self.end, self.url)
        try:
            data = self.response.read1(_CHUNK)
        except (OSError, http.client.HTTPException) as e:
            raise _Cut(f"transfer of {self.url} interrupted: {e or type(e).__name__}") from None
        now = time.monotonic()
        self.window_bytes += len(data)
        if now - self.window > STALL_WINDOW:
            if self.window_bytes < MIN_RATE * (now - self.window):
                raise _Cut(f"transfer of {self.url} slowed below {MIN_RATE} bytes/s")
            self.window, self.window_bytes = now, 0
        return data

    def read(self):
        while True:
            if self.z is None:
                return self._recv()
            data = self.z.unconsumed_tail or self._recv()
            if not data or self.z.eof:
                if not self.z.eof:
                    raise _Cut(f"transfer of {self.url} stopped inside its compressed data")
                return b""
            try:
                out = self.z.decompress(data, _CHUNK)
            except zlib.error:
                raise NpvitposeError(f"download failed: {self.url} sent a corrupt compressed body") from None
            if out:
                return out


def _attempt(url, part, label, progress, end, max_bytes):
    """One HTTP request appending to `part`; returns (expected size or None, sha256 from headers or None)."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"User-Agent": "npvitpose", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    redirects = _RecordRedirects()
    opener = urllib.request.build_opener(redirects)
    try:
        response = opener.open(urllib.request.Request(url, headers=headers), timeout=_wait(end, url))
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part is not a prefix of this file any more: start over
            os.remove(part)
            raise _Cut(f"HTTP 416 for {url}") from None
        raise NpvitposeError(f"download failed: HTTP {e.code} {e.reason} for {url}") from None
    except urllib.error.URLError as e:
        raise NpvitposeError(f"download failed: cannot reach {url}: {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:
        raise NpvitposeError(f"download failed: {url}: {e or type(e).__name__}") from None
    with response:
        sha = _sha_from_headers(redirects.headers + [response.headers])
        body = _Body(response, url, end)
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() and len(length) < 19 else None
        if response.status == 206 and not body.encoded:
            rng = _content_range(response.headers.get("Content-Range"))
            if rng is None or rng[0] != offset:
                os.remove(part)
                raise _Cut(f"unexpected Content-Range from {url}")
            total = rng[1]
            mode = "ab"
        else:  # 200: the server sent the whole file (it may ignore Range); an encoded body restarts too
            offset, mode = 0, "wb"
            total = None if body.encoded else length
        if total is not None and total > max_bytes:
            raise NpvitposeError(f"download of {url} announces {total} bytes, more than the {max_bytes} expected")
        bar = Progress(total, label, progress, unit="MB")
        bar.update(offset)
        size = offset
        try:
            with open(part, mode) as f:
                while True:
                    chunk = body.read()
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > (total if total is not None else max_bytes):  # never read an endless body to its end
                        break
                    f.write(chunk)  # a local disk error propagates as OSError, not as a network cut
                    bar.update(len(chunk))
        finally:
            bar.close()
        if total is not None and size < total:
            raise _Cut(f"transfer of {url} stopped at {size} of {total} bytes")
        if size > (total if total is not None else max_bytes):
            os.remove(part)
            what = f"than announced ({total} bytes)" if total is not None else f"than the {max_bytes} bytes expected"
            raise NpvitposeError(f"download of {url} is larger {what}; deleted")
        return total, sha


def _wait(end, url):
    """Seconds a network operation may still take before the download's deadline; none left: an error."""
    left = end - time.monotonic()
    if left <= 0:
        raise NpvitposeError(f"download of {url} did not finish within {DEADLINE:g} s (a stalled or trickling "
                             "server); run again to resume")
    return min(_TIMEOUT, left)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def check_file(path, name=None):
    """What can be checked of a downloaded file (named `name`) without its checksum: a .json parses, a
    .safetensors header fits the file, a .pth is a readable zip; NpvitposeError says what is wrong."""
    name = os.path.basename(name or path)
    if name.endswith(".json"):
        try:
            with open(path, "rb") as f:
                json.loads(f.read(_MAX_JSON + 1).decode("utf-8"))
        except (ValueError, RecursionError):
            raise NpvitposeError(f"{name} is not valid JSON (cut short, or an error page)") from None
    elif name.endswith(".safetensors"):
        from .checkpoint import check_safetensors

        check_safetensors(path)  # the header and every offset against the file; no tensor data is read
    elif name.endswith(".pth"):
        import zipfile

        try:
            zipfile.ZipFile(path).close()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            raise NpvitposeError(f"{name} is not a complete PyTorch checkpoint (cut short?)") from None


@contextlib.contextmanager
def _locked(dest, end):
    """One process at a time downloads `dest` (fcntl.flock on `dest.lock`; the others wait, then find it
    done). The lock file is removed when released; a waiter that then holds a removed file tries again."""
    import fcntl

    path = dest + ".lock"
    while True:
        lock = open(path, "a")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            if time.monotonic() > end:
                raise NpvitposeError(f"another process has been downloading {dest} for over {DEADLINE:g} s; "
                                     f"if none is, delete {path}") from None
            time.sleep(0.2)
            continue
        try:
            if os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        lock.close()
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # before unlocking, so that no waiter takes a lock on a file nobody sees
        lock.close()


def download(url, dest, sha256=None, progress=None, max_bytes=None):
    """Fetch `url` into `dest` (resuming `dest.part`), verify its sha256 when known and what can be checked
    otherwise (see `check_file`), rename into place. One process at a time per file; DEADLINE seconds in all.
    A `dest` already there that fails `check_file` is downloaded again."""
    end = time.monotonic() + DEADLINE
    limit = max_bytes or (_MAX_JSON if dest.endswith(".json") else _MAX_FILE)
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    with _locked(dest, end):
        if os.path.exists(dest):
            try:
                check_file(dest)
                return dest
            except NpvitposeError:  # a bad cache entry (from an older npvitpose, or edited): fetched again
                os.remove(dest)
        part = dest + ".part"
        label = os.path.basename(dest)
        last = None
        for _ in range(_ATTEMPTS):
            try:
                _, header_sha = _attempt(url, part, label, progress, end, limit)
                break
            except _Cut as e:
                last = e
        else:
            raise NpvitposeError(f"download failed after {_ATTEMPTS} attempts: {last}; run again to resume")
        expected = (sha256 or header_sha or "").lower() or None
        if expected is not None:
            actual = _sha256(part)
            if actual != expected:
                os.remove(part)
                raise NpvitposeError(
                    f"checksum mismatch for {url}: sha256 {actual}, expected {expected}; the download was deleted"
                )
        try:
            check_file(part, dest)
        except NpvitposeError as e:
            os.remove(part)
            raise NpvitposeError(f"download of {url} is damaged: {e}; deleted, run again") from None
        os.replace(part, dest)
    return dest


CHECKPOINT_EXTS = (".pth", ".pt", ".safetensors")  # converted on use (a folder is a Hugging Face one)
_NAME = re.compile(r"[a-z0-9][a-z0-9._+-]{0,99}")  # an installed model's name: a file name in the cache


def offline_help(name):
    """What to do when a published model cannot be downloaded (no network, a blocked hub)."""
    return (f"offline, or the hub blocked? set HF_ENDPOINT to a mirror, give --model a file you have (a converted "
            f".npz, a Hugging Face folder or an official .pth), or install one under this name: "
            f"npvitpose fetch --from FILE {name}")


def fetch(name, cache_dir=None, endpoint=None, progress=None, dataset=None):
    """Download the model `name` (see SOURCES / ALIASES) if needed and return the path of its .npz.

    `dataset` picks the head/expert of a multi-dataset checkpoint (see npvitpose.convert.convert);
    the result is then cached as `<name>-<dataset>.npz`. Only the converted file is kept: the download
    is deleted once converted (another `dataset` of the same checkpoint downloads it again).
    """
    import shutil

    canonical = canonical_name(name)
    cache = cache_folder(cache_dir)
    out = model_path(canonical, cache, dataset)
    if os.path.exists(out):
        return out
    source = SOURCES[canonical]
    folder = os.path.join(cache, "downloads", source.repo.replace("/", "--"))
    base = endpoint_url(endpoint)
    try:
        paths = [
            download(file_url(base, source.repo, file_name), os.path.join(folder, file_name), sha, progress)
            for file_name, sha in zip(source.files, source.sha256)
        ]
    except NpvitposeError as e:
        for empty in (folder, os.path.dirname(folder)):  # nothing received: no "unfinished download" to list
            with contextlib.suppress(OSError):
                os.rmdir(empty)
        raise NpvitposeError(f"{e}; {offline_help(name)}") from None
    src = folder if source.convert_from == "folder" else paths[-1]
    from .convert import convert

    try:
        convert(src, out, dataset)
    except NpvitposeError as e:  # a download that passed every check but still does not convert
        raise NpvitposeError(f"{e} (if the download is damaged, delete {folder} and run again)") from None
    shutil.rmtree(folder, ignore_errors=True)  # the raw download (as large as the model): not needed any more
    return out


def _content_key(src):
    """A short digest of what converting `src` reads, so an edited or replaced checkpoint converts anew."""
    from .convert import source_files

    digest = hashlib.sha256()
    for path in source_files(src):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def converted(src, cache=None, dataset=None, note=None):
    """A checkpoint (official .pth, .safetensors, a Hugging Face folder) -> its .npz, converted once into
    `<cache>/converted/`, keyed by the checkpoint's content."""
    from .convert import convert

    stem = os.path.splitext(os.path.basename(os.path.normpath(os.fspath(src))))[0]
    stem = re.sub(r"[^A-Za-z0-9._+-]", "_", stem) or "model"
    out = os.path.join(cache_folder(cache), "converted", f"{stem}-{_content_key(src)}"
                       + (f"-{dataset}" if dataset else "") + ".npz")
    if not os.path.exists(out):
        if note is not None:
            note(f"converting {src} once into the cache ({out}); later runs load that")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        convert(src, out, dataset)
    return out


def is_checkpoint(path):
    return os.path.isdir(path) or os.path.splitext(str(path))[1].lower() in CHECKPOINT_EXTS


def installed_path(name, cache=None, dataset=None):
    """Where a model installed (or fetched) under `name` lives in the cache, a published name or not."""
    if is_model_name(name):
        return model_path(name, cache, dataset)
    key = str(name).strip().lower()
    if not _NAME.fullmatch(key) or key.endswith(".npz"):
        raise NpvitposeError(f"{name!r} is not a model name (letters, digits and . _ + -, without .npz)")
    return os.path.join(cache_folder(cache), key + (f"-{dataset}" if dataset else "") + ".npz")


def install(src, name, cache=None, dataset=None):
    """`npvitpose fetch --from SRC NAME`: a converted .npz (checked) or a checkpoint (converted) placed in the
    cache under NAME, so `--model NAME` and `npvitpose.load(NAME)` find it with no network."""
    import shutil

    from .convert import convert
    from .outputs import atomic_output

    src = os.fspath(src)
    if not os.path.exists(src):
        raise NpvitposeError(f"--from {src!r}: no such file or folder")
    out = installed_path(name, cache, dataset)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if is_checkpoint(src):
        convert(src, out, dataset)
        return out
    if dataset is not None:
        raise NpvitposeError("--dataset picks the expert of a checkpoint being converted; this is a converted .npz")
    from .model import load

    load(src)  # every key, shape and dtype checked before it is installed
    with atomic_output(out) as tmp:
        shutil.copyfile(src, tmp)
    return out


def cache_entries(cache=None):
    """What the cache holds: [(kind, path, bytes)] with kind "model", "converted" or "download"."""
    root = cache_folder(cache)
    entries = []
    for kind, folder in (("model", root), ("converted", os.path.join(root, "converted"))):
        if os.path.isdir(folder):
            entries += [(kind, os.path.join(folder, n), os.path.getsize(os.path.join(folder, n)))
                        for n in sorted(os.listdir(folder)) if n.endswith(".npz")]
    downloads = os.path.join(root, "downloads")
    if os.path.isdir(downloads):  # what an interrupted download left (a finished one is deleted when converted)
        for repo in sorted(os.listdir(downloads)):
            folder = os.path.join(downloads, repo)
            size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)
            entries.append(("download", folder, size))
    return entries


def resolve(spec, cache=None, note=None, dataset=None):
    """A model given by the user -> the path of its .npz: a converted file as it is; a checkpoint (an
    official .pth, a Hugging Face folder) converted once into the cache; a name installed in the cache;
    else a published name, downloaded and converted on first use (announced through `note(text)`)."""
    spec = os.fspath(spec)
    if os.path.exists(spec):
        return converted(spec, cache, dataset, note) if is_checkpoint(spec) else spec
    if not is_model_name(spec):
        try:
            path = installed_path(spec, cache, dataset)
        except NpvitposeError:
            path = None
        if path is None or not os.path.exists(path):
            raise NpvitposeError(f"model {spec!r}: no such file, and not a known or installed model name "
                                 "(see `npvitpose fetch --list` and `npvitpose cache`)")
        return path
    canonical = canonical_name(spec)
    path = model_path(canonical, cache, dataset)
    if not os.path.exists(path):
        endpoint_url()  # a malformed HF_ENDPOINT is reported before the download is announced
        if note is not None:
            note(f"model {spec!r} is not in the cache {os.path.dirname(path)!r}; "
                 f"downloading it once from {SOURCES[canonical].repo}")
        path = fetch(spec, cache_dir=cache, dataset=dataset)  # its offline hint names the model as the user did
    return path
