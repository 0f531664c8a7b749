"""Backtester: hand-computed bars for every accounting rule, a plain-Python reference loop on real data
(always runs), and vectorbt's from_orders on BTCUSDT (where vectorbt is installed)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from cryptopredict.evaluation.backtest import (
    BacktestConfig,
    backtest,
    from_signals,
    pivot_bars,
    signals_to_targets,
)
from tests.conftest import SHIPPED_DATA

NO_COSTS = BacktestConfig(initial_equity=100.0, fee_bps=0.0, slippage_bps=0.0)


def cfg(**kw: object) -> BacktestConfig:
    return NO_COSTS.model_copy(update=kw)


# ---------------------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------------------


def test_target_is_filled_at_the_next_open_not_on_its_own_bar() -> None:
    o = np.array([100.0, 100.0, 110.0, 121.0])
    c = np.array([100.0, 110.0, 121.0, 121.0])
    r = backtest(o, c, np.array([1.0, 0.0, 0.0, 0.0]), NO_COSTS)
    # bought at open[1] = 100 (1 unit), sold at open[2] = 110: only bar 1's 100 -> 110 is earned
    np.testing.assert_allclose(r.equity, [100.0, 110.0, 110.0, 110.0])
    np.testing.assert_allclose(r.returns, [0.0, 0.1, 0.0, 0.0])
    np.testing.assert_allclose(r.units.ravel(), [0.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(r.positions.ravel(), [0.0, 1.0, 0.0, 0.0])
    assert r.n_trades == 2
    fills = r.fills()
    np.testing.assert_allclose(fills["units"], [1.0, -1.0])
    np.testing.assert_allclose(fills["price"], [100.0, 110.0])
    # the last row's target has no next open: never filled
    r_last = backtest(o, c, np.array([0.0, 0.0, 0.0, 1.0]), NO_COSTS)
    np.testing.assert_allclose(r_last.equity, 100.0)
    assert r_last.n_trades == 0


def test_changing_a_target_at_bar_t_changes_nothing_up_to_bar_t() -> None:
    rng = np.random.default_rng(3)
    n, t = 60, 37
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (n, 2)), axis=0))
    o = c * np.exp(rng.normal(0, 0.005, (n, 2)))
    w = rng.uniform(-0.5, 0.5, (n, 2))
    w2 = w.copy()
    w2[t] = [-0.5, 0.5] if w[t, 0] > 0 else [0.5, -0.5]
    config = BacktestConfig(fee_bps=10, slippage_bps=5, funding_rate=1e-4)
    a, b = backtest(o, c, w, config), backtest(o, c, w2, config)
    np.testing.assert_array_equal(a.equity[:t + 1], b.equity[:t + 1])
    np.testing.assert_array_equal(a.units[:t + 1], b.units[:t + 1])
    assert not np.allclose(a.units[t + 1], b.units[t + 1])


def test_fees_on_entry_flip_and_exit() -> None:
    p = np.full(4, 100.0)
    r = backtest(p, p, np.array([1.0, -1.0, 0.0, 0.0]), cfg(fee_bps=10.0))
    # bar 1: buy 1 unit (100 notional), fee 0.1 -> cash -0.1
    # bar 2: equity 99.9 -> target -0.999 units: sell 1.999 units (199.9 notional), fee 0.1999
    # bar 3: equity 99.7001 -> buy back 0.999 units (99.9 notional), fee 0.0999
    np.testing.assert_allclose(r.equity, [100.0, 99.9, 99.7001, 99.6002], rtol=1e-12)
    np.testing.assert_allclose(r.fees.ravel(), [0.0, 0.1, 0.1999, 0.0999], rtol=1e-12)
    np.testing.assert_allclose(r.turnover, [0.0, 1.0, 199.9 / 99.9, 99.9 / 99.7001], rtol=1e-12)
    np.testing.assert_allclose(r.units.ravel(), [0.0, 1.0, -0.999, 0.0], atol=1e-15)
    np.testing.assert_allclose(r.gross_returns, 0.0, atol=1e-15)  # prices never move
    np.testing.assert_allclose(r.returns[1:], [-0.001, 99.7001 / 99.9 - 1, 99.6002 / 99.7001 - 1], rtol=1e-12)
    assert r.n_trades == 3


def test_fixed_slippage_moves_the_fill_price_and_the_fee_is_on_the_fill() -> None:
    p = np.full(3, 100.0)
    r = backtest(p, p, np.array([1.0, 0.0, 0.0]), cfg(fee_bps=10.0, slippage_bps=50.0))
    # bar 1: 1 unit at 100.5: slippage 0.5, fee 0.1005 -> equity 100 - 0.6005
    # bar 2: equity 99.3995 -> sell 1 unit at 99.5: slippage 0.5, fee 0.0995
    np.testing.assert_allclose(r.exec_price.ravel(), [np.nan, 100.5, 99.5])
    np.testing.assert_allclose(r.slippage.ravel(), [0.0, 0.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(r.fees.ravel(), [0.0, 0.1005, 0.0995], rtol=1e-12)
    np.testing.assert_allclose(r.equity, [100.0, 99.3995, 98.8], rtol=1e-12)


def test_volatility_slippage_uses_only_information_before_the_fill() -> None:
    c = np.array([100.0, 100.0 * math.exp(0.01), 100.0, 100.0, 100.0])
    o = c.copy()
    vol = np.array([1.0, 1.0, 4.0, 1.0, 1.0])
    config = cfg(slippage="volatility", slippage_bps=1.0, impact_k=2.0, vol_window=2)
    r = backtest(o, c, np.array([0.0, 0.0, 1.0, 1.0, 1.0]), config, volume=vol)
    # fill at open[3] = 100, notional 100. sigma: std(ddof=1) of the log returns 0.01, -0.01 (closes 0..2)
    # = 0.01*sqrt(2); dollar volume of bar 2 = 4 * 100 -> participation 1/4
    s = 1e-4 + 2.0 * 0.01 * math.sqrt(2.0) * math.sqrt(100.0 / 400.0)
    assert r.slippage[3, 0] == pytest.approx(100.0 * s, rel=1e-12)
    assert r.exec_price[3, 0] == pytest.approx(100.0 * (1 + s), rel=1e-12)
    assert r.equity[3] == pytest.approx(100.0 - 100.0 * s, rel=1e-12)
    # the fill bar's own volume and close are not known at its open: changing them changes no cost
    vol2, c2 = vol.copy(), c.copy()
    vol2[3], c2[3] = 1e-6, 150.0
    assert backtest(o, c2, np.array([0.0, 0.0, 1.0, 1.0, 1.0]), config, volume=vol2).slippage[3, 0] == r.slippage[3, 0]
    with pytest.raises(ValueError, match="volume"):
        backtest(o, c, np.ones(5), config)


def test_funding_paid_by_longs_and_received_by_shorts() -> None:
    p = np.full((4, 2), 100.0)
    hold = cfg(rebalance_threshold=math.inf, funding_rate=0.001)
    long_ = backtest(p[:, 0], p[:, 0], np.ones(4), hold)
    short = backtest(p[:, 0], p[:, 0], -np.ones(4), hold)
    # 1 unit at 100 held through bars 1..3: 0.001 * 100 per bar
    np.testing.assert_allclose(long_.funding.ravel(), [0.0, 0.1, 0.1, 0.1], rtol=1e-12)
    np.testing.assert_allclose(long_.equity, [100.0, 99.9, 99.8, 99.7], rtol=1e-12)
    np.testing.assert_allclose(short.funding.ravel(), [0.0, -0.1, -0.1, -0.1], rtol=1e-12)
    np.testing.assert_allclose(short.equity, [100.0, 100.1, 100.2, 100.3], rtol=1e-12)
    np.testing.assert_allclose(long_.gross_returns, 0.0, atol=1e-15)
    # a negative rate reverses who pays; a per-asset row of rates; funding marks at the bar's close
    c = np.array([[100.0, 100.0], [100.0, 100.0], [120.0, 80.0], [120.0, 80.0]])
    r = backtest(c, c, np.full((4, 2), 0.5) * [1, -1], hold, funding=np.array([-0.001, 0.002]))
    # units 0.5 and -0.5; bar 2 closes at 120 / 80
    np.testing.assert_allclose(r.funding[1], [-0.001 * 50, 0.002 * -50])
    np.testing.assert_allclose(r.funding[2], [-0.001 * 60, 0.002 * -40])
    # a (T, N) funding array overrides the config's constant
    arr = np.zeros((4, 2))
    arr[3] = [0.01, 0.0]
    np.testing.assert_allclose(backtest(c, c, np.full((4, 2), 0.5), hold, funding=arr).funding.sum(axis=0),
                               [0.6, 0.0])


def test_flat_and_nan_targets() -> None:
    o = np.array([100.0, 90.0, 130.0, 80.0, 100.0])
    c = np.array([95.0, 120.0, 70.0, 110.0, 100.0])
    flat = backtest(o, c, np.zeros(5), cfg(fee_bps=10.0, funding_rate=0.01))
    np.testing.assert_allclose(flat.equity, 100.0)
    assert flat.n_trades == 0 and flat.total_costs().sum() == 0.0
    # NaN = no instruction: the units bought at open[1] are held through every later bar
    r = backtest(o, c, np.array([1.0, np.nan, np.nan, np.nan, np.nan]), NO_COSTS)
    units = 100.0 / 90.0
    np.testing.assert_allclose(r.units.ravel(), [0.0] + [units] * 4)
    np.testing.assert_allclose(r.equity, [100.0] + list(units * c[1:]), rtol=1e-12)
    assert r.n_trades == 1


def test_multi_asset_equal_split() -> None:
    o = np.array([[100.0, 50.0], [100.0, 50.0], [110.0, 45.0], [110.0, 45.0]])
    c = np.array([[100.0, 50.0], [110.0, 45.0], [110.0, 45.0], [121.0, 45.0]])
    r = backtest(o, c, np.full((4, 2), 0.5), cfg(fee_bps=10.0))
    # bar 1: 0.5 unit of A at 100 and 1 unit of B at 50; fees 0.05 + 0.05
    e1 = 100.0 - 0.1 + 0.5 * 10.0 - 1.0 * 5.0
    assert r.equity[1] == pytest.approx(e1, rel=1e-12)
    np.testing.assert_allclose(r.fees[1], [0.05, 0.05], rtol=1e-12)
    np.testing.assert_allclose(r.turnover[1], 1.0)
    # bar 2: weights drifted to 55/99.9 and 45/99.9; rebalanced to 0.5 * 99.9 each
    ua, ub = 0.5 * e1 / 110.0, 0.5 * e1 / 45.0
    np.testing.assert_allclose(r.units[2], [ua, ub], rtol=1e-12)
    fees2 = 1e-3 * (abs(ua - 0.5) * 110.0 + abs(ub - 1.0) * 45.0)
    assert r.fees[2].sum() == pytest.approx(fees2, rel=1e-12)
    e2 = e1 - fees2
    ua3, ub3 = 0.5 * e2 / 110.0, 0.5 * e2 / 45.0  # bar 3 re-weights away the fees' drift
    fees3 = 1e-3 * (abs(ua3 - ua) * 110.0 + abs(ub3 - ub) * 45.0)
    assert r.equity[3] == pytest.approx(e2 - fees3 + ua3 * 11.0, rel=1e-12)
    np.testing.assert_allclose(r.gross_exposure[1], (55.0 + 45.0) / e1, rtol=1e-12)
    np.testing.assert_allclose(r.net_exposure[1], (55.0 + 45.0) / e1, rtol=1e-12)


def test_rebalance_threshold() -> None:
    o = np.array([100.0, 100.0, 200.0, 200.0])
    c = np.array([100.0, 200.0, 200.0, 200.0])
    w = np.full(4, 0.5)
    # bar 1: 0.5 unit; close 200 -> equity 150, weight 100/150 = 2/3 (drift 1/6)
    always = backtest(o, c, w, NO_COSTS)
    np.testing.assert_allclose(always.units.ravel(), [0.0, 0.5, 0.375, 0.375])  # 0.5 * 150 / 200
    np.testing.assert_allclose(always.turnover[2], 25.0 / 150.0)
    np.testing.assert_allclose(always.positions[1], 2.0 / 3.0)
    wide = backtest(o, c, w, cfg(rebalance_threshold=0.2))
    np.testing.assert_allclose(wide.units.ravel(), [0.0, 0.5, 0.5, 0.5])
    assert wide.turnover[2] == 0.0
    narrow = backtest(o, c, w, cfg(rebalance_threshold=0.1))
    np.testing.assert_allclose(narrow.units.ravel(), always.units.ravel())
    # a changed target trades whatever the threshold
    changed = backtest(o, c, np.array([0.5, 0.55, 0.55, 0.55]), cfg(rebalance_threshold=0.2))
    np.testing.assert_allclose(changed.units.ravel(), [0.0, 0.5, 0.55 * 150 / 200, 0.55 * 150 / 200])


def test_missing_bars_hold_the_position() -> None:
    # bar 1 has no prices: target[0] lapses; target[1] is filled at open[2]
    o = np.array([100.0, np.nan, 120.0, 130.0])
    c = np.array([100.0, np.nan, 125.0, 130.0])
    r = backtest(o, c, np.array([1.0, 1.0, np.nan, np.nan]), NO_COSTS)
    np.testing.assert_allclose(r.units.ravel(), [0.0, 0.0, 100.0 / 120.0, 100.0 / 120.0])
    np.testing.assert_allclose(r.equity, [100.0, 100.0, 100.0 * 125 / 120, 100.0 * 130 / 120], rtol=1e-12)
    lapsed = backtest(o, c, np.array([1.0, np.nan, np.nan, np.nan]), NO_COSTS)
    np.testing.assert_allclose(lapsed.equity, 100.0)
    assert lapsed.n_trades == 0
    # a position held across a gap is marked at the last close and earns the gap on reopening
    o = np.array([100.0, 100.0, np.nan, 150.0])
    c = np.array([100.0, 110.0, np.nan, 160.0])
    r = backtest(o, c, np.ones(4), cfg(funding_rate=0.001, rebalance_threshold=math.inf))
    np.testing.assert_allclose(r.funding.ravel(), [0.0, 0.11, 0.11, 0.16], rtol=1e-12)
    np.testing.assert_allclose(r.equity, [100.0, 109.89, 109.78, 159.62], rtol=1e-12)
    np.testing.assert_allclose(r.positions[2], 110.0 / 109.78)
    # multi-asset: B has no open at bar 2 and is valued at its last close while A is sized
    o = np.array([[100.0, 100.0], [100.0, 100.0], [100.0, np.nan], [100.0, 100.0]])
    c = np.array([[100.0, 100.0], [100.0, 120.0], [100.0, np.nan], [100.0, 100.0]])
    r = backtest(o, c, np.array([[0.5, 0.5], [1.0, 0.0], [np.nan, np.nan], [np.nan, np.nan]]), NO_COSTS)
    # bar 1: 0.5 unit each; equity at close 110. bar 2: A -> 1.0 * 110 / 100 units, B not traded
    np.testing.assert_allclose(r.units[2], [1.1, 0.5])
    np.testing.assert_allclose(r.equity[2], 110.0)
    np.testing.assert_allclose(r.units[3], [1.1, 0.5])  # target[1] of B lapsed at bar 2
    np.testing.assert_allclose(r.equity[3], 110.0 - 10.0)


def test_bust_closes_everything() -> None:
    o = np.array([100.0, 100.0, 250.0, 260.0, 100.0])
    c = np.array([100.0, 100.0, 250.0, 260.0, 100.0])
    r = backtest(o, c, -np.ones(5), NO_COSTS)
    # short 1 unit at 100: equity at open[2] = 100 - 250 + 100 = -50 <= 0 -> bust, covered at open[2]
    assert r.bust_bar == 2
    np.testing.assert_allclose(r.units.ravel(), [0.0, -1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(r.equity[2:], -50.0)


def test_input_checks() -> None:
    p = np.full(3, 100.0)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        backtest(p, p, np.array([0.0, 1.5, 0.0]))
    with pytest.raises(ValueError, match="one shape"):
        backtest(p, p, np.zeros(4))
    with pytest.raises(ValueError, match="positive"):
        backtest(np.array([100.0, 0.0, 100.0]), p, np.zeros(3))
    idx = pd.date_range("2024-01-01", periods=3, freq="h", tz="UTC")
    frame = pd.DataFrame({"A": p}, index=idx)
    with pytest.raises(ValueError, match="align"):
        backtest(frame, frame, pd.DataFrame({"A": np.zeros(3)}, index=idx + pd.Timedelta("1h")))
    with pytest.raises(ValidationError):
        BacktestConfig(fee_bps=-1)
    r = backtest(frame, frame, frame * 0)
    assert r.index.equals(idx) and list(r.columns) == ["A"]
    assert r.to_frame().index.equals(idx)


def test_signals_to_targets() -> None:
    s = signals_to_targets(np.array([np.nan, 1, np.nan, 0, -1, np.nan, 1]), size=0.5)
    np.testing.assert_array_equal(s, [0, 0.5, 0.5, 0, -0.5, -0.5, 0.5])
    e = np.array([1, 0, 0, 0, 0, 0, 1, 1], bool)
    x = np.array([0, 0, 1, 0, 0, 1, 1, 0], bool)
    se = np.array([0, 0, 0, 1, 0, 0, 0, 0], bool)
    sx = np.array([0, 1, 0, 0, 0, 0, 0, 0], bool)
    # short exit on bar 1 does not close a long; exit on 5 does not close the short; 6 entry+exit cancel
    np.testing.assert_array_equal(signals_to_targets(entries=e, exits=x, short_entries=se, short_exits=sx),
                                  [1, 1, 0, -1, -1, -1, -1, 1])
    with pytest.raises(ValueError):
        signals_to_targets(np.array([2.0]))


def test_from_signals_holds_units_between_signals() -> None:
    o = np.array([100.0, 100.0, 200.0, 200.0, 100.0])
    c = np.array([100.0, 200.0, 200.0, 100.0, 100.0])
    r = from_signals(o, c, entries=np.array([1, 0, 0, 0, 0], bool), exits=np.array([0, 0, 0, 1, 0], bool),
                     size=0.5, config=NO_COSTS)
    # 0.5 unit from open[1] to open[4]; no re-weighting while the weight drifts
    np.testing.assert_allclose(r.units.ravel(), [0.0, 0.5, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(r.equity, [100.0, 150.0, 150.0, 100.0, 100.0])
    assert r.n_trades == 2
    idx = pd.date_range("2024-01-01", periods=5, freq="h", tz="UTC")
    rs = from_signals(pd.Series(o, idx, name="BTC"), pd.Series(c, idx, name="BTC"),
                      np.array([np.nan, -1, np.nan, np.nan, 0]), config=NO_COSTS)
    np.testing.assert_allclose(rs.units.ravel(), [0.0, 0.0, -0.5, -0.5, -0.5])  # -100 / 200
    assert list(rs.columns) == ["BTC"]


def test_pivot_bars_dense_grid() -> None:
    ts = pd.date_range("2024-01-01", periods=4, freq="h", tz="UTC")
    bars = pd.DataFrame({"symbol": ["A", "A", "B", "B", "B"], "timestamp": [ts[0], ts[3], ts[0], ts[1], ts[3]],
                         "open": [1.0, 2, 3, 4, 5], "close": [1.0, 2, 3, 4, 5], "volume": [1.0, 1, 1, 1, 1]})
    w = pivot_bars(bars)
    assert w["open"].index.equals(pd.DatetimeIndex(ts, name="timestamp"))
    np.testing.assert_array_equal(w["open"]["A"].to_numpy(), [1.0, np.nan, np.nan, 2.0])
    np.testing.assert_array_equal(w["close"]["B"].to_numpy(), [3.0, 4.0, np.nan, 5.0])
    assert len(pivot_bars(bars, freq=None)["open"]) == 3


# ---------------------------------------------------------------------------------------------------------
# Plain-Python reference loop on real data
# ---------------------------------------------------------------------------------------------------------


def reference_backtest(o: np.ndarray, c: np.ndarray, w: np.ndarray, fee_bps: float, slip_bps: float,
                       funding: np.ndarray, threshold: float, equity0: float,
                       impact: tuple[float, np.ndarray, np.ndarray] | None = None) -> tuple[list, list]:
    """Cash + units, one bar and one asset at a time, in plain Python floats. ``impact``: (k, sigma,
    dollar volume) with sigma / dollar volume known at the previous close."""
    n, m = o.shape
    cash = equity0
    units = [0.0] * m
    mark: list[float | None] = [None] * m
    executed: list[float | None] = [None] * m
    equity, held = [], []
    for t in range(n):
        for i in range(m):
            if not math.isnan(o[t, i]):
                mark[i] = float(o[t, i])
        value = cash + sum(units[i] * mark[i] for i in range(m) if units[i] != 0.0)
        if t > 0:
            for i in range(m):
                tgt, price = float(w[t - 1, i]), float(o[t, i])
                if math.isnan(tgt) or math.isnan(price):
                    continue
                drift = abs(tgt - units[i] * price / value)
                if executed[i] == tgt and drift <= threshold:
                    continue
                executed[i] = tgt
                want = tgt * value / price
                d = want - units[i]
                if d == 0.0:
                    continue
                s = slip_bps / 1e4
                if impact is not None:
                    k, sig, dv = impact
                    if not math.isnan(sig[t, i]) and not math.isnan(dv[t, i]):
                        s += k * sig[t, i] * math.sqrt(abs(d) * price / dv[t, i])
                fill = price * (1 + s) if d > 0 else price * (1 - s)
                cash -= d * fill + fee_bps / 1e4 * abs(d) * fill
                units[i] = want
        for i in range(m):
            if not math.isnan(c[t, i]):
                mark[i] = float(c[t, i])
            if units[i] != 0.0:
                cash -= funding[t, i] * units[i] * mark[i]
        equity.append(cash + sum(units[i] * mark[i] for i in range(m) if units[i] != 0.0))
        held.append(list(units))
    return equity, held


def sigma_and_dollar_volume(c: np.ndarray, v: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The volatility model's inputs, row t from rows < t, by loops (NaN returns skipped in a window)."""
    n, m = c.shape
    sig = np.full((n, m), np.nan)
    dv = np.full((n, m), np.nan)
    for i in range(m):
        rets = [math.log(c[t, i] / c[t - 1, i]) if t > 0 else math.nan for t in range(n)]
        last_sig = last_dv = math.nan
        for t in range(1, n):
            win = [x for x in rets[max(0, t - window):t] if not math.isnan(x)]
            if len(win) >= 2:
                mu = sum(win) / len(win)
                last_sig = math.sqrt(sum((x - mu) ** 2 for x in win) / (len(win) - 1))
            x = v[t - 1, i] * c[t - 1, i]
            if x > 0:
                last_dv = x
            sig[t, i], dv[t, i] = last_sig, last_dv
    return sig, dv


