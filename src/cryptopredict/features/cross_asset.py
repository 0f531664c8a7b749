"""Cross-asset features over the whole universe, and the rolling correlation matrices for the graph model.

Input: every symbol's bars. Everything is computed on the union timestamp grid from one-bar log returns;
a symbol that does not trade yet (or a missing bar) is NaN and drops out of cross-sectional statistics.
Every value at t uses returns ending at t or earlier (trailing windows only).

Columns (prefix ``xa_``):
- ``xa_corr_btc_{w}``, ``xa_beta_btc_{w}``, ``xa_corr_eth_{w}``, ``xa_beta_eth_{w}``: rolling correlation and
  beta of the symbol's returns to BTC's and ETH's over w bars (NaN for BTC against itself, ETH likewise).
- ``xa_rs_rank_{w}``: cross-sectional percentile rank (0..1) of the symbol's trailing w-bar log return.
- ``xa_btc_dominance``: BTC's share of the universe's market cap when the lake has market caps, else the
  documented proxy: BTC's share of the universe's trailing-24-bar dollar volume (close × base volume).
- ``xa_altseason_{w}``: share of the non-BTC symbols trading at t whose trailing w-bar return beats BTC's.
- ``xa_avg_corr_{w}``: dollar-volume-weighted average pairwise correlation of the universe over w bars.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from cryptopredict.features.base import FamilyResult, FeatureSpec

FAMILY = "cross_asset"


class CrossAssetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    corr_windows: list[int] = Field(default_factory=lambda: [168, 720], description="bars (1 week, 30 days)")
    rs_windows: list[int] = Field(default_factory=lambda: [24, 168])
    altseason_window: int = Field(2160, description="90 days of hourly bars")
    dominance_volume_window: int = Field(24, description="bars of dollar volume for the dominance proxy")
    matrix_window: int = Field(720, description="window of the stored correlation matrices (graph edges)")
    btc: str = "BTCUSDT"
    eth: str = "ETHUSDT"


def returns_panel(bars_by_symbol: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(log returns, dollar volume, close) as timestamp × symbol frames on the dense grid of timestamps.

    A return at t is log(close[t] / close[t-1 bar on the symbol's own series]); across a missing bar the
    return is NaN (no multi-bar returns sneak in)."""
    closes, dollars = {}, {}
    for sym, bars in bars_by_symbol.items():
        s = bars.set_index("timestamp")
        closes[sym] = s["close"].astype(float)
        dollars[sym] = (s["close"] * s["volume"]).astype(float)
    close = pd.DataFrame(closes).sort_index()
    step = close.index.to_series().diff()
    bar = step.min()
    full = pd.date_range(close.index[0], close.index[-1], freq=bar)
    close = close.reindex(full)
    rets = np.log(close).diff()
    return rets, pd.DataFrame(dollars).reindex(full), close


def trailing_return(close: pd.DataFrame, window: int) -> pd.DataFrame:
    """log(close[t] / close[t - window bars]) where a missing close back then is replaced by the last one
    before it (as of, never a later one); NaN where the symbol has no bar at t or is younger than window."""
    past = close.ffill().shift(window)
    return np.log(close / past)


def _rolling_beta(y: pd.Series, x: pd.Series, w: int, minp: int) -> pd.Series:
    cov = y.rolling(w, min_periods=minp).cov(x)
    var = x.rolling(w, min_periods=minp).var()
    return cov / var


