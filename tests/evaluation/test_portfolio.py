"""Portfolio allocation against closed forms and the HRP recursion worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from cryptopredict.evaluation.portfolio import hrp_weights, inverse_variance_weights, mean_variance_weights


def _cov(seed: int, n: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(400, n)) @ np.diag(np.linspace(0.5, 2.0, n))
    return np.cov(a, rowvar=False)


def test_hrp_of_uncorrelated_assets_is_inverse_variance() -> None:
    cov = np.diag([0.01, 0.04, 0.09, 0.16])
    assert hrp_weights(cov) == pytest.approx(inverse_variance_weights(cov), rel=1e-12)


def test_hrp_two_blocks_by_hand() -> None:
    # two highly correlated pairs, uncorrelated across: the split is {0,1} | {2,3}
    v = np.array([0.01, 0.01, 0.04, 0.04])
    corr = np.array([[1, .9, 0, 0], [.9, 1, 0, 0], [0, 0, 1, .9], [0, 0, .9, 1]])
    cov = corr * np.sqrt(np.outer(v, v))
    w = hrp_weights(cov)
    var_a = 0.25 * (0.01 + 0.01 + 2 * 0.9 * 0.01)  # equal-variance pair: IVP = (1/2, 1/2)
    var_b = 0.25 * (0.04 + 0.04 + 2 * 0.9 * 0.04)
    alpha = 1 - var_a / (var_a + var_b)
    assert w == pytest.approx([alpha / 2, alpha / 2, (1 - alpha) / 2, (1 - alpha) / 2], rel=1e-12)
    assert w.sum() == pytest.approx(1.0) and (w > 0).all()


def test_mean_variance_matches_the_closed_form_when_bounds_do_not_bind() -> None:
    cov = _cov(1, 5)
    mu = np.array([0.01, 0.02, 0.015, 0.005, 0.012])
    gamma = 50.0
    inv = np.linalg.inv(cov)
    ones = np.ones(5)
    lam = (ones @ inv @ mu - gamma) / (ones @ inv @ ones)
    closed = inv @ (mu - lam * ones) / gamma
    w = mean_variance_weights(mu, cov, risk_aversion=gamma, lower=-5, upper=5)
    assert w == pytest.approx(closed, abs=1e-6)


def test_mean_variance_respects_long_only_caps() -> None:
    cov = _cov(2, 6)
    mu = np.array([0.05, 0, 0, 0, 0, 0.0])  # one asset looks far better
    w = mean_variance_weights(mu, cov, risk_aversion=1.0, lower=0.0, upper=0.3)
    assert w.max() <= 0.3 + 1e-9 and w.min() >= -1e-9 and w.sum() == pytest.approx(1.0)
    assert w[0] == pytest.approx(0.3, abs=1e-6)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="square"):
        hrp_weights(np.ones((2, 3)))
    with pytest.raises(ValueError, match="cannot hold"):
        mean_variance_weights(np.zeros(4), np.eye(4), upper=0.2)
    with pytest.raises(ValueError, match="positive variances"):
        hrp_weights(np.array([[0.0, 0.0], [0.0, 1.0]]))
