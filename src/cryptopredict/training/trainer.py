"""The training loop every deep model shares, in one process or as one Ray Train worker.

AdamW, a one-cycle schedule with warm-up, gradient clipping and accumulation, a dropout schedule, early
stopping on the validation loss (the best epoch's weights are kept), curriculum learning (calm regimes
first: the first ``curriculum_epochs`` epochs see only training rows whose trailing volatility is below
the training span's ``calm_quantile``), optional FGSM adversarial training, mixed precision and
torch.compile (``auto``: on for CUDA/ROCm, off on CPUs; only the ``torch.cuda`` API is used).

Data-parallel training: with ``world > 1`` each rank takes every ``world``-th sample of one shared
permutation (the same number of steps on every rank, as DDP requires); the caller wraps the net
(``ray.train.torch.prepare_model``). The validation loss is computed on the whole validation set on
every rank, so all ranks stop at the same epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from cryptopredict.models.heads import NetOutput
from cryptopredict.training.losses import multitask_loss
from cryptopredict.training.windows import Panel, Targets

log = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    """Optimisation settings of one deep model (the ``ensemble.train`` section of the config)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(4, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    warmup_pct: float = Field(0.15, gt=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    accumulate: int = Field(1, ge=1, description="gradient accumulation steps per optimiser step")
    dropout_start: float = Field(0.2, ge=0, lt=1)
    dropout_end: float = Field(0.05, ge=0, lt=1)
    patience: int = Field(2, ge=1, description="epochs without validation improvement before stopping")
    focal_gamma: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.05, ge=0, lt=1)
    vol_weight: float = Field(0.5, ge=0)
    calib_weight: float = Field(0.1, ge=0)
    curriculum_epochs: int = Field(1, ge=0, description="first epochs on calm regimes only")
    calm_quantile: float = Field(0.5, gt=0, le=1)
    fgsm_eps: float = Field(0.0, ge=0, description="FGSM perturbation (scaled-feature units); 0 = off")
    max_train_samples: int | None = Field(None, description="most recent training samples kept (speed)")
    max_steps_per_epoch: int | None = None
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    compile: Literal["auto", "off", "on"] = "auto"
    cuda_graphs: bool = Field(True, description="inference through torch.compile reduce-overhead on CUDA")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    seed: int = 7


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision. ``auto``: bf16 where the GPU supports it, else fp16;
    off on CPUs."""
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def use_compile(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")


class Source(Protocol):
    """Training samples of one kind (windows per row, or graphs per bar)."""

    n: int
    calm: np.ndarray  # bool [n]: calm-regime samples for the curriculum

    def batch(self, idx: np.ndarray) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]: ...


class SeqSource:
    """Rows (symbol, bar) → (x, time_feats, valid), class, log vol."""

    def __init__(self, panel: Panel, targets: Targets, sym: np.ndarray, tpos: np.ndarray, window: int):
        self.panel, self.targets, self.window = panel, targets, window
        self.sym, self.tpos = torch.as_tensor(sym, dtype=torch.long), torch.as_tensor(tpos, dtype=torch.long)
        self.n = len(sym)
        sigma = targets.sigma[self.sym, self.tpos].numpy()
        self.calm = _calm(sigma)

    def batch(self, idx: np.ndarray) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
        i = torch.as_tensor(idx, dtype=torch.long)
        s, t = self.sym[i], self.tpos[i]
        return self.panel.windows(s, t, self.window), self.targets.y[s, t], self.targets.log_vol[s, t]


class GraphSource:
    """Bars → every symbol's window at that bar, the node mask and the correlation matrix as of it."""

    def __init__(self, panel: Panel, targets: Targets, tpos: np.ndarray, window: int):
        self.panel, self.targets, self.window = panel, targets, window
        self.tpos = torch.as_tensor(np.unique(tpos), dtype=torch.long)
        self.n = len(self.tpos)
        sigma = targets.sigma[:, self.tpos].numpy()
        with np.errstate(all="ignore"), _quiet_nanmedian():
            self.calm = _calm(np.nanmedian(sigma, axis=0))

    def batch(self, idx: np.ndarray) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
        t = self.tpos[torch.as_tensor(idx, dtype=torch.long)]
        return self.panel.graph_windows(t, self.window), self.targets.y[:, t].T, self.targets.log_vol[:, t].T


@contextlib.contextmanager
def _quiet_nanmedian():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _calm(sigma: np.ndarray, quantile: float = 0.5) -> np.ndarray:
    finite = np.isfinite(sigma)
    if not finite.any():
        return np.ones(len(sigma), dtype=bool)
    return finite & (sigma <= np.quantile(sigma[finite], quantile))


@dataclass
class TrainResult:
    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    best_valid_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    samples_per_s: float = 0.0


def set_dropout(net: nn.Module, p: float) -> None:
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


def _to(inputs: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device, non_blocking=True) for t in inputs)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _unwrap(net: nn.Module) -> nn.Module:
    net = getattr(net, "_orig_mod", net)
    return getattr(net, "module", net)


