"""``serve deploy`` of a copy of ``serve/config.yaml`` onto a running local Ray head (dashboard on
127.0.0.1, as ``tests/test_jobs.py`` starts one for ``ray job submit``): the config's overrides point at the
tiny served model and its lake by absolute paths, the HTTP proxy listens on a free port of 127.0.0.1; the
deployed app becomes healthy, then ready, answers a real /predict, and ``serve shutdown`` removes it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from cryptopredict.serving.app import APP_NAME
from tests.conftest import REPO_ROOT
from tests.support.ray_head import BIN, free_port, head_env, local_head
from tests.support.served_model import SYMBOLS, ServedModel

pytestmark = [pytest.mark.ray, pytest.mark.slow]

VERSION = "deploy-v1"


def _head_env() -> dict[str, str]:
    env = head_env(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("RAY_SERVE_THROUGHPUT_OPTIMIZED", None)  # Serve's defaults: the load goes through the proxy
    return env


def _deploy_config(served: ServedModel, tmp: Path, http_port: int) -> Path:
    """serve/config.yaml with the HTTP port changed and the application's args pointing at the tiny model:
    its project config (the served model's, dumped) and overrides with absolute paths."""
    project = tmp / "project.yaml"
    project.write_text(yaml.safe_dump(served.cfg.model_dump(mode="json")))
    doc = yaml.safe_load((REPO_ROOT / "serve" / "config.yaml").read_text())
    doc["http_options"] = {"host": "127.0.0.1", "port": http_port}
    (app,) = doc["applications"]
    app["args"] = {"config": str(project), "overrides": [
        f"lake.root={served.cfg.lake.root}",
        f"serving.model_dir={served.model_dir}",
        f"serving.model_version={VERSION}",
        f"serving.fixed_now={served.now.isoformat()}",
        f"serving.model_cache_dir={tmp / 'model-cache'}",
        f"monitoring.log_root={tmp / 'monitoring'}",
        f"registry.root={tmp / 'registry'}",
    ]}
    for path in (served.cfg.lake.root, str(served.model_dir), str(project)):
        assert Path(path).is_absolute(), path
    out = tmp / "serve-config.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def _get(url: str) -> tuple[int, str]:
    try:
        r = requests.get(url, timeout=10)
        return r.status_code, r.text
    except requests.RequestException as exc:
        return -1, repr(exc)


def test_serve_deploy_onto_a_running_head(served_model: ServedModel, tmp_path: Path) -> None:
    http_port = free_port()
    env = _head_env()
    config = _deploy_config(served_model, tmp_path, http_port)
    url = f"http://127.0.0.1:{http_port}"
    with local_head(env) as (head, address):
        deadline = time.time() + 120
        for attempt in range(60):  # the dashboard, then its agent, answer some seconds after the head starts
            deploy = subprocess.run([str(BIN / "serve"), "deploy", str(config), "-a", address], env=env,
                                    capture_output=True, text=True, timeout=120, check=False)
            if deploy.returncode == 0:
                break
            assert head.poll() is None, "ray head exited"
            assert time.time() < deadline, deploy.stdout[-2000:] + deploy.stderr[-3000:]
            time.sleep(2)
        assert deploy.returncode == 0, deploy.stderr[-3000:]

        for path, timeout in (("/healthz", 300), ("/readyz", 120)):  # the proxy answers 404 for a while
            deadline = time.time() + timeout
            status, body = _get(url + path)
            while status != 200 and time.time() < deadline:
                assert head.poll() is None, "ray head exited"
                time.sleep(1)
                status, body = _get(url + path)
            assert status == 200, f"{path}: {status} {body[:2000]}"
        ready = requests.get(url + "/readyz", timeout=10).json()
        assert ready["ready"] is True and ready["model_version"] == VERSION
        assert ready["as_of"] == served_model.as_of.isoformat()
        assert all(VERSION in v for v in ready["members"].values()) and len(ready["members"]) == 4

        r = requests.post(url + "/predict", json={"symbol": "ETHUSDT"}, timeout=60)
        assert r.status_code == 200, r.text
        p = r.json()
        assert p["symbol"] == "ETHUSDT" and p["model_version"] == VERSION
        assert p["as_of"] == served_model.as_of.isoformat()
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)
        assert set(p["member_weights"]) == {"transformer", "bilstm", "cnn_lstm", "gnn"}
        coins = requests.get(url + "/supported_coins", timeout=10).json()
        assert coins["symbols"] == sorted(SYMBOLS) and coins["model_version"] == VERSION

        status = subprocess.run([str(BIN / "serve"), "status", "-a", address], env=env, capture_output=True,
                                text=True, timeout=60, check=False)
        assert status.returncode == 0 and APP_NAME in status.stdout and "RUNNING" in status.stdout, status.stdout

        down = subprocess.run([str(BIN / "serve"), "shutdown", "-y", "-a", address], env=env,
                              capture_output=True, text=True, timeout=180, check=False)
        assert down.returncode == 0, down.stderr[-3000:]
        deadline = time.time() + 60
        while _get(url + "/healthz")[0] == 200 and time.time() < deadline:
            time.sleep(1)
        assert _get(url + "/healthz")[0] != 200  # the app (and Serve's proxy) is gone
