"""npvitpose: ViTPose top-down pose estimation on NumPy and Numba, with no PyTorch at run time."""

from .errors import NpvitposeError
from .model import VARIANTS, Config, Model, load

__all__ = ["Config", "Model", "NpvitposeError", "VARIANTS", "load"]
__version__ = "0.1.0"
