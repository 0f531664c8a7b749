"""Technical family: TA-Lib-backed columns against TA-Lib's raw output, hand-written indicators against plain
Python loops, the family contract, scale-freeness and the look-ahead property, all on shipped BTCUSDT bars."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest
import talib
from pydantic import ValidationError

from cryptopredict.data.snapshot import read_snapshot_ohlcv
from cryptopredict.features.base import BAR_COLUMNS
from cryptopredict.features.technical import TechnicalConfig, compute_technical
from tests.conftest import SHIPPED_DATA
from tests.support.lookahead import assert_no_lookahead, random_cuts

CFG = TechnicalConfig()
NAN = float("nan")


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    return read_snapshot_ohlcv(SHIPPED_DATA, "BTCUSDT")[list(BAR_COLUMNS)]


@pytest.fixture(scope="module")
def bars(btc: pd.DataFrame) -> pd.DataFrame:
    """2000 bars from 2019-04-07 04:00 UTC (starts mid-day; an 11 h gap; a zero-range, zero-volume bar)."""
    return btc.iloc[11000:13000].reset_index(drop=True)


@pytest.fixture(scope="module")
def feats(bars: pd.DataFrame) -> pd.DataFrame:
    return compute_technical(bars, CFG).frame


@pytest.fixture(scope="module")
def flat_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """``bars`` with two traded zero-range bars (high == low == close), an edge case the slice lacks."""
    out = bars.copy()
    for i in (1000, 1500):
        out.loc[i, ["open", "high", "low"]] = out.loc[i, "close"]
    return out


@pytest.fixture(scope="module")
def flat_feats(flat_bars: pd.DataFrame) -> pd.DataFrame:
    return compute_technical(flat_bars, CFG).frame


@pytest.fixture(scope="module")
def hlcv(bars: pd.DataFrame) -> tuple[np.ndarray, ...]:
    return tuple(bars[c].to_numpy(float) for c in ("high", "low", "close", "volume"))


def _same(actual: pd.Series | np.ndarray, expected: np.ndarray | list[float], *, rtol: float = 1e-9,
          atol: float = 1e-9, min_values: int = 1500) -> None:
    """Equal within tolerance, NaN in the same places, and enough values actually compared."""
    a, e = np.asarray(actual, float), np.asarray(expected, float)
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    assert np.isfinite(e).sum() >= min_values


# ---- reference loops ------------------------------------------------------------------------------------

def ref_atr(h: list[float], lo: list[float], c: list[float], n: int) -> list[float]:
    """Wilder ATR: the first value at bar n is the mean of the true ranges of bars 1..n."""
    tr = [NAN] + [max(h[i] - lo[i], abs(h[i] - c[i - 1]), abs(lo[i] - c[i - 1])) for i in range(1, len(c))]
    out = [NAN] * len(c)
    a = sum(tr[1:n + 1]) / n
    out[n] = a
    for i in range(n + 1, len(c)):
        a = (a * (n - 1) + tr[i]) / n
        out[i] = a
    return out


def ref_ema(x: list[float], n: int) -> list[float]:
    """EMA seeded with the mean of the first n values, alpha 2 / (n + 1)."""
    out = [NAN] * len(x)
    e = sum(x[:n]) / n
    out[n - 1] = e
    for i in range(n, len(x)):
        e = e + 2.0 / (n + 1) * (x[i] - e)
        out[i] = e
    return out


def ref_mid(h: list[float], lo: list[float], i: int, n: int) -> float:
    if i < n - 1:
        return NAN
    return (max(h[i - n + 1:i + 1]) + min(lo[i - n + 1:i + 1])) / 2


def ref_supertrend(h: list[float], lo: list[float], c: list[float], atr: list[float],
                   m: float) -> tuple[list[float], list[float]]:
    n = len(c)
    line, direction = [NAN] * n, [NAN] * n
    fu = fl = NAN
    trend = 0
    for i in range(n):
        if math.isnan(atr[i]):
            continue
        bu, bl = (h[i] + lo[i]) / 2 + m * atr[i], (h[i] + lo[i]) / 2 - m * atr[i]
        if trend == 0:
            fu, fl, trend = bu, bl, 1
        else:
            fu = bu if (bu < fu or c[i - 1] > fu) else fu
            fl = bl if (bl > fl or c[i - 1] < fl) else fl
            if trend == 1 and c[i] < fl:
                trend = -1
            elif trend == -1 and c[i] > fu:
                trend = 1
        line[i], direction[i] = (fl if trend == 1 else fu), float(trend)
    return line, direction


def ref_volume_profile(h: list[float], lo: list[float], v: list[float], i: int, n: int, bins: int,
                       va: float) -> tuple[float, float, float]:
    """(POC, VAL, VAH) of bars i-n+1..i: volume spread uniformly over each bar's [low, high]."""
    if i < n - 1:
        return NAN, NAN, NAN
    idx = range(i - n + 1, i + 1)
    bottom, top = min(lo[j] for j in idx), max(h[j] for j in idx)
    width = (top - bottom) / bins
    hist = [0.0] * bins
    for j in idx:
        if v[j] <= 0:
            continue
        a, b = (lo[j] - bottom) / width, (h[j] - bottom) / width
        if b <= a:
            hist[min(int(a), bins - 1)] += v[j]
            continue
        for k in range(bins):
            overlap = min(b, k + 1) - max(a, k)
            if overlap > 0:
                hist[k] += v[j] * overlap / (b - a)
    p = hist.index(max(hist))
    k_lo = k_hi = p
    acc = hist[p]
    while acc < va * sum(hist) and (k_lo > 0 or k_hi < bins - 1):
        above = hist[k_hi + 1] if k_hi < bins - 1 else -1.0
        below = hist[k_lo - 1] if k_lo > 0 else -1.0
        if above >= below:
            k_hi, acc = k_hi + 1, acc + above
        else:
            k_lo, acc = k_lo - 1, acc + below
    return bottom + (p + 0.5) * width, bottom + k_lo * width, bottom + (k_hi + 1) * width


