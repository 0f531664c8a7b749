"""Context feature family (prefix ``cx_``): point-in-time as-of joins of daily tables onto the bars.

Availability. A daily row dated D (UTC midnight; the value describes calendar day D) becomes usable at
``available_at(D)``: the start of the next day, D+1 00:00 UTC, plus the source's publication lag
(``calendar="daily"``), or, for sources that publish on US business days only (FRED), 00:00 UTC of the
next US federal business day after D plus the lag (``calendar="us_business"``). Nothing dated D is ever
usable before D has ended.

Join. The bar stamped t (open time) closes at t + bar. Its row takes, per block (Fear & Greed, on-chain,
each macro series on its own), the latest daily row whose ``available_at <= t + bar``; weekends and
holidays therefore carry the last published value forward and a later value is never used. The age of
that row, ``t + bar − (D+1 00:00)`` in hours, is a column; when it exceeds the block's ``max_age_days``
(the source stopped or has a hole) the block's values are NaN while the age column keeps counting. The
values that the latest row lacks (difficulty outside 2020-04-11 → 2025-04-08, the free-float cap before
2019-06-22) are NaN, never an older value and never zero.

Transforms are computed on each daily series BEFORE the join, over calendar days: a change over k days
compares day D with day D−k exactly (NaN when D−k is absent), and ``z_{n}d`` is the z-score of day D
against the trailing window (D−n, D] of calendar days (D included, sample std, at least max(3, n // 2)
observations). Every column is scale-free: index levels, ratios, log changes or z-scores.

Columns (``{n}`` runs over ``zscore_days``):
- ``cx_fg_value``: Fear & Greed index, 0 (extreme fear) .. 100 (extreme greed).
- ``cx_fg_chg_1d``, ``cx_fg_chg_7d``: index points gained since 1 and 7 days earlier.
- ``cx_fg_regime``: ordinal −2 (extreme fear) .. +2 (extreme greed) from ``fg_regime_bounds``.
- ``cx_fg_z_{n}d``: z-score of the index; ``cx_fg_age_h``: age of the joined day in hours.
- ``cx_oc_adract_logchg_1d``, ``cx_oc_adract_logchg_7d``, ``cx_oc_adract_z_{n}d``: active addresses (log).
- ``cx_oc_hashrate_logchg_7d``, ``cx_oc_hashrate_z_{n}d``: mean hash rate (log).
- ``cx_oc_txcnt_logchg_1d``, ``cx_oc_txcnt_z_{n}d``: transaction count (log).
- ``cx_oc_fees_logchg_1d``, ``cx_oc_fees_z_{n}d``: total fees in BTC (log).
- ``cx_oc_netflow_mcap``, ``cx_oc_netflow_mcap_z_{n}d``: exchange net inflow (FlowInExUSD − FlowOutExUSD)
  as a fraction of market cap (CapMrktCurUSD); positive = coins moving onto exchanges.
- ``cx_oc_mvrv``, ``cx_oc_mvrv_z_{n}d``: market value to realised value (CapMVRVCur).
- ``cx_oc_nvtx_log``, ``cx_oc_nvtx_z_{n}d``: log of an exchange-flow NVT proxy: CapMrktCurUSD divided by the
  trailing 7-day mean of FlowInExUSD + FlowOutExUSD (the shipped data has no adjusted transfer value, so the
  USD value moving to and from exchanges stands in for the transaction volume of the classic NVT).
- ``cx_oc_exsupply_share``, ``cx_oc_exsupply_chg_7d``: share of supply held on exchanges
  (SplyExNtv / SplyCur) and its change over 7 days.
- ``cx_oc_puell``: Puell multiple, issuance in USD / its trailing 365-day mean.
- ``cx_oc_freefloat``: free-float market cap share, CapMrktEstUSD / CapMrktCurUSD (NaN before 2019-06-22).
- ``cx_oc_difficulty_logchg_14d``: log change of mining difficulty over 14 days (NaN where absent);
  ``cx_oc_difficulty_avail``: 1 when the joined on-chain day has a difficulty value, else 0.
- ``cx_oc_age_h``: age of the joined on-chain day in hours.
- per macro series s (``dxy``, ``vix``, ``sp500``, ``gold_futures``, ``us10y_yield``): ``cx_mac_{s}_ret_1d``,
  the log return since the series' previous trading day (for yields: the change in percentage points),
  ``cx_mac_{s}_z_{n}d``, the z-score of the log level (of the level for yields), and ``cx_mac_{s}_age_h``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from pandas.tseries.holiday import USFederalHolidayCalendar
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from cryptopredict.data.validate import timeframe_delta
from cryptopredict.features.base import FamilyResult, FeatureSpec, require_bars

log = logging.getLogger(__name__)

FAMILY = "context"
DAY = pd.Timedelta(days=1)
HOUR_NS = 3_600_000_000_000
RATE_SERIES = frozenset({"us10y_yield"})  # quoted in percent: changes in points, z-score of the level
Calendar = Literal["daily", "us_business"]


class Publication(BaseModel):
    """When a source's value for day D becomes usable, and how old it may get before it counts as missing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lag_hours: float = Field(ge=0, description="hours after the calendar's start of availability")
    calendar: Calendar = Field("daily", description="daily: from D+1 00:00 UTC; us_business: from 00:00 UTC "
                                                    "of the next US federal business day after D")
    max_age_days: float = Field(gt=0, description="older joined values are NaN (age from D+1 00:00 UTC)")

    @property
    def lag(self) -> pd.Timedelta:
        return pd.Timedelta(hours=self.lag_hours)

    def describe(self) -> str:
        start = "D+1 00:00 UTC" if self.calendar == "daily" else "next US business day 00:00 UTC"
        return f"{start} + {self.lag_hours:g}h"


