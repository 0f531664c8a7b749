"""The deep ensemble behind the Forecaster interface: four base nets + Bayesian fusion.

``fit(train, valid)``: a RobustScaler on the training rows; the dense panel of windows up to the last
training/validation bar (``training/windows.py``); each member net trained on the training rows with early
stopping on the validation rows (``training/trainer.py``); the members' validation outputs (out-of-sample
for them) fit the Bayesian fusion, whose last share of rows calibrates the confidence
(``models/fusion.py``). The same function, ``fit_components``, runs in this process (``backend: local``)
or as the training loop of a Ray Train ``TorchTrainer`` over N workers (``backend: ray``,
``training/distributed.py``); either way it writes the model directory, which is also the checkpoint.

``predict(data)``: windows up to the last bar of ``data`` only; member outputs; fusion → class
probabilities, log volatility with its total variance, calibrated confidence, epistemic and aleatoric
uncertainty; every member's own output and fusion weight ride along in ``Predictions.extras``.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from cryptopredict.features.scaling import RobustScaler
from cryptopredict.models.base import Fold, Predictions, read_manifest, write_manifest
from cryptopredict.training.trainer import GraphSource, NetPredictions, SeqSource, TrainConfig, predict_net, \
    resolve_device, train_net
from cryptopredict.training.windows import N_TIME_FEATS, Panel, Targets, build_panel, fit_scaler, grid_targets

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MEMBER_NETS: dict[str, str] = {
    "transformer": "cryptopredict.models.transformer:TransformerNet",
    "bilstm": "cryptopredict.models.bilstm:BiLSTMNet",
    "cnn_lstm": "cryptopredict.models.cnn_lstm:CNNLSTMNet",
    "gnn": "cryptopredict.models.gnn:GraphNet",
}
GRAPH_MEMBERS = {"gnn"}


class EnsembleSettings(BaseModel):
    """``evaluation.model_params.ensemble`` (and the standalone members' params)."""

    model_config = ConfigDict(extra="forbid")

    members: list[str] = Field(default_factory=lambda: list(MEMBER_NETS))
    window: int = Field(32, ge=2, description="bars per input window (the row's bar and those before)")
    nets: dict[str, dict[str, Any]] = Field(default_factory=dict, description="constructor args per member")
    train: TrainConfig = Field(default_factory=TrainConfig)
    member_train: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-member overrides "
                                                    "of ``train`` (e.g. a smaller batch of graphs for gnn)")
    fusion: dict[str, Any] = Field(default_factory=dict, description="BayesianFusion arguments")
    valid_fraction: float = Field(0.2, gt=0, lt=1, description="share of training bars held out for early "
                                  "stopping and the fusion when the fold has no validation part")
    backend: Literal["local", "ray"] = "local"
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data parallel)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each Ray Train worker reserves (a fraction "
                                   "lets a fit start while other models' tasks hold every CPU)")
    use_gpu: bool | None = Field(None, description="Ray Train workers on GPUs (null: when CUDA is visible)")
    storage_path: str | None = Field(None, description="Ray Train results (null: a temporary directory)")

    def model_post_init(self, _: Any) -> None:
        unknown = [m for m in [*self.members, *self.member_train, *self.nets] if m not in MEMBER_NETS]
        if unknown or not self.members:
            raise ValueError(f"unknown ensemble members {unknown}; known: {sorted(MEMBER_NETS)}")

    def train_for(self, member: str) -> TrainConfig:
        """``train`` with the member's overrides."""
        extra = self.member_train.get(member)
        return TrainConfig(**{**self.train.model_dump(), **extra}) if extra else self.train


def build_net(member: str, n_features: int, settings: EnsembleSettings) -> torch.nn.Module:
    module, cls = MEMBER_NETS[member].split(":")
    return getattr(importlib.import_module(module), cls)(n_features=n_features, window=settings.window,
                                                          n_time_feats=N_TIME_FEATS,
                                                          **settings.nets.get(member, {}))


