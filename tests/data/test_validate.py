"""Validation: every check sends the rows it should to quarantine, with its reason, and nothing else."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cryptopredict.data.schemas import FEAR_GREED
from cryptopredict.data.snapshot import read_snapshot_ohlcv
from cryptopredict.data.validate import (find_gaps, spike_outliers, timeframe_delta, validate_ohlcv,
                                         validate_rows)
from tests.conftest import SHIPPED_DATA
from tests.support.frames import ohlcv_frame


def _reasons(result) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    out: dict[str, list[str]] = {}
    for r in result.quarantine.itertuples():
        out.setdefault(r.reason, []).append(json.loads(r.row_key)["timestamp"][:16])
    return out


def test_clean_bars_pass_untouched() -> None:
    df = ohlcv_frame(100)
    result = validate_ohlcv(df, timeframe="1h")
    assert result.quarantine.empty
    pd.testing.assert_frame_equal(result.clean, df)


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("high", 1.0, "ohlc_inconsistent"),  # high below open/close
        ("low", 1e9, "ohlc_inconsistent"),  # low above open/close
        ("open", -5.0, "non_positive_price"),
        ("close", 0.0, "non_positive_price"),
        ("volume", -1.0, "negative_volume"),
        ("close", np.nan, "null_value"),
    ],
)
def test_each_bad_row_goes_to_quarantine_with_its_reason(column: str, value: float, reason: str) -> None:
    df = ohlcv_frame(10)
    df.loc[4, column] = value
    result = validate_ohlcv(df, timeframe="1h")
    assert _reasons(result) == {reason: ["2024-01-01T04:00"]}
    assert len(result.clean) == 9 and df.loc[4, "timestamp"] not in set(result.clean["timestamp"])
    stored_row = json.loads(result.quarantine.loc[0, "row"])
    assert stored_row["symbol"] == "BTCUSDT" and result.quarantine.loc[0, "table"] == "ohlcv"


def test_off_grid_duplicate_and_backwards_timestamps() -> None:
    df = ohlcv_frame(6)
    off = df.iloc[[2]].assign(timestamp=df.loc[2, "timestamp"] + pd.Timedelta(minutes=30))
    dup = df.iloc[[3]]
    back = df.iloc[[1]].assign(timestamp=df.loc[1, "timestamp"] - pd.Timedelta(hours=5))  # before row 0
    result = validate_ohlcv(pd.concat([df, off, dup, back], ignore_index=True), timeframe="1h")
    assert _reasons(result) == {"off_grid": ["2024-01-01T02:30"], "duplicate": ["2024-01-01T03:00"],
                                "not_increasing": ["2023-12-31T20:00"]}
    assert result.clean["timestamp"].tolist() == df["timestamp"].tolist()


def test_naive_timestamps_and_missing_columns_are_errors_not_quarantine() -> None:
    df = ohlcv_frame(3)
    with pytest.raises(ValueError, match="tz-aware UTC"):
        validate_ohlcv(df.assign(timestamp=df["timestamp"].dt.tz_localize(None)), timeframe="1h")
    with pytest.raises(ValueError, match=r"lack columns \['close'\]"):
        validate_ohlcv(df.drop(columns="close"), timeframe="1h")


def test_a_decimal_slip_is_an_outlier_but_a_lasting_crash_is_not() -> None:
    df = ohlcv_frame(400, seed=3)
    slip, crash = 300, 350
    df.loc[slip, ["close", "high"]] = df.loc[slip, "close"] * 10  # bad tick: x10, back next bar
    df.loc[slip + 1, "open"] = df.loc[slip, "close"]
    df.loc[slip + 1, "high"] = max(df.loc[slip + 1, "high"], df.loc[slip + 1, "open"])
    factor = 0.6  # a 40% crash that stays
    df.loc[crash:, ["open", "high", "low", "close"]] *= factor
    df.loc[crash, "open"] /= factor
    df.loc[crash, "high"] = df.loc[crash, ["open", "close"]].max()
    result = validate_ohlcv(df, timeframe="1h", outlier_threshold=50)
    assert _reasons(result) == {"outlier": [str(df.loc[slip, "timestamp"].isoformat())[:16]]}


def test_spike_statistics_use_the_stored_history() -> None:
    hist = ohlcv_frame(200, seed=1)["close"].to_numpy()
    new = np.array([hist[-1] * 20, hist[-1], hist[-1] * 1.001])  # the first new bar is a spike
    assert spike_outliers(new, threshold=50, window=720, min_periods=48, history=hist).tolist() == [
        True, False, False]
    assert not spike_outliers(new, threshold=50, window=720, min_periods=48).any()  # too little history


def test_shipped_real_data_passes_without_quarantine_and_its_gaps_match_the_readme() -> None:
    df = read_snapshot_ohlcv(SHIPPED_DATA, "BTCUSDT")
    result = validate_ohlcv(df, timeframe="1h")
    assert result.quarantine.empty and len(result.clean) == 65_590
    gaps = find_gaps(result.clean["timestamp"], timeframe_delta("1h"))
    assert len(gaps) == 27 and int(gaps["missing_bars"].sum()) == 122  # data/README.md: 27 gaps, 122 h
    longest = gaps.loc[gaps["missing_bars"].idxmax()]
    assert (str(longest["gap_start"]), str(longest["gap_end"])) == (
        "2018-02-08 01:00:00+00:00", "2018-02-09 09:00:00+00:00")


def test_find_gaps_counts_runs_of_missing_bars() -> None:
    ts = pd.Series(pd.to_datetime(["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 04:00",
                                   "2024-01-01 05:00", "2024-01-01 07:00"], utc=True))
    g = find_gaps(ts, pd.Timedelta("1h"))
    assert g["missing_bars"].tolist() == [2, 1]
    assert g["gap_start"].dt.hour.tolist() == [2, 6] and g["gap_end"].dt.hour.tolist() == [3, 6]


def test_daily_tables_need_midnight_dates_and_values() -> None:
    days = pd.to_datetime(["2024-01-01 00:00", "2024-01-02 00:00", "2024-01-03 05:30", "2024-01-04 00:00"], utc=True)
    df = pd.DataFrame({"date": days, "value": [10, 20, 30, None], "classification": "Fear", "source": "t"})
    result = validate_rows(FEAR_GREED, df, value_columns=("value",))
    assert result.counts() == {"null_value": 1, "off_grid": 1}
    assert result.clean["date"].dt.day.tolist() == [1, 2]


@pytest.mark.parametrize("bad", ["1x", "h", "0h", "-1d", ""])
def test_unknown_timeframes_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="unsupported timeframe"):
        timeframe_delta(bad)
