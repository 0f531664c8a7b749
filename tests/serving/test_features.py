"""Request-time features: computed from a trailing slice of bars by the pipeline's own functions, they equal
the stored feature table (no train/serve skew), and context data appears only after its publication."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryptopredict.data.ingest import ingest_table, open_lake
from cryptopredict.features.pipeline import MANIFEST, read_bars
from cryptopredict.serving.features import FeatureSkewError, compute_request_features, latest_bars, \
    longest_window, lookback_bars
from tests.support.served_model import SYMBOLS, ServedModel

WINDOW = 32  # rows compared per symbol: more than any model window used here


def _assert_same_as_stored(served: ServedModel, request, rows: int) -> dict[str, int]:
    """Every request-time value equals the stored one (float32, rtol 1e-6); returns compared non-NaN values
    per family."""
    lake = open_lake(served.cfg)
    manifest = lake.read_json(MANIFEST)
    family = {f["name"]: f["family"] for f in manifest["features"]}
    compared: dict[str, int] = {}
    for s in SYMBOLS:
        got = request.features.xs(s, level="symbol")
        assert len(got) == rows
        stored = lake.read_frame("features", {"symbol": s}).set_index("timestamp")
        want = stored.loc[got.index, [c for c in stored.columns if c != "symbol"]]
        assert list(got.columns) == list(want.columns), "request-time columns differ from the stored ones"
        a, b = got.to_numpy(np.float64), want.to_numpy(np.float64)
        same_nan = np.isnan(a) == np.isnan(b)
        assert same_nan.all(), f"{s}: NaN pattern differs in {list(got.columns[~same_nan.all(0)])[:8]}"
        finite = ~np.isnan(b)
        ok = np.isclose(a, b, rtol=1e-6, atol=0.0) | ~finite
        bad = list(got.columns[~ok.all(0)])
        assert not bad, f"{s}: train/serve skew in {bad[:8]}"
        for j, c in enumerate(got.columns):
            compared[family[c]] = compared.get(family[c], 0) + int(finite[:, j].sum())
    return compared


def test_request_features_equal_the_stored_table(served_model: ServedModel) -> None:
    cfg = served_model.cfg
    lake = open_lake(cfg)
    lookback = lookback_bars(cfg, longest_window(lake, cfg))
    history = len(read_bars(lake, cfg, "BTCUSDT"))
    assert lookback < history - 1000, "the test must compute from less history than the stored table had"
    request = compute_request_features(cfg, lake, rows=WINDOW, lookback=lookback)
    assert request.as_of == served_model.as_of
    compared = _assert_same_as_stored(served_model, request, WINDOW)
    # every family is switched on and has real values in the compared rows
    assert set(compared) == {"technical", "fractal", "cross_asset", "context", "sentiment"}, compared
    assert all(n >= 3 * WINDOW for n in compared.values()), compared
    # sigma is the labels' trailing volatility
    labels = lake.read_frame("labels", {"symbol": "ETHUSDT"}).set_index("timestamp")
    sig = request.sigma.xs("ETHUSDT", level="symbol")
    np.testing.assert_allclose(sig.to_numpy(), labels.loc[sig.index, "trailing_vol_168"].to_numpy(), rtol=1e-9)
    # the correlation rows are the stored matrices of the same bars
    stored = lake.read_frame("correlations")
    mine = request.correlations.set_index(["timestamp", "symbol_a", "symbol_b"])["corr"]
    np.testing.assert_allclose(mine.to_numpy(), stored.set_index(["timestamp", "symbol_a", "symbol_b"])
                               .loc[mine.index, "corr"].to_numpy(), rtol=1e-6)
    assert len(mine) == 3 * WINDOW


@pytest.mark.slow
def test_request_features_equal_the_stored_table_at_earlier_bars(served_model: ServedModel) -> None:
    cfg = served_model.cfg
    lake = open_lake(cfg)
    lookback = lookback_bars(cfg, longest_window(lake, cfg))
    for hours_back in (7, 300):  # a late evening bar and one ~12 days earlier (other fractal carries)
        end = served_model.as_of - pd.Timedelta(hours=hours_back)
        request = compute_request_features(cfg, lake, rows=8, lookback=lookback, end=end)
        assert request.as_of == end
        assert request.features.index.get_level_values("timestamp").max() == end
        _assert_same_as_stored(served_model, request, 8)


def test_too_short_a_lookback_is_detectably_different(served_model: ServedModel) -> None:
    """The comparison above has teeth: 600 bars cannot reproduce the 2160-bar altseason or EMA 200."""
    cfg = served_model.cfg
    request = compute_request_features(cfg, open_lake(cfg), rows=4, lookback=600)
    with pytest.raises(AssertionError, match="NaN pattern differs|skew"):
        _assert_same_as_stored(served_model, request, 4)


def test_context_is_used_only_after_publication(served_model: ServedModel, tmp_path: Path) -> None:
    """Fear & Greed rows dated on the latest bar's day (published D+1 01:00 UTC, after its close) and later
    change nothing; the request-time row takes the value of the last published day."""
    lake_dir = tmp_path / "lake"
    shutil.copytree(served_model.cfg.lake.root, lake_dir)
    cfg = served_model.cfg.model_copy(deep=True)
    cfg.lake.root = str(lake_dir)
    lake = open_lake(cfg)
    lookback = lookback_bars(cfg, longest_window(lake, cfg))
    before = compute_request_features(cfg, lake, rows=4, lookback=lookback)
    day = served_model.as_of.normalize()
    future = pd.DataFrame({"date": pd.date_range(day, periods=3, freq="D"), "value": [1.0, 2.0, 3.0],
                           "classification": "Extreme Fear", "source": "test"})
    existing = lake.read("fear_greed")
    future = future[~future["date"].isin(pd.DatetimeIndex(existing["date"]))]
    assert len(future) >= 2
    ingest_table(lake, "fear_greed", future)
    after = compute_request_features(cfg, lake, rows=4, lookback=lookback)
    pd.testing.assert_frame_equal(before.features, after.features)
    assert (after.features["cx_fg_value"] > 3).all()


def test_latest_bars_reads_only_the_footer(served_model: ServedModel) -> None:
    cfg = served_model.cfg
    lake = open_lake(cfg)
    got = latest_bars(lake, cfg, [*SYMBOLS, "NOPEUSDT"])
    for s in SYMBOLS:
        assert got[s] == read_bars(lake, cfg, s)["timestamp"].max()
    assert got["NOPEUSDT"] is None


def test_a_different_features_config_is_refused(served_model: ServedModel) -> None:
    cfg = served_model.cfg.model_copy(deep=True)
    cfg.features.label_vol_window = 24
    with pytest.raises(FeatureSkewError, match="label_vol_window"):
        longest_window(open_lake(cfg), cfg)


def test_lookback_is_derived_from_the_feature_windows(served_model: ServedModel) -> None:
    cfg = served_model.cfg
    longest = longest_window(open_lake(cfg), cfg)
    assert longest == cfg.features.cross_asset.altseason_window  # the longest default window
    assert lookback_bars(cfg, longest) == longest + cfg.features.fractal.stride_hours + cfg.serving.warmup_bars
    fixed = cfg.model_copy(deep=True)
    fixed.serving.lookback_bars = 999
    assert lookback_bars(fixed, longest) == 999


def test_news_not_scored_yet_is_scored_like_the_pipeline_does(served_model: ServedModel, tmp_path: Path) -> None:
    """Headlines that arrived after the features job (in ``news``, not in ``news_scores``) are scored at
    request time by the same scorer and counted by the sentiment family; the stored scores are kept."""
    from cryptopredict.features.sentiment import VaderScorer, score_news
    from cryptopredict.serving.features import scored_news_now

    lake_dir = tmp_path / "lake"
    shutil.copytree(served_model.cfg.lake.root, lake_dir)
    cfg = served_model.cfg.model_copy(deep=True)
    cfg.lake.root = str(lake_dir)
    lake = open_lake(cfg)
    lookback = lookback_bars(cfg, longest_window(lake, cfg))
    before = compute_request_features(cfg, lake, rows=1, lookback=lookback)
    close = served_model.as_of + pd.Timedelta(hours=1)
    fresh = pd.DataFrame({"id": ["late-1", "late-2", "late-3"],
                          "published_at": [close - pd.Timedelta(hours=h) for h in (2, 5, 30)],
                          "source": "test", "subject": "bitcoin",
                          "title": ["Bitcoin soars to a wonderful record", "Bitcoin crashes, panic everywhere",
                                    "Ethereum upgrade goes live"],
                          "text": "", "url": ["https://example.invalid/1", "https://example.invalid/2",
                                              "https://example.invalid/3"]})
    ingest_table(lake, "news", fresh)
    stored = lake.read_frame("news_scores")
    scored = scored_news_now(lake, cfg)
    assert len(scored) == len(stored) + 3 and set(stored["id"]) < set(scored["id"])
    want = score_news(lake.read("news").query("id.str.startswith('late-')", engine="python"), VaderScorer(),
                      cfg.features.sentiment).set_index("id")
    got = scored.set_index("id").loc[want.index]
    np.testing.assert_allclose(got["score"].to_numpy(float), want["score"].to_numpy(float))
    assert list(got["label"]) == list(want["label"])
    after = compute_request_features(cfg, lake, rows=1, lookback=lookback, scored_news=scored)
    for symbol in SYMBOLS:  # two new items in the last 24 h, three in the last week, for every coin
        b, a = before.features.xs(symbol, level="symbol").iloc[-1], after.features.xs(symbol, level="symbol").iloc[-1]
        assert a["se_mkt_n_24h"] - b["se_mkt_n_24h"] == 2 and a["se_mkt_n_168h"] - b["se_mkt_n_168h"] == 3
    btc_after = after.features.xs("BTCUSDT", level="symbol").iloc[-1]
    btc_before = before.features.xs("BTCUSDT", level="symbol").iloc[-1]
    assert btc_after["se_coin_n_24h"] - btc_before["se_coin_n_24h"] == 2
