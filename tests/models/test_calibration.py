"""Calibration: known-answer temperature, isotonic confidence, exact JSON round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import log_softmax, softmax
from sklearn.isotonic import IsotonicRegression

from cryptopredict.evaluation.metrics import expected_calibration_error
from cryptopredict.models.calibration import IsotonicConfidence, TemperatureScaler, isotonic_if_better


def sample_classes(rng: np.random.Generator, proba: np.ndarray) -> np.ndarray:
    """One class per row drawn from the row's probabilities."""
    u = rng.random(len(proba))[:, None]
    return np.minimum((u > np.cumsum(proba, axis=1)).sum(axis=1), proba.shape[1] - 1)


def ece_of(proba: np.ndarray, y: np.ndarray) -> float:
    return expected_calibration_error(proba.max(axis=1), proba.argmax(axis=1) == y, n_bins=15)


@pytest.fixture(scope="module")
def overconfident() -> tuple[np.ndarray, np.ndarray]:
    """True logits L (labels drawn from softmax(L)) given to the scaler as 2.5·L: the answer is T = 2.5."""
    rng = np.random.default_rng(7)
    logits = rng.normal(0.0, 1.5, size=(6000, 3))
    return 2.5 * logits, sample_classes(rng, softmax(logits, axis=1))


def test_temperature_recovers_known_overconfidence(overconfident: tuple[np.ndarray, np.ndarray]) -> None:
    z, y = overconfident
    scaler = TemperatureScaler().fit(z, y)
    assert scaler.temperature == pytest.approx(2.5, rel=0.10)
    before, after = ece_of(softmax(z, axis=1), y), ece_of(scaler.transform(z), y)
    assert before > 0.10
    assert after < 0.03
    assert after < before / 4


def test_temperature_accepts_log_probs_and_keeps_the_predicted_class(
        overconfident: tuple[np.ndarray, np.ndarray]) -> None:
    z, y = overconfident
    from_logits = TemperatureScaler().fit(z, y)
    from_log_probs = TemperatureScaler().fit(log_softmax(z, axis=1), y)
    assert from_log_probs.temperature == pytest.approx(from_logits.temperature, rel=1e-4)
    p = from_logits.transform(z)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_array_equal(p.argmax(axis=1), z.argmax(axis=1))


def test_temperature_ignores_unknown_labels_and_rejects_bad_ones(
        overconfident: tuple[np.ndarray, np.ndarray]) -> None:
    z, y = overconfident
    known = TemperatureScaler().fit(z[:3000], y[:3000]).temperature
    y_unknown = y.astype(float)
    y_unknown[3000:4500], y_unknown[4500:] = np.nan, -1
    assert TemperatureScaler().fit(z, y_unknown).temperature == pytest.approx(known, rel=1e-6)
    with pytest.raises(ValueError, match="labels must be integers"):
        TemperatureScaler().fit(z[:10], np.full(10, 3))
    with pytest.raises(ValueError, match="no labelled rows"):
        TemperatureScaler().fit(z[:10], np.full(10, np.nan))


def test_temperature_round_trip_is_exact(overconfident: tuple[np.ndarray, np.ndarray]) -> None:
    z, y = overconfident
    scaler = TemperatureScaler().fit(z, y)
    back = TemperatureScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert back.temperature == scaler.temperature
    np.testing.assert_array_equal(back.transform(z), scaler.transform(z))


def _too_high(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Stated confidence √c where the true hit rate is c ∈ [1/3, 1]: systematically too high."""
    c = rng.uniform(1 / 3, 1.0, n)
    return np.sqrt(c), rng.random(n) < c


def test_isotonic_fixes_systematic_overconfidence() -> None:
    rng = np.random.default_rng(3)
    conf_fit, ok_fit = _too_high(rng, 6000)
    conf_test, ok_test = _too_high(rng, 6000)
    iso = IsotonicConfidence().fit(conf_fit, ok_fit)
    calibrated = iso.transform(conf_test)
    assert expected_calibration_error(conf_test, ok_test, 15) > 0.10
    assert expected_calibration_error(calibrated, ok_test, 15) < 0.04
    assert calibrated.min() >= 0 and calibrated.max() <= 1
    assert np.all(np.diff(iso.transform(np.linspace(0, 1, 101))) >= 0)  # monotone


def test_isotonic_matches_sklearn_and_round_trips_exactly() -> None:
    rng = np.random.default_rng(4)
    conf, ok = _too_high(rng, 2000)
    iso = IsotonicConfidence().fit(conf, ok)
    probe = np.concatenate([rng.uniform(-0.2, 1.2, 500), [0.0, 1.0]])  # includes out-of-range values
    reference = IsotonicRegression(out_of_bounds="clip", increasing=True, y_min=0, y_max=1).fit(conf, ok)
    np.testing.assert_allclose(iso.transform(probe), reference.predict(probe), atol=1e-12)
    back = IsotonicConfidence.from_dict(json.loads(json.dumps(iso.to_dict())))
    np.testing.assert_array_equal(back.x_thresholds, iso.x_thresholds)
    np.testing.assert_array_equal(back.transform(probe), iso.transform(probe))


def test_unfitted_isotonic_is_identity_and_round_trips() -> None:
    iso = IsotonicConfidence.from_dict(json.loads(json.dumps(IsotonicConfidence().to_dict())))
    assert not iso.fitted
    np.testing.assert_array_equal(iso.transform(np.array([-0.1, 0.4, 1.3])), [0.0, 0.4, 1.0])
    with pytest.raises(ValueError, match="not an IsotonicConfidence"):
        IsotonicConfidence.from_dict(TemperatureScaler().to_dict())


def test_isotonic_is_kept_only_where_it_helps_out_of_sample(
        overconfident: tuple[np.ndarray, np.ndarray]) -> None:
    """After the right temperature, isotonic on 450 rows only adds noise: dropped. On confidences that are
    far off in a non-temperature way it wins on the held-out half: kept, refitted on all rows."""
    z, y = overconfident
    p = TemperatureScaler().fit(z, y).transform(z[:450])
    iso, scores = isotonic_if_better(p.max(axis=1), p.argmax(axis=1) == y[:450])
    assert iso is None and scores["brier_isotonic"] > scores["brier_identity"]
    conf, ok = _too_high(np.random.default_rng(5), 2000)
    iso, scores = isotonic_if_better(conf, ok)
    assert iso is not None and scores["brier_isotonic"] < scores["brier_identity"] - 0.005
    np.testing.assert_array_equal(iso.x_thresholds, IsotonicConfidence().fit(conf, ok).x_thresholds)
