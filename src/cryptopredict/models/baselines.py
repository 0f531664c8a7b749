"""Baseline forecasters: the bar every other model has to clear, evaluated on the same purged folds.

All of them fit on the training Fold only (class frequencies, hit rates, scalers, imputation, weights,
volatility regressions), predict any Fold, and persist as plain files — JSON and LightGBM's text model
format, never pickles — beside a JSON manifest (``models.base.write_manifest``).

Time convention: a row at t (bar open time) holds features known at the close of bar t; targets look
forward from that close over ``horizon`` bars. Features used as signals are therefore already lagged:
``ta_roc_1`` is the percent change from close t−1 to close t, known at the close of t.

Volatility. Every baseline predicts ``log_vol``, the log of the realised volatility of the next ``horizon``
one-bar log returns (``Fold.fwd_vol``), and ``log_vol_var``, the variance of its error in log space:

- :class:`MajorityClass`, :class:`Persistence`, :class:`Momentum`, :class:`LogisticBaseline`: ordinary least
  squares ``log fwd_vol = a + b · log(σ_t · √h)`` on training rows, σ_t being the trailing volatility known
  at t (``Fold.sigma``); ``log_vol_var`` is the training residual variance. Rows with no σ_t get the
  training mean of ``log fwd_vol`` and its training variance.
- :class:`LightGBMBaseline`: a second LightGBM model (L2 regression on the features plus ``log(σ_t·√h)``);
  ``log_vol_var`` is its residual variance on the validation Fold when one is given (training residuals of
  boosted trees are optimistic), else on the training Fold.

``confidence`` is the largest class probability (calibration is a later stage).
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from cryptopredict.features.scaling import RobustScaler
from cryptopredict.models.base import N_CLASSES, Fold, Predictions, read_manifest, write_manifest

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.json"


def _labelled(fold: Fold) -> tuple[np.ndarray, np.ndarray]:
    """Boolean mask of the rows with a class label, and those labels as int."""
    y = fold.y.to_numpy(dtype=float)
    mask = np.isfinite(y)
    labels = y[mask].astype(np.int64)
    if labels.size == 0:
        raise ValueError(f"fold {fold.name!r} has no labelled rows to fit on")
    if ((labels < 0) | (labels >= N_CLASSES)).any():
        raise ValueError("direction labels must be 0 (SELL), 1 (HOLD) or 2 (BUY)")
    return mask, labels


def _frequencies(labels: np.ndarray, alpha: float) -> np.ndarray:
    """Class frequencies with add-``alpha`` smoothing (no class gets probability 0)."""
    counts = np.bincount(labels, minlength=N_CLASSES).astype(float)
    return (counts + alpha) / (counts.sum() + N_CLASSES * alpha)


def _log_scaled_sigma(fold: Fold) -> np.ndarray:
    """log(σ_t · √h): the trailing volatility known at t, scaled to the horizon; NaN where unusable."""
    s = fold.sigma.to_numpy(dtype=float) * np.sqrt(fold.horizon)
    out = np.full(s.shape, np.nan)
    ok = np.isfinite(s) & (s > 0)
    out[ok] = np.log(s[ok])
    return out


def _log_target_vol(fold: Fold) -> np.ndarray:
    """log fwd_vol, NaN where the forward volatility is missing or zero."""
    v = fold.fwd_vol.to_numpy(dtype=float)
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v) & (v > 0)
    out[ok] = np.log(v[ok])
    return out


class LogVolOLS:
    """``log fwd_vol = a + b · log(σ_t·√h)`` by least squares on training rows (see the module docstring)."""

    def __init__(self, a: float = 0.0, b: float = 0.0, resid_var: float = 0.0, mean: float = 0.0,
                 var: float = 0.0) -> None:
        self.a, self.b, self.resid_var, self.mean, self.var = a, b, resid_var, mean, var

    def fit(self, train: Fold) -> Self:
        x, y = _log_scaled_sigma(train), _log_target_vol(train)
        has_y = np.isfinite(y)
        if has_y.sum() < 2:
            raise ValueError("fewer than 2 training rows with a forward volatility")
        self.mean, self.var = float(y[has_y].mean()), float(y[has_y].var(ddof=1))
        both = has_y & np.isfinite(x)
        if both.sum() >= 3 and np.ptp(x[both]) > 0:
            self.b, self.a = (float(v) for v in np.polyfit(x[both], y[both], 1))
            resid = y[both] - (self.a + self.b * x[both])
            self.resid_var = float(resid.var(ddof=2))
        else:  # no usable σ: intercept only
            self.a, self.b, self.resid_var = self.mean, 0.0, self.var
        return self

    def predict(self, data: Fold) -> tuple[np.ndarray, np.ndarray]:
        """(log_vol, log_vol_var) per row."""
        x = _log_scaled_sigma(data)
        ok = np.isfinite(x)
        log_vol = np.where(ok, self.a + self.b * np.where(ok, x, 0.0), self.mean)
        return log_vol, np.where(ok, self.resid_var, self.var)

    def to_dict(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "resid_var": self.resid_var, "mean": self.mean, "var": self.var}


class _Baseline(ABC):
    """Shared plumbing: horizon check, Predictions assembly, the JSON weights + manifest round trip.

    Constructor arguments listed in ``_param_names`` go to the manifest and rebuild the model on load.
    """

    name: ClassVar[str]
    _param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.horizon: int | None = None
        self.n_train = 0

    def init_params(self) -> dict[str, Any]:
        """The constructor arguments (JSON-able), as stored in the manifest."""
        return {p: getattr(self, p) for p in self._param_names}

    def fit(self, train: Fold, valid: Fold | None = None) -> None:
        """Fit on ``train`` only (``valid``, where a model uses it, only for early stopping)."""
        if valid is not None and valid.horizon != train.horizon:
            raise ValueError("train and valid Folds have different horizons")
        self.horizon, self.n_train = train.horizon, len(train)
        self._fit(train, valid)
        log.info("%s fitted on %d rows (fold %r, horizon %d bars, %s validation rows)", self.name, len(train),
                 train.name, train.horizon, "no" if valid is None else len(valid))

    def predict(self, data: Fold) -> Predictions:
        if self.horizon is None:
            raise RuntimeError("predict before fit")
        if data.horizon != self.horizon:
            raise ValueError(f"model fitted for a {self.horizon}-bar horizon, data has {data.horizon}")
        proba = self._proba(data)
        log_vol, log_vol_var = self._vol(data)
        return Predictions(index=data.X.index, proba=proba, log_vol=log_vol, log_vol_var=log_vol_var,
                           confidence=proba.max(axis=1, initial=0.0), model=self.name,
                           extras=self._extras(data))

    def save(self, directory: Path) -> None:
        if self.horizon is None:
            raise RuntimeError("save before fit")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / WEIGHTS_FILE).write_text(json.dumps(self._weights()))
        write_manifest(directory, {"model": self.name, "class": type(self).__name__,
                                   "format_version": FORMAT_VERSION, "params": self.init_params(),
                                   "horizon": self.horizon, "n_train": self.n_train,
                                   "files": [WEIGHTS_FILE, *self._extra_files()]})

    @classmethod
    def load(cls, directory: Path) -> Self:
        manifest = read_manifest(directory)
        if manifest.get("class") != cls.__name__ or manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory} holds a {manifest.get('class')} (format "
                             f"{manifest.get('format_version')}), not a {cls.__name__} "
                             f"(format {FORMAT_VERSION})")
        model = cls(**manifest["params"])
        model.horizon, model.n_train = int(manifest["horizon"]), int(manifest["n_train"])
        model._set_weights(json.loads((directory / WEIGHTS_FILE).read_text()), directory)
        return model

    def _extras(self, data: Fold) -> dict[str, np.ndarray]:
        return {}

    def _extra_files(self) -> list[str]:
        return []

    @abstractmethod
    def _fit(self, train: Fold, valid: Fold | None) -> None: ...

    @abstractmethod
    def _proba(self, data: Fold) -> np.ndarray: ...

    @abstractmethod
    def _vol(self, data: Fold) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def _weights(self) -> dict[str, Any]: ...

    @abstractmethod
    def _set_weights(self, weights: dict[str, Any], directory: Path) -> None: ...


class _OLSVolBaseline(_Baseline):
    """A baseline whose volatility forecast is :class:`LogVolOLS`; subclasses fit the direction part."""

    def __init__(self) -> None:
        super().__init__()
        self.vol = LogVolOLS()

    def _fit(self, train: Fold, valid: Fold | None) -> None:
        self._fit_direction(train)
        self.vol = LogVolOLS().fit(train)

    def _vol(self, data: Fold) -> tuple[np.ndarray, np.ndarray]:
        return self.vol.predict(data)

    def _weights(self) -> dict[str, Any]:
        return {"vol": self.vol.to_dict(), **self._direction_weights()}

    def _set_weights(self, weights: dict[str, Any], directory: Path) -> None:
        self.vol = LogVolOLS(**weights["vol"])
        self._set_direction_weights(weights)

    @abstractmethod
    def _fit_direction(self, train: Fold) -> None: ...

    @abstractmethod
    def _direction_weights(self) -> dict[str, Any]: ...

    @abstractmethod
    def _set_direction_weights(self, weights: dict[str, Any]) -> None: ...


class MajorityClass(_OLSVolBaseline):
    """The training class frequencies (add-``alpha`` smoothed) as the probabilities of every row."""

    name = "majority"
    _param_names = ("alpha",)

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.freq = np.full(N_CLASSES, 1.0 / N_CLASSES)

    def _fit_direction(self, train: Fold) -> None:
        self.freq = _frequencies(_labelled(train)[1], self.alpha)

    def _proba(self, data: Fold) -> np.ndarray:
        return np.tile(self.freq, (len(data), 1))

    def _direction_weights(self) -> dict[str, Any]:
        return {"freq": self.freq.tolist()}

    def _set_direction_weights(self, weights: dict[str, Any]) -> None:
        self.freq = np.asarray(weights["freq"], dtype=float)


class _SignRule(_OLSVolBaseline):
    """A rule on the sign of one trailing-return feature known at t.

    The rule's call (``extras["signal"]``) is BUY (2) when the feature is > 0, SELL (0) when < 0 and HOLD (1)
    when it is 0 or missing. The probabilities are the rule's training hit rates: for each of the three
    signal states, the add-``alpha`` smoothed class frequencies of the training rows in that state, i.e.
    P(class | signal) — so ``proba[signal]`` is the hit rate of that call. A rule with no skill in training
    therefore gets probabilities close to the class base rates, and its argmax may differ from its call.
    """

    _param_names = ("feature", "alpha")

    def __init__(self, feature: str, alpha: float = 1.0) -> None:
        super().__init__()
        self.feature, self.alpha = feature, alpha
        self.table = np.full((N_CLASSES, N_CLASSES), 1.0 / N_CLASSES)  # [signal state, class]

    def signal(self, data: Fold) -> np.ndarray:
        """The rule's call per row: 0 SELL, 1 HOLD (flat or missing feature), 2 BUY."""
        if self.feature not in data.X.columns:
            raise ValueError(f"{self.name} needs the feature column {self.feature!r}")
        x = data.X[self.feature].to_numpy(dtype=float)
        out = np.ones(len(x), dtype=np.int64)
        out[x > 0] = 2
        out[x < 0] = 0
        return out

    def _fit_direction(self, train: Fold) -> None:
        mask, labels = _labelled(train)
        state = self.signal(train)[mask]
        self.table = np.vstack([_frequencies(labels[state == s], self.alpha) for s in range(N_CLASSES)])
        log.debug("%s hit rates: SELL call %.3f, BUY call %.3f", self.name, self.table[0, 0],
                  self.table[2, 2])

    def _proba(self, data: Fold) -> np.ndarray:
        return self.table[self.signal(data)]

    def _extras(self, data: Fold) -> dict[str, np.ndarray]:
        return {"signal": self.signal(data)}

    def _direction_weights(self) -> dict[str, Any]:
        return {"table": self.table.tolist()}

    def _set_direction_weights(self, weights: dict[str, Any]) -> None:
        self.table = np.asarray(weights["table"], dtype=float)


