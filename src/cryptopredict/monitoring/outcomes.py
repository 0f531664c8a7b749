"""Outcomes of logged predictions once their horizon has passed, and the quality measured on them.

Time convention: a prediction's bar time ``t`` is the open time of the last closed bar it used (its
``as_of``, or ``as_of − bar`` under the ``bar_close`` convention). Its outcome is the label of ``labels.py``
at t: the forward log return close[t] → close[t + h·bar] and the realised volatility of the h one-bar
returns in between; it is known once bar t + h·bar is in the lake.

Realised class: the model's own :class:`~cryptopredict.labels.DirectionLabeler` (its fitted dead zone
k·σ_t·√h with σ_t the trailing volatility of ``features.label_vol_window`` bars) when one is given for the
model version (``class_source = "labeler"``); otherwise the sign of the return, HOLD within ``±hold_band``
(``class_source = "sign"``). Many requests for the same (symbol, as_of, model_version) count once: the
first one logged.

PnL: per (model version, symbol), the logged position sizes are targets decided at the close of bar t and
filled at the next open by ``evaluation.backtest`` with the configured fees and slippage; without a new
prediction a position is kept for the prediction's horizon and closed after it. Per model version over all
symbols: each symbol is an equal sleeve (the per-bar mean of the symbols' net returns).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cryptopredict.data.lake import Lake, partition_path
from cryptopredict.data.schemas import OHLCV
from cryptopredict.evaluation.backtest import BacktestConfig, backtest
from cryptopredict.evaluation.metrics import expected_calibration_error, reliability_table
from cryptopredict.labels import BUY, CLASS_NAMES, HOLD, SELL, DirectionLabeler, forward_log_return, \
    forward_realised_vol, trailing_vol

KEY = ["symbol", "as_of", "model_version"]
ALL = "*"  # the symbol label of rows pooled over every symbol
CLASS_OF_SIGNAL = {name: i for i, name in enumerate(CLASS_NAMES)}


def dedupe_predictions(log: pd.DataFrame) -> pd.DataFrame:
    """One row per (symbol, as_of, model_version): the first logged (earliest ``request_time``), with
    ``n_requests`` = how many times it was logged."""
    if log.empty:
        return log.assign(n_requests=pd.Series(dtype="int64"))
    ordered = log.sort_values(["request_time", "request_id"], kind="stable")
    counts = ordered.groupby(KEY, sort=False).size().rename("n_requests")
    first = ordered.drop_duplicates(KEY, keep="first")
    return first.merge(counts.reset_index(), on=KEY, how="left").sort_values(
        ["model_version", "symbol", "as_of"], ignore_index=True)


def bar_times(as_of: pd.Series, bar: pd.Timedelta, convention: str = "bar_open") -> pd.Series:
    """Open time of the prediction's last closed bar (the lake's ``timestamp``), UTC."""
    t = pd.to_datetime(as_of, utc=True)
    if convention == "bar_close":
        return t - bar
    if convention != "bar_open":
        raise ValueError(f"unknown as_of convention {convention!r}; use bar_open or bar_close")
    return t


def load_bars(lake: Lake, symbols: list[str], *, exchange: str, timeframe: str) -> dict[str, pd.DataFrame]:
    """Each symbol's stored bars (timestamp, open, high, low, close, volume) sorted; symbols without bars
    are left out (their predictions stay unresolved with status ``no_data``)."""
    out = {}
    for s in sorted(set(symbols)):
        part = partition_path(OHLCV, {"exchange": exchange, "symbol": s, "timeframe": timeframe})
        bars = lake.read_partition("ohlcv", part)
        if len(bars):
            out[s] = bars[["timestamp", "open", "high", "low", "close", "volume"]].sort_values(
                "timestamp", ignore_index=True)
    return out


def load_labelers(paths: Mapping[str, str | Path]) -> dict[str, DirectionLabeler]:
    """model_version → its stored labeler (a ``labeler.json`` file, or a model directory holding one)."""
    out = {}
    for version, path in paths.items():
        p = Path(path)
        p = p / "labeler.json" if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"labeler of model version {version!r}: {str(p)!r} does not exist")
        labeler = DirectionLabeler.load(p)
        if labeler.k is None:
            raise ValueError(f"labeler {str(p)!r} of {version!r} is not fitted (k is null)")
        out[version] = labeler
    return out


def join_outcomes(predictions: pd.DataFrame, bars: Mapping[str, pd.DataFrame], bar: pd.Timedelta, *,
                  labelers: Mapping[str, DirectionLabeler] | None = None, vol_window: int = 168,
                  hold_band: float = 0.0, as_of_convention: str = "bar_open") -> pd.DataFrame:
    """Deduplicated predictions + their outcomes.

    Added columns: ``bar_time``; ``fwd_logret``, ``fwd_rvol`` (NaN until known); ``status`` (``resolved``;
    ``pending``: the horizon's last bar is not in the lake yet; ``no_data``: the lake has a gap or no bars
    there; ``no_sigma``: the labeler's trailing σ is unknown at the bar); ``realised_class`` (0/1/2, NaN
    unless resolved) and ``class_source``; ``predicted_class`` (the signal); ``correct`` (1.0/0.0, NaN
    unless resolved); ``hit``: for BUY/SELL signals on a nonzero return, 1.0 when the return has the
    signal's sign (NaN otherwise). Pass deduplicated predictions (:func:`dedupe_predictions`)."""
    labelers = dict(labelers or {})
    preds = predictions.copy()
    preds["bar_time"] = bar_times(preds["as_of"], bar, as_of_convention)
    n = len(preds)
    fwd, rvol, sigma = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    status = np.full(n, "no_data", dtype=object)
    pos = np.arange(n)
    for (symbol, horizon), idx in preds.groupby(["symbol", "horizon"], sort=True).indices.items():
        series = bars.get(symbol)
        if series is None or series.empty:
            continue
        h = int(horizon)
        ts = pd.DatetimeIndex(series["timestamp"])
        t = pd.DatetimeIndex(preds["bar_time"].iloc[idx])
        lookup = {
            "fwd": pd.Series(forward_log_return(series, h, bar).to_numpy(), index=ts),
            "rvol": pd.Series(forward_realised_vol(series, h, bar).to_numpy(), index=ts),
            "sigma": pd.Series(trailing_vol(series, vol_window, bar).to_numpy(), index=ts),
        }
        fwd[pos[idx]] = lookup["fwd"].reindex(t).to_numpy()
        rvol[pos[idx]] = lookup["rvol"].reindex(t).to_numpy()
        sigma[pos[idx]] = lookup["sigma"].reindex(t).to_numpy()
        end = t + h * bar
        status[pos[idx]] = np.where(np.isfinite(fwd[pos[idx]]), "resolved",
                                    np.where(end > ts.max(), "pending", "no_data"))
    preds["fwd_logret"], preds["fwd_rvol"], preds["status"] = fwd, rvol, status
    realised = np.full(n, np.nan)
    source = np.full(n, "sign", dtype=object)
    by_sign = np.where(fwd > hold_band, BUY, np.where(fwd < -hold_band, SELL, HOLD)).astype(float)
    for version, idx in preds.groupby("model_version", sort=False).indices.items():
        labeler = labelers.get(version)
        if labeler is None:
            realised[idx] = by_sign[idx]
            continue
        bad = sorted(set(preds["horizon"].iloc[idx]) - {labeler.horizon})
        if bad:
            raise ValueError(f"labeler of {version!r} is for horizon {labeler.horizon}, but its predictions "
                             f"have horizon {bad}")
        realised[idx] = labeler.transform(fwd[idx], sigma[idx])
        source[idx] = "labeler"
    status[(status == "resolved") & ~np.isfinite(realised)] = "no_sigma"  # the labeler needs σ_t
    preds["status"] = status
    resolved = status == "resolved"
    realised[~resolved] = np.nan
    preds["realised_class"], preds["class_source"] = realised, source
    predicted = preds["signal"].map(CLASS_OF_SIGNAL)
    if predicted.isna().any():
        raise ValueError(f"unknown signals in the log: {sorted(set(preds['signal'][predicted.isna()]))}")
    preds["predicted_class"] = predicted.astype(int)
    preds["correct"] = np.where(np.isfinite(realised), (predicted.to_numpy() == realised).astype(float), np.nan)
    direction = np.where(preds["signal"] == "BUY", 1.0, np.where(preds["signal"] == "SELL", -1.0, 0.0))
    scorable = resolved & (direction != 0) & np.isfinite(fwd) & (fwd != 0)
    preds["hit"] = np.where(scorable, (np.sign(fwd) == direction).astype(float), np.nan)
    return preds


