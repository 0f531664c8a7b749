"""CNN-LSTM base network: multi-scale causal 1-D convolutions over bars, an LSTM, the newest bar → heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryptopredict.models.heads import (
    NetOutput,
    OutputHeads,
    ensure_one_valid,
    gather_time,
    take_step,
    valid_first_index,
    zero_padded,
)


class CausalConvBranch(nn.Module):
    """Conv1d whose output at bar t reads bars t-k+1..t only (left zero padding), then GELU."""

    def __init__(self, d_in: int, channels: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(d_in, channels, kernel)

    def forward(self, x: Tensor) -> Tensor:  # [B, C_in, L] → [B, channels, L]
        return F.gelu(self.conv(F.pad(x, (self.kernel - 1, 0))))


class CNNLSTMNet(nn.Module):
    """Causal conv branches (one per kernel, concatenated) → LayerNorm → LSTM → newest bar → heads.

    The valid bars are first moved to the front of the window (padding behind them), so causal convolutions
    and the LSTM read only real bars up to each step: the output cannot depend on padded inputs.

    forward(x [B, L, F], time_feats [B, L, C], valid [B, L] bool) → NetOutput with leading dim [B];
    ``attention`` is None.
    """

    def __init__(
        self,
        n_features: int,
        window: int,
        channels: int = 32,
        kernels: tuple[int, ...] = (3, 5, 7),
        hidden: int = 32,
        dropout: float = 0.1,
        n_time_feats: int = 4,
    ) -> None:
        super().__init__()
        self.n_features, self.window, self.n_time_feats = n_features, window, n_time_feats
        d_in = n_features + n_time_feats
        self.branches = nn.ModuleList(CausalConvBranch(d_in, channels, k) for k in kernels)
        self.conv_norm = nn.LayerNorm(channels * len(kernels))
        self.conv_dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(channels * len(kernels), hidden, batch_first=True)
        self.heads = OutputHeads(hidden, dropout=dropout)

    def forward(self, x: Tensor, time_feats: Tensor, valid: Tensor) -> NetOutput:
        valid = valid.bool()
        seq = zero_padded(torch.cat([x, time_feats], dim=-1), valid)
        valid = ensure_one_valid(valid)
        h = gather_time(seq, valid_first_index(valid)).transpose(1, 2)
        h = torch.cat([branch(h) for branch in self.branches], dim=1).transpose(1, 2)  # [B, L, K * channels]
        h, _ = self.lstm(self.conv_dropout(self.conv_norm(h)))
        newest = valid.sum(dim=-1) - 1
        return self.heads(take_step(h, newest))
