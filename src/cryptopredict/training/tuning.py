"""Ray Tune over the deep ensemble: a search space per member net and one for the Bayesian fusion, ASHA
early stopping, results under ``<run_dir>/<run id>/tuning/``.

What a trial sees — and why the test folds are safe. Tuning reads ONLY rows stamped before
``evaluation.test_start`` minus the purge (``evaluation.split.purge_bars``, at least the label horizon h),
so that no label of a tuning row reaches into the first test span; the windows' feature panel is cut at
the same bar. Inside that span the walk-forward machinery (``evaluation.splits.walk_forward_splits``) cuts
``tuning.n_folds`` inner folds whose validation windows tile the END of the pre-test span; each inner
fold's training rows end ``purge + embargo`` bars before its validation window, its dead zone and
feature scaler are fitted on its training rows only, and training rows are every ``train_stride``-th bar,
as in ``evaluation.walkforward``. No walk-forward test fold — the last one or any other — is ever scored
by a trial, so the tuned settings are chosen without looking at any test span ("do not tune on the last
fold more than on the others": tuning uses none of them).

Member trials (``transformer``, ``bilstm``, ``cnn_lstm``, ``gnn``) train one net in the trial's process
with ``training.trainer.train_net`` on each inner fold in turn and call ``ray.tune.report`` after every
epoch (``training_iteration`` = fold·max_epochs + epoch), so ``ASHAScheduler`` compares trials at the same
fold and epoch and stops the bad ones; a fold that stops early by patience keeps reporting its best loss
until ``max_epochs``. A trial's score (``objective``) is the mean over inner folds of its best validation
loss. Fusion trials take FIXED member outputs on the validation rows (each member trained once with this
run's best settings, else the base settings; in the driver, or in one Ray task when trials use GPUs),
fit ``BayesianFusion`` on the earlier part of the validation bars and score its direction NLL on the
later ``tuning.fusion_holdout`` share (purged by h). Fusion trials report once: no early stopping.

The data go to the object store once (``ray.put`` of one ``Payload`` per inner fold) and every trial of
every model reads them from there. ``tuning.json`` records the best configuration per model, the number
of trials (every configuration tried counts, stopped early or not), the overrides that apply the best
settings to ``evaluation.model_params`` and ``--set evaluation.n_trials_extra=N``, which makes the
evaluation's Deflated Sharpe count the tuning trials.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from cryptopredict.config import Config
from cryptopredict.evaluation.dataset import load_panel, make_fold
from cryptopredict.evaluation.splits import SplitConfig, resolve_embargo, walk_forward_splits
from cryptopredict.evaluation.walkforward import _stride_mask
from cryptopredict.labels import DirectionLabeler
from cryptopredict.models.base import Fold
from cryptopredict.models.ensemble import make_payload as ensemble_payload
from cryptopredict.models.ensemble import (
    GRAPH_MEMBERS,
    MEMBER_NETS,
    EnsembleSettings,
    Payload,
    _fusion_inputs,
    build_net,
    member_outputs,
    member_sources,
)
from cryptopredict.training.settings import MEMBER_NAMES, TuningConfig, flatten_space
from cryptopredict.training.trainer import (
    TrainConfig,
    TrainResult,
    resolve_device,
    train_net,
)

log = logging.getLogger(__name__)

SUMMARY_FILE = "tuning.json"
BEST_YAML = "best.yaml"
METRIC = "valid_loss"
DIVERGED_LOSS = 1e6  # reported instead of a non-finite validation loss (ASHA needs comparable numbers)
ENSEMBLE_KEY = "evaluation.model_params.ensemble"

Report = Callable[[dict[str, Any]], None]


# ------------------------------------------------------------------------------------------ the data

@dataclass
class TuningData:
    """What every trial sees: one ``Payload`` per inner fold (time order). Every row and every bar of every
    panel is before ``data_end`` = ``test_start`` − purge."""

    folds: list[Payload]
    spans: list[dict[str, Any]]
    test_start: pd.Timestamp
    data_end: pd.Timestamp
    horizon: int
    bar: pd.Timedelta

    def last_times(self) -> dict[str, str]:
        """The latest training/validation row and the latest panel bar over all folds (ISO)."""
        rows = max(_row_times(p).max() for p in self.folds)
        bars = max(p.panel.times.max() for p in self.folds)
        return {"last_row": rows.isoformat(), "last_panel_bar": bars.isoformat()}


def _utc(value: str | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_convert("UTC") if ts.tzinfo else ts.tz_localize("UTC")


def _row_times(payload: Payload) -> pd.DatetimeIndex:
    times = payload.panel.times
    return times[np.concatenate([payload.train_rows[1], payload.valid_rows[1]])]


def tuning_window(cfg: Config) -> tuple[pd.Timestamp, pd.Timestamp, int]:
    """(test_start, data_end, purge bars): tuning uses rows stamped before ``data_end`` only."""
    ec, horizon = cfg.evaluation, cfg.features.horizon
    purge = max(horizon, ec.split.purge_bars if ec.split.purge_bars is not None else horizon)
    test_start = _utc(ec.test_start)
    return test_start, test_start - purge * pd.Timedelta(ec.split.bar), purge


def make_payload(train: Fold, valid: Fold, settings: EnsembleSettings, *, correlations: bool) -> Payload:
    """The tensors of one fit, exactly as ``DeepEnsemble.fit`` builds them."""
    return ensemble_payload(train, valid, settings, correlations=correlations)[0]


def prepare_tuning_data(X: pd.DataFrame, labels: pd.DataFrame, cfg: Config, settings: EnsembleSettings,
                        correlations: pd.DataFrame | None = None) -> TuningData:
    """Inner folds inside the pre-test span (see the module docstring). ``X``/``labels`` as
    ``evaluation.dataset.load_panel`` returns them (labels: fwd_return, fwd_vol, sigma); rows at or after
    ``data_end`` are dropped before anything else happens."""
    ec, tc, horizon = cfg.evaluation, cfg.tuning, cfg.features.horizon
    test_start, data_end, purge = tuning_window(cfg)
    ts_all = pd.DatetimeIndex(X.index.get_level_values("timestamp"))
    keep = np.asarray(ts_all < data_end)
    if not keep.any():
        raise ValueError(f"no data before evaluation.test_start {test_start} less the {purge}-bar purge: "
                         "nothing to tune on")
    X, labels = X[keep], labels[keep]
    if correlations is not None:
        correlations = correlations[np.asarray(pd.DatetimeIndex(correlations["timestamp"]) < data_end)]
    ts = ts_all[keep]
    bar = pd.Timedelta(ec.split.bar)
    valid_bars = tc.valid_bars or ec.split.valid_bars or ec.split.test_bars
    n_bars = int((ts.max() - ts.min()) / bar) + 1
    initial = n_bars - tc.n_folds * valid_bars
    if initial <= purge:
        raise ValueError(f"tuning: {tc.n_folds} validation windows of {valid_bars} bars do not fit in the "
                         f"{n_bars} bars before {data_end}; lower tuning.n_folds or tuning.valid_bars")
    split = SplitConfig(scheme=ec.split.scheme, bar=ec.split.bar, initial_train_bars=initial,
                        test_bars=valid_bars, n_folds=tc.n_folds, purge_bars=purge,
                        train_window_bars=ec.split.train_window_bars)
    specs = walk_forward_splits(ts, split, horizon)
    embargo = resolve_embargo(ec.split.embargo, n_bars)
    stride = _stride_mask(ts, ec.train_stride)
    known = labels["fwd_return"].notna().to_numpy() & labels["sigma"].notna().to_numpy()
    folds, spans = [], []
    for spec in specs:
        valid_start = spec.test[0].start  # the inner fold's "test" span is the tuning validation window
        train_mask = spec.train_mask & np.asarray(ts < valid_start - (purge + embargo) * bar) & stride & known
        valid_mask = spec.test_mask & stride & known
        if not train_mask.any() or not valid_mask.any():
            raise ValueError(f"tuning fold {spec.index}: no labelled training or validation rows "
                             f"(validation {spec.test[0].start} → {spec.test[0].end})")
        labeler = DirectionLabeler(horizon, ec.hold_share).fit(labels["fwd_return"][train_mask],
                                                              labels["sigma"][train_mask])
        train = make_fold(X, labels, train_mask, labeler, horizon, f"tune{spec.index}-train", correlations)
        valid = make_fold(X, labels, valid_mask, labeler, horizon, f"tune{spec.index}-valid", correlations)
        folds.append(make_payload(train, valid, settings, correlations=correlations is not None))
        spans.append({"index": spec.index, "train": [str(spec.train[0].start),
                                                     str(valid_start - (purge + embargo) * bar)],
                      "valid": [str(spec.test[0].start), str(spec.test[0].end)],
                      "n_train": int(train_mask.sum()), "n_valid": int(valid_mask.sum()),
                      "purge_bars": purge, "embargo_bars": embargo})
    data = TuningData(folds, spans, test_start, data_end, horizon, bar)
    log.info("tuning data: %d inner fold(s) before %s (test starts %s); %s", len(folds), data_end, test_start,
             data.last_times())
    return data


def load_tuning_data(cfg: Config, settings: EnsembleSettings, correlations: bool) -> TuningData:
    """``prepare_tuning_data`` on the lake's feature table and labels."""
    from cryptopredict.data.ingest import open_lake

    fc = cfg.features
    lake = open_lake(cfg)
    X, labels = load_panel(lake, list(cfg.ingest.symbols), fc.horizon, fc.label_vol_window)
    corr = lake.read_frame("correlations") if correlations else None
    if corr is not None and corr.empty:
        raise ValueError(f"no correlations table in the lake {cfg.lake.root!r} for the graph member; "
                         "run `cryptopredict features` with the cross_asset family")
    return prepare_tuning_data(X, labels, cfg, settings, corr)


