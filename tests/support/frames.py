"""Small, hand-checkable frames in the lake's table formats."""

from __future__ import annotations

import numpy as np
import pandas as pd


def ohlcv_frame(n: int = 48, *, symbol: str = "BTCUSDT", start: str = "2024-01-01", price: float = 100.0,
                timeframe: str = "1h", exchange: str = "binance", seed: int = 0) -> pd.DataFrame:
    """``n`` consistent hourly bars from a seeded random walk (0.5% hourly steps)."""
    rng = np.random.default_rng(seed)
    close = price * np.exp(np.cumsum(rng.normal(0, 0.005, n)))
    open_ = np.concatenate([[price], close[:-1]])
    high = np.maximum(open_, close) * 1.002
    low = np.minimum(open_, close) * 0.998
    ts = pd.date_range(start, periods=n, freq=timeframe.replace("h", "h"), tz="UTC").astype("datetime64[ns, UTC]")
    return pd.DataFrame({
        "exchange": exchange, "symbol": symbol, "timeframe": timeframe, "timestamp": ts,
        "open": open_, "high": high, "low": low, "close": close,
        "volume": rng.uniform(1, 10, n), "source": "test",
    })
