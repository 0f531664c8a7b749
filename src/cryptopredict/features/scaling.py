"""Feature scaling fitted on a training span only, applied forward, saved with the model that used it.

The feature table in the lake is never scaled: a scaler belongs to one model fit (one walk-forward fold's
training part), so it lives in that model's directory as JSON (no pickles).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class RobustScaler:
    """(x − median) / IQR per column, fitted on training rows; values clipped to ±``clip`` afterwards.

    Robust statistics because crypto features are heavy-tailed; a column with zero IQR in training is
    scaled by 1 (centred only). NaNs stay NaN (models decide how to treat them).
    """

    clip: float = 10.0
    center: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)

    def fit(self, train: pd.DataFrame) -> RobustScaler:
        if train.empty:
            raise ValueError("cannot fit a scaler on an empty training span")
        q = train.astype(float).quantile([0.25, 0.5, 0.75])
        iqr = (q.loc[0.75] - q.loc[0.25]).replace(0.0, np.nan).fillna(1.0)
        self.center = {c: float(v) for c, v in q.loc[0.5].fillna(0.0).items()}
        self.scale = {c: float(v) for c, v in iqr.items()}
        return self

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        if not self.center:
            raise RuntimeError("RobustScaler.transform before fit")
        missing = [c for c in self.center if c not in frame.columns]
        if missing:
            raise ValueError(f"columns the scaler was fitted on are missing: {missing[:5]}")
        cols = list(self.center)
        out = (frame[cols].astype(float) - pd.Series(self.center)) / pd.Series(self.scale)
        return out.clip(-self.clip, self.clip)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"clip": self.clip, "center": self.center, "scale": self.scale}))

    @classmethod
    def load(cls, path: Path) -> RobustScaler:
        return cls(**json.loads(path.read_text()))
