"""Walk-forward evaluation of one model: fit on each fold's training part, predict its test part.

Per fold: the direction dead zone (``DirectionLabeler``) is fitted on the training rows, then fixes the
classes of the validation and test rows; the model sees only the training Fold (and the validation Fold for
early stopping). Training rows are taken every ``train_stride`` bars (overlapping h-bar labels carry little
extra information and cost time); test rows are every bar. Expensive models may be refitted every k folds
(``evaluation.refit_every``): a fit at fold i then also predicts folds i+1 … i+k−1, all of which lie after
its training span, so every prediction stays out-of-sample (the classes of each fold still come from that
fold's own training rows, the same for every model). Out-of-sample predictions of all folds are
written to the lake (``predictions/model=<name>``) for the backtest and the report.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from cryptopredict.config import Config
from cryptopredict.data.ingest import open_lake
from cryptopredict.evaluation.dataset import load_panel, make_fold
from cryptopredict.evaluation.splits import FoldSpec, SplitConfig, walk_forward_splits
from cryptopredict.labels import DirectionLabeler
from cryptopredict.models.base import build_model, model_class

log = logging.getLogger(__name__)

PRED_KEY = ("symbol", "timestamp")


def fold_specs(timestamps: pd.DatetimeIndex, cfg: Config) -> list[FoldSpec]:
    """Walk-forward folds whose test spans start at ``evaluation.test_start`` and tile time after it."""
    ec, horizon = cfg.evaluation, cfg.features.horizon
    first = timestamps.min()
    start = pd.Timestamp(ec.test_start).tz_convert("UTC") if pd.Timestamp(ec.test_start).tzinfo else \
        pd.Timestamp(ec.test_start, tz="UTC")
    bar = pd.Timedelta(ec.split.bar)
    initial = int((start - first) / bar)
    if initial <= horizon:
        raise ValueError(f"evaluation.test_start {start} leaves no training data before it (data from {first})")
    split = SplitConfig(**{**ec.split.model_dump(), "initial_train_bars": initial})
    return walk_forward_splits(timestamps, split, horizon)


def _stride_mask(timestamps: pd.DatetimeIndex, stride: int) -> np.ndarray:
    hours = (timestamps.asi8 // 3_600_000_000_000).astype(np.int64)
    return (hours % stride) == 0


def chunk_groups(n_specs: int, refit: int, n_chunks: int, costs: list[float] | None = None) -> list[list[int]]:
    """The first fold of each refit group, split into ``n_chunks`` contiguous runs (empty runs dropped).

    ``costs`` (one per fold: what a fit at that fold costs, e.g. its training rows): the runs are balanced so that the costliest run is
    as cheap as possible (an expanding window makes late fits several times dearer than early ones, and
    the walk-forward waits for its slowest item); without costs every group counts the same."""
    starts = list(range(0, n_specs, refit))
    n = max(1, min(n_chunks, len(starts)))
    if costs is None:
        return [list(c) for c in np.array_split(np.asarray(starts, dtype=int), n) if len(c)]
    if len(costs) != n_specs:
        raise ValueError(f"{len(costs)} costs for {n_specs} folds")
    weights = [float(costs[s]) for s in starts]
    return [[starts[i] for i in run] for run in _balanced_runs(weights, n)]


def _balanced_runs(weights: list[float], n: int) -> list[list[int]]:
    """Split positions 0..len(weights)-1 into ``n`` non-empty contiguous runs minimising the largest sum
    (linear partition by dynamic programming)."""
    m = len(weights)
    prefix = np.concatenate([[0.0], np.cumsum(weights)])
    inf = float("inf")
    # best[k][j]: the smallest largest-run sum splitting the first j positions into k runs
    best = [[inf] * (m + 1) for _ in range(n + 1)]
    cut = [[0] * (m + 1) for _ in range(n + 1)]
    best[0][0] = 0.0
    for k in range(1, n + 1):
        for j in range(k, m + 1):
            for i in range(k - 1, j):
                cost = max(best[k - 1][i], prefix[j] - prefix[i])
                if cost < best[k][j] - 1e-12:
                    best[k][j], cut[k][j] = cost, i
    runs, j = [], m
    for k in range(n, 0, -1):
        i = cut[k][j]
        runs.append(list(range(i, j)))
        j = i
    return runs[::-1]


def walk_forward_model(cfg: Config, item: dict) -> dict:
    """All folds for one model (``item = {"model": name, "run_id": id}``); predictions to the lake.

    With ``item["chunk"]`` and ``item["n_chunks"]`` only that share of the refit groups
    (``chunk_groups``) is run and written to the partition ``chunk=<k>`` (``merge_chunks`` joins them).
    With ``item["shuffle_seed"]`` (the shuffled-labels canary) the label rows (return, volatility, σ)
    are permuted within each fold's training part and within its test part before anything is fitted.
    """
    name, run_id = item["model"], item["run_id"]
    shuffle_seed = item.get("shuffle_seed")
    ec, fc = cfg.evaluation, cfg.features
    started = time.perf_counter()
    lake = open_lake(cfg)
    X, labels = load_panel(lake, list(cfg.ingest.symbols), fc.horizon, fc.label_vol_window)
    corr = lake.read_frame("correlations") if getattr(model_class(name), "uses_correlations", False) else None
    ts = pd.DatetimeIndex(X.index.get_level_values("timestamp"))
    specs = fold_specs(ts, cfg)
    if ec.max_folds:
        specs = specs[: ec.max_folds]
    original = labels
    stride = _stride_mask(ts, ec.train_stride)
    refit = max(1, int(ec.refit_every.get(name, 1)))
    chunk = item.get("chunk")
    starts: list[int] | range = range(0, len(specs), refit)
    if chunk is not None:
        # balanced by the fits' cost, which grows faster than the expanding window's rows (more boosting
        # rounds survive early stopping on more data: LightGBM, fold 0 → 13, rows ×2.2, fit time ×4.6)
        runs = chunk_groups(len(specs), refit, int(item.get("n_chunks", 1)),
                            costs=[float((s.train_mask & stride).sum()) ** 2 for s in specs])
        if chunk >= len(runs):  # fewer refit groups than chunks: nothing left for this one
            return {"model": name, "rows": 0, "folds": [s.summary() for s in specs],
                    "seconds": time.perf_counter() - started, "chunk": chunk}
        starts = runs[chunk]
    frames = []
    for first in starts:
        group = specs[first:first + refit]
        model, fitted_on = None, group[0]
        for spec in group:
            if shuffle_seed is not None:
                labels = _shuffled(original, [spec.train_mask | spec.valid_mask, spec.test_mask],
                                   shuffle_seed + spec.index)
            known = labels["fwd_return"].notna().to_numpy() & labels["sigma"].notna().to_numpy()
            train_mask = spec.train_mask & stride & known
            # every fold's classes come from its own training rows, whichever fit predicts it
            labeler = DirectionLabeler(fc.horizon, ec.hold_share).fit(
                labels["fwd_return"][train_mask], labels["sigma"][train_mask])
            if model is None:
                valid_mask = spec.valid_mask & stride & known
                train = make_fold(X, labels, train_mask, labeler, fc.horizon, f"fold{spec.index}-train", corr)
                valid = make_fold(X, labels, valid_mask, labeler, fc.horizon, f"fold{spec.index}-valid", corr) \
                    if valid_mask.any() else None
                model = build_model(name, **ec.model_params.get(name, {}))
                model.fit(train, valid)
                log.info("%s fold %d: fitted on %d rows", name, spec.index, len(train))
            test = make_fold(X, labels, spec.test_mask, labeler, fc.horizon, f"fold{spec.index}-test", corr)
            pred = model.predict(test).to_frame().drop(columns="model")
            pred["y_true"] = test.y.to_numpy()
            pred["fwd_return"] = test.fwd_return.to_numpy()
            pred["fwd_vol"] = test.fwd_vol.to_numpy()
            pred["sigma"] = test.sigma.to_numpy()
            pred["fold"] = spec.index
            pred["fitted_at_fold"] = fitted_on.index
            pred["dead_zone_k"] = labeler.k
            frames.append(pred)
            log.info("%s fold %d: test %d rows (model fitted at fold %d)", name, spec.index, len(test),
                     fitted_on.index)
    out = pd.concat(frames).reset_index()
    part = {"run": run_id, "model": name, **({"chunk": chunk} if chunk is not None else {})}
    lake.write_frame("predictions", out, PRED_KEY, part)
    return {"model": name, "rows": len(out), "folds": [s.summary() for s in specs],
            "seconds": time.perf_counter() - started, "chunk": chunk}


def merge_chunks(cfg: Config, run_id: str, model: str, chunks: list[int]) -> None:
    """Join a model's chunked predictions (chunks in fold order) into its ``predictions/run=…/model=…``
    partition."""
    lake = open_lake(cfg)
    parts = [lake.read_frame("predictions", {"run": run_id, "model": model, "chunk": k}) for k in chunks]
    missing = [k for k, p in zip(chunks, parts) if p.empty]
    if missing:
        raise RuntimeError(f"walk-forward of {model!r} in run {run_id!r}: chunks {missing} wrote no predictions")
    out = pd.concat([p.drop(columns=["run", "model", "chunk"], errors="ignore") for p in parts], ignore_index=True)
    lake.write_frame("predictions", out, PRED_KEY, {"run": run_id, "model": model})


def _shuffled(labels: pd.DataFrame, masks: list[np.ndarray], seed: int) -> pd.DataFrame:
    """``labels`` with whole label rows permuted inside each mask (the canary's label shuffle)."""
    rng = np.random.default_rng(seed)
    values = labels.to_numpy().copy()
    for mask in masks:
        idx = np.flatnonzero(mask)
        values[idx] = values[rng.permutation(idx)]
    return pd.DataFrame(values, index=labels.index, columns=labels.columns)


def read_predictions(cfg: Config, run_id: str, model: str) -> pd.DataFrame:
    df = open_lake(cfg).read_frame("predictions", {"run": run_id, "model": model})
    if df.empty:
        raise ValueError(f"no predictions for model {model!r} in run {run_id!r}")
    return df.drop(columns=["run", "model"], errors="ignore").set_index(list(PRED_KEY))
