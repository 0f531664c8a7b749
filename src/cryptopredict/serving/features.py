"""Request-time features: the feature rows of the latest bars, computed from a trailing slice of each
symbol's bars in the lake by the SAME functions the feature pipeline runs (``features/pipeline.py``).

Per symbol, ``symbol_families`` (technical, fractal, context, sentiment — exactly the pipeline's stage 1)
runs on the symbol's bars of the last ``lookback`` bars; the cross-asset family and the correlation
matrices, which the pipeline computes once in stage 0 and stores, are computed here with the pipeline's
own ``compute_cross_asset`` / ``correlation_matrices`` on the same trailing slices of every symbol (the
stored ``xa_features`` of a live lake lag behind its bars). Values are rounded to float32, as the pipeline
stores them. σ (the fusion's context) is ``labels.trailing_vol`` on the same slice.

Time: the slice ends at the latest bar (or at ``end``); context tables are joined by ``compute_context``'s
as-of rule (a daily row is used only from its publication time), news by ``compute_sentiment``'s
(``published_at`` < bar close), so a row at t never sees anything published after t's close.

Why a trailing slice suffices: every feature is a trailing window of at most ``max window`` bars, the
fractal measures are evaluated on UTC-anchored bars and carried at most ``stride_hours`` bars; recursive
indicators (EMA, Wilder smoothing, SAR, Supertrend) start at the first bar handed in, so the slice adds
``warmup_bars`` for their memory to fade below float32 resolution (``tests/serving`` compares the result
with the stored feature table).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from cryptopredict.config import Config
from cryptopredict.data.lake import DATA_FILE, Lake, partition_path
from cryptopredict.data.schemas import OHLCV
from cryptopredict.data.validate import timeframe_delta
from cryptopredict.features.base import FamilyResult
from cryptopredict.features.pipeline import MANIFEST, read_bars, symbol_families
from cryptopredict.features.settings import FeaturesConfig
from cryptopredict.labels import trailing_vol

log = logging.getLogger(__name__)

CONTEXT_TABLES = ("fear_greed", "onchain", "macro")


class FeatureSkewError(RuntimeError):
    """The serving configuration would compute features differently from the ones the model learnt on."""


@dataclass
class RequestFeatures:
    """The feature rows of the last ``rows`` bars up to ``as_of`` per symbol.

    ``features``: (symbol, timestamp) index, float32 (as stored by the pipeline), sorted by timestamp then
    symbol like ``evaluation.dataset.load_panel``; ``sigma``: trailing σ on the same index; ``correlations``:
    the long correlation table (timestamp, symbol_a, symbol_b, window, corr) for those bars;
    ``last_bar``: each symbol's last bar at or before ``as_of`` (open time)."""

    as_of: pd.Timestamp
    features: pd.DataFrame
    sigma: pd.Series
    correlations: pd.DataFrame
    last_bar: dict[str, pd.Timestamp]
    lookback: int
    seconds: dict[str, float] = field(default_factory=dict)


def ohlcv_file(lake: Lake, cfg: Config, symbol: str) -> str:
    """The path of one symbol's OHLCV data file in the lake (its filesystem's path)."""
    part = partition_path(OHLCV, {"exchange": cfg.ingest.exchange, "symbol": symbol,
                                  "timeframe": cfg.ingest.timeframe})
    return f"{lake.base}/{OHLCV.name}/{part}/{DATA_FILE}"


def latest_bars(lake: Lake, cfg: Config, symbols: list[str]) -> dict[str, pd.Timestamp | None]:
    """Each symbol's latest stored bar (open time), from the Parquet footer's statistics only — no data
    pages are read, so this is cheap enough to poll. None for a symbol without bars."""
    out: dict[str, pd.Timestamp | None] = {}
    for symbol in symbols:
        path = ohlcv_file(lake, cfg, symbol)
        try:
            with lake.fs.open_input_file(path) as fh:
                meta = pq.ParquetFile(fh).metadata
        except FileNotFoundError:
            out[symbol] = None
            continue
        col = meta.schema.to_arrow_schema().get_field_index("timestamp")
        best: pd.Timestamp | None = None
        for i in range(meta.num_row_groups):
            stats = meta.row_group(i).column(col).statistics
            if stats is None or not stats.has_min_max:
                best = None
                break
            value = pd.Timestamp(stats.max)
            value = value.tz_localize("UTC") if value.tzinfo is None else value.tz_convert("UTC")
            best = value if best is None or value > best else best
        if best is None and meta.num_rows:  # no statistics written: read the column
            ts = pq.read_table(path, columns=["timestamp"], filesystem=lake.fs)["timestamp"]
            best = pd.Timestamp(ts.to_pandas().max())
        out[symbol] = best
    return out


