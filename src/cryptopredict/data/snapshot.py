"""Readers of the shipped dataset (``data/``, see data/README.md) into the lake's table formats."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads

from cryptopredict.data.schemas import news_id

OHLCV_FILE = "ohlcv_1h.parquet"
CONTEXT_FILES = {
    "fear_greed": "fear_greed_daily.parquet",
    "onchain": "onchain_btc_daily.parquet",
    "macro": "macro_daily.parquet",
    "news": "news.parquet",
}
SNAPSHOT_SOURCE = "snapshot"


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"shipped data file {str(path)!r} not found; is --from pointing at the data/ folder?")
    return path


def _utc_day(col: pd.Series) -> pd.Series:
    """Naive calendar days → UTC midnight timestamps (ns)."""
    return pd.to_datetime(col).dt.tz_localize("UTC").astype("datetime64[ns, UTC]")


def snapshot_symbols(snapshot_dir: str | Path) -> list[str]:
    """The symbols present in the shipped OHLCV file."""
    t = pads.dataset(_require(Path(snapshot_dir) / OHLCV_FILE)).to_table(columns=["symbol"])
    return sorted(set(t.column("symbol").to_pylist()))


def read_snapshot_ohlcv(snapshot_dir: str | Path, symbol: str, *, exchange: str = "binance",
                        timeframe: str = "1h") -> pd.DataFrame:
    """One symbol's candles from the shipped file, in OHLCV table format (source = the file's provenance)."""
    if timeframe != "1h":
        raise ValueError(f"the shipped dataset holds 1h candles only, not {timeframe!r}")
    ds = pads.dataset(_require(Path(snapshot_dir) / OHLCV_FILE))
    df = ds.to_table(filter=pads.field("symbol") == symbol).to_pandas()
    if df.empty:
        raise ValueError(f"symbol {symbol!r} is not in the shipped dataset; it has {snapshot_symbols(snapshot_dir)}")
    df["timestamp"] = df["timestamp"].astype("datetime64[ns, UTC]")
    return df.assign(exchange=exchange, timeframe=timeframe)


def _wide_to_long(df: pd.DataFrame, id_name: str, value_columns: list[str]) -> pd.DataFrame:
    long = df.melt(id_vars=["date"], value_vars=value_columns, var_name=id_name, value_name="value")
    return long.dropna(subset=["value"]).reset_index(drop=True)


def read_snapshot_context(snapshot_dir: str | Path, table: str) -> pd.DataFrame:
    """A context table (fear_greed, onchain, macro, news) from the shipped files, in lake format.

    Wide daily files become long (one row per series and day); NaN cells are absent rows, not zeros.
    """
    if table not in CONTEXT_FILES:
        raise ValueError(f"no shipped file for table {table!r}; shipped: {sorted(CONTEXT_FILES)}")
    raw = pd.read_parquet(_require(Path(snapshot_dir) / CONTEXT_FILES[table]))
    if table == "fear_greed":
        return raw.assign(date=_utc_day(raw["date"]), value=raw["value"].astype("int16"),
                          source=raw["source"].astype(str))
    if table == "onchain":
        raw["date"] = _utc_day(raw["date"])
        long = _wide_to_long(raw, "metric", [c for c in raw.columns if c != "date"])
        return long.assign(asset="btc", source=SNAPSHOT_SOURCE + ":coinmetrics+blockchain.com")
    if table == "macro":
        raw["date"] = _utc_day(raw["date"])
        long = _wide_to_long(raw, "series", [c for c in raw.columns if c != "date"])
        return long.assign(source=SNAPSHOT_SOURCE + ":fred+yahoo")
    # news: publication minute, no timezone in the source: treated as UTC (data/README.md)
    published = pd.to_datetime(raw["published_at"]).dt.tz_localize("UTC").astype("datetime64[ns, UTC]")
    out = pd.DataFrame({
        "published_at": published,
        "source": raw["source"].astype(str),
        "subject": raw["subject"].astype(str),
        "title": raw["title"].fillna("").astype(str),
        "text": raw["text"].fillna("").astype(str),
        "url": raw["url"].fillna("").astype(str),
    })
    out["id"] = [news_id(u, s, p, t) for u, s, p, t in zip(out["url"], out["source"], out["published_at"], out["title"])]
    return out