def _lists(bars: pd.DataFrame) -> tuple[list[float], list[float], list[float], list[float]]:
    return tuple(bars[c].astype(float).tolist() for c in ("high", "low", "close", "volume"))  # type: ignore


# ---- contract -------------------------------------------------------------------------------------------

def test_contract_columns_specs_and_warmup(bars: pd.DataFrame) -> None:
    shifted = bars.set_axis(np.arange(len(bars)) + 5000)  # a non-RangeIndex input must not matter
    res = compute_technical(shifted, CFG)
    frame = res.frame
    assert len(frame) == len(bars) and isinstance(frame.index, pd.RangeIndex)
    assert frame.shape[1] >= 50
    assert [s.name for s in res.specs] == list(frame.columns)
    assert all(pd.api.types.is_float_dtype(t) for t in frame.dtypes)
    for s in res.specs:
        assert s.name.startswith("ta_") and s.family == "technical" and s.lag == "bar close"
        assert s.source.startswith("ohlcv.") and s.description
    pd.testing.assert_frame_equal(frame, compute_technical(bars, CFG).frame)
    # NaN until the window is full, and the window in the spec is exactly the warm-up: first value at w-1.
    for s in res.specs:
        first = frame[s.name].first_valid_index()
        if s.window is not None:
            assert first == s.window - 1, (s.name, first, s.window)
    longest = max(s.window for s in res.specs if s.window is not None)
    after = frame.iloc[longest:]
    assert not after.isna().any().any(), after.columns[after.isna().any()].tolist()


def test_config_forbids_unknown_keys_and_windows_name_columns(bars: pd.DataFrame) -> None:
    with pytest.raises(ValidationError):
        TechnicalConfig(rsi_window=14)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        TechnicalConfig(macd_fast=30)
    small = TechnicalConfig(rsi_windows=(7,), ma_windows=(5,))
    cols = compute_technical(bars.iloc[:400], small).frame.columns
    assert {"ta_rsi_7", "ta_sma_dist_5", "ta_ema_dist_5"} <= set(cols)
    assert "ta_rsi_14" not in cols and "ta_sma_dist_200" not in cols