# --------------------------------------------------------------------------------------------- PnL


def sleeve_returns(predictions: pd.DataFrame, bars: Mapping[str, pd.DataFrame], bar: pd.Timedelta,
                   costs: BacktestConfig, *, as_of_convention: str = "bar_open") -> pd.DataFrame:
    """Per-bar net and gross returns of each (model_version, symbol) sleeve trading its logged positions.

    Rows: model_version, symbol, timestamp (bar open), net, gross. A sleeve starts at its first prediction's
    bar and runs to the last bar in the lake; target at bar t = the position logged for t (filled at the
    next open), kept while the last prediction's horizon lasts, 0 after it."""
    preds = predictions.assign(bar_time=bar_times(predictions["as_of"], bar, as_of_convention))
    out = []
    for (version, symbol), grp in preds.groupby(["model_version", "symbol"], sort=True):
        series = bars.get(symbol)
        if series is None or series.empty:
            continue
        px = series.set_index("timestamp").sort_index()
        grid = pd.date_range(grp["bar_time"].min(), px.index.max(), freq=bar, name="timestamp")
        if len(grid) < 2:
            continue
        px = px.reindex(grid)
        by_bar = grp.set_index("bar_time")
        if by_bar.index.has_duplicates:
            raise ValueError(f"{version}/{symbol}: several predictions per bar; dedupe_predictions first")
        targets = by_bar["position_size"].astype(float).reindex(grid)
        stamp = pd.Series(grid, index=grid)
        last_known = stamp.where(targets.notna()).ffill()
        horizon = by_bar["horizon"].astype(float).reindex(grid).ffill()
        expired = targets.isna() & ((stamp - last_known) >= horizon * bar)
        targets = targets.mask(expired, 0.0)
        res = backtest(px["open"], px["close"], targets, costs,
                       volume=px["volume"] if costs.slippage == "volatility" else None)
        out.append(pd.DataFrame({"model_version": version, "symbol": symbol, "timestamp": grid,
                                 "net": res.returns, "gross": res.gross_returns}))
    if not out:
        return pd.DataFrame({"model_version": pd.Series(dtype=object), "symbol": pd.Series(dtype=object),
                             "timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
                             "net": pd.Series(dtype=float), "gross": pd.Series(dtype=float)})
    return pd.concat(out, ignore_index=True)