@dataclass
class Payload:
    """Everything a fit needs, plain tensors (shipped to Ray Train workers through the object store)."""

    panel: Panel
    targets: Targets
    train_rows: tuple[np.ndarray, np.ndarray]   # (symbol position, bar position)
    valid_rows: tuple[np.ndarray, np.ndarray]
    valid_sigma: np.ndarray
    vol_norm: tuple[float, float] = (0.0, 1.0)  # (mean, std) of the training rows' log vol: nets learn z-scores


def member_outputs(member: str, net: torch.nn.Module, panel: Panel, targets: Targets | None,
                   rows: tuple[np.ndarray, np.ndarray], settings: EnsembleSettings,
                   device: torch.device, vol_norm: tuple[float, float] = (0.0, 1.0)) -> NetPredictions:
    """A member's outputs for rows (symbol position, bar position), in row order, with log vol and its
    variance back in log-vol units (the nets learn z-scores of the training rows' log vol)."""
    sym, tpos = rows
    tg = targets or _empty_targets(panel)
    if member in GRAPH_MEMBERS:
        src = GraphSource(panel, tg, tpos, settings.window)
        out = predict_net(net, src, settings.train_for(member), device)
        bar = np.searchsorted(src.tpos.numpy(), tpos)
        out = NetPredictions(out.proba[bar, sym], out.log_vol[bar, sym], out.log_vol_var[bar, sym],
                             out.confidence[bar, sym])
    else:
        out = predict_net(net, SeqSource(panel, tg, sym, tpos, settings.window), settings.train_for(member),
                          device)
    mean, std = vol_norm
    return NetPredictions(out.proba, mean + std * out.log_vol, std**2 * out.log_vol_var, out.confidence,
                          out.attention)


def _empty_targets(panel: Panel) -> Targets:
    shape = panel.present.shape
    return Targets(torch.full(shape, -1, dtype=torch.long), torch.full(shape, float("nan")),
                   torch.full(shape, float("nan")))


