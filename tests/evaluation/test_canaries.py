"""The canary data carries no signal and keeps the real data's shape."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cryptopredict.data.snapshot import read_snapshot_ohlcv
from cryptopredict.data.validate import validate_ohlcv
from cryptopredict.evaluation.canaries import random_walk_bars, shuffle_within_folds
from tests.conftest import SHIPPED_DATA


def test_random_walk_keeps_timestamps_and_volatility_and_is_valid_ohlc() -> None:
    real = read_snapshot_ohlcv(SHIPPED_DATA, "ETHUSDT").iloc[:20_000].reset_index(drop=True)
    fake = random_walk_bars(real, seed=3)
    assert fake["timestamp"].equals(real["timestamp"])
    r_real, r_fake = np.log(real["close"]).diff().std(), np.log(fake["close"]).diff().std()
    assert abs(r_fake / r_real - 1) < 0.03
    assert validate_ohlcv(fake, timeframe="1h", outlier_threshold=50).quarantine.empty
    assert sorted(fake["volume"]) == sorted(real["volume"]) and not fake["volume"].equals(real["volume"])
    r = np.log(fake["close"]).diff().dropna().to_numpy()
    lag1 = np.corrcoef(r[:-1], r[1:])[0, 1]
    assert abs(lag1) < 3 / np.sqrt(len(r))  # no serial dependence to learn
    assert not random_walk_bars(real, seed=4)["close"].equals(fake["close"])


def test_shuffle_stays_inside_each_fold() -> None:
    values = np.arange(12)
    folds = np.array([0] * 4 + [1] * 4 + [2] * 4)
    out = shuffle_within_folds(pd.Series(values), folds, seed=0)
    for f in range(3):
        assert sorted(out[folds == f]) == sorted(values[folds == f])
    assert not np.array_equal(out, values)


def test_random_walk_has_no_directional_bias() -> None:
    """Up and down are equally likely in the canary: 'always SELL' must not beat 50 %."""
    real = read_snapshot_ohlcv(SHIPPED_DATA, "SOLUSDT").iloc[:40_000].reset_index(drop=True)
    r = np.concatenate([np.log(random_walk_bars(real, seed=s)["close"]).diff().dropna().to_numpy()
                        for s in range(5)])
    share_up = float(np.mean(r > 0))
    assert abs(share_up - 0.5) < 3 * np.sqrt(0.25 / r.size)
