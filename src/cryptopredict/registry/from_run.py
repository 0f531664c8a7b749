"""Registering an evaluation run's final fit: the run's metrics of one model as the registry stores them,
the training data span, the lake's feature manifest.

``run_metrics`` keeps every interval (accuracy, net Sharpe, ... with CI), every scalar metric (log loss,
Deflated Sharpe, PSR, drawdown, ...), the significance tests and the run's identity (id, test span, folds,
trials, verdict) — all from the ``ModelResult`` / ``RunResult`` that ``evaluation.run.evaluate`` returns.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from cryptopredict.config import Config
from cryptopredict.data.ingest import open_lake
from cryptopredict.data.lake import partition_path
from cryptopredict.data.schemas import OHLCV
from cryptopredict.evaluation.results import ModelResult, RunResult
from cryptopredict.features.pipeline import MANIFEST as FEATURES_MANIFEST
from cryptopredict.registry.manifest import Registration, RegistryError, git_revision, jsonable
from cryptopredict.registry.registry import ModelRegistry

log = logging.getLogger(__name__)


def run_metrics(result: ModelResult, run: RunResult) -> dict[str, Any]:
    """One model's walk-forward numbers from a run, JSON-able (NaN → null)."""
    return jsonable({
        "intervals": {k: asdict(v) for k, v in result.intervals.items()},
        "scalars": dict(result.metrics),
        "tests": result.tests,
        "run": {"run_id": run.run_id, "test_span": list(run.data_span), "folds": len(run.folds),
                "n_trials": run.n_trials, "verdict": run.verdict, "symbols": list(run.symbols),
                "horizon": run.horizon},
    })


def feature_manifest(cfg: Config) -> dict[str, Any] | None:
    """The lake's ``features_manifest.json`` (None when the lake has none)."""
    try:
        doc = open_lake(cfg).read_json(FEATURES_MANIFEST)
    except FileNotFoundError:
        return None
    return doc if isinstance(doc, dict) else None


def first_bar(cfg: Config) -> str | None:
    """Open time (UTC ISO) of the earliest stored bar of the configured symbols; None when none is stored."""
    lake = open_lake(cfg)
    firsts = []
    for s in cfg.ingest.symbols:
        part = partition_path(OHLCV, {"exchange": cfg.ingest.exchange, "symbol": s,
                                      "timeframe": cfg.ingest.timeframe})
        bars = lake.read_partition("ohlcv", part)
        if not bars.empty:
            firsts.append(bars["timestamp"].min())
    return min(firsts).isoformat() if firsts else None


def register_final_fit(cfg: Config, run: RunResult, run_dir: Path, model: str | None = None, *,
                       notes: str = "", registry: ModelRegistry | None = None,
                       extra_metrics: dict[str, Any] | None = None) -> Registration:
    """Register ``<run_dir>/models/<model>`` (default ``registry.model``) with the run's metrics for it.

    The data span is (first stored bar, the final fit's last training bar). A RegistryError names what is
    missing when the run did not evaluate or final-fit that model. ``extra_metrics`` are merged into the
    stored metrics (the retrain job adds its window comparison)."""
    name = model or cfg.registry.model
    model_dir = Path(run_dir) / "models" / name
    meta_path = model_dir / "final_fit.json"
    if not meta_path.is_file():
        raise RegistryError(f"no final fit of {name!r} in {str(model_dir)!r}: registry.model must be one of "
                            "evaluation.models and evaluation.final_fit must be true")
    results = {m.name: m for m in run.models}
    if name not in results:
        raise RegistryError(f"run {run.run_id} has no results for {name!r}")
    meta = json.loads(meta_path.read_text())
    registry = registry or ModelRegistry.from_config(cfg)
    return registry.register(
        model_dir, model=name, config=cfg.model_dump(mode="json"), feature_manifest=feature_manifest(cfg),
        data_span=(first_bar(cfg), pd.Timestamp(meta["last_training_bar"]).isoformat()),
        git_revision=git_revision(),
        metrics={**run_metrics(results[name], run), **jsonable(extra_metrics or {})},
        notes=notes or f"final fit of run {run.run_id} ({meta.get('rows', '?')} training rows)")
