"""npvitpose on arm64 (Raspberry Pi 4 class), emulated: build the environment, run the tests, compare with x86-64.

    sudo python tools/aarch64_check.py            # about 10-15 min from nothing, less with the cache
    sudo python tools/aarch64_check.py --rebuild  # throw the cached root away first

Run it as root from a checkout where `import npvitpose` works (`pip install -e ".[test]"`), on a Debian or
Ubuntu x86-64 host. What it does:
1. apt-get installs qemu-user-static, binfmt-support and debootstrap if missing, and enables the
   qemu-aarch64 binfmt handler (mounting binfmt_misc if it is not mounted).
2. Builds a Debian 12 arm64 root in the cache folder ($NPVITPOSE_AARCH64_CACHE, default
   ~/.cache/npvitpose-aarch64), once: `debootstrap --foreign --variant=minbase` from the Debian mirror of
   /etc/apt/sources.list*, then the packages are unpacked with the host's dpkg-deb instead of debootstrap's
   emulated second stage (14.5 min here, nearly all of it maintainer scripts under emulation; they byte-compile
   Python and set up services that nothing here uses). A venv in the root gets the newest manylinux aarch64 wheels
   of the project's dependencies (numpy, numba/llvmlite, opencv-python, scipy) plus pytest and hypothesis,
   fetched by the host's pip as it is configured (`pip install --target --platform`).
3. Installs npvitpose from this checkout (a wheel built here) into that venv, copies the tests, and runs
   inside the root, under qemu with QEMU_CPU=cortex-a72 and nice 19:
   - the x86-64 comparison: two converted tiny models (UDP + simple head, classic warp + deconvolution
     head) on the astronaut photo, keypoints/scores/heatmaps against the same computed here on the host;
   - a bounded torch-free test subset (TESTS below).
Every mount it makes (binfmt_misc, the root's /proc and /dev/shm) is undone on exit, also on failure or
Ctrl-C/SIGTERM. Exit code 0 when everything passed.
"""

import argparse
import dataclasses
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
SUITE = "bookworm"
PYTHON = "3.11"  # Debian 12's python3
# libgomp1: Numba's omp layer, as Raspberry Pi OS has it; the GL/X/GLib libraries: opencv-python (not
# -headless) needs them to import, as on any minimal server (its docs: apt install libgl1 libglib2.0-0)
PACKAGES = ["python3", "libstdc++6", "libgomp1", "zlib1g", "libgl1", "libglib2.0-0", "libsm6", "libice6",
            "libxext6", "libx11-6", "libxcb1"]
PLATFORMS = ["manylinux2014_aarch64"] + [f"manylinux_2_{v}_aarch64" for v in range(17, 37)]
TEST_EXTRAS = ("pytest", "hypothesis", "safetensors")  # from the test extra (safetensors writes the reference
# fixtures' HF folders); torch and transformers have no place here
QEMU_CPU = "cortex-a72"  # Raspberry Pi 4: ARMv8.0 + crc, no dot-product, BF16 or I8MM
TESTS = ["test_kernels.py", "test_kernels_fast.py", "test_warp.py", "test_reference.py", "test_pipeline.py",
         "test_decode.py", "test_cli.py", "test_environments.py::test_parallel_kernels_with_threads_and_after_fork"]
# Left out under emulation (~0.1 GFLOP/s): the ViT-B-width cases of the head kernels (the same loops run at the
# small shapes), test_threads.py (96 crops through the 1.7 GFLOP deconvolution head; test_environments.py's
# threads cases cover the same with two models and the bare warp), and the fork cases (the mechanism is
# platform-neutral and tested on x86-64), which would compile the serial kernels too.
DESELECT = ["test_kernels.py::test_deconv[2-16-12-768-256-False]", "test_kernels.py::test_deconv[2-16-12-768-256-True]",
            "test_kernels.py::test_patch_embedding[2-256-192-768]",
            "test_kernels.py::test_upsample[2-16-12-768]", "test_kernels.py::test_simple_head[2-16-12-768-17]",
            "test_environments.py::test_parallel_kernels_with_threads_and_after_fork[fork-omp]",
            "test_environments.py::test_parallel_kernels_with_threads_and_after_fork[fork-workqueue]"]