def longest_window(lake: Lake, cfg: Config) -> int:
    """The longest look-back, in bars, of any feature in the lake's feature manifest (``FeatureSpec.window``),
    after checking that the manifest was written with this configuration's feature settings."""
    try:
        manifest = lake.read_json(MANIFEST)
    except FileNotFoundError:
        raise FeatureSkewError(f"the lake {lake.root!r} has no {MANIFEST}: run `cryptopredict features` "
                               "first (serving computes the same features and needs their settings)") from None
    assert isinstance(manifest, dict)
    check_feature_config(cfg.features, manifest)
    windows = [int(f["window"]) for f in manifest["features"] if f.get("window")]
    return max(windows, default=1)


def check_feature_config(fc: FeaturesConfig, manifest: Mapping[str, Any]) -> None:
    """A FeatureSkewError when ``fc`` differs from the settings that built the stored features."""
    stored = manifest.get("config")
    if stored is None:
        return
    if FeaturesConfig.model_validate(stored) != fc:
        diff = [k for k, v in fc.model_dump(mode="json").items() if stored.get(k) != v]
        raise FeatureSkewError(f"features config differs from the one the lake's features were built with "
                               f"(sections {diff}); serve with the training configuration")


def lookback_bars(cfg: Config, longest: int) -> int:
    """Bars of history each request-time computation reads: ``serving.lookback_bars`` when set, else the
    longest feature window + the fractal evaluation stride + ``serving.warmup_bars``."""
    sc = cfg.serving
    if sc.lookback_bars is not None:
        return int(sc.lookback_bars)
    stride = cfg.features.fractal.stride_hours if "fractal" in cfg.features.families else 0
    return int(longest + stride + sc.warmup_bars)


class _TableCache:
    """The lake, with the context tables and scored news read once per computation (``symbol_families``
    reads them per symbol). Anything else goes to the lake."""

    def __init__(self, lake: Lake, scored_news: pd.DataFrame | None) -> None:
        self._lake = lake
        self._tables: dict[str, pd.DataFrame] = {}
        self._scored_news = scored_news

    def read(self, table: str, *args: Any, **kwargs: Any) -> pd.DataFrame:
        if table in CONTEXT_TABLES and not args and not kwargs:
            if table not in self._tables:
                self._tables[table] = self._lake.read(table)
            return self._tables[table]
        return self._lake.read(table, *args, **kwargs)

    def read_frame(self, name: str, partition: Mapping[str, object] | None = None) -> pd.DataFrame:
        if name == "news_scores" and partition is None:
            if self._scored_news is None:
                self._scored_news = self._lake.read_frame("news_scores")
            return self._scored_news
        return self._lake.read_frame(name, partition)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lake, name)


def scored_news_now(lake: Lake, cfg: Config, scorer_cache: dict[str, Any] | None = None) -> pd.DataFrame:
    """The lake's ``news_scores`` plus every ``news`` item not scored yet, scored by the same
    ``load_scorer``/``score_news`` as the pipeline's stage 0. A FeatureSkewError when the scorer that loads
    here is not the one recorded in the feature manifest (mixing scorers would shift the features)."""
    from cryptopredict.features.sentiment import load_scorer, score_news

    scored = lake.read_frame("news_scores")
    news = lake.read("news")
    if news.empty:
        return scored
    done = set(scored["id"].astype(str)) if len(scored) else set()
    new = news[~news["id"].astype(str).isin(done)]
    if new.empty:
        return scored
    fc = cfg.features
    cache = scorer_cache if scorer_cache is not None else {}
    if "scorer" not in cache:
        scorer, info = load_scorer(fc.sentiment)
        try:
            manifest = lake.read_json(MANIFEST)
            recorded = dict(manifest.get("sentiment_scorer") or {}) if isinstance(manifest, dict) else {}
        except FileNotFoundError:
            recorded = {}
        if recorded and recorded.get("scorer") != info.get("scorer"):
            raise FeatureSkewError(f"news scorer {info.get('scorer')!r} loads here but the stored features used "
                                   f"{recorded.get('scorer')!r}; make the same scorer available")
        cache["scorer"] = scorer
    fresh = score_news(new, cache["scorer"], fc.sentiment)
    log.info("scored %d news items not yet in news_scores", len(fresh))
    both = pd.concat([scored, fresh], ignore_index=True) if len(scored) else fresh
    return both.sort_values(["published_at", "id"], kind="stable").reset_index(drop=True)