def _default_macro() -> dict[str, Publication]:
    # The US cash close is 20:00/21:00 UTC (summer/winter); futures and ICE close around 21:00-22:00 UTC.
    yahoo = Publication(lag_hours=2, max_age_days=6)  # Yahoo daily bars are final minutes after the close
    # FRED posts SP500 and VIXCLS the next business morning (ET): ~13:00 UTC, 14 h with a margin
    fred_morning = Publication(lag_hours=14, calendar="us_business", max_age_days=6)
    return {
        "dxy": yahoo,  # Yahoo DX-Y.NYB (ICE close ~22:00 UTC on D)
        "vix": fred_morning,  # FRED VIXCLS
        "sp500": fred_morning,  # FRED SP500
        "gold_futures": yahoo,  # Yahoo GC=F (COMEX electronic close ~22:00 UTC)
        # FRED DGS10 comes from the Fed's H.15 release, ~16:15 ET (~21:15 UTC) on the next business day
        "us10y_yield": Publication(lag_hours=22, calendar="us_business", max_age_days=6),
    }


class ContextConfig(BaseModel):
    """Publication lags, z-score windows and regime thresholds of the context family.

    Defaults: alternative.me publishes the Fear & Greed value shortly after 00:00 UTC (1 h margin; the
    value it stamps D is treated as describing day D, so it is used from D+1 01:00 UTC — conservative).
    Coin Metrics computes day D's network data after the UTC day closes and its last blocks confirm;
    community-tier values appear within hours (4 h assumed; difficulty from blockchain.com shares the
    block). Macro: see ``_default_macro``. The broad dollar index (FRED DTWEXBGS) is left out by default:
    the Fed's H.10 release publishes it weekly, up to 7 days after the day it describes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fear_greed: Publication = Field(default_factory=lambda: Publication(lag_hours=1, max_age_days=4))
    onchain: Publication = Field(default_factory=lambda: Publication(lag_hours=4, max_age_days=4))
    macro: dict[str, Publication] = Field(default_factory=_default_macro,
                                          description="macro series to use (MACRO.series) and their timing")
    onchain_asset: str = Field("btc", description="ONCHAIN.asset whose metrics are joined")
    zscore_days: tuple[PositiveInt, ...] = Field((30, 90),
                                                 description="trailing z-score windows, calendar days")
    fg_regime_bounds: tuple[float, float, float, float] = Field(
        (25, 45, 55, 75),
        description="lower bounds of fear, neutral, greed, extreme greed (alternative.me's bands)")

    @field_validator("fg_regime_bounds")
    @classmethod
    def _increasing(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if list(v) != sorted(set(v)):
            raise ValueError(f"fg_regime_bounds must be strictly increasing, got {v}")
        return v

    @field_validator("zscore_days")
    @classmethod
    def _windows(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or len(set(v)) != len(v) or min(v) < 2:
            raise ValueError(f"zscore_days must be distinct windows of >= 2 days, got {v}")
        return v


def _utc_index(values: object) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(values)
    if idx.tz is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    return idx.tz_convert("UTC").as_unit("ns")


def available_at(dates: object, lag: pd.Timedelta, calendar: Calendar = "daily") -> pd.DatetimeIndex:
    """When the daily values dated ``dates`` (UTC midnights) become usable: D+1 00:00 UTC + ``lag``, or for
    ``calendar="us_business"`` 00:00 UTC of the next US federal business day after D + ``lag``."""
    d = _utc_index(dates)
    if (d != d.normalize()).any():
        raise ValueError("daily dates must be UTC midnights")
    lag = pd.Timedelta(lag)
    if lag < pd.Timedelta(0):
        raise ValueError(f"publication lag must be >= 0, got {lag}")
    if calendar == "daily":
        return d + DAY + lag
    if calendar != "us_business":
        raise ValueError(f"unknown calendar {calendar!r}")
    if len(d) == 0:
        return d
    days = d.tz_localize(None).values.astype("datetime64[D]")
    holidays = USFederalHolidayCalendar().holidays(d.min().tz_localize(None) - 30 * DAY,
                                                   d.max().tz_localize(None) + 30 * DAY)
    # roll a weekend/holiday D back to the business day before it, then step one business day forward
    nxt = np.busday_offset(days, 1, roll="backward", holidays=holidays.values.astype("datetime64[D]"))
    return pd.DatetimeIndex(nxt.astype("datetime64[ns]")).tz_localize("UTC") + lag


def bar_length(bars: pd.DataFrame, bar: pd.Timedelta | None) -> pd.Timedelta:
    """The bar length: ``bar`` when given, else parsed from the bars' ccxt ``timeframe`` column."""
    if bar is not None:
        return pd.Timedelta(bar)
    if "timeframe" not in bars.columns or bars["timeframe"].nunique() != 1:
        raise ValueError("pass bar= or give the bars one ccxt 'timeframe' value (e.g. '1h')")
    return timeframe_delta(str(bars["timeframe"].iloc[0]))


