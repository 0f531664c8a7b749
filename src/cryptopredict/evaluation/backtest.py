"""Backtester: target positions (fractions of equity per asset) in, per-bar returns, equity and costs out.

Inputs are aligned time × asset arrays (or DataFrames with identical index and columns): ``open``,
``close`` and ``targets`` in [-1, 1] (+ long, 0 flat, − short, as a fraction of the portfolio's equity;
NaN = no instruction). Row ``t`` is the bar that OPENS at ``index[t]``; ``targets[t]`` is decided at the
CLOSE of bar ``t`` (that is when a model's prediction for row t exists, see ``models/base.py``).

Accounting (one cash account, positions held in units of each asset, equity marked at every bar's close):

1. Timing. ``targets[t]`` is executed at ``open[t + 1]`` and never on bar ``t``: a target changes nothing
   on the bar it was formed on. Nothing trades on bar 0; the last row's targets are never executed.
2. Sizing. At ``open[t]`` the pre-trade equity ``E_o = cash + Σ units_i · p_i`` values every asset at its
   last known price (this bar's open where there is one). Asset i is bought or sold to
   ``units_i = targets[t-1, i] · E_o / open[t, i]``: all target units of a bar come from the same ``E_o``.
3. Costs on a fill of ``Δ`` units at ``open[t, i] = p``: slippage moves the fill price to ``p·(1 + s)``
   (buy) or ``p·(1 − s)`` (sell), costing ``s·|Δ|·p``; the fee is ``fee_bps/1e4 · |Δ| · fill price``
   (on the traded value, per side: a flip from +1 to −1 trades 2× the equity). Both are paid from cash,
   so right after a fill the held weight is slightly off the target (cash may be slightly negative).
4. Marking. A bar's net return is ``E[t] / E[t-1] − 1`` with ``E[t] = cash + Σ units_i · close[t, i]``
   after funding; over bar t the old units earn ``close[t-1] → open[t]`` and the new units
   ``open[t] → close[t]``. Funding: ``funding[t, i] · units_i · close[t, i]`` leaves cash at the close of
   bar t, for the units held through the bar (longs pay and shorts receive when the rate is positive).
5. Gaps. An asset with no open at bar t does not trade then (the target formed at ``t - 1`` lapses; its
   units are held) and, with no close, it is marked at its last known price (the bar's open if it has
   one); it keeps paying funding.

Rebalancing. An asset trades when its target differs from the last target executed for it, or when its
held weight at the open (``units · open / E_o``) has drifted more than ``rebalance_threshold`` from an
unchanged target. With the default 0 a constant target is a constant weight, re-traded every bar
(vectorbt's ``from_orders(size_type="targetpercent")``); with ``inf`` units are held until the target
changes (``from_signals``).

Slippage models, with ``s`` the fraction of the open price above:

- ``fixed``: ``s = slippage_bps / 1e4``.
- ``volatility``: ``s = slippage_bps / 1e4 + impact_k · σ · sqrt(N / V)``, a half spread plus the
  square-root market-impact law: ``σ`` the standard deviation of 1-bar log close-to-close returns over the
  last ``vol_window`` bars and ``V`` the dollar volume (``volume · close``, volume in base units) of the
  last bar with a positive volume, both known at the close of bar ``t - 1``; ``N = |Δ| · p`` the traded
  notional. Until two returns and a positive volume precede a fill (an asset's first three bars) its
  impact term is 0.

If the pre-trade equity at an open is ≤ 0 the account is bust: from that bar every target is 0 and each
asset is closed at its next open. Speed: the loop is one numba kernel over bars × assets (see
``benchmarks/backtest_bench.py``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

ArrayOrFrame = np.ndarray | pd.DataFrame | pd.Series


class BacktestConfig(BaseModel):
    """Costs and execution rules. Rates are fractions per bar unless the name says bps (1e-4)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_equity: float = Field(10_000.0, gt=0, description="quote currency (USDT)")
    fee_bps: float = Field(10.0, ge=0, description="per side, on the traded value at the fill price")
    slippage: Literal["fixed", "volatility"] = "fixed"
    slippage_bps: float = Field(2.0, ge=0, description="half spread, in both slippage models")
    impact_k: float = Field(1.0, ge=0, description="square-root impact coefficient (volatility model)")
    vol_window: int = Field(24, ge=2, description="bars in the volatility estimate (volatility model)")
    funding_rate: float = Field(0.0, description="per bar, fraction of notional; used when no array is given")
    rebalance_threshold: float = Field(0.0, ge=0, description="weight drift that re-trades an unchanged target")


