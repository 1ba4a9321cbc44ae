"""Start-up (#8 item 5): a cold run compiles its kernels on two processes and leaves a complete JIT cache.

The kernels here are toys written with the project's decorators (kernels/_jit.py): the mechanism is the
same for the real ones, whose cold compile takes far longer than a test should.
"""

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from npvitpose.kernels import _jit

ROOT = Path(__file__).resolve().parents[1]

TOY = '''
from numba import prange

from npvitpose.kernels._jit import jit, pjit


@jit
def _half(x):
    return 0.5 * x


@pjit
def scale(x, out):
    for i in prange(x.shape[0]):
        out[i] = _half(x[i])


@jit
def shift(x, out, by):
    for i in range(x.shape[0]):
        out[i] = x[i] + by


@jit
def count(x):
    return x.shape[0]


def dry():
    import numpy as np

    x = np.arange(4, dtype=np.float32)
    out = np.full(4, -1.0, np.float32)
    shift(x, out, 1.0)
    scale(x, out)
    shift(x, out, 2.0)
    shift(x, out, 3)
    seen = count(x)
    return x, out, seen


def real():
    import numpy as np

    x = np.arange(4, dtype=np.float32)
    a, b, c = (np.empty(4, np.float32) for _ in range(3))
    shift(x, a, 1.0)
    scale(x, b)
    shift(x, c, 3)
    assert (a == x + 1).all() and (b == x / 2).all() and (c == x + 3).all() and count(x) == 4
    return {name: bool(fn.stats.cache_hits) and not fn.stats.cache_misses
            for name, fn in (("shift", shift), ("scale", scale.parallel), ("count", count))}
'''


def _env(cache, **more):
    return dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=os.pathsep.join([str(ROOT)] + sys.path), **more)


def _python(code, folder, cache, **env):
    """Run code in a fresh interpreter (the cache folder is fixed per process) with the toy module importable."""
    script = f"import sys\nsys.path.insert(0, {str(folder)!r})\n" + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], env=_env(cache, **env), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


@pytest.fixture
def toy(tmp_path):
    (tmp_path / "toykernels.py").write_text(TOY)
    return tmp_path


def test_dry_run_records_each_function_and_signature_once_in_order_and_runs_none(toy, monkeypatch):
    import numba.core.config

    monkeypatch.setattr(numba.core.config, "CACHE_DIR", str(toy / "nbcache"))
    monkeypatch.syspath_prepend(str(toy))
    import toykernels

    found = []
    calls = _jit.calls(lambda: found.append(toykernels.dry()))
    (x, out, seen), = found
    assert (out == -1).all() and seen is None  # nothing ran: outputs as allocated, results None
    assert [(d.py_func.__name__, [tuple(str(t) for t in s) for s in sigs]) for d, sigs in calls] == [
        ("shift", [("array(float32, 1d, C)", "array(float32, 1d, C)", "float64"),
                   ("array(float32, 1d, C)", "array(float32, 1d, C)", "int64")]),
        ("scale", [("array(float32, 1d, C)", "array(float32, 1d, C)")]),
        ("count", [("array(float32, 1d, C)",)])]
    assert not any(d.overloads for d, _ in calls)  # and nothing compiled
    assert [_jit._by_name(d) for d, _ in calls] == [("toykernels", n) for n in ("shift", "scale", "count")]
    assert toykernels.count(x) == 4  # the dispatchers work normally afterwards


def test_precompile_leaves_a_cache_the_next_process_only_loads(toy):
    cache, tmp = toy / "nbcache", toy / "tmp"
    tmp.mkdir()
    _python("""
        import toykernels
        from npvitpose.kernels import _jit
        _jit.precompile(toykernels.dry)
        """, toy, cache, TMPDIR=str(tmp))
    assert not list(tmp.iterdir())  # the claims and the helper's folder are gone
    hits = pickle.loads(_python("""
        import pickle, sys, toykernels
        sys.stdout.buffer.write(pickle.dumps(toykernels.real()))
        """, toy, cache))
    assert hits == {"shift": True, "scale": True, "count": True}


