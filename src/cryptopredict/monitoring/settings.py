"""``monitoring`` section of the config (pydantic only): the prediction log, the quality windows, drift,
alert thresholds and the webhook, and the retrain trigger."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class MonitoringConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    log_root: str = Field("monitoring", description="prediction log and monitor state: a local directory or "
                          "s3://bucket/prefix (s3 region/endpoint from the lake section)")

    # ------------------------------------------------------------------ the prediction log
    flush_rows: int = Field(256, ge=1, description="the logger writes a part file when this many rows wait")
    flush_seconds: float = Field(5.0, gt=0, description="... or when the oldest waiting row is this old")
    max_buffer_rows: int = Field(100_000, ge=1, description="rows held while writes fail; beyond this the "
                                 "oldest are dropped, counted and logged at ERROR")
    as_of_convention: Literal["bar_open", "bar_close"] = Field(
        "bar_open", description="what a Prediction's as_of names: the open time of its last closed bar (the "
        "lake's `timestamp`, the feature row's key) or that bar's close time")

    # ------------------------------------------------------------------ outcomes and quality
    windows_hours: list[int] = Field(default_factory=lambda: [24, 168, 720],
                                     description="quality windows, by the predictions' bar time, ending now")
    ece_bins: int = Field(10, ge=1, description="equal-width confidence bins of ECE / reliability")
    hold_band: float = Field(0.0, ge=0, description="without a model's labeler: |forward log return| ≤ this "
                             "is HOLD, otherwise the sign decides (the class source is reported as 'sign')")

    # ------------------------------------------------------------------ drift
    drift_recent_bars: int = Field(720, ge=10, description="recent feature rows per symbol: the last N bars")
    psi_bins: int = Field(10, ge=2, description="quantile bins of the reference distribution")
    psi_threshold: float = Field(0.2, gt=0, description="a feature (or prediction quantity) with PSI above "
                                 "this counts as drifted")
    min_drift_rows: int = Field(50, ge=2, description="fewer finite rows on either side → PSI/KS not computed")
    prediction_recent_hours: int = Field(168, ge=1, description="prediction drift: the recent window")
    prediction_reference_hours: int = Field(720, ge=1, description="prediction drift: the window before it")
    reference_spans: dict[str, list[str]] = Field(
        default_factory=dict, description="model_version → [first, last] ISO times of its training data "
        "(the feature drift reference); the CLI's --reference adds to it")

    # ------------------------------------------------------------------ alerts (None disables a rule)
    alert_window_hours: int = Field(168, ge=1, description="the quality window the alert rules read")
    alert_min_outcomes: int = Field(50, ge=1, description="quality rules need this many resolved predictions")
    alert_accuracy_below: float | None = Field(0.34, ge=0, le=1)
    alert_ece_above: float | None = Field(0.10, ge=0, le=1)
    alert_max_psi_above: float | None = Field(0.5, gt=0)
    alert_drifted_share_above: float | None = Field(0.3, ge=0, le=1)
    alert_prediction_psi_above: float | None = Field(0.5, gt=0)
    alert_data_age_hours: float | None = Field(6.0, gt=0, description="newest closed bar older than this")
    webhook_url: str | None = Field(None, description="alerts are POSTed here as JSON (and always logged)")
    webhook_timeout_s: float = Field(5.0, gt=0)
    webhook_retries: int = Field(3, ge=0, description="retries after the first attempt")
    webhook_backoff_s: float = Field(0.5, ge=0, description="first retry delay; doubled for each next one")

    # ------------------------------------------------------------------ retraining
    retrain_script: str = Field("jobs/retrain.py", description="--retrain-on-drift runs this (locally as a "
                                "subprocess, or through `ray job submit` when RAY_ADDRESS is set)")
    retrain_args: list[str] = Field(default_factory=list, description="extra arguments for the script")

    @field_validator("windows_hours")
    @classmethod
    def _windows(cls, v: list[int]) -> list[int]:
        if not v or any(w < 1 for w in v):
            raise ValueError("give at least one window of >= 1 hour")
        return sorted(set(v))

    @field_validator("reference_spans", mode="before")
    @classmethod
    def _spans(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out = {}
        for version, span in v.items():
            if not isinstance(span, (list, tuple)) or len(span) != 2:
                raise ValueError(f"reference span of {version!r} must be [first, last], got {span!r}")
            # YAML reads unquoted dates as date/datetime objects
            out[str(version)] = [t.isoformat() if hasattr(t, "isoformat") else t for t in span]
        return out
