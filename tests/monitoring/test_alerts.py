"""Alerts: rules from thresholds, one webhook POST per episode (received by a local HTTP server), state
persisted across monitor restarts, and failing webhooks (500, timeout, refused) that never crash."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from cryptopredict.monitoring.alerts import STATE_FILE, AlertManager, Condition, evaluate_rules, post_json
from cryptopredict.monitoring.log import LogStore
from cryptopredict.monitoring.settings import MonitoringConfig


class Hook:
    """A webhook on 127.0.0.1 that records POSTed JSON bodies and answers per ``mode``."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.attempts = 0
        self.mode = "ok"  # ok | fail (500) | slow (sleeps past the client's timeout)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                hook.attempts += 1
                mode = hook.mode  # as when the request arrived
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if mode == "slow":
                    time.sleep(1.0)  # the client has given up by now: nothing to answer
                    return
                if mode == "fail":
                    self.send_response(500)
                    self.end_headers()
                    return
                hook.bodies.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def _cfg(url: str | None, **kw: object) -> MonitoringConfig:
    return MonitoringConfig(webhook_url=url, webhook_timeout_s=0.3, webhook_retries=2, webhook_backoff_s=0.01,
                            **kw)


def _quality(accuracy: float, ece: float = 0.02, resolved: int = 100, window: int = 168) -> pd.DataFrame:
    return pd.DataFrame([{"model_version": "v1", "symbol": "*", "window_hours": window, "accuracy": accuracy,
                          "ece": ece, "n_resolved": resolved}])


def test_rules_follow_the_thresholds() -> None:
    cfg = MonitoringConfig(alert_accuracy_below=0.4, alert_ece_above=0.1, alert_max_psi_above=0.5,
                           alert_drifted_share_above=0.3, alert_data_age_hours=2, alert_min_outcomes=50)
    conds = evaluate_rules(cfg, quality=_quality(0.35, ece=0.05),
                           feature_drift={"v1": {"max_psi": 0.7, "share_drifted": 0.1, "worst": [{"feature": "x"}]}},
                           data_age_hours={"BTCUSDT": 1.0, "ETHUSDT": 3.5, "SOLUSDT": math.inf})
    got = {c.key: c.active for c in conds}
    assert got == {"accuracy_below/model_version=v1": True, "ece_above/model_version=v1": False,
                   "feature_max_psi_above/model_version=v1": True,
                   "feature_drifted_share_above/model_version=v1": False,
                   "data_age_above/symbol=BTCUSDT": False, "data_age_above/symbol=ETHUSDT": True,
                   "data_age_above/symbol=SOLUSDT": True}
    # too few outcomes, another window, or a disabled rule: nothing to evaluate
    assert evaluate_rules(cfg, quality=_quality(0.1, resolved=49)) == []
    assert evaluate_rules(cfg, quality=_quality(0.1, window=24)) == []
    off = cfg.model_copy(update={"alert_accuracy_below": None})
    assert [c.rule for c in evaluate_rules(off, quality=_quality(0.1))] == ["ece_above"]


def _cond(active: bool, value: float = 0.3) -> Condition:
    return Condition("accuracy_below", {"model_version": "v1"}, active, value, 0.34, f"accuracy {value}")


def test_an_alert_is_posted_once_per_episode_and_survives_restarts(tmp_path: Path, hook: Hook) -> None:
    store = LogStore(tmp_path)
    cfg = _cfg(hook.url)
    fired = AlertManager(store, cfg).process([_cond(True)], now=pd.Timestamp("2024-01-01T00:00", tz="UTC"))
    assert [a.delivered for a in fired] == [True]
    assert AlertManager(store, cfg).process([_cond(True, 0.2)]) == []  # a new monitor process: no repeat
    assert AlertManager(store, cfg).process([]) == []  # not evaluated this time: still active, no repeat
    assert len(hook.bodies) == 1
    body = hook.bodies[0]
    assert body["key"] == "accuracy_below/model_version=v1" and body["status"] == "firing"
    assert body["model_version"] == "v1" and body["value"] == 0.3 and body["threshold"] == 0.34
    assert body["fired_at"].startswith("2024-01-01")
    assert store.read_json(STATE_FILE)["active"]["accuracy_below/model_version=v1"]["delivered"] is True
    AlertManager(store, cfg).process([_cond(False, 0.5)])  # cleared
    assert store.read_json(STATE_FILE)["active"] == {} and len(hook.bodies) == 1
    AlertManager(store, cfg).process([_cond(True, 0.25)])  # a new episode alerts again
    assert len(hook.bodies) == 2 and hook.bodies[1]["value"] == 0.25
    assert not list(tmp_path.rglob(".tmp-*"))  # the state is written atomically


@pytest.mark.parametrize("mode", ["fail", "slow"])
def test_a_failing_webhook_is_retried_then_logged_and_never_raises(tmp_path: Path, hook: Hook, mode: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    hook.mode = mode
    store = LogStore(tmp_path)
    start = time.monotonic()
    fired = AlertManager(store, _cfg(hook.url)).process([_cond(True)])
    assert time.monotonic() - start < 5
    assert [a.delivered for a in fired] == [False] and fired[0].attempts == 3  # 1 + 2 retries
    deadline = time.time() + 3
    while hook.attempts < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert hook.attempts == 3
    assert "not delivered" in caplog.text and ("HTTP 500" if mode == "fail" else "timed out") in fired[0].error
    # undelivered: sent again at the next evaluation, and once delivered not again
    hook.mode = "ok"
    again = AlertManager(store, _cfg(hook.url)).process([_cond(True)])
    assert [a.delivered for a in again] == [True] and len(hook.bodies) == 1
    assert AlertManager(store, _cfg(hook.url)).process([_cond(True)]) == [] and len(hook.bodies) == 1


def test_an_unreachable_webhook_and_a_client_error_do_not_raise(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    ok, attempts, error = post_json(f"http://127.0.0.1:{port}/x", {"a": 1}, timeout=0.5, retries=1, backoff=0.0)
    assert (ok, attempts) == (False, 2) and "refused" in error.lower()
    fired = AlertManager(LogStore(tmp_path), _cfg(f"http://127.0.0.1:{port}/x")).process([_cond(True)])
    assert fired[0].delivered is False

    class NotFound(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        ok, attempts, error = post_json(f"http://127.0.0.1:{server.server_address[1]}/", {"a": 1}, timeout=1,
                                        retries=3, backoff=0.0)
        assert (ok, attempts, error) == (False, 1, "HTTP 404")  # a 4xx is not retried
    finally:
        server.shutdown()
        server.server_close()


def test_without_a_webhook_alerts_are_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = LogStore(tmp_path)
    with caplog.at_level("WARNING"):
        fired = AlertManager(store, _cfg(None)).process([_cond(True)])
        AlertManager(store, _cfg(None)).process([_cond(True)])
    assert [a.delivered for a in fired] == [None]
    assert caplog.text.count("ALERT accuracy_below/model_version=v1") == 1
