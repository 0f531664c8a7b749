"""A synthetic deep-ensemble prediction frame with known structure, for the report's ensemble section.

- fusion weights: transformer 0.15 in the first half of the timestamps and 0.05 in the second,
  bilstm 0.15 then 0.25 (so their means are exactly 0.1 and 0.2), cnn_lstm 0.3 and gnn 0.4 throughout;
- direction: the arg-max class (probability 0.6, the others 0.2) equals ``y_true`` with probability
  0.9 − 1.4 · epistemic, epistemic ~ U(0, 0.5): accuracy falls from ≈ 0.87 to ≈ 0.23 across the epistemic
  deciles and the log loss rises;
- volatility: ln(fwd_vol) = log_vol + s · z with z ~ N(0, 1) and log_vol_var = s², s ~ U(0.05, 0.8): the
  stated spread is right, so each decile's RMSE matches its root mean variance;
- sizing: no position below confidence 0.4, above it |position| = (confidence − 0.4) / 0.5 capped at 1, and
  the direction is right with probability 0.2 + confidence (0.6 → 1.1, capped at 1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MEMBERS = ("transformer", "bilstm", "cnn_lstm", "gnn")
MEAN_WEIGHTS = {"transformer": 0.1, "bilstm": 0.2, "cnn_lstm": 0.3, "gnn": 0.4}
EARLY_WEIGHTS = {"transformer": 0.15, "bilstm": 0.15, "cnn_lstm": 0.3, "gnn": 0.4}
LATE_WEIGHTS = {"transformer": 0.05, "bilstm": 0.25, "cnn_lstm": 0.3, "gnn": 0.4}


def ensemble_predictions(index: pd.MultiIndex, seed: int = 11) -> pd.DataFrame:
    """An ensemble's predictions on ``index`` ((symbol, timestamp), an even number of timestamps)."""
    rng = np.random.default_rng(seed)
    n = len(index)
    timestamps = index.get_level_values("timestamp")
    late = timestamps >= np.sort(timestamps.unique())[timestamps.nunique() // 2]
    assert late.sum() * 2 == n, "the index needs as many rows in its second half as in its first"

    epistemic = rng.uniform(0.0, 0.5, n)
    predicted = rng.integers(0, 3, n)
    right = rng.random(n) < 0.9 - 1.4 * epistemic
    y_true = np.where(right, predicted, (predicted + rng.integers(1, 3, n)) % 3).astype(float)
    y_true[rng.random(n) < 0.01] = np.nan
    probabilities = np.full((n, 3), 0.2)
    probabilities[np.arange(n), predicted] = 0.6

    spread = rng.uniform(0.05, 0.8, n)
    log_vol = rng.normal(-4.5, 0.3, n)
    fwd_vol = np.exp(log_vol + spread * rng.normal(size=n))
    fwd_vol[rng.random(n) < 0.01] = np.nan

    confidence = rng.uniform(0.34, 0.9, n)
    direction = rng.choice([-1.0, 1.0], n)
    position = direction * np.clip((confidence - 0.4) / 0.5, 0.0, 1.0)
    hit = rng.random(n) < np.minimum(0.2 + confidence, 1.0)
    fwd_return = direction * np.where(hit, 1.0, -1.0) * rng.uniform(0.001, 0.02, n)
    fwd_return[rng.random(n) < 0.01] = np.nan

    frame = pd.DataFrame(
        {
            "p_sell": probabilities[:, 0],
            "p_hold": probabilities[:, 1],
            "p_buy": probabilities[:, 2],
            "log_vol": log_vol,
            "log_vol_var": spread**2,
            "confidence": confidence,
            "y_true": y_true,
            "fwd_return": fwd_return,
            "fwd_vol": fwd_vol,
            "sigma": np.full(n, 0.01),
            "fold": late.astype(int),
            "position": position,
            "epistemic": epistemic,
            "aleatoric": rng.uniform(0.8, 1.1, n),
            "epistemic_vol": spread**2 * 0.3,
            "aleatoric_vol": spread**2 * 0.7,
        },
        index=index,
    )
    for member in MEMBERS:
        frame[f"w_{member}"] = np.where(late, LATE_WEIGHTS[member], EARLY_WEIGHTS[member])
    for member in MEMBERS:  # the members' own predictions, which the report ignores
        noisy = probabilities + rng.uniform(0.0, 0.1, (n, 3))
        noisy /= noisy.sum(axis=1, keepdims=True)
        for column, values in (
            ("p_sell", noisy[:, 0]),
            ("p_hold", noisy[:, 1]),
            ("p_buy", noisy[:, 2]),
            ("log_vol", log_vol + rng.normal(0.0, 0.1, n)),
            ("log_vol_var", spread**2),
            ("confidence", noisy.max(axis=1)),
        ):
            frame[f"{member}__{column}"] = values
    return frame


def member_predictions(frame: pd.DataFrame, member: str) -> pd.DataFrame:
    """One member's predictions as a model of its own (as ``evaluation.run.member_frames`` builds them)."""
    own = {f"{member}__{c}": c for c in ("p_sell", "p_hold", "p_buy", "log_vol", "log_vol_var", "confidence")}
    shared = ["y_true", "fwd_return", "fwd_vol", "sigma", "fold", "position"]
    return frame[list(own)].rename(columns=own).join(frame[shared])
