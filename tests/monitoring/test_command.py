"""``cryptopredict monitor`` through ``command.run`` on the shipped slice: output, JSON, exit status, the
Prometheus file and the retrain trigger (with a fake hook)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from cryptopredict.config import Config, load_config
from cryptopredict.data.lake import Lake
from cryptopredict.monitoring import command
from cryptopredict.monitoring.drift import lake_feature_drift
from cryptopredict.monitoring.log import LogStore, PredictionLogger
from cryptopredict.monitoring.retrain import RetrainRequest, retrain_command
from tests.monitoring.conftest import SYMBOLS, TRAIN_SPAN
from tests.monitoring.support import make_prediction

NOW = "2022-05-01T00:00:00+00:00"  # the last shipped bar of the slice (04-30 23:00) has just closed
HOUR = pd.Timedelta(hours=1)


def _args(tmp: Path, **kw: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--now", NOW, "--json", str(tmp / "state.json"), "--prom", str(tmp / "m.prom")])
    args.config = None  # added by the CLI's common options
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def _console() -> Console:
    return Console(width=160, record=True, force_terminal=False)


def _log_april(cfg: Config) -> dict[str, np.ndarray]:
    """BTC: perfect-foresight signals (the sign of the 4-bar forward return); ETH: always HOLD. Every bar of
    April 2022 is requested twice. Returns each symbol's forward returns by bar."""
    lake = Lake(cfg.lake.root)
    fwd = {}
    with PredictionLogger(LogStore.from_config(cfg), flush_rows=500, flush_seconds=60) as logger:
        for symbol in SYMBOLS:
            bars = lake.read("ohlcv", {"symbol": symbol}).set_index("timestamp")["close"]
            april = bars[bars.index >= pd.Timestamp("2022-04-01", tz="UTC")]
            r = np.log(april.shift(-4) / april).to_numpy()
            fwd[symbol] = r
            for t, ret in zip(april.index, r):
                if symbol == "ETHUSDT":
                    signal = "HOLD"
                else:
                    signal = "BUY" if not ret <= 0 else ("SELL" if ret < 0 else "HOLD")  # NaN (pending): BUY
                for k in range(2):
                    logger.log(make_prediction(symbol=symbol, as_of=t, signal=signal, horizon=4,
                                               position_size=0.2 if signal == "BUY" else 0.0),
                               2.0, request_time=(t + HOUR).timestamp() + k)
    return fwd


@pytest.mark.slow
def test_monitor_prints_and_writes_the_state_and_exits_1_on_drift(shipped_cfg: Config, tmp_path: Path) -> None:
    shipped_cfg.monitoring.windows_hours = [168, 744]  # 744 h back from May 1st: all of April
    fwd = _log_april(shipped_cfg)
    args = _args(tmp_path, reference=[f"v1={TRAIN_SPAN[0]},{TRAIN_SPAN[1]}"])
    console = _console()
    assert command.run(shipped_cfg, args, console=console) == 1
    text = console.export_text()
    for heading in ("quality per model version", "feature drift of v1", "prediction drift", "alerts", "data age"):
        assert heading in text
    doc = json.loads((tmp_path / "state.json").read_text())
    assert doc["log_rows"] == 2 * 2 * 720 and doc["predictions"] == 2 * 720
    assert doc["prediction_status"] == {"resolved": 2 * 716, "pending": 8}
    q = pd.DataFrame(doc["quality"]).set_index(["symbol", "window_hours"])
    btc, eth = q.loc[("BTCUSDT", 744)], q.loc[("ETHUSDT", 744)]
    assert btc["accuracy"] == 1.0 and btc["directional_hit_rate"] == 1.0
    eth_right = int(np.sum(fwd["ETHUSDT"][:716] == 0))  # HOLD is right only on an unchanged close
    assert eth["accuracy"] == pytest.approx(eth_right / 716)
    assert q.loc[("*", 744), "accuracy"] == pytest.approx((716 + eth_right) / (2 * 716))
    assert q.loc[("*", 744), "n_requests"] == 2 * 2 * 720 and q.loc[("*", 744), "n_pending"] == 8
    # 168 h: bar times after Apr 24 00:00 (167 bars per coin), the last 4 still pending
    assert q.loc[("*", 168), "n_predictions"] == 2 * 167 and q.loc[("*", 168), "n_resolved"] == 2 * 163
    assert np.isfinite(btc["pnl"]) and btc["pnl_gross"] > btc["pnl"]  # costs were charged
    assert eth["pnl"] == 0.0  # never a position
    _, direct = lake_feature_drift(Lake(shipped_cfg.lake.root), SYMBOLS, TRAIN_SPAN, recent_bars=720)
    assert doc["feature_drift"]["v1"]["max_psi"] == pytest.approx(direct["max_psi"])
    assert doc["feature_drift"]["v1"]["share_drifted"] == pytest.approx(direct["share_drifted"])
    assert "feature_max_psi_above/model_version=v1" in doc["alerts_active"]
    assert {a["key"] for a in doc["alerts_fired"]} == set(doc["alerts_active"])
    assert doc["data_age_hours"] == {"BTCUSDT": 0.0, "ETHUSDT": 0.0}
    assert len(doc["reliability"]["v1"]) == 10
    prom = (tmp_path / "m.prom").read_text()
    assert 'cryptopredict_model_accuracy{model_version="v1",symbol="BTCUSDT",window_hours="744"} 1.0' in prom
    assert "cryptopredict_feature_drift_max_psi" in prom
    # a second evaluation fires nothing new, and still reports the active alerts
    console = _console()
    assert command.run(shipped_cfg, _args(tmp_path, reference=args.reference), console=console) == 1
    assert json.loads((tmp_path / "state.json").read_text())["alerts_fired"] == []


