"""Significance statistics against hand computations, statsmodels/scipy, published numbers and their
behaviour under known truths (size under the null, power under a clear effect)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats as sps

from cryptopredict.evaluation import stats as st


def _ar1(n: int, phi: float, seed: int) -> np.ndarray:
    e = np.random.default_rng(seed).standard_normal(n)
    x = np.empty(n)
    x[0] = e[0] / math.sqrt(1 - phi ** 2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def _overlapping_sums(n: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """n labels that each sum the next h of an iid series: consecutive labels share h − 1 terms."""
    return np.convolve(rng.standard_normal(n + h - 1), np.ones(h), "valid")


# ------------------------------------------------------------------------------------ Diebold–Mariano


def test_dm_by_hand_with_hac_lag_and_hln_correction() -> None:
    la = np.array([1.0, 2.0, 0.5, 3.0, 2.5, 1.5, 2.0, 0.0])
    lb = np.array([0.5, 1.0, 1.0, 1.0, 2.0, 0.5, 1.5, 0.5])
    d = la - lb  # 0.5, 1, −0.5, 2, 0.5, 1, 0.5, −0.5
    n, h = 8, 2
    dbar = d.mean()
    g0 = sum((x - dbar) ** 2 for x in d) / n
    g1 = sum((d[t] - dbar) * (d[t - 1] - dbar) for t in range(1, n)) / n
    dm = dbar / math.sqrt((g0 + 2 * g1) / n)
    hln = dm * math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
    res = st.diebold_mariano(la, lb, horizon=h)
    assert res.kernel == "rectangular" and res.mean_diff == pytest.approx(dbar)
    assert res.statistic == pytest.approx(hln, rel=1e-12)
    assert res.p_value == pytest.approx(2 * sps.t(n - 1).sf(abs(hln)), rel=1e-12)
    raw = st.diebold_mariano(la, lb, horizon=h, hln=False)
    assert raw.statistic == pytest.approx(dm, rel=1e-12)
    assert raw.p_value == pytest.approx(2 * sps.norm.sf(abs(dm)), rel=1e-12)


def test_dm_variance_matches_statsmodels_hac_with_uniform_kernel() -> None:
    rng = np.random.default_rng(7)
    d = _overlapping_sums(300, 4, rng) * 0.3 + 0.1
    hac = {"maxlags": 3, "kernel": "uniform", "use_correction": False}
    ols = sm.OLS(d, np.ones(len(d))).fit(cov_type="HAC", cov_kwds=hac)
    res = st.diebold_mariano(d, np.zeros_like(d), horizon=4, hln=False)
    assert res.kernel == "rectangular"
    assert res.statistic == pytest.approx(ols.params[0] / ols.bse[0], rel=1e-10)


def test_dm_with_h1_and_hln_is_the_one_sample_t_test() -> None:
    rng = np.random.default_rng(11)
    la, lb = rng.normal(1.0, 1.0, 60), rng.normal(1.2, 1.0, 60)
    res = st.diebold_mariano(la, lb, horizon=1)
    ref = sps.ttest_1samp(la - lb, 0.0)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10)


def test_dm_falls_back_to_bartlett_when_the_rectangular_variance_is_not_positive() -> None:
    d = np.tile([1.0, -1.0], 20) + np.linspace(0, 0.2, 40)  # strong negative lag-1 autocovariance
    res = st.diebold_mariano(d, np.zeros_like(d), horizon=2, hln=False)
    e = d - d.mean()
    g0, g1 = e @ e / 40, e[1:] @ e[:-1] / 40
    assert g0 + 2 * g1 <= 0 and res.kernel == "bartlett"
    assert res.statistic == pytest.approx(d.mean() / math.sqrt((g0 + 2 * 0.5 * g1) / 40), rel=1e-12)


def test_dm_identical_forecasts_and_a_clearly_better_one() -> None:
    rng = np.random.default_rng(2)
    loss = rng.exponential(size=200)
    same = st.diebold_mariano(loss, loss.copy(), horizon=3)
    assert same.statistic == 0.0 and same.p_value == pytest.approx(1.0)
    better = rng.exponential(size=200) * 0.5
    res = st.diebold_mariano(better, loss, horizon=1, alternative="less")
    assert res.statistic < 0 and res.p_value < 1e-6
    assert st.diebold_mariano(better, loss, alternative="greater").p_value > 0.99


def test_dm_size_with_overlapping_losses_needs_the_hac_lag() -> None:
    rej_hac, rej_naive = 0, 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        d = _overlapping_sums(400, 6, rng)  # MA(5) loss differential with mean 0
        rej_hac += st.diebold_mariano(d, np.zeros_like(d), horizon=6).p_value < 0.05
        rej_naive += st.diebold_mariano(d, np.zeros_like(d), horizon=1).p_value < 0.05
    assert 0.02 <= rej_hac / 200 <= 0.10
    assert rej_naive / 200 > 0.3


# ----------------------------------------------------------------------------------- Pesaran–Timmermann


def test_pt_by_hand() -> None:
    actual = np.array([0.5, 0.2, -0.1, -0.3, 0.4, -0.2, 0.1, 0.3, 0.0])  # the 0.0 row is dropped
    pred = np.array([1, -1, -1, -1, 1, 1, 1, 1, 1])
    # y = 11001011, x = 10001111: hits 6/8, P_y = P_x = 5/8
    p_hat, py, px, n = 6 / 8, 5 / 8, 5 / 8, 8
    p_star = py * px + (1 - py) * (1 - px)  # 34/64
    v_hat = p_star * (1 - p_star) / n
    v_star = ((2 * py - 1) ** 2 * px * (1 - px) / n + (2 * px - 1) ** 2 * py * (1 - py) / n
              + 4 * py * px * (1 - py) * (1 - px) / n ** 2)
    s = (p_hat - p_star) / math.sqrt(v_hat - v_star)
    res = st.pesaran_timmermann(actual, pred, method="iid")
    assert res.n == 8 and res.hit_rate == 0.75 and res.expected_hit_rate == pytest.approx(34 / 64)
    assert res.statistic == pytest.approx(s, rel=1e-12) and res.statistic == pytest.approx(1.4111, abs=1e-4)
    assert res.p_value == pytest.approx(sps.norm.sf(s), rel=1e-12)


def test_pt_perfect_prediction_and_constant_forecast() -> None:
    r = np.random.default_rng(0).standard_normal(300)
    res = st.pesaran_timmermann(r, np.sign(r), method="iid")
    assert res.hit_rate == 1.0 and res.p_value < 1e-20
    res = st.pesaran_timmermann(r, -np.sign(r), method="iid")
    assert res.p_value > 0.999  # perfectly wrong is not skill (one-sided)
    const = st.pesaran_timmermann(r, np.ones_like(r))
    assert math.isnan(const.statistic) and math.isnan(const.p_value)


def test_pt_size_under_independence() -> None:
    rejections = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        rejections += st.pesaran_timmermann(rng.standard_normal(500), rng.standard_normal(500),
                                            method="iid").p_value < 0.05
    assert 0.02 <= rejections / 200 <= 0.09


def test_pt_with_overlapping_labels_plain_over_rejects_robust_versions_do_not() -> None:
    h = 10
    rej = {"iid": 0, "effective_n": 0, "subsample": 0}
    for seed in range(200):
        rng = np.random.default_rng(seed)
        actual, pred = _overlapping_sums(500, h, rng), _overlapping_sums(500, h, rng)
        for method in rej:
            rej[method] += st.pesaran_timmermann(actual, pred, horizon=h, method=method).p_value < 0.05
    assert rej["iid"] / 200 > 0.12
    assert rej["effective_n"] / 200 <= 0.09 and rej["subsample"] / 200 <= 0.09
    res = st.pesaran_timmermann(np.arange(1.0, 101), np.ones(100), horizon=5, method="subsample", offset=2)
    assert res.n == 20


# ------------------------------------------------------------------------------ effective sample size


def test_effective_sample_size_for_overlapping_labels() -> None:
    assert st.effective_sample_size(1000, horizon=4) == 250.0
    assert st.effective_sample_size(np.zeros(90), horizon=9) == 10.0
    rng = np.random.default_rng(5)
    overlapping = _overlapping_sums(20_000, 8, rng)
    assert st.effective_sample_size(overlapping, horizon=8, method="acf") == pytest.approx(2500, rel=0.06)
    pairs = _overlapping_sums(20_000, 2, rng)  # ρ_1 = 1/2 → n / 2
    assert st.effective_sample_size(pairs, horizon=2, method="acf") == pytest.approx(10_000, rel=0.03)
    iid = rng.standard_normal(5000)
    assert st.effective_sample_size(iid, method="acf") == pytest.approx(5000, rel=0.15)
    # AR(1) φ = 0.5: n (1 − φ)/(1 + φ) = n/3
    assert st.effective_sample_size(_ar1(20_000, 0.5, 1), method="acf") == pytest.approx(20_000 / 3, rel=0.2)


# ---------------------------------------------------------------------------------------- PSR / DSR


def test_dsr_reproduces_the_papers_numerical_example() -> None:
    # Bailey & López de Prado (2014), JPM 40(5): annual SR 2.5 over 5 years of daily returns, N = 100
    # trials with annualised Sharpe variance 0.5, skewness −3, kurtosis 10 → SR0 ≈ 0.1132, DSR ≈ 0.9004
    sr, var = 2.5 / math.sqrt(250), 0.5 / 250
    assert st.expected_max_sharpe(100, var) == pytest.approx(0.1132, abs=5e-5)
    dsr = st.deflated_sharpe_ratio(sr, 1250, 100, var, skew=-3, kurtosis=10)
    assert dsr == pytest.approx(0.9004, abs=5e-4)


def test_psr_by_hand_and_its_response_to_moments() -> None:
    # z = (0.1 − 0) · √100 / √(1 + (3 − 1)/4 · 0.01)
    assert st.probabilistic_sharpe_ratio(0.1, 101) == pytest.approx(sps.norm.cdf(1.0 / math.sqrt(1.005)))
    assert st.probabilistic_sharpe_ratio(0.1, 101, benchmark=0.1) == pytest.approx(0.5)
    base = st.probabilistic_sharpe_ratio(0.1, 101)
    assert st.probabilistic_sharpe_ratio(0.1, 101, skew=-2) < base
    assert st.probabilistic_sharpe_ratio(0.1, 101, skew=1) > base
    assert st.probabilistic_sharpe_ratio(0.1, 101, kurtosis=12) < base
    # one trial: no deflation
    assert st.deflated_sharpe_ratio(0.1, 101, 1, 0.3) == pytest.approx(base)


def test_expected_max_sharpe_against_simulation() -> None:
    rng = np.random.default_rng(0)
    sims = rng.normal(0.0, 0.2, size=(20_000, 50)).max(axis=1).mean()
    assert st.expected_max_sharpe(50, 0.04) == pytest.approx(sims, rel=0.03)


# ------------------------------------------------------------------------------------------------ PBO


def test_pbo_tiny_matrices_by_hand() -> None:
    # S = 2: blocks rows 0-1 and 2-3; each trial wins exactly the half the other loses → always overfit
    flip = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    res = st.probability_of_backtest_overfitting(flip, n_partitions=2, metric="mean")
    assert res.n_combinations == 2 and res.pbo == 1.0
    np.testing.assert_allclose(res.logits, np.log((1 / 3) / (2 / 3)))
    steady = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    res = st.probability_of_backtest_overfitting(steady, n_partitions=2, metric="mean")
    assert res.pbo == 0.0
    np.testing.assert_allclose(res.logits, np.log(2.0))
    # N = 3: the in-sample winner lands exactly on the out-of-sample median (λ = 0), which counts as overfit
    median = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [2.0, 3.0, 1.0], [2.0, 3.0, 1.0]])
    res = st.probability_of_backtest_overfitting(median, n_partitions=2, metric="mean")
    np.testing.assert_allclose(res.logits, 0.0, atol=1e-15)
    assert res.pbo == 1.0


def test_pbo_truly_best_trial_is_not_overfit() -> None:
    rng = np.random.default_rng(3)
    m = rng.standard_normal((1600, 10))
    m[:, 4] += 0.3
    res = st.probability_of_backtest_overfitting(m, n_partitions=16)
    assert res.n_combinations == 12870 and res.pbo <= 0.01
    assert res.prob_oos_loss <= 0.01


def test_pbo_of_pure_noise_is_one_half() -> None:
    pbos = [st.probability_of_backtest_overfitting(np.random.default_rng(s).standard_normal((803, 10)),
                                                   n_partitions=8).pbo for s in range(200)]
    assert np.mean(pbos) == pytest.approx(0.5, abs=0.06)


def test_pbo_sharpe_matches_a_direct_computation_on_one_split() -> None:
    rng = np.random.default_rng(9)
    m = rng.standard_normal((40, 5)) * 0.01 + 0.002
    res = st.probability_of_backtest_overfitting(m, n_partitions=4)
    # first combination: blocks 0 and 1 (rows 0-19) in sample, rows 20-39 out of sample
    is_sr = m[:20].mean(axis=0) / m[:20].std(axis=0, ddof=1)
    oos_sr = m[20:].mean(axis=0) / m[20:].std(axis=0, ddof=1)
    best = is_sr.argmax()
    assert res.is_performance[0] == pytest.approx(is_sr[best], rel=1e-9)
    assert res.oos_performance[0] == pytest.approx(oos_sr[best], rel=1e-9)
    rank = (oos_sr <= oos_sr[best]).sum()
    assert res.logits[0] == pytest.approx(math.log(rank / (6 - rank)))


# ------------------------------------------------------------------------------------------ bootstrap


def test_block_length_rule_matches_ar1_theory() -> None:
    # Politis–White for the stationary bootstrap: b = (G/g)^(2/3) n^(1/3) with G/g = 2φ/(1 − φ²) for AR(1)
    n, phi = 20_000, 0.5
    theory = (2 * phi / (1 - phi ** 2)) ** (2 / 3) * n ** (1 / 3)
    est = np.mean([st.optimal_block_length(_ar1(n, phi, s)) for s in range(5)])
    assert est == pytest.approx(theory, rel=0.15)
    circ = np.mean([st.optimal_block_length(_ar1(n, phi, s), "circular") for s in range(5)])
    assert circ / est == pytest.approx(1.5 ** (1 / 3), rel=1e-6)  # D_CB = (2/3) D_SB
    assert st.optimal_block_length(np.random.default_rng(0).standard_normal(5000)) <= 3


def test_bootstrap_indices_are_blocks() -> None:
    rng = np.random.default_rng(0)
    idx = st.block_bootstrap_indices(100, 10, "circular", rng)
    assert len(idx) == 100 and idx.min() >= 0 and idx.max() < 100
    steps = (np.diff(idx) % 100).reshape(-1)
    assert all((steps[k * 10: k * 10 + 9] == 1).all() for k in range(10))  # contiguous within each block
    idx = st.block_bootstrap_indices(100_000, 8, "stationary", rng)
    new_blocks = np.sum(np.diff(idx) % 100_000 != 1) + 1
    assert 100_000 / new_blocks == pytest.approx(8, rel=0.05)  # geometric block lengths with mean 8


def test_bootstrap_ci_of_the_mean_covers_at_the_nominal_rate() -> None:
    hits = 0
    for seed in range(200):
        x = np.random.default_rng(seed).normal(1.0, 1.0, 150)
        ci = st.block_bootstrap_ci(np.mean, x, n_boot=400, block_length=1, method="circular", seed=seed)
        hits += ci.low <= 1.0 <= ci.high
    assert 0.90 <= hits / 200 <= 0.985


def test_block_bootstrap_widens_the_ci_under_autocorrelation() -> None:
    x = _ar1(3000, 0.7, 5)
    iid = st.block_bootstrap_ci(np.mean, x, block_length=1, method="circular", seed=1)
    block = st.block_bootstrap_ci(np.mean, x, seed=1)
    assert block.block_length > 10
    # long-run sd / sd of AR(1) = √((1 + φ)/(1 − φ)) ≈ 2.38
    assert (block.high - block.low) / (iid.high - iid.low) > 1.6
    assert block.std_error == pytest.approx(math.sqrt(1 / 0.09 / 3000), rel=0.3)  # true sd of the mean


def test_bootstrap_is_seeded_paired_and_respects_the_horizon() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 500)
    pred = np.where(rng.random(500) < 0.6, y, rng.integers(0, 3, 500))

    def acc(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(a == b))

    one = st.block_bootstrap_ci(acc, y, pred, n_boot=300, horizon=24, seed=3)
    two = st.block_bootstrap_ci(acc, y, pred, n_boot=300, horizon=24, seed=3)
    assert (one.low, one.high) == (two.low, two.high)
    assert one.block_length >= 24 and one.low < one.estimate < one.high
    # pairs stay together: accuracy of a resample of a perfect predictor is always 1
    perfect = st.block_bootstrap_ci(acc, y, y.copy(), n_boot=50, seed=0)
    assert perfect.low == perfect.high == 1.0
    failing = st.block_bootstrap_ci(lambda a: float(np.nan if a[0] > 0 else a.mean()),
                                    rng.standard_normal(50), n_boot=200, block_length=5, seed=0)
    assert 0 < failing.n_failed < 200 and len(failing.samples) == 200 - failing.n_failed


def test_panel_bootstrap_resamples_whole_timestamps() -> None:
    rng = np.random.default_rng(6)
    common = rng.standard_normal(1000)  # a market factor shared by the 3 symbols at each time
    time = np.repeat(np.arange(1000), 3)
    v = np.repeat(common, 3) + 0.1 * rng.standard_normal(3000)
    grouped = st.block_bootstrap_ci(np.mean, v, time=time, block_length=1, method="circular", seed=0)
    rows = st.block_bootstrap_ci(np.mean, v, block_length=1, method="circular", seed=0)
    true_se = math.sqrt((1 + 0.01 / 3) / 1000)
    assert grouped.std_error == pytest.approx(true_se, rel=0.15)
    assert rows.std_error < 0.7 * true_se  # treating correlated rows as independent understates it

    def whole_times(t: np.ndarray, _: np.ndarray) -> float:
        counts = np.bincount(t, minlength=1000)
        return float(len(t) == 3000 and (counts % 3 == 0).all() and (counts > 0).sum() > 500)

    check = st.block_bootstrap_ci(whole_times, time, v, time=time, n_boot=50, block_length=20, seed=1)
    assert check.low == check.high == 1.0
