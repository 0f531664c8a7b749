"""Technical-indicator feature family (prefix ``ta_``): trend, momentum, volatility and volume indicators.

Every column is scale-free — an oscillator in its own bounded units, a ratio, a z-score, or a distance of
the close from a price level measured in ATRs (``ATR(cfg.atr_window)``, Wilder's average true range) — so
multiplying all prices, or all volumes, by a constant leaves the features unchanged. Row t looks only at
bars <= t; indicators with a recursive state (EMA, Wilder smoothing, SAR, Supertrend) start at the first
bar handed in, as in TA-Lib. A column is NaN until its window is full and where a denominator is zero.

``FeatureSpec.window`` is the number of bars, bar t included, that a column needs before its first value
(TA-Lib's lookback + 1, taking the longest of the indicator and of the ATR it is divided by); recursive
indicators remember further back than that. The daily-anchored VWAP is not a rolling window
(``window=None``): it looks back to 00:00 UTC of the bar's day.

TA-Lib computes SMA, EMA, MACD, ADX, +DI, -DI, SAR, RSI, STOCH, WILLR, CCI, ROC, MOM, BBANDS, ATR, OBV, MFI,
AD and ADOSC; Ichimoku, Supertrend, Keltner, Donchian, the volume profile, the VWAPs, CMF and realised
volatility are written here (numba for the two path-dependent loops). ADX, +-DI and SAR receive prices as
integers on a decimal grid (``_decimal_grid``), so that their tie rules do not depend on binary rounding,
which otherwise makes them change with the price scale on tick-quoted low-priced coins.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numba
import numpy as np
import pandas as pd
import talib
from pandas.api.typing import Rolling
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from cryptopredict.features.base import FamilyResult, FeatureSpec, require_bars

log = logging.getLogger(__name__)

FAMILY = "technical"
PREFIX = "ta"
LAG = "bar close"


class TechnicalConfig(BaseModel):
    """Windows (in bars; 1h bars in this project) and parameters of the technical family."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    atr_window: PositiveInt = Field(14, description="Wilder ATR used as the unit of every price distance")
    ma_windows: tuple[PositiveInt, ...] = Field((10, 20, 50, 200), description="SMA and EMA lengths")
    macd_fast: PositiveInt = 12
    macd_slow: PositiveInt = 26
    macd_signal: PositiveInt = 9
    adx_window: PositiveInt = Field(14, description="ADX, +DI and -DI length")
    sar_acceleration: float = Field(0.02, gt=0, description="Parabolic SAR acceleration step")
    sar_maximum: float = Field(0.2, gt=0, description="Parabolic SAR acceleration cap")
    ichimoku_conversion: PositiveInt = Field(9, description="Tenkan-sen high/low window")
    ichimoku_base: PositiveInt = Field(26, description="Kijun-sen window, also the cloud displacement")
    ichimoku_span_b: PositiveInt = Field(52, description="Senkou span B high/low window")
    supertrend_window: PositiveInt = Field(10, description="ATR length of the Supertrend bands")
    supertrend_multiplier: float = Field(3.0, gt=0, description="Supertrend band width in ATRs")
    rsi_windows: tuple[PositiveInt, ...] = (14, 28)
    stoch_k: PositiveInt = Field(14, description="Stochastic fast %K window")
    stoch_smooth: PositiveInt = Field(3, description="SMA smoothing of slow %K and of %D")
    willr_window: PositiveInt = 14
    cci_window: PositiveInt = 20
    roc_windows: tuple[PositiveInt, ...] = Field((1, 24, 168), description="rate of change lags")
    mom_windows: tuple[PositiveInt, ...] = Field((10, 24), description="momentum lags")
    bb_window: PositiveInt = 20
    bb_nstd: float = Field(2.0, gt=0, description="Bollinger band width in standard deviations")
    keltner_window: PositiveInt = Field(20, description="EMA length of the Keltner middle line")
    keltner_atr_window: PositiveInt = 10
    keltner_multiplier: float = Field(2.0, gt=0, description="Keltner band half-width in ATRs")
    donchian_windows: tuple[PositiveInt, ...] = (20, 55)
    rvol_windows: tuple[PositiveInt, ...] = Field((24, 168), description="realised-volatility windows")
    obv_windows: tuple[PositiveInt, ...] = Field((24, 168), description="OBV net-flow windows")
    volume_profile_window: PositiveInt = Field(168, description="trailing bars in the volume profile")
    volume_profile_bins: int = Field(24, ge=2, description="price rows of the volume profile")
    value_area: float = Field(0.70, gt=0, le=1, description="share of volume inside the value area")
    vwap_windows: tuple[PositiveInt, ...] = Field((24, 168), description="rolling VWAP windows")
    mfi_window: PositiveInt = 14
    ad_z_window: PositiveInt = Field(168, description="window of the A/D line z-score")
    adosc_fast: PositiveInt = 3
    adosc_slow: PositiveInt = 10
    cmf_window: PositiveInt = 20

    @model_validator(mode="after")
    def _check_orders(self) -> TechnicalConfig:
        if self.macd_fast >= self.macd_slow:
            raise ValueError("macd_fast must be shorter than macd_slow")
        if self.adosc_fast >= self.adosc_slow:
            raise ValueError("adosc_fast must be shorter than adosc_slow")
        if self.sar_acceleration > self.sar_maximum:
            raise ValueError("sar_acceleration must not exceed sar_maximum")
        for name in ("ma_windows", "rsi_windows", "roc_windows", "mom_windows", "donchian_windows",
                     "rvol_windows", "obv_windows", "vwap_windows"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} has duplicates: {values}")
        return self


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with NaN where the denominator is zero or either side is NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(num, dtype=float) / den
    out[den == 0] = np.nan
    return out


