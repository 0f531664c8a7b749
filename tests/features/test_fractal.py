"""Fractal family: every measure against known signals and an independent reference (plain numpy loops,
antropy, nolds where installed), the carry-forward between evaluation points, the family contract, and the
look-ahead property on real BTCUSDT bars."""

from __future__ import annotations

import logging
import math
import warnings

import antropy
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy.special import gammaln

from cryptopredict.features import fractal as fr
from cryptopredict.features.fractal import FractalConfig, compute_fractal, evaluation_points
from tests.conftest import SHIPPED_DATA
from tests.support.frames import ohlcv_frame
from tests.support.lookahead import assert_no_lookahead, random_cuts

# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    """BTCUSDT 1h bars, whole shipped history."""
    data = pd.read_parquet(SHIPPED_DATA / "ohlcv_1h.parquet")
    bars = data[data["symbol"] == "BTCUSDT"].sort_values("timestamp").reset_index(drop=True)
    return bars[["timestamp", "open", "high", "low", "close", "volume"]]


@pytest.fixture(scope="module")
def btc_returns(btc: pd.DataFrame) -> np.ndarray:
    return np.diff(np.log(btc["close"].to_numpy(np.float64)))


def real_windows(ret: np.ndarray, length: int,
                 starts: tuple[int, ...] = (1000, 30000, 60000)) -> list[np.ndarray]:
    """Contiguous windows of ``length`` values from three eras of the history (2018, 2021, 2024)."""
    return [np.ascontiguousarray(ret[s:s + length]) for s in starts]


def white_noise(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n)


def fgn(n: int, hurst: float, seed: int) -> np.ndarray:
    """Fractional Gaussian noise by circulant embedding (Davies-Harte): lag-1 autocorrelation 2^(2H-1)-1."""
    k = np.arange(n + 1, dtype=float)
    gamma = 0.5 * ((k + 1) ** (2 * hurst) - 2 * k ** (2 * hurst) + np.abs(k - 1) ** (2 * hurst))
    eig = np.fft.fft(np.concatenate([gamma, gamma[-2:0:-1]])).real
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(2 * n) + 1j * rng.standard_normal(2 * n)
    return np.fft.fft(np.sqrt(np.maximum(eig, 0) / (2 * n)) * z).real[:n]


def logistic_map(n: int, x0: float = 0.4) -> np.ndarray:
    out = np.empty(n)
    v = x0
    for i in range(n):
        v = 4.0 * v * (1.0 - v)
        out[i] = v
    return out


def henon_x(n: int) -> np.ndarray:
    out = np.empty(n)
    a, b = 0.1, 0.1
    for i in range(n + 100):
        a, b = 1 - 1.4 * a * a + b, 0.3 * a
        if i >= 100:
            out[i - 100] = a
    return out


def quasi_sine(n: int) -> np.ndarray:
    """A sine whose period (16.18 samples) is irrational, so no two samples coincide."""
    return np.sin(2 * np.pi * (math.sqrt(5) - 1) / 20 * np.arange(n))


# ---------------------------------------------------------------------------------------------------------
# Plain references (numpy, no numba), written from the formulas in the module docstring
# ---------------------------------------------------------------------------------------------------------


def embed(x: np.ndarray, dim: int, delay: int) -> np.ndarray:
    m = len(x) - (dim - 1) * delay
    return np.stack([x[a * delay:a * delay + m] for a in range(dim)], axis=1)


def scales(size: int, min_n: int) -> list[int]:
    out, n = [], min_n
    while n <= size // 4:
        out.append(n)
        n *= 2
    return out


def ref_hurst_rs(x: np.ndarray, min_n: int) -> float:
    def expected_rs(n: int) -> float:
        middle = (math.exp(gammaln((n - 1) / 2) - gammaln(n / 2)) / math.sqrt(math.pi) if n <= 340
                  else 1 / math.sqrt(n * math.pi / 2))
        i = np.arange(1, n)
        return (n - 0.5) / n * middle * np.sqrt((n - i) / i).sum()

    ns, ys = [], []
    for n in scales(len(x), min_n):
        chunks = x[len(x) % n:].reshape(-1, n)
        dev = np.cumsum(chunks - chunks.mean(axis=1, keepdims=True), axis=1)
        rng = dev.max(axis=1) - dev.min(axis=1)
        keep = rng > 0
        ns.append(n)
        ys.append(np.log(np.mean(rng[keep] / chunks.std(axis=1, ddof=1)[keep])) - np.log(expected_rs(n)))
    return float(np.polyfit(np.log(ns), ys, 1)[0] + 0.5)


