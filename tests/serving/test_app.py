"""The Ray Serve application over real HTTP on 127.0.0.1: one app for the module (per-member deployments,
FastAPI ingress), every route, the error codes, metrics, a reload under load, a config update that makes
the data stale, a schemathesis fuzz of the app's own OpenAPI schema, and the dashboard in headless
Chromium."""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from cryptopredict.serving.predictor import Predictor, fixed_clock
from tests.support.served_model import SYMBOLS, ServedModel, second_model

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TOKEN = "test-admin-token-7f3a"
TOKEN_ENV = "CRYPTOPREDICT_TEST_ADMIN_TOKEN"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-dev-shm-usage")


@dataclass
class App:
    url: str
    served: ServedModel
    root: Path  # the prediction log and the registry of this app

    @property
    def log_root(self) -> Path:
        return self.root / "monitoring"

    @property
    def registry_root(self) -> Path:
        return self.root / "registry"

    def config(self):  # type: ignore[no-untyped-def]
        """The config the app is deployed with."""
        return _app_config(self.served, self.root, self.served.now)

    def get(self, path: str, **kw: object) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kw)  # type: ignore[arg-type]

    def post(self, path: str, **kw: object) -> requests.Response:
        return requests.post(self.url + path, timeout=60, **kw)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _app_config(served: ServedModel, root: Path, fixed_now: pd.Timestamp):  # type: ignore[no-untyped-def]
    cfg = served.cfg.model_copy(deep=True)
    cfg.serving.fixed_now = fixed_now.to_pydatetime()
    cfg.serving.admin_token_env = TOKEN_ENV
    cfg.serving.max_body_bytes = 4096
    cfg.serving.dashboard_refresh_seconds = 5
    cfg.monitoring.log_root = str(root / "monitoring")
    cfg.monitoring.flush_seconds = 0.5
    cfg.registry.root = str(root / "registry")
    cfg.serving.model_cache_dir = str(root / "model-cache")  # registry versions the replicas fetch
    return cfg


def _deploy(served: ServedModel, root: Path, fixed_now: pd.Timestamp) -> None:
    from ray import serve

    from cryptopredict.serving.app import APP_NAME, build_app

    cfg = _app_config(served, root, fixed_now)
    serve.run(build_app({"config_json": cfg.model_dump(mode="json"), "model_dir": str(served.model_dir),
                         "version": served.version}), name=APP_NAME, route_prefix="/")


def _wait(url: str, path: str, timeout: float = 180.0) -> requests.Response:
    """Until ``path`` answers 200 (the proxy answers 404 for a while after a deploy)."""
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            r = requests.get(url + path, timeout=10)
            if r.status_code == 200:
                return r
            last = f"{r.status_code} {r.text[:300]}"
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise AssertionError(f"{path} not ready after {timeout:g} s: {last}")


@pytest.fixture(scope="module")
def app(served_model: ServedModel, ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    from ray import serve

    from cryptopredict.registry.registry import ModelRegistry

    root = tmp_path_factory.mktemp("app")
    v2_dir = second_model(served_model)  # fitted before the app starts: the reload tests need it
    registry = ModelRegistry(str(root / "registry"))
    for directory in (served_model.model_dir, v2_dir):  # v0001 (the champion) and v0002
        registry.register(directory, model="ensemble", config={}, feature_manifest=None, data_span=(None, None),
                          git_revision=None, metrics={})
    os.environ[TOKEN_ENV] = TOKEN
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        _deploy(served_model, root, served_model.now)
        url = f"http://127.0.0.1:{port}"
        _wait(url, "/healthz")
        _wait(url, "/readyz")
        yield App(url, served_model, root)
    finally:
        os.environ.pop(TOKEN_ENV, None)
        serve.shutdown()


def _proba(p: dict) -> list[float]:
    return [p["probabilities"][k] for k in ("SELL", "HOLD", "BUY")]


# ------------------------------------------------------------------------------------------- routes

def test_health_readiness_and_supported_coins(app: App) -> None:
    assert app.get("/healthz").json() == {"status": "ok"}
    ready = app.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] is True and body["model_version"] == "v1" and body["reason"] is None
    assert body["as_of"] == app.served.as_of.isoformat() and body["data_age_hours"] == pytest.approx(1.0)
    assert set(body["members"]) == {"transformer", "bilstm", "cnn_lstm", "gnn"}
    assert all("v1" in v for v in body["members"].values())
    coins = app.get("/supported_coins").json()
    assert coins == {"symbols": sorted(SYMBOLS), "horizon": 4, "model_version": "v1"}


