"""Sentiment feature family (prefix ``se_``): news scored by a sentiment model, aggregated per bar.

Scoring. A :class:`Scorer` turns texts into a score in [-1, 1] and a label (negative / neutral / positive).
:class:`TransformerScorer` runs a sequence-classification model (default
``cardiffnlp/twitter-roberta-base-sentiment-latest``), score = p(positive) − p(negative), label = argmax;
:class:`VaderScorer` uses VADER's compound score, label by VADER's ±0.05 convention. :func:`load_scorer`
tries the transformer and, when its weights cannot be loaded (offline, missing), falls back to VADER with a
WARNING and an ``info`` dict that says which scorer ran and why — for the run output and the manifest.

Time. A news item is known at its ``published_at`` (UTC; naive times are taken as UTC). The bar stamped t
closes at t + bar; an item counts for it only if ``published_at < t + bar``, and a trailing window of w
hours takes the items with ``t + bar − w <= published_at < t + bar``.

Coverage. ``se_coverage`` is 1 when the news feed is live at the bar's close: at least one item was
published in the ``coverage_gap_hours`` before it (a point-in-time rule: it needs no knowledge of when the
feed ends). Outside coverage every other ``se_`` column is NaN, never a zero that would read as neutral.
Inside, a window without items has count 0 (a real zero) and NaN mean/shares (a mean of nothing).

Columns (``{w}`` runs over ``windows_hours``; "coin" = items whose text mentions the bar's symbol by one
of its keywords):
- ``se_coverage``: 1 inside news coverage, 0 outside.
- ``se_mkt_n_{w}h``, ``se_mkt_mean_{w}h``, ``se_mkt_pos_{w}h``, ``se_mkt_neg_{w}h``: all items in the window:
  count, mean score, share labelled positive, share labelled negative.
- ``se_coin_n_{w}h``, ``se_coin_mean_{w}h``, ``se_coin_pos_{w}h``, ``se_coin_neg_{w}h``: the same over the
  items mentioning this coin.
- ``se_coin_share_{w}h``: coin items / all items in the window.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from cryptopredict.features.base import FamilyResult, FeatureSpec, require_bars
from cryptopredict.features.context import bar_closes_ns, bar_length

log = logging.getLogger(__name__)

FAMILY = "sentiment"
LAG = "published_at < bar close"
LABELS = ("negative", "neutral", "positive")
HOUR_NS = 3_600_000_000_000

# Lowercase keywords match case-insensitively, keywords with capitals (tickers) match case-sensitively, both
# as whole words: "LINK", "DOT", "SOL" are tickers only in capitals, while "link" or "dot" are English words.
DEFAULT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "BTCUSDT": ("bitcoin", "btc"),
    "ETHUSDT": ("ethereum", "eth", "ether"),
    "BNBUSDT": ("bnb", "binance coin"),
    "SOLUSDT": ("solana", "SOL"),
    "XRPUSDT": ("xrp", "ripple"),
    "ADAUSDT": ("cardano", "ADA"),
    "DOGEUSDT": ("dogecoin", "doge"),
    "AVAXUSDT": ("avalanche", "avax"),
    "DOTUSDT": ("polkadot", "DOT"),
    "LINKUSDT": ("chainlink", "LINK"),
    "LTCUSDT": ("litecoin", "ltc"),
}


class SentimentConfig(BaseModel):
    """Scorer choice and aggregation windows of the sentiment family."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field("cardiffnlp/twitter-roberta-base-sentiment-latest",
                            description="Hugging Face model id (3-label sequence classification)")
    local_path: Path | None = Field(None, description="a local model folder; used instead of model_name")
    device: str = Field("auto", description="'auto' (cuda when available, else cpu), 'cpu', 'cuda', 'cuda:1'")
    batch_size: PositiveInt = 64
    max_length: PositiveInt = Field(128, description="tokens per text (longer texts are truncated)")
    allow_fallback: bool = Field(True, description="fall back to VADER when the model cannot be loaded")
    text_fields: tuple[str, ...] = Field(("title", "text"), description="NEWS columns scored, joined by '. '")
    keywords: dict[str, tuple[str, ...]] = Field(default_factory=lambda: dict(DEFAULT_KEYWORDS),
                                                 description="coin mention keywords per symbol")
    windows_hours: tuple[PositiveInt, ...] = Field((24, 168), description="trailing windows, hours")
    coverage_gap_hours: float = Field(96, gt=0,
                                      description="the feed counts as live if an item came this recently")
    vader_threshold: float = Field(0.05, ge=0, lt=1,
                                   description="|compound| from which a VADER label is not neutral")


class Scores(NamedTuple):
    score: np.ndarray  # float64 in [-1, 1]
    label: np.ndarray  # object: negative | neutral | positive


