"""Graph base network: symbols are nodes, each encoded from its own window; edges where returns correlate.

Edges join two live nodes whose correlation magnitude reaches ``edge_threshold`` (NaN = unknown = no edge);
every live node has a self-loop. Nodes whose symbol does not exist yet (``node_mask`` False) get no edges at
all, so they cannot influence any other node; their own outputs are finite but meaningless.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GCNConv  # type: ignore[import-untyped]

from cryptopredict.models.heads import (
    NetOutput,
    OutputHeads,
    ensure_one_valid,
    gather_time,
    take_step,
    valid_first_index,
    zero_padded,
)


class WindowEncoder(nn.Module):
    """GRU over a node's valid bars (moved to the front); output at its newest bar [.., hidden]."""

    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:  # x [S, L, D], valid [S, L] → [S, hidden]
        x = zero_padded(x, valid)
        valid = ensure_one_valid(valid)
        h, _ = self.gru(gather_time(x, valid_first_index(valid)))
        return take_step(h, valid.sum(dim=-1) - 1)


def correlation_graph(
    corr: Tensor, node_mask: Tensor, edge_threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched sparse graph from ``corr`` [B, N, N] and ``node_mask`` [B, N].

    Returns ``adjacency`` [B, N, N] bool (self-loops on live nodes), ``edge_index`` [2, E] over the B * N
    flattened nodes (row 0 = source j, row 1 = target i for adjacency[b, i, j]), and ``corr_values`` [E] (the
    signed correlation of each edge, 1 on self-loops).
    """
    n = corr.shape[-1]
    live = node_mask.bool()
    known = torch.nan_to_num(corr, nan=0.0)
    eye = torch.eye(n, dtype=torch.bool, device=corr.device)
    adjacency = ((known.abs() >= edge_threshold) & ~torch.isnan(corr)) | eye
    adjacency = adjacency & live.unsqueeze(-1) & live.unsqueeze(-2)
    b, i, j = adjacency.nonzero(as_tuple=True)
    edge_index = torch.stack([b * n + j, b * n + i])
    corr_values = torch.where(i == j, torch.ones_like(known[b, i, j]), known[b, i, j])
    return adjacency, edge_index, corr_values


class GraphNet(nn.Module):
    """Per-node window encoder → residual pre-norm graph layers (GAT or GCN) on the correlation graph → heads.

    forward(x [B, N, L, F], time_feats [B, L, C], valid [B, N, L] bool, node_mask [B, N] bool,
    corr [B, N, N] float, NaN where unknown) → NetOutput with leading dims [B, N]. GCN weighs edges by |corr|;
    GAT reads (corr, |corr|) as edge features. ``attention`` is, for GAT, the last layer's attention [B, N, N]
    (mean over heads; row i = how node i weighs its sources j, 0 where there is no edge) and None for GCN.
    GAT's attention-weight dropout is off so that every dropout is an ``nn.Dropout`` a trainer can schedule.
    """

    def __init__(
        self,
        n_features: int,
        window: int,
        hidden: int = 32,
        n_layers: int = 2,
        conv: Literal["gat", "gcn"] = "gat",
        heads: int = 2,
        edge_threshold: float = 0.5,
        dropout: float = 0.1,
        n_time_feats: int = 4,
    ) -> None:
        super().__init__()
        if conv not in ("gat", "gcn"):
            raise ValueError(f"conv must be 'gat' or 'gcn', got {conv!r}")
        if conv == "gat" and hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads}) for GAT")
        self.n_features, self.window, self.n_time_feats = n_features, window, n_time_feats
        self.conv_kind, self.edge_threshold = conv, edge_threshold
        self.encoder = WindowEncoder(n_features + n_time_feats, hidden)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(n_layers))
        if conv == "gat":
            self.convs = nn.ModuleList(
                GATConv(hidden, hidden // heads, heads=heads, concat=True, dropout=0.0, edge_dim=2,
                        add_self_loops=False)
                for _ in range(n_layers)
            )
        else:
            self.convs = nn.ModuleList(
                GCNConv(hidden, hidden, add_self_loops=False, normalize=True) for _ in range(n_layers)
            )
        self.dropout = nn.Dropout(dropout)
        self.heads = OutputHeads(hidden, dropout=dropout)

    def forward(
        self, x: Tensor, time_feats: Tensor, valid: Tensor, node_mask: Tensor, corr: Tensor
    ) -> NetOutput:
        batch, n_nodes, length, _ = x.shape
        node_mask = node_mask.bool()
        valid = valid.bool() & node_mask.unsqueeze(-1)
        calendar = time_feats.unsqueeze(1).expand(-1, n_nodes, -1, -1)
        seq = torch.cat([x, calendar], dim=-1).reshape(batch * n_nodes, length, -1)
        h = self.encoder(seq, valid.reshape(batch * n_nodes, length))  # [B * N, H]
        _, edge_index, corr_values = correlation_graph(corr, node_mask, self.edge_threshold)
        alpha = None
        for norm, conv in zip(self.norms, self.convs, strict=True):
            z = norm(h)
            if self.conv_kind == "gat":
                edge_attr = torch.stack([corr_values, corr_values.abs()], dim=-1)
                z, (_, alpha) = conv(z, edge_index, edge_attr=edge_attr, return_attention_weights=True)
            else:
                z = conv(z, edge_index, edge_weight=corr_values.abs())
            h = h + self.dropout(F.gelu(z))
        out = self.heads(h.reshape(batch, n_nodes, -1))
        if alpha is not None:
            attention = alpha.new_zeros(batch * n_nodes * n_nodes)
            flat = (edge_index[1] * n_nodes) + (edge_index[0] % n_nodes)  # (b, i, j) → b*N*N + i*N + j
            out.attention = attention.index_put((flat,), alpha.mean(dim=-1)).view(batch, n_nodes, n_nodes)
        return out