class Persistence(_SignRule):
    """Tomorrow moves like the last bar: the sign of the last 1-bar return, by default ``ta_roc_1`` (percent
    change from close t−1 to close t, known at the close of t). Pass ``feature="ta_roc_<h>"`` for the last
    h-bar return instead."""

    name = "persistence"

    def __init__(self, feature: str = "ta_roc_1", alpha: float = 1.0) -> None:
        super().__init__(feature, alpha)


class Momentum(_SignRule):
    """Trend following: the sign of the trailing return over ``window`` bars, read from ``ta_roc_<window>``
    (percent change from close t−window to close t) unless ``feature`` names another column."""

    name = "momentum"
    _param_names = ("window", "feature", "alpha")

    def __init__(self, window: int = 24, feature: str | None = None, alpha: float = 1.0) -> None:
        if window < 1:
            raise ValueError(f"momentum window must be >= 1 bar, got {window}")
        super().__init__(feature or f"ta_roc_{window}", alpha)
        self.window = window


def _feature_columns(frame: pd.DataFrame, features: list[str] | None) -> list[str]:
    cols = list(frame.columns) if features is None else list(features)
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"feature columns missing from the data: {missing[:5]}")
    if not cols:
        raise ValueError("no feature columns")
    return cols


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class LogisticBaseline(_OLSVolBaseline):
    """Multinomial logistic regression (L2, strength 1/``C``) on RobustScaler-scaled features.

    Imputation, fitted on train: after scaling (centre = training median), a NaN becomes 0, i.e. the
    training median, and every column with a NaN in training gets a 0/1 missing-indicator column. The
    scaler, the indicator list and the coefficients are saved as JSON; prediction is the softmax of the
    saved linear scores, so a loaded model reproduces the fitted one exactly. Classes absent from training
    get probability 0. ``valid`` is not used.
    """

    name = "logistic"
    _param_names = ("C", "features", "max_iter", "clip")

    def __init__(self, C: float = 1.0, features: list[str] | None = None, max_iter: int = 2000,
                 clip: float = 10.0) -> None:
        super().__init__()
        self.C, self.features, self.max_iter, self.clip = C, features, max_iter, clip
        self.scaler = RobustScaler(clip=clip)
        self.columns: list[str] = []
        self.indicators: list[str] = []
        self.classes: list[int] = []
        self.coef = np.zeros((0, 0))
        self.intercept = np.zeros(0)

    def _design(self, data: Fold) -> np.ndarray:
        scaled = self.scaler.transform(data.X[self.columns]).to_numpy(dtype=float)
        flags = data.X[self.indicators].isna().to_numpy(dtype=float)
        return np.hstack([np.nan_to_num(scaled, nan=0.0), flags])

    def _fit_direction(self, train: Fold) -> None:
        self.columns = _feature_columns(train.X, self.features)
        self.scaler = RobustScaler(clip=self.clip).fit(train.X[self.columns])
        self.indicators = [c for c in self.columns if train.X[c].isna().any()]
        mask, labels = _labelled(train)
        design = self._design(train)[mask]
        if np.unique(labels).size < 2:
            raise ValueError("logistic baseline needs at least two classes in training")
        # Newton–Cholesky: a few exact Newton steps (the design has ~200 columns) reach the unique optimum
        # of this strictly convex objective; L-BFGS stopped short of it (on the shipped data's fold 0 a
        # higher objective after 254 iterations, probabilities up to 0.17 apart) and took 3× the time
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter, solver="newton-cholesky").fit(design, labels)
        self.classes = [int(c) for c in clf.classes_]
        if len(self.classes) == 2:  # binary: one score z for classes_[1]; softmax over (0, z) is the same
            self.coef = np.vstack([np.zeros_like(clf.coef_[0]), clf.coef_[0]])
            self.intercept = np.array([0.0, clf.intercept_[0]])
        else:
            self.coef, self.intercept = clf.coef_.copy(), clf.intercept_.copy()

    def _proba(self, data: Fold) -> np.ndarray:
        proba = np.zeros((len(data), N_CLASSES))
        if len(data):
            proba[:, self.classes] = _softmax(self._design(data) @ self.coef.T + self.intercept)
        return proba

    def _direction_weights(self) -> dict[str, Any]:
        return {"columns": self.columns, "indicators": self.indicators, "classes": self.classes,
                "coef": self.coef.tolist(), "intercept": self.intercept.tolist(),
                "scaler": {"clip": self.scaler.clip, "center": self.scaler.center,
                           "scale": self.scaler.scale}}

    def _set_direction_weights(self, weights: dict[str, Any]) -> None:
        self.columns, self.indicators = weights["columns"], weights["indicators"]
        self.classes = [int(c) for c in weights["classes"]]
        self.coef, self.intercept = np.asarray(weights["coef"]), np.asarray(weights["intercept"])
        self.scaler = RobustScaler(**weights["scaler"])