@dataclass(frozen=True)
class BacktestResult:
    """Per-bar outcome. Shapes: ``(T,)`` per bar, ``(T, N)`` per bar and asset; money in quote currency.

    ``equity``: at each bar's close. ``returns`` / ``gross_returns``: net of and before all costs (fees,
    slippage, funding) over the previous close's equity (the first bar's against ``initial_equity``).
    ``positions``: weights held at each close (``units · close / equity``). ``units``: held after the bar's
    fills. ``turnover``: traded notional over the pre-trade equity at the bar's open. ``fees``,
    ``slippage``, ``funding``: costs charged on the bar (funding < 0 is income). ``exec_price``: fill
    price, NaN where the asset did not trade.
    """

    index: pd.Index
    columns: pd.Index
    initial_equity: float
    equity: np.ndarray
    returns: np.ndarray
    gross_returns: np.ndarray
    positions: np.ndarray
    units: np.ndarray
    turnover: np.ndarray
    fees: np.ndarray
    slippage: np.ndarray
    funding: np.ndarray
    exec_price: np.ndarray
    bust_bar: int | None

    @property
    def gross_exposure(self) -> np.ndarray:
        """Σ |weight| at each close."""
        return np.abs(self.positions).sum(axis=1)

    @property
    def net_exposure(self) -> np.ndarray:
        """Σ weight at each close."""
        return self.positions.sum(axis=1)

    @property
    def traded(self) -> np.ndarray:
        """(T, N) bool: the asset had a fill at the bar's open."""
        return ~np.isnan(self.exec_price)

    @property
    def n_trades(self) -> int:
        """Number of fills (an order to one asset at one open; a flip is one fill)."""
        return int(self.traded.sum())

    def total_costs(self) -> np.ndarray:
        """Fees + slippage + funding per bar."""
        return (self.fees + self.slippage + self.funding).sum(axis=1)

    def to_frame(self) -> pd.DataFrame:
        """One row per bar: equity, returns, gross_returns, turnover, fees, slippage, funding (summed over
        assets), gross and net exposure."""
        return pd.DataFrame({
            "equity": self.equity, "returns": self.returns, "gross_returns": self.gross_returns,
            "turnover": self.turnover, "fees": self.fees.sum(axis=1), "slippage": self.slippage.sum(axis=1),
            "funding": self.funding.sum(axis=1), "gross_exposure": self.gross_exposure,
            "net_exposure": self.net_exposure,
        }, index=self.index)

    def positions_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.positions, index=self.index, columns=self.columns)

    def fills(self) -> pd.DataFrame:
        """Every fill: bar, asset, signed units, fill price, notional at the open, fee, slippage."""
        t, i = np.nonzero(self.traded)
        prev = np.vstack([np.zeros((1, self.units.shape[1])), self.units[:-1]])
        delta = (self.units - prev)[t, i]
        return pd.DataFrame({
            "timestamp": self.index[t], "asset": self.columns[i], "units": delta,
            "price": self.exec_price[t, i], "fee": self.fees[t, i], "slippage": self.slippage[t, i],
        })


