"""Risk manager: class probabilities and predicted volatility in, target positions in [-1, 1] out.

Arrays are (T, N) (time × asset; ``proba`` (T, N, 3) in SELL/HOLD/BUY order) or (T,) for one asset
(``proba`` (T, 3)). Row t uses only what is known at the close of bar t; the result row t is the target
the backtester fills at the next open (``evaluation/backtest.py``). Position units: fraction of equity.

Units. ``log_vol`` is the predicted log realised volatility over the prediction horizon of ``h`` bars
(``Predictions.log_vol``, σ_h of log returns, not annualised); ``log_vol_var`` its variance in log space.
The predicted horizon variance is the log-normal mean ``V = E[σ_h²] = exp(2·log_vol + 2·log_vol_var)`` and
the predicted vol ``σ_h = sqrt(V)``; per bar ``σ_bar = σ_h / sqrt(h)``, annualised
``σ_ann = σ_bar · sqrt(bars_per_year)`` (hourly bars: 24 · 365 = 8760 bars/year). Expected returns are
simple returns over the horizon (fractions, not bps).

Pipeline, per bar:

1. Direction ``d = P(BUY) − P(SELL)``; expected horizon return ``μ`` is given, or ``μ = d · move_per_sigma
   · σ_h`` (a directional class moving ``move_per_sigma`` predicted sigmas; the default sqrt(2/π) is the
   mean |x| of a normal).
2. Sizers, each a magnitude ≥ 0 (disabled when its setting is None):
   Kelly ``kelly_fraction · sign(d) · μ / V`` (0 when μ points against d), capped at ``kelly_cap``;
   volatility target ``target_vol / σ_ann``, capped at ``vol_target_cap``;
   confidence ``confidence_cap · clip((confidence − threshold) / (1 − threshold), 0, 1)``.
   Size = ``sign(d) · min(enabled magnitudes)``, then clipped to ``±max_position`` per coin.
3. Cost filter (``min_edge_to_cost``): a coin moves to its new size only when
   ``|μ| > min_edge_to_cost · round_trip`` with ``round_trip = 2 · (fee_bps + slippage_bps) / 1e4``;
   otherwise (and where a prediction is missing) it keeps its previous final position (0 at the start).
4. Portfolio caps on the whole row, scaling every position by one factor: ``Σ|w| ≤ gross_cap``, then
   predicted portfolio vol ``sqrt(wᵀ Σ w) ≤ portfolio_vol_cap`` (annualised; Σ from each coin's last
   predicted σ_ann and one pairwise correlation ``assumed_correlation``). Risk caps override the cost
   filter: they may shrink a kept position.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cryptopredict.models.base import N_CLASSES, Predictions

HOURS_PER_YEAR = 24 * 365


class RiskConfig(BaseModel):
    """Sizing and limits; see the module docstring for the formulas. None disables a sizer, cap or filter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    horizon: int = Field(1, ge=1, description="bars the predictions look ahead")
    bars_per_year: float = Field(HOURS_PER_YEAR, gt=0)
    kelly_fraction: float | None = Field(0.5, gt=0, le=1)
    kelly_cap: float = Field(1.0, gt=0, le=1)
    move_per_sigma: float = Field(math.sqrt(2 / math.pi), gt=0)
    target_vol: float | None = Field(0.5, gt=0, description="annualised")
    vol_target_cap: float = Field(1.0, gt=0, le=1)
    confidence_threshold: float | None = Field(0.4, ge=0, lt=1)
    confidence_cap: float = Field(1.0, gt=0, le=1)
    max_position: float = Field(1.0, gt=0, le=1, description="per coin, |w|")
    gross_cap: float | None = Field(1.0, gt=0, description="Σ|w| over coins")
    portfolio_vol_cap: float | None = Field(None, gt=0, description="annualised")
    assumed_correlation: float = Field(1.0, ge=0, le=1)
    min_edge_to_cost: float | None = Field(1.5, ge=0)
    fee_bps: float = Field(10.0, ge=0, description="per side")
    slippage_bps: float = Field(2.0, ge=0, description="per side")

    @model_validator(mode="after")
    def _one_sizer(self) -> RiskConfig:
        if self.kelly_fraction is None and self.target_vol is None and self.confidence_threshold is None:
            raise ValueError("enable at least one sizer (kelly_fraction, target_vol, confidence_threshold)")
        return self

    @property
    def round_trip_cost(self) -> float:
        """Fees + slippage of opening and closing a position, fraction of notional."""
        return 2.0 * (self.fee_bps + self.slippage_bps) * 1e-4


