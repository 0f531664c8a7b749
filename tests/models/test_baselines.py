"""Baselines: known answers on synthetic Folds, train-only fitting, text persistence, Predictions contract."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryptopredict.features.scaling import RobustScaler
from cryptopredict.models.base import (
    MODEL_REGISTRY,
    Fold,
    Forecaster,
    build_model,
    model_class,
    read_manifest,
)
from cryptopredict.models.baselines import (
    LightGBMBaseline,
    LogisticBaseline,
    LogVolOLS,
    MajorityClass,
    Momentum,
    Persistence,
    _labelled,
)

BASELINES = sorted(n for n, target in MODEL_REGISTRY.items() if target.startswith("cryptopredict.models.baselines:"))

H = 4  # label horizon in bars
FAST_LGB = {"num_boost_round": 150, "early_stopping_rounds": 20}


def make_fold(n_bars: int, seed: int, label: Callable[[pd.DataFrame, np.random.Generator], np.ndarray],
              symbols: tuple[str, ...] = ("BTC", "ETH"), shift: float = 0.0) -> Fold:
    """Hourly rows for ``symbols``; features signal, noise_a (with NaNs), noise_b, ta_roc_1, ta_roc_24
    (``shift`` moves all of them: a regime change); σ lognormal and fwd_vol = σ·√h·exp(N(0, 0.2²))."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01", periods=n_bars, freq="1h", tz="UTC")
    idx = pd.MultiIndex.from_product([list(symbols), ts], names=["symbol", "timestamp"])
    n = len(idx)
    cols = ("signal", "noise_a", "noise_b", "ta_roc_1", "ta_roc_24")
    X = pd.DataFrame({c: rng.normal(size=n) for c in cols}, index=idx) + shift
    X.loc[rng.random(n) < 0.1, "noise_a"] = np.nan
    sigma = np.exp(rng.normal(-4.5, 0.4, n))
    fwd_vol = sigma * np.sqrt(H) * np.exp(rng.normal(0.0, 0.2, n))
    return Fold(X, pd.Series(label(X, rng), index=idx), pd.Series(rng.normal(0, 0.01, n), index=idx),
                pd.Series(fwd_vol, index=idx), pd.Series(sigma, index=idx), horizon=H,
                name=f"synthetic{seed}")


