"""The evaluation dataset: the feature table and labels of every symbol, read from the lake as one panel
indexed by (symbol, timestamp), and cut into Folds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cryptopredict.data.lake import Lake
from cryptopredict.labels import DirectionLabeler
from cryptopredict.models.base import Fold


def load_panel(lake: Lake, symbols: list[str], horizon: int, vol_window: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features, labels) for ``symbols``, both indexed by (symbol, timestamp), sorted by timestamp then
    symbol. Labels columns: fwd_return, fwd_vol, sigma. Rows without a feature row are absent."""
    feats, labs = [], []
    for s in symbols:
        f = lake.read_frame("features", {"symbol": s})
        lab = lake.read_frame("labels", {"symbol": s})
        if f.empty or lab.empty:
            raise ValueError(f"no features/labels for {s} in the lake {lake.root!r}; run `cryptopredict features`")
        ret_col, vol_col, sig_col = f"fwd_logret_h{horizon}", f"fwd_rvol_h{horizon}", f"trailing_vol_{vol_window}"
        missing = [c for c in (ret_col, vol_col, sig_col) if c not in lab.columns]
        if missing:
            raise ValueError(f"labels of {s} lack {missing}: rebuild features with horizon={horizon}, "
                             f"label_vol_window={vol_window}")
        f = f.drop(columns=["symbol"], errors="ignore").assign(symbol=s)
        lab = lab[["timestamp", ret_col, vol_col, sig_col]].rename(
            columns={ret_col: "fwd_return", vol_col: "fwd_vol", sig_col: "sigma"}).assign(symbol=s)
        feats.append(f)
        labs.append(lab)
    X = pd.concat(feats, ignore_index=True).set_index(["symbol", "timestamp"])
    y = pd.concat(labs, ignore_index=True).set_index(["symbol", "timestamp"]).reindex(X.index)
    order = np.lexsort((X.index.get_level_values("symbol"), X.index.get_level_values("timestamp")))
    return X.iloc[order], y.iloc[order]


def make_fold(X: pd.DataFrame, labels: pd.DataFrame, mask: np.ndarray, labeler: DirectionLabeler,
              horizon: int, name: str, correlations: pd.DataFrame | None = None) -> Fold:
    """A Fold of the rows in ``mask`` with direction classes from an already fitted ``labeler``; the whole
    ``X`` rides along as the fold's ``panel`` (windowed models read each row's past from it)."""
    m = np.asarray(mask, dtype=bool)
    lab = labels[m]
    y = pd.Series(labeler.transform(lab["fwd_return"], lab["sigma"]), index=lab.index, name="y")
    return Fold(X[m], y, lab["fwd_return"], lab["fwd_vol"], lab["sigma"], horizon, name, panel=X,
                correlations=correlations)