def _decimal_grid(close: np.ndarray) -> float:
    """Factor that puts prices on an integer grid of 10 significant digits of the first close's decade.

    Decimal-quoted prices are not exact in binary, so two equal decimal moves (+DM == -DM, a low touching
    the SAR) can compare unequal by a rounding error whose sign depends on the price scale. On the grid
    such moves are equal integers, so TA-Lib's tie rules give the same answer at any price scale."""
    positive = close[np.isfinite(close) & (close > 0)]
    return 10.0 ** (9 - np.floor(np.log10(positive[0]))) if positive.size else 1.0


def _roll(x: np.ndarray, window: int) -> Rolling:
    """Trailing window over bars t-window+1..t, NaN until it is full."""
    return pd.Series(x).rolling(window, min_periods=window)


@numba.njit(cache=True)
def _supertrend(high: np.ndarray, low: np.ndarray, close: np.ndarray, atr: np.ndarray,
                multiplier: float) -> tuple[np.ndarray, np.ndarray]:
    """Supertrend line and direction (+1 up, -1 down). Basic bands are (high + low) / 2 +- multiplier * ATR;
    a final band only moves against the trend when the previous close crossed it; the direction flips when
    the close ends beyond the opposite final band. The trend starts up on the first bar with an ATR."""
    n = close.shape[0]
    line = np.full(n, np.nan)
    direction = np.full(n, np.nan)
    upper = lower = 0.0
    trend = 0
    for t in range(n):
        if np.isnan(atr[t]):
            continue
        mid = 0.5 * (high[t] + low[t])
        basic_upper = mid + multiplier * atr[t]
        basic_lower = mid - multiplier * atr[t]
        if trend == 0:
            upper, lower, trend = basic_upper, basic_lower, 1
        else:
            if basic_upper < upper or close[t - 1] > upper:
                upper = basic_upper
            if basic_lower > lower or close[t - 1] < lower:
                lower = basic_lower
            if trend == 1 and close[t] < lower:
                trend = -1
            elif trend == -1 and close[t] > upper:
                trend = 1
        line[t] = lower if trend == 1 else upper
        direction[t] = trend
    return line, direction


