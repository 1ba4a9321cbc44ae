"""Read an `.npz` of plain arrays without pickle, memory-mapping every uncompressed member.

np.load cannot memory-map inside an .npz; a ViTPose-H file is 2.5 GB, so mapping it saves a copy
and lets processes share the pages. Compressed members fall back to an ordinary read.
"""

import contextlib
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
            except NpvitposeError as e:
                raise NpvitposeError(f"{path}: {e}") from None
            except Exception as e:  # damaged members surface as zipfile, OSError or ValueError
                raise NpvitposeError(f"{path}: member {info.filename!r} is damaged ({type(e).__name__})") from None
    return arrays


def _member(zf, info, f, mm, size):
    stored = info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1
    if stored:
        f.seek(info.header_offset)
        local = f.read(_LOCAL_HEADER)
        if len(local) != _LOCAL_HEADER or local[:4] != b"PK\x03\x04":
            raise NpvitposeError(f"member {info.filename!r}: bad local header")
        start = info.header_offset + _LOCAL_HEADER + int.from_bytes(local[26:28], "little") + \
            int.from_bytes(local[28:30], "little")
        if start + info.file_size > size:
            raise NpvitposeError(f"member {info.filename!r} is truncated")
        f.seek(start)
        stream = f
    else:
        stream = zf.open(info)
    with stream if not stored else contextlib.nullcontext():
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        if dtype.hasobject:
            raise NpvitposeError(f"member {info.filename!r} holds Python objects; refusing to unpickle")
        count = int(np.prod(shape, dtype=np.int64))
        header = stream.tell() - (start if stored else 0)
        # the declared shape must fit the member's real size before anything is allocated
        if count < 0 or count * dtype.itemsize != info.file_size - header:
            raise NpvitposeError(f"member {info.filename!r}: shape {shape} does not match its size")
        if stored:
            a = np.frombuffer(mm, dtype=dtype, count=count, offset=start + header)
        else:
            a = np.frombuffer(stream.read(count * dtype.itemsize), dtype=dtype, count=count)
    return a.reshape(shape, order="F" if fortran else "C")
