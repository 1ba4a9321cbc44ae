"""Fuzz the file readers: mutated or truncated .pth / .safetensors / .npz files only ever raise
NpvitposeError, finish within the hypothesis deadline, and allocate a bounded amount of memory."""

import collections
import io
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file as np_save_file

import npvitpose
from npvitpose.checkpoint import read_pth, read_safetensors
from npvitpose.errors import NpvitposeError
from npvitpose.model import Config, random_weights, save_npz

EXAMPLES = 200  # per target; 4 targets
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
MEMORY_LIMIT = 64 << 20  # every input here is < 200 KB; a reader that allocates more was fooled by a size field
INTERESTING = [0, 1, 0x7F, 0xFF, 2**31 - 1, 2**32 - 1, 2**60, 2**63, 2**64 - 1]


@st.composite
def edits(draw, size, hot=None):
    """A few byte edits (set, bit flip, insert, delete, 8-byte integer), half of them inside `hot`, then maybe a cut."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        lo, hi = hot if hot is not None and draw(st.booleans()) else (0, size)
        out.append((draw(st.sampled_from(["set", "flip", "insert", "delete", "int64"])),
                    draw(st.integers(lo, max(lo, hi - 1))), draw(st.integers(0, 255)),
                    draw(st.sampled_from(INTERESTING))))
    return out, draw(st.one_of(st.none(), st.integers(0, size)))


def apply(data: bytes, plan) -> bytes:
    changes, cut = plan
    b = bytearray(data)
    for kind, pos, byte, big in changes:
        pos = min(pos, max(len(b) - 1, 0))
        if not b and kind != "insert":
            continue
        if kind == "set":
            b[pos] = byte
        elif kind == "flip":
            b[pos] ^= 1 << (byte % 8)
        elif kind == "insert":
            b[pos:pos] = bytes([byte])
        elif kind == "delete":
            del b[pos]
        else:
            b[pos:pos + 8] = struct.pack("<Q", big)
    return bytes(b if cut is None else b[:cut])


def only_npvitpose_errors(read, path, limit=MEMORY_LIMIT):
    tracemalloc.start()
    try:
        try:
            read(path)
        except NpvitposeError:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit


def fresh(path, data):
    path.unlink(missing_ok=True)  # a new inode: a previous example's memory map never sees this write
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    sd = collections.OrderedDict(
        w=torch.randn(3, 4, generator=g), h=torch.randn(5, generator=g).half(),
        b=torch.randn(2, 2, generator=g).bfloat16(), t=base.t(), s=base[1:, ::2], n=torch.tensor(7),
        p=torch.nn.Parameter(torch.randn(2, generator=g)),
    )
    pth = folder / "seed.pth"
    torch.save({"state_dict": sd, "meta": {"config": "x = 1", "epoch": 3, "seen": {1}, "raw": b"ab"}}, pth)
    read_pth(pth)
    with zipfile.ZipFile(pth) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    pkl_name = next(n for n in members if n.endswith("/data.pkl"))

    st_path = folder / "seed.safetensors"
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3, np.float16),
              "c": np.arange(4, dtype=np.int64), "d": np.zeros((2, 0), np.float32)}
    np_save_file(arrays, str(st_path), metadata={"k": "v"})
    read_safetensors(st_path)
    header_end = 8 + struct.unpack("<Q", st_path.read_bytes()[:8])[0]

    cfg = Config(dim=24, depth=1, heads=2, mlp_hidden=48, num_keypoints=17, head="simple", ln_eps=1e-6)
    meta = {"dim": 24, "depth": 1, "heads": 2, "mlp_hidden": 48, "num_keypoints": 17, "head": "simple",
            "ln_eps": 1e-6, "dataset": "coco", "mode": "udp", "moe": None}
    npz = folder / "seed.npz"
    save_npz(npz, random_weights(cfg), meta)
    npvitpose.load(npz)  # compiles the kernels once, outside the deadline
    return {"folder": folder, "pth": pth.read_bytes(), "members": members, "pkl_name": pkl_name,
            "safetensors": st_path.read_bytes(), "header_end": header_end, "npz": npz.read_bytes()}


@FUZZ
@given(data=st.data())
def test_fuzz_pth_file(seeds, data):
    blob = seeds["pth"]
    start = blob.index(seeds["pkl_name"].encode())
    plan = data.draw(edits(len(blob), hot=(start, start + 600)))
    only_npvitpose_errors(read_pth, fresh(seeds["folder"] / "case.pth", apply(blob, plan)))


@FUZZ
@given(data=st.data())
def test_fuzz_pth_pickle(seeds, data):
    """Mutate data.pkl itself and re-zip it with a valid CRC, so the unpickler sees every mutation."""
    members = dict(seeds["members"])
    pkl = members[seeds["pkl_name"]]
    members[seeds["pkl_name"]] = apply(pkl, data.draw(edits(len(pkl))))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, content in members.items():
            z.writestr(name, content)
    only_npvitpose_errors(read_pth, fresh(seeds["folder"] / "pickle.pth", buf.getvalue()))


@FUZZ
@given(data=st.data())
def test_fuzz_safetensors(seeds, data):
    blob = seeds["safetensors"]
    plan = data.draw(edits(len(blob), hot=(0, seeds["header_end"])))
    only_npvitpose_errors(read_safetensors, fresh(seeds["folder"] / "case.safetensors", apply(blob, plan)))


@FUZZ
@given(data=st.data())
def test_fuzz_npz_load(seeds, data):
    blob = seeds["npz"]
    plan = data.draw(edits(len(blob)))
    only_npvitpose_errors(npvitpose.load, fresh(seeds["folder"] / "case.npz", apply(blob, plan)), limit=256 << 20)
