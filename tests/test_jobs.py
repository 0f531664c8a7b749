"""`ray job submit` of the ingest job against a local Ray head, exactly as the README says."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from cryptopredict.data.lake import Lake
from tests.conftest import REPO_ROOT
from tests.support.ray_head import BIN, head_env, local_head


@pytest.mark.slow
@pytest.mark.ray
def test_ray_job_submit_ingest_against_a_local_head(tmp_path: Path) -> None:
    env = head_env()
    lake_root = tmp_path / "lake"
    with local_head(env) as (head, address):
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
    lake = Lake(lake_root)
    assert len(lake.read("ohlcv", where={"symbol": "DOTUSDT"})) == 42_629
    assert len(lake.read("fear_greed")) == 2_703