def _fusion_inputs(outs: list[NetPredictions], sigma: np.ndarray) -> dict[str, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        ctx = np.log(np.where(np.asarray(sigma) > 0, sigma, np.nan))
    ctx = np.nan_to_num(ctx, nan=float(np.nanmedian(ctx)) if np.isfinite(ctx).any() else 0.0)
    return {"member_proba": np.stack([o.proba for o in outs], axis=1),
            "member_mu": np.stack([o.log_vol for o in outs], axis=1),
            "member_var": np.stack([o.log_vol_var for o in outs], axis=1),
            "context": ctx[:, None].astype(np.float64)}


def member_sources(member: str, payload: Payload, settings: EnsembleSettings
                   ) -> tuple[SeqSource | GraphSource, SeqSource | GraphSource]:
    """(training, validation) samples of one member: graph samples per bar, or windows per row."""
    panel, targets = payload.panel, payload.targets
    if member in GRAPH_MEMBERS:
        return (GraphSource(panel, targets, payload.train_rows[1], settings.window),
                GraphSource(panel, targets, payload.valid_rows[1], settings.window))
    return (SeqSource(panel, targets, *payload.train_rows, settings.window),
            SeqSource(panel, targets, *payload.valid_rows, settings.window))


def fit_components(payload: Payload, settings: EnsembleSettings, out_dir: Path, *, rank: int = 0,
                   world: int = 1, device: torch.device | None = None,
                   wrap: Any = None, report: Any = None) -> dict[str, Any]:
    """Train every member (data-parallel when ``world > 1``; ``wrap`` is ``prepare_model`` under Ray
    Train), then on rank 0 fit the fusion on the members' validation outputs and write the member weights
    and the fusion to ``out_dir``. Returns per-member training summaries."""
    from cryptopredict.models.fusion import BayesianFusion

    device = device or resolve_device(settings.train.device)
    panel, targets = payload.panel, payload.targets
    summary: dict[str, Any] = {}
    nets = {}
    for i, member in enumerate(settings.members):
        torch.manual_seed(settings.train.seed + i)
        net = build_net(member, panel.n_features, settings).to(device)
        trained = wrap(net) if wrap is not None else net
        tr, va = member_sources(member, payload, settings)
        res = train_net(trained, tr, va, settings.train_for(member), device=device, rank=rank, world=world,
                        on_epoch=(lambda row, m=member: report(m, row)) if report else None)
        net.load_state_dict(res.state_dict)
        nets[member] = net
        summary[member] = {"best_epoch": res.best_epoch, "best_valid_loss": res.best_valid_loss,
                           "seconds": res.seconds, "samples_per_s": res.samples_per_s,
                           "train_samples": tr.n, "history": res.history}
        log.info("%s: best epoch %d, valid loss %.4f, %.0f samples/s", member, res.best_epoch,
                 res.best_valid_loss, res.samples_per_s)
    if rank != 0:
        return summary
    outs = [member_outputs(m, nets[m], panel, targets, payload.valid_rows, settings, device, payload.vol_norm)
            for m in settings.members]
    sym, tpos = payload.valid_rows
    mean, std = payload.vol_norm
    y = targets.y[sym, tpos].numpy().astype(float)
    y[y < 0] = np.nan
    started = time.perf_counter()
    fusion = BayesianFusion(**settings.fusion)
    fusion.fit(**_fusion_inputs(outs, payload.valid_sigma), y=y, log_vol=mean + std * targets.log_vol[sym, tpos].numpy(),
               times=tpos)
    summary["fusion"] = {"seconds": time.perf_counter() - started, "rows": len(y),
                         "notes": list(getattr(fusion, "notes", []) or [])}
    out_dir.mkdir(parents=True, exist_ok=True)
    for member, net in nets.items():
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, out_dir / f"{member}.pt")
    fusion.save(out_dir / "fusion")
    summary["vol_norm"] = list(payload.vol_norm)
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def make_payload(train: Fold, valid: Fold, settings: EnsembleSettings, *, correlations: bool
                 ) -> tuple[Payload, RobustScaler]:
    """The tensors of one fit: the scaler on the training rows, the dense panel up to the last validation
    bar, labels on its grid with log vol as z-scores of the training rows' (``vol_norm``), and the most
    recent ``max_train_samples`` training rows."""
    scaler = fit_scaler(train.X)
    end = max(train.timestamps.max(), valid.timestamps.max())
    panel = build_panel(_panel_of(train)[list(train.X.columns)], scaler, end=end,
                        correlations=train.correlations if correlations else None)
    both = pd.concat([train.y, valid.y])
    targets = grid_targets(panel, both.index, both.to_numpy(), pd.concat([train.fwd_vol, valid.fwd_vol]).to_numpy(),
                           pd.concat([train.sigma, valid.sigma]).to_numpy())
    train_rows = _recent(panel.locate(train.X.index), settings.train.max_train_samples)
    lv = targets.log_vol[torch.as_tensor(train_rows[0]), torch.as_tensor(train_rows[1])].numpy()
    lv = lv[np.isfinite(lv)]
    vol_norm = (float(lv.mean()), float(max(lv.std(), 1e-6))) if lv.size else (0.0, 1.0)
    targets.log_vol = (targets.log_vol - vol_norm[0]) / vol_norm[1]
    return Payload(panel, targets, train_rows, panel.locate(valid.X.index), valid.sigma.to_numpy(),
                   vol_norm), scaler


