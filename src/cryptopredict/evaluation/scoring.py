"""Final fits and scoring of stored models on later data, without retraining.

``final_fit`` trains each model once on every labelled row of the evaluated span (the dead zone fitted on
the same rows) and stores it under ``<run_dir>/models/<name>/`` (the model's own weights + JSON manifest,
``labeler.json``, and ``final_fit.json`` with the last training bar). ``score_later`` ingests Parquet files
in the shipped layout into a separate lake, builds the same features, and scores every stored model on the
bars AFTER its last training bar (plus the label horizon), with the same backtest, metrics and report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cryptopredict.config import Config
from cryptopredict.data.ingest import ingest_unit_from_snapshot, open_lake, snapshot_units
from cryptopredict.data.ray_ingest import map_units
from cryptopredict.evaluation.dataset import load_panel, make_fold
from cryptopredict.labels import DirectionLabeler
from cryptopredict.models.base import build_model, model_class

log = logging.getLogger(__name__)


def final_fit(cfg: Config, run_dir: Path, models: list[str] | None = None) -> dict[str, str]:
    """Fit ``models`` (default: every configured model) on all labelled rows and store each; returns
    name → directory."""
    ec, fc = cfg.evaluation, cfg.features
    models = list(ec.models) if models is None else list(models)
    unknown = sorted(set(models) - set(ec.models))
    if unknown:
        raise ValueError(f"final fit of {unknown}: not in evaluation.models {list(ec.models)}")
    lake = open_lake(cfg)
    X, labels = load_panel(lake, list(cfg.ingest.symbols), fc.horizon, fc.label_vol_window)
    ts = pd.DatetimeIndex(X.index.get_level_values("timestamp"))
    hours = ts.asi8 // 3_600_000_000_000
    mask = labels["fwd_return"].notna().to_numpy() & labels["sigma"].notna().to_numpy() & \
        (hours % ec.train_stride == 0)
    labeler = DirectionLabeler(fc.horizon, ec.hold_share).fit(labels["fwd_return"][mask], labels["sigma"][mask])
    corr = _correlations(lake, models)
    train = make_fold(X, labels, mask, labeler, fc.horizon, "final", corr)
    last = ts[mask].max()

    def fit_one(name: str) -> str:
        # no validation span in a final fit: LightGBM runs its configured number of rounds
        model = build_model(name, **ec.model_params.get(name, {}))
        model.fit(train, None)
        directory = run_dir / "models" / name
        model.save(directory)
        labeler.save(directory / "labeler.json")
        (directory / "final_fit.json").write_text(json.dumps(
            {"model": name, "last_training_bar": last.isoformat(), "rows": int(mask.sum()),
             "horizon": fc.horizon, "features": list(X.columns)}, indent=2))
        log.info("final fit of %s on %d rows up to %s", name, int(mask.sum()), last)
        return str(directory)

    from concurrent.futures import ThreadPoolExecutor

    from cryptopredict.evaluation.run import ec_backend

    # models that train on Ray Train workers fit there while the others fit here
    remote = [m for m in models if ec_backend(cfg, m) == "ray"]
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = {m: pool.submit(fit_one, m) for m in remote}
        out = {m: fit_one(m) for m in models if m not in remote}
        out.update({m: f.result() for m, f in futures.items()})
    return {m: out[m] for m in models}


def _correlations(lake, models: list[str]) -> pd.DataFrame | None:
    """The lake's correlation table when one of ``models`` reads it (the graph member), else None."""
    if any(getattr(model_class(m), "uses_correlations", False) for m in models):
        return lake.read_frame("correlations")
    return None


