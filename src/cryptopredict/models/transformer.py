"""Transformer base network: pre-norm encoder over a window of bars, temporal attention pooling, heads."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cryptopredict.models.heads import NetOutput, OutputHeads, ensure_one_valid, masked_softmax, zero_padded


class TimeAwareEncoding(nn.Module):
    """Learned bar-position encoding (by bars before the newest) plus a projection of calendar features.

    Positions are counted from the END of the window, so bar "t-3" gets the same encoding whatever the window
    length or left padding.
    """

    def __init__(self, window: int, d_model: int, n_time_feats: int) -> None:
        super().__init__()
        self.window = window
        self.position = nn.Parameter(torch.randn(window, d_model) * 0.02)
        self.calendar = nn.Linear(n_time_feats, d_model)

    def forward(self, time_feats: Tensor) -> Tensor:
        length = time_feats.shape[-2]
        if length > self.window:
            raise ValueError(
                f"window of {length} bars is longer than the {self.window} the network was built for"
            )
        return self.position[self.window - length:] + self.calendar(time_feats)


class AttentionPooling(nn.Module):
    """Scores each time step against a learned query and pools with a softmax over valid steps only."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.key = nn.Linear(d_model, d_model)
        self.query = nn.Parameter(torch.randn(d_model) / math.sqrt(d_model))
        self.scale = 1.0 / math.sqrt(d_model)

    def forward(self, h: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        scores = torch.tanh(self.key(h)) @ self.query * self.scale  # [B, L]
        weights = masked_softmax(scores, valid)
        return torch.einsum("bl,bld->bd", weights, h), weights


class TransformerNet(nn.Module):
    """Input projection → time-aware encoding → pre-norm GELU encoder → temporal attention pooling → heads.

    forward(x [B, L, F], time_feats [B, L, C], valid [B, L] bool) → NetOutput with leading dim [B];
    ``attention`` is the pooling distribution [B, L] (0 on padded steps, sums to 1). Attention-weight dropout
    inside self-attention is off so that every dropout is an ``nn.Dropout`` a trainer can schedule.
    """

    def __init__(
        self,
        n_features: int,
        window: int,
        d_model: int = 32,
        n_heads: int = 4,
        n_layers: int = 2,
        ff_mult: int = 2,
        dropout: float = 0.1,
        n_time_feats: int = 4,
    ) -> None:
        super().__init__()
        self.n_features, self.window, self.n_time_feats = n_features, window, n_time_feats
        self.input_proj = nn.Linear(n_features, d_model)
        self.encoding = TimeAwareEncoding(window, d_model, n_time_feats)
        self.input_dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward=ff_mult * d_model, dropout=dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        layer.self_attn.dropout = 0.0
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(d_model)
        self.pool = AttentionPooling(d_model)
        self.heads = OutputHeads(d_model, dropout=dropout)

    def forward(self, x: Tensor, time_feats: Tensor, valid: Tensor) -> NetOutput:
        valid = valid.bool()
        x = zero_padded(x, valid)
        time_feats = zero_padded(time_feats, valid)
        valid = ensure_one_valid(valid)
        h = self.input_dropout(self.input_proj(x) + self.encoding(time_feats))
        h = self.encoder(h, src_key_padding_mask=~valid)
        h = self.final_norm(h)
        pooled, weights = self.pool(h, valid)
        out = self.heads(pooled)
        out.attention = weights
        return out
