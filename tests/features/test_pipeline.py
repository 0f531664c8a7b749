"""The feature pipeline end to end on the shipped data: the Ray path equals the in-process path, the
manifest describes every column, re-runs rewrite nothing, and the whole table has no look-ahead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryptopredict.config import Config, load_config
from cryptopredict.data.ingest import ingest_ohlcv, ingest_table, open_lake
from cryptopredict.data.lake import DATA_FILE
from cryptopredict.data.snapshot import read_snapshot_context, read_snapshot_ohlcv
from cryptopredict.features.pipeline import MANIFEST, build_features
from tests.conftest import SHIPPED_DATA

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
START, END = pd.Timestamp("2021-12-01", tz="UTC"), pd.Timestamp("2022-01-20", tz="UTC")  # inside the news span
SMALL = [  # shorter windows so that ~1,200 bars give values in every family
    "features.fractal.windows={hurst_rs: [128], hurst_dfa: [128], higuchi_fd: [128], katz_fd: [128], lyap_r: [128], "
    "rqa: [128], sampen: [128], permen: [128]}",
    "features.cross_asset.corr_windows=[48]", "features.cross_asset.altseason_window=168",
    "features.cross_asset.matrix_window=48",
]


def _cfg(root: Path, mode: str = "serial") -> Config:
    return load_config(None, [f"lake.root={root}", f"ingest.symbols=[{','.join(SYMBOLS)}]",
                              f"ray.parallelism={mode}", *SMALL])


def _fill_lake(cfg: Config, until: pd.Timestamp) -> None:
    """A lake as it would have been at ``until``: bars opened by then, daily rows dated by then, news
    published by then (the families apply their own publication lags on top)."""
    lake = open_lake(cfg)
    for s in SYMBOLS:
        bars = read_snapshot_ohlcv(SHIPPED_DATA, s)
        bars = bars[(bars["timestamp"] >= START) & (bars["timestamp"] <= until)]
        ingest_ohlcv(lake, bars, exchange="binance", symbol=s, timeframe="1h", cfg=cfg)
    for table, col in (("fear_greed", "date"), ("onchain", "date"), ("macro", "date"), ("news", "published_at")):
        rows = read_snapshot_context(SHIPPED_DATA, table)
        ingest_table(lake, table, rows[rows[col] <= until])


@pytest.fixture(scope="module")
def full_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("full")
    cfg = _cfg(root)
    _fill_lake(cfg, END)
    report = build_features(cfg)
    assert not report.errors, report.errors
    return root


def test_manifest_describes_every_column_and_the_scorer(full_lake: Path) -> None:
    lake = open_lake(_cfg(full_lake))
    manifest = lake.read_json(MANIFEST)
    assert isinstance(manifest, dict)
    names = [f["name"] for f in manifest["features"]]
    table = lake.read_frame("features", {"symbol": "SOLUSDT"})
    assert list(table.columns) == ["timestamp", *names, "symbol"]
    assert all(str(table[c].dtype) == "float32" for c in names)
    assert {f["family"] for f in manifest["features"]} == {"technical", "fractal", "cross_asset", "context",
                                                            "sentiment"}
    assert all(f["source"] and f["lag"] for f in manifest["features"])
    # offline here: no transformer weights, so VADER, and the manifest says so and why
    assert manifest["sentiment_scorer"]["scorer"] == "vader" and manifest["sentiment_scorer"]["reason"]
    assert len(table) == len(read_snapshot_ohlcv(SHIPPED_DATA, "SOLUSDT").query("@START <= timestamp <= @END"))
    labels = lake.read_frame("labels", {"symbol": "SOLUSDT"})
    assert list(labels.columns[:3]) == ["timestamp", "fwd_logret_h4", "fwd_rvol_h4"]


def test_every_family_has_values_inside_the_span(full_lake: Path) -> None:
    lake = open_lake(_cfg(full_lake))
    manifest = lake.read_json(MANIFEST)
    table = lake.read_frame("features", {"symbol": "SOLUSDT"})
    tail = table.iloc[-200:]
    for family in ("technical", "fractal", "cross_asset", "context", "sentiment"):
        cols = [f["name"] for f in manifest["features"] if f["family"] == family]  # type: ignore[index]
        assert tail[cols].notna().any().mean() > 0.5, family


def test_a_rerun_rewrites_nothing(full_lake: Path) -> None:
    files = sorted((full_lake / "features").rglob(DATA_FILE))
    before = {p: p.stat().st_mtime_ns for p in files}
    assert not build_features(_cfg(full_lake)).errors
    assert {p: p.stat().st_mtime_ns for p in files} == before


@pytest.mark.ray
@pytest.mark.slow
def test_the_ray_path_gives_the_same_values(full_lake: Path, tmp_path: Path, ray_session: None) -> None:
    cfg = _cfg(tmp_path, mode="data")
    _fill_lake(cfg, END)
    assert not build_features(cfg).errors
    for s in SYMBOLS:
        pd.testing.assert_frame_equal(open_lake(cfg).read_frame("features", {"symbol": s}),
                                      open_lake(_cfg(full_lake)).read_frame("features", {"symbol": s}))


@pytest.mark.slow
def test_the_whole_feature_table_has_no_lookahead(full_lake: Path, tmp_path: Path) -> None:
    """Features at t from a lake cut at t (bars, daily tables, news) equal those from the full lake."""
    full = open_lake(_cfg(full_lake)).read_frame("features", {"symbol": "SOLUSDT"})
    rng = np.random.default_rng(11)
    cuts = sorted(rng.choice(full["timestamp"].iloc[700:-5].to_numpy(), size=3, replace=False))
    compared = 0
    for i, t in enumerate(pd.to_datetime(cuts, utc=True)):
        cfg = _cfg(tmp_path / f"cut{i}")
        _fill_lake(cfg, t)
        assert not build_features(cfg).errors
        part = open_lake(cfg).read_frame("features", {"symbol": "SOLUSDT"})
        assert part["timestamp"].iloc[-1] == t
        a = part.iloc[-1].drop(["timestamp", "symbol"], errors="ignore").astype(float)
        b = full[full["timestamp"] == t].iloc[0].drop(["timestamp", "symbol"], errors="ignore").astype(float)
        both_nan = a.isna() & b.isna()
        ok = np.isclose(a, b, rtol=1e-5, atol=1e-6) | both_nan
        assert ok.all(), f"look-ahead at {t}: {list(a.index[~ok])[:8]}"
        compared += int((~both_nan).sum())
    assert compared > 3 * 120