def test_bad_bars_are_refused(bars: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="sorted"):
        compute_technical(bars.iloc[::-1])
    with pytest.raises(ValueError, match="lack"):
        compute_technical(bars.drop(columns="volume"))


@pytest.mark.parametrize("symbol", ["BTCUSDT", "DOGEUSDT"])
def test_scale_free_in_prices_and_in_volume(symbol: str) -> None:
    """No raw levels: prices or volume times a constant leave every column unchanged (none is
    volume-scaled). DOGE is quoted in tick-sized decimals near 0.003, where +DM/-DM ties are frequent: ADX,
    +-DI and SAR only pass because their inputs go through the decimal grid."""
    b = read_snapshot_ohlcv(SHIPPED_DATA, symbol)[list(BAR_COLUMNS)].iloc[5000:7000].reset_index(drop=True)
    base = compute_technical(b, CFG).frame
    for k in (1000.0, 3.7):
        prices = b.assign(**{c: b[c] * k for c in ("open", "high", "low", "close")})
        for scaled in (prices, b.assign(volume=b["volume"] * k)):
            other = compute_technical(scaled, CFG).frame
            for c in base:
                np.testing.assert_allclose(other[c], base[c], rtol=1e-6, atol=1e-8, equal_nan=True,
                                           err_msg=f"{c} x{k}")


# ---- TA-Lib-backed columns: the scale-free transform of TA-Lib's raw output -----------------------------

def test_talib_backed_columns_match_talib(feats: pd.DataFrame, hlcv: tuple[np.ndarray, ...]) -> None:
    h, lo, c, v = hlcv
    atr = talib.ATR(h, lo, c, 14)
    expected: dict[str, np.ndarray] = {}
    for n in (10, 20, 50, 200):
        expected[f"ta_sma_dist_{n}"] = (c - talib.SMA(c, n)) / atr
        expected[f"ta_ema_dist_{n}"] = (c - talib.EMA(c, n)) / atr
    macd, signal, hist = talib.MACD(c, 12, 26, 9)
    expected |= {"ta_macd_12_26": macd / atr, "ta_macd_signal_12_26_9": signal / atr,
                 "ta_macd_hist_12_26_9": hist / atr}
    # ADX, +-DI and SAR get prices as integers: 10 significant digits of the first close's decade.
    grid = 10.0 ** (9 - math.floor(math.log10(c[0])))
    gh, gl, gc = np.round(h * grid), np.round(lo * grid), np.round(c * grid)
    assert np.allclose(gh / grid, h, rtol=1e-12) and (gh == np.floor(gh)).all()
    expected |= {"ta_adx_14": talib.ADX(gh, gl, gc, 14), "ta_plus_di_14": talib.PLUS_DI(gh, gl, gc, 14),
                 "ta_minus_di_14": talib.MINUS_DI(gh, gl, gc, 14)}
    sar = talib.SAR(gh, gl, 0.02, 0.2) / grid
    expected |= {"ta_sar_dist": (c - sar) / atr, "ta_sar_side": np.where(sar < c, 1.0, -1.0)}
    expected["ta_sar_side"][0] = np.nan
    expected |= {"ta_rsi_14": talib.RSI(c, 14), "ta_rsi_28": talib.RSI(c, 28)}
    slowk, slowd = talib.STOCH(h, lo, c, 14, 3, 0, 3, 0)
    expected |= {"ta_stoch_k_14": slowk, "ta_stoch_d_14": slowd, "ta_willr_14": talib.WILLR(h, lo, c, 14),
                 "ta_cci_20": talib.CCI(h, lo, c, 20)}
    for n in (1, 24, 168):
        expected[f"ta_roc_{n}"] = talib.ROC(c, n)
    for n in (10, 24):
        expected[f"ta_mom_{n}"] = talib.MOM(c, n) / atr
    up, mid, dn = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    expected |= {"ta_bb_pctb_20": (c - dn) / (up - dn), "ta_bb_width_20": (up - dn) / mid,
                 "ta_atr_ratio_14": atr / c, "ta_mfi_14": talib.MFI(h, lo, c, v, 14),
                 "ta_adosc_3_10": talib.ADOSC(h, lo, c, v, 3, 10) / talib.SMA(v, 10)}
    for name, e in expected.items():
        _same(feats[name], e, rtol=1e-12, atol=1e-12)
    assert np.isin(feats["ta_sar_side"].dropna(), [-1.0, 1.0]).all()


