"""Drift: recent feature rows and recent predictions against a reference distribution.

PSI (population stability index) of a recent sample against a reference one:
``PSI = Σ_b (a_b − e_b) · ln(a_b / e_b)``, with ``e_b``/``a_b`` the reference/recent shares in bin b. Bins
are the reference's quantiles (``bins`` equal-mass bins; tied quantiles merge, so a feature with few
distinct values gets fewer bins), open at both ends: bin b holds ``edge_{b−1} < x ≤ edge_b``. Shares are
floored at ``eps`` (1e-4) before the sum, so an empty bin costs a large but finite amount. Common reading:
< 0.1 stable, 0.1–0.25 moderate, > 0.25 large shift. The two-sample Kolmogorov–Smirnov statistic and
p-value come from ``scipy.stats.ks_2samp`` (with large samples the p-value flags tiny shifts; PSI is the
flag, KS is reported beside it). NaN rows (warm-up, missing sources) are left out of both and reported as
NaN shares.

The feature reference is the lake's ``features`` table over the model's training span (the registry
manifest's data span); recent rows are each symbol's last ``recent_bars`` rows. Symbols are pooled.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from cryptopredict.data.lake import Lake
from cryptopredict.labels import CLASS_NAMES

log = logging.getLogger(__name__)

EPS = 1e-4
NON_FEATURES = {"symbol", "timestamp"}


def quantile_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges: the reference's unique interior quantiles at 1/bins … (bins−1)/bins."""
    ref = np.asarray(reference, dtype=float)
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        raise ValueError("the reference has no finite values")
    if bins < 2:
        raise ValueError("bins must be >= 2")
    return np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of the finite ``values`` in each bin (edge_{b−1}, edge_b] of ``edges`` (len(edges) + 1 bins)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    counts = np.bincount(np.searchsorted(edges, v, side="left"), minlength=len(edges) + 1)
    return counts / max(v.size, 1)


def psi_from_shares(expected: np.ndarray, actual: np.ndarray, eps: float = EPS) -> float:
    """Σ (a − e) · ln(a / e) with both shares floored at ``eps``."""
    e = np.maximum(np.asarray(expected, dtype=float), eps)
    a = np.maximum(np.asarray(actual, dtype=float), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = 10, eps: float = EPS) -> float:
    """PSI of ``recent`` against ``reference`` on the reference's quantile bins (NaN rows ignored)."""
    edges = quantile_edges(reference, bins)
    return psi_from_shares(bin_shares(reference, edges), bin_shares(recent, edges), eps)


def categorical_psi(reference: Sequence[object], recent: Sequence[object],
                    categories: Sequence[object] | None = None, eps: float = EPS) -> float:
    """PSI of a categorical variable (e.g. the signal mix), one bin per category."""
    ref, rec = pd.Series(list(reference)), pd.Series(list(recent))
    cats = list(categories) if categories is not None else sorted(set(ref) | set(rec), key=str)
    if not len(ref) or not len(rec):
        return math.nan
    e = ref.value_counts(normalize=True).reindex(cats, fill_value=0.0).to_numpy()
    a = rec.value_counts(normalize=True).reindex(cats, fill_value=0.0).to_numpy()
    return psi_from_shares(e, a, eps)


def ks(reference: np.ndarray, recent: np.ndarray, method: str = "auto") -> tuple[float, float]:
    """Two-sample KS statistic and p-value (``scipy.stats.ks_2samp``, two-sided) of the finite values;
    ``method`` as scipy's (``auto``: exact up to 10 000 rows per side)."""
    ref = np.asarray(reference, dtype=float)
    rec = np.asarray(recent, dtype=float)
    res = sps.ks_2samp(ref[np.isfinite(ref)], rec[np.isfinite(rec)], method=method)
    return float(res.statistic), float(res.pvalue)