def compute_request_features(cfg: Config, lake: Lake, *, rows: int, lookback: int,
                             symbols: list[str] | None = None, end: pd.Timestamp | None = None,
                             scored_news: pd.DataFrame | None = None) -> RequestFeatures:
    """Feature rows of the last ``rows`` bars of every symbol up to ``end`` (default: the latest stored bar
    of any symbol), computed from the bars of the ``lookback`` bars before it (see the module docstring)."""
    import time

    fc = cfg.features
    symbols = list(symbols or cfg.ingest.symbols)
    bar = timeframe_delta(cfg.ingest.timeframe)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    full = {s: read_bars(lake, cfg, s) for s in symbols}
    if end is None:
        end = max(b["timestamp"].iloc[-1] for b in full.values())
    end = pd.Timestamp(end)
    start = end - (lookback - 1) * bar
    bars = {}
    for s, b in full.items():
        ts = b["timestamp"]
        cut = b[(ts >= start) & (ts <= end)].reset_index(drop=True)
        if cut.empty:
            raise ValueError(f"{s} has no bars between {start} and {end} in the lake {lake.root!r}")
        bars[s] = cut
    seconds["read"] = time.perf_counter() - t0

    per_symbol = cfg.model_copy(deep=True)
    per_symbol.features.families = [f for f in fc.families if f != "cross_asset"]
    source = _TableCache(lake, scored_news)
    xa: dict[str, FamilyResult] = {}
    corr = pd.DataFrame(columns=["timestamp", "symbol_a", "symbol_b", "window", "corr"])
    if "cross_asset" in fc.families:
        from cryptopredict.features.cross_asset import compute_cross_asset, correlation_matrices

        t = time.perf_counter()
        xa = compute_cross_asset(bars, fc.cross_asset)
        corr = correlation_matrices(bars, fc.cross_asset.matrix_window)
        seconds["cross_asset"] = time.perf_counter() - t

    frames, sigmas = [], []
    for s in symbols:
        b = bars[s]
        results, secs = symbol_families(per_symbol, source, s, b)  # type: ignore[arg-type]
        for k, v in secs.items():
            seconds[k] = seconds.get(k, 0.0) + v
        if s in xa:  # at the family's place in the config, as the pipeline orders the columns
            results.insert(fc.families.index("cross_asset"), xa[s])
        frame = pd.concat([b[["timestamp"]]] + [r.frame.astype("float32") for r in results], axis=1)
        frame = frame.iloc[-rows:].assign(symbol=s)
        frames.append(frame)
        sig = trailing_vol(b, fc.label_vol_window, bar).iloc[-rows:]
        sigmas.append(pd.DataFrame({"symbol": s, "timestamp": b["timestamp"].iloc[-rows:].to_numpy(),
                                    "sigma": sig.to_numpy()}))
    X = pd.concat(frames, ignore_index=True).set_index(["symbol", "timestamp"])
    order = np.lexsort((X.index.get_level_values("symbol"), X.index.get_level_values("timestamp")))
    X = X.iloc[order]
    sigma = pd.concat(sigmas, ignore_index=True).set_index(["symbol", "timestamp"])["sigma"].reindex(X.index)
    first = X.index.get_level_values("timestamp").min()
    if len(corr):
        corr = corr[corr["timestamp"] >= first].reset_index(drop=True)
    seconds["total"] = time.perf_counter() - t0
    return RequestFeatures(as_of=end, features=X, sigma=sigma, correlations=corr,
                           last_bar={s: bars[s]["timestamp"].iloc[-1] for s in symbols}, lookback=lookback,
                           seconds=seconds)