def test_helper_compiles_every_unclaimed_kernel_into_its_own_folder_and_adopting_it_completes_ours(toy):
    claims, private = toy / "claims", toy / "private"
    claims.mkdir()
    job = _python(f"""
        import os, pickle, sys, toykernels
        from npvitpose.kernels import _jit
        calls = _jit.calls(toykernels.dry)
        os.close(os.open(os.path.join({str(claims)!r}, "1"), os.O_CREAT | os.O_EXCL))  # ours: 'scale'
        job = {{"parent": os.getppid(), "claims": {str(claims)!r},
               "items": [(i, _jit._by_name(d), s) for i, (d, s) in reversed(list(enumerate(calls)))]}}
        sys.stdout.buffer.write(pickle.dumps(job))
        """, toy, toy / "unused")
    job = pickle.loads(job)
    job["parent"] = os.getpid()  # the helper stops when the process that started it is gone
    folders = pickle.loads(subprocess.run(
        [sys.executable, "-c", "import npvitpose.kernels._jit as j; j._helper()"], input=pickle.dumps(job),
        env=dict(_env(private), PYTHONPATH=os.pathsep.join([str(toy), str(ROOT)] + sys.path)), capture_output=True,
        check=True, timeout=300).stdout)
    assert sorted(os.listdir(claims)) == ["0", "1", "2"]
    theirs = sorted(os.listdir(folders["toykernels"]))
    assert any(n.startswith("toykernels.shift-") for n in theirs) and any(n.startswith("toykernels.count-") for n in theirs)
    assert not any(n.startswith("toykernels.scale-") for n in theirs)  # claimed by another: left alone
    hits = pickle.loads(_python(f"""
        import pickle, sys, toykernels
        from npvitpose.kernels import _jit
        import numpy as np
        toykernels.scale(np.arange(4, dtype=np.float32), np.empty(4, np.float32))  # our share, compiled here
        _jit._adopt({folders["toykernels"]!r}, _jit._cache_folders({{"toykernels"}})["toykernels"])
        sys.stdout.buffer.write(pickle.dumps(toykernels.real()))
        """, toy, toy / "ours"))
    assert hits == {"shift": True, "scale": False, "count": True}  # scale was compiled in that process itself


def test_adopt_copies_whole_functions_it_lacks_and_keeps_its_own(tmp_path):
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    theirs.mkdir()
    ours.mkdir()
    files = {"m.f-3.py311.nbi": b"fi", "m.f-3.py311.1.nbc": b"f1", "m.f-3.py311.2.nbc": b"f2",
             "m.g-9.py311.nbi": b"gi", "m.g-9.py311.1.nbc": b"g1", "m.fg-3.py311.1.nbc": b"orphan"}
    for name, data in files.items():
        (theirs / name).write_bytes(data)
    (ours / "m.g-9.py311.nbi").write_bytes(b"mine")
    _jit._adopt(str(theirs), str(ours))
    assert {p.name: p.read_bytes() for p in ours.iterdir()} == {
        "m.f-3.py311.nbi": b"fi", "m.f-3.py311.1.nbc": b"f1", "m.f-3.py311.2.nbc": b"f2", "m.g-9.py311.nbi": b"mine"}


def test_an_fp32_run_compiles_no_bf16_int8_amx_or_serial_kernel(tmp_path):
    """Each run compiles (or loads from the cache) only the kernels it calls: compiling costs seconds per kernel."""
    code = f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from numba.core.dispatcher import Dispatcher
        from npvitpose.cli import main
        from npvitpose.model import random_weights, save_npz
        from test_cli import TINY, synthetic_image, tiny_meta
        import cv2
        save_npz({str(tmp_path / "m.npz")!r}, random_weights(TINY, seed=1), tiny_meta(TINY))
        cv2.imwrite({str(tmp_path / "a.png")!r}, synthetic_image())
        open({str(tmp_path / "b.json")!r}, "w").write("[[20, 10, 120, 200]]")
        assert main(["infer", {str(tmp_path / "a.png")!r}, {str(tmp_path / "b.json")!r}, "--model",
                     {str(tmp_path / "m.npz")!r}, "-o", {str(tmp_path / "out.json")!r}, "-q"]) == 0
        compiled = set()  # named by the module that defines them (gemm_bf16 imports mlp's gelu, say)
        for name, module in list(sys.modules.items()):
            if name.startswith("npvitpose.kernels."):
                for fn in list(vars(module).values()):
                    for d, suffix in ((getattr(fn, "parallel", fn), ""), (getattr(fn, "_serial", None), " serial")):
                        if isinstance(d, Dispatcher) and d.signatures:
                            f = d.py_func
                            compiled.add(f.__module__.rsplit(".", 1)[1] + "." + f.__qualname__ + suffix)
        print(json.dumps(sorted(compiled)))
        """
    compiled = json.loads(_python(code, tmp_path, os.environ.get("NUMBA_CACHE_DIR", tmp_path / "nbcache")))
    assert any(n.startswith("gemm.") for n in compiled) and any(n.startswith("attention.") for n in compiled)
    assert not [n for n in compiled if n.split(".")[0] in ("gemm_bf16", "gemm_int8", "amx", "attention_bf16")
                or n.endswith(" serial")]
    assert not [n for n in compiled if n.startswith("head._col2im") or n.startswith("head._depth")]  # classic head only