class Scorer(ABC):
    """Texts → sentiment scores in [-1, 1] and labels."""

    name: str

    @abstractmethod
    def score(self, texts: Sequence[str]) -> Scores:
        """One score and label per text, in input order."""


class VaderScorer(Scorer):
    """VADER's compound score; positive when >= threshold, negative when <= −threshold, else neutral."""

    name = "vader"

    def __init__(self, threshold: float = 0.05) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.threshold = threshold
        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, texts: Sequence[str]) -> Scores:
        s = np.array([self._analyzer.polarity_scores(t)["compound"] for t in texts], dtype=float)
        label = np.where(s >= self.threshold, "positive",
                         np.where(s <= -self.threshold, "negative", "neutral"))
        return Scores(s, label.astype(object))


def _canonical_labels(id2label: dict[int, str]) -> list[str]:
    """The model's class names as negative / neutral / positive, by class index; a ValueError if the model
    does not have exactly those three classes (e.g. unnamed LABEL_0..2)."""
    names = []
    for i in range(len(id2label)):
        raw = str(id2label[i]).strip().lower()
        names.append(next((c for c in LABELS if raw.startswith(c[:3])), raw))
    if sorted(names) != sorted(LABELS):
        raise ValueError(f"model labels {id2label} are not negative/neutral/positive")
    return names


