"""Run code in a fresh interpreter whose import system refuses torch, transformers and safetensors,
to prove the runtime package needs none of them; the script also fails if any got imported."""

import subprocess
import sys
import textwrap

BLOCKED = ("torch", "transformers", "safetensors")

_PRELUDE = f"""
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("blocked by the test: " + name)
        return None

sys.meta_path.insert(0, _NoTorch())
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the torch blocker does not work")
"""

_EPILOGUE = f"""
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
assert not leaked, leaked
"""


def run_without_torch(code, *args, cwd=None, timeout=300):
    """subprocess.run of `code` (dedented) with the blocker before it and the leak check after it."""
    script = _PRELUDE + textwrap.dedent(code) + _EPILOGUE
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)
