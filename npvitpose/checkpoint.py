"""Read PyTorch `.pth` and `.safetensors` weight files into NumPy without importing torch.

Both readers treat the file as hostile: every size and offset is checked against the file before
anything is allocated, and the `.pth` pickle is loaded by a restricted unpickler that resolves only
the globals a state dict needs (nothing else is ever imported or called).

Returned dtypes: float16 and bfloat16 tensors are widened to float32 exactly; every other dtype
(float32, float64, integers, bool) is kept as stored. The converter casts what it keeps to float32.
"""

import collections
import io
import json
import math
import mmap
import os
import pickle
import pickletools
import struct
import zipfile

import numpy as np

from .errors import NpvitposeError
from .npz import check_members, member_errors, read_member

_MAX_PICKLE_BYTES = 4 << 20  # data.pkl of ViT-H+ with its optimizer state is ~300 KB; a bigger one is no state dict
_MAX_HEADER_BYTES = 100 << 20  # safetensors JSON header cap, checked before reading it
_MAX_ELEMENTS = 1 << 48  # bound on sizes, strides and offsets, so NumPy's int64 byte arithmetic cannot overflow
_MAX_DIMS = 16  # a tensor of more dimensions is no weight (and each one costs a loop per tensor)
_BF16 = "bf16"  # marker dtype: stored as uint16, widened by shifting into the high half of a uint32

# torch storage class name -> stored element type (little-endian: the only byteorder accepted)
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": _BF16,
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}

# safetensors dtype tag -> stored element type
_SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": _BF16,
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


def _short(key) -> str:
    """A key for a one-line message, however long or odd it is."""
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(error) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _itemsize(code: str) -> int:
    return 2 if code == _BF16 else np.dtype(code).itemsize


def _widen(raw: np.ndarray, code: str) -> np.ndarray:
    """Return the stored elements as their public dtype: bf16/fp16 -> float32 (exact), others as is."""
    if code == _BF16:
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if raw.dtype == np.float16:
        return raw.astype(np.float32)
    if raw.dtype.kind == "b":
        return raw.view(np.uint8) != 0  # any nonzero byte is True, whatever the file holds
    return raw


def _map_file(path: str, what: str):
    """Read-only memory map of the whole file (None for an empty file)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return (mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None), size
    except OSError as e:
        raise NpvitposeError(f"cannot read {what} {path}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------------
# .pth (PyTorch >= 1.6 zip format: <prefix>/data.pkl + <prefix>/data/<key>, spec 3.1)


class _Inert:
    """Base of the objects the unpickler hands out: a pickle BUILD opcode must not rewrite them."""

    __slots__ = ()

    def __setstate__(self, state):
        raise NpvitposeError("object state where a state dict has none")


class _StorageType(_Inert):
    """Stand-in for `torch.FloatStorage` & co.: only carries the element type."""

    __slots__ = ("code",)

    def __init__(self, code: str):
        self.code = code


class _Storage(_Inert):
    """A persistent-id reference to the zip member `data/<key>`; read only when a tensor needs it."""

    __slots__ = ("key", "code", "numel")

    def __init__(self, key: str, code: str, numel: int):
        self.key, self.code, self.numel = key, code, numel


class _TensorRef(_Inert):
    """What `_rebuild_tensor_v2` returns here: a checked view description, materialized only for the state dict."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _Storage):
            raise NpvitposeError("tensor without a storage")
        size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
        if not isinstance(offset, int) or not 0 <= offset < _MAX_ELEMENTS or len(size) != len(stride):
            raise NpvitposeError("tensor with a bad storage offset or stride")
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _Call(_Inert):
    """An allowed function as the unpickler sees it: callable, but its attributes cannot be rewritten."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


def _int_tuple(value, what: str) -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) > _MAX_DIMS or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _MAX_ELEMENTS for v in value
    ):
        raise NpvitposeError(f"tensor with a bad {what}")
    return tuple(value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _codecs_encode(text, encoding="utf-8"):
    # protocol-2 pickles store bytes as _codecs.encode(str, "latin1"); nothing else is accepted
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise NpvitposeError("bad bytes record")
    return text.encode("latin1")


def _torch_size(dims=()):
    return tuple(dims)


# the whole allow-list; the types are immutable builtins, the functions are wrapped in _Call
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _Call(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor"): _Call(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Call(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Call(_rebuild_parameter),
    ("torch", "Size"): _Call(_torch_size),
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,  # protocol 2 writes Python 2 module names
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _Call(_codecs_encode),
}


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only the state-dict globals above (close to torch's own weights_only list, which
    mmcv checkpoints, `meta` included, load under); any other global refuses the whole file."""

    def __init__(self, data: bytes, name: str):
        super().__init__(io.BytesIO(data))
        self._name = name

    def find_class(self, module, name):
        found = _SAFE_GLOBALS.get((module, name))
        if found is not None:
            return found
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise NpvitposeError(f"refused global {module}.{name} in {self._name}: not a state dict")

    def persistent_load(self, pid):
        # torch.save writes ('storage', storage type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise NpvitposeError(f"unknown persistent record in {self._name}")
        _, stype, key, _, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise NpvitposeError(f"bad storage record in {self._name}")
        return _Storage(key, stype.code, numel)


