"""A small real lake for the monitoring tests: shipped hourly bars of two coins, January–April 2022, with
the technical feature family (built once per session, copied per test that changes it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from cryptopredict.config import Config, load_config
from cryptopredict.features.pipeline import build_features
from tests.support.shipped import ingest_shipped_slice

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
START, END = pd.Timestamp("2022-01-01", tz="UTC"), pd.Timestamp("2022-05-01", tz="UTC")
TRAIN_SPAN = ("2022-01-01T00:00:00+00:00", "2022-03-31T23:00:00+00:00")


def shipped_config(tmp: Path, *extra: str) -> Config:
    return load_config(None, [f"lake.root={tmp / 'lake'}", f"run_dir={tmp / 'runs'}",
                              f"monitoring.log_root={tmp / 'monitoring'}",
                              f"registry.root={tmp / 'registry'}", f"ingest.symbols=[{','.join(SYMBOLS)}]",
                              "ray.parallelism=serial", "features.families=[technical]", *extra])


@pytest.fixture(scope="session")
def shipped_lake_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("shipped")
    cfg = shipped_config(tmp)
    ingest_shipped_slice(cfg, SYMBOLS, START, END)
    report = build_features(cfg)
    assert not report.errors and report.columns > 20
    return tmp / "lake"


@pytest.fixture()
def shipped_cfg(shipped_lake_template: Path, tmp_path: Path) -> Config:
    """A config whose lake is a private copy of the shipped template."""
    shutil.copytree(shipped_lake_template, tmp_path / "lake")
    return shipped_config(tmp_path)
