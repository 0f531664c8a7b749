"""Metrics of the evaluation layer: classification, volatility and financial, as plain functions on arrays.

Conventions
-----------
- Direction classes are 0 = SELL, 1 = HOLD, 2 = BUY (``labels.py``); ``proba`` is (n, 3) in that order.
- Labels ``y_true`` may be float with NaN where the label is unknown (the last ``horizon`` bars of a
  series, outages): such rows are dropped from the classification and volatility metrics, and the count is
  logged at DEBUG. A non-finite PREDICTION on a labelled row is an error (ValueError), never dropped.
- Financial metrics take per-bar NET simple returns (after costs), ``r_t = equity_t / equity_{t-1} - 1``,
  one per bar, in time order, all finite (a NaN return would hide a loss, so it raises). The risk-free
  rate is taken as 0 (cash in a crypto account earns nothing); ``bars_per_year`` defaults to
  ``24 * 365`` (hourly bars, markets open around the clock).
- Ratios that are mathematically unbounded (profit factor without a losing bar, Sortino without downside)
  are returned as ``inf``; undefined ones (no observations, zero variance) as ``nan``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from cryptopredict.evaluation.stats import probabilistic_sharpe_ratio
from cryptopredict.labels import CLASS_NAMES

logger = logging.getLogger(__name__)

BARS_PER_YEAR = 24 * 365
N_CLASSES = len(CLASS_NAMES)


# --------------------------------------------------------------------------------------------- helpers


def _float_1d(x: object, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _check_same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays are not aligned: {lengths}")
    return next(iter(lengths.values()))


def _labelled(y_true: object, **predictions: object) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rows with a finite label, as (int labels, predictions restricted to them).

    Raises if a prediction on a labelled row is not finite: predictions are never silently dropped.
    """
    y = np.asarray(y_true, dtype=float).ravel()
    preds = {k: np.asarray(v, dtype=float) for k, v in predictions.items()}
    _check_same_length(y_true=y, **preds)
    keep = np.isfinite(y)
    if not keep.all():
        logger.debug("dropping %d of %d rows without a label", int((~keep).sum()), len(y))
    out = {}
    for k, v in preds.items():
        v = v[keep]
        if not np.isfinite(v).all():
            raise ValueError(f"{k} has non-finite values on labelled rows")
        out[k] = v
    return y[keep].astype(int), out


def _returns(returns: object) -> np.ndarray:
    r = _float_1d(returns, "returns")
    if not np.isfinite(r).all():
        raise ValueError("returns contain NaN/inf; a missing return would hide a loss")
    return r


# ------------------------------------------------------------------------------------- classification


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of labelled rows whose predicted class equals the label, in [0, 1]."""
    y, p = _labelled(y_true, y_pred=y_pred)
    return float(np.mean(y == p["y_pred"])) if len(y) else math.nan


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """Counts C[i, j] = #rows with label i predicted as j (rows: truth, columns: prediction)."""
    y, p = _labelled(y_true, y_pred=y_pred)
    pred = p["y_pred"].astype(int)
    if len(y) and (y.min() < 0 or y.max() >= n_classes or pred.min() < 0 or pred.max() >= n_classes):
        raise ValueError(f"classes must be in 0..{n_classes - 1}")
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = N_CLASSES) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (Brodersen et al. 2010; the
    scikit-learn definition). A constant predictor scores 1/k on k present classes."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return math.nan
    return float(np.mean(np.diag(cm)[present] / support[present]))


def precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = N_CLASSES) -> pd.DataFrame:
    """Per-class precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2PR/(P+R) and support (#labels).

    Index: class names (SELL, HOLD, BUY) for 3 classes, else 0..k-1. A ratio with a zero denominator (a
    class never predicted, never present, or P = R = 0) is NaN rather than 0: it is undefined, not bad.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes).astype(float)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, np.nan)
    index = list(CLASS_NAMES) if n_classes == N_CLASSES else list(range(n_classes))
    return pd.DataFrame({"precision": precision, "recall": recall, "f1": f1, "support": support.astype(int)},
                        index=pd.Index(index, name="class"))


def _proba(proba: object, n: int) -> np.ndarray:
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape[0] != n:
        raise ValueError(f"proba must be (n, k) with n = {n}, got {p.shape}")
    return p


def _labelled_proba(y_true: object, proba: object) -> tuple[np.ndarray, np.ndarray]:
    """(int labels, proba rows) of the labelled rows; non-finite proba on a labelled row raises."""
    y = np.asarray(y_true, dtype=float).ravel()
    p = _proba(proba, len(y))
    keep = np.isfinite(y)
    if not np.isfinite(p[keep]).all():
        raise ValueError("proba has non-finite values on labelled rows")
    return y[keep].astype(int), p[keep]


def log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log-likelihood of the label, −(1/n) Σ ln p_{i, y_i}, in nats.

    p is clipped below at machine epsilon (2.2e-16) so that a confident miss costs ≈ 36 nats, not inf —
    the same clipping as scikit-learn's ``log_loss``.
    """
    y, p = _labelled_proba(y_true, proba)
    if not len(y):
        return math.nan
    p_true = np.clip(p[np.arange(len(y)), y], np.finfo(float).eps, 1.0)
    return float(-np.mean(np.log(p_true)))