class _PthArchive:
    """The zip members of one .pth file; storages are read straight from a memory map."""

    def __init__(self, path: str):
        self.name = os.path.basename(path)
        self.map, self.size = _map_file(path, "checkpoint")
        if self.map is None:
            raise NpvitposeError(f"{self.name} is empty")
        try:
            self.zip = zipfile.ZipFile(path)  # reads only the central directory
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
            if self.map[:1] == b"\x80":
                raise NpvitposeError(
                    f"{self.name} uses the legacy (PyTorch < 1.6) format: re-save it with torch.save"
                ) from None
            raise NpvitposeError(
                f"{self.name} is not a readable PyTorch zip checkpoint (truncated or corrupt)"
            ) from None
        try:
            check_members(self.zip.infolist(), self.size)
        except NpvitposeError as e:
            self.close()
            raise NpvitposeError(f"{self.name}: {e}") from None
        self.members = {i.filename: i for i in self.zip.infolist()}
        pickles = [n for n in self.members if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise NpvitposeError(f"{self.name} has no single <archive>/data.pkl: not a PyTorch checkpoint")
        self.prefix = pickles[0][: -len("data.pkl")]

    def close(self) -> None:
        self.zip.close()
        try:
            self.map.close()
        except BufferError:  # a traceback still holds a window of the map; the GC closes it later
            pass

    def read_small(self, member: str, limit: int) -> bytes | None:
        info = self.members.get(self.prefix + member)
        if info is None:
            return None
        try:
            with member_errors(member):
                return read_member(self.map, info, self.size, limit)
        except NpvitposeError as e:
            raise NpvitposeError(f"{self.name}: cannot read {member} ({e})") from None

    def storage_bytes(self, key: str, nbytes: int) -> memoryview:
        """The raw bytes of storage `key`: a zero-copy window of the memory map, checked against the file."""
        info = self.members.get(f"{self.prefix}data/{key}")
        label = _short(f"data/{key}")
        if info is None:
            raise NpvitposeError(f"{self.name}: storage {label} is missing")
        if info.compress_type != zipfile.ZIP_STORED:
            raise NpvitposeError(f"{self.name}: storage {label} is compressed (torch.save never does that)")
        if info.file_size < nbytes:
            raise NpvitposeError(
                f"{self.name}: storage {label} holds {info.file_size} bytes, its tensors need {nbytes}"
            )
        head = info.header_offset
        local = self.map[head : head + 30]
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise NpvitposeError(f"{self.name}: corrupt zip entry for {label}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = head + 30 + name_len + extra_len
        if start + nbytes > self.size:
            raise NpvitposeError(f"{self.name}: storage {label} runs past the end of the file (truncated?)")
        return memoryview(self.map)[start : start + nbytes]


def _window(ref: _TensorRef, archive: _PthArchive, key: str):
    """The storage bytes one tensor view reads, after checking the view stays inside its storage (no copy)."""
    st = ref.storage
    count = math.prod(ref.size)
    if count == 0:
        return None
    if count > st.numel:
        # a stride-0 view larger than its storage would let a tiny file demand unbounded memory
        raise NpvitposeError(f"{archive.name}: tensor {_short(key)} is larger than its storage {_short(st.key)}")
    if ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride)) >= st.numel:
        raise NpvitposeError(f"{archive.name}: tensor {_short(key)} reads past the end of storage {_short(st.key)}")
    return archive.storage_bytes(st.key, st.numel * _itemsize(st.code))


