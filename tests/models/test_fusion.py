"""Bayesian fusion: known-answer synthetic ensembles (right member, context gating, calibrated variance,
shrinking epistemic uncertainty, calibrated confidence), persistence, and isolation between instances."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from scipy.special import softmax

from cryptopredict.evaluation.metrics import expected_calibration_error, log_loss
from cryptopredict.models.fusion import TENSORS_FILE, BayesianFusion, FusionOutput

STEPS = 300


def sample_classes(rng: np.random.Generator, proba: np.ndarray) -> np.ndarray:
    u = rng.random(len(proba))[:, None]
    return np.minimum((u > np.cumsum(proba, axis=1)).sum(axis=1), proba.shape[1] - 1)


@dataclass
class Ensemble:
    proba: np.ndarray  # (n, M, 3)
    mu: np.ndarray  # (n, M)
    var: np.ndarray  # (n, M)
    y: np.ndarray  # (n,)
    log_vol: np.ndarray  # (n,)
    context: np.ndarray | None = None

    def members(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        return self.proba, self.mu, self.var, self.context

    def targets(self) -> tuple[np.ndarray, np.ndarray]:
        return self.y, self.log_vol

    def fit(self, fusion: BayesianFusion, *, calib_fraction: float) -> BayesianFusion:
        return fusion.fit(self.proba, self.mu, self.var, self.y, self.log_vol, self.context,
                          calib_fraction=calib_fraction)


def make_ensemble(n: int, seed: int, *, sharpen: float = 2.0, var_factor: float = 1.0,
                  error_scale: tuple[float, float, float] = (1.0, 4.0, 8.0),
                  shared_vol: bool = False) -> Ensemble:
    """Three members. Member 0 knows the label distribution softmax(L) (stated overconfidently as
    softmax(sharpen·L)); members 1 and 2 output unrelated probabilities. Volatility: member m predicts the
    log vol with an independent error of sd s_i·error_scale[m] (s_i varies by row) and states
    var_factor·(s_i·error_scale[m])² as its variance (var_factor = 1: honest). ``shared_vol``: all members
    give member 0's volatility forecast."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(n, 3))
    y = sample_classes(rng, softmax(logits, axis=1))
    proba = np.stack([softmax(sharpen * logits, axis=1),
                      softmax(rng.normal(0.0, 1.5, size=(n, 3)), axis=1),
                      softmax(rng.normal(0.0, 1.5, size=(n, 3)), axis=1)], axis=1)
    log_vol = rng.normal(-3.0, 0.5, n)
    sd = np.exp(rng.normal(np.log(0.25), 0.4, n))[:, None] * np.asarray(error_scale)
    mu = log_vol[:, None] + sd * rng.normal(size=(n, 3))
    if shared_vol:
        mu, sd = np.repeat(mu[:, :1], 3, axis=1), np.repeat(sd[:, :1], 3, axis=1)
    return Ensemble(proba, mu, var_factor * sd**2, y, log_vol)


@pytest.fixture(scope="module")
def train() -> Ensemble:
    return make_ensemble(1500, seed=1)


@pytest.fixture(scope="module")
def test_set() -> Ensemble:
    return make_ensemble(3000, seed=2)


@pytest.fixture(scope="module")
def uncalibrated(train: Ensemble) -> BayesianFusion:
    return train.fit(BayesianFusion(steps=STEPS, seed=0), calib_fraction=0.0)


@pytest.fixture(scope="module")
def calibrated(train: Ensemble) -> BayesianFusion:
    return train.fit(BayesianFusion(steps=STEPS, seed=0), calib_fraction=0.3)


def test_fusion_learns_the_informative_member(uncalibrated: BayesianFusion, test_set: Ensemble) -> None:
    out = uncalibrated.predict(*test_set.members())
    assert out.weights.shape == (3000, 3)
    np.testing.assert_allclose(out.weights.sum(axis=1), 1.0)
    assert out.weights[:, 0].mean() > 0.6
    fused = log_loss(test_set.y, out.proba)
    for m in (1, 2):
        assert fused < log_loss(test_set.y, test_set.proba[:, m]) - 0.3
    # mixing in a little of the noise softens member 0's overconfidence: fused beats member 0 alone too
    assert fused < log_loss(test_set.y, test_set.proba[:, 0])


