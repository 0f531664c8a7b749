"""Portfolio allocation against closed forms and the HRP recursion worked by hand; allocation weights from
predictions by hand and free of look-ahead."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryptopredict.evaluation.portfolio import (PortfolioConfig, allocation_weights, hrp_weights,
                                                 inverse_variance_weights, mean_variance_weights)
from cryptopredict.evaluation.risk import RiskConfig
from tests.support.lookahead import assert_no_lookahead


def _cov(seed: int, n: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(400, n)) @ np.diag(np.linspace(0.5, 2.0, n))
    return np.cov(a, rowvar=False)


def test_hrp_of_uncorrelated_assets_is_inverse_variance() -> None:
    cov = np.diag([0.01, 0.04, 0.09, 0.16])
    assert hrp_weights(cov) == pytest.approx(inverse_variance_weights(cov), rel=1e-12)


def test_hrp_two_blocks_by_hand() -> None:
    # two highly correlated pairs, uncorrelated across: the split is {0,1} | {2,3}
    v = np.array([0.01, 0.01, 0.04, 0.04])
    corr = np.array([[1, .9, 0, 0], [.9, 1, 0, 0], [0, 0, 1, .9], [0, 0, .9, 1]])
    cov = corr * np.sqrt(np.outer(v, v))
    w = hrp_weights(cov)
    var_a = 0.25 * (0.01 + 0.01 + 2 * 0.9 * 0.01)  # equal-variance pair: IVP = (1/2, 1/2)
    var_b = 0.25 * (0.04 + 0.04 + 2 * 0.9 * 0.04)
    alpha = 1 - var_a / (var_a + var_b)
    assert w == pytest.approx([alpha / 2, alpha / 2, (1 - alpha) / 2, (1 - alpha) / 2], rel=1e-12)
    assert w.sum() == pytest.approx(1.0) and (w > 0).all()


def test_mean_variance_matches_the_closed_form_when_bounds_do_not_bind() -> None:
    cov = _cov(1, 5)
    mu = np.array([0.01, 0.02, 0.015, 0.005, 0.012])
    gamma = 50.0
    inv = np.linalg.inv(cov)
    ones = np.ones(5)
    lam = (ones @ inv @ mu - gamma) / (ones @ inv @ ones)
    closed = inv @ (mu - lam * ones) / gamma
    w = mean_variance_weights(mu, cov, risk_aversion=gamma, lower=-5, upper=5)
    assert w == pytest.approx(closed, abs=1e-6)


def test_mean_variance_respects_long_only_caps() -> None:
    cov = _cov(2, 6)
    mu = np.array([0.05, 0, 0, 0, 0, 0.0])  # one asset looks far better
    w = mean_variance_weights(mu, cov, risk_aversion=1.0, lower=0.0, upper=0.3)
    assert w.max() <= 0.3 + 1e-9 and w.min() >= -1e-9 and w.sum() == pytest.approx(1.0)
    assert w[0] == pytest.approx(0.3, abs=1e-6)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="square"):
        hrp_weights(np.ones((2, 3)))
    with pytest.raises(ValueError, match="cannot hold"):
        mean_variance_weights(np.zeros(4), np.eye(4), upper=0.2)
    with pytest.raises(ValueError, match="positive variances"):
        hrp_weights(np.array([[0.0, 0.0], [0.0, 1.0]]))


def test_mean_variance_with_cash_is_unconstrained_kelly_when_the_budget_is_slack() -> None:
    cov = np.diag([0.04, 0.09])
    w = mean_variance_weights(np.array([0.02, -0.01]), cov, risk_aversion=2.0, budget=0.8, invest_all=False)
    assert w == pytest.approx([0.02 / (2.0 * 0.04), 0.0], abs=1e-7)  # Σ⁻¹μ/γ, the short leg bound at 0


# allocation_weights: a model's predictions + closes → target weights on a rebalancing schedule

RISK = RiskConfig(horizon=4, gross_cap=0.5, max_position=1.0)
WALSH = np.array([[1, 1, 1], [-1, 1, -1], [1, -1, -1], [-1, -1, 1]], dtype=float)  # orthogonal, mean 0
SIGMA = np.array([0.01, 0.02, 0.03])  # per-bar return scale of A, B, C


def _predictions(index: pd.DatetimeIndex, symbols: list[str], d: np.ndarray, log_vol: float = np.log(0.02),
                 log_vol_var: float = 0.0) -> pd.DataFrame:
    """Rows (symbol, timestamp) with P(BUY) − P(SELL) = d[t, i] (P(HOLD) 0.2) and one predicted vol."""
    rows = pd.MultiIndex.from_product([symbols, index], names=["symbol", "timestamp"])
    d = np.asarray(d, dtype=float).T.ravel()
    return pd.DataFrame({"p_sell": (0.8 - d) / 2, "p_hold": 0.2, "p_buy": (0.8 + d) / 2, "log_vol": log_vol,
                         "log_vol_var": log_vol_var}, index=rows)


def _walsh_market() -> tuple[pd.DataFrame, pd.DatetimeIndex]:
    """24 hourly closes of A, B, C whose log returns repeat WALSH × SIGMA: over any 8 consecutive bars the
    sample covariance is exactly diag(SIGMA²) · 8/7. D lists at bar 20. Predictions from bar 16."""
    index = pd.date_range("2024-01-01", periods=24, freq="h", tz="UTC")
    returns = WALSH[np.arange(24) % 4] * SIGMA
    returns[0] = 0.0
    close = pd.DataFrame(100 * np.exp(np.cumsum(returns, axis=0)), index=index, columns=["A", "B", "C"])
    close["D"] = np.where(np.arange(24) >= 20, 5.0, np.nan)
    return close, index[16:]


def test_hrp_allocation_by_hand() -> None:
    close, decisions = _walsh_market()
    d = np.tile([0.3, 0.5, -0.2, 0.9], (len(decisions), 1))  # A, B up, C down; D up but not listed at 16
    d[4:, 2] = 0.1  # from bar 20, C up too
    cfg = PortfolioConfig(cov_window_bars=8, min_history_bars=8, rebalance_bars=4)
    w = allocation_weights(_predictions(decisions, ["A", "B", "C", "D"], d), close, "hrp", cfg, RISK)
    assert w.index.equals(close.index) and list(w.columns) == ["A", "B", "C", "D"]
    rebalance = [close.index[16], close.index[20]]
    assert w.drop(rebalance).isna().all().all()  # units held between rebalances
    # uncorrelated: HRP = inverse variance, 1/σ² ∝ (10000, 2500) → (0.8, 0.2), times the gross cap 0.5
    assert w.loc[rebalance[0]].to_numpy() == pytest.approx([0.4, 0.1, 0.0, 0.0], abs=1e-12)
    inv = 1 / SIGMA**2
    assert w.loc[rebalance[1]].to_numpy() == pytest.approx([*(0.5 * inv / inv.sum()), 0.0], abs=1e-12)


def test_mean_variance_allocation_by_hand() -> None:
    close, decisions = _walsh_market()
    d = np.tile([0.3, 0.5, -0.2, 0.9], (len(decisions), 1))
    cfg = PortfolioConfig(cov_window_bars=8, min_history_bars=8, rebalance_bars=4, risk_aversion=50.0)
    predictions = _predictions(decisions, ["A", "B", "C", "D"], d)
    w = allocation_weights(predictions, close, "mean_variance", cfg, RISK)
    # μ = d · √(2/π) · σ_h (σ_h = 0.02); diagonal horizon covariance h · σ² · 8/7; slack budget (Σw < 0.5):
    # w = μ / (γ · h · σ² · 8/7) for μ > 0, and C (μ < 0) at the long-only bound 0
    mu = np.array([0.3, 0.5]) * np.sqrt(2 / np.pi) * 0.02
    expected = mu / (50.0 * 4 * SIGMA[:2] ** 2 * 8 / 7)
    assert expected.sum() < 0.5
    assert w.loc[close.index[16]].to_numpy() == pytest.approx([*expected, 0.0, 0.0], abs=1e-6)


def _random_case(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    index = pd.date_range("2024-01-01", periods=300, freq="h", tz="UTC")
    symbols = ["A", "B", "C", "D"]
    close = pd.DataFrame(100 * np.exp(np.cumsum(rng.normal(0, 0.01, (300, 4)), axis=0)), index=index,
                         columns=symbols)
    close.iloc[:150, 3] = np.nan  # D lists at bar 150
    predictions = _predictions(index[100:], symbols, rng.uniform(-0.6, 0.6, (200, 4)),
                               log_vol=np.log(0.02) + rng.normal(0, 0.2, 800))
    listed = close.stack().index.swaplevel().sort_values()
    return close, predictions[predictions.index.isin(listed)]


@pytest.mark.parametrize("method", ["hrp", "mean_variance"])
def test_weights_at_t_use_nothing_after_t(method: str) -> None:
    """Row t from inputs truncated at t equals row t of the full run, at every rebalance; and changing
    every later price and prediction leaves rows ≤ t as they were."""
    close, predictions = _random_case(3)
    cfg = PortfolioConfig(cov_window_bars=48, min_history_bars=24, rebalance_bars=12, risk_aversion=5.0)
    ts = predictions.index.get_level_values("timestamp")

    def compute(t_end: pd.Timestamp) -> pd.DataFrame:
        return allocation_weights(predictions[ts <= t_end], close.loc[:t_end], method, cfg, RISK)

    full = compute(close.index[-1])
    cuts = [t for t in full.index if full.loc[t].notna().all()]
    assert len(cuts) == 17 and (full.loc[cuts].sum(axis=1) <= RISK.gross_cap + 1e-12).all()
    assert (full.loc[cuts[5:]] > 0).sum().min() > 0  # every coin is held at some rebalance
    assert_no_lookahead(compute, pd.Series(close.index), cuts, rtol=0, atol=1e-12)

    t = cuts[8]
    later = close.index > t
    shocked = close.copy()
    shocked.loc[later] *= np.random.default_rng(4).uniform(0.5, 2.0, (int(later.sum()), 4))
    flipped = predictions.copy()
    flipped.loc[ts > t, ["p_sell", "p_buy"]] = flipped.loc[ts > t, ["p_buy", "p_sell"]].to_numpy()
    again = allocation_weights(flipped, shocked, method, cfg, RISK)
    pd.testing.assert_frame_equal(again.loc[:t], full.loc[:t])
    assert not again.loc[later].fillna(0).equals(full.loc[later].fillna(0))
