"""Validation of rows before they enter the lake.

Every check either passes a row or sends it to quarantine with a reason; nothing is dropped silently and
nothing is repaired. Gaps in a bar series are recorded, never filled.

Reasons: ``null_key``, ``null_value``, ``off_grid`` (timestamp not on the bar/day grid), ``duplicate``
(same key seen earlier in the batch), ``not_increasing`` (the series went back in time), ``non_positive_price``,
``negative_volume``, ``ohlc_inconsistent`` (high < max(open, close) or low > min(open, close)), ``outlier``
(an isolated spike: see :func:`spike_outliers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryptopredict.data.lake import partition_path, row_json
from cryptopredict.data.schemas import OHLCV, QUARANTINE, TableSpec

REASONS = (
    "null_key", "null_value", "off_grid", "duplicate", "not_increasing",
    "non_positive_price", "negative_volume", "ohlc_inconsistent", "outlier",
)
DAY = pd.Timedelta(days=1)


@dataclass
class ValidationResult:
    """Rows fit for the lake and rows for quarantine (QUARANTINE schema)."""

    clean: pd.DataFrame
    quarantine: pd.DataFrame

    def counts(self) -> dict[str, int]:
        return self.quarantine["reason"].value_counts().to_dict() if len(self.quarantine) else {}


def timeframe_delta(timeframe: str) -> pd.Timedelta:
    """ccxt timeframe string ('1m', '4h', '1d', '1w') → Timedelta; ValueError for anything else."""
    units = {"m": "min", "h": "h", "d": "D", "w": "W"}
    num, unit = timeframe[:-1], timeframe[-1:]
    if unit not in units or not num.isdigit() or int(num) <= 0:
        raise ValueError(f"unsupported timeframe {timeframe!r}; use e.g. 1m, 5m, 1h, 4h, 1d")
    return pd.Timedelta(int(num), unit=units[unit])


def _quarantine_rows(spec: TableSpec, df: pd.DataFrame, mask: np.ndarray, reason: str, detail: str,
                     now: pd.Timestamp) -> pd.DataFrame:
    rows = df[mask]
    if rows.empty:
        return QUARANTINE.schema.empty_table().to_pandas()
    records = rows.to_dict("records")
    return pd.DataFrame({
        "table": spec.name,
        "partition": [partition_path(spec, r) or "-" for r in records],
        "row_key": [row_json({k: r[k] for k in spec.key}) for r in records],
        "reason": reason,
        "detail": detail,
        "row": [row_json(r) for r in records],
        "quarantined_at": now,
    })


class _Sieve:
    """Applies checks in order; each check sees only the rows that passed the ones before."""

    def __init__(self, spec: TableSpec, df: pd.DataFrame, now: pd.Timestamp) -> None:
        self.spec, self.df, self.now = spec, df.reset_index(drop=True), now
        self.bad: list[pd.DataFrame] = []

    def reject(self, mask: pd.Series | np.ndarray, reason: str, detail: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            self.bad.append(_quarantine_rows(self.spec, self.df, mask, reason, detail, self.now))
            self.df = self.df[~mask].reset_index(drop=True)

    def result(self) -> ValidationResult:
        q = pd.concat(self.bad, ignore_index=True) if self.bad else QUARANTINE.schema.empty_table().to_pandas()
        return ValidationResult(clean=self.df, quarantine=q)


def _check_schema(spec: TableSpec, df: pd.DataFrame) -> None:
    missing = [c for c in spec.columns if c not in df.columns]
    if missing:
        raise ValueError(f"table {spec.name!r}: rows lack columns {missing}")
    if spec.time_column:
        col = df[spec.time_column]
        if not isinstance(col.dtype, pd.DatetimeTZDtype) or str(col.dt.tz) != "UTC":
            raise ValueError(f"table {spec.name!r}: column {spec.time_column!r} must be tz-aware UTC, "
                             f"got {col.dtype}")


def _series_key(spec: TableSpec) -> list[str]:
    return [c for c in spec.key if c != spec.time_column]


def validate_rows(spec: TableSpec, df: pd.DataFrame, *, now: pd.Timestamp | None = None,
                  value_columns: Sequence[str] = ()) -> ValidationResult:
    """Generic checks for any table: nulls, daily grid, duplicates, order within each series."""
    _check_schema(spec, df)
    now = now or pd.Timestamp.now(tz="UTC")
    sieve = _Sieve(spec, df[spec.columns], now)
    sieve.reject(sieve.df[list(spec.key)].isna().any(axis=1), "null_key", f"null in key {spec.key}")
    if value_columns:
        sieve.reject(sieve.df[list(value_columns)].isna().any(axis=1), "null_value",
                     f"null in {list(value_columns)}")
    if spec.time_column and spec.time_column == "date":
        sieve.reject(sieve.df["date"] != sieve.df["date"].dt.floor("D"), "off_grid", "date is not a UTC midnight")
    _reject_duplicates_and_disorder(sieve)
    return sieve.result()


def _reject_duplicates_and_disorder(sieve: _Sieve) -> None:
    spec = sieve.spec
    sieve.reject(sieve.df.duplicated(list(spec.key), keep="first"), "duplicate", "key seen earlier in the batch")
    if spec.time_column:
        group = _series_key(spec)
        t = sieve.df[spec.time_column]
        prev_max = (t.groupby([sieve.df[c] for c in group]).cummax().groupby(
            [sieve.df[c] for c in group]).shift(1) if group else t.cummax().shift(1))
        sieve.reject((t <= prev_max).to_numpy(), "not_increasing", "timestamp not after an earlier row's")


def spike_outliers(close: np.ndarray, *, threshold: float, window: int, min_periods: int,
                   history: np.ndarray | None = None) -> np.ndarray:
    """Mask of isolated spikes in ``close``.

    r_t = log(close_t / close_{t-1}); z_t = (r_t - median) / (1.4826 * MAD), both over the trailing
    ``window`` returns before t. Bar t is a spike when |z_t| > threshold, |z_{t+1}| > threshold with the
    opposite sign, and the next bar takes back at least half the move (|r_t + r_{t+1}| < |r_t| / 2): the
    shape of a bad tick, not of a crash that stays. ``history`` holds closes already in the lake before
    ``close`` (for the trailing statistics and the first return).
    """
    hist = np.asarray(history if history is not None else [], dtype=float)
    full = np.concatenate([hist, np.asarray(close, dtype=float)])
    r = pd.Series(np.log(full)).diff()
    med = r.rolling(window, min_periods=min_periods).median().shift(1)
    mad = (r - med).abs().rolling(window, min_periods=min_periods).median().shift(1)
    z = ((r - med) / (1.4826 * mad)).replace([np.inf, -np.inf], np.nan)
    zn, rn = z.shift(-1), r.shift(-1)
    spike = (z.abs() > threshold) & (zn.abs() > threshold) & (np.sign(z) != np.sign(zn)) & (
        (r + rn).abs() < 0.5 * r.abs())
    return spike.to_numpy()[len(hist):]


def find_gaps(timestamps: pd.Series, bar: pd.Timedelta) -> pd.DataFrame:
    """Runs of missing bars between consecutive ``timestamps``: gap_start, gap_end (open times), missing_bars."""
    ts = timestamps.sort_values().reset_index(drop=True)
    step = ts.diff()
    at = np.flatnonzero((step > bar).to_numpy())
    return pd.DataFrame({
        "gap_start": (ts.iloc[at - 1] + bar).to_numpy() if len(at) else pd.Series([], dtype=ts.dtype),
        "gap_end": (ts.iloc[at] - bar).to_numpy() if len(at) else pd.Series([], dtype=ts.dtype),
        "missing_bars": (step.iloc[at] // bar - 1).astype("int64").to_numpy() if len(at) else np.array([], "int64"),
    })


def validate_ohlcv(df: pd.DataFrame, *, timeframe: str, outlier_threshold: float = 50.0,
                   outlier_window: int = 720, outlier_min_periods: int = 48,
                   history: pd.DataFrame | None = None, now: pd.Timestamp | None = None) -> ValidationResult:
    """All checks for one or more OHLCV series.

    ``history``: bars already in the lake for these series (their tail is enough), used for the trailing
    outlier statistics. Gaps are found on the stored series after the write (:func:`find_gaps`).
    """
    bar = timeframe_delta(timeframe)
    _check_schema(OHLCV, df)
    now = now or pd.Timestamp.now(tz="UTC")
    sieve = _Sieve(OHLCV, df[OHLCV.columns], now)
    d = lambda: sieve.df  # noqa: E731 - the frame shrinks after each reject
    sieve.reject(d()[list(OHLCV.key)].isna().any(axis=1), "null_key", "null in exchange/symbol/timeframe/timestamp")
    sieve.reject(d()["timeframe"] != timeframe, "off_grid", f"timeframe is not {timeframe}")
    sieve.reject(d()[["open", "high", "low", "close", "volume"]].isna().any(axis=1), "null_value", "null OHLCV")
    sieve.reject((d()["timestamp"] - d()["timestamp"].dt.floor(bar)) != pd.Timedelta(0), "off_grid",
                 f"timestamp is not on the {timeframe} grid")
    _reject_duplicates_and_disorder(sieve)
    sieve.reject((d()[["open", "high", "low", "close"]] <= 0).any(axis=1), "non_positive_price", "a price <= 0")
    sieve.reject(d()["volume"] < 0, "negative_volume", "volume < 0")
    x = d()
    sieve.reject((x["high"] < x[["open", "close"]].max(axis=1)) | (x["low"] > x[["open", "close"]].min(axis=1))
                 | (x["high"] < x["low"]), "ohlc_inconsistent", "high < max(open, close) or low > min(open, close)")

    group = _series_key(OHLCV)
    spikes = np.zeros(len(d()), dtype=bool)
    sorted_df = d().sort_values(list(OHLCV.key), kind="stable")
    for values, series in sorted_df.groupby(group, sort=False):
        hist = _history_of(history, group, values)
        spikes[series.index.to_numpy()] = spike_outliers(
            series["close"].to_numpy(), threshold=outlier_threshold, window=outlier_window,
            min_periods=outlier_min_periods, history=None if hist is None else hist["close"].to_numpy())
    sieve.reject(spikes, "outlier", f"isolated spike beyond {outlier_threshold:g} robust sigmas, reverted next bar")

    result = sieve.result()
    result.clean = result.clean.sort_values(list(OHLCV.key), ignore_index=True)
    return result


def _history_of(history: pd.DataFrame | None, group: list[str], values: tuple) -> pd.DataFrame | None:
    if history is None or history.empty:
        return None
    mask = np.logical_and.reduce([history[c] == v for c, v in zip(group, values)])
    h = history[mask]
    return h.sort_values("timestamp") if len(h) else None
