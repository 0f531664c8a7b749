"""BiLSTM base network: BiLSTM over bars and calendar features, multi-head attention pooling, heads."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cryptopredict.models.heads import (
    NetOutput,
    OutputHeads,
    ensure_one_valid,
    gather_time,
    scatter_time,
    take_step,
    valid_first_index,
    zero_padded,
)


def last_valid_step(valid: Tensor) -> Tensor:
    """Index [B] of the newest valid step of each row of ``valid`` [B, L] (every row must have one)."""
    return (valid.shape[-1] - 1) - valid.flip(-1).to(torch.uint8).argmax(dim=-1)


class BiLSTMNet(nn.Module):
    """BiLSTM over [x, time_feats] → newest valid step attends to all valid steps (MHA) → heads.

    Each direction is its own unidirectional LSTM fed only the valid bars, in time order (forward) or reverse
    time order (backward), with the padding moved behind them; outputs are put back at their bars, so padded
    inputs cannot reach any valid output. Layers are stacked by hand with ``nn.Dropout`` between them (the
    LSTM's own inter-layer dropout is a float a trainer cannot schedule), and attention-weight dropout is off.

    forward(x [B, L, F], time_feats [B, L, C], valid [B, L] bool) → NetOutput with leading dim [B];
    ``attention`` is the pooling attention [B, L] (mean over heads; 0 on padded steps, sums to 1).
    """

    def __init__(
        self,
        n_features: int,
        window: int,
        hidden: int = 32,
        n_layers: int = 1,
        n_heads: int = 4,
        dropout: float = 0.1,
        n_time_feats: int = 4,
    ) -> None:
        super().__init__()
        if (2 * hidden) % n_heads:
            raise ValueError(f"2 * hidden ({2 * hidden}) must be divisible by n_heads ({n_heads})")
        self.n_features, self.window, self.n_time_feats = n_features, window, n_time_feats
        sizes = [n_features + n_time_feats] + [2 * hidden] * (n_layers - 1)
        self.forward_lstms = nn.ModuleList(nn.LSTM(s, hidden, batch_first=True) for s in sizes)
        self.backward_lstms = nn.ModuleList(nn.LSTM(s, hidden, batch_first=True) for s in sizes)
        self.layer_dropout = nn.Dropout(dropout)
        self.attention = nn.MultiheadAttention(2 * hidden, n_heads, dropout=0.0, batch_first=True)
        self.attention_dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(2 * hidden)
        self.heads = OutputHeads(2 * hidden, dropout=dropout)

    def encode(self, x: Tensor, valid: Tensor) -> Tensor:
        """BiLSTM outputs [B, L, 2 * hidden] at each valid step; zeros at padded steps."""
        forward_index = valid_first_index(valid)
        backward_index = valid_first_index(valid, reverse=True)
        h = zero_padded(x, valid)
        for i, (fwd, bwd) in enumerate(zip(self.forward_lstms, self.backward_lstms, strict=True)):
            if i:
                h = self.layer_dropout(h)
            hf = scatter_time(fwd(gather_time(h, forward_index))[0], forward_index)
            hb = scatter_time(bwd(gather_time(h, backward_index))[0], backward_index)
            h = zero_padded(torch.cat([hf, hb], dim=-1), valid)
        return h

    def forward(self, x: Tensor, time_feats: Tensor, valid: Tensor) -> NetOutput:
        valid = valid.bool()
        seq = zero_padded(torch.cat([x, time_feats], dim=-1), valid)
        valid = ensure_one_valid(valid)
        h = self.encode(seq, valid)
        query = take_step(h, last_valid_step(valid)).unsqueeze(1)  # [B, 1, 2H]
        attended, weights = self.attention(query, h, h, key_padding_mask=~valid, need_weights=True)
        embedding = self.norm(query + self.attention_dropout(attended)).squeeze(1)
        out = self.heads(embedding)
        out.attention = weights.squeeze(1)
        return out