def _materialize(ref: _TensorRef, raw) -> np.ndarray:
    """Copy one checked tensor view out of its storage bytes."""
    st = ref.storage
    public = np.dtype(np.float32 if st.code in (_BF16, "<f2") else st.code).newbyteorder("=")
    if raw is None:
        return np.zeros(ref.size, dtype=public)
    itemsize = _itemsize(st.code)
    flat = np.frombuffer(raw, dtype=np.uint16 if st.code == _BF16 else np.dtype(st.code), count=st.numel)
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset :], shape=ref.size, strides=[s * itemsize for s in ref.stride], writeable=False
    )
    return np.array(_widen(view, st.code), dtype=public, order="C")  # an owned copy, never a window of the map


def read_pth(path) -> dict:
    """State dict of an official `.pth` checkpoint as {name: ndarray}, in file order (spec 3.1).

    Accepts a top-level {'state_dict': {...}, ...} (other entries such as 'meta' are unpickled under
    the same allow-list, then dropped) or a bare {name: tensor} dict.
    """
    archive = _PthArchive(os.fspath(path))
    try:
        return _read_state_dict(archive)
    finally:
        archive.close()


def _read_state_dict(archive: "_PthArchive") -> dict:
    byteorder = archive.read_small("byteorder", 16)
    if byteorder not in (None, b"little"):  # files from before the record existed are little-endian
        raise NpvitposeError(f"{archive.name}: byteorder {byteorder[:16]!r} is not supported (little-endian only)")
    data = archive.read_small("data.pkl", _MAX_PICKLE_BYTES)
    _check_pickle(data, archive.name)
    try:
        top = _StateDictUnpickler(data, archive.name).load()
    except NpvitposeError as e:
        raise NpvitposeError(str(e) if archive.name in str(e) else f"{archive.name}: {e}") from None
    except Exception as e:  # any malformed pickle: truncated, unknown opcode, wrong call arguments, ...
        raise NpvitposeError(f"{archive.name}: corrupt checkpoint pickle ({type(e).__name__})") from None
    if not isinstance(top, dict):
        raise NpvitposeError(f"{archive.name} holds a {type(top).__name__}, not a state dict")
    state = top["state_dict"] if isinstance(top.get("state_dict"), dict) else top
    windows, total = {}, 0
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, _TensorRef):
            raise NpvitposeError(
                f"{archive.name}: entry {_short(key)} is not a tensor "
                "(expected {'state_dict': ...} or a dict of tensors)"
            )
        windows[key] = _window(value, archive, key)
        total += math.prod(value.size)
    # every element takes a byte or more of the file; views sharing one storage may count it twice
    if total > 2 * archive.size:
        raise NpvitposeError(f"{archive.name}: its tensors claim {total} elements, more than the file can hold")
    return {key: _materialize(value, windows[key]) for key, value in state.items()}


# ---------------------------------------------------------------------------------------------
# Budget of a pickle, proven before the real unpickler runs: every opcode is simulated on stand-ins
# that carry only a kind, a nesting depth and a length, so nothing is built, hashed or called here.