def test_gate_follows_the_context() -> None:
    """Member 0 knows the labels when context > 0, member 1 when context < 0; the other is noise."""
    rng = np.random.default_rng(5)
    n = 1500
    logits = rng.normal(0.0, 2.0, size=(n, 3))
    truth = softmax(logits, axis=1)
    y = sample_classes(rng, truth)
    c = rng.normal(size=n)
    noise = softmax(rng.normal(0.0, 2.0, size=(2, n, 3)), axis=2)
    proba = np.stack([np.where(c[:, None] > 0, truth, noise[0]), np.where(c[:, None] < 0, truth, noise[1])],
                     axis=1)
    log_vol = rng.normal(-3.0, 0.5, n)
    mu, var = np.stack([log_vol, log_vol], axis=1), np.full((n, 2), 0.1)
    fusion = BayesianFusion(steps=STEPS, seed=0).fit(proba, mu, var, y, log_vol, c, calib_fraction=0.0)
    w0 = fusion.predict(proba, mu, var, c).weights[:, 0]
    assert w0[c > 0.5].mean() > 0.8
    assert w0[c < -0.5].mean() < 0.2
    assert np.corrcoef(w0, c)[0, 1] > 0.7


def test_total_variance_matches_squared_error(uncalibrated: BayesianFusion, calibrated: BayesianFusion,
                                              test_set: Ensemble) -> None:
    """Honest members (stated variance = actual error variance, row by row): the fused total variance
    matches the fused squared error on average, overall and within low/high predicted-variance halves —
    before the variance calibration (within 1.5×; the mixture's spread term makes it conservative) and
    after it (within 1.25×)."""
    cal = calibrated.predict(*test_set.members())
    sq_err_cal = (cal.log_vol - test_set.log_vol) ** 2
    assert 1 / 1.25 < sq_err_cal.mean() / cal.log_vol_var.mean() < 1.25
    out = uncalibrated.predict(*test_set.members())
    np.testing.assert_allclose(out.log_vol_var, out.aleatoric_vol + out.epistemic_vol)
    assert (out.epistemic_vol >= 0).all() and (out.aleatoric_vol > 0).all()
    sq_err = (out.log_vol - test_set.log_vol) ** 2
    low = out.log_vol_var < np.median(out.log_vol_var)
    for rows in (np.ones_like(low), low, ~low):
        ratio = sq_err[rows].mean() / out.log_vol_var[rows].mean()
        assert 1 / 1.5 < ratio < 1.5
    # the fused mean beats the members' average error: it leans on member 0
    assert sq_err.mean() < np.mean((test_set.mu - test_set.log_vol[:, None]) ** 2)


def test_epistemic_uncertainty_shrinks_with_more_rows(test_set: Ensemble) -> None:
    big = make_ensemble(2000, seed=3)
    outs = {}
    for n in (100, 2000):
        fusion = BayesianFusion(steps=STEPS, seed=0).fit(big.proba[:n], big.mu[:n], big.var[:n], big.y[:n],
                                                         big.log_vol[:n], calib_fraction=0.0)
        outs[n] = fusion.predict(*test_set.members())
    assert outs[100].epistemic_vol.mean() > 5 * outs[2000].epistemic_vol.mean()
    assert outs[100].epistemic_dir.mean() > 3 * outs[2000].epistemic_dir.mean()
    assert (outs[2000].epistemic_dir >= 0).all()


def test_calibration_makes_confidence_match_accuracy(uncalibrated: BayesianFusion, calibrated: BayesianFusion,
                                                     test_set: Ensemble) -> None:
    assert calibrated.calibrated and not uncalibrated.calibrated
    assert calibrated.fit_info["n_fit"] == 1050 and calibrated.fit_info["n_calib"] == 450
    assert calibrated.temperature.temperature > 1.2  # member 0 is overconfident: the fusion softens it
    assert any("temperature" in note for note in calibrated.notes)
    raw = uncalibrated.predict(*test_set.members())
    cal = calibrated.predict(*test_set.members())
    np.testing.assert_allclose(cal.proba.sum(axis=1), 1.0)
    ece_raw = expected_calibration_error(raw.confidence, raw.predicted_class == test_set.y, 15)
    ece_cal = expected_calibration_error(cal.confidence, cal.predicted_class == test_set.y, 15)
    assert ece_raw > 0.06
    assert ece_cal < 0.04
    assert ece_cal < ece_raw / 2
    assert any(note.startswith("isotonic confidence") for note in calibrated.notes)
    assert log_loss(test_set.y, cal.proba) < log_loss(test_set.y, raw.proba)