@pytest.fixture(scope="module")
def wide() -> dict[str, pd.DataFrame]:
    """BTC, ETH, SOL, AVAX 1h bars, 2020-06-01 .. 2020-11-05 on the dense grid: SOL and AVAX list inside
    the window (NaN before), plus a few holes punched into single cells."""
    bars = pd.read_parquet(SHIPPED_DATA / "ohlcv_1h.parquet")
    w = pivot_bars(bars, ["BTCUSDT", "ETHUSDT", "SOLUSDT", "AVAXUSDT"])
    w = {k: v.loc["2020-06-01":"2020-11-05"].copy() for k, v in w.items()}
    rng = np.random.default_rng(11)
    n = len(w["open"])
    for _ in range(40):
        t, i = int(rng.integers(1, n)), int(rng.integers(0, 4))
        w["open"].iloc[t, i] = np.nan
        if rng.random() < 0.5:
            w["close"].iloc[t, i] = np.nan
    return w


def random_targets(shape: tuple[int, int], seed: int, nan_share: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.uniform(-0.45, 0.45, shape)
    w[rng.random(shape) < 0.2] = 0.0
    w[rng.random(shape) < nan_share] = np.nan
    return w


def test_matches_plain_python_reference_on_real_data(wide: dict[str, pd.DataFrame]) -> None:
    o, c = wide["open"].to_numpy(), wide["close"].to_numpy()
    assert np.isnan(o[:, 2]).sum() > 1000 and 0 < np.isnan(o[:, 0]).sum() < 100
    w = random_targets(o.shape, seed=5)
    funding = np.random.default_rng(6).normal(1e-5, 3e-5, o.shape)
    config = BacktestConfig(initial_equity=10_000.0, fee_bps=10.0, slippage_bps=3.0, rebalance_threshold=0.05)
    r = backtest(wide["open"], wide["close"], w, config, funding=funding)
    eq, held = reference_backtest(o, c, w, 10.0, 3.0, funding, 0.05, 10_000.0)
    np.testing.assert_allclose(r.equity, eq, rtol=1e-9)
    np.testing.assert_allclose(r.units, held, rtol=1e-9, atol=1e-15)
    assert r.index.equals(wide["open"].index)
    assert r.n_trades > 1000 and abs(r.equity[-1] / 10_000.0 - 1) > 0.01
    # costs add up: gross − net equals the costs over the previous equity
    prev = np.concatenate([[10_000.0], r.equity[:-1]])
    np.testing.assert_allclose((r.gross_returns - r.returns) * prev, r.total_costs(), atol=1e-9)
    assert r.fees.sum() > 0 and r.slippage.sum() > 0 and r.funding.sum() != 0


def test_volatility_slippage_matches_reference_on_real_data(wide: dict[str, pd.DataFrame]) -> None:
    o, c, v = (wide[k].to_numpy()[:1500] for k in ("open", "close", "volume"))
    w = random_targets(o.shape, seed=8, nan_share=0.7)
    config = BacktestConfig(initial_equity=5e6, fee_bps=4.0, slippage="volatility", slippage_bps=1.0,
                            impact_k=0.7, vol_window=12)
    r = backtest(o, c, w, config, volume=v)
    sig, dv = sigma_and_dollar_volume(c, v, 12)
    eq, held = reference_backtest(o, c, w, 4.0, 1.0, np.zeros(o.shape), 0.0, 5e6, impact=(0.7, sig, dv))
    np.testing.assert_allclose(r.equity, eq, rtol=1e-9)
    # the impact term matters at this size: more slippage than the half spread alone
    assert r.slippage.sum() > 2 * 1e-4 * (r.turnover * np.concatenate([[5e6], r.equity[:-1]])).sum()


def test_from_signals_matches_reference_on_real_data(wide: dict[str, pd.DataFrame]) -> None:
    o, c = wide["open"]["BTCUSDT"], wide["close"]["BTCUSDT"]
    rng = np.random.default_rng(2)
    sig = rng.choice([-1.0, 0.0, 1.0, np.nan], size=len(o), p=[0.02, 0.02, 0.02, 0.94])
    config = BacktestConfig(fee_bps=10.0, slippage_bps=2.0)
    r = from_signals(o, c, sig, size=0.8, config=config)
    tgt = signals_to_targets(sig, size=0.8)[:, None]
    eq, _ = reference_backtest(o.to_numpy()[:, None], c.to_numpy()[:, None], tgt, 10.0, 2.0,
                               np.zeros((len(o), 1)), math.inf, config.initial_equity)
    np.testing.assert_allclose(r.equity, eq, rtol=1e-9)
    assert r.n_trades > 50


# ---------------------------------------------------------------------------------------------------------
# vectorbt reference
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_matches_vectorbt_from_orders_on_btc() -> None:
    vbt = pytest.importorskip("vectorbt")
    bars = pd.read_parquet(SHIPPED_DATA / "ohlcv_1h.parquet")
    btc = bars[bars["symbol"] == "BTCUSDT"].sort_values("timestamp").iloc[40_000:43_000]
    o, c = btc["open"].to_numpy(), btc["close"].to_numpy()
    rng = np.random.default_rng(0)
    # |target| <= 0.9: vectorbt caps a buy at the cash on hand, this backtester lets fees borrow
    w = np.round(rng.uniform(-0.9, 0.9, len(o)), 3)
    w[rng.random(len(o)) < 0.7] = np.nan
    config = BacktestConfig(initial_equity=10_000.0, fee_bps=10.0, slippage_bps=5.0)
    # NaN = hold; then the same targets carried forward, so every bar re-weights to a constant target
    for held, targets in ((True, w), (False, pd.Series(w).ffill().fillna(0.0).to_numpy())):
        r = backtest(o, c, targets, config)
        pf = vbt.Portfolio.from_orders(close=c, size=np.concatenate([[np.nan], targets[:-1]]),
                                       size_type="targetpercent", price=o, fees=1e-3, slippage=5e-4,
                                       init_cash=10_000.0, direction="both")
        np.testing.assert_allclose(r.equity, pf.value().to_numpy(), rtol=1e-9)
        np.testing.assert_allclose(r.fees.sum(), pf.orders.records["fees"].sum(), rtol=1e-9)
        if held:  # (vectorbt skips re-weighting fills below its 1e-9 relative tolerance)
            assert r.n_trades == pf.orders.count()
