"""Sentiment: a real forward pass through a tiny locally built RoBERTa, the VADER fallback and what it
reports, aggregation against hand counts and a brute-force reference, coverage, the look-ahead property."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from cryptopredict.data.snapshot import read_snapshot_context, read_snapshot_ohlcv
from cryptopredict.features.sentiment import (
    LABELS,
    Scorer,
    Scores,
    SentimentConfig,
    TransformerScorer,
    VaderScorer,
    compute_sentiment,
    load_scorer,
    score_news,
)
from tests.conftest import SHIPPED_DATA
from tests.support.frames import ohlcv_frame
from tests.support.lookahead import assert_no_lookahead, random_cuts

H = pd.Timedelta(hours=1)
SENTENCES = ["Bitcoin rallies to a new record high", "Ether crashes after the exchange hack",
             "Markets are calm as traders wait", "Regulators approve the first spot ETF",
             "Miners sell coins as fees collapse", "Solana network halts again"]
TEXTS = ["Bitcoin rallies", "Ether crashes after the exchange hack and traders panic", "calm",
         "Regulators approve the first spot ETF for bitcoin", "Miners sell"]


def utc(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def save_tiny_model(path: Path, id2label: dict[int, str], *, positive_bias: float = 0.0) -> Path:
    """A 1-layer RoBERTa classifier with a byte-level BPE tokenizer trained here on SENTENCES."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>",
                            model_max_length=32).save_pretrained(path)
    cfg = RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=40,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2, initializer_range=0.5,
                        id2label=id2label, label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(cfg)
    with torch.no_grad():
        model.classifier.out_proj.bias[2] += positive_bias
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), {0: "negative", 1: "neutral", 2: "positive"})


def test_transformer_scorer_runs_a_real_forward_pass_from_a_local_folder(tiny_model: Path) -> None:
    scorer, info = load_scorer(SentimentConfig(local_path=tiny_model, batch_size=2, max_length=16))
    assert isinstance(scorer, TransformerScorer)
    assert info == {"scorer": "transformer", "model": str(tiny_model), "labels": list(LABELS),
                    "device": "cuda" if torch.cuda.is_available() else "cpu"}
    out = scorer.score(TEXTS)
    assert out.score.shape == (len(TEXTS),) and out.label.shape == (len(TEXTS),)
    assert np.all((out.score >= -1) & (out.score <= 1)) and set(out.label) <= set(LABELS)
    assert np.ptp(out.score) > 1e-3  # the texts are told apart
    assert np.array_equal(scorer.score(TEXTS).score, out.score)  # deterministic (eval mode, no dropout)
    # batched by length with padding == one at a time: attention mask and order restoration are right
    alone = np.array([scorer.score([t]).score[0] for t in TEXTS])
    np.testing.assert_allclose(out.score, alone, atol=1e-5)
    # score = p(positive) − p(negative) computed straight from the model, the text cut at max_length tokens
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model)
    enc = tok([TEXTS[1]], truncation=True, max_length=16, return_tensors="pt")
    assert len(tok(TEXTS[1])["input_ids"]) > 16  # the cut matters for this text
    with torch.no_grad():
        p = torch.softmax(model.eval()(**enc).logits, -1)[0].numpy()
    assert out.score[1] == pytest.approx(p[2] - p[0], abs=1e-5)
    assert out.label[1] == LABELS[int(p.argmax())]


