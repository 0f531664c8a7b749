"""The retrain job (`cryptopredict retrain`, `jobs/retrain.py`): new data in, a challenger out, the
champion replaced only when the challenger is at least as good on the same latest window.

1. ingest (``registry.retrain.ingest``: the snapshot folder, live sources, or nothing) and rebuild features;
2. the latest window: ``window_bars`` labelled bars up to the data end, starting no earlier than the
   champion's last training bar + horizon + 1 bar (so the champion has never seen it);
3. the challenger: ``evaluation.run.evaluate`` of ``registry.model`` alone with one walk-forward fold whose
   test span is that window (no canaries, no allocations), plus its final fit on all labelled data;
4. the champion (fetched from the registry, not retrained) predicts the same rows; ``challenge.compare``
   applies the rule (log-loss tolerance and a one-sided Diebold–Mariano test);
5. the challenger's final fit is registered either way (it becomes champion by itself only when there is
   none); it is promoted when the rule passes, and the Serve app is asked to reload when the champion
   changed;
6. a JSON decision record goes to ``<run_dir>/<run id>/decision.json`` and ``<registry>/<model>/decisions/``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from cryptopredict.config import Config
from cryptopredict.data.ingest import open_lake
from cryptopredict.evaluation.results import ModelResult
from cryptopredict.registry.challenge import NotComparable, champion_predictions, compare, utc
from cryptopredict.registry.from_run import register_final_fit, run_metrics
from cryptopredict.registry.manifest import ChecksumMismatchError, Version, dumps, jsonable
from cryptopredict.registry.registry import ModelRegistry
from cryptopredict.registry.reload import request_reload

log = logging.getLogger(__name__)

DECISION_FILE = "decision.json"


class RetrainError(RuntimeError):
    """A stage of the retrain job failed (ingest or features); nothing was registered."""


def ingest_new_data(cfg: Config) -> dict[str, Any]:
    """Step 1: ingest per ``registry.retrain.ingest``; a RetrainError when any unit fails."""
    mode = cfg.registry.retrain.ingest
    if mode == "none":
        return {"mode": mode}
    from cryptopredict.data.ray_ingest import map_units

    if mode == "snapshot":
        from cryptopredict.data.ingest import ingest_unit_from_snapshot, snapshot_units

        reports = map_units(cfg, snapshot_units(cfg), ingest_unit_from_snapshot)
    else:
        from cryptopredict.data import live

        reports = map_units(cfg, live.live_units(cfg), live.ingest_unit_live)
    failed = [r for r in reports if r.error]
    if failed:
        raise RetrainError(f"{mode} ingest of {failed[0].unit} failed: {failed[0].error} "
                           f"({len(failed)} of {len(reports)} units failed)")
    return {"mode": mode, "units": len(reports), "inserted": int(sum(r.inserted for r in reports)),
            "updated": int(sum(r.updated for r in reports))}


def rebuild_features(cfg: Config) -> None:
    from cryptopredict.features.pipeline import build_features

    report = build_features(cfg)
    if report.errors:
        symbol, error = next(iter(report.errors.items()))
        raise RetrainError(f"features of {symbol} failed: {error}")


def label_times(cfg: Config) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(last feature row, last row with a forward label) over the configured symbols, UTC."""
    lake, fc = open_lake(cfg), cfg.features
    col = f"fwd_logret_h{fc.horizon}"
    ends, labelled = [], []
    for s in cfg.ingest.symbols:
        lab = lake.read_frame("labels", {"symbol": s})
        if lab.empty or col not in lab.columns:
            raise RetrainError(f"no labels ({col}) for {s} in the lake {cfg.lake.root!r}")
        ends.append(lab["timestamp"].max())
        known = lab.loc[lab[col].notna(), "timestamp"]
        if not known.empty:
            labelled.append(known.max())
    if not labelled:
        raise RetrainError("no labelled rows in the lake yet")
    return max(ends), max(labelled)


