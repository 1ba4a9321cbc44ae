"""Read an `.npz` of plain arrays without pickle, memory-mapping every uncompressed member.

np.load cannot memory-map inside an .npz; a ViTPose-H file is 2.5 GB, so mapping it saves a copy
and lets processes share the pages. Compressed members fall back to an ordinary read.
"""

import mmap
import os
import zipfile

import numpy as np

from .errors import NpvitposeError

_LOCAL_HEADER = 30  # fixed part of a zip local file header, before the name and extra field


def read_npz(path):
    """Arrays of an .npz keyed by member name (without '.npy'); object arrays are refused."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise NpvitposeError(f"{path}: no such file") from None
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise NpvitposeError(f"{path}: not an .npz file ({e})") from None
    arrays = {}
    with zf, open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            try:
                arrays[name] = _member(zf, info, f, mm, size)
            except NpvitposeError:
                raise
            except Exception as e:  # damaged members surface as zipfile, OSError or ValueError
                raise NpvitposeError(f"{path}: member {info.filename!r} is damaged ({type(e).__name__}: {e})") from None
    return arrays


def _member(zf, info, f, mm, size):
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
        with zf.open(info) as m:
            return _check(np.lib.format.read_array(m, allow_pickle=False), info)
    f.seek(info.header_offset)
    local = f.read(_LOCAL_HEADER)
    if len(local) != _LOCAL_HEADER or local[:4] != b"PK\x03\x04":
        raise NpvitposeError(f"member {info.filename!r}: bad local header")
    name_len = int.from_bytes(local[26:28], "little")
    extra_len = int.from_bytes(local[28:30], "little")
    start = info.header_offset + _LOCAL_HEADER + name_len + extra_len
    f.seek(start)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise NpvitposeError(f"member {info.filename!r} holds Python objects; refusing to unpickle")
    offset = f.tell()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset + nbytes > start + info.file_size or start + info.file_size > size:
        raise NpvitposeError(f"member {info.filename!r} is truncated")
    a = np.frombuffer(mm, dtype=dtype, count=nbytes // dtype.itemsize if dtype.itemsize else 0, offset=offset)
    return a.reshape(shape, order="F" if fortran else "C")


def _check(a, info):
    if a.dtype.hasobject:
        raise NpvitposeError(f"member {info.filename!r} holds Python objects; refusing to unpickle")
    return a