def evaluate_loss(net: nn.Module, source: Source, cfg: TrainConfig, device: torch.device) -> float:
    """Mean multi-task loss over every sample of ``source`` (eval mode, no gradients)."""
    net.eval()
    total, weight = 0.0, 0
    dtype = amp_dtype(cfg, device)
    with torch.no_grad():
        for start in range(0, source.n, cfg.batch_size):
            idx = np.arange(start, min(start + cfg.batch_size, source.n))
            inputs, y, lv = source.batch(idx)
            with _autocast(device, dtype):
                out = net(*_to(inputs, device))
            parts = multitask_loss(out, y.to(device), lv.to(device), gamma=cfg.focal_gamma,
                                   smoothing=0.0, vol_weight=cfg.vol_weight, calib_weight=cfg.calib_weight)
            total += float(parts.total) * len(idx)
            weight += len(idx)
    return total / max(weight, 1)


def train_net(net: nn.Module, train: Source, valid: Source | None, cfg: TrainConfig, *,
              device: torch.device | None = None, rank: int = 0, world: int = 1,
              on_epoch: Callable[[dict[str, float]], None] | None = None,
              progress: Callable[[int], None] | None = None) -> TrainResult:
    """Train ``net`` (already on ``device``, possibly DDP-wrapped) and return the best epoch's weights."""
    device = device or resolve_device(cfg.device)
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed + rank)
    dtype = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 and device.type == "cuda" else None
    model = torch.compile(net) if use_compile(cfg, device) else net
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    calm_n = int(train.calm.sum())
    curriculum = calm_n >= cfg.batch_size  # too few calm rows for one batch: no calm-only epochs
    steps = [_epoch_steps(calm_n if curriculum and e < cfg.curriculum_epochs else train.n, cfg, world)
             for e in range(cfg.epochs)]
    # a changing Dropout.p is a constant to dynamo: every change would recompile, so compiled runs keep
    # the starting rate
    schedule_dropout = not use_compile(cfg, device)
    total_steps = max(1, sum(math.ceil(s / cfg.accumulate) for s in steps))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps,
                                                pct_start=cfg.warmup_pct)
    best = (math.inf, -1, {k: v.detach().clone() for k, v in _unwrap(net).state_dict().items()})
    history: list[dict[str, float]] = []
    seen, bad_epochs, opt_steps = 0, 0, 0
    for epoch in range(cfg.epochs):
        frac = epoch / max(cfg.epochs - 1, 1) if schedule_dropout else 0.0
        if schedule_dropout or epoch == 0:
            set_dropout(net, cfg.dropout_start + (cfg.dropout_end - cfg.dropout_start) * frac)
        pool = np.flatnonzero(train.calm) if curriculum and epoch < cfg.curriculum_epochs else np.arange(train.n)
        order = pool[rng.permutation(len(pool))]
        per_rank = len(order) // world
        order = order[rank * per_rank:(rank + 1) * per_rank] if world > 1 else order
        n_batches = min(math.ceil(len(order) / cfg.batch_size), steps[epoch])
        model.train()
        sums = np.zeros(3)
        opt.zero_grad(set_to_none=True)
        for b in range(n_batches):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            inputs, y, lv = train.batch(idx)
            inputs, y, lv = _to(inputs, device), y.to(device), lv.to(device)
            loss, parts = _step_loss(model, inputs, y, lv, cfg, device, dtype)
            loss = loss / cfg.accumulate
            (scaler.scale(loss) if scaler else loss).backward()
            if (b + 1) % cfg.accumulate == 0 or b == n_batches - 1:
                if scaler:
                    scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                if scaler:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                opt.zero_grad(set_to_none=True)
                if opt_steps < total_steps:
                    sched.step()
                opt_steps += 1
            sums += (parts.direction, parts.vol, parts.calib)
            seen += len(idx)
            if progress:
                progress(len(idx))
        valid_loss = evaluate_loss(model, valid, cfg, device) if valid is not None and valid.n else math.nan
        row = {"epoch": epoch, "train_direction": sums[0] / max(n_batches, 1), "train_vol": sums[1] / max(n_batches, 1),
               "train_calib": sums[2] / max(n_batches, 1), "valid_loss": valid_loss,
               "lr": float(sched.get_last_lr()[0]), "samples": float(seen)}
        history.append(row)
        if on_epoch:
            on_epoch(row)
        score = valid_loss if math.isfinite(valid_loss) else row["train_direction"]
        if score < best[0]:
            best = (score, epoch, {k: v.detach().clone() for k, v in _unwrap(net).state_dict().items()})
            bad_epochs = 0
        else:
            bad_epochs += 1
            if valid is not None and bad_epochs >= cfg.patience:
                log.info("early stop at epoch %d (best %d, valid loss %.4f)", epoch, best[1], best[0])
                break
    seconds = time.perf_counter() - started
    return TrainResult(best[2], best[1], best[0], history, seconds, seen / max(seconds, 1e-9))


