"""Post-hoc calibration of class probabilities and of stated confidence, fitted on held-out rows.

- :class:`TemperatureScaler` (Guo et al. 2017, "On calibration of modern neural networks"): one scalar
  T > 0 divides the logits, p = softmax(z / T), T fitted by minimising the negative log-likelihood of the
  labels. T > 1 softens an overconfident model, T < 1 sharpens an underconfident one; the predicted class
  never changes. Log-probabilities are valid logits (softmax is shift-invariant per row).
- :class:`IsotonicConfidence` (Zadrozny & Elkan 2002): a monotone map from a stated confidence to the
  observed frequency of being right, so that "confidence 0.7" means right 70 % of the time.
  :func:`isotonic_if_better` keeps it only where it lowers the Brier score on later, held-out rows: on a
  few hundred rows it is mostly noise once the temperature is right.

Both persist as small JSON-able dicts (no pickles). Expected calibration error lives in
``cryptopredict.evaluation.metrics.expected_calibration_error`` (models never import evaluation).
"""

from __future__ import annotations

import math
from typing import Any, Self

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.isotonic import IsotonicRegression

# T is searched on log T in this range: T in [0.02, 50] covers any sane model, and keeps the bounded
# optimiser away from the degenerate T → 0 / T → ∞ limits
LOG_T_BOUNDS = (math.log(0.02), math.log(50.0))


