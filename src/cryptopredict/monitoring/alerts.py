"""Alert rules on the monitor's state, and their delivery: always to the log, and as a JSON POST to a
webhook when one is configured.

A rule's condition has a stable key (rule + subject, e.g. ``accuracy_below/model=v3``). It fires once when
it becomes active and not again until it has cleared (been evaluated inactive); the set of active
conditions is persisted in ``<log_root>/monitor_state/alerts.json`` (written atomically), so restarts of the
monitor do not repeat alerts. A webhook failure (connection error, timeout, 5xx/429 after the retries, or
another 4xx) is logged and never raised; an undelivered alert is tried again at the next evaluation.
A condition that could not be evaluated this time (too few outcomes, no drift reference) is left as it was.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from cryptopredict.monitoring.log import LogStore
from cryptopredict.monitoring.settings import MonitoringConfig

log = logging.getLogger(__name__)

STATE_FILE = "monitor_state/alerts.json"


@dataclass(frozen=True)
class Condition:
    """One rule evaluated on one subject: active when ``value`` crosses ``threshold``."""

    rule: str
    subject: dict[str, str]
    active: bool
    value: float
    threshold: float
    message: str

    @property
    def key(self) -> str:
        return self.rule + "".join(f"/{k}={v}" for k, v in sorted(self.subject.items()))


@dataclass
class Alert:
    """A condition that fired (or whose undelivered alert was sent again) in this evaluation."""

    key: str
    rule: str
    subject: dict[str, str]
    value: float
    threshold: float
    message: str
    fired_at: str
    delivered: bool | None  # None: no webhook configured (logged only)
    attempts: int = 0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {"source": "cryptopredict-monitor", "status": "firing", "key": self.key, "rule": self.rule,
                **self.subject, "value": _json_float(self.value), "threshold": self.threshold,
                "message": self.message, "fired_at": self.fired_at}


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


# --------------------------------------------------------------------------------------------- rules


def evaluate_rules(cfg: MonitoringConfig, *, quality: pd.DataFrame | None = None,
                   feature_drift: Mapping[str, Mapping[str, Any]] | None = None,
                   prediction_drift: pd.DataFrame | None = None,
                   data_age_hours: Mapping[str, float] | None = None) -> list[Condition]:
    """Every evaluable condition. ``quality``: :func:`outcomes.quality_table` (its rows for symbol ``*``
    and ``cfg.alert_window_hours`` are read, when they have ``cfg.alert_min_outcomes`` resolved
    predictions); ``feature_drift``: model_version → :func:`drift.drift_summary`; ``prediction_drift``:
    :func:`drift.prediction_drift`; ``data_age_hours``: symbol → hours since its newest bar closed."""
    out: list[Condition] = []
    if quality is not None and len(quality):
        rows = quality[(quality["symbol"] == "*") & (quality["window_hours"] == cfg.alert_window_hours)]
        for r in rows.itertuples():
            if r.n_resolved < cfg.alert_min_outcomes:
                continue
            subject = {"model_version": str(r.model_version)}
            w = f"{cfg.alert_window_hours} h"
            if cfg.alert_accuracy_below is not None and math.isfinite(r.accuracy):
                out.append(Condition("accuracy_below", subject, r.accuracy < cfg.alert_accuracy_below,
                                     float(r.accuracy), cfg.alert_accuracy_below,
                                     f"{r.model_version}: accuracy {r.accuracy:.3f} over {w} "
                                     f"({r.n_resolved} outcomes) < {cfg.alert_accuracy_below}"))
            if cfg.alert_ece_above is not None and math.isfinite(r.ece):
                out.append(Condition("ece_above", subject, r.ece > cfg.alert_ece_above, float(r.ece),
                                     cfg.alert_ece_above, f"{r.model_version}: ECE {r.ece:.3f} over {w} "
                                     f"({r.n_resolved} outcomes) > {cfg.alert_ece_above}"))
    for version, summary in (feature_drift or {}).items():
        subject = {"model_version": str(version)}
        max_psi, share = float(summary.get("max_psi", math.nan)), float(summary.get("share_drifted", math.nan))
        worst = ", ".join(w["feature"] for w in list(summary.get("worst", []))[:3])
        if cfg.alert_max_psi_above is not None and math.isfinite(max_psi):
            out.append(Condition("feature_max_psi_above", subject, max_psi > cfg.alert_max_psi_above, max_psi,
                                 cfg.alert_max_psi_above, f"{version}: max feature PSI {max_psi:.3f} > "
                                 f"{cfg.alert_max_psi_above} (worst: {worst})"))
        if cfg.alert_drifted_share_above is not None and math.isfinite(share):
            out.append(Condition("feature_drifted_share_above", subject, share > cfg.alert_drifted_share_above,
                                 share, cfg.alert_drifted_share_above,
                                 f"{version}: {share:.0%} of features drifted (PSI > {cfg.psi_threshold}) > "
                                 f"{cfg.alert_drifted_share_above:.0%}"))
    if prediction_drift is not None and len(prediction_drift) and cfg.alert_prediction_psi_above is not None:
        for version, grp in prediction_drift.dropna(subset=["psi"]).groupby("model_version", sort=True):
            top = grp.loc[grp["psi"].idxmax()]
            out.append(Condition("prediction_psi_above", {"model_version": str(version)},
                                 float(top["psi"]) > cfg.alert_prediction_psi_above, float(top["psi"]),
                                 cfg.alert_prediction_psi_above,
                                 f"{version}: prediction drift PSI {top['psi']:.3f} ({top['quantity']}) > "
                                 f"{cfg.alert_prediction_psi_above}"))
    if cfg.alert_data_age_hours is not None:
        for symbol, age in sorted((data_age_hours or {}).items()):
            out.append(Condition("data_age_above", {"symbol": symbol}, not age <= cfg.alert_data_age_hours,
                                 float(age), cfg.alert_data_age_hours,
                                 f"{symbol}: newest bar closed {age:.1f} h ago > {cfg.alert_data_age_hours} h"))
    return out


# --------------------------------------------------------------------------------------------- delivery


def post_json(url: str, payload: Mapping[str, Any], *, timeout: float, retries: int, backoff: float,
              sleep: Callable[[float], None] = time.sleep) -> tuple[bool, int, str]:
    """POST ``payload`` as JSON; retry connection errors, timeouts, 429 and 5xx with exponential backoff
    (``backoff``, 2·backoff, …). Never raises: (delivered, attempts, last error)."""
    body = json.dumps(payload, default=str).encode()
    error = ""
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff * 2 ** (attempt - 1))
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "cryptopredict-monitor"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                resp.read()
                return True, attempt + 1, ""
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
            if exc.code != 429 and exc.code < 500:
                return False, attempt + 1, error  # the request itself is wrong: retrying will not help
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        except Exception as exc:  # noqa: BLE001 - an alert must never crash the monitor
            error = f"{type(exc).__name__}: {exc}"
            return False, attempt + 1, error
    return False, retries + 1, error


class AlertManager:
    """Fires each condition once per episode; the episodes are persisted in the log root."""

    def __init__(self, store: LogStore, cfg: MonitoringConfig,
                 sender: Callable[..., tuple[bool, int, str]] = post_json) -> None:
        self.store, self.cfg, self.sender = store, cfg, sender

    def state(self) -> dict[str, dict[str, Any]]:
        """key → the active condition's record (fired_at, delivered, value, …)."""
        data = self.store.read_json(STATE_FILE) or {}
        return dict(data.get("active", {}))

    def process(self, conditions: list[Condition], now: pd.Timestamp | None = None) -> list[Alert]:
        """Fire the newly active conditions (and retry undelivered ones), clear the inactive ones, persist."""
        now_s = str(pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now))
        active = self.state()
        fired: list[Alert] = []
        for c in conditions:
            record = active.get(c.key)
            if not c.active:
                if record is not None:
                    log.info("alert cleared: %s (value %s, threshold %s)", c.key, c.value, c.threshold)
                    del active[c.key]
                continue
            if record is not None and record.get("delivered") is not False:
                continue  # already alerted in this episode
            alert = Alert(c.key, c.rule, dict(c.subject), c.value, c.threshold, c.message,
                          record["fired_at"] if record else now_s, None)
            if record is None:
                log.warning("ALERT %s: %s", c.key, c.message)
            if self.cfg.webhook_url:
                ok, attempts, error = self.sender(self.cfg.webhook_url, alert.payload(),
                                                  timeout=self.cfg.webhook_timeout_s,
                                                  retries=self.cfg.webhook_retries,
                                                  backoff=self.cfg.webhook_backoff_s)
                alert.delivered, alert.attempts, alert.error = ok, attempts, error
                if not ok:
                    log.error("alert %s not delivered to the webhook after %d attempts (%s); will retry at "
                              "the next evaluation", c.key, attempts, error)
            active[c.key] = {"rule": c.rule, "subject": c.subject, "fired_at": alert.fired_at,
                             "value": _json_float(c.value), "threshold": c.threshold, "message": c.message,
                             "delivered": alert.delivered}
            fired.append(alert)
        try:
            self.store.write_json(STATE_FILE, {"active": active, "updated_at": now_s})
        except Exception:  # noqa: BLE001 - losing the state repeats alerts; it must not stop the monitor
            log.exception("could not persist the alert state in %s", self.store.root)
        return fired


def alert_records(alerts: list[Alert]) -> list[dict[str, Any]]:
    """Alerts as JSON-able dicts."""
    return [{**asdict(a), "value": _json_float(a.value)} for a in alerts]