# (case of tests/test_end_to_end.py, dataset, warp mode, boxes used): its peaked weights (a stable argmax) on a
# one-block ViT-S backbone (the converter needs a published width); emulated float32 runs at ~0.1 GFLOP/s and
# a crop costs 0.7 GFLOP, plus 1.7 in the 256-channel deconvolution head: 3 boxes and 2 (one partly outside)
CASES = [("coco-udp-simplehead-hf", "coco", "udp", 3), ("aic-classic-deconvhead-pth", "aic", "classic", 2)]
TINY = {"depth": 1}
# x86-64 vs arm64, same wheels versions, float32 throughout: the GEMMs (OpenBLAS's Haswell/SkylakeX vs NEON
# kernels) sum in other orders and fuse other multiply-adds, so each output differs by a few float32 ulps of
# its dot products' magnitude. The bars are those tests/test_end_to_end.py holds the engine to against
# PyTorch, itself another float32 implementation: heatmaps 1e-5 of their peak, keypoints 0.01 px.
HEATMAP_BAR = 1e-5  # max|arm - x86| / max|x86|
# bf16/int8 (one box of the first case): x86-64 runs vdpbf16ps/vpdpbusd where it has them, a core without them
# widens the same rounded values to fp32 BLAS; a float32 difference that flips one rounding moves a product by
# 2^-8 (bf16) or a quantisation step (int8), so the bars are a few times lowp's per-GEMM errors (2.6e-3, 1.2e-2)
LOW_PRECISION_BARS = {"bf16": 1e-2, "int8": 5e-2}
SCORE_BAR = 1e-5  # scores are heatmap peaks (max about 1 here)
KEYPOINT_BAR = 0.01  # image px


class Failure(Exception):
    """A step failed: its message is printed on one line."""


def log(message):
    print(f"[aarch64 {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd, **kw):
    """Run a host command; its output goes to ours. Raises Failure naming the command."""
    r = subprocess.run(cmd, **kw)
    if r.returncode:
        raise Failure(f"{' '.join(map(str, cmd[:4]))} ... exited with {r.returncode}")
    return r


# ---------------------------------------------------------------- host tools and binfmt


def ensure_host_tools():
    needed = {"qemu-aarch64-static": "qemu-user-static", "debootstrap": "debootstrap",
              "update-binfmts": "binfmt-support", "dpkg-deb": "dpkg"}
    missing = sorted({pkg for tool, pkg in needed.items() if shutil.which(tool) is None})
    if not Path("/usr/share/keyrings/debian-archive-keyring.gpg").exists():  # debootstrap checks the mirror with it
        missing.append("debian-archive-keyring")
    if missing:
        if shutil.which("apt-get") is None:
            raise Failure(f"missing {', '.join(missing)} and no apt-get to install them")
        log(f"apt-get install {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "update", "-qq"], env=env)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def ensure_binfmt(mounts):
    """qemu-aarch64 registered with the F flag (the interpreter is opened now, so the root needs no copy of it)."""
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)])
        mounts.append(binfmt)
    entry = binfmt / "qemu-aarch64"
    if not entry.exists() or "enabled" not in entry.read_text():
        run(["update-binfmts", "--enable", "qemu-aarch64"])
    if not entry.exists() or "enabled" not in entry.read_text():
        raise Failure("could not enable the qemu-aarch64 binfmt handler")


# ---------------------------------------------------------------- the root


def debian_mirror():
    """The Debian mirror this host's apt uses (deb822 .sources or one-line sources.list), else deb.debian.org."""
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.suffix in (".list", ".sources") or path.name == "sources.list":
            try:
                texts.append(path.read_text())
            except OSError:
                pass
    for text in texts:
        for uri in re.findall(r"^\s*(?:URIs:|deb(?:\s+\[[^\]]*\])?)\s+(\S+)", text, re.M):
            if uri.rstrip("/").endswith("/debian") and "security" not in uri:
                return uri
    return "http://deb.debian.org/debian"


