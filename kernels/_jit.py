"""The one decorator policy every kernel uses, written once.

- cache=True: machine code is cached beside the module (or in Numba's user cache when the package
  folder is read-only), so only the first process pays for compiling. Where no cache folder is
  writable at all (a read-only container with no HOME and no NUMBA_CACHE_DIR) the kernels compile
  in memory, after one `npvitpose: warning:` line.
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