@pytest.mark.slow
def test_retrain_hook_runs_once_per_drift_episode(shipped_cfg: Config, tmp_path: Path) -> None:
    calls: list[RetrainRequest] = []

    def hook(request: RetrainRequest) -> str:
        calls.append(request)
        return "submitted"

    drifted = [f"v1={TRAIN_SPAN[0]},{TRAIN_SPAN[1]}"]
    calm = ["v1=2022-04-01T00:00:00+00:00,2022-04-30T23:00:00+00:00"]  # the recent rows themselves
    run = lambda ref, **kw: command.run(shipped_cfg, _args(tmp_path, reference=ref, retrain_on_drift=True,  # noqa: E731
                                                           config="cfg.yaml", **kw),
                                        retrain_hook=hook, console=_console())
    run(drifted)
    assert [c.model_version for c in calls] == ["v1"] and calls[0].config_path == "cfg.yaml"
    assert any("max feature PSI" in r for r in calls[0].reasons)
    run(drifted)
    assert len(calls) == 1  # same episode
    assert run(calm) == 0  # drift cleared (empty log, fresh bars: nothing else to alert on)
    assert len(calls) == 1
    doc = json.loads((tmp_path / "state.json").read_text())
    assert doc["alerts_active"] == {} and doc["feature_drift"]["v1"]["max_psi"] < 0.5
    run(drifted)
    assert len(calls) == 2  # a new episode

    def broken(request: RetrainRequest) -> None:
        raise RuntimeError("cluster down")

    assert run(calm) == 0  # cleared again
    code = command.run(shipped_cfg, _args(tmp_path, reference=drifted, retrain_on_drift=True),
                       retrain_hook=broken, console=_console())
    assert code == 1  # the failing hook is logged; the monitor still reports
    run(drifted)
    assert len(calls) == 3  # not marked as started, so tried again


@pytest.mark.slow
def test_monitor_without_predictions_or_reference_is_healthy_and_says_why(shipped_cfg: Config,
                                                                           tmp_path: Path) -> None:
    console = _console()
    assert command.run(shipped_cfg, _args(tmp_path), console=console) == 0
    text = console.export_text()
    assert "no predictions logged" in text and "feature drift not computed" in text
    assert "alerts: none active" in text
    doc = json.loads((tmp_path / "state.json").read_text())
    assert doc["quality"] == [] and doc["feature_drift"] == {} and doc["alerts_active"] == {}
    follow = _args(tmp_path, follow=0.01, iterations=3)
    console = _console()
    assert command.run(shipped_cfg, follow, console=console) == 0
    assert console.export_text().count("monitor at 2022-05-01") == 3
    with pytest.raises(ValueError, match="--follow"):
        command.run(shipped_cfg, _args(tmp_path, follow=0.0), console=_console())
    # stale data alerts once the newest bar is old
    late = _args(tmp_path, now="2022-05-02T00:00:00+00:00")
    assert command.run(shipped_cfg, late, console=_console()) == 1
    doc = json.loads((tmp_path / "state.json").read_text())
    assert set(doc["alerts_active"]) == {"data_age_above/symbol=BTCUSDT", "data_age_above/symbol=ETHUSDT"}
    # the reference span may come from the config (YAML dates included) instead of --reference
    cfg = load_config(None, [f"lake.root={shipped_cfg.lake.root}", f"monitoring.log_root={tmp_path / 'm2'}",
                             f"ingest.symbols=[{','.join(SYMBOLS)}]",
                             "monitoring.reference_spans={v9: [2022-01-01, 2022-03-31T23:00:00Z]}"])
    assert command.run(cfg, _args(tmp_path), console=_console()) == 1
    doc = json.loads((tmp_path / "state.json").read_text())
    assert list(doc["feature_drift"]) == ["v9"] and "feature_max_psi_above/model_version=v9" in doc["alerts_active"]


