"""Windows read each row's past only, on the right grid positions, scaled by training rows only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cryptopredict.training.windows import build_panel, calendar_features, fit_scaler, grid_targets


def _panel(n_bars: int = 50, late_start: int = 10) -> pd.DataFrame:
    """Two symbols on an hourly grid; B starts ``late_start`` bars later; feature f0 = bar number."""
    t = pd.date_range("2024-01-01", periods=n_bars, freq="h", tz="UTC")
    rows = []
    for sym, start in (("AAA", 0), ("BBB", late_start)):
        for i in range(start, n_bars):
            rows.append({"symbol": sym, "timestamp": t[i], "f0": float(i), "f1": float(i % 7) if sym == "AAA"
                         else np.nan})
    return pd.DataFrame(rows).set_index(["symbol", "timestamp"])


def test_window_holds_the_row_and_the_bars_before_it_in_order():
    X = _panel()
    scaler = fit_scaler(X)
    panel = build_panel(X, scaler)
    assert panel.symbols == ["AAA", "BBB"] and len(panel.times) == 50
    sym, tpos = panel.locate(X.loc[["AAA"]].index[[20]])
    x, tf, valid = panel.windows(torch.as_tensor(sym), torch.as_tensor(tpos), 5)
    centre, scale = scaler.center["f0"], scaler.scale["f0"]
    raw = x[0, :, 0].numpy() * scale + centre
    np.testing.assert_allclose(raw, [16, 17, 18, 19, 20], atol=1e-4)
    assert valid.all()
    np.testing.assert_allclose(tf[0].numpy(), calendar_features(panel.times[16:21]), atol=1e-6)


def test_steps_before_a_symbols_first_bar_are_invalid_and_zero():
    X = _panel(late_start=10)
    panel = build_panel(X, fit_scaler(X))
    sym, tpos = panel.locate(pd.MultiIndex.from_tuples([("BBB", panel.times[12])], names=["symbol", "timestamp"]))
    x, _, valid = panel.windows(torch.as_tensor(sym), torch.as_tensor(tpos), 6)
    assert valid[0].tolist() == [False, False, False, True, True, True]
    assert torch.all(x[0, :3] == 0)
    # NaN features become 0, never NaN
    assert torch.isfinite(panel.values).all()


def test_future_rows_never_reach_a_window():
    X = _panel()
    scaler = fit_scaler(X)
    a = build_panel(X, scaler)
    future = X.copy()
    later = future.index.get_level_values("timestamp") > a.times[30]
    future.loc[later, "f0"] = 1e6
    b = build_panel(future, scaler)
    rows = X.index[X.index.get_level_values("timestamp") <= a.times[30]]
    s, t = a.locate(rows)
    xa, _, va = a.windows(torch.as_tensor(s), torch.as_tensor(t), 8)
    xb, _, vb = b.windows(torch.as_tensor(s), torch.as_tensor(t), 8)
    assert torch.equal(xa, xb) and torch.equal(va, vb)
    # and a panel cut at `end` does not even hold later bars
    cut = build_panel(X, scaler, end=a.times[30])
    assert cut.times.max() == a.times[30]


def test_graph_windows_mask_symbols_that_do_not_exist_yet():
    X = _panel(late_start=10)
    t = X.index.get_level_values("timestamp").unique()
    corr = pd.DataFrame({"timestamp": t, "symbol_a": "AAA", "symbol_b": "BBB", "corr": np.linspace(-1, 1, len(t))})
    panel = build_panel(X, fit_scaler(X), correlations=corr)
    x, tf, valid, node_mask, c = panel.graph_windows(torch.tensor([5, 20]), 4)
    assert x.shape == (2, 2, 4, 2) and tf.shape == (2, 4, 4)
    assert node_mask.tolist() == [[True, False], [True, True]]
    assert not valid[0, 1].any()
    assert c[1, 0, 1].item() == pytest.approx(np.linspace(-1, 1, len(t))[20], abs=1e-6)
    assert c[1, 0, 0].item() == 1.0


def test_scaler_uses_training_rows_only():
    X = _panel()
    train = X[X.index.get_level_values("timestamp") < X.index.get_level_values("timestamp")[0] + pd.Timedelta(hours=20)]
    s = fit_scaler(train)
    assert s.center["f0"] < 20


def test_targets_land_on_their_rows_only():
    X = _panel()
    panel = build_panel(X, fit_scaler(X))
    idx = X.index[:3]
    tg = grid_targets(panel, idx, np.array([0, 2, np.nan]), np.array([0.01, 0.02, 0.03]), np.array([1, 2, 3.0]))
    s, t = panel.locate(idx)
    assert tg.y[s, t].tolist() == [0, 2, -1]
    assert (tg.y >= 0).sum() == 2
    np.testing.assert_allclose(tg.log_vol[s, t].numpy(), np.log([0.01, 0.02, 0.03]), rtol=1e-6)


def test_unknown_row_is_a_clear_error():
    X = _panel()
    panel = build_panel(X, fit_scaler(X))
    with pytest.raises(KeyError, match="not on the feature panel"):
        panel.locate(pd.MultiIndex.from_tuples([("ZZZ", panel.times[0])], names=["symbol", "timestamp"]))
