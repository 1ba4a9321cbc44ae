"""read_pth / read_safetensors: identical values to torch / safetensors, no torch needed, hostile files refused."""

import collections
import io
import json
import os
import pickle
import struct
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import load_file as torch_load_file
from safetensors.torch import save_file as torch_save_file

from npvitpose.checkpoint import read_pth, read_safetensors
from npvitpose.errors import NpvitposeError
from no_torch import run_without_torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference(t: torch.Tensor) -> np.ndarray:
    """What read_* must return for a torch tensor: half types widened to float32, the rest as is."""
    t = t.detach()
    return (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t).numpy()


def mixed_state_dict():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g)
    sd = collections.OrderedDict()
    sd["f32"] = torch.randn(3, 4, generator=g)
    sd["f16"] = torch.randn(2, 5, generator=g).half()
    sd["bf16"] = torch.randn(7, generator=g).bfloat16()
    sd["f64"] = torch.randn(2, 2, generator=g).double()
    sd["i64"] = torch.tensor(1234567890123)
    sd["i32"] = torch.arange(-3, 3, dtype=torch.int32)
    sd["u8"] = torch.arange(250, 256, dtype=torch.uint8)
    sd["flag"] = torch.tensor([True, False, True])
    sd["whole"] = base
    sd["transposed"] = base.t()  # shares base's storage, strides (1, 8)
    sd["offset_slice"] = base[2:, 1::3]  # storage offset 17, strides (8, 3)
    sd["row"] = base[5]
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = torch.nn.Parameter(torch.randn(4, generator=g))
    sd["bf16_view"] = torch.randn(4, 4, generator=g).bfloat16()[1:, 2]
    return sd


def test_read_pth_matches_torch_load(tmp_path):
    path = tmp_path / "mixed.pth"
    meta = {"mmcv_version": "1.3.9", "config": "model = dict(type='TopDown')\n", "epoch": 210,
            "hook_msgs": {"last_ckpt": "/x/epoch_210.pth"}, "seen": {1, 2}, "blob": b"\x00\xffxy", "t": (1, 2.5, None)}
    torch.save({"state_dict": mixed_state_dict(), "meta": meta}, path)
    expected = torch.load(path, weights_only=True)["state_dict"]
    got = read_pth(path)
    assert list(got) == list(expected)
    for key, tensor in expected.items():
        ref = reference(tensor)
        assert got[key].dtype == ref.dtype, key
        assert got[key].shape == ref.shape, key
        np.testing.assert_array_equal(got[key], ref, err_msg=key)
        assert got[key].flags.c_contiguous and got[key].flags.writeable, key
    assert got["bf16"].dtype == np.float32 and got["f16"].dtype == np.float32
    # the views are copies: writing one must not change the tensor it shared a storage with
    got["transposed"][0, 0] = 1e9
    assert got["whole"][0, 0] != 1e9


def test_read_pth_bare_dict_and_bf16_bits(tmp_path):
    raw = np.array([0x0000, 0x8000, 0x3F80, 0x7F80, 0xFF80, 0x0001, 0x7F7F, 0xC2F7], dtype=np.uint16)
    bits = torch.from_numpy(raw.view(np.int16).copy())
    bf = bits.view(torch.bfloat16)
    path = tmp_path / "bare.pth"
    torch.save({"bf": bf, "h": torch.tensor([65504.0, 6e-8, -0.0], dtype=torch.float16)}, path)
    got = read_pth(path)
    expected = bf.float().numpy()
    # bit-exact, including -0, inf and a subnormal
    np.testing.assert_array_equal(got["bf"].view(np.uint32), expected.view(np.uint32))
    np.testing.assert_array_equal(got["h"], np.array([65504.0, 6e-8, -0.0], dtype=np.float16).astype(np.float32))


def test_read_pth_module_state_dict(tmp_path):
    # a real nn.Module state dict carries `_metadata`, applied by a BUILD opcode on the OrderedDict
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    path = tmp_path / "module.pth"
    torch.save({"state_dict": module.state_dict(), "meta": {"epoch": 1}}, path)
    got = read_pth(path)
    expected = module.state_dict()
    assert list(got) == list(expected)
    for key, tensor in expected.items():
        np.testing.assert_array_equal(got[key], reference(tensor), err_msg=key)


