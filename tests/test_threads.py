"""One loaded model shared by several Python threads gives bit-identical results to sequential calls."""

import os
import threading

import numpy as np

from npvitpose.model import Config, load, random_weights, save_npz
from test_cli import synthetic_image, tiny_meta

TINY = Config(dim=64, depth=1, heads=2, mlp_hidden=128, num_keypoints=17, head="classic", ln_eps=1e-6)


def test_shared_model_across_threads(tmp_path):
    path = tmp_path / "tiny.npz"
    save_npz(str(path), random_weights(TINY, seed=4), tiny_meta(TINY))
    model = load(str(path))
    jobs = []
    for i in range(8):
        rng = np.random.default_rng(i)
        boxes = np.hstack([rng.uniform(0, 200, (3, 2)), rng.uniform(20, 120, (3, 2))])
        jobs.append((synthetic_image(seed=i), boxes))
    expected = [model(image, boxes) for image, boxes in jobs]

    got = [None] * len(jobs)
    errors = []
    barrier = threading.Barrier(4)

    def worker(t):
        try:
            barrier.wait(timeout=30)
            for j in range(t, len(jobs), 4):
                got[j] = model(*jobs[j])
        except BaseException as e:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)
    for (kp_e, sc_e), (kp_g, sc_g) in zip(expected, got):
        assert kp_g.dtype == np.float32 and kp_g.shape == (3, 17, 2)
        np.testing.assert_array_equal(kp_g, kp_e)
        np.testing.assert_array_equal(sc_g, sc_e)


def _tree(tmp_path, cgroup_line, files):
    """A fake /sys/fs/cgroup holding `files` {relative path: text} and a /proc/self/cgroup of one line."""
    root = tmp_path / "cgroup"
    root.mkdir(parents=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc-cgroup"
    proc.write_text(cgroup_line + "\n")
    return str(root), str(proc)


def test_cpu_quota_of_cgroup_v2_v1_and_parents(tmp_path):
    from npvitpose.threads import cpu_quota

    # v2 (docker --cpus 1.5 under a systemd slice without a limit)
    root, proc = _tree(tmp_path / "a", "0::/user.slice/app", {"user.slice/cpu.max": "max 100000\n",
                                                              "user.slice/app/cpu.max": "150000 100000\n"})
    assert cpu_quota(root, proc) == 1.5
    # v1: the parent's half a CPU is the tighter limit
    root, proc = _tree(tmp_path / "b", "4:cpu,cpuacct:/docker/abc", {
        "cpu,cpuacct/docker/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/docker/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"})
    assert cpu_quota(root, proc) == 0.5
    # a container's namespace: its own group is the mount itself ("0::/")
    root, proc = _tree(tmp_path / "c", "0::/", {"cpu.max": "200000 100000\n"})
    assert cpu_quota(root, proc) == 2.0
    # no limit, no files, garbage: no quota
    for i, files in enumerate(({"cpu.max": "max 100000\n"}, {}, {"cpu.max": "lots\n"}, {"cpu.max": "0 100000\n"})):
        root, proc = _tree(tmp_path / f"none{i}", "0::/", files)
        assert cpu_quota(root, proc) is None
    assert cpu_quota(str(tmp_path), str(tmp_path / "no-such-file")) is None


def test_default_threads_follow_the_quota(monkeypatch):
    import numba

    import npvitpose.threads as T

    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setattr(T, "cpu_quota", lambda: 0.5)
    assert T.available_cpus() == 1
    monkeypatch.setattr(T, "cpu_quota", lambda: 1.2)  # a fraction of a CPU more still gets a thread
    assert T.available_cpus() == min(cpus, 2)
    monkeypatch.setattr(T, "cpu_quota", lambda: None)
    assert T.available_cpus() == cpus
    before = T._threads
    monkeypatch.setattr(T, "available_cpus", lambda: 1)
    try:
        T._default()
        assert T.get_threads() == 1  # given to the pools at the first forward: importing starts none
        T.apply()
        assert numba.get_num_threads() == 1 and not T._pending
    finally:
        T.set_threads(numba.config.NUMBA_NUM_THREADS if before is None else before)
        T._threads = before
