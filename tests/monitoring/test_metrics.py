"""Prometheus metrics on explicit registries: request counters/histograms and the monitor's gauges."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from prometheus_client import REGISTRY, CollectorRegistry

from cryptopredict.monitoring.log import LogStore, PredictionLogger
from cryptopredict.monitoring.metrics import MonitorMetrics, RequestMetrics, render
from tests.monitoring.support import make_prediction


def test_request_metrics_count_and_time_requests_on_their_own_registry() -> None:
    m = RequestMetrics()
    m.observe("/predict", 200, 0.012)
    m.observe("/predict", 200, 0.3)
    m.observe("/predict", 422, 0.001)
    m.observe("/predict/batch", "200", 2.0)
    r = m.registry
    assert r.get_sample_value("cryptopredict_requests_total", {"route": "/predict", "status": "200"}) == 2
    assert r.get_sample_value("cryptopredict_requests_total", {"route": "/predict", "status": "422"}) == 1
    assert r.get_sample_value("cryptopredict_request_seconds_count", {"route": "/predict"}) == 3
    assert r.get_sample_value("cryptopredict_request_seconds_sum", {"route": "/predict"}) == 0.313
    assert r.get_sample_value("cryptopredict_request_seconds_bucket", {"route": "/predict", "le": "0.025"}) == 2
    assert REGISTRY.get_sample_value("cryptopredict_requests_total", {"route": "/predict", "status": "200"}) is None
    RequestMetrics()  # a second instance does not collide (no global registry)


def test_monitor_gauges_are_replaced_on_each_update() -> None:
    shared = CollectorRegistry()
    requests = RequestMetrics(shared)
    m = MonitorMetrics(shared)  # both on one registry, as the Serve app may do
    quality = pd.DataFrame([
        {"model_version": "v1", "symbol": "*", "window_hours": 168, "accuracy": 0.52, "ece": 0.04,
         "directional_hit_rate": 0.55, "pnl": 0.013, "n_resolved": 120, "n_predictions": 130},
        {"model_version": "v1", "symbol": "BTCUSDT", "window_hours": 168, "accuracy": math.nan, "ece": math.nan,
         "directional_hit_rate": math.nan, "pnl": math.nan, "n_resolved": 0, "n_predictions": 4}])
    m.update(quality=quality, feature_drift={"v1": {"max_psi": 0.8, "share_drifted": 0.25}},
             prediction_drift=pd.DataFrame([{"model_version": "v1", "quantity": "p_buy", "psi": 0.05}]),
             data_age_hours={"BTCUSDT": 1.5},
             active_alerts={"k": {"rule": "feature_max_psi_above", "subject": {"model_version": "v1"}}})
    g = shared.get_sample_value
    labels = {"model_version": "v1", "symbol": "*", "window_hours": "168"}
    assert g("cryptopredict_model_accuracy", labels) == 0.52
    assert g("cryptopredict_model_ece", labels) == 0.04
    assert g("cryptopredict_model_pnl", labels) == 0.013
    assert g("cryptopredict_model_resolved_predictions", labels) == 120
    assert math.isnan(g("cryptopredict_model_accuracy", {**labels, "symbol": "BTCUSDT"}))
    assert g("cryptopredict_feature_drift_max_psi", {"model_version": "v1"}) == 0.8
    assert g("cryptopredict_feature_drift_share", {"model_version": "v1"}) == 0.25
    assert g("cryptopredict_prediction_drift_psi", {"model_version": "v1", "quantity": "p_buy"}) == 0.05
    assert g("cryptopredict_data_age_hours", {"symbol": "BTCUSDT"}) == 1.5
    assert g("cryptopredict_alert_active", {"rule": "feature_max_psi_above", "subject": "model_version=v1"}) == 1
    m.update(quality=quality.iloc[:1].assign(model_version="v2"))
    assert g("cryptopredict_model_accuracy", labels) is None  # v1 is gone, not left stale
    assert g("cryptopredict_model_accuracy", {**labels, "model_version": "v2"}) == 0.52
    assert g("cryptopredict_feature_drift_max_psi", {"model_version": "v1"}) is None
    requests.observe("/health", 200, 0.001)
    body, content_type = render(shared)
    assert b"cryptopredict_model_accuracy{" in body and b"cryptopredict_requests_total{" in body
    assert content_type.startswith("text/plain")


def test_the_logger_reports_its_counts(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with PredictionLogger(LogStore(tmp_path), flush_rows=100, flush_seconds=60, registry=registry) as logger:
        for _ in range(5):
            logger.log(make_prediction(), 1.0)
    assert registry.get_sample_value("cryptopredict_prediction_log_rows_total") == 5
    assert registry.get_sample_value("cryptopredict_prediction_log_written_rows_total") == 5
    assert registry.get_sample_value("cryptopredict_prediction_log_dropped_rows_total") == 0
