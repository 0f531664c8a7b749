"""The model interface every predictor implements — baselines and deep ensemble alike — and its data types.

Rows are (symbol, timestamp) pairs: ``timestamp`` is the bar's open time and the row's features are known
at that bar's close (see ``features/base.py``); labels look forward from that close over ``horizon`` bars.
Direction classes: 0 = SELL, 1 = HOLD, 2 = BUY (``labels.py``).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

N_CLASSES = 3


@dataclass
class Fold:
    """One slice of data a model fits on or predicts for. All series share ``X.index``.

    ``X``: features, MultiIndex (symbol, timestamp), float columns, unscaled (a model fits its own scaler
    on its training Fold). ``y``: direction class (float, NaN where unknown) — set by the walk-forward
    runner after fitting the dead zone on the training part. ``fwd_return``: log return over the horizon
    (for the baselines' regression targets and for backtests). ``fwd_vol``: realised volatility over the
    horizon. ``sigma``: trailing volatility known at t.

    ``panel`` (optional): the whole feature table (every bar of every symbol, same columns as ``X``) that a
    windowed model reads the PAST of each row from — a row at t may use panel rows at or before t only
    (``training/windows.py`` enforces it; tests prove it). ``correlations`` (optional): the lake's long
    correlation table (timestamp, symbol_a, symbol_b, corr), the graph model's edges as of each bar.
    """

    X: pd.DataFrame
    y: pd.Series
    fwd_return: pd.Series
    fwd_vol: pd.Series
    sigma: pd.Series
    horizon: int
    name: str = ""
    panel: pd.DataFrame | None = field(default=None, repr=False)
    correlations: pd.DataFrame | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.X.index, pd.MultiIndex) or list(self.X.index.names) != ["symbol", "timestamp"]:
            raise ValueError("Fold.X must be indexed by (symbol, timestamp)")
        for label in ("y", "fwd_return", "fwd_vol", "sigma"):
            s = getattr(self, label)
            if not s.index.equals(self.X.index):
                raise ValueError(f"Fold.{label} is not aligned with Fold.X")

    def __len__(self) -> int:
        return len(self.X)

    def subset(self, mask: np.ndarray | pd.Series, name: str | None = None) -> Fold:
        m = np.asarray(mask, dtype=bool)
        return Fold(self.X[m], self.y[m], self.fwd_return[m], self.fwd_vol[m], self.sigma[m], self.horizon,
                    name if name is not None else self.name, self.panel, self.correlations)

    @property
    def timestamps(self) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(self.X.index.get_level_values("timestamp"))


@dataclass
class Predictions:
    """A model's output for the rows of a Fold, in the same order.

    ``proba``: (n, 3) probabilities of SELL/HOLD/BUY (rows sum to 1). ``log_vol``: predicted log realised
    volatility over the horizon; ``log_vol_var``: its predicted variance (aleatoric, in log space).
    ``confidence``: calibrated probability that the predicted class is right (max proba unless the model
    calibrates otherwise). ``epistemic`` / ``aleatoric``: variance decomposition where the model has one.
    """

    index: pd.MultiIndex
    proba: np.ndarray
    log_vol: np.ndarray
    log_vol_var: np.ndarray
    confidence: np.ndarray
    model: str
    epistemic: np.ndarray | None = None
    aleatoric: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.index)
        self.proba = np.asarray(self.proba, dtype=float)
        if self.proba.shape != (n, N_CLASSES):
            raise ValueError(f"proba must be ({n}, 3), got {self.proba.shape}")
        if n and not np.allclose(self.proba.sum(axis=1), 1.0, atol=1e-6):
            raise ValueError("class probabilities must sum to 1 per row")
        for name in ("log_vol", "log_vol_var", "confidence"):
            arr = np.asarray(getattr(self, name), dtype=float)
            if arr.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
            setattr(self, name, arr)

    @property
    def predicted_class(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    @property
    def expected_direction(self) -> np.ndarray:
        """P(BUY) − P(SELL), in [-1, 1]."""
        return self.proba[:, 2] - self.proba[:, 0]

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame({"p_sell": self.proba[:, 0], "p_hold": self.proba[:, 1], "p_buy": self.proba[:, 2],
                           "log_vol": self.log_vol, "log_vol_var": self.log_vol_var,
                           "confidence": self.confidence}, index=self.index)
        if self.epistemic is not None:
            df["epistemic"] = self.epistemic
        if self.aleatoric is not None:
            df["aleatoric"] = self.aleatoric
        for key, values in self.extras.items():
            df[key] = np.asarray(values)
        return df.assign(model=self.model)


@runtime_checkable
class Forecaster(Protocol):
    """Fit on a training Fold (scalers, thresholds and weights from it only), predict any Fold, persist
    as weights + a JSON manifest (no pickles)."""

    name: str

    def fit(self, train: Fold, valid: Fold | None = None) -> None: ...

    def predict(self, data: Fold) -> Predictions: ...

    def save(self, directory: Path) -> None: ...

    @classmethod
    def load(cls, directory: Path) -> Forecaster: ...


# name -> "module:Class"; adding a model is one file and one line here
MODEL_REGISTRY: dict[str, str] = {
    "majority": "cryptopredict.models.baselines:MajorityClass",
    "persistence": "cryptopredict.models.baselines:Persistence",
    "momentum": "cryptopredict.models.baselines:Momentum",
    "logistic": "cryptopredict.models.baselines:LogisticBaseline",
    "lightgbm": "cryptopredict.models.baselines:LightGBMBaseline",
    "ensemble": "cryptopredict.models.ensemble:DeepEnsemble",
    "transformer": "cryptopredict.models.ensemble:TransformerForecaster",
    "bilstm": "cryptopredict.models.ensemble:BiLSTMForecaster",
    "cnn_lstm": "cryptopredict.models.ensemble:CNNLSTMForecaster",
    "gnn": "cryptopredict.models.ensemble:GraphForecaster",
}


def model_class(name: str) -> type:
    """The class registered under ``name``; a ValueError listing the known names otherwise."""
    try:
        module, cls = MODEL_REGISTRY[name].split(":")
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODEL_REGISTRY))}") from None
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, **kwargs: object) -> Forecaster:
    return model_class(name)(**kwargs)


def write_manifest(directory: Path, manifest: dict) -> None:
    """The JSON manifest beside a model's weights (atomic)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    tmp.replace(directory / "manifest.json")


def read_manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())
