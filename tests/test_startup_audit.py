"""Start-up precompile (kernels/_jit.py) on a user's machine: a killed parent, a cluttered current folder.

Toy kernels written with the project's decorators stand in for the real ones (tests/test_startup.py).
"""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N = 24  # kernels: enough that the helper is still compiling when its parent is killed

TOY = "from npvitpose.kernels._jit import jit\n" + "".join(
    f"\n\n@jit\ndef k{k}(x, out):\n    for i in range(x.shape[0]):\n        out[i] = x[i] * {k + 1} + {k}\n"
    for k in range(N)) + f'''

def dry():
    import numpy as np

    x, out = np.arange(4, dtype=np.float32), np.empty(4, np.float32)
    for k in range({N}):
        globals()[f"k{{k}}"](x, out)


def hits():
    return all(globals()[f"k{{k}}"].stats.cache_hits and not globals()[f"k{{k}}"].stats.cache_misses
               for k in range({N}))
'''


def _toy(folder, tmp, cache, body):
    """A script in the toy's folder (sys.path[0] is the script's folder, as for the installed command)."""
    (folder / "toykernels.py").write_text(TOY)
    script = folder / "go.py"
    script.write_text(f"import sys\nsys.path.insert(1, {str(ROOT)!r})\nimport toykernels\n" + body)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), TMPDIR=str(tmp))
    env.pop("PYTHONPATH", None)
    return [sys.executable, str(script)], env


def _gone(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # reaped by nobody yet
    except OSError:
        return True


def test_a_parent_killed_mid_compile_leaves_no_temporary_folder(tmp_path):
    """SIGKILL (the OOM killer, kill -9, a cancelled CI job) runs no `finally`: the helper must clean up."""
    (tmp_path / "toy").mkdir()
    (tmp_path / "tmp").mkdir()
    cmd, env = _toy(tmp_path / "toy", tmp_path / "tmp", tmp_path / "cache",
                    "from npvitpose.kernels import _jit\n_jit.precompile(toykernels.dry)\n")
    parent = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(list((tmp_path / "tmp").glob("npvitpose-jit-*/claims/*"))) < 2 and parent.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        helpers = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
        assert len(helpers) == 1 and len(list((tmp_path / "tmp").glob("npvitpose-jit-*/claims/*"))) < N
        parent.send_signal(signal.SIGKILL)
    finally:
        parent.kill()
        parent.wait()
    while not _gone(helpers[0]):  # it stops at its next kernel
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_the_helper_imports_nothing_from_the_current_folder(tmp_path):
    """The user's own run never imports from the folder it is started in; its helper must not either."""
    for folder in ("toy", "tmp", "here"):
        (tmp_path / folder).mkdir()
    for name in ("numba", "numpy", "threading"):
        (tmp_path / "here" / f"{name}.py").write_text(f"open({str(tmp_path / 'here' / name)!r} + '.ran', 'w')\n")
    cmd, env = _toy(tmp_path / "toy", tmp_path / "tmp", tmp_path / "cache",
                    "from npvitpose.kernels import _jit\n_jit.precompile(toykernels.dry)\n")
    subprocess.run(cmd, env=env, cwd=tmp_path / "here", check=True, capture_output=True, timeout=300)
    assert not list((tmp_path / "here").glob("*.ran"))
    cmd, env = _toy(tmp_path / "toy", tmp_path / "tmp", tmp_path / "cache",
                    "import pickle\ntoykernels.dry()\nsys.stdout.buffer.write(pickle.dumps(toykernels.hits()))\n")
    assert pickle.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300).stdout) is True
