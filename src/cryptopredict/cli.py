"""The ``cryptopredict`` command. Subcommands map 1:1 onto the entry points in ``jobs/``.

A user error (bad flag, bad config, missing file, unknown symbol) prints one line naming the bad input and
exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptopredict import __version__
from cryptopredict.config import Config, ConfigError, load_config

log = logging.getLogger("cryptopredict")

USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, KeyError)


class UserError(Exception):
    """An error in what the user asked for; printed as one line, exit status 2."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="YAML config (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set ingest.symbols=[BTCUSDT,ETHUSDT]")
    parser.add_argument("--lake-root", default=None, help="lake root: a directory or s3://bucket/prefix")
    parser.add_argument("--parallelism", choices=["data", "tasks", "serial"], default=None,
                        help="per-symbol work on Ray Data (default), Ray tasks, or in-process")
    parser.add_argument("--symbols", default=None, help="comma-separated symbols, e.g. BTCUSDT,ETHUSDT")
    parser.add_argument("--verbose", "-v", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryptopredict", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cryptopredict {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="the main job: ingest the shipped dataset, build the features, "
                         "evaluate the models walk-forward, write the report")
    _common(run)

    ingest = sub.add_parser("ingest", help="ingest into the lake, per symbol on Ray, and print the report")
    _common(ingest)
    ingest.add_argument("--from", dest="source_dir", default=None,
                        help="the shipped snapshot folder to ingest from (default: ingest.snapshot_dir)")
    ingest.add_argument("--live", action="store_true",
                        help="fetch from the exchange (ccxt) and the public APIs instead of the snapshot, "
                        "incrementally from where the lake ends")
    ingest.add_argument("--follow", action="store_true",
                        help="after the live catch-up, keep appending each newly closed candle until Ctrl-C")
    ingest.add_argument("--max-batches", type=int, default=None,
                        help="--follow: stop after this many batches per symbol")
    ingest.add_argument("--report", default=None, help="also write the report as JSON to this path")

    feats = sub.add_parser("features", help="compute the feature table and labels from the lake, per symbol "
                           "on Ray, with a manifest")
    _common(feats)

    ev = sub.add_parser("evaluate", help="walk-forward evaluation of the configured models with costs, "
                        "significance tests, canaries and an HTML report")
    _common(ev)
    ev.add_argument("--quick", action="store_true", help="2 folds, no canaries: a smoke run")
    ev.add_argument("--data", default=None,
                    help="score STORED models (no retraining) on Parquet files in the shipped layout in this folder")
    ev.add_argument("--models-from", default=None,
                    help="with --data: a run's models folder (default: the newest runs/*/models)")
    ev.add_argument("--register", action="store_true",
                    help="register the final fit of registry.model in the model registry (as `run` does)")

    tune = sub.add_parser("tune", help="Ray Tune search over the deep members' and the fusion's settings (ASHA) "
                          "on data before evaluation.test_start; results under <run_dir>/<run id>/tuning")
    _common(tune)
    tune.add_argument("--models", default=None,
                      help="comma-separated, tuned in order: transformer,bilstm,cnn_lstm,gnn,fusion "
                      "(default: tuning.models)")
    tune.add_argument("--num-samples", type=int, default=None, help="trials per model (tuning.num_samples)")
    tune.add_argument("--max-epochs", type=int, default=None, help="epochs per member trial (tuning.max_epochs)")
    tune.add_argument("--quick", action="store_true",
                      help="2 trials per model, 2 epochs, one inner fold, at most 50 steps per epoch: a smoke run")

    lake = sub.add_parser("lake", help="list the lake's tables, partitions and row counts")
    _common(lake)

    models = sub.add_parser("models", help="the model registry: list versions, promote one, roll back")
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every version with its data span, accuracy and net Sharpe")
    promote = actions.add_parser("promote", help="make VERSION the champion")
    promote.add_argument("version", metavar="VERSION", help="e.g. v0003 (or 3)")
    rollback = actions.add_parser("rollback", help="back to the champion before the current one")
    for p in (listing, promote, rollback):
        _common(p)
        p.add_argument("--model", default=None, help="the registered model (default: registry.model)")

    retrain = sub.add_parser("retrain", help="ingest, rebuild features, retrain the challenger on the latest "
                             "window, compare it with the champion there, register it, promote by the rule")
    _common(retrain)
    retrain.add_argument("--model", default=None, help="the model to retrain (default: registry.model)")
    retrain.add_argument("--every", type=float, default=None, metavar="HOURS",
                         help="on a schedule: retrain now and then every HOURS until Ctrl-C / SIGTERM")
    retrain.add_argument("--iterations", type=int, default=None, help="with --every: stop after this many runs")

    from cryptopredict.monitoring import command as monitor_command

    monitor = sub.add_parser("monitor", help="the served models' state: rolling accuracy, calibration and PnL "
                             "from the prediction log, feature and prediction drift, alerts")
    _common(monitor)
    monitor_command.add_arguments(monitor)

    from cryptopredict.serving import command as serve_command

    serve_p = sub.add_parser("serve", help="the Ray Serve app (one deployment per base model, a fusion ingress) "
                             "on serving.host:serving.port, serving the registry's champion; Ctrl-C stops")
    _common(serve_p)
    serve_command.add_arguments(serve_p)

    from cryptopredict.paper import command as paper_command

    paper = sub.add_parser("paper", help="paper trading on live candles with the Serve app's predictions, "
                           "sized by the risk manager, filled with the backtester's costs (never sends orders)")
    _common(paper)
    paper_command.add_arguments(paper)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if args.lake_root:
        overrides.append(f"lake.root={args.lake_root}")
    if args.parallelism:
        overrides.append(f"ray.parallelism={args.parallelism}")
    if args.symbols:
        symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
        if not symbols:
            raise UserError("--symbols: give at least one symbol, e.g. BTCUSDT,ETHUSDT")
        overrides.append("ingest.symbols=[" + ",".join(symbols) + "]")
    if getattr(args, "source_dir", None):
        overrides.append(f"ingest.snapshot_dir={args.source_dir}")
    return load_config(args.config, overrides)


def cmd_ingest(cfg: Config, report_path: str | None) -> int:
    from cryptopredict.data.ingest import ingest_unit_from_snapshot, snapshot_units
    from cryptopredict.data.ray_ingest import map_units
    from cryptopredict.data.snapshot import snapshot_symbols

    snapshot = Path(cfg.ingest.snapshot_dir)
    if not snapshot.is_dir():
        raise UserError(f"--from {str(snapshot)!r}: not a directory")
    available = snapshot_symbols(snapshot)
    unknown = [s for s in cfg.ingest.symbols if s not in available]
    if unknown:
        raise UserError(f"symbols {unknown} are not in the snapshot {str(snapshot)!r}; it has {available}")
    reports = map_units(cfg, snapshot_units(cfg), ingest_unit_from_snapshot)
    return _finish(reports, f"Ingest report — {snapshot} → {cfg.lake.root}", report_path)


def _finish(reports: list, title: str, report_path: str | None) -> int:  # type: ignore[type-arg]
    from cryptopredict.data import ingest_report

    ingest_report.render(reports, title=title)
    if report_path:
        ingest_report.write_json(reports, report_path)
    return 1 if any(r.error for r in reports) else 0


def cmd_ingest_live(cfg: Config, report_path: str | None, follow: bool, max_batches: int | None) -> int:
    import signal
    import threading

    from cryptopredict.data import live
    from cryptopredict.data.ray_ingest import map_units
    from cryptopredict.data.sources.exchange import open_exchange

    open_exchange(cfg.ingest.exchange)  # an unknown exchange id is a user error, before any work
    reports = map_units(cfg, live.live_units(cfg), live.ingest_unit_live)
    rc = _finish(reports, f"Live ingest report — {cfg.ingest.exchange} and APIs → {cfg.lake.root}", report_path)
    if not follow:
        return rc
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"following {', '.join(cfg.ingest.symbols)} {cfg.ingest.timeframe} on {cfg.ingest.exchange} "
          f"(mode {cfg.ingest.follow_mode}); Ctrl-C stops", flush=True)

    def show(r) -> None:  # type: ignore[no-untyped-def]
        print(f"{r.unit}: +{r.inserted} bars, {r.rows_after:,} stored"
              + (f", quarantined {r.quarantined}" if r.quarantined else ""), flush=True)

    batches = live.follow(cfg, stop=stop, max_batches=max_batches, on_report=show)
    return _finish(batches, "Follow report", None) if batches else rc


