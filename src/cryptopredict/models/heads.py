"""Output heads shared by the deep-ensemble networks, and the padding helpers their encoders use.

Every network ends in ``OutputHeads``: direction logits (0 = SELL, 1 = HOLD, 2 = BUY), predicted log realised
volatility over the horizon with its log-variance (aleatoric), and a confidence logit. Windows are padded on
the LEFT (oldest positions) where a symbol's history is shorter than the window; ``valid`` is True where a bar
exists. The helpers below let recurrent and convolutional encoders read only the valid bars, in time order,
so that nothing written in padded positions can reach the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

N_CLASSES = 3
LOGVAR_MIN = -10.0
LOGVAR_MAX = 6.0


@dataclass
class NetOutput:
    """What every base network returns; leading dims are [B] for sequence nets and [B, N] for the graph net.

    ``logits``: [..., 3] direction logits SELL/HOLD/BUY. ``log_vol``: [...] predicted log realised volatility
    over the horizon. ``log_vol_logvar``: [...] log of the predicted variance of ``log_vol`` (aleatoric),
    clamped to [LOGVAR_MIN, LOGVAR_MAX]. ``conf_logit``: [...] logit of P(the argmax class is right).
    ``embedding``: [..., D] the representation the heads read. ``attention``: model-specific pooling or
    attention weights (see each network's docstring), None where the network has none.
    """

    logits: Tensor
    log_vol: Tensor
    log_vol_logvar: Tensor
    conf_logit: Tensor
    embedding: Tensor
    attention: Tensor | None = None


class OutputHeads(nn.Module):
    """Shared trunk (LayerNorm → Linear → GELU → Dropout) feeding the direction, volatility, confidence heads.

    The confidence head reads the trunk plus the (detached) class probabilities, so it can learn how far to
    trust the direction head without its loss pushing the direction logits around.
    """

    def __init__(self, d_in: int, hidden: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        hidden = hidden or d_in
        self.trunk = nn.Sequential(
            nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout)
        )
        self.direction = nn.Linear(hidden, N_CLASSES)
        self.volatility = nn.Linear(hidden, 2)  # (log_vol, log_vol_logvar)
        self.confidence = nn.Linear(hidden + N_CLASSES, 1)

    def forward(self, h: Tensor) -> NetOutput:
        z = self.trunk(h)
        logits = self.direction(z)
        vol = self.volatility(z)
        proba = torch.softmax(logits, dim=-1).detach()
        conf_logit = self.confidence(torch.cat([z, proba], dim=-1)).squeeze(-1)
        return NetOutput(
            logits=logits,
            log_vol=vol[..., 0],
            log_vol_logvar=vol[..., 1].clamp(LOGVAR_MIN, LOGVAR_MAX),
            conf_logit=conf_logit,
            embedding=h,
        )


def ensure_one_valid(valid: Tensor) -> Tensor:
    """``valid`` with the newest step marked valid in rows that have no valid step at all.

    Such rows (e.g. a graph node whose symbol does not exist yet) then read one bar, zeroed beforehand by the
    caller with ``zero_padded``, instead of producing NaN from an empty softmax or an empty sequence; their
    outputs are finite and carry no information.
    """
    empty = ~valid.any(dim=-1, keepdim=True)  # no data-dependent branch: no host sync on a GPU
    return torch.cat([valid[..., :-1], valid[..., -1:] | empty], dim=-1)


def zero_padded(x: Tensor, valid: Tensor) -> Tensor:
    """``x`` [..., L, F] with padded steps set to 0 (``where``, so NaN/inf in padding cannot leak)."""
    return torch.where(valid.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


def valid_first_index(valid: Tensor, reverse: bool = False) -> Tensor:
    """Per row, time indices [B, L]: the valid steps in time order (newest first if reverse), then padded.

    Gathering a sequence with this index turns any padding into right padding, so a recurrent layer reads the
    valid bars first and its outputs at those bars cannot depend on the padded ones.
    """
    if reverse:
        length = valid.shape[-1]
        return (length - 1) - torch.argsort((~valid.flip(-1)).to(torch.uint8), dim=-1, stable=True)
    return torch.argsort((~valid).to(torch.uint8), dim=-1, stable=True)


def gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``x`` [B, L, F] reordered along time by ``index`` [B, L]."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scatter_time(y: Tensor, index: Tensor) -> Tensor:
    """Inverse of ``gather_time``: puts ``y`` [B, L, F] back at the original time positions."""
    return torch.zeros_like(y).scatter(1, index.unsqueeze(-1).expand(-1, -1, y.shape[-1]), y)


def take_step(y: Tensor, step: Tensor) -> Tensor:
    """``y`` [B, L, F] at time ``step`` [B] (one step per row) → [B, F]."""
    return torch.gather(y, 1, step.view(-1, 1, 1).expand(-1, 1, y.shape[-1])).squeeze(1)


def masked_softmax(scores: Tensor, valid: Tensor, dim: int = -1) -> Tensor:
    """Softmax of ``scores`` over the entries where ``valid`` is True; exactly 0 elsewhere."""
    scores = scores.masked_fill(~valid, float("-inf"))
    return torch.softmax(scores, dim=dim).masked_fill(~valid, 0.0)
