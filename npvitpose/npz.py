"""Read an `.npz` of plain arrays without pickle, one member at a time (or memory-mapped).

The file is treated as hostile: every member's declared shape is checked against its size, and the
sizes against the file, before anything is allocated; compressed members are inflated in bounded
chunks into their final place, never trusting the declared size (a member that inflates to more, or
to more than INFLATE_RATIO times the file, is refused while streaming).
`Archive` indexes the members from their headers and reads each only when asked, into a mapping of its
own (freed whole when dropped: heap blocks freed by a loader stayed resident, ~85 MB of ViT-L's load);
model.load reads, checks, packs and drops one linear layer before the next. `mmap=True` maps each stored
member instead (no copy; its pages leave the process with its last view).
"""

import contextlib
import math
import mmap as _mmap
import os
import zipfile
import zlib

import numpy as np

from .errors import NpvitposeError

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
    with Archive(path, mmap) as archive:
        try:
            return {name: archive[name] for name in archive}
        except NpvitposeError as e:
            raise NpvitposeError(f"{archive.path}: {e}") from None


@contextlib.contextmanager
def member_errors(name):
    """numpy's header parser and a damaged stream raise ValueError, OSError, EOFError or zlib.error."""
    try:
        yield
    except (ValueError, OSError, EOFError, zlib.error) as e:
        raise NpvitposeError(f"member {name!r} is damaged ({type(e).__name__})") from None


class Archive:
    """The arrays of an .npz, indexed from their headers when opened and each read only when asked for, so that
    a loader can read, check and pack one member and free it before reading the next (model.load streams).

    Opening checks the whole member table and every header (dtype, shape against the member's size); those
    errors name the file. Reading a member raises without the file's name: the caller adds it.
    mmap=True maps each stored member on its own (a read-only view, unmapped when the last view is gone)."""

    def __init__(self, path, mmap=False):
        self.path = os.fspath(path)
        self._zip, self._size = open_zip(self.path, "an .npz file")
        self._f = open(self.path, "rb")
        self._mmap = mmap
        try:
            self._records = self._index()
        except NpvitposeError as e:
            self.close()
            raise NpvitposeError(f"{self.path}: {e}") from None
        except BaseException:
            self.close()
            raise

    def _index(self):
        self._budget = check_members(self._zip.infolist(), self._size)
        records = {}
        for info in self._zip.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if name in records:
                raise NpvitposeError(f"members {name!r} and {name + '.npy'!r} name the same array")
            with member_errors(info.filename):
                start = member_start(self._f, info, self._size)
                stream = _MemberStream(self._f, info, start, self._budget)
                dtype, shape, order = _header(stream, info)
            records[name] = (info, start, info.file_size - stream.left_out, dtype, shape, order)
        return records

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._zip.close()
        self._f.close()

    def __len__(self):
        return len(self._records)

    def __iter__(self):
        return iter(list(self._records))

    def __contains__(self, name):
        return name in self._records

    def headers(self):
        """{name: (dtype, shape)} of every member, from the headers alone."""
        return {name: (r[3], r[4]) for name, r in self._records.items()}

    def __getitem__(self, name):
        """One member's array, read now into its own allocation (or mapped): nothing else keeps it alive."""
        info, start, header, dtype, shape, order = self._records[name]
        count = math.prod(shape)
        with member_errors(info.filename):
            if self._mmap and info.compress_type == zipfile.ZIP_STORED and count:
                # map whole pages around the member alone: its pages leave this process with its last view
                begin = start + header
                offset = begin - begin % _mmap.ALLOCATIONGRANULARITY
                mapped = _mmap.mmap(self._f.fileno(), begin + count * dtype.itemsize - offset, offset=offset,
                                    access=_mmap.ACCESS_READ)
                return np.frombuffer(mapped, dtype, count, begin - offset).reshape(shape, order=order)
            stream = _MemberStream(self._f, info, start, self._budget)
            if len(stream.read(header)) != header:
                raise NpvitposeError(f"member {info.filename!r} is truncated")
            # a mapping of its own, not the heap: dropped by a loader done with it, it leaves the process at once
            buffer = _mmap.mmap(-1, max(count * dtype.itemsize, 1))
            if hasattr(_mmap, "MADV_HUGEPAGE"):  # 2 MiB pages as NumPy asks for its own: 512x fewer page faults
                buffer.madvise(_mmap.MADV_HUGEPAGE)
            view = np.frombuffer(buffer, np.uint8, count * dtype.itemsize)
            stream.readinto(view)
            stream.finish()
        return view.view(dtype).reshape(shape, order=order)

    def pop(self, name):
        """Read a member and forget it (a loader's hand-over: the archive keeps nothing either way)."""
        array = self[name]
        del self._records[name]
        return array


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
