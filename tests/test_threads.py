"""One loaded model shared by several Python threads gives bit-identical results to sequential calls."""

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