def horizon_variance(log_vol: np.ndarray, log_vol_var: np.ndarray | float = 0.0) -> np.ndarray:
    """``E[σ_h²] = exp(2·log_vol + 2·log_vol_var)``: predicted variance of the horizon log return."""
    return np.exp(2.0 * np.asarray(log_vol, dtype=float) + 2.0 * np.asarray(log_vol_var, dtype=float))


def annualised_vol(horizon_var: np.ndarray, horizon: int, bars_per_year: float) -> np.ndarray:
    """``sqrt(V / h · bars_per_year)``: a horizon variance as an annualised volatility."""
    return np.sqrt(np.asarray(horizon_var, dtype=float) / horizon * bars_per_year)


def expected_return_from_proba(proba: np.ndarray, sigma_h: np.ndarray, move_per_sigma: float) -> np.ndarray:
    """``μ = (P(BUY) − P(SELL)) · move_per_sigma · σ_h`` over the horizon."""
    p = np.asarray(proba, dtype=float)
    return (p[..., 2] - p[..., 0]) * move_per_sigma * np.asarray(sigma_h, dtype=float)


def kelly_size(expected_return: np.ndarray, variance: np.ndarray, direction: np.ndarray, fraction: float,
               cap: float) -> np.ndarray:
    """Fractional Kelly magnitude ``min(fraction · sign(d) · μ / V, cap)``, 0 when μ opposes d (or d = 0).

    μ and V over the same horizon (the ratio does not depend on it for a random walk)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        f = fraction * np.sign(direction) * np.asarray(expected_return, dtype=float) / np.asarray(variance)
    return np.minimum(np.maximum(f, 0.0), cap)


def vol_target_size(vol_annual: np.ndarray, target_vol: float, cap: float) -> np.ndarray:
    """``min(target_vol / σ_ann, cap)``, both annualised."""
    with np.errstate(divide="ignore"):
        return np.minimum(target_vol / np.asarray(vol_annual, dtype=float), cap)


def confidence_size(confidence: np.ndarray, threshold: float, cap: float) -> np.ndarray:
    """``cap · clip((confidence − threshold) / (1 − threshold), 0, 1)``: 0 at or below the threshold,
    ``cap`` at confidence 1."""
    return cap * np.clip((np.asarray(confidence, dtype=float) - threshold) / (1.0 - threshold), 0.0, 1.0)


def combine_sizes(direction: np.ndarray, magnitudes: list[np.ndarray]) -> np.ndarray:
    """``sign(direction) · min_k |magnitude_k|`` (NaN where any input is NaN)."""
    if not magnitudes:
        raise ValueError("no sizer magnitudes to combine")
    m = np.abs(magnitudes[0])
    for x in magnitudes[1:]:
        m = np.minimum(m, np.abs(x))
    return np.sign(direction) * m


@numba.njit(cache=True)
def _filter_and_cap(proposed: np.ndarray, allowed: np.ndarray, vol_annual: np.ndarray, gross_cap: float,
                    vol_cap: float, rho: float) -> np.ndarray:
    """Steps 3-4 of the module docstring; ``proposed`` NaN or ``allowed`` False keeps the previous final
    position; NaN caps are off."""
    n_bars, n_assets = proposed.shape
    out = np.empty_like(proposed)
    prev = np.zeros(n_assets)
    sig = np.full(n_assets, np.nan)
    for t in range(n_bars):
        row = prev.copy()
        for i in range(n_assets):
            v = vol_annual[t, i]
            if v == v:
                sig[i] = v
            p = proposed[t, i]
            if p == p and allowed[t, i]:
                row[i] = p
        if gross_cap == gross_cap:
            gross = 0.0
            for i in range(n_assets):
                gross += abs(row[i])
            if gross > gross_cap:
                row *= gross_cap / gross
        if vol_cap == vol_cap:
            sq = 0.0
            lin = 0.0
            for i in range(n_assets):
                if row[i] != 0.0:
                    x = row[i] * sig[i]
                    sq += x * x
                    lin += x
            pvol = math.sqrt(max((1.0 - rho) * sq + rho * lin * lin, 0.0))
            if pvol > vol_cap:
                row *= vol_cap / pvol
        out[t] = row
        prev = row
    return out


def target_positions(proba: np.ndarray, log_vol: np.ndarray, confidence: np.ndarray, config: RiskConfig,
                     *, log_vol_var: np.ndarray | None = None,
                     expected_return: np.ndarray | None = None) -> np.ndarray:
    """Final target positions (T, N) — or (T,) for one asset — from predictions; see the module docstring.

    ``expected_return``: μ over the horizon (fraction) if the caller has one (e.g. class-conditional mean
    returns fitted on training data); by default derived from ``proba`` and the predicted vol. NaN in any
    input marks a missing prediction: that coin keeps its previous position.
    """
    p = np.asarray(proba, dtype=float)
    one_asset = p.ndim == 2
    if one_asset:
        p = p[:, None, :]
    if p.ndim != 3 or p.shape[2] != N_CLASSES:
        raise ValueError(f"proba must be (T, 3) or (T, N, 3), got {np.shape(proba)}")
    shape = p.shape[:2]

    def grid(x: np.ndarray | float | None, name: str) -> np.ndarray:
        a = np.asarray(0.0 if x is None else x, dtype=float)
        if a.ndim == 1 and one_asset:
            a = a[:, None]
        if a.ndim and a.shape != shape:
            raise ValueError(f"{name} must match proba's (T, N) {shape}, got {np.shape(x)}")
        return np.broadcast_to(a, shape)

    var = horizon_variance(grid(log_vol, "log_vol"), grid(log_vol_var, "log_vol_var"))
    sigma_h = np.sqrt(var)
    vol_ann = annualised_vol(var, config.horizon, config.bars_per_year)
    direction = p[..., 2] - p[..., 0]
    mu = (expected_return_from_proba(p, sigma_h, config.move_per_sigma) if expected_return is None
          else grid(expected_return, "expected_return"))
    sizes: list[np.ndarray] = []
    if config.kelly_fraction is not None:
        sizes.append(kelly_size(mu, var, direction, config.kelly_fraction, config.kelly_cap))
    if config.target_vol is not None:
        sizes.append(vol_target_size(vol_ann, config.target_vol, config.vol_target_cap))
    if config.confidence_threshold is not None:
        sizes.append(confidence_size(grid(confidence, "confidence"), config.confidence_threshold,
                                     config.confidence_cap))
    proposed = np.clip(combine_sizes(direction, sizes), -config.max_position, config.max_position)
    allowed = np.isfinite(mu)
    if config.min_edge_to_cost is not None:
        allowed &= np.abs(mu) > config.min_edge_to_cost * config.round_trip_cost
    out = _filter_and_cap(np.ascontiguousarray(proposed), np.ascontiguousarray(allowed),
                          np.ascontiguousarray(vol_ann),
                          np.nan if config.gross_cap is None else config.gross_cap,
                          np.nan if config.portfolio_vol_cap is None else config.portfolio_vol_cap,
                          config.assumed_correlation)
    return out[:, 0] if one_asset else out


def positions_from_predictions(predictions: Predictions, config: RiskConfig) -> pd.DataFrame:
    """Target positions (timestamp × symbol) for ``predictions`` (rows (symbol, timestamp)); a coin with no
    prediction at a timestamp keeps its previous position. Row t is decided at the close of bar t: pass it,
    reindexed to the bars' index (``backtest.pivot_bars``), as ``targets`` — the backtester fills it at
    the next open. ``config.horizon`` must be the predictions' horizon."""
    frame = predictions.to_frame()
    wide = frame[["p_sell", "p_hold", "p_buy", "log_vol", "log_vol_var", "confidence"]].unstack("symbol")
    wide = wide.sort_index()
    symbols = wide["p_buy"].columns
    proba = np.stack([wide[c].to_numpy(float) for c in ("p_sell", "p_hold", "p_buy")], axis=-1)
    pos = target_positions(proba, wide["log_vol"].to_numpy(float), wide["confidence"].to_numpy(float), config,
                           log_vol_var=wide["log_vol_var"].to_numpy(float))
    return pd.DataFrame(pos, index=wide.index, columns=symbols)
