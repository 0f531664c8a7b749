"""`ray job submit` of the ingest job against a local Ray head, exactly as the README says."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cryptopredict.data.lake import Lake
from tests.conftest import REPO_ROOT

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.ray
def test_ray_job_submit_ingest_against_a_local_head(tmp_path: Path) -> None:
    gcs, dash, agent_http, agent_grpc, metrics, runtime_env = (_free_port() for _ in range(6))
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # as after `source .venv/bin/activate`
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", f"--port={gcs}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         # own ports: the suite's in-process Ray may hold the default agent ports
         f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    lake_root = tmp_path / "lake"
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 90
        while True:
            probe = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                                   capture_output=True, text=True)
            if probe.returncode == 0:
                break
            assert head.poll() is None, "ray head exited"
            assert time.time() < deadline, probe.stderr[-2000:]
            time.sleep(1)
        for _ in range(30):  # the head's job agent registers a few seconds after the dashboard answers
            job = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--",
                 "python", "jobs/ingest.py", "--lake-root", str(lake_root), "--symbols", "DOTUSDT"],
                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
            if "No available agent" not in job.stderr:
                break
            time.sleep(2)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout + job.stderr
        assert "42,629" in job.stdout  # the report printed by the job: DOTUSDT rows
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(60)
    lake = Lake(lake_root)
    assert len(lake.read("ohlcv", where={"symbol": "DOTUSDT"})) == 42_629
    assert len(lake.read("fear_greed")) == 2_703
