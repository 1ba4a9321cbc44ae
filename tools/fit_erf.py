"""Fit the odd polynomial erf(x) ~ x * P(x^2) on [0, CUT] used by kernels/mlp.py (float64, NumPy + SciPy's erf),
and (--float32) the two-piece fit of the bf16/int8 epilogues' float32 GELU (kernels/amx.py).

Minimax by Lawson's iteratively reweighted least squares in a Chebyshev basis of u = 2 x^2 / CUT^2 - 1,
then converted to monomials in t = x^2 for Horner evaluation. Beyond CUT the kernel returns exactly +-1, so
the reported error is measured over [0, 8] including that tail (where it is erfc(x) <= erfc(CUT)).
"""

import numpy as np
from scipy.special import erf

DEGREE, CUT = 14, 3.83


def lawson(basis, y, iters=200):
    """Minimax coefficients of `basis` columns for y, by Lawson's iteratively reweighted least squares."""
    w = np.full(len(y), 1.0 / len(y))
    best = (np.inf, None)
    for _ in range(iters):
        sw = np.sqrt(w)
        coef = np.linalg.lstsq(basis * sw[:, None], y * sw, rcond=None)[0]
        err = basis @ coef - y
        if np.abs(err).max() < best[0]:
            best = (np.abs(err).max(), coef)
        w = w * np.abs(err) + 1e-300
        w /= w.sum()
    return best[1]


# float32: |x| < MID32: x * P1(x^2); MID32 <= |x| < CUT32: P2(s), s = (|x| - centre) / half-width in [-1, 1];
# beyond: +-1. One polynomial over [0, CUT] loses everything to cancellation in float32 (x^2 reaches 15).
DEGREES32, MID32, CUT32 = (6, 13), 1.0, 3.92


def fit32(points=100001):
    x = np.linspace(0.0, MID32, points)
    u = 2.0 * x * x / (MID32 * MID32) - 1.0
    c1 = lawson(np.polynomial.chebyshev.chebvander(u, DEGREES32[0]) * x[:, None], erf(x))
    p1 = np.polynomial.Chebyshev(c1).convert(kind=np.polynomial.Polynomial)(
        np.polynomial.Polynomial([-1.0, 2.0 / (MID32 * MID32)])).coef
    x = np.linspace(MID32, CUT32, points)
    s = (x - (CUT32 + MID32) / 2) * (2 / (CUT32 - MID32))
    c2 = lawson(np.polynomial.chebyshev.chebvander(s, DEGREES32[1]), erf(x))
    p2 = np.polynomial.Chebyshev(c2).convert(kind=np.polynomial.Polynomial).coef
    return p1, p2  # lowest order first


def erf32(x, p1, p2):
    """The float32 evaluation the kernel does (Horner, float32 coefficients)."""
    x = np.asarray(x, np.float32)
    a = np.abs(x)
    f = np.float32

    def horner(coef, v):
        p = np.full_like(v, f(coef[-1]))
        for c in coef[-2::-1]:
            p = p * v + f(c)
        return p

    s = (a - f((CUT32 + MID32) / 2)) * f(2 / (CUT32 - MID32))
    y = np.where(a < f(MID32), a * horner(p1, a * a), np.where(a < f(CUT32), horner(p2, s), f(1.0)))
    return np.copysign(y, x)


def fit(degree=DEGREE, cut=CUT, iters=200, points=200001):
    x = np.linspace(0.0, cut, points)
    u = 2.0 * x * x / (cut * cut) - 1.0
    coef = lawson(np.polynomial.chebyshev.chebvander(u, degree) * x[:, None], erf(x), iters)
    in_u = np.polynomial.Chebyshev(coef).convert(kind=np.polynomial.Polynomial)
    in_t = in_u(np.polynomial.Polynomial([-1.0, 2.0 / (cut * cut)]))
    return in_t.coef  # lowest order first


def max_error(coef, cut=CUT):
    x = np.linspace(0.0, 8.0, 4_000_001)
    approx = np.where(x < cut, x * np.polynomial.polynomial.polyval(x * x, coef), 1.0)
    return np.abs(approx - erf(x)).max()


if __name__ == "__main__":
    import sys

    if "--float32" in sys.argv:
        p1, p2 = fit32()
        x = np.linspace(-8.0, 8.0, 4_000_001).astype(np.float32)
        print(f"max |error| over [-8, 8], float32 evaluation: {np.abs(erf32(x, p1, p2) - erf(x.astype(np.float64))).max():.3e}")
        print("_ERF32_P1 = (" + ", ".join(repr(float(v)) for v in p1) + ")")
        print("_ERF32_P2 = (" + ", ".join(repr(float(v)) for v in p2) + ")")
        sys.exit(0)
    c = fit()
    print(f"max |error| over [0, 8] in float64: {max_error(c):.3e}")
    print("_ERF_P = (" + ", ".join(repr(float(v)) for v in c) + ")")
