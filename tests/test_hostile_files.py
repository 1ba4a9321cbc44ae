"""Hostile weight files: pickles built to exhaust the interpreter, zip and npz decompression bombs,
archives that lie about their members. Each one runs `npvitpose convert` (or loads the .npz) in a child
under memory and CPU limits: one error line, exit 1, no output file, bounded time and peak memory."""

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest

from hostile import cli, deflate, limited, raw_zip
from npvitpose.errors import NpvitposeError
from npvitpose.npz import read_npz

MAX_SECONDS = 30  # generous for a loaded 2-core machine; the worst case measured here is ~2 s
MAX_PEAK_MB = 400  # the interpreter with NumPy and Numba is ~100 MB


def pth(path, pickled, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickled, compress_type=compress)
        z.writestr("archive/byteorder", "little")
    return path


def refused(tmp_path, src, *needles):
    """`npvitpose convert src` fails on one line, within the limits, writing nothing."""
    code, out, err, seconds, peak = cli("convert", src, "-o", tmp_path / "out.npz", cpu_s=MAX_SECONDS)
    print(f"{src.name}: exit {code}, {seconds:.2f} s, peak {peak:.0f} MB: {err.strip()}")
    assert code == 1, err
    assert err.startswith("npvitpose: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    assert seconds < MAX_SECONDS and peak < MAX_PEAK_MB
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("out", ".out"))]
    return err


DEEP = 10**6
HEAD = b"\x80\x02"
TUPLE1, EMPTY_TUPLE, NONE, SETITEM, STOP = b"\x85", b")", b"N", b"s", b"."


@pytest.mark.parametrize("name, pickled, needle", [
    # a million-deep tuple hashed as a dict key: segfaulted in CPython's recursive tuple hash
    ("deep_key", HEAD + b"}" + EMPTY_TUPLE + TUPLE1 * DEEP + NONE + SETITEM + STOP, "nested deeper"),
    # the same in a frozenset (protocol 4 opcode) and in set([...]) via REDUCE (protocol 2)
    ("deep_frozenset", b"\x80\x04(" + EMPTY_TUPLE + TUPLE1 * DEEP + b"\x91" + STOP, "nested deeper"),
    ("deep_set", HEAD + b"c__builtin__\nset\n]" + EMPTY_TUPLE + TUPLE1 * 10**5 + b"a\x85R" + STOP, "nested deeper"),
    # (t, t) fifty times: 2^50 hash steps for a 100-byte pickle
    ("dag_key", HEAD + b"}" + EMPTY_TUPLE + b"2\x86" * 50 + NONE + SETITEM + STOP, "tuple as a dict key"),
    # a million-deep list (never hashed, but no state dict nests like that)
    ("deep_list", HEAD + b"]" * 10**5 + b"a" * (10**5 - 1) + STOP, "nested deeper"),
    # integer keys congruent modulo 2^61 - 1 all collide: a quadratic dict
    ("colliding_keys", HEAD + b"}(" + b"".join(
        b"\x8a\x0a" + (i * (2**61 - 1) + 7).to_bytes(10, "little") + NONE for i in range(20000)) + b"u" + STOP,
     "int as a dict key"),
    # one 1 MB string turned into bytes 4000 times through the memo: 4 GB from 1 MB
    ("encode_bomb", HEAD + b"c_codecs\nencode\nq\x00X" + struct.pack("<I", 1 << 20) + b"a" * (1 << 20)
     + b"q\x01]" + b"h\x00h\x01\x8c\x06latin1\x86Ra" * 4000 + STOP, "more work than its size"),
    # half a million cheap opcodes in a few kilobytes of deflate
    ("opcode_flood", HEAD + b"N0" * 1_500_000 + NONE + STOP, "opcodes"),
    # the memo table grows to its largest index (CPython allocates it): 16 GB asked by 10 bytes
    ("memo_index", HEAD + b"Nr\xff\xff\xff\x7f" + STOP, "memo index"),
    ("no_stop", HEAD + b"}" * 100, "corrupt"),
])
def test_pickle_bombs_fail_fast_and_small(tmp_path, name, pickled, needle):
    refused(tmp_path, pth(tmp_path / f"{name}.pth", pickled, zipfile.ZIP_DEFLATED), needle)


def test_pickle_bigger_than_any_state_dict_is_refused_from_its_declared_size(tmp_path):
    refused(tmp_path, pth(tmp_path / "big.pth", HEAD + b"N0" * (3 << 20) + NONE + STOP, zipfile.ZIP_DEFLATED),
            "implausibly large")


def test_data_pkl_that_inflates_beyond_its_declared_size(tmp_path):
    data = HEAD + b"N0" * 1_000_000 + NONE + STOP
    z = tmp_path / "lying.pth"
    raw_zip(z, [("archive/data.pkl", 8, deflate(data), zlib.crc32(data), 1000)])
    refused(tmp_path, z, "more than its declared size")


@pytest.mark.parametrize("method, label", [(zipfile.ZIP_BZIP2, "bz2"), (zipfile.ZIP_LZMA, "lzma")])
def test_compression_methods_that_cannot_be_bounded_are_refused(tmp_path, method, label):
    refused(tmp_path, pth(tmp_path / f"{label}.pth", HEAD + b"N0" * 100 + NONE + STOP, method), "compression method")


