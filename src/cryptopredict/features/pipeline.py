"""The feature pipeline: lake → feature table (+ labels, correlation matrices, manifest) in the lake.

Stage 0, in the driver (it needs every symbol at once, or is done once for all):
  * cross-asset features of every symbol → derived table ``xa_features`` (partition per symbol);
  * the rolling correlation matrices → ``correlations`` (the graph model's edges as of each bar);
  * news scored once (transformer, or VADER when no weights load — recorded) → ``news_scores``.
Stage 1, per symbol on Ray (``parallel_map``): technical, fractal, context and sentiment families on that
symbol's bars, joined with its cross-asset rows → ``features`` (partition per symbol); raw labels →
``labels``. The manifest (name, family, window, source, lag per column; the sentiment scorer; the label
definitions) is written atomically to ``<lake>/features_manifest.json``.

Every family is a plain function (``base.py``); the Ray path and the in-process path call the same function
on the same inputs, so they give the same values (tested).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import pandas as pd

from cryptopredict.config import Config
from cryptopredict.data.ingest import open_lake
from cryptopredict.data.lake import Lake, partition_path
from cryptopredict.data.schemas import OHLCV
from cryptopredict.features.base import FamilyResult, FeatureSpec
from cryptopredict.labels import make_labels
from cryptopredict.data.validate import timeframe_delta
from cryptopredict.parallel import parallel_map

log = logging.getLogger(__name__)

KEY = ("symbol", "timestamp")
MANIFEST = "features_manifest.json"


@dataclass
class FeatureRunReport:
    """What one feature run did: rows per symbol, columns, seconds per stage/family, the scorer used."""

    symbols: list[str]
    rows: dict[str, int] = field(default_factory=dict)
    columns: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # per family, summed over symbols
    sentiment_scorer: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def read_bars(lake: Lake, cfg: Config, symbol: str) -> pd.DataFrame:
    """One symbol's stored bars (timestamp, OHLCV), sorted; a ValueError when the lake has none."""
    part = partition_path(OHLCV, {"exchange": cfg.ingest.exchange, "symbol": symbol,
                                  "timeframe": cfg.ingest.timeframe})
    bars = lake.read_partition("ohlcv", part)
    if bars.empty:
        raise ValueError(f"no {cfg.ingest.timeframe} bars for {symbol} on {cfg.ingest.exchange} in the lake "
                         f"{cfg.lake.root!r}; run `cryptopredict ingest` first")
    return bars[["timestamp", "open", "high", "low", "close", "volume"]].reset_index(drop=True)


def stage0(cfg: Config, lake: Lake, symbols: list[str], report: FeatureRunReport) -> list[FeatureSpec]:
    """Cross-asset features, correlation matrices and news scores, written to the lake. Returns the
    cross-asset specs (empty when the family is off)."""
    fc = cfg.features
    specs: list[FeatureSpec] = []
    if "cross_asset" in fc.families:
        from cryptopredict.features.cross_asset import compute_cross_asset, correlation_matrices

        t = time.perf_counter()
        bars = {s: read_bars(lake, cfg, s) for s in symbols}
        # market caps would need a CoinGecko-id → symbol map; the shipped data has none: dominance is the proxy
        results = compute_cross_asset(bars, fc.cross_asset)
        for s, res in results.items():
            lake.write_frame("xa_features", pd.concat([bars[s][["timestamp"]], res.frame], axis=1), ("timestamp",),
                             {"symbol": s})
        specs = results[symbols[0]].specs
        corr = correlation_matrices(bars, fc.cross_asset.matrix_window)
        lake.write_frame("correlations", corr, ("timestamp", "symbol_a", "symbol_b", "window"))
        report.seconds["cross_asset"] = time.perf_counter() - t
    if "sentiment" in fc.families:
        from cryptopredict.features.sentiment import load_scorer, score_news

        t = time.perf_counter()
        scorer, info = load_scorer(fc.sentiment)
        report.sentiment_scorer = {str(k): str(v) for k, v in dict(info).items()}
        lake.write_frame("news_scores", score_news(lake.read("news"), scorer, fc.sentiment), ("id",))
        report.seconds["sentiment_scoring"] = time.perf_counter() - t
    return specs


