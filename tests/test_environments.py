"""Hostile environments (#9 item 7, #13): threading layers, fork(), read-only installs, bad settings.

Each case runs in a fresh interpreter, since the threading layer and the cache folder are fixed per process.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from npvitpose.cli import main

ROOT = Path(__file__).resolve().parents[1]

# A tiny simple-head model (cheap enough for the emulated arm64 run), 4 jobs of 3 boxes each, predicted once
# sequentially: the reference for the other runs.
SETUP = """
import numpy as np, sys
sys.path.insert(0, {tests!r})
from npvitpose.model import load, save_npz, random_weights
from test_cli import TINY, synthetic_image, tiny_meta
save_npz({path!r}, random_weights(TINY, seed=4), tiny_meta(TINY))
models = [load({path!r}), load({path!r})]
jobs = []
for i in range(4):
    rng = np.random.default_rng(i)
    jobs.append((synthetic_image(seed=i), np.hstack([rng.uniform(0, 200, (3, 2)), rng.uniform(20, 120, (3, 2))])))
expected = [models[0](image, boxes) for image, boxes in jobs]
"""

# Two models (so the per-model forward lock does not serialise them) and the bare warp, from 4 threads at once.
THREADS = """
import threading, numba
from npvitpose.kernels.warp import warp_normalize
barrier, got, errors = threading.Barrier(4), [None] * 4, []
def worker(t):
    try:
        barrier.wait(timeout=60)
        for _ in range(2):
            got[t] = models[t % 2](*jobs[t])
            crops = np.empty((6, 3, 256, 192), np.float32)
            warp_normalize(jobs[t][0], np.tile(np.eye(2, 3), (3, 1, 1)), crops, flip=True)
    except BaseException as e:
        errors.append(repr(e))
threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
assert not errors, errors
for (kp, sc), (kp_e, sc_e) in zip(got, expected):
    assert np.array_equal(kp, kp_e) and np.array_equal(sc, sc_e)
print("layer", numba.threading_layer())
"""

# A forward in the parent, then the same model used in fork()ed children (multiprocessing's Linux default).
FORK = """
import multiprocessing, numba
def child(j):
    return models[0](*jobs[j])
with multiprocessing.get_context("fork").Pool(2) as pool:
    got = pool.map_async(child, range(len(jobs)), chunksize=1).get(timeout=300)  # a killed child hangs map()
for (kp, sc), (kp_e, sc_e) in zip(got, expected):
    assert np.allclose(kp, kp_e, rtol=0, atol=1e-3) and np.allclose(sc, sc_e, rtol=0, atol=1e-5)
again = models[0](*jobs[0])  # the parent is unharmed
assert np.array_equal(again[0], expected[0][0])
print("layer", numba.threading_layer())
"""


def run_python(code, tmp_path, env=None, cwd=None, pythonpath=ROOT):
    script = SETUP.format(tests=str(ROOT / "tests"), path=str(tmp_path / "tiny.npz")) + code
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_") and k != "NPVITPOSE_THREADS"}
    full_env.update(PYTHONPATH=str(pythonpath), **(env or {}))
    return subprocess.run([sys.executable, "-c", script], env=full_env, cwd=cwd or tmp_path, capture_output=True,
                          text=True, timeout=600)


def layer_available(layer):
    probe = ("import numba, numpy as np\n@numba.njit(parallel=True)\ndef f(a):\n    for i in numba.prange(a.size):\n"
             "        a[i] = i\nf(np.zeros(4))\nprint(numba.threading_layer())")
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).returncode == 0


@pytest.mark.parametrize("case, layer", [("threads", "workqueue"), ("threads", "omp"), ("fork", "omp"),
                                         ("fork", "workqueue")])
def test_parallel_kernels_with_threads_and_after_fork(tmp_path, case, layer):
    """workqueue aborts on concurrent launches unless every parallel kernel takes turns; GNU OpenMP kills a
    forked child at its first parallel launch unless the child runs serial kernels."""
    if not layer_available(layer):
        pytest.skip(f"Numba's {layer} layer cannot load here")
    r = run_python(THREADS if case == "threads" else FORK, tmp_path, env={"NUMBA_THREADING_LAYER": layer})
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"layer {layer}" in r.stdout and "Terminating" not in r.stderr


def test_read_only_install_without_any_numba_cache(tmp_path):
    """No writable folder beside the kernels, no HOME cache, no NUMBA_CACHE_DIR: one warning, then it works."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "npvitpose", site / "npvitpose", ignore=shutil.ignore_patterns("kernels", "__pycache__"))
    shutil.copytree(ROOT / "kernels", site / "npvitpose" / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in (site / "npvitpose", site / "npvitpose" / "kernels"):
        (folder / "__pycache__").write_text("")  # a file where the cache folder would go: unwritable even for root
    for path in sorted(site.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    env = {"HOME": "/dev/null", "XDG_CACHE_HOME": "/dev/null/cache", "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        r = run_python("print('ok', len(expected))", tmp_path, env=env, pythonpath=site)
    finally:
        for path in site.rglob("*"):
            path.chmod(0o755)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["ok", "4"]
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("npvitpose: warning: no writable Numba cache folder"), r.stderr


@pytest.mark.parametrize("value, message", [
    ("abc", "npvitpose: warning: NPVITPOSE_THREADS='abc' is not a positive integer; ignored"),
    ("0", "npvitpose: warning: NPVITPOSE_THREADS='0' is not a positive integer; ignored"),
    ("9" * 5000, "npvitpose: warning: NPVITPOSE_THREADS=" + "9" * 40 + " is more than the"),
])
def test_bad_thread_setting_is_one_warning_line(value, message):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update(PYTHONPATH=str(ROOT), NPVITPOSE_THREADS=value)
    code = "import numba, npvitpose.threads as t; assert 1 <= t.get_threads() <= numba.config.NUMBA_NUM_THREADS"
    r = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr


@pytest.mark.parametrize("argv", [["--batch", "0"], ["--repeats", "0"], ["--threads", "0"], ["--batch", "x"]])
def test_bench_refuses_nonpositive_counts(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1].startswith("npvitpose bench: error: argument")
