"""One evaluation of the monitor: prediction log + lake → quality, drift and data age (a snapshot)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cryptopredict.data.lake import Lake, partition_path
from cryptopredict.data.schemas import OHLCV
from cryptopredict.data.validate import timeframe_delta
from cryptopredict.labels import DirectionLabeler
from cryptopredict.monitoring import drift as drift_mod
from cryptopredict.monitoring.log import LogStore
from cryptopredict.monitoring.outcomes import bar_times, dedupe_predictions, join_outcomes, load_bars, \
    quality_table, reliability, sleeve_returns

log = logging.getLogger(__name__)


@dataclass
class MonitorSnapshot:
    """What the monitor knows at ``now``. ``feature_drift``: model_version → summary (max PSI, share
    drifted, worst features, windows); ``notes``: what could not be computed and why."""

    now: pd.Timestamp
    log_rows: int
    outcomes: pd.DataFrame
    quality: pd.DataFrame
    reliability: dict[str, pd.DataFrame]
    feature_drift: dict[str, dict[str, Any]]
    feature_drift_tables: dict[str, pd.DataFrame]
    prediction_drift: pd.DataFrame
    data_age_hours: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (NaN/inf as null)."""
        status = self.outcomes["status"].value_counts().to_dict() if len(self.outcomes) else {}
        return _clean({
            "now": self.now.isoformat(), "log_rows": self.log_rows, "predictions": len(self.outcomes),
            "prediction_status": {str(k): int(v) for k, v in status.items()},
            "quality": self.quality.to_dict(orient="records"),
            "reliability": {v: t.to_dict(orient="records") for v, t in self.reliability.items()},
            "feature_drift": self.feature_drift,
            "feature_drift_tables": {v: t.to_dict(orient="records") for v, t in self.feature_drift_tables.items()},
            "prediction_drift": self.prediction_drift.to_dict(orient="records"),
            "data_age_hours": self.data_age_hours, "notes": self.notes,
        })


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, pd.Timestamp):
        return x.isoformat()
    return x


def data_age_hours(lake: Lake, symbols: Sequence[str], *, exchange: str, timeframe: str,
                   now: pd.Timestamp) -> dict[str, float]:
    """symbol → hours from the close (open + one bar) of its newest bar closed by ``now`` to ``now``;
    inf without such a bar."""
    bar = timeframe_delta(timeframe)
    out = {}
    for s in symbols:
        part = partition_path(OHLCV, {"exchange": exchange, "symbol": s, "timeframe": timeframe})
        ts = lake.read_partition("ohlcv", part)["timestamp"]
        closed = ts[ts + bar <= now]
        out[s] = math.inf if closed.empty else (now - (closed.max() + bar)) / pd.Timedelta(hours=1)
    return out


def build_snapshot(cfg: Any, *, now: pd.Timestamp | None = None,
                   references: Mapping[str, tuple[str, str]] | None = None,
                   labelers: Mapping[str, DirectionLabeler] | None = None, symbols: Sequence[str] | None = None,
                   lake: Lake | None = None, store: LogStore | None = None, top: int = 10) -> MonitorSnapshot:
    """Read the log (the longest window back from ``now``) and the lake, and compute everything.

    ``references``: model_version → (first, last) of its training data span, the feature drift
    reference (merged over ``cfg.monitoring.reference_spans``); ``labelers``: model_version → its fitted
    labeler; ``symbols``: whose features and data age are checked (default ``cfg.ingest.symbols``)."""
    m = cfg.monitoring
    now = pd.Timestamp.now(tz="UTC").floor("s") if now is None else drift_mod.to_utc(now)
    lake = lake or Lake(cfg.lake.root, s3_region=cfg.lake.s3_region, s3_endpoint=cfg.lake.s3_endpoint)
    store = store or LogStore.from_config(cfg)
    bar = timeframe_delta(cfg.ingest.timeframe)
    symbols = list(symbols or cfg.ingest.symbols)
    notes: list[str] = []
    windows = sorted(set(m.windows_hours) | {m.alert_window_hours})
    back = max(max(windows), m.prediction_recent_hours + m.prediction_reference_hours)
    raw = store.read(since=now - pd.Timedelta(hours=back))
    preds = dedupe_predictions(raw)
    preds = preds[bar_times(preds["as_of"], bar, m.as_of_convention) <= now] if len(preds) else preds
    if preds.empty:
        notes.append(f"no predictions logged in the {back} h before {now} under {store.root!r}")
    bars = load_bars(lake, sorted(set(preds["symbol"])) if len(preds) else [], exchange=cfg.ingest.exchange,
                     timeframe=cfg.ingest.timeframe)
    bars = {s: b[b["timestamp"] + bar <= now] for s, b in bars.items()}  # closed by `now`
    outcomes = join_outcomes(preds, bars, bar, labelers=labelers, vol_window=cfg.features.label_vol_window,
                             hold_band=m.hold_band, as_of_convention=m.as_of_convention)
    no_labeler = sorted(set(outcomes["model_version"]) - set(labelers or {}))
    if no_labeler:
        notes.append(f"no labeler for {no_labeler}: realised classes by the sign of the return "
                     f"(HOLD within ±{m.hold_band})")
    returns = sleeve_returns(preds, bars, bar, cfg.evaluation.backtest, as_of_convention=m.as_of_convention)
    quality = quality_table(outcomes, returns, now=now, windows_hours=windows, ece_bins=m.ece_bins)
    rel = {v: reliability(outcomes, model_version=v, now=now, window_hours=m.alert_window_hours,
                          n_bins=m.ece_bins) for v in sorted(set(outcomes["model_version"]))}

    spans = {v: (s[0], s[1]) for v, s in m.reference_spans.items()}
    spans.update(references or {})
    fd_summary: dict[str, dict[str, Any]] = {}
    fd_tables: dict[str, pd.DataFrame] = {}
    if spans:
        features = drift_mod.read_features(lake, symbols)
        features = features[features["timestamp"] + bar <= now]
        for version, span in sorted(spans.items()):
            reference, recent = drift_mod.split_reference_recent(features, span, m.drift_recent_bars)
            table = drift_mod.feature_drift(reference, recent, bins=m.psi_bins, threshold=m.psi_threshold,
                                            min_rows=m.min_drift_rows)
            summary = drift_mod.drift_summary(table, top)
            summary.update({"reference_first": str(reference["timestamp"].min()),
                            "reference_last": str(reference["timestamp"].max()), "reference_rows": len(reference),
                            "recent_first": str(recent["timestamp"].min()),
                            "recent_last": str(recent["timestamp"].max()), "recent_rows": len(recent)})
            fd_summary[version], fd_tables[version] = summary, table
    else:
        notes.append("no reference span given (--reference VERSION=FIRST,LAST or monitoring.reference_spans): "
                     "feature drift not computed")
    with_bar = outcomes if len(outcomes) else outcomes.assign(bar_time=pd.Series(dtype="datetime64[ns, UTC]"))
    pdrift = drift_mod.prediction_drift(with_bar, now=now, recent_hours=m.prediction_recent_hours,
                                        reference_hours=m.prediction_reference_hours, bins=m.psi_bins,
                                        threshold=m.psi_threshold, min_rows=m.min_drift_rows)
    age = data_age_hours(lake, symbols, exchange=cfg.ingest.exchange, timeframe=cfg.ingest.timeframe, now=now)
    return MonitorSnapshot(now, len(raw), outcomes, quality, rel, fd_summary, fd_tables, pdrift, age, notes)
