"""Arrow schemas, keys and partitioning of every lake table.

Time convention: every timestamp is UTC. OHLCV ``timestamp`` is the bar *open* time (the bar is known at
its close). Daily tables carry ``date`` = the UTC calendar day the value describes, stored as a UTC
midnight timestamp; when it became *known* is decided later by the as-of joins, not here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa

UTC_TS = pa.timestamp("ns", tz="UTC")


@dataclass(frozen=True)
class TableSpec:
    """A lake table: its schema, the columns that identify a row, and the Hive partition columns."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    partition_by: tuple[str, ...] = ()
    time_column: str | None = None

    @property
    def columns(self) -> list[str]:
        return self.schema.names


OHLCV = TableSpec(
    name="ohlcv",
    schema=pa.schema(
        [
            ("exchange", pa.string()),
            ("symbol", pa.string()),  # exchange-native id without separator, e.g. BTCUSDT
            ("timeframe", pa.string()),  # ccxt timeframe string, e.g. 1h
            ("timestamp", UTC_TS),  # bar open time
            ("open", pa.float64()),
            ("high", pa.float64()),
            ("low", pa.float64()),
            ("close", pa.float64()),
            ("volume", pa.float64()),  # base-asset volume
            ("source", pa.string()),
        ]
    ),
    key=("exchange", "symbol", "timeframe", "timestamp"),
    partition_by=("exchange", "symbol", "timeframe"),
    time_column="timestamp",
)

FEAR_GREED = TableSpec(
    name="fear_greed",
    schema=pa.schema(
        [
            ("date", UTC_TS),
            ("value", pa.int16()),  # 0 (extreme fear) .. 100 (extreme greed)
            ("classification", pa.string()),
            ("source", pa.string()),
        ]
    ),
    key=("date",),
    time_column="date",
)

# Long format: one row per (asset, metric, day). Sources add metrics without schema changes.
ONCHAIN = TableSpec(
    name="onchain",
    schema=pa.schema(
        [
            ("asset", pa.string()),  # e.g. btc
            ("metric", pa.string()),  # Coin Metrics metric id, e.g. AdrActCnt; or difficulty
            ("date", UTC_TS),
            ("value", pa.float64()),
            ("source", pa.string()),
        ]
    ),
    key=("asset", "metric", "date"),
    partition_by=("asset",),
    time_column="date",
)

MACRO = TableSpec(
    name="macro",
    schema=pa.schema(
        [
            ("series", pa.string()),  # dxy, vix, sp500, gold_futures, us10y_yield, usd_broad_index, ...
            ("date", UTC_TS),  # trading day
            ("value", pa.float64()),
            ("source", pa.string()),
        ]
    ),
    key=("series", "date"),
    time_column="date",
)

NEWS = TableSpec(
    name="news",
    schema=pa.schema(
        [
            ("id", pa.string()),  # sha1 of url, or of source|published_at|title when there is no url
            ("published_at", UTC_TS),
            ("source", pa.string()),  # publisher or feed, e.g. CoinTelegraph, reddit/r/CryptoCurrency
            ("subject", pa.string()),
            ("title", pa.string()),
            ("text", pa.string()),
            ("url", pa.string()),
        ]
    ),
    key=("id",),
    time_column="published_at",
)

TVL = TableSpec(
    name="tvl",
    schema=pa.schema(
        [
            ("chain", pa.string()),  # "all" for the DeFi total, else a DefiLlama chain name
            ("date", UTC_TS),
            ("tvl_usd", pa.float64()),
            ("source", pa.string()),
        ]
    ),
    key=("chain", "date"),
    time_column="date",
)

MARKET_CAPS = TableSpec(
    name="market_caps",
    schema=pa.schema(
        [
            ("coin_id", pa.string()),  # CoinGecko id, e.g. bitcoin
            ("timestamp", UTC_TS),
            ("price_usd", pa.float64()),
            ("market_cap_usd", pa.float64()),
            ("volume_usd", pa.float64()),
            ("source", pa.string()),
        ]
    ),
    key=("coin_id", "timestamp"),
    time_column="timestamp",
)

QUARANTINE = TableSpec(
    name="quarantine",
    schema=pa.schema(
        [
            ("table", pa.string()),
            ("partition", pa.string()),  # the source table's partition path, "-" when unpartitioned
            ("row_key", pa.string()),  # JSON of the row's key columns
            ("reason", pa.string()),  # schema | off_grid | duplicate | not_increasing | ohlc | non_positive | ...
            ("detail", pa.string()),
            ("row", pa.string()),  # the offending row as JSON
            ("quarantined_at", UTC_TS),
        ]
    ),
    key=("table", "partition", "row_key", "reason"),
    partition_by=("table", "partition"),  # per source partition: parallel per-symbol writers never share a file
)

GAPS = TableSpec(
    name="gaps",
    schema=pa.schema(
        [
            ("exchange", pa.string()),
            ("symbol", pa.string()),
            ("timeframe", pa.string()),
            ("gap_start", UTC_TS),  # first missing bar open time
            ("gap_end", UTC_TS),  # last missing bar open time
            ("missing_bars", pa.int64()),
        ]
    ),
    key=("exchange", "symbol", "timeframe", "gap_start"),
    partition_by=("exchange", "symbol", "timeframe"),
    time_column="gap_start",
)

TABLES: dict[str, TableSpec] = {
    t.name: t for t in (OHLCV, FEAR_GREED, ONCHAIN, MACRO, NEWS, TVL, MARKET_CAPS, QUARANTINE, GAPS)
}


def table_spec(name: str | TableSpec) -> TableSpec:
    """The spec of table ``name`` (a spec passes through: derived tables bring their own); a ValueError
    naming the known tables otherwise."""
    if isinstance(name, TableSpec):
        return name
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"unknown lake table {name!r}; known: {', '.join(sorted(TABLES))}") from None


def derived_spec(name: str, frame_schema: pa.Schema, key: tuple[str, ...],
                 partition_by: tuple[str, ...] = (), time_column: str | None = "timestamp") -> TableSpec:
    """A spec for a derived table whose columns depend on the configuration (features, scores)."""
    schema = pa.schema([f.with_type(UTC_TS) if pa.types.is_timestamp(f.type) else f for f in frame_schema
                        if not f.name.startswith("__index_level")])
    return TableSpec(name=name, schema=schema.remove_metadata(), key=key, partition_by=partition_by,
                     time_column=time_column)


def news_id(url: str, source: str, published_at: object, title: str) -> str:
    """The NEWS key: sha1 hex of the url, or of ``source|published_at ISO|title`` when there is no url."""
    if url:
        basis = url
    else:
        iso = published_at.isoformat() if hasattr(published_at, "isoformat") else str(published_at)
        basis = f"{source}|{iso}|{title}"
    return hashlib.sha1(basis.encode("utf-8")).hexdigest()