def latest_window(cfg: Config, champion: Version | None) -> tuple[pd.Timestamp, pd.Timestamp, int, str]:
    """(first bar, last labelled bar, labelled bars, how it was cut) of the window to compare on."""
    rc, bar = cfg.registry.retrain, pd.Timedelta(cfg.ingest.timeframe)
    _, last = label_times(cfg)
    start = last - bar * (rc.window_bars - 1)
    note = f"the last {rc.window_bars} labelled bars"
    if champion is not None and champion.data_span[1]:
        clean = utc(champion.data_span[1]) + bar * (cfg.features.horizon + 1)
        clean = clean.ceil(bar)
        if clean > start:
            start, note = clean, (f"from the end of the champion's training data ({champion.data_span[1]}) "
                                  f"+ {cfg.features.horizon + 1} bars")
    bars = int((last - start) / bar) + 1
    return start, last, max(bars, 0), note


def challenger_config(cfg: Config, start: pd.Timestamp) -> Config:
    """``cfg`` evaluating ``registry.model`` only, one fold whose test span runs from ``start`` to the data
    end, no canaries or allocations, with a final fit."""
    doc = cfg.model_dump()
    end, _ = label_times(cfg)
    ec = doc["evaluation"]
    ec["models"] = [cfg.registry.model]
    ec["test_start"] = start.isoformat()
    ec["max_folds"] = 1
    ec["split"] = {**ec["split"], "test_bars": int((end - start) / pd.Timedelta(cfg.ingest.timeframe)) + 1,
                   "min_test_bars": None, "n_folds": None}
    ec["canaries"]["enabled"] = False
    ec["portfolio"] = {**ec["portfolio"], "methods": [], "models": None}
    ec["final_fit"] = True
    return Config.model_validate(doc)


def window_summary(result: ModelResult) -> dict[str, Any]:
    """The headline numbers of one model on the window."""
    m = result.metrics
    return jsonable({"log_loss": m.get("log_loss"), "accuracy": m.get("accuracy"),
                     "directional_accuracy": m.get("directional_accuracy"), "net_sharpe": m.get("sharpe"),
                     "total_return": m.get("total_return"), "n_trades": m.get("n_trades"),
                     "intervals": {k: vars(result.intervals[k]) for k in ("accuracy", "sharpe")
                                   if k in result.intervals}})


def score_frame(cfg: Config, name: str, frame: pd.DataFrame) -> ModelResult:
    """Backtest and score a prediction frame like the evaluation does (same costs and risk rules)."""
    from cryptopredict.evaluation.run import buy_and_hold, load_market, run_backtest, score_model

    span = frame.index.get_level_values("timestamp")
    market = load_market(open_lake(cfg), cfg, span.min(), span.max())
    bt, targets = run_backtest(frame, name, market, cfg)
    return score_model(name, frame, bt, buy_and_hold(market, cfg), targets, cfg, seed=cfg.seed)


