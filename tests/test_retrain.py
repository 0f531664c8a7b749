"""The retrain job end to end on a slice of the shipped data, replayed forward in time: a first champion,
a better challenger promoted over it, a worse challenger registered but not promoted — asserted on the
decision records, the registry's champion pointer and the Serve app's reload requests."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pandas as pd
import pytest

from cryptopredict.cli import main
from cryptopredict.config import Config, load_config
from cryptopredict.registry.registry import ModelRegistry
from cryptopredict.registry.retrain import RetrainError, retrain
from tests.conftest import REPO_ROOT, SHIPPED_DATA
from tests.support.shipped import ingest_shipped_slice

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
START = pd.Timestamp("2021-01-01", tz="UTC")
A0, A, B = (pd.Timestamp(d, tz="UTC") for d in ("2021-05-01", "2021-06-15", "2021-08-01"))
# A LightGBM made bad by construction: no validation span (no early stopping), learning rate 1, leaves of
# one row, no regularisation: it memorises the training rows and is confidently wrong out of sample.
OVERFIT = ["evaluation.split.valid_bars=0",
           "evaluation.model_params={lightgbm: {num_boost_round: 60, params: {learning_rate: 1.0, num_leaves: 63, "
           "min_data_in_leaf: 1, lambda_l2: 0.0, feature_fraction: 1.0, bagging_fraction: 1.0, bagging_freq: 0}}}"]
TOKEN = "test-admin-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ReloadRecorder(BaseHTTPRequestHandler):
    calls: list[tuple[str, str | None, dict]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        type(self).calls.append((self.path, self.headers.get("Authorization"), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"reloaded": true}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve_app() -> Iterator[tuple[int, list]]:
    """A stand-in for the Serve app's /admin/reload on 127.0.0.1 that records each request."""
    _ReloadRecorder.calls = []
    server = HTTPServer(("127.0.0.1", 0), _ReloadRecorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], _ReloadRecorder.calls
    finally:
        server.shutdown()
        server.server_close()


def _overrides(tmp: Path, port: int, *extra: str) -> list[str]:
    return [f"lake.root={tmp / 'lake'}", f"run_dir={tmp / 'runs'}", f"registry.root={tmp / 'registry'}",
            f"registry.cache_dir={tmp / 'cache'}", "registry.model=lightgbm",
            f"ingest.symbols=[{','.join(SYMBOLS)}]", "ray.parallelism=serial", "features.families=[technical]",
            "evaluation.split.valid_bars=240", "evaluation.bootstrap_samples=100", f"serving.port={port}",
            "registry.retrain.window_bars=720", "registry.retrain.min_window_bars=168", *extra]


def _cfg(tmp: Path, port: int, *extra: str) -> Config:
    return load_config(None, _overrides(tmp, port, *extra))


def _snapshot(folder: Path, end: pd.Timestamp) -> Path:
    """The shipped files in their layout, candles cut at ``end`` (what the data source has by then)."""
    folder.mkdir(parents=True)
    ohlcv = pd.read_parquet(SHIPPED_DATA / "ohlcv_1h.parquet")
    keep = ohlcv["symbol"].isin(SYMBOLS) & (ohlcv["timestamp"] >= START) & (ohlcv["timestamp"] < end)
    ohlcv[keep].to_parquet(folder / "ohlcv_1h.parquet")
    for name in ("fear_greed_daily", "onchain_btc_daily", "macro_daily", "news"):  # unused by `technical`
        (folder / f"{name}.parquet").write_bytes((SHIPPED_DATA / f"{name}.parquet").read_bytes())
    return folder


