"""The deep ensemble through the unchanged evaluation: walk-forward with a refit cadence, Ray Train fits,
each member scored beside it, the final fit stored and loadable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryptopredict.config import Config, load_config
from cryptopredict.evaluation.run import evaluate, member_frames
from cryptopredict.evaluation.walkforward import read_predictions
from cryptopredict.features.pipeline import build_features
from cryptopredict.models.ensemble import DeepEnsemble
from tests.support.shipped import ingest_shipped_slice

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
START, END = pd.Timestamp("2021-06-01", tz="UTC"), pd.Timestamp("2022-04-01", tz="UTC")
MEMBERS = ["transformer", "bilstm", "cnn_lstm", "gnn"]


def _cfg(tmp: Path) -> Config:
    return load_config(None, [
        f"lake.root={tmp / 'lake'}", f"run_dir={tmp / 'runs'}", f"ingest.symbols=[{','.join(SYMBOLS)}]",
        "ray.parallelism=serial", "features.families=[technical,cross_asset]",
        "evaluation.models=[logistic,ensemble]", "evaluation.test_start=2022-01-01",
        "evaluation.split.test_bars=480", "evaluation.split.valid_bars=240", "evaluation.max_folds=3",
        "evaluation.bootstrap_samples=200", "evaluation.canaries.enabled=false",
        "evaluation.refit_every={ensemble: 2}",
        "evaluation.model_params.ensemble.window=8",
        "evaluation.model_params.ensemble.train.epochs=1",
        "evaluation.model_params.ensemble.train.max_train_samples=1500",
        "evaluation.model_params.ensemble.fusion.steps=60",
        "evaluation.model_params.ensemble.fusion.num_samples=8",
        f"evaluation.model_params.ensemble.storage_path={tmp / 'ray_train'}",
        "evaluation.portfolio.methods=[]",
    ])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, ray_session):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("ens")
    cfg = _cfg(tmp)
    ingest_shipped_slice(cfg, SYMBOLS, START, END)
    assert not build_features(cfg).errors
    run, run_dir = evaluate(cfg, run_id="e1")
    return cfg, run, run_dir


@pytest.mark.slow
@pytest.mark.ray
def test_ensemble_and_members_are_scored_like_any_model(evaluated) -> None:  # type: ignore[no-untyped-def]
    cfg, run, run_dir = evaluated
    names = [m.name for m in run.models]
    assert names[:2] == ["logistic", "ensemble"]
    assert set(names[2:]) == {f"ensemble.{m}" for m in MEMBERS}
    frames = {m.name: m.predictions for m in run.models}
    # every model is scored on the same test rows with the same classes
    base = frames["logistic"]
    for name, frame in frames.items():
        assert frame.index.equals(base.index), name
        np.testing.assert_array_equal(frame["y_true"].to_numpy(), base["y_true"].to_numpy())
    ens = next(m for m in run.models if m.name == "ensemble")
    assert ens.tests["pesaran_timmermann"]["p_value"] >= 0 and "dm_logloss_vs_logistic" in ens.tests
    weights = frames["ensemble"][[f"w_{m}" for m in MEMBERS]].to_numpy()
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-5)
    assert run.n_trials >= 6


@pytest.mark.slow
@pytest.mark.ray
def test_refit_cadence_predicts_later_folds_with_the_earlier_fit(evaluated) -> None:  # type: ignore[no-untyped-def]
    cfg, run, _ = evaluated
    pred = read_predictions(cfg, "e1", "ensemble")
    by_fold = pred.groupby("fold")["fitted_at_fold"].unique()
    assert {int(k): list(v) for k, v in by_fold.items()} == {0: [0], 1: [0], 2: [2]}
    lr = read_predictions(cfg, "e1", "logistic")
    assert sorted(lr["fitted_at_fold"].unique()) == [0, 1, 2]
    # fold 1, predicted by the fit at fold 0, lies wholly after fold 0's test span (hence after its training)
    t = pred.index.get_level_values("timestamp")
    assert t[pred["fold"] == 1].min() > t[pred["fold"] == 0].max()


@pytest.mark.slow
@pytest.mark.ray
def test_final_fit_stores_a_loadable_ensemble_trained_through_ray_train(evaluated) -> None:  # type: ignore[no-untyped-def]
    cfg, _, run_dir = evaluated
    directory = run_dir / "models" / "ensemble"
    model = DeepEnsemble.load(directory)
    assert sorted(model.nets) == sorted(MEMBERS)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["training"]["ray_train"]["workers"] == 1
    assert any((Path(cfg.evaluation.model_params["ensemble"]["storage_path"])).iterdir())


def test_member_frames_carry_each_members_own_columns() -> None:
    idx = pd.MultiIndex.from_tuples([("A", pd.Timestamp("2024-01-01", tz="UTC"))], names=["symbol", "timestamp"])
    frame = pd.DataFrame({"p_sell": [0.2], "p_hold": [0.3], "p_buy": [0.5], "log_vol": [-4.0], "log_vol_var": [0.1],
                          "confidence": [0.5], "y_true": [2.0], "fwd_return": [0.01], "fwd_vol": [0.02],
                          "sigma": [0.01], "fold": [0], "w_gnn": [1.0], "gnn__p_sell": [0.6], "gnn__p_hold": [0.3],
                          "gnn__p_buy": [0.1], "gnn__log_vol": [-3.0], "gnn__log_vol_var": [0.2],
                          "gnn__confidence": [0.6]}, index=idx)
    out = member_frames("ensemble", frame)
    assert list(out) == ["ensemble.gnn"]
    g = out["ensemble.gnn"]
    assert g[["p_sell", "p_hold", "p_buy"]].to_numpy().tolist() == [[0.6, 0.3, 0.1]]
    assert g["log_vol"].iloc[0] == -3.0 and g["y_true"].iloc[0] == 2.0 and "w_gnn" not in g
