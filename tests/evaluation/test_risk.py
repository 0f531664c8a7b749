"""Risk manager: every sizer by hand, the smallest-size rule, per-coin and portfolio caps, the cost filter
keeping positions, and the bridge from Predictions to wide target positions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from cryptopredict.evaluation.risk import (
    HOURS_PER_YEAR,
    RiskConfig,
    annualised_vol,
    combine_sizes,
    confidence_size,
    expected_return_from_proba,
    horizon_variance,
    kelly_size,
    positions_from_predictions,
    target_positions,
    vol_target_size,
)
from cryptopredict.models.base import Predictions

SQRT_2_PI = math.sqrt(2 / math.pi)

# only the confidence sizer with threshold 0: |size| = confidence, sign = P(BUY) − P(SELL)
CONF_ONLY = RiskConfig(kelly_fraction=None, target_vol=None, confidence_threshold=0.0, gross_cap=None,
                       min_edge_to_cost=None)
UP, DOWN = [0.1, 0.3, 0.6], [0.6, 0.3, 0.1]


def test_units_and_expected_return() -> None:
    assert HOURS_PER_YEAR == 8760
    np.testing.assert_allclose(horizon_variance(np.log([0.02]), 0.0), [0.0004])
    np.testing.assert_allclose(horizon_variance(np.log([0.02]), 0.1), [0.0004 * math.exp(0.2)])
    # 4-bar variance 0.0004 -> 1e-4 per bar -> 0.01 * sqrt(8760) a year
    np.testing.assert_allclose(annualised_vol(np.array([0.0004]), 4, 8760), [0.01 * math.sqrt(8760)])
    np.testing.assert_allclose(expected_return_from_proba(np.array([[0.1, 0.3, 0.6]]), np.array([0.02]), 0.8),
                               [0.5 * 0.8 * 0.02])


def test_kelly_size() -> None:
    mu = np.array([0.0002, 0.01, -0.0002, 0.0002, 0.0002])
    d = np.array([0.3, 0.3, -0.3, -0.3, 0.0])
    # 0.5 * 0.0002 / 0.0004 = 0.25; 12.5 capped at 0.6; short side the same magnitude; μ against d -> 0
    np.testing.assert_allclose(kelly_size(mu, np.full(5, 0.0004), d, 0.5, 0.6), [0.25, 0.6, 0.25, 0.0, 0.0])


def test_vol_target_and_confidence_sizes() -> None:
    np.testing.assert_allclose(vol_target_size(np.array([0.8, 0.2]), 0.4, 1.0), [0.5, 1.0])
    np.testing.assert_allclose(confidence_size(np.array([0.7, 0.4, 0.2, 1.0]), 0.4, 0.8),
                               [0.8 * 0.5, 0.0, 0.0, 0.8])


def test_combine_takes_the_smallest_with_the_direction_sign() -> None:
    got = combine_sizes(np.array([-0.3, 0.2, 0.0]), [np.array([0.25, 0.9, 0.5]), np.array([0.5, 0.1, 0.5]),
                                                      np.array([0.4, 0.3, 0.5])])
    np.testing.assert_allclose(got, [-0.25, 0.1, 0.0])


def test_target_positions_by_hand() -> None:
    config = RiskConfig(horizon=4, kelly_fraction=0.5, target_vol=0.5, confidence_threshold=0.4,
                        gross_cap=None, min_edge_to_cost=None)
    proba = np.array([[0.1, 0.3, 0.6],     # confidence binds
                      [0.40, 0.22, 0.38],  # Kelly binds, short
                      [0.1, 0.3, 0.6]])    # volatility target binds
    sig = np.array([0.02, 0.02, 0.04])
    conf = np.array([0.6, 0.9, 0.9])
    got = target_positions(proba, np.log(sig), conf, config)
    vol_ann = sig / 2 * math.sqrt(8760)  # sqrt(σ² / 4 bars · 8760)
    kelly = 0.5 * np.abs(proba[:, 2] - proba[:, 0]) * SQRT_2_PI * sig / sig**2
    confs = (conf - 0.4) / 0.6
    vols = 0.5 / vol_ann
    np.testing.assert_allclose(kelly[1], 0.399, atol=1e-3)
    expected = [confs[0], -kelly[1], vols[2]]
    assert confs[0] < min(kelly[0], vols[0]) and kelly[1] < min(vols[1], confs[1])
    assert vols[2] < min(min(kelly[2], 1.0), confs[2])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # the predicted variance of log vol raises the variance (E[σ²] of a log-normal): smaller positions
    wider = target_positions(proba, np.log(sig), conf, config, log_vol_var=np.full(3, 0.2))
    assert np.all(np.abs(wider[1:]) < np.abs(got[1:]))
    np.testing.assert_allclose(wider[2], 0.5 / (vol_ann[2] * math.exp(0.2)), rtol=1e-12)
    # disabling a binding sizer lets the next one bind
    no_conf = target_positions(proba, np.log(sig), conf, config.model_copy(update={"confidence_threshold": None}))
    np.testing.assert_allclose(no_conf[0], min(vols[0], 1.0), rtol=1e-12)


def test_expected_return_overrides_the_derived_one() -> None:
    config = RiskConfig(kelly_fraction=1.0, target_vol=None, confidence_threshold=None, gross_cap=None,
                        min_edge_to_cost=None)
    proba = np.array([UP, UP])
    got = target_positions(proba, np.log([0.02, 0.02]), np.ones(2), config,
                           expected_return=np.array([0.0001, -0.0001]))
    np.testing.assert_allclose(got, [0.25, 0.0])  # 1e-4 / 4e-4; a μ against the direction sizes 0


def test_per_coin_and_gross_caps() -> None:
    proba = np.array([[UP, DOWN, UP]])
    conf = np.array([[0.8, 0.6, 0.1]])
    lv = np.log(np.full((1, 3), 0.01))
    capped = target_positions(proba, lv, conf, CONF_ONLY.model_copy(update={"max_position": 0.5}))
    np.testing.assert_allclose(capped, [[0.5, -0.5, 0.1]])
    gross = target_positions(proba, lv, conf, CONF_ONLY.model_copy(update={"gross_cap": 1.0}))
    np.testing.assert_allclose(gross, [[0.8 / 1.5, -0.6 / 1.5, 0.1 / 1.5]])
    assert np.abs(gross).sum() == pytest.approx(1.0)
    under = target_positions(proba, lv, conf * 0.5, CONF_ONLY.model_copy(update={"gross_cap": 1.0}))
    np.testing.assert_allclose(under, [[0.4, -0.3, 0.05]])  # below the cap: untouched


def test_portfolio_vol_cap() -> None:
    proba = np.array([[UP, UP]])
    conf = np.array([[0.5, 0.5]])
    ann = np.array([0.8, 0.4])
    lv = np.log(ann / math.sqrt(8760))[None, :]  # horizon 1: σ_h = σ_ann / sqrt(8760)
    rho1 = target_positions(proba, lv, conf, CONF_ONLY.model_copy(update={"portfolio_vol_cap": 0.3}))
    # ρ = 1: σ_p = 0.5·0.8 + 0.5·0.4 = 0.6 -> scaled by 0.5
    np.testing.assert_allclose(rho1, [[0.25, 0.25]], rtol=1e-12)
    rho0 = target_positions(proba, lv, conf, CONF_ONLY.model_copy(
        update={"portfolio_vol_cap": 0.3, "assumed_correlation": 0.0}))
    # ρ = 0: σ_p = sqrt(0.4² + 0.2²) = sqrt(0.2)
    np.testing.assert_allclose(rho0, [[0.5 * 0.3 / math.sqrt(0.2)] * 2], rtol=1e-12)
    loose = target_positions(proba, lv, conf, CONF_ONLY.model_copy(update={"portfolio_vol_cap": 0.7}))
    np.testing.assert_allclose(loose, [[0.5, 0.5]])


def test_cost_filter_keeps_the_previous_position() -> None:
    config = CONF_ONLY.model_copy(update={"min_edge_to_cost": 1.5, "fee_bps": 10.0, "slippage_bps": 2.0})
    assert config.round_trip_cost == pytest.approx(0.0024)
    proba = np.array([UP, UP, DOWN, UP, UP])
    conf = np.array([0.6, 0.3, 0.9, 0.5, 0.7])
    # edge must exceed 1.5 · 0.0024 = 0.0036
    mu = np.array([0.01, 0.001, -0.002, 0.004, np.nan])
    got = target_positions(proba, np.log(np.full(5, 0.02)), conf, config, expected_return=mu)
    # bar 0 trades; 1 and 2 keep 0.6 (edge too small, even for a flip); 3 trades; 4 (no prediction) keeps
    np.testing.assert_allclose(got, [0.6, 0.6, 0.6, 0.5, 0.5])
    off = target_positions(proba, np.log(np.full(5, 0.02)), conf, config.model_copy(
        update={"min_edge_to_cost": None}), expected_return=mu)
    np.testing.assert_allclose(off, [0.6, 0.3, -0.9, 0.5, 0.5])


def test_risk_caps_override_a_kept_position() -> None:
    config = CONF_ONLY.model_copy(update={"min_edge_to_cost": 1.0, "gross_cap": 1.0})
    proba = np.array([[UP, UP], [UP, UP]])
    conf = np.array([[0.8, 0.0], [0.2, 0.6]])
    mu = np.array([[0.01, 0.01], [0.0, 0.01]])  # coin 0 keeps 0.8 at bar 1, coin 1 opens 0.6
    got = target_positions(proba, np.log(np.full((2, 2), 0.02)), conf, config, expected_return=mu)
    np.testing.assert_allclose(got, [[0.8, 0.0], [0.8 / 1.4, 0.6 / 1.4]])


def test_missing_predictions_and_shapes() -> None:
    proba = np.array([UP, [np.nan] * 3, DOWN])
    got = target_positions(proba, np.log(np.full(3, 0.02)), np.array([0.5, np.nan, 0.3]), CONF_ONLY)
    np.testing.assert_allclose(got, [0.5, 0.5, -0.3])
    with pytest.raises(ValueError, match="proba"):
        target_positions(np.ones((3, 2)), np.zeros(3), np.ones(3), CONF_ONLY)
    with pytest.raises(ValueError, match="log_vol"):
        target_positions(np.array([UP, UP]), np.zeros(3), np.ones(2), CONF_ONLY)


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="sizer"):
        RiskConfig(kelly_fraction=None, target_vol=None, confidence_threshold=None)
    with pytest.raises(ValidationError):
        RiskConfig(max_position=1.5)
    with pytest.raises(ValidationError):
        RiskConfig(kelly_fraction=2.0)


def test_positions_from_predictions() -> None:
    ts = pd.date_range("2024-01-01", periods=3, freq="h", tz="UTC")
    rows = [("BTC", ts[0]), ("BTC", ts[1]), ("BTC", ts[2]), ("ETH", ts[0]), ("ETH", ts[2])]
    index = pd.MultiIndex.from_tuples(rows, names=["symbol", "timestamp"])
    proba = np.array([UP, DOWN, UP, DOWN, UP])
    conf = np.array([0.5, 0.6, 0.7, 0.4, 0.9])
    pred = Predictions(index=index, proba=proba, log_vol=np.log(np.full(5, 0.01)), log_vol_var=np.zeros(5),
                       confidence=conf, model="test")
    got = positions_from_predictions(pred, CONF_ONLY)
    assert list(got.columns) == ["BTC", "ETH"] and got.index.equals(pd.DatetimeIndex(ts, name="timestamp"))
    # ETH has no prediction at ts[1]: keeps -0.4
    np.testing.assert_allclose(got.to_numpy(), [[0.5, -0.4], [-0.6, -0.4], [0.7, 0.9]])