@pytest.mark.slow
def test_retrain_promotes_a_better_challenger_and_rejects_a_worse_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve_app: tuple[int, list],
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "kaleido", None)  # the reports' PNGs are not under test (~8 s a run)
    monkeypatch.setenv("CRYPTOPREDICT_ADMIN_TOKEN", TOKEN)
    port, reloads = serve_app
    registry = ModelRegistry(str(tmp_path / "registry"))

    # data up to A0 (ingested here, no ingest in the job); no champion yet: the overfitted challenger is
    # registered and becomes champion by itself; no Serve app answers on the port given
    cfg0 = _cfg(tmp_path, _free_port(), "registry.retrain.ingest=none", *OVERFIT)
    ingest_shipped_slice(cfg0, SYMBOLS, START, A0)
    d0 = retrain(cfg0, run_id="r0")
    assert (d0["decision"], d0["champion_before"], d0["champion_after"]) == ("promoted", None, "v0001")
    assert "no champion" in d0["reason"] and "test" not in d0
    assert d0["reload"]["status"] == "no answer" and reloads == []
    v1 = registry.get("lightgbm", "v0001")
    assert pd.Timestamp(v1.data_span[1]) < A0 and v1.forecaster == "lightgbm"

    # (a) the source has data up to A; a regular LightGBM challenger against the overfitted champion
    cfg1 = _cfg(tmp_path, port, "registry.retrain.ingest=snapshot",
                f"ingest.snapshot_dir={_snapshot(tmp_path / 'snap_a', A)}")
    d1 = retrain(cfg1, run_id="r1")
    assert (d1["decision"], d1["champion_before"], d1["champion_after"]) == ("promoted", "v0001", "v0002")
    assert d1["ingest"]["mode"] == "snapshot" and d1["ingest"]["inserted"] > 0
    window, test = d1["window"], d1["test"]
    assert pd.Timestamp(window["start"]) > pd.Timestamp(v1.data_span[1])  # the champion never saw it
    assert window["bars"] == 720 and pd.Timestamp(window["last_labelled_bar"]) < A
    assert test["promote"] is True and test["difference"] <= 0 and test["dm_p_worse"] >= 0.05
    assert test["challenger_log_loss"] < test["champion_log_loss"] and test["rows"] == 2 * 720
    assert d1["challenger"]["window"]["log_loss"] == pytest.approx(test["challenger_log_loss"], rel=1e-9)
    assert d1["champion"]["version"] == "v0001" and d1["champion"]["window"]["log_loss"] == pytest.approx(
        test["champion_log_loss"], rel=1e-9)
    assert registry.champion("lightgbm").version == "v0002"  # type: ignore[union-attr]
    assert reloads == [("/admin/reload", f"Bearer {TOKEN}", {"model": "lightgbm", "version": "v0002"})]
    assert d1["reload"]["status"] == "reloaded"
    on_disk = json.loads((tmp_path / "runs/r1/decision.json").read_text())
    assert on_disk["decision"] == "promoted" and on_disk["test"] == d1["test"]
    assert json.loads((tmp_path / "registry/lightgbm/decisions/r1.json").read_text())["champion_after"] == "v0002"
    v2 = registry.get("lightgbm", "v0002")
    assert v2.metrics["retrain"]["comparison"]["promote"] is True
    assert v2.interval("accuracy") is not None and v2.metrics["run"]["run_id"] == "r1"

    # (b) the source has data up to B; an overfitted challenger against the regular champion, through the
    # CLI: registered as v0003, not promoted, no reload
    capsys.readouterr()
    args = ["retrain"]
    for item in _overrides(tmp_path, port, "registry.retrain.ingest=snapshot",
                           f"ingest.snapshot_dir={_snapshot(tmp_path / 'snap_b', B)}", *OVERFIT):
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "decision: rejected" in out and "champion of lightgbm: v0002" in out
    record = Path(next(line for line in out.splitlines() if line.startswith("record: ")).removeprefix("record: "))
    d2 = json.loads(record.read_text())
    assert (d2["decision"], d2["champion_before"], d2["champion_after"]) == ("rejected", "v0002", "v0002")
    assert d2["challenger"]["version"] == "v0003" and d2["champion"]["version"] == "v0002"
    assert d2["test"]["promote"] is False and d2["test"]["difference"] > 0
    assert d2["test"]["challenger_log_loss"] > d2["test"]["champion_log_loss"]
    assert pd.Timestamp(d2["window"]["start"]) > pd.Timestamp(v2.data_span[1])
    assert [v.version for v in registry.list_versions("lightgbm")] == ["v0001", "v0002", "v0003"]
    assert registry.champion("lightgbm").version == "v0002"  # type: ignore[union-attr]
    pointer = registry.champion_record("lightgbm")
    assert pointer is not None and pointer.lineage == ["v0001", "v0002"]
    assert len(reloads) == 1 and d2["reload"]["status"].startswith("not needed")

    # a champion trained up to the data end (v0003, promoted by hand): no new labelled bars → skipped
    registry.promote("lightgbm", "v0003")
    d3 = retrain(_cfg(tmp_path, port, "registry.retrain.ingest=none"), run_id="r3")
    assert (d3["decision"], d3["champion_after"]) == ("skipped", "v0003") and "challenger" not in d3
    assert "new labelled bars" in d3["reason"] and d3["window"]["bars"] < 168
    assert len(registry.list_versions("lightgbm")) == 3 and len(reloads) == 1
    assert registry.rollback("lightgbm").version == "v0002"

def test_a_failed_ingest_stops_the_job_before_anything_is_registered(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cfg = _cfg(tmp_path, _free_port(), "registry.retrain.ingest=snapshot",
               f"ingest.snapshot_dir={tmp_path / 'empty'}")
    with pytest.raises(RetrainError, match="snapshot ingest of .* failed"):
        retrain(cfg, run_id="bad")
    assert ModelRegistry(str(tmp_path / "registry")).list_versions("lightgbm") == []


def test_the_ray_job_entry_point_is_the_retrain_command() -> None:
    out = subprocess.run([sys.executable, "jobs/retrain.py", "--help"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "usage: cryptopredict retrain" in out.stdout


def test_retrain_on_a_schedule_runs_each_period_and_stops_after_the_iterations(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import cryptopredict.registry.retrain as job
    from cryptopredict.cli import main

    calls: list[float] = []

    def fake(cfg, **_):  # type: ignore[no-untyped-def]
        calls.append(time.monotonic())
        return {"decision": "rejected", "reason": "test", "model": cfg.registry.model, "champion_after": "v0001",
                "record_path": "-"}

    monkeypatch.setattr(job, "retrain", fake)
    every = 0.5 / 3600  # half a second
    assert main(["retrain", "--parallelism", "serial", "--every", str(every), "--iterations", "3"]) == 0
    assert len(calls) == 3 and min(b - a for a, b in zip(calls, calls[1:])) >= 0.45
    assert capsys.readouterr().out.count("decision: rejected") == 3
    assert main(["retrain", "--every", "0"]) == 2  # a user error, one line
