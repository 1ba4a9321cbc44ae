import sys
from pathlib import Path

# the tests import their NumPy twins and shared helpers as plain modules from this folder
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_compile_note(monkeypatch):
    """Which test first finds the JIT cache cold depends on the order and the machine: the one-time
    "compiling the kernels" note is tested on its own (test_ux.py), and kept out of the others' stderr."""
    import npvitpose.cli

    monkeypatch.setattr(npvitpose.cli, "_note_compile", lambda: None)
