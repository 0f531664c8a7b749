"""Context features: exact publication lags, weekend/holiday carry-forward, NaN spans, trailing z-scores
against hand computations, and the look-ahead property on the shipped data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from cryptopredict.data.snapshot import read_snapshot_context, read_snapshot_ohlcv
from cryptopredict.features.context import ContextConfig, Publication, available_at, compute_context
from tests.conftest import SHIPPED_DATA
from tests.support.frames import ohlcv_frame
from tests.support.lookahead import assert_no_lookahead, random_cuts

H = pd.Timedelta(hours=1)
CFG = ContextConfig()


def utc(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return {t: read_snapshot_context(SHIPPED_DATA, t) for t in ("fear_greed", "onchain", "macro")}


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    return read_snapshot_ohlcv(SHIPPED_DATA, "BTCUSDT")


@pytest.fixture(scope="module")
def full(btc: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The context frame of all BTC bars, indexed by bar timestamp."""
    res = compute_context(btc, tables, CFG)
    return res.frame.set_index(btc["timestamp"])


def daily(tables: dict[str, pd.DataFrame], table: str, key: str | None, name: str | None) -> pd.Series:
    df = tables[table] if key is None else tables[table][tables[table][key] == name]
    return pd.Series(df["value"].to_numpy(float), index=pd.DatetimeIndex(df["date"])).sort_index()


