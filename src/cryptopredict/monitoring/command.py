"""``cryptopredict monitor``: the current state from the prediction log and the lake — quality per model
version (accuracy, ECE, hit rate, PnL with counts), feature and prediction drift, data age, alerts.

Exit status: 0 when no alert condition is active, 1 when one is (handy for cron), 2 for a user error
(raised as ValueError / FileNotFoundError for the CLI to print as one line).
The CLI adds its common options (``--config``, ``--set``, ``--lake-root``, ``--symbols``) itself; this
module adds the monitor's own with :func:`add_arguments` and runs with :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from cryptopredict.monitoring.alerts import AlertManager, alert_records, evaluate_rules
from cryptopredict.monitoring.log import LogStore
from cryptopredict.monitoring.metrics import MonitorMetrics, render, update_from_snapshot
from cryptopredict.monitoring.outcomes import load_labelers
from cryptopredict.monitoring.retrain import RetrainHook, RetrainTrigger, default_retrain_hook
from cryptopredict.monitoring.state import MonitorSnapshot, build_snapshot

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The monitor's own options."""
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH",
                        help="also write the state (and the alerts fired) as JSON to this path")
    parser.add_argument("--reference", action="append", default=[], metavar="VERSION=FIRST,LAST",
                        help="the training data span of a model version (ISO times): the feature drift "
                        "reference; repeat per version (adds to monitoring.reference_spans)")
    parser.add_argument("--labeler", action="append", default=[], metavar="VERSION=PATH",
                        help="a model version's labeler.json (or model directory): realised classes by its "
                        "dead zone instead of the sign")
    parser.add_argument("--now", default=None, metavar="ISO", help="evaluate as of this UTC time (default now)")
    parser.add_argument("--retrain-on-drift", action="store_true",
                        help="start jobs/retrain.py (ray job submit when RAY_ADDRESS is set) when a model "
                        "version's feature drift crosses its threshold; once per drift episode")
    parser.add_argument("--follow", type=float, default=None, metavar="SECONDS",
                        help="evaluate again every SECONDS until Ctrl-C")
    parser.add_argument("--iterations", type=int, default=None, help="with --follow: stop after this many")
    parser.add_argument("--prom", default=None, metavar="PATH",
                        help="write the gauges in Prometheus text format (node-exporter textfile)")
    parser.add_argument("--compact", action="store_true",
                        help="first merge the log's part files of the days before today")
    parser.add_argument("--top", type=int, default=10, help="worst features to show per model version")


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{flag} {item!r}: expected VERSION=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_references(items: list[str]) -> dict[str, tuple[str, str]]:
    """``['v1=2021-01-01,2022-01-01T00:00']`` → ``{'v1': (first, last)}`` (validated as times)."""
    out = {}
    for version, value in _pairs(items, "--reference").items():
        parts = [p.strip() for p in value.split(",")]
        if len(parts) != 2:
            raise ValueError(f"--reference {version}={value!r}: expected FIRST,LAST (ISO times)")
        for p in parts:
            try:
                pd.Timestamp(p)
            except ValueError:
                raise ValueError(f"--reference {version}: {p!r} is not an ISO time") from None
        out[version] = (parts[0], parts[1])
    return out


def run(cfg: Any, args: argparse.Namespace, *, retrain_hook: RetrainHook | None = None,
        console: Console | None = None) -> int:
    """Evaluate (once, or every ``--follow`` seconds), print, alert, optionally retrain. Exit status above."""
    console = console or Console(width=140)
    references = parse_references(list(getattr(args, "reference", []) or []))
    labeler_paths = _pairs(list(getattr(args, "labeler", []) or []), "--labeler")
    store = LogStore.from_config(cfg)
    spans, found, notes = registry_context(cfg, _logged_versions(store), set(references) |
                                           set(cfg.monitoring.reference_spans), set(labeler_paths))
    references.update(spans)
    labeler_paths.update(found)
    for note in notes:
        console.print(f"note: {note}")
    labelers = load_labelers(labeler_paths)
    follow = getattr(args, "follow", None)
    if follow is not None and follow <= 0:
        raise ValueError(f"--follow must be > 0 seconds, got {follow}")
    hook = retrain_hook
    if getattr(args, "retrain_on_drift", False) and hook is None:
        hook = default_retrain_hook(cfg.monitoring.retrain_script, cfg.monitoring.retrain_args)
    iterations = getattr(args, "iterations", None)
    code, done = 0, 0
    try:
        while True:
            code = _evaluate_once(cfg, args, store, references, labelers, hook, console)
            done += 1
            if follow is None or (iterations is not None and done >= iterations):
                return code
            time.sleep(follow)
    except KeyboardInterrupt:
        return code


def _logged_versions(store: LogStore) -> list[str]:
    log = store.read(columns=["model_version"])
    return sorted(log["model_version"].dropna().astype(str).unique()) if not log.empty else []


def registry_context(cfg: Any, versions: list[str], have_reference: set[str], have_labeler: set[str]
                     ) -> tuple[dict[str, tuple[str, str]], dict[str, str], list[str]]:
    """For logged model versions without a --reference / --labeler: the training data span (the feature
    drift reference) and the stored labeler (realised classes by the model's own dead zone) of that version
    of ``registry.model`` in the registry. Returns (spans, labeler paths, notes on versions not found)."""
    from cryptopredict.registry.manifest import RegistryError
    from cryptopredict.registry.registry import ModelRegistry

    spans: dict[str, tuple[str, str]] = {}
    labelers: dict[str, str] = {}
    notes: list[str] = []
    wanted = [v for v in versions if v not in have_reference or v not in have_labeler]
    if not wanted:
        return spans, labelers, notes
    registry, model = ModelRegistry.from_config(cfg), cfg.registry.model
    for v in wanted:
        try:
            version = registry.get(model, v)
        except RegistryError:
            notes.append(f"model version {v!r} is not in the registry {cfg.registry.root!r} ({model}): no drift "
                         "reference unless --reference gives one; realised classes by sign unless --labeler")
            continue
        first, last = version.data_span
        if v not in have_reference and first and last:
            spans[v] = (first, last)
        if v not in have_labeler:
            path = Path(registry.fetch(model, version.version)) / "labeler.json"
            if path.is_file():
                labelers[v] = str(path)
    return spans, labelers, notes


