"""Drift statistics: PSI by hand, KS against scipy, and on the shipped data a shifted feature is flagged
while the unshifted ones beside it are not."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from cryptopredict.config import Config
from cryptopredict.data.lake import Lake
from cryptopredict.features.pipeline import KEY
from cryptopredict.monitoring.drift import EPS, bin_shares, categorical_psi, feature_drift, ks, lake_feature_drift, \
    prediction_drift, psi, quantile_edges
from tests.monitoring.conftest import SYMBOLS, TRAIN_SPAN


def test_psi_is_zero_for_identical_samples() -> None:
    x = np.random.default_rng(0).normal(size=5000)
    assert psi(x, x) == 0.0
    assert psi(x, x.copy()[::-1]) == 0.0  # order does not matter
    assert categorical_psi(["BUY", "SELL", "BUY"], ["SELL", "BUY", "BUY"]) == 0.0


def test_psi_matches_a_hand_computed_case() -> None:
    reference = np.arange(1.0, 11.0)  # 1 … 10; two quantile bins split at the median 5.5
    assert list(quantile_edges(reference, 2)) == [5.5]
    recent = np.arange(1.0, 9.0)  # 1 … 8: 5 of 8 values ≤ 5.5
    assert list(bin_shares(recent, np.array([5.5]))) == [0.625, 0.375]
    by_hand = (0.625 - 0.5) * math.log(0.625 / 0.5) + (0.375 - 0.5) * math.log(0.375 / 0.5)
    assert psi(reference, recent, bins=2) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(0.0638532, abs=1e-7)
    # an empty bin counts with the floor share EPS
    low_only = np.array([1.0, 2.0, 3.0])
    floored = (1 - 0.5) * math.log(1 / 0.5) + (EPS - 0.5) * math.log(EPS / 0.5)
    assert psi(reference, low_only, bins=2) == pytest.approx(floored, rel=1e-12)
    # a value equal to an edge falls in the lower bin: (edge_{b-1}, edge_b]
    assert list(bin_shares(np.array([5.5]), np.array([5.5]))) == [1.0, 0.0]
    # categorical: 50/50 → 75/25
    cat = categorical_psi(["BUY", "SELL"] * 2, ["BUY"] * 3 + ["SELL"], ["SELL", "HOLD", "BUY"])
    assert cat == pytest.approx(0.25 * math.log(1.5) - 0.25 * math.log(0.5), rel=1e-12)


def test_ks_matches_scipy_and_ignores_nan() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=400), rng.normal(0.3, 1.2, size=300)
    res = sps.ks_2samp(a, b)
    assert ks(a, b) == (res.statistic, res.pvalue)
    assert ks(np.concatenate([a, [np.nan] * 5]), np.concatenate([[np.nan], b])) == (res.statistic, res.pvalue)
    asymp = sps.ks_2samp(a, b, method="asymp")
    row = feature_drift(pd.DataFrame({"x": a}), pd.DataFrame({"x": b})).iloc[0]  # asymptotic p by default
    assert (row["ks_stat"], row["ks_pvalue"]) == (asymp.statistic, asymp.pvalue)
    assert row["ks_pvalue"] == pytest.approx(res.pvalue, rel=0.2)


def test_feature_drift_skips_thin_features_and_sorts_worst_first() -> None:
    rng = np.random.default_rng(2)
    ref = pd.DataFrame({"a": rng.normal(size=1000), "b": rng.normal(size=1000), "thin": np.nan})
    rec = pd.DataFrame({"a": rng.normal(2.0, 1.0, size=500), "b": rng.normal(size=500), "thin": 1.0})
    table = feature_drift(ref, rec, bins=10, threshold=0.2, min_rows=50)
    assert list(table["feature"]) == ["a", "b", "thin"]
    assert list(table["drifted"]) == [True, False, False]
    assert np.isnan(table.loc[2, "psi"]) and "fewer than 50" in table.loc[2, "note"]
    assert table.loc[2, "nan_share_reference"] == 1.0
    with pytest.raises(ValueError, match="lack columns"):
        feature_drift(ref, rec.drop(columns="b"))


def _shift_recent(lake: Lake, feature: str, bars: int, by_sd: float) -> None:
    for s in SYMBOLS:
        frame = lake.read_frame("features", {"symbol": s}).drop(columns="symbol")
        sd = frame[feature].std()
        frame.loc[frame.index[-bars:], feature] = frame[feature].iloc[-bars:] + by_sd * sd
        lake.write_frame("features", frame, KEY, {"symbol": s})


@pytest.mark.slow
def test_a_shifted_feature_is_flagged_and_an_unshifted_one_is_not(shipped_cfg: Config) -> None:
    lake = Lake(shipped_cfg.lake.root)
    stable = ["ta_willr_14", "ta_roc_1", "ta_rsi_14", "ta_stoch_k_14"]
    table, _ = lake_feature_drift(lake, SYMBOLS, TRAIN_SPAN, recent_bars=720)
    before = table.set_index("feature")
    assert not before.loc[stable, "drifted"].any(), before.loc[stable, "psi"]
    _shift_recent(lake, "ta_willr_14", 720, by_sd=1.0)  # the whole recent window moves up one σ
    table, summary = lake_feature_drift(lake, SYMBOLS, TRAIN_SPAN, recent_bars=720)
    after = table.set_index("feature")
    assert after.loc["ta_willr_14", "drifted"] and after.loc["ta_willr_14", "psi"] > 1.0
    assert after.loc["ta_willr_14", "ks_pvalue"] < 1e-10
    assert not after.loc[["ta_roc_1", "ta_rsi_14", "ta_stoch_k_14"], "drifted"].any()
    for f in ["ta_roc_1", "ta_rsi_14"]:  # untouched features keep their statistics exactly
        assert after.loc[f, "psi"] == before.loc[f, "psi"]
    assert summary["recent_rows"] == 2 * 720 and summary["reference_last"].startswith("2022-03-31 23:00")
    assert summary["n_drifted"] == int(after["drifted"].sum())
    assert summary["share_drifted"] == pytest.approx(summary["n_drifted"] / summary["n_scored"])
    assert summary["max_psi"] == after["psi"].max()
    assert "ta_willr_14" in [w["feature"] for w in summary["worst"]]
    with pytest.raises(ValueError, match="no feature rows in the reference span"):
        lake_feature_drift(lake, SYMBOLS, ("2019-01-01", "2019-02-01"))
    with pytest.raises(ValueError, match="run `cryptopredict features`"):
        lake_feature_drift(lake, ["DOGEUSDT"], TRAIN_SPAN)


def test_prediction_drift_flags_a_changed_signal_mix() -> None:
    now = pd.Timestamp("2024-02-01", tz="UTC")
    rng = np.random.default_rng(4)
    n_ref, n_rec = 600, 168
    times = list(pd.date_range(now - pd.Timedelta(hours=n_ref + n_rec - 1), now, freq="h"))
    p_buy = np.concatenate([rng.uniform(0.2, 0.5, n_ref), rng.uniform(0.6, 0.9, n_rec)])
    signal = np.where(np.arange(n_ref + n_rec) < n_ref, rng.choice(["SELL", "HOLD", "BUY"], n_ref + n_rec), "BUY")
    stable = rng.uniform(0.4, 0.6, n_ref + n_rec)
    preds = pd.DataFrame({"model_version": "v1", "bar_time": times, "p_buy": p_buy, "p_sell": (1 - p_buy) / 2,
                          "p_hold": (1 - p_buy) / 2, "confidence": stable, "signal": signal})
    table = prediction_drift(preds, now=now, recent_hours=n_rec, reference_hours=n_ref, min_rows=50)
    got = table.set_index("quantity")
    assert (got["n_reference"] == n_ref).all() and (got["n_recent"] == n_rec).all()
    assert got.loc["p_buy", "drifted"] and got.loc["signal_mix", "drifted"]
    assert not got.loc["confidence", "drifted"]
    thin = prediction_drift(preds, now=now, recent_hours=10, reference_hours=10, min_rows=50)
    assert thin["psi"].isna().all() and not thin["drifted"].any()