def by_signal(X: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """The class is determined by one feature: SELL below −0.5, BUY above +0.5, HOLD between."""
    s = X["signal"].to_numpy()
    return np.where(s > 0.5, 2.0, np.where(s < -0.5, 0.0, 1.0))


def noise(X: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Labels independent of every feature: 20% SELL, 30% HOLD, 50% BUY; 5% missing."""
    y = rng.choice(3, size=len(X), p=[0.2, 0.3, 0.5]).astype(float)
    y[rng.random(len(X)) < 0.05] = np.nan
    return y


def accuracy(model: Forecaster, data: Fold) -> float:
    y = data.y.to_numpy()
    ok = np.isfinite(y)
    return float((model.predict(data).predicted_class[ok] == y[ok]).mean())


def fitted(name: str, train: Fold, valid: Fold | None = None) -> Forecaster:
    model = build_model(name, **(FAST_LGB if name == "lightgbm" else {}))
    model.fit(train, valid)
    return model


def test_informative_feature_is_learned() -> None:
    train, valid, test = (make_fold(1000, s, by_signal) for s in (1, 2, 3))
    assert accuracy(fitted("logistic", train), test) > 0.9
    assert accuracy(fitted("lightgbm", train, valid), test) > 0.9
    assert accuracy(fitted("majority", train), test) < 0.45  # HOLD is the majority at ~38%


def test_pure_noise_stays_near_the_majority_rate() -> None:
    train, valid, test = (make_fold(1500, s, noise) for s in (4, 5, 6))
    y = test.y.to_numpy()
    majority_rate = float((y[np.isfinite(y)] == 2).mean())
    assert accuracy(fitted("majority", train), test) == pytest.approx(majority_rate)
    for name in ("logistic", "lightgbm", "persistence", "momentum"):
        acc = accuracy(fitted(name, train, valid), test)
        assert abs(acc - majority_rate) < 0.04, (name, acc, majority_rate)


def test_majority_frequencies_by_hand() -> None:
    data = make_fold(10, 0, lambda X, r: np.array([0, 1, 1, 2, 2, 2, 2, np.nan, 2, 1] * 2, float))
    model = MajorityClass()
    model.fit(data)
    # counts SELL 2, HOLD 6, BUY 10 over 18 labelled rows, add-one smoothed
    expected = np.array([3, 7, 11]) / 21
    pred = model.predict(data)
    assert np.allclose(pred.proba, expected) and (pred.predicted_class == 2).all()
    assert np.allclose(pred.confidence, 11 / 21)


def test_persistence_and_momentum_logic_by_hand() -> None:
    data = make_fold(8, 0, lambda X, r: np.array([2, 2, 0, 1, 2, 0, 0, 1] * 2, float), symbols=("BTC", "ETH"))
    roc1 = np.array([0.3, 1.2, -0.5, 0.0, 0.7, -2.0, np.nan, -0.1] * 2)
    data.X["ta_roc_1"] = roc1
    data.X["ta_roc_24"] = -roc1  # momentum reads the 24-bar return: the opposite calls here
    pers = Persistence()
    pers.fit(data)
    p = pers.predict(data)
    assert p.extras["signal"].tolist() == [2, 2, 0, 1, 2, 0, 1, 0] * 2
    # BUY calls (rows 0, 1, 4, twice): labels all BUY → (0+1, 0+1, 6+1) / 9; SELL calls (rows 2, 5, 7):
    # labels SELL, SELL, HOLD → (4+1, 2+1, 0+1) / 9; HOLD calls (rows 3, 6): HOLD, SELL → (2+1, 2+1, 0+1) / 7
    table = np.array([[5, 3, 1], [3, 3, 1], [1, 1, 7]]) / np.array([[9], [7], [9]])
    assert np.allclose(pers.table, table)
    assert np.allclose(p.proba, table[p.extras["signal"]])
    assert np.allclose(p.proba[0, 2], 7 / 9)  # the hit rate of a BUY call
    mom = Momentum(window=24)
    mom.fit(data)
    assert mom.feature == "ta_roc_24"
    assert mom.predict(data).extras["signal"].tolist() == [0, 0, 2, 1, 0, 2, 1, 2] * 2
    with pytest.raises(ValueError, match="ta_roc_168"):
        Momentum(window=168).fit(data)


def test_fit_uses_training_rows_only() -> None:
    train = make_fold(600, 11, by_signal)
    test = make_fold(300, 12, by_signal, shift=3.0)  # a regime shift after training
    rng = np.random.default_rng(0)
    shuffled = Fold(test.X, pd.Series(rng.permutation(test.y.to_numpy()), index=test.y.index),
                    pd.Series(rng.permutation(test.fwd_return.to_numpy()), index=test.y.index),
                    pd.Series(rng.permutation(test.fwd_vol.to_numpy()), index=test.y.index), test.sigma, H)
    for name in BASELINES:
        model = fitted(name, train)
        a, b = model.predict(test), model.predict(shuffled)
        assert np.array_equal(a.proba, b.proba) and np.array_equal(a.log_vol, b.log_vol), name
    logistic = fitted("logistic", train)
    assert isinstance(logistic, LogisticBaseline)
    assert logistic.scaler.center == RobustScaler().fit(train.X).center
    assert logistic.scaler.scale == RobustScaler().fit(train.X).scale
    both = RobustScaler().fit(pd.concat([train.X, test.X]))
    assert logistic.scaler.center["signal"] != pytest.approx(both.center["signal"])
    assert logistic.indicators == ["noise_a"]  # the only column with NaNs in training
    assert logistic.vol.to_dict() == LogVolOLS().fit(train).to_dict()


def test_logistic_reaches_the_optimum_of_its_penalised_likelihood() -> None:
    """At the fitted coefficients the gradient of Σ log-loss + ½‖W‖²/C vanishes (the optimum is unique)."""
    train = make_fold(3000, 31, noise)
    model = fitted("logistic", train)
    assert isinstance(model, LogisticBaseline)
    mask, labels = _labelled(train)
    design = model._design(train)[mask]
    proba = model._proba(train)[mask][:, model.classes]
    onehot = (labels[:, None] == np.asarray(model.classes)[None, :]).astype(float)
    grad_w = (proba - onehot).T @ design + model.coef / model.C
    grad_b = (proba - onehot).sum(axis=0)
    # Newton–Cholesky: ~2e-4; L-BFGS (sklearn's default) stops at 0.45 / 0.08 on this very fold
    assert np.abs(grad_w).max() < 1e-2 and np.abs(grad_b).max() < 1e-2


@pytest.mark.parametrize("name", BASELINES)
def test_save_load_identical_and_no_pickle(name: str, tmp_path: Path) -> None:
    train, valid, test = (make_fold(400, s, by_signal) for s in (21, 22, 23))
    model = fitted(name, train, valid)
    model.save(tmp_path / name)
    loaded = model_class(name).load(tmp_path / name)
    a, b = model.predict(test), loaded.predict(test)
    for field in ("proba", "log_vol", "log_vol_var", "confidence"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    files = sorted(p.name for p in (tmp_path / name).iterdir())
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".joblib"))]
    for f in files:  # every file is text (JSON or LightGBM's text model), none starts with a pickle opcode
        raw = (tmp_path / name / f).read_bytes()
        assert raw[:1] != b"\x80" and raw.decode("utf-8")
    manifest = read_manifest(tmp_path / name)
    assert manifest["model"] == name == loaded.name and manifest["horizon"] == H
    assert sorted(manifest["files"]) == sorted(set(files) - {"manifest.json"})
    assert json.loads((tmp_path / name / "weights.json").read_text())
    with pytest.raises(ValueError, match="not a"):
        (Persistence if name != "persistence" else Momentum).load(tmp_path / name)


@pytest.mark.parametrize("name", BASELINES)
def test_predictions_contract(name: str) -> None:
    train, test = make_fold(300, 31, noise), make_fold(50, 32, noise)
    model = fitted(name, train)
    assert isinstance(model, Forecaster) and model.name == name
    p = model.predict(test)
    assert p.index.equals(test.X.index) and p.model == name
    assert p.proba.shape == (len(test), 3) and np.allclose(p.proba.sum(axis=1), 1.0)
    assert ((p.proba >= 0) & (p.proba <= 1)).all()
    assert np.array_equal(p.confidence, p.proba.max(axis=1))
    assert np.isfinite(p.log_vol).all() and (p.log_vol_var > 0).all()
    empty = model.predict(test.subset(np.zeros(len(test), bool)))
    assert empty.proba.shape == (0, 3) and empty.log_vol.shape == (0,)
    wrong_horizon = Fold(test.X, test.y, test.fwd_return, test.fwd_vol, test.sigma, horizon=H + 1)
    with pytest.raises(ValueError, match="horizon"):
        model.predict(wrong_horizon)
    with pytest.raises(RuntimeError, match="before fit"):
        build_model(name).predict(test)


def test_volatility_regression_is_honest() -> None:
    train, test = make_fold(1000, 41, noise), make_fold(500, 42, noise)
    vol = LogVolOLS().fit(train)
    # fwd_vol = σ·√h·exp(ε), ε ~ N(0, 0.2²): slope 1, intercept 0, residual variance 0.04
    assert vol.b == pytest.approx(1.0, abs=0.05) and vol.a == pytest.approx(0.0, abs=0.25)
    assert vol.resid_var == pytest.approx(0.04, rel=0.1)
    sigma = test.sigma.copy()
    sigma.iloc[:10] = np.nan
    no_sigma = Fold(test.X, test.y, test.fwd_return, test.fwd_vol, sigma, H)
    log_vol, var = vol.predict(no_sigma)
    assert np.allclose(log_vol[:10], np.log(train.fwd_vol).mean()) and np.allclose(var[:10], vol.var)
    assert np.allclose(var[10:], vol.resid_var)
    lgbm = fitted("lightgbm", train, make_fold(500, 43, noise))
    p = lgbm.predict(test)
    err = p.log_vol - np.log(test.fwd_vol.to_numpy())
    assert 0.025 < p.log_vol_var[0] < 0.07 and 0.025 < err.var() < 0.07


def test_lightgbm_is_seeded_deterministic_and_stops_early() -> None:
    train, valid, test = (make_fold(800, s, noise) for s in (51, 52, 53))
    a, b = LightGBMBaseline(seed=3, **FAST_LGB), LightGBMBaseline(seed=3, **FAST_LGB)
    a.fit(train, valid)
    b.fit(train, valid)
    assert np.array_equal(a.predict(test).proba, b.predict(test).proba)
    assert a.direction is not None and a.direction.current_iteration() < FAST_LGB["num_boost_round"]
    c = LightGBMBaseline(seed=4, num_boost_round=30)
    c.fit(train)
    d = LightGBMBaseline(seed=5, num_boost_round=30)
    d.fit(train)
    assert c.direction is not None and c.direction.current_iteration() == 30  # no valid: all rounds
    assert not np.array_equal(c.predict(test).proba, d.predict(test).proba)  # bagging follows the seed
