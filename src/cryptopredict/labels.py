"""Targets. Every label looks FORWARD from the close of bar t (the decision time of feature row t).

Horizons are counted in bars on the absolute time grid: the label at t uses the bars stamped
t + 1·bar … t + h·bar. When one of them is missing (an exchange outage), the label is NaN rather than
silently stretching over more time.

- ``fwd_logret_h{h}``: log(close[t + h·bar] / close[t]) — looks at closes t and t+h.
- ``fwd_rvol_h{h}``: sqrt(Σ_{k=1..h} log(close[t+k]/close[t+k-1])²) — looks at closes t … t+h.
- direction (SELL=0 / HOLD=1 / BUY=2): the forward return against a dead zone of ``k · σ_t · √h``, where σ_t
  is the trailing volatility of 1-bar log returns known at t (closes t-w … t) and ``k`` is fitted on a
  training span only (:class:`DirectionLabeler`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SELL, HOLD, BUY = 0, 1, 2
CLASS_NAMES = ("SELL", "HOLD", "BUY")


def _on_grid(bars: pd.DataFrame, bar: pd.Timedelta) -> pd.Series:
    """Close indexed by timestamp on the dense grid from first to last bar (missing bars → NaN)."""
    close = bars.set_index("timestamp")["close"].astype(float)
    grid = pd.date_range(close.index[0], close.index[-1], freq=bar)
    return close.reindex(grid)


def forward_log_return(bars: pd.DataFrame, horizon: int, bar: pd.Timedelta) -> pd.Series:
    """``fwd_logret_h{h}`` per bar of ``bars`` (aligned to its rows): log close[t+h·bar] − log close[t]."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 bar, got {horizon}")
    logc = np.log(_on_grid(bars, bar))
    fwd = logc.shift(-horizon) - logc
    return pd.Series(fwd.reindex(bars["timestamp"]).to_numpy(), index=bars.index, name=f"fwd_logret_h{horizon}")


def forward_realised_vol(bars: pd.DataFrame, horizon: int, bar: pd.Timedelta) -> pd.Series:
    """``fwd_rvol_h{h}``: realised volatility of the next h one-bar log returns (NaN if any is missing)."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 bar, got {horizon}")
    r2 = np.log(_on_grid(bars, bar)).diff() ** 2
    # sum of r²[t+1..t+h] = rolling sum ending at t+h, moved back to t
    fwd = np.sqrt(r2.rolling(horizon, min_periods=horizon).sum().shift(-horizon))
    return pd.Series(fwd.reindex(bars["timestamp"]).to_numpy(), index=bars.index, name=f"fwd_rvol_h{horizon}")


def trailing_vol(bars: pd.DataFrame, window: int, bar: pd.Timedelta) -> pd.Series:
    """σ_t: std of the 1-bar log returns ending at t (closes t-window … t), known at the close of t."""
    r = np.log(_on_grid(bars, bar)).diff()
    vol = r.rolling(window, min_periods=max(2, window // 2)).std()
    return pd.Series(vol.reindex(bars["timestamp"]).to_numpy(), index=bars.index, name=f"trailing_vol_{window}")


def make_labels(bars: pd.DataFrame, horizon: int, bar: pd.Timedelta, vol_window: int = 168) -> pd.DataFrame:
    """Raw labels for one symbol: timestamp, fwd_logret, fwd_rvol, and the trailing σ used by the dead zone."""
    return pd.DataFrame({
        "timestamp": bars["timestamp"].to_numpy(),
        f"fwd_logret_h{horizon}": forward_log_return(bars, horizon, bar).to_numpy(),
        f"fwd_rvol_h{horizon}": forward_realised_vol(bars, horizon, bar).to_numpy(),
        f"trailing_vol_{vol_window}": trailing_vol(bars, vol_window, bar).to_numpy(),
    })


@dataclass
class DirectionLabeler:
    """Three-class direction with a volatility-scaled dead zone; ``k`` is fitted on training rows only.

    ``fit`` picks k so that a share ``hold_share`` of the TRAINING rows falls in the dead zone
    (|r| ≤ k·σ·√h); ``transform`` applies that fixed k anywhere (validation, test, live).
    """

    horizon: int
    hold_share: float = 1 / 3
    k: float | None = None

    def _ratio(self, fwd_return: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        return np.abs(fwd_return) / (sigma * np.sqrt(self.horizon))

    def fit(self, fwd_return: pd.Series | np.ndarray, sigma: pd.Series | np.ndarray) -> DirectionLabeler:
        if not 0 < self.hold_share < 1:
            raise ValueError(f"hold_share must be in (0, 1), got {self.hold_share}")
        ratio = self._ratio(np.asarray(fwd_return, float), np.asarray(sigma, float))
        ratio = ratio[np.isfinite(ratio)]
        if ratio.size == 0:
            raise ValueError("no finite (return, sigma) pairs to fit the dead zone on")
        self.k = float(np.quantile(ratio, self.hold_share))
        return self

    def transform(self, fwd_return: pd.Series | np.ndarray, sigma: pd.Series | np.ndarray) -> np.ndarray:
        """Classes as float (NaN where the return or σ is missing): 0 SELL, 1 HOLD, 2 BUY."""
        if self.k is None:
            raise RuntimeError("DirectionLabeler.transform before fit")
        r, s = np.asarray(fwd_return, float), np.asarray(sigma, float)
        band = self.k * s * np.sqrt(self.horizon)
        out = np.where(r > band, BUY, np.where(r < -band, SELL, HOLD)).astype(float)
        out[~(np.isfinite(r) & np.isfinite(s))] = np.nan
        return out

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"horizon": self.horizon, "hold_share": self.hold_share, "k": self.k}))

    @classmethod
    def load(cls, path: Path) -> DirectionLabeler:
        return cls(**json.loads(path.read_text()))
