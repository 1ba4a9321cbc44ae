"""The one decorator policy every kernel uses, written once.

- cache=True: machine code is cached beside the module, so only the first process pays for compiling.
- nogil=True: a service may call the model from several threads.
- fastmath: only `contract` (fused multiply-add) and `reassoc` (vectorised reductions). We leave out
  `nnan`/`ninf`, so NaN and inf in the input still propagate instead of being silently assumed away.
- pjit adds parallel=True for kernels whose outer loop is a `prange` over crops, rows or channels.
"""

from numba import njit

FASTMATH = {"contract", "reassoc"}

jit = njit(cache=True, nogil=True, fastmath=FASTMATH)
pjit = njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)