class DeepEnsemble:
    """Transformer + Bi-LSTM + CNN-LSTM + graph network, fused by a Bayesian layer (``MEMBER_NETS``)."""

    name = "ensemble"
    uses_correlations = True

    def __init__(self, **params: Any):
        self.settings = EnsembleSettings(**params)
        self.params = params
        self.scaler: RobustScaler | None = None
        self.columns: list[str] = []
        self.horizon: int | None = None
        self.nets: dict[str, torch.nn.Module] = {}
        self.fusion: Any = None
        self.summary: dict[str, Any] = {}
        self.vol_norm: tuple[float, float] = (0.0, 1.0)

    # -- fit ------------------------------------------------------------------------------------------
    def fit(self, train: Fold, valid: Fold | None = None) -> None:
        started = time.perf_counter()
        if valid is None or len(valid) == 0:
            train, valid = _holdout(train, self.settings.valid_fraction)
        self.horizon = train.horizon
        self.columns = list(train.X.columns)
        uses_graph = any(m in GRAPH_MEMBERS for m in self.settings.members)
        payload, self.scaler = make_payload(train, valid, self.settings, correlations=uses_graph)
        self.vol_norm = payload.vol_norm
        panel, train_rows = payload.panel, payload.train_rows
        import tempfile

        with tempfile.TemporaryDirectory(prefix="cp-ensemble-") as tmp:
            out = Path(tmp) / "fit"
            if self.settings.backend == "ray":
                from cryptopredict.training.distributed import fit_with_ray_train
                self.summary = fit_with_ray_train(payload, self.settings, out)
            else:
                self.summary = fit_components(payload, self.settings, out)
            self._load_components(out, panel.n_features)
        self.summary["fit_seconds"] = time.perf_counter() - started
        log.info("ensemble fitted on %d training rows in %.1f s", len(train_rows[0]), self.summary["fit_seconds"])

    def _load_components(self, directory: Path, n_features: int) -> None:
        from cryptopredict.models.fusion import BayesianFusion

        self.nets = {}
        for member in self.settings.members:
            net = build_net(member, n_features, self.settings)
            net.load_state_dict(torch.load(directory / f"{member}.pt", weights_only=True, map_location="cpu"))
            self.nets[member] = net.eval()
        self.fusion = BayesianFusion.load(directory / "fusion")

    # -- predict --------------------------------------------------------------------------------------
    def predict(self, data: Fold) -> Predictions:
        if self.scaler is None or self.fusion is None:
            raise RuntimeError("predict before fit")
        if data.horizon != self.horizon:
            raise ValueError(f"model fitted for a {self.horizon}-bar horizon, data has {data.horizon}")
        corr = data.correlations if any(m in GRAPH_MEMBERS for m in self.settings.members) else None
        ts = data.timestamps
        step = _bar(_panel_of(data))
        panel = build_panel(_panel_of(data)[self.columns], self.scaler, end=ts.max(),
                            start=ts.min() - (self.settings.window - 1) * step, correlations=corr)
        rows = panel.locate(data.X.index)
        device = resolve_device(self.settings.train.device)
        outs = []
        for member in self.settings.members:
            net = self.nets[member].to(device)
            outs.append(member_outputs(member, net, panel, None, rows, self.settings, device, self.vol_norm))
        fused = self.fusion.predict(**_fusion_inputs(outs, data.sigma.to_numpy()))
        extras: dict[str, np.ndarray] = {"epistemic_vol": fused.epistemic_vol, "aleatoric_vol": fused.aleatoric_vol}
        for j, (member, o) in enumerate(zip(self.settings.members, outs)):
            extras[f"w_{member}"] = fused.weights[:, j]
            extras[f"{member}__p_sell"], extras[f"{member}__p_hold"], extras[f"{member}__p_buy"] = o.proba.T
            extras[f"{member}__log_vol"] = o.log_vol
            extras[f"{member}__log_vol_var"] = o.log_vol_var
            extras[f"{member}__confidence"] = o.confidence
        proba = np.clip(fused.proba, 1e-9, None)
        proba = proba / proba.sum(axis=1, keepdims=True)
        return Predictions(index=data.X.index, proba=proba, log_vol=fused.log_vol, log_vol_var=fused.log_vol_var,
                           confidence=fused.confidence, model=self.name, epistemic=fused.epistemic_dir,
                           aleatoric=fused.aleatoric_dir, extras=extras)

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        if self.scaler is None:
            raise RuntimeError("save before fit")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for member, net in self.nets.items():
            torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, directory / f"{member}.pt")
        self.fusion.save(directory / "fusion")
        self.scaler.save(directory / "scaler.json")
        write_manifest(directory, {"model": self.name, "class": type(self).__name__,
                                   "format_version": FORMAT_VERSION, "params": self.params,
                                   "horizon": self.horizon, "columns": self.columns,
                                   "vol_norm": list(self.vol_norm),
                                   "files": [*(f"{m}.pt" for m in self.nets), "fusion/", "scaler.json"],
                                   "training": _jsonable(self.summary)})

    @classmethod
    def load(cls, directory: Path) -> Self:
        directory = Path(directory)
        manifest = read_manifest(directory)
        if manifest.get("class") != cls.__name__ or manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory} holds a {manifest.get('class')} (format "
                             f"{manifest.get('format_version')}), not a {cls.__name__} (format {FORMAT_VERSION})")
        model = cls(**manifest["params"])
        model.horizon, model.columns = int(manifest["horizon"]), list(manifest["columns"])
        model.vol_norm = (float(manifest["vol_norm"][0]), float(manifest["vol_norm"][1]))
        model.scaler = RobustScaler.load(directory / "scaler.json")
        model.summary = manifest.get("training", {})
        model._load_components(directory, len(model.columns))
        return model


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=float))


