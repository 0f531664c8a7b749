"""The plain single-process baseline server (``serving/plain.py``) over real HTTP on 127.0.0.1, started the
way ``benchmarks/serve_load.py`` starts it (a subprocess, one uvicorn worker): its answers equal the
in-process ``Predictor``'s, its errors are the Serve app's; and a short smoke run of the benchmark's load
driver against it."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from cryptopredict.serving.predictor import Predictor, fixed_clock
from cryptopredict.serving.schemas import Prediction
from tests.conftest import REPO_ROOT
from tests.support.served_model import SYMBOLS, ServedModel


def _bench() -> ModuleType:
    """``benchmarks/serve_load.py`` (not a package)."""
    name = "serve_load_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / "serve_load.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is created
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def plain(served_model: ServedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("plain")
    cfg = served_model.cfg.model_copy(deep=True)
    cfg.serving.fixed_now = served_model.now.to_pydatetime()
    cfg.serving.max_body_bytes = 4096
    cfg.monitoring.log_root = str(root / "monitoring")
    server = _bench().PlainServer(cfg, served_model.model_dir, served_model.version, root)
    try:
        server.start(ready_timeout=300)
    except Exception:
        print(server.log_tail())
        raise
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local(served_model: ServedModel) -> Predictor:
    return Predictor(served_model.cfg, served_model.model_dir, served_model.version,
                     clock=fixed_clock(served_model.now))


def _post(url: str, body: Any = None, **kw: Any) -> requests.Response:
    return requests.post(url, json=body, timeout=60, **kw) if body is not None else requests.post(url, timeout=60, **kw)


def test_ready_and_supported_coins(plain: Any, served_model: ServedModel) -> None:
    ready = requests.get(plain.url + "/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] is True and body["model_version"] == "v1"
    assert body["as_of"] == served_model.as_of.isoformat() and body["data_age_hours"] == pytest.approx(1.0)
    assert requests.get(plain.url + "/supported_coins", timeout=10).json() == \
        {"symbols": list(SYMBOLS), "horizon": 4, "model_version": "v1"}


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_predict_equals_the_predictors_output(plain: Any, local: Predictor, symbol: str) -> None:
    fresh = _post(plain.url + "/predict", {"symbol": symbol}, headers={"Cache-Control": "no-cache"})
    assert fresh.status_code == 200, fresh.text
    got = Prediction.model_validate(fresh.json())  # the response schema
    want = local.predict(symbol)
    assert got.symbol == symbol and got.model_version == "v1" and got.as_of == want.as_of
    assert _close(got.model_dump(), want.model_dump())
    cached = _post(plain.url + "/predict", {"symbol": symbol})
    assert cached.status_code == 200 and cached.json() == fresh.json()


def _close(a: Any, b: Any, tol: float = 1e-9) -> bool:
    """Equal structure, equal strings, numbers within ``tol``."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (a, b)
        return all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, float | int) and not isinstance(a, bool):
        assert math.isclose(float(a), float(b), rel_tol=0, abs_tol=tol), (a, b)
        return True
    assert a == b, (a, b)
    return True


def test_batch_keeps_the_order_asked(plain: Any) -> None:
    r = _post(plain.url + "/predict/batch", {"symbols": ["SOLUSDT", "BTCUSDT", "SOLUSDT"]})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["symbol"] for p in preds] == ["SOLUSDT", "BTCUSDT", "SOLUSDT"] and preds[0] == preds[2]
    assert preds[1] == _post(plain.url + "/predict", {"symbol": "BTCUSDT"}).json()


def test_unknown_symbol_is_404(plain: Any) -> None:
    r = _post(plain.url + "/predict", {"symbol": "DOGEUSDT"})
    assert r.status_code == 404 and "unknown symbol 'DOGEUSDT'" in r.json()["detail"]
    r = _post(plain.url + "/predict/batch", {"symbols": ["BTCUSDT", "NOPE"]})
    assert r.status_code == 404 and "NOPE" in r.json()["detail"]


