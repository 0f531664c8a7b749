"""`cryptopredict run` registers the final fit of ``registry.model`` with the run's metrics for it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from cryptopredict.cli import main
from cryptopredict.registry.registry import ModelRegistry
from tests.conftest import SHIPPED_DATA

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
START, END = pd.Timestamp("2021-01-01", tz="UTC"), pd.Timestamp("2021-05-01", tz="UTC")


@pytest.mark.slow
def test_run_registers_its_final_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "kaleido", None)  # the report's PNGs are not under test
    snap = tmp_path / "snap"
    snap.mkdir()
    ohlcv = pd.read_parquet(SHIPPED_DATA / "ohlcv_1h.parquet")
    keep = ohlcv["symbol"].isin(SYMBOLS) & (ohlcv["timestamp"] >= START) & (ohlcv["timestamp"] < END)
    ohlcv[keep].to_parquet(snap / "ohlcv_1h.parquet")
    for name in ("fear_greed_daily", "onchain_btc_daily", "macro_daily", "news"):
        (snap / f"{name}.parquet").write_bytes((SHIPPED_DATA / f"{name}.parquet").read_bytes())
    overrides = [f"lake.root={tmp_path / 'lake'}", f"run_dir={tmp_path / 'runs'}", f"ingest.snapshot_dir={snap}",
                 f"registry.root={tmp_path / 'registry'}", "registry.model=logistic",
                 f"ingest.symbols=[{','.join(SYMBOLS)}]", "features.families=[technical]",
                 "evaluation.models=[majority,logistic]", "evaluation.test_start=2021-04-01",
                 "evaluation.split.test_bars=360", "evaluation.split.valid_bars=0", "evaluation.max_folds=1",
                 "evaluation.bootstrap_samples=100", "evaluation.canaries.enabled=false",
                 "evaluation.portfolio.methods=[]"]
    args = ["run", "--parallelism", "serial"] + [a for o in overrides for a in ("--set", o)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert ("registry: registered logistic v0001; it is the champion (there was none) in "
            f"{tmp_path / 'registry'}") in out

    reg = ModelRegistry(str(tmp_path / "registry"))
    v = reg.get("logistic", "v0001")
    run_dir = next((tmp_path / "runs").glob("*/models")).parent
    results = json.loads((run_dir / "results.json").read_text())
    logistic = next(m for m in results["models"] if m["name"] == "logistic")
    assert v.metrics["run"]["run_id"] == results["run_id"] and v.metrics["run"]["folds"] == 1
    accuracy = v.interval("accuracy")
    assert accuracy is not None and accuracy["value"] == pytest.approx(logistic["intervals"]["accuracy"]["value"])
    assert v.metrics["scalars"]["log_loss"] == pytest.approx(logistic["metrics"]["log_loss"])
    final_fit = json.loads((run_dir / "models/logistic/final_fit.json").read_text())
    assert v.data_span == (START.isoformat(), pd.Timestamp(final_fit["last_training_bar"]).isoformat())
    assert v.forecaster == "logistic" and v.manifest["feature_manifest"]["features"]
    assert v.manifest["config"]["registry"]["model"] == "logistic"
    assert (reg.fetch("logistic", "v0001") / "final_fit.json").read_bytes() == \
        (run_dir / "models/logistic/final_fit.json").read_bytes()

    assert main(["models", "list", "--set", f"registry.root={tmp_path / 'registry'}", "--model", "logistic"]) == 0
    assert "v0001" in capsys.readouterr().out

    # `evaluate` registers only when asked (`jobs/train.py` asks): a second fit of the same data gives
    # byte-identical files for this deterministic model, i.e. the same version, not a new one
    common = [a for o in overrides for a in ("--set", o)]
    assert main(["evaluate", "--parallelism", "serial", *common]) == 0
    assert "registry:" not in capsys.readouterr().out
    assert main(["evaluate", "--parallelism", "serial", "--register", *common]) == 0
    out = capsys.readouterr().out
    assert "registry:" in out
    assert [x.version for x in reg.list_versions("logistic")] == ["v0001"]
