"""The ensemble split into member runners and a fusion step: same output as DeepEnsemble.predict on the
latest bar, snapshot caching per bar, and the request errors (stale data, unknown symbol, wrong horizon)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from cryptopredict.data.ingest import open_lake
from cryptopredict.data.snapshot import read_snapshot_ohlcv
from cryptopredict.data.ingest import ingest_ohlcv
from cryptopredict.evaluation.dataset import load_panel, make_fold
from cryptopredict.evaluation.risk import target_positions
from cryptopredict.labels import DirectionLabeler
from cryptopredict.models.ensemble import DeepEnsemble
from cryptopredict.serving.predictor import FusionStep, HorizonMismatchError, MemberRunner, Predictor, \
    StaleDataError, UnknownSymbolError, VersionMismatchError, fixed_clock, load_model_meta, member_batch, \
    return_interval
from tests.conftest import SHIPPED_DATA
from tests.support.served_model import SYMBOLS, ServedModel


@pytest.fixture(scope="module")
def predictor(served_model: ServedModel) -> Predictor:
    return Predictor(served_model.cfg, served_model.model_dir, served_model.version,
                     clock=fixed_clock(served_model.now))


def _reference(served: ServedModel, at: pd.Timestamp | None = None):  # type: ignore[no-untyped-def]
    """DeepEnsemble.load(dir).predict on the stored features' rows of the latest bar (or of ``at``)."""
    lake = open_lake(served.cfg)
    fc = served.cfg.features
    model = DeepEnsemble.load(served.model_dir)
    X, labels = load_panel(lake, SYMBOLS, fc.horizon, fc.label_vol_window)
    X = X[model.columns]
    mask = np.asarray(X.index.get_level_values("timestamp") == (served.as_of if at is None else at))
    labeler = DirectionLabeler.load(served.model_dir / "labeler.json")
    fold = make_fold(X, labels, mask, labeler, fc.horizon, "latest", lake.read_frame("correlations"))
    return model.predict(fold)


def test_split_pipeline_equals_the_ensembles_predict(predictor: Predictor, served_model: ServedModel) -> None:
    ref = _reference(served_model)
    symbols = list(ref.index.get_level_values("symbol"))
    assert sorted(symbols) == sorted(SYMBOLS)
    got = predictor.predict_batch(symbols)
    proba = np.array([[p.probabilities.SELL, p.probabilities.HOLD, p.probabilities.BUY] for p in got])
    np.testing.assert_allclose(proba, ref.proba, atol=1e-5, rtol=0)
    np.testing.assert_allclose([math.log(p.predicted_volatility) for p in got], ref.log_vol, atol=1e-5)
    np.testing.assert_allclose([p.confidence for p in got], ref.confidence, atol=1e-5)
    np.testing.assert_allclose([p.uncertainty.epistemic for p in got], ref.epistemic, atol=1e-6)
    np.testing.assert_allclose([p.uncertainty.aleatoric for p in got], ref.aleatoric, atol=1e-5)
    for i, p in enumerate(got):
        assert p.symbol == symbols[i] and p.model_version == served_model.version
        assert p.as_of == served_model.as_of.isoformat() and p.horizon == served_model.cfg.features.horizon
        assert p.signal == ("SELL", "HOLD", "BUY")[int(np.argmax(ref.proba[i]))]
        for m, w in p.member_weights.items():
            assert w == pytest.approx(ref.extras[f"w_{m}"][i], abs=1e-5)
        assert sum(p.member_weights.values()) == pytest.approx(1.0, abs=1e-6)


def test_one_symbol_alone_gets_the_same_prediction(predictor: Predictor) -> None:
    together = {p.symbol: p for p in predictor.predict_batch(SYMBOLS)}
    alone = predictor.predict("ETHUSDT")
    assert alone.probabilities.BUY == pytest.approx(together["ETHUSDT"].probabilities.BUY, abs=1e-6)
    assert alone.position_size == pytest.approx(together["ETHUSDT"].position_size, abs=1e-9)


