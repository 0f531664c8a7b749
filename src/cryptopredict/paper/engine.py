"""The paper trader's loop: closed bar → Serve app → risk manager over all coins → simulated fills.

Per newly closed bar ``t`` (open time ``ts``), in this order:

1. ask the Serve app for every symbol; a prediction is *used* only when its ``as_of`` is bar ``t``'s open
   time (the project's bar timestamp). An older ``as_of`` is stale, a newer one belongs to a later bar
   (it would look ahead); a 503 stale-data answer or an app that stays unreachable skips the bar's
   decision. After downtime every missed bar is processed, but only the newest closed one is decided:
   a decision for a past bar could not have been acted on at its close. A skipped bar still fills the
   previous target and is marked; its own target is NaN, which the backtester reads as "hold the units";
2. target weights for bar ``t``: ``risk.target_positions`` over every coin at once (gross and portfolio
   vol caps, cost filter) with the probabilities, ``log_vol = log(predicted_volatility)``, the
   confidence and (``use_log_vol_var``) ``log_vol_var = uncertainty.aleatoric_vol + uncertainty.epistemic_vol``
   (the fusion's total log-vol variance, what the evaluation's sizing uses). The response's
   ``position_size`` (one coin alone) is logged, never traded;
3. fills: ``backtest.backtest`` over the ledger's bars and targets, so the target decided at bar ``t - 1``
   fills at ``open[t]`` with exactly the backtester's fees, slippage (fixed or volatility/impact model),
   funding and rebalancing rule, and equity is marked at ``close[t]``;
4. one SQLite transaction with all of bar ``t``'s rows (``ledger.py``), then one line on stdout.

Steps 2-3 re-run the risk manager and the backtester over the whole ledger history on every bar
(milliseconds for a year of hourly bars): the paper ledger *is* the backtest of the bars and targets it
saw, by construction, and a restart resumes it from the rows on disk. Both are deterministic and causal
(row ``t`` uses rows <= ``t`` only), so earlier rows never change; ``PaperEngine`` checks on start that
the stored history replays to the stored equity and units.

Fault injection (tests): ``CRYPTOPREDICT_PAPER_FAULT="point@n,..."`` SIGKILLs the process when it reaches
``point`` on the ``n``-th bar it processes; points: before_predict, after_predict (the decision, fills
and marks computed, nothing written), in_commit (inside the open transaction), after_commit.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import pandas as pd

from cryptopredict.data.sources.retry import RetriesExhausted
from cryptopredict.evaluation.backtest import BacktestConfig, BacktestResult, backtest
from cryptopredict.evaluation.metrics import max_drawdown, sharpe_ratio
from cryptopredict.evaluation.risk import RiskConfig, target_positions
from cryptopredict.paper.client import (
    PredictionClient,
    ServeRequestError,
    ServeSchemaError,
    ServeUnavailable,
    Skip,
)
from cryptopredict.paper.feed import BarFeed, BarSet
from cryptopredict.paper.ledger import BarRecord, History, Ledger
from cryptopredict.serving.schemas import Prediction
from cryptopredict.serving.schemas import BatchPrediction

log = logging.getLogger(__name__)

FAULT_ENV = "CRYPTOPREDICT_PAPER_FAULT"
FAULT_POINTS = ("before_predict", "after_predict", "in_commit", "after_commit")
YEAR_MS = 365 * 24 * 3600 * 1000



def total_log_vol_var(p: Prediction) -> float:
    """The total variance of the predicted log volatility (aleatoric + epistemic), as in the evaluation."""
    return p.uncertainty.aleatoric_vol + p.uncertainty.epistemic_vol

class PaperStopped(RuntimeError):
    """The trader cannot go on (the Serve app unreachable for too many bars in a row)."""


class FaultPoints:
    """Test hook: SIGKILL this process at named points (see the module docstring)."""

    def __init__(self, spec: str | None = None) -> None:
        self.kill_at: set[tuple[str, int]] = set()
        for item in filter(None, (s.strip() for s in (spec or "").split(","))):
            point, _, n = item.partition("@")
            if point not in FAULT_POINTS or not n.isdigit():
                raise ValueError(f"{FAULT_ENV}: {item!r} is not point@n with point one of {FAULT_POINTS}")
            self.kill_at.add((point, int(n)))
        self.bar = 0  # bars begun by this process, 1-based

    @classmethod
    def from_env(cls) -> FaultPoints:
        return cls(os.environ.get(FAULT_ENV))

    def hit(self, point: str) -> None:
        if (point, self.bar) in self.kill_at:
            log.warning("fault injection: SIGKILL at %s on bar %d", point, self.bar)
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def _iso(ts_ms: int) -> str:
    return pd.Timestamp(ts_ms, unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%MZ")


def _as_of_ms(value: str) -> int:
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value // 1_000_000)


@dataclass(frozen=True)
class Decision:
    """What bar ``t`` gets from the Serve app: ``inputs`` (N, 6) of used predictions (NaN rows unused),
    the prediction rows to log, and the status/reason."""

    status: str  # "decided" | "skipped"
    reason: str
    inputs: np.ndarray
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class Summary:
    """The run so far (whole ledger) and this process's share."""

    bars: int
    bars_this_run: int
    decided: int
    skipped: int
    trades: int
    fees: float
    slippage: float
    funding: float
    initial_cash: float
    equity: float
    net_pnl: float
    sharpe: float
    max_drawdown: float

    def render(self) -> str:
        return (f"paper summary: {self.bars} bars ({self.bars_this_run} this run; {self.decided} decided, "
                f"{self.skipped} skipped), {self.trades} trades, fees {self.fees:,.2f} + slippage "
                f"{self.slippage:,.2f} + funding {self.funding:,.2f}, equity {self.equity:,.2f}, net PnL "
                f"{self.net_pnl:+,.2f} ({self.net_pnl / self.initial_cash:+.2%}), Sharpe {self.sharpe:.2f} "
                f"(annualised, per-bar returns), max drawdown {self.max_drawdown:.2%}")


