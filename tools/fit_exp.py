"""Fit exp(r) on |r| <= ln2/2 as a degree-6 polynomial with minimal max relative error (kernels/attention.py)."""

import numpy as np

DEGREE = 6


def fit(degree=DEGREE, iters=200, points=100001):
    half = np.log(2.0) / 2.0
    r = np.linspace(-half, half, points)
    y = np.exp(r)
    basis = np.vander(r, degree + 1, increasing=True) / y[:, None]  # relative error: P(r) / exp(r) - 1
    w = np.full(points, 1.0 / points)
    best = (np.inf, None)
    for _ in range(iters):
        sw = np.sqrt(w)
        coef = np.linalg.lstsq(basis * sw[:, None], sw, rcond=None)[0]
        err = basis @ coef - 1.0
        if np.abs(err).max() < best[0]:
            best = (np.abs(err).max(), coef)
        w = w * np.abs(err) + 1e-300
        w /= w.sum()
    return best


if __name__ == "__main__":
    e, c = fit()
    print(f"max relative error in float64: {e:.3e}")
    print("_EXP_P = (" + ", ".join(repr(float(v)) for v in c) + ")")
