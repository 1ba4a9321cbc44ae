"""Read an `.npz` of plain arrays without pickle, into memory (or memory-mapped).

The file is treated as hostile: every member's declared shape is checked against its size, and the
sizes against the file, before anything is allocated; compressed members are inflated in bounded
chunks into their final place, never trusting the declared size (a member that inflates to more, or
to more than INFLATE_RATIO times the file, is refused while streaming).
By default each member is read into its own NumPy allocation (NumPy asks the kernel for huge pages on
large ones; BLAS products ran 2.5x faster at batch 1 on them than on a memory-mapped file of 4 KiB pages,
measured, ViT-B, 2 cores). `mmap=True` maps the stored members instead, so that
processes loading the same model share its pages.
"""

import contextlib
import math
import mmap as _mmap
import os
import zipfile
import zlib

import numpy as np

from .errors import NpvitposeError
from .kernels.gemm import aligned

_LOCAL_HEADER = 30  # fixed part of a zip local file header, before the name and extra field
_CHUNK = 1 << 20  # inflate at most this much per step
INFLATE_RATIO = 32  # compressed members may inflate to 32x the file (+16 MiB): float weights deflate ~1.1x
_INFLATE_SLACK = 16 << 20
_MAX_HEADER = 1 << 16  # an .npy header is under 100 bytes; numpy refuses over 10000


class _MemberStream:
    """The bytes of one zip member, read from the open file at its own position: a stored member as is,
    a deflated one inflated in bounded steps, never beyond what it declares or what `budget` allows."""

    def __init__(self, f, info, start, budget):
        self.f, self.info, self.name, self.pos = f, info, info.filename, start
        self.left_in, self.left_out = info.compress_size, info.file_size
        self.z = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
        self.crc, self.pending, self.budget = 0, b"", budget

    def _raw(self, n):
        self.f.seek(self.pos)
        data = self.f.read(min(n, self.left_in))
        if not data and self.left_in:
            raise NpvitposeError(f"member {self.name!r} is truncated")
        self.pos += len(data)
        self.left_in -= len(data)
        return data

    def read(self, n):
        """Up to n bytes (fewer only at the declared end)."""
        out = bytearray()
        while len(out) < n and self.left_out > 0:
            want = min(n - len(out), self.left_out, _CHUNK)
            if self.z is None:
                piece = self._raw(want)
            else:
                piece = self.z.decompress(self.pending or self._raw(_CHUNK), want)
                self.pending = self.z.unconsumed_tail
                if not piece and not self.pending and (self.z.eof or not self.left_in):
                    raise NpvitposeError(f"member {self.name!r} is truncated (inflates to less than it declares)")
                self.budget[0] -= len(piece)
                if self.budget[0] < 0:
                    raise NpvitposeError(
                        f"member {self.name!r} inflates beyond {INFLATE_RATIO}x the file: a decompression bomb")
            if self.crc is not None:
                self.crc = zlib.crc32(piece, self.crc)
            self.left_out -= len(piece)
            out += piece
        return bytes(out)

    def readinto(self, view):
        """Fill `view` (a uint8 array) completely; stored bytes go straight from the file into it."""
        done = 0
        while done < view.size:
            if self.z is None:
                self.crc = None  # weights are checked for finiteness instead: a CRC pass costs load time
                self.f.seek(self.pos)
                got = self.f.readinto(view[done:done + min(view.size - done, self.left_in)])
                self.pos, self.left_in, self.left_out = self.pos + got, self.left_in - got, self.left_out - got
            else:
                piece = self.read(min(view.size - done, _CHUNK))
                got = len(piece)
                view[done:done + got] = np.frombuffer(piece, np.uint8)
            if not got:
                raise NpvitposeError(f"member {self.name!r} is truncated")
            done += got

    def finish(self):
        """The member must end exactly where it says, with the CRC it says."""
        if self.z is not None and not self.z.eof:
            if self.z.decompress(self.pending or self._raw(_CHUNK), 1) or not self.z.eof:
                raise NpvitposeError(f"member {self.name!r} inflates to more than its declared size")
        if self.crc is not None and self.crc != self.info.CRC:
            raise NpvitposeError(f"member {self.name!r} is corrupt (CRC mismatch)")


def member_start(f, info, size):
    """Offset of a member's data in the file, from its local header (checked against the file)."""
    f.seek(info.header_offset)
    local = f.read(_LOCAL_HEADER)
    if len(local) != _LOCAL_HEADER or local[:4] != b"PK\x03\x04":
        raise NpvitposeError(f"member {info.filename!r}: bad local header")
    start = info.header_offset + _LOCAL_HEADER + int.from_bytes(local[26:28], "little") + \
        int.from_bytes(local[28:30], "little")
    if start + info.compress_size > size:
        raise NpvitposeError(f"member {info.filename!r} is truncated")
    return start