def build_root(root, mirror):
    """Debian 12 arm64 minbase plus PACKAGES, unpacked natively; a venv at /opt/venv without pip."""
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"debootstrap --foreign --arch=arm64 {SUITE} from {mirror}")
    run(["nice", "-n", "19", "debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
         "--include=" + ",".join(PACKAGES), SUITE, str(tmp), mirror], stdout=subprocess.DEVNULL)
    debs = sorted((tmp / "var/cache/apt/archives").glob("*.deb"))
    log(f"unpacking {len(debs)} packages with the host's dpkg-deb")
    for deb in debs:
        run(["dpkg-deb", "-x", str(deb), str(tmp)])
        deb.unlink()
    for name in ("passwd", "group"):  # base-passwd's postinst would install these
        shutil.copy(tmp / f"usr/share/base-passwd/{name}.master", tmp / "etc" / name)
    run(["chroot", str(tmp), "/sbin/ldconfig"])
    run(["chroot", str(tmp), "/usr/bin/python3", "-m", "venv", "--without-pip", "/opt/venv"])
    tmp.rename(root)


def requirements():
    """The project's runtime dependencies (pyproject.toml), as a user's pip would resolve them."""
    import tomllib

    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]
    tests = [r for r in project["optional-dependencies"]["test"] if r.split(">")[0].split("=")[0] in TEST_EXTRAS]
    return project["dependencies"] + tests


def pip_target(site, args, cache):
    run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(site),
         "--python-version", PYTHON, "--implementation", "cp", "--cache-dir", str(cache),
         *[a for p in PLATFORMS for a in ("--platform", p)], *args])


def prepare(cache, rebuild):
    root = cache / f"debian-{SUITE}-arm64"
    spec = json.dumps({"packages": PACKAGES, "requirements": requirements(), "python": PYTHON})
    stamp = root / "opt/npvitpose-aarch64.json"
    if rebuild or not stamp.exists() or stamp.read_text() != spec:
        shutil.rmtree(root, ignore_errors=True)
        t = time.monotonic()
        build_root(root, os.environ.get("NPVITPOSE_AARCH64_MIRROR") or debian_mirror())
        log(f"root built in {time.monotonic() - t:.0f} s")
        t = time.monotonic()
        log("pip: aarch64 wheels of " + ", ".join(requirements()))
        pip_target(site_packages(root), ["--only-binary=:all:", *requirements()], cache / "pip")
        log(f"wheels installed in {time.monotonic() - t:.0f} s")
        stamp.write_text(spec)
    else:
        log(f"using the cached root {root}")
    return root


def site_packages(root):
    return root / f"opt/venv/lib/python{PYTHON}/site-packages"


def install_project(root, cache):
    """A wheel of this checkout, installed over the previous one; the tests copied beside it."""
    site = site_packages(root)
    for old in [site / "npvitpose", site / "bin", *site.glob("npvitpose-*.dist-info")]:
        shutil.rmtree(old, ignore_errors=True)
    with tempfile.TemporaryDirectory() as wheels:
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--cache-dir", str(cache / "pip"),
             "-w", wheels, str(CHECKOUT)])
        pip_target(site, ["--no-deps", *map(str, Path(wheels).glob("npvitpose-*.whl"))], cache / "pip")
    work = root / "work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(CHECKOUT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(CHECKOUT / "pyproject.toml", work / "pyproject.toml")  # pytest's options, not an install
    shutil.copy(__file__, work / "aarch64_check.py")
    return work


# ---------------------------------------------------------------- the x86-64 side and the comparison