def brier_score(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Multiclass Brier score (Brier 1950): (1/n) Σ_i Σ_k (p_ik − 1{y_i = k})², in [0, 2].

    Not halved: a uniform 3-class forecast scores 2/3, a certain miss 2, a certain hit 0.
    """
    y, p = _labelled_proba(y_true, proba)
    if not len(y):
        return math.nan
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def _confidence_correct(confidence: object, correct: object) -> tuple[np.ndarray, np.ndarray]:
    conf = _float_1d(confidence, "confidence")
    ok = np.asarray(correct)
    if ok.shape != conf.shape:
        raise ValueError(f"confidence {conf.shape} and correct {ok.shape} are not aligned")
    if not np.isfinite(conf).all() or conf.min(initial=0.0) < 0 or conf.max(initial=0.0) > 1:
        raise ValueError("confidence must be finite and in [0, 1]")
    return conf, ok.astype(bool)


def reliability_table(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Reliability diagram data: equal-width confidence bins ``(b/B, (b+1)/B]`` (the first also holds 0).

    Columns: ``bin_low``, ``bin_high``, ``mean_confidence``, ``accuracy`` (share correct), ``count``. Empty
    bins are kept with NaN means and count 0, so the table always has ``n_bins`` rows. ``correct`` is
    ``predicted_class == y_true`` on labelled rows.
    """
    conf, ok = _confidence_correct(confidence, correct)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds edges[b] < c <= edges[b+1], as in Guo et al. (2017); searching the edges (rather than
    # ceil(c·B)) keeps c = 0.3 in (0.2, 0.3] despite 0.3·10 = 3.0000000000000004
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=ok.astype(float), minlength=n_bins) / count
    return pd.DataFrame({"bin_low": edges[:-1], "bin_high": edges[1:], "mean_confidence": mean_conf,
                         "accuracy": acc, "count": count})


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """ECE = Σ_b (n_b / n) · |acc_b − conf_b| over the bins of :func:`reliability_table`.

    Source: Naeini, Cooper & Hauskrecht (2015), "Obtaining well calibrated probabilities using Bayesian
    binning"; Guo et al. (2017), "On calibration of modern neural networks", eq. (3). In [0, 1]; 0 for a
    perfectly calibrated forecaster (up to binning).
    """
    table = reliability_table(confidence, correct, n_bins)
    n = table["count"].sum()
    if n == 0:
        return math.nan
    filled = table[table["count"] > 0]
    gap = (filled["accuracy"] - filled["mean_confidence"]).abs()
    return float((filled["count"] * gap).sum() / n)


def accuracy_by_confidence_decile(confidence: np.ndarray, correct: np.ndarray,
                                  n_groups: int = 10) -> pd.DataFrame:
    """Accuracy per quantile group of confidence (deciles by default), lowest confidence first.

    Groups are bounded by the empirical quantiles of ``confidence``; tied quantile edges are merged, so a
    forecaster with few distinct confidence values yields fewer groups (a constant one yields one) instead
    of splitting equal confidences arbitrarily. Columns: ``group``, ``conf_low``, ``conf_high``,
    ``mean_confidence``, ``accuracy``, ``count``.
    """
    conf, ok = _confidence_correct(confidence, correct)
    cols = ["group", "conf_low", "conf_high", "mean_confidence", "accuracy", "count"]
    if not len(conf):
        return pd.DataFrame(columns=cols)
    edges = np.unique(np.quantile(conf, np.linspace(0.0, 1.0, n_groups + 1)))
    if len(edges) < 2:  # one distinct confidence value: one group
        codes = np.zeros(len(conf), dtype=int)
    else:
        codes = pd.cut(conf, edges, labels=False, include_lowest=True)
    df = pd.DataFrame({"group": codes, "conf": conf, "ok": ok.astype(float)})
    g = df.groupby("group", sort=True)
    out = pd.DataFrame({"conf_low": g["conf"].min(), "conf_high": g["conf"].max(),
                        "mean_confidence": g["conf"].mean(), "accuracy": g["ok"].mean(),
                        "count": g["ok"].size()}).reset_index()
    out["group"] = out["group"].astype(int)
    return out[cols]


# ---------------------------------------------------------------------------------------- volatility


def volatility_mae(realised_vol: np.ndarray, log_vol: np.ndarray) -> float:
    """Mean |σ_realised − exp(log_vol)|, in units of volatility over the horizon (e.g. 0.02 = 2 %).

    exp(log_vol) is the MEDIAN of the log-normal predictive distribution, which is the point forecast that
    minimises expected absolute error. Rows with NaN realised volatility are dropped.
    """
    rv, p = _labelled_vol(realised_vol, log_vol=log_vol)
    return float(np.mean(np.abs(rv - np.exp(p["log_vol"])))) if len(rv) else math.nan


def _labelled_vol(realised_vol: object, **predictions: object) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rv = _float_1d(realised_vol, "realised_vol")
    preds = {k: _float_1d(v, k) for k, v in predictions.items()}
    _check_same_length(realised_vol=rv, **preds)
    keep = np.isfinite(rv)
    if not keep.all():
        logger.debug("dropping %d of %d rows without realised volatility", int((~keep).sum()), len(rv))
    out = {}
    for k, v in preds.items():
        v = v[keep]
        if not np.isfinite(v).all():
            raise ValueError(f"{k} has non-finite values on rows with realised volatility")
        out[k] = v
    return rv[keep], out


def forecast_variance(log_vol: np.ndarray, log_vol_var: np.ndarray) -> np.ndarray:
    """Predictive mean of the realised VARIANCE under ln σ ~ N(μ, s²): E[σ²] = exp(2μ + 2s²).

    This (not exp(2μ)) is the forecast QLIKE should score: QLIKE is minimised in expectation by the
    conditional mean of the variance proxy (Patton 2011).
    """
    mu = _float_1d(log_vol, "log_vol")
    s2 = _float_1d(log_vol_var, "log_vol_var")
    _check_same_length(log_vol=mu, log_vol_var=s2)
    if (s2 < 0).any():
        raise ValueError("log_vol_var must be >= 0")
    return np.exp(2 * mu + 2 * s2)


def qlike(realised_var: np.ndarray, forecast_var: np.ndarray) -> float:
    """QLIKE loss on variances: mean of σ²/h − ln(σ²/h) − 1, with σ² the realised variance (the proxy)
    and h > 0 the forecast variance. Dimensionless, ≥ 0, and 0 only when h = σ².

    Source: Patton (2011), "Volatility forecast comparison using imperfect volatility proxies", J.
    Econometrics 160(1), the b = −2 member of his robust family — robust to noise in the proxy, unlike
    MSE on volatility. It is asymmetric: under-predicting variance costs more than over-predicting.
    Rows with NaN realised variance are dropped; rows with realised variance 0 (no price change over the
    horizon) make ln(σ²/h) = −inf and are dropped too, with a WARNING giving their count.
    """
    rv2, p = _labelled_vol(realised_var, forecast_var=forecast_var)
    h = p["forecast_var"]
    if (h <= 0).any():
        raise ValueError("forecast variance must be > 0")
    positive = rv2 > 0
    if not positive.all():
        logger.warning("QLIKE: dropping %d rows with zero realised variance", int((~positive).sum()))
    ratio = rv2[positive] / h[positive]
    return float(np.mean(ratio - np.log(ratio) - 1.0)) if len(ratio) else math.nan


def interval_coverage(realised_vol: np.ndarray, log_vol: np.ndarray, log_vol_var: np.ndarray,
                      level: float) -> float:
    """Share of rows whose realised volatility lies in the central ``level`` prediction interval.

    Assumes ln σ ~ N(μ = log_vol, s² = log_vol_var) (log-normal volatility): the interval is
    exp(μ ± z·s) with z = Φ⁻¹((1 + level)/2). A calibrated forecaster covers ≈ ``level``. Zero realised
    volatility (ln = −inf) counts as outside.
    """
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    rv, p = _labelled_vol(realised_vol, log_vol=log_vol, log_vol_var=log_vol_var)
    if not len(rv):
        return math.nan
    if (p["log_vol_var"] < 0).any():
        raise ValueError("log_vol_var must be >= 0")
    z = sps.norm.ppf(0.5 + level / 2)
    half = z * np.sqrt(p["log_vol_var"])
    with np.errstate(divide="ignore"):
        log_rv = np.log(rv)
    return float(np.mean((log_rv >= p["log_vol"] - half) & (log_rv <= p["log_vol"] + half)))


# ----------------------------------------------------------------------------------------- financial


def equity_curve(returns: np.ndarray) -> np.ndarray:
    """Equity E_0 = 1, E_i = Π_{t<i} (1 + r_t): length n + 1 (initial capital first)."""
    r = _returns(returns)
    return np.concatenate([[1.0], np.cumprod(1.0 + r)])


def total_return(returns: np.ndarray) -> float:
    """Π (1 + r_t) − 1 (a fraction: 0.25 = +25 %)."""
    return float(equity_curve(returns)[-1] - 1.0)


def cagr(returns: np.ndarray, bars_per_year: float = BARS_PER_YEAR) -> float:
    """Compound annual growth rate (1 + total return)^(bars_per_year / n) − 1; −1 after a total loss."""
    r = _returns(returns)
    if not len(r):
        return math.nan
    growth = 1.0 + total_return(r)
    return -1.0 if growth <= 0 else float(growth ** (bars_per_year / len(r)) - 1.0)


def annualised_volatility(returns: np.ndarray, bars_per_year: float = BARS_PER_YEAR) -> float:
    """std(r, ddof = 1) · √bars_per_year."""
    r = _returns(returns)
    return float(np.std(r, ddof=1) * math.sqrt(bars_per_year)) if len(r) > 1 else math.nan


def sharpe_ratio(returns: np.ndarray, bars_per_year: float = BARS_PER_YEAR) -> float:
    """Annualised Sharpe ratio mean(r) / std(r, ddof = 1) · √bars_per_year (risk-free 0; Sharpe 1994).

    For the per-bar Sharpe the significance tests take (PSR, DSR), pass ``bars_per_year = 1``.
    """
    r = _returns(returns)
    if len(r) < 2:
        return math.nan
    sd = np.std(r, ddof=1)
    return float(np.mean(r) / sd * math.sqrt(bars_per_year)) if sd > 0 else math.nan


def sortino_ratio(returns: np.ndarray, bars_per_year: float = BARS_PER_YEAR, target: float = 0.0) -> float:
    """Annualised Sortino ratio mean(r − τ) / DD · √bars_per_year with the downside deviation
    DD = √( (1/n) Σ_t min(r_t − τ, 0)² ) over ALL n bars (Sortino & Price 1994; Rollinger & Hoffman,
    "Sortino: a 'sharper' ratio"). ``inf`` when no bar falls below τ and the mean excess is positive.
    """
    r = _returns(returns)
    if not len(r):
        return math.nan
    excess = r - target
    dd = math.sqrt(np.mean(np.minimum(excess, 0.0) ** 2))
    mean = float(np.mean(excess))
    if dd == 0:
        return math.inf if mean > 0 else math.nan
    return mean / dd * math.sqrt(bars_per_year)


def drawdown(returns: np.ndarray) -> np.ndarray:
    """Drawdown after each bar, 1 − E_i / max_{j≤i} E_j (≥ 0), length n + 1 including E_0 = 1.

    The running peak includes the initial capital, so losing from the very first bar is a drawdown.
    """
    eq = equity_curve(returns)
    return 1.0 - eq / np.maximum.accumulate(eq)


def max_drawdown(returns: np.ndarray) -> float:
    """Largest peak-to-trough loss of the equity curve, as a positive fraction in [0, 1]."""
    return float(drawdown(returns).max())


def max_drawdown_duration(returns: np.ndarray,
                          timestamps: Sequence[object] | pd.DatetimeIndex | np.ndarray | None = None
                          ) -> tuple[int, pd.Timedelta | None]:
    """Longest time from an equity peak to the first bar back at or above it (or to the last bar if it
    never recovers): (bars, wall time).

    Bars count elapsed bars: peak at E_p, recovery at E_q → q − p; unrecovered → n − p. ``timestamps[i]``
    is when ``returns[i]`` has been earned, i.e. the mark time of E_{i+1}; E_0 is placed one median bar
    spacing before ``timestamps[0]``. The wall time is the longest spell measured in time, which can differ
    from the longest in bars across data gaps. Wall time is None when no timestamps are given.
    """
    dd = drawdown(returns)
    n_bars = len(dd) - 1
    under = dd > 0
    # spells: maximal runs of underwater equity points; each starts right after its peak
    spells: list[tuple[int, int]] = []  # (peak index, end index = recovery or last point)
    i = 1
    while i <= n_bars:
        if under[i]:
            start = i
            while i <= n_bars and under[i]:
                i += 1
            spells.append((start - 1, i if i <= n_bars else n_bars))
        else:
            i += 1
    best_bars = max((end - peak for peak, end in spells), default=0)
    if timestamps is None:
        return best_bars, None
    ts = pd.DatetimeIndex(pd.to_datetime(timestamps))
    if len(ts) != n_bars:
        raise ValueError(f"{len(ts)} timestamps for {n_bars} returns")
    if not spells:
        return 0, pd.Timedelta(0)
    spacing = ts.to_series().diff().median() if n_bars > 1 else pd.Timedelta(0)
    marks = ts.insert(0, ts[0] - spacing)
    best_wall = max(marks[end] - marks[peak] for peak, end in spells)
    return best_bars, pd.Timedelta(best_wall)


def calmar_ratio(returns: np.ndarray, bars_per_year: float = BARS_PER_YEAR) -> float:
    """CAGR / max drawdown (Young 1991, over the whole sample rather than 36 months); ``inf`` with no
    drawdown and positive CAGR."""
    mdd = max_drawdown(returns)
    growth = cagr(returns, bars_per_year)
    if mdd == 0:
        return math.inf if growth > 0 else math.nan
    return growth / mdd


def win_rate(returns: np.ndarray) -> float:
    """Share of bars with r > 0 among bars with r ≠ 0 (flat bars without a position or cost are not
    trades); NaN when every bar is 0."""
    r = _returns(returns)
    active = r[r != 0]
    return float(np.mean(active > 0)) if len(active) else math.nan


def profit_factor(returns: np.ndarray) -> float:
    """Σ r⁺ / Σ |r⁻| over bars (gross gains over gross losses); ``inf`` without a losing bar, NaN
    without any nonzero bar."""
    r = _returns(returns)
    gains, losses = r[r > 0].sum(), -r[r < 0].sum()
    if losses == 0:
        return math.inf if gains > 0 else math.nan
    return float(gains / losses)


def _tail(returns: np.ndarray, level: float) -> tuple[np.ndarray, float]:
    r = _returns(returns)
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    return np.sort(r), (1.0 - level) * len(r)


def value_at_risk(returns: np.ndarray, level: float = 0.95) -> float:
    """Historical VaR at ``level``, as a positive loss per bar: −x_(k), k = ⌈α n⌉, α = 1 − level, with
    x_(1) ≤ … ≤ x_(n) the sorted returns — minus the lower empirical α-quantile (smallest x with
    F_n(x) ≥ α)."""
    x, an = _tail(returns, level)
    if not len(x):
        return math.nan
    k = max(1, math.ceil(an - 1e-9))
    return float(-x[k - 1])


def conditional_value_at_risk(returns: np.ndarray, level: float = 0.95) -> float:
    """Historical CVaR / expected shortfall at ``level``, as a positive loss per bar: the mean of the worst
    α n returns with the boundary return weighted fractionally,
    ES = −(1/(α n)) [Σ_{i ≤ ⌊α n⌋} x_(i) + (α n − ⌊α n⌋) x_(⌊α n⌋ + 1)]
    (Acerbi & Tasche 2002, "On the coherence of expected shortfall", Prop. 4.1). When α n < 1 it is the
    worst return."""
    x, an = _tail(returns, level)
    if not len(x):
        return math.nan
    if an < 1:
        return float(-x[0])
    m = math.floor(an + 1e-9)
    frac = an - m if m < len(x) else 0.0
    tail_sum = x[:m].sum() + (frac * x[m] if frac > 1e-12 else 0.0)
    return float(-tail_sum / an)


def _positions(positions: object) -> np.ndarray:
    w = np.asarray(positions, dtype=float)
    if w.ndim == 1:
        w = w[:, None]
    if w.ndim != 2 or not np.isfinite(w).all():
        raise ValueError("positions must be finite, (n,) or (n, assets)")
    return w


def turnover(positions: np.ndarray) -> float:
    """Mean traded fraction of capital per bar, (1/n) Σ_t Σ_a |w_{t,a} − w_{t−1,a}| with w_{−1} = 0 (the
    entry from flat counts). ``positions`` are weights per bar (signed, fraction of equity), (n,) or
    (n, assets). Multiply by bars_per_year for annual turnover."""
    w = _positions(positions)
    if not len(w):
        return math.nan
    dw = np.diff(w, axis=0, prepend=np.zeros((1, w.shape[1])))
    return float(np.abs(dw).sum(axis=1).mean())


def exposure(positions: np.ndarray) -> float:
    """Mean gross exposure per bar, (1/n) Σ_t Σ_a |w_{t,a}| (1.0 = fully invested long or short)."""
    w = _positions(positions)
    return float(np.abs(w).sum(axis=1).mean()) if len(w) else math.nan


def time_in_market(positions: np.ndarray) -> float:
    """Share of bars with any nonzero position."""
    w = _positions(positions)
    return float(np.mean((w != 0).any(axis=1))) if len(w) else math.nan


def monthly_returns(returns: np.ndarray,
                    timestamps: Sequence[object] | pd.DatetimeIndex | np.ndarray) -> pd.DataFrame:
    """Calendar table of compounded returns: index year, columns 1..12 and ``year`` (the year's
    compounded return over the months present). A month is Π (1 + r_t) − 1 over the bars stamped in it
    (UTC calendar if the timestamps are tz-aware); months without bars are NaN."""
    r = _returns(returns)
    ts = pd.DatetimeIndex(pd.to_datetime(timestamps))
    if len(ts) != len(r):
        raise ValueError(f"{len(ts)} timestamps for {len(r)} returns")
    growth = pd.Series(np.log1p(r), index=ts)
    monthly = np.expm1(growth.groupby([ts.year, ts.month]).sum())
    table = monthly.unstack().reindex(columns=range(1, 13))
    table.index.name, table.columns.name = "year", "month"
    table["year"] = np.expm1(growth.groupby(ts.year).sum()).to_numpy()
    return table


def information_ratio(returns: np.ndarray, benchmark: np.ndarray,
                      bars_per_year: float = BARS_PER_YEAR) -> float:
    """Annualised information ratio mean(r − b) / std(r − b, ddof = 1) · √bars_per_year, with b the
    benchmark's per-bar return (buy and hold of the same assets) on the same bars (Grinold & Kahn)."""
    r, b = _returns(returns), _returns(benchmark)
    _check_same_length(returns=r, benchmark=b)
    return sharpe_ratio(r - b, bars_per_year)


# ------------------------------------------------------------------------------------------ summary


def summary(*, y_true: np.ndarray | None = None, proba: np.ndarray | None = None,
            confidence: np.ndarray | None = None, realised_vol: np.ndarray | None = None,
            log_vol: np.ndarray | None = None, log_vol_var: np.ndarray | None = None,
            returns: np.ndarray | None = None, benchmark: np.ndarray | None = None,
            positions: np.ndarray | None = None, timestamps: Sequence[object] | np.ndarray | None = None,
            bars_per_year: float = BARS_PER_YEAR, n_bins: int = 10) -> dict[str, float]:
    """All metrics whose inputs are given, as one flat dict of floats for a report or JSON.

    Groups: classification (needs ``y_true`` and ``proba``; ``confidence`` defaults to max proba),
    volatility (``realised_vol``, ``log_vol``, ``log_vol_var``), financial (``returns``; plus
    ``benchmark``, ``positions``, ``timestamps`` for the information ratio, turnover/exposure and wall-time
    drawdown duration); ``psr`` is the probabilistic Sharpe ratio of the per-bar Sharpe against 0 with
    the sample skewness and kurtosis (bars assumed independent). Counts are floats too; unbounded or
    undefined values stay ``inf``/``nan``. The reliability, decile and monthly tables are DataFrames and are
    left to their own functions.
    """
    out: dict[str, float] = {}
    if y_true is not None and proba is not None:
        y = np.asarray(y_true, dtype=float).ravel()
        p = _proba(proba, len(y))
        pred = p.argmax(axis=1).astype(float)
        conf = p.max(axis=1) if confidence is None else _float_1d(confidence, "confidence")
        keep = np.isfinite(y)
        out["n_labelled"] = float(keep.sum())
        out["accuracy"] = accuracy(y, pred)
        out["balanced_accuracy"] = balanced_accuracy(y, pred)
        out["log_loss"] = log_loss(y, p)
        out["brier"] = brier_score(y, p)
        out["ece"] = expected_calibration_error(conf[keep], pred[keep] == y[keep], n_bins)
        prf = precision_recall_f1(y, pred)
        for name, row in prf.iterrows():
            for col in ("precision", "recall", "f1", "support"):
                out[f"{col}_{name}"] = float(row[col])
    if realised_vol is not None and log_vol is not None:
        out["vol_mae"] = volatility_mae(realised_vol, log_vol)
        if log_vol_var is not None:
            rv = _float_1d(realised_vol, "realised_vol")
            out["vol_qlike"] = qlike(rv ** 2, forecast_variance(log_vol, log_vol_var))
            out["vol_coverage_50"] = interval_coverage(rv, log_vol, log_vol_var, 0.5)
            out["vol_coverage_90"] = interval_coverage(rv, log_vol, log_vol_var, 0.9)
    if returns is not None:
        r = _returns(returns)
        out["n_bars"] = float(len(r))
        out["total_return"] = total_return(r)
        out["cagr"] = cagr(r, bars_per_year)
        out["annual_volatility"] = annualised_volatility(r, bars_per_year)
        out["sharpe"] = sharpe_ratio(r, bars_per_year)
        per_bar = sharpe_ratio(r, 1.0)
        if len(r) > 2 and math.isfinite(per_bar):
            out["psr"] = probabilistic_sharpe_ratio(per_bar, len(r), float(sps.skew(r)),
                                                    float(sps.kurtosis(r, fisher=False)))
        out["sortino"] = sortino_ratio(r, bars_per_year)
        out["calmar"] = calmar_ratio(r, bars_per_year)
        out["max_drawdown"] = max_drawdown(r)
        dd_bars, dd_wall = max_drawdown_duration(r, timestamps)
        out["max_drawdown_duration_bars"] = float(dd_bars)
        if dd_wall is not None:
            out["max_drawdown_duration_hours"] = dd_wall / pd.Timedelta(hours=1)
        out["win_rate"] = win_rate(r)
        out["profit_factor"] = profit_factor(r)
        out["var_95"] = value_at_risk(r, 0.95)
        out["cvar_95"] = conditional_value_at_risk(r, 0.95)
        if benchmark is not None:
            out["information_ratio"] = information_ratio(r, benchmark, bars_per_year)
            out["benchmark_total_return"] = total_return(benchmark)
            out["benchmark_sharpe"] = sharpe_ratio(benchmark, bars_per_year)
        if positions is not None:
            out["turnover_per_bar"] = turnover(positions)
            out["turnover_annual"] = out["turnover_per_bar"] * bars_per_year
            out["exposure"] = exposure(positions)
            out["time_in_market"] = time_in_market(positions)
    return out
