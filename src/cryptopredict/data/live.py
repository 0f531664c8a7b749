"""Live ingestion: exchange candles through ccxt and context tables from the public APIs, incrementally.

Each unit starts where the lake ends: OHLCV from the bar after the last stored one (or ``ingest.start``,
or the exchange's latest page on an empty lake); a context table from its last stored day minus
``sources.overlap_days`` (late revisions are upserted, so overlaps are harmless), or ``lookback_days`` back
on an empty lake. ``follow`` keeps appending each newly closed candle until stopped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import pandas as pd

from cryptopredict.config import Config
from cryptopredict.data.ingest import IngestReport, Unit, ingest_ohlcv, ingest_table, open_lake
from cryptopredict.data.lake import Lake, partition_path
from cryptopredict.data.schemas import OHLCV, table_spec
from cryptopredict.data.sources import coingecko, defillama, exchange, fear_greed, macro, news, onchain
from cryptopredict.data.validate import timeframe_delta

log = logging.getLogger(__name__)


def live_units(cfg: Config) -> list[Unit]:
    return [Unit("ohlcv", s) for s in cfg.ingest.symbols] + [Unit(t, t) for t in cfg.sources.tables]


def open_configured_exchange(cfg: Config):  # type: ignore[no-untyped-def]
    return exchange.open_exchange(cfg.ingest.exchange, api_urls=cfg.ingest.exchange_api_urls)


def next_bar_start(lake: Lake, cfg: Config, native_symbol: str) -> pd.Timestamp | None:
    """Open time of the first bar the lake lacks (None: empty series and no ``ingest.start``)."""
    part = partition_path(OHLCV, {"exchange": cfg.ingest.exchange, "symbol": native_symbol,
                                  "timeframe": cfg.ingest.timeframe})
    last = lake.last_time("ohlcv", part)
    if last is not None:
        return last + timeframe_delta(cfg.ingest.timeframe)
    if cfg.ingest.start is None:
        return None
    start = pd.Timestamp(cfg.ingest.start)
    return start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")


def ingest_ohlcv_live(cfg: Config, symbol: str) -> IngestReport:
    lake = open_lake(cfg)
    ex = open_configured_exchange(cfg)
    _, native = exchange.resolve_symbol(ex, symbol)
    since = next_bar_start(lake, cfg, native)
    df = exchange.fetch_ohlcv_range(ex, native, cfg.ingest.timeframe, since=since)
    return ingest_ohlcv(lake, df, exchange=cfg.ingest.exchange, symbol=native, timeframe=cfg.ingest.timeframe,
                        cfg=cfg)


def _since(lake: Lake, table: str, cfg: Config, now: pd.Timestamp) -> pd.Timestamp:
    last = None
    for part in lake.partitions(table):
        t = lake.last_time(table, part)
        last = t if last is None or (t is not None and t > last) else last
    if last is None:
        return (now - pd.Timedelta(days=cfg.sources.lookback_days)).floor("D")
    return (last - pd.Timedelta(days=cfg.sources.overlap_days)).floor("D")


def fetch_context(cfg: Config, table: str, since: pd.Timestamp, until: pd.Timestamp) -> pd.DataFrame:
    """Rows of one context table from its live sources, for [since, until)."""
    s = cfg.sources
    if table == "fear_greed":
        return fear_greed.fetch_fear_greed(since=since, until=until, client=fear_greed.make_client(s.fear_greed_url))
    if table == "onchain":
        frames = [onchain.fetch_coinmetrics(["btc"], s.onchain_metrics, since=since, until=until,
                                            client=onchain.make_coinmetrics_client(s.coinmetrics_url)),
                  onchain.fetch_blockchain_chart("difficulty", since=since, until=until,
                                                 client=onchain.make_blockchain_client(s.blockchain_charts_url))]
        return pd.concat(frames, ignore_index=True)
    if table == "macro":
        frames = [macro.fetch_yahoo_chart(t, since=since, until=until, client=macro.make_yahoo_client(s.yahoo_url))
                  for t in s.yahoo_tickers]
        key = os.environ.get(s.fred_key_env)
        if key:
            client = macro.make_fred_client(s.fred_url)
            frames += [macro.fetch_fred_series(sid, api_key=key, since=since, until=until, client=client)
                       for sid in s.fred_series]
        else:
            log.warning("macro: FRED series %s skipped: set %s to a FRED API key", s.fred_series, s.fred_key_env)
        return pd.concat(frames, ignore_index=True)
    if table == "tvl":
        client = defillama.make_client(s.defillama_url)
        return pd.concat([defillama.fetch_chain_tvl(c, since=since, until=until, client=client)
                          for c in s.defillama_chains], ignore_index=True)
    if table == "market_caps":
        key = os.environ.get(s.coingecko_key_env)
        client = coingecko.make_client(s.coingecko_url, api_key=key)
        return pd.concat([coingecko.fetch_market_chart(c, since, until, interval="daily", client=client)
                          for c in s.coingecko_ids], ignore_index=True)
    if table == "news":
        frames = [news.fetch_feed(url, name, since=since, until=until, client=news.make_feed_client(url))
                  for name, url in s.rss_feeds.items()]
        client = news.make_reddit_client(s.reddit_url)
        frames += [news.fetch_subreddit(sub, since=since, until=until, client=client) for sub in s.subreddits]
        return pd.concat(frames, ignore_index=True)
    raise ValueError(f"no live source for table {table!r}")


def ingest_unit_live(cfg: Config, unit: Unit) -> IngestReport:
    """One unit from the live sources into the configured lake."""
    if unit.kind == "ohlcv":
        return ingest_ohlcv_live(cfg, unit.name)
    lake = open_lake(cfg)
    now = pd.Timestamp.now(tz="UTC")
    df = fetch_context(cfg, unit.kind, _since(lake, unit.kind, cfg, now), now)
    df = df.drop_duplicates(subset=list(table_spec(unit.kind).key), keep="last")  # overlapping feeds may repeat rows
    return ingest_table(lake, unit.kind, df)


def follow(cfg: Config, *, stop: threading.Event, max_batches: int | None = None,
           on_report: Callable[[IngestReport], None] | None = None,
           clock: Callable[[], float] = time.time, sleep: Callable[[float], None] | None = None,
           ) -> list[IngestReport]:
    """Append each newly closed candle of every configured symbol until ``stop`` is set.

    One thread per symbol (I/O bound), each with its own exchange client. A symbol whose stream fails
    for good is reported and the others carry on. Returns every batch's report. ``clock`` (epoch
    seconds) and ``sleep`` are the follower's time (tests inject a fake one).
    """
    reports: list[IngestReport] = []
    lock = threading.Lock()
    errors: list[str] = []

    def run(symbol: str) -> None:
        try:
            lake, ex = open_lake(cfg), open_configured_exchange(cfg)
            _, native = exchange.resolve_symbol(ex, symbol)
            since = next_bar_start(lake, cfg, native)
            if since is None:
                since = pd.Timestamp(clock(), unit="s", tz="UTC").floor(timeframe_delta(cfg.ingest.timeframe))
            for batch in exchange.follow_closed_candles(
                    ex, native, cfg.ingest.timeframe, since, poll_interval_s=cfg.ingest.poll_interval_s,
                    mode=cfg.ingest.follow_mode, stop=stop, max_batches=max_batches, clock=clock, sleep=sleep):
                report = ingest_ohlcv(lake, batch, exchange=cfg.ingest.exchange, symbol=native,
                                      timeframe=cfg.ingest.timeframe, cfg=cfg)
                with lock:
                    reports.append(report)
                    if on_report:
                        on_report(report)
        except Exception as exc:  # noqa: BLE001 - reported; the other symbols keep following
            log.exception("follow %s stopped", symbol)
            with lock:
                errors.append(symbol)
                reports.append(IngestReport(table="ohlcv", unit=symbol, error=f"{type(exc).__name__}: {exc}"))

    threads = [threading.Thread(target=run, args=(s,), name=f"follow-{s}", daemon=True) for s in cfg.ingest.symbols]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(timeout=0.5)
    return reports
