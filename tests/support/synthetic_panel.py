"""A small synthetic panel whose labels depend on each row's past features (a known, learnable answer)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cryptopredict.models.base import Fold


def synthetic_panel(n_bars: int = 600, symbols: tuple[str, ...] = ("AAA", "BBB", "CCC"), n_features: int = 6,
                    late: int = 100, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(X, labels, correlations). The last symbol starts ``late`` bars after the others. Class: BUY when
    the mean of f0 over the row's bar and the 2 before is > 0.3, SELL when < −0.3, else HOLD; realised vol
    = exp(0.5·f1 − 4). labels columns: y, fwd_return, fwd_vol, sigma."""
    rng = np.random.default_rng(seed)
    times = pd.date_range("2023-01-01", periods=n_bars, freq="h", tz="UTC")
    xs, ls = [], []
    for k, sym in enumerate(symbols):
        start = late if k == len(symbols) - 1 else 0
        t = times[start:]
        f = rng.standard_normal((len(t), n_features)).astype(np.float32)
        m = pd.Series(f[:, 0]).rolling(3, min_periods=1).mean().to_numpy()
        y = np.where(m > 0.3, 2, np.where(m < -0.3, 0, 1)).astype(float)
        vol = np.exp(0.5 * f[:, 1] - 4.0)
        idx = pd.MultiIndex.from_arrays([[sym] * len(t), t], names=["symbol", "timestamp"])
        xs.append(pd.DataFrame(f, index=idx, columns=[f"f{i}" for i in range(n_features)]))
        ls.append(pd.DataFrame({"y": y, "fwd_return": (y - 1) * 0.01, "fwd_vol": vol,
                                "sigma": np.abs(rng.standard_normal(len(t))) * 0.01 + 0.005}, index=idx))
    X = pd.concat(xs)
    labels = pd.concat(ls).reindex(X.index)
    order = np.lexsort((X.index.get_level_values("symbol"), X.index.get_level_values("timestamp")))
    X, labels = X.iloc[order], labels.iloc[order]
    corr = pd.DataFrame({"timestamp": times, "symbol_a": symbols[0], "symbol_b": symbols[1], "corr": 0.8})
    return X, labels, corr


def synthetic_fold(X: pd.DataFrame, labels: pd.DataFrame, mask: np.ndarray, name: str,
                   corr: pd.DataFrame | None = None, horizon: int = 1) -> Fold:
    m = np.asarray(mask, dtype=bool)
    lab = labels[m]
    return Fold(X[m], lab["y"], lab["fwd_return"], lab["fwd_vol"], lab["sigma"], horizon, name, panel=X,
                correlations=corr)
