"""The multi-task loss of the deep models: focal loss (with label smoothing) for direction, Gaussian
negative log-likelihood for log realised volatility, and a calibration term that teaches the confidence
head the probability that the predicted class is right."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cryptopredict.models.heads import NetOutput


def focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: float = 2.0, smoothing: float = 0.0) -> torch.Tensor:
    """Mean of −Σ_k q_k (1 − p_k)^γ log p_k over rows, q the (smoothed) one-hot target. γ = 0 and no
    smoothing is cross-entropy."""
    logp = F.log_softmax(logits.float(), dim=-1)
    k = logits.shape[-1]
    q = F.one_hot(y, k).float() * (1.0 - smoothing) + smoothing / k
    weight = (1.0 - logp.exp()).clamp(min=0.0) ** gamma if gamma else 1.0
    return -(q * weight * logp).sum(dim=-1).mean()


@dataclass
class LossParts:
    total: torch.Tensor
    direction: float
    vol: float
    calib: float
    n_dir: int


def multitask_loss(out: NetOutput, y: torch.Tensor, log_vol: torch.Tensor, *, gamma: float, smoothing: float,
                   vol_weight: float, calib_weight: float) -> LossParts:
    """Loss over rows with a known class (y ≥ 0) and rows with a known volatility (finite), flattened over
    any leading dims (a graph batch is [B, N])."""
    logits = out.logits.reshape(-1, out.logits.shape[-1])
    yf, lv = y.reshape(-1), log_vol.reshape(-1)
    mu, logvar, conf = out.log_vol.reshape(-1).float(), out.log_vol_logvar.reshape(-1).float(), \
        out.conf_logit.reshape(-1).float()
    zero = logits.sum() * 0.0
    known = yf >= 0
    if known.any():
        direction = focal_loss(logits[known], yf[known], gamma, smoothing)
        correct = (logits[known].detach().argmax(dim=-1) == yf[known]).float()
        calib = F.binary_cross_entropy_with_logits(conf[known], correct)
    else:
        direction = calib = zero
    vol_known = torch.isfinite(lv)
    if vol_known.any():
        vol = F.gaussian_nll_loss(mu[vol_known], lv[vol_known], logvar[vol_known].exp(), eps=1e-6)
    else:
        vol = zero
    total = direction + vol_weight * vol + calib_weight * calib
    return LossParts(total, float(direction.detach()), float(vol.detach()), float(calib.detach()),
                     int(known.sum()))