def ref_dfa(x: np.ndarray, min_n: int) -> float:
    profile = np.cumsum(x - x.mean())
    ns, fs = [], []
    for n in scales(len(x), min_n):
        t = np.arange(n)
        sq = [np.mean((seg - np.polyval(np.polyfit(t, seg, 1), t)) ** 2)
              for s in range(len(x) - n, -1, -(n // 2)) for seg in [profile[s:s + n]]]
        ns.append(n)
        fs.append(math.sqrt(np.mean(sq)))
    return float(np.polyfit(np.log(ns), np.log(fs), 1)[0])


def ref_katz(path: np.ndarray) -> float:
    length = sum(abs(path[i] - path[i - 1]) for i in range(1, len(path)))
    step = length / (len(path) - 1)
    reach = max(abs(p - path[0]) for p in path)
    return math.log10(length / step) / math.log10(reach / step)


def ref_lyap(x: np.ndarray, dim: int, delay: int, min_tsep: int, traj_len: int) -> float:
    v = embed(x, dim, delay)
    ntraj = len(v) - traj_len + 1
    d = np.sqrt(((v[:, None, :] - v[None, :, :]) ** 2).sum(axis=2))
    band = np.abs(np.arange(len(v))[:, None] - np.arange(len(v))[None, :]) <= min_tsep
    d[band] = np.inf
    nb = np.argmin(d[:ntraj, :ntraj], axis=1)
    div = []
    for k in range(traj_len):
        dk = d[np.arange(ntraj) + k, nb + k]
        div.append(np.mean(np.log(dk[dk > 0])))
    return float(np.polyfit(np.arange(traj_len), div, 1)[0])


def ref_corr_dim(x: np.ndarray, dim: int, delay: int, theiler: int, c_lo: float, c_hi: float,
                 bins_per_octave: int) -> float:
    v = embed(x, dim, delay)
    i, j = np.triu_indices(len(v), k=theiler + 1)
    d2 = ((v[i] - v[j]) ** 2).sum(axis=1)
    per = bins_per_octave // 2  # radii per octave of r^2
    edges = [2.0 ** o * (1 + (q + 1) / per) for o in range(-96, 32) for q in range(per)][:-1]
    c = np.array([np.mean(d2 < e) for e in edges])
    fit = (c >= c_lo) & (c <= c_hi)
    return float(np.polyfit(0.5 * np.log(np.array(edges)[fit]), np.log(c[fit]), 1)[0])


def run_lengths(line: np.ndarray) -> list[int]:
    runs, cur = [], 0
    for v in line:
        if v:
            cur += 1
        elif cur:
            runs.append(cur)
            cur = 0
    if cur:
        runs.append(cur)
    return runs


def ref_rqa(x: np.ndarray, dim: int, delay: int, radius: float, theiler: int, lmin: int,
            vmin: int) -> tuple[float, float, float]:
    v = embed(x, dim, delay)
    m = len(v)
    allowed = np.abs(np.arange(m)[:, None] - np.arange(m)[None, :]) > theiler
    rec = (np.abs(v[:, None, :] - v[None, :, :]).max(axis=2) <= radius) & allowed
    total = rec.sum()
    diag = sum(r for k in range(-m + 1, m) for r in run_lengths(np.diagonal(rec, k)) if r >= lmin)
    vert = sum(r for col in rec.T for r in run_lengths(col) if r >= vmin)
    return total / allowed.sum(), diag / total, vert / total


# ---------------------------------------------------------------------------------------------------------
# Hurst exponents
# ---------------------------------------------------------------------------------------------------------


def test_hurst_white_noise_is_half_and_fgn_follows_its_hurst() -> None:
    for seed in range(3):
        noise = white_noise(4096, seed)
        assert abs(fr.hurst_rs(noise, 8) - 0.5) < 0.05
        assert abs(fr.hurst_dfa(noise, 8) - 0.5) < 0.05
        persistent = fgn(4096, 0.8, seed)
        assert fr.hurst_rs(persistent, 8) > 0.68
        assert abs(fr.hurst_dfa(persistent, 8) - 0.8) < 0.06
        anti = fgn(4096, 0.3, seed)
        assert fr.hurst_rs(anti, 8) < 0.4
        assert abs(fr.hurst_dfa(anti, 8) - 0.3) < 0.06


def test_hurst_matches_plain_reference_on_real_windows(btc_returns: np.ndarray) -> None:
    for w in (256, 512, 300):
        for x in real_windows(btc_returns, w):
            assert fr.hurst_rs(x, 8) == pytest.approx(ref_hurst_rs(x, 8), rel=1e-9)
            assert fr.hurst_dfa(x, 8) == pytest.approx(ref_dfa(x, 8), rel=1e-9)


# ---------------------------------------------------------------------------------------------------------
# Fractal dimensions
# ---------------------------------------------------------------------------------------------------------


def test_higuchi_line_noise_and_walk() -> None:
    assert fr.higuchi_fd(np.linspace(0.0, 3.0, 513), 10) == pytest.approx(1.0, abs=1e-9)
    noise = white_noise(4096, 1)
    assert fr.higuchi_fd(noise, 10) == pytest.approx(2.0, abs=0.05)
    assert fr.higuchi_fd(np.cumsum(noise), 10) == pytest.approx(1.5, abs=0.07)


def test_higuchi_and_katz_match_antropy_and_a_plain_loop(btc: pd.DataFrame) -> None:
    logc = np.log(btc["close"].to_numpy(np.float64))
    for w in (257, 513):
        for path in real_windows(logc, w):
            assert fr.higuchi_fd(path, 10) == pytest.approx(antropy.higuchi_fd(path, 10), rel=1e-9)
            assert fr.katz_fd(path) == pytest.approx(ref_katz(path), rel=1e-12)
            assert fr.katz_fd(path) == pytest.approx(antropy.katz_fd(path), rel=1e-12)
    assert fr.katz_fd(np.linspace(0.0, 1.0, 100)) == pytest.approx(1.0)
    assert math.isnan(fr.katz_fd(np.array([0.0, 1.0, 0.0, 1.0, 0.0])))  # never gets past one step


# ---------------------------------------------------------------------------------------------------------
# Lyapunov exponent and correlation dimension
# ---------------------------------------------------------------------------------------------------------


def test_lyapunov_logistic_map_is_ln2_and_sine_is_zero() -> None:
    assert fr.lyap_rosenstein(logistic_map(1000), 2, 1, 2, 6) == pytest.approx(math.log(2), abs=0.03)
    assert abs(fr.lyap_rosenstein(quasi_sine(1000), 3, 4, 20, 10)) < 0.03


def test_lyapunov_matches_plain_reference_on_real_windows(btc_returns: np.ndarray) -> None:
    for x in real_windows(btc_returns, 256):
        assert fr.lyap_rosenstein(x, 3, 1, 4, 10) == pytest.approx(ref_lyap(x, 3, 1, 4, 10), rel=1e-9)
    x = logistic_map(400)
    assert fr.lyap_rosenstein(x, 2, 1, 2, 8) == pytest.approx(ref_lyap(x, 2, 1, 2, 8), rel=1e-9)


def test_correlation_dimension_of_known_sets() -> None:
    assert fr.corr_dim(quasi_sine(1000), 2, 4, 4, 1e-3, 0.1, 1) == pytest.approx(1.0, abs=0.1)
    assert fr.corr_dim(henon_x(2000), 2, 1, 4, 1e-3, 0.1, 1) == pytest.approx(1.21, abs=0.08)
    noise = white_noise(1000, 2)
    for dim in (1, 2, 3):
        assert fr.corr_dim(noise, dim, 1, 4, 1e-3, 0.1, 1) == pytest.approx(dim, abs=0.25)


def test_correlation_dimension_matches_plain_reference(btc_returns: np.ndarray) -> None:
    for x in real_windows(btc_returns, 512)[:2] + [henon_x(600)]:
        for mantissa_bits in (0, 1, 2):
            got = fr.corr_dim(x, 3, 1, 4, 1e-3, 0.1, mantissa_bits)
            assert got == pytest.approx(ref_corr_dim(x, 3, 1, 4, 1e-3, 0.1, 2 << mantissa_bits), rel=1e-9)


def test_rolling_correlation_dimension_equals_fresh_computation(btc_returns: np.ndarray) -> None:
    """The rolling driver carries its pair histogram between windows; it must equal a fresh one."""
    ret = np.concatenate([[np.nan], btc_returns[:4000]])
    ret[2500] = np.nan  # a bad return: windows holding it are NaN, the histogram must recover after
    ends = np.concatenate([np.arange(512, 3000, 24), np.arange(3000, 4001, 300)]).astype(np.int64)
    rolled = fr._roll_corr_dim(ret, ends, 512, 3, 1, 4, 1e-3, 0.1, 1)
    for q, e in enumerate(ends):
        fresh = fr.corr_dim(np.ascontiguousarray(ret[e - 511:e + 1]), 3, 1, 4, 1e-3, 0.1, 1)
        assert rolled[q] == fresh or (np.isnan(rolled[q]) and np.isnan(fresh)), e
    assert np.isnan(rolled[(ends >= 2500) & (ends < 2500 + 512)]).all()
    assert np.isfinite(rolled[ends < 2500]).all() and np.isfinite(rolled[ends >= 3012]).all()


# ---------------------------------------------------------------------------------------------------------
# RQA and entropies
# ---------------------------------------------------------------------------------------------------------


def test_rqa_matches_plain_reference(btc_returns: np.ndarray) -> None:
    cases = [(x[:200], 0.5 * x[:200].std(), 4, 2, 2) for x in real_windows(btc_returns, 200)]
    cases += [(quasi_sine(150), 0.1, 1, 2, 2), (white_noise(150, 5), 0.8, 0, 3, 2)]
    for x, radius, theiler, lmin, vmin in cases:
        got = fr.rqa(np.ascontiguousarray(x), 3, 1, radius, theiler, lmin, vmin)
        assert got == pytest.approx(ref_rqa(x, 3, 1, radius, theiler, lmin, vmin), rel=1e-12)


def test_rqa_periodic_is_deterministic_plateaus_laminar_noise_neither() -> None:
    _, det_sine, _ = fr.rqa(quasi_sine(500), 3, 1, 0.1, 4, 2, 2)
    rr_noise, det_noise, lam_noise = fr.rqa(white_noise(500, 3), 3, 1, 0.5, 4, 2, 2)
    rng = np.random.default_rng(6)
    plateaus = np.repeat(rng.standard_normal(50), 10) + 0.01 * rng.standard_normal(500)
    _, _, lam_plateaus = fr.rqa(plateaus, 3, 1, 0.5 * plateaus.std(), 4, 2, 2)
    assert det_sine > 0.9 and det_noise < 0.6
    assert lam_plateaus > 0.9 and lam_noise < 0.3
    assert 0 < rr_noise < fr.rqa(white_noise(500, 3), 3, 1, 1.0, 4, 2, 2)[0]


def test_entropies_match_antropy(btc_returns: np.ndarray) -> None:
    for x in real_windows(btc_returns, 256) + [white_noise(300, 4), quasi_sine(300)]:
        r = 0.2 * x.std()
        assert fr.sample_entropy(x, 2, r) == pytest.approx(antropy.sample_entropy(x, order=2), rel=1e-12)
        for order in (3, 4, 5):
            assert fr.perm_entropy(x, order, 1) == pytest.approx(
                antropy.perm_entropy(x, order=order, delay=1, normalize=True), rel=1e-12)
    ties = np.round(btc_returns[:300], 3)  # many equal values: ties ranked by position, as antropy
    assert fr.perm_entropy(ties, 3, 2) == pytest.approx(
        antropy.perm_entropy(ties, order=3, delay=2, normalize=True), rel=1e-12)
    assert fr.sample_entropy(quasi_sine(300), 2, 0.2 * quasi_sine(300).std()) < 0.5
    assert fr.sample_entropy(white_noise(300, 4), 2, 0.2) > 1.8
    assert fr.perm_entropy(np.arange(50.0), 3, 1) == 0.0


def test_against_nolds_where_installed(btc_returns: np.ndarray) -> None:
    nolds = pytest.importorskip("nolds")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for x in real_windows(btc_returns, 300):
            # nolds cuts R/S chunks at the window start; R/S is reversal-invariant, so feed it reversed
            expected = nolds.hurst_rs(x[::-1], nvals=scales(300, 8), fit="poly", corrected=True,
                                      unbiased=True)
            assert fr.hurst_rs(x, 8) == pytest.approx(expected, rel=1e-9)
            expected = nolds.lyap_r(x, emb_dim=3, lag=1, min_tsep=4, trajectory_len=10, fit="poly")
            assert fr.lyap_rosenstein(x, 3, 1, 4, 10) == pytest.approx(expected, rel=1e-9)
        for x in real_windows(btc_returns, 2048):
            # nolds aligns DFA boxes at the start and leaves out its last box: close, not equal
            expected = nolds.dfa(x, nvals=scales(2048, 8), order=1, fit_trend="poly", fit_exp="poly")
            assert fr.hurst_dfa(x, 8) == pytest.approx(expected, abs=0.025)


# ---------------------------------------------------------------------------------------------------------
# The family: evaluation points, carry-forward, contract, look-ahead
# ---------------------------------------------------------------------------------------------------------


def test_evaluation_points_follow_utc_blocks_and_skip_gaps() -> None:
    ts = pd.Series(pd.date_range("2024-01-01 20:00", periods=40, freq="1h", tz="UTC"))
    ts = ts[(ts < "2024-01-01 23:00") | (ts > "2024-01-02 02:00")].reset_index(drop=True)  # gap over 0h
    mask = evaluation_points(ts, 24)
    assert list(ts[mask]) == [pd.Timestamp("2024-01-02 03:00", tz="UTC"),
                              pd.Timestamp("2024-01-03 00:00", tz="UTC")]
    six = evaluation_points(ts, 6)
    assert [t.hour for t in ts[six]] == [3, 6, 12, 18, 0, 6]
    for k in (1, 5, 11):  # a history cut at the start keeps the evaluation bars (its first bar excepted)
        assert (evaluation_points(ts[k:], 6)[1:] == six[k + 1:]).all()


def test_values_change_only_at_evaluation_points_and_equal_the_window_kernel(btc: pd.DataFrame) -> None:
    bars = btc.iloc[20000:23000].reset_index(drop=True)
    res = compute_fractal(bars)
    is_eval = evaluation_points(bars["timestamp"], 24)
    assert (bars["timestamp"][is_eval].dt.hour == 0).all() and is_eval.sum() >= 120
    for col in res.frame.columns:
        v = res.frame[col].to_numpy()
        same = (v[1:] == v[:-1]) | (np.isnan(v[1:]) & np.isnan(v[:-1]))
        assert same[~is_eval[1:]].all(), col
        assert (~same[is_eval[1:]]).sum() > 0.9 * (np.isfinite(v[1:]) & is_eval[1:]).sum(), col
    ret = np.diff(np.log(bars["close"].to_numpy(np.float64)), prepend=np.nan)
    logc = np.log(bars["close"].to_numpy(np.float64))
    e = int(np.flatnonzero(is_eval)[-1])
    last = res.frame.iloc[-1]
    assert last["fr_hurst_rs_512"] == fr.hurst_rs(ret[e - 511:e + 1], 8)
    assert last["fr_katz_fd_256"] == fr.katz_fd(logc[e - 256:e + 1])
    assert last["fr_lyap_r_256"] == fr.lyap_rosenstein(ret[e - 255:e + 1], 3, 1, 4, 10)
    assert last["fr_corr_dim_512"] == fr.corr_dim(ret[e - 511:e + 1], 3, 1, 4, 1e-3, 0.1, 1)
    x = ret[e - 255:e + 1]
    rr, det, lam = fr.rqa(x, 3, 1, 0.5 * x.std(), 4, 2, 2)
    assert (last["fr_rqa_rr_256"], last["fr_rqa_det_256"], last["fr_rqa_lam_256"]) == (rr, det, lam)
    assert last["fr_sampen_256"] == fr.sample_entropy(x, 2, 0.2 * x.std())


def test_stride_only_picks_the_bars(btc: pd.DataFrame) -> None:
    bars = btc.iloc[5000:6000].reset_index(drop=True)
    windows = {"hurst_dfa": (256,), "rqa": (256,)}
    daily = compute_fractal(bars, FractalConfig(windows=windows)).frame
    hourly = compute_fractal(bars, FractalConfig(windows=windows, stride_hours=1)).frame
    is_eval = evaluation_points(bars["timestamp"], 24)
    pd.testing.assert_frame_equal(daily[is_eval], hourly[is_eval])
    assert hourly["fr_hurst_dfa_256"].iloc[300:].nunique() > 600  # hourly: a new value on (nearly) every bar


def test_contract_on_synthetic_bars(caplog: pytest.LogCaptureFixture) -> None:
    bars = ohlcv_frame(800, start="2024-03-01 05:00")
    res = compute_fractal(bars)
    expected = [f"fr_{what}_{w}" for what, wins in [
        ("hurst_rs", (256, 512)), ("hurst_dfa", (256, 512)), ("higuchi_fd", (256, 512)),
        ("katz_fd", (256, 512)), ("lyap_r", (256,)), ("corr_dim", (512,)),
        ("rqa_rr", (256,)), ("rqa_det", (256,)), ("rqa_lam", (256,)), ("sampen", (256,)),
        ("permen", (256, 512))] for w in wins]
    assert sorted(res.frame.columns) == sorted(expected)
    assert len(res.frame) == len(bars) and isinstance(res.frame.index, pd.RangeIndex)
    assert [s.name for s in res.specs] == list(res.frame.columns)
    assert all(pd.api.types.is_float_dtype(t) for t in res.frame.dtypes)
    first_eval = np.flatnonzero(evaluation_points(bars["timestamp"], 24))
    for spec in res.specs:
        w = int(spec.name.rsplit("_", 1)[1])
        assert (spec.family, spec.source, spec.lag) == ("fractal", "ohlcv.close", "bar close")
        assert spec.window == w + 1
        col = res.frame[spec.name].to_numpy()
        start = first_eval[first_eval >= w][0]
        assert np.isnan(col[:start]).all() and np.isfinite(col[start:]).all(), spec.name
    with caplog.at_level(logging.WARNING, logger="cryptopredict.features.fractal"):
        small = compute_fractal(bars, FractalConfig(windows={"corr_dim": (256, 512), "katz_fd": (64,)}))
    assert list(small.frame.columns) == ["fr_corr_dim_512", "fr_katz_fd_64"]
    assert "fr_corr_dim_256 omitted" in caplog.text


def test_bad_close_makes_its_windows_nan(btc: pd.DataFrame) -> None:
    bars = btc.iloc[0:1500].reset_index(drop=True)
    bars.loc[700, "close"] = np.nan
    col = compute_fractal(bars, FractalConfig(windows={"sampen": (256,)})).frame["fr_sampen_256"].to_numpy()
    evals = np.flatnonzero(evaluation_points(bars["timestamp"], 24))
    first = evals[evals >= 700][0]  # returns 700 and 701 are NaN: windows ending at 700..956 hold one
    after = evals[evals > 956][0]
    assert np.isnan(col[first:after]).all()
    assert np.isfinite(col[300:first]).all() and np.isfinite(col[after:]).all()


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        FractalConfig(window=256)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        FractalConfig(windows={"hurst_rs": (32,)})
    with pytest.raises(ValidationError):
        FractalConfig(windows={"fractalness": (256,)})  # type: ignore[dict-item]
    with pytest.raises(ValidationError):
        FractalConfig(cd_c_range=(0.1, 0.01))
    cfg = FractalConfig()
    assert not cfg.corr_dim_ok(256) and cfg.corr_dim_ok(512)
    assert cfg.corr_dim_pairs(256) == 31_125 and cfg.corr_dim_pairs(512) == 127_765


def test_no_lookahead_on_btc(btc: pd.DataFrame) -> None:
    bars = btc.iloc[40000:44000].reset_index(drop=True)

    def compute(t_end: pd.Timestamp) -> pd.DataFrame:
        return compute_fractal(bars[bars["timestamp"] <= t_end]).frame

    cuts = random_cuts(bars["timestamp"], 6, seed=11, min_position=600)
    compared = assert_no_lookahead(compute, bars["timestamp"], cuts)
    assert compared == 6 * 16  # every column of every cut holds a value


def test_deterministic(btc: pd.DataFrame) -> None:
    bars = btc.iloc[10000:11500].reset_index(drop=True)
    pd.testing.assert_frame_equal(compute_fractal(bars).frame, compute_fractal(bars).frame)
