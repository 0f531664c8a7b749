"""Builders shared by the monitoring tests: Prediction bodies and OHLCV bars in a lake."""

from __future__ import annotations

import pandas as pd

from cryptopredict.data.lake import Lake
from cryptopredict.serving.schemas import Prediction

PROBA = {"SELL": {"SELL": 0.6, "HOLD": 0.25, "BUY": 0.15}, "HOLD": {"SELL": 0.2, "HOLD": 0.6, "BUY": 0.2},
         "BUY": {"SELL": 0.15, "HOLD": 0.25, "BUY": 0.6}}


def make_prediction(*, symbol: str = "BTCUSDT", as_of: str | pd.Timestamp = "2024-01-01T00:00:00Z",
                    signal: str = "BUY", horizon: int = 4, confidence: float = 0.55, position_size: float = 0.25,
                    model_version: str = "v1", probabilities: dict[str, float] | None = None) -> Prediction:
    """A valid response body of the Serve app."""
    as_of = pd.Timestamp(as_of).isoformat()
    return Prediction(
        symbol=symbol, as_of=as_of, horizon=horizon, signal=signal,
        probabilities=probabilities or PROBA[signal], confidence=confidence, predicted_volatility=0.012,
        interval={"level": 0.9, "low": -0.02, "high": 0.02},
        uncertainty={"epistemic": 0.01, "aleatoric": 0.9, "epistemic_vol": 0.001, "aleatoric_vol": 0.05},
        position_size=position_size, member_weights={"transformer": 0.6, "gnn": 0.4}, model_version=model_version)


def write_bars(lake: Lake, symbol: str, timestamps: pd.DatetimeIndex, close: list[float],
               open_: list[float] | None = None) -> pd.DataFrame:
    """Store hourly bars (open = previous close unless given; high/low bracket both) in the lake."""
    close_s = pd.Series(close, dtype=float)
    open_s = pd.Series(open_, dtype=float) if open_ is not None else close_s.shift(1).fillna(close_s.iloc[0])
    bars = pd.DataFrame({
        "exchange": "binance", "symbol": symbol, "timeframe": "1h", "timestamp": timestamps,
        "open": open_s, "high": pd.concat([open_s, close_s], axis=1).max(axis=1),
        "low": pd.concat([open_s, close_s], axis=1).min(axis=1), "close": close_s, "volume": 1000.0,
        "source": "test"})
    lake.upsert("ohlcv", bars)
    return bars
