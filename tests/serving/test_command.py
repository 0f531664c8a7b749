"""``cryptopredict serve`` (``serving/command.py``) in a child process joining this session's Ray through
RAY_ADDRESS: it serves until SIGTERM, then stops Serve and exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import REPO_ROOT
from tests.support.served_model import ServedModel

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CHILD = """
import argparse, sys
from cryptopredict.config import load_config
from cryptopredict.serving import command
parser = argparse.ArgumentParser()
command.add_arguments(parser)
args = parser.parse_args(sys.argv[2:])
sys.exit(command.run(load_config(sys.argv[1]), args))
"""


def test_serve_command_serves_until_sigterm(served_model: ServedModel, ray_session: None, tmp_path: Path) -> None:
    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = served_model.cfg.model_dump(mode="json")
    config["serving"].update(port=port, fixed_now=served_model.now.isoformat())
    config["monitoring"]["log_root"] = str(tmp_path / "monitoring")  # the served prediction goes there
    config["registry"]["root"] = str(tmp_path / "registry")
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "--model-dir", str(served_model.model_dir),
                                  "--version", "cli-v1"], cwd=REPO_ROOT, env=env, stdout=out,
                                 stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        ready = None
        while time.monotonic() < deadline and child.poll() is None:
            try:
                ready = requests.get(url + "/readyz", timeout=10)
                if ready.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1.0)
        assert ready is not None and ready.status_code == 200, log.read_text()[-3000:]
        r = requests.post(url + "/predict", json={"symbol": "BTCUSDT"}, timeout=60)
        assert r.status_code == 200 and r.json()["model_version"] == "cli-v1"
        assert r.json()["as_of"] == served_model.as_of.isoformat()
        assert "serving on " + url in log.read_text()
        child.send_signal(signal.SIGTERM)
        assert child.wait(120) == 0, log.read_text()[-3000:]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
    assert "stopping" in log.read_text()
    from cryptopredict.monitoring.log import LogStore  # the logger flushed when the replica stopped

    logged = LogStore(str(tmp_path / "monitoring")).read()
    assert list(logged["model_version"]) == ["cli-v1"] and list(logged["symbol"]) == ["BTCUSDT"]
    with pytest.raises(requests.ConnectionError):  # Serve (and its proxy) went with it
        requests.get(url + "/healthz", timeout=5)