def test_readers_need_no_torch(tmp_path):
    pth = tmp_path / "w.pth"
    st = tmp_path / "w.safetensors"
    sd = mixed_state_dict()
    torch.save({"state_dict": sd, "meta": {"epoch": 1}}, pth)
    torch_save_file({"a": torch.randn(3, 2), "b": torch.randn(4).bfloat16()}, st)
    result = run_without_torch(f"""
        import numpy as np
        from npvitpose.checkpoint import read_pth, read_safetensors
        a, b = read_pth({str(pth)!r}), read_safetensors({str(st)!r})
        print(sum(float(np.asarray(v, dtype=np.float64).sum()) for d in (a, b) for v in d.values()))
    """, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = sum(float(reference(v).astype(np.float64).sum()) for v in sd.values())
    expected += sum(float(reference(v).astype(np.float64).sum()) for v in torch_load_file(str(st)).values())
    assert float(result.stdout) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# hand-made torch-format archives, so the pickle can be anything


class FakeStorage:
    def __init__(self, key, numel, storage_type=torch.FloatStorage):
        self.key, self.numel, self.storage_type = key, numel, storage_type


class FakeTensor:
    """Pickles as torch does: _rebuild_tensor_v2(persistent storage, offset, size, stride, ...)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def torch_like_pickle(obj) -> bytes:
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_archive(path, pickled: bytes, storages: dict, prefix="archive"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", pickled)
        z.writestr(f"{prefix}/byteorder", "little")
        for key, data in storages.items():
            z.writestr(f"{prefix}/data/{key}", data)
        z.writestr(f"{prefix}/version", "3\n")
    return path


def good_tensor():
    return FakeTensor(FakeStorage("0", 6), 0, (2, 3), (3, 1))


GOOD_STORAGE = {"0": np.arange(6, dtype="<f4").tobytes()}


def test_hand_made_archive_reads(tmp_path):
    path = write_archive(tmp_path / "ok.pth", torch_like_pickle({"state_dict": {"w": good_tensor()}}), GOOD_STORAGE)
    np.testing.assert_array_equal(read_pth(path)["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(torch.load(path, weights_only=True)["state_dict"]["w"].numpy(), read_pth(path)["w"])


class Payload:
    """A pickled object whose unpickling calls `func(*args)` (the classic __reduce__ attack)."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self):  # lets a Payload stand as the callable of another one (pickle checks callability)
        raise AssertionError("never called in the test process")


def payloads(marker):
    import subprocess as sp

    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": Payload(os.system, (f"touch {marker}",)),
        "eval": Payload(eval, (touch,)),
        "exec": Payload(exec, (touch,)),
        "subprocess.Popen": Payload(sp.Popen, (["touch", str(marker)],)),
        # getattr(__import__("os"), "system")("touch ..."): the callable is itself an unpickled object
        "getattr-trick": Payload(Payload(getattr, (Payload(__import__, ("os",)), "system")), (f"touch {marker}",)),
    }


@pytest.mark.parametrize("where", ["state_dict", "meta", "top"])
@pytest.mark.parametrize("kind", ["os.system", "eval", "exec", "subprocess.Popen", "getattr-trick"])
def test_hostile_pickles_are_refused_and_never_run(tmp_path, where, kind):
    marker = tmp_path / "pwned"
    evil = payloads(marker)[kind]
    if where == "state_dict":
        obj = {"state_dict": {"w": good_tensor(), "x": evil}}
    elif where == "meta":
        obj = {"meta": {"config": "x", "evil": evil}, "state_dict": {"w": good_tensor()}}
    else:
        obj = evil
    path = write_archive(tmp_path / "evil.pth", torch_like_pickle(obj), GOOD_STORAGE)
    with pytest.raises(NpvitposeError, match=r"refused global .* in evil\.pth: not a state dict"):
        read_pth(path)
    assert not marker.exists()
    # the payload is live: torch's unrestricted loader does run it (so the check above means something)
    try:
        torch.load(path, weights_only=False)
    except Exception:
        pass
    for _ in range(200):  # Popen returns before `touch` has run
        if marker.exists():
            break
        time.sleep(0.05)
    assert marker.exists()


