"""The promotion rule on synthetic prediction frames: log-loss tolerance AND a one-sided DM test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryptopredict.registry.challenge import NotComparable, compare, log_loss_rows

BARS = 400


def _frame(p_true: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    times = pd.date_range("2021-01-01", periods=BARS, freq="h", tz="UTC")
    idx = pd.MultiIndex.from_product([["BTCUSDT", "ETHUSDT"], times], names=["symbol", "timestamp"])
    proba = np.repeat(((1 - p_true) / 2)[:, None], 3, axis=1)
    proba[np.arange(len(y)), y] = p_true
    return pd.DataFrame({"p_sell": proba[:, 0], "p_hold": proba[:, 1], "p_buy": proba[:, 2],
                         "y_true": y.astype(float)}, index=idx)


@pytest.fixture
def y() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 3, 2 * BARS)


def test_equal_models_pass_and_the_numbers_are_the_log_losses(y: np.ndarray) -> None:
    champ = _frame(np.full(len(y), 1 / 3), y)
    c = compare(champ.copy(), champ, horizon=4, tolerance=0.0, alpha=0.05)
    assert c.promote and c.difference == 0 and c.rows == 2 * BARS and c.bars == BARS
    assert c.champion_log_loss == pytest.approx(np.log(3))
    assert "≤ tolerance" in c.reason and "≥ alpha" in c.reason


def test_a_better_challenger_passes_a_worse_one_fails(y: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    champ = _frame(np.full(len(y), 1 / 3), y)
    better = _frame(np.clip(0.40 + 0.05 * rng.standard_normal(len(y)), 0.05, 0.95), y)
    worse = _frame(np.clip(0.30 + 0.05 * rng.standard_normal(len(y)), 0.05, 0.95), y)
    up = compare(better, champ, 4, 0.0, 0.05)
    assert up.promote and up.difference < 0 and up.dm_p_worse > 0.5
    down = compare(worse, champ, 4, 0.0, 0.05)
    assert not down.promote and down.difference > 0 and "> tolerance" in down.reason
    # within a generous tolerance, but the DM test finds it significantly worse: still rejected
    lenient = compare(worse, champ, 4, tolerance=1.0, alpha=0.05)
    assert not lenient.promote and lenient.dm_p_worse < 0.05 and "≤ tolerance" in lenient.reason
    assert "< alpha" in lenient.reason


def test_rows_without_a_class_are_left_out_and_too_few_shared_rows_is_an_error(y: np.ndarray) -> None:
    champ = _frame(np.full(len(y), 1 / 3), y)
    champ.iloc[:10, champ.columns.get_loc("y_true")] = np.nan
    assert len(log_loss_rows(champ)) == 2 * BARS - 10
    with pytest.raises(NotComparable, match="only 1 rows"):
        compare(champ.iloc[[50]], champ, 4, 0.0, 0.05)
