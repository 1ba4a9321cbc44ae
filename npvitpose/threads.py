"""One thread knob for both pools: Numba's kernels and the BLAS under NumPy's matrix products.

`set_threads(n)` or the NPVITPOSE_THREADS environment variable; the two pools never run at the
same time (kernels and GEMMs alternate), so n threads each means n busy cores, not 2n.
"""

import ctypes
import glob
import os

import numba
import numpy as np

from .messages import warn

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
            "openblas_set_num_threads", "MKL_Set_Num_Threads", "bli_thread_set_num_threads")
_threads = None


def _blas_setters():
    """The thread setters of the BLAS libraries NumPy ships with (and any already loaded)."""
    found = []
    libdirs = [os.path.join(os.path.dirname(np.__path__[0]), "numpy.libs"), os.path.join(np.__path__[0], ".dylibs")]
    candidates = [p for d in libdirs for p in glob.glob(os.path.join(d, "*blas*"))]
    try:
        with open("/proc/self/maps") as maps:  # Linux: whatever BLAS is mapped into this process
            candidates += sorted({line.split()[-1] for line in maps if "blas" in line or "mkl" in line})
    except OSError:
        pass
    for path in dict.fromkeys(candidates):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                found.append(fn)
                break
    return found


def set_threads(n):
    """Use n threads in both Numba kernels and BLAS matrix products (n >= 1)."""
    global _threads
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    for fn in _blas_setters():
        fn(ctypes.c_int(n))
    numba.set_num_threads(n)
    _threads = n
    return n


def get_threads():
    """The thread count in force (Numba's default, all cores, until set)."""
    return _threads if _threads is not None else numba.config.NUMBA_NUM_THREADS


def apply():
    """Called by each forward: Numba's setting is per calling thread, so a service thread inherits the knob."""
    if _threads is not None and numba.get_num_threads() != _threads:
        numba.set_num_threads(_threads)


def _from_environment(text):
    """NPVITPOSE_THREADS: a positive integer, else one warning line (not a Python warning) and the default."""
    text = text.strip()
    if not text:
        return
    if not (text.isascii() and text.isdecimal()) or not text.strip("0"):
        warn(f"NPVITPOSE_THREADS={text[:40]!r} is not a positive integer; ignored")
        return
    most = numba.config.NUMBA_NUM_THREADS
    if len(text.lstrip("0")) > 6 or int(text) > most:  # length first: int() refuses over 4300 digits
        warn(f"NPVITPOSE_THREADS={text[:40]} is more than the {most} threads Numba allows (NUMBA_NUM_THREADS); "
             f"using {most}")
        text = str(most)
    set_threads(int(text))


_from_environment(os.environ.get("NPVITPOSE_THREADS", ""))