class PaperEngine:
    """Paper trading of ``feed.symbols`` with predictions from ``client``, persisted in ``ledger``."""

    def __init__(self, feed: BarFeed, client: PredictionClient, ledger: Ledger, risk: RiskConfig,
                 costs: BacktestConfig, *, use_log_vol_var: bool = True, max_unavailable_bars: int = 3,
                 faults: FaultPoints | None = None, out: TextIO | None = None) -> None:
        if ledger.symbols != feed.symbols:
            raise ValueError(f"ledger symbols {ledger.symbols} != feed symbols {feed.symbols}")
        self.feed, self.client, self.ledger = feed, client, ledger
        self.risk, self.costs = risk, costs
        self.symbols = feed.symbols
        self.use_log_vol_var = use_log_vol_var
        self.max_unavailable_bars = max_unavailable_bars
        self.faults = faults or FaultPoints()
        self.out = out if out is not None else sys.stdout
        self.history: History = ledger.load_history()
        self.unavailable_streak = 0
        self.bars_this_run = 0
        self._verify_replay()

    # ------------------------------------------------------------------------------------- one bar

    def process(self, bar: BarSet, *, latest: bool = True) -> BarRecord:
        """Decide, fill and commit one closed bar (the one after the ledger's last). ``latest=False``: a later
        bar has closed already (catching up after downtime), so no decision is taken for this one."""
        last = self.history.ts[-1] if len(self.history) else None
        if last is not None and bar.ts != last + self.feed.tf_ms:
            raise RuntimeError(f"bar {_iso(bar.ts)} does not follow the last committed bar {_iso(last)}")
        self.faults.bar += 1
        self.faults.hit("before_predict")
        if latest:
            decision = self._decide(bar.ts)
        else:
            decision = Decision("skipped", "catching up: a later bar has closed; no decision for a past bar",
                                np.full((len(self.symbols), 6), np.nan), [])
        ohlcv = np.column_stack([bar.open, bar.high, bar.low, bar.close, bar.volume])
        pending = self.history.appended(bar.ts, ohlcv, decision.inputs, np.full(len(self.symbols), np.nan))
        target = (self._targets(pending)[-1] if decision.status == "decided"
                  else np.full(len(self.symbols), np.nan))
        history = self.history.appended(bar.ts, ohlcv, decision.inputs, target)
        result = self._backtest(history)
        record = self._record(bar, decision, target, history, result)
        self.faults.hit("after_predict")
        self.ledger.commit(record, inside=lambda: self.faults.hit("in_commit"))
        self.faults.hit("after_commit")
        self.history = history
        self.bars_this_run += 1
        print(self._line(record), file=self.out, flush=True)
        return record

    def _decide(self, ts: int) -> Decision:
        n = len(self.symbols)
        inputs = np.full((n, 6), np.nan)
        try:
            answer = self.client.predict(self.symbols, self.risk.horizon)
        except ServeUnavailable as exc:
            self.unavailable_streak += 1
            log.error("bar %s: %s (%d bar(s) in a row)", _iso(ts), exc, self.unavailable_streak)
            if self.unavailable_streak >= self.max_unavailable_bars:
                raise PaperStopped(f"the Serve app was unavailable for {self.unavailable_streak} bars in a row "
                                   f"(paper.max_unavailable_bars): {exc}") from exc
            return Decision("skipped", f"serve unavailable: {exc}", inputs, [])
        self.unavailable_streak = 0
        if isinstance(answer, Skip):
            log.warning("bar %s skipped, positions kept: the Serve app answered 503: %s", _iso(ts), answer.reason)
            return Decision("skipped", f"stale data (503): {answer.reason}", inputs, [])
        return self._use(ts, answer, inputs)

    def _use(self, ts: int, answer: BatchPrediction, inputs: np.ndarray) -> Decision:
        by_symbol: dict[str, Prediction] = {}
        for p in answer.predictions:
            if p.symbol in by_symbol:
                raise ServeSchemaError(f"the Serve app answered twice for {p.symbol}")
            by_symbol[p.symbol] = p
        rows: list[dict[str, Any]] = []
        notes: list[str] = []
        missing = [s for s in self.symbols if s not in by_symbol]
        if missing:
            notes.append(f"no prediction for {missing}")
        for i, symbol in enumerate(self.symbols):
            p = by_symbol.get(symbol)
            if p is None:
                continue
            if p.horizon != self.risk.horizon:
                raise ServeRequestError(f"the Serve app predicts {p.horizon} bars ahead for {symbol}; the risk "
                                        f"manager is set for features.horizon = {self.risk.horizon}")
            as_of = _as_of_ms(p.as_of)
            used = as_of == ts and p.predicted_volatility > 0
            if as_of < ts:
                notes.append(f"{symbol} stale (as of {p.as_of})")
            elif as_of > ts:
                notes.append(f"{symbol} as of {p.as_of} is newer than this bar (not used: it would look ahead)")
            elif not used:
                notes.append(f"{symbol} predicted volatility {p.predicted_volatility} (not used: log of it)")
            if used:
                inputs[i] = [p.probabilities.SELL, p.probabilities.HOLD, p.probabilities.BUY,
                             math.log(p.predicted_volatility),
                             total_log_vol_var(p) if self.use_log_vol_var else 0.0, p.confidence]
            rows.append({"symbol": symbol, "as_of": p.as_of, "used": int(used), "p_sell": p.probabilities.SELL,
                         "p_hold": p.probabilities.HOLD, "p_buy": p.probabilities.BUY,
                         "log_vol": math.log(p.predicted_volatility) if p.predicted_volatility > 0 else math.nan,
                         "log_vol_var": total_log_vol_var(p), "confidence": p.confidence,
                         "signal": p.signal, "position_size": p.position_size, "model_version": p.model_version})
        reason = "; ".join(notes)
        if notes:
            log.warning("bar %s: %s", _iso(ts), reason)
        if not any(r["used"] for r in rows):
            return Decision("skipped", reason or "no usable prediction", inputs, rows)
        return Decision("decided", reason, inputs, rows)

    def _targets(self, history: History) -> np.ndarray:
        """``risk.target_positions`` over the history's used predictions, (T, N)."""
        proba = np.stack([history.input(c) for c in ("p_sell", "p_hold", "p_buy")], axis=-1)
        return target_positions(proba, history.input("log_vol"), history.input("confidence"), self.risk,
                                log_vol_var=history.input("log_vol_var"))

    def _backtest(self, history: History) -> BacktestResult:
        return backtest(history.ohlcv_field("open"), history.ohlcv_field("close"), history.target_array(),
                        self.costs, volume=history.ohlcv_field("volume"))

    @staticmethod
    def _marks(history: History) -> np.ndarray:
        """Each symbol's last known price after the last bar (its close, else its open, else earlier), as
        the backtester marks it."""
        prices = np.stack([history.ohlcv_field("open"), history.ohlcv_field("close")], axis=1)
        prices = prices.reshape(-1, len(history.symbols))  # open, close, open, close, ... per symbol
        return pd.DataFrame(prices).ffill().iloc[-1].to_numpy(float)

    def _record(self, bar: BarSet, decision: Decision, target: np.ndarray, history: History,
                result: BacktestResult) -> BarRecord:
        t = len(history) - 1
        prev_units = result.units[t - 1] if t > 0 else np.zeros(len(self.symbols))
        prev_equity = result.equity[t - 1] if t > 0 else self.costs.initial_equity
        units, marks = result.units[t], self._marks(history)
        value = 0.0
        for i in range(len(self.symbols)):
            if units[i] != 0.0:
                value += units[i] * marks[i]
        equity = float(result.equity[t])
        orders = []
        for i in np.flatnonzero(result.traded[t]):
            delta = float(units[i] - prev_units[i])
            orders.append({"symbol": self.symbols[i], "side": "buy" if delta > 0 else "sell", "units": delta,
                           "price": float(result.exec_price[t, i]), "notional": abs(delta) * float(bar.open[i]),
                           "fee": float(result.fees[t, i]), "slippage": float(result.slippage[t, i])})
        positions = [{"symbol": s, "units": float(units[i]), "mark": float(marks[i]),
                      "weight": float(result.positions[t, i]), "target": float(target[i])}
                     for i, s in enumerate(self.symbols)]
        bars = [{"symbol": s, "open": bar.open[i], "high": bar.high[i], "low": bar.low[i], "close": bar.close[i],
                 "volume": bar.volume[i]} for i, s in enumerate(self.symbols)]
        step = {"status": decision.status, "reason": decision.reason, "cash": equity - value, "equity": equity,
                "pnl": equity - float(prev_equity), "ret": float(result.returns[t]),
                "fees": float(result.fees[t].sum()), "slippage": float(result.slippage[t].sum()),
                "funding": float(result.funding[t].sum()), "turnover": float(result.turnover[t]),
                "gross_exposure": float(np.abs(result.positions[t]).sum()), "n_orders": len(orders)}
        return BarRecord(bar.ts, bars, decision.rows, orders, positions, step)

    def _verify_replay(self) -> None:
        """The stored history must replay to the stored equity, units and targets (else the code or the
        settings changed under the ledger)."""
        if not len(self.history):
            return
        stored = self.ledger.frames()
        result = self._backtest(self.history)
        last = stored["steps"].iloc[-1]
        held = stored["positions"].loc[stored["positions"]["ts"] == last["ts"]].set_index("symbol")
        units = held["units"].reindex(self.symbols).to_numpy(float)
        if result.equity[-1] != last["equity"] or not np.array_equal(result.units[-1], units):
            raise RuntimeError(f"the ledger in {self.ledger.dir} does not replay: equity {result.equity[-1]!r} "
                               f"vs stored {last['equity']!r} at {_iso(int(last['ts']))}")
        decided = np.array([s == "decided" for s in stored["steps"]["status"]])
        targets = self._targets(self.history)[decided]
        if not np.array_equal(targets, self.history.target_array()[decided], equal_nan=True):
            raise RuntimeError(f"the ledger in {self.ledger.dir} does not replay: the risk manager gives other "
                               "targets for the stored predictions")

    def _line(self, record: BarRecord) -> str:
        s = record.step
        moves = " ".join(f"{p['symbol']} {p['weight']:+.3f}" + ("" if math.isnan(p["target"]) else
                                                                 f"→{p['target']:+.3f}")
                         for p in record.positions)
        why = f" ({s['reason']})" if s["reason"] else ""
        return (f"{_iso(record.ts)} {s['status']:<7} equity {s['equity']:,.2f} cash {s['cash']:,.2f} "
                f"pnl {s['pnl']:+,.2f} fees {s['fees']:,.2f} orders {s['n_orders']} | {moves}{why}")

    # ------------------------------------------------------------------------------------- the loop

    def run(self, *, stop: threading.Event | None = None, max_bars: int | None = None, once: bool = False,
            poll_s: float | None = None, grace_s: float = 2.0,
            sleep: Callable[[float], None] | None = None) -> Summary:
        """Process each newly closed bar until ``stop`` is set, ``max_bars`` bars were processed by this
        call, or (``once``) the bars closed so far are done. Waits ``poll_s`` seconds between polls (None:
        until the next bar's close + ``grace_s``). Returns the summary of the whole ledger."""
        stop = stop or threading.Event()
        wait = sleep or stop.wait
        done = 0
        while not stop.is_set() and (max_bars is None or done < max_bars):
            try:
                bars = self._new_bars()
            except RetriesExhausted as exc:  # the exchange is down: nothing is lost, the ledger is the cursor
                if once:
                    raise PaperStopped(f"the exchange did not answer: {exc}") from exc
                log.error("no bars this poll: %s", exc)
                bars = []
            for k, bar in enumerate(bars):
                if stop.is_set() or (max_bars is not None and done >= max_bars):
                    break
                self.process(bar, latest=k == len(bars) - 1)
                done += 1
            if once or stop.is_set() or (max_bars is not None and done >= max_bars):
                break
            wait(self._delay(poll_s, grace_s))
        return self.summary()

    def _new_bars(self) -> list[BarSet]:
        """Closed bars after the ledger's last (from the newest closed one when the ledger is empty)."""
        if len(self.history):
            return self.feed.closed_since(self.history.ts[-1] + self.feed.tf_ms)
        start = self.feed.latest_closed()
        return [] if start is None else self.feed.closed_since(start)

    def _delay(self, poll_s: float | None, grace_s: float) -> float:
        if poll_s is not None:
            return poll_s
        tf = self.feed.tf_ms
        nxt = (self.history.ts[-1] + tf) if len(self.history) else None
        now = self.feed.clock()
        if nxt is None:
            return max(grace_s, 1.0)
        delay = (nxt + tf - now) / 1000 + grace_s
        return min(max(delay, max(grace_s, 1.0)), tf / 1000)

    def summary(self) -> Summary:
        """Totals over the whole ledger (every run of it), see ``Summary``."""
        frames = self.ledger.frames()
        steps, orders = frames["steps"], frames["orders"]
        rets = steps["ret"].to_numpy(float)
        equity = float(steps["equity"].iloc[-1]) if len(steps) else self.costs.initial_equity
        return Summary(
            bars=len(steps), bars_this_run=self.bars_this_run, decided=int((steps["status"] == "decided").sum()),
            skipped=int((steps["status"] == "skipped").sum()), trades=len(orders),
            fees=float(steps["fees"].sum()), slippage=float(steps["slippage"].sum()),
            funding=float(steps["funding"].sum()), initial_cash=self.costs.initial_equity, equity=equity,
            net_pnl=equity - self.costs.initial_equity,
            sharpe=sharpe_ratio(rets, bars_per_year=YEAR_MS / self.feed.tf_ms) if len(rets) > 1 else math.nan,
            max_drawdown=max_drawdown(rets) if len(rets) else 0.0)