@numba.njit(cache=True)
def _volume_profile(high: np.ndarray, low: np.ndarray, volume: np.ndarray, window: int, n_bins: int,
                    value_area: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rolling volume profile over bars t-window+1..t: point of control, value-area low and high.

    The window's [lowest low, highest high] is cut into ``n_bins`` equal rows; each bar's volume is spread
    uniformly over its [low, high] (all of it into one row if high == low). The POC is the centre of the
    fullest row (the lowest on ties). The value area grows from the POC one row at a time towards the
    fuller neighbour (the upper one on ties) until it holds ``value_area`` of the volume."""
    n = high.shape[0]
    poc = np.full(n, np.nan)
    val = np.full(n, np.nan)
    vah = np.full(n, np.nan)
    hist = np.empty(n_bins)
    for t in range(window - 1, n):
        start = t - window + 1
        lo = low[start]
        hi = high[start]
        for i in range(start + 1, t + 1):
            lo = min(lo, low[i])
            hi = max(hi, high[i])
        if not hi > lo:
            continue
        width = (hi - lo) / n_bins
        hist[:] = 0.0
        for i in range(start, t + 1):
            v = volume[i]
            if not v > 0.0:
                continue
            a = (low[i] - lo) / width
            b = (high[i] - lo) / width
            if not b > a:
                hist[min(int(a), n_bins - 1)] += v
                continue
            for k in range(min(int(a), n_bins - 1), min(int(b), n_bins - 1) + 1):
                overlap = min(b, k + 1.0) - max(a, float(k))
                if overlap > 0.0:
                    hist[k] += v * overlap / (b - a)
        total = hist.sum()
        if not total > 0.0:
            continue
        p = int(np.argmax(hist))
        k_lo = k_hi = p
        acc = hist[p]
        target = value_area * total
        while acc < target and (k_lo > 0 or k_hi < n_bins - 1):
            above = hist[k_hi + 1] if k_hi < n_bins - 1 else -1.0
            below = hist[k_lo - 1] if k_lo > 0 else -1.0
            if above >= below:
                k_hi += 1
                acc += above
            else:
                k_lo -= 1
                acc += below
        poc[t] = lo + (p + 0.5) * width
        val[t] = lo + k_lo * width
        vah[t] = lo + (k_hi + 1) * width
    return poc, val, vah


class _Builder:
    """Collects columns and their specs in order, and times each indicator block."""

    def __init__(self) -> None:
        self.columns: dict[str, np.ndarray] = {}
        self.specs: list[FeatureSpec] = []
        self.timings: dict[str, float] = {}

    def add(self, name: str, values: np.ndarray, window: int | None, cols: str, description: str) -> None:
        full = f"{PREFIX}_{name}"
        self.columns[full] = np.asarray(values, dtype=np.float64)
        self.specs.append(FeatureSpec(full, FAMILY, window, f"ohlcv.{cols}", LAG, description))

    @contextmanager
    def timed(self, block: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[block] = time.perf_counter() - start


def compute_technical(bars: pd.DataFrame, cfg: TechnicalConfig = TechnicalConfig()) -> FamilyResult:
    """The technical family over one symbol's bars (see the module docstring for units and windows)."""
    require_bars(bars)
    o = _Builder()
    high = bars["high"].to_numpy(np.float64)
    low = bars["low"].to_numpy(np.float64)
    close = bars["close"].to_numpy(np.float64)
    volume = bars["volume"].to_numpy(np.float64)
    typical = (high + low + close) / 3.0

    aw = cfg.atr_window
    atr = talib.ATR(high, low, close, aw)
    atr_w = aw + 1  # bars needed for the first ATR value, bar t included

    def in_atr(level: np.ndarray) -> np.ndarray:
        return _div(close - level, atr)

    with o.timed("moving averages"):
        for n in cfg.ma_windows:
            o.add(f"sma_dist_{n}", in_atr(talib.SMA(close, n)), max(n, atr_w), "high,low,close",
                  f"(close - SMA{n} of close) / ATR{aw}; bars t-{n - 1}..t")
        for n in cfg.ma_windows:
            o.add(f"ema_dist_{n}", in_atr(talib.EMA(close, n)), max(n, atr_w), "high,low,close",
                  f"(close - EMA{n} of close, SMA-seeded) / ATR{aw}; recursive from the first bar")

    with o.timed("macd"):
        f, s, g = cfg.macd_fast, cfg.macd_slow, cfg.macd_signal
        macd, signal, hist = talib.MACD(close, f, s, g)
        w = max(s + g - 1, atr_w)
        tag = f"{f}_{s}"
        o.add(f"macd_{tag}", _div(macd, atr), w, "high,low,close", f"MACD line EMA{f}-EMA{s} / ATR{aw}")
        o.add(f"macd_signal_{tag}_{g}", _div(signal, atr), w, "high,low,close",
              f"MACD signal (EMA{g} of the line) / ATR{aw}")
        o.add(f"macd_hist_{tag}_{g}", _div(hist, atr), w, "high,low,close",
              f"MACD histogram (line - signal) / ATR{aw}")

    grid = _decimal_grid(close)
    g_high, g_low, g_close = np.round(high * grid), np.round(low * grid), np.round(close * grid)

    with o.timed("adx"):
        n = cfg.adx_window
        o.add(f"adx_{n}", talib.ADX(g_high, g_low, g_close, n), 2 * n, "high,low,close",
              f"Wilder ADX{n}, 0..100 (prices on the decimal grid)")
        o.add(f"plus_di_{n}", talib.PLUS_DI(g_high, g_low, g_close, n), n + 1, "high,low,close",
              f"Wilder +DI{n}, 0..100 (prices on the decimal grid)")
        o.add(f"minus_di_{n}", talib.MINUS_DI(g_high, g_low, g_close, n), n + 1, "high,low,close",
              f"Wilder -DI{n}, 0..100 (prices on the decimal grid)")

    with o.timed("parabolic sar"):
        g_sar = talib.SAR(g_high, g_low, cfg.sar_acceleration, cfg.sar_maximum)
        o.add("sar_dist", in_atr(g_sar / grid), max(2, atr_w), "high,low,close",
              f"(close - parabolic SAR({cfg.sar_acceleration}, {cfg.sar_maximum})) / ATR{aw}; recursive")
        o.add("sar_side", np.where(np.isnan(g_sar), np.nan, np.sign(g_close - g_sar)), 2, "high,low,close",
              "+1 when the SAR is below the close (long side), -1 when above")

    with o.timed("ichimoku"):
        nc, nb, ns = cfg.ichimoku_conversion, cfg.ichimoku_base, cfg.ichimoku_span_b
        conv = 0.5 * (_roll(high, nc).max() + _roll(low, nc).min()).to_numpy()
        base = 0.5 * (_roll(high, nb).max() + _roll(low, nb).min()).to_numpy()
        span_a = 0.5 * (conv + base)
        span_b = 0.5 * (_roll(high, ns).max() + _roll(low, ns).min()).to_numpy()
        o.add(f"ichi_conv_dist_{nc}", in_atr(conv), max(nc, atr_w), "high,low,close",
              f"(close - tenkan-sen, mid of the {nc}-bar high/low) / ATR{aw}")
        o.add(f"ichi_base_dist_{nb}", in_atr(base), max(nb, atr_w), "high,low,close",
              f"(close - kijun-sen, mid of the {nb}-bar high/low) / ATR{aw}")
        o.add(f"ichi_span_a_dist_{nb}", in_atr(span_a), max(nb, nc, atr_w), "high,low,close",
              f"(close - senkou span A computed at t, plotted {nb} bars ahead) / ATR{aw}")
        o.add(f"ichi_span_b_dist_{ns}", in_atr(span_b), max(ns, atr_w), "high,low,close",
              f"(close - senkou span B computed at t, plotted {nb} bars ahead) / ATR{aw}")
        # The cloud drawn under bar t was computed nb bars earlier: a backward shift, known at t.
        top = pd.Series(np.maximum(span_a, span_b)).shift(nb).to_numpy()
        bottom = pd.Series(np.minimum(span_a, span_b)).shift(nb).to_numpy()
        inside = np.where((close >= bottom) & (close <= top), 0.0, np.nan)
        cloud = np.where(close > top, close - top, np.where(close < bottom, close - bottom, inside))
        o.add(f"ichi_cloud_dist_{ns}", _div(cloud, atr), max(max(ns, nb, nc) + nb, atr_w), "high,low,close",
              f"signed distance of close outside the cloud shown at t (spans from bar t-{nb}) / ATR{aw}, "
              "0 inside")

    with o.timed("supertrend"):
        n = cfg.supertrend_window
        st_line, st_dir = _supertrend(high, low, close, talib.ATR(high, low, close, n),
                                      cfg.supertrend_multiplier)
        o.add(f"supertrend_dir_{n}", st_dir, n + 1, "high,low,close",
              f"Supertrend(ATR{n}, x{cfg.supertrend_multiplier}) direction, +1 up / -1 down; recursive")
        o.add(f"supertrend_dist_{n}", in_atr(st_line), max(n + 1, atr_w), "high,low,close",
              f"(close - Supertrend line) / ATR{aw}")

    with o.timed("momentum oscillators"):
        for n in cfg.rsi_windows:
            o.add(f"rsi_{n}", talib.RSI(close, n), n + 1, "close", f"Wilder RSI{n}, 0..100")
        k, sm = cfg.stoch_k, cfg.stoch_smooth
        slowk, slowd = talib.STOCH(high, low, close, k, sm, 0, sm, 0)
        o.add(f"stoch_k_{k}", slowk, k + 2 * sm - 2, "high,low,close",
              f"slow stochastic %K ({k}-bar fast %K, SMA{sm}), 0..100")
        o.add(f"stoch_d_{k}", slowd, k + 2 * sm - 2, "high,low,close",
              f"stochastic %D (SMA{sm} of %K), 0..100")
        n = cfg.willr_window
        o.add(f"willr_{n}", talib.WILLR(high, low, close, n), n, "high,low,close", f"Williams %R{n}, -100..0")
        n = cfg.cci_window
        o.add(f"cci_{n}", talib.CCI(high, low, close, n), n, "high,low,close",
              f"commodity channel index {n}, typical price vs its SMA in 0.015 mean deviations")
        for n in cfg.roc_windows:
            o.add(f"roc_{n}", talib.ROC(close, n), n + 1, "close", f"rate of change over {n} bars, percent")
        for n in cfg.mom_windows:
            o.add(f"mom_{n}", _div(talib.MOM(close, n), atr), max(n + 1, atr_w), "high,low,close",
                  f"momentum close - close[t-{n}] / ATR{aw}")

    with o.timed("bollinger/atr/keltner/donchian"):
        n = cfg.bb_window
        upper, middle, lower = talib.BBANDS(close, n, cfg.bb_nstd, cfg.bb_nstd, 0)
        o.add(f"bb_pctb_{n}", _div(close - lower, upper - lower), n, "close",
              f"Bollinger %B: (close - lower) / (upper - lower), SMA{n} +- {cfg.bb_nstd} population std")
        o.add(f"bb_width_{n}", _div(upper - lower, middle), n, "close", "Bollinger (upper - lower) / middle")
        o.add(f"atr_ratio_{aw}", _div(atr, close), atr_w, "high,low,close", f"ATR{aw} / close")
        n, na = cfg.keltner_window, cfg.keltner_atr_window
        k_mid = talib.EMA(close, n)
        k_half = cfg.keltner_multiplier * talib.ATR(high, low, close, na)
        o.add(f"keltner_pos_{n}", _div(close - (k_mid - k_half), 2.0 * k_half), max(n, na + 1),
              "high,low,close",
              f"position of close in the Keltner channel EMA{n} +- {cfg.keltner_multiplier} ATR{na}: "
              "0 lower band, 1 upper band")
        o.add(f"keltner_width_{n}", _div(2.0 * k_half, k_mid), max(n, na + 1), "high,low,close",
              "Keltner (upper - lower) / middle")
        for n in cfg.donchian_windows:
            hh = _roll(high, n).max().to_numpy()
            ll = _roll(low, n).min().to_numpy()
            o.add(f"donchian_pos_{n}", _div(close - ll, hh - ll), n, "high,low,close",
                  f"(close - lowest low) / (highest high - lowest low) over bars t-{n - 1}..t")
            o.add(f"donchian_width_{n}", _div(hh - ll, close), n, "high,low,close",
                  f"(highest high - lowest low) over bars t-{n - 1}..t / close")

    with o.timed("realised volatility"):
        logret = np.full(len(close), np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            logret[1:] = np.log(close[1:] / close[:-1])
        for n in cfg.rvol_windows:
            o.add(f"rvol_{n}", _roll(logret, n).std(ddof=1).to_numpy(), n + 1, "close",
                  f"sample std of the last {n} one-bar log returns (per bar, not annualised)")

    with o.timed("obv"):
        obv = talib.OBV(close, volume)
        for n in cfg.obv_windows:
            flow = obv - pd.Series(obv).shift(n).to_numpy()
            o.add(f"obv_flow_{n}", _div(flow, _roll(volume, n).sum().to_numpy()), n + 1, "close,volume",
                  f"OBV change over {n} bars / volume of those bars: net signed volume share, -1..1")

    with o.timed("volume profile"):
        n = cfg.volume_profile_window
        poc, val, vah = _volume_profile(high, low, volume, n, cfg.volume_profile_bins, cfg.value_area)
        o.add(f"vp_poc_dist_{n}", in_atr(poc), max(n, atr_w), "high,low,close,volume",
              f"(close - point of control of the {n}-bar, {cfg.volume_profile_bins}-row volume profile) "
              f"/ ATR{aw}")
        o.add(f"vp_va_pos_{n}", _div(close - val, vah - val), n, "high,low,close,volume",
              f"(close - value-area low) / (value-area high - low), {cfg.value_area:.0%} value area "
              f"of the {n}-bar profile")

    with o.timed("vwap"):
        pv = typical * volume
        for n in cfg.vwap_windows:
            vwap = _div(_roll(pv, n).sum().to_numpy(), _roll(volume, n).sum().to_numpy())
            o.add(f"vwap_dist_{n}", in_atr(vwap), max(n, atr_w), "high,low,close,volume",
                  f"(close - VWAP of typical price over bars t-{n - 1}..t) / ATR{aw}")
        day = pd.factorize(pd.to_datetime(bars["timestamp"], utc=True).dt.floor("D"))[0]
        day_pv = pd.Series(pv).groupby(day).cumsum().to_numpy()
        day_v = pd.Series(volume).groupby(day).cumsum().to_numpy()
        o.add("vwap_day_dist", in_atr(_div(day_pv, day_v)), None, "timestamp,high,low,close,volume",
              f"(close - VWAP of typical price since 00:00 UTC of the bar's day, bar t included) / ATR{aw}")

    with o.timed("volume oscillators"):
        n = cfg.mfi_window
        o.add(f"mfi_{n}", talib.MFI(high, low, close, volume, n), n + 1, "high,low,close,volume",
              f"money flow index {n}, 0..100")
        ad = talib.AD(high, low, close, volume)
        n = cfg.ad_z_window
        roll_ad = _roll(ad, n)
        o.add(f"ad_z_{n}", _div(ad - roll_ad.mean().to_numpy(), roll_ad.std(ddof=0).to_numpy()), n,
              "high,low,close,volume",
              f"z-score (population std) of the accumulation/distribution line over bars t-{n - 1}..t")
        f, s = cfg.adosc_fast, cfg.adosc_slow
        o.add(f"adosc_{f}_{s}", _div(talib.ADOSC(high, low, close, volume, f, s), talib.SMA(volume, s)), s,
              "high,low,close,volume", f"Chaikin oscillator EMA{f}(A/D) - EMA{s}(A/D) / SMA{s} of volume")
        n = cfg.cmf_window
        clv = _div((close - low) - (high - close), high - low)
        clv[high == low] = 0.0
        o.add(f"cmf_{n}", _div(_roll(clv * volume, n).sum().to_numpy(), _roll(volume, n).sum().to_numpy()), n,
              "high,low,close,volume",
              f"Chaikin money flow: sum of CLV * volume / sum of volume over bars t-{n - 1}..t")

    frame = pd.DataFrame(o.columns)
    log.debug("technical family: %d rows, %d columns; seconds per block %s", len(frame), frame.shape[1],
              {k: round(v, 4) for k, v in o.timings.items()})
    return FamilyResult(frame, o.specs).check(len(bars))
