"""The evaluation run: walk-forward every configured model (in parallel on Ray), backtest each one with
the risk manager and costs, compute metrics with block-bootstrap intervals and significance tests, run
the leakage canaries, decide the verdict, and write the report.

Allocations across coins from a model's predictions (HRP, mean-variance; ``evaluation.portfolio``) run
through the same backtester and scoring as the models and count as trials.

The verdict is "significant edge after costs" only when the best model's net Sharpe has a confidence
interval above 0, its Deflated Sharpe (counting every configuration tried) exceeds 0.95, and its
directional accuracy passes the Pesaran–Timmermann test at 5 %; otherwise "no significant edge", with
the reason.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryptopredict.config import Config
from cryptopredict.data.ingest import ingest_ohlcv, open_lake
from cryptopredict.data.lake import Lake, partition_path
from cryptopredict.data.schemas import OHLCV
from cryptopredict.evaluation import metrics as M
from cryptopredict.evaluation import stats as S
from cryptopredict.evaluation.backtest import BacktestResult, backtest
from cryptopredict.evaluation.canaries import random_walk_bars
from cryptopredict.evaluation.portfolio import allocation_weights
from cryptopredict.evaluation.results import CanaryResult, Interval, ModelResult, RunResult
from cryptopredict.evaluation.risk import RiskConfig, positions_from_predictions
from cryptopredict.evaluation.walkforward import merge_chunks, read_predictions, walk_forward_model
from cryptopredict.models.base import Predictions
from cryptopredict.parallel import parallel_map

log = logging.getLogger(__name__)

BASELINE_NAMES = {"majority", "persistence", "momentum", "logistic", "lightgbm"}
PROBA = ["p_sell", "p_hold", "p_buy"]
ALLOCATION_SUFFIX = {"hrp": "hrp", "mean_variance": "mv"}


@dataclass
class Market:
    """Wide bar frames (timestamp × symbol) over the evaluated span."""

    open: pd.DataFrame
    close: pd.DataFrame
    volume: pd.DataFrame

    def since(self, start: pd.Timestamp) -> Market:
        """The bars from ``start`` on."""
        return Market(self.open.loc[start:], self.close.loc[start:], self.volume.loc[start:])


def load_market(lake: Lake, cfg: Config, start: pd.Timestamp, end: pd.Timestamp) -> Market:
    frames = {}
    for s in cfg.ingest.symbols:
        part = partition_path(OHLCV, {"exchange": cfg.ingest.exchange, "symbol": s, "timeframe": cfg.ingest.timeframe})
        b = lake.read_partition("ohlcv", part)
        frames[s] = b[(b["timestamp"] >= start) & (b["timestamp"] <= end)].set_index("timestamp")
    grid = pd.date_range(start, end, freq=cfg.ingest.timeframe.replace("h", "h"))
    pick = lambda col: pd.DataFrame({s: f[col] for s, f in frames.items()}).reindex(grid)  # noqa: E731
    return Market(pick("open"), pick("close"), pick("volume"))


def _predictions(frame: pd.DataFrame, name: str) -> Predictions:
    return Predictions(index=frame.index, proba=frame[PROBA].to_numpy(), log_vol=frame["log_vol"].to_numpy(),
                       log_vol_var=frame["log_vol_var"].to_numpy(), confidence=frame["confidence"].to_numpy(),
                       model=name)


def _risk_config(cfg: Config) -> RiskConfig:
    return RiskConfig(**{**cfg.evaluation.risk.model_dump(), "horizon": cfg.features.horizon})


def run_backtest(frame: pd.DataFrame, name: str, market: Market, cfg: Config) -> tuple[BacktestResult, pd.DataFrame]:
    targets = positions_from_predictions(_predictions(frame, name), _risk_config(cfg))
    targets = targets.reindex(index=market.close.index, columns=market.close.columns).ffill().fillna(0.0)
    return backtest(market.open, market.close, targets, cfg.evaluation.backtest, volume=market.volume), targets


def allocation_results(cfg: Config, sources: list[ModelResult], frames: dict[str, pd.DataFrame],
                       history: Market, bench: BacktestResult,
                       seed: int) -> tuple[list[ModelResult], list[np.ndarray]]:
    """Every configured allocation of each source model's predictions ("<model>+hrp", "<model>+mv"), filled
    by the same backtester with the same costs over the benchmark's bars and scored like a model.
    ``history``: bars from ``cov_window_bars`` before the test span (the covariance's trailing window)."""
    pc = cfg.evaluation.portfolio
    market = history.since(bench.index[0])
    results, returns = [], []
    for source in sources:
        frame = frames[source.name]
        for method in pc.methods:
            weights = allocation_weights(frame, history.close, method, pc, _risk_config(cfg))
            weights = weights.reindex(market.close.index)
            bt = backtest(market.open, market.close, weights, cfg.evaluation.backtest, volume=market.volume)
            res = score_model(f"{source.name}+{ALLOCATION_SUFFIX[method]}", frame, bt, bench,
                              weights.ffill().fillna(0.0), cfg, seed=seed + len(results), source=source)
            res.is_baseline, res.allocation = source.is_baseline, method
            results.append(res)
            returns.append(bt.returns)
    return results, returns


def buy_and_hold(market: Market, cfg: Config) -> BacktestResult:
    """Equal weight in every coin trading at t, with the same costs (the benchmark)."""
    listed = market.close.notna()
    weights = listed.div(listed.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0)
    return backtest(market.open, market.close, weights, cfg.evaluation.backtest, volume=market.volume)


def _directional(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(hit 0/1, time) over rows with a directional call and a known, non-zero forward return."""
    d = frame["p_buy"].to_numpy() - frame["p_sell"].to_numpy()
    r = frame["fwd_return"].to_numpy()
    ok = np.isfinite(r) & (r != 0) & (d != 0)
    return (np.sign(d[ok]) == np.sign(r[ok])).astype(float), frame.index.get_level_values("timestamp").asi8[ok]


def _interval(ci: S.BootstrapCI) -> Interval:
    return Interval(ci.estimate, ci.low, ci.high, ci.level, f"{ci.method} block bootstrap (block {ci.block_length:.0f})")


def score_model(name: str, frame: pd.DataFrame, bt: BacktestResult, bench: BacktestResult, targets: pd.DataFrame,
                cfg: Config, seed: int, *, source: ModelResult | None = None) -> ModelResult:
    """Metrics, intervals and tests of one backtested set of predictions. ``source``: the model whose
    predictions (``frame``) an allocation trades; its accuracy intervals are reused, not resampled again."""
    ec, h = cfg.evaluation, cfg.features.horizon
    frame = frame.sort_index(level="timestamp", sort_remaining=True)
    known = frame["y_true"].notna().to_numpy()
    lab = frame[known]
    y, proba = lab["y_true"].to_numpy().astype(int), lab[PROBA].to_numpy()
    conf = lab["confidence"].to_numpy()
    times = lab.index.get_level_values("timestamp").asi8
    returns = bt.returns
    metrics = M.summary(y_true=y, proba=proba, confidence=conf, realised_vol=lab["fwd_vol"].to_numpy(),
                        log_vol=lab["log_vol"].to_numpy(), log_vol_var=lab["log_vol_var"].to_numpy(),
                        returns=returns, benchmark=bench.returns, positions=bt.positions,
                        timestamps=np.asarray(bt.index))
    hits, hit_times = _directional(frame)
    metrics["directional_accuracy"] = float(hits.mean()) if hits.size else float("nan")
    metrics["n_directional"] = float(hits.size)
    metrics["n_trades"] = float(bt.n_trades)
    metrics["costs_total"] = float(bt.total_costs().sum() / bt.initial_equity)
    boot = dict(level=ec.confidence_level, n_boot=ec.bootstrap_samples, horizon=h, seed=seed)
    correct = (proba.argmax(1) == y).astype(float)
    intervals = {
        "accuracy": _interval(S.block_bootstrap_ci(np.mean, correct, time=times, **boot)),
        "directional_accuracy": _interval(S.block_bootstrap_ci(np.mean, hits, time=hit_times, **boot)),
    } if source is None else {k: source.intervals[k] for k in ("accuracy", "directional_accuracy")}
    if np.std(returns) > 0:
        intervals["sharpe"] = _interval(S.block_bootstrap_ci(M.sharpe_ratio, returns, **boot))
        intervals["total_return"] = _interval(S.block_bootstrap_ci(M.total_return, returns, **boot))
    else:  # never traded (the cost-aware filter kept it flat): nothing to resample
        intervals["sharpe"] = Interval(float("nan"), float("nan"), float("nan"), ec.confidence_level, "no trades")
        intervals["total_return"] = Interval(0.0, 0.0, 0.0, ec.confidence_level, "no trades")
    tests: dict[str, dict[str, float | str]] = {}
    d = frame["p_buy"].to_numpy() - frame["p_sell"].to_numpy()
    per_time = len(frame) / max(1, frame.index.get_level_values("timestamp").nunique())
    dependence = max(1, int(round(h * per_time)))  # rows of one timestamp treated as fully dependent
    pt = S.pesaran_timmermann(frame["fwd_return"].to_numpy(), d, horizon=dependence)
    tests["pesaran_timmermann"] = {
        "statistic": float(pt.statistic), "p_value": float(pt.p_value),
        "note": f"sign of P(BUY)−P(SELL) vs the forward return; n_eff = n / {dependence} (h = {h} overlapping "
                f"bars × {per_time:.1f} coins per timestamp, counted as dependent)"}
    equity = pd.Series(bt.equity / bt.initial_equity, index=bt.index)
    gross = pd.Series(np.cumprod(1 + bt.gross_returns), index=bt.index)
    return ModelResult(
        name=name, predictions=frame.assign(position=_positions_at(targets, frame.index)), equity=equity,
        equity_gross=gross,
        metrics=metrics, intervals=intervals,
        reliability=M.reliability_table(conf, correct), deciles=M.accuracy_by_confidence_decile(conf, correct),
        monthly=M.monthly_returns(returns, np.asarray(bt.index)), tests=tests,
        is_baseline=name in BASELINE_NAMES)


def _positions_at(targets: pd.DataFrame, index: pd.MultiIndex) -> np.ndarray:
    """The risk manager's target (timestamp × symbol) at each (symbol, timestamp) prediction row."""
    long = targets.stack().rename("position")
    long.index = long.index.set_names(["timestamp", "symbol"])
    return long.reorder_levels(["symbol", "timestamp"]).reindex(index).to_numpy()


def _log_loss_rows(frame: pd.DataFrame) -> np.ndarray:
    y = frame["y_true"].to_numpy()
    ok = np.isfinite(y)
    p = frame[PROBA].to_numpy()
    out = np.full(len(frame), np.nan)
    out[ok] = -np.log(np.clip(p[ok, y[ok].astype(int)], 1e-15, 1))
    return out


def add_dm_tests(results: list[ModelResult], frames: dict[str, pd.DataFrame], horizon: int) -> None:
    """Diebold–Mariano on log loss of every model against each baseline over the same test rows.

    The loss differential is averaged over the coins of each timestamp first, so the test runs on one
    time series (bars in order) and its HAC variance at lag h − 1 covers the label overlap; rows of one
    timestamp are not treated as independent observations."""
    losses = {n: pd.Series(_log_loss_rows(f), index=f.index) for n, f in frames.items()}
    for res in results:
        for base in sorted(BASELINE_NAMES & set(frames)):
            if base == res.name:
                continue
            diff = (losses[res.name] - losses[base]).dropna()
            per_time = diff.groupby(level="timestamp").mean().sort_index().to_numpy()
            dm = S.diebold_mariano(per_time, np.zeros_like(per_time), horizon=horizon)
            res.tests[f"dm_logloss_vs_{base}"] = {
                "statistic": float(dm.statistic), "p_value": float(dm.p_value),
                "note": f"mean log loss of {res.name} minus {base} per timestamp; < 0 favours {res.name}"}


def deflated_sharpe(returns: np.ndarray, all_returns: list[np.ndarray], n_trials: int) -> float:
    sharpes = [np.mean(r) / np.std(r, ddof=1) for r in all_returns if np.std(r) > 0]
    sr = np.mean(returns) / np.std(returns, ddof=1) if np.std(returns) > 0 else 0.0
    from scipy.stats import kurtosis, skew

    return float(S.deflated_sharpe_ratio(sr, len(returns), max(n_trials, 2), float(np.var(sharpes)) if len(sharpes) > 1
                                         else 1.0 / len(returns), float(skew(returns)),
                                         float(kurtosis(returns, fisher=False))))


def _pbo_note(results: list[ModelResult], all_returns: list[np.ndarray]) -> str:
    """PBO by CSCV over the models of this run taken as the trials (per-bar net returns, 16 blocks)."""
    live = [(r.name, x) for r, x in zip(results, all_returns) if np.std(x) > 0]
    if len(live) < 2:
        return "probability of backtest overfitting: not computed (fewer than two models traded)"
    pbo = S.probability_of_backtest_overfitting(np.column_stack([x for _, x in live]), n_partitions=16)
    return (f"probability of backtest overfitting (CSCV over the {len(live)} models that traded, "
            f"{pbo.n_combinations} combinations): {pbo.pbo:.2f}; P(selected model loses out of sample) = "
            f"{pbo.prob_oos_loss:.2f}")


def _best(results: list[ModelResult]) -> ModelResult | None:
    """The result with the highest net Sharpe among those that traded."""
    traded = [r for r in results if np.isfinite(r.metrics.get("sharpe", np.nan))]
    return max(traded, key=lambda r: r.metrics["sharpe"]) if traded else None


def verdict(best: ModelResult | None) -> str:
    if best is None:
        return "no significant edge: no model traded after the cost-aware filter (every net Sharpe is undefined)"
    sharpe, dsr = best.intervals["sharpe"], best.metrics.get("deflated_sharpe", float("nan"))
    pt = best.tests["pesaran_timmermann"]["p_value"]
    reasons = []
    if not sharpe.low > 0:
        reasons.append(f"its net Sharpe interval [{sharpe.low:.2f}, {sharpe.high:.2f}] includes 0")
    if not dsr > 0.95:
        reasons.append(f"its Deflated Sharpe is {dsr:.2f} (≤ 0.95)")
    if not float(pt) < 0.05:
        reasons.append(f"its direction is not significantly better than chance (PT p = {float(pt):.3f})")
    if not reasons:
        return f"significant edge after costs: {best.name} (net Sharpe {sharpe.value:.2f} [{sharpe.low:.2f}, {sharpe.high:.2f}], DSR {dsr:.2f})"
    return f"no significant edge: the best model by net Sharpe, {best.name}, fails: " + "; ".join(reasons)


def evaluate_models(cfg: Config, run_id: str, models: list[str], *, shuffle_seed: int | None = None,
                    leave_free: float = 0.0) -> tuple[dict[str, pd.DataFrame], list[dict]]:
    """Walk-forward every model; (predictions by model, fold summaries).

    Models that train through Ray Train (``backend: ray``) run their walk-forward from the driver, in a
    thread beside the others (one parallel item each): a Ray Train fit started from inside a Ray task
    would wait for CPUs that the task's siblings hold. The other models run as Ray items, each split into
    ``evaluation.fold_chunks[model]`` items over its folds. ``leave_free``: CPUs to keep unreserved for a
    Ray Train fit running elsewhere (the final fit in the background)."""
    extra = {"shuffle_seed": shuffle_seed} if shuffle_seed is not None else {}
    on_driver = [m for m in models if ec_backend(cfg, m) == "ray"]
    chunks = {m: max(1, int(cfg.evaluation.fold_chunks.get(m, 1))) for m in models if m not in on_driver}
    items = [{"model": m, "run_id": run_id, **extra, **({"chunk": k, "n_chunks": n} if n > 1 else {})}
             for m, n in chunks.items() for k in range(n)]
    items.sort(key=lambda it: -chunks[it["model"]])  # the long models' chunks start first
    outs: list[dict] = []
    from concurrent.futures import ThreadPoolExecutor

    import ray

    from cryptopredict.parallel import absolute_paths, connect_ray

    started = (cfg.ray.parallelism != "serial" or bool(on_driver)) and connect_ray(cfg)
    try:
        per_item = 1.0
        if ray.is_initialized():
            # the items reserve a little less than a CPU each, so that a Ray Train worker can start whenever
            # its fit comes (the cores are shared, none is left idle)
            total = float(ray.cluster_resources().get("CPU", 1))
            reserved = sum(_reserved_cpus(cfg, m) for m in on_driver) + leave_free
            per_item = max(0.1, min(1.0, (total - reserved) / max(1.0, total))) if reserved else 1.0
        with ThreadPoolExecutor(max_workers=1) as pool:
            futures = [pool.submit(walk_forward_model, absolute_paths(cfg), {"model": m, "run_id": run_id,
                                                                             **extra}) for m in on_driver]
            outs = parallel_map(cfg, items, walk_forward_model, desc="walk-forward",
                                num_cpus=per_item) if items else []
            outs += [f.result() for f in futures]
    finally:
        if started:
            ray.shutdown()
    for m, n in chunks.items():
        if n > 1:
            merge_chunks(cfg, run_id, m, sorted(o["chunk"] for o in outs if o["model"] == m and o["rows"]))
    frames = {m: read_predictions(cfg, run_id, m) for m in models}
    ordered = {m: frames[m] for m in models}
    for name in list(ordered):
        ordered.update(member_frames(name, ordered[name]))
    return ordered, outs[0]["folds"]


def _reserved_cpus(cfg: Config, model: str) -> float:
    """CPUs a Ray Train model's workers reserve while it fits."""
    p = cfg.evaluation.model_params.get(model, {})
    return float(p.get("cpus_per_worker", 1.0)) * int(p.get("num_workers", 1))


def tuning_record(path: str | None) -> tuple[int, list[str]]:
    """(trials, report notes) of a `cryptopredict tune` summary: every configuration tried counts in the
    Deflated Sharpe; the PBO of picking the best trial per model (CSCV over the completed trials' per-bar
    validation log loss, before the test span) is reported."""
    if not path:
        return 0, []
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"evaluation.tuning_summary {path!r} does not exist (run `cryptopredict tune`)")
    summary = json.loads(p.read_text())
    notes = [f"tuning ({p}): {summary['n_trials']} configurations tried on data before "
             f"{summary['test_start']}, counted as trials in the Deflated Sharpe"]
    for model, s in summary.get("models", {}).items():
        pbo = s.get("pbo")
        if pbo:
            notes.append(f"PBO of the tuning selection for {model}: {pbo['pbo']:.2f} (CSCV over {pbo['trials']} "
                         f"completed trials, {pbo['bars']} validation bars, {pbo['combinations']} combinations)")
        else:
            notes.append(f"PBO of the tuning selection for {model}: not computed (fewer than two completed "
                         "trials with per-bar scores)")
    return int(summary["n_trials"]), notes


def ec_backend(cfg: Config, model: str) -> str:
    """The training backend a model's parameters ask for (``local`` unless ``backend: ray``)."""
    return str(cfg.evaluation.model_params.get(model, {}).get("backend", "local"))


MEMBER_SEP = "__"


def member_frames(name: str, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each ensemble member's own out-of-sample predictions (``<member>__p_buy`` … columns of the
    ensemble's frame) as a frame named ``<ensemble>.<member>``, scored like any model."""
    members = sorted({c.split(MEMBER_SEP)[0] for c in frame.columns if c.endswith(MEMBER_SEP + "p_buy")})
    shared = ["y_true", "fwd_return", "fwd_vol", "sigma", "fold", "fitted_at_fold", "dead_zone_k"]
    out = {}
    for m in members:
        cols = {f"{m}{MEMBER_SEP}{c}": c for c in ("p_sell", "p_hold", "p_buy", "log_vol", "log_vol_var",
                                                   "confidence")}
        out[f"{name}.{m}"] = frame[list(cols)].rename(columns=cols).join(
            frame[[c for c in shared if c in frame.columns]])
    return out


def _canary(cfg: Config, name: str, frames: dict[str, pd.DataFrame], market: Market) -> CanaryResult:
    """Passes when the directional accuracy CI contains 0.5 and the net Sharpe CI does not exclude 0
    from above (no edge), i.e. the pipeline finds nothing where there is nothing."""
    model = cfg.evaluation.canaries.model
    frame = frames[model]
    boot = dict(horizon=cfg.features.horizon, n_boot=cfg.evaluation.bootstrap_samples, seed=cfg.seed)
    hits, times = _directional(frame)
    acc = _interval(S.block_bootstrap_ci(np.mean, hits, time=times, **boot))
    bt, _ = run_backtest(frame, model, market, cfg)
    r = bt.returns
    sharpe = S.block_bootstrap_ci(M.sharpe_ratio, r, **boot) if np.std(r) > 0 else None
    sr = float(np.mean(r) / np.std(r, ddof=1)) if np.std(r) > 0 else 0.0
    psr = float(S.probabilistic_sharpe_ratio(sr, len(r)))
    contains = acc.low <= 0.5 <= acc.high
    no_edge = sharpe is None or sharpe.low <= 0
    sharpe_txt = "no trades" if sharpe is None else f"net Sharpe {sharpe.estimate:.2f} [{sharpe.low:.2f}, {sharpe.high:.2f}]"
    note = (f"directional accuracy {acc.value:.3f} [{acc.low:.3f}, {acc.high:.3f}] "
            f"{'contains' if contains else 'EXCLUDES'} 0.5; {sharpe_txt}"
            f"{'' if no_edge else ' EXCLUDES 0'}; PSR {psr:.2f} (iid bars assumed)")
    return CanaryResult(name, acc, 0.5, psr, bool(contains and no_edge), note)


def run_canaries(cfg: Config, run_id: str, run_dir: Path, *, leave_free: float = 0.0) -> list[CanaryResult]:
    from cryptopredict.features.pipeline import build_features

    cc = cfg.evaluation.canaries
    base = cfg.model_copy(deep=True)
    base.ingest.symbols = list(cc.symbols)
    base.evaluation.max_folds = cc.max_folds
    out = []
    # (b) real features, labels shuffled within folds
    frames, _ = evaluate_models(base, f"{run_id}-canary-shuffled", [cc.model], shuffle_seed=cc.seed,
                                leave_free=leave_free)
    span = frames[cc.model].index.get_level_values("timestamp")
    market = load_market(open_lake(base), base, span.min(), span.max())
    out.append(_canary(base, "shuffled_labels", frames, market))
    # (a) a geometric random walk with each coin's volatility, through ingestion, features and walk-forward
    rw = base.model_copy(deep=True)
    rw.lake.root = str(run_dir / "canary_lake")
    rw.features.families = list(cc.families)  # type: ignore[assignment]
    real, fake_lake = open_lake(cfg), open_lake(rw)
    for i, s in enumerate(cc.symbols):
        part = partition_path(OHLCV, {"exchange": cfg.ingest.exchange, "symbol": s, "timeframe": cfg.ingest.timeframe})
        bars = real.read_partition("ohlcv", part)
        ingest_ohlcv(fake_lake, random_walk_bars(bars, cc.seed + i), exchange=cfg.ingest.exchange, symbol=s,
                     timeframe=cfg.ingest.timeframe, cfg=rw)
    build_features(rw)
    frames, _ = evaluate_models(rw, f"{run_id}-canary-rw", [cc.model], leave_free=leave_free)
    span = frames[cc.model].index.get_level_values("timestamp")
    out.append(_canary(rw, "random_walk", frames, load_market(fake_lake, rw, span.min(), span.max())))
    return out


def evaluate(cfg: Config, run_id: str | None = None) -> tuple[RunResult, Path]:
    """The whole evaluation; returns the result and the report directory.

    The final fits (``evaluation.final_fit``) run in background threads: a Ray Train model's from the start,
    beside the walk-forward (the longest chain of work is that model's own walk-forward, so its final fit
    must not wait for it), the others' once the walk-forward is done (beside the scoring, canaries and
    report). The canaries, too, run in a background
    thread beside the scoring; they leave the CPUs of the Ray Train workers unreserved so neither waits for
    the other."""
    from concurrent.futures import ThreadPoolExecutor

    from cryptopredict.parallel import absolute_paths, connect_ray

    cfg = absolute_paths(cfg)
    run_id = run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_dir = Path(cfg.run_dir) / run_id
    remote = [m for m in cfg.evaluation.models if ec_backend(cfg, m) == "ray"]
    # one Ray runtime for everything below (nested connects are no-ops), so a background fit keeps it
    started = (cfg.ray.parallelism != "serial" or bool(remote)) and connect_ray(cfg)
    try:
        # background threads: the Ray Train models' final fits, the other models' final fits, the canaries
        with ThreadPoolExecutor(max_workers=3) as pool:
            return _evaluate(cfg, run_id, run_dir, pool, sum(_reserved_cpus(cfg, m) for m in remote))
    finally:
        if started:
            import ray

            ray.shutdown()


def _evaluate(cfg: Config, run_id: str, run_dir: Path, pool, final_cpus: float) -> tuple[RunResult, Path]:  # type: ignore[no-untyped-def]
    from cryptopredict.evaluation.report import write_report

    from cryptopredict.evaluation.scoring import final_fit

    ec = cfg.evaluation
    # a Ray Train model's final fit needs nothing from the walk-forward: it starts now, on its own workers,
    # beside the walk-forward (whose items leave those workers' CPUs unreserved)
    early: dict[str, Future] = {m: pool.submit(final_fit, cfg, run_dir, [m]) for m in ec.models
                                if ec.final_fit and ec_backend(cfg, m) == "ray"}
    frames, folds = evaluate_models(cfg, run_id, list(ec.models), leave_free=final_cpus if early else 0.0)
    rest = [m for m in ec.models if m not in early]
    final = pool.submit(final_fit, cfg, run_dir, rest) if ec.final_fit and rest else None
    # the canaries need only the configuration: they run (mostly in Ray workers) beside the scoring below
    canary_job = pool.submit(run_canaries, cfg, run_id, run_dir, leave_free=final_cpus if ec.final_fit else 0.0) \
        if ec.canaries.enabled else None
    span = next(iter(frames.values())).index.get_level_values("timestamp")
    lead = pd.Timedelta(cfg.ingest.timeframe) * ec.portfolio.cov_window_bars
    history = load_market(open_lake(cfg), cfg, span.min() - lead, span.max())
    market = history.since(span.min())
    bench = buy_and_hold(market, cfg)
    results, all_returns = [], []
    for i, (name, frame) in enumerate(frames.items()):
        bt, targets = run_backtest(frame, name, market, cfg)
        res = score_model(name, frame, bt, bench, targets, cfg, seed=cfg.seed + i)
        results.append(res)
        all_returns.append(bt.returns)
    add_dm_tests(results, frames, cfg.features.horizon)
    best = _best(results)
    pc = ec.portfolio
    sources = [r for r in results if r.name in pc.models] if pc.models is not None else [best] if best else []
    notes = []
    if pc.methods and sources:
        started = time.perf_counter()
        extra, extra_returns = allocation_results(cfg, sources, frames, history, bench,
                                                  cfg.seed + len(results))
        names = [r.name for r in sources]
        log.info("allocations %s of %s: %.1f s", pc.methods, names, time.perf_counter() - started)
        results += extra
        all_returns += extra_returns
        notes.append(f"allocations across coins ({', '.join(pc.methods)}) of {', '.join(names)}"
                     f"{' (the best model by net Sharpe)' if pc.models is None else ''}: long only, "
                     f"rebalanced every {pc.rebalance_bars} bars at the close, covariance of the trailing "
                     f"{pc.cov_window_bars} bars' log returns; counted as trials in the Deflated Sharpe "
                     "and PBO")
    tuned_trials, tuning_notes = tuning_record(ec.tuning_summary)
    notes += tuning_notes
    n_trials = len(results) + ec.n_trials_extra + tuned_trials
    for res, r in zip(results, all_returns):
        res.metrics["deflated_sharpe"] = deflated_sharpe(r, all_returns, n_trials)
    pbo_note = _pbo_note(results, all_returns)
    best = _best(results)
    canaries = canary_job.result() if canary_job is not None else []
    run = RunResult(
        run_id=run_id, created_at=pd.Timestamp.now(tz="UTC").isoformat(),
        data_span=(span.min().isoformat(), span.max().isoformat()), symbols=list(cfg.ingest.symbols),
        horizon=cfg.features.horizon, folds=folds, models=results,
        benchmark_equity=pd.Series(bench.equity / bench.initial_equity, index=bench.index),
        prices=market.close, canaries=canaries, verdict=verdict(best), n_trials=n_trials,
        config=cfg.model_dump(mode="json"),
        notes=[f"best model by net Sharpe: {best.name if best else 'none (no trades)'}",
               "costs: fees and slippage per side as configured; positions from the risk manager; "
               "signals formed at a bar's close trade at the next bar's open", pbo_note, *notes])
    write_report(run, run_dir)
    for future in [*early.values(), *([final] if final is not None else [])]:
        future.result()
    return run, run_dir
