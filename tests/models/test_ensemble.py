"""The deep ensemble behind the Forecaster interface: fit, predict, persistence, no look-ahead, Ray Train."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryptopredict.models.base import MODEL_REGISTRY, Forecaster, build_model
from cryptopredict.models.ensemble import DeepEnsemble, _holdout
from tests.support.synthetic_panel import synthetic_fold, synthetic_panel

SMALL = {"window": 8, "train": {"epochs": 3, "batch_size": 32, "lr": 5e-3, "device": "cpu",
                                "curriculum_epochs": 1},
         "fusion": {"steps": 150, "num_samples": 16, "min_calib_rows": 30}}


@pytest.fixture(scope="module")
def folds():
    X, labels, corr = synthetic_panel(n_bars=420)
    ts = X.index.get_level_values("timestamp")
    t0 = ts.min()
    train = synthetic_fold(X, labels, ts < t0 + pd.Timedelta(hours=260), "train", corr)
    valid = synthetic_fold(X, labels, (ts >= t0 + pd.Timedelta(hours=262)) & (ts < t0 + pd.Timedelta(hours=340)),
                           "valid", corr)
    test = synthetic_fold(X, labels, ts >= t0 + pd.Timedelta(hours=342), "test", corr)
    return X, labels, corr, train, valid, test


@pytest.fixture(scope="module")
def fitted(folds):
    _, _, _, train, valid, _ = folds
    model = build_model("ensemble", **SMALL)
    model.fit(train, valid)
    return model


def test_registered_and_implements_the_interface(fitted):
    for name in ("ensemble", "transformer", "bilstm", "cnn_lstm", "gnn"):
        assert name in MODEL_REGISTRY
    assert isinstance(fitted, Forecaster) and isinstance(fitted, DeepEnsemble)


def test_predictions_are_valid_and_beat_chance_on_a_learnable_rule(fitted, folds):
    *_, test = folds
    pred = fitted.predict(test)
    assert pred.proba.shape == (len(test), 3)
    np.testing.assert_allclose(pred.proba.sum(1), 1.0, atol=1e-6)
    assert np.all((pred.confidence >= 0) & (pred.confidence <= 1))
    assert np.all(pred.log_vol_var > 0) and np.all(pred.epistemic >= 0) and np.all(pred.aleatoric >= 0)
    weights = np.stack([pred.extras[f"w_{m}"] for m in ("transformer", "bilstm", "cnn_lstm", "gnn")], axis=1)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-5)
    acc = (pred.predicted_class == test.y.to_numpy()).mean()
    majority = test.y.value_counts(normalize=True).max()
    assert acc > majority + 0.15, (acc, majority)
    frame = pred.to_frame()
    assert {"w_gnn", "gnn__p_buy", "transformer__confidence", "epistemic"} <= set(frame.columns)


def test_save_load_round_trip_predicts_identically(fitted, folds, tmp_path):
    *_, test = folds
    fitted.save(tmp_path / "m")
    loaded = DeepEnsemble.load(tmp_path / "m")
    a, b = fitted.predict(test), loaded.predict(test)
    np.testing.assert_array_equal(a.proba, b.proba)
    np.testing.assert_array_equal(a.log_vol, b.log_vol)
    assert sorted(p.name for p in (tmp_path / "m").glob("*.pt")) == ["bilstm.pt", "cnn_lstm.pt", "gnn.pt",
                                                                       "transformer.pt"]


def test_predictions_at_t_ignore_everything_after_t(fitted, folds):
    X, labels, corr, *_ , test = folds
    ts = X.index.get_level_values("timestamp")
    cut = test.timestamps[len(test) // 2]
    early = test.subset(test.timestamps <= cut)
    base = fitted.predict(early)
    noisy_X = X.copy()
    later = ts > cut
    noisy_X.loc[later] = (np.random.default_rng(1).standard_normal((int(later.sum()), X.shape[1])) * 100
                          ).astype(np.float32)
    noisy_corr = corr.assign(corr=np.where(corr["timestamp"] > cut, -0.99, corr["corr"]))
    changed = synthetic_fold(noisy_X, labels, (ts >= test.timestamps.min()) & (ts <= cut), "test", noisy_corr)
    np.testing.assert_array_equal(base.proba, fitted.predict(changed).proba)


def test_holdout_split_purges_the_horizon(folds):
    *_, train, _, _ = folds
    fit, hold = _holdout(train, 0.2)
    gap = hold.timestamps.min() - fit.timestamps.max()
    assert gap > pd.Timedelta(hours=train.horizon)
    assert len(fit) + len(hold) < len(train)


def test_single_member_forecaster(folds):
    _, _, _, train, valid, test = folds
    model = build_model("cnn_lstm", **SMALL)
    model.fit(train, valid)
    pred = model.predict(test)
    assert pred.model == "cnn_lstm" and list(model.nets) == ["cnn_lstm"]


def test_fold_without_panel_is_a_clear_error(folds):
    *_, test = folds
    model = build_model("cnn_lstm", **SMALL)
    bare = test.subset(np.ones(len(test), bool))
    bare.panel = None
    with pytest.raises(ValueError, match="carries no feature panel"):
        model.fit(bare, None)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_train_backend_two_workers_matches_the_contract(ray_session, folds, tmp_path):
    _, _, _, train, valid, test = folds
    params = {**SMALL, "members": ["cnn_lstm", "gnn"], "backend": "ray", "num_workers": 2,
              "storage_path": str(tmp_path / "ray")}
    model = build_model("ensemble", **params)
    model.fit(train, valid)
    assert model.summary["ray_train"]["workers"] == 2
    pred = model.predict(test)
    acc = (pred.predicted_class == test.y.to_numpy()).mean()
    assert acc > test.y.value_counts(normalize=True).max() + 0.1
    assert any((tmp_path / "ray").iterdir())  # Ray Train's run folder under storage_path
