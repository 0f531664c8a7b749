"""Significance statistics of the evaluation layer: is a number an edge or luck?

- :func:`block_bootstrap_ci` — confidence intervals for any statistic of aligned arrays under serial
  dependence (stationary or circular block bootstrap; block length from the label horizon and the
  Politis–White rule, :func:`optimal_block_length`).
- :func:`effective_sample_size` — how many independent observations ``n`` overlapping h-bar labels are
  worth.
- :func:`pesaran_timmermann` — directional accuracy against independence, with overlap-robust variants.
- :func:`diebold_mariano` — equal predictive accuracy of two loss series (HAC variance, HLN correction).
- :func:`probabilistic_sharpe_ratio`, :func:`deflated_sharpe_ratio` — the Sharpe ratio against estimation
  error, non-normality and the number of strategies tried.
- :func:`probability_of_backtest_overfitting` — PBO by combinatorially symmetric cross-validation.

Every statistic here is computed on one aligned series in time order. For a panel of (symbol, timestamp)
rows, pass ``time`` to :func:`block_bootstrap_ci` so that rows sharing a timestamp are resampled together
(cross-sectional correlation is kept), and aggregate per timestamp before the other tests.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np
from scipy import stats as sps

logger = logging.getLogger(__name__)

EULER_GAMMA = 0.5772156649015329

BootstrapMethod = Literal["stationary", "circular"]
Alternative = Literal["two-sided", "less", "greater"]


def _asdict_scalars(obj: object) -> dict[str, object]:
    """The dataclass fields of ``obj`` that are not arrays (for JSON)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)  # type: ignore[arg-type]
            if not isinstance(getattr(obj, f.name), np.ndarray)}


# ----------------------------------------------------------------------------------------- bootstrap


def optimal_block_length(x: np.ndarray, method: BootstrapMethod = "stationary") -> float:
    """Automatic block length for the sample mean of ``x`` (Politis & White 2004, with the corrected
    circular-bootstrap constant of Patton, Politis & White 2009), in observations, ≥ 1.

    With sample autocovariances γ̂(k) and the flat-top lag window λ(t) = 1 for |t| ≤ ½, 2(1 − |t|) for
    ½ < |t| ≤ 1, 0 beyond:

        Ĝ = Σ_{|k| ≤ M} λ(k/M) |k| γ̂(k),     ĝ = Σ_{|k| ≤ M} λ(k/M) γ̂(k)   (long-run variance)
        b_SB = (2 Ĝ² / D_SB)^{1/3} n^{1/3},  D_SB = 2 ĝ²
        b_CB = (2 Ĝ² / D_CB)^{1/3} n^{1/3},  D_CB = (4/3) ĝ²

    M = 2 m̂, where m̂ is the smallest lag after which K_N = max(5, ⌈√log10 n⌉) consecutive
    autocorrelations are all below 2 √(log10 n / n) in absolute value (Politis 2003's empirical rule;
    M = ⌈√n⌉ + K_N if none is found). b is capped at min(3 √n, n / 3). For an AR(1) with coefficient φ,
    Ĝ/ĝ → 2φ / (1 − φ²), which the tests use as the reference.
    """
    z = np.asarray(x, dtype=float).ravel()
    z = z[np.isfinite(z)]
    n = len(z)
    if n < 8:
        return 1.0
    z = z - z.mean()
    k_n = max(5, math.ceil(math.sqrt(math.log10(n))))
    m_max = min(math.ceil(math.sqrt(n)) + k_n, n - 1)
    acov = np.array([z[k:] @ z[: n - k] / n for k in range(m_max + 1)])
    if acov[0] == 0:
        return 1.0
    small = np.abs(acov[1:] / acov[0]) < 2 * math.sqrt(math.log10(n) / n)  # small[k-1] ↔ lag k
    m_hat = next((m for m in range(m_max - k_n + 1) if small[m: m + k_n].all()), None)
    big_m = min(2 * m_hat, m_max) if m_hat is not None else m_max
    if big_m == 0:
        return 1.0
    lags = np.arange(1, big_m + 1)
    t = lags / big_m
    lam = np.where(t <= 0.5, 1.0, 2.0 * (1.0 - t))
    g_big = 2.0 * np.sum(lam * lags * acov[1: big_m + 1])
    g_0 = acov[0] + 2.0 * np.sum(lam * acov[1: big_m + 1])
    if g_0 <= 0:
        return 1.0
    d = 2.0 * g_0 ** 2 if method == "stationary" else (4.0 / 3.0) * g_0 ** 2
    b = (2.0 * g_big ** 2 / d) ** (1.0 / 3.0) * n ** (1.0 / 3.0)
    return float(min(max(b, 1.0), 3.0 * math.sqrt(n), n / 3.0))