def feature_drift(reference: pd.DataFrame, recent: pd.DataFrame, *, columns: Sequence[str] | None = None,
                  bins: int = 10, threshold: float = 0.2, min_rows: int = 50,
                  ks_method: str = "asymp") -> pd.DataFrame:
    """Per feature: psi, ks_stat, ks_pvalue, rows and NaN shares on both sides, drifted (psi > threshold).

    The KS p-value is the asymptotic one by default: at these sample sizes (hundreds to thousands of rows)
    it is close to the exact one, which costs ~50 ms per feature.

    Features with fewer than ``min_rows`` finite values on either side get NaN statistics and are not
    counted as drifted (``note`` says why). Sorted by PSI, worst first."""
    cols = list(columns) if columns is not None else [
        c for c in reference.columns if c not in NON_FEATURES and pd.api.types.is_numeric_dtype(reference[c])]
    missing = [c for c in cols if c not in recent.columns]
    if missing:
        raise ValueError(f"recent feature rows lack columns {missing[:5]}{'…' if len(missing) > 5 else ''}")
    rows = []
    for c in cols:
        ref = reference[c].to_numpy(float)
        rec = recent[c].to_numpy(float)
        n_ref, n_rec = int(np.isfinite(ref).sum()), int(np.isfinite(rec).sum())
        row = {"feature": c, "n_reference": n_ref, "n_recent": n_rec,
               "nan_share_reference": 1 - n_ref / len(ref) if len(ref) else math.nan,
               "nan_share_recent": 1 - n_rec / len(rec) if len(rec) else math.nan,
               "psi": math.nan, "ks_stat": math.nan, "ks_pvalue": math.nan, "note": ""}
        if n_ref < min_rows or n_rec < min_rows:
            row["note"] = f"fewer than {min_rows} finite rows"
        else:
            row["psi"] = psi(ref, rec, bins)
            row["ks_stat"], row["ks_pvalue"] = ks(ref, rec, ks_method)
        rows.append(row)
    table = pd.DataFrame(rows, columns=["feature", "psi", "ks_stat", "ks_pvalue", "n_reference", "n_recent",
                                        "nan_share_reference", "nan_share_recent", "note"])
    table["drifted"] = table["psi"] > threshold  # NaN compares False
    return table.sort_values("psi", ascending=False, na_position="last", ignore_index=True)


def drift_summary(table: pd.DataFrame, top: int = 10) -> dict[str, object]:
    """Share of scored features that drifted, the max PSI, and the ``top`` worst features."""
    scored = table[table["psi"].notna()]
    worst = scored.head(top)
    return {
        "n_features": len(table), "n_scored": len(scored), "n_drifted": int(scored["drifted"].sum()),
        "share_drifted": float(scored["drifted"].mean()) if len(scored) else math.nan,
        "max_psi": float(scored["psi"].max()) if len(scored) else math.nan,
        "worst": [{"feature": r.feature, "psi": float(r.psi), "ks_stat": float(r.ks_stat),
                   "ks_pvalue": float(r.ks_pvalue), "drifted": bool(r.drifted)} for r in worst.itertuples()],
    }


def read_features(lake: Lake, symbols: Sequence[str]) -> pd.DataFrame:
    """The lake's ``features`` rows of ``symbols`` (symbol, timestamp, features…); a ValueError names the
    symbols that have none."""
    frames, absent = [], []
    for s in symbols:
        f = lake.read_frame("features", {"symbol": s})
        (frames if len(f) else absent).append(f if len(f) else s)
    if absent:
        raise ValueError(f"no feature rows in the lake {lake.root!r} for {absent}; run `cryptopredict "
                         "features` first")
    df = pd.concat(frames, ignore_index=True)
    df["symbol"] = df["symbol"].astype(str)
    return df.sort_values(["symbol", "timestamp"], ignore_index=True)


