"""``benchmarks/serve_load.py`` end to end on the tiny served model, in a child process with its own local
Ray in Serve's throughput-optimized mode (the mode the benchmark measures by default): the app becomes ready
on its ingress replica's own port (direct ingress), answers every request of a short load in both modes
without an error, and gives the plain server's predictions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.support.served_model import ServedModel

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_the_load_benchmark_runs_the_app_in_throughput_mode(served_model: ServedModel, tmp_path: Path) -> None:
    config = tmp_path / "project.yaml"
    config.write_text(yaml.safe_dump(served_model.cfg.model_dump(mode="json")))
    out = tmp_path / "figures.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, not the suite's
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "serve_load.py"), "--seconds", "3", "--warmup", "1",
         "--clients", "2", "--servers", "serve,plain", "--config", str(config), "--model-dir",
         str(served_model.model_dir), "--version", "bench-v1", "--fixed-now", served_model.now.isoformat(),
         "--set", f"serving.model_cache_dir={tmp_path / 'model-cache'}", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    log = run.stdout[-4000:] + run.stderr[-4000:]
    assert run.returncode == 0, log
    figures = json.loads(out.read_text())
    assert (figures["serve_mode"], figures["serve_entry"]) == ("throughput", "direct")
    assert "load sent to the ingress replica (direct ingress)" in run.stdout
    runs = {(r["server"], r["mode"]): r["result"] for r in figures["runs"]}
    assert set(runs) == {(s, m) for s in ("serve", "plain") for m in ("cached", "no-cache")}, log
    for key, result in runs.items():
        assert result["errors"] == 0 and result["ok"] > 0, (key, result["errors_by_kind"], result["error_samples"])
    assert figures["answers_max_abs_diff"] <= 1e-6  # the same model behind both servers