def test_position_size_and_interval_follow_their_definitions(predictor: Predictor) -> None:
    p = predictor.predict("SOLUSDT")
    fused = predictor.fusion
    proba = np.array([[p.probabilities.SELL, p.probabilities.HOLD, p.probabilities.BUY]])
    lv = math.log(p.predicted_volatility)
    var = p.uncertainty.epistemic_vol + p.uncertainty.aleatoric_vol
    want = target_positions(proba, np.array([lv]), np.array([p.confidence]), fused.risk, log_vol_var=np.array([var]))
    assert p.position_size == pytest.approx(float(want[0]), abs=1e-9)
    assert fused.risk.horizon == predictor.meta.horizon
    assert p.interval.level == predictor.cfg.serving.interval_level
    assert (p.interval.low, p.interval.high) == pytest.approx(return_interval(lv, var, p.interval.level))


def test_return_interval_covers_its_level() -> None:
    # no variance of log σ: the normal quantile
    low, high = return_interval(math.log(0.02), 0.0, 0.9)
    assert high == pytest.approx(0.02 * norm.ppf(0.95), rel=1e-8) and low == -high
    # a scale mixture: Monte Carlo coverage of r = σ·Z with log σ ~ N(m, v)
    rng = np.random.default_rng(3)
    m, v = math.log(0.03), 0.4
    r = np.exp(m + math.sqrt(v) * rng.standard_normal(400_000)) * rng.standard_normal(400_000)
    low, high = return_interval(m, v, 0.8)
    assert np.mean((r >= low) & (r <= high)) == pytest.approx(0.8, abs=0.003)
    assert high > 0.03 * norm.ppf(0.9)  # heavier tails than the plain normal