def test_predict_equals_the_in_process_pipeline(app: App) -> None:
    r = app.post("/predict", json={"symbol": "ETHUSDT"})
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["symbol"] == "ETHUSDT" and p["model_version"] == "v1" and p["horizon"] == 4
    assert p["as_of"] == app.served.as_of.isoformat()
    assert p["signal"] in ("SELL", "HOLD", "BUY") and sum(_proba(p)) == pytest.approx(1.0)
    assert p["interval"]["low"] < 0 < p["interval"]["high"] and p["predicted_volatility"] > 0
    assert set(p["member_weights"]) == {"transformer", "bilstm", "cnn_lstm", "gnn"}
    local = Predictor(app.served.cfg, app.served.model_dir, "v1", clock=fixed_clock(app.served.now)).predict("ETHUSDT")
    np.testing.assert_allclose(_proba(p), [local.probabilities.SELL, local.probabilities.HOLD,
                                           local.probabilities.BUY], atol=1e-6)
    assert p["confidence"] == pytest.approx(local.confidence, abs=1e-6)
    assert p["position_size"] == pytest.approx(local.position_size, abs=1e-6)
    assert app.post("/predict", json={"symbol": "ETHUSDT", "horizon": 4}).status_code == 200


def test_batch_predict_keeps_the_order_asked(app: App) -> None:
    r = app.post("/predict/batch", json={"symbols": ["SOLUSDT", "BTCUSDT", "SOLUSDT"]})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["symbol"] for p in preds] == ["SOLUSDT", "BTCUSDT", "SOLUSDT"]
    assert preds[0] == preds[2]
    single = app.post("/predict", json={"symbol": "BTCUSDT"}).json()
    np.testing.assert_allclose(_proba(preds[1]), _proba(single), atol=1e-6)


def test_sequential_latency(app: App) -> None:
    """50 sequential requests through the base-model deployments (``Cache-Control: no-cache``), and 50
    answered from the per-bar cache; the figures in the report come from this loop."""
    session = requests.Session()
    p50 = {}
    for label, headers in (("through the deployments", {"Cache-Control": "no-cache"}), ("cached", {})):
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            r = session.post(app.url + "/predict", json={"symbol": "BTCUSDT"}, headers=headers, timeout=60)
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200
        p50[label] = statistics.median(times)
        print(f"\n/predict {label}: p50 {p50[label] * 1000:.1f} ms, p90 {np.percentile(times, 90) * 1000:.1f} ms")
    assert p50["through the deployments"] < 2.0 and p50["cached"] < 2.0


def test_the_cached_answer_is_the_computed_one(app: App) -> None:
    fresh = app.post("/predict", json={"symbol": "SOLUSDT"}, headers={"Cache-Control": "no-cache"}).json()
    cached = app.post("/predict", json={"symbol": "SOLUSDT"}).json()
    assert cached == fresh


def test_openapi_docs(app: App) -> None:
    docs = app.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text.lower()
    paths = app.get("/openapi.json").json()["paths"]
    for path in ("/predict", "/predict/batch", "/supported_coins", "/healthz", "/readyz", "/metrics",
                 "/admin/reload", "/dashboard"):
        assert path in paths, path


# ------------------------------------------------------------------------------------------- errors

def test_unknown_symbol_is_404(app: App) -> None:
    r = app.post("/predict", json={"symbol": "DOGEUSDT"})
    assert r.status_code == 404 and "unknown symbol 'DOGEUSDT'" in r.json()["detail"]
    r = app.post("/predict/batch", json={"symbols": ["BTCUSDT", "NOPE"]})
    assert r.status_code == 404 and "NOPE" in r.json()["detail"]


