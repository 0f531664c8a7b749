"""Allocation across coins from predicted returns and covariances: hierarchical risk parity and constrained
mean-variance. Written here rather than taken from PyPortfolioOpt/riskfolio-lib, which pull in cvxpy and
its solvers for two small problems that scipy solves directly; both are tested against closed forms.

Inputs are as of one decision time: ``cov`` (N × N) estimated from returns up to that time only, ``mu``
(N,) predicted returns over the holding horizon. Weights sum to 1 (fully invested, long only by default).
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.optimize import minimize
from scipy.spatial.distance import squareform


def _check_cov(cov: np.ndarray) -> np.ndarray:
    cov = np.asarray(cov, dtype=float)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"covariance must be square, got shape {cov.shape}")
    if not np.allclose(cov, cov.T, atol=1e-12) or np.any(np.diag(cov) <= 0):
        raise ValueError("covariance must be symmetric with positive variances")
    return cov


def inverse_variance_weights(cov: np.ndarray) -> np.ndarray:
    ivp = 1.0 / np.diag(_check_cov(cov))
    return ivp / ivp.sum()


def hrp_weights(cov: np.ndarray) -> np.ndarray:
    """Hierarchical risk parity (López de Prado 2016, "Building diversified portfolios that outperform out of
    sample", J. Portfolio Management 42(4)): single-linkage tree on d_ij = √((1 − ρ_ij)/2), assets ordered by
    the tree's leaves, then recursive bisection: each half gets 1 − V_half/(V_left + V_right) of its parent's
    weight, with V the variance of the half's inverse-variance portfolio. Long only, sums to 1."""
    cov = _check_cov(cov)
    n = cov.shape[0]
    if n == 1:
        return np.ones(1)
    sd = np.sqrt(np.diag(cov))
    corr = np.clip(cov / np.outer(sd, sd), -1.0, 1.0)
    dist = np.sqrt(np.clip((1.0 - corr) / 2.0, 0.0, None))
    np.fill_diagonal(dist, 0.0)
    order = list(leaves_list(linkage(squareform(dist, checks=False), method="single")))
    w = np.ones(n)
    clusters = [order]
    while clusters:
        clusters = [c[j:k] for c in clusters for j, k in ((0, len(c) // 2), (len(c) // 2, len(c))) if len(c) > 1]
        for left, right in zip(clusters[::2], clusters[1::2]):
            v_left, v_right = _cluster_var(cov, left), _cluster_var(cov, right)
            alpha = 1.0 - v_left / (v_left + v_right)
            w[left] *= alpha
            w[right] *= 1.0 - alpha
    return w / w.sum()


def _cluster_var(cov: np.ndarray, idx: list[int]) -> float:
    sub = cov[np.ix_(idx, idx)]
    ivp = inverse_variance_weights(sub)
    return float(ivp @ sub @ ivp)


def mean_variance_weights(mu: np.ndarray, cov: np.ndarray, risk_aversion: float = 1.0, lower: float = 0.0,
                          upper: float = 1.0) -> np.ndarray:
    """argmax μ'w − (γ/2) w'Σw subject to Σw = 1 and ``lower`` ≤ w_i ≤ ``upper`` (SLSQP from the
    inverse-variance portfolio). Without binding bounds this is w = Σ⁻¹(μ − λ1)/γ with λ setting Σw = 1."""
    cov = _check_cov(cov)
    mu = np.asarray(mu, dtype=float)
    n = cov.shape[0]
    if mu.shape != (n,):
        raise ValueError(f"mu must have shape ({n},), got {mu.shape}")
    if risk_aversion <= 0:
        raise ValueError("risk_aversion must be > 0")
    if lower * n > 1 + 1e-12 or upper * n < 1 - 1e-12 or lower > upper:
        raise ValueError(f"bounds [{lower}, {upper}] cannot hold {n} weights that sum to 1")

    def objective(w: np.ndarray) -> float:
        return float(-(mu @ w) + 0.5 * risk_aversion * (w @ cov @ w))

    def gradient(w: np.ndarray) -> np.ndarray:
        return -mu + risk_aversion * (cov @ w)

    start = np.clip(inverse_variance_weights(cov), lower, upper)
    start = start / start.sum()
    res = minimize(objective, start, jac=gradient, method="SLSQP", bounds=[(lower, upper)] * n,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(n)}],
                   options={"ftol": 1e-12, "maxiter": 500})
    if not res.success:
        raise RuntimeError(f"mean-variance optimisation failed: {res.message}")
    return np.asarray(res.x)