def bar_closes_ns(bars: pd.DataFrame, bar: pd.Timedelta | None) -> np.ndarray:
    """Bar close times (timestamp + bar) as int64 ns since the epoch, UTC."""
    return (_utc_index(bars["timestamp"]) + bar_length(bars, bar)).asi8


# ---- daily transforms (a Series indexed by sorted unique UTC dates, no NaN) -------------------------------

def _at_lag(s: pd.Series, days: int) -> np.ndarray:
    """The value on day D − ``days`` for every D of ``s`` (NaN where that day is absent)."""
    return s.reindex(s.index - days * DAY).to_numpy(float)


def _log(s: pd.Series) -> pd.Series:
    return np.log(s.where(s > 0))


def _change(s: pd.Series, days: int) -> pd.Series:
    return pd.Series(s.to_numpy(float) - _at_lag(s, days), index=s.index)


def _zscore(s: pd.Series, days: int) -> pd.Series:
    """z-score of day D against the calendar-day window (D − days, D], D included."""
    s = s.dropna()
    roll = s.rolling(f"{days}D", min_periods=max(3, days // 2))
    z = (s - roll.mean()) / roll.std(ddof=1)
    return z.replace([np.inf, -np.inf], np.nan)


def _trailing_mean(s: pd.Series, days: int, min_periods: int) -> pd.Series:
    return s.dropna().rolling(f"{days}D", min_periods=min_periods).mean()


# ---- blocks: daily feature frames before the join ---------------------------------------------------------

def _series(df: pd.DataFrame, key: str | None, name: str | None) -> pd.Series:
    """One daily series (date → value) from a long table, sorted; a ValueError on duplicate days."""
    rows = df if key is None else df[df[key] == name]
    dates = _utc_index(rows["date"])
    s = pd.Series(rows["value"].to_numpy(float), index=dates).dropna().sort_index()
    if not s.index.is_unique:
        raise ValueError(f"duplicate days in {name or 'the series'}")
    return s


def _fear_greed_block(fg: pd.DataFrame, cfg: ContextConfig) -> tuple[pd.DataFrame, dict[str, str]]:
    v = _series(fg, None, None)
    cols: dict[str, pd.Series] = {
        "cx_fg_value": v,
        "cx_fg_chg_1d": _change(v, 1),
        "cx_fg_chg_7d": _change(v, 7),
        "cx_fg_regime": pd.Series(np.digitize(v.to_numpy(), cfg.fg_regime_bounds) - 2.0, index=v.index),
    }
    for n in cfg.zscore_days:
        cols[f"cx_fg_z_{n}d"] = _zscore(v, n)
    desc = {
        "cx_fg_value": "Fear & Greed index 0..100",
        "cx_fg_chg_1d": "index points since 1 day earlier",
        "cx_fg_chg_7d": "index points since 7 days earlier",
        "cx_fg_regime": f"ordinal regime -2..+2, bounds {cfg.fg_regime_bounds}",
        **{f"cx_fg_z_{n}d": f"z-score over trailing {n} calendar days" for n in cfg.zscore_days},
    }
    return pd.DataFrame(cols).reindex(v.index), desc


def _onchain_block(oc: pd.DataFrame, cfg: ContextConfig) -> tuple[pd.DataFrame, dict[str, str]]:
    rows = oc[oc["asset"] == cfg.onchain_asset]
    wide = pd.DataFrame({"date": _utc_index(rows["date"]), "metric": rows["metric"].to_numpy(),
                         "value": rows["value"].to_numpy(float)})
    wide = wide.pivot(index="date", columns="metric", values="value").sort_index()  # raises on duplicates
    index = wide.index

    def m(name: str) -> pd.Series:
        """One metric on its own days (no NaN); empty when the table lacks it."""
        return wide[name].dropna() if name in wide.columns else pd.Series(index=index[:0], dtype=float)

    def aligned(name: str) -> pd.Series:
        return m(name).reindex(index)

    cols: dict[str, pd.Series] = {}
    desc: dict[str, str] = {}
    zd = cfg.zscore_days

    def add(name: str, s: pd.Series, what: str) -> None:
        cols[name] = s
        desc[name] = what

    def add_z(stem: str, s: pd.Series, what: str) -> None:
        for n in zd:
            add(f"{stem}_z_{n}d", _zscore(s, n), f"z-score of {what} over trailing {n} calendar days")

    for stem, metric, changes in (("adract", "AdrActCnt", (1, 7)), ("hashrate", "HashRate", (7,)),
                                  ("txcnt", "TxCnt", (1,)), ("fees", "FeeTotNtv", (1,))):
        logged = _log(m(metric))
        for k in changes:
            add(f"cx_oc_{stem}_logchg_{k}d", _change(logged, k), f"log change of {metric} over {k} days")
        add_z(f"cx_oc_{stem}", logged, f"log {metric}")

    mcap = aligned("CapMrktCurUSD").where(lambda x: x > 0)
    netflow = (aligned("FlowInExUSD") - aligned("FlowOutExUSD")) / mcap
    add("cx_oc_netflow_mcap", netflow, "(FlowInExUSD - FlowOutExUSD) / CapMrktCurUSD")
    add_z("cx_oc_netflow_mcap", netflow, "exchange net inflow / market cap")

    mvrv = aligned("CapMVRVCur")
    add("cx_oc_mvrv", mvrv, "MVRV ratio (CapMVRVCur)")
    add_z("cx_oc_mvrv", mvrv, "MVRV")

    flow_value = _trailing_mean(aligned("FlowInExUSD") + aligned("FlowOutExUSD"), 7, 4).reindex(index)
    nvtx = _log(mcap / flow_value)
    add("cx_oc_nvtx_log", nvtx, "log(CapMrktCurUSD / 7-day mean of FlowInExUSD + FlowOutExUSD), NVT proxy")
    add_z("cx_oc_nvtx", nvtx, "log exchange-flow NVT")

    ex_share = aligned("SplyExNtv") / aligned("SplyCur").where(lambda x: x > 0)
    add("cx_oc_exsupply_share", ex_share, "SplyExNtv / SplyCur")
    add("cx_oc_exsupply_chg_7d", _change(ex_share.dropna(), 7).reindex(index),
        "change of the exchange supply share over 7 days")

    iss = aligned("IssTotUSD")
    add("cx_oc_puell", iss / _trailing_mean(iss, 365, 365).reindex(index),
        "Puell multiple: IssTotUSD / its trailing 365-day mean")
    add("cx_oc_freefloat", aligned("CapMrktEstUSD") / mcap, "CapMrktEstUSD / CapMrktCurUSD")

    difficulty = m("difficulty")
    add("cx_oc_difficulty_logchg_14d", _change(_log(difficulty), 14).reindex(index),
        "log change of difficulty over 14 days")
    add("cx_oc_difficulty_avail", difficulty.reindex(index).notna().astype(float),
        "1 when the joined day has a difficulty value")
    return pd.DataFrame({k: v.reindex(index) for k, v in cols.items()}, index=index), desc


def _macro_block(s: pd.Series, series: str, cfg: ContextConfig) -> tuple[pd.DataFrame, dict[str, str]]:
    rate = series in RATE_SERIES
    level = s if rate else _log(s)
    stem = f"cx_mac_{series}"
    cols = {f"{stem}_ret_1d": level.diff()}
    what = "level (percent)" if rate else "log level"
    change = "change in points" if rate else "log return"
    desc = {f"{stem}_ret_1d": f"{change} since the previous trading day"}
    for n in cfg.zscore_days:
        cols[f"{stem}_z_{n}d"] = _zscore(level, n)
        desc[f"{stem}_z_{n}d"] = f"z-score of the {what} over trailing {n} calendar days"
    return pd.DataFrame(cols).reindex(s.index), desc


# ---- the join ----------------------------------------------------------------------------------------------

def _asof(block: pd.DataFrame, pub: Publication, close_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, age in hours) of the latest row of ``block`` available at each close; values NaN where no
    row is available yet or the row is older than ``pub.max_age_days``."""
    n, k = len(close_ns), block.shape[1]
    if len(block) == 0:
        return np.full((n, k), np.nan), np.full(n, np.nan)
    avail = available_at(block.index, pub.lag, pub.calendar).asi8
    pos = np.searchsorted(avail, close_ns, side="right") - 1
    has = pos >= 0
    p = np.where(has, pos, 0)
    day_end = (_utc_index(block.index) + DAY).asi8[p]
    age_h = np.where(has, (close_ns - day_end) / HOUR_NS, np.nan)
    values = block.to_numpy(float)[p]
    values[~(has & (age_h <= pub.max_age_days * 24))] = np.nan
    return values, age_h


def _table(tables: dict[str, pd.DataFrame], name: str, columns: Sequence[str]) -> pd.DataFrame:
    if name not in tables:
        raise ValueError(f"compute_context needs table {name!r}; got {sorted(tables)}")
    df = tables[name]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"table {name!r} lacks columns {missing}")
    return df


def compute_context(bars: pd.DataFrame, tables: dict[str, pd.DataFrame], cfg: ContextConfig | None = None,
                    *, bar: pd.Timedelta | None = None) -> FamilyResult:
    """The ``cx_`` columns for one symbol's bars from the FEAR_GREED, ONCHAIN and MACRO tables (lake format,
    keys ``fear_greed``, ``onchain``, ``macro``). Row t uses only daily rows available at t's close
    (``available_at <= t + bar``). ``bar`` defaults to the bars' ``timeframe``."""
    cfg = cfg or ContextConfig()
    require_bars(bars)
    close_ns = bar_closes_ns(bars, bar)
    fg = _table(tables, "fear_greed", ("date", "value"))
    oc = _table(tables, "onchain", ("asset", "metric", "date", "value"))
    mac = _table(tables, "macro", ("series", "date", "value"))

    blocks: list[tuple[str, pd.DataFrame, dict[str, str], Publication, str]] = []
    frame, desc = _fear_greed_block(fg, cfg)
    blocks.append(("cx_fg", frame, desc, cfg.fear_greed, "fear_greed.value"))
    frame, desc = _onchain_block(oc, cfg)
    blocks.append(("cx_oc", frame, desc, cfg.onchain, f"onchain[{cfg.onchain_asset}]"))
    for series, pub in cfg.macro.items():
        s = _series(mac, "series", series)
        if s.empty:
            log.warning("context: macro series %r has no rows; its columns are NaN", series)
        frame, desc = _macro_block(s, series, cfg)
        blocks.append((f"cx_mac_{series}", frame, desc, pub, f"macro[{series}]"))

    out: dict[str, np.ndarray] = {}
    specs: list[FeatureSpec] = []
    for stem, frame, desc, pub, source in blocks:
        values, age_h = _asof(frame, pub, close_ns)
        lag = pub.describe()
        for j, name in enumerate(frame.columns):
            out[name] = values[:, j]
            specs.append(FeatureSpec(name, FAMILY, None, source, lag, desc[name]))
        out[f"{stem}_age_h"] = age_h
        specs.append(FeatureSpec(f"{stem}_age_h", FAMILY, None, source, lag,
                                 "hours from the end of the joined day to the bar close"))
    result = pd.DataFrame(out, index=pd.RangeIndex(len(bars)))
    return FamilyResult(result, specs).check(len(bars))