def symbol_families(cfg: Config, lake: Lake, symbol: str, bars: pd.DataFrame) -> tuple[list[FamilyResult],
                                                                                     dict[str, float]]:
    """Every configured family for one symbol (cross-asset read back from stage 0), in config order."""
    fc = cfg.features
    results, seconds = [], {}
    for family in fc.families:
        t = time.perf_counter()
        if family == "technical":
            from cryptopredict.features.technical import compute_technical
            res = compute_technical(bars, fc.technical)
        elif family == "fractal":
            from cryptopredict.features.fractal import compute_fractal
            res = compute_fractal(bars, fc.fractal)
        elif family == "context":
            from cryptopredict.features.context import compute_context
            tables = {t_: lake.read(t_) for t_ in ("fear_greed", "onchain", "macro")}
            res = compute_context(bars, tables, fc.context, bar=timeframe_delta(cfg.ingest.timeframe))
        elif family == "sentiment":
            from cryptopredict.features.sentiment import compute_sentiment
            res = compute_sentiment(bars, symbol, lake.read_frame("news_scores"), fc.sentiment,
                                    bar=timeframe_delta(cfg.ingest.timeframe))
        else:
            res = _cross_asset_rows(lake, symbol, bars)
        results.append(res.check(len(bars)))
        seconds[family] = time.perf_counter() - t
    return results, seconds


def _cross_asset_rows(lake: Lake, symbol: str, bars: pd.DataFrame) -> FamilyResult:
    xa = lake.read_frame("xa_features", {"symbol": symbol})
    if xa.empty:
        raise ValueError(f"cross-asset features of {symbol} missing: stage 0 did not run")
    specs = [FeatureSpec(**s) for s in lake.read_json("_specs/xa_features.json")]  # type: ignore[union-attr]
    frame = bars[["timestamp"]].merge(xa, on="timestamp", how="left")[[s.name for s in specs]]
    return FamilyResult(frame.astype(float), specs)


def features_for_symbol(cfg: Config, item: dict) -> dict:
    """Stage 1 for one symbol: families → ``features``, labels → ``labels``. A JSON-able summary back."""
    symbol = item["symbol"]
    lake = open_lake(cfg)
    try:
        bars = read_bars(lake, cfg, symbol)
        results, seconds = symbol_families(cfg, lake, symbol, bars)
        # stored as float32: half the size, and far more precision than any model here can use
        frame = pd.concat([bars[["timestamp"]]] + [r.frame.astype("float32") for r in results], axis=1)
        lake.write_frame("features", frame, KEY, {"symbol": symbol})
        fc = cfg.features
        labels = make_labels(bars, fc.horizon, timeframe_delta(cfg.ingest.timeframe), fc.label_vol_window)
        lake.write_frame("labels", labels, KEY, {"symbol": symbol})
        return {"symbol": symbol, "rows": len(frame), "seconds": seconds,
                "specs": [s.to_dict() for r in results for s in r.specs]}
    except Exception as exc:  # noqa: BLE001 - reported per symbol; the run fails at the end
        log.exception("features for %s failed", symbol)
        return {"symbol": symbol, "error": f"{type(exc).__name__}: {exc}"}


def build_features(cfg: Config) -> FeatureRunReport:
    """The whole feature table for ``cfg.ingest.symbols`` from the lake, with manifest."""
    lake = open_lake(cfg)
    symbols = list(cfg.ingest.symbols)
    report = FeatureRunReport(symbols=symbols)
    xa_specs = stage0(cfg, lake, symbols, report)
    if xa_specs:
        lake.write_json("_specs/xa_features.json", [s.to_dict() for s in xa_specs])
    outcomes = parallel_map(cfg, [{"symbol": s} for s in symbols], features_for_symbol, desc="features")
    specs: list[dict] = []
    for out in outcomes:
        if "error" in out:
            report.errors[out["symbol"]] = out["error"]
            continue
        report.rows[out["symbol"]] = out["rows"]
        for fam, sec in out["seconds"].items():
            report.seconds[fam] = report.seconds.get(fam, 0.0) + sec
        specs = specs or out["specs"]
    report.columns = len(specs)
    fc = cfg.features
    lake.write_json(MANIFEST, {
        "features": specs,
        "families": fc.families,
        "sentiment_scorer": report.sentiment_scorer,
        "labels": {
            f"fwd_logret_h{fc.horizon}": f"log(close[t+{fc.horizon} bars]/close[t]); looks at closes t..t+{fc.horizon}",
            f"fwd_rvol_h{fc.horizon}": f"sqrt(sum of squared 1-bar log returns t+1..t+{fc.horizon})",
            f"trailing_vol_{fc.label_vol_window}": f"std of 1-bar log returns ending at t ({fc.label_vol_window} bars)",
        },
        "time_convention": "row t = bar open time t; features use data known at the bar's close t+bar",
        "config": fc.model_dump(mode="json"),
        "report": asdict(report),
    })
    return report
