"""Cross-asset features against hand computations, and the look-ahead property on the shipped data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryptopredict.data.snapshot import read_snapshot_ohlcv
from cryptopredict.features.cross_asset import (CrossAssetConfig, compute_cross_asset, correlation_matrices,
                                                returns_panel)
from tests.conftest import SHIPPED_DATA
from tests.support.lookahead import assert_no_lookahead, random_cuts

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT"]
CFG = CrossAssetConfig(corr_windows=[48], rs_windows=[24], altseason_window=72, matrix_window=48)


@pytest.fixture(scope="module")
def bars() -> dict[str, pd.DataFrame]:
    start, end = pd.Timestamp("2021-03-01", tz="UTC"), pd.Timestamp("2021-04-15", tz="UTC")
    out = {}
    for s in SYMBOLS:
        b = read_snapshot_ohlcv(SHIPPED_DATA, s)
        out[s] = b[(b["timestamp"] >= start) & (b["timestamp"] < end)].reset_index(drop=True)
    return out


def test_correlation_beta_rank_dominance_match_hand_computations(bars: dict[str, pd.DataFrame]) -> None:
    res = compute_cross_asset(bars, CFG)
    sol = res["SOLUSDT"].frame
    t = 500
    r = {s: np.log(bars[s]["close"]).diff() for s in SYMBOLS}
    y, x = r["SOLUSDT"].iloc[t - 47: t + 1], r["BTCUSDT"].iloc[t - 47: t + 1]
    assert sol["xa_corr_btc_48"].iloc[t] == pytest.approx(np.corrcoef(y, x)[0, 1], rel=1e-9)
    assert sol["xa_beta_btc_48"].iloc[t] == pytest.approx(np.cov(y, x)[0, 1] / np.var(x, ddof=1), rel=1e-9)
    trailing = {s: np.log(bars[s]["close"].iloc[t] / bars[s]["close"].iloc[t - 24]) for s in SYMBOLS}
    rank = sorted(trailing.values()).index(trailing["SOLUSDT"]) + 1
    assert sol["xa_rs_rank_24"].iloc[t] == pytest.approx(rank / len(SYMBOLS))
    dollar = {s: (bars[s]["close"] * bars[s]["volume"]).iloc[t - 23: t + 1].sum() for s in SYMBOLS}
    assert sol["xa_btc_dominance"].iloc[t] == pytest.approx(dollar["BTCUSDT"] / sum(dollar.values()))
    beats = np.mean([np.log(bars[s]["close"].iloc[t] / bars[s]["close"].iloc[t - 72])
                     > np.log(bars["BTCUSDT"]["close"].iloc[t] / bars["BTCUSDT"]["close"].iloc[t - 72])
                     for s in SYMBOLS[1:]])
    assert sol["xa_altseason_72"].iloc[t] == pytest.approx(beats)
    assert res["BTCUSDT"].frame["xa_corr_btc_48"].isna().all()  # no correlation of BTC with itself
    assert (res["BTCUSDT"].frame["xa_btc_dominance"] == sol["xa_btc_dominance"]).all()  # market-wide


def test_dominance_uses_market_caps_when_the_lake_has_them(bars: dict[str, pd.DataFrame]) -> None:
    ts = bars["BTCUSDT"]["timestamp"]
    caps = pd.concat([pd.DataFrame({"timestamp": ts, "symbol": s, "market_cap_usd": v})
                      for s, v in (("BTCUSDT", 600.0), ("ETHUSDT", 300.0), ("SOLUSDT", 50.0), ("DOGEUSDT", 50.0))])
    res = compute_cross_asset(bars, CFG, market_caps=caps)
    assert res["ETHUSDT"].frame["xa_btc_dominance"].dropna().eq(0.6).all()
    assert res["ETHUSDT"].specs[[s.name for s in res["ETHUSDT"].specs].index("xa_btc_dominance")].source == \
        "market_caps.market_cap_usd"


def test_correlation_matrices_hold_the_upper_triangle_as_of_each_bar(bars: dict[str, pd.DataFrame]) -> None:
    m = correlation_matrices(bars, 48)
    assert set(zip(m["symbol_a"], m["symbol_b"])) == {(a, b) for a in sorted(SYMBOLS) for b in sorted(SYMBOLS)
                                                      if a < b}
    rets, _, _ = returns_panel(bars)
    t = rets.index[300]
    row = m[(m["timestamp"] == t) & (m["symbol_a"] == "BTCUSDT") & (m["symbol_b"] == "ETHUSDT")]
    window = rets.loc[:t].iloc[-48:]
    assert row["corr"].iloc[0] == pytest.approx(window["BTCUSDT"].corr(window["ETHUSDT"]), abs=1e-6)


def test_cross_asset_has_no_lookahead(bars: dict[str, pd.DataFrame]) -> None:
    target = "SOLUSDT"

    def compute(t_end: pd.Timestamp) -> pd.DataFrame:
        cut = {s: b[b["timestamp"] <= t_end].reset_index(drop=True) for s, b in bars.items()}
        return compute_cross_asset(cut, CFG)[target].frame

    ts = bars[target]["timestamp"]
    assert assert_no_lookahead(compute, ts, random_cuts(ts, 6, seed=1, min_position=100)) == 6 * 8
