"""A tiny served model on a slice of the shipped data, built once per test session.

``build_served_model(root)`` ingests three symbols' shipped hourly bars (2021-06-01 → 2022-01-20: longer
than the serving look-back, so request-time features are computed from less history than the stored ones),
the context tables and the news of that span, builds every feature family with the default settings, and
stores a final fit of a deliberately tiny deep ensemble (local backend, one epoch, a few hundred samples,
60 fusion steps) exactly as ``evaluate`` stores one (``evaluation/scoring.final_fit``: model files,
``labeler.json``, ``final_fit.json``). ``second_model`` fits another version (another seed) into the same
run directory layout for reload tests.

Use the ``served_model`` fixture from any test module (``from tests.support.served_model import
served_model``): the build is cached for the whole process, so importing the fixture into several modules
still builds it once.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from cryptopredict.config import Config, load_config
from cryptopredict.data.ingest import ingest_table, open_lake
from cryptopredict.data.snapshot import read_snapshot_context
from cryptopredict.features.pipeline import build_features
from tests.conftest import SHIPPED_DATA
from tests.support.shipped import ingest_shipped_slice

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
START, END = pd.Timestamp("2021-06-01", tz="UTC"), pd.Timestamp("2022-01-20", tz="UTC")
NEWS_START = pd.Timestamp("2021-12-15", tz="UTC")  # the sentiment windows need the last week only
TINY_NETS = {"transformer": {"d_model": 8, "n_heads": 2, "n_layers": 1},
             "bilstm": {"hidden": 8, "n_heads": 2},
             "cnn_lstm": {"channels": 8, "hidden": 8},
             "gnn": {"hidden": 8, "n_layers": 1}}


@dataclass(frozen=True)
class ServedModel:
    """A lake with features and a stored model directory; ``now`` is a clock value at which the lake's
    latest bar (``as_of``) is fresh (one hour after its close)."""

    cfg: Config
    root: Path
    model_dir: Path
    version: str
    as_of: pd.Timestamp

    @property
    def now(self) -> pd.Timestamp:
        return self.as_of + pd.Timedelta(hours=2)


def served_config(root: Path, seed: int = 7) -> Config:
    """The configuration of the served-model lake and its tiny ensemble."""
    overrides = [
        f"lake.root={root / 'lake'}", f"run_dir={root / 'runs'}", f"seed={seed}",
        f"monitoring.log_root={root / 'monitoring'}", f"registry.root={root / 'registry'}",
        f"ingest.symbols=[{','.join(SYMBOLS)}]", "ray.parallelism=serial",
        "evaluation.models=[ensemble]",
        "evaluation.model_params.ensemble.backend=local",
        "evaluation.model_params.ensemble.window=8",
        f"evaluation.model_params.ensemble.nets={TINY_NETS}".replace("'", ""),
        "evaluation.model_params.ensemble.train.epochs=1",
        "evaluation.model_params.ensemble.train.device=cpu",
        f"evaluation.model_params.ensemble.train.seed={seed}",
        "evaluation.model_params.ensemble.train.max_train_samples=600",
        "evaluation.model_params.ensemble.train.batch_size=64",
        "evaluation.model_params.ensemble.member_train={gnn: {batch_size: 16}}",
        "evaluation.model_params.ensemble.fusion={steps: 60, num_samples: 16, min_calib_rows: 30}",
        "serving.max_data_age_hours=6",
    ]
    return load_config(None, overrides)


def _fill_lake(cfg: Config) -> None:
    ingest_shipped_slice(cfg, SYMBOLS, START, END)
    lake = open_lake(cfg)
    for table, col in (("fear_greed", "date"), ("onchain", "date"), ("macro", "date"), ("news", "published_at")):
        rows = read_snapshot_context(SHIPPED_DATA, table)
        since = NEWS_START if table == "news" else rows[col].min()  # scoring news dominates the build time
        ingest_table(lake, table, rows[(rows[col] >= since) & (rows[col] < END)])


def _fit(cfg: Config, run_name: str) -> Path:
    from cryptopredict.evaluation.scoring import final_fit

    out = final_fit(cfg, Path(cfg.run_dir) / run_name)
    return Path(out["ensemble"])


def build_served_model(root: Path, version: str = "v1") -> ServedModel:
    """Lake, features and one tiny ensemble under ``root`` (see the module docstring)."""
    cfg = served_config(root)
    _fill_lake(cfg)
    report = build_features(cfg)
    assert not report.errors, report.errors
    model_dir = _fit(cfg, version)
    bars = open_lake(cfg).read_frame("features", {"symbol": SYMBOLS[0]})["timestamp"]
    return ServedModel(cfg, root, model_dir, version, pd.Timestamp(bars.max()))


def second_model(served: ServedModel, version: str = "v2", seed: int = 11) -> Path:
    """Another tiny ensemble (another seed) on the same lake; returns its model directory."""
    cfg = served_config(served.root, seed=seed)
    target = served.root / "runs" / version
    if (target / "models" / "ensemble" / "manifest.json").is_file():
        return target / "models" / "ensemble"
    shutil.rmtree(target, ignore_errors=True)
    return _fit(cfg, version)


_CACHE: dict[str, ServedModel] = {}
_LOCK = threading.Lock()


def cached_served_model(factory: pytest.TempPathFactory) -> ServedModel:
    """The process-wide ServedModel (built on first use)."""
    with _LOCK:
        if "v1" not in _CACHE:
            _CACHE["v1"] = build_served_model(factory.mktemp("served_model"))
        return _CACHE["v1"]


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    """A tiny ensemble served from a shipped-data lake (built once per process)."""
    return cached_served_model(tmp_path_factory)
