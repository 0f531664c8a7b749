"""`jobs/gpu_check.py` runs its code paths on the CPU (--cpu-smoke), and refuses plainly without a GPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "jobs" / "gpu_check.py"
MODELS = ("transformer", "bilstm", "cnn_lstm", "gnn")


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               CUDA_VISIBLE_DEVICES="", HIP_VISIBLE_DEVICES="")  # the CPU, even on a GPU host
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_without_a_gpu_it_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    proc = _run("--out", str(tmp_path / "gpu_check.json"), timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no CUDA/ROCm device" in proc.stderr and "--cpu-smoke" in proc.stderr
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.slow
def test_cpu_smoke_reports_every_model(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    proc = _run("--cpu-smoke", "--steps", "3", "--no-ray", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["cpu_smoke"] and report["device"]["type"] == "cpu" and report["device"]["torch"]
    training = {(r["model"], r["config"]): r for r in report["training"]}
    for model in MODELS:
        rec = training[(model, "fp32_eager")]
        assert rec["status"] == "ok", rec
        assert math.isfinite(rec["samples_per_s"]) and rec["samples_per_s"] > 0
        assert rec["loss_finite"] and math.isfinite(rec["final_loss"])
        assert rec["steps"] == 3 and rec["timed_steps"] >= 1
        # compile is not run on the CPU, and says so rather than vanishing from the report
        for config in ("fp32_compile", "amp_compile"):
            assert training[(model, config)]["status"] == "skipped"
            assert "cpu-smoke" in training[(model, config)]["error"]
        # AMP runs when bf16 CPU autocast works, else it is a visible skip
        amp = training[(model, "amp_eager")]
        assert amp["status"] == ("ok" if report["device"]["bf16_autocast"] else "skipped"), amp
        latencies = [r for r in report["inference"] if r["model"] == model]
        assert {r["batch_size"] for r in latencies} == {1, 8}
        for r in latencies:
            assert r["status"] == "ok" and r["match"], r
            assert math.isfinite(r["latency_ms_on"]) and math.isfinite(r["latency_ms_off"])
    assert report["failures"] == 0 and report["ray_train"] is None
    assert "samples/s" in proc.stdout and "transformer" in proc.stdout  # the printed table


@pytest.mark.slow
@pytest.mark.ray
def test_cpu_smoke_ray_train_fit(tmp_path: Path) -> None:
    """The Ray Train part (its fixed start/stop cost is most of this test's ~60 s on a 2-core box)."""
    out = tmp_path / "gpu_check.json"
    proc = _run("--cpu-smoke", "--steps", "3", "--models", "cnn_lstm", "--configs", "fp32_eager",
                "--no-inference", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ray_rec = json.loads(out.read_text())["ray_train"]
    assert ray_rec["status"] == "ok", ray_rec
    assert ray_rec["workers"] == 1 and ray_rec["use_gpu"] is False
    assert set(ray_rec["members_summary"]) == set(MODELS)
    assert {"fusion", "training.json", "gnn.pt"} <= set(ray_rec["files"])