def known_by(tables: dict[str, pd.DataFrame], cfg: ContextConfig,
             close: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """Every table cut to the rows available at ``close`` under the configured publication rules."""
    def cut(df: pd.DataFrame, pub: Publication) -> pd.DataFrame:
        return df[np.asarray(available_at(df["date"], pub.lag, pub.calendar) <= close)]

    macro = tables["macro"]
    parts = [cut(macro[macro["series"] == s], pub) for s, pub in cfg.macro.items()]
    return {"fear_greed": cut(tables["fear_greed"], cfg.fear_greed),
            "onchain": cut(tables["onchain"], cfg.onchain),
            "macro": pd.concat(parts, ignore_index=True)}


def small_tables(fg_days: dict[str, float]) -> dict[str, pd.DataFrame]:
    """A Fear & Greed table with the given days and empty on-chain/macro tables."""
    fg = pd.DataFrame({"date": pd.DatetimeIndex(list(fg_days), tz="UTC").as_unit("ns"),
                       "value": list(fg_days.values())})
    empty = {"date": pd.DatetimeIndex([], tz="UTC"), "value": np.array([], float)}
    return {"fear_greed": fg, "onchain": pd.DataFrame({"asset": [], "metric": [], **empty}),
            "macro": pd.DataFrame({"series": [], **empty})}


def test_available_at_daily_and_us_business_calendars() -> None:
    two = pd.Timedelta(hours=2)
    assert available_at([utc("2024-03-08")], two)[0] == utc("2024-03-09 02:00")
    got = available_at([utc(d) for d in ("2024-03-07", "2024-03-08", "2024-03-09", "2024-07-03", "2024-07-04",
                                          "2024-01-12")], 14 * H, "us_business")
    want = ["2024-03-08 14:00",  # Thu → Fri
            "2024-03-11 14:00",  # Fri → Mon
            "2024-03-11 14:00",  # Sat → Mon
            "2024-07-05 14:00",  # Wed before Independence Day → Fri
            "2024-07-05 14:00",  # the holiday itself → Fri
            "2024-01-16 14:00"]  # Fri before Martin Luther King Day → Tue
    assert list(got) == [utc(w) for w in want]
    with pytest.raises(ValueError, match="midnight"):
        available_at([utc("2024-03-08 05:00")], two)
    with pytest.raises(ValueError, match="timezone"):
        available_at([pd.Timestamp("2024-03-08")], two)


@pytest.mark.parametrize(("lag_hours", "first_bar"), [(1, "2024-01-03 00:00"), (1.5, "2024-01-03 01:00"),
                                                      (0, "2024-01-02 23:00")])
def test_a_days_value_appears_first_at_the_bar_whose_close_reaches_d_plus_1_plus_lag(
        lag_hours: float, first_bar: str) -> None:
    bars = ohlcv_frame(96, start="2024-01-01")
    cfg = ContextConfig(fear_greed=Publication(lag_hours=lag_hours, max_age_days=4), macro={})
    res = compute_context(bars, small_tables({"2024-01-01": 10, "2024-01-02": 20, "2024-01-03": 35}), cfg)
    f = res.frame.set_index(bars["timestamp"])
    first = utc(first_bar)
    assert f.loc[first, "cx_fg_value"] == 20  # day 2024-01-02 …
    assert f.loc[first - H, "cx_fg_value"] == 10  # … not one bar earlier
    assert f.loc[first, "cx_fg_chg_1d"] == 10
    assert f.loc[first, "cx_fg_age_h"] == pytest.approx((first + H - utc("2024-01-03")) / H)
    day_before = first - pd.Timedelta(days=1)  # where day 2024-01-01 appears, by the same rule
    assert f.loc[day_before, "cx_fg_value"] == 10 and f.loc[:day_before - H, "cx_fg_value"].isna().all()


def test_onchain_and_fred_lags_are_exact_on_the_shipped_data(full: pd.DataFrame,
                                                             tables: dict[str, pd.DataFrame]) -> None:
    # on-chain day D = 2022-05-10, lag 4 h: first usable at the bar closing 2022-05-11 04:00
    adr = np.log(daily(tables, "onchain", "metric", "AdrActCnt"))
    day, prev = utc("2022-05-10"), utc("2022-05-09")
    assert full.loc[utc("2022-05-11 03:00"), "cx_oc_adract_logchg_1d"] == pytest.approx(adr[day] - adr[prev])
    assert full.loc[utc("2022-05-11 02:00"), "cx_oc_adract_logchg_1d"] == pytest.approx(
        adr[prev] - adr[prev - pd.Timedelta(days=1)])
    # US 10y for Friday 2024-03-08 (FRED, next business day + 22 h): first usable at Mon 2024-03-11 22:00
    y = daily(tables, "macro", "series", "us10y_yield")
    fri, thu, wed = utc("2024-03-08"), utc("2024-03-07"), utc("2024-03-06")
    assert full.loc[utc("2024-03-11 21:00"), "cx_mac_us10y_yield_ret_1d"] == pytest.approx(y[fri] - y[thu])
    assert full.loc[utc("2024-03-11 20:00"), "cx_mac_us10y_yield_ret_1d"] == pytest.approx(y[thu] - y[wed])


def test_weekends_and_holidays_carry_the_last_published_value_forward(
        full: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> None:
    dxy = np.log(daily(tables, "macro", "series", "dxy"))
    assert utc("2024-03-09") not in dxy.index and utc("2024-03-10") not in dxy.index
    # Friday 2024-03-08 (Yahoo, + 2 h) is the value from Sat 02:00 until Monday's value at Tue 02:00
    span = full.loc[utc("2024-03-09 01:00"):utc("2024-03-12 00:00"), "cx_mac_dxy_ret_1d"]
    assert len(span) == 72
    assert np.allclose(span, dxy[utc("2024-03-08")] - dxy[utc("2024-03-07")], rtol=1e-12, atol=0)
    assert full.loc[utc("2024-03-09 00:00"), "cx_mac_dxy_ret_1d"] == pytest.approx(
        dxy[utc("2024-03-07")] - dxy[utc("2024-03-06")])
    assert full.loc[utc("2024-03-12 01:00"), "cx_mac_dxy_ret_1d"] == pytest.approx(
        dxy[utc("2024-03-11")] - dxy[utc("2024-03-08")])
    age = full.loc[utc("2024-03-09 01:00"):utc("2024-03-12 00:00"), "cx_mac_dxy_age_h"]
    assert age.iloc[0] == 2 and age.iloc[-1] == 73 and (age.diff().dropna() == 1).all()
    # Independence Day 2024-07-04 has no S&P row: Tuesday's value (usable Wed 14:00) holds until Wednesday's
    # is usable on Fri 2024-07-05 14:00 (the next business day after the 3rd is the 5th)
    sp = np.log(daily(tables, "macro", "series", "sp500"))
    assert utc("2024-07-04") not in sp.index
    held = full.loc[utc("2024-07-03 13:00"):utc("2024-07-05 12:00"), "cx_mac_sp500_ret_1d"]
    assert len(held) == 48
    assert np.allclose(held, sp[utc("2024-07-02")] - sp[utc("2024-07-01")], rtol=1e-12, atol=0)
    assert full.loc[utc("2024-07-05 13:00"), "cx_mac_sp500_ret_1d"] == pytest.approx(
        sp[utc("2024-07-03")] - sp[utc("2024-07-02")])


def test_nan_spans_stay_nan_and_are_flagged(full: pd.DataFrame) -> None:
    on = CFG.onchain
    first_diff = available_at([utc("2020-04-11")], on.lag)[0] - H  # bar closing when day 2020-04-11 is out
    logchg = full["cx_oc_difficulty_logchg_14d"]
    avail = full["cx_oc_difficulty_avail"]
    first_chg = available_at([utc("2020-04-25")], on.lag)[0] - H  # 14 days after the first difficulty day
    assert logchg.loc[:first_chg - H].isna().all() and np.isfinite(logchg.loc[first_chg])
    assert (avail.loc[:first_diff - H] == 0).all() and avail.loc[first_diff] == 1
    last = available_at([utc("2025-04-09")], on.lag)[0] - H  # first on-chain day without difficulty
    assert logchg.loc[last - H:last].notna().tolist() == [True, False]
    assert logchg.loc[last:].isna().all() and (avail.loc[last:] == 0).all()
    assert full.loc[last:, "cx_oc_mvrv"].notna().all()  # the rest of the block goes on
    ff = full["cx_oc_freefloat"]
    start = available_at([utc("2019-06-22")], on.lag)[0] - H
    assert ff.loc[:start - H].isna().all() and ff.loc[start:].notna().all()
    # Fear & Greed starts 2018-02-01: NaN before, never zero-filled
    fg_first = available_at([utc("2018-02-01")], CFG.fear_greed.lag)[0] - H
    assert full.loc[:fg_first - H].filter(like="cx_fg_").isna().all().all()
    assert full.loc[fg_first, "cx_fg_value"] > 0


def test_stale_source_turns_nan_after_max_age_while_age_keeps_counting() -> None:
    bars = ohlcv_frame(24 * 8, start="2024-01-01")
    cfg = ContextConfig(fear_greed=Publication(lag_hours=1, max_age_days=2), macro={})
    f = compute_context(bars, small_tables({"2024-01-01": 40}), cfg).frame.set_index(bars["timestamp"])
    # day 2024-01-01 ends 01-02 00:00; age 48 h at the close of bar 01-03 23:00, 49 h one bar later
    assert f.loc[utc("2024-01-03 23:00"), "cx_fg_value"] == 40
    assert np.isnan(f.loc[utc("2024-01-04 00:00"), "cx_fg_value"])
    assert f.loc[utc("2024-01-04 00:00"), "cx_fg_age_h"] == 49


def test_zscores_use_only_trailing_calendar_days() -> None:
    days = pd.date_range("2024-01-01", periods=12, freq="D", tz="UTC")
    values = [50, 52, 47, 61, 40, 55, 58, 30, 45, 49, 70, 20]
    missing = utc("2024-01-06")
    fg = {str(d.date()): v for d, v in zip(days, values, strict=True) if d != missing}
    bars = ohlcv_frame(24 * 14, start="2024-01-01")
    cfg = ContextConfig(fear_greed=Publication(lag_hours=1, max_age_days=4), macro={}, zscore_days=(5,))
    f = compute_context(bars, small_tables(fg), cfg).frame.set_index(bars["timestamp"])
    s = pd.Series(fg).rename(index=utc)

    def hand(day: str) -> float:
        d = utc(day)
        window = s[(s.index > d - pd.Timedelta(days=5)) & (s.index <= d)].to_numpy(float)
        return (s[d] - window.mean()) / window.std(ddof=1)

    for day in ("2024-01-05", "2024-01-07", "2024-01-09", "2024-01-12"):
        bar = utc(day) + pd.Timedelta(days=1)  # closes at D+1 01:00 = available_at
        assert f.loc[bar, "cx_fg_z_5d"] == pytest.approx(hand(day), rel=1e-12)
    # changes compare calendar days, not rows: 01-07 has no 01-06 to compare with
    assert np.isnan(f.loc[utc("2024-01-08"), "cx_fg_chg_1d"])
    assert f.loc[utc("2024-01-09"), "cx_fg_chg_1d"] == 30 - 58
    assert f.loc[utc("2024-01-13"), "cx_fg_chg_7d"] == 20 - 40
    # 2024-01-07's window (01-03 .. 01-07) lacks 01-06: 4 observations, not 5 rows reaching back to 01-02
    assert len(s[(s.index > utc("2024-01-02")) & (s.index <= utc("2024-01-07"))]) == 4
    # fewer than max(3, 5 // 2) observations: NaN
    assert np.isnan(f.loc[utc("2024-01-03"), "cx_fg_z_5d"])
    assert np.isfinite(f.loc[utc("2024-01-04"), "cx_fg_z_5d"])


def test_macro_zscore_matches_a_hand_computation_on_the_shipped_data(full: pd.DataFrame,
                                                                     tables: dict[str, pd.DataFrame]) -> None:
    sp = np.log(daily(tables, "macro", "series", "sp500"))
    d = utc("2024-03-08")
    window = sp[(sp.index > d - pd.Timedelta(days=30)) & (sp.index <= d)]
    assert 18 <= len(window) <= 22  # trading days in 30 calendar days
    z = (sp[d] - window.mean()) / window.std(ddof=1)
    assert full.loc[utc("2024-03-11 13:00"), "cx_mac_sp500_z_30d"] == pytest.approx(z, rel=1e-7)
    y = daily(tables, "macro", "series", "us10y_yield")  # a rate: z of the level, not of its log
    yw = y[(y.index > d - pd.Timedelta(days=90)) & (y.index <= d)]
    assert full.loc[utc("2024-03-11 21:00"), "cx_mac_us10y_yield_z_90d"] == pytest.approx(
        (y[d] - yw.mean()) / yw.std(ddof=1), rel=1e-7)


def test_regime_follows_alternative_me_bands_and_ratios_are_built_from_the_data(
        full: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> None:
    fg = tables["fear_greed"]
    band = {"Extreme Fear": -2, "Fear": -1, "Neutral": 0, "Greed": 1, "Extreme Greed": 2}
    regime = np.digitize(fg["value"].to_numpy(), CFG.fg_regime_bounds) - 2
    assert (regime == fg["classification"].map(band).to_numpy()).mean() > 0.999
    bar = utc("2023-06-02 03:00")  # on-chain day 2023-06-01 (lag 4 h)
    d = utc("2023-06-01")
    get = {m: daily(tables, "onchain", "metric", m) for m in ("FlowInExUSD", "FlowOutExUSD", "CapMrktCurUSD")}
    assert full.loc[bar, "cx_oc_netflow_mcap"] == pytest.approx(
        (get["FlowInExUSD"][d] - get["FlowOutExUSD"][d]) / get["CapMrktCurUSD"][d])
    flows = (get["FlowInExUSD"] + get["FlowOutExUSD"])[d - pd.Timedelta(days=6):d]
    assert full.loc[bar, "cx_oc_nvtx_log"] == pytest.approx(np.log(get["CapMrktCurUSD"][d] / flows.mean()))


def test_output_contract_and_config_validation(btc: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> None:
    res = compute_context(btc.iloc[:100], tables, CFG)
    assert all(c.startswith("cx_") for c in res.frame.columns) and len(res.frame) == 100
    assert [s.name for s in res.specs] == list(res.frame.columns)
    assert {s.family for s in res.specs} == {"context"}
    lags = {s.name: s.lag for s in res.specs}
    assert lags["cx_mac_sp500_z_30d"] == "next US business day 00:00 UTC + 14h"
    assert lags["cx_fg_value"] == "D+1 00:00 UTC + 1h"
    with pytest.raises(ValidationError):
        ContextConfig(unknown=1)
    with pytest.raises(ValidationError):
        ContextConfig(fg_regime_bounds=(25, 55, 45, 75))
    with pytest.raises(ValueError, match="macro"):
        compute_context(btc.iloc[:10], {k: v for k, v in tables.items() if k != "macro"}, CFG)
    with pytest.raises(ValueError, match="timeframe"):
        compute_context(btc.iloc[:10].drop(columns="timeframe"), tables, CFG)


def test_no_lookahead_on_shipped_data(btc: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> None:
    bars = btc[(btc["timestamp"] >= utc("2019-05-01")) & (btc["timestamp"] < utc("2020-08-01"))]
    bars = bars.reset_index(drop=True)
    ts = bars["timestamp"]

    def compute(t_end: pd.Timestamp) -> pd.DataFrame:
        b = bars[ts <= t_end]
        return compute_context(b, known_by(tables, CFG, t_end + H), CFG).frame

    boundaries = [utc(t) for t in (
        "2019-06-23 03:00", "2019-06-23 02:00",  # first free-float day usable / one bar earlier
        "2020-04-12 03:00", "2020-04-12 02:00",  # first difficulty day
        "2019-07-05 13:00", "2019-07-05 12:00",  # S&P after Independence Day 2019
        "2019-11-30 01:00", "2019-12-01 12:00",  # a weekend
    )]
    cuts = sorted(set(random_cuts(ts, 10, seed=7, min_position=24 * 100) + boundaries))
    assert assert_no_lookahead(compute, ts, cuts) > 40 * len(cuts)