def check_members(infos, size):
    """Refuse what no honest archive holds: encryption, methods beyond store/deflate, duplicate names,
    stored members that overlap, or compressed ones that would inflate beyond INFLATE_RATIO x the file."""
    names, spans, inflated = set(), [], 0
    for info in infos:
        if info.filename in names:
            raise NpvitposeError(f"member {info.filename!r} appears twice")
        names.add(info.filename)
        if info.flag_bits & 1:
            raise NpvitposeError(f"member {info.filename!r} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != info.file_size:
                raise NpvitposeError(f"member {info.filename!r}: stored with two different sizes")
            spans.append((info.header_offset, info.header_offset + _LOCAL_HEADER + info.file_size, info.filename))
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            inflated += info.file_size
        else:
            raise NpvitposeError(f"member {info.filename!r} uses compression method {info.compress_type} "
                                 "(only stored or deflated members are read)")
    spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        if begin < end:
            raise NpvitposeError(f"members {a!r} and {b!r} overlap")
    limit = INFLATE_RATIO * size + _INFLATE_SLACK
    if inflated > limit:
        raise NpvitposeError(f"compressed members declare {inflated} bytes, over {INFLATE_RATIO}x the file: "
                             "a decompression bomb")
    return [limit]


def read_member(f, info, size, limit):
    """The bytes of one small zip member (a pickle, a record), refused beyond `limit` bytes declared or real."""
    if info.file_size > limit:
        raise NpvitposeError(f"{info.filename} is implausibly large ({info.file_size} bytes)")
    stream = _MemberStream(f, info, member_start(f, info, size), [limit])
    data = stream.read(info.file_size)
    if len(data) != info.file_size:
        raise NpvitposeError(f"member {info.filename!r} is truncated")
    stream.finish()
    return data


def open_zip(path, what):
    """(ZipFile, file size) of a hostile archive, with its member table checked."""
    try:
        size = os.path.getsize(path)
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise NpvitposeError(f"{path}: no such file") from None
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as e:
        raise NpvitposeError(f"{path}: not {what} ({' '.join(str(e).split())[:100] or type(e).__name__})") from None
    return zf, size


def read_npz(path, mmap=False):
    """Arrays of an .npz keyed by member name (without '.npy'); object arrays are refused."""
    path = os.fspath(path)
    zf, size = open_zip(path, "an .npz file")
    with zf, open(path, "rb") as f:
        try:
            return _read_arrays(zf, f, size, mmap)
        except NpvitposeError as e:
            raise NpvitposeError(f"{path}: {e}") from None


@contextlib.contextmanager
def member_errors(name):
    """numpy's header parser and a damaged stream raise ValueError, OSError, EOFError or zlib.error."""
    try:
        yield
    except (ValueError, OSError, EOFError, zlib.error) as e:
        raise NpvitposeError(f"member {name!r} is damaged ({type(e).__name__})") from None


def _read_arrays(zf, f, size, mmap):
    budget = check_members(zf.infolist(), size)
    records = {}
    for info in zf.infolist():
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if name in records:
            raise NpvitposeError(f"members {name!r} and {name + '.npy'!r} name the same array")
        with member_errors(info.filename):
            stream = _MemberStream(f, info, member_start(f, info, size), budget)
            records[name] = (stream, *_header(stream, info))
    mapped = {n for n, (s, *_) in records.items() if mmap and s.z is None}
    whole = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ) if mapped else None
    arrays = {}
    for name, (stream, dtype, shape, order) in records.items():
        if name in mapped:
            arrays[name] = np.frombuffer(whole, dtype, math.prod(shape), stream.pos).reshape(shape, order=order)
            continue
        # one allocation per member, so that a loader done with an array frees it (model.Model packs the
        # linear layers one by one); NumPy gives the large ones huge pages
        view = aligned(_nbytes(records[name]), np.uint8)
        with member_errors(stream.name):
            stream.readinto(view)
            stream.finish()
        arrays[name] = view.view(dtype).reshape(shape, order=order)
    return arrays


def _nbytes(record):
    _, dtype, shape, _ = record
    return math.prod(shape) * dtype.itemsize


def _header(stream, info):
    """Parse the .npy header of a member -> (dtype, shape, order), checked against the member's size."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    if dtype.hasobject:
        raise NpvitposeError(f"member {info.filename!r} holds Python objects; refusing to unpickle")
    header = info.file_size - stream.left_out
    count = math.prod(shape)
    # the declared shape must fit the member's real size before anything is allocated
    if count < 0 or count * dtype.itemsize != info.file_size - header:
        raise NpvitposeError(f"member {info.filename!r}: shape {shape} does not match its size")
    return dtype, shape, "F" if fortran else "C"
