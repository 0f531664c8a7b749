"""Paper fills cost exactly what the backtester charges: the ledger, built bar by bar through the CLI against
the fakes, equals one backtest run on inputs rebuilt independently (candles from the fake exchange's formula,
predictions from the fake model's formula), and satisfies the cost model's identities fill by fill."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cryptopredict.evaluation.backtest import BacktestConfig, backtest
from cryptopredict.evaluation.risk import RiskConfig, target_positions
from cryptopredict.paper.ledger import read_ledger
from tests.exchange.fake_binance import HOUR_MS, candle
from tests.paper.conftest import FIRST_BAR
from tests.paper.fake_serve import FakeServe, SteppedClock, inputs_for, prediction_for

SYMBOLS = ["BNBUSDT", "BTCUSDT", "ETHUSDT"]  # the trader sorts its symbols; the backtest must too
N_BARS = 12
STALE, OMIT_ETH = 4, 7  # bar 4: the app answers 503; bar 7: no ETH prediction
COSTS = BacktestConfig(initial_equity=25_000.0, fee_bps=7.5, slippage="volatility", slippage_bps=3.0, impact_k=0.5,
                       vol_window=3, funding_rate=5e-5, rebalance_threshold=0.01)
OVERRIDES = ["--set", "paper.initial_cash=25000", "--set", "evaluation.backtest.fee_bps=7.5",
             "--set", "evaluation.backtest.slippage=volatility", "--set", "evaluation.backtest.slippage_bps=3",
             "--set", "evaluation.backtest.impact_k=0.5", "--set", "evaluation.backtest.vol_window=3",
             "--set", "evaluation.backtest.funding_rate=0.00005",
             "--set", "evaluation.backtest.rebalance_threshold=0.01"]


def pivot(frame, column: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    return frame.pivot(index="ts", columns="symbol", values=column)[SYMBOLS].to_numpy(float)


@pytest.fixture
def ledger(run_once: Callable[..., int], clock: SteppedClock, serve: FakeServe, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    for k in range(N_BARS):
        if k:
            clock.advance(3600)
        bar = FIRST_BAR + k * HOUR_MS
        serve.stale_bars = {bar} if k == STALE else set()
        serve.omit = {"ETHUSDT"} if k == OMIT_ETH else set()
        assert run_once(*OVERRIDES, symbols=",".join(SYMBOLS)) == 0
    return read_ledger(tmp_path / "state")


def test_ledger_equals_one_backtest_on_the_same_bars_and_targets(ledger: dict) -> None:  # type: ignore[type-arg]
    ts = [FIRST_BAR + k * HOUR_MS for k in range(N_BARS)]
    bars = np.array([[candle(s, "1h", t) for s in SYMBOLS] for t in ts])  # (T, N, ohlcv)
    open_, close, volume = bars[..., 0], bars[..., 3], bars[..., 4]
    inputs = np.full((N_BARS, len(SYMBOLS), 6), np.nan)
    for k, t in enumerate(ts):
        for i, s in enumerate(SYMBOLS):
            if k != STALE and not (k == OMIT_ETH and s == "ETHUSDT"):
                inputs[k, i] = inputs_for(s, t, 4)
    targets = target_positions(inputs[..., :3], inputs[..., 3], inputs[..., 5], RiskConfig(horizon=4),
                               log_vol_var=inputs[..., 4])
    targets[STALE] = np.nan  # a skipped bar holds the units
    expected = backtest(open_, close, targets, COSTS, volume=volume)

    steps, positions, orders = ledger["steps"], ledger["positions"], ledger["orders"]
    assert steps["ts"].tolist() == ts
    assert steps["status"].tolist() == ["skipped" if k == STALE else "decided" for k in range(N_BARS)]
    np.testing.assert_array_equal(steps["equity"].to_numpy(), expected.equity)
    np.testing.assert_array_equal(pivot(positions, "units"), expected.units)
    np.testing.assert_array_equal(pivot(positions, "target"), targets)
    np.testing.assert_array_equal(steps["fees"].to_numpy(), expected.fees.sum(axis=1))
    np.testing.assert_array_equal(steps["slippage"].to_numpy(), expected.slippage.sum(axis=1))
    np.testing.assert_array_equal(steps["funding"].to_numpy(), expected.funding.sum(axis=1))
    np.testing.assert_array_equal(steps["ret"].to_numpy(), expected.returns)
    orders = orders.assign(k=orders["symbol"].map(SYMBOLS.index)).sort_values(["ts", "k"])  # backtest's order
    fills = expected.fills()
    assert len(orders) == expected.n_trades == len(fills) > 10
    assert (orders["side"] == "sell").any() and (orders["side"] == "buy").any()
    np.testing.assert_array_equal(orders["fee"].to_numpy(), expected.fees[expected.traded.nonzero()])
    np.testing.assert_array_equal(orders["price"].to_numpy(), expected.exec_price[expected.traded.nonzero()])
    # the bar after the 503 has no fills: the skipped bar's target is "hold"
    assert not (orders["ts"] == ts[STALE + 1]).any()


def test_each_fill_obeys_the_cost_model(ledger: dict) -> None:  # type: ignore[type-arg]
    steps, positions, orders = ledger["steps"], ledger["positions"], ledger["orders"]
    opens = {(r.ts, r.symbol): r.open for r in ledger["bars"].itertuples()}
    impact_seen = False
    for o in orders.itertuples():
        p = opens[(o.ts, o.symbol)]
        assert o.notional == pytest.approx(abs(o.units) * p, rel=1e-12)
        s = o.slippage / o.notional
        assert s >= 3e-4 * (1 - 1e-9)  # half spread, plus the square-root impact once σ and volume exist
        impact_seen |= s > 3e-4 * (1 + 1e-6)
        assert o.price == pytest.approx(p * (1 + s) if o.units > 0 else p * (1 - s), rel=1e-12)
        assert o.fee == pytest.approx(7.5e-4 * abs(o.units) * o.price, rel=1e-12)
    assert impact_seen
    cash = COSTS.initial_equity
    held = positions.pivot(index="ts", columns="symbol", values="units")
    marks = positions.pivot(index="ts", columns="symbol", values="mark")
    for step in steps.itertuples():
        bar_orders = orders[orders["ts"] == step.ts]
        funding = float((5e-5 * held.loc[step.ts] * marks.loc[step.ts]).sum())
        assert step.funding == pytest.approx(funding, rel=1e-9, abs=1e-12)
        cash -= float((bar_orders["units"] * bar_orders["price"] + bar_orders["fee"]).sum()) + funding
        assert step.cash == pytest.approx(cash, rel=1e-9, abs=1e-6)
        assert step.equity == pytest.approx(cash + float((held.loc[step.ts] * marks.loc[step.ts]).sum()),
                                            rel=1e-12)


def test_targets_come_from_the_risk_manager_over_all_coins(ledger: dict) -> None:  # type: ignore[type-arg]
    """The gross cap binds across coins; the app's one-coin ``position_size`` is logged, not traded."""
    positions, predictions = ledger["positions"], ledger["predictions"]
    targets = pivot(positions, "target")
    decided = ~np.isnan(targets).all(axis=1)
    gross = np.abs(targets[decided]).sum(axis=1)
    assert (gross <= 1.0 + 1e-12).all()
    alone = (predictions.pivot(index="ts", columns="symbol", values="position_size")
             .reindex(index=sorted(positions["ts"].unique()), columns=SYMBOLS).to_numpy(float))
    assert np.isclose(gross, 1.0).any() and (np.nansum(np.abs(alone), axis=1) > 1.0).any()
    assert not np.allclose(np.nan_to_num(alone[decided]), targets[decided])
    used = predictions[predictions["used"] == 1]
    assert len(used) == (N_BARS - 1) * len(SYMBOLS) - 1
    row = used.iloc[0]
    p = prediction_for(row["symbol"], int(row["ts"]), 4)
    assert row["p_buy"] == p.probabilities.BUY and row["confidence"] == p.confidence