def load_pretrained(source: str | Path) -> tuple[Any, Any]:
    """(tokenizer, sequence-classification model) from a local folder or a hub id. Raises OSError when the
    files cannot be had (offline and not cached, no such repo or folder, no config.json), ValueError when
    a folder holds a model but no usable tokenizer, ImportError without torch/transformers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(source))
    return AutoTokenizer.from_pretrained(str(source)), model


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when torch sees a GPU, else 'cpu'; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TransformerScorer(Scorer):
    """A sequence-classification model: score = p(positive) − p(negative) from the softmax over its logits,
    classes found by name in the model config's ``id2label``. Texts are batched by length, no gradients."""

    name = "transformer"

    def __init__(self, tokenizer: Any, model: Any, *, device: str = "cpu", batch_size: int = 64,
                 max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.labels = _canonical_labels({int(k): v for k, v in model.config.id2label.items()})
        self._pos = self.labels.index("positive")
        self._neg = self.labels.index("negative")

    def score(self, texts: Sequence[str]) -> Scores:
        import torch

        texts = list(texts)
        probs = np.empty((len(texts), len(self.labels)))
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths batched: less padding
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                idx = order[start:start + self.batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                logits = self.model(**enc).logits.float()
                probs[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
        score = probs[:, self._pos] - probs[:, self._neg]
        label = np.array(self.labels, dtype=object)[probs.argmax(axis=1)]
        return Scores(score, label)


def load_scorer(cfg: SentimentConfig | None = None) -> tuple[Scorer, dict[str, object]]:
    """The transformer scorer from ``cfg.local_path`` or ``cfg.model_name``; when its files cannot be loaded
    (offline, missing, no torch/transformers) VADER instead, with a WARNING. ``info`` says which scorer runs:
    ``{"scorer": "transformer", "model", "device", "labels"}`` or ``{"scorer": "vader", "requested_model",
    "reason"}``. With ``allow_fallback=False`` the load error is raised instead."""
    cfg = cfg or SentimentConfig()
    source = str(cfg.local_path) if cfg.local_path is not None else cfg.model_name
    try:
        tokenizer, model = load_pretrained(source)
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {first[0] if first else ''}"
        if not cfg.allow_fallback:
            raise RuntimeError(f"sentiment model {source!r} cannot be loaded ({reason})") from exc
        log.warning("sentiment: model %r cannot be loaded (%s); falling back to VADER", source, reason)
        info: dict[str, object] = {"scorer": "vader", "requested_model": source, "reason": reason}
        return VaderScorer(cfg.vader_threshold), info
    # outside the try: a model that loads but has unusable labels is a configuration error, not a fallback
    scorer = TransformerScorer(tokenizer, model, device=resolve_device(cfg.device), batch_size=cfg.batch_size,
                               max_length=cfg.max_length)
    log.info("sentiment: scoring with %s on %s", source, scorer.device)
    return scorer, {"scorer": "transformer", "model": source, "device": scorer.device,
                    "labels": scorer.labels}


def _mention_pattern(keywords: Sequence[str]) -> str:
    parts = [rf"\b{re.escape(k)}\b" if k != k.lower() else rf"(?i:\b{re.escape(k)}\b)" for k in keywords]
    return "|".join(parts)


def score_news(news: pd.DataFrame, scorer: Scorer, cfg: SentimentConfig | None = None) -> pd.DataFrame:
    """One row per news item, sorted by publication time: ``id``, ``published_at`` (UTC), ``score``,
    ``label`` and ``mention_<SYMBOL>`` (keyword hits in the scored text) per symbol of ``cfg.keywords``."""
    cfg = cfg or SentimentConfig()
    missing = [c for c in ("id", "published_at", *cfg.text_fields) if c not in news.columns]
    if missing:
        raise ValueError(f"news lacks columns {missing}")
    published = pd.DatetimeIndex(news["published_at"])
    published = published.tz_localize("UTC") if published.tz is None else published.tz_convert("UTC")
    parts = news[list(cfg.text_fields)].fillna("").astype(str)
    text = parts.apply(lambda row: ". ".join(p.strip() for p in row if p.strip()), axis=1) if len(news) \
        else pd.Series([], dtype=object)
    scores = scorer.score(text.tolist())
    out = pd.DataFrame({"id": news["id"].astype(str).to_numpy(), "published_at": published.as_unit("ns"),
                        "score": scores.score, "label": scores.label})
    text = text.reset_index(drop=True)
    for symbol, words in cfg.keywords.items():
        out[f"mention_{symbol}"] = text.str.count(_mention_pattern(words)).to_numpy(int) if len(text) else 0
    return out.sort_values(["published_at", "id"], kind="stable").reset_index(drop=True)


def compute_sentiment(bars: pd.DataFrame, symbol: str, scored_news: pd.DataFrame,
                      cfg: SentimentConfig | None = None, *, bar: pd.Timedelta | None = None) -> FamilyResult:
    """The ``se_`` columns for ``symbol``'s bars from :func:`score_news` output. Row t counts the items
    published before t's close (``published_at < t + bar``). ``bar`` defaults to the bars' ``timeframe``."""
    cfg = cfg or SentimentConfig()
    require_bars(bars)
    mention = f"mention_{symbol}"
    if mention not in scored_news.columns:
        raise ValueError(f"scored news has no {mention!r}; is {symbol!r} in SentimentConfig.keywords?")
    news = scored_news.sort_values("published_at", kind="stable")
    if news["score"].isna().any():
        raise ValueError("scored news has NaN scores")
    step = bar_length(bars, bar)
    close = bar_closes_ns(bars, step)
    p = pd.DatetimeIndex(news["published_at"]).tz_convert("UTC").as_unit("ns").asi8
    score = news["score"].to_numpy(float)
    pos = (news["label"] == "positive").to_numpy(float)
    neg = (news["label"] == "negative").to_numpy(float)
    coin = (news[mention] > 0).to_numpy(float)

    def cum(x: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(x)])

    sums = {k: cum(v) for k, v in {"n": np.ones(len(p)), "score": score, "pos": pos, "neg": neg, "cn": coin,
                                   "cscore": coin * score, "cpos": coin * pos, "cneg": coin * neg}.items()}
    hi = np.searchsorted(p, close, side="left")  # items with published_at < close
    covered = hi > np.searchsorted(p, close - int(cfg.coverage_gap_hours * HOUR_NS), side="left")

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)

    out: dict[str, np.ndarray] = {"se_coverage": covered.astype(float)}
    specs = [FeatureSpec("se_coverage", FAMILY, None, "news.published_at", LAG,
                         f"1 when an item was published in the {cfg.coverage_gap_hours:g} h before the "
                         "close")]
    for w in cfg.windows_hours:
        lo = np.searchsorted(p, close - w * HOUR_NS, side="left")  # items with published_at >= close − w
        window = w * HOUR_NS // step.value if (w * HOUR_NS) % step.value == 0 else None  # in bars
        win = {k: v[hi] - v[lo] for k, v in sums.items()}
        cols = {
            f"se_mkt_n_{w}h": (win["n"], "news items"),
            f"se_mkt_mean_{w}h": (ratio(win["score"], win["n"]), "mean score of the items"),
            f"se_mkt_pos_{w}h": (ratio(win["pos"], win["n"]), "share of items labelled positive"),
            f"se_mkt_neg_{w}h": (ratio(win["neg"], win["n"]), "share of items labelled negative"),
            f"se_coin_n_{w}h": (win["cn"], f"items mentioning {symbol}"),
            f"se_coin_mean_{w}h": (ratio(win["cscore"], win["cn"]), f"mean score of the {symbol} items"),
            f"se_coin_pos_{w}h": (ratio(win["cpos"], win["cn"]), f"share positive of the {symbol} items"),
            f"se_coin_neg_{w}h": (ratio(win["cneg"], win["cn"]), f"share negative of the {symbol} items"),
            f"se_coin_share_{w}h": (ratio(win["cn"], win["n"]), f"share of the items mentioning {symbol}"),
        }
        for name, (values, what) in cols.items():
            out[name] = np.where(covered, values, np.nan)
            specs.append(FeatureSpec(name, FAMILY, window, f"news.score,label,{mention}", LAG,
                                     f"{what} published in the {w} h before the bar close"))
    frame = pd.DataFrame(out, index=pd.RangeIndex(len(bars)))
    return FamilyResult(frame, specs).check(len(bars))
