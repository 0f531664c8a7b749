"""The shared training loop: it learns a known answer, keeps the best epoch, follows its schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryptopredict.models.cnn_lstm import CNNLSTMNet
from cryptopredict.models.gnn import GraphNet
from cryptopredict.training.losses import focal_loss
from cryptopredict.training.trainer import GraphSource, SeqSource, TrainConfig, amp_dtype, predict_net, \
    set_dropout, train_net, use_compile
from cryptopredict.training.windows import build_panel, fit_scaler, grid_targets
from tests.support.synthetic_panel import synthetic_panel

WINDOW = 8


@pytest.fixture(scope="module")
def data():
    X, labels, corr = synthetic_panel(n_bars=500)
    panel = build_panel(X, fit_scaler(X), correlations=corr)
    targets = grid_targets(panel, X.index, labels["y"].to_numpy(), labels["fwd_vol"].to_numpy(),
                           labels["sigma"].to_numpy())
    sym, tpos = panel.locate(X.index)
    train = tpos < 350
    return panel, targets, (sym[train], tpos[train]), (sym[~train], tpos[~train])


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=6, batch_size=64, lr=5e-3, patience=10, curriculum_epochs=0, device="cpu", seed=3)
    return TrainConfig(**{**base, **kw})


def _accuracy(net, panel, targets, rows, cfg):
    src = SeqSource(panel, targets, *rows, WINDOW)
    out = predict_net(net, src, cfg, torch.device("cpu"))
    y = targets.y[torch.as_tensor(rows[0]), torch.as_tensor(rows[1])].numpy()
    return float((out.proba.argmax(1) == y).mean()), out, src


def test_sequence_net_learns_the_known_rule_out_of_sample(data):
    panel, targets, tr, va = data
    torch.manual_seed(0)
    net = CNNLSTMNet(n_features=panel.n_features, window=WINDOW)
    cfg = _cfg()
    res = train_net(net, SeqSource(panel, targets, *tr, WINDOW), SeqSource(panel, targets, *va, WINDOW), cfg)
    net.load_state_dict(res.state_dict)
    acc, out, _ = _accuracy(net, panel, targets, va, cfg)
    # the rule is a function of the last 3 bars of f0: chance is ~0.4 (majority class); learnt ≥ 0.75
    assert acc > 0.75, acc
    # volatility head learns log vol = 0.5·f1 − 4: correlation of prediction and truth on held-out rows
    lv = targets.log_vol[torch.as_tensor(va[0]), torch.as_tensor(va[1])].numpy()
    assert np.corrcoef(out.log_vol, lv)[0, 1] > 0.8
    assert len(res.history) == 6 and res.samples_per_s > 0


def test_best_epoch_weights_are_returned(data):
    panel, targets, tr, va = data
    net = CNNLSTMNet(n_features=panel.n_features, window=WINDOW)
    res = train_net(net, SeqSource(panel, targets, *tr, WINDOW), SeqSource(panel, targets, *va, WINDOW),
                    _cfg(epochs=4))
    losses = [h["valid_loss"] for h in res.history]
    assert res.best_epoch == int(np.argmin(losses))
    assert res.best_valid_loss == pytest.approx(min(losses))


def test_early_stopping_stops_after_patience(data):
    panel, targets, tr, va = data
    net = CNNLSTMNet(n_features=panel.n_features, window=WINDOW)
    # a learning rate this small cannot improve after the first epochs: lr 0 never improves at all
    res = train_net(net, SeqSource(panel, targets, *tr, WINDOW), SeqSource(panel, targets, *va, WINDOW),
                    _cfg(epochs=10, lr=1e-12, patience=2))
    assert len(res.history) <= 4


def test_curriculum_first_epoch_sees_only_calm_rows(data):
    panel, targets, tr, va = data
    src = SeqSource(panel, targets, *tr, WINDOW)
    seen: list[np.ndarray] = []
    orig = src.batch

    def spy(idx):
        seen.append(np.asarray(idx))
        return orig(idx)

    src.batch = spy
    net = CNNLSTMNet(n_features=panel.n_features, window=WINDOW)
    cfg = _cfg(epochs=2, curriculum_epochs=1, batch_size=32)
    train_net(net, src, None, cfg)
    n_calm = int(src.calm.sum())
    first = np.concatenate(seen[: math.ceil(n_calm / 32)])
    assert src.calm[first].all() and 0 < n_calm < src.n
    later = np.concatenate(seen[math.ceil(n_calm / 32):])
    assert not src.calm[later].all()  # the second epoch sees everything


def test_data_parallel_ranks_split_samples_without_overlap(data):
    panel, targets, tr, _ = data
    cfg = _cfg(epochs=1, batch_size=50)
    per_rank = []
    for rank in (0, 1):
        src = SeqSource(panel, targets, *tr, WINDOW)
        got: list[np.ndarray] = []
        orig = src.batch
        src.batch = lambda idx, g=got, o=orig: (g.append(np.asarray(idx)), o(idx))[1]
        train_net(CNNLSTMNet(n_features=panel.n_features, window=WINDOW), src, None, cfg, rank=rank, world=2)
        per_rank.append(np.concatenate(got))
    assert len(per_rank[0]) == len(per_rank[1]) == src.n // 2
    assert not set(per_rank[0]) & set(per_rank[1])


def test_fgsm_and_accumulation_train(data):
    panel, targets, tr, va = data
    net = CNNLSTMNet(n_features=panel.n_features, window=WINDOW)
    cfg = _cfg(epochs=10, fgsm_eps=0.05, accumulate=2)
    res = train_net(net, SeqSource(panel, targets, *tr, WINDOW), SeqSource(panel, targets, *va, WINDOW), cfg)
    net.load_state_dict(res.state_dict)
    acc, _, _ = _accuracy(net, panel, targets, va, cfg)
    assert acc > 0.6


def test_graph_net_trains_on_bars(data):
    panel, targets, tr, va = data
    net = GraphNet(n_features=panel.n_features, window=WINDOW)
    tr_src, va_src = GraphSource(panel, targets, tr[1], WINDOW), GraphSource(panel, targets, va[1], WINDOW)
    assert tr_src.n == len(np.unique(tr[1]))
    res = train_net(net, tr_src, va_src, _cfg(epochs=15, batch_size=16))
    net.load_state_dict(res.state_dict)
    out = predict_net(net, va_src, _cfg())
    assert out.proba.shape == (va_src.n, 3, 3)
    y = targets.y[:, va_src.tpos].T.numpy()
    known = y >= 0
    assert (out.proba.argmax(-1)[known] == y[known]).mean() > 0.7


def test_dropout_schedule_and_device_policies():
    net = CNNLSTMNet(n_features=4, window=WINDOW)
    set_dropout(net, 0.33)
    ps = [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert ps and all(p == 0.33 for p in ps)
    cpu = torch.device("cpu")
    assert amp_dtype(TrainConfig(), cpu) is None and not use_compile(TrainConfig(), cpu)
    assert amp_dtype(TrainConfig(amp="bf16"), cpu) is torch.bfloat16
    assert use_compile(TrainConfig(compile="on"), cpu)


def test_focal_loss_reduces_to_cross_entropy_and_downweights_easy_rows():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.2, 0.0]])
    y = torch.tensor([0, 2])
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert focal_loss(logits, y, gamma=0.0) == pytest.approx(float(ce), rel=1e-6)
    easy = focal_loss(logits[:1], y[:1], gamma=2.0) / focal_loss(logits[:1], y[:1], gamma=0.0)
    hard = focal_loss(logits[1:], y[1:], gamma=2.0) / focal_loss(logits[1:], y[1:], gamma=0.0)
    assert easy < hard < 1.0