def test_labels_are_mapped_by_name_from_id2label(tmp_path: Path) -> None:
    straight = save_tiny_model(tmp_path / "a", {0: "negative", 1: "neutral", 2: "positive"},
                               positive_bias=8.0)
    flipped = save_tiny_model(tmp_path / "b", {0: "Positive", 1: "Neutral", 2: "Negative"}, positive_bias=8.0)
    a = load_scorer(SentimentConfig(local_path=straight, device="cpu"))[0].score(TEXTS)
    b = load_scorer(SentimentConfig(local_path=flipped, device="cpu"))[0].score(TEXTS)
    assert (a.score > 0.9).all() and (a.label == "positive").all()  # class 2 dominates: "positive" here …
    np.testing.assert_allclose(b.score, -a.score, atol=1e-6)  # … and "Negative" there
    assert (b.label == "negative").all()
    unnamed = save_tiny_model(tmp_path / "c", {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    with pytest.raises(ValueError, match="negative/neutral/positive"):  # a misconfigured model is no fallback
        load_scorer(SentimentConfig(local_path=unnamed, device="cpu"))


def test_unloadable_model_falls_back_to_vader_and_says_why(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cryptopredict.features.sentiment"):
        scorer, info = load_scorer(SentimentConfig(model_name="cryptopredict-tests/no-such-model"))
    assert isinstance(scorer, VaderScorer)
    assert info["scorer"] == "vader" and info["requested_model"] == "cryptopredict-tests/no-such-model"
    assert str(info["reason"]).startswith("OSError")
    assert any("falling back to VADER" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    empty = tmp_path / "empty"
    empty.mkdir()
    scorer, info = load_scorer(SentimentConfig(local_path=empty))
    assert info["scorer"] == "vader" and info["requested_model"] == str(empty)
    assert "config.json" in str(info["reason"])  # a folder without a model in it
    with pytest.raises(RuntimeError, match="cannot be loaded"):
        load_scorer(SentimentConfig(local_path=empty, allow_fallback=False))


def test_vader_scores_and_labels() -> None:
    out = VaderScorer().score(["Bitcoin soars to a record high as investors celebrate huge gains",
                               "Exchange hacked: investors lose millions in a devastating crash",
                               "The network upgrade is scheduled for Tuesday"])
    assert out.score[0] > 0.5 and out.score[1] < -0.5 and abs(out.score[2]) < 0.05
    assert list(out.label) == ["positive", "negative", "neutral"]


class TableScorer(Scorer):
    """Scores looked up by text: hand-chosen values for the aggregation tests."""

    name = "table"

    def __init__(self, table: dict[str, tuple[float, str]]) -> None:
        self.table = table

    def score(self, texts: Sequence[str]) -> Scores:
        rows = [self.table[t] for t in texts]
        return Scores(np.array([r[0] for r in rows], float), np.array([r[1] for r in rows], object))


ITEMS = [  # published_at (naive = UTC), title, text, score, label
    ("2024-01-01 05:00", "Bitcoin and BTC rally", "", 0.5, "positive"),
    ("2024-01-01 05:30", "Click the link below", "ether and ETH", -0.3, "negative"),
    ("2024-01-01 05:59", "Chainlink LINK integration", "bitcoin", 0.1, "neutral"),
    ("2024-01-01 12:00", "Polkadot DOT and a dot", "", -0.8, "negative"),
]
CFG = SentimentConfig(windows_hours=(2, 24), coverage_gap_hours=10)


@pytest.fixture
def hand_news() -> pd.DataFrame:
    scorer = TableScorer({(f"{t}. {x}" if x else t): (s, lab) for _, t, x, s, lab in ITEMS})
    raw = pd.DataFrame({"id": [f"n{i}" for i in range(len(ITEMS))][::-1],
                        "published_at": pd.to_datetime([i[0] for i in ITEMS][::-1]),
                        "title": [i[1] for i in ITEMS][::-1], "text": [i[2] for i in ITEMS][::-1]})
    return score_news(raw, scorer, CFG)


def test_score_news_counts_mentions_and_sorts_by_time(hand_news: pd.DataFrame) -> None:
    assert list(hand_news["id"]) == ["n0", "n1", "n2", "n3"]
    assert str(hand_news["published_at"].dt.tz) == "UTC"
    assert hand_news["published_at"][0] == utc("2024-01-01 05:00")  # naive times are taken as UTC
    assert list(hand_news["score"]) == [0.5, -0.3, 0.1, -0.8]
    assert list(hand_news["mention_BTCUSDT"]) == [2, 0, 1, 0]
    assert list(hand_news["mention_ETHUSDT"]) == [0, 2, 0, 0]
    assert list(hand_news["mention_LINKUSDT"]) == [0, 0, 2, 0]  # "link" in lowercase is a word, not LINK
    assert list(hand_news["mention_DOTUSDT"]) == [0, 0, 0, 2]  # "a dot" is not DOT


def brute_force(bars: pd.DataFrame, news: pd.DataFrame, symbol: str, cfg: SentimentConfig) -> pd.DataFrame:
    """The same features by a plain loop over bars and items."""
    rows = []
    for t in bars["timestamp"]:
        close = t + H
        seen = news[news["published_at"] < close]
        covered = ((seen["published_at"] >= close - pd.Timedelta(hours=cfg.coverage_gap_hours)).any())
        row = {"se_coverage": float(covered)}
        for w in cfg.windows_hours:
            win = seen[seen["published_at"] >= close - pd.Timedelta(hours=w)]
            coin = win[win[f"mention_{symbol}"] > 0]
            for tag, df in (("mkt", win), ("coin", coin)):
                n = len(df)
                row[f"se_{tag}_n_{w}h"] = float(n)
                row[f"se_{tag}_mean_{w}h"] = df["score"].mean() if n else np.nan
                row[f"se_{tag}_pos_{w}h"] = (df["label"] == "positive").mean() if n else np.nan
                row[f"se_{tag}_neg_{w}h"] = (df["label"] == "negative").mean() if n else np.nan
            row[f"se_coin_share_{w}h"] = len(coin) / len(win) if len(win) else np.nan
            if not covered:
                row.update({k: np.nan for k in row if k != "se_coverage"})
        rows.append(row)
    return pd.DataFrame(rows)


def test_aggregation_matches_hand_counts_and_a_brute_force_reference(hand_news: pd.DataFrame) -> None:
    bars = ohlcv_frame(36, start="2024-01-01")
    res = compute_sentiment(bars, "BTCUSDT", hand_news, CFG)
    f = res.frame.set_index(bars["timestamp"])
    # an item published at 05:00 is not known at the close of bar 04:00 (05:00): p < close, strictly
    assert f.loc[utc("2024-01-01 04:00"), "se_coverage"] == 0
    assert np.isnan(f.loc[utc("2024-01-01 04:00"), "se_mkt_n_24h"])
    b5 = f.loc[utc("2024-01-01 05:00")]  # close 06:00: all three morning items
    assert b5["se_coverage"] == 1 and b5["se_mkt_n_2h"] == 3 and b5["se_mkt_mean_2h"] == pytest.approx(0.1)
    assert b5["se_mkt_pos_2h"] == pytest.approx(1 / 3) and b5["se_mkt_neg_2h"] == pytest.approx(1 / 3)
    assert b5["se_coin_n_2h"] == 2 and b5["se_coin_mean_2h"] == pytest.approx(0.3)
    assert b5["se_coin_pos_2h"] == 0.5 and b5["se_coin_neg_2h"] == 0
    assert b5["se_coin_share_2h"] == pytest.approx(2 / 3)
    # the 2 h window at the close 08:00 is [06:00, 08:00): empty — a real zero count inside coverage
    b7 = f.loc[utc("2024-01-01 07:00")]
    assert b7["se_coverage"] == 1 and b7["se_mkt_n_2h"] == 0 and b7["se_coin_n_2h"] == 0
    assert np.isnan(b7["se_mkt_mean_2h"]) and b7["se_mkt_n_24h"] == 3
    assert f.loc[utc("2024-01-01 06:00"), "se_mkt_n_2h"] == 3  # [05:00, 07:00) still holds the 05:00 item
    # the feed is silent for more than 10 h after 12:00: out of coverage from the close 23:00 on
    assert f.loc[utc("2024-01-01 21:00"), "se_coverage"] == 1
    assert f.loc[utc("2024-01-01 22:00"), "se_coverage"] == 0
    outside = f[f["se_coverage"] == 0].drop(columns="se_coverage")
    assert len(outside) > 0 and outside.isna().all().all()
    want = brute_force(bars, hand_news, "BTCUSDT", CFG)
    pd.testing.assert_frame_equal(res.frame, want[list(res.frame.columns)], check_exact=False, rtol=1e-12)
    assert [s.window for s in res.specs][:3] == [None, 2, 2]  # windows in bars
    assert {s.family for s in res.specs} == {"sentiment"}


@pytest.fixture(scope="module")
def vader_news() -> pd.DataFrame:
    return score_news(read_snapshot_context(SHIPPED_DATA, "news"), VaderScorer())


@pytest.fixture(scope="module")
def eth() -> pd.DataFrame:
    b = read_snapshot_ohlcv(SHIPPED_DATA, "ETHUSDT")
    keep = (b["timestamp"] >= utc("2021-09-01")) & (b["timestamp"] < utc("2022-08-01"))
    return b[keep].reset_index(drop=True)


def test_coverage_on_shipped_news(eth: pd.DataFrame, vader_news: pd.DataFrame) -> None:
    f = compute_sentiment(eth, "ETHUSDT", vader_news).frame.set_index(eth["timestamp"])
    first, last = vader_news["published_at"].min(), vader_news["published_at"].max()
    before = f.loc[:first - H]  # closes <= the first item
    after = f.loc[last + pd.Timedelta(hours=96):]  # closes more than 96 h after the last item
    for part in (before, after):
        assert len(part) > 100 and (part["se_coverage"] == 0).all()
        assert part.drop(columns="se_coverage").isna().all().all()  # NaN, never a neutral-looking zero
    inside = f.loc[utc("2022-02-01"):utc("2022-06-30")]
    assert (inside["se_coverage"] == 1).all() and inside["se_mkt_n_24h"].notna().all()
    assert (inside["se_coin_n_24h"] == 0).any() and (inside["se_coin_n_24h"] > 0).any()
    assert inside["se_mkt_mean_24h"].between(-1, 1).all() and (inside["se_mkt_n_24h"] > 0).all()


def test_no_lookahead_on_shipped_news(eth: pd.DataFrame, vader_news: pd.DataFrame) -> None:
    ts = eth["timestamp"]

    def compute(t_end: pd.Timestamp) -> pd.DataFrame:
        known = vader_news[vader_news["published_at"] < t_end + H]
        return compute_sentiment(eth[ts <= t_end], "ETHUSDT", known).frame

    on_the_hour = vader_news["published_at"][vader_news["published_at"].dt.minute == 0]
    boundary = [p - H for p in on_the_hour.iloc[:: max(1, len(on_the_hour) // 6)] if (ts == p - H).any()]
    cuts = sorted(set(random_cuts(ts, 10, seed=3, min_position=24 * 30) + boundary[:6]))
    assert len(boundary) >= 3
    assert assert_no_lookahead(compute, ts, cuts) > 10 * len(cuts)