def write_cases(work):
    """Host side: the photo, the boxes, each case's official-format weights, and what x86-64 computes."""
    sys.path.insert(0, str(CHECKOUT / "tests"))
    import cv2
    import numpy as np
    import hf_reference as R
    import test_end_to_end as E

    import npvitpose
    from npvitpose.convert import convert

    photo = E.skimage_data.astronaut()  # RGB
    boxes = np.load(E.FIXTURE)["boxes"]
    data = work / "compare"
    data.mkdir()
    if not cv2.imwrite(str(data / "astronaut.png"), np.ascontiguousarray(photo[:, :, ::-1])):
        raise Failure("could not write the photo")
    np.save(data / "boxes.npy", boxes)
    x86 = {}
    for case, dataset, mode, count in CASES:
        v, _fmt, _dataset, _mode, pairs = E.CASES[case]
        sd = E.peaked_weights(dataclasses.replace(v, **TINY), pairs)
        R.official_safetensors_from_numpy(sd, data / f"{case}.safetensors")
        convert(data / f"{case}.safetensors", data / f"{case}.x86.npz", dataset=dataset)
        model = npvitpose.load(data / f"{case}.x86.npz")
        assert model.meta["mode"] == mode, (case, model.meta["mode"])
        kpts, scores, heat = model(photo, boxes[:count], return_heatmaps=True)
        x86.update({f"{case}/keypoints": kpts, f"{case}/scores": scores, f"{case}/heatmaps": heat})
        if case == CASES[0][0]:
            for precision in LOW_PRECISION_BARS:
                low = npvitpose.load(data / f"{case}.x86.npz", precision=precision)
                x86[f"{precision}/heatmaps"] = low(photo, boxes[:1], return_heatmaps=True)[2]
        (data / f"{case}.x86.npz").unlink()
    np.savez(data / "x86.npz", **x86)


def compare(data):
    """Arm side (inside the root): convert and run each case as the host did; print the differences."""
    import numpy as np

    import npvitpose
    from npvitpose.convert import convert
    from npvitpose.images import read_image

    photo = read_image(str(data / "astronaut.png"))
    boxes = np.load(data / "boxes.npy")
    x86 = np.load(data / "x86.npz")
    report, ok = {}, True
    for case, dataset, _mode, count in CASES:
        convert(data / f"{case}.safetensors", data / f"{case}.arm.npz", dataset=dataset)
        model = npvitpose.load(data / f"{case}.arm.npz")
        t = time.monotonic()
        kpts, scores, heat = model(photo, boxes[:count], return_heatmaps=True)
        first = time.monotonic() - t
        t = time.monotonic()
        model(photo, boxes[:1], flip=False)  # compiled by now: the cost of one emulated crop
        again = time.monotonic() - t
        ref_k, ref_s, ref_h = (x86[f"{case}/{k}"] for k in ("keypoints", "scores", "heatmaps"))
        row = {"heatmap_rel": float(np.abs(heat - ref_h).max() / np.abs(ref_h).max()),
               "score_abs": float(np.abs(scores - ref_s).max()),
               "keypoint_px": float(np.abs(kpts - ref_k).max()),
               "bit_identical": bool(np.array_equal(heat, ref_h) and np.array_equal(kpts, ref_k)),
               "first_call_s": round(first, 2), "warm_call_one_crop_s": round(again, 2)}
        row["pass"] = bool(row["heatmap_rel"] <= HEATMAP_BAR and row["score_abs"] <= SCORE_BAR
                           and row["keypoint_px"] <= KEYPOINT_BAR and kpts.shape == ref_k.shape)
        ok &= row["pass"]
        report[case] = row
        if case == CASES[0][0]:
            report["low_precision"] = low_precisions(data / f"{case}.arm.npz", photo, boxes[:1], x86)
            ok &= all(r["pass"] for r in report["low_precision"].values())
    matrices = classic_matrices(data)
    report["classic_matrix"] = matrices
    ok &= matrices["pass"]
    import numba

    report["threading_layer"] = numba.threading_layer()
    print(json.dumps(report, indent=1))
    return 0 if ok else 1


