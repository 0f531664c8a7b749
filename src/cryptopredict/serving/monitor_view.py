"""What the dashboard shows from the monitor (``cryptopredict.monitoring``): each coin's rolling accuracy
and the model's drift, from one monitor evaluation (``monitoring.state.build_snapshot``: the prediction
log joined with the bars that followed, and drift against the reference windows).

The monitor is optional here: it is imported lazily, and when it cannot be imported or fails, the
dashboard says "not available" with the reason instead of a number.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from cryptopredict.config import Config

log = logging.getLogger(__name__)


@dataclass
class MonitorView:
    """``status``: "available" or "not available: <why>"; ``accuracy``: symbol → (accuracy, resolved
    predictions) over the last ``window_hours``; ``drift``: the served version's drift figures (None where
    the monitor could not compute one); ``notes``: what the monitor could not compute and why."""

    status: str
    window_hours: int | None = None
    accuracy: dict[str, tuple[float | None, int]] = field(default_factory=dict)
    drift: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def monitor_view(cfg: Config, version: str, now: pd.Timestamp) -> MonitorView:
    """The monitor's view of ``version`` at ``now`` (see the module docstring)."""
    try:
        from cryptopredict.monitoring.state import build_snapshot
    except ImportError as exc:
        return MonitorView(f"not available: the monitor cannot be imported ({exc})")
    try:
        snap = build_snapshot(cfg, now=now)
    except Exception as exc:  # noqa: BLE001 - the dashboard shows the failure instead of numbers
        log.warning("monitor evaluation failed: %s", exc)
        return MonitorView(f"not available: the monitor failed ({type(exc).__name__}: {exc})")
    window = int(cfg.monitoring.alert_window_hours)
    accuracy: dict[str, tuple[float | None, int]] = {}
    q = snap.quality
    if len(q):
        mine = q[(q["model_version"] == version) & (q["window_hours"] == window)]
        for row in mine.itertuples():
            if row.symbol != "*":
                accuracy[str(row.symbol)] = (_finite(row.accuracy), int(row.n_resolved))
    drift: dict[str, float | None] = {}
    pd_table = snap.prediction_drift
    if len(pd_table):
        mine = pd_table[pd_table["model_version"] == version]
        drift["prediction_max_psi"] = _finite(mine["psi"].max()) if len(mine) else None
    fd = snap.feature_drift.get(version)
    if fd:
        drift["feature_max_psi"] = _finite(fd.get("max_psi"))
        drift["feature_share_drifted"] = _finite(fd.get("share_drifted"))
    return MonitorView("available", window, accuracy, drift, list(snap.notes))