def split_reference_recent(features: pd.DataFrame, span: tuple[str | pd.Timestamp, str | pd.Timestamp],
                           recent_bars: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference rows: timestamp within the span [first, last] (inclusive); recent rows: each symbol's last
    ``recent_bars`` rows. Warns when the two overlap (drift would be understated)."""
    first, last = (to_utc(t) for t in span)
    if first > last:
        raise ValueError(f"reference span starts after it ends: {first} > {last}")
    reference = features[(features["timestamp"] >= first) & (features["timestamp"] <= last)]
    if reference.empty:
        raise ValueError(f"no feature rows in the reference span {first} … {last}")
    recent = features.groupby("symbol", sort=False, group_keys=False).tail(recent_bars)
    overlap = int((recent["timestamp"] <= last).sum())
    if overlap:
        log.warning("%d of %d recent feature rows lie inside the reference span (ends %s): drift is "
                    "understated", overlap, len(recent), last)
    return reference, recent


def lake_feature_drift(lake: Lake, symbols: Sequence[str], span: tuple[str | pd.Timestamp, str | pd.Timestamp],
                       *, recent_bars: int = 720, bins: int = 10, threshold: float = 0.2,
                       min_rows: int = 50) -> tuple[pd.DataFrame, dict[str, object]]:
    """:func:`feature_drift` of the lake's recent features against the training span, and its summary
    (plus the windows used)."""
    features = read_features(lake, symbols)
    reference, recent = split_reference_recent(features, span, recent_bars)
    table = feature_drift(reference, recent, bins=bins, threshold=threshold, min_rows=min_rows)
    summary = drift_summary(table)
    summary.update({"reference_first": str(reference["timestamp"].min()),
                    "reference_last": str(reference["timestamp"].max()), "reference_rows": len(reference),
                    "recent_first": str(recent["timestamp"].min()), "recent_last": str(recent["timestamp"].max()),
                    "recent_rows": len(recent), "symbols": list(symbols)})
    return table, summary


PREDICTION_QUANTITIES = ("p_sell", "p_hold", "p_buy", "confidence")


def prediction_drift(predictions: pd.DataFrame, *, now: pd.Timestamp, recent_hours: int, reference_hours: int,
                     bins: int = 10, threshold: float = 0.2, min_rows: int = 50) -> pd.DataFrame:
    """PSI of the recent predictions' class probabilities, confidence and signal mix against the window
    before them, per model version. ``predictions``: deduplicated, with ``bar_time``. Recent: bar time in
    (now − recent, now]; reference: (now − recent − reference, now − recent]. Rows: model_version, quantity,
    psi, n_reference, n_recent, drifted, note."""
    now = pd.Timestamp(now)
    split = now - pd.Timedelta(hours=recent_hours)
    start = split - pd.Timedelta(hours=reference_hours)
    rows = []
    for version, grp in predictions.groupby("model_version", sort=True):
        ref = grp[(grp["bar_time"] > start) & (grp["bar_time"] <= split)]
        rec = grp[(grp["bar_time"] > split) & (grp["bar_time"] <= now)]
        enough = len(ref) >= min_rows and len(rec) >= min_rows
        note = "" if enough else f"fewer than {min_rows} predictions in a window"
        for q in PREDICTION_QUANTITIES:
            value = psi(ref[q].to_numpy(float), rec[q].to_numpy(float), bins) if enough else math.nan
            rows.append({"model_version": version, "quantity": q, "psi": value, "n_reference": len(ref),
                         "n_recent": len(rec), "note": note})
        value = categorical_psi(ref["signal"], rec["signal"], CLASS_NAMES) if enough else math.nan
        rows.append({"model_version": version, "quantity": "signal_mix", "psi": value, "n_reference": len(ref),
                     "n_recent": len(rec), "note": note})
    table = pd.DataFrame(rows, columns=["model_version", "quantity", "psi", "n_reference", "n_recent", "note"])
    table["drifted"] = table["psi"] > threshold
    return table


def to_utc(t: str | pd.Timestamp) -> pd.Timestamp:
    """A timestamp in UTC (naive times are taken as UTC)."""
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