def block_bootstrap_indices(n: int, block_length: float, method: BootstrapMethod,
                            rng: np.random.Generator) -> np.ndarray:
    """One resample of positions 0..n−1 (length n) on the circle.

    - ``circular`` (Politis & Romano 1992): blocks of fixed length b = ⌈block_length⌉ starting at uniform
      positions, wrapping past the end, concatenated and cut to n.
    - ``stationary`` (Politis & Romano 1994): each position continues the previous block (i + 1 mod n)
      with probability 1 − 1/b and starts a new block at a uniform position with probability 1/b, so
      block lengths are geometric with mean b and the resample is stationary.
    Block length 1 gives the iid bootstrap.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if block_length < 1:
        raise ValueError("block_length must be >= 1")
    pos = np.arange(n)
    if method == "circular":
        b = math.ceil(block_length)
        starts = rng.integers(0, n, size=math.ceil(n / b))
        return ((starts[:, None] + np.arange(b)[None, :]).ravel()[:n]) % n
    if method == "stationary":
        new_block = rng.random(n) < 1.0 / block_length
        new_block[0] = True
        starts = rng.integers(0, n, size=n)
        block_start = np.maximum.accumulate(np.where(new_block, pos, 0))
        return (starts[block_start] + pos - block_start) % n
    raise ValueError(f"unknown bootstrap method {method!r}")


@dataclass(frozen=True)
class BootstrapCI:
    """A bootstrap percentile interval. ``samples``: the statistic on each resample (NaNs removed)."""

    estimate: float
    low: float
    high: float
    std_error: float
    level: float
    block_length: float
    n_boot: int
    n_failed: int
    method: str
    samples: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, object]:
        return _asdict_scalars(self)


def _auto_block_length(arrays: list[np.ndarray], method: BootstrapMethod) -> float:
    """Largest Politis–White length over the numeric columns of the inputs (each 1-D array, each column of a
    2-D one)."""
    best = 1.0
    for a in arrays:
        if not np.issubdtype(a.dtype, np.number):
            continue
        cols = a.reshape(len(a), -1).T if a.ndim > 1 else a[None, :]
        for col in cols:
            best = max(best, optimal_block_length(col.astype(float), method))
    return best


def block_bootstrap_ci(statistic: Callable[..., float], *arrays: np.ndarray, level: float = 0.95,
                       n_boot: int = 1000, block_length: float | None = None, horizon: int = 1,
                       method: BootstrapMethod = "stationary", time: np.ndarray | None = None,
                       seed: int | np.random.Generator = 0) -> BootstrapCI:
    """Percentile confidence interval of ``statistic(*arrays)`` by block bootstrap.

    ``arrays`` are aligned along axis 0 (rows in time order); every resample indexes all of them with the
    same rows, so pairs (label, prediction) stay together, and ``statistic`` is called on the resampled
    arrays. The interval is [q_{(1−level)/2}, q_{(1+level)/2}] of the resampled statistics (Efron's
    percentile interval; Lahiri 2003, ch. 4, for block resampling); ``std_error`` is their standard
    deviation. Resamples where the statistic is NaN are dropped and counted in ``n_failed``.

    Block length: ``block_length`` if given; otherwise max(``horizon``, Politis–White
    (:func:`optimal_block_length`) over the numeric input columns). Labels overlapping over h bars are
    dependent for at least h − 1 lags, so a block must span at least h bars. The automatic rule targets
    the MEAN of each input; for statistics driven by higher moments (Sharpe under volatility clustering)
    pass a block length or horizon explicitly.

    Panels: with ``time`` (one key per row, e.g. timestamps), blocks are drawn over the sorted unique
    times and every row of a chosen time is taken, so correlation across symbols at the same time is
    kept; the block length is then in time steps (the automatic rule runs on the per-time means).
    ``seed`` makes the result reproducible.
    """
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    if n_boot < 2:
        raise ValueError("n_boot must be >= 2")
    if not arrays:
        raise ValueError("no arrays to resample")
    arrs = [np.asarray(a) for a in arrays]
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise ValueError(f"arrays are not aligned: {[len(a) for a in arrs]}")
    if n < 2:
        raise ValueError("need at least 2 rows")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    estimate = float(statistic(*arrs))

    if time is None:
        n_units = n

        def to_rows(units: np.ndarray) -> np.ndarray:
            return units

        auto_inputs = arrs
    else:
        keys = np.asarray(time)
        if len(keys) != n:
            raise ValueError("time is not aligned with the arrays")
        order = np.argsort(keys, kind="stable")
        _, group_start, group_count = np.unique(keys[order], return_index=True, return_counts=True)
        n_units = len(group_start)

        def to_rows(units: np.ndarray) -> np.ndarray:
            lengths = group_count[units]
            first_out = np.cumsum(lengths) - lengths
            offsets = np.repeat(group_start[units] - first_out, lengths) + np.arange(lengths.sum())
            return order[offsets]

        unit_id = np.repeat(np.arange(n_units), group_count)
        auto_inputs = []
        for a in arrs:
            if np.issubdtype(a.dtype, np.number):
                flat = a[order].reshape(n, -1).astype(float)
                sums = np.stack([np.bincount(unit_id, weights=c, minlength=n_units) for c in flat.T], axis=1)
                auto_inputs.append(sums / group_count[:, None])

    if block_length is None:
        block_length = max(float(horizon), _auto_block_length(auto_inputs, method))
    block_length = float(min(max(block_length, 1.0), n_units))

    values = np.empty(n_boot)
    for i in range(n_boot):
        rows = to_rows(block_bootstrap_indices(n_units, block_length, method, rng))
        values[i] = statistic(*(a[rows] for a in arrs))
    ok = values[np.isfinite(values)]
    n_failed = n_boot - len(ok)
    if n_failed:
        logger.warning("bootstrap: statistic was not finite on %d of %d resamples", n_failed, n_boot)
    if len(ok) < 2:
        low = high = std = math.nan
    else:
        low, high = np.quantile(ok, [(1 - level) / 2, (1 + level) / 2])
        std = float(np.std(ok, ddof=1))
    return BootstrapCI(estimate=estimate, low=float(low), high=float(high), std_error=std, level=level,
                       block_length=block_length, n_boot=n_boot, n_failed=n_failed, method=method,
                       samples=ok)


# ------------------------------------------------------------------------------ effective sample size


def effective_sample_size(x: np.ndarray | int, horizon: int = 1,
                          method: Literal["horizon", "acf"] = "horizon") -> float:
    """Number of independent observations that ``n`` serially dependent ones are worth for a mean.

    - ``horizon``: n / h — the non-overlapping equivalent of n labels each looking h bars ahead
      (consecutive labels share h − 1 of their h one-bar returns). ``x`` may be the count n.
    - ``acf``: n / (1 + 2 Σ_{k=1}^{K} ρ̂_k), the variance-inflation form for the mean (e.g. Priestley
      1981; Hansen & Hodrick 1980 for overlapping forecasts), with K = h − 1 when h > 1 (overlap makes the
      series MA(h − 1)) or, for h = 1, the lags up to the first |ρ̂_k| < 2/√n. For overlapping sums of
      iid returns, ρ_k = (h − k)/h and this equals n / h exactly.
    The result is clipped to [1, n].
    """
    if method == "horizon":
        n = x if isinstance(x, int | np.integer) else len(np.asarray(x))
        if horizon < 1:
            raise ValueError("horizon must be >= 1")
        return float(max(1.0, n / horizon)) if n else 0.0
    if method != "acf":
        raise ValueError(f"unknown method {method!r}")
    if isinstance(x, int | np.integer):
        raise ValueError("method 'acf' needs the series, not its length")
    z = np.asarray(x, dtype=float).ravel()
    z = z[np.isfinite(z)]
    n = len(z)
    if n < 3:
        return float(n)
    z = z - z.mean()
    var = z @ z / n
    if var == 0:
        return float(n)
    if horizon > 1:
        max_lag = min(horizon - 1, n - 1)
        rho = np.array([z[k:] @ z[: n - k] / n / var for k in range(1, max_lag + 1)])
    else:
        bound = 2 / math.sqrt(n)
        rho_list = []
        for k in range(1, n - 1):
            r = z[k:] @ z[: n - k] / n / var
            if abs(r) < bound:
                break
            rho_list.append(r)
        rho = np.array(rho_list)
    inflation = 1.0 + 2.0 * rho.sum()
    return float(min(max(n / inflation, 1.0), n)) if inflation > 0 else float(n)


# ----------------------------------------------------------------------------------- Pesaran–Timmermann


@dataclass(frozen=True)
class PesaranTimmermannResult:
    """``hit_rate``: share of correct directions; ``expected_hit_rate``: P* under independence."""

    statistic: float
    p_value: float
    hit_rate: float
    expected_hit_rate: float
    n: int
    n_effective: float
    method: str

    def to_dict(self) -> dict[str, object]:
        return _asdict_scalars(self)


def pesaran_timmermann(actual: np.ndarray, predicted: np.ndarray, horizon: int = 1,
                       method: Literal["iid", "effective_n", "subsample"] = "effective_n",
                       offset: int = 0) -> PesaranTimmermannResult:
    """Pesaran & Timmermann (1992) test of directional accuracy against independence, one-sided
    (H1: the forecast's direction agrees with the outcome's more often than chance).

    ``actual``: realised values (e.g. forward returns) and ``predicted``: forecasts (e.g. expected
    direction P(BUY) − P(SELL), or class − 1); only their signs matter. Rows where either is NaN or exactly
    0 (no move / a HOLD call) are dropped. With y_t = 1{actual_t > 0}, x_t = 1{predicted_t > 0}:

        P̂ = mean(1{x_t = y_t}),  P_y = mean(y),  P_x = mean(x),  P* = P_y P_x + (1 − P_y)(1 − P_x)
        V(P̂) = P*(1 − P*)/n
        V(P*) = (2P_y − 1)² P_x(1 − P_x)/n + (2P_x − 1)² P_y(1 − P_y)/n + 4 P_y P_x (1 − P_y)(1 − P_x)/n²
        S = (P̂ − P*) / √(V(P̂) − V(P*))  ~ N(0, 1) under independence;  p = 1 − Φ(S).

    The test assumes serially independent pairs. Labels looking h bars ahead overlap and are dependent, so
    the plain test (``iid``) over-rejects. Overlap-robust variants:

    - ``effective_n`` (default): n in the variances is replaced by the non-overlapping equivalent n / h
      (:func:`effective_sample_size`), which scales S by ≈ √(1/h) — conservative when the dependence of
      the hit indicator is weaker than that of the returns.
    - ``subsample``: the test on rows ``offset, offset + h, offset + 2h, …`` only, whose labels do not
      overlap — exact but uses 1/h of the data.
    With h = 1 all three coincide. A constant direction forecast makes V(P̂) − V(P*) = 0: the test is
    undefined and returns NaN statistic and p-value.
    """
    a, p = np.asarray(actual, dtype=float).ravel(), np.asarray(predicted, dtype=float).ravel()
    if len(a) != len(p):
        raise ValueError(f"actual ({len(a)}) and predicted ({len(p)}) are not aligned")
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    if method == "subsample":
        a, p = a[offset::horizon], p[offset::horizon]
    elif method not in ("iid", "effective_n"):
        raise ValueError(f"unknown method {method!r}")
    keep = np.isfinite(a) & np.isfinite(p) & (a != 0) & (p != 0)
    y, x = a[keep] > 0, p[keep] > 0
    n = len(y)
    if n < 2:
        return PesaranTimmermannResult(math.nan, math.nan, math.nan, math.nan, n, float(n), method)
    n_eff = effective_sample_size(n, horizon) if method == "effective_n" else float(n)
    hit = float(np.mean(x == y))
    py, px = float(y.mean()), float(x.mean())
    p_star = py * px + (1 - py) * (1 - px)
    v_hit = p_star * (1 - p_star) / n_eff
    v_star = ((2 * py - 1) ** 2 * px * (1 - px) / n_eff + (2 * px - 1) ** 2 * py * (1 - py) / n_eff
              + 4 * py * px * (1 - py) * (1 - px) / n_eff ** 2)
    denom = v_hit - v_star
    if denom <= 1e-15:
        logger.warning("Pesaran-Timmermann test undefined: a constant direction (forecast or outcome)")
        return PesaranTimmermannResult(math.nan, math.nan, hit, p_star, n, n_eff, method)
    s = (hit - p_star) / math.sqrt(denom)
    return PesaranTimmermannResult(float(s), float(sps.norm.sf(s)), hit, p_star, n, n_eff, method)


# ------------------------------------------------------------------------------------ Diebold–Mariano


@dataclass(frozen=True)
class DieboldMarianoResult:
    """``mean_diff`` = mean(loss_a − loss_b): negative means forecast a has the smaller loss.
    ``kernel`` is the lag window that gave the long-run variance ("rectangular" or, when that is not
    positive, "bartlett")."""

    statistic: float
    p_value: float
    mean_diff: float
    n: int
    horizon: int
    alternative: str
    hln: bool
    kernel: str

    def to_dict(self) -> dict[str, object]:
        return _asdict_scalars(self)


def diebold_mariano(loss_a: np.ndarray, loss_b: np.ndarray, horizon: int = 1,
                    alternative: Alternative = "two-sided", hln: bool = True) -> DieboldMarianoResult:
    """Diebold & Mariano (1995) test of equal predictive accuracy, E[d_t] = 0 with d_t = L_a,t − L_b,t
    (any per-row loss: squared error, log loss, QLIKE, negative P&L ...).

        d̄ = (1/n) Σ d_t,  γ̂_k = (1/n) Σ_{t>k} (d_t − d̄)(d_{t−k} − d̄)
        V̂(d̄) = (γ̂_0 + 2 Σ_{k=1}^{h−1} w_k γ̂_k) / n,     DM = d̄ / √V̂(d̄)

    h-step forecast errors are MA(h − 1) under optimality, hence the truncation at lag h − 1 with the
    rectangular window w_k = 1 of the original paper; when that estimate is not positive, the Bartlett
    window w_k = 1 − k/h (Newey & West 1987) is used instead, which always is.

    With ``hln`` (default) the Harvey, Leybourne & Newbold (1997) small-sample correction
    DM* = DM · √((n + 1 − 2h + h(h − 1)/n) / n) is compared with Student's t with n − 1 degrees of freedom;
    otherwise DM is compared with N(0, 1). ``alternative``: "two-sided"; "less" (H1: a is more accurate,
    E[d] < 0); "greater" (H1: b is more accurate). Identical losses give statistic 0 and p-value 1.
    Rows where either loss is NaN are dropped.
    """
    la, lb = np.asarray(loss_a, dtype=float).ravel(), np.asarray(loss_b, dtype=float).ravel()
    if len(la) != len(lb):
        raise ValueError(f"loss series are not aligned: {len(la)} vs {len(lb)}")
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    d = la - lb
    d = d[np.isfinite(d)]
    n = len(d)
    if n < 2:
        raise ValueError("need at least 2 finite loss differences")
    mean = float(d.mean())
    e = d - mean
    gamma = np.array([e[k:] @ e[: n - k] / n for k in range(min(horizon, n))])
    lrv = gamma[0] + 2 * gamma[1:].sum()
    kernel = "rectangular"
    if lrv <= 0 and gamma[0] > 0:
        w = 1 - np.arange(1, len(gamma)) / horizon
        lrv = gamma[0] + 2 * (w * gamma[1:]).sum()
        kernel = "bartlett"
    if lrv <= 0:  # d constant: identical forecasts (mean 0) or one uniformly better
        stat = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    else:
        stat = mean / math.sqrt(lrv / n)
        if hln:
            stat *= math.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
    dist = sps.t(df=n - 1) if hln else sps.norm()
    if alternative == "two-sided":
        p = 2 * dist.sf(abs(stat))
    elif alternative == "less":
        p = dist.cdf(stat)
    elif alternative == "greater":
        p = dist.sf(stat)
    else:
        raise ValueError(f"unknown alternative {alternative!r}")
    return DieboldMarianoResult(float(stat), float(min(p, 1.0)), mean, n, horizon, alternative, hln, kernel)


# ------------------------------------------------------------------------------------- Sharpe ratio


def probabilistic_sharpe_ratio(sharpe: float, n_obs: int, skew: float = 0.0, kurtosis: float = 3.0,
                               benchmark: float = 0.0) -> float:
    """PSR: probability that the true Sharpe exceeds ``benchmark``, given the observed one (Bailey &
    López de Prado 2012, "The Sharpe ratio efficient frontier", J. Risk 15(2), eq. 11; Mertens 2002 for
    the variance):

        PSR(SR*) = Φ( (SR̂ − SR*) √(n − 1) / √(1 − γ̂₃ SR̂ + (γ̂₄ − 1)/4 · SR̂²) )

    ``sharpe`` and ``benchmark`` are PER OBSERVATION (not annualised: divide an annual Sharpe by
    √periods_per_year), ``n_obs`` the number of returns, ``skew`` γ̂₃ and ``kurtosis`` γ̂₄ of the returns
    with γ̂₄ the NON-excess kurtosis (3 for a normal). Returns in the sample are assumed serially
    independent.
    """
    if n_obs < 2:
        raise ValueError("n_obs must be >= 2")
    denom = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe ** 2
    if denom <= 0:
        raise ValueError("1 - skew*SR + (kurtosis-1)/4*SR^2 must be > 0 (check that kurtosis is not excess)")
    return float(sps.norm.cdf((sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(denom)))


def expected_max_sharpe(n_trials: int, trials_sharpe_var: float, mean: float = 0.0) -> float:
    """Expected maximum of ``n_trials`` independent Sharpe estimates with variance ``trials_sharpe_var``
    when none has skill (Bailey & López de Prado 2014, eq. for SR₀; the "False Strategy Theorem"):

        SR₀ = mean + √V[SR_n] · ((1 − γ) Φ⁻¹(1 − 1/N) + γ Φ⁻¹(1 − 1/(N e)))

    with γ ≈ 0.5772 the Euler–Mascheroni constant. One trial: SR₀ = mean (no selection).
    """
    if n_trials < 1:
        raise ValueError("n_trials must be >= 1")
    if trials_sharpe_var < 0:
        raise ValueError("trials_sharpe_var must be >= 0")
    if n_trials == 1:
        return float(mean)
    z = ((1 - EULER_GAMMA) * sps.norm.ppf(1 - 1 / n_trials)
         + EULER_GAMMA * sps.norm.ppf(1 - 1 / (n_trials * math.e)))
    return float(mean + math.sqrt(trials_sharpe_var) * z)


def deflated_sharpe_ratio(sharpe: float, n_obs: int, n_trials: int, trials_sharpe_var: float,
                          skew: float = 0.0, kurtosis: float = 3.0) -> float:
    """DSR = PSR(SR₀) with SR₀ = :func:`expected_max_sharpe` (Bailey & López de Prado 2014, "The deflated
    Sharpe ratio: correcting for selection bias, backtest overfitting and non-normality", J. Portfolio
    Management 40(5)): the probability that the selected strategy's true Sharpe beats the best Sharpe
    that ``n_trials`` skill-less trials would show.

    All Sharpe quantities PER OBSERVATION (not annualised): ``sharpe`` of the selected strategy,
    ``trials_sharpe_var`` the variance of the per-observation Sharpes across the trials; ``n_obs`` its
    number of returns; ``skew`` and NON-excess ``kurtosis`` of its returns. ``n_trials`` counts every
    configuration tried (independent ones; cluster correlated trials first). Paper's example: annual SR
    2.5 over 5 years of daily returns (n = 1250), N = 100, V = 0.5/250, γ₃ = −3, γ₄ = 10 → SR₀ ≈ 0.1132
    per day and DSR ≈ 0.90.
    """
    sr0 = expected_max_sharpe(n_trials, trials_sharpe_var)
    return probabilistic_sharpe_ratio(sharpe, n_obs, skew, kurtosis, benchmark=sr0)


# ------------------------------------------------------------------------------------------------ PBO


@dataclass(frozen=True)
class PBOResult:
    """CSCV outcome. Per combination c: ``logits[c]`` = λ_c, ``is_performance[c]`` and
    ``oos_performance[c]`` of the trial selected in sample. ``prob_oos_loss``: share of combinations where
    the selected trial's out-of-sample performance is below 0."""

    pbo: float
    n_combinations: int
    n_partitions: int
    prob_oos_loss: float
    logits: np.ndarray = field(repr=False)
    is_performance: np.ndarray = field(repr=False)
    oos_performance: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, object]:
        return _asdict_scalars(self)