def test_obv_and_ad_transforms_match_loops(flat_bars: pd.DataFrame, flat_feats: pd.DataFrame) -> None:
    feats = flat_feats
    h, lo, c, v = _lists(flat_bars)
    sign = [0.0] + [(c[i] > c[i - 1]) - (c[i] < c[i - 1]) for i in range(1, len(c))]
    for n in (24, 168):
        exp = [NAN] * n + [sum(sign[j] * v[j] for j in range(i - n + 1, i + 1)) / sum(v[i - n + 1:i + 1])
                           for i in range(n, len(c))]
        _same(feats[f"ta_obv_flow_{n}"], exp)
    clv = [((c[i] - lo[i]) - (h[i] - c[i])) / (h[i] - lo[i]) if h[i] > lo[i] else 0.0 for i in range(len(c))]
    ad, run = [], 0.0
    for i in range(len(c)):
        run += clv[i] * v[i]
        ad.append(run)
    n = 168
    exp = [NAN] * (n - 1)
    for i in range(n - 1, len(c)):
        window = ad[i - n + 1:i + 1]
        exp.append((ad[i] - statistics.fmean(window)) / statistics.pstdev(window))
    _same(feats["ta_ad_z_168"], exp, rtol=1e-6, atol=1e-8)
    n = 20
    exp = [NAN] * (n - 1) + [sum(clv[j] * v[j] for j in range(i - n + 1, i + 1)) / sum(v[i - n + 1:i + 1])
                             for i in range(n - 1, len(c))]
    _same(feats["ta_cmf_20"], exp)


# ---- hand-written indicators against plain loops --------------------------------------------------------

def test_reference_atr_and_ema_loops_agree_with_talib(hlcv: tuple[np.ndarray, ...],
                                                       bars: pd.DataFrame) -> None:
    """The loops the references below are built on are TA-Lib's ATR and EMA."""
    h, lo, c, _ = _lists(bars)
    _same(ref_atr(h, lo, c, 14), talib.ATR(*hlcv[:3], 14))
    _same(ref_ema(c, 20), talib.EMA(hlcv[2], 20))


def test_ichimoku_matches_loop(bars: pd.DataFrame, feats: pd.DataFrame) -> None:
    h, lo, c, _ = _lists(bars)
    atr = ref_atr(h, lo, c, 14)
    n = len(c)
    conv = [ref_mid(h, lo, i, 9) for i in range(n)]
    base = [ref_mid(h, lo, i, 26) for i in range(n)]
    span_a = [(a + b) / 2 for a, b in zip(conv, base)]
    span_b = [ref_mid(h, lo, i, 52) for i in range(n)]
    _same(feats["ta_ichi_conv_dist_9"], [(c[i] - conv[i]) / atr[i] for i in range(n)])
    _same(feats["ta_ichi_base_dist_26"], [(c[i] - base[i]) / atr[i] for i in range(n)])
    _same(feats["ta_ichi_span_a_dist_26"], [(c[i] - span_a[i]) / atr[i] for i in range(n)])
    _same(feats["ta_ichi_span_b_dist_52"], [(c[i] - span_b[i]) / atr[i] for i in range(n)])
    cloud = [NAN] * n
    for i in range(78 - 1, n):
        top, bot = max(span_a[i - 26], span_b[i - 26]), min(span_a[i - 26], span_b[i - 26])
        cloud[i] = ((c[i] - top) if c[i] > top else (c[i] - bot) if c[i] < bot else 0.0) / atr[i]
    _same(feats["ta_ichi_cloud_dist_52"], cloud)
    assert (feats["ta_ichi_cloud_dist_52"] == 0).sum() > 50  # the close does sit inside the cloud at times


