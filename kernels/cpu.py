"""The instruction set Numba compiles this process's kernels for, read once at import.

Numba targets NUMBA_CPU_NAME / NUMBA_CPU_FEATURES when they are set (NUMBA_CPU_NAME=generic implies
no features at all) and the host CPU otherwise; the kernels must follow the same choice, because
LLVM aborts the whole process when asked for an instruction its target lacks.
"""

import llvmlite.binding as ll
from numba.core import config


def features():
    """The CPU feature names (LLVM's spelling: 'avx512f', 'fma', 'neon', ...) Numba's code may use."""
    if config.CPU_FEATURES is not None:  # Numba passes this string to LLVM as is: '+avx2,-avx512f,...'
        return frozenset(f[1:].strip() for f in config.CPU_FEATURES.split(",") if f.strip().startswith("+"))
    try:
        flags = ll.get_host_cpu_features()
    except RuntimeError:  # LLVM cannot tell on this platform: assume the baseline
        return frozenset()
    # NUMBA_ENABLE_AVX=0 (or a CPU Numba distrusts) switches the avx* family off, as numba.core.codegen does
    return frozenset(k for k, on in flags.items() if on and (config.ENABLE_AVX or not k.startswith("avx")))


def isa(feats=None, triple=None):
    """'avx512', 'avx2' (with FMA), 'neon' or 'generic': the widest vector kernels that may be compiled."""
    feats = features() if feats is None else feats
    triple = ll.get_process_triple() if triple is None else triple
    if triple.startswith(("x86_64", "amd64")):
        if "avx512f" in feats:
            return "avx512"
        if {"avx2", "fma"} <= feats:
            return "avx2"
        return "generic"
    if triple.startswith(("aarch64", "arm64")):
        return "neon"  # Advanced SIMD is part of every ARMv8-A core: LLVM's generic aarch64 target has it
    return "generic"


ISA = isa()