@pytest.mark.parametrize("body", [
    b'{"symbol": "BTCUSDT"',  # not JSON
    b'{"symbol": "btcusdt"}',  # fails the symbol pattern
    b'{"symbol": "BTCUSDT", "extra": 1}',  # unknown field
    b'{"horizon": 4}',  # no symbol
    b'{"symbol": "BTCUSDT", "horizon": 0}',
    b'',
])
def test_malformed_bodies_are_422(plain: Any, body: bytes) -> None:
    r = requests.post(plain.url + "/predict", data=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 422, (body, r.status_code, r.text)
    assert isinstance(r.json()["detail"], list)


def test_wrong_horizon_is_422_and_big_bodies_413(plain: Any) -> None:
    r = _post(plain.url + "/predict", {"symbol": "BTCUSDT", "horizon": 24})
    assert r.status_code == 422
    assert "predicts a 4-bar horizon, 24 was asked" in r.json()["detail"][0]["msg"]
    big = json.dumps({"symbol": "BTCUSDT", "pad": "x" * 5000}).encode()
    r = requests.post(plain.url + "/predict", data=big, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "exceeds the limit of 4096 bytes" in r.json()["detail"]


@pytest.mark.parametrize("headers", [{}, {"Cache-Control": "no-cache"}], ids=["cached", "no-cache"])
def test_load_driver_smoke(plain: Any, headers: dict[str, str]) -> None:
    """2 s of 2 concurrent clients: requests were counted, none failed, the figures are finite."""
    result = _bench().run_load(plain.url, list(SYMBOLS), seconds=2.0, clients=2, warmup=0.5, headers=headers)
    s = result.summary()
    assert s["requests"] > 2 and s["ok"] == s["requests"] and s["errors"] == 0, s
    assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] and s["rps"] > 0
    assert 1.9 < s["seconds"] < 60.0


def test_load_driver_counts_errors(plain: Any) -> None:
    """Non-200 answers are errors by status, refused connections by exception type."""
    bench = _bench()
    bad = bench.run_load(plain.url, ["DOGEUSDT"], seconds=0.5, clients=1)
    assert bad.ok == 0 and bad.errors["HTTP 404"] == bad.requests > 0
    dead = bench.run_load(f"http://127.0.0.1:{bench.free_port()}", ["BTCUSDT"], seconds=0.3, clients=1)
    assert dead.ok == 0 and sum(dead.errors.values()) > 0
    assert all("Error" in k for k in dead.errors), dead.errors


def test_goal_check_reports_each_failure() -> None:
    bench = _bench()
    ok = {"p50_ms": 3.0, "p99_ms": 20.0, "rps": 300.0, "errors": 0}
    assert bench.goal_failures(ok) == []
    bad = {"p50_ms": 30.0, "p99_ms": float("nan"), "rps": 50.0, "errors": 2}
    assert len(bench.goal_failures(bad)) == 4


def test_serve_config_deployments_are_applied(served_model: ServedModel, tmp_path: Path) -> None:
    bench = _bench()
    cfg = served_model.cfg.model_copy(deep=True)
    path = tmp_path / "serve.yaml"
    path.write_text("applications:\n- name: x\n  import_path: cryptopredict.serving.app:build_app\n  deployments:\n"
                    "  - {name: ingress, num_replicas: 2, ray_actor_options: {num_cpus: 0.5}}\n"
                    "  - {name: gnn, ray_actor_options: {num_cpus: 0.1}, user_config: {max_batch_size: 4}}\n"
                    "  - {name: model_board, ray_actor_options: {num_cpus: 0.01}}\n")
    assert bench.apply_serve_config(cfg, path) == ["ingress", "gnn"]
    assert cfg.serving.ingress.num_replicas == 2 and cfg.serving.ingress.num_cpus == 0.5
    assert cfg.serving.members["gnn"].num_cpus == 0.1 and cfg.serving.members["gnn"].max_batch_size == 4
    assert cfg.serving.members["bilstm"] == served_model.cfg.serving.members["bilstm"]