def _panel_of(fold: Fold) -> pd.DataFrame:
    if fold.panel is None:
        raise ValueError(f"fold {fold.name!r} carries no feature panel: the deep models need each row's past "
                         "bars (build folds with evaluation.dataset.make_fold)")
    return fold.panel


def _bar(panel: pd.DataFrame) -> pd.Timedelta:
    """The bar length of a feature panel (the smallest step between its timestamps)."""
    t = panel.index.get_level_values("timestamp").unique().sort_values()
    return pd.Timedelta(pd.Series(t[:1000]).diff().min()) if len(t) > 1 else pd.Timedelta(hours=1)


def _recent(rows: tuple[np.ndarray, np.ndarray], limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The ``limit`` most recent rows (all when None)."""
    if limit is None or len(rows[0]) <= limit:
        return rows
    keep = np.sort(np.argsort(rows[1], kind="stable")[-limit:])
    return rows[0][keep], rows[1][keep]


def _holdout(train: Fold, fraction: float) -> tuple[Fold, Fold]:
    """Split a fold without a validation part in time: the last ``fraction`` of its bars validate, and
    the ``horizon`` bars before them are purged (their labels overlap the validation span)."""
    ts = train.timestamps
    bars = np.sort(ts.unique())
    cut = bars[int(len(bars) * (1 - fraction))]
    step = bars[1] - bars[0] if len(bars) > 1 else np.timedelta64(1, "h")
    purge_from = cut - train.horizon * step
    fit_mask = ts < purge_from
    valid_mask = ts >= cut
    if not fit_mask.any() or not valid_mask.any():
        raise ValueError(f"fold {train.name!r} is too short to hold out {fraction:.0%} for validation")
    return train.subset(fit_mask, f"{train.name}-fit"), train.subset(valid_mask, f"{train.name}-holdout")


class MemberForecaster(DeepEnsemble):
    """One base net on its own (fusion over a single member is its calibration), e.g. for tuning."""

    member = "transformer"

    def __init__(self, **params: Any):
        params = {**params, "members": [self.member]}
        super().__init__(**params)
        self.name = self.member


class TransformerForecaster(MemberForecaster):
    member = "transformer"


class BiLSTMForecaster(MemberForecaster):
    member = "bilstm"


class CNNLSTMForecaster(MemberForecaster):
    member = "cnn_lstm"


class GraphForecaster(MemberForecaster):
    member = "gnn"
