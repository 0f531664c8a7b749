"""The evaluation run end to end on a small slice of the shipped data: walk-forward, backtest, allocations
across coins, tests, both canaries and the report — and the canaries find nothing where there is nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryptopredict.config import Config, ConfigError, load_config
from cryptopredict.evaluation.run import evaluate, run_canaries
from cryptopredict.features.pipeline import build_features
from tests.conftest import SHIPPED_DATA
from tests.support.shipped import ingest_shipped_slice

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
START, END = pd.Timestamp("2021-03-01", tz="UTC"), pd.Timestamp("2022-04-01", tz="UTC")


def _cfg(tmp: Path) -> Config:
    return load_config(None, [
        f"lake.root={tmp / 'lake'}", f"run_dir={tmp / 'runs'}", f"ingest.symbols=[{','.join(SYMBOLS)}]",
        "ray.parallelism=serial", "features.families=[technical,cross_asset]",
        "evaluation.models=[majority,momentum,logistic]", "evaluation.test_start=2022-01-01",
        "evaluation.split.test_bars=720", "evaluation.split.valid_bars=240", "evaluation.max_folds=3",
        "evaluation.bootstrap_samples=300", "evaluation.canaries.model=logistic",
        f"evaluation.canaries.symbols=[{','.join(SYMBOLS)}]", "evaluation.canaries.max_folds=3",
        "evaluation.canaries.families=[technical,cross_asset]",
    ])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("eval")
    cfg = _cfg(tmp)
    ingest_shipped_slice(cfg, SYMBOLS, START, END)
    assert not build_features(cfg).errors
    run, run_dir = evaluate(cfg, run_id="t1")
    return cfg, run, run_dir


@pytest.mark.slow
def test_every_model_is_scored_out_of_sample_with_intervals(evaluated) -> None:  # type: ignore[no-untyped-def]
    cfg, run, _ = evaluated
    assert [m.name for m in run.models][:3] == ["majority", "momentum", "logistic"]  # then the allocations
    assert len(run.folds) == 3
    for m in run.models:
        ts = m.predictions.index.get_level_values("timestamp")
        assert ts.min() >= pd.Timestamp("2022-01-01", tz="UTC")  # only test spans are scored
        acc = m.intervals["accuracy"]
        assert acc.low <= acc.value <= acc.high and 0 < acc.value < 1
        assert np.isclose(m.equity.iloc[-1], 1 + m.metrics["total_return"], rtol=1e-9)
    majority = run.models[0]
    assert majority.metrics["accuracy"] < 0.45  # three classes, no skill
    logistic = run.models[2]
    assert {k for k in logistic.tests if k.startswith("dm_logloss_vs_")} == {"dm_logloss_vs_majority",
                                                                              "dm_logloss_vs_momentum"}
    assert run.verdict.startswith(("no significant edge", "significant edge after costs"))


@pytest.mark.slow
def test_canaries_find_no_edge(evaluated) -> None:  # type: ignore[no-untyped-def]
    """Each canary is a 95 % test, so a single run may alarm by chance; over four seeds the mean
    directional accuracy must sit within 3 standard errors of 50 % and no canary may show a Sharpe
    interval above 0."""
    cfg, run, _ = evaluated
    assert [c.name for c in run.canaries] == ["shuffled_labels", "random_walk"]
    runs = [run.canaries]
    for seed in (18, 19, 20):
        c = cfg.model_copy(deep=True)
        c.evaluation.canaries.seed = seed
        runs.append(run_canaries(c, f"seed{seed}", Path(cfg.run_dir) / f"seed{seed}"))
    for i, name in enumerate(["shuffled_labels", "random_walk"]):
        accs = [r[i].accuracy for r in runs]
        se = np.sqrt(np.mean([((a.high - a.low) / (2 * 1.96)) ** 2 for a in accs]) / len(accs))
        mean = float(np.mean([a.value for a in accs]))
        assert abs(mean - 0.5) < 3 * se, (name, [r[i].note for r in runs])
        assert all("EXCLUDES 0;" not in r[i].note for r in runs), [r[i].note for r in runs]


@pytest.mark.slow
def test_the_report_and_its_numbers_are_written(evaluated) -> None:  # type: ignore[no-untyped-def]
    _, run, run_dir = evaluated
    html = (run_dir / "report.html").read_text()
    assert run.verdict.split(":")[0].lower() in html.lower() and "logistic" in html
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["verdict"] == run.verdict and len(doc["canaries"]) == 2


@pytest.mark.slow
def test_stored_models_score_later_data_without_retraining(evaluated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The final fits stored by the run score a later span given as files in the shipped layout."""
    from cryptopredict.evaluation.scoring import score_later

    cfg, _, run_dir = evaluated
    models = run_dir / "models"
    meta = json.loads((models / "logistic" / "final_fit.json").read_text())
    last = pd.Timestamp(meta["last_training_bar"])
    assert last < END
    later = tmp_path / "later"
    later.mkdir()
    ohlcv = pd.read_parquet(SHIPPED_DATA / "ohlcv_1h.parquet")
    keep = ohlcv["symbol"].isin(SYMBOLS) & (ohlcv["timestamp"] >= START) & \
        (ohlcv["timestamp"] < END + pd.Timedelta(days=40))
    ohlcv[keep].to_parquet(later / "ohlcv_1h.parquet")
    for name in ("fear_greed_daily", "onchain_btc_daily", "macro_daily", "news"):
        (later / f"{name}.parquet").write_bytes((SHIPPED_DATA / f"{name}.parquet").read_bytes())
    stored = (models / "logistic" / "manifest.json").read_bytes()
    run, out_dir = score_later(cfg, models, later, "later1")
    assert (models / "logistic" / "manifest.json").read_bytes() == stored  # not retrained
    for m in run.models:
        ts = m.predictions.index.get_level_values("timestamp")
        assert ts.min() > last + pd.Timedelta(hours=4) and ts.max() >= END
    assert (out_dir / "report.html").is_file() and run.canaries == []


