"""The one decorator policy every kernel uses, written once.

- cache=True: machine code is cached beside the module (or in Numba's user cache when the package
  folder is read-only), so only the first process pays for compiling. Where no cache folder is
  writable at all (a read-only container with no HOME and no NUMBA_CACHE_DIR) the kernels compile
  in memory, after one `npvitpose: warning:` line. A cold `npvitpose infer` compiles its kernels on two
  processes at once (`precompile`).
- nogil=True: a service may call the model from several threads.
- fastmath: only `contract` (fused multiply-add) and `reassoc` (vectorised reductions). We leave out
  `nnan`/`ninf`, so NaN and inf in the input still propagate instead of being silently assumed away.
- pjit adds parallel=True for kernels whose outer loop is a `prange` over crops, rows or channels,
  and makes them safe under every threading layer Numba may pick (see `Parallel`). Parallel kernels
  are called from Python (their public wrappers), never from other jitted code.
"""

import os
import sys
import threading
import types

from numba import njit
from numba import threading_layer as _numba_layer

FASTMATH = {"contract", "reassoc"}
_OPTIONS = {"nogil": True, "fastmath": FASTMATH}


def _probe():
    return 0


def _cache_works():
    """Numba raises at decoration when no cache folder is writable (beside the module, NUMBA_CACHE_DIR, ~/.cache)."""
    try:
        njit(cache=True)(_probe)
    except RuntimeError:
        sys.stderr.write("npvitpose: warning: no writable Numba cache folder (read-only install, no writable HOME, "
                         "NUMBA_CACHE_DIR unset): kernels are compiled in every process; set NUMBA_CACHE_DIR to "
                         "a writable folder to keep them\n")
        return False
    return True


CACHE = _cache_works()
jit = njit(cache=CACHE, **_OPTIONS)

# Every parallel launch takes this lock: Numba's `workqueue` layer (chosen where libgomp and tbb are
# missing, e.g. minimal containers and arm64 roots) aborts the process when two threads launch at once,
# and under `omp`/`tbb` each launch already uses every core, so taking turns costs nothing.
_LAUNCH = threading.Lock()
_serial_child = False  # set in a fork()ed child of a process whose GNU OpenMP pool had started


class Parallel:
    """A `parallel=True` kernel that is safe with threads and after fork() whatever the threading layer.

    Calls are serialised by one process-wide lock. In a forked child of a process that used GNU OpenMP
    (which kills such a child at its first parallel launch) the kernel runs a serial build of the same
    function instead, compiled and cached on first use under its own name.
    """

    def __init__(self, fn):
        self.py_func = fn
        self.parallel = njit(cache=CACHE, parallel=True, **_OPTIONS)(fn)
        self._serial = None
        self.__name__, self.__qualname__, self.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__

    def serial(self):
        """The same kernel without parallel=True (prange runs as range); a distinct name keeps its own cache file."""
        if self._serial is None:
            fn = self.py_func
            twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__,
                                      fn.__closure__)
            twin.__qualname__ = fn.__qualname__ + "_serial"
            twin.__module__ = fn.__module__
            self._serial = njit(cache=CACHE, **_OPTIONS)(twin)
        return self._serial

    def __call__(self, *args):
        if _serial_child:
            return self.serial()(*args)
        with _LAUNCH:
            return self.parallel(*args)


def pjit(fn):
    return Parallel(fn)


def threading_layer():
    """The layer Numba launched ('omp', 'tbb', 'workqueue'), or None before the first parallel call."""
    try:
        return _numba_layer()
    except ValueError:
        return None


def _after_fork_in_child():
    global _LAUNCH, _serial_child
    _LAUNCH = threading.Lock()  # another thread of the parent may have held it at fork time
    if threading_layer() == "omp" and _openmp_vendor() == "GNU":  # Intel's OpenMP survives fork
        _serial_child = True


def _openmp_vendor():
    try:
        from numba.np.ufunc import omppool

        return getattr(omppool, "openmp_vendor", "GNU")
    except ImportError:
        return "GNU"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# Cold start on two cores. Numba compiles under one lock per process, so a first run's ~20 s of compiling
# uses one core. `precompile` splits the kernels a run needs with one helper process: each takes the next
# unclaimed kernel (an O_EXCL file per kernel: never compiled by both), the helper from the end of the list,
# this process from the start. The helper writes into a private cache folder, whose files are copied beside
# ours afterwards only where we have none: no two processes ever write one cache file (two compiling one
# function at once can leave a cache whose index names another signature's code; numba/numba#10128 has a
# segfault from such a race). Whatever the helper did not finish (it failed, was slow, the platform cannot
# start it) this process compiles on first use, as without it.

_HELPER_TIMEOUT = 300  # seconds the helper may take past our own share before it is killed


def calls(dry_run):
    """[(dispatcher, [signatures])] of the not-yet-compiled jitted functions Python calls in dry_run(), in first-call
    order. Nothing is compiled and none of them runs (each call returns None, so outputs stay as allocated): the
    dry run follows the real one's types and shapes, never its values. Its exceptions end it quietly."""
    import numpy as np
    from numba.core.dispatcher import Dispatcher

    seen = {}
    real = Dispatcher.compile

    def record(self, sig):
        seen.setdefault(self, [])
        if sig not in seen[self]:
            seen[self].append(sig)
        return lambda *args, **kws: None  # Numba's call path invokes what compile returns

    Dispatcher.compile = record
    try:
        with np.errstate(all="ignore"):
            dry_run()
    except Exception:  # garbage values reach checks the real run passes (finite heatmaps): the types are known
        pass
    finally:
        Dispatcher.compile = real
    return list(seen.items())