def _unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


RAW_PICKLES = {
    "INST os.system (protocol 0)": lambda m: f"(S'touch {m}'\nios\nsystem\n.".encode(),
    "GLOBAL __builtin__.eval (protocol 0)": lambda m: (
        f"c__builtin__\neval\n(S'open(\"{m}\",\"w\").close()'\ntR.".encode()
    ),
    "STACK_GLOBAL os.system (protocol 4)": lambda m: (
        b"\x80\x04" + _unicode("os") + _unicode("system") + b"\x93" + _unicode(f"touch {m}") + b"\x85R."
    ),
    "torch.load": lambda m: b"\x80\x02ctorch\nload\n" + _unicode(str(m)) + b"\x85R.",
    "torch.storage._load_from_bytes": lambda m: b"\x80\x02ctorch.storage\n_load_from_bytes\nC\x00\x85R.",
}


@pytest.mark.parametrize("kind", list(RAW_PICKLES))
def test_raw_hostile_opcodes_are_refused(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = write_archive(tmp_path / "evil.pth", RAW_PICKLES[kind](marker), {})
    with pytest.raises(NpvitposeError, match="refused global"):
        read_pth(path)
    assert not marker.exists()


class StatefulTensor(FakeTensor):
    """A tensor record followed by a BUILD opcode that would overwrite the checked size afterwards."""

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args, {"size": (10**12,)}


def test_build_cannot_rewrite_checked_objects(tmp_path):
    tensor = StatefulTensor(FakeStorage("0", 6), 0, (2, 3), (3, 1))
    path = write_archive(tmp_path / "build.pth", torch_like_pickle({"w": tensor}), GOOD_STORAGE)
    with pytest.raises(NpvitposeError, match="object state"):
        read_pth(path)
    # BUILD on an allowed function: GLOBAL, then (None, {"__defaults__": ...}) as slot state
    raw = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__)s\x86b.")
    with pytest.raises(NpvitposeError, match="object state"):
        read_pth(write_archive(tmp_path / "fn.pth", raw, {}))