@pytest.mark.slow
def test_prediction_rows_carry_the_risk_managers_position(evaluated) -> None:  # type: ignore[no-untyped-def]
    _, run, _ = evaluated
    logistic = run.models[2]
    pos = logistic.predictions["position"]
    assert pos.notna().all() and (pos.abs() <= 1 + 1e-12).all()
    assert (pos != 0).any()  # the logistic baseline trades in this window (net Sharpe is finite)
    assert np.isfinite(logistic.metrics["sharpe"])


@pytest.mark.slow
def test_allocations_of_the_best_model_are_scored_and_counted(evaluated) -> None:  # type: ignore[no-untyped-def]
    cfg, run, run_dir = evaluated
    traded = [m for m in run.models[:3] if np.isfinite(m.metrics["sharpe"])]
    source = max(traded, key=lambda m: m.metrics["sharpe"])
    hrp, mv = run.models[3:]
    assert (hrp.name, hrp.allocation) == (f"{source.name}+hrp", "hrp")
    assert (mv.name, mv.allocation) == (f"{source.name}+mv", "mean_variance")
    assert run.n_trials == 5
    for res in (hrp, mv):
        assert res.is_baseline == source.is_baseline and res.equity.index.equals(source.equity.index)
        assert res.intervals["accuracy"] == source.intervals["accuracy"]  # same predictions, same interval
        sharpe = res.intervals["sharpe"]
        assert sharpe.low <= sharpe.value <= sharpe.high and 0 <= res.metrics["deflated_sharpe"] <= 1
        assert res.metrics["n_trades"] > 0 and res.metrics["costs_total"] > 0
        weights = res.predictions["position"].unstack("symbol")
        assert (weights >= 0).all().all() and (weights.sum(axis=1) <= 1 + 1e-9).all()
        # targets change only at rebalances: every rebalance_bars-th bar from the first test bar
        block = np.arange(len(weights)) // cfg.evaluation.portfolio.rebalance_bars
        assert (weights.groupby(block).nunique() <= 1).all().all()
    doc = json.loads((run_dir / "results.json").read_text())
    assert [m["allocation"] for m in doc["models"]] == [None, None, None, "hrp", "mean_variance"]
    html = (run_dir / "report.html").read_text()
    assert "allocation: hrp" in html and f"{source.name}+mv" in html