def _labelled_logits(logits: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    """Rows with a valid label (finite, in 0..k-1; NaN and -1 mean unknown): (logits, int labels)."""
    z = np.asarray(logits, dtype=float)
    if z.ndim != 2:
        raise ValueError(f"logits must be (n, k), got shape {z.shape}")
    labels = np.asarray(y, dtype=float).ravel()
    if len(labels) != len(z):
        raise ValueError(f"{len(z)} logit rows but {len(labels)} labels")
    keep = np.isfinite(labels) & (labels >= 0)
    if (labels[keep] >= z.shape[1]).any() or (labels[keep] != np.round(labels[keep])).any():
        raise ValueError(f"labels must be integers in 0..{z.shape[1] - 1} (NaN or -1 for unknown)")
    if not np.isfinite(z[keep]).all():
        raise ValueError("logits must be finite on labelled rows")
    return z[keep], labels[keep].astype(np.int64)


def _nll(log_t: float, z: np.ndarray, y: np.ndarray) -> float:
    logp = log_softmax(z / math.exp(log_t), axis=1)
    return float(-np.mean(logp[np.arange(len(y)), y]))


class TemperatureScaler:
    """p = softmax(logits / T) with T > 0 fitted by NLL on held-out labelled rows; T = 1 before fit."""

    def __init__(self, temperature: float = 1.0) -> None:
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {temperature}")
        self.temperature = float(temperature)
        self.fitted = False

    def fit(self, logits: np.ndarray, y: np.ndarray) -> Self:
        """Minimise mean NLL over log T (bounded 1-D search). ``logits``: (n, k) logits or log-probs;
        ``y``: (n,) class labels, NaN or -1 where unknown (ignored)."""
        z, labels = _labelled_logits(logits, y)
        if len(labels) == 0:
            raise ValueError("no labelled rows to fit the temperature on")
        res = minimize_scalar(_nll, bounds=LOG_T_BOUNDS, args=(z, labels), method="bounded",
                              options={"xatol": 1e-6})
        self.temperature = float(math.exp(res.x))
        self.fitted = True
        return self

    def transform(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (n, k); rows sum to 1."""
        z = np.asarray(logits, dtype=float)
        if z.ndim != 2:
            raise ValueError(f"logits must be (n, k), got shape {z.shape}")
        return softmax(z / self.temperature, axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "temperature", "temperature": self.temperature, "fitted": self.fitted}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        if d.get("kind") != "temperature":
            raise ValueError(f"not a TemperatureScaler dict: kind={d.get('kind')!r}")
        out = cls(float(d["temperature"]))
        out.fitted = bool(d.get("fitted", True))
        return out


class IsotonicConfidence:
    """Monotone (non-decreasing) map confidence → P(correct), fitted by isotonic regression.

    The fitted step function is kept as its thresholds (``x_thresholds``, ``y_thresholds``) and applied
    by linear interpolation between them, clipped to the fitted range at both ends — what scikit-learn's
    ``IsotonicRegression(out_of_bounds="clip")`` does — so a round trip through :meth:`to_dict` transforms
    identically. Before fit it is the identity.
    """

    def __init__(self) -> None:
        self.x_thresholds: np.ndarray | None = None
        self.y_thresholds: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        return self.x_thresholds is not None

    def fit(self, confidence: np.ndarray, correct: np.ndarray) -> Self:
        """``confidence``: (n,) stated confidence in [0, 1]; ``correct``: (n,) whether the prediction
        was right. Rows with non-finite confidence are ignored."""
        conf = np.asarray(confidence, dtype=float).ravel()
        ok = np.asarray(correct).ravel()
        if ok.shape != conf.shape:
            raise ValueError(f"confidence {conf.shape} and correct {ok.shape} are not aligned")
        keep = np.isfinite(conf)
        if not keep.any():
            raise ValueError("no finite confidences to fit the isotonic map on")
        iso = IsotonicRegression(out_of_bounds="clip", increasing=True, y_min=0.0, y_max=1.0)
        iso.fit(conf[keep], ok[keep].astype(float))
        self.x_thresholds = np.asarray(iso.X_thresholds_, dtype=float)
        self.y_thresholds = np.asarray(iso.y_thresholds_, dtype=float)
        return self

    def transform(self, confidence: np.ndarray) -> np.ndarray:
        """Calibrated confidence in [0, 1], same shape as the input."""
        conf = np.asarray(confidence, dtype=float)
        if self.x_thresholds is None or self.y_thresholds is None:
            return np.clip(conf, 0.0, 1.0)
        return np.clip(np.interp(conf, self.x_thresholds, self.y_thresholds), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "isotonic",
                "x_thresholds": None if self.x_thresholds is None else self.x_thresholds.tolist(),
                "y_thresholds": None if self.y_thresholds is None else self.y_thresholds.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        if d.get("kind") != "isotonic":
            raise ValueError(f"not an IsotonicConfidence dict: kind={d.get('kind')!r}")
        out = cls()
        if d.get("x_thresholds") is not None:
            out.x_thresholds = np.asarray(d["x_thresholds"], dtype=float)
            out.y_thresholds = np.asarray(d["y_thresholds"], dtype=float)
            if out.x_thresholds.shape != out.y_thresholds.shape or out.x_thresholds.ndim != 1:
                raise ValueError("isotonic thresholds must be two 1-D lists of equal length")
        return out


def isotonic_if_better(confidence: np.ndarray, correct: np.ndarray,
                       holdout_fraction: float = 0.5) -> tuple[IsotonicConfidence | None, dict[str, float]]:
    """Isotonic recalibration only where it helps out of sample.

    Isotonic regression is a step function with one free level per block; fitted on a few hundred rows it
    adds more estimation noise than it removes bias when the confidence is already nearly calibrated (e.g.
    after temperature scaling). So: fit it on the earlier ``1 − holdout_fraction`` of the rows (in the given
    order — time order), and compare the Brier score of the confidence, mean (conf − correct)², on the later
    rows with and without it. If it is lower with it, return an isotonic map refitted on ALL rows, else None
    (keep the confidence as it is). The scores are returned for the record.
    """
    conf = np.asarray(confidence, dtype=float).ravel()
    ok = np.asarray(correct).ravel().astype(float)
    if ok.shape != conf.shape:
        raise ValueError(f"confidence {conf.shape} and correct {ok.shape} are not aligned")
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    cut = int(round(len(conf) * (1 - holdout_fraction)))
    if cut < 1 or cut >= len(conf):
        raise ValueError(f"{len(conf)} rows are too few to split for the isotonic check")
    early = IsotonicConfidence().fit(conf[:cut], ok[:cut])
    brier_identity = float(np.mean((np.clip(conf[cut:], 0, 1) - ok[cut:]) ** 2))
    brier_isotonic = float(np.mean((early.transform(conf[cut:]) - ok[cut:]) ** 2))
    scores = {"brier_identity": brier_identity, "brier_isotonic": brier_isotonic, "n_fit": float(cut),
              "n_holdout": float(len(conf) - cut)}
    if brier_isotonic < brier_identity:
        return IsotonicConfidence().fit(conf, ok), scores
    return None, scores


__all__ = ["IsotonicConfidence", "TemperatureScaler", "isotonic_if_better"]
