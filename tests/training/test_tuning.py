"""Ray Tune over the deep members and the fusion: search spaces from config, tuning data strictly before
the test span, ASHA stopping bad trials, the best configuration and the trial count in tuning.json."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cryptopredict.config import Config, ConfigError, load_config
from cryptopredict.training.settings import (
    DEFAULT_SEARCH_SPACES,
    MEMBER_NAMES,
    TUNABLE,
    TuningConfig,
    flatten_space,
    merge_space,
)
from tests.support.synthetic_panel import synthetic_panel

N_BARS, TEST_AT = 520, 430  # test_start = first bar + TEST_AT hours; 90 bars after it are the "test span"
HORIZON = 4
BASE = {"window": 8, "members": ["cnn_lstm", "bilstm"],
        "train": {"batch_size": 64, "curriculum_epochs": 0, "patience": 10, "lr": 5e-3, "epochs": 3},
        "fusion": {"steps": 60, "num_samples": 16, "min_calib_rows": 20}}


def _cfg(tmp: Path, *extra: str) -> Config:
    X, *_ = _panel()
    t0 = X.index.get_level_values("timestamp").min()
    cfg = load_config(None, [
        f"run_dir={tmp / 'runs'}", f"evaluation.test_start={(t0 + pd.Timedelta(hours=TEST_AT)).isoformat()}",
        "evaluation.train_stride=1", "evaluation.split.valid_bars=96", "evaluation.split.embargo=2",
        f"features.horizon={HORIZON}", "tuning.verbose=0", *extra])
    cfg.tuning.base_params = BASE
    return cfg


_CACHE: dict[str, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]] = {}


def _panel() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    if "p" not in _CACHE:
        X, labels, corr = synthetic_panel(n_bars=N_BARS, late=40)
        _CACHE["p"] = (X, labels[["fwd_return", "fwd_vol", "sigma"]], corr)
    return _CACHE["p"]


def _settings(cfg: Config):  # type: ignore[no-untyped-def]
    from cryptopredict.models.ensemble import EnsembleSettings

    return EnsembleSettings(**cfg.tuning.base_params)


# ----------------------------------------------------------------------------------- search spaces

def test_search_space_from_a_config_dict_merges_onto_the_defaults() -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    from cryptopredict.training.tuning import build_search_space

    cfg = load_config(None, [
        "tuning.search_spaces.transformer.train.lr={loguniform: [1e-5, 1e-3]}",  # YAML reads 1e-5 as a string
        "tuning.search_spaces.transformer.net.n_layers=null",
        "tuning.search_spaces.transformer.net.d_model={grid: [8, 16]}",
        "tuning.search_spaces.fusion.steps={randint: [10, 20]}",
        "tuning.search_spaces.fusion.prior_scale=0.5",
    ])
    space = cfg.tuning.space_for("transformer")
    assert space["train"]["lr"] == {"loguniform": [1e-5, 1e-3]}
    assert "n_layers" not in space["net"] and space["net"]["ff_mult"] == [2, 4]  # the rest of the default
    assert space["train"]["weight_decay"] == DEFAULT_SEARCH_SPACES["transformer"]["train"]["weight_decay"]
    built = build_search_space(space)
    lr = built["train"]["lr"]
    assert isinstance(lr, Float) and (lr.lower, lr.upper) == (1e-5, 1e-3) and "LogUniform" in str(lr.get_sampler())
    assert isinstance(built["window"], Categorical) and built["window"].categories == [16, 32, 48]
    assert built["net"]["d_model"] == {"grid_search": [8, 16]}
    fusion = build_search_space(cfg.tuning.space_for("fusion"))
    assert isinstance(fusion["steps"], Integer) and (fusion["steps"].lower, fusion["steps"].upper) == (10, 20)
    assert fusion["prior_scale"] == 0.5  # a scalar is fixed
    assert set(flatten_space(space)) == {"window", "train.lr", "train.weight_decay", "train.dropout_start",
                                         "train.focal_gamma", "net.d_model", "net.ff_mult"}
    # null removes a whole section; the defaults in code are untouched by a merge
    assert "net" not in merge_space(DEFAULT_SEARCH_SPACES["transformer"], {"net": None})
    assert "n_layers" in DEFAULT_SEARCH_SPACES["transformer"]["net"]


@pytest.mark.parametrize(("override", "message"), [
    ("tuning.search_spaces.transformer.train.lr={loguniform: [0, 1]}", "loguniform needs low > 0"),
    ("tuning.search_spaces.transformer.train.lr={uniform: [1]}", "uniform takes 2 numbers"),
    ("tuning.search_spaces.transformer.train.lr={normal: [0, 1]}", "is not a spec"),
    ("tuning.search_spaces.transformer.lr=[0.1]", "are not settings"),
    ("tuning.search_spaces.lightgbm.lr=[0.1]", "unknown models"),
    ("tuning.models=[transformer,foo]", "unknown models to tune"),
])
def test_bad_search_spaces_are_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(None, [override])


def test_space_keys_are_checked_against_the_nets_and_the_trainer() -> None:
    from cryptopredict.models.ensemble import MEMBER_NETS
    from cryptopredict.training.tuning import check_space

    assert tuple(MEMBER_NETS) == MEMBER_NAMES and TUNABLE == (*MEMBER_NAMES, "fusion")
    for model in TUNABLE:  # every default space names real settings
        check_space(model, TuningConfig().space_for(model))
    with pytest.raises(ValueError, match=r"transformer\.net\.hidden: not a setting of transformer"):
        check_space("transformer", {"net": {"hidden": [8]}})
    with pytest.raises(ValueError, match=r"fusion\.gamma: not an argument of BayesianFusion"):
        check_space("fusion", {"gamma": [1]})


def test_config_import_stays_cheap() -> None:
    code = "import sys, cryptopredict.config; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.stdout.split() == ["False", "False"], out.stderr[-2000:]


def test_tune_flags_map_onto_the_tuning_config(capsys: pytest.CaptureFixture[str]) -> None:
    from cryptopredict.cli import UserError, main, tune_options

    tc = tune_options(load_config(None, []), "cnn_lstm, fusion", 3, None, quick=True).tuning
    assert tc.models == ["cnn_lstm", "fusion"] and tc.num_samples == 3 and (tc.max_epochs, tc.n_folds) == (2, 1)
    assert tc.base_params["train"]["max_steps_per_epoch"] == 50
    assert tune_options(load_config(None, []), None, None, 9, quick=False).tuning.max_epochs == 9
    with pytest.raises(UserError, match="--num-samples must be at least 1"):
        tune_options(load_config(None, []), None, 0, None, quick=False)
    assert main(["tune", "--models", "cnn_lstm,foo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [("cryptopredict tune: error: --models 'cnn_lstm,foo': unknown models to tune ['foo']; known: "
                    "['transformer', 'bilstm', 'cnn_lstm', 'gnn', 'fusion']")]


def test_tune_command_prints_the_summary_and_the_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from cryptopredict import cli
    from cryptopredict.training import tuning

    seen = {}

    def fake(cfg, **_):  # type: ignore[no-untyped-def]
        seen["tuning"] = cfg.tuning
        best = {"trials": 5, "stopped_early": 3, "errored": 0, "best_objective": 0.51,
                "best_config": {"window": 16, "train": {"lr": 0.002}}}
        return ({"run_id": "r", "data_end": "2021-12-31T20:00:00+00:00", "n_trials": 5, "window_note": None,
                 "models": {"gnn": best},
                 "evaluate_overrides": ["--set evaluation.n_trials_extra=5",
                                        "--set evaluation.model_params.ensemble.window=16"]}, tmp_path)

    monkeypatch.setattr(tuning, "tune_models", fake)
    assert cli.main(["tune", "--models", "gnn", "--num-samples", "5", "--max-epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert seen["tuning"].models == ["gnn"] and (seen["tuning"].num_samples, seen["tuning"].max_epochs) == (5, 3)
    assert "window=16, train.lr=0.002" in out and "0.5100" in out
    assert ("cryptopredict evaluate --set evaluation.n_trials_extra=5 "
            "--set evaluation.model_params.ensemble.window=16") in out


# ------------------------------------------------------------------------------------ tuning data

def test_tuning_data_stops_before_the_test_span_with_purged_inner_folds(tmp_path: Path) -> None:
    from cryptopredict.training.tuning import prepare_tuning_data

    cfg = _cfg(tmp_path, "tuning.n_folds=2", "tuning.valid_bars=60")
    X, labels, corr = _panel()
    data = prepare_tuning_data(X, labels, cfg, _settings(cfg), corr)
    test_start = pd.Timestamp(cfg.evaluation.test_start)
    assert data.test_start == test_start and data.data_end == test_start - pd.Timedelta(hours=HORIZON)
    assert len(data.folds) == 2
    previous_valid_end = None
    for payload, span in zip(data.folds, data.spans):
        times = payload.panel.times
        train_t = times[payload.train_rows[1]]
        valid_t = times[payload.valid_rows[1]]
        # nothing the objective reads is at or after test_start, and no label reaches into the test span
        assert times.max() < test_start and times.max() == valid_t.max()
        assert valid_t.max() + pd.Timedelta(hours=HORIZON) < test_start
        labelled = np.argwhere(payload.targets.y.numpy() >= 0)
        assert times[labelled[:, 1]].max() == valid_t.max()
        if payload.panel.corr is not None:
            assert payload.panel.corr.shape[0] == len(times)
        # purge (h) + embargo (2) bars between the training rows and the validation window
        assert train_t.max() + pd.Timedelta(hours=HORIZON + 2) < valid_t.min()
        assert valid_t.max() - valid_t.min() == pd.Timedelta(hours=59)
        assert span["n_valid"] == len(valid_t) and span["n_train"] == len(train_t)
        if previous_valid_end is not None:
            assert valid_t.min() > previous_valid_end  # windows tile forward in time
        previous_valid_end = valid_t.max()
    assert data.spans[-1]["valid"][1] == str(data.data_end)  # the last window ends where tuning data ends


def test_member_objective_reports_every_epoch_and_pads_early_stops(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptopredict.training import tuning
    from cryptopredict.training.trainer import TrainResult
    from cryptopredict.training.tuning import member_objective, member_settings, prepare_tuning_data

    cfg = _cfg(tmp_path)
    X, labels, corr = _panel()
    data = prepare_tuning_data(X, labels, cfg, _settings(cfg), corr)
    reports: list[dict] = []
    settings = member_settings("cnn_lstm", BASE, {"train": {"lr": 1e-2}}, max_epochs=4, device="cpu")
    assert settings.members == ["cnn_lstm"] and settings.train_for("cnn_lstm").epochs == 4
    out = member_objective("cnn_lstm", data.folds, settings, reports.append)
    assert [r["epoch"] for r in reports] == [1, 2, 3, 4] and [r["iteration"] for r in reports] == [1, 2, 3, 4]
    assert reports[-1]["folds_complete"] == 1 and reports[-1]["objective"] == out["objective"]
    assert out["objective"] == min(r["valid_loss"] for r in reports)
    assert all(r["last_row_s"] < data.test_start.timestamp() for r in reports)

    def stops_after_two(member, net, payload, settings, device, on_epoch=None):  # type: ignore[no-untyped-def]
        on_epoch({"valid_loss": 1.0})
        on_epoch({"valid_loss": float("nan")})  # diverged: reported as a large finite loss
        return TrainResult(net.state_dict(), 0, 1.0)

    monkeypatch.setattr(tuning, "train_member", stops_after_two)
    reports.clear()
    out = member_objective("cnn_lstm", data.folds * 2, settings, reports.append)
    assert [r["valid_loss"] for r in reports] == [1.0, tuning.DIVERGED_LOSS, 1.0, 1.0] * 2
    assert [r["fold"] for r in reports] == [0] * 4 + [1] * 4 and reports[-1]["iteration"] == 8
    assert [r["folds_complete"] for r in reports] == [0, 0, 0, 1, 1, 1, 1, 2]
    assert out["objective"] == 1.0 and out["fold_best"] == [1.0, 1.0]
    n_bars = sum(len(np.unique(p.valid_rows[1])) for p in data.folds * 2)
    assert len(out["bar_losses"]) == n_bars and np.all(np.isfinite(out["bar_losses"]))


# ---------------------------------------------------------------------------------------- Ray Tune

@pytest.mark.ray
@pytest.mark.slow
def test_asha_stops_bad_trials_and_the_summary_counts_every_trial(tmp_path: Path, ray_session: None) -> None:
    from cryptopredict.models.ensemble import EnsembleSettings
    from cryptopredict.training.tuning import evaluation_overrides, prepare_tuning_data, tune_models

    cfg = _cfg(tmp_path, "tuning.models=[cnn_lstm,fusion]", "tuning.num_samples=2", "tuning.max_epochs=3",
               "tuning.grace_period=1", "tuning.reduction_factor=2")
    cfg.tuning.search_spaces = {
        "cnn_lstm": {"window": None, "net": None,
                     "train": {"lr": {"grid": [1e-2, 1e-7]}, "weight_decay": None, "dropout_start": None,
                               "focal_gamma": None}},
        "fusion": {"steps": [20, 60], "lr": None, "prior_scale": None},
    }
    X, labels, corr = _panel()
    data = prepare_tuning_data(X, labels, cfg, _settings(cfg), corr)
    started = time.perf_counter()
    summary, out_dir = tune_models(cfg, run_id="t1", data=data)
    seconds = time.perf_counter() - started
    print(f"tuning search: {seconds:.1f} s")

    assert out_dir == (tmp_path / "runs" / "t1" / "tuning").absolute()
    assert (out_dir / "cnn_lstm").is_dir() and (out_dir / "fusion").is_dir()  # Tune's own results
    member = summary["models"]["cnn_lstm"]
    assert member["trials"] == 4 and member["errored"] == 0
    assert member["stopped_early"] >= 1  # ASHA stopped a 1e-7 trial before its third epoch
    stopped = [r for r in member["trial_results"] if r["stopped_early"]]
    assert all(r["config"]["train"]["lr"] == 1e-7 and r["iterations"] < 3 for r in stopped)
    assert member["best_config"] == {"train": {"lr": 1e-2}}
    # every trial read only rows before the test span (reported from inside the trials)
    for r in member["trial_results"]:
        assert pd.Timestamp(r["last_row"]) + pd.Timedelta(hours=HORIZON) < data.test_start
        assert pd.Timestamp(r["last_panel_bar"]) < data.test_start

    fusion = summary["models"]["fusion"]
    assert fusion["trials"] == 2 and fusion["members"] == ["cnn_lstm", "bilstm"]
    assert summary["n_trials"] == 6 and summary["n_trials_by_model"] == {"cnn_lstm": 4, "fusion": 2}

    saved = json.loads((out_dir / "tuning.json").read_text())
    assert saved["n_trials"] == 6 and "--set evaluation.n_trials_extra=6" in saved["evaluate_overrides"]
    assert "--set evaluation.n_trials_extra=6" in saved["n_trials_note"]
    assert pd.Timestamp(saved["data_seen"]["last_panel_bar"]) < data.test_start
    # the overrides and the YAML snippet load as a config and give valid ensemble settings
    applied = load_config(None, evaluation_overrides(out_dir))
    assert applied.evaluation.n_trials_extra == 6
    ens = EnsembleSettings(**applied.evaluation.model_params["ensemble"])
    assert ens.train_for("cnn_lstm").lr == 1e-2 and ens.fusion["steps"] == fusion["best_config"]["steps"]
    snippet = tmp_path / "best.yaml"
    snippet.write_text((out_dir / "best.yaml").read_text())
    from_yaml = load_config(snippet)
    assert from_yaml.evaluation.n_trials_extra == 6
    assert "lightgbm" in from_yaml.evaluation.model_params  # the other models' params are kept
    assert EnsembleSettings(**from_yaml.evaluation.model_params["cnn_lstm"]).train_for("cnn_lstm").lr == 1e-2
    assert yaml.safe_load(saved["yaml"]) == yaml.safe_load((out_dir / "best.yaml").read_text())
    # PBO of the tuning selection over the completed trials' per-bar validation losses
    pbo = member["pbo"]
    completed = [r for r in member["trial_results"] if r["complete"]]
    assert pbo is not None and pbo["trials"] == len(completed) >= 2 and 0.0 <= pbo["pbo"] <= 1.0
    assert all(Path(r["bar_losses_file"]).is_file() for r in completed)
    # the evaluation reads the summary: its trials count in the Deflated Sharpe, its PBO is a report note
    from cryptopredict.evaluation.run import tuning_record
    trials, notes = tuning_record(str(out_dir / "tuning.json"))
    assert trials == 6 and any("PBO of the tuning selection for cnn_lstm" in n for n in notes)


def test_tuning_pbo_is_zero_for_a_dominant_trial_and_near_half_for_noise() -> None:
    from cryptopredict.training.tuning import tuning_pbo

    rng = np.random.default_rng(0)
    noise = [rng.normal(1.0, 0.1, 400) for _ in range(6)]
    dominant = [*noise[:5], noise[5] - 0.5]  # trial 5 has a lower loss on every bar
    assert tuning_pbo(dominant)["pbo"] == 0.0
    pbos = [tuning_pbo([np.random.default_rng(10 * s + k).normal(1.0, 0.1, 400) for k in range(6)])["pbo"]
            for s in range(8)]
    assert 0.2 < float(np.mean(pbos)) < 0.8
    assert tuning_pbo(noise[:1]) is None  # one trial: nothing to select among