def test_allocations_must_name_evaluated_models() -> None:
    with pytest.raises(ConfigError, match="portfolio.models"):
        load_config(None, ["evaluation.models=[majority]", "evaluation.portfolio.models=[lightgbm]"])


def test_chunks_balance_the_cost_of_the_fits() -> None:
    """With costs, contiguous runs of refit groups are split so the dearest run is as cheap as possible
    (the walk-forward waits for its slowest item); without, every group counts the same."""
    from cryptopredict.evaluation.walkforward import chunk_groups

    assert chunk_groups(4, 1, 2) == [[0, 1], [2, 3]]
    assert chunk_groups(4, 1, 2, costs=[1, 1, 1, 3]) == [[0, 1, 2], [3]]
    assert chunk_groups(4, 1, 2, costs=[5, 1, 1, 1]) == [[0], [1, 2, 3]]
    # an expanding window: fit cost ~ rows² (LightGBM fold 0 → 13 measured ×4.6 for ×2.2 rows)
    rows = [64278 + 5940 * i for i in range(14)]
    runs = chunk_groups(14, 1, 2, costs=[r ** 2 for r in rows])
    assert runs == [list(range(0, 9)), list(range(9, 14))]
    sums = [sum(rows[i] ** 2 for i in run) for run in runs]
    assert max(sums) / min(sums) < 1.2  # the unweighted halves (folds 0–6, 7–13) differ by ×2.2
    # refit groups: only the fold that fits counts; never more runs than groups
    assert chunk_groups(14, 7, 2, costs=[1.0] * 14) == [[0], [7]]
    assert chunk_groups(14, 7, 3, costs=[1.0] * 14) == [[0], [7]]
    with pytest.raises(ValueError, match="13 costs for 14 folds"):
        chunk_groups(14, 1, 2, costs=[1.0] * 13)


@pytest.mark.slow
def test_folds_split_into_parallel_chunks_give_the_same_predictions(evaluated) -> None:  # type: ignore[no-untyped-def]
    """``evaluation.fold_chunks`` only changes how the folds are scheduled: every fold is still fitted on
    its own training span, so the merged predictions equal the unsplit run's, row for row."""
    from cryptopredict.evaluation.run import evaluate_models
    from cryptopredict.evaluation.walkforward import chunk_groups

    cfg, run, _ = evaluated
    assert chunk_groups(3, 1, 2) == [[0, 1], [2]]
    assert chunk_groups(14, 7, 3) == [[0], [7]]  # never more chunks than refit groups
    chunked = cfg.model_copy(deep=True)
    chunked.evaluation.fold_chunks = {"logistic": 2, "momentum": 5}  # momentum: more chunks than folds
    frames, _ = evaluate_models(chunked, "t1-chunked", ["logistic", "momentum"])
    plain, _ = evaluate_models(cfg, "t1-plain", ["logistic", "momentum"])
    for name in ("logistic", "momentum"):
        a, b = frames[name], plain[name]
        assert sorted(a["fold"].unique()) == [0, 1, 2]
        pd.testing.assert_frame_equal(a.sort_index(), b.sort_index())


def test_final_fit_refuses_a_model_the_evaluation_does_not_run(tmp_path: Path) -> None:
    from cryptopredict.evaluation.scoring import final_fit

    cfg = load_config(None, ["evaluation.models=[logistic]"])
    with pytest.raises(ValueError, match=r"final fit of \['lightgbm'\]: not in evaluation.models"):
        final_fit(cfg, tmp_path, ["lightgbm"])
