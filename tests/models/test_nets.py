"""Deep-ensemble base networks: shapes, padding/node-mask invariance, edges, gradients, dropout, overfit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

import pytest
import torch
from torch import Tensor, nn

from cryptopredict.models.bilstm import BiLSTMNet
from cryptopredict.models.cnn_lstm import CNNLSTMNet
from cryptopredict.models.gnn import GraphNet, correlation_graph
from cryptopredict.models.heads import LOGVAR_MAX, LOGVAR_MIN, NetOutput, OutputHeads
from cryptopredict.models.transformer import TransformerNet

N_FEATURES = 6
WINDOW = 12
N_TIME = 4
N_NODES = 5

SEQUENCE_NETS: dict[str, Callable[..., nn.Module]] = {
    "transformer": TransformerNet,
    "bilstm": BiLSTMNet,
    "cnn_lstm": CNNLSTMNet,
}
GRAPH_KINDS = ["gat", "gcn"]
NET_IDS = ["transformer", "bilstm", "cnn_lstm", "gat", "gcn", "bilstm2"]  # order of _all_nets()


def _tensors(out: NetOutput) -> dict[str, Tensor]:
    return {f.name: getattr(out, f.name) for f in fields(out) if getattr(out, f.name) is not None}


def _assert_identical(a: dict[str, Tensor], b: dict[str, Tensor], where: slice | Tensor = slice(None)) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name][where], b[name][where], rtol=0, atol=0, msg=f"{name} changed")


def _sequence_batch(batch: int = 8, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Random inputs where row r has min(2 * r, WINDOW - 1) left-padded steps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, WINDOW, N_FEATURES, generator=g)
    time_feats = torch.randn(batch, WINDOW, N_TIME, generator=g)
    valid = torch.ones(batch, WINDOW, dtype=torch.bool)
    for r in range(batch):
        valid[r, : min(2 * r, WINDOW - 1)] = False
    return x, time_feats, valid


def _graph_batch(batch: int = 3, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Graph inputs: node 1 is masked (does not exist), node 2 has 5 padded steps, corr strong, symmetric."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, N_NODES, WINDOW, N_FEATURES, generator=g)
    time_feats = torch.randn(batch, WINDOW, N_TIME, generator=g)
    valid = torch.ones(batch, N_NODES, WINDOW, dtype=torch.bool)
    valid[:, 1] = False
    valid[:, 2, :5] = False
    node_mask = torch.ones(batch, N_NODES, dtype=torch.bool)
    node_mask[:, 1] = False
    corr = 0.6 + 0.4 * torch.rand(batch, N_NODES, N_NODES, generator=g)
    corr = (corr + corr.transpose(1, 2)) / 2
    corr[:, 0, 3] = corr[:, 3, 0] = -0.9  # strong negative correlation is an edge too
    return x, time_feats, valid, node_mask, corr


def _graph_net(kind: str, **kwargs: object) -> GraphNet:
    return GraphNet(N_FEATURES, WINDOW, hidden=16, conv=kind, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", SEQUENCE_NETS)
def test_sequence_net_output_shapes_and_finite(name: str) -> None:
    torch.manual_seed(0)
    net = SEQUENCE_NETS[name](N_FEATURES, WINDOW).eval()
    x, time_feats, valid = _sequence_batch()
    out = net(x, time_feats, valid)
    assert out.logits.shape == (8, 3)
    assert out.log_vol.shape == out.log_vol_logvar.shape == out.conf_logit.shape == (8,)
    assert out.embedding.shape[0] == 8 and out.embedding.ndim == 2
    for tensor_name, t in _tensors(out).items():
        assert torch.isfinite(t).all(), tensor_name
    assert ((out.log_vol_logvar >= LOGVAR_MIN) & (out.log_vol_logvar <= LOGVAR_MAX)).all()
    if name == "cnn_lstm":
        assert out.attention is None
    else:
        assert out.attention is not None and out.attention.shape == (8, WINDOW)


@pytest.mark.parametrize("kind", GRAPH_KINDS)
def test_graph_net_output_shapes_and_finite(kind: str) -> None:
    torch.manual_seed(0)
    net = _graph_net(kind).eval()
    out = net(*_graph_batch())
    assert out.logits.shape == (3, N_NODES, 3)
    assert out.log_vol.shape == out.log_vol_logvar.shape == out.conf_logit.shape == (3, N_NODES)
    assert out.embedding.shape == (3, N_NODES, 16)
    for tensor_name, t in _tensors(out).items():
        assert torch.isfinite(t).all(), tensor_name
    if kind == "gat":
        assert out.attention is not None and out.attention.shape == (3, N_NODES, N_NODES)
    else:
        assert out.attention is None


def test_output_heads_clamp_logvar_and_keep_leading_dims() -> None:
    heads = OutputHeads(4).eval()
    out = heads(torch.randn(2, 3, 4) * 1e4)
    assert out.logits.shape == (2, 3, 3) and out.conf_logit.shape == (2, 3)
    assert out.log_vol_logvar.min() >= LOGVAR_MIN and out.log_vol_logvar.max() <= LOGVAR_MAX
    assert out.attention is None


@pytest.mark.parametrize("name", SEQUENCE_NETS)
def test_padded_inputs_do_not_change_sequence_net_output(name: str) -> None:
    torch.manual_seed(0)
    net = SEQUENCE_NETS[name](N_FEATURES, WINDOW).eval()
    x, time_feats, valid = _sequence_batch()
    with torch.no_grad():
        before = _tensors(net(x, time_feats, valid))
        x2, t2 = x.clone(), time_feats.clone()
        x2[~valid] = torch.randn(int((~valid).sum()), N_FEATURES) * 1e3
        t2[~valid] = float("nan")
        x2[1, 0, 0] = float("inf")
        after = _tensors(net(x2, t2, valid))
    _assert_identical(before, after)


@pytest.mark.parametrize("name", SEQUENCE_NETS)
def test_left_padding_equals_the_shorter_window(name: str) -> None:
    torch.manual_seed(0)
    net = SEQUENCE_NETS[name](N_FEATURES, WINDOW).eval()
    x, time_feats, valid = _sequence_batch()
    row, n_pad = 3, 6
    with torch.no_grad():
        padded = net(x[row : row + 1], time_feats[row : row + 1], valid[row : row + 1])
        short_valid = torch.ones(1, WINDOW - n_pad, dtype=torch.bool)
        short = net(x[row : row + 1, n_pad:], time_feats[row : row + 1, n_pad:], short_valid)
    torch.testing.assert_close(padded.logits, short.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded.log_vol, short.log_vol, rtol=1e-5, atol=1e-5)


def test_transformer_attention_is_a_distribution_over_valid_steps() -> None:
    torch.manual_seed(0)
    net = TransformerNet(N_FEATURES, WINDOW).eval()
    x, time_feats, valid = _sequence_batch()
    attention = net(x, time_feats, valid).attention
    assert attention is not None
    assert (attention[~valid] == 0).all()
    assert (attention[valid] > 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(8))


def test_bilstm_attention_ignores_padded_steps() -> None:
    torch.manual_seed(0)
    net = BiLSTMNet(N_FEATURES, WINDOW).eval()
    x, time_feats, valid = _sequence_batch()
    attention = net(x, time_feats, valid).attention
    assert attention is not None
    assert (attention[~valid] == 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(8))


@pytest.mark.parametrize("kind", GRAPH_KINDS)
def test_masked_node_cannot_influence_live_nodes(kind: str) -> None:
    torch.manual_seed(0)
    net = _graph_net(kind).eval()
    x, time_feats, valid, node_mask, corr = _graph_batch()
    live = node_mask.clone()
    with torch.no_grad():
        before = _tensors(net(x, time_feats, valid, node_mask, corr))
        x2, valid2, corr2 = x.clone(), valid.clone(), corr.clone()
        x2[:, 1] = torch.randn_like(x2[:, 1]) * 1e3
        x2[:, 1, :3] = float("nan")
        valid2[:, 1] = True  # a masked node's valid flags are ignored too
        corr2[:, 1, :] = 1.0
        corr2[:, :, 1] = 0.99
        after = _tensors(net(x2, time_feats, valid2, node_mask, corr2))
    before.pop("attention", None)
    after.pop("attention", None)
    _assert_identical(before, after, where=live)
    for name, t in after.items():
        assert torch.isfinite(t).all(), name


def test_masked_nodes_get_no_edges_and_nan_corr_is_no_edge() -> None:
    _, _, _, node_mask, corr = _graph_batch()
    corr[0, 2, 4] = corr[0, 4, 2] = float("nan")
    adjacency, edge_index, corr_values = correlation_graph(corr, node_mask, 0.5)
    assert not adjacency[:, 1, :].any() and not adjacency[:, :, 1].any()
    assert not adjacency[0, 2, 4] and adjacency[1, 2, 4]
    assert adjacency[:, 0, 3].all()  # |-0.9| >= threshold
    live_diag = torch.diagonal(adjacency, dim1=1, dim2=2)
    assert torch.equal(live_diag, node_mask)
    assert edge_index.shape == (2, int(adjacency.sum())) and torch.isfinite(corr_values).all()
    masked_global = torch.tensor([b * N_NODES + 1 for b in range(3)])
    assert not torch.isin(edge_index, masked_global).any()


@pytest.mark.parametrize("kind", GRAPH_KINDS)
def test_graph_edges_follow_the_correlation_threshold(kind: str) -> None:
    torch.manual_seed(0)
    net = _graph_net(kind).eval()
    x, time_feats, valid, node_mask, corr = _graph_batch()
    x2 = x.clone()
    x2[:, 3] = torch.randn_like(x2[:, 3])  # change live node 3 only
    weak = corr * 0.4  # |corr| <= 0.4 < 0.5 everywhere: only self-loops
    with torch.no_grad():
        weak_before = net(x, time_feats, valid, node_mask, weak).logits
        weak_after = net(x2, time_feats, valid, node_mask, weak).logits
        strong_before = net(x, time_feats, valid, node_mask, corr).logits
        strong_after = net(x2, time_feats, valid, node_mask, corr).logits
        isolated = torch.full_like(corr, float("nan"))
        isolated_out = net(x, time_feats, valid, node_mask, isolated).logits
    others = [0, 2, 4]
    torch.testing.assert_close(weak_before[:, others], weak_after[:, others], rtol=0, atol=0)
    assert not torch.allclose(weak_before[:, 3], weak_after[:, 3])
    assert (strong_before[:, others] - strong_after[:, others]).abs().amax() > 1e-4
    # below the threshold everywhere is the same as no edges at all
    torch.testing.assert_close(weak_before, isolated_out, rtol=0, atol=0)


def test_gat_attention_rows_are_distributions_over_edges() -> None:
    torch.manual_seed(0)
    net = _graph_net("gat").eval()
    x, time_feats, valid, node_mask, corr = _graph_batch()
    corr[:, 0, 2] = corr[:, 2, 0] = 0.1
    attention = net(x, time_feats, valid, node_mask, corr).attention
    assert attention is not None
    adjacency, _, _ = correlation_graph(corr, node_mask, 0.5)
    assert (attention[~adjacency] == 0).all()
    torch.testing.assert_close(attention.sum(-1), node_mask.float())


def _all_nets() -> list[tuple[str, nn.Module, tuple[Tensor, ...]]]:
    torch.manual_seed(0)
    nets: list[tuple[str, nn.Module, tuple[Tensor, ...]]] = [
        (name, cls(N_FEATURES, WINDOW), _sequence_batch()) for name, cls in SEQUENCE_NETS.items()
    ]
    nets += [(f"gnn-{kind}", _graph_net(kind), _graph_batch()) for kind in GRAPH_KINDS]
    nets.append(("bilstm-2layer", BiLSTMNet(N_FEATURES, WINDOW, n_layers=2), _sequence_batch()))
    return nets


@pytest.mark.parametrize("index", range(6), ids=NET_IDS)
def test_gradients_reach_every_parameter(index: int) -> None:
    name, net, inputs = _all_nets()[index]
    net.train()
    out = net(*inputs)
    loss = out.logits.square().mean() + out.log_vol.mean() + out.log_vol_logvar.mean() + out.conf_logit.mean()
    loss.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


@pytest.mark.parametrize("index", range(6), ids=NET_IDS)
def test_every_dropout_is_a_schedulable_module(index: int) -> None:
    """With every nn.Dropout at p=0 train mode is deterministic (no hidden float dropout); p=0.5 is not."""
    name, net, inputs = _all_nets()[index]
    dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert dropouts, name
    with torch.no_grad():
        net.eval()
        reference = net(*inputs).logits
        net.train()
        for m in dropouts:
            m.p = 0.0
        first, second = net(*inputs).logits, net(*inputs).logits
        for m in dropouts:
            m.p = 0.5
        noisy = net(*inputs).logits
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, reference, rtol=1e-5, atol=1e-5)
    assert (noisy - reference).abs().amax() > 1e-3


def _overfit_accuracy(net: nn.Module, inputs: tuple[Tensor, ...], labels: Tensor, steps: int = 200) -> float:
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        optimizer.zero_grad()
        logits = net(*inputs).logits.reshape(-1, 3)
        nn.functional.cross_entropy(logits, labels.reshape(-1)).backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        predicted = net(*inputs).logits.reshape(-1, 3).argmax(-1)
    return float((predicted == labels.reshape(-1)).float().mean())


@pytest.mark.parametrize("name", SEQUENCE_NETS)
def test_sequence_net_memorises_random_labels(name: str) -> None:
    torch.manual_seed(0)
    net = SEQUENCE_NETS[name](N_FEATURES, WINDOW, dropout=0.0)
    x, time_feats, valid = _sequence_batch(batch=64, seed=1)
    labels = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(2))
    assert _overfit_accuracy(net, (x, time_feats, valid), labels) > 0.9


@pytest.mark.parametrize("kind", GRAPH_KINDS)
def test_graph_net_memorises_random_labels(kind: str) -> None:
    torch.manual_seed(0)
    net = _graph_net(kind, dropout=0.0)
    inputs = _graph_batch(batch=16, seed=1)  # 16 graphs x 4 live nodes = 64 labelled nodes
    node_mask = inputs[3]
    labels = torch.randint(0, 3, (16, N_NODES), generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(200):
        optimizer.zero_grad()
        logits = net(*inputs).logits
        nn.functional.cross_entropy(logits[node_mask], labels[node_mask]).backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        predicted = net(*inputs).logits.argmax(-1)
    assert float((predicted[node_mask] == labels[node_mask]).float().mean()) > 0.9