def test_memo_bomb_is_refused_without_allocating(tmp_path):
    path = write_archive(tmp_path / "memo.pth", b"\x80\x02Nr\xff\xff\xff\x7f.", {})
    tracemalloc.start()
    try:
        with pytest.raises(NpvitposeError, match="memo"):
            read_pth(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20


@pytest.mark.parametrize(
    "tensor, storages, message",
    [
        (FakeTensor(FakeStorage("0", 6), 0, (2, 3), (3, 1)), {}, "missing"),
        (FakeTensor(FakeStorage("0", 6), 0, (3, 3), (3, 1)), GOOD_STORAGE, "larger than its storage"),
        (FakeTensor(FakeStorage("0", 6), 4, (2, 2), (2, 1)), GOOD_STORAGE, "past the end"),
        (FakeTensor(FakeStorage("0", 6), 0, (3, 2), (1, 4)), GOOD_STORAGE, "past the end"),
        (FakeTensor(FakeStorage("0", 10**6), 0, (10**6,), (1,)), GOOD_STORAGE, "holds 24 bytes"),
        (FakeTensor(FakeStorage("0", 6), 0, (10**6, 10**6), (0, 0)), GOOD_STORAGE, "larger than its storage"),
        (FakeTensor(FakeStorage("0", 6), -1, (2,), (1,)), GOOD_STORAGE, "offset"),
        (FakeTensor(FakeStorage("0", 6), 0, (2, 3), (3,)), GOOD_STORAGE, "offset or stride"),
        (FakeTensor(FakeStorage("0", 6), 0, (2, -3), (3, 1)), GOOD_STORAGE, "bad size"),
        (FakeTensor(FakeStorage("0", 6), 0, (2**70, 0), (1, 1)), GOOD_STORAGE, "bad size"),
        (FakeTensor(FakeStorage("0", 6), 0, (1, 6), (10**30, 1)), GOOD_STORAGE, "bad stride"),
        (FakeTensor(FakeStorage("0", 6), 2**64, (1,), (1,)), GOOD_STORAGE, "offset"),
        (FakeTensor("not a storage", 0, (2,), (1,)), GOOD_STORAGE, "without a storage"),
        ("a string", GOOD_STORAGE, "not a tensor"),
    ],
)
def test_bad_tensor_records_are_refused(tmp_path, tensor, storages, message):
    path = write_archive(tmp_path / "bad.pth", torch_like_pickle({"state_dict": {"w": tensor}}), storages)
    with pytest.raises(NpvitposeError, match=message):
        read_pth(path)


def test_truncated_and_corrupt_archives(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": mixed_state_dict()}, good)
    data = good.read_bytes()
    cases = {
        "half": data[: len(data) // 2],
        "minus10": data[:-10],
        "head": data[:100],
        "empty": b"",
        "random": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    }
    # a flipped byte inside data.pkl (the zip CRC catches it), a wrong CRC and a wrong compression
    # method in data.pkl's central-directory record (the first one)
    pkl_at = data.index(b"data.pkl") + 40
    cases["pickle-byte"] = data[:pkl_at] + bytes([data[pkl_at] ^ 0xFF]) + data[pkl_at + 1:]
    cd_at = data.index(b"PK\x01\x02")
    cases["central-crc"] = data[: cd_at + 16] + b"\xff\xff\xff\xff" + data[cd_at + 20:]
    cases["central-method"] = data[: cd_at + 10] + b"\x63\x00" + data[cd_at + 12:]
    accepted = []
    for name, blob in cases.items():
        path = tmp_path / f"{name}.pth"
        path.write_bytes(blob)
        try:
            read_pth(path)
        except NpvitposeError:
            continue
        accepted.append(name)
    assert accepted == []


def test_storage_member_cut_short(tmp_path):
    # a zip whose storage member is shorter than the storage record says
    path = write_archive(tmp_path / "short.pth", torch_like_pickle({"w": good_tensor()}), {"0": b"\x00" * 8})
    with pytest.raises(NpvitposeError, match="holds 8 bytes"):
        read_pth(path)


def test_other_refusals(tmp_path):
    legacy = tmp_path / "legacy.pth"
    torch.save({"a": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(NpvitposeError, match="legacy"):
        read_pth(legacy)
    with pytest.raises(NpvitposeError, match="cannot read"):
        read_pth(tmp_path / "missing.pth")
    with pytest.raises(NpvitposeError, match="cannot read"):
        read_pth(tmp_path)
    no_pickle = tmp_path / "nopkl.pth"
    with zipfile.ZipFile(no_pickle, "w") as z:
        z.writestr("archive/other", b"x")
    with pytest.raises(NpvitposeError, match="data.pkl"):
        read_pth(no_pickle)
    compressed = tmp_path / "deflated.pth"
    with zipfile.ZipFile(compressed, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", torch_like_pickle({"w": good_tensor()}))
        z.writestr("archive/data/0", GOOD_STORAGE["0"])
    with pytest.raises(NpvitposeError, match="compressed"):
        read_pth(compressed)
    bigendian = tmp_path / "be.pth"
    with zipfile.ZipFile(bigendian, "w") as z:
        z.writestr("archive/data.pkl", torch_like_pickle({"w": good_tensor()}))
        z.writestr("archive/byteorder", "big")
    with pytest.raises(NpvitposeError, match="little-endian"):
        read_pth(bigendian)
    listing = write_archive(tmp_path / "list.pth", torch_like_pickle([good_tensor()]), GOOD_STORAGE)
    with pytest.raises(NpvitposeError, match="not a state dict"):
        read_pth(listing)


# ---------------------------------------------------------------------------------------------
# safetensors


def test_read_safetensors_matches_safetensors(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": rng.standard_normal(5),
        "f16": rng.standard_normal((2, 2)).astype(np.float16),
        "i64": np.array([-(2**62), 5], dtype=np.int64),
        "i32": np.arange(-4, 4, dtype=np.int32),
        "i16": np.arange(3, dtype=np.int16),
        "i8": np.array([-128, 127], dtype=np.int8),
        "u8": np.array([0, 255], dtype=np.uint8),
        "flags": np.array([True, False]),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 7), dtype=np.float32),
    }
    path = tmp_path / "a.safetensors"
    np_save_file(arrays, str(path), metadata={"format": "pt"})
    got = read_safetensors(path)
    assert set(got) == set(arrays)
    for key, ref in arrays.items():
        ref = ref.astype(np.float32) if ref.dtype == np.float16 else ref
        assert got[key].dtype == ref.dtype and got[key].shape == ref.shape, key
        np.testing.assert_array_equal(got[key], ref, err_msg=key)

    bf = torch.randn(5, 3).bfloat16()
    path = tmp_path / "bf.safetensors"
    torch_save_file({"bf": bf, "w": torch.randn(2, 3)}, str(path))
    got = read_safetensors(path)
    np.testing.assert_array_equal(got["bf"], bf.float().numpy())
    np.testing.assert_array_equal(got["w"], torch_load_file(str(path))["w"].numpy())
    assert got["bf"].dtype == np.float32


def raw_safetensors(header, data: bytes, header_len=None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if header_len is None else header_len) + text + data


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize(
    "blob, message",
    [
        (raw_safetensors({"a": entry()}, bytes(8), header_len=2**60), "header length"),
        (raw_safetensors({"a": entry()}, bytes(8), header_len=10**4), "header length"),
        (raw_safetensors({"a": entry(offsets=(0, 16))}, bytes(8)), "outside the file"),
        (raw_safetensors({"a": entry(offsets=(-4, 4))}, bytes(8)), "outside the file"),
        (raw_safetensors({"a": entry(offsets=(8, 4))}, bytes(8)), "outside the file"),
        (raw_safetensors({"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))}, bytes(12)), "overlap"),
        (raw_safetensors({"a": entry(dtype="F8_E4M3", shape=(8,))}, bytes(8)), "unsupported dtype"),
        (raw_safetensors({"a": entry(dtype="XYZ")}, bytes(8)), "unsupported dtype"),
        (raw_safetensors({"a": entry(shape=(3,))}, bytes(8)), "needs 12 bytes"),
        (raw_safetensors({"a": entry(shape=(2**40, 2**40))}, bytes(8)), "needs"),
        (raw_safetensors({"a": entry(shape=(-2,))}, bytes(8)), "bad shape"),
        (raw_safetensors({"a": entry(shape=(True,), offsets=(0, 4))}, bytes(8)), "bad shape"),
        (raw_safetensors({"a": entry(offsets=(0, 8))}, bytes(5)), "outside the file"),  # truncated data
        (raw_safetensors(b"{not json", bytes(8)), "not valid JSON"),
        (raw_safetensors(b"\xff\xfe", bytes(8)), "not valid JSON"),
        (raw_safetensors(b"[" * 100000, b""), "not valid JSON"),
        (raw_safetensors([1, 2], bytes(8)), "not a JSON object"),
        (raw_safetensors(b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": 1}', bytes(8)),
         "duplicate"),
        (raw_safetensors({"a": [1]}, bytes(8)), "not an object"),
        (raw_safetensors({"a": {"dtype": "F32", "shape": [2]}}, bytes(8)), "outside the file"),
        (b"\x01\x02\x03", "too short"),
        (b"", "too short"),
    ],
)
def test_bad_safetensors_are_refused(tmp_path, blob, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    tracemalloc.start()
    try:
        with pytest.raises(NpvitposeError, match=message):
            read_safetensors(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20  # a forged length or shape must not allocate


def test_truncated_real_safetensors(tmp_path):
    path = tmp_path / "t.safetensors"
    np_save_file({"a": np.ones((4, 4), np.float32), "b": np.ones(3, np.float16)}, str(path))
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) - 20, 12, 7):
        path.write_bytes(data[:cut])
        with pytest.raises(NpvitposeError):
            read_safetensors(path)
    with pytest.raises(NpvitposeError, match="cannot read"):
        read_safetensors(tmp_path / "nope.safetensors")
