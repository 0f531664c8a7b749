"""Bayesian fusion of the deep ensemble's members: an input-dependent, Bayesian mixture of experts.

Each of the M base models gives, per row, class probabilities p_m (SELL/HOLD/BUY), a predicted log realised
volatility μ_m and its variance v_m (aleatoric). The fusion is fitted on rows that are out-of-sample for the
members (the validation part of a fold), as plain arrays.

Model (a :class:`pyro.nn.PyroModule`)::

    z      = standardised [max_k p_mk, H(p_m), log v_m  for each m;  context]       (D = 3M + K features)
    W ~ Normal(0, s)^(D×M),  b ~ Normal(0, s)^M                                     (s = ``prior_scale``)
    w      = softmax(z W + b)                                                       (member weights, per row)
    p      = Σ_m w_m p_m                                                            (mixture of the members)
    μ      = Σ_m w_m μ_m,    v = Σ_m w_m (v_m + μ_m²) − μ²  =  Σ_m w_m v_m + Σ_m w_m (μ_m − μ)²
    y ~ Categorical(p)        on rows with a label
    log σ ~ Normal(μ, √v)     on rows with a realised volatility (v is the mixture's variance, moment-matched)

W and b are fitted by SVI (mean-field ``AutoNormal`` guide, ``ClippedAdam`` with a learning rate decaying to a
tenth, ``Trace_ELBO``), seeded. Prediction draws S posterior samples of (W, b) from the fitted guide — a
mean-field Normal, sampled directly with a seeded ``torch.Generator`` so that prediction neither needs pyro's
global state nor disturbs the global RNG — and reports:

- ``proba``: the posterior predictive E_θ[p], temperature-scaled (below);
- ``aleatoric_dir``: expected entropy E_θ[H(p_θ)] (nats); ``epistemic_dir``: the MUTUAL INFORMATION
  H(E_θ[p_θ]) − E_θ[H(p_θ)] between label and parameters (BALD, nats, ≥ 0). Both from the untempered samples;
- ``log_vol`` = E_θ[μ_θ]; ``aleatoric_vol`` = E_θ[v_θ]; ``epistemic_vol`` = Var_θ[μ_θ]; ``log_vol_var`` =
  their sum (law of total variance), all in log-volatility units²;
- ``weights``: E_θ[w_θ]; ``confidence``: calibrated max proba (below).

Calibration: ``fit(..., calib_fraction=f)`` fits SVI on the first (1 − f) of the rows (in the given order,
or in the order of ``times`` when given: the calibration rows must be the LATEST) and on the last f fits
- a :class:`TemperatureScaler` on log E_θ[p] (``proba`` is returned tempered);
- an :class:`IsotonicConfidence` on the tempered max proba: always with ``confidence_calibration =
  "isotonic"``; with ``"auto"`` (default) only if it lowers the Brier score of the confidence on the later
  half of the calibration rows (:func:`isotonic_if_better` — on a few hundred rows a step function fitted
  after an already-right temperature mostly adds noise); never with ``"none"``;
- with ``calibrate_vol``, a scalar c = mean(err² / v_total) (the Gaussian MLE of a variance scale) that
  multiplies both volatility variance components. It matters: the mixture variance counts the spread of the
  member means as variance, so with members whose errors are independent it overstates the fused error
  (the weighted mean averages errors out); with members that understate their variance the gate instead
  mixes in worse members to widen the spread.
With fewer than ``min_calib_rows`` labelled calibration rows calibration is skipped, SVI uses all rows,
``proba`` is untempered, confidence = max proba, and ``notes`` says so.

Two fusions in one process do not interfere: fitting runs inside a private pyro param-store scope, and the
fitted posterior is kept as plain tensors on the instance.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample
from pyro.optim import ClippedAdam

from cryptopredict.models.base import N_CLASSES, read_manifest, write_manifest
from cryptopredict.models.calibration import IsotonicConfidence, TemperatureScaler, isotonic_if_better

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TENSORS_FILE = "fusion_posterior.pt"
PROBA_FLOOR = 1e-6  # member probabilities are clipped here (a member's hard 0 must not give log 0)
VAR_FLOOR = 1e-8  # member variances are clipped here (log v_m is a gate feature)
DTYPE = torch.float64
LATENTS = ("W", "b")
CONFIDENCE_MODES = ("auto", "isotonic", "none")


@dataclass
class FusionOutput:
    """Per-row output of :meth:`BayesianFusion.predict` (n rows, M members). Variances of the volatility
    are in (log volatility)²; the direction uncertainties are in nats."""

    proba: np.ndarray  # (n, 3) temperature-scaled posterior predictive, rows sum to 1
    log_vol: np.ndarray  # (n,) E_θ[μ_θ]
    log_vol_var: np.ndarray  # (n,) aleatoric_vol + epistemic_vol
    epistemic_dir: np.ndarray  # (n,) mutual information H(E p) − E H(p)
    aleatoric_dir: np.ndarray  # (n,) expected entropy E H(p)
    epistemic_vol: np.ndarray  # (n,) Var_θ[μ_θ]
    aleatoric_vol: np.ndarray  # (n,) E_θ[v_θ]
    weights: np.ndarray  # (n, M) E_θ[w_θ]
    confidence: np.ndarray  # (n,) calibrated P(predicted class is right)

    @property
    def predicted_class(self) -> np.ndarray:
        return self.proba.argmax(axis=1)


class GatedMixture(PyroModule):
    """The generative model: Bayesian softmax gate over M members, mixture likelihoods (see module doc)."""

    def __init__(self, n_features: int, n_members: int, prior_scale: float = 1.0) -> None:
        super().__init__()
        self.n_features, self.n_members = n_features, n_members
        self.W = PyroSample(dist.Normal(torch.zeros(n_features, n_members, dtype=DTYPE),
                                        torch.full((n_features, n_members), prior_scale, dtype=DTYPE))
                            .to_event(2))
        self.b = PyroSample(dist.Normal(torch.zeros(n_members, dtype=DTYPE),
                                        torch.full((n_members,), prior_scale, dtype=DTYPE)).to_event(1))

    def forward(self, z: torch.Tensor, logp: torch.Tensor, mu: torch.Tensor, var: torch.Tensor,
                y: torch.Tensor, y_mask: torch.Tensor, log_vol: torch.Tensor, vol_mask: torch.Tensor,
                batch_size: int | None = None) -> None:
        W, b = self.W, self.b
        with pyro.plate("rows", z.shape[0], subsample_size=batch_size) as idx:
            logw = torch.log_softmax(z[idx] @ W + b, dim=-1)  # (B, M)
            fused_logp = torch.logsumexp(logw.unsqueeze(-1) + logp[idx], dim=-2)  # (B, 3)
            pyro.sample("y", dist.Categorical(logits=fused_logp).mask(y_mask[idx]), obs=y[idx])
            w, mu_i, var_i = logw.exp(), mu[idx], var[idx]
            mu_f = (w * mu_i).sum(-1)
            var_f = (w * (var_i + (mu_i - mu_f.unsqueeze(-1)) ** 2)).sum(-1)
            pyro.sample("log_vol", dist.Normal(mu_f, var_f.sqrt()).mask(vol_mask[idx]), obs=log_vol[idx])


@contextmanager
def _private_pyro(seed: int) -> Iterator[None]:
    """A private, empty pyro param store and seeded RNGs for the duration; the caller's param store and
    torch (CPU and CUDA) / numpy / random RNG states are restored afterwards. The param store is process-
    global: fit fusions from one thread at a time (processes, as Ray runs them, are independent)."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(), pyro.get_param_store().scope():
            pyro.set_rng_seed(seed)
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