def retrain(cfg: Config, *, run_id: str | None = None,
            registry: ModelRegistry | None = None) -> dict[str, Any]:
    """The whole job; returns the decision record (also written to disk, see the module docstring)."""
    from cryptopredict.evaluation.run import evaluate

    rc, slot = cfg.registry.retrain, cfg.registry.model
    run_id = run_id or "retrain-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_dir = Path(cfg.run_dir) / run_id
    registry = registry or ModelRegistry.from_config(cfg)
    record: dict[str, Any] = {"run_id": run_id, "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
                              "model": slot, "registry": registry.root,
                              "rule": {"tolerance": rc.tolerance, "alpha": rc.alpha,
                                       "test": "Diebold–Mariano on the per-bar mean log-loss differential, "
                                               "one-sided (H1: challenger worse)"}}
    record["ingest"] = ingest_new_data(cfg)
    rebuild_features(cfg)
    champion = registry.champion(slot)
    record["champion_before"] = champion.version if champion else None
    start, last, bars, cut = latest_window(cfg, champion)
    record["window"] = {"start": start.isoformat(), "last_labelled_bar": last.isoformat(), "bars": bars,
                        "cut": cut}
    if bars < rc.min_window_bars:
        return _finish(cfg, registry, record, run_dir, decision="skipped",
                       champion_after=record["champion_before"],
                       reason=f"only {bars} new labelled bars after the champion's training data "
                              f"(registry.retrain.min_window_bars = {rc.min_window_bars}); nothing trained")
    ev_cfg = challenger_config(cfg, start)
    run, run_dir = evaluate(ev_cfg, run_id=run_id)
    result = next(m for m in run.models if m.name == slot)
    frame = result.predictions
    record["window"].update(rows=int(len(frame)), symbols=sorted(set(frame.index.get_level_values("symbol"))))
    record["challenger"] = {"window": window_summary(result)}
    comparison, why_not = None, ""
    if champion is not None:
        record["champion"] = {"version": champion.version, "forecaster": champion.forecaster,
                              "data_span": list(champion.data_span)}
        try:
            champion_dir = registry.fetch(slot, champion.version)
            champ_frame = champion_predictions(ev_cfg, open_lake(ev_cfg), champion_dir,
                                               champion.forecaster or slot, frame)
            comparison = compare(frame, champ_frame, ev_cfg.features.horizon, rc.tolerance, rc.alpha)
            record["champion"]["window"] = window_summary(score_frame(ev_cfg, slot, champ_frame))
            record["test"] = comparison.to_dict()
        except (NotComparable, ChecksumMismatchError) as exc:
            log.error("retrain %s: the champion %s cannot be scored: %s", run_id, champion.version, exc)
            why_not = f"the champion {champion.version} cannot be scored on the window: {exc}"
            record["test"] = None
    reg = register_final_fit(ev_cfg, run, run_dir, slot, registry=registry,
                             notes=f"retrain {run_id}: challenger on data to {last.isoformat()}",
                             extra_metrics={"retrain": {"window": record["window"], "comparison":
                                                        comparison.to_dict() if comparison else None}})
    version = reg.version.version
    record["challenger"].update(version=version, newly_registered=reg.created,
                                data_span=list(reg.version.data_span), metrics=run_metrics(result, run))
    if reg.became_champion:
        decision, reason = "promoted", "there was no champion: the first registered version becomes champion"
    elif champion is not None and version == champion.version:
        decision, reason = "unchanged", "the challenger's files are identical to the champion's"
    elif champion is None:
        decision, reason = "rejected", (f"{version} was already registered; there is no champion — "
                                        "promote one with `cryptopredict models promote`")
    elif comparison is None:
        decision, reason = "rejected", why_not + "; promote by hand if the change is intended"
    elif comparison.promote:
        registry.promote(slot, version, reason=f"retrain {run_id}: {comparison.reason}")
        decision, reason = "promoted", comparison.reason
    else:
        decision, reason = "rejected", comparison.reason
    after = registry.champion(slot)
    return _finish(cfg, registry, record, run_dir, decision=decision, reason=reason,
                   champion_after=after.version if after else None)


def _finish(cfg: Config, registry: ModelRegistry, record: dict[str, Any], run_dir: Path, *, decision: str,
            reason: str, champion_after: str | None) -> dict[str, Any]:
    record.update(decision=decision, reason=reason, champion_after=champion_after)
    changed = champion_after is not None and champion_after != record.get("champion_before")
    record["reload"] = request_reload(cfg, record["model"], champion_after) if changed else \
        {"status": "not needed (champion unchanged)"}
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / DECISION_FILE
    record["record_path"] = str(path)
    record["registry_record"] = registry.write_decision(record["model"], record["run_id"], record)
    path.write_bytes(dumps(record))
    log.info("retrain %s: %s — %s", record["run_id"], decision, reason)
    return jsonable(record)