def test_bad_arguments_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FIRST,LAST"):
        command.parse_references(["v1=2022-01-01"])
    with pytest.raises(ValueError, match="not an ISO time"):
        command.parse_references(["v1=yesterday,today"])
    with pytest.raises(ValueError, match="VERSION=VALUE"):
        command.parse_references(["2022-01-01,2022-02-01"])
    assert command.parse_references(["v1=2022-01-01,2022-02-01T00:00"]) == {"v1": ("2022-01-01", "2022-02-01T00:00")}
    cfg = Config.model_validate({"monitoring": {"log_root": str(tmp_path / "m")}, "lake": {"root": str(tmp_path)}})
    with pytest.raises(FileNotFoundError, match="labeler"):
        command.run(cfg, _args(tmp_path, labeler=[f"v1={tmp_path / 'missing.json'}"]), console=_console())


def test_default_retrain_command_is_local_or_ray_job_submit() -> None:
    req = RetrainRequest("v1", ("drift",), "configs/x.yaml")
    local = retrain_command(req, "jobs/retrain.py", ["--quick"])
    assert local[1:] == ["jobs/retrain.py", "--config", "configs/x.yaml", "--quick"]
    ray = retrain_command(req, "jobs/retrain.py", [], ray_address="http://127.0.0.1:8265")
    assert ray[1:ray.index("--")] == ["job", "submit", "--address", "http://127.0.0.1:8265", "--no-wait",
                                      "--working-dir", "."]
    assert ray[ray.index("--") + 1:] == ["python", "jobs/retrain.py", "--config", "configs/x.yaml"]


@pytest.mark.slow
def test_versions_in_the_log_take_their_reference_and_labeler_from_the_registry(shipped_cfg: Config,
                                                                                  tmp_path: Path) -> None:
    """Without --reference / --labeler, a logged version found in the registry brings its training data span
    (the feature drift reference) and its stored dead zone (realised classes); an unknown one is named."""
    from cryptopredict.labels import DirectionLabeler
    from cryptopredict.registry.registry import ModelRegistry

    model_dir = tmp_path / "fit"
    model_dir.mkdir()
    DirectionLabeler(4, 1 / 3, k=0.25).save(model_dir / "labeler.json")
    (model_dir / "weights.json").write_text("{}")
    reg = ModelRegistry.from_config(shipped_cfg).register(
        model_dir, model=shipped_cfg.registry.model, config={}, feature_manifest=None, data_span=TRAIN_SPAN,
        git_revision=None, metrics={})
    version = reg.version.version
    lake = Lake(shipped_cfg.lake.root)
    with PredictionLogger(LogStore.from_config(shipped_cfg), flush_rows=500, flush_seconds=60) as logger:
        for t in lake.read("ohlcv", {"symbol": "BTCUSDT"})["timestamp"].iloc[-200:]:
            logger.log(make_prediction(symbol="BTCUSDT", as_of=t, signal="BUY", model_version=version), 1.0)
            logger.log(make_prediction(symbol="BTCUSDT", as_of=t, signal="BUY", model_version="v0099"), 1.0)
    console = _console()
    command.run(shipped_cfg, _args(tmp_path), console=console)
    doc = json.loads((tmp_path / "state.json").read_text())
    _, direct = lake_feature_drift(lake, SYMBOLS, TRAIN_SPAN, recent_bars=720)
    assert doc["feature_drift"][version]["max_psi"] == pytest.approx(direct["max_psi"])
    assert "v0099" not in doc["feature_drift"]
    assert "'v0099' is not in the registry" in console.export_text()
    q = pd.DataFrame(doc["quality"]).set_index(["model_version", "symbol", "window_hours"])
    assert q.loc[(version, "*", 720), "class_source"] == "labeler"
    assert q.loc[("v0099", "*", 720), "class_source"] == "sign"
