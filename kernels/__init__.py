"""Numba kernels, installed as `npvitpose.kernels` (see pyproject.toml)."""
