"""Labels look forward exactly h bars on the time grid; the dead zone is fitted on training rows only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryptopredict.data.snapshot import read_snapshot_ohlcv
from cryptopredict.labels import (BUY, HOLD, SELL, DirectionLabeler, forward_log_return, forward_realised_vol,
                                  make_labels, trailing_vol)
from tests.conftest import SHIPPED_DATA

H = pd.Timedelta("1h")


def _bars(closes: list[float], hours: list[int] | None = None) -> pd.DataFrame:
    hours = hours if hours is not None else list(range(len(closes)))
    ts = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(hours, unit="h")
    return pd.DataFrame({"timestamp": ts, "close": closes})


def test_forward_return_and_volatility_by_hand() -> None:
    bars = _bars([100.0, 110.0, 99.0, 121.0, 120.0])
    r = forward_log_return(bars, 2, H)
    assert r.iloc[0] == pytest.approx(np.log(99 / 100)) and r.iloc[1] == pytest.approx(np.log(121 / 110))
    assert r.iloc[3:].isna().all()  # no close two bars ahead
    v = forward_realised_vol(bars, 2, H)
    expected = np.sqrt(np.log(110 / 100) ** 2 + np.log(99 / 110) ** 2)
    assert v.iloc[0] == pytest.approx(expected) and v.iloc[3:].isna().all()


def test_a_missing_bar_inside_the_horizon_gives_nan_not_a_longer_horizon() -> None:
    bars = _bars([100.0, 101.0, 103.0, 104.0], hours=[0, 1, 3, 4])  # hour 2 missing
    r = forward_log_return(bars, 2, H)
    assert np.isnan(r.iloc[0])  # close at hour 2 does not exist
    assert r.iloc[1] == pytest.approx(np.log(103 / 101))  # hour 1 → hour 3 is exactly 2 bars
    assert np.isnan(forward_realised_vol(bars, 2, H).iloc[1])  # the 1→2 return is missing


def test_labels_do_not_change_when_the_past_changes_and_do_when_the_future_does() -> None:
    bars = read_snapshot_ohlcv(SHIPPED_DATA, "ETHUSDT").iloc[:3000].reset_index(drop=True)
    base = make_labels(bars, 4, H)
    t = 2000
    past = bars.copy()
    past.loc[: t - 200, "close"] *= 1.5  # alter the far past only: forward labels at t unchanged
    assert make_labels(past, 4, H).iloc[t, 1:3].tolist() == pytest.approx(base.iloc[t, 1:3].tolist())
    future = bars.copy()
    future.loc[t + 4, "close"] *= 1.01
    assert make_labels(future, 4, H).iloc[t, 1] != pytest.approx(base.iloc[t, 1])
    # the trailing σ, a feature-side input, ignores the future
    assert trailing_vol(future, 168, H).iloc[t] == pytest.approx(base.iloc[t, 3])


def test_dead_zone_is_fitted_on_training_rows_and_reused_unchanged() -> None:
    rng = np.random.default_rng(0)
    sigma = np.full(10_000, 0.01)
    r_train = rng.normal(0, 0.02, 10_000)
    lab = DirectionLabeler(horizon=4, hold_share=0.4).fit(r_train, sigma)
    y = lab.transform(r_train, sigma)
    assert np.mean(y == HOLD) == pytest.approx(0.4, abs=0.001)
    k = lab.k
    r_test = rng.normal(0, 0.05, 5_000)  # a wilder test period: fewer HOLDs, same k
    y_test = lab.transform(r_test, sigma[:5_000])
    assert lab.k == k and np.mean(y_test == HOLD) < 0.25
    band = k * 0.01 * 2
    assert (y_test[r_test > band] == BUY).all() and (y_test[r_test < -band] == SELL).all()
    assert np.isnan(lab.transform(np.array([np.nan, 0.1]), np.array([0.01, np.nan]))).all()


def test_labeler_round_trips_and_refuses_to_transform_unfitted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError, match="before fit"):
        DirectionLabeler(horizon=4).transform([0.1], [0.01])
    lab = DirectionLabeler(horizon=4).fit([0.1, -0.2, 0.05, 0.3], [0.01] * 4)
    lab.save(tmp_path / "labeler.json")
    assert DirectionLabeler.load(tmp_path / "labeler.json") == lab