def test_ichimoku_has_no_chikou_and_ignores_the_future(bars: pd.DataFrame, feats: pd.DataFrame) -> None:
    """No lagging span: changing every bar after t (a chikou span would read the close at t+26) leaves
    row t and all earlier rows unchanged, for Ichimoku and every other column."""
    ichi = [c for c in feats if c.startswith("ta_ichi_")]
    assert ichi and not any("chikou" in c or "lag" in c for c in ichi)
    t = 1500
    future = bars.copy()
    rng = np.random.default_rng(0)
    factor = rng.uniform(0.5, 2.0, size=len(bars) - t - 1)
    for col in ("open", "high", "low", "close"):
        future.loc[t + 1:, col] = bars.loc[t + 1:, col].to_numpy() * factor
    future.loc[t + 1:, "volume"] = bars.loc[t + 1:, "volume"].to_numpy()[::-1]
    other = compute_technical(future, CFG).frame
    pd.testing.assert_frame_equal(other.iloc[:t + 1], feats.iloc[:t + 1])
    base = "ta_ichi_base_dist_26"
    assert not np.isclose(other[base].iloc[t + 30], feats[base].iloc[t + 30])  # later rows did change


def test_supertrend_matches_loop(bars: pd.DataFrame, feats: pd.DataFrame) -> None:
    h, lo, c, _ = _lists(bars)
    line, direction = ref_supertrend(h, lo, c, ref_atr(h, lo, c, 10), 3.0)
    atr = ref_atr(h, lo, c, 14)
    _same(feats["ta_supertrend_dir_10"], direction)
    _same(feats["ta_supertrend_dist_10"], [(c[i] - line[i]) / atr[i] for i in range(len(c))])
    d = feats["ta_supertrend_dir_10"].dropna()
    assert set(d.unique()) == {-1.0, 1.0} and (d.diff() != 0).sum() > 10  # it does flip


def test_keltner_and_donchian_match_loops(bars: pd.DataFrame, feats: pd.DataFrame) -> None:
    h, lo, c, _ = _lists(bars)
    n = len(c)
    mid, atr10 = ref_ema(c, 20), ref_atr(h, lo, c, 10)
    _same(feats["ta_keltner_pos_20"], [(c[i] - (mid[i] - 2 * atr10[i])) / (4 * atr10[i]) for i in range(n)])
    _same(feats["ta_keltner_width_20"], [4 * atr10[i] / mid[i] for i in range(n)])
    for w in (20, 55):
        pos, width = [NAN] * n, [NAN] * n
        for i in range(w - 1, n):
            hh, ll = max(h[i - w + 1:i + 1]), min(lo[i - w + 1:i + 1])
            pos[i], width[i] = (c[i] - ll) / (hh - ll), (hh - ll) / c[i]
        _same(feats[f"ta_donchian_pos_{w}"], pos)
        _same(feats[f"ta_donchian_width_{w}"], width)


def test_realised_volatility_matches_loop(bars: pd.DataFrame, feats: pd.DataFrame) -> None:
    c = bars["close"].tolist()
    r = [NAN] + [math.log(c[i] / c[i - 1]) for i in range(1, len(c))]
    for w in (24, 168):
        exp = [NAN] * w + [statistics.stdev(r[i - w + 1:i + 1]) for i in range(w, len(c))]
        _same(feats[f"ta_rvol_{w}"], exp, rtol=1e-7)


def test_volume_profile_matches_loop(flat_bars: pd.DataFrame, flat_feats: pd.DataFrame) -> None:
    feats = flat_feats
    h, lo, c, v = _lists(flat_bars)
    atr = ref_atr(h, lo, c, 14)
    poc_d, va_pos = [NAN] * len(c), [NAN] * len(c)
    for i in range(167, len(c)):
        poc, val, vah = ref_volume_profile(h, lo, v, i, 168, 24, 0.70)
        poc_d[i], va_pos[i] = (c[i] - poc) / atr[i], (c[i] - val) / (vah - val)
    _same(feats["ta_vp_poc_dist_168"], poc_d)
    _same(feats["ta_vp_va_pos_168"], va_pos)
    outside = (feats["ta_vp_va_pos_168"] > 1) | (feats["ta_vp_va_pos_168"] < 0)
    assert 0.05 < outside.mean() < 0.8  # the value area is a strict sub-range of the window


