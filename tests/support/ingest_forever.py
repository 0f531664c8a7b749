"""Child process for the SIGKILL test: ingests batches into a lake until killed.

Usage: python -m tests.support.ingest_forever LAKE_ROOT [PAUSE_AT_REPLACE]
After each committed batch it prints ``committed <symbol> <last timestamp ISO>`` (flushed). With
PAUSE_AT_REPLACE=k, the k-th atomic rename is preceded by ``replacing`` and a long sleep, so the parent can
kill it with the new file written but not yet renamed into place.
"""

from __future__ import annotations

import os
import sys
import time

import pandas as pd

from cryptopredict.config import Config
from cryptopredict.data import lake as lake_module
from cryptopredict.data.ingest import ingest_ohlcv, ingest_table
from cryptopredict.data.lake import Lake
from tests.support.frames import ohlcv_frame


def main() -> None:
    root = sys.argv[1]
    pause_at = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    calls = {"n": 0}
    real_replace = os.replace

    def replace(src, dst):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == pause_at:
            print("replacing", flush=True)
            time.sleep(60)
        return real_replace(src, dst)

    lake_module.os.replace = replace  # type: ignore[attr-defined]
    lake, cfg = Lake(root), Config()
    full = {s: ohlcv_frame(20_000, symbol=s, seed=i) for i, s in enumerate(["BTCUSDT", "ETHUSDT", "SOLUSDT"])}
    for step in range(1, 10_000):
        for symbol, df in full.items():
            batch = df.iloc[: 200 * step].copy()
            batch.loc[batch.index[-1], "volume"] = -1.0  # one bad row per batch: quarantine is written too
            ingest_ohlcv(lake, batch, exchange="binance", symbol=symbol, timeframe="1h", cfg=cfg)
            print(f"committed {symbol} {batch['timestamp'].iloc[-2].isoformat()}", flush=True)
        days = pd.date_range("2020-01-01", periods=step, freq="D", tz="UTC").astype("datetime64[ns, UTC]")
        ingest_table(lake, "fear_greed", pd.DataFrame(
            {"date": days, "value": 50, "classification": "Neutral", "source": "t"}).astype({"value": "int16"}))
        print(f"committed fear_greed {days[-1].isoformat()}", flush=True)


if __name__ == "__main__":
    main()
