"""Every metric against an independent reference: scikit-learn, scipy, or a hand computation on tiny arrays."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from cryptopredict.evaluation import metrics as m

H = pd.Timedelta("1h")


def _classification_data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    proba = rng.dirichlet([1.0, 1.0, 1.0], size=n)
    y = np.array([rng.choice(3, p=p) for p in proba], dtype=float)  # labels informed by proba
    y[rng.choice(n, 25, replace=False)] = np.nan  # unknown labels are dropped
    return y, proba


# ------------------------------------------------------------------------------------ classification


def test_classification_metrics_match_sklearn() -> None:
    y, proba = _classification_data()
    pred = proba.argmax(axis=1)
    keep = np.isfinite(y)
    yk, pk, prk = y[keep].astype(int), pred[keep], proba[keep]
    assert m.accuracy(y, pred) == pytest.approx(skm.accuracy_score(yk, pk), abs=1e-12)
    assert m.balanced_accuracy(y, pred) == pytest.approx(skm.balanced_accuracy_score(yk, pk), abs=1e-12)
    assert m.log_loss(y, proba) == pytest.approx(skm.log_loss(yk, y_proba=prk, labels=[0, 1, 2]), rel=1e-10)
    assert m.brier_score(y, proba) == pytest.approx(
        skm.brier_score_loss(yk, y_proba=prk, labels=[0, 1, 2], scale_by_half=False), rel=1e-10)
    table = m.precision_recall_f1(y, pred)
    p, r, f, s = skm.precision_recall_fscore_support(yk, pk, labels=[0, 1, 2], zero_division=np.nan)
    np.testing.assert_allclose(table["precision"], p, rtol=1e-12)
    np.testing.assert_allclose(table["recall"], r, rtol=1e-12)
    np.testing.assert_allclose(table["f1"], f, rtol=1e-12)
    np.testing.assert_array_equal(table["support"], s)
    assert list(table.index) == ["SELL", "HOLD", "BUY"]
    np.testing.assert_array_equal(m.confusion_matrix(y, pred), skm.confusion_matrix(yk, pk, labels=[0, 1, 2]))


def test_undefined_precision_is_nan_like_sklearn_zero_division_nan() -> None:
    y = np.array([0, 0, 1, 2, 2, 1])
    pred = np.array([0, 2, 2, 2, 0, 2])  # HOLD never predicted
    table = m.precision_recall_f1(y, pred)
    assert math.isnan(table.loc["HOLD", "precision"]) and table.loc["HOLD", "recall"] == 0.0
    p, r, _, _ = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=np.nan)
    np.testing.assert_allclose(table["precision"], p, equal_nan=True)
    # a constant predictor scores 1/k balanced accuracy, whatever the class shares
    assert m.balanced_accuracy(y, np.zeros(6)) == pytest.approx(1 / 3)
    assert m.balanced_accuracy(y, np.zeros(6)) == pytest.approx(skm.balanced_accuracy_score(y, np.zeros(6)))
    # a class absent from the labels does not enter the mean: (1/2 + 1) / 2
    assert m.balanced_accuracy([0, 0, 2, 2], [0, 2, 2, 2]) == pytest.approx(0.75)


def test_log_loss_and_brier_by_hand() -> None:
    y = np.array([0, 2])
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    assert m.log_loss(y, proba) == pytest.approx(-(np.log(0.7) + np.log(0.5)) / 2)
    # (0.3² + 0.2² + 0.1² + 0.2² + 0.3² + 0.5²) / 2
    assert m.brier_score(y, proba) == pytest.approx((0.09 + 0.04 + 0.01 + 0.04 + 0.09 + 0.25) / 2)
    assert m.brier_score([1], [[1 / 3, 1 / 3, 1 / 3]]) == pytest.approx(2 / 3)
    # a certain miss is clipped at machine epsilon, not infinite
    assert m.log_loss([0], [[0.0, 0.0, 1.0]]) == pytest.approx(-np.log(np.finfo(float).eps))
    with pytest.raises(ValueError, match="non-finite"):
        m.log_loss([0, 1], [[np.nan, 0.5, 0.5], [0.2, 0.3, 0.5]])


def test_reliability_table_and_ece_by_hand() -> None:
    conf = np.array([0.35, 0.45, 0.55, 0.95, 0.95, 0.3])
    correct = np.array([0, 1, 1, 1, 0, 1], dtype=bool)
    table = m.reliability_table(conf, correct, n_bins=10)
    assert len(table) == 10 and table["count"].sum() == 6
    # 0.3 belongs to (0.2, 0.3], not (0.3, 0.4] (floating point 0.3·10 > 3)
    np.testing.assert_array_equal(table["count"], [0, 0, 1, 1, 1, 1, 0, 0, 0, 2])
    assert table.loc[9, "accuracy"] == 0.5 and table.loc[9, "mean_confidence"] == pytest.approx(0.95)
    assert math.isnan(table.loc[0, "accuracy"])
    # bins: |1 − 0.3| + |0 − 0.35| + |1 − 0.45| + |1 − 0.55| + 2·|0.5 − 0.95|, over 6 rows
    expected = (0.7 + 0.35 + 0.55 + 0.45 + 2 * 0.45) / 6
    assert m.expected_calibration_error(conf, correct, n_bins=10) == pytest.approx(expected)
    # perfectly calibrated on a bin level → 0
    assert m.expected_calibration_error([0.5, 0.5], [True, False], n_bins=10) == 0.0


def test_accuracy_by_confidence_decile_by_hand() -> None:
    conf = np.linspace(0.4, 0.99, 20)
    correct = np.tile([True, False], 10)
    correct[18:] = True  # the most confident decile is right twice
    table = m.accuracy_by_confidence_decile(conf, correct)
    assert len(table) == 10 and (table["count"] == 2).all()
    assert table["accuracy"].iloc[-1] == 1.0 and (table["accuracy"].iloc[:-1] == 0.5).all()
    assert table["conf_low"].is_monotonic_increasing
    assert table["mean_confidence"].iloc[0] == pytest.approx(conf[:2].mean())
    # a constant confidence is one group, not ten arbitrary ones
    const = m.accuracy_by_confidence_decile(np.full(30, 0.6), np.arange(30) % 3 == 0)
    assert len(const) == 1 and const["accuracy"].iloc[0] == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------- volatility


def test_volatility_mae_qlike_by_hand() -> None:
    rv = np.array([0.02, 0.04, np.nan])
    log_vol = np.log([0.01, 0.05, 0.03])
    assert m.volatility_mae(rv, log_vol) == pytest.approx((0.01 + 0.01) / 2)
    # ratio σ²/h = 2 and 0.5: (2 − ln 2 − 1) and (0.5 − ln 0.5 − 1)
    expected = ((2 - np.log(2) - 1) + (0.5 - np.log(0.5) - 1)) / 2
    assert m.qlike(np.array([2.0, 1.0]), np.array([1.0, 2.0])) == pytest.approx(expected)
    assert m.qlike(np.array([0.3, 0.7]), np.array([0.3, 0.7])) == pytest.approx(0.0, abs=1e-15)
    # under-prediction costs more than over-prediction by the same factor
    assert m.qlike([2.0], [1.0]) > m.qlike([1.0], [2.0])


def test_forecast_variance_is_the_lognormal_second_moment_and_minimises_qlike() -> None:
    mu, s2 = np.array([-3.0, -4.0]), np.array([0.2, 0.05])
    ref = [sps.lognorm(s=np.sqrt(v), scale=np.exp(u)).moment(2) for u, v in zip(mu, s2, strict=True)]
    np.testing.assert_allclose(m.forecast_variance(mu, s2), ref, rtol=1e-12)
    rng = np.random.default_rng(3)
    n = 50_000
    log_rv = rng.normal(-3.0, np.sqrt(0.3), n)
    rv2 = np.exp(log_rv) ** 2
    mean_forecast = m.forecast_variance(np.full(n, -3.0), np.full(n, 0.3))
    median_forecast = np.exp(2 * np.full(n, -3.0))
    assert m.qlike(rv2, mean_forecast) < m.qlike(rv2, median_forecast)


def test_interval_coverage_is_nominal_when_the_forecast_is_right() -> None:
    rng = np.random.default_rng(1)
    n = 40_000
    mu = rng.normal(-4, 0.5, n)
    s2 = rng.uniform(0.05, 0.5, n)
    rv = np.exp(rng.normal(mu, np.sqrt(s2)))
    assert m.interval_coverage(rv, mu, s2, 0.5) == pytest.approx(0.5, abs=0.01)
    assert m.interval_coverage(rv, mu, s2, 0.9) == pytest.approx(0.9, abs=0.01)
    # over-confident (variance 4x too small) under-covers
    assert m.interval_coverage(rv, mu, s2 / 4, 0.9) < 0.7
    # tiny case by hand: z_0.75 = 0.674: exp(0 ± 0.674) = [0.51, 1.96]
    assert m.interval_coverage([1.0, 2.5, 0.4, 0.0], [0.0] * 4, [1.0] * 4, 0.5) == 0.25


# ----------------------------------------------------------------------------------------- financial


def test_return_and_risk_numbers_by_hand() -> None:
    assert m.total_return([0.1, 0.1]) == pytest.approx(0.21)
    assert m.cagr([0.1, 0.1], bars_per_year=1) == pytest.approx(0.1)
    assert m.cagr([0.21], bars_per_year=2) == pytest.approx(1.21 ** 2 - 1)
    assert m.cagr([-1.0, 0.5], bars_per_year=1) == -1.0
    # mean 0.02, sd √2·0.01
    assert m.sharpe_ratio([0.01, 0.03], bars_per_year=4) == pytest.approx(0.02 / (np.sqrt(2) * 0.01) * 2)
    assert m.annualised_volatility([0.01, 0.03], bars_per_year=4) == pytest.approx(np.sqrt(2) * 0.01 * 2)
    assert math.isnan(m.sharpe_ratio([0.01, 0.01]))
    # Sortino: mean 0.005, downside deviation √((0.01² + 0.02²)/4)
    r = [0.02, -0.01, 0.03, -0.02]
    assert m.sortino_ratio(r, bars_per_year=1) == pytest.approx(0.005 / np.sqrt(0.0005 / 4))
    assert m.sortino_ratio([0.01, 0.02], bars_per_year=1) == math.inf
    assert m.information_ratio([0.02, 0.01, 0.03], [0.01, 0.01, 0.01], bars_per_year=9) == pytest.approx(
        0.01 / 0.01 * 3)
    with pytest.raises(ValueError, match="NaN"):
        m.sharpe_ratio([0.01, np.nan])


def test_drawdown_and_duration_unrecovered() -> None:
    r = np.array([0.1, -0.2, 0.05, 0.1, -0.05])  # equity 1, 1.1, 0.88, 0.924, 1.0164, 0.96558
    np.testing.assert_allclose(m.drawdown(r),
                               [0, 0, 0.2, 1 - 0.924 / 1.1, 1 - 1.0164 / 1.1, 1 - 0.96558 / 1.1])
    assert m.max_drawdown(r) == pytest.approx(0.2)
    ts = pd.date_range("2024-01-01", periods=5, freq="h", tz="UTC")
    bars, wall = m.max_drawdown_duration(r, ts)
    assert bars == 4 and wall == 4 * H  # peak after bar 0, still under water after bar 4
    assert m.max_drawdown_duration(r) == (4, None)
    # Calmar = CAGR / MDD with 5 bars = 1 year
    assert m.calmar_ratio(r, bars_per_year=5) == pytest.approx((0.96558 - 1) / 0.2)


def test_drawdown_duration_recovered_from_the_first_bar_and_across_a_gap() -> None:
    r = np.array([-0.1, 0.2, 0.1, -0.1, 0.05, 0.1, 0.0])
    # equity 1, 0.9, 1.08, 1.188, 1.0692, 1.12266, 1.234926, 1.234926
    # spells: peak E0 → recovery E2 (2 bars); peak E3 → recovery E6 (3 bars)
    hours = pd.to_timedelta([0, 1, 2, 3, 4, 30, 31], "h")
    ts = pd.DatetimeIndex(pd.Timestamp("2024-01-01", tz="UTC") + hours)
    bars, wall = m.max_drawdown_duration(r, ts)
    assert bars == 3
    assert wall == ts[5] - ts[2]  # 28 h: the longest spell in time spans the gap
    assert m.max_drawdown(r) == pytest.approx(1 - 1.0692 / 1.188)
    assert m.max_drawdown_duration([0.01, 0.02], ts[:2]) == (0, pd.Timedelta(0))


def test_win_rate_profit_factor_var_cvar_by_hand() -> None:
    r = np.array([0.1, -0.05, 0.02, -0.01, 0.0])
    assert m.win_rate(r) == 0.5  # the flat bar is not a trade
    assert m.profit_factor(r) == pytest.approx(0.12 / 0.06)
    assert m.profit_factor([0.01, 0.0]) == math.inf
    x = np.linspace(-0.1, 0.1, 40)  # α n = 2: VaR = −x_(2), CVaR = −mean(x_(1), x_(2))
    assert m.value_at_risk(x, 0.95) == pytest.approx(-x[1])
    assert m.conditional_value_at_risk(x, 0.95) == pytest.approx(-(x[0] + x[1]) / 2)
    y = np.random.default_rng(0).permutation(np.linspace(-0.1, 0.1, 30))  # α n = 1.5
    xs = np.sort(y)
    assert m.value_at_risk(y, 0.95) == pytest.approx(-xs[1])
    assert m.conditional_value_at_risk(y, 0.95) == pytest.approx(-(xs[0] + 0.5 * xs[1]) / 1.5)
    assert m.value_at_risk(xs[:10], 0.95) == pytest.approx(-xs[0])  # α n < 1: the worst bar
    assert m.conditional_value_at_risk(xs[:10], 0.95) == pytest.approx(-xs[0])


def test_turnover_exposure_time_in_market_by_hand() -> None:
    w = np.array([0.0, 1.0, 1.0, -1.0, 0.0])
    assert m.turnover(w) == pytest.approx((0 + 1 + 0 + 2 + 1) / 5)
    assert m.exposure(w) == pytest.approx(3 / 5)
    assert m.time_in_market(w) == pytest.approx(3 / 5)
    w2 = np.array([[0.5, 0.5], [0.5, -0.5], [0.0, 0.0]])
    assert m.turnover(w2) == pytest.approx((1.0 + 1.0 + 1.0) / 3)
    assert m.exposure(w2) == pytest.approx(2 / 3)


def test_monthly_returns_table_by_hand() -> None:
    ts = pd.DatetimeIndex(["2023-12-31 23:00", "2024-01-05", "2024-01-20", "2024-03-01"], tz="UTC")
    r = np.array([0.02, 0.1, -0.1, 0.05])
    table = m.monthly_returns(r, ts)
    assert list(table.index) == [2023, 2024]
    assert list(table.columns) == [*range(1, 13), "year"]
    assert table.loc[2023, 12] == pytest.approx(0.02)
    assert table.loc[2024, 1] == pytest.approx(1.1 * 0.9 - 1)
    assert math.isnan(table.loc[2024, 2])
    assert table.loc[2024, 3] == pytest.approx(0.05)
    assert table.loc[2024, "year"] == pytest.approx(1.1 * 0.9 * 1.05 - 1)
    assert table.loc[2023, "year"] == pytest.approx(0.02)


# ------------------------------------------------------------------------------------------- summary


def test_summary_is_flat_json_and_agrees_with_the_functions() -> None:
    y, proba = _classification_data(200, seed=4)
    rng = np.random.default_rng(4)
    rv = np.exp(rng.normal(-4, 0.3, 200))
    log_vol, log_vol_var = np.full(200, -4.0), np.full(200, 0.09)
    r, b = rng.normal(0.0005, 0.01, 200), rng.normal(0.0, 0.01, 200)
    w = rng.choice([-1.0, 0.0, 1.0], 200)
    ts = pd.date_range("2024-01-01", periods=200, freq="h", tz="UTC")
    out = m.summary(y_true=y, proba=proba, realised_vol=rv, log_vol=log_vol, log_vol_var=log_vol_var,
                    returns=r, benchmark=b, positions=w, timestamps=ts)
    json.loads(json.dumps(out))
    assert all(isinstance(v, float) for v in out.values())
    pred = proba.argmax(axis=1)
    assert out["accuracy"] == m.accuracy(y, pred)
    assert out["f1_BUY"] == m.precision_recall_f1(y, pred).loc["BUY", "f1"]
    assert out["vol_coverage_90"] == m.interval_coverage(rv, log_vol, log_vol_var, 0.9)
    assert out["sharpe"] == m.sharpe_ratio(r)
    assert out["information_ratio"] == m.information_ratio(r, b)
    assert out["max_drawdown_duration_hours"] == m.max_drawdown_duration(r, ts)[1] / H
    assert out["turnover_annual"] == pytest.approx(m.turnover(w) * 24 * 365)
    assert 0 < out["psr"] < 1
    assert m.summary(returns=r).keys().isdisjoint({"accuracy", "vol_mae", "information_ratio"})