def test_volatility_variance_calibration_fixes_understated_variance() -> None:
    """Members all give the same volatility forecast (no spread for the gate to widen) and state a quarter
    of its true error variance; the calibration rows reveal the factor 4."""
    train = make_ensemble(1500, seed=11, var_factor=0.25, shared_vol=True)
    test = make_ensemble(3000, seed=12, var_factor=0.25, shared_vol=True)
    fusion = train.fit(BayesianFusion(steps=STEPS, seed=0), calib_fraction=0.3)
    out = fusion.predict(*test.members())
    sq_err = np.mean((out.log_vol - test.log_vol) ** 2)
    assert sq_err / (out.log_vol_var.mean() / fusion.vol_var_scale) > 3.0  # before scaling: far too small
    assert 1 / 1.25 < sq_err / out.log_vol_var.mean() < 1.25
    assert 3.0 < fusion.vol_var_scale < 5.5


def test_missing_targets_are_ignored() -> None:
    data = make_ensemble(400, seed=21)
    y_nan, y_neg = data.y.astype(float), data.y.astype(float)
    y_nan[::3], y_neg[::3] = np.nan, -1
    lv = data.log_vol.copy()
    lv[1::4] = np.nan
    fits = [BayesianFusion(steps=200, seed=0).fit(*data.members()[:3], yy, lv, calib_fraction=0.0)
            for yy in (y_nan, y_neg)]
    for key, value in fits[0].posterior.items():
        assert torch.equal(value, fits[1].posterior[key]), key
    assert fits[0].fit_info["n_fit_labelled"] == 400 - len(range(0, 400, 3))
    assert fits[0].fit_info["n_fit_vol"] == 300
    assert fits[0].predict(*data.members()).weights[:, 0].mean() > 0.6
    # a fusion fitted on the volatility alone (no labels) still finds the best member
    data.y = np.full(400, np.nan)
    vol_only = data.fit(BayesianFusion(steps=STEPS, seed=0), calib_fraction=0.0)
    assert vol_only.predict(*data.members()).weights[:, 0].mean() > 0.6


def test_minibatch_svi_finds_the_same_member() -> None:
    data = make_ensemble(600, seed=61)
    fusion = data.fit(BayesianFusion(steps=STEPS, seed=0, batch_size=128), calib_fraction=0.0)
    assert fusion.predict(*data.members()).weights[:, 0].mean() > 0.9


def test_times_put_the_latest_rows_into_calibration() -> None:
    """Rows given in another order (e.g. by symbol, then time) with their times fit exactly as the
    time-sorted rows do: the calibration rows are the latest ones, not the last given."""
    data = make_ensemble(400, seed=71)
    perm = np.random.default_rng(0).permutation(400)
    by_time = data.fit(BayesianFusion(steps=100, seed=0), calib_fraction=0.3)
    shuffled = BayesianFusion(steps=100, seed=0).fit(data.proba[perm], data.mu[perm], data.var[perm],
                                                     data.y[perm], data.log_vol[perm], calib_fraction=0.3,
                                                     times=perm)  # row k was taken at time perm[k]
    for key, value in by_time.posterior.items():
        assert torch.equal(value, shuffled.posterior[key]), key
    assert shuffled.temperature.temperature == by_time.temperature.temperature
    assert shuffled.notes == by_time.notes


def test_too_few_calibration_rows_skips_calibration() -> None:
    data = make_ensemble(120, seed=31)
    fusion = data.fit(BayesianFusion(steps=50, seed=0), calib_fraction=0.3)
    assert not fusion.calibrated
    assert any("calibration skipped" in note and "36" in note for note in fusion.notes)
    assert fusion.fit_info["n_fit"] == 120
    out = fusion.predict(*data.members())
    np.testing.assert_array_equal(out.confidence, out.proba.max(axis=1))


def _assert_same(a: FusionOutput, b: FusionOutput) -> None:
    for f in fields(FusionOutput):
        np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name), err_msg=f.name)