def low_precisions(path, photo, boxes, x86):
    """bf16 and int8 run here (their x86 instructions are never compiled on arm) and agree with x86-64's."""
    import numpy as np

    import npvitpose
    from npvitpose.model import PRECISIONS, kernel_name

    out = {}
    for precision, bar in LOW_PRECISION_BARS.items():
        heat = npvitpose.load(path, precision=precision)(photo, boxes, return_heatmaps=True)[2]
        ref = x86[f"{precision}/heatmaps"]
        rel = float(np.abs(heat - ref).max() / np.abs(ref).max())
        out[precision] = {"kernel": kernel_name(precision), "heatmap_rel": rel, "bar": bar,
                          "pass": bool(np.isfinite(heat).all() and rel <= bar and not PRECISIONS[precision].FAST)}
    return out


def classic_matrices(data):
    """This platform's cv2.getAffineTransform on the classic crop points of 72 boxes (spec 4.4), saved for x86 tests."""
    import cv2
    import numpy as np

    from npvitpose.pipeline import box_to_center_scale, classic_matrix

    rng = np.random.default_rng(1)
    boxes = np.concatenate([rng.uniform(-100, 2000, (40, 2)), rng.uniform(1, 900, (40, 2))], axis=1)
    warp = np.load(Path(__file__).parent / "tests/data/warp_cv4.npz")
    centers, scales = box_to_center_scale(np.concatenate([warp["box_xywh"], boxes]))
    points, got = np.empty((len(centers), 3, 2), np.float32), np.empty((len(centers), 2, 3))
    for i, (c, s) in enumerate(zip(centers, scales)):  # the points as the official get_affine_transform makes them
        roi = s * np.float32(200)
        points[i, 0] = c
        points[i, 1] = c.astype(np.float64) + [0.0, float(roi[0]) * -0.5]
        d = points[i, 0] - points[i, 1]
        points[i, 2] = points[i, 1] + np.array([-d[1], d[0]], np.float32)
        got[i] = cv2.getAffineTransform(points[i], np.float32([[96, 128], [96, 32], [0, 32]]))
    np.savez(data / "classic_matrix_arm64.npz", center=centers, scale=scales, points=points, cv2_matrix=got,
             opencv_version=np.array(cv2.__version__))
    same = [np.array_equal(classic_matrix(c, s), m) for c, s, m in zip(centers, scales, got)]
    as_x86 = [np.array_equal(classic_matrix(c, s, fused=False), m) for c, s, m in zip(centers, scales, got)]
    return {"boxes": len(got), "bit_identical": int(sum(same)), "bit_identical_with_x86_rounding": int(sum(as_x86)),
            "opencv": cv2.__version__, "pass": all(same)}


# ---------------------------------------------------------------- running inside the root


