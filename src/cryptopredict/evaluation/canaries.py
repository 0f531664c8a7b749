"""Leakage canaries: data with no learnable signal, run through the same pipeline as the real data.

(a) ``random_walk_bars``: each symbol's bars replaced by a driftless random walk in log price with that
    symbol's own hourly volatility (same timestamps, so the same gaps), consistent OHLC, and the real volumes in a
    shuffled order. Nothing in the past predicts the future.
(b) ``shuffle_within_folds``: the real features with the labels permuted inside each fold, which breaks
    any link between a row's features and its label while keeping the class shares.
A pipeline that reports skill on either has a leak.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def random_walk_bars(bars: pd.DataFrame, seed: int) -> pd.DataFrame:
    """A geometric random walk with the volatility of ``bars`` (one symbol), on the same timestamps."""
    rng = np.random.default_rng(seed)
    n = len(bars)
    sigma = float(np.log(bars["close"]).diff().std())
    # zero-median log steps: up and down equally likely. (A price martingale, −σ²/2 drift in log space,
    # makes "always SELL" right more than half the time: a learnable signal a canary must not contain.)
    steps = rng.normal(0.0, sigma, n)
    close = float(bars["close"].iloc[0]) * np.exp(np.cumsum(steps))
    open_ = np.concatenate([[float(bars["open"].iloc[0])], close[:-1]])
    wick = np.abs(rng.normal(0, sigma / 2, (2, n)))
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    out = bars.copy()
    out["open"], out["high"], out["low"], out["close"] = open_, high, low, close
    out["volume"] = rng.permutation(bars["volume"].to_numpy())
    out["source"] = f"canary:random_walk:seed={seed}"
    return out


def shuffle_within_folds(values: pd.Series | np.ndarray, fold_ids: np.ndarray, seed: int) -> np.ndarray:
    """``values`` permuted independently inside each fold (rows with the same ``fold_ids``)."""
    rng = np.random.default_rng(seed)
    v = np.asarray(values).copy()
    for f in np.unique(fold_ids):
        idx = np.flatnonzero(fold_ids == f)
        v[idx] = v[rng.permutation(idx)]
    return v
