"""Fit the odd polynomial erf(x) ~ x * P(x^2) on [0, CUT] used by kernels/mlp.py (float64, NumPy + SciPy's erf).

Minimax by Lawson's iteratively reweighted least squares in a Chebyshev basis of u = 2 x^2 / CUT^2 - 1,
then converted to monomials in t = x^2 for Horner evaluation. Beyond CUT the kernel returns exactly +-1, so
the reported error is measured over [0, 8] including that tail (where it is erfc(x) <= erfc(CUT)).
"""

import numpy as np
from scipy.special import erf

DEGREE, CUT = 14, 3.83


def fit(degree=DEGREE, cut=CUT, iters=200, points=200001):
    x = np.linspace(0.0, cut, points)
    u = 2.0 * x * x / (cut * cut) - 1.0
    basis = np.polynomial.chebyshev.chebvander(u, degree) * x[:, None]
    y = erf(x)
    w = np.full(points, 1.0 / points)
    best = (np.inf, None)
    for _ in range(iters):
        sw = np.sqrt(w)
        coef = np.linalg.lstsq(basis * sw[:, None], y * sw, rcond=None)[0]
        err = basis @ coef - y
        if np.abs(err).max() < best[0]:
            best = (np.abs(err).max(), coef)
        w = w * np.abs(err) + 1e-300
        w /= w.sum()
    in_u = np.polynomial.Chebyshev(best[1]).convert(kind=np.polynomial.Polynomial)
    in_t = in_u(np.polynomial.Polynomial([-1.0, 2.0 / (cut * cut)]))
    return in_t.coef  # lowest order first


def max_error(coef, cut=CUT):
    x = np.linspace(0.0, 8.0, 4_000_001)
    approx = np.where(x < cut, x * np.polynomial.polynomial.polyval(x * x, coef), 1.0)
    return np.abs(approx - erf(x)).max()


if __name__ == "__main__":
    c = fit()
    print(f"max |error| over [0, 8] in float64: {max_error(c):.3e}")
    print("_ERF_P = (" + ", ".join(repr(float(v)) for v in c) + ")")