@dataclass
class _Members:
    """Validated member outputs as float64 arrays: proba (n, M, 3), mu (n, M), var (n, M), context (n, K)."""

    proba: np.ndarray
    mu: np.ndarray
    var: np.ndarray
    context: np.ndarray

    @classmethod
    def check(cls, member_proba: object, member_mu: object, member_var: object,
              context: object | None) -> _Members:
        p = np.asarray(member_proba, dtype=float)
        if p.ndim != 3 or p.shape[2] != N_CLASSES:
            raise ValueError(f"member_proba must be (n, M, {N_CLASSES}), got shape {p.shape}")
        n, m = p.shape[:2]
        mu = np.asarray(member_mu, dtype=float)
        var = np.asarray(member_var, dtype=float)
        for name, arr in (("member_mu", mu), ("member_var", var)):
            if arr.shape != (n, m):
                raise ValueError(f"{name} must be ({n}, {m}) like member_proba, got shape {arr.shape}")
        if not (np.isfinite(p).all() and (p >= 0).all()):
            raise ValueError("member_proba must be finite and >= 0")
        if not np.allclose(p.sum(axis=2), 1.0, atol=1e-3):
            raise ValueError("member_proba rows must sum to 1 per member")
        if not np.isfinite(mu).all():
            raise ValueError("member_mu must be finite")
        if not (np.isfinite(var).all() and (var >= 0).all()):
            raise ValueError("member_var must be finite and >= 0")
        if context is None:
            ctx = np.zeros((n, 0))
        else:
            ctx = np.asarray(context, dtype=float)
            if ctx.ndim == 1:
                ctx = ctx[:, None]
            if ctx.ndim != 2 or ctx.shape[0] != n:
                raise ValueError(f"context must be ({n}, K), got shape {ctx.shape}")
            if np.isinf(ctx).any():
                raise ValueError("context must not hold ±inf (NaN is allowed: it is imputed)")
        p = np.clip(p, PROBA_FLOOR, 1.0)
        p = p / p.sum(axis=2, keepdims=True)
        return cls(p, mu, np.maximum(var, VAR_FLOOR), ctx)

    def __len__(self) -> int:
        return self.proba.shape[0]

    @property
    def n_members(self) -> int:
        return self.proba.shape[1]

    @property
    def n_context(self) -> int:
        return self.context.shape[1]

    def gate_features(self) -> np.ndarray:
        """Unstandardised gate inputs (n, 3M + K): max prob, entropy and log variance per member, context."""
        entropy = -(self.proba * np.log(self.proba)).sum(axis=2)
        return np.concatenate([self.proba.max(axis=2), entropy, np.log(self.var), self.context], axis=1)

    def rows(self, sl: slice) -> _Members:
        return _Members(self.proba[sl], self.mu[sl], self.var[sl], self.context[sl])