def cmd_features(cfg: Config) -> int:
    from rich.console import Console
    from rich.table import Table

    from cryptopredict.features.pipeline import MANIFEST, build_features

    report = build_features(cfg)
    console = Console(width=None if sys.stdout.isatty() else 150)
    table = Table(title=f"Features — {cfg.lake.root}")
    table.add_column("symbol")
    table.add_column("rows", justify="right")
    table.add_column("status")
    for s in report.symbols:
        table.add_row(s, f"{report.rows.get(s, 0):,}", f"[red]{report.errors[s]}[/red]" if s in report.errors else "ok")
    console.print(table)
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(report.seconds.items(), key=lambda kv: -kv[1]))
    console.print(f"{report.columns} feature columns; time per family (summed over symbols): {timing}")
    scorer = report.sentiment_scorer
    if scorer:
        note = f" — {scorer['reason']}" if scorer.get("reason") else ""
        console.print(f"sentiment scorer: {scorer.get('scorer', '?')}{note}")
    console.print(f"manifest: {cfg.lake.root}/{MANIFEST}")
    return 1 if report.errors else 0


def cmd_evaluate(cfg: Config, data: str | None = None, models_from: str | None = None,
                 register: bool = False) -> int:
    from cryptopredict.evaluation.run import evaluate

    if data:
        import time

        from cryptopredict.evaluation.scoring import score_later

        if not Path(data).is_dir():
            raise UserError(f"--data {data!r}: not a directory")
        if models_from is None:
            found = sorted(Path(cfg.run_dir).glob("*/models"), key=lambda p: p.stat().st_mtime)
            if not found:
                raise UserError(f"no stored models under {cfg.run_dir!r}; run `cryptopredict evaluate` first")
            models_from = str(found[-1])
        run_id = "score-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        run, run_dir = score_later(cfg, Path(models_from), Path(data), run_id)
    else:
        from cryptopredict.evaluation.run import ec_backend
        from cryptopredict.parallel import absolute_paths, connect_ray

        cfg = absolute_paths(cfg)
        # one Ray runtime for the walk-forward, the canaries and the Ray Train final fits
        needs_ray = cfg.ray.parallelism != "serial" or any(ec_backend(cfg, m) == "ray"
                                                            for m in cfg.evaluation.models)
        started = needs_ray and connect_ray(cfg)
        try:
            run, run_dir = evaluate(cfg)
        finally:
            if started:
                import ray

                ray.shutdown()
    print(f"\nVERDICT: {run.verdict}")
    for m in run.models:
        acc, sh = m.intervals["accuracy"], m.intervals["sharpe"]
        print(f"  {m.name:24} accuracy {acc.value:.3f} [{acc.low:.3f}, {acc.high:.3f}]   "
              f"net Sharpe {sh.value:.2f} [{sh.low:.2f}, {sh.high:.2f}]   "
              f"directional {m.metrics.get('directional_accuracy', float('nan')):.3f}")
    for c in run.canaries:
        print(f"  canary {c.name}: {'pass' if c.passed else 'FAIL'} — {c.note}")
    print(f"report: {run_dir / 'report.html'}")
    if register and not data:
        _register_run(cfg, run, run_dir)
    return 0