def _epoch_steps(n: int, cfg: TrainConfig, world: int) -> int:
    steps = math.ceil((n // world) / cfg.batch_size)
    return min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps


def _step_loss(model: nn.Module, inputs: tuple[torch.Tensor, ...], y: torch.Tensor, lv: torch.Tensor,
               cfg: TrainConfig, device: torch.device, dtype: torch.dtype | None):
    kw = dict(gamma=cfg.focal_gamma, smoothing=cfg.label_smoothing, vol_weight=cfg.vol_weight,
              calib_weight=cfg.calib_weight)
    if cfg.fgsm_eps <= 0:
        with _autocast(device, dtype):
            out = model(*inputs)
        parts = multitask_loss(out, y, lv, **kw)
        return parts.total, parts
    x = inputs[0].detach().requires_grad_(True)
    with _autocast(device, dtype):
        out = model(x, *inputs[1:])
    parts = multitask_loss(out, y, lv, **kw)
    grad, = torch.autograd.grad(parts.total, x, retain_graph=True)
    valid = inputs[2].unsqueeze(-1).to(x.dtype)
    x_adv = (x + cfg.fgsm_eps * grad.sign() * valid).detach()
    with _autocast(device, dtype):
        out_adv = model(x_adv, *inputs[1:])
    adv = multitask_loss(out_adv, y, lv, **kw)
    return 0.5 * (parts.total + adv.total), parts


@dataclass
class NetPredictions:
    """Numpy outputs of a net over a source's samples (graph outputs are [B, N, ...])."""

    proba: np.ndarray
    log_vol: np.ndarray
    log_vol_var: np.ndarray
    confidence: np.ndarray
    attention: np.ndarray | None = None


def predict_net(net: nn.Module, source: Source, cfg: TrainConfig, device: torch.device | None = None
                ) -> NetPredictions:
    """Outputs for every sample of ``source`` in order. On CUDA with ``cuda_graphs`` the net runs through
    torch.compile(mode="reduce-overhead") (CUDA graphs) on fixed-size batches (the last one padded)."""
    device = device or resolve_device(cfg.device)
    net.eval()
    graphs = device.type == "cuda" and cfg.cuda_graphs
    run = torch.compile(net, mode="reduce-overhead") if graphs else net
    dtype = amp_dtype(cfg, device)
    outs: dict[str, list[np.ndarray]] = {k: [] for k in ("proba", "log_vol", "log_vol_var", "confidence",
                                                         "attention")}
    with torch.no_grad():
        for start in range(0, source.n, cfg.batch_size):
            idx = np.arange(start, min(start + cfg.batch_size, source.n))
            n = len(idx)
            if graphs and n < cfg.batch_size:
                idx = np.concatenate([idx, np.full(cfg.batch_size - n, idx[-1])])
            inputs, _, _ = source.batch(idx)
            with _autocast(device, dtype):
                out: NetOutput = run(*_to(inputs, device))
            outs["proba"].append(torch.softmax(out.logits.float(), dim=-1)[:n].cpu().numpy())
            outs["log_vol"].append(out.log_vol.float()[:n].cpu().numpy())
            outs["log_vol_var"].append(out.log_vol_logvar.float().exp()[:n].cpu().numpy())
            outs["confidence"].append(torch.sigmoid(out.conf_logit.float())[:n].cpu().numpy())
            if out.attention is not None:
                outs["attention"].append(out.attention.float()[:n].cpu().numpy())
    cat = {k: np.concatenate(v) if v else None for k, v in outs.items()}
    return NetPredictions(cat["proba"], cat["log_vol"], cat["log_vol_var"], cat["confidence"], cat["attention"])
