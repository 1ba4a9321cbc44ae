"""One thread knob for both pools: Numba's kernels and the BLAS under NumPy's matrix products.

`set_threads(n)` or the NPVITPOSE_THREADS environment variable; the two pools never run at the
same time (kernels and GEMMs alternate), so n threads each means n busy cores, not 2n.

The default is the CPUs this process may use: its affinity (what Numba and OpenBLAS count) and, in a
container or a systemd unit, its CPU quota (`docker --cpus 1`, CPUQuota=), which neither counts. More
threads than the quota lets run burn it early in each period and then all wait, throttled, together.
"""

import ctypes
import glob
import math
import os

import numba
import numpy as np

from .messages import warn

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
            "openblas_set_num_threads", "MKL_Set_Num_Threads", "bli_thread_set_num_threads")
_threads = None
_pending = False  # _threads is the quota's default, not yet given to the pools


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
    global _threads, _pending
    _pending = False
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    for fn in _blas_setters():
        fn(ctypes.c_int(n))
    numba.set_num_threads(n)
    _threads = n
    return n


def get_threads():
    """The thread count in force (Numba's default, the CPUs of this process's affinity, until set)."""
    return _threads if _threads is not None else numba.config.NUMBA_NUM_THREADS


def apply():
    """Called by each forward: Numba's setting is per calling thread, so a service thread inherits the knob."""
    global _pending
    if _pending:  # the quota's default, applied at the first forward: importing starts no thread pool
        _pending = False
        set_threads(_threads)
    if _threads is not None and numba.get_num_threads() != _threads:
        numba.set_num_threads(_threads)


def cpu_quota(root="/sys/fs/cgroup", cgroup_file="/proc/self/cgroup"):
    """The CPUs' worth of time per period that this process's cgroup and its parents allow (v2 `cpu.max`,
    v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`; the smallest), or None without a quota or off Linux."""
    try:
        with open(cgroup_file) as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    found = []
    for line in lines:
        if len(line) != 3:
            continue
        _, controllers, path = line
        if controllers == "":  # v2, "0::/path"
            base, names = root, ("cpu.max", None)
        elif "cpu" in controllers.split(","):  # v1, "4:cpu,cpuacct:/path"
            base = next((os.path.join(root, d) for d in (controllers, "cpu,cpuacct", "cpu")
                         if os.path.isdir(os.path.join(root, d))), None)
            names = ("cpu.cfs_quota_us", "cpu.cfs_period_us")
            if base is None:
                continue
        else:
            continue
        parts = [p for p in path.split("/") if p and p != ".."]
        for depth in range(len(parts), -1, -1):  # the group, then each parent up to the mount (a container's own)
            found.append(_quota_at(os.path.join(base, *parts[:depth]), *names))
    found = [q for q in found if q is not None]
    return min(found) if found else None


def _quota_at(folder, quota_name, period_name):
    """One level's quota in CPUs: v2 "max 100000" or "150000 100000"; v1 quota -1 or microseconds."""
    try:
        with open(os.path.join(folder, quota_name)) as f:
            fields = f.read().split()
        if period_name is not None:
            with open(os.path.join(folder, period_name)) as f:
                fields = fields[:1] + f.read().split()[:1]
        quota, period = fields[0], float(fields[1])
        if quota in ("max", "-1") or not period > 0:
            return None
        return float(quota) / period if float(quota) > 0 else None
    except (OSError, ValueError, IndexError):
        return None


def available_cpus():
    """The CPUs this process may use: its affinity, and no more than its cgroup CPU quota (rounded up)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    return max(1, n)


def _default():
    """Without NPVITPOSE_THREADS: fewer threads than Numba's count where a CPU quota allows fewer."""
    global _threads, _pending
    n = available_cpus()
    if n < numba.config.NUMBA_NUM_THREADS:
        _threads, _pending = n, True


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
if _threads is None:
    _default()