def _register_run(cfg: Config, run, run_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """After `run`: register the final fit of ``registry.model`` when the config asks for it."""
    rc = cfg.registry
    if not (rc.register_on_run and cfg.evaluation.final_fit):
        print("registry: not registering (registry.register_on_run or evaluation.final_fit is off)")
        return
    if rc.model not in cfg.evaluation.models:
        print(f"registry: not registering: registry.model {rc.model!r} is not among evaluation.models "
              f"{cfg.evaluation.models}")
        return
    from cryptopredict.registry.from_run import register_final_fit

    reg = register_final_fit(cfg, run, run_dir)
    print(f"registry: {reg.message} in {rc.root}")


def tune_options(cfg: Config, models: str | None, num_samples: int | None, max_epochs: int | None,
                 quick: bool) -> Config:
    """``cfg`` with the `tune` flags applied (flags win over --quick, --quick over the config)."""
    from pydantic import ValidationError

    tc = cfg.tuning
    if quick:
        tc.num_samples, tc.max_epochs, tc.n_folds = 2, 2, 1
        train = {**tc.base_params.get("train", {})}
        train.setdefault("max_steps_per_epoch", 50)
        tc.base_params = {**tc.base_params, "train": train}
    if models is not None:
        names = [m.strip() for m in models.split(",") if m.strip()]
        if not names:
            raise UserError("--models: give at least one of transformer,bilstm,cnn_lstm,gnn,fusion")
        try:
            tc.models = names
        except ValidationError as exc:
            raise UserError(f"--models {models!r}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    for flag, value, field in (("--num-samples", num_samples, "num_samples"), ("--max-epochs", max_epochs, "max_epochs")):
        if value is not None:
            if value < 1:
                raise UserError(f"{flag} must be at least 1, got {value}")
            setattr(tc, field, value)
    return cfg


def cmd_tune(cfg: Config) -> int:
    from rich.console import Console
    from rich.table import Table

    from cryptopredict.training.tuning import SUMMARY_FILE, tune_models

    summary, out_dir = tune_models(cfg)
    console = Console(width=None if sys.stdout.isatty() else 150)
    table = Table(title=f"Tuning {summary['run_id']} — data before {summary['data_end']}")
    for col in ("model", "trials", "stopped early", "errored", "best loss", "best config"):
        table.add_column(col, justify="right" if col in ("trials", "stopped early", "errored", "best loss") else "left")
    for name, m in summary["models"].items():
        best = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in _flat(m["best_config"]).items())
        table.add_row(name, str(m["trials"]), str(m["stopped_early"]), str(m["errored"]),
                      f"{m['best_objective']:.4f}", best)
    console.print(table)
    if summary.get("window_note"):
        console.print(f"note: {summary['window_note']}")
    for model, m in summary["models"].items():
        if "pbo" in m:
            pbo = m["pbo"]
            console.print(f"PBO of the {model} selection: " + (
                f"{pbo['pbo']:.2f} (CSCV over {pbo['trials']} completed trials, {pbo['bars']} validation bars)"
                if pbo else "not computed (fewer than two completed trials)"))
    console.print(f"{summary['n_trials']} trials in all; summary: {out_dir / SUMMARY_FILE}; "
                  f"config snippet: {out_dir / 'best.yaml'}")
    print("apply the best settings and count the trials in the Deflated Sharpe:")
    print("  cryptopredict evaluate " + " ".join(summary["evaluate_overrides"]))
    return 0


def _flat(tree: dict, prefix: str = "") -> dict:  # type: ignore[type-arg]
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def cmd_run(cfg: Config, report_path: str) -> int:
    """The main job: every stage on one Ray runtime (started once, shut down at the end)."""
    from cryptopredict.parallel import absolute_paths, connect_ray

    cfg = absolute_paths(cfg)
    started = cfg.ray.parallelism != "serial" and connect_ray(cfg)
    try:
        return cmd_ingest(cfg, report_path) or cmd_features(cfg) or cmd_evaluate(cfg, register=True)
    finally:
        if started:
            import ray

            ray.shutdown()


def cmd_lake(cfg: Config) -> int:
    from rich.console import Console
    from rich.table import Table

    from cryptopredict.data.ingest import open_lake

    summary = open_lake(cfg).summary()
    if summary.empty:
        print(f"lake {cfg.lake.root!r} is empty")
        return 0
    table = Table(title=f"lake {cfg.lake.root}")
    for col in summary.columns:
        table.add_column(col)
    for row in summary.itertuples(index=False):
        table.add_row(row.table, row.partition, f"{row.rows:,}")
    Console().print(table)
    return 0


def _fmt_interval(iv: dict | None, digits: int) -> str:  # type: ignore[type-arg]
    if not iv or iv.get("value") is None:
        return "-"
    low, high = iv.get("low"), iv.get("high")
    ci = f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None and high is not None else ""
    return f"{iv['value']:.{digits}f}{ci}"


def cmd_models(cfg: Config, action: str, model: str | None, version: str | None) -> int:
    from rich.console import Console
    from rich.table import Table

    from cryptopredict.registry.registry import ModelRegistry

    registry = ModelRegistry.from_config(cfg)
    name = model or cfg.registry.model
    if action == "promote":
        v = registry.promote(name, str(version))
        print(f"{name}: champion is now {v.version}")
        return 0
    if action == "rollback":
        v = registry.rollback(name)
        print(f"{name}: rolled back; champion is now {v.version}")
        return 0
    versions = registry.list_versions(name)
    if not versions:
        raise UserError(f"the registry {cfg.registry.root!r} has no versions of model {name!r}")
    champion = registry.champion_record(name)
    table = Table(title=f"registry {cfg.registry.root} — {name}")
    for col in ("", "version", "created", "data span", "accuracy [CI]", "net Sharpe [CI]", "notes"):
        table.add_column(col)
    for v in versions:
        first, last = (s[:16].replace("T", " ") if s else "?" for s in v.data_span)
        table.add_row("★" if champion and champion.version == v.version else "", v.version,
                      v.created_at[:19].replace("T", " "), f"{first} → {last}",
                      _fmt_interval(v.interval("accuracy"), 3), _fmt_interval(v.interval("sharpe"), 2),
                      v.notes[:60])
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    print(f"champion: {champion.version if champion else 'none'}")
    return 0


def cmd_retrain(cfg: Config, model: str | None, every_hours: float | None = None,
                iterations: int | None = None) -> int:
    """One retrain (challenger vs champion), or one every ``every_hours`` until SIGINT/SIGTERM (or
    ``iterations`` runs): the scheduled form of the job."""
    import signal
    import threading

    if every_hours is not None and every_hours <= 0:
        raise UserError(f"--every must be > 0 hours, got {every_hours}")
    if iterations is not None and iterations < 1:
        raise UserError(f"--iterations must be at least 1, got {iterations}")
    stop = threading.Event()
    previous = {}
    if every_hours is not None and threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        done, rc = 0, 0
        while True:
            rc = _retrain_once(cfg, model)
            done += 1
            if every_hours is None or (iterations is not None and done >= iterations):
                return rc
            print(f"next retrain in {every_hours:g} h; Ctrl-C stops", flush=True)
            if stop.wait(every_hours * 3600):
                return rc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _retrain_once(cfg: Config, model: str | None) -> int:
    from cryptopredict.parallel import absolute_paths, connect_ray
    from cryptopredict.registry.retrain import RetrainError, retrain

    cfg = absolute_paths(cfg)
    if model:
        cfg.registry.model = model
    started = cfg.ray.parallelism != "serial" and connect_ray(cfg)
    try:
        decision = retrain(cfg)
    except RetrainError as exc:
        print(f"cryptopredict retrain: failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if started:
            import ray

            ray.shutdown()
    print(f"decision: {decision['decision']} — {decision['reason']}")
    print(f"champion of {decision['model']}: {decision['champion_after'] or 'none'}")
    print(f"record: {decision['record_path']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
        report = getattr(args, "report", None) or str(Path(cfg.run_dir) / "ingest_report.json")
        if args.command == "ingest" and (args.live or args.follow):
            if args.source_dir:
                raise UserError("--from and --live/--follow exclude each other")
            return cmd_ingest_live(cfg, report, args.follow, args.max_batches)
        if args.command == "ingest":
            return cmd_ingest(cfg, report)
        if args.command == "features":
            return cmd_features(cfg)
        if args.command == "evaluate":
            if args.quick:
                cfg.evaluation.max_folds = 2
                cfg.evaluation.canaries.enabled = False
            return cmd_evaluate(cfg, args.data, args.models_from, register=args.register)
        if args.command == "tune":
            return cmd_tune(tune_options(cfg, args.models, args.num_samples, args.max_epochs, args.quick))
        if args.command == "run":
            return cmd_run(cfg, report)
        if args.command == "lake":
            return cmd_lake(cfg)
        if args.command == "monitor":
            from cryptopredict.monitoring import command as monitor_command

            return monitor_command.run(cfg, args)
        if args.command == "serve":
            from cryptopredict.serving import command as serve_command

            return serve_command.run(cfg, args)
        if args.command == "paper":
            from cryptopredict.paper import command as paper_command

            return paper_command.run(cfg, args)
        if args.command == "models":
            return cmd_models(cfg, args.action, args.model, getattr(args, "version", None))
        if args.command == "retrain":
            return cmd_retrain(cfg, args.model, args.every, args.iterations)
    except (UserError, *USER_ERRORS) as exc:
        if args.verbose:
            log.exception("error")
        print(f"cryptopredict {args.command}: error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
