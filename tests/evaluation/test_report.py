"""The evaluation report: results.json, the HTML, PNG export, and the page in real headless Chromium."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryptopredict.evaluation.report import ReportPaths, downsample, format_interval, write_report
from cryptopredict.evaluation.results import CanaryResult, Interval, ModelResult, RunResult
from tests.evaluation.ensemble_frames import (
    EARLY_WEIGHTS,
    LATE_WEIGHTS,
    MEAN_WEIGHTS,
    MEMBERS,
    ensemble_predictions,
    member_predictions,
)

N_HOURS = 3_000
SYMBOLS = ["BTCUSDT", "ETHUSDT"]
VERDICT = "no significant edge: the net Sharpe ratio's 95% interval includes zero after costs."
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,2400",
)
APT_HINT = "apt-get install -y chromium chromium-driver"
PROBE = "cryptopredict-report-console-probe"
BASE_PNGS = ["png/deciles.png", "png/drawdown.png", "png/equity.png", "png/reliability.png"]
ENSEMBLE_PNGS = ["png/ensemble_sizing.png", "png/ensemble_uncertainty.png", "png/ensemble_weights.png"]


def _model(
    name: str, is_baseline: bool, rng: np.random.Generator, timestamps: pd.DatetimeIndex
) -> ModelResult:
    """One model's result with the shapes results.py documents, from deterministic random data."""
    index = pd.MultiIndex.from_product([SYMBOLS, timestamps], names=["symbol", "timestamp"])
    n = len(index)
    probabilities = rng.dirichlet([2.0, 3.0, 2.0], size=n)
    y_true = rng.integers(0, 3, size=n).astype(float)
    y_true[rng.random(n) < 0.01] = np.nan
    fold = np.tile(np.repeat([0, 1], len(timestamps) // 2), len(SYMBOLS))
    predictions = pd.DataFrame(
        {
            "p_sell": probabilities[:, 0],
            "p_hold": probabilities[:, 1],
            "p_buy": probabilities[:, 2],
            "confidence": probabilities.max(axis=1),
            "log_vol": rng.normal(-4.5, 0.3, n),
            "log_vol_var": rng.uniform(0.01, 0.1, n),
            "y_true": y_true,
            "fwd_return": rng.normal(0.0, 0.01, n),
            "fold": fold,
            "position": np.clip(probabilities[:, 2] - probabilities[:, 0], -1, 1),
        },
        index=index,
    )
    returns = rng.normal(0.00005, 0.004, len(timestamps))
    equity = pd.Series(np.cumprod(1 + returns), index=timestamps)
    equity_gross = pd.Series(np.cumprod(1 + returns + 0.00002), index=timestamps)
    month_end = equity.resample("ME").last()
    monthly_returns = month_end.pct_change().fillna(month_end.iloc[0] - 1.0)
    monthly = pd.DataFrame(
        [monthly_returns.to_numpy()], index=pd.Index([2024], name="year"), columns=list(month_end.index.month)
    ).reindex(columns=range(1, 13))
    monthly["year"] = np.prod(1 + monthly_returns.to_numpy()) - 1
    centers = np.linspace(0.38, 0.85, 10)
    reliability = pd.DataFrame(
        {"mean_confidence": centers, "accuracy": centers - 0.05, "count": rng.integers(50, 900, 10)}
    )
    deciles = pd.DataFrame(
        {"group": range(10), "accuracy": np.linspace(0.34, 0.47, 10), "count": np.full(10, n // 10)}
    )
    accuracy = 0.5312 if not is_baseline else 0.4012
    return ModelResult(
        name=name,
        predictions=predictions,
        equity=equity,
        equity_gross=equity_gross,
        metrics={
            "accuracy": accuracy,
            "balanced_accuracy": accuracy - 0.02,
            "sharpe": 1.2341 if not is_baseline else 0.1,
            "brier": 0.6523,
            "mcc": math.nan,
            "max_drawdown": -0.1234,
            "n_labelled": float(n),
            "precision_BUY": 0.4,
            "profit_factor": math.inf,
        },
        intervals={
            "accuracy": Interval(accuracy, accuracy - 0.0211, accuracy + 0.0211),
            "balanced_accuracy": Interval(accuracy - 0.02, accuracy - 0.0411, accuracy + 0.0011),
            "sharpe": Interval(1.2341 if not is_baseline else 0.1, -0.4567, 2.9012),
            "sortino": Interval(1.5, math.nan, math.inf),
        },
        reliability=reliability,
        deciles=deciles,
        monthly=monthly,
        tests={
            "pesaran_timmermann": {
                "statistic": 2.31,
                "p_value": 0.0104,
                "note": "direction vs sign of return",
            },
            "dm_logloss_vs_majority": {
                "statistic": 1.1,
                "p_value": math.nan,
                "note": "Diebold-Mariano, log loss",
            },
        },
        is_baseline=is_baseline,
    )


def _run() -> RunResult:
    rng = np.random.default_rng(20240101)
    timestamps = pd.date_range("2024-01-01", periods=N_HOURS, freq="h", tz="UTC")
    prices = pd.DataFrame(
        {
            s: start * np.exp(np.cumsum(rng.normal(0, 0.006, N_HOURS)))
            for s, start in zip(SYMBOLS, [42_000.0, 2_300.0])
        },
        index=timestamps,
    )
    benchmark = (prices / prices.iloc[0]).mean(axis=1)
    half = N_HOURS // 2
    folds = [
        {
            "train_start": timestamps[0].isoformat(),
            "train_end": timestamps[half // 2].isoformat(),
            "test_start": timestamps[i * half].isoformat(),
            "test_end": timestamps[(i + 1) * half - 1].isoformat(),
        }
        for i in range(2)
    ]
    canaries = [
        CanaryResult(
            "random_walk", Interval(0.3398, 0.3201, 0.3597), 1 / 3, 0.41, True, "random-walk prices"
        ),
        CanaryResult(
            "shuffled_labels", Interval(0.4102, 0.3903, 0.4301), 1 / 3, 0.97, False, "labels permuted"
        ),
    ]
    return RunResult(
        run_id="test-run-0001",
        created_at="2024-05-20T12:00:00+00:00",
        data_span=(timestamps[0].isoformat(), timestamps[-1].isoformat()),
        symbols=SYMBOLS,
        horizon=4,
        folds=folds,
        models=[_model("tft", False, rng, timestamps), _model("majority", True, rng, timestamps)],
        benchmark_equity=benchmark,
        prices=prices,
        canaries=canaries,
        verdict=VERDICT,
        n_trials=24,
        config={"seed": 7, "costs": {"fee_bps": 10.0, "slippage_bps": math.inf}, "symbols": SYMBOLS},
        notes=["Synthetic data for the report test."],
    )


def _no_nan_constants(token: str) -> None:
    raise AssertionError(f"results.json contains the non-JSON constant {token}")


@pytest.fixture(scope="module")
def run() -> RunResult:
    return _run()


@pytest.fixture(scope="module")
def report(run: RunResult, tmp_path_factory: pytest.TempPathFactory) -> ReportPaths:
    return write_report(run, tmp_path_factory.mktemp("report"))


def _ensemble_run(run: RunResult) -> RunResult:
    """``run`` plus a deep ensemble (``ensemble_frames``), one of its members scored as its own model, and
    an allocation trading the ensemble's predictions (fusion weights included, but not an ensemble)."""
    tft = run.models[0]
    frame = ensemble_predictions(tft.predictions.index)
    ensemble = dataclasses.replace(tft, name="ensemble", predictions=frame)
    member = dataclasses.replace(
        run.models[1],
        name="ensemble.transformer",
        predictions=member_predictions(frame, "transformer"),
        is_baseline=False,
        metrics={**run.models[1].metrics, "log_loss": 1.0987},
    )
    allocation = dataclasses.replace(ensemble, name="ensemble+hrp", allocation="hrp")
    return dataclasses.replace(run, models=[*run.models, ensemble, member, allocation])


@pytest.fixture(scope="module")
def ensemble_run(run: RunResult) -> RunResult:
    return _ensemble_run(run)


@pytest.fixture(scope="module")
def ensemble_report(ensemble_run: RunResult, tmp_path_factory: pytest.TempPathFactory) -> ReportPaths:
    return write_report(ensemble_run, tmp_path_factory.mktemp("ensemble-report"), max_points=1_000)


def test_results_json_round_trips(report: ReportPaths, run: RunResult) -> None:
    document = json.loads(report.json.read_text(), parse_constant=_no_nan_constants)
    assert document["verdict"] == VERDICT
    assert document["n_trials"] == 24 and document["horizon"] == 4
    assert document["folds"] == run.folds
    assert document["config"]["costs"] == {"fee_bps": 10.0, "slippage_bps": None}
    assert [m["name"] for m in document["models"]] == ["tft", "majority"]
    for stored, model in zip(document["models"], run.models):
        assert stored["is_baseline"] == model.is_baseline
        assert set(stored["metrics"]) == set(model.metrics)
        assert stored["metrics"]["mcc"] is None and stored["metrics"]["profit_factor"] is None
        for name, value in model.metrics.items():
            if math.isfinite(value):
                assert stored["metrics"][name] == pytest.approx(value)
        assert set(stored["intervals"]) == set(model.intervals)
        for name, interval in model.intervals.items():
            for field in ("value", "low", "high", "level"):
                expected = getattr(interval, field)
                got = stored["intervals"][name][field]
                assert got is None if not math.isfinite(expected) else got == pytest.approx(expected)
            assert stored["intervals"][name]["method"] == interval.method
        assert stored["tests"]["pesaran_timmermann"]["p_value"] == pytest.approx(0.0104)
        assert stored["tests"]["dm_logloss_vs_majority"]["p_value"] is None
        assert stored["n_predictions"] == len(model.predictions)
        assert stored["n_predictions_by_fold"] == {"0": N_HOURS, "1": N_HOURS}
        assert stored["equity"]["final"] == pytest.approx(model.equity.iloc[-1])
        assert len(stored["reliability"]["data"]) == 10 and len(stored["deciles"]["data"]) == 10
        assert stored["monthly_returns"]["columns"] == [*range(1, 13), "year"]
        assert stored["monthly_returns"]["data"][0][11] is None  # December: no bars
    assert [(c["name"], c["passed"]) for c in document["canaries"]] == [
        ("random_walk", True),
        ("shuffled_labels", False),
    ]
    assert document["canaries"][1]["accuracy"]["low"] == pytest.approx(0.3903)
    assert document["benchmark"]["final"] == pytest.approx(run.benchmark_equity.iloc[-1])
    assert not [p.name for p in report.directory.iterdir() if p.name.startswith(".")], "temporary files left"
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        assert document["png"] == "written", document["png"]
        assert sorted(document["png_files"]) == BASE_PNGS
        for path in report.pngs.values():
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    else:
        assert document["png"].startswith("skipped: ") and document["png_files"] == []


def test_html_content(report: ReportPaths) -> None:
    text = report.html.read_text()
    assert "No significant edge: the net Sharpe ratio&#x27;s 95% interval includes zero after costs." in text
    assert "tft" in text and "majority (baseline)" in text
    assert '<td class="model num">53.1 [51.0, 55.2]</td>' in text  # accuracy of tft, in %
    assert '<td class="model num">1.234 [-0.457, 2.901]</td>' in text  # Sharpe, annualised
    assert '<td class="model num">1.500 [—, ∞]</td>' in text  # NaN and inf bounds
    assert 'Profit factor (gross gains / gross losses)</th><td class="model num">∞</td>' in text
    assert "Accuracy (%)" in text and "Sharpe ratio after costs (annualised)" in text
    assert "Precision BUY (%)" in text and '<td class="model num">40.0</td>' in text
    assert "Leakage canary failed (shuffled_labels)" in text
    assert "&lt; 0.001" not in text and "0.010" in text
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.IGNORECASE), "the report must not load scripts"
    assert text.count('class="plotly-graph-div"') == 7
    assert "downsampled for plotting" in text
    assert report.html.stat().st_size < 8_000_000


def test_format_interval() -> None:
    assert format_interval(Interval(0.5312, 0.5101, 0.5523), "accuracy") == "53.1 [51.0, 55.2]"
    assert format_interval(Interval(-0.00001, -0.2, 0.3), "sharpe") == "0.000 [-0.200, 0.300]"


def test_downsample_keeps_extremes_and_ends() -> None:
    rng = np.random.default_rng(3)
    series = pd.Series(
        np.cumsum(rng.normal(size=50_000)), index=pd.date_range("2020", periods=50_000, freq="h")
    )
    series.iloc[123] = np.nan
    shown = downsample(series, 1_000)
    assert len(shown) <= 1_000
    assert shown.index[0] == series.index[0] and shown.index[-1] == series.index[-1]
    assert shown.min() == series.min() and shown.max() == series.max()
    assert shown.index.is_monotonic_increasing and not shown.isna().any()
    assert downsample(series.iloc[:500], 1_000).equals(series.iloc[:500].dropna())


def test_png_skipped_without_kaleido_is_recorded(
    run: RunResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stale = tmp_path / "png"
    stale.mkdir()
    (stale / "equity.png").write_bytes(b"old")
    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido raises ImportError
    with caplog.at_level(logging.WARNING, logger="cryptopredict.evaluation.report"):
        paths = write_report(run, tmp_path)
    document = json.loads(paths.json.read_text())
    assert document["png"].startswith("skipped: kaleido is not installed")
    assert paths.png_status == document["png"] and paths.pngs == {} and document["png_files"] == []
    assert not stale.exists()
    assert any(
        r.levelno == logging.WARNING and "PNG export skipped" in r.getMessage() for r in caplog.records
    )


def test_no_ensemble_section_without_fusion_weights(report: ReportPaths) -> None:
    document = json.loads(report.json.read_text())
    assert all("ensemble" not in model for model in document["models"])
    text = report.html.read_text()
    assert 'id="ensemble"' not in text and 'href="#ensemble"' not in text and "chart-ensemble" not in text


def _column(table: dict, name: str) -> np.ndarray:
    """One column of a table stored as in results.json (``_frame_document``)."""
    return np.array([row[table["columns"].index(name)] for row in table["data"]], dtype=float)


def test_ensemble_numbers_in_results_json(ensemble_report: ReportPaths, ensemble_run: RunResult) -> None:
    document = json.loads(ensemble_report.json.read_text(), parse_constant=_no_nan_constants)
    stored = {m["name"]: m for m in document["models"]}
    # the ensemble only: not its members (scored as models), not an allocation trading its predictions
    assert [name for name, m in stored.items() if "ensemble" in m] == ["ensemble"]
    summary = stored["ensemble"]["ensemble"]
    frame = ensemble_run.models[2].predictions
    assert summary["members"] == list(MEMBERS) and summary["n_rows"] == len(frame)
    assert summary["mean_weights"] == pytest.approx(MEAN_WEIGHTS, abs=1e-9)
    over_time = summary["weights_over_time"]
    assert over_time["period"] == "week"  # 125 days: fewer than six months, so weeks
    table = over_time["table"]
    assert table["index"][0] == "2024-01-01T00:00:00" and len(table["index"]) == 18
    assert table["columns"] == list(MEMBERS)
    assert table["data"][0] == pytest.approx([EARLY_WEIGHTS[m] for m in MEMBERS], abs=1e-12)
    assert table["data"][-1] == pytest.approx([LATE_WEIGHTS[m] for m in MEMBERS], abs=1e-12)

    direction = summary["uncertainty_deciles"]
    labelled = frame["y_true"].notna()
    assert _column(direction, "decile").tolist() == list(range(1, 11))
    assert _column(direction, "count").sum() == labelled.sum()
    accuracy, log_loss = _column(direction, "accuracy"), _column(direction, "log_loss")
    assert (np.diff(accuracy) < 0).all() and accuracy[0] > 0.8 and accuracy[-1] < 0.3, accuracy
    assert (np.diff(log_loss) > 0).all(), log_loss
    assert (np.diff(_column(direction, "mean_epistemic")) > 0).all()
    predicted = frame[["p_sell", "p_hold", "p_buy"]].to_numpy().argmax(axis=1)
    overall = (predicted == frame["y_true"].to_numpy())[labelled.to_numpy()].mean()
    assert np.average(accuracy, weights=_column(direction, "count")) == pytest.approx(overall, abs=1e-12)

    vol = summary["vol_uncertainty_deciles"]
    rmse, stated = _column(vol, "rmse"), _column(vol, "rms_predicted_std")
    assert _column(vol, "count").sum() == frame["fwd_vol"].notna().sum()
    assert (np.diff(rmse) > 0).all() and (np.diff(stated) > 0).all(), rmse
    assert rmse == pytest.approx(stated, rel=0.1)  # the stated spread is right: the points lie on y = x

    sizing = summary["sizing_deciles"]
    size, hit = _column(sizing, "mean_abs_position"), _column(sizing, "hit_rate")
    assert summary["n_flat"] == int((frame["position"] == 0).sum())
    assert _column(sizing, "count").sum() == int((frame["position"] != 0).sum())
    assert (np.diff(size) > 0).all() and size[0] < 0.1 and size[-1] > 0.9, size
    assert (np.diff(hit) >= 0).all() and hit[-1] - hit[0] > 0.3, hit
    assert _column(sizing, "confidence_low").min() >= 0.4  # flat rows (below the threshold) are left out

    if shutil.which("chromium") or shutil.which("chromium-browser"):
        assert document["png"] == "written", document["png"]
        assert sorted(document["png_files"]) == sorted(BASE_PNGS + ENSEMBLE_PNGS)
        for key in ("ensemble_weights", "ensemble_uncertainty", "ensemble_sizing"):
            assert ensemble_report.pngs[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert document["png"].startswith("skipped: ")


def test_ensemble_deciles_keep_tied_values_together() -> None:
    """A calibrated confidence often takes few values: rows with the same value share one decile (not
    split by row order), so deciles differ only by the value they group by."""
    from cryptopredict.evaluation.report import ensemble_diagnostics

    index = pd.MultiIndex.from_product(
        [SYMBOLS, pd.date_range("2024-01-01", periods=500, freq="h", tz="UTC")], names=["symbol", "timestamp"]
    )
    frame = ensemble_predictions(index)
    frame.loc[frame["confidence"] < 0.7, "confidence"] = 0.6  # about 65% of the rows tied
    sizing = ensemble_diagnostics(frame).sizing
    assert sizing is not None
    tied = sizing[sizing["confidence_low"] == 0.6]
    assert len(tied) == 1 and (tied["confidence_high"] == 0.6).all() and tied["decile"].tolist() == [1]
    assert tied["count"].item() == ((frame["confidence"] == 0.6) & (frame["position"] != 0)).sum()
    assert (sizing["confidence_low"].iloc[1:] > 0.6).all() and sizing["decile"].is_monotonic_increasing
    assert (sizing["confidence_high"].to_numpy()[:-1] < sizing["confidence_low"].to_numpy()[1:]).all()


def test_ensemble_section_in_html(ensemble_report: ReportPaths) -> None:
    text = ensemble_report.html.read_text()
    assert '<section id="ensemble">' in text and '<a href="#ensemble">Ensemble</a>' in text
    assert text.index('id="deciles"') < text.index('id="ensemble"') < text.index('id="metrics"')
    for key in ("ensemble_weights", "ensemble_uncertainty", "ensemble_sizing"):
        assert f'id="chart-{key}"' in text
    assert text.count('class="plotly-graph-div"') == 10
    start = text.index('<table class="ensemble"')
    table = text[start : text.index("</table>", start)]
    assert "ensemble: 6,000 predictions; mean weights sum to 100.0%" in table
    # member, mean weight (%), its own accuracy (%), log loss and Sharpe where it was scored as a model
    assert (
        '<td>transformer</td><td class="num">10.0</td><td class="num">40.1</td><td class="num">1.099</td>'
        '<td class="num">0.100</td>'
    ) in table
    assert '<td>gnn</td><td class="num">40.0</td><td class="num">—</td>' in table
    assert "Weekly mean" in text or "weekly mean" in text
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.IGNORECASE)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(ensemble_report: ReportPaths, tmp_path: Path) -> None:
    """The page with every section (the ensemble's included) renders in real Chromium without errors."""
    report = ensemble_report
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip(f"needs the chromium and chromedriver binaries: {APT_HINT}")
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(60)
        driver.get(report.html.as_uri())
        expected = report.html.read_text().count('class="plotly-graph-div"')
        rendered_js = """
            return Array.from(document.querySelectorAll('.plotly-graph-div')).map(d =>
                d.classList.contains('js-plotly-plot') && d.querySelector('svg.main-svg') !== null
                && Array.isArray(d.data) && d.data.length > 0 && d._fullLayout !== undefined);
        """
        WebDriverWait(driver, 30).until(
            lambda d: (r := d.execute_script(rendered_js)) and len(r) == expected and all(r)
        )
        assert "No significant edge" in driver.find_element("id", "verdict").text
        screenshot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        screenshot.save(tmp_path / "screenshot.png")
        driver.execute_script(f"console.error('{PROBE}')")
        logs = driver.get_log("browser")
    finally:
        driver.quit()

    pixels = np.asarray(screenshot)
    distinct = len(np.unique(pixels.reshape(-1, 3), axis=0))
    non_white = float((pixels.min(axis=2) < 235).mean())
    assert distinct > 100, f"screenshot looks blank: {distinct} colours"
    assert non_white > 0.05, f"screenshot looks blank: {non_white:.1%} non-white pixels"
    assert any(PROBE in entry["message"] for entry in logs), "console capture does not work"
    errors = [e for e in logs if e["level"] == "SEVERE" and PROBE not in e["message"]]
    assert not errors, f"console errors: {errors}"


def test_allocations_are_shown_as_trading_results_only(run: RunResult, tmp_path: Path) -> None:
    """An allocation trades its model's predictions: it joins the equity curves, metrics and results.json,
    but not the prediction charts (they would repeat its model's), nor the signals chart."""
    from cryptopredict.evaluation import report as R

    tft = run.models[0]
    alloc = dataclasses.replace(tft, name="tft+hrp", allocation="hrp", equity=tft.equity * 1.01,
                                metrics={**tft.metrics, "sharpe": 9.0},
                                intervals={**tft.intervals, "sharpe": Interval(9.0, 8.0, 10.0)})
    with_alloc = dataclasses.replace(run, models=[*run.models, alloc])
    paths = write_report(with_alloc, tmp_path)
    document = json.loads(paths.json.read_text())
    assert [m["allocation"] for m in document["models"]] == [None, None, "hrp"]
    assert document["report"]["signals_model"] == "tft"
    text = paths.html.read_text()
    assert "tft+hrp<br><small>allocation: hrp</small>" in text and "spreads that model" in text
    names = lambda fig: {trace.name for trace in fig.data}  # noqa: E731
    for fig in (R._fig_equity, R._fig_drawdown):
        assert "tft+hrp" in names(fig(with_alloc, 1000))
    for fig in (R._fig_reliability, R._fig_confidence, R._fig_deciles):
        assert names(fig(with_alloc.models)) == names(fig(run.models))
