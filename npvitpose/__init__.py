"""npvitpose: ViTPose top-down pose estimation on NumPy and Numba, with no PyTorch at run time."""

import os

# Kernels and BLAS products alternate, so neither pool may spin while the other works: Numba's
# OpenMP workers spinning made GEMMs 2x slower, OpenBLAS's idle threads (2^28 cycles of spinning
# by default) made the kernels 2x slower. Both are read when the libraries load, so they only take
# effect if npvitpose is imported before NumPy; the README says so. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "10")

from .errors import NpvitposeError  # noqa: E402
from .model import VARIANTS, Config, Model  # noqa: E402


def load(path, mmap=False, precision="fp32"):
    """Load a converted `.npz` (see `npvitpose convert`), checking every key, shape and dtype.

    A published model name (`npvitpose fetch --list`, e.g. "vitpose-b") loads from the cache, where it
    is downloaded and converted on first use. mmap=True maps each layer while it is packed
    instead of reading it (no copy); the packed model is each process's own either way.
    precision: "fp32" (default, exact), "bf16" or "int8" for the linear layers (README "Precision").
    """
    from . import fetch, model

    model._check_precision(precision)  # before any download
    return model.load(fetch.resolve(path), mmap=mmap, precision=precision)


def __getattr__(name):
    """npvitpose.Detector, imported on first use: a run with a boxes file never needs it (PEP 562)."""
    if name == "Detector":
        from .detector import Detector

        return Detector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Config", "Detector", "Model", "NpvitposeError", "VARIANTS", "load"]
__version__ = "0.1.0"
