"""A slice of the shipped candles ingested into a test's lake."""

from __future__ import annotations

import pandas as pd

from cryptopredict.config import Config
from cryptopredict.data.ingest import ingest_ohlcv, open_lake
from cryptopredict.data.snapshot import read_snapshot_ohlcv
from tests.conftest import SHIPPED_DATA


def ingest_shipped_slice(cfg: Config, symbols: list[str], start: pd.Timestamp, end: pd.Timestamp) -> None:
    """Ingest the shipped hourly bars of ``symbols`` in [start, end) into ``cfg``'s lake."""
    lake = open_lake(cfg)
    for s in symbols:
        bars = read_snapshot_ohlcv(SHIPPED_DATA, s)
        ingest_ohlcv(lake, bars[(bars["timestamp"] >= start) & (bars["timestamp"] < end)], exchange="binance",
                     symbol=s, timeframe="1h", cfg=cfg)