def score_later(cfg: Config, models_dir: Path, data_dir: Path, run_id: str) -> tuple[object, Path]:
    """Score the models stored in ``models_dir`` on ``data_dir`` (shipped layout); report under run_dir."""
    from cryptopredict.evaluation.report import write_report
    from cryptopredict.evaluation.results import RunResult
    from cryptopredict.evaluation.run import buy_and_hold, load_market, member_frames, run_backtest, score_model, \
        verdict
    from cryptopredict.features.pipeline import build_features

    names = sorted(p.name for p in models_dir.iterdir() if (p / "final_fit.json").is_file()) \
        if models_dir.is_dir() else []
    if not names:
        raise ValueError(f"no stored models in {str(models_dir)!r}; run `cryptopredict evaluate` first "
                         "(it stores the final fits under <run_dir>/<run id>/models)")
    run_dir = Path(cfg.run_dir) / run_id
    later = cfg.model_copy(deep=True)
    later.lake.root = str(run_dir / "later_lake")
    later.ingest.snapshot_dir = str(data_dir)
    reports = map_units(later, snapshot_units(later), ingest_unit_from_snapshot)
    failed = [r for r in reports if r.error]
    if failed:
        raise ValueError(f"ingesting {str(data_dir)!r} failed: {failed[0].unit}: {failed[0].error}")
    build_features(later)
    fc = later.features
    later_lake = open_lake(later)
    X, labels = load_panel(later_lake, list(later.ingest.symbols), fc.horizon, fc.label_vol_window)
    ts = pd.DatetimeIndex(X.index.get_level_values("timestamp"))
    corr = _correlations(later_lake, names)
    frames, results = {}, []
    for name in names:
        directory = models_dir / name
        meta = json.loads((directory / "final_fit.json").read_text())
        start = pd.Timestamp(meta["last_training_bar"]) + pd.Timedelta(hours=meta["horizon"] + 1)
        mask = np.asarray(ts >= start)
        if not mask.any():
            raise ValueError(f"{str(data_dir)!r} has no bars after {name}'s training data (ends {start})")
        missing = [c for c in meta["features"] if c not in X.columns]
        if missing:
            raise ValueError(f"the later data lacks features {missing[:5]} that {name} was trained on")
        labeler = DirectionLabeler.load(directory / "labeler.json")
        fold = make_fold(X[meta["features"]], labels, mask, labeler, fc.horizon, "later", corr)
        model = model_class(name).load(directory)
        pred = model.predict(fold).to_frame().drop(columns="model")
        pred["y_true"], pred["fwd_return"] = fold.y.to_numpy(), fold.fwd_return.to_numpy()
        pred["fwd_vol"], pred["sigma"] = fold.fwd_vol.to_numpy(), fold.sigma.to_numpy()
        pred["fold"] = 0
        frames[name] = pred
    for name in list(frames):
        frames.update(member_frames(name, frames[name]))
    span = next(iter(frames.values())).index.get_level_values("timestamp")
    market = load_market(open_lake(later), later, span.min(), span.max())
    bench = buy_and_hold(market, later)
    for i, (name, frame) in enumerate(frames.items()):
        bt, targets = run_backtest(frame, name, market, later)
        res = score_model(name, frame, bt, bench, targets, later, seed=later.seed + i)
        res.metrics["deflated_sharpe"] = float("nan")  # one pre-registered configuration per model: see PSR
        results.append(res)
    traded = [r for r in results if np.isfinite(r.metrics.get("sharpe", np.nan))]
    best = max(traded, key=lambda r: r.metrics["sharpe"]) if traded else None
    run = RunResult(
        run_id=run_id, created_at=pd.Timestamp.now(tz="UTC").isoformat(),
        data_span=(span.min().isoformat(), span.max().isoformat()), symbols=list(later.ingest.symbols),
        horizon=fc.horizon, folds=[{"test_start": span.min().isoformat(), "test_end": span.max().isoformat(),
                                    "models_from": str(models_dir)}],
        models=results, benchmark_equity=pd.Series(bench.equity / bench.initial_equity, index=bench.index),
        prices=market.close, canaries=[], verdict=verdict(best), n_trials=len(results),
        config=later.model_dump(mode="json"),
        notes=[f"stored models from {models_dir}, not retrained; scored only after each model's last training "
               "bar plus the label horizon", "no canaries in a scoring run"])
    write_report(run, run_dir)
    return run, run_dir