class LightGBMBaseline(_Baseline):
    """Multiclass gradient-boosted trees on the raw features (NaNs handled natively by LightGBM).

    With a ``valid`` Fold, boosting stops after ``early_stopping_rounds`` rounds without improvement of the
    validation multi-logloss and keeps the best iteration; without one it runs ``num_boost_round`` rounds.
    A second booster regresses log fwd_vol (see the module docstring). Deterministic for a given ``seed``
    and ``num_threads`` (``deterministic=True``, row-wise histograms). Both boosters are saved in
    LightGBM's text format (``direction.txt``, ``log_vol.txt``); the in-memory boosters are rebuilt from
    that text after fitting so that a loaded model predicts bit-identically. ``params`` overrides the
    default LightGBM parameters (not the seed, thread count or determinism settings).
    """

    name = "lightgbm"
    _param_names = ("seed", "num_threads", "num_boost_round", "early_stopping_rounds", "features", "params")
    DIRECTION_FILE = "direction.txt"
    VOL_FILE = "log_vol.txt"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 100, "feature_fraction": 0.8,
        "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
    }

    def __init__(self, seed: int = 0, num_threads: int = 1, num_boost_round: int = 1000,
                 early_stopping_rounds: int = 50, features: list[str] | None = None,
                 params: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.seed, self.num_threads = seed, num_threads
        self.num_boost_round, self.early_stopping_rounds = num_boost_round, early_stopping_rounds
        self.features, self.params = features, dict(params or {})
        self.columns: list[str] = []
        self.direction: lgb.Booster | None = None
        self.vol_booster: lgb.Booster | None = None
        self.vol_resid_var = 0.0

    def _lgb_params(self, objective: dict[str, Any]) -> dict[str, Any]:
        fixed = {"seed": self.seed, "num_threads": self.num_threads, "deterministic": True,
                 "force_row_wise": True, "verbosity": -1}
        return {**self.DEFAULTS, **self.params, **objective, **fixed}

    def _matrix(self, data: Fold, with_sigma: bool = False) -> np.ndarray:
        x = data.X[self.columns].to_numpy(dtype=float)
        return np.column_stack([x, _log_scaled_sigma(data)]) if with_sigma else x

    def _names(self, with_sigma: bool = False) -> list[str]:
        # generic names: LightGBM rejects some characters in feature names; the manifest keeps the real ones
        return [f"f{i}" for i in range(len(self.columns))] + (["log_sigma_h"] if with_sigma else [])

    def _train(self, objective: dict[str, Any], x: np.ndarray, y: np.ndarray, names: list[str],
               valid: tuple[np.ndarray, np.ndarray] | None) -> lgb.Booster:
        params = self._lgb_params(objective)
        dtrain = lgb.Dataset(x, y, feature_name=names, free_raw_data=True, params={"verbosity": -1})
        if valid is not None and len(valid[1]):
            dvalid = lgb.Dataset(valid[0], valid[1], reference=dtrain, feature_name=names)
            booster = lgb.train(params, dtrain, self.num_boost_round, valid_sets=[dvalid],
                                callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)])
            best = booster.best_iteration
        else:
            booster = lgb.train(params, dtrain, self.num_boost_round)
            best = booster.current_iteration()
        log.debug("%s %s: %d boosting rounds kept", self.name, objective["objective"], best)
        return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))

    def _fit(self, train: Fold, valid: Fold | None) -> None:
        self.columns = _feature_columns(train.X, self.features)
        mask, labels = _labelled(train)
        valid_dir = None
        if valid is not None:
            yv = valid.y.to_numpy(dtype=float)
            valid_dir = (self._matrix(valid)[np.isfinite(yv)], yv[np.isfinite(yv)])
        objective = {"objective": "multiclass", "num_class": N_CLASSES}
        self.direction = self._train(objective, self._matrix(train)[mask], labels.astype(float),
                                     self._names(), valid_dir)
        target = _log_target_vol(train)
        has = np.isfinite(target)
        if has.sum() < 2:
            raise ValueError("fewer than 2 training rows with a forward volatility")
        x_train = self._matrix(train, with_sigma=True)[has]
        valid_vol = None
        if valid is not None:
            tv = _log_target_vol(valid)
            valid_vol = (self._matrix(valid, with_sigma=True)[np.isfinite(tv)], tv[np.isfinite(tv)])
        self.vol_booster = self._train({"objective": "regression"}, x_train, target[has], self._names(True),
                                       valid_vol)
        use_valid = valid_vol is not None and len(valid_vol[1]) >= 2
        x_res, y_res = valid_vol if use_valid else (x_train, target[has])
        resid = y_res - self.vol_booster.predict(x_res, num_threads=self.num_threads)
        self.vol_resid_var = float(np.var(resid, ddof=1))

    def _boosters(self) -> tuple[lgb.Booster, lgb.Booster]:
        if self.direction is None or self.vol_booster is None:
            raise RuntimeError("LightGBM baseline used before fit")
        return self.direction, self.vol_booster

    def _proba(self, data: Fold) -> np.ndarray:
        if not len(data):
            return np.zeros((0, N_CLASSES))
        proba = self._boosters()[0].predict(self._matrix(data), num_threads=self.num_threads)
        return np.asarray(proba, dtype=float).reshape(-1, N_CLASSES)

    def _vol(self, data: Fold) -> tuple[np.ndarray, np.ndarray]:
        n = len(data)
        if not n:
            return np.zeros(0), np.zeros(0)
        x = self._matrix(data, with_sigma=True)
        log_vol = self._boosters()[1].predict(x, num_threads=self.num_threads)
        return np.asarray(log_vol, dtype=float), np.full(n, self.vol_resid_var)

    def _weights(self) -> dict[str, Any]:
        return {"columns": self.columns, "vol_resid_var": self.vol_resid_var}

    def _extra_files(self) -> list[str]:
        return [self.DIRECTION_FILE, self.VOL_FILE]

    def save(self, directory: Path) -> None:
        direction, vol = self._boosters()
        directory.mkdir(parents=True, exist_ok=True)
        direction.save_model(directory / self.DIRECTION_FILE)
        vol.save_model(directory / self.VOL_FILE)
        super().save(directory)

    def _set_weights(self, weights: dict[str, Any], directory: Path) -> None:
        self.columns, self.vol_resid_var = weights["columns"], float(weights["vol_resid_var"])
        self.direction = lgb.Booster(model_file=directory / self.DIRECTION_FILE)
        self.vol_booster = lgb.Booster(model_file=directory / self.VOL_FILE)
