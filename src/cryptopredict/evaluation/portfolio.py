"""Allocation across coins from predicted returns and covariances: hierarchical risk parity and constrained
mean-variance. Written here rather than taken from PyPortfolioOpt/riskfolio-lib, which pull in cvxpy and
its solvers for two small problems that scipy solves directly; both are tested against closed forms.

The optimisers take inputs as of one decision time: ``cov`` (N × N) estimated from returns up to that time
only, ``mu`` (N,) predicted returns over the holding horizon. ``allocation_weights`` applies them to a
model's out-of-sample predictions on a rebalancing schedule and returns target weights for the backtester.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.optimize import minimize
from scipy.spatial.distance import squareform

from cryptopredict.evaluation.risk import RiskConfig, expected_return_from_proba, horizon_variance

AllocationMethod = Literal["hrp", "mean_variance"]


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
                          upper: float = 1.0, budget: float = 1.0, invest_all: bool = True) -> np.ndarray:
    """argmax μ'w − (γ/2) w'Σw subject to Σw = ``budget`` (Σw ≤ ``budget`` with ``invest_all=False``: the
    rest stays in cash) and ``lower`` ≤ w_i ≤ ``upper`` (SLSQP from the inverse-variance portfolio). Without
    binding bounds this is w = Σ⁻¹(μ − λ1)/γ with λ setting Σw = budget (λ = 0 when the budget is slack)."""
    cov = _check_cov(cov)
    mu = np.asarray(mu, dtype=float)
    n = cov.shape[0]
    if mu.shape != (n,):
        raise ValueError(f"mu must have shape ({n},), got {mu.shape}")
    if risk_aversion <= 0:
        raise ValueError("risk_aversion must be > 0")
    if lower * n > budget + 1e-12 or (invest_all and upper * n < budget - 1e-12) or lower > upper:
        raise ValueError(f"bounds [{lower}, {upper}] cannot hold {n} weights that sum to {budget}")

    def objective(w: np.ndarray) -> float:
        return float(-(mu @ w) + 0.5 * risk_aversion * (w @ cov @ w))

    def gradient(w: np.ndarray) -> np.ndarray:
        return -mu + risk_aversion * (cov @ w)

    start = np.clip(inverse_variance_weights(cov) * budget, lower, upper)
    if invest_all:
        start = start * budget / start.sum()
    constraint = ({"type": "eq", "fun": lambda w: w.sum() - budget, "jac": lambda w: np.ones(n)} if invest_all
                  else {"type": "ineq", "fun": lambda w: budget - w.sum(), "jac": lambda w: -np.ones(n)})
    res = minimize(objective, start, jac=gradient, method="SLSQP", bounds=[(lower, upper)] * n,
                   constraints=[constraint], options={"ftol": 1e-12, "maxiter": 500})
    if not res.success:
        raise RuntimeError(f"mean-variance optimisation failed: {res.message}")
    return np.asarray(res.x)


class PortfolioConfig(BaseModel):
    """Allocations evaluated next to the models (``evaluation.portfolio``); see ``allocation_weights``."""

    model_config = ConfigDict(extra="forbid")

    methods: list[AllocationMethod] = Field(default_factory=lambda: ["hrp", "mean_variance"],
                                            description="empty: no allocations")
    models: list[str] | None = Field(None, description="models whose predictions are allocated (null: the "
                                     "best model by net Sharpe)")
    cov_window_bars: int = Field(720, ge=2, description="trailing bars of log returns in the covariance")
    min_history_bars: int = Field(168, ge=2, description="returns a coin needs in the window to be held")
    rebalance_bars: int = Field(24, ge=1, description="bars between rebalances; units are held in between")
    risk_aversion: float = Field(2.0, gt=0, description="mean-variance γ (1 = full Kelly, 2 = half Kelly)")

    @model_validator(mode="after")
    def _history_fits(self) -> PortfolioConfig:
        if self.min_history_bars > self.cov_window_bars:
            raise ValueError(f"min_history_bars ({self.min_history_bars}) exceeds cov_window_bars "
                             f"({self.cov_window_bars})")
        return self


def allocation_weights(predictions: pd.DataFrame, close: pd.DataFrame, method: AllocationMethod,
                       config: PortfolioConfig, risk: RiskConfig) -> pd.DataFrame:
    """Target weights (``close``'s timestamps × symbols) allocating across coins from a model's predictions.

    ``predictions``: rows (symbol, timestamp) with p_sell, p_hold, p_buy, log_vol, log_vol_var, as
    ``Predictions``. ``close``: bar closes from at least ``cov_window_bars`` before the first prediction.
    Every ``rebalance_bars``-th bar from the first prediction on, at its close t: the covariance of 1-bar log
    returns over the last ``cov_window_bars`` bars up to close[t] (a gap's move lands on the bar after it)
    among the coins with a close at t, a prediction at t and ≥ ``min_history_bars`` returns in the window
    (the others get 0). ``hrp``: HRP weights among the coins with P(BUY) > P(SELL), flat when there are
    none. ``mean_variance``: long-only mean-variance with μ the risk manager's expected horizon return,
    (P(BUY) − P(SELL)) · move_per_sigma · σ_h, and the horizon covariance h · Σ; cash takes what the optimum
    leaves. Weights sum to at most ``risk.gross_cap`` (1 when None), each at most ``risk.max_position``.
    Rows between rebalances are NaN: the backtester keeps the units (no drift re-trading)."""
    wide = predictions[["p_sell", "p_hold", "p_buy", "log_vol", "log_vol_var"]].unstack("symbol")
    wide = wide.reindex(index=close.index)

    def grid(column: str) -> np.ndarray:
        return wide[column].reindex(columns=close.columns).to_numpy(float)

    proba = np.stack([grid("p_sell"), grid("p_hold"), grid("p_buy")], axis=-1)
    sigma_h = np.sqrt(horizon_variance(grid("log_vol"), grid("log_vol_var")))
    mu = expected_return_from_proba(proba, sigma_h, risk.move_per_sigma)
    listed = close.notna().to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        log_returns = np.diff(np.log(close.ffill().to_numpy(float)), axis=0, prepend=np.nan)
    budget = 1.0 if risk.gross_cap is None else risk.gross_cap
    first = int(close.index.searchsorted(predictions.index.get_level_values("timestamp").min()))
    out = np.full(close.shape, np.nan)
    for t in range(first, len(close), config.rebalance_bars):
        window = log_returns[max(0, t - config.cov_window_bars + 1): t + 1]
        held = listed[t] & np.isfinite(mu[t]) & (np.isfinite(window).sum(axis=0) >= config.min_history_bars)
        if method == "hrp":
            held &= mu[t] > 0
        idx = np.flatnonzero(held)
        out[t] = 0.0
        if idx.size == 0:
            continue
        rows = window[:, idx]
        cov = np.atleast_2d(np.cov(rows[np.isfinite(rows).all(axis=1)], rowvar=False))
        if method == "hrp":
            w = hrp_weights(cov) * budget
        else:
            w = mean_variance_weights(mu[t, idx], cov * risk.horizon, config.risk_aversion, 0.0,
                                      risk.max_position, budget, invest_all=False)
        w = np.clip(w, 0.0, risk.max_position)  # also the solver's tolerance-sized excursions
        out[t, idx] = w * min(1.0, budget / w.sum()) if w.sum() > 0 else w
    return pd.DataFrame(out, index=close.index, columns=close.columns)