_MAX_OPCODES = 1 << 19  # the largest real one (ViT-H with 6 experts and its optimizer state) has ~90k
_MAX_DEPTH = 64  # a state dict nests ~6 levels; deep nesting only serves to crash recursive C code
_WORK_PER_BYTE = 16  # elements that calls, copies and hashes may touch, per byte of pickle
_KEY_KINDS = ("str", "bytes", "bool", "none", "int")  # hashable in O(length), no engineered collisions
_HASHING_CALLS = {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"),
                  ("__builtin__", "frozenset"), ("collections", "OrderedDict")}


class _Shape:
    """What the scan knows of one pickled value."""

    __slots__ = ("kind", "depth", "length", "value", "items")

    def __init__(self, kind, depth=0, length=1, value=None, items=None):
        self.kind, self.depth, self.length, self.value, self.items = kind, depth, length, value, items


_MARK = _Shape("mark")
_ATOMS = {"int": "int", "int_or_bool": "int", "bytes_or_str": "str", "bytes": "bytes", "str": "str",
          "float": "float", "None": "none", "bool": "bool", "bytearray": "bytearray"}


class _PickleScan:
    def __init__(self, data: bytes, name: str):
        self.name, self.stack, self.memo = name, [], {}
        self.budget = _WORK_PER_BYTE * len(data) + (1 << 16)

    def fail(self, what):
        raise NpvitposeError(f"{self.name}: refused checkpoint pickle ({what})")

    def pop(self):
        if not self.stack or self.stack[-1] is _MARK:
            self.fail("stack underflow")
        return self.stack.pop()

    def pop_mark(self):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1:]
                del self.stack[i:]
                return items
        self.fail("no mark")

    def top(self):
        if not self.stack or self.stack[-1] is _MARK:
            self.fail("stack underflow")
        return self.stack[-1]

    def spend(self, n):
        self.budget -= n
        if self.budget < 0:
            self.fail("more work than its size allows: built to exhaust the reader")

    def container(self, kind, items):
        depth = 1 + max((s.depth for s in items), default=0)
        if depth > _MAX_DEPTH:
            self.fail(f"values nested deeper than {_MAX_DEPTH} levels")
        self.spend(len(items))
        return _Shape(kind, depth, len(items), items=list(items) if kind in ("tuple", "list") else None)

    def grow(self, target, items):
        """APPENDS/SETITEMS/ADDITEMS into a container built earlier."""
        depth = max([target.depth] + [1 + s.depth for s in items])
        if depth > _MAX_DEPTH:
            self.fail(f"values nested deeper than {_MAX_DEPTH} levels")
        target.depth, target.length = depth, target.length + len(items)
        if target.items is not None:
            target.items.extend(items)
        self.spend(len(items))

    def key(self, shape):
        # tuples as keys would be hashed recursively (a deep one crashes CPython) and colliding ints or
        # tuples make a dict quadratic; a state dict only ever uses strings and small integers
        if shape.kind not in _KEY_KINDS or (shape.kind == "int" and not -(1 << 60) < shape.value < 1 << 60):
            self.fail(f"{shape.kind} as a dict key or set member")
        self.spend(shape.length)

    def call(self, func, args):
        """REDUCE, NEWOBJ & co.: cost of the call's arguments; sets and dicts built from them hash their items."""
        self.spend(1 + sum(s.length for s in (args.items or ())))
        name = func.value if func.kind == "global" else None
        if name in _HASHING_CALLS:
            for arg in args.items or ():
                if arg.kind not in ("tuple", "list", "dict"):
                    self.fail(f"{name[1]} of a {arg.kind}")
                for item in arg.items or ():
                    if name == ("collections", "OrderedDict"):
                        if item.kind not in ("tuple", "list") or len(item.items) != 2:
                            self.fail("an OrderedDict item that is not a pair")
                        item = item.items[0]
                    self.key(item)
            return _Shape("dict" if name[1] == "OrderedDict" else "set", args.depth)
        return _Shape("object", args.depth)

    def run(self, ops):
        push, pop = self.stack.append, self.pop
        for count, (op, arg, _) in enumerate(ops):
            if count >= _MAX_OPCODES:
                self.fail(f"over {_MAX_OPCODES} opcodes")
            name = op.name
            after = op.stack_after[0].name if op.stack_after else None
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                pop()
                return
            if not op.stack_before and after in _ATOMS:
                kind = _ATOMS[after]
                if kind == "int" and isinstance(arg, bool):
                    kind = "bool"
                length = len(arg) if isinstance(arg, (str, bytes, bytearray)) else 1
                push(_Shape(kind, 0, length, value=arg))
            elif name == "MARK":
                push(_MARK)
            elif name in ("EMPTY_LIST", "EMPTY_TUPLE", "EMPTY_DICT", "EMPTY_SET"):
                push(self.container(after, []))
            elif name in ("TUPLE", "LIST"):
                push(self.container(after, self.pop_mark()))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                items = [pop() for _ in range(int(name[-1]))][::-1]
                push(self.container("tuple", items))
            elif name in ("DICT", "FROZENSET"):
                items = self.pop_mark()
                for k in items[::2] if name == "DICT" else items:
                    self.key(k)
                push(self.container(after, items))
            elif name == "APPEND":
                item = pop()
                self.grow(self.top(), [item])
            elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
                items = self.pop_mark()
                for k in items[::2] if name == "SETITEMS" else items if name == "ADDITEMS" else ():
                    self.key(k)
                self.grow(self.top(), items)
            elif name == "SETITEM":
                value, k = pop(), pop()
                self.key(k)
                self.grow(self.top(), [k, value])
            elif name == "POP":
                if self.stack and self.stack[-1] is _MARK:
                    self.stack.pop()
                else:
                    pop()
            elif name == "POP_MARK":
                self.pop_mark()
            elif name == "DUP":
                push(self.top())
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                index = len(self.memo) if name == "MEMOIZE" else arg
                # CPython's memo is an array as long as the largest index: keep it within what was read
                if not isinstance(index, int) or not 0 <= index <= count:
                    self.fail(f"memo index {index!r}")
                self.memo[index] = self.top()
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in self.memo:
                    self.fail(f"memo index {arg!r} read before it is written")
                push(self.memo[arg])
            elif name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                push(_Shape("global", value=(module, attr)))
            elif name == "STACK_GLOBAL":
                attr, module = pop(), pop()
                push(_Shape("global", value=(module.value, attr.value)))
            elif name in ("EXT1", "EXT2", "EXT4", "PERSID"):
                push(_Shape("object"))
            elif name == "BINPERSID":
                self.spend(pop().length)
                push(_Shape("object"))
            elif name in ("REDUCE", "NEWOBJ"):
                args, func = pop(), pop()
                push(self.call(func, args))
            elif name == "NEWOBJ_EX":
                kwargs, args, func = pop(), pop(), pop()
                self.spend(kwargs.length)
                push(self.call(func, args))
            elif name in ("OBJ", "INST"):
                items = self.pop_mark()
                if name == "INST":
                    module, _, attr = str(arg).partition(" ")
                    func = _Shape("global", value=(module, attr))
                elif not items:
                    self.fail("OBJ without a class")
                else:
                    func, items = items[0], items[1:]
                push(self.call(func, self.container("tuple", items)))
            elif name == "BUILD":
                state = pop()
                self.spend(state.length)
                self.top()
            else:  # NEXT_BUFFER, READONLY_BUFFER: out-of-band data a file cannot carry
                self.fail(f"opcode {name}")
        self.fail("no STOP opcode (truncated)")