@numba.njit(cache=True, nogil=True)
def _simulate(open_: np.ndarray, close: np.ndarray, target: np.ndarray, fee_rate: float, slip_fixed: float,
              impact_k: float, sigma: np.ndarray, dollar_volume: np.ndarray, funding: np.ndarray,
              threshold: float, initial_equity: float, units_out: np.ndarray, weight_out: np.ndarray,
              fee_out: np.ndarray, slip_out: np.ndarray, fund_out: np.ndarray, price_out: np.ndarray,
              equity_out: np.ndarray, turnover_out: np.ndarray, cost_out: np.ndarray) -> int:
    """The accounting of the module docstring, bar by bar. Writes the ``*_out`` arrays (the per-asset cost
    arrays and ``price_out`` must come in zeroed / NaN-filled; ``cost_out``: all costs of the bar);
    returns the bust bar or -1."""
    n_bars, n_assets = open_.shape
    units = np.zeros(n_assets)
    last_price = np.full(n_assets, np.nan)
    last_target = np.full(n_assets, np.nan)
    cash = initial_equity
    bust = -1
    for t in range(n_bars):
        equity_open = cash
        for i in range(n_assets):
            p = open_[t, i]
            if p == p:
                last_price[i] = p
            if units[i] != 0.0:
                equity_open += units[i] * last_price[i]
        if t > 0 and bust < 0 and equity_open <= 0.0:
            bust = t
        traded = 0.0
        costs = 0.0
        for i in range(n_assets):
            p = open_[t, i]
            if t == 0 or not p == p:
                continue
            if bust >= 0:
                new_units = 0.0
            else:
                tgt = target[t - 1, i]
                if not tgt == tgt:
                    continue
                if tgt == last_target[i] and abs(tgt - units[i] * p / equity_open) <= threshold:
                    continue
                last_target[i] = tgt
                new_units = tgt * equity_open / p
            delta = new_units - units[i]
            if delta == 0.0:
                continue
            notional = abs(delta) * p
            s = slip_fixed
            if impact_k > 0.0:
                sg = sigma[t, i]
                dv = dollar_volume[t, i]
                if sg == sg and dv > 0.0:
                    s += impact_k * sg * math.sqrt(notional / dv)
            fill = p * (1.0 + s) if delta > 0.0 else p * (1.0 - s)
            fee = fee_rate * abs(delta) * fill
            cash -= delta * fill + fee
            units[i] = new_units
            fee_out[t, i] = fee
            slip_out[t, i] = s * notional
            price_out[t, i] = fill
            traded += notional
            costs += fee + s * notional
        turnover_out[t] = traded / equity_open if equity_open > 0.0 else 0.0
        value = 0.0
        for i in range(n_assets):
            c = close[t, i]
            if c == c:
                last_price[i] = c
            if units[i] != 0.0:
                f = funding[t, i]
                if f == f and f != 0.0:
                    paid = f * units[i] * last_price[i]
                    cash -= paid
                    fund_out[t, i] = paid
                    costs += paid
                value += units[i] * last_price[i]
        equity = cash + value
        equity_out[t] = equity
        cost_out[t] = costs
        for i in range(n_assets):
            units_out[t, i] = units[i]
            weight_out[t, i] = units[i] * last_price[i] / equity if units[i] != 0.0 else 0.0
    return bust


@numba.njit(cache=True, nogil=True)
def _signal_state(entries: np.ndarray, exits: np.ndarray, short_entries: np.ndarray,
                  short_exits: np.ndarray) -> np.ndarray:
    """+1 / 0 / −1 after each bar's signals: exits close the matching side first, then an entry opens
    (reversing an opposite position); an entry and an exit of the same side on one bar cancel out, and so
    do a long and a short entry."""
    n = entries.shape[0]
    out = np.empty(n)
    state = 0.0
    for t in range(n):
        le, lx, se, sx = entries[t], exits[t], short_entries[t], short_exits[t]
        if le and lx:
            le = lx = False
        if se and sx:
            se = sx = False
        if le and se:
            le = se = False
        if (state > 0 and lx) or (state < 0 and sx):
            state = 0.0
        if le:
            state = 1.0
        elif se:
            state = -1.0
        out[t] = state
    return out


