"""npvitpose: ViTPose top-down pose estimation on NumPy and Numba, with no PyTorch at run time."""

import os

# Numba's OpenMP workers would otherwise spin between kernels and steal the cores BLAS needs next
# (measured 2-4x slower forwards on a busy 2-core machine); set before Numba loads its OpenMP pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import NpvitposeError  # noqa: E402
from .model import VARIANTS, Config, Model, load  # noqa: E402

__all__ = ["Config", "Model", "NpvitposeError", "VARIANTS", "load"]
__version__ = "0.1.0"