def test_snapshot_is_cached_per_latest_bar(served_model: ServedModel, tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    shutil.copytree(served_model.cfg.lake.root, lake_dir)
    cfg = served_model.cfg.model_copy(deep=True)
    cfg.lake.root = str(lake_dir)
    cfg.serving.snapshot_check_seconds = 0.0  # poll the lake on every call
    later = served_model.as_of + pd.Timedelta(hours=1)
    pred = Predictor(cfg, served_model.model_dir, "v1", clock=fixed_clock(later + pd.Timedelta(hours=1)))
    first = pred.snapshot()
    assert pred.snapshot() is first and pred.cache.rebuilds == 1
    assert first.as_of == served_model.as_of
    lake = open_lake(cfg)
    for s in SYMBOLS:  # the next bar arrives
        bars = read_snapshot_ohlcv(SHIPPED_DATA, s)
        ingest_ohlcv(lake, bars[bars["timestamp"] == later], exchange="binance", symbol=s, timeframe="1h", cfg=cfg)
    second = pred.snapshot()
    assert second is not first and second.as_of == later and pred.cache.rebuilds == 2
    assert pred.predict("BTCUSDT").as_of == later.isoformat()
    assert pred.snapshot() is second and pred.cache.rebuilds == 2


def test_stale_data_is_refused_with_the_age(served_model: ServedModel) -> None:
    late = served_model.as_of + pd.Timedelta(hours=1 + served_model.cfg.serving.max_data_age_hours + 0.5)
    pred = Predictor(served_model.cfg, served_model.model_dir, "v1", clock=fixed_clock(late))
    with pytest.raises(StaleDataError, match=r"stale data: the latest bar .* is 6\.5 h old .* serving\.max_data_age_hours = 6"):
        pred.predict("BTCUSDT")


def test_unknown_symbol_and_wrong_horizon_are_clear_errors(predictor: Predictor) -> None:
    with pytest.raises(UnknownSymbolError, match="unknown symbol 'DOGEUSDT'; supported: BTCUSDT, ETHUSDT"):
        predictor.predict("DOGEUSDT")
    with pytest.raises(HorizonMismatchError, match="predicts a 4-bar horizon, 12 was asked"):
        predictor.predict("BTCUSDT", horizon=12)
    assert predictor.predict("BTCUSDT", horizon=4).horizon == 4


def test_a_member_runner_loads_only_its_own_net(served_model: ServedModel, tmp_path: Path) -> None:
    only = tmp_path / "cnn_only"
    shutil.copytree(served_model.model_dir, only)
    for other in ("transformer", "bilstm", "gnn"):
        (only / f"{other}.pt").unlink()
    runner = MemberRunner(load_model_meta(only, "v1"), "cnn_lstm")
    pred = Predictor(served_model.cfg, served_model.model_dir, "v1", clock=fixed_clock(served_model.now))
    snap = pred.snapshot()
    out = runner.run(member_batch(snap, "cnn_lstm", ["ETHUSDT"]))
    ref = pred.members["cnn_lstm"].run(member_batch(snap, "cnn_lstm", ["ETHUSDT"]))
    np.testing.assert_array_equal(out.proba, ref.proba)


def test_batched_member_runs_equal_single_runs(predictor: Predictor) -> None:
    snap = predictor.snapshot()
    for member, runner in predictor.members.items():
        batches = [member_batch(snap, member, ["SOLUSDT"]), member_batch(snap, member, ["BTCUSDT", "ETHUSDT"])]
        together = runner.run_many(batches)
        for b, out in zip(batches, together, strict=True):
            single = runner.run(b)
            assert out.symbols == single.symbols
            np.testing.assert_allclose(out.proba, single.proba, atol=1e-6)
            np.testing.assert_allclose(out.log_vol, single.log_vol, atol=1e-6)


def test_fusion_refuses_member_outputs_of_another_version(predictor: Predictor, served_model: ServedModel) -> None:
    snap = predictor.snapshot()
    outputs = {m: r.run(member_batch(snap, m, ["BTCUSDT"])) for m, r in predictor.members.items()}
    outputs["gnn"].version = "v0"
    with pytest.raises(VersionMismatchError, match=r"member outputs come from \{'gnn': 'v0'\}"):
        predictor.fusion.fuse(outputs, [0.01], snap.as_of)
    other = FusionStep(load_model_meta(served_model.model_dir, "v9"))
    outputs["gnn"].version = "v1"
    with pytest.raises(VersionMismatchError, match="fusion holds model v9"):
        other.fuse(outputs, [0.01], snap.as_of)
    batch = member_batch(snap, "bilstm", ["BTCUSDT"])
    batch.version = "v9"
    with pytest.raises(VersionMismatchError, match="holds model v1, the batch is for v9"):
        predictor.members["bilstm"].run(batch)


def test_history_predicts_earlier_bars_like_the_ensemble(predictor: Predictor, served_model: ServedModel) -> None:
    history = predictor.predict_history(12)
    assert len(history) == 12 * len(SYMBOLS)
    times = sorted({p.as_of for p in history})
    assert len(times) == 12 and times[-1] == served_model.as_of.isoformat()
    at = served_model.as_of - pd.Timedelta(hours=7)
    ref = _reference(served_model, at)
    got = {p.symbol: p for p in history if p.as_of == at.isoformat()}
    for i, (symbol, _) in enumerate(ref.index):
        p = got[symbol]
        np.testing.assert_allclose([p.probabilities.SELL, p.probabilities.HOLD, p.probabilities.BUY], ref.proba[i],
                                   atol=1e-5)
    latest = {p.symbol: p for p in history if p.as_of == served_model.as_of.isoformat()}
    assert latest["BTCUSDT"].probabilities.BUY == pytest.approx(predictor.predict("BTCUSDT").probabilities.BUY,
                                                                abs=1e-6)


def test_the_registry_champion_is_served_by_default(served_model: ServedModel, tmp_path: Path) -> None:
    from cryptopredict.registry.registry import ModelRegistry
    from cryptopredict.serving.predictor import ModelNotLoadedError, resolve_model

    cfg = served_model.cfg.model_copy(deep=True)
    cfg.registry.root = str(tmp_path / "registry")
    with pytest.raises(ModelNotLoadedError, match="has no champion of 'ensemble'"):
        resolve_model(cfg)
    ModelRegistry(cfg.registry.root).register(served_model.model_dir, model="ensemble", config={},
                                              feature_manifest=None, data_span=(None, None), git_revision=None,
                                              metrics={})
    directory, version = resolve_model(cfg)
    assert version == "v0001" and (directory / "manifest.json").is_file()
    pred = Predictor(cfg, directory, version, clock=fixed_clock(served_model.now)).predict("ETHUSDT")
    assert pred.model_version == "v0001"
    assert resolve_model(cfg, served_model.model_dir) == (served_model.model_dir, served_model.model_dir.name)
