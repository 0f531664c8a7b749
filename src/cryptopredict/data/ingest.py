"""Ingestion: validate rows, upsert them into the lake, quarantine the rest, record gaps — per unit of work.

A *unit* is one OHLCV series (exchange, symbol, timeframe) or one context table. Units are independent
(each writes only its own partitions, including its own quarantine and gaps partitions), so Ray maps them
in parallel: the functions here are plain Python; :mod:`cryptopredict.data.ray_ingest` is the Ray layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import pandas as pd

from cryptopredict.config import Config
from cryptopredict.data.lake import Lake, partition_path
from cryptopredict.data.schemas import GAPS, OHLCV, table_spec
from cryptopredict.data.snapshot import read_snapshot_context, read_snapshot_ohlcv
from cryptopredict.data.validate import (find_gaps, timeframe_delta, validate_ohlcv, validate_rows)

log = logging.getLogger(__name__)

CONTEXT_TABLES = ("fear_greed", "onchain", "macro", "news")
VALUE_COLUMNS = {
    "fear_greed": ("value",),
    "onchain": ("value",),
    "macro": ("value",),
    "tvl": ("tvl_usd",),
    "market_caps": ("price_usd",),
    "news": (),
}


@dataclass
class IngestReport:
    """What ingesting one unit did."""

    table: str
    unit: str  # symbol for OHLCV, table name otherwise
    rows_in: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rows_after: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    gaps: int = 0
    missing_bars: int = 0
    seconds: float = 0.0
    error: str | None = None

    def to_row(self) -> dict:
        return asdict(self)


def history_tail(lake: Lake, exchange: str, symbol: str, timeframe: str, bars: int) -> pd.DataFrame:
    """The last ``bars`` stored bars of a series (the context for outlier statistics)."""
    part = partition_path(OHLCV, {"exchange": exchange, "symbol": symbol, "timeframe": timeframe})
    return lake.read_partition("ohlcv", part).tail(bars)


def ingest_ohlcv(lake: Lake, df: pd.DataFrame, *, exchange: str, symbol: str, timeframe: str,
                 cfg: Config) -> IngestReport:
    """Validate and upsert one OHLCV series; quarantine bad rows; recompute the series' gap list."""
    started = time.perf_counter()
    report = IngestReport(table="ohlcv", unit=symbol, rows_in=len(df))
    v = cfg.validation
    history = history_tail(lake, exchange, symbol, timeframe, v.outlier_window + 1)
    result = validate_ohlcv(df, timeframe=timeframe, outlier_threshold=v.outlier_robust_z,
                            outlier_window=v.outlier_window, outlier_min_periods=v.outlier_min_periods,
                            history=history)
    _apply(lake, "ohlcv", result.clean, report)
    lake.append_quarantine(result.quarantine)
    report.quarantined = result.counts()

    values = {"exchange": exchange, "symbol": symbol, "timeframe": timeframe}
    stored = lake.read_partition("ohlcv", partition_path(OHLCV, values))
    gaps = find_gaps(stored["timestamp"], timeframe_delta(timeframe)) if len(stored) else GAPS.schema.empty_table().to_pandas()
    lake.replace_partition(GAPS.name, values, gaps)
    report.rows_after = len(stored)
    report.gaps, report.missing_bars = len(gaps), int(gaps["missing_bars"].sum()) if len(gaps) else 0
    report.seconds = time.perf_counter() - started
    return report


def ingest_table(lake: Lake, table: str, df: pd.DataFrame, *, unit: str | None = None) -> IngestReport:
    """Validate and upsert rows of a context table (fear_greed, onchain, macro, news, tvl, market_caps)."""
    started = time.perf_counter()
    spec = table_spec(table)
    report = IngestReport(table=table, unit=unit or table, rows_in=len(df))
    result = validate_rows(spec, df, value_columns=VALUE_COLUMNS.get(table, ()))
    _apply(lake, table, result.clean, report)
    lake.append_quarantine(result.quarantine)
    report.quarantined = result.counts()
    report.rows_after = sum(len(lake.read_partition(table, p)) for p in lake.partitions(table))
    report.seconds = time.perf_counter() - started
    return report


def _apply(lake: Lake, table: str, clean: pd.DataFrame, report: IngestReport) -> None:
    for r in lake.upsert(table, clean):
        report.inserted += r.inserted
        report.updated += r.updated
        report.unchanged += r.unchanged


# ------------------------------------------------------------------ units (what Ray maps)
@dataclass(frozen=True)
class Unit:
    kind: str  # "ohlcv" or a context table name
    name: str  # symbol, or table name

    def label(self) -> str:
        return self.name if self.kind == "ohlcv" else f"{self.kind}"


def snapshot_units(cfg: Config) -> list[Unit]:
    return [Unit("ohlcv", s) for s in cfg.ingest.symbols] + [Unit(t, t) for t in CONTEXT_TABLES]


def ingest_unit_from_snapshot(cfg: Config, unit: Unit) -> IngestReport:
    """One unit from the shipped dataset into the configured lake."""
    lake = open_lake(cfg)
    ic = cfg.ingest
    if unit.kind == "ohlcv":
        df = read_snapshot_ohlcv(ic.snapshot_dir, unit.name, exchange=ic.exchange, timeframe=ic.timeframe)
        return ingest_ohlcv(lake, df, exchange=ic.exchange, symbol=unit.name, timeframe=ic.timeframe, cfg=cfg)
    return ingest_table(lake, unit.kind, read_snapshot_context(ic.snapshot_dir, unit.kind))


def open_lake(cfg: Config) -> Lake:
    return Lake(cfg.lake.root, s3_region=cfg.lake.s3_region, s3_endpoint=cfg.lake.s3_endpoint)


def guarded(fn: Callable[[Config, Unit], IngestReport]) -> Callable[[Config, Unit], IngestReport]:
    """Turn a unit's failure into a report with ``error`` set, so one bad source does not sink the others."""

    def run(cfg: Config, unit: Unit) -> IngestReport:
        try:
            return fn(cfg, unit)
        except Exception as exc:  # noqa: BLE001 - reported per unit, the run fails at the end
            log.exception("ingest of %s failed", unit.label())
            return IngestReport(table=unit.kind, unit=unit.name, error=f"{type(exc).__name__}: {exc}")

    return run