def _compound(r: pd.Series) -> float:
    return float(np.prod(1.0 + r.to_numpy(float)) - 1.0) if len(r) else math.nan


# --------------------------------------------------------------------------------------------- quality


def _window_quality(rows: pd.DataFrame, ece_bins: int) -> dict[str, float | int | str]:
    resolved = rows[rows["status"] == "resolved"]
    directional = resolved["hit"].dropna()
    ok = resolved["correct"].to_numpy(float)
    return {
        "n_predictions": len(rows), "n_requests": int(rows["n_requests"].sum()),
        "n_resolved": len(resolved), "n_pending": int((rows["status"] == "pending").sum()),
        "n_no_data": int((rows["status"] == "no_data").sum()),
        "accuracy": float(ok.mean()) if len(ok) else math.nan,
        "ece": expected_calibration_error(resolved["confidence"].to_numpy(float), ok == 1.0, ece_bins)
        if len(ok) else math.nan,
        "mean_confidence": float(resolved["confidence"].mean()) if len(ok) else math.nan,
        "directional_hit_rate": float(directional.mean()) if len(directional) else math.nan,
        "n_directional": len(directional),
        "class_source": ",".join(sorted(set(resolved["class_source"]))) or "-",
    }


def quality_table(outcomes: pd.DataFrame, returns: pd.DataFrame, *, now: pd.Timestamp,
                  windows_hours: list[int], ece_bins: int = 10) -> pd.DataFrame:
    """Accuracy, ECE, directional hit rate, counts and PnL per (model_version, symbol, window) — symbol
    ``*`` pools every symbol — for predictions whose bar time lies in (now − window, now] and sleeve bars
    whose open time lies there. ``pnl``/``pnl_gross``: compounded net/gross return over the window."""
    now = pd.Timestamp(now)
    rows = []
    for w in windows_hours:
        start = now - pd.Timedelta(hours=w)
        in_win = outcomes[(outcomes["bar_time"] > start) & (outcomes["bar_time"] <= now)]
        r_win = returns[(returns["timestamp"] > start) & (returns["timestamp"] <= now)]
        for version in sorted(set(outcomes["model_version"])):
            mine = in_win[in_win["model_version"] == version]
            my_r = r_win[r_win["model_version"] == version]
            pooled = my_r.groupby("timestamp")[["net", "gross"]].mean()
            rows.append({"model_version": version, "symbol": ALL, "window_hours": w,
                         **_window_quality(mine, ece_bins), "pnl": _compound(pooled["net"]),
                         "pnl_gross": _compound(pooled["gross"]), "pnl_bars": len(pooled)})
            for symbol in sorted(set(mine["symbol"])):
                sr = my_r[my_r["symbol"] == symbol]
                rows.append({"model_version": version, "symbol": symbol, "window_hours": w,
                             **_window_quality(mine[mine["symbol"] == symbol], ece_bins),
                             "pnl": _compound(sr["net"]), "pnl_gross": _compound(sr["gross"]),
                             "pnl_bars": len(sr)})
    return pd.DataFrame(rows)


def reliability(outcomes: pd.DataFrame, *, model_version: str, now: pd.Timestamp, window_hours: int,
                n_bins: int = 10) -> pd.DataFrame:
    """Reliability table (``evaluation.metrics.reliability_table``) of one model's resolved predictions
    in the window: confidence bins, mean confidence, accuracy, count."""
    start = pd.Timestamp(now) - pd.Timedelta(hours=window_hours)
    rows = outcomes[(outcomes["model_version"] == model_version) & (outcomes["status"] == "resolved")
                    & (outcomes["bar_time"] > start) & (outcomes["bar_time"] <= pd.Timestamp(now))]
    return reliability_table(rows["confidence"].to_numpy(float), rows["correct"].to_numpy(float) == 1.0, n_bins)