def _column_performance(centred_sum: np.ndarray, centred_sq: np.ndarray, count: int, shift: np.ndarray,
                        metric: str) -> np.ndarray:
    """Per-trial mean or Sharpe from sums over data centred by ``shift`` (the variance does not depend on
    the shift; centring keeps the sum-of-squares formula free of cancellation)."""
    centred_mean = centred_sum / count
    mean = centred_mean + shift
    if metric == "mean":
        return mean
    var = np.maximum(centred_sq - count * centred_mean ** 2, 0.0) / (count - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, mean / np.sqrt(var), np.nan)


def probability_of_backtest_overfitting(performance: np.ndarray, n_partitions: int = 16,
                                        metric: Literal["sharpe", "mean"] = "sharpe") -> PBOResult:
    """Probability of Backtest Overfitting by combinatorially symmetric cross-validation (Bailey, Borwein,
    López de Prado & Zhu 2017, "The probability of backtest overfitting", J. Computational Finance 20(4)).

    ``performance``: (T, N) matrix, row t = per-bar return (or any additive score) of each of N trials
    (strategy configurations) in time order. Steps:

    1. Split the rows into S = ``n_partitions`` (even) contiguous blocks of equal size (the first
       T mod S rows, the oldest, are dropped).
    2. For each of the C(S, S/2) ways to pick S/2 blocks as the in-sample set J (the rest, J̄, out of
       sample), compute each trial's performance on J and J̄: its Sharpe ratio (mean / sd, ddof 1,
       per bar) or mean.
    3. n* = argmax in-sample; ω̄_c = rank of n*'s out-of-sample performance among the N (1 = worst,
       ties averaged) / (N + 1); logit λ_c = ln(ω̄_c / (1 − ω̄_c)).
    4. PBO = share of combinations with λ_c ≤ 0: how often the in-sample winner is at or below the
       out-of-sample median.

    PBO ≈ 0 when the best trial is genuinely best; ≈ 0.5 (or above) when the selection has no
    out-of-sample value. Blocks are contiguous, so serial dependence is kept within blocks.
    """
    m = np.asarray(performance, dtype=float)
    if m.ndim != 2 or m.shape[1] < 2:
        raise ValueError("performance must be (T, N) with N >= 2 trials")
    if n_partitions < 2 or n_partitions % 2:
        raise ValueError("n_partitions must be an even number >= 2")
    if not np.isfinite(m).all():
        raise ValueError("performance contains NaN/inf")
    if metric not in ("sharpe", "mean"):
        raise ValueError(f"unknown metric {metric!r}")
    t_rows, n_trials = m.shape
    block = t_rows // n_partitions
    if block < 2:
        raise ValueError(f"{t_rows} rows are too few for {n_partitions} partitions")
    if t_rows % n_partitions:
        logger.info("PBO: dropping the first %d rows so that %d partitions are equal",
                    t_rows % n_partitions, n_partitions)
    m = m[t_rows % n_partitions:]
    shift = m.mean(axis=0)
    blocks = (m - shift).reshape(n_partitions, block, n_trials)
    block_sum, block_sq = blocks.sum(axis=1), (blocks ** 2).sum(axis=1)

    combos = np.array(list(itertools.combinations(range(n_partitions), n_partitions // 2)))
    in_sample = np.zeros((len(combos), n_partitions))
    in_sample[np.arange(len(combos))[:, None], combos] = 1.0
    count = block * n_partitions // 2

    def perf(mask: np.ndarray) -> np.ndarray:
        return _column_performance(mask @ block_sum, mask @ block_sq, count, shift, metric)

    r_is, r_oos = perf(in_sample), perf(1.0 - in_sample)
    r_is = np.where(np.isnan(r_is), -np.inf, r_is)
    r_oos = np.where(np.isnan(r_oos), -np.inf, r_oos)
    rows = np.arange(len(combos))
    best = r_is.argmax(axis=1)
    chosen = r_oos[rows, best]
    rank = (r_oos < chosen[:, None]).sum(axis=1) + ((r_oos == chosen[:, None]).sum(axis=1) + 1) / 2
    omega = rank / (n_trials + 1)
    logits = np.log(omega / (1 - omega))
    return PBOResult(pbo=float(np.mean(logits <= 0)), n_combinations=len(combos), n_partitions=n_partitions,
                     prob_oos_loss=float(np.mean(chosen < 0)), logits=logits,
                     is_performance=r_is[rows, best], oos_performance=chosen)