def _as_2d(x: ArrayOrFrame, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D (time × asset), got shape {a.shape}")
    return np.ascontiguousarray(a)


def _labels(frames: list[ArrayOrFrame], shape: tuple[int, int]) -> tuple[pd.Index, pd.Index]:
    """Index and columns from the first DataFrame/Series given; every other labelled input must agree."""
    index: pd.Index | None = None
    columns: pd.Index | None = None
    for f in frames:
        if isinstance(f, (pd.DataFrame, pd.Series)):
            cols = f.columns if isinstance(f, pd.DataFrame) else pd.Index([f.name])
            if index is None:
                index, columns = f.index, cols
            elif not (f.index.equals(index) and (isinstance(f, pd.Series) or cols.equals(columns))):
                raise ValueError("labelled inputs must share one index and one column order (align them first)")
    if index is None:
        return pd.RangeIndex(shape[0]), pd.RangeIndex(shape[1])
    assert columns is not None
    return index, columns


def _lagged_ffill(x: np.ndarray) -> np.ndarray:
    """Row t holds the last finite value of ``x`` at rows < t (NaN before the first)."""
    out = pd.DataFrame(x).shift(1).ffill().to_numpy()
    return np.ascontiguousarray(out)


def _funding_rates(funding: ArrayOrFrame | float, shape: tuple[int, int]) -> np.ndarray:
    """Funding rates as a (T, N) array (a broadcast view for a scalar or an (N,) row of per-asset rates)."""
    f = np.asarray(funding, dtype=np.float64)
    if f.ndim == 0 or (f.ndim == 1 and shape[1] > 1):
        if f.ndim == 1 and f.shape[0] != shape[1]:
            raise ValueError(f"a 1-D funding row needs one rate per asset ({shape[1]}), got {f.shape[0]}")
        return np.broadcast_to(f, shape)
    f = _as_2d(f, "funding")
    if f.shape != shape:
        raise ValueError(f"funding {f.shape} must have shape {shape}")
    return f


def impact_inputs(close: np.ndarray, volume: np.ndarray, vol_window: int) -> tuple[np.ndarray, np.ndarray]:
    """σ and dollar volume for the volatility slippage model, row t known at the close of bar t − 1.

    σ: sample std of 1-bar log close-to-close returns over the last ``vol_window`` bars (at least 2
    returns; a return across a missing bar is missing). Dollar volume: ``volume · close`` of the last bar
    with a positive volume.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.diff(np.log(close), axis=0, prepend=np.nan)
        dv = volume * close
    sigma = pd.DataFrame(r).rolling(vol_window, min_periods=2).std().to_numpy()
    dv = np.where(dv > 0, dv, np.nan)
    return _lagged_ffill(sigma), _lagged_ffill(dv)


def backtest(open_: ArrayOrFrame, close: ArrayOrFrame, targets: ArrayOrFrame,
             config: BacktestConfig | None = None, *, volume: ArrayOrFrame | None = None,
             funding: ArrayOrFrame | float | None = None) -> BacktestResult:
    """Simulate ``targets`` (decided at each bar's close, filled at the next open) on ``open_``/``close``.

    All arrays are (T, N) or (T,) for one asset and aligned; DataFrames must share index and columns.
    ``targets`` in [-1, 1] per asset, NaN = keep the position. ``volume`` (base units) is required by the
    volatility slippage model. ``funding``: per-bar rate, a scalar, an (N,) row or a (T, N) array
    (defaults to ``config.funding_rate``); NaN = no funding that bar. Conventions: module docstring.
    """
    cfg = config or BacktestConfig()
    o = _as_2d(open_, "open")
    c = _as_2d(close, "close")
    w = _as_2d(targets, "targets")
    if not (o.shape == c.shape == w.shape):
        raise ValueError(f"open {o.shape}, close {c.shape} and targets {w.shape} must have one shape")
    labelled: list[ArrayOrFrame] = [open_, close, targets]
    if (np.abs(w) > 1.0 + 1e-12).any():  # NaN compares False
        raise ValueError("targets must lie in [-1, 1] (fraction of equity per asset)")
    for name, a in (("open", o), ("close", c)):
        if (a <= 0.0).any() or np.isinf(a).any():
            raise ValueError(f"{name} prices must be positive and finite where present (NaN = missing)")
    shape = o.shape
    fund = _funding_rates(cfg.funding_rate if funding is None else funding, shape)
    if isinstance(funding, pd.DataFrame):
        labelled.append(funding)
    if cfg.slippage == "volatility":
        if volume is None:
            raise ValueError("the volatility slippage model needs volume")
        v = _as_2d(volume, "volume")
        if v.shape != shape:
            raise ValueError(f"volume {v.shape} must have shape {shape}")
        labelled.append(volume)
        sigma, dollar_volume = impact_inputs(c, v, cfg.vol_window)
        impact_k = cfg.impact_k
    else:
        sigma = dollar_volume = np.broadcast_to(np.nan, shape)
        impact_k = 0.0
    index, columns = _labels(labelled, shape)

    n_bars, n_assets = shape
    units = np.empty(shape)
    weights = np.empty(shape)
    fees = np.zeros(shape)
    slip = np.zeros(shape)
    fund_paid = np.zeros(shape)
    exec_price = np.full(shape, np.nan)
    equity = np.empty(n_bars)
    turnover = np.empty(n_bars)
    costs = np.empty(n_bars)
    bust = _simulate(o, c, w, cfg.fee_bps * 1e-4, cfg.slippage_bps * 1e-4, impact_k, sigma, dollar_volume,
                     fund, cfg.rebalance_threshold, cfg.initial_equity, units, weights, fees, slip, fund_paid,
                     exec_price, equity, turnover, costs)
    if bust >= 0:
        log.warning("backtest: equity <= 0 at the open of bar %d (%s); every position closed from there",
                    bust, index[bust])
    prev_equity = np.concatenate([[cfg.initial_equity], equity[:-1]])
    returns = equity / prev_equity - 1.0
    gross = (equity + costs) / prev_equity - 1.0
    return BacktestResult(index=index, columns=columns, initial_equity=cfg.initial_equity, equity=equity,
                          returns=returns, gross_returns=gross, positions=weights, units=units,
                          turnover=turnover, fees=fees, slippage=slip, funding=fund_paid,
                          exec_price=exec_price, bust_bar=None if bust < 0 else bust)


def signals_to_targets(signals: ArrayOrFrame | None = None, *, entries: ArrayOrFrame | None = None,
                       exits: ArrayOrFrame | None = None, short_entries: ArrayOrFrame | None = None,
                       short_exits: ArrayOrFrame | None = None, size: float = 1.0) -> np.ndarray:
    """The position state (× ``size``) after each bar's signals, for one asset, shape (T,).

    Either ``signals`` (+1 long, 0 flat, −1 short, NaN = no change; the state starts flat) or boolean
    ``entries`` / ``exits`` (long) and ``short_entries`` / ``short_exits`` (see ``_signal_state``).
    """
    if not 0.0 < size <= 1.0:
        raise ValueError(f"size must be in (0, 1], got {size}")
    if signals is not None:
        if any(x is not None for x in (entries, exits, short_entries, short_exits)):
            raise ValueError("give either signals or entries/exits, not both")
        s = np.asarray(signals, dtype=np.float64).ravel()
        if np.any(~np.isin(s[np.isfinite(s)], (-1.0, 0.0, 1.0))):
            raise ValueError("signals must be +1, 0, -1 or NaN")
        state = pd.Series(s).ffill().fillna(0.0).to_numpy()
    else:
        given = [x for x in (entries, exits, short_entries, short_exits) if x is not None]
        if not given:
            raise ValueError("give signals or entries/exits")
        n = np.asarray(given[0]).shape[0]

        def flag(x: ArrayOrFrame | None) -> np.ndarray:
            return np.zeros(n, dtype=np.bool_) if x is None else np.asarray(x, dtype=np.bool_).ravel()

        state = _signal_state(flag(entries), flag(exits), flag(short_entries), flag(short_exits))
    return state * size


def from_signals(open_: ArrayOrFrame, close: ArrayOrFrame, signals: ArrayOrFrame | None = None, *,
                 entries: ArrayOrFrame | None = None, exits: ArrayOrFrame | None = None,
                 short_entries: ArrayOrFrame | None = None, short_exits: ArrayOrFrame | None = None,
                 size: float = 1.0, config: BacktestConfig | None = None, volume: ArrayOrFrame | None = None,
                 funding: ArrayOrFrame | float | None = None) -> BacktestResult:
    """One asset driven by signals (see ``signals_to_targets``): the state after bar t's signals is
    filled at ``open[t+1]`` as ``±size`` of equity, and the units are then held until the state changes
    (``rebalance_threshold`` is set to inf). Returns the same result as ``backtest``."""
    cfg = (config or BacktestConfig()).model_copy(update={"rebalance_threshold": math.inf})
    tgt = signals_to_targets(signals, entries=entries, exits=exits, short_entries=short_entries,
                             short_exits=short_exits, size=size)
    if isinstance(close, pd.Series):
        tgt = pd.Series(tgt, index=close.index, name=close.name)
    elif isinstance(close, pd.DataFrame):
        tgt = pd.DataFrame(tgt[:, None], index=close.index, columns=close.columns)
    return backtest(open_, close, tgt, cfg, volume=volume, funding=funding)


def pivot_bars(bars: pd.DataFrame, symbols: list[str] | None = None,
               freq: str | None = "1h") -> dict[str, pd.DataFrame]:
    """Long bars (symbol, timestamp, open, close, volume, ...) → wide ``open``/``close``/``volume`` frames
    (timestamp × symbol) on one index: the dense ``freq`` grid from the first to the last timestamp
    (missing bars become NaN rows) or, with ``freq=None``, the union of the timestamps."""
    if symbols is not None:
        bars = bars[bars["symbol"].isin(symbols)]
    out: dict[str, pd.DataFrame] = {}
    for field in ("open", "close", "volume"):
        wide = bars.pivot(index="timestamp", columns="symbol", values=field).sort_index().astype(np.float64)
        if symbols is not None:
            wide = wide.reindex(columns=symbols)
        if freq is not None:
            wide = wide.reindex(pd.date_range(wide.index[0], wide.index[-1], freq=freq, name="timestamp"))
        wide.columns = pd.Index([str(s) for s in wide.columns], name="symbol")
        out[field] = wide
    return out