def test_duplicate_pickle_members_are_refused(tmp_path):
    data = HEAD + b"}" + STOP
    z = tmp_path / "twice.pth"
    raw_zip(z, [("archive/data.pkl", 0, data, zlib.crc32(data), len(data))] * 2)
    refused(tmp_path, z, "appears twice")


def test_tensors_sharing_one_storage_cannot_multiply_memory(tmp_path):
    """4000 state-dict entries viewing one 1 MB storage would be 4 GB of copies."""
    key = b"X\x01\x00\x00\x000"
    storage = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\n" + key + b"X\x03\x00\x00\x00cpuJ\x00\x00\x04\x00tQ"
    tensor = b"h\x00(h\x01K\x00J\x00\x00\x04\x00\x85K\x01\x85\x89tR"  # _rebuild_tensor_v2(storage, 0, (n,), (1,), False)
    entries = b"".join(b"X\x05\x00\x00\x00" + f"w{i:04d}".encode() + tensor for i in range(4000))
    pickled = (HEAD + b"ctorch._utils\n_rebuild_tensor_v2\nq\x00" + storage + b"q\x01}(" + entries + b"u" + STOP)
    with zipfile.ZipFile(tmp_path / "shared.pth", "w") as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", np.zeros(1 << 18, "<f4").tobytes())
    refused(tmp_path, tmp_path / "shared.pth", "more than the file can hold")


# ------------------------------------------------------------------------------------------- .npz


def npy(array):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array)
    return buf.getvalue()


def load_in_child(path, mem_mb=4096):
    code = ("import sys\nfrom npvitpose.npz import read_npz\nfrom npvitpose.errors import NpvitposeError\n"
            "try:\n    read_npz(sys.argv[1])\nexcept NpvitposeError as e:\n    print(e)\n")
    result = limited(code, path, mem_mb=mem_mb, cpu_s=MAX_SECONDS)
    print(f"{path.name}: exit {result[0]}, {result[3]:.2f} s, peak {result[4]:.0f} MB: {result[1].strip()}")
    return result


def test_npz_member_inflating_to_a_gibibyte_is_refused_before_allocating(tmp_path):
    data = npy(np.zeros(1 << 28, np.float32))  # 1 GiB of zeros: a 1 MB member
    path = raw_zip(tmp_path / "bomb.npz", [("w.npy", 8, deflate(data), zlib.crc32(data), len(data))])
    assert path.stat().st_size < 2 << 20
    code, out, err, seconds, peak = load_in_child(path)
    assert code == 0 and "decompression bomb" in out, (out, err)
    assert peak < MAX_PEAK_MB


def test_npz_member_that_inflates_beyond_what_it_declares(tmp_path):
    """The header says 80 bytes; the stream holds 64 MiB: streaming stops at the declared end."""
    small = npy(np.zeros(2, np.float64))
    data = small + bytes(64 << 20)
    path = raw_zip(tmp_path / "liar.npz", [("w.npy", 8, deflate(data), zlib.crc32(data), len(small))])
    code, out, err, seconds, peak = load_in_child(path)
    assert code == 0 and "more than its declared size" in out, (out, err)
    assert peak < MAX_PEAK_MB


@pytest.mark.parametrize("case, needle", [
    ("duplicate", "appears twice"),
    ("alias", "name the same array"),
    ("overlap", "overlap"),
    ("bz2", "compression method"),
    ("crc", "CRC mismatch"),
    ("truncated", "truncated"),
])
def test_npz_archives_that_lie(tmp_path, case, needle):
    data = npy(np.arange(6, dtype=np.float32))
    good = ("a.npy", 0, data, zlib.crc32(data), len(data))
    members = {
        "duplicate": [good, good],
        "alias": [good, ("a", 0, data, zlib.crc32(data), len(data))],
        "bz2": [("a.npy", 12, data, zlib.crc32(data), len(data))],
        "crc": [("a.npy", 8, deflate(data), zlib.crc32(data) ^ 1, len(data))],
        "truncated": [("a.npy", 8, deflate(data)[:-8], zlib.crc32(data), len(data))],
    }
    path = tmp_path / f"{case}.npz"
    if case == "overlap":  # a second central-directory entry pointing at the first member's bytes
        raw_zip(path, [good])
        blob = bytearray(path.read_bytes())
        cd = blob.index(b"PK\x01\x02")
        entry = bytes(blob[cd:blob.index(b"PK\x05\x06")]).replace(b"a.npy", b"b.npy")
        end = blob.index(b"PK\x05\x06")
        eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 2, 2, 2 * len(entry), cd, 0)
        path.write_bytes(bytes(blob[:end]) + entry + eocd)
    else:
        raw_zip(path, members[case])
    with pytest.raises(NpvitposeError, match=needle):
        read_npz(path)


def test_honest_compressed_npz_still_loads(tmp_path):
    """np.savez_compressed output (deflate) reads back exactly, in both modes."""
    arrays = {"a": np.arange(100_000, dtype=np.float32), "b": np.eye(3)}
    np.savez_compressed(tmp_path / "ok.npz", **arrays)
    for mmap in (False, True):
        got = read_npz(tmp_path / "ok.npz", mmap=mmap)
        assert set(got) == {"a", "b"}
        for k, v in arrays.items():
            np.testing.assert_array_equal(got[k], v)
