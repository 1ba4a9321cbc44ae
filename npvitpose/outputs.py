"""Output files that a failed run never leaves half-written: a temporary file, renamed onto the target at the end."""

import contextlib
import os
import shutil
import stat
import tempfile

from .errors import NpvitposeError


def _is_special(path):
    """A device, pipe or socket (/dev/null, /dev/stdout, a FIFO): it can be written to but not replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _name_max(folder):
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_target(path, flag):
    """Refuse, before any work, an output that could not be written at the end."""
    if _is_special(path):
        return
    target = os.path.realpath(path)
    if os.path.isdir(target):
        raise NpvitposeError(f"{flag} {path!r} is a folder, not a file")
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise NpvitposeError(f"{flag} {path!r}: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise NpvitposeError(f"{flag} {path!r}: cannot write into folder {folder!r}")
    limit = _name_max(folder)
    if len(os.fsencode(os.path.basename(target))) > limit:
        raise NpvitposeError(f"{flag}: the file name is longer than the {limit} bytes this file system allows")


def _temp_prefix(base, suffix, limit):
    """'.<base>.' cut so that the whole temporary name (mkstemp adds 8 characters) fits NAME_MAX; the
    characters kept are ASCII, so that no library ever sees a name that is not UTF-8 (OpenCV crashes)."""
    safe = "".join(ch if ch.isascii() and ch.isprintable() and ch != "/" else "_" for ch in base)
    room = max(limit - len(suffix) - 8 - 2, 0)
    return f".{safe[:room]}."


@contextlib.contextmanager
def atomic_output(path):
    """Yields a temporary path with the target's extension (encoders choose by it); if the block succeeds,
    it is flushed to disk and replaces `path` (keeping an existing file's permission bits), else it is
    deleted. A symlink keeps its place (the file it points to is replaced); a device or pipe gets the
    finished bytes copied into it."""
    special = _is_special(path)
    target = path if special else os.path.realpath(path)  # a pipe's real path (/proc/.../pipe:[n]) is no path
    base = os.path.basename(target)
    folder = tempfile.gettempdir() if special else os.path.dirname(target)
    suffix = ".part" + "".join(ch for ch in os.path.splitext(base)[1] if ch.isascii())
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(base, suffix, _name_max(folder)), suffix=suffix, dir=folder)
    os.close(fd)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode) if not special else None
    except FileNotFoundError:
        mode = None
    if mode is None:
        mask = os.umask(0)
        os.umask(mask)
        mode = 0o666 & ~mask  # mkstemp makes 0600; a new output is an ordinary file
    os.chmod(tmp, mode)
    try:
        yield tmp
        if special:
            with open(tmp, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            _fsync(tmp)  # a full disk shows here (delayed allocation), not after the rename
            os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def identity(path):
    """(real path, (device, inode) or None): equal for two names of one file, links included."""
    try:
        st = os.stat(path)
        return os.path.realpath(path), (st.st_dev, st.st_ino)
    except OSError:
        return os.path.realpath(path), None


def same_file(a, b):
    (na, ia), (nb, ib) = identity(a), identity(b)
    return na == nb or (ia is not None and ia == ib)


class Protected:
    """Files an output must never replace: every input, the detections, the image list, the model."""

    def __init__(self, paths):
        ids = [identity(p) for p in paths if p is not None]
        self.names = {name for name, _ in ids}
        self.inodes = {inode for _, inode in ids if inode is not None}

    def check(self, target, flag):
        name, inode = identity(target)
        if name in self.names or (inode is not None and inode in self.inodes):
            raise NpvitposeError(f"{flag} {target!r} is one of the input files; refusing to overwrite it")


def write_text_atomic(path, text):
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_bytes_atomic(path, data):
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_image_atomic(path, image_rgb):
    """Encode in memory (OpenCV never sees the file name) and write the bytes through atomic_output."""
    import cv2
    import numpy as np

    ext = os.path.splitext(os.fsdecode(path))[1].lower()
    try:
        ok, data = cv2.imencode(ext, np.ascontiguousarray(image_rgb[:, :, ::-1]))  # OpenCV encodes BGR
    except cv2.error as e:
        raise NpvitposeError(f"cannot write image {path!r}: {str(e).strip().splitlines()[-1]}") from None
    if not ok:
        raise NpvitposeError(f"cannot write image {path!r} (unsupported extension?)")
    write_bytes_atomic(path, data.data)