def _by_name(dispatcher):
    """The dispatcher as a helper process finds it (module, name), or None (a closure, a serial twin)."""
    fn = dispatcher.py_func
    found = getattr(sys.modules.get(fn.__module__), fn.__qualname__, None)
    return (fn.__module__, fn.__qualname__) if getattr(found, "parallel", found) is dispatcher else None


def _compile(items, order, claims, still_wanted=lambda: True):
    for i in order:
        if not still_wanted():
            return
        try:
            os.close(os.open(os.path.join(claims, str(i)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        dispatcher, sigs = items[i]
        try:
            for sig in sigs:
                dispatcher.compile(sig)
        except Exception:  # the real call raises it again, where the user's run reports it
            continue


def _cache_folders(extra=()):
    """{module name: its Numba cache folder} for the kernel modules loaded here and the modules named in extra."""
    from numba.core.dispatcher import Dispatcher

    out = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith(__name__.rsplit(".", 1)[0] + ".") and name not in extra:
            continue
        for fn in list(vars(module).values()):
            fn = getattr(fn, "parallel", fn)
            if isinstance(fn, Dispatcher) and fn.stats.cache_path:
                out[name] = fn.stats.cache_path
                break
    return out


def _adopt(theirs, ours):
    """Copy each function's cache files (index `X.nbi`, data `X.<n>.nbc`) from folder `theirs` into `ours` where
    `ours` has no index of that function: data first, index last, each by rename, so a reader never sees an
    index without its data."""
    try:
        names = os.listdir(theirs)
        os.makedirs(ours, exist_ok=True)
    except OSError:
        return
    for index in [n for n in names if n.endswith(".nbi")]:
        stem = index[:-len(".nbi")]
        if os.path.exists(os.path.join(ours, index)):
            continue
        try:
            for name in [n for n in names if n.startswith(stem + ".") and n.endswith(".nbc")] + [index]:
                tmp = os.path.join(ours, f".{name}.{os.getpid()}.tmp")
                with open(os.path.join(theirs, name), "rb") as src, open(tmp, "wb") as dst:
                    dst.write(src.read())
                os.replace(tmp, os.path.join(ours, name))
        except OSError:  # a full disk, a folder turned read-only: we compile these ourselves
            continue


def precompile(dry_run):
    """Compile, on this process and one helper at once, every kernel dry_run() would compile (see `calls`)."""
    import pickle
    import shutil
    import subprocess
    import tempfile

    if not CACHE or _serial_child:
        return
    items = calls(dry_run)
    named = [_by_name(d) for d, _ in items]
    shared = [i for i, n in enumerate(named) if n is not None]
    if len(shared) < 2:
        return
    work = tempfile.mkdtemp(prefix="npvitpose-jit-")
    claims, private = os.path.join(work, "claims"), os.path.join(work, "cache")
    os.mkdir(claims)
    helper = None
    try:
        job = pickle.dumps({"parent": os.getpid(), "claims": claims,
                            "items": [(i, named[i], items[i][1]) for i in reversed(shared)]})
        path = os.pathsep.join(os.path.abspath(p) for p in sys.path)  # the helper runs in `work`
        env = dict(os.environ, NUMBA_CACHE_DIR=private, PYTHONPATH=path)
        try:
            # a session of its own: Linux's autogroup scheduler shares the CPU per session, so on a busy machine
            # two processes of one session get no more than one would; a terminal's Ctrl-C reaches only us
            helper = subprocess.Popen([sys.executable, "-c", f"import {__name__} as j; j._helper()"], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      start_new_session=True, cwd=work)  # `-c` puts its cwd first on sys.path
            helper.stdin.write(job)
            helper.stdin.close()
        except OSError:  # no process to spare (limits, a sandbox) or it died at once: everything is compiled here
            if helper is not None:
                helper.kill()
                helper.wait()
            helper = None
        _compile(items, range(len(items)), claims)
        if helper is not None:
            helper.wait(timeout=_HELPER_TIMEOUT)  # its output, one small pickle, fits in the pipe's buffer
            out = helper.stdout.read()
            if helper.returncode == 0:
                ours = _cache_folders({n[0] for n in named if n})
                for module, folder in pickle.loads(out).items():
                    if module in ours:
                        _adopt(folder, ours[module])
    except (subprocess.TimeoutExpired, pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError):
        pass  # what the helper did not give us compiles on first use
    finally:
        if helper is not None:
            if helper.poll() is None:
                helper.kill()
                helper.wait()
            helper.stdout.close()
        shutil.rmtree(work, ignore_errors=True)


def _helper():
    """The helper process of `precompile`: job on stdin, {module: cache folder} pickled on stdout at the end."""
    import importlib
    import pickle

    job = pickle.loads(sys.stdin.buffer.read())
    items = {}
    for i, (module, name), sigs in job["items"]:
        found = getattr(importlib.import_module(module), name)
        items[i] = (getattr(found, "parallel", found), sigs)
    _compile(items, list(items), job["claims"], lambda: os.getppid() == job["parent"])
    if os.getppid() != job["parent"]:  # our parent was killed (SIGKILL runs no `finally`): its folder is left to us
        import shutil

        shutil.rmtree(os.path.dirname(job["claims"]), ignore_errors=True)
        return
    sys.stdout.buffer.write(pickle.dumps(_cache_folders({module for _, (module, _), _ in job["items"]})))