# ---------------------------------------------------------------------------------- search spaces

def _domain(spec: Any) -> Any:
    from ray import tune

    if isinstance(spec, list):
        return tune.choice(spec)
    if not isinstance(spec, dict):
        return spec
    kind, args = next(iter(spec.items()))
    if kind == "value":
        return args
    if kind == "choice":
        return tune.choice(list(args))
    if kind == "grid":
        return tune.grid_search(list(args))
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint,
            "quniform": tune.quniform, "qloguniform": tune.qloguniform}[kind](*args)


def build_search_space(space: dict[str, Any]) -> dict[str, Any]:
    """A Ray Tune ``param_space`` from a plain search space (nested like the config: ``window``,
    ``train: {...}``, ``net: {...}``; specs as in ``training/settings.py``)."""
    from cryptopredict.training.settings import is_spec

    return {k: _domain(v) if is_spec(v) else build_search_space(v) for k, v in space.items()}


def _net_class(member: str) -> type:
    module, cls = MEMBER_NETS[member].split(":")
    return getattr(importlib.import_module(module), cls)


def check_space(model: str, space: dict[str, Any]) -> dict[str, Any]:
    """Raise a ValueError naming the setting when ``space`` tunes something ``model`` does not have."""
    from cryptopredict.models.fusion import BayesianFusion

    flat = flatten_space(space)
    if model == "fusion":
        allowed = set(inspect.signature(BayesianFusion.__init__).parameters) - {"self"}
        for path in flat:
            if path not in allowed:
                raise ValueError(f"tuning.search_spaces.fusion.{path}: not an argument of BayesianFusion "
                                 f"(known: {sorted(allowed)})")
        return space
    net_args = set(inspect.signature(_net_class(model).__init__).parameters) - {
        "self", "n_features", "window", "n_time_feats"}
    train_fields = set(TrainConfig.model_fields) - {"epochs", "device"}
    for path in flat:
        section, _, key = path.partition(".")
        if path == "window" or (section == "train" and key in train_fields) or (section == "net" and key in net_args):
            continue
        known = ["window", *(f"train.{f}" for f in sorted(train_fields)), *(f"net.{a}" for a in sorted(net_args))]
        raise ValueError(f"tuning.search_spaces.{model}.{path}: not a setting of {model} (known: {known})")
    return space


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` merged into a copy of ``base`` (mappings merge, anything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def member_update(member: str, config: dict[str, Any]) -> dict[str, Any]:
    """A member trial's config as an update of the ensemble settings (its window, its ``member_train``
    and its ``nets`` entries)."""
    out: dict[str, Any] = {}
    if "window" in config:
        out["window"] = config["window"]
    if config.get("train"):
        out["member_train"] = {member: dict(config["train"])}
    if config.get("net"):
        out["nets"] = {member: dict(config["net"])}
    return out


def member_settings(member: str, base: dict[str, Any], config: dict[str, Any], *, max_epochs: int,
                    device: str) -> EnsembleSettings:
    """Ensemble settings of a one-member trial: ``base`` with the trial's ``config`` applied, ``max_epochs``
    epochs, on ``device``."""
    params = deep_merge(base, member_update(member, config))
    params["members"] = [member]
    params["train"] = {**params.get("train", {}), "epochs": max_epochs, "device": device}
    own = params.setdefault("member_train", {}).setdefault(member, {})
    own.update(epochs=max_epochs, device=device)
    return EnsembleSettings(**params)


# ------------------------------------------------------------------------------ plain objectives

def train_member(member: str, net: torch.nn.Module, payload: Payload, settings: EnsembleSettings,
                 device: torch.device, on_epoch: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train one member on a payload's training rows with early stopping on its validation rows (the
    sources exactly as ``fit_components`` builds them)."""
    tr, va = member_sources(member, payload, settings)
    return train_net(net, tr, va, settings.train_for(member), device=device, on_epoch=on_epoch)


def _seed_offset(member: str) -> int:
    """The member's index among ``MEMBER_NETS`` (``fit_components`` seeds member i with ``train.seed + i``;
    with the default members, the same seed as in the evaluation)."""
    return list(MEMBER_NETS).index(member)


def member_objective(member: str, payloads: list[Payload], settings: EnsembleSettings, report: Report,
                     on_bar_losses: Callable[[np.ndarray], None] | None = None) -> dict[str, Any]:
    """Train ``member`` on every inner fold; ``report`` gets one metrics dict per epoch (padded to
    ``epochs`` per fold when patience stops a fold early). Returns the objective and per-fold bests."""
    cfg = settings.train_for(member)
    device = resolve_device(cfg.device)
    epochs = cfg.epochs
    n = len(payloads)
    bests: list[float] = []
    bar_losses: list[np.ndarray] = []
    iteration = 0
    for k, payload in enumerate(payloads):
        seen = {"last_row_s": float(_row_times(payload).max().timestamp()),
                "last_panel_bar_s": float(payload.panel.times.max().timestamp())}
        state = {"epoch": 0, "best": math.inf}

        def emit(loss: float, k: int = k, seen: dict[str, float] = seen, state: dict[str, float] = state,
                 trained: bool = False) -> None:
            nonlocal iteration, fold_losses
            loss = float(loss) if math.isfinite(loss) else DIVERGED_LOSS
            if trained and (fold_losses is None or loss < state["best"]):
                # the per-bar losses of the best epoch so far, saved BEFORE the report: Tune may end the
                # trial at any report (ASHA, or max_t reached)
                fold_losses = validation_bar_losses(member, net, payload, settings, device)
                if on_bar_losses is not None:
                    on_bar_losses(np.concatenate([*bar_losses, fold_losses]))
            state["epoch"] += 1
            state["best"] = min(state["best"], loss)
            iteration += 1
            done = state["epoch"] >= epochs
            report({METRIC: loss, "epoch": int(state["epoch"]), "fold": k, "best_valid_loss": state["best"],
                    "objective": float(np.mean([*bests, state["best"]])), "folds_complete": k + int(done),
                    "n_folds": n, "iteration": iteration, **seen})

        torch.manual_seed(settings.train.seed + _seed_offset(member))
        net = build_net(member, payload.panel.n_features, settings).to(device)
        fold_losses: np.ndarray | None = None
        res = train_member(member, net, payload, settings, device,
                           on_epoch=lambda row: emit(row["valid_loss"], trained=True))
        net.load_state_dict(res.state_dict)
        bar_losses.append(fold_losses if fold_losses is not None
                          else validation_bar_losses(member, net, payload, settings, device))
        while state["epoch"] < epochs:  # stopped by patience: its best epoch's weights stand
            emit(state["best"])
        bests.append(state["best"])
    return {"objective": float(np.mean(bests)), "fold_best": bests, "bar_losses": np.concatenate(bar_losses)}


def validation_bar_losses(member: str, net: torch.nn.Module, payload: Payload, settings: EnsembleSettings,
                          device: torch.device) -> np.ndarray:
    """Mean direction log loss per validation bar (time order) of a trained member: the per-period
    score of one trial, for the PBO of the tuning selection."""
    out = member_outputs(member, net, payload.panel, payload.targets, payload.valid_rows, settings, device)
    sym, tpos = payload.valid_rows
    y = payload.targets.y[torch.as_tensor(sym), torch.as_tensor(tpos)].numpy()
    known = y >= 0
    loss = -np.log(np.clip(out.proba[known, y[known]], 1e-15, 1.0))
    return pd.Series(loss).groupby(tpos[known]).mean().sort_index().to_numpy()


def tuning_pbo(bar_losses: list[np.ndarray], n_partitions: int = 16) -> dict[str, Any] | None:
    """PBO (CSCV) of picking the best of the completed trials, each scored by −log loss per validation bar;
    None when fewer than two trials share the same bars."""
    from cryptopredict.evaluation.stats import probability_of_backtest_overfitting

    if not bar_losses:
        return None
    n = max(set(len(b) for b in bar_losses), key=[len(b) for b in bar_losses].count)
    same = [b for b in bar_losses if len(b) == n]
    parts = min(n_partitions, 2 * (n // 4))
    if len(same) < 2 or parts < 2:
        return None
    res = probability_of_backtest_overfitting(-np.column_stack(same), n_partitions=parts, metric="mean")
    return {"pbo": float(res.pbo), "trials": len(same), "bars": int(n), "partitions": parts,
            "combinations": int(res.n_combinations), "score": "−mean log loss per validation bar"}


@dataclass
class FusionInputs:
    """Fixed member outputs on one inner fold's validation rows (time order), with their labels."""

    member_proba: np.ndarray  # (n, M, 3)
    member_mu: np.ndarray  # (n, M)
    member_var: np.ndarray  # (n, M)
    context: np.ndarray  # (n, K)
    y: np.ndarray  # (n,) class, NaN unknown
    log_vol: np.ndarray  # (n,) NaN unknown
    timestamps: np.ndarray  # (n,) int64 ns
    purge_ns: int
    members: list[str] = field(default_factory=list)

    def rows(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        return {"member_proba": self.member_proba[mask], "member_mu": self.member_mu[mask],
                "member_var": self.member_var[mask], "context": self.context[mask]}


def fusion_inputs(payload: Payload, settings: EnsembleSettings, horizon: int,
                  device: torch.device | None = None) -> FusionInputs:
    """Train every member of ``settings`` on the payload's training rows and return their outputs on its
    validation rows (what the fusion is fitted on in ``fit_components``)."""
    device = device or resolve_device(settings.train.device)
    panel, targets = payload.panel, payload.targets
    outs = []
    for i, member in enumerate(settings.members):
        torch.manual_seed(settings.train.seed + i)
        net = build_net(member, panel.n_features, settings).to(device)
        res = train_member(member, net, payload, settings, device)
        net.load_state_dict(res.state_dict)
        outs.append(member_outputs(member, net, panel, targets, payload.valid_rows, settings, device,
                                   payload.vol_norm))
    arrays = _fusion_inputs(outs, payload.valid_sigma)
    mean, std = payload.vol_norm
    sym, tpos = payload.valid_rows
    y = targets.y[sym, tpos].numpy().astype(float)
    y[y < 0] = np.nan
    step = panel.times[1] - panel.times[0] if len(panel.times) > 1 else pd.Timedelta(hours=1)
    return FusionInputs(**arrays, y=y, log_vol=mean + std * targets.log_vol[sym, tpos].numpy().astype(float),
                        timestamps=panel.times[tpos].as_unit("ns").asi8, purge_ns=int(horizon * step.value),
                        members=list(settings.members))


def fusion_objective(folds: list[FusionInputs], params: dict[str, Any], holdout: float) -> dict[str, float]:
    """Mean over folds of the fusion's held-out direction NLL (nats per labelled row) and Gaussian NLL of
    the log volatility: fitted on the validation bars before the last ``holdout`` share (less h bars),
    scored on that share."""
    from cryptopredict.models.fusion import BayesianFusion

    nll, vol_nll = [], []
    for f in folds:
        bars = np.unique(f.timestamps)
        cut = bars[min(len(bars) - 1, int(len(bars) * (1 - holdout)))]
        fit, held = f.timestamps < cut - f.purge_ns, f.timestamps >= cut
        if not fit.any() or not held.any():
            raise ValueError(f"fusion tuning: {len(bars)} validation bars are too few to hold out {holdout:.0%}")
        fusion = BayesianFusion(**params).fit(**f.rows(fit), y=f.y[fit], log_vol=f.log_vol[fit])
        out = fusion.predict(**f.rows(held))
        y, lv = f.y[held], f.log_vol[held]
        ok = np.isfinite(y)
        nll.append(float(-np.log(np.clip(out.proba[ok, y[ok].astype(int)], 1e-12, 1.0)).mean()))
        okv = np.isfinite(lv)
        var = np.maximum(out.log_vol_var[okv], 1e-12)
        vol_nll.append(float(np.mean(0.5 * (np.log(2 * np.pi * var) + (lv[okv] - out.log_vol[okv]) ** 2 / var))))
    return {METRIC: float(np.mean(nll)), "vol_nll": float(np.mean(vol_nll))}


# ------------------------------------------------------------------------------------- Ray layer

def _local(payload: Payload) -> Payload:
    """A payload read from the object store with its small row arrays copied (numpy arrays from the store
    are read-only, which torch warns about); the big tensors are shared as they are."""
    train = (np.array(payload.train_rows[0]), np.array(payload.train_rows[1]))
    valid = (np.array(payload.valid_rows[0]), np.array(payload.valid_rows[1]))
    return Payload(payload.panel, payload.targets, train, valid, np.array(payload.valid_sigma))


def _member_trainable(config: dict[str, Any], *, member: str, base: dict[str, Any], payload_refs: list[Any],
                      max_epochs: int, device: str, losses_dir: str) -> None:
    """A Tune function trainable: one member, one configuration, every inner fold."""
    import ray
    from ray import tune

    payloads = [_local(p) for p in ray.get(list(payload_refs))]
    settings = member_settings(member, base, config, max_epochs=max_epochs, device=device)
    out = Path(losses_dir) / f"{tune.get_context().get_trial_id()}.npy"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(losses: np.ndarray) -> None:  # atomic: a trial may be ended right after
        tmp = out.with_suffix(".tmp.npy")
        np.save(tmp, losses)
        tmp.replace(out)

    member_objective(member, payloads, settings, tune.report, on_bar_losses=save)


def _fusion_trainable(config: dict[str, Any], *, base_fusion: dict[str, Any], inputs: list[FusionInputs],
                      holdout: float) -> None:
    from ray import tune

    scores = fusion_objective(inputs, {**base_fusion, **config}, holdout)
    tune.report({**scores, "objective": scores[METRIC], "epoch": 1, "folds_complete": len(inputs),
                 "n_folds": len(inputs)})


def _fusion_inputs_task(settings: dict[str, Any], horizon: int, *payloads: Payload) -> list[FusionInputs]:
    s = EnsembleSettings(**settings)
    return [fusion_inputs(_local(p), s, horizon) for p in payloads]


def _trial_rows(grid: Any, max_t: int, n_folds: int, losses_dir: Path | None) -> list[dict[str, Any]]:
    rows = []
    for r in grid:
        m = r.metrics or {}
        iters = int(m.get("training_iteration", 0) or 0)
        complete = r.error is None and int(m.get("folds_complete", 0) or 0) >= n_folds
        rows.append({"trial_id": m.get("trial_id"), "config": _jsonable(r.config or {}),
                     "objective": _finite(m.get("objective")), "last_valid_loss": _finite(m.get(METRIC)),
                     "iterations": iters, "complete": complete,
                     "stopped_early": r.error is None and not complete and iters < max_t,
                     "error": None if r.error is None else _last_line(r.error),
                     "seconds": _finite(m.get("time_total_s")),
                     "last_row": _iso_s(m.get("last_row_s")), "last_panel_bar": _iso_s(m.get("last_panel_bar_s")),
                     "bar_losses_file": _bar_losses_file(losses_dir, m.get("trial_id")) if complete else None})
    return rows


BAR_LOSSES_DIR = "bar_losses"  # <tuning dir>/<model>/bar_losses/<trial id>.npy


def _bar_losses_file(losses_dir: Path | None, trial_id: str | None) -> str | None:
    if losses_dir is None or not trial_id or not (losses_dir / f"{trial_id}.npy").is_file():
        return None
    return str(losses_dir / f"{trial_id}.npy")


def _last_line(error: BaseException) -> str:
    """The last line of a trial's error (Ray prefixes the remote traceback)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _iso_s(x: Any) -> str | None:
    v = _finite(x)
    return None if v is None else pd.Timestamp(v, unit="s", tz="UTC").isoformat()


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _model_summary(model: str, rows: list[dict[str, Any]], experiment: Path, seconds: float) -> dict[str, Any]:
    complete = [r for r in rows if r["complete"] and r["objective"] is not None]
    if not complete:
        first = next((r["error"] for r in rows if r["error"]), "no trial completed")
        raise ValueError(f"tuning {model}: no trial completed ({len(rows)} run); first error: {first}")
    best = min(complete, key=lambda r: r["objective"])
    losses = [np.load(r["bar_losses_file"]) for r in complete if r.get("bar_losses_file")]
    return {"trials": len(rows), "completed": len(complete), "pbo": tuning_pbo(losses),
            "stopped_early": sum(r["stopped_early"] for r in rows), "errored": sum(bool(r["error"]) for r in rows),
            "best_config": best["config"], "best_objective": best["objective"], "best_trial": best["trial_id"],
            "experiment": str(experiment), "seconds": round(seconds, 2), "trial_results": rows}


def _device_name(tc: TuningConfig, base: EnsembleSettings) -> str:
    if tc.gpus_per_trial > 0:
        return base.train.device if base.train.device != "cpu" else "auto"
    return "cpu"


def _run_tuner(trainable: Any, param_space: dict[str, Any], name: str, storage: Path, tc: TuningConfig,
               seed: int, scheduler: Any) -> Any:
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    resources = {"CPU": tc.cpus_per_trial, **({"GPU": tc.gpus_per_trial} if tc.gpus_per_trial else {})}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=METRIC, mode="min", num_samples=tc.num_samples, scheduler=scheduler,
                                    search_alg=BasicVariantGenerator(random_state=seed),
                                    max_concurrent_trials=tc.max_concurrent_trials,
                                    time_budget_s=tc.time_budget_s, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=tc.verbose))
    return tuner.fit()


def tune_models(cfg: Config, *, run_id: str | None = None, data: TuningData | None = None
                ) -> tuple[dict[str, Any], Path]:
    """Tune every model of ``cfg.tuning.models`` in order on Ray (started locally unless one is running)
    and write ``tuning.json`` and ``best.yaml``; returns (summary, tuning directory). ``data``: prepared
    tuning data (default: from the lake)."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from cryptopredict.parallel import absolute_paths, connect_ray

    tc = cfg.tuning
    run_id = run_id or "tune-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_dir = (Path(cfg.run_dir) / run_id / "tuning").expanduser().absolute()
    eval_base = dict(cfg.evaluation.model_params.get("ensemble", {}))
    base = deep_merge(eval_base, tc.base_params)
    base_settings = EnsembleSettings(**base)
    spaces = {m: check_space(m, tc.space_for(m)) for m in tc.models}
    members = [m for m in tc.models if m in MEMBER_NAMES]
    need_corr = any(m in GRAPH_MEMBERS for m in members) or (
        "fusion" in tc.models and any(m in GRAPH_MEMBERS for m in base_settings.members))
    if data is None:
        data = load_tuning_data(cfg, base_settings, need_corr)
    seed = cfg.seed if tc.seed is None else tc.seed
    device = _device_name(tc, base_settings)
    max_t = len(data.folds) * tc.max_epochs
    started_ray = connect_ray(absolute_paths(cfg))
    summary_models: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        refs = [ray.put(p) for p in data.folds]  # shipped once; every trial of every model reads these
        for model in members:
            t0 = time.perf_counter()
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                                      grace_period=min(tc.grace_period, max_t), reduction_factor=tc.reduction_factor)
            trainable = tune.with_parameters(_member_trainable, member=model, base=base, payload_refs=refs,
                                             max_epochs=tc.max_epochs, device=device,
                                             losses_dir=str(out_dir / model / BAR_LOSSES_DIR))
            grid = _run_tuner(trainable, build_search_space(spaces[model]), model, out_dir, tc, seed, scheduler)
            rows = _trial_rows(grid, max_t, len(data.folds), out_dir / model / BAR_LOSSES_DIR)
            summary_models[model] = _model_summary(model, rows, out_dir / model, time.perf_counter() - t0)
            log.info("tuned %s: %d trials, best objective %.4f", model, len(rows),
                     summary_models[model]["best_objective"])
        if "fusion" in tc.models:
            t0 = time.perf_counter()
            fused = copy.deepcopy(base)
            for model in members:
                fused = deep_merge(fused, member_update(model, summary_models[model]["best_config"]))
            fused = _ensemble_window(fused, summary_models, members)[0]
            fused["train"] = {**fused.get("train", {}), "device": device}
            if tc.gpus_per_trial:  # on a GPU worker, like the trials
                task = ray.remote(num_cpus=tc.cpus_per_trial, num_gpus=tc.gpus_per_trial)(_fusion_inputs_task)
                inputs = ray.get(task.remote(EnsembleSettings(**fused).model_dump(), data.horizon, *refs))
            else:  # in this process: the members train once, and a fresh worker would cost more than it saves
                inputs = _fusion_inputs_task(EnsembleSettings(**fused).model_dump(), data.horizon, *data.folds)
            trainable = tune.with_parameters(_fusion_trainable, base_fusion=dict(base_settings.fusion),
                                             inputs=inputs, holdout=tc.fusion_holdout)
            grid = _run_tuner(trainable, build_search_space(spaces["fusion"]), "fusion", out_dir, tc, seed, None)
            rows = _trial_rows(grid, 1, len(inputs), None)
            summary_models["fusion"] = _model_summary("fusion", rows, out_dir / "fusion", time.perf_counter() - t0)
            summary_models["fusion"]["members"] = list(inputs[0].members)
    finally:
        if started_ray:
            ray.shutdown()
    summary = write_summary(cfg, run_id, out_dir, data, summary_models, time.perf_counter() - started)
    return summary, out_dir


# --------------------------------------------------------------------------------- the summary

def _ensemble_window(params: dict[str, Any], models: dict[str, Any], members: list[str]
                     ) -> tuple[dict[str, Any], str | None]:
    """The ensemble has ONE window: that of the tuned member with the lowest objective; a note when the
    members' best windows differ."""
    windows = {m: models[m]["best_config"]["window"] for m in members if "window" in models[m]["best_config"]}
    if not windows:
        return params, None
    best = min(windows, key=lambda m: models[m]["best_objective"])
    out = {**params, "window": windows[best]}
    if len(set(windows.values())) == 1:
        return out, None
    return out, (f"the members' best windows differ ({windows}); the ensemble shares one window: "
                 f"{windows[best]} from {best}, the member with the lowest validation loss")


def _flatten_values(tree: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    out = []
    for key, value in tree.items():
        path = f"{prefix}.{key}"
        if isinstance(value, dict) and value:
            out += _flatten_values(value, path)
        else:
            out.append((path, value))
    return out


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-3].strip() if text.endswith("...") else text


def ensemble_update(models: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The best settings as an update of ``evaluation.model_params.ensemble`` (and a window note)."""
    members = [m for m in models if m in MEMBER_NAMES]
    update: dict[str, Any] = {}
    for m in members:
        cfg = dict(models[m]["best_config"])
        cfg.pop("window", None)
        update = deep_merge(update, member_update(m, cfg))
    update, note = _ensemble_window(update, models, members)
    if "fusion" in models and models["fusion"]["best_config"]:
        update["fusion"] = dict(models["fusion"]["best_config"])
    return update, note


def write_summary(cfg: Config, run_id: str, out_dir: Path, data: TuningData, models: dict[str, Any],
                  seconds: float) -> dict[str, Any]:
    """``tuning.json`` (everything) and ``best.yaml`` (an ``evaluation`` section to paste into a config)."""
    n_trials = sum(m["trials"] for m in models.values())
    update, window_note = ensemble_update(models)
    params = copy.deepcopy(dict(cfg.evaluation.model_params))
    params["ensemble"] = deep_merge(params.get("ensemble", {}), update)
    for m in (m for m in models if m in MEMBER_NAMES):
        params[m] = deep_merge(params.get(m, {}), member_update(m, models[m]["best_config"]))
    set_lines = [f"--set {path}={_yaml_value(v)}" for path, v in _flatten_values(update, ENSEMBLE_KEY)]
    trials_line = f"--set evaluation.n_trials_extra={n_trials}"
    snippet = yaml.safe_dump({"evaluation": {"n_trials_extra": n_trials, "model_params": _jsonable(params)}},
                             sort_keys=False, width=10_000)
    header = (f"# cryptopredict tune {run_id}: best of {n_trials} trials on data before {data.data_end} "
              f"(evaluation.test_start {data.test_start}); paste into the config's evaluation section\n")
    summary = {
        "run_id": run_id, "created_at": pd.Timestamp.now(tz="UTC").isoformat(), "seconds": round(seconds, 2),
        "test_start": data.test_start.isoformat(), "data_end": data.data_end.isoformat(),
        "data_seen": data.last_times(), "horizon": data.horizon, "inner_folds": data.spans,
        "n_trials": n_trials, "n_trials_by_model": {m: s["trials"] for m, s in models.items()},
        "evaluate_overrides": [trials_line, *set_lines],
        "n_trials_note": (f"every configuration tried counts (stopped early or not): pass {trials_line} to "
                          "`cryptopredict evaluate` so that its Deflated Sharpe counts them (add the counts of "
                          "earlier tuning runs whose results you used)"),
        "window_note": window_note, "ensemble_update": update, "model_params": _jsonable(params),
        "yaml": header + snippet, "storage_path": str(out_dir), "config": cfg.tuning.model_dump(mode="json"),
        "models": models,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in ((SUMMARY_FILE, json.dumps(_jsonable(summary), indent=2)), (BEST_YAML, header + snippet)):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out_dir / name)
    return summary


def read_summary(path: str | Path) -> dict[str, Any]:
    """A ``tuning.json`` (or the tuning directory holding it)."""
    p = Path(path)
    p = p / SUMMARY_FILE if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"no {SUMMARY_FILE} at {str(path)!r}; run `cryptopredict tune` first")
    return json.loads(p.read_text())


def evaluation_overrides(path: str | Path) -> list[str]:
    """The ``key=value`` overrides (for ``load_config``) that apply a tuning run to an evaluation: the best
    ensemble settings and ``evaluation.n_trials_extra``."""
    return [line.removeprefix("--set ") for line in read_summary(path)["evaluate_overrides"]]