def _evaluate_once(cfg: Any, args: argparse.Namespace, store: LogStore, references: dict[str, tuple[str, str]],
                   labelers: dict[str, Any], hook: RetrainHook | None, console: Console) -> int:
    if getattr(args, "compact", False):
        for r in store.compact(before=pd.Timestamp.now(tz="UTC")):
            log.info("compacted %s: %d parts → %d rows", r.partition, r.parts, r.rows)
    now = getattr(args, "now", None)
    snap = build_snapshot(cfg, now=None if now is None else pd.Timestamp(now), references=references,
                          labelers=labelers, top=getattr(args, "top", 10))
    conditions = evaluate_rules(cfg.monitoring, quality=snap.quality, feature_drift=snap.feature_drift,
                                prediction_drift=snap.prediction_drift, data_age_hours=snap.data_age_hours)
    manager = AlertManager(store, cfg.monitoring)
    fired = manager.process(conditions, now=snap.now)
    active = manager.state()
    retrained: list[str] = []
    if hook is not None:
        retrained = RetrainTrigger(store, hook).process(conditions, config_path=getattr(args, "config", None),
                                                        now=snap.now)
    _print(console, snap, fired, active, retrained, getattr(args, "top", 10))
    if getattr(args, "json_path", None):
        doc = snap.to_json()
        doc.update({"alerts_fired": alert_records(fired), "alerts_active": active, "retrain_started": retrained,
                    "conditions": [{"key": c.key, "active": c.active, "value": c.value if math.isfinite(c.value)
                                    else None, "threshold": c.threshold} for c in conditions]})
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(doc, indent=2, default=str))
        tmp.replace(path)
    if getattr(args, "prom", None):
        metrics = MonitorMetrics()
        update_from_snapshot(metrics, snap, active)
        body, _ = render(metrics.registry)
        path = Path(args.prom)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(body)
        tmp.replace(path)
    return 1 if active else 0


def _f(x: object, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return format(x, spec)


def _print(console: Console, snap: MonitorSnapshot, fired: list[Any], active: dict[str, Any],
           retrained: list[str], top: int) -> None:
    console.print(f"[bold]monitor[/bold] at {snap.now.isoformat()}: {snap.log_rows} log rows, "
                  f"{len(snap.outcomes)} distinct predictions")
    q = Table(title="quality per model version (symbol * = all)")
    for col in ("model_version", "symbol", "window h", "predictions", "resolved", "pending", "accuracy", "ECE",
                "hit rate", "PnL net", "PnL gross"):
        q.add_column(col, justify="left" if col in ("model_version", "symbol") else "right")
    for r in snap.quality.itertuples():
        q.add_row(str(r.model_version), str(r.symbol), str(r.window_hours), str(r.n_predictions),
                  str(r.n_resolved), str(r.n_pending), _f(r.accuracy), _f(r.ece), _f(r.directional_hit_rate),
                  _f(r.pnl, "+.4f"), _f(r.pnl_gross, "+.4f"))
    console.print(q)
    for version, summary in snap.feature_drift.items():
        t = Table(title=f"feature drift of {version}: {summary['n_drifted']}/{summary['n_scored']} drifted "
                  f"(share {_f(summary['share_drifted'], '.2f')}), max PSI {_f(summary['max_psi'])}")
        for col in ("feature", "PSI", "KS", "KS p", "drifted"):
            t.add_column(col, justify="left" if col == "feature" else "right")
        for w in summary["worst"][:top]:
            t.add_row(w["feature"], _f(w["psi"]), _f(w["ks_stat"]), _f(w["ks_pvalue"], ".2g"),
                      "yes" if w["drifted"] else "")
        console.print(t)
    if len(snap.prediction_drift):
        t = Table(title="prediction drift (recent vs the window before)")
        for col in ("model_version", "quantity", "PSI", "n ref", "n recent", "note"):
            t.add_column(col)
        for r in snap.prediction_drift.itertuples():
            t.add_row(str(r.model_version), str(r.quantity), _f(r.psi), str(r.n_reference), str(r.n_recent), r.note)
        console.print(t)
    if snap.data_age_hours:
        console.print("data age (h since the newest bar closed): " + ", ".join(
            f"{s} {_f(a, '.1f')}" for s, a in sorted(snap.data_age_hours.items())))
    t = Table(title="alerts")
    for col in ("condition", "fired at", "delivered", "message"):
        t.add_column(col)
    fired_keys = {a.key for a in fired}
    for key, rec in sorted(active.items()):
        delivered = rec.get("delivered")
        t.add_row(key + (" (new)" if key in fired_keys else ""), str(rec.get("fired_at", "")),
                  "log only" if delivered is None else ("yes" if delivered else "NO"), str(rec.get("message", "")))
    console.print(t if active else "alerts: none active")
    if retrained:
        console.print(f"retrain started for: {', '.join(retrained)}")
    for note in snap.notes:
        console.print(f"note: {note}")
