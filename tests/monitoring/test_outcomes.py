"""Outcomes of logged predictions on a synthetic price series whose forward returns are known by
construction: exact accuracy, hit rate, ECE, pending counts, dedupe, labeler classes and PnL net of costs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryptopredict.data.lake import Lake
from cryptopredict.evaluation.backtest import BacktestConfig
from cryptopredict.labels import DirectionLabeler, forward_log_return, trailing_vol
from cryptopredict.monitoring.log import LogStore, PredictionLogger
from cryptopredict.monitoring.outcomes import dedupe_predictions, join_outcomes, load_bars, load_labelers, \
    quality_table, reliability, sleeve_returns
from tests.monitoring.support import make_prediction, write_bars

BAR = pd.Timedelta(hours=1)
T0 = pd.Timestamp("2024-01-01", tz="UTC")
# closes: up 100 → 109 (bars 0-9), flat 109 (10-12), down to 102 (13-19); horizon 2 bars, so the forward
# return at t is log(close[t+2]/close[t]): > 0 for t ≤ 8, 0 for t = 9, 10, < 0 for t = 11 … 17, unknown after
CLOSES = [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 109, 109, 109, 108, 107, 106, 105, 104, 103, 102]
# (bar, signal): realised BUY BUY BUY HOLD HOLD SELL SELL SELL, and bar 18 is pending
CASES = [(6, "BUY"), (7, "SELL"), (8, "HOLD"), (9, "HOLD"), (10, "BUY"), (11, "SELL"), (12, "SELL"), (13, "BUY"),
         (18, "BUY")]


def _log_cases(store: LogStore, version: str = "v1", symbol: str = "BTCUSDT") -> None:
    with PredictionLogger(store, flush_rows=1000, flush_seconds=60) as logger:
        for bar, signal in CASES:
            repeats = 3 if bar == 6 else 1  # many requests for one bar count once
            for k in range(repeats):
                as_of = T0 + bar * BAR
                logger.log(make_prediction(symbol=symbol, as_of=as_of, signal=signal, horizon=2, confidence=0.55,
                                           position_size=0.5 if signal == "BUY" else 0.0, model_version=version),
                           3.0, request_time=(as_of + BAR).timestamp() + 60 * k)


@pytest.fixture()
def world(tmp_path: Path) -> tuple[Lake, LogStore]:
    lake = Lake(tmp_path / "lake")
    write_bars(lake, "BTCUSDT", pd.date_range(T0, periods=len(CLOSES), freq="h"), CLOSES)
    store = LogStore(tmp_path / "log")
    _log_cases(store)
    return lake, store


def test_dedupe_counts_each_symbol_bar_and_model_once(world: tuple[Lake, LogStore]) -> None:
    _, store = world
    raw = store.read()
    assert len(raw) == len(CASES) + 2
    preds = dedupe_predictions(raw)
    assert len(preds) == len(CASES)
    first = preds[preds["as_of"] == T0 + 6 * BAR].iloc[0]
    assert first["n_requests"] == 3
    assert first["request_time"] == raw[raw["as_of"] == T0 + 6 * BAR]["request_time"].min()  # the first kept


def test_outcomes_give_the_exact_accuracy_hit_rate_and_ece(world: tuple[Lake, LogStore]) -> None:
    lake, store = world
    bars = load_bars(lake, ["BTCUSDT"], exchange="binance", timeframe="1h")
    out = join_outcomes(dedupe_predictions(store.read()), bars, BAR)
    by_bar = out.set_index(((out["bar_time"] - T0) / BAR).astype(int))
    assert by_bar.loc[6, "fwd_logret"] == pytest.approx(math.log(108 / 106), abs=1e-15)
    assert by_bar.loc[6, "fwd_rvol"] == pytest.approx(math.hypot(math.log(107 / 106), math.log(108 / 107)))
    assert list(by_bar["realised_class"].iloc[:8]) == [2, 2, 2, 1, 1, 0, 0, 0]
    assert by_bar.loc[18, "status"] == "pending" and np.isnan(by_bar.loc[18, "realised_class"])
    assert list(by_bar["correct"].iloc[:8]) == [1, 0, 0, 1, 0, 1, 1, 0]
    # hits: BUY/SELL signals on a nonzero return — bars 6 ✓, 7 ✗, 11 ✓, 12 ✓, 13 ✗ (bar 10's return is 0)
    assert list(by_bar["hit"].dropna().index) == [6, 7, 11, 12, 13]
    assert (out["class_source"] == "sign").all()

    returns = sleeve_returns(dedupe_predictions(store.read()), bars, BAR, BacktestConfig())
    now = T0 + 19 * BAR
    q = quality_table(out, returns, now=now, windows_hours=[24, 10], ece_bins=10)
    row = q[(q["symbol"] == "*") & (q["window_hours"] == 24)].iloc[0]
    assert (row["n_predictions"], row["n_requests"], row["n_resolved"], row["n_pending"]) == (9, 11, 8, 1)
    assert row["accuracy"] == 0.5  # 4 of 8
    assert row["directional_hit_rate"] == 0.6 and row["n_directional"] == 5  # 3 of 5
    assert row["ece"] == pytest.approx(0.05)  # one bin: confidence 0.55, accuracy 0.5
    # the 10 h window (bar times 10 … 19) holds bars 10, 11, 12, 13 resolved (2 of 4 right) and 18 pending
    row10 = q[(q["symbol"] == "BTCUSDT") & (q["window_hours"] == 10)].iloc[0]
    assert (row10["n_resolved"], row10["n_pending"], row10["accuracy"]) == (4, 1, 0.5)
    rel = reliability(out, model_version="v1", now=now, window_hours=24, n_bins=10)
    assert rel["count"].sum() == 8 and rel.loc[5, "count"] == 8 and rel.loc[5, "accuracy"] == 0.5


def test_as_of_as_bar_close_time_shifts_to_the_bar_open(world: tuple[Lake, LogStore]) -> None:
    lake, store = world
    bars = load_bars(lake, ["BTCUSDT"], exchange="binance", timeframe="1h")
    preds = dedupe_predictions(store.read())
    a = join_outcomes(preds, bars, BAR, as_of_convention="bar_open")
    b = join_outcomes(preds.assign(as_of=preds["as_of"] + BAR), bars, BAR, as_of_convention="bar_close")
    pd.testing.assert_series_equal(a["fwd_logret"], b["fwd_logret"])
    with pytest.raises(ValueError, match="convention"):
        join_outcomes(preds, bars, BAR, as_of_convention="noon")


def test_the_models_labeler_decides_the_realised_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 300
    ts = pd.date_range(T0, periods=n, freq="h")
    close = list(100 * np.exp(np.cumsum(rng.normal(0, 0.01, n))))
    lake = Lake(tmp_path / "lake")
    bars = write_bars(lake, "ETHUSDT", ts, close)
    labeler = DirectionLabeler(horizon=4, hold_share=1 / 3)
    fwd = forward_log_return(bars, 4, BAR)
    sigma = trailing_vol(bars, 24, BAR)
    labeler.fit(fwd.iloc[:150], sigma.iloc[:150])
    labeler.save(tmp_path / "labeler.json")
    store = LogStore(tmp_path / "log")
    rows = list(range(20, 296, 3))
    with PredictionLogger(store, flush_rows=1000, flush_seconds=60) as logger:
        for i in rows:
            logger.log(make_prediction(symbol="ETHUSDT", as_of=ts[i], signal="BUY", horizon=4, model_version="m"),
                       1.0)
    loaded = load_labelers({"m": tmp_path})  # a model directory holding labeler.json
    out = join_outcomes(dedupe_predictions(store.read()), {"ETHUSDT": bars[["timestamp", "open", "high", "low",
                                                                             "close", "volume"]]}, BAR,
                        labelers=loaded, vol_window=24)
    expected = labeler.transform(fwd.iloc[rows], sigma.iloc[rows])
    resolved = out["status"] == "resolved"
    assert resolved.all()  # every bar has σ (≥ 12 returns before it) and its 4 bars ahead (293 + 4 ≤ 299)
    np.testing.assert_array_equal(out.loc[resolved, "realised_class"].to_numpy(), expected[resolved.to_numpy()])
    assert (out.loc[resolved, "class_source"] == "labeler").all()
    assert set(expected[resolved.to_numpy()]) == {0.0, 1.0, 2.0}  # the dead zone makes real HOLDs
    by_sign = join_outcomes(dedupe_predictions(store.read()), {"ETHUSDT": bars}, BAR)
    assert (by_sign["realised_class"] == 1).sum() == 0 < (out["realised_class"] == 1).sum()
    with pytest.raises(ValueError, match="horizon"):
        join_outcomes(dedupe_predictions(store.read()), {"ETHUSDT": bars}, BAR,
                      labelers={"m": DirectionLabeler(horizon=2, k=0.5)})


def test_pnl_of_logged_positions_is_net_of_fees(tmp_path: Path) -> None:
    """Long 1.0 decided at bar 0 (filled at open 1 = 100), flat decided at bar 2 (filled at open 3 = 110),
    10 bps per side: 1.10 − 1 − 0.001 (buy fee) − 0.0011 (sell fee) = 0.0979 of equity."""
    lake = Lake(tmp_path / "lake")
    ts = pd.date_range(T0, periods=5, freq="h")
    write_bars(lake, "SOLUSDT", ts, [100, 100, 110, 110, 110], open_=[100, 100, 100, 110, 110])
    write_bars(lake, "XRPUSDT", ts, [1, 1, 1, 1, 1])
    store = LogStore(tmp_path / "log")
    with PredictionLogger(store, flush_rows=1000, flush_seconds=60) as logger:
        logger.log(make_prediction(symbol="SOLUSDT", as_of=ts[0], signal="BUY", horizon=3, position_size=1.0), 1.0)
        logger.log(make_prediction(symbol="SOLUSDT", as_of=ts[2], signal="HOLD", horizon=3, position_size=0.0), 1.0)
        logger.log(make_prediction(symbol="XRPUSDT", as_of=ts[0], signal="BUY", horizon=3, position_size=1.0), 1.0)
    preds = dedupe_predictions(store.read())
    bars = load_bars(lake, ["SOLUSDT", "XRPUSDT"], exchange="binance", timeframe="1h")
    costs = BacktestConfig(fee_bps=10.0, slippage_bps=0.0)
    r = sleeve_returns(preds, bars, BAR, costs)
    sol = r[r["symbol"] == "SOLUSDT"]
    assert np.prod(1 + sol["net"]) - 1 == pytest.approx(0.0979, abs=1e-12)
    assert np.prod(1 + sol["gross"]) - 1 > 0.0979
    # XRP: 1 unit bought at 1 (fee 0.001), flat price, sold when the 3-bar horizon expired (fee 0.001)
    xrp = r[r["symbol"] == "XRPUSDT"]
    assert np.prod(1 + xrp["net"]) - 1 == pytest.approx(-0.002, abs=1e-12)
    assert list(xrp["net"] != 0) == [False, True, False, False, True]  # fills at the opens of bars 1 and 4
    out = join_outcomes(preds, bars, BAR)
    q = quality_table(out, r, now=ts[-1], windows_hours=[24])
    got = q.set_index("symbol")["pnl"]
    assert got["SOLUSDT"] == pytest.approx(0.0979, abs=1e-12)
    pooled = r.groupby("timestamp")["net"].mean()  # equal sleeves
    assert got["*"] == pytest.approx(np.prod(1 + pooled) - 1, abs=1e-12)
