"""One typed configuration for the whole system, loaded from YAML and overridable from the command line.

Overrides use dotted paths: ``--set lake.root=s3://bucket/lake --set ingest.symbols=[BTCUSDT,ETHUSDT]``;
the value is parsed as YAML, so lists, numbers and booleans work.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cryptopredict.evaluation.settings import EvaluationConfig
from cryptopredict.features.settings import FeaturesConfig  # each family's knobs live with the family
from cryptopredict.monitoring.settings import MonitoringConfig
from cryptopredict.paper.settings import PaperConfig
from cryptopredict.registry.settings import RegistryConfig
from cryptopredict.serving.settings import ServingConfig
from cryptopredict.training.settings import TuningConfig  # pydantic only: no torch/ray at config import

SHIPPED_SYMBOLS = [
    "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT",
    "DOGEUSDT", "AVAXUSDT", "DOTUSDT", "LINKUSDT", "LTCUSDT",
]


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LakeConfig(_Strict):
    root: str = Field("lake", description="local directory or s3://bucket/prefix")
    s3_region: str | None = Field(None, description="region for s3:// roots (avoids a lookup)")
    s3_endpoint: str | None = Field(None, description="endpoint override for S3-compatible stores")


class ValidationConfig(_Strict):
    outlier_robust_z: float = Field(
        50.0, gt=0,
        description="a bar is an outlier when its close log return is beyond this many robust sigmas "
        "(trailing median/MAD) and the next bar reverts it; 50 flags no bar of the shipped, cross-checked data",
    )
    outlier_window: int = Field(720, ge=24, description="trailing bars for the robust median/MAD")
    outlier_min_periods: int = Field(48, ge=10)


class RayConfig(_Strict):
    address: str | None = Field(None, description="join this cluster; default: RAY_ADDRESS, else start locally")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a locally started Ray; default all")
    object_store_memory_mb: int = Field(256, ge=64)
    parallelism: Literal["data", "tasks", "serial"] = Field(
        "data", description="per-symbol work: Ray Data map over a dataset of symbols, Ray tasks, or in-process"
    )


class SourcesConfig(_Strict):
    """Base URLs and keys of the live sources (keys are read from the environment variables named here)."""

    coingecko_url: str = "https://api.coingecko.com/api/v3"
    coingecko_key_env: str = "COINGECKO_API_KEY"
    coingecko_ids: list[str] = Field(
        default_factory=lambda: ["bitcoin", "ethereum", "binancecoin", "solana", "ripple", "cardano",
                                 "dogecoin", "avalanche-2", "polkadot", "chainlink", "litecoin", "tether"]
    )
    fear_greed_url: str = "https://api.alternative.me"
    coinmetrics_url: str = "https://community-api.coinmetrics.io"
    onchain_metrics: list[str] = Field(
        default_factory=lambda: ["AdrActCnt", "AdrBalCnt", "BlkCnt", "HashRate", "TxCnt", "TxTfrCnt",
                                 "FeeTotNtv", "IssTotUSD", "SplyCur", "SplyExNtv", "FlowInExUSD",
                                 "FlowOutExUSD", "CapMrktCurUSD", "CapMrktEstUSD", "CapMVRVCur", "PriceUSD"]
    )
    blockchain_charts_url: str = "https://api.blockchain.info"
    fred_url: str = "https://api.stlouisfed.org"
    fred_key_env: str = "FRED_API_KEY"
    fred_series: list[str] = Field(default_factory=lambda: ["VIXCLS", "SP500", "DGS10", "DTWEXBGS"])
    yahoo_url: str = "https://query1.finance.yahoo.com"
    yahoo_tickers: list[str] = Field(default_factory=lambda: ["DX-Y.NYB", "GC=F"])
    defillama_url: str = "https://api.llama.fi"
    rss_feeds: dict[str, str] = Field(
        default_factory=lambda: {"CoinTelegraph": "https://cointelegraph.com/rss",
                                 "CoinDesk": "https://www.coindesk.com/arc/outboundfeeds/rss/",
                                 "CryptoPotato": "https://cryptopotato.com/feed/"},
        description="publisher name -> RSS/Atom feed URL",
    )
    reddit_url: str = "https://www.reddit.com"
    subreddits: list[str] = Field(default_factory=lambda: ["CryptoCurrency", "Bitcoin"])
    defillama_chains: list[str] = Field(default_factory=lambda: ["all", "Ethereum", "Solana"])
    tables: list[Literal["fear_greed", "onchain", "macro", "tvl", "market_caps", "news"]] = Field(
        default_factory=lambda: ["fear_greed", "onchain", "macro", "tvl", "market_caps", "news"],
        description="context tables that `ingest --live` fetches",
    )
    lookback_days: int = Field(30, ge=1, description="first live fetch of a table reaches back this far")
    overlap_days: int = Field(3, ge=0, description="later fetches start this far before the last stored day")


class IngestConfig(_Strict):
    exchange: str = "binance"
    symbols: list[str] = Field(default_factory=lambda: list(SHIPPED_SYMBOLS))
    timeframe: str = "1h"
    snapshot_dir: str = Field("data", description="the shipped dataset (the default input)")
    start: datetime | None = Field(None, description="first bar (UTC, ISO 8601) for live backfills")
    poll_interval_s: float | None = Field(None, gt=0, description="--follow polling interval; default one bar")
    follow_mode: Literal["auto", "poll", "ws"] = Field("auto", description="--follow: websocket when available")
    exchange_api_urls: dict[str, Any] | None = Field(
        None, description="override ccxt's exchange.urls['api'] entries (a proxy, or a local fake in tests)")

    @field_validator("symbols")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one symbol is required")
        return [s.strip() for s in v]


class Config(_Strict):
    seed: int = 7
    run_dir: str = Field("runs", description="where reports and run records go")
    lake: LakeConfig = Field(default_factory=LakeConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    paper: PaperConfig = Field(default_factory=PaperConfig)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``'a.b=value'`` → ``('a.b', yaml-parsed value)``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.__class__.__name__})") from None


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (YAML; None = built-in defaults), apply ``key=value`` overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
        tree = loaded
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"config field {where!r}: {first['msg']} (got {first.get('input')!r})") from None