@pytest.mark.parametrize("body", [
    b'{"symbol": "BTCUSDT"',  # not JSON
    b'{"symbol": "btcusdt"}',  # fails the symbol pattern
    b'{"symbol": "BTCUSDT", "extra": 1}',  # unknown field
    b'{"horizon": 4}',  # no symbol
    b'{"symbol": "BTCUSDT", "horizon": "soon"}',
    b'{"symbol": "BTCUSDT", "horizon": 0}',
    b'[]',
    b'',
])
def test_malformed_bodies_are_422(app: App, body: bytes) -> None:
    r = app.post("/predict", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, (body, r.status_code, r.text)
    assert isinstance(r.json()["detail"], list)


def test_wrong_horizon_is_422_with_the_models_horizon(app: App) -> None:
    r = app.post("/predict", json={"symbol": "BTCUSDT", "horizon": 24})
    assert r.status_code == 422
    assert "predicts a 4-bar horizon, 24 was asked" in r.json()["detail"][0]["msg"]


def test_oversized_bodies_are_413(app: App) -> None:
    big = b'{"symbol": "BTCUSDT", "pad": "' + b"x" * 5000 + b'"}'
    r = app.post("/predict", data=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit of 4096 bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer, counted while streaming
        yield b'{"symbols": ["'
        for _ in range(60):
            yield b"BTCUSDT" * 20
        yield b'"]}'

    r = app.post("/predict/batch", data=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert app.post("/predict", json={"symbol": "BTCUSDT"}).status_code == 200


def test_admin_needs_the_bearer_token(app: App) -> None:
    assert app.post("/admin/reload", json={}).status_code == 401
    assert app.post("/admin/reload", json={}, headers={"Authorization": "Basic abc"}).status_code == 401
    wrong = app.post("/admin/reload", json={}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["detail"] == "wrong admin token"
    missing = app.post("/admin/reload", json={"model_dir": "/nonexistent/model", "version": "x"},
                       headers={"Authorization": f"Bearer {TOKEN}"})
    assert missing.status_code == 422 and "/nonexistent/model" in missing.json()["detail"]
    assert app.post("/predict", json={"symbol": "BTCUSDT"}).json()["model_version"] == "v1"


# ------------------------------------------------------------------------------------------- metrics

def test_metrics_count_requests_and_report_version_and_data_age(app: App) -> None:
    app.post("/predict", json={"symbol": "BTCUSDT"})
    app.post("/predict", json={"symbol": "DOGEUSDT"})
    text = app.get("/metrics").text

    def value(pattern: str) -> float:
        m = re.search(pattern + r" ([0-9.e+-]+)$", text, re.MULTILINE)
        assert m, f"{pattern} not in metrics"
        return float(m.group(1))

    assert value(r'cryptopredict_requests_total\{route="/predict",status="200"\}') >= 1
    assert value(r'cryptopredict_requests_total\{route="/predict",status="404"\}') >= 1
    assert value(r'cryptopredict_request_seconds_count\{route="/predict"\}') >= 2
    assert value(r'cryptopredict_request_seconds_bucket\{le="\+Inf",route="/predict"\}') >= 2
    assert value(r"cryptopredict_prediction_log_rows_total") >= 1
    assert value(r'cryptopredict_model_info\{version="v1"\}') == 1.0
    assert value(r"cryptopredict_data_age_seconds") == pytest.approx(3600.0)
    assert value(r"cryptopredict_data_as_of_timestamp_seconds") == app.served.as_of.timestamp()


def test_served_predictions_go_to_the_monitors_log(app: App) -> None:
    from cryptopredict.monitoring.log import LogStore

    store = LogStore(str(app.log_root))

    def batch_rows() -> pd.DataFrame:
        rows = store.read()
        return rows[rows["route"] == "/predict/batch"] if "route" in rows.columns else \
            pd.DataFrame(columns=["request_id", "route"])

    time.sleep(1.5)  # what earlier tests served is written by now (flush_seconds 0.5)
    seen = set(batch_rows()["request_id"])
    served = app.post("/predict/batch", json={"symbols": ["SOLUSDT", "ETHUSDT"]}).json()["predictions"]
    deadline = time.monotonic() + 30
    new = batch_rows()
    while time.monotonic() < deadline and (~new["request_id"].isin(seen)).sum() < 2:
        time.sleep(0.5)
        new = batch_rows()
    new = new[~new["request_id"].isin(seen)]
    assert len(new) == 2 and new["request_id"].nunique() == 1, new
    rows = store.read()
    last = new.set_index("symbol")
    for p in served:
        row = last.loc[p["symbol"]]
        assert row["p_buy"] == pytest.approx(p["probabilities"]["BUY"]) and row["model_version"] == "v1"
        assert row["as_of"] == pd.Timestamp(p["as_of"]) and row["latency_ms"] > 0
        assert row["request_time"] == app.served.now  # the service's (replayed) clock
    assert set(rows.loc[rows["route"] == "/predict", "symbol"]) <= set(SYMBOLS)


# ------------------------------------------------------------------------------------------- fuzz

def test_schemathesis_finds_no_server_error(app: App) -> None:
    """Every operation of the app's own OpenAPI schema, fuzzed (positive and negative cases), answers
    without a 5xx and as the schema says (status codes, content types, bodies)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, \
        status_code_conformance

    schema = schemathesis.openapi.from_url(app.url + "/openapi.json")
    session = requests.Session()
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    seen: dict[str, set[int]] = {}

    def fuzzer(op):  # type: ignore[no-untyped-def]
        name = f"{op.method.upper()} {op.path}"

        @settings(max_examples=11, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call_and_validate(base_url=app.url, session=session, checks=checks, timeout=60)
            seen.setdefault(name, set()).add(response.status_code)

        return fuzz

    for op in operations:
        fuzzer(op)()
    assert any(s < 300 for codes in seen.values() for s in codes)
    assert seen.get("POST /admin/reload", set()) <= {401, 403, 413, 422}, seen  # no token: never reloads
    assert app.post("/predict", json={"symbol": "BTCUSDT"}).json()["model_version"] == "v1"


# ------------------------------------------------------------------------------------------- dashboard

def _backfill_log(app: App, bars: int) -> None:
    """The served model's predictions of the last ``bars`` bars in the prediction log, as if served at each
    bar's close (their outcomes are in the lake, so the monitor can score them)."""
    from cryptopredict.monitoring.log import LogStore, PredictionLogger

    history = Predictor(app.config(), app.served.model_dir, "v1",
                        clock=fixed_clock(app.served.now)).predict_history(bars)
    with PredictionLogger(LogStore(str(app.log_root))) as logger:
        for p in history:
            served_at = pd.Timestamp(p.as_of) + pd.Timedelta(hours=1)
            logger.log(p, 10.0, request_time=served_at.timestamp(), route="/predict")


def test_dashboard_renders_one_point_per_coin_in_chromium(app: App, tmp_path: Path) -> None:
    from cryptopredict.serving.monitor_view import monitor_view

    _backfill_log(app, 48)
    expected = monitor_view(app.config(), "v1", app.served.now)  # what the monitor says, computed here
    assert expected.status == "available" and set(expected.accuracy) == set(SYMBOLS)
    assert all(n >= 40 for _, n in expected.accuracy.values()), expected.accuracy
    want_rows = [[s, f"{expected.accuracy[s][0]:.3f}", str(expected.accuracy[s][1])] for s in sorted(SYMBOLS)]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.fail("needs /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    assert "cdn" not in app.get("/dashboard").text.lower()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver,
                                                               log_output=str(tmp_path / "chromedriver.log")))
    try:
        driver.set_page_load_timeout(60)
        driver.get(app.url + "/dashboard")
        probe = """
            const d = document.getElementById('prediction-chart');
            if (!d || !d.classList.contains('js-plotly-plot') || !d.querySelector('svg.main-svg')) return null;
            return {traces: d.data.map(t => ({name: t.name, x: t.x})),
                    bars: Array.from(d.querySelectorAll('g.trace.bars')).map(g => g.querySelectorAll('g.point').length),
                    rows: Array.from(document.querySelectorAll('#coin-table tbody tr.coin-row')).map(
                        r => [r.dataset.symbol, r.cells.length, r.cells[r.cells.length - 2].textContent,
                              r.cells[r.cells.length - 1].textContent]),
                    monitor: document.getElementById('monitor').textContent,
                    drift: document.getElementById('drift').textContent};
        """

        def rendered(d):  # type: ignore[no-untyped-def]
            r = d.execute_script(probe)  # the page refreshes itself until the monitor has the back-fill
            return r if r and [[x[0], x[2], x[3]] for x in r["rows"]] == want_rows else None

        result = WebDriverWait(driver, 90).until(rendered)
        logs = driver.get_log("browser")
    finally:
        driver.quit()
    coins = sorted(SYMBOLS)
    assert [t["name"] for t in result["traces"]] == ["SELL", "HOLD", "BUY", "confidence"]
    assert all(t["x"] == coins for t in result["traces"])
    assert result["bars"] == [len(coins)] * 3  # one drawn bar per coin in each class
    assert [r[0] for r in result["rows"]] == coins and all(r[1] == 13 for r in result["rows"])
    assert result["monitor"].startswith("monitor: available (rolling accuracy over 168 h)")
    assert result["drift"].startswith("drift: prediction drift (max PSI) ")
    severe = [e for e in logs if e["level"] == "SEVERE"]
    assert not severe, severe


# ------------------------------------------------------------------------------------------- updates

def test_reload_swaps_versions_without_failing_a_request(app: App) -> None:
    v2_dir = second_model(app.served)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = app.post("/predict", json={"symbol": "SOLUSDT"}).json()
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            r = session.post(app.url + "/predict", json={"symbol": SYMBOLS[len(results) % 3]}, timeout=60,
                             headers={"Cache-Control": "no-cache"})  # through the base models, every time
            results.append((r.status_code, r.json().get("model_version") if r.status_code == 200 else r.text))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    reload = app.post("/admin/reload", json={"model_dir": str(v2_dir), "version": "v2"}, headers=auth)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(60)
    assert reload.status_code == 200, reload.text
    assert reload.json()["model_version"] == "v2" and reload.json()["previous_version"] == "v1"
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    versions = [v for _, v in results]
    assert "v1" in versions and "v2" in versions, set(versions)
    first_v2 = versions.index("v2")
    assert versions[first_v2:].count("v1") <= 4  # at most the requests in flight at the swap
    after = app.post("/predict", json={"symbol": "SOLUSDT"}).json()
    assert after["model_version"] == "v2" and _proba(after) != _proba(before)  # another fit, other outputs
    ready = app.get("/readyz").json()
    assert ready["model_version"] == "v2" and all("v2" in v for v in ready["members"].values())
    assert app.get("/supported_coins").json()["model_version"] == "v2"
    assert 'cryptopredict_model_info{version="v2"} 1.0' in app.get("/metrics").text
    back = app.post("/admin/reload", json={"model_dir": str(app.served.model_dir), "version": "v1"}, headers=auth)
    assert back.status_code == 200 and back.json()["previous_version"] == "v2"
    assert app.post("/predict", json={"symbol": "SOLUSDT"}).json()["model_version"] == "v1"


def test_reload_from_the_registry_with_the_registry_client(app: App) -> None:
    """The registry's own client (``registry/reload.py``, as the retrain job calls it) reloads a registry
    version; an empty body loads the champion; an unknown version is the caller's error."""
    from cryptopredict.registry.reload import request_reload

    cfg = app.config()
    cfg.registry.retrain.serve_url = app.url
    cfg.registry.retrain.reload_timeout_s = 120
    result = request_reload(cfg, "ensemble", "v0002")
    assert result["status"] == "reloaded", result
    assert app.post("/predict", json={"symbol": "BTCUSDT"}).json()["model_version"] == "v0002"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    champion = app.post("/admin/reload", json={}, headers=auth)
    assert champion.status_code == 200 and champion.json()["model_version"] == "v0001"
    assert app.post("/predict", json={"symbol": "BTCUSDT"}).json()["model_version"] == "v0001"
    unknown = app.post("/admin/reload", json={"model": "ensemble", "version": "v0042"}, headers=auth)
    assert unknown.status_code == 422 and "v0042" in unknown.json()["detail"]


def test_stale_data_is_503_after_a_clock_update(app: App) -> None:
    """The clock moved 30 h past the latest bar (a redeploy with another ``serving.fixed_now``): not ready,
    and predictions refused with 503 and the age. Runs last: the app stays stale."""
    late = app.served.as_of + pd.Timedelta(hours=30)
    _deploy(app.served, app.root, late)
    def readiness() -> tuple[int, str]:
        r = app.get("/readyz")
        try:
            return r.status_code, r.json().get("reason") or ""
        except ValueError:  # the proxy's plain 404 while the app is being replaced
            return r.status_code, r.text

    deadline = time.monotonic() + 120  # the restarted ingress loads the model, then judges the data
    status, reason = readiness()
    while time.monotonic() < deadline and "stale data" not in reason:
        time.sleep(0.5)
        status, reason = readiness()
    assert status == 503 and "stale data" in reason, reason
    r = app.post("/predict", json={"symbol": "BTCUSDT"})
    assert r.status_code == 503 and "29.0 h old" in r.json()["detail"]
    assert app.post("/predict/batch", json={"symbols": ["BTCUSDT"]}).status_code == 503
    assert app.get("/healthz").status_code == 200  # alive, just not ready
