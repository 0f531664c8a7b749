"""Windows of past features for the sequence and graph models, built from a fold's feature panel.

The panel (every bar of every symbol, ``Fold.panel``) becomes one dense float32 tensor [N symbols, T bars,
F features] on a common time grid, scaled by a ``RobustScaler`` fitted on the TRAINING rows only, NaN → 0.
A sample for row (symbol s, bar t) is ``values[s, t-L+1 … t]``: the bar itself and the L−1 before it —
all known at t's close, never anything later. Steps before a symbol's first bar (or missing bars) are
marked invalid and zeroed; the nets ignore them (``models/heads.py``).

The graph sample for bar t is every symbol's window at t, a node mask (the symbol has a feature row at t)
and the correlation matrix as of t (``correlations`` table; NaN where unknown).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cryptopredict.features.scaling import RobustScaler

N_TIME_FEATS = 4


def calendar_features(times: pd.DatetimeIndex) -> np.ndarray:
    """sin/cos of hour-of-day and day-of-week, float32 [T, 4]."""
    hour = times.hour.to_numpy() + times.minute.to_numpy() / 60.0
    dow = times.dayofweek.to_numpy() + hour / 24.0
    a, b = 2 * np.pi * hour / 24.0, 2 * np.pi * dow / 7.0
    return np.stack([np.sin(a), np.cos(a), np.sin(b), np.cos(b)], axis=1).astype(np.float32)


@dataclass
class Panel:
    """Dense, scaled features on a common grid. ``values`` [N, T, F], ``present`` [N, T] bool,
    ``time_feats`` [T, 4], ``corr`` [T, N, N] (NaN unknown) or None."""

    symbols: list[str]
    times: pd.DatetimeIndex
    columns: list[str]
    values: torch.Tensor
    present: torch.Tensor
    time_feats: torch.Tensor
    corr: torch.Tensor | None = None

    @property
    def n_features(self) -> int:
        return len(self.columns)

    def locate(self, index: pd.MultiIndex) -> tuple[np.ndarray, np.ndarray]:
        """(symbol position, time position) of (symbol, timestamp) rows; a KeyError names the first
        row that is not on the panel."""
        sym = pd.Index(self.symbols).get_indexer(index.get_level_values("symbol"))
        tpos = self.times.get_indexer(pd.DatetimeIndex(index.get_level_values("timestamp")))
        bad = (sym < 0) | (tpos < 0)
        if bad.any():
            raise KeyError(f"row {index[int(np.flatnonzero(bad)[0])]} is not on the feature panel")
        return sym.astype(np.int64), tpos.astype(np.int64)

    def windows(self, sym: torch.Tensor, tpos: torch.Tensor, window: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, F], time_feats [B, L, 4], valid [B, L] for rows (sym, tpos); position L−1 is bar t."""
        steps = torch.arange(-window + 1, 1)
        t = tpos[:, None] + steps[None, :]
        inside = t >= 0
        tc = t.clamp(min=0)
        s = sym[:, None].expand_as(tc)
        valid = inside & self.present[s, tc]
        x = self.values[s, tc] * valid[..., None]
        return x, self.time_feats[tc], valid

    def graph_windows(self, tpos: torch.Tensor, window: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """For bars tpos [B]: x [B, N, L, F], time_feats [B, L, 4], valid [B, N, L], node_mask [B, N],
        corr [B, N, N] (NaN where unknown or no correlation table)."""
        n = len(self.symbols)
        b = tpos.shape[0]
        sym = torch.arange(n).repeat(b)
        tt = tpos.repeat_interleave(n)
        x, tf, valid = self.windows(sym, tt, window)
        x = x.view(b, n, window, -1)
        valid = valid.view(b, n, window)
        node_mask = self.present[:, tpos].T.contiguous()
        if self.corr is None:
            corr = torch.full((b, n, n), float("nan"))
        else:
            corr = self.corr[tpos]
        return x, tf.view(b, n, window, -1)[:, 0], valid, node_mask, corr


def fit_scaler(train_X: pd.DataFrame, clip: float = 10.0) -> RobustScaler:
    """The feature scaler of one model fit, from the training rows only."""
    return RobustScaler(clip=clip).fit(train_X)


def build_panel(panel: pd.DataFrame, scaler: RobustScaler, *, end: pd.Timestamp | None = None,
                start: pd.Timestamp | None = None, correlations: pd.DataFrame | None = None) -> Panel:
    """The dense panel of ``panel`` (MultiIndex (symbol, timestamp)) scaled by ``scaler``; rows after
    ``end`` are dropped (a fit never even holds bars past its last training/validation row), and rows
    before ``start`` (a prediction needs only its rows' windows)."""
    ts_all = panel.index.get_level_values("timestamp")
    keep = np.ones(len(panel), dtype=bool)
    if end is not None:
        keep &= np.asarray(ts_all <= end)
    if start is not None:
        keep &= np.asarray(ts_all >= start)
    if not keep.all():
        panel = panel[keep]
    if panel.empty:
        raise ValueError("the feature panel is empty (nothing at or before the requested end)")
    scaled = scaler.transform(panel)
    symbols = sorted(panel.index.get_level_values("symbol").unique())
    ts = pd.DatetimeIndex(panel.index.get_level_values("timestamp"))
    step = pd.Series(ts.unique().sort_values()).diff().min()
    step = step if pd.notna(step) else pd.Timedelta(hours=1)
    times = pd.date_range(ts.min(), ts.max(), freq=step)
    sym = pd.Index(symbols).get_indexer(panel.index.get_level_values("symbol"))
    tpos = times.get_indexer(ts)
    if (tpos < 0).any():
        raise ValueError(f"feature rows off the {step} grid, e.g. {ts[tpos < 0][0]}")
    values = np.zeros((len(symbols), len(times), scaled.shape[1]), dtype=np.float32)
    present = np.zeros((len(symbols), len(times)), dtype=bool)
    values[sym, tpos] = np.nan_to_num(scaled.to_numpy(np.float32), nan=0.0)
    present[sym, tpos] = True
    corr = None if correlations is None else _corr_tensor(correlations, symbols, times)
    return Panel(symbols, times, list(scaled.columns), torch.from_numpy(values), torch.from_numpy(present),
                 torch.from_numpy(calendar_features(times)), corr)


def _corr_tensor(corr: pd.DataFrame, symbols: list[str], times: pd.DatetimeIndex) -> torch.Tensor:
    """[T, N, N] correlation as of each bar (symmetric, 1 on the diagonal, NaN unknown)."""
    n = len(symbols)
    out = np.full((len(times), n, n), np.nan, dtype=np.float32)
    if not corr.empty:
        inside = (corr["timestamp"] >= times[0]) & (corr["timestamp"] <= times[-1])
        corr = corr[inside.to_numpy()]
        t = times.get_indexer(pd.DatetimeIndex(corr["timestamp"]))
        a = pd.Index(symbols).get_indexer(corr["symbol_a"])
        b = pd.Index(symbols).get_indexer(corr["symbol_b"])
        ok = (t >= 0) & (a >= 0) & (b >= 0)
        v = corr["corr"].to_numpy(np.float32)[ok]
        out[t[ok], a[ok], b[ok]] = v
        out[t[ok], b[ok], a[ok]] = v
    idx = np.arange(n)
    out[:, idx, idx] = 1.0
    return torch.from_numpy(out)


@dataclass
class Targets:
    """Labels on the panel grid: direction class [N, T] (−1 unknown), log realised vol [N, T] (NaN
    unknown), trailing σ [N, T] (NaN unknown)."""

    y: torch.Tensor
    log_vol: torch.Tensor
    sigma: torch.Tensor


def grid_targets(panel: Panel, index: pd.MultiIndex, y: np.ndarray, fwd_vol: np.ndarray,
                 sigma: np.ndarray) -> Targets:
    """Scatter a fold's labels onto the panel grid (rows not in the fold stay unknown)."""
    n, t = len(panel.symbols), len(panel.times)
    sym, tpos = panel.locate(index)
    yy = np.full((n, t), -1, dtype=np.int64)
    lv = np.full((n, t), np.nan, dtype=np.float32)
    sg = np.full((n, t), np.nan, dtype=np.float32)
    y = np.asarray(y, dtype=float)
    known = np.isfinite(y)
    yy[sym[known], tpos[known]] = y[known].astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lv[sym, tpos] = np.where(np.asarray(fwd_vol) > 0, np.log(np.asarray(fwd_vol, dtype=float)), np.nan)
    sg[sym, tpos] = np.asarray(sigma, dtype=np.float32)
    return Targets(torch.from_numpy(yy), torch.from_numpy(lv), torch.from_numpy(sg))