def compute_cross_asset(bars_by_symbol: dict[str, pd.DataFrame], cfg: CrossAssetConfig = CrossAssetConfig(),
                        market_caps: pd.DataFrame | None = None) -> dict[str, FamilyResult]:
    """Cross-asset features for every symbol, each aligned with that symbol's bars (family contract).

    ``market_caps``: optional (timestamp, symbol, market_cap_usd) rows already mapped to universe symbols
    and known at their timestamp; when absent or lacking BTC, dominance is the dollar-volume proxy.
    """
    rets, dollar, close = returns_panel(bars_by_symbol)
    symbols = list(rets.columns)
    out: dict[str, dict[str, pd.Series]] = {s: {} for s in symbols}
    specs: list[FeatureSpec] = []

    def add(name: str, values: dict[str, pd.Series] | pd.Series, window: int | None, source: str, desc: str) -> None:
        for s in symbols:
            out[s][name] = values[s] if isinstance(values, dict) else values
        specs.append(FeatureSpec(name, FAMILY, window, source, "bar close", desc))

    for w in cfg.corr_windows:
        minp = w // 2
        for ref, tag in ((cfg.btc, "btc"), (cfg.eth, "eth")):
            if ref not in rets:
                raise ValueError(f"cross-asset features need {ref} in the universe; have {symbols}")
            corr = {s: (rets[s].rolling(w, min_periods=minp).corr(rets[ref]) if s != ref
                        else pd.Series(np.nan, index=rets.index)) for s in symbols}
            beta = {s: (_rolling_beta(rets[s], rets[ref], w, minp) if s != ref
                        else pd.Series(np.nan, index=rets.index)) for s in symbols}
            add(f"xa_corr_{tag}_{w}", corr, w, "ohlcv.close (all symbols)", f"rolling correlation to {ref}")
            add(f"xa_beta_{tag}_{w}", beta, w, "ohlcv.close (all symbols)", f"rolling beta to {ref}")

    for w in cfg.rs_windows:
        rank = trailing_return(close, w).rank(axis=1, pct=True)
        add(f"xa_rs_rank_{w}", {s: rank[s] for s in symbols}, w, "ohlcv.close (all symbols)",
            "cross-sectional percentile rank of the trailing return")

    dominance, source = _dominance(dollar, market_caps, cfg)
    add("xa_btc_dominance", dominance, cfg.dominance_volume_window, source,
        "BTC share of universe market cap (or of trailing dollar volume: the proxy)")

    w = cfg.altseason_window
    trailing = trailing_return(close, w)
    alts = [s for s in symbols if s != cfg.btc]
    beats = trailing[alts].gt(trailing[cfg.btc], axis=0).astype(float).where(trailing[alts].notna())
    altseason = beats.mean(axis=1, skipna=True).where(trailing[cfg.btc].notna())
    add(f"xa_altseason_{w}", altseason, w, "ohlcv.close (all symbols)", "share of altcoins beating BTC")

    for w in cfg.corr_windows:
        add(f"xa_avg_corr_{w}", average_pairwise_corr(rets, dollar, w), w, "ohlcv.close,volume (all symbols)",
            "dollar-volume-weighted mean pairwise correlation")

    results = {}
    for s, bars in bars_by_symbol.items():
        frame = pd.DataFrame(out[s]).reindex(pd.DatetimeIndex(bars["timestamp"]))
        frame = frame.reset_index(drop=True).astype(float)
        results[s] = FamilyResult(frame[[sp.name for sp in specs]], list(specs)).check(len(bars))
    return results


def _dominance(dollar: pd.DataFrame, market_caps: pd.DataFrame | None,
               cfg: CrossAssetConfig) -> tuple[pd.Series, str]:
    if market_caps is not None and len(market_caps) and cfg.btc in set(market_caps["symbol"]):
        caps = market_caps.pivot_table(index="timestamp", columns="symbol", values="market_cap_usd")
        caps = caps.reindex(dollar.index, method="ffill")  # as of: the last cap known at t
        return caps[cfg.btc] / caps.sum(axis=1, min_count=1), "market_caps.market_cap_usd"
    vol = dollar.rolling(cfg.dominance_volume_window, min_periods=1).sum()
    return vol[cfg.btc] / vol.sum(axis=1, min_count=1), "ohlcv.close*volume (proxy)"


def average_pairwise_corr(rets: pd.DataFrame, dollar: pd.DataFrame, window: int) -> pd.Series:
    """Σ w_i w_j ρ_ij / Σ w_i w_j over pairs i<j trading at t, weights = trailing dollar volume."""
    weight = dollar.rolling(window, min_periods=1).mean()
    num = pd.Series(0.0, index=rets.index)
    den = pd.Series(0.0, index=rets.index)
    for a, b in itertools.combinations(rets.columns, 2):
        rho = rets[a].rolling(window, min_periods=window // 2).corr(rets[b])
        ww = weight[a] * weight[b]
        ok = rho.notna() & ww.notna()
        num += (rho * ww).where(ok, 0.0)
        den += ww.where(ok, 0.0)
    return (num / den).where(den > 0)


def correlation_matrices(bars_by_symbol: dict[str, pd.DataFrame], window: int) -> pd.DataFrame:
    """The rolling correlation matrix as of every timestamp, long format (upper triangle, float32):
    timestamp, symbol_a, symbol_b, window, corr. The graph model builds its edges at t from these rows."""
    rets, _, _ = returns_panel(bars_by_symbol)
    frames = []
    for a, b in itertools.combinations(sorted(rets.columns), 2):
        rho = rets[a].rolling(window, min_periods=window // 2).corr(rets[b]).dropna()
        frames.append(pd.DataFrame({"timestamp": rho.index, "symbol_a": a, "symbol_b": b, "window": window,
                                    "corr": rho.to_numpy(np.float32)}))
    return pd.concat(frames, ignore_index=True).sort_values(["timestamp", "symbol_a", "symbol_b"],
                                                            ignore_index=True)