@pytest.mark.parametrize("mode", ["auto", "isotonic"])
def test_save_load_round_trip_predicts_identically(mode: str, test_set: Ensemble, tmp_path: Path) -> None:
    data = make_ensemble(600, seed=51)
    fusion = data.fit(BayesianFusion(steps=100, seed=0, confidence_calibration=mode), calib_fraction=0.3)
    assert fusion.calibrated and (fusion.isotonic.fitted or mode == "auto")
    fusion.save(tmp_path / "fusion")
    manifest = json.loads((tmp_path / "fusion" / "manifest.json").read_text())
    assert manifest["n_members"] == 3 and manifest["n_context"] == 0 and manifest["calibrated"] is True
    tensors = torch.load(tmp_path / "fusion" / TENSORS_FILE, weights_only=True)
    assert tensors["W_loc"].shape == (9, 3) and tensors["b_scale"].shape == (3,)
    loaded = BayesianFusion.load(tmp_path / "fusion")
    assert loaded.settings() == fusion.settings() and loaded.notes == fusion.notes
    assert loaded.temperature.temperature == fusion.temperature.temperature
    _assert_same(loaded.predict(*test_set.members()), fusion.predict(*test_set.members()))
    # the seed is what makes it identical: another seed draws other posterior samples
    other = loaded.predict(*test_set.members(), seed=1)
    assert not np.array_equal(other.epistemic_vol, fusion.predict(*test_set.members()).epistemic_vol)


def test_two_fusions_do_not_interfere(test_set: Ensemble) -> None:
    """Same latent names, different shapes: without isolation the second fit would overwrite the first
    one's parameters. The caller's own pyro param store and torch RNG are left as they were."""
    pyro.clear_param_store()
    sentinel = pyro.param("caller_param", torch.tensor([1.0, 2.0]))
    rng_before = torch.random.get_rng_state()
    a_data = make_ensemble(400, seed=41)
    a = a_data.fit(BayesianFusion(steps=100, seed=3), calib_fraction=0.0)
    first = a.predict(*test_set.members())

    rng = np.random.default_rng(42)  # a different ensemble: M = 2 members and one context column
    n = 400
    b_data = Ensemble(proba=softmax(rng.normal(size=(n, 2, 3)), axis=2),
                      mu=rng.normal(-3.0, 0.5, size=(n, 2)), var=np.full((n, 2), 0.2),
                      y=rng.integers(0, 3, n), log_vol=rng.normal(-3.0, 0.5, n), context=rng.normal(size=n))
    b = b_data.fit(BayesianFusion(steps=100, seed=3), calib_fraction=0.0)
    assert b.posterior["W_loc"].shape == (7, 2)

    _assert_same(a.predict(*test_set.members()), first)
    again = a_data.fit(BayesianFusion(steps=100, seed=3), calib_fraction=0.0)
    for key, value in a.posterior.items():
        assert torch.equal(value, again.posterior[key]), key
    store = pyro.get_param_store()
    assert set(store.keys()) == {"caller_param"}
    assert torch.equal(store["caller_param"], sentinel)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    pyro.clear_param_store()


def test_inputs_are_validated(uncalibrated: BayesianFusion, test_set: Ensemble) -> None:
    with pytest.raises(RuntimeError, match="predict before fit"):
        BayesianFusion().predict(*test_set.members())
    with pytest.raises(ValueError, match="M = 3 members and K = 0"):
        uncalibrated.predict(test_set.proba[:, :2], test_set.mu[:, :2], test_set.var[:, :2])
    with pytest.raises(ValueError, match="M = 3 members and K = 0"):
        uncalibrated.predict(test_set.proba, test_set.mu, test_set.var, np.zeros(3000))
    with pytest.raises(ValueError, match="sum to 1"):
        uncalibrated.predict(test_set.proba * 0.5, test_set.mu, test_set.var)
    with pytest.raises(ValueError, match="member_mu must be"):
        uncalibrated.predict(test_set.proba, test_set.mu[:10], test_set.var)
    with pytest.raises(ValueError, match="y must be"):
        BayesianFusion(steps=5).fit(test_set.proba, test_set.mu, test_set.var, np.full(3000, 4),
                                    test_set.log_vol)