def _check_pickle(data: bytes, name: str) -> None:
    """Refuse, before unpickling, a pickle whose depth, size or work would exhaust the interpreter."""
    try:
        _PickleScan(data, name).run(pickletools.genops(data))
    except NpvitposeError:
        raise
    except Exception:  # genops raises ValueError & co. on malformed opcodes
        raise NpvitposeError(f"{name}: corrupt checkpoint pickle") from None


# ---------------------------------------------------------------------------------------------
# .safetensors: u64 little-endian header length, JSON header, raw little-endian tensor bytes


def _unique_pairs(pairs):
    result = {}
    for k, v in pairs:
        if k in result:
            raise NpvitposeError(f"duplicate key {_short(k)} in safetensors header")
        result[k] = v
    return result


def read_safetensors(path) -> dict:
    """Tensors of a `.safetensors` file as {name: ndarray}, in header order (`__metadata__` ignored).

    float32/float64/integer tensors are zero-copy read-only views of a memory map of the file.
    """
    buf, data_start, entries = _safetensors_layout(os.fspath(path))
    out = {}
    for key, code, shape, begin, end in entries:
        count = (end - begin) // _itemsize(code)
        if count == 0:
            out[key] = _widen(np.zeros(shape, np.uint16 if code == _BF16 else np.dtype(code)), code)
            continue
        raw = np.frombuffer(
            buf, dtype=np.uint16 if code == _BF16 else np.dtype(code), count=count, offset=data_start + begin
        )
        out[key] = _widen(raw, code).reshape(shape)
    return out