class Chroot:
    """/proc and a fresh /dev/shm (multiprocessing's semaphores) mounted in the root while in use."""

    def __init__(self, root, mounts):
        self.root, self.mounts = root, mounts

    def __enter__(self):
        for kind, target in (("proc", "proc"), ("tmpfs", "dev/shm")):
            path = self.root / target
            path.mkdir(parents=True, exist_ok=True)
            run(["mount", "-t", kind, kind, str(path)])
            self.mounts.append(path)
        return self

    def __exit__(self, *exc):
        unmount(self.mounts, only_under=self.root)

    def python(self, args, timeout):
        env = {"PATH": "/opt/venv/bin:/usr/bin:/bin", "HOME": "/root", "USER": "root", "LANG": "C.UTF-8",
               "QEMU_CPU": QEMU_CPU, "PYTHONDONTWRITEBYTECODE": "1", "HYPOTHESIS_STORAGE_DIRECTORY": "/tmp/hyp"}
        cmd = ["nice", "-n", "19", shutil.which("chroot"), str(self.root), "/usr/bin/env", "-C", "/work",
               "/opt/venv/bin/python", *args]
        before = cpu_seconds()
        proc = subprocess.Popen(cmd, env=env, cwd=self.root, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
            log(f"  CPU time of that step: {cpu_seconds() - before:.0f} s (wall time on a busy machine is longer)")
            return code
        except subprocess.TimeoutExpired:
            raise Failure(f"{' '.join(args[:3])} ... did not finish in {timeout} s") from None
        finally:  # nothing emulated may outlive us and keep the mounts busy
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def cpu_seconds():
    """User + system CPU of the finished children: the emulation's cost, whatever else the machine is doing."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def unmount(mounts, only_under=None):
    for path in reversed(list(mounts)):
        if only_under is not None and only_under not in path.parents:
            continue
        if subprocess.run(["umount", str(path)], stderr=subprocess.DEVNULL).returncode:
            subprocess.run(["umount", "-l", str(path)])  # still busy: detach now, freed when the last user exits
        mounts.remove(path)


def check(cache, rebuild, tests, timeout, record):
    t0 = time.monotonic()
    mounts = []
    try:
        ensure_host_tools()
        ensure_binfmt(mounts)
        root = prepare(cache, rebuild)
        work = install_project(root, cache)
        log("x86-64 side of the comparison (on the host)")
        write_cases(work)
        results = {}
        with Chroot(root, mounts) as box:
            uname = subprocess.run(["chroot", str(root), "/usr/bin/uname", "-m"], capture_output=True, text=True)
            log(f"inside the root: {uname.stdout.strip()}, QEMU_CPU={QEMU_CPU}")
            t = time.monotonic()
            results["compare"] = box.python(["/work/aarch64_check.py", "--compare", "/work/compare"], timeout)
            log(f"comparison with x86-64: {'passed' if results['compare'] == 0 else 'FAILED'} "
                f"in {time.monotonic() - t:.0f} s (cold JIT cache)")
            t = time.monotonic()
            args = ["-m", "pytest", "-q", "-rs", "--durations=15", "-p", "no:cacheprovider", "--rootdir=/work",
                    *[f"tests/{name}" for name in tests], *[f"--deselect=tests/{name}" for name in DESELECT]]
            results["tests"] = box.python(args, timeout)
            log(f"tests: {'passed' if results['tests'] == 0 else 'FAILED'} in {time.monotonic() - t:.0f} s")
        if record and results["compare"] == 0:
            shutil.copy(work / "compare/classic_matrix_arm64.npz", CHECKOUT / "tests/data/classic_matrix_arm64.npz")
            log("recorded tests/data/classic_matrix_arm64.npz")
        log(f"aarch64 check {'passed' if not any(results.values()) else 'FAILED'} in {time.monotonic() - t0:.0f} s")
        return 0 if not any(results.values()) else 1
    finally:
        unmount(mounts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="cache folder ($NPVITPOSE_AARCH64_CACHE, ~/.cache/npvitpose-aarch64)")
    parser.add_argument("--rebuild", action="store_true", help="build the root again from nothing")
    parser.add_argument("--tests", nargs="+", default=TESTS, metavar="FILE", help="test files to run inside")
    parser.add_argument("--record", action="store_true",
                        help="save arm64 OpenCV's classic matrices as tests/data/classic_matrix_arm64.npz")
    parser.add_argument("--timeout", type=int, default=1500, help="seconds allowed for each emulated step")
    parser.add_argument("--compare", type=Path, help=argparse.SUPPRESS)  # the arm side, run inside the root
    args = parser.parse_args(argv)
    if args.compare:
        return compare(args.compare)
    if os.geteuid() != 0:
        parser.error("needs root (debootstrap, chroot, mount)")
    cache = args.cache or Path(os.environ.get("NPVITPOSE_AARCH64_CACHE") or Path.home() / ".cache/npvitpose-aarch64")
    cache.mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # unwind through the finally blocks (the mounts), as Ctrl-C does
        signal.signal(sig, signal.default_int_handler)
    try:
        return check(cache, args.rebuild, args.tests, args.timeout, args.record)
    except Failure as e:
        print(f"aarch64_check: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aarch64_check: error: interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