def _targets(y: object, log_vol: object, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(labels with 0 for unknown, label mask, log vol with 0 for unknown, vol mask)."""
    yy = np.asarray(y, dtype=float).ravel()
    lv = np.asarray(log_vol, dtype=float).ravel()
    if len(yy) != n or len(lv) != n:
        raise ValueError(f"y ({len(yy)}) and log_vol ({len(lv)}) must have one value per row ({n})")
    y_mask = np.isfinite(yy) & (yy >= 0)
    if (yy[y_mask] >= N_CLASSES).any() or (yy[y_mask] != np.round(yy[y_mask])).any():
        raise ValueError("y must be 0 (SELL), 1 (HOLD), 2 (BUY), or NaN / -1 where unknown")
    vol_mask = np.isfinite(lv)
    return (np.where(y_mask, yy, 0).astype(np.int64), y_mask, np.where(vol_mask, lv, 0.0), vol_mask)


class BayesianFusion:
    """Fits the Bayesian gated mixture on validation rows and predicts fused direction and volatility with
    epistemic/aleatoric decomposition and calibrated confidence (see the module docstring)."""

    def __init__(self, *, steps: int = 500, lr: float = 0.05, prior_scale: float = 1.0,
                 batch_size: int | None = None, num_samples: int = 64, seed: int = 0,
                 init_scale: float = 0.1, min_calib_rows: int = 50, calibrate_vol: bool = True,
                 confidence_calibration: str = "auto") -> None:
        if steps < 1 or num_samples < 2 or lr <= 0 or prior_scale <= 0 or init_scale <= 0:
            raise ValueError("steps >= 1, num_samples >= 2, and lr, prior_scale, init_scale > 0 required")
        if confidence_calibration not in CONFIDENCE_MODES:
            raise ValueError(f"confidence_calibration must be one of {CONFIDENCE_MODES}, "
                             f"got {confidence_calibration!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1 or None (full batch)")
        self.steps, self.lr, self.prior_scale = int(steps), float(lr), float(prior_scale)
        self.batch_size, self.num_samples, self.seed = batch_size, int(num_samples), int(seed)
        self.init_scale, self.min_calib_rows = float(init_scale), int(min_calib_rows)
        self.calibrate_vol, self.confidence_calibration = bool(calibrate_vol), confidence_calibration
        self.n_members: int | None = None
        self.n_context: int | None = None
        self.posterior: dict[str, torch.Tensor] = {}  # W_loc, W_scale, b_loc, b_scale, z_mean, z_scale
        self.temperature = TemperatureScaler()
        self.isotonic = IsotonicConfidence()
        self.vol_var_scale = 1.0
        self.calibrated = False
        self.notes: list[str] = []
        self.loss_history: list[float] = []  # ELBO loss per step, per fitted row (nats)
        self.fit_info: dict[str, Any] = {}

    def settings(self) -> dict[str, Any]:
        return {"steps": self.steps, "lr": self.lr, "prior_scale": self.prior_scale,
                "batch_size": self.batch_size, "num_samples": self.num_samples, "seed": self.seed,
                "init_scale": self.init_scale, "min_calib_rows": self.min_calib_rows,
                "calibrate_vol": self.calibrate_vol, "confidence_calibration": self.confidence_calibration}

    # ------------------------------------------------------------------------------------------ fit

    def fit(self, member_proba: np.ndarray, member_mu: np.ndarray, member_var: np.ndarray,
            y: np.ndarray, log_vol: np.ndarray, context: np.ndarray | None = None, *,
            calib_fraction: float = 0.3, times: np.ndarray | None = None) -> Self:
        """Fit on validation rows: SVI on the first (1 − ``calib_fraction``) of them, calibration on the
        rest. ``y``: (n,) class, NaN or -1 where unknown; ``log_vol``: (n,) log realised volatility, NaN
        where unknown; ``context``: optional (n, K) extra gate inputs (NaN imputed). Rows are taken in the
        given order unless ``times`` (n,) is given (e.g. the timestamps of a (symbol, timestamp) index
        sorted by symbol): then they are stably sorted by it first, so the calibration rows are the latest."""
        if not 0 <= calib_fraction < 1:
            raise ValueError(f"calib_fraction must be in [0, 1), got {calib_fraction}")
        members = _Members.check(member_proba, member_mu, member_var, context)
        n = len(members)
        labels, y_mask, lv, vol_mask = _targets(y, log_vol, n)
        if times is not None:
            t = np.asarray(times)
            if t.shape != (n,):
                raise ValueError(f"times must have one value per row ({n},), got shape {t.shape}")
            order = np.argsort(t, kind="stable")
            members = _Members(members.proba[order], members.mu[order], members.var[order],
                               members.context[order])
            labels, y_mask, lv, vol_mask = labels[order], y_mask[order], lv[order], vol_mask[order]
        self.notes = []
        n_cal = int(round(n * calib_fraction))
        n_cal_labelled = int(y_mask[n - n_cal:].sum()) if n_cal else 0
        if n_cal and n_cal_labelled >= self.min_calib_rows:
            fit_rows, cal_rows = slice(0, n - n_cal), slice(n - n_cal, n)
        else:
            fit_rows, cal_rows = slice(0, n), None
            why = (f"{n_cal_labelled} labelled calibration rows (< {self.min_calib_rows})"
                   if calib_fraction > 0 else "calib_fraction = 0")
            self.notes.append(f"calibration skipped: {why}; SVI fitted on all {n} rows, proba untempered, "
                              "confidence = max proba")
        n_fit_y, n_fit_vol = int(y_mask[fit_rows].sum()), int(vol_mask[fit_rows].sum())
        if n_fit_y + n_fit_vol == 0:
            raise ValueError("no rows with a label or a realised volatility to fit the fusion on")

        self.n_members, self.n_context = members.n_members, members.n_context
        z_raw = members.gate_features()
        z_fit = z_raw[fit_rows]
        with np.errstate(all="ignore"):
            z_mean = np.nanmean(z_fit, axis=0) if len(z_fit) else np.zeros(z_raw.shape[1])
            z_std = np.nanstd(z_fit, axis=0)
        z_mean = np.where(np.isfinite(z_mean), z_mean, 0.0)
        z_std = np.where(np.isfinite(z_std) & (z_std > 1e-8), z_std, 1.0)
        self.posterior = {"z_mean": torch.as_tensor(z_mean, dtype=DTYPE),
                          "z_scale": torch.as_tensor(z_std, dtype=DTYPE)}

        fm = members.rows(fit_rows)
        data = (self._standardise(fm.gate_features()), torch.as_tensor(np.log(fm.proba), dtype=DTYPE),
                torch.as_tensor(fm.mu, dtype=DTYPE), torch.as_tensor(fm.var, dtype=DTYPE),
                torch.as_tensor(labels[fit_rows]), torch.as_tensor(y_mask[fit_rows]),
                torch.as_tensor(lv[fit_rows], dtype=DTYPE), torch.as_tensor(vol_mask[fit_rows]))
        n_rows = data[0].shape[0]
        batch = self.batch_size if self.batch_size is not None and self.batch_size < n_rows else None
        t0 = time.perf_counter()
        with _private_pyro(self.seed):
            model = GatedMixture(data[0].shape[1], self.n_members, self.prior_scale)
            guide = AutoNormal(model, init_scale=self.init_scale)
            optim = ClippedAdam({"lr": self.lr, "clip_norm": 10.0, "lrd": 0.1 ** (1.0 / self.steps)})
            svi = SVI(model, guide, optim, Trace_ELBO())
            self.loss_history = [svi.step(*data, batch_size=batch) / n_rows for _ in range(self.steps)]
            with torch.no_grad():
                for name in LATENTS:
                    self.posterior[f"{name}_loc"] = getattr(guide.locs, name).detach().clone()
                    self.posterior[f"{name}_scale"] = getattr(guide.scales, name).detach().clone()
        svi_s = time.perf_counter() - t0
        if not all(math.isfinite(v) for v in self.loss_history):
            raise RuntimeError("SVI diverged (non-finite ELBO); lower lr or check the member inputs")

        self.temperature, self.isotonic, self.vol_var_scale, self.calibrated = (
            TemperatureScaler(), IsotonicConfidence(), 1.0, False)
        if cal_rows is not None:
            self._calibrate(members.rows(cal_rows), labels[cal_rows], y_mask[cal_rows], lv[cal_rows],
                            vol_mask[cal_rows])
        self.fit_info = {"n_rows": n, "n_fit": n_rows, "n_calib": 0 if cal_rows is None else n_cal,
                         "n_fit_labelled": n_fit_y, "n_fit_vol": n_fit_vol, "calib_fraction": calib_fraction,
                         "final_loss": self.loss_history[-1], "svi_seconds": round(svi_s, 3)}
        log.info("fusion fitted: %s; notes: %s", self.fit_info, self.notes or "none")
        return self

    def _calibrate(self, cal: _Members, labels: np.ndarray, y_mask: np.ndarray, lv: np.ndarray,
                   vol_mask: np.ndarray) -> None:
        raw = self._posterior_predict(cal, self.num_samples, self.seed)
        log_p = np.log(np.clip(raw["proba"], 1e-12, 1.0))
        self.temperature.fit(log_p[y_mask], labels[y_mask])
        tempered = self.temperature.transform(log_p[y_mask])
        conf, correct = tempered.max(axis=1), tempered.argmax(axis=1) == labels[y_mask]
        self.calibrated = True
        self.notes.append(f"temperature {self.temperature.temperature:.3f} fitted on the last {len(cal)} "
                          f"rows ({int(y_mask.sum())} labelled)")
        if self.confidence_calibration == "isotonic":
            self.isotonic.fit(conf, correct)
            self.notes.append("isotonic confidence fitted on the calibration rows")
        elif self.confidence_calibration == "auto":
            iso, scores = isotonic_if_better(conf, correct)
            verdict = "kept" if iso is not None else "not used (confidence = tempered max proba)"
            self.notes.append(f"isotonic confidence {verdict}: Brier {scores['brier_isotonic']:.4f} with "
                              f"vs {scores['brier_identity']:.4f} without on the later half of the "
                              "calibration rows")
            if iso is not None:
                self.isotonic = iso
        if self.calibrate_vol:
            n_vol = int(vol_mask.sum())
            if n_vol >= self.min_calib_rows:
                total = raw["aleatoric_vol"][vol_mask] + raw["epistemic_vol"][vol_mask]
                self.vol_var_scale = float(np.mean((lv[vol_mask] - raw["log_vol"][vol_mask]) ** 2 / total))
                self.notes.append(f"volatility variance scaled by {self.vol_var_scale:.3f} "
                                  f"(mean squared error / predicted variance on {n_vol} calibration rows)")
            else:
                self.notes.append(f"volatility variance not calibrated: {n_vol} calibration rows with a "
                                  f"realised volatility (< {self.min_calib_rows})")

    # -------------------------------------------------------------------------------------- predict

    def _standardise(self, z_raw: np.ndarray) -> torch.Tensor:
        z = (torch.as_tensor(z_raw, dtype=DTYPE) - self.posterior["z_mean"]) / self.posterior["z_scale"]
        return torch.nan_to_num(z, nan=0.0)  # a missing context value sits at the training mean

    def _posterior_predict(self, members: _Members, num_samples: int, seed: int,
                           chunk_rows: int = 16384) -> dict[str, np.ndarray]:
        """Untempered posterior summaries from ``num_samples`` draws of (W, b) out of the fitted guide."""
        gen = torch.Generator().manual_seed(seed)
        post = self.posterior
        W = post["W_loc"] + post["W_scale"] * torch.randn((num_samples, *post["W_loc"].shape),
                                                          generator=gen, dtype=DTYPE)
        b = post["b_loc"] + post["b_scale"] * torch.randn((num_samples, *post["b_loc"].shape),
                                                          generator=gen, dtype=DTYPE)
        z_all = self._standardise(members.gate_features())
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("proba", "aleatoric_dir", "epistemic_dir",
                                                              "log_vol", "epistemic_vol", "aleatoric_vol",
                                                              "weights")}
        with torch.no_grad():
            for start in range(0, len(members), chunk_rows):
                sl = slice(start, start + chunk_rows)
                z = z_all[sl]
                logp = torch.as_tensor(np.log(members.proba[sl]), dtype=DTYPE)
                mu = torch.as_tensor(members.mu[sl], dtype=DTYPE)
                var = torch.as_tensor(members.var[sl], dtype=DTYPE)
                logw = torch.log_softmax(torch.einsum("nd,sdm->snm", z, W) + b.unsqueeze(1), dim=-1)
                fused_logp = torch.logsumexp(logw.unsqueeze(-1) + logp, dim=-2)  # (S, n, 3)
                p = fused_logp.exp()
                p_mean = p.mean(0)
                expected_entropy = -(p * fused_logp).sum(-1).mean(0)
                entropy_of_mean = -(p_mean * p_mean.clamp_min(1e-300).log()).sum(-1)
                w = logw.exp()
                mu_s = (w * mu).sum(-1)  # (S, n)
                var_s = (w * (var + (mu - mu_s.unsqueeze(-1)) ** 2)).sum(-1)
                parts["proba"].append((p_mean / p_mean.sum(-1, keepdim=True)).numpy())
                parts["aleatoric_dir"].append(expected_entropy.numpy())
                parts["epistemic_dir"].append((entropy_of_mean - expected_entropy).clamp_min(0.0).numpy())
                parts["log_vol"].append(mu_s.mean(0).numpy())
                parts["epistemic_vol"].append(mu_s.var(0, unbiased=False).numpy())
                parts["aleatoric_vol"].append(var_s.mean(0).numpy())
                parts["weights"].append(w.mean(0).numpy())
        if not len(members):
            shapes = {"proba": (0, N_CLASSES), "weights": (0, members.n_members)}
            return {k: np.zeros(shapes.get(k, (0,))) for k in parts}
        return {k: np.concatenate(v, axis=0) for k, v in parts.items()}

    def predict(self, member_proba: np.ndarray, member_mu: np.ndarray, member_var: np.ndarray,
                context: np.ndarray | None = None, *, num_samples: int | None = None,
                seed: int | None = None) -> FusionOutput:
        """Fused prediction from ``num_samples`` (default ``self.num_samples``) posterior draws; the same
        ``seed`` (default ``self.seed``) gives the same output."""
        if self.n_members is None:
            raise RuntimeError("predict before fit")
        members = _Members.check(member_proba, member_mu, member_var, context)
        if members.n_members != self.n_members or members.n_context != self.n_context:
            raise ValueError(f"fusion fitted on M = {self.n_members} members and K = {self.n_context} "
                             f"context columns, got M = {members.n_members}, K = {members.n_context}")
        s = self.num_samples if num_samples is None else int(num_samples)
        if s < 2:
            raise ValueError("num_samples must be >= 2 (epistemic variance needs several draws)")
        raw = self._posterior_predict(members, s, self.seed if seed is None else int(seed))
        proba = raw["proba"]
        if self.calibrated:
            proba = self.temperature.transform(np.log(np.clip(proba, 1e-12, 1.0)))
            confidence = self.isotonic.transform(proba.max(axis=1, initial=0.0))
        else:
            confidence = proba.max(axis=1, initial=0.0)
        epistemic_vol = raw["epistemic_vol"] * self.vol_var_scale
        aleatoric_vol = raw["aleatoric_vol"] * self.vol_var_scale
        return FusionOutput(proba=proba, log_vol=raw["log_vol"], log_vol_var=aleatoric_vol + epistemic_vol,
                            epistemic_dir=raw["epistemic_dir"], aleatoric_dir=raw["aleatoric_dir"],
                            epistemic_vol=epistemic_vol, aleatoric_vol=aleatoric_vol,
                            weights=raw["weights"], confidence=confidence)

    # ---------------------------------------------------------------------------------- persistence

    def save(self, directory: Path | str) -> None:
        """``fusion_posterior.pt`` (a dict of tensors, loadable with ``weights_only=True``) and
        ``manifest.json`` (M, K, settings, calibrators, notes)."""
        if self.n_members is None:
            raise RuntimeError("save before fit")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{TENSORS_FILE}.tmp"
        torch.save({k: v.detach().clone() for k, v in self.posterior.items()}, tmp)
        tmp.replace(directory / TENSORS_FILE)
        write_manifest(directory, {
            "class": type(self).__name__, "format_version": FORMAT_VERSION, "n_members": self.n_members,
            "n_context": self.n_context, "settings": self.settings(), "calibrated": self.calibrated,
            "temperature": self.temperature.to_dict(), "isotonic": self.isotonic.to_dict(),
            "vol_var_scale": self.vol_var_scale, "notes": self.notes, "fit_info": self.fit_info,
            "files": [TENSORS_FILE]})

    @classmethod
    def load(cls, directory: Path | str) -> Self:
        directory = Path(directory)
        manifest = read_manifest(directory)
        if manifest.get("class") != cls.__name__ or manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory} holds a {manifest.get('class')} (format "
                             f"{manifest.get('format_version')}), not a {cls.__name__} "
                             f"(format {FORMAT_VERSION})")
        out = cls(**manifest["settings"])
        out.n_members, out.n_context = int(manifest["n_members"]), int(manifest["n_context"])
        tensors = torch.load(directory / TENSORS_FILE, weights_only=True, map_location="cpu")
        expected = {"z_mean", "z_scale"} | {f"{n}_{k}" for n in LATENTS for k in ("loc", "scale")}
        if set(tensors) != expected:
            raise ValueError(f"{directory / TENSORS_FILE} holds {sorted(tensors)}, "
                             f"expected {sorted(expected)}")
        out.posterior = {k: v.to(DTYPE) for k, v in tensors.items()}
        out.calibrated = bool(manifest["calibrated"])
        out.temperature = TemperatureScaler.from_dict(manifest["temperature"])
        out.isotonic = IsotonicConfidence.from_dict(manifest["isotonic"])
        out.vol_var_scale = float(manifest["vol_var_scale"])
        out.notes, out.fit_info = list(manifest["notes"]), dict(manifest["fit_info"])
        return out