def check_safetensors(path) -> None:
    """Check a `.safetensors` file's header against the file, reading no tensor data (for downloads)."""
    buf, _, _ = _safetensors_layout(os.fspath(path))
    buf.close()


def _safetensors_layout(path):
    """(memory map, data offset, [(key, code, shape, begin, end)]) of a checked safetensors header."""
    name = os.path.basename(path)
    buf, size = _map_file(path, "safetensors file")
    if size < 8:
        raise NpvitposeError(f"{name} is too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", buf[:8])
    if header_len > min(size - 8, _MAX_HEADER_BYTES):
        raise NpvitposeError(f"{name}: header length {header_len} does not fit the file ({size} bytes)")
    try:
        header = json.loads(bytes(buf[8 : 8 + header_len]).decode("utf-8"), object_pairs_hook=_unique_pairs)
    except NpvitposeError as e:
        raise NpvitposeError(f"{name}: {e}") from None
    except (ValueError, RecursionError):
        raise NpvitposeError(f"{name}: the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise NpvitposeError(f"{name}: the safetensors header is not a JSON object")
    data_start = 8 + header_len
    data_len = size - data_start
    entries = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        entries.append((key, *_check_entry(name, key, info, data_len)))
    spans = sorted((begin, end, key) for key, _, _, begin, end in entries if end > begin)
    for (b0, e0, k0), (b1, e1, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise NpvitposeError(f"{name}: tensors {_short(k0)} and {_short(k1)} overlap")
    return buf, data_start, entries


def _check_entry(name: str, key: str, info, data_len: int):
    if not isinstance(info, dict):
        raise NpvitposeError(f"{name}: header entry {_short(key)} is not an object")
    code = _SAFETENSORS_DTYPES.get(info.get("dtype")) if isinstance(info.get("dtype"), str) else None
    if code is None:
        raise NpvitposeError(f"{name}: tensor {_short(key)} has unsupported dtype {_short(info.get('dtype'))}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise NpvitposeError(f"{name}: tensor {_short(key)} has a bad shape {_short(shape)}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        raise NpvitposeError(
            f"{name}: tensor {_short(key)} has data offsets {_short(offsets)} outside the file (truncated?)"
        )
    count = 1
    for n in shape:
        count *= n
    if count * _itemsize(code) != offsets[1] - offsets[0]:
        raise NpvitposeError(
            f"{name}: tensor {_short(key)} of shape {tuple(shape)} needs {count * _itemsize(code)} bytes, "
            f"its offsets span {offsets[1] - offsets[0]}"
        )
    return code, tuple(shape), offsets[0], offsets[1]
