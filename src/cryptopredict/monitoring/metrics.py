"""Prometheus metrics on explicit registries (never the global one), so the Serve app can merge them.

- :class:`RequestMetrics`: request counter and latency histogram per route and status, for the Serve app.
- :class:`MonitorMetrics`: gauges of the monitor's state (rolling accuracy, ECE, PnL, hit rate, counts per
  model version, symbol and window; feature and prediction drift per model version; data age; active
  alerts). ``update`` replaces every gauge's label sets, so subjects that disappear are not reported stale.

Expose a registry with ``prometheus_client.generate_latest(registry)`` (or :func:`render`), or merge several
in one endpoint by rendering each.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

NAMESPACE = "cryptopredict"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """``cryptopredict_requests_total{route,status}`` and ``cryptopredict_request_seconds{route}``."""

    def __init__(self, registry: CollectorRegistry | None = None, *, namespace: str = NAMESPACE,
                 buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter("requests", "HTTP requests by route and status code", ["route", "status"],
                                namespace=namespace, registry=self.registry)
        self.latency = Histogram("request_seconds", "request latency in seconds by route", ["route"],
                                 namespace=namespace, buckets=tuple(buckets), registry=self.registry)

    def observe(self, route: str, status: int | str, seconds: float) -> None:
        """Count one request and record its latency (seconds)."""
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)


class MonitorMetrics:
    """Gauges of the monitor's state; feed it with :meth:`update`."""

    def __init__(self, registry: CollectorRegistry | None = None, *, namespace: str = NAMESPACE) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        q = ["model_version", "symbol", "window_hours"]

        def gauge(name: str, doc: str, labels: list[str]) -> Gauge:
            return Gauge(name, doc, labels, namespace=namespace, registry=self.registry)

        self.accuracy = gauge("model_accuracy", "share of resolved predictions whose signal was right", q)
        self.ece = gauge("model_ece", "expected calibration error of the confidence", q)
        self.hit_rate = gauge("model_directional_hit_rate", "BUY/SELL signals with the return's sign", q)
        self.pnl = gauge("model_pnl", "compounded net return of the logged positions over the window", q)
        self.resolved = gauge("model_resolved_predictions", "predictions whose horizon has passed", q)
        self.predictions = gauge("model_predictions", "distinct predictions (symbol, as_of) in the window", q)
        self.drift_max_psi = gauge("feature_drift_max_psi", "largest feature PSI vs the training span",
                                   ["model_version"])
        self.drift_share = gauge("feature_drift_share", "share of features with PSI over the threshold",
                                 ["model_version"])
        self.prediction_psi = gauge("prediction_drift_psi", "PSI of a prediction quantity, recent vs before",
                                    ["model_version", "quantity"])
        self.data_age = gauge("data_age_hours", "hours since the newest bar closed", ["symbol"])
        self.alert_active = gauge("alert_active", "1 while an alert condition is active", ["rule", "subject"])
        self._all = [self.accuracy, self.ece, self.hit_rate, self.pnl, self.resolved, self.predictions,
                     self.drift_max_psi, self.drift_share, self.prediction_psi, self.data_age, self.alert_active]

    def update(self, *, quality: pd.DataFrame | None = None,
               feature_drift: Mapping[str, Mapping[str, Any]] | None = None,
               prediction_drift: pd.DataFrame | None = None, data_age_hours: Mapping[str, float] | None = None,
               active_alerts: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Replace every gauge with the given state (NaN values are exported as NaN)."""
        for g in self._all:
            g.clear()
        if quality is not None:
            for r in quality.itertuples():
                labels = {"model_version": str(r.model_version), "symbol": str(r.symbol),
                          "window_hours": str(r.window_hours)}
                self.accuracy.labels(**labels).set(r.accuracy)
                self.ece.labels(**labels).set(r.ece)
                self.hit_rate.labels(**labels).set(r.directional_hit_rate)
                self.pnl.labels(**labels).set(r.pnl)
                self.resolved.labels(**labels).set(r.n_resolved)
                self.predictions.labels(**labels).set(r.n_predictions)
        for version, s in (feature_drift or {}).items():
            self.drift_max_psi.labels(model_version=str(version)).set(float(s.get("max_psi", math.nan)))
            self.drift_share.labels(model_version=str(version)).set(float(s.get("share_drifted", math.nan)))
        if prediction_drift is not None:
            for r in prediction_drift.itertuples():
                self.prediction_psi.labels(model_version=str(r.model_version), quantity=str(r.quantity)).set(r.psi)
        for symbol, age in (data_age_hours or {}).items():
            self.data_age.labels(symbol=symbol).set(age)
        for key, record in (active_alerts or {}).items():
            subject = ",".join(f"{k}={v}" for k, v in sorted(dict(record.get("subject", {})).items()))
            self.alert_active.labels(rule=str(record.get("rule", key)), subject=subject).set(1)


def update_from_snapshot(metrics: MonitorMetrics, snapshot: Any,
                         active_alerts: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """:meth:`MonitorMetrics.update` from a :class:`~cryptopredict.monitoring.state.MonitorSnapshot`."""
    metrics.update(quality=snapshot.quality, feature_drift=snapshot.feature_drift,
                   prediction_drift=snapshot.prediction_drift, data_age_hours=snapshot.data_age_hours,
                   active_alerts=active_alerts)


def render(*registries: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition of several registries concatenated, and its content type."""
    return b"".join(generate_latest(r) for r in registries), CONTENT_TYPE_LATEST
