"""kernels/warp.py: bit-identity with recorded OpenCV 4.x output, with the NumPy twin, and the fused normalization."""

from pathlib import Path

import numpy as np
import pytest

import twins_pipeline as twins
from npvitpose.kernels.warp import NORMALIZE_LUT, warp_affine_u8, warp_normalize

FIXTURE = Path(__file__).parent / "data" / "warp_cv4.npz"


@pytest.fixture(scope="module")
def cv4():
    f = np.load(FIXTURE)
    images = [
        f["img_data"][f["img_off"][i] : f["img_off"][i + 1]].reshape(f["img_shape"][i])
        for i in range(len(f["img_shape"]))
    ]
    cases = []
    for k in range(len(f["case_img"])):
        w, h = (int(v) for v in f["case_dsize"][k])
        out = f["out_data"][f["out_off"][k] : f["out_off"][k + 1]].reshape(h, w, 3)
        cases.append((images[f["case_img"][k]], f["case_m"][k], (w, h), out))
    return {"version": str(f["version"]), "cases": cases}


def test_fixture_was_recorded_with_opencv4(cv4):
    assert cv4["version"].startswith("4.")
    assert len(cv4["cases"]) >= 200


def test_warp_affine_u8_is_bit_identical_to_opencv4(cv4):
    mismatches = []
    for i, (img, m, dsize, ref) in enumerate(cv4["cases"]):
        got = warp_affine_u8(img, m, dsize)
        if not np.array_equal(got, ref):
            mismatches.append((i, int(np.abs(got.astype(int) - ref).max())))
    assert not mismatches, f"(case, max grey-level difference): {mismatches[:10]}"


def test_fixture_is_not_trivial(cv4):
    # the recorded outputs exercise real content: mostly non-zero, many with border blending
    outs = [ref for *_, ref in cv4["cases"]]
    assert sum(o.any() for o in outs) > 0.8 * len(outs)
    assert sum((o == 0).any() and o.any() for o in outs) > 20


def test_twin_matches_opencv4(cv4):
    # the NumPy twin is itself checked against OpenCV 4 on a subset, so the random tests below mean something
    for img, m, dsize, ref in cv4["cases"][::7]:
        assert np.array_equal(twins.warp_affine_u8(img, m, dsize), ref)


@pytest.mark.parametrize("channels", [None, 1, 3, 4])
def test_warp_affine_u8_matches_twin_on_random_cases(channels):
    rng = np.random.default_rng(channels or 0)
    for _ in range(25):
        h, w = rng.integers(1, 30, 2)
        shape = (h, w) if channels is None else (h, w, channels)
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        m = np.hstack([rng.normal(0, 2, (2, 2)), rng.normal(0, 20, (2, 1))])
        dsize = tuple(int(v) for v in rng.integers(1, 25, 2))
        got = warp_affine_u8(img, m, dsize)
        assert got.shape == (dsize[1], dsize[0]) + shape[2:]
        assert np.array_equal(got, twins.warp_affine_u8(img, m, dsize))


def test_warp_normalize_equals_normalized_opencv4_crops(cv4):
    # the full-size (192 x 256) photo crops of the fixture, with the UDP and classic box matrices
    full = [(img, m, ref) for img, m, dsize, ref in cv4["cases"] if dsize == (192, 256)]
    assert len(full) >= 6
    img = full[0][0]
    matrices = np.stack([m for _, m, _ in full])
    out = warp_normalize(img, matrices, np.empty((2 * len(full), 3, 256, 192), np.float32), flip=True)
    for i, (_, _, ref) in enumerate(full):
        expected = twins.normalize(ref)
        assert np.array_equal(out[i], expected)
        assert np.array_equal(out[len(full) + i], expected[:, :, ::-1])


def test_warp_normalize_without_flip_matches_twin():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    matrices = np.stack([np.hstack([np.diag(rng.uniform(2, 9, 2)), rng.normal(-40, 40, (2, 1))]) for _ in range(3)])
    out = warp_normalize(img, matrices.astype(np.float32), np.full((3, 3, 40, 24), np.nan, np.float32))
    for i in range(3):
        crop = twins.warp_affine_u8(img, matrices[i].astype(np.float32), (24, 40))
        assert np.array_equal(out[i], twins.normalize(crop))


def test_normalization_matches_torch():
    torch = pytest.importorskip("torch")
    levels = torch.arange(256, dtype=torch.uint8).float().div(255)  # to_tensor
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float32)[:, None]
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float32)[:, None]
    assert np.array_equal(NORMALIZE_LUT, ((levels[None, :] - mean) / std).numpy())


def test_wrappers_reject_bad_arrays():
    img = np.zeros((10, 10, 3), np.uint8)
    m = np.eye(2, 3)
    with pytest.raises(ValueError, match="uint8"):
        warp_affine_u8(img.astype(np.float32), m, (5, 5))
    with pytest.raises(ValueError, match="contiguous"):
        warp_affine_u8(img[:, ::2], m, (5, 5))
    with pytest.raises(ValueError, match="finite"):
        warp_affine_u8(img, np.full((2, 3), np.nan), (5, 5))
    with pytest.raises(ValueError, match="float32"):
        warp_normalize(img, m[None], np.zeros((1, 3, 8, 6)))
    with pytest.raises(ValueError, match="shape"):
        warp_normalize(img, m[None], np.zeros((1, 3, 8, 6), np.float32), flip=True)
