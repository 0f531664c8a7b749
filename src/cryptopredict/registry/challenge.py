"""Champion versus challenger on the same window: the stored champion scored without retraining on the
challenger's out-of-sample test rows, and the promotion rule.

Both models are scored against the SAME classes: the challenger's walk-forward fold fixes each row's
class (its dead zone fitted on that fold's training rows); the champion only predicts. Log loss is per
row, −log p(true class) with p clipped at 1e-15. The Diebold–Mariano test runs on the per-timestamp mean
log-loss differential (challenger − champion; one time series, HAC lag h − 1, as the evaluation's DM tests),
one-sided: H1 = the challenger is worse.

Rule: promote when mean log loss(challenger) − mean log loss(champion) ≤ ``tolerance`` AND the one-sided
DM p-value ≥ ``alpha`` (the challenger is not significantly worse).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryptopredict.config import Config
from cryptopredict.data.lake import Lake
from cryptopredict.evaluation.dataset import load_panel, make_fold
from cryptopredict.evaluation.stats import diebold_mariano
from cryptopredict.labels import DirectionLabeler
from cryptopredict.models.base import model_class

PROBA = ["p_sell", "p_hold", "p_buy"]
WINDOW_COLUMNS = ["y_true", "fwd_return", "fwd_vol", "sigma", "fold"]


def utc(value: str | pd.Timestamp) -> pd.Timestamp:
    """A timestamp in UTC (a naive one is taken to be UTC already)."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


class NotComparable(ValueError):
    """The champion cannot be scored on the window (other horizon, missing features, trained on it)."""


def champion_predictions(cfg: Config, lake: Lake, champion_dir: Path, forecaster: str,
                         window: pd.DataFrame) -> pd.DataFrame:
    """The stored champion's predictions on the rows of ``window`` (the challenger's prediction frame,
    indexed by (symbol, timestamp)), with the window's classes and forward values; not retrained."""
    meta_path = champion_dir / "final_fit.json"
    if not meta_path.is_file():
        raise NotComparable(f"the champion's files lack final_fit.json ({champion_dir})")
    meta = json.loads(meta_path.read_text())
    fc = cfg.features
    if int(meta["horizon"]) != fc.horizon:
        raise NotComparable(f"the champion predicts a {meta['horizon']}-bar horizon, the challenger {fc.horizon}")
    first = window.index.get_level_values("timestamp").min()
    clean_from = utc(meta["last_training_bar"]) + pd.Timedelta(cfg.ingest.timeframe) * (fc.horizon + 1)
    if first < clean_from:
        raise NotComparable(f"the window starts at {first}, before the end of the champion's training data "
                            f"plus the label horizon ({clean_from})")
    X, labels = load_panel(lake, list(cfg.ingest.symbols), fc.horizon, fc.label_vol_window)
    missing = [c for c in meta["features"] if c not in X.columns]
    if missing:
        raise NotComparable(f"the lake lacks features the champion was trained on: {missing[:5]}")
    mask = np.asarray(X.index.isin(window.index))
    labeler = DirectionLabeler.load(champion_dir / "labeler.json")  # its classes are replaced below
    cls = model_class(forecaster)
    corr = lake.read_frame("correlations") if getattr(cls, "uses_correlations", False) else None
    fold = make_fold(X[meta["features"]], labels, mask, labeler, fc.horizon, "champion-window", corr)
    pred = cls.load(champion_dir).predict(fold).to_frame().drop(columns="model")
    pred = pred.reindex(window.index)
    if pred[PROBA].isna().any().any():
        raise NotComparable("the champion did not predict every row of the window")
    return pred.join(window[[c for c in WINDOW_COLUMNS if c in window.columns]])


def log_loss_rows(frame: pd.DataFrame) -> pd.Series:
    """−log p(true class) per row with a known class (rows without one are dropped)."""
    y = frame["y_true"].to_numpy(dtype=float)
    ok = np.isfinite(y)
    p = frame[PROBA].to_numpy(dtype=float)[ok]
    loss = -np.log(np.clip(p[np.arange(len(p)), y[ok].astype(int)], 1e-15, 1.0))
    return pd.Series(loss, index=frame.index[ok])


@dataclass(frozen=True)
class Comparison:
    """The window comparison and the rule's verdict (JSON-able through ``to_dict``)."""

    rows: int
    bars: int
    challenger_log_loss: float
    champion_log_loss: float
    difference: float  # challenger − champion (negative favours the challenger)
    dm_statistic: float
    dm_p_worse: float  # one-sided p-value of H1: the challenger is worse
    horizon: int
    tolerance: float
    alpha: float
    promote: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def compare(challenger: pd.DataFrame, champion: pd.DataFrame, horizon: int, tolerance: float,
            alpha: float) -> Comparison:
    """Apply the promotion rule on the rows both frames hold with a known class."""
    lc, lk = log_loss_rows(challenger), log_loss_rows(champion)
    common = lc.index.intersection(lk.index)
    if len(common) < 2:
        raise NotComparable(f"only {len(common)} rows with a known class are shared by both models")
    lc, lk = lc.loc[common], lk.loc[common]
    per_time = (lc - lk).groupby(level="timestamp").mean().sort_index().to_numpy()
    dm = diebold_mariano(per_time, np.zeros_like(per_time), horizon=horizon, alternative="greater")
    diff = float(lc.mean() - lk.mean())
    within = diff <= tolerance
    not_worse = dm.p_value >= alpha
    promote = bool(within and not_worse)
    text = (f"mean log loss {lc.mean():.4f} (challenger) vs {lk.mean():.4f} (champion), difference "
            f"{diff:+.4f} {'≤' if within else '>'} tolerance {tolerance:g}; Diebold–Mariano p(challenger worse) "
            f"= {dm.p_value:.3g} {'≥' if not_worse else '<'} alpha {alpha:g} over {len(per_time)} bars")
    return Comparison(rows=int(len(common)), bars=int(len(per_time)), challenger_log_loss=float(lc.mean()),
                      champion_log_loss=float(lk.mean()), difference=diff, dm_statistic=float(dm.statistic),
                      dm_p_worse=float(dm.p_value), horizon=horizon, tolerance=tolerance, alpha=alpha,
                      promote=promote, reason=text)