def test_rolling_vwap_matches_loop(bars: pd.DataFrame, feats: pd.DataFrame) -> None:
    h, lo, c, v = _lists(bars)
    atr = ref_atr(h, lo, c, 14)
    tp = [(h[i] + lo[i] + c[i]) / 3 for i in range(len(c))]
    for w in (24, 168):
        exp = [NAN] * len(c)
        for i in range(max(w - 1, 14), len(c)):
            vwap = sum(tp[j] * v[j] for j in range(i - w + 1, i + 1)) / sum(v[i - w + 1:i + 1])
            exp[i] = (c[i] - vwap) / atr[i]
        _same(feats[f"ta_vwap_dist_{w}"], exp)


def test_daily_vwap_resets_at_midnight_utc(bars: pd.DataFrame, feats: pd.DataFrame) -> None:
    h, lo, c, v = _lists(bars)
    atr = ref_atr(h, lo, c, 14)
    tp = [(h[i] + lo[i] + c[i]) / 3 for i in range(len(c))]
    days = bars["timestamp"].dt.floor("D").tolist()
    exp, pv, vol = [NAN] * len(c), 0.0, 0.0
    for i in range(len(c)):
        if i == 0 or days[i] != days[i - 1]:
            pv = vol = 0.0
        pv, vol = pv + tp[i] * v[i], vol + v[i]
        exp[i] = (c[i] - pv / vol) / atr[i]
    _same(feats["ta_vwap_day_dist"], exp)
    # At the 00:00 bar the session holds that bar alone: VWAP = its typical price.
    midnight = np.flatnonzero((bars["timestamp"].dt.hour == 0).to_numpy() & (np.arange(len(c)) >= 14))
    assert len(midnight) > 50
    for i in midnight:
        assert feats["ta_vwap_day_dist"].iloc[i] == pytest.approx((c[i] - tp[i]) / atr[i], rel=1e-9)
    # A gap across midnight: the first bar of the new day (03:00) starts the session, not 00:00's absence.
    i0 = int(midnight[5])
    gapped = bars.drop(index=range(i0 - 2, i0 + 3)).reset_index(drop=True)
    first = i0 - 2  # position of the 03:00 bar after dropping 22:00..02:00
    assert gapped["timestamp"].iloc[first].hour == 3
    g = compute_technical(gapped, CFG).frame["ta_vwap_day_dist"]
    gh, gl, gc, _ = _lists(gapped)
    g_atr = ref_atr(gh, gl, gc, 14)
    g_tp = (gh[first] + gl[first] + gc[first]) / 3
    assert g.iloc[first] == pytest.approx((gc[first] - g_tp) / g_atr[first], rel=1e-9)


# ---- look-ahead -----------------------------------------------------------------------------------------

def test_no_lookahead_on_real_bars(btc: pd.DataFrame) -> None:
    sample = btc.iloc[25000:28000].reset_index(drop=True)  # gaps and a zero-range, zero-volume bar inside
    specs = compute_technical(sample.iloc[:400], CFG).specs
    longest = max(s.window for s in specs if s.window is not None)

    def compute(t_end: pd.Timestamp) -> pd.DataFrame:
        return compute_technical(sample[sample["timestamp"] <= t_end], CFG).frame

    cuts = random_cuts(sample["timestamp"], 8, seed=7, min_position=longest + 50)
    compared = assert_no_lookahead(compute, sample["timestamp"], cuts)
    assert compared >= 8 * len(specs) - 8  # every column compared at every cut


def test_short_histories_give_nan_columns_not_errors(bars: pd.DataFrame, feats: pd.DataFrame) -> None:
    for n in (0, 1, 30):
        frame = compute_technical(bars.iloc[:n], CFG).frame
        assert list(frame.columns) == list(feats.columns) and len(frame) == n
        assert frame["ta_sma_dist_200"].isna().all() and frame["ta_vp_poc_dist_168"].isna().all()
    assert compute_technical(bars.iloc[:30], CFG).frame["ta_rsi_14"].notna().sum() == 30 - 14
