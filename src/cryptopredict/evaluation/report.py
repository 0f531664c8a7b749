"""The evaluation report: a self-contained HTML dashboard, a JSON file of every number, PNGs of key charts.

``write_report(run, directory)`` renders a :class:`~cryptopredict.evaluation.results.RunResult` into

- ``report.html``: one offline page (plotly.js inlined, no network), verdict first, then charts and tables;
- ``results.json``: every number of the run (metrics, intervals, tests, canaries, folds, verdict, config),
  NaN and infinities written as ``null``;
- ``png/*.png``: the key charts (equity, drawdown, reliability, accuracy by confidence decile, and for a
  deep ensemble its member weights, uncertainty against error and sizing by confidence) through
  kaleido, which drives a local Chrome/Chromium. Without one the PNGs are skipped with a WARNING and
  ``"png": "skipped: <reason>"`` in ``results.json``.

Every file is written to a temporary name in the target directory and renamed into place. The report
computes no headline metrics: it only derives display values (drawdown from equity, the predicted class
from the class probabilities, histogram counts of the confidence column) and, for an ensemble (a model
whose predictions carry fusion weights ``w_<member>``, see :func:`ensemble_diagnostics`), per-decile
tables of its rows (accuracy and log loss by epistemic uncertainty, volatility error by predicted
spread, position size and hit rate by confidence), stored in results.json under the model's
``"ensemble"`` key. Runs without an ensemble get neither that key nor the section.

Conventions read from ``RunResult``: returns, accuracies and rates are fractions (0.012 = 1.2 %), shown
in percent; ``monthly`` holds fractional returns, one row per year and one column per month.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from cryptopredict.evaluation.results import CanaryResult, Interval, ModelResult, RunResult

logger = logging.getLogger(__name__)

MAX_POINTS_PER_TRACE = 5_000
"""Longer series are downsampled for plotting (tables and results.json use the full data)."""

PNG_CHARTS = (
    "equity",
    "drawdown",
    "reliability",
    "deciles",
    "ensemble_weights",
    "ensemble_uncertainty",
    "ensemble_sizing",
)
"""The charts exported as PNG, by figure key (the ``ensemble_*`` ones only when the run has an ensemble)."""

ENSEMBLE_WEIGHT_PREFIX = "w_"
"""A prediction column ``w_<member>`` holds the fusion weight of that ensemble member at the row."""

N_DIAGNOSTIC_GROUPS = 10
"""Equal-count groups (deciles) of the ensemble diagnostics."""

PNG_WIDTH, PNG_HEIGHT = 1200, 600
KALEIDO_TIMEOUT_S = 60.0
SCHEMA_VERSION = 1

_PROBABILITY_COLUMNS = ("p_sell", "p_hold", "p_buy")
_BUY, _SELL = 2, 0
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_COLORS = qualitative.Plotly
_BENCHMARK_COLOR = "#444444"
_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}

# name -> (label, unit); a unit starting with "%" means the stored fraction is shown times 100, a unit in
# _WHOLE_UNITS is shown without decimals. Names follow metrics.summary() and evaluation.run.
_METRIC_LABELS: dict[str, tuple[str, str]] = {
    "accuracy": ("Accuracy", "%"),
    "balanced_accuracy": ("Balanced accuracy", "%"),
    "directional_accuracy": ("Directional accuracy (BUY/SELL calls)", "%"),
    "log_loss": ("Log loss", "lower is better"),
    "brier": ("Brier score", "lower is better"),
    "ece": ("Expected calibration error", "%"),
    "vol_mae": ("Volatility forecast MAE", "% over the horizon"),
    "vol_qlike": ("Volatility forecast QLIKE loss", "lower is better"),
    "vol_coverage_50": ("Volatility 50% interval coverage", "%"),
    "vol_coverage_90": ("Volatility 90% interval coverage", "%"),
    "total_return": ("Total return after costs", "%"),
    "cagr": ("Annual return (CAGR)", "%, annualised"),
    "annual_volatility": ("Volatility of returns", "%, annualised"),
    "sharpe": ("Sharpe ratio after costs", "annualised"),
    "sortino": ("Sortino ratio", "annualised"),
    "calmar": ("Calmar ratio", "annualised"),
    "psr": ("Probabilistic Sharpe: P(true Sharpe > 0)", "probability"),
    "deflated_sharpe": ("Deflated Sharpe: P(skill beyond the trials tried)", "probability"),
    "max_drawdown": ("Maximum drawdown", "%"),
    "max_drawdown_duration_bars": ("Longest drawdown", "bars"),
    "max_drawdown_duration_hours": ("Longest drawdown", "hours"),
    "win_rate": ("Winning bars among active bars", "%"),
    "profit_factor": ("Profit factor", "gross gains / gross losses"),
    "var_95": ("Value at risk 95%", "% loss per bar"),
    "cvar_95": ("Expected shortfall 95%", "% loss per bar"),
    "information_ratio": ("Information ratio vs buy and hold", "annualised"),
    "benchmark_total_return": ("Buy-and-hold total return", "%"),
    "benchmark_sharpe": ("Buy-and-hold Sharpe ratio", "annualised"),
    "turnover_per_bar": ("Turnover", "% of capital per bar"),
    "turnover_annual": ("Turnover", "× capital per year"),
    "exposure": ("Mean gross exposure", "% of capital"),
    "time_in_market": ("Time in market", "%"),
    "costs_total": ("Trading costs", "% of initial equity"),
}
# prefix -> (label, unit) for per-class metrics such as precision_BUY
_METRIC_PREFIXES: dict[str, tuple[str, str]] = {
    "precision_": ("Precision", "%"),
    "recall_": ("Recall", "%"),
    "f1_": ("F1 score", ""),
    "support_": ("Labelled rows", "count"),
    "n_": ("Number of", "count"),
}
_WHOLE_UNITS = {"count", "bars", "hours"}
_PERCENT_SUFFIXES = ("_accuracy", "_return", "_rate", "_drawdown")


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`write_report` put its files.

    ``pngs`` maps chart key (see :data:`PNG_CHARTS`) to file and is empty when PNG export was skipped;
    ``png_status`` is ``"written"`` or ``"skipped: <reason>"`` (as in results.json).
    """

    directory: Path
    html: Path
    json: Path
    pngs: dict[str, Path]
    png_status: str


@dataclass(frozen=True)
class _MetricDisplay:
    """How one metric is shown: row header, scale applied to the stored value, decimals."""

    label: str
    unit: str
    scale: float
    decimals: int

    @property
    def header(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label


_STATISTIC = _MetricDisplay("Test statistic", "", 1.0, 3)


def write_report(
    run: RunResult,
    directory: Path,
    *,
    symbol: str | None = None,
    max_points: int = MAX_POINTS_PER_TRACE,
) -> ReportPaths:
    """Write ``report.html``, ``results.json`` and ``png/*.png`` for ``run`` into ``directory``.

    ``symbol`` picks the price-with-signals chart's symbol (default: the run's first symbol);
    ``max_points`` caps the points per plotted trace. Files are replaced atomically; PNGs are written
    first and the HTML last, so a reader never sees a results.json naming PNGs that are not there.
    """
    if max_points < 10:
        raise ValueError(f"max_points must be at least 10, got {max_points}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    price_symbol = _price_symbol(run, symbol)
    signals_model = _signals_model(run.models)
    ensembles = [
        (index, model, ensemble_diagnostics(model.predictions))
        for index, model in enumerate(run.models)
        if _is_ensemble(model)
    ]

    figures = {
        "price": _fig_price(run, price_symbol, signals_model, max_points),
        "equity": _fig_equity(run, max_points),
        "drawdown": _fig_drawdown(run, max_points),
        "monthly": _fig_monthly(run.models),
        "reliability": _fig_reliability(run.models),
        "confidence": _fig_confidence(run.models),
        "deciles": _fig_deciles(run.models),
        "ensemble_weights": _fig_ensemble_weights(ensembles, max_points),
        "ensemble_uncertainty": _fig_ensemble_uncertainty(ensembles),
        "ensemble_sizing": _fig_ensemble_sizing(ensembles),
    }
    pngs, png_status = _export_pngs(
        {key: fig for key, fig in figures.items() if key in PNG_CHARTS and fig is not None}, directory
    )
    context = {
        "max_points_per_trace": max_points,
        "price_symbol": price_symbol,
        "signals_model": signals_model.name if signals_model is not None else None,
    }
    json_path = directory / "results.json"
    document = results_document(run, report=context)
    document["png"] = png_status
    document["png_files"] = [path.relative_to(directory).as_posix() for path in pngs.values()]
    _atomic_write(json_path, (json.dumps(document, indent=2, allow_nan=False) + "\n").encode())

    html_path = directory / "report.html"
    _atomic_write(html_path, _render_html(run, figures, context, png_status, ensembles).encode())
    logger.info("wrote report %s (%d PNGs, png %s)", html_path, len(pngs), png_status)
    return ReportPaths(directory=directory, html=html_path, json=json_path, pngs=pngs, png_status=png_status)


def results_document(run: RunResult, *, report: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every number of ``run`` as a JSON-able dict (NaN and infinities become ``None``).

    Series (equity, predictions) are summarised (final equity, counts per fold), not copied: they stay
    in the run's own artefacts. ``report`` is recorded as-is under the ``"report"`` key.
    """
    document = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run.run_id,
        "created_at": run.created_at,
        "verdict": run.verdict,
        "data_span": list(run.data_span),
        "symbols": list(run.symbols),
        "horizon": run.horizon,
        "n_trials": run.n_trials,
        "folds": run.folds,
        "models": [_model_document(model) for model in run.models],
        "benchmark": _series_summary(run.benchmark_equity),
        "canaries": [_canary_document(canary) for canary in run.canaries],
        "config": run.config,
        "notes": list(run.notes),
        "report": dict(report or {}),
    }
    return _jsonable(document)


def downsample(series: pd.Series, max_points: int = MAX_POINTS_PER_TRACE) -> pd.Series:
    """At most ``max_points`` finite points of ``series`` for plotting: the first, the last, and the
    minimum and maximum of each of ``(max_points - 2) // 2`` equal buckets (so peaks and troughs, and
    hence drawdowns, survive)."""
    values = series.to_numpy(dtype=float, na_value=np.nan)
    finite = series[np.isfinite(values)]
    n = len(finite)
    if n <= max_points:
        return finite
    n_buckets = max(1, (max_points - 2) // 2)
    buckets = np.arange(n) * n_buckets // n
    grouped = pd.Series(finite.to_numpy(dtype=float)).groupby(buckets)
    keep = np.union1d(grouped.idxmin().to_numpy(), grouped.idxmax().to_numpy())
    keep = np.union1d(keep, [0, n - 1]).astype(int)
    return finite.iloc[keep]


def format_interval(interval: Interval, name: str = "") -> str:
    """``"value [low, high]"`` as the metrics table shows it, with the scale and decimals of ``name``
    (accuracy 0.5312 [0.5101, 0.5523] → ``"53.1 [51.0, 55.2]"``; Sharpe → three decimals)."""
    display = _metric_display(name)
    value, low, high = (_format_number(x, display) for x in (interval.value, interval.low, interval.high))
    return f"{value} [{low}, {high}]"


# ----------------------------------------------------------------------------------------------------
# ensemble diagnostics


@dataclass(frozen=True)
class EnsembleDiagnostics:
    """What the ensemble section shows, from one ensemble's prediction frame (see
    :func:`ensemble_diagnostics`). Tables hold one row per equal-count group (``decile`` 1 = lowest value
    of the grouping column; rows with equal values share the decile of the lowest, so ties can leave
    deciles out); a table is ``None`` when the frame lacks its columns or has fewer usable rows than
    groups.

    - ``mean_weights``: member → mean fusion weight over all rows (fractions; they sum to 1 when every row
      has all weights).
    - ``weights_over_time``: mean weight per member (columns) per ``period`` ("month", "week" or "day",
      the coarsest giving at least six periods), indexed by the period's start (UTC).
    - ``uncertainty``: labelled rows grouped by ``epistemic`` (mutual information, nats): accuracy (arg-max
      class == y_true) and mean log loss (nats, p clipped below at machine epsilon as in
      ``metrics.log_loss``).
    - ``vol_uncertainty``: rows with a realised volatility grouped by the predicted std of log volatility
      √log_vol_var: the RMSE and mean (bias) of ln(fwd_vol) − log_vol, against the group's mean predicted
      std and its root mean predicted variance (what the RMSE should equal when the stated spread is right).
    - ``sizing``: rows with a non-zero ``position`` grouped by ``confidence``: mean |position| (fraction of
      equity) and the directional hit rate, sign(position) == sign(fwd_return) over the rows whose forward
      return is known and non-zero. ``n_flat``: rows with a zero position (left out of ``sizing``).
    """

    members: list[str]
    mean_weights: dict[str, float]
    period: str
    weights_over_time: pd.DataFrame
    uncertainty: pd.DataFrame | None
    vol_uncertainty: pd.DataFrame | None
    sizing: pd.DataFrame | None
    n_rows: int
    n_flat: int

    def document(self) -> dict[str, Any]:
        """As stored in results.json under the model's ``"ensemble"`` key (tables as in ``"deciles"``)."""
        table = lambda frame: None if frame is None else _frame_document(frame)  # noqa: E731
        return {
            "members": list(self.members),
            "mean_weights": dict(self.mean_weights),
            "weights_over_time": {"period": self.period, "table": table(self.weights_over_time)},
            "uncertainty_deciles": table(self.uncertainty),
            "vol_uncertainty_deciles": table(self.vol_uncertainty),
            "sizing_deciles": table(self.sizing),
            "n_rows": self.n_rows,
            "n_flat": self.n_flat,
        }


def ensemble_diagnostics(predictions: pd.DataFrame) -> EnsembleDiagnostics:
    """Member weights, uncertainty against error, and sizing by confidence of an ensemble's predictions
    (index (symbol, timestamp); ``w_<member>`` fusion weights, ``epistemic``, the usual columns)."""
    weight_columns = _weight_columns(predictions)
    members = [column[len(ENSEMBLE_WEIGHT_PREFIX) :] for column in weight_columns]
    weights = predictions[weight_columns].astype(float).set_axis(members, axis=1)
    mean_weights = {member: float(weights[member].mean()) for member in members}
    period, over_time = _weights_over_time(weights, predictions.index)
    sizing, n_flat = _sizing_deciles(predictions)
    return EnsembleDiagnostics(
        members=members,
        mean_weights=mean_weights,
        period=period,
        weights_over_time=over_time,
        uncertainty=_uncertainty_deciles(predictions),
        vol_uncertainty=_vol_uncertainty_deciles(predictions),
        sizing=sizing,
        n_rows=len(predictions),
        n_flat=n_flat,
    )


def _weight_columns(frame: pd.DataFrame) -> list[str]:
    return [
        column
        for column in frame.columns
        if isinstance(column, str)
        and column.startswith(ENSEMBLE_WEIGHT_PREFIX)
        and len(column) > len(ENSEMBLE_WEIGHT_PREFIX)
        and pd.api.types.is_numeric_dtype(frame[column])
    ]


def _is_ensemble(model: ModelResult) -> bool:
    """A model whose own predictions carry fusion weights (an allocation only reuses another model's)."""
    return model.allocation is None and bool(_weight_columns(model.predictions))


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame.columns:
        return np.full(len(frame), np.nan)
    return frame[name].to_numpy(dtype=float, na_value=np.nan)


def _timestamps(index: pd.Index) -> pd.DatetimeIndex | None:
    if isinstance(index, pd.MultiIndex):
        level = "timestamp" if "timestamp" in index.names else index.nlevels - 1
        index = index.get_level_values(level)
    if not isinstance(index, pd.DatetimeIndex):
        return None
    return pd.DatetimeIndex(_utc_naive(index))


def _weights_over_time(weights: pd.DataFrame, index: pd.Index) -> tuple[str, pd.DataFrame]:
    timestamps = _timestamps(index)
    if timestamps is None or not len(timestamps):
        return "none", pd.DataFrame(columns=weights.columns, index=pd.DatetimeIndex([], name="period_start"))
    for period, freq in (("month", "M"), ("week", "W"), ("day", "D")):
        starts = timestamps.to_period(freq).start_time
        if starts.nunique() >= 6:
            break
    over_time = weights.groupby(starts.to_numpy()).mean()
    over_time.index = pd.DatetimeIndex(over_time.index, name="period_start")
    return period, over_time


def _groups(values: np.ndarray, n_groups: int = N_DIAGNOSTIC_GROUPS) -> np.ndarray:
    """Group 0..n_groups-1 of each value by its rank: equal counts in ascending order, except that equal
    values always share a group (the one of their lowest rank), so heavy ties leave some groups empty
    rather than splitting identical values by row order."""
    below = np.searchsorted(np.sort(values), values, side="left")  # values strictly smaller
    return below * n_groups // max(len(values), 1)


def _group_table(
    key: str, columns: Mapping[str, np.ndarray], stats: Mapping[str, tuple[str, str]]
) -> pd.DataFrame:
    """One row per decile of ``columns[key]``: its low, high and mean, the ``stats`` (name → (column,
    aggregation)) and the row count."""
    frame = pd.DataFrame(dict(columns))
    frame["decile"] = _groups(frame[key].to_numpy()) + 1
    table = frame.groupby("decile").agg(
        **{f"{key}_low": (key, "min"), f"{key}_high": (key, "max"), f"mean_{key}": (key, "mean")},
        **dict(stats),
        count=(key, "size"),
    )
    return table.reset_index()


def _uncertainty_deciles(predictions: pd.DataFrame) -> pd.DataFrame | None:
    if "epistemic" not in predictions.columns or not set(_PROBABILITY_COLUMNS) <= set(predictions.columns):
        return None
    epistemic, y = _column(predictions, "epistemic"), _column(predictions, "y_true")
    probabilities = predictions[list(_PROBABILITY_COLUMNS)].to_numpy(dtype=float, na_value=np.nan)
    ok = np.isfinite(epistemic) & np.isfinite(y) & np.isfinite(probabilities).all(axis=1)
    if ok.sum() < N_DIAGNOSTIC_GROUPS:
        return None
    y_known, p = y[ok].astype(int), probabilities[ok]
    p_true = np.clip(p[np.arange(len(y_known)), y_known], np.finfo(float).eps, 1.0)
    return _group_table(
        "epistemic",
        {
            "epistemic": epistemic[ok],
            "correct": (p.argmax(axis=1) == y_known).astype(float),
            "log_loss": -np.log(p_true),
        },
        {"accuracy": ("correct", "mean"), "log_loss": ("log_loss", "mean")},
    )


def _vol_uncertainty_deciles(predictions: pd.DataFrame) -> pd.DataFrame | None:
    log_vol, variance = _column(predictions, "log_vol"), _column(predictions, "log_vol_var")
    realised = _column(predictions, "fwd_vol")
    ok = np.isfinite(log_vol) & np.isfinite(variance) & (variance >= 0)
    ok &= np.isfinite(realised) & (realised > 0)
    if ok.sum() < N_DIAGNOSTIC_GROUPS:
        return None
    error = np.log(realised[ok]) - log_vol[ok]
    table = _group_table(
        "predicted_std",
        {
            "predicted_std": np.sqrt(variance[ok]),
            "variance": variance[ok],
            "error": error,
            "squared": error**2,
        },
        {"mean_variance": ("variance", "mean"), "mse": ("squared", "mean"), "bias": ("error", "mean")},
    )
    table.insert(4, "rms_predicted_std", np.sqrt(table.pop("mean_variance")))
    table.insert(5, "rmse", np.sqrt(table.pop("mse")))
    return table


def _sizing_deciles(predictions: pd.DataFrame) -> tuple[pd.DataFrame | None, int]:
    confidence, position = _column(predictions, "confidence"), _column(predictions, "position")
    forward = _column(predictions, "fwd_return")
    known = np.isfinite(confidence) & np.isfinite(position)
    active = known & (position != 0)
    n_flat = int((known & (position == 0)).sum())
    if active.sum() < N_DIAGNOSTIC_GROUPS:
        return None, n_flat
    position, forward = position[active], forward[active]
    scored = np.isfinite(forward) & (forward != 0)
    hit = np.where(scored, (np.sign(position) == np.sign(forward)).astype(float), np.nan)
    table = _group_table(
        "confidence",
        {"confidence": confidence[active], "abs_position": np.abs(position), "hit": hit},
        {
            "mean_abs_position": ("abs_position", "mean"),
            "hit_rate": ("hit", "mean"),
            "n_scored": ("hit", "count"),
        },
    )
    return table, n_flat


# ----------------------------------------------------------------------------------------------------
# results.json


def _model_document(model: ModelResult) -> dict[str, Any]:
    predictions = model.predictions
    by_fold: dict[str, int] = {}
    if "fold" in predictions.columns:
        counts = predictions["fold"].value_counts(dropna=True).sort_index()
        by_fold = {str(int(fold)): int(count) for fold, count in counts.items()}
    return {
        "name": model.name,
        "is_baseline": model.is_baseline,
        "allocation": model.allocation,
        "metrics": model.metrics,
        "intervals": {name: dataclasses.asdict(interval) for name, interval in model.intervals.items()},
        "tests": model.tests,
        "reliability": _frame_document(model.reliability),
        "deciles": _frame_document(model.deciles),
        "monthly_returns": _frame_document(model.monthly),
        "equity": _series_summary(model.equity),
        "equity_gross": _series_summary(model.equity_gross),
        "n_predictions": len(predictions),
        "n_predictions_by_fold": by_fold,
    } | ({"ensemble": ensemble_diagnostics(predictions).document()} if _is_ensemble(model) else {})


def _canary_document(canary: CanaryResult) -> dict[str, Any]:
    return {
        "name": canary.name,
        "passed": canary.passed,
        "accuracy": dataclasses.asdict(canary.accuracy),
        "no_skill_accuracy": canary.no_skill_accuracy,
        "deflated_sharpe": canary.deflated_sharpe,
        "note": canary.note,
    }


def _series_summary(series: pd.Series) -> dict[str, Any]:
    if series.empty:
        return {"n_points": 0, "start": None, "end": None, "final": None}
    return {
        "n_points": len(series),
        "start": series.index[0],
        "end": series.index[-1],
        "final": series.iloc[-1],
    }


def _frame_document(frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "index_name": frame.index.name,
        "index": list(frame.index),
        "columns": list(frame.columns),
        "data": frame.to_numpy(dtype=object).tolist(),
    }


def _jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types; NaN, infinities, NaT and NA become ``None``."""
    if obj is None or obj is pd.NaT or obj is pd.NA or isinstance(obj, str):
        return obj
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, (datetime, date, pd.Timestamp)):
        return obj.isoformat()
    if isinstance(obj, (timedelta, pd.Timedelta)):
        return pd.Timedelta(obj).isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Enum):
        return _jsonable(obj.value)
    if isinstance(obj, Mapping):
        return {str(key): _jsonable(value) for key, value in obj.items()}
    if isinstance(obj, pd.DataFrame):
        return _jsonable(_frame_document(obj))
    if isinstance(obj, pd.Series):
        return {"index": _jsonable(list(obj.index)), "values": _jsonable(obj.to_numpy(dtype=object))}
    if isinstance(obj, (set, frozenset)):
        return [_jsonable(item) for item in sorted(obj, key=str)]
    if isinstance(obj, (list, tuple, np.ndarray, pd.Index)):
        return [_jsonable(item) for item in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "model_dump"):
        return _jsonable(obj.model_dump(mode="json"))
    return str(obj)


# ----------------------------------------------------------------------------------------------------
# files


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, and rename it over ``path``."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _export_pngs(figures: Mapping[str, go.Figure], directory: Path) -> tuple[dict[str, Path], str]:
    """Export ``figures`` to ``directory/png`` with kaleido; returns (files, status).

    The PNGs are rendered into a staging directory that then replaces ``png/`` whole. When export is
    impossible the reason is logged as a WARNING, any old ``png/`` is removed (it would not match this
    run) and the status is ``"skipped: <reason>"``.
    """
    png_dir = directory / "png"
    try:
        import kaleido
        from kaleido.errors import ChromeNotFoundError
    except ImportError as exc:
        return _skip_pngs(png_dir, f"kaleido is not installed ({exc})")
    if not figures:
        return _skip_pngs(png_dir, "no chart has data")

    staging = Path(tempfile.mkdtemp(prefix=".png-", dir=directory))
    targets = {key: staging / f"{key}.png" for key in figures}
    specs = [
        {
            "fig": fig.to_dict(),
            "path": targets[key],
            "opts": {"format": "png", "width": PNG_WIDTH, "height": PNG_HEIGHT, "scale": 1},
        }
        for key, fig in figures.items()
    ]
    try:
        kaleido.write_fig_from_object_sync(specs, kopts={"mathjax": False, "timeout": KALEIDO_TIMEOUT_S})
        missing = [path.name for path in targets.values() if not path.is_file()]
        if missing:
            raise RuntimeError(f"kaleido did not write {', '.join(missing)}")
    except ChromeNotFoundError:
        shutil.rmtree(staging, ignore_errors=True)
        return _skip_pngs(
            png_dir, "no Chrome/Chromium found for kaleido (Debian: apt-get install -y chromium)"
        )
    except Exception as exc:  # noqa: BLE001 - PNGs are optional: record why, keep the HTML and JSON
        shutil.rmtree(staging, ignore_errors=True)
        return _skip_pngs(png_dir, f"export failed: {type(exc).__name__}: {exc}")

    old = directory / f".png-old-{uuid.uuid4().hex}"
    if png_dir.exists():
        png_dir.rename(old)
    staging.rename(png_dir)
    shutil.rmtree(old, ignore_errors=True)
    return {key: png_dir / path.name for key, path in targets.items()}, "written"


def _skip_pngs(png_dir: Path, reason: str) -> tuple[dict[str, Path], str]:
    logger.warning("PNG export skipped: %s", reason)
    if png_dir.exists():
        logger.warning("removing %s from an earlier report: it would not match this run", png_dir)
        shutil.rmtree(png_dir)
    return {}, f"skipped: {reason}"


# ----------------------------------------------------------------------------------------------------
# choices and small derivations


def _price_symbol(run: RunResult, symbol: str | None) -> str | None:
    if symbol is not None:
        if symbol not in run.prices.columns:
            raise ValueError(f"symbol {symbol!r} has no prices (have {list(run.prices.columns)})")
        return symbol
    candidates = [s for s in run.symbols if s in run.prices.columns] or list(run.prices.columns)
    return str(candidates[0]) if candidates else None


def _headline_value(model: ModelResult, name: str) -> float:
    if name in model.intervals:
        value = model.intervals[name].value
    else:
        value = model.metrics.get(name, math.nan)
    return float(value) if value is not None and math.isfinite(float(value)) else -math.inf


def _signals_model(models: list[ModelResult]) -> ModelResult | None:
    """The model with the highest net Sharpe (then accuracy), non-baseline models first; baselines only
    when there is no other model. Allocations are not candidates: their signals are their model's."""
    models = [m for m in models if m.allocation is None]
    candidates = [m for m in models if not m.is_baseline] or list(models)
    if not candidates:
        return None
    return max(candidates, key=lambda m: (_headline_value(m, "sharpe"), _headline_value(m, "accuracy")))


def _utc_naive(index: pd.Index) -> pd.Index:
    """A DatetimeIndex in UTC without time zone (plotly.js draws wall-clock strings)."""
    if isinstance(index, pd.DatetimeIndex) and index.tz is not None:
        return index.tz_convert("UTC").tz_localize(None)
    return index


def _thin(frame: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """Every k-th row so that at most ``max_points`` remain (for markers, where min/max is meaningless)."""
    step = max(1, math.ceil(len(frame) / max_points))
    return frame.iloc[::step]


def _symbol_rows(predictions: pd.DataFrame, symbol: str) -> pd.DataFrame:
    """The rows of one symbol, indexed by timestamp."""
    if not isinstance(predictions.index, pd.MultiIndex):
        return predictions.iloc[0:0]
    level = "symbol" if "symbol" in predictions.index.names else 0
    rows = predictions[predictions.index.get_level_values(level) == symbol]
    timestamps = rows.index.droplevel(level)
    rows = rows.set_axis(
        timestamps.get_level_values(0) if isinstance(timestamps, pd.MultiIndex) else timestamps
    )
    return rows.sort_index()


def _predicted_class(predictions: pd.DataFrame) -> pd.Series:
    """Arg-max class (0 sell, 1 hold, 2 buy) of the rows with all three probabilities finite."""
    if not set(_PROBABILITY_COLUMNS) <= set(predictions.columns):
        return pd.Series(dtype=int)
    probabilities = predictions[list(_PROBABILITY_COLUMNS)].to_numpy(dtype=float, na_value=np.nan)
    valid = np.isfinite(probabilities).all(axis=1)
    return pd.Series(probabilities[valid].argmax(axis=1), index=predictions.index[valid])


def _drawdown(equity: pd.Series) -> pd.Series:
    """Percent below the running peak."""
    return (equity / equity.cummax() - 1.0) * 100.0


def _model_style(index: int, model: ModelResult) -> dict[str, Any]:
    return {
        "color": _COLORS[index % len(_COLORS)],
        "width": 1.2 if model.is_baseline else 2.0,
        "dash": "dot" if model.is_baseline else "solid",
    }


def _label(model: ModelResult) -> str:
    return f"{model.name} (baseline)" if model.is_baseline else model.name


def _finish(fig: go.Figure, title: str, height: int = 440) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        title={"text": title, "x": 0.0, "xanchor": "left"},
        height=height,
        margin={"l": 70, "r": 20, "t": 60, "b": 120},
        legend={"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0.0, "x": 0.0},
    )
    return fig


# ----------------------------------------------------------------------------------------------------
# figures


def _fig_price(
    run: RunResult, symbol: str | None, model: ModelResult | None, max_points: int
) -> go.Figure | None:
    if symbol is None:
        return None
    close = run.prices[symbol].astype(float)
    close.index = _utc_naive(close.index)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.06)
    shown = downsample(close, max_points)
    fig.add_trace(
        go.Scatter(
            x=shown.index, y=shown.to_numpy(), name=f"{symbol} close", line={"color": "#1f3b73", "width": 1.2}
        ),
        row=1,
        col=1,
    )
    title = f"{symbol}: close price"
    if model is not None:
        rows = _symbol_rows(model.predictions, symbol)
        rows.index = _utc_naive(rows.index)
        predicted = _predicted_class(rows)
        price_at = close.reindex(predicted.index)
        for cls, name, marker, color in (
            (_BUY, "BUY", "triangle-up", "#1a9850"),
            (_SELL, "SELL", "triangle-down", "#d73027"),
        ):
            points = _thin(price_at[(predicted == cls).to_numpy()].dropna().to_frame("price"), max_points)
            fig.add_trace(
                go.Scatter(
                    x=points.index,
                    y=points["price"].to_numpy(),
                    mode="markers",
                    name=f"{name} ({model.name})",
                    marker={"symbol": marker, "color": color, "size": 7, "opacity": 0.8},
                ),
                row=1,
                col=1,
            )
        if set(_PROBABILITY_COLUMNS) <= set(rows.columns):
            edge = downsample((rows["p_buy"] - rows["p_sell"]).astype(float), max_points)
            fig.add_trace(
                go.Scatter(
                    x=edge.index,
                    y=edge.to_numpy(),
                    name=f"P(up) − P(down), {model.name}",
                    line={"color": "#7b3294", "width": 1.0},
                ),
                row=2,
                col=1,
            )
        title = f"{symbol}: close price with {model.name}'s BUY/SELL predictions"
    fig.update_yaxes(title_text="Close (quote currency)", row=1, col=1)
    fig.update_yaxes(title_text="P(up) − P(down)", range=[-1, 1], row=2, col=1)
    fig.update_xaxes(title_text="Time (UTC)", row=2, col=1)
    return _finish(fig, title, height=620)


def _fig_equity(run: RunResult, max_points: int) -> go.Figure | None:
    fig = go.Figure()
    for index, model in enumerate(run.models):
        style = _model_style(index, model)
        for series, suffix, visible in (
            (model.equity, "", True),
            (model.equity_gross, " before costs", "legendonly"),
        ):
            if series.empty:
                continue
            shown = downsample(series.set_axis(_utc_naive(series.index)), max_points)
            fig.add_trace(
                go.Scatter(
                    x=shown.index,
                    y=shown.to_numpy(),
                    name=_label(model) + suffix,
                    visible=visible,
                    line={**style, "dash": "dash" if suffix else style["dash"]},
                )
            )
    if not run.benchmark_equity.empty:
        shown = downsample(run.benchmark_equity.set_axis(_utc_naive(run.benchmark_equity.index)), max_points)
        fig.add_trace(
            go.Scatter(
                x=shown.index,
                y=shown.to_numpy(),
                name="Buy and hold (equal weight)",
                line={"color": _BENCHMARK_COLOR, "width": 2.0, "dash": "dash"},
            )
        )
    if not fig.data:
        return None
    fig.update_yaxes(title_text="Equity (start = 1, log scale)", type="log")
    fig.update_xaxes(title_text="Time (UTC)")
    return _finish(fig, "Equity after costs vs buy and hold")


def _fig_drawdown(run: RunResult, max_points: int) -> go.Figure | None:
    fig = go.Figure()
    curves = [(_label(m), m.equity, _model_style(i, m)) for i, m in enumerate(run.models)]
    curves.append(
        (
            "Buy and hold (equal weight)",
            run.benchmark_equity,
            {"color": _BENCHMARK_COLOR, "width": 1.5, "dash": "dash"},
        )
    )
    for name, equity, style in curves:
        if equity.empty:
            continue
        shown = downsample(_drawdown(equity.astype(float)).set_axis(_utc_naive(equity.index)), max_points)
        fig.add_trace(go.Scatter(x=shown.index, y=shown.to_numpy(), name=name, line=style))
    if not fig.data:
        return None
    fig.update_yaxes(title_text="Drawdown from peak (%)", ticksuffix="%")
    fig.update_xaxes(title_text="Time (UTC)")
    return _finish(fig, "Drawdown after costs (% below the running peak)")


def _month_labels(columns: Iterable[Any]) -> list[str]:
    labels = []
    for column in columns:
        if isinstance(column, (int, np.integer)) and 1 <= int(column) <= 12:
            labels.append(_MONTHS[int(column) - 1])
        elif column == "year":
            labels.append("Full year")
        else:
            labels.append(str(column))
    return labels


def _fig_monthly(models: list[ModelResult]) -> go.Figure | None:
    with_data = [m for m in models if not m.monthly.empty]
    if not with_data:
        return None
    fig = go.Figure()
    n_years = 1
    for index, model in enumerate(with_data):
        z = model.monthly.to_numpy(dtype=float, na_value=np.nan) * 100.0
        n_years = max(n_years, z.shape[0])
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=_month_labels(model.monthly.columns),
                y=[str(label) for label in model.monthly.index],
                colorscale="RdYlGn",
                zmid=0.0,
                texttemplate="%{z:.1f}",
                hovertemplate="%{y} %{x}: %{z:.2f}%<extra></extra>",
                colorbar={"title": {"text": "Return (%)"}},
                name=_label(model),
                visible=index == 0,
            )
        )
    if len(with_data) > 1:
        buttons = [
            {
                "label": _label(model),
                "method": "update",
                "args": [
                    {"visible": [i == index for i in range(len(with_data))]},
                    {"title.text": f"Monthly returns after costs (%): {_label(model)}"},
                ],
            }
            for index, model in enumerate(with_data)
        ]
        fig.update_layout(
            updatemenus=[
                {
                    "buttons": buttons,
                    "direction": "down",
                    "x": 1.0,
                    "xanchor": "right",
                    "y": 1.0,
                    "yanchor": "bottom",
                    "pad": {"b": 6},
                }
            ]
        )
    fig.update_yaxes(title_text="Year", type="category", autorange="reversed")
    fig.update_xaxes(title_text="Month", type="category")
    fig = _finish(fig, f"Monthly returns after costs (%): {_label(with_data[0])}", height=180 + 45 * n_years)
    return fig.update_layout(margin={"b": 60, "t": 100})


def _fig_reliability(models: list[ModelResult]) -> go.Figure | None:
    fig = go.Figure()
    for index, model in enumerate(models):
        frame = model.reliability
        if model.allocation or frame.empty or not {"mean_confidence", "accuracy"} <= set(frame.columns):
            continue
        counts = (
            frame["count"].to_numpy(dtype=float) if "count" in frame.columns else np.full(len(frame), np.nan)
        )
        sizes = (
            6.0 + 14.0 * np.sqrt(np.nan_to_num(counts) / max(np.nanmax(counts), 1.0))
            if np.isfinite(counts).any()
            else 8.0
        )
        fig.add_trace(
            go.Scatter(
                x=frame["mean_confidence"].to_numpy(dtype=float) * 100.0,
                y=frame["accuracy"].to_numpy(dtype=float) * 100.0,
                customdata=counts,
                mode="lines+markers",
                name=_label(model),
                line=_model_style(index, model),
                marker={"size": sizes},
                hovertemplate=(
                    "confidence %{x:.1f}% → accuracy %{y:.1f}%"
                    " (%{customdata:,.0f} predictions)<extra></extra>"
                ),
            )
        )
    if not fig.data:
        return None
    fig.add_trace(
        go.Scatter(
            x=[0, 100],
            y=[0, 100],
            mode="lines",
            name="Perfect calibration",
            line={"color": "#999999", "dash": "dash", "width": 1},
        )
    )
    fig.update_xaxes(title_text="Mean predicted confidence in bin (%)", range=[0, 100], ticksuffix="%")
    fig.update_yaxes(title_text="Observed accuracy in bin (%)", range=[0, 100], ticksuffix="%")
    return _finish(fig, "Reliability diagram (marker size ∝ √ predictions in bin)", height=500)


def _fig_confidence(models: list[ModelResult]) -> go.Figure | None:
    edges = np.linspace(0.0, 1.0, 41)
    centers = (edges[:-1] + edges[1:]) / 2.0 * 100.0
    fig = go.Figure()
    for index, model in enumerate(models):
        if model.allocation or "confidence" not in model.predictions.columns:
            continue
        confidence = model.predictions["confidence"].to_numpy(dtype=float, na_value=np.nan)
        confidence = confidence[np.isfinite(confidence)]
        if confidence.size == 0:
            continue
        counts, _ = np.histogram(np.clip(confidence, 0.0, 1.0), bins=edges)
        fig.add_trace(
            go.Bar(
                x=centers,
                y=counts / confidence.size * 100.0,
                width=2.5,
                name=_label(model),
                marker={"color": _COLORS[index % len(_COLORS)]},
                opacity=0.6,
                hovertemplate="confidence %{x:.2f}%: %{y:.2f}% of predictions<extra></extra>",
            )
        )
    if not fig.data:
        return None
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text="Confidence: highest class probability (%)", range=[0, 100], ticksuffix="%")
    fig.update_yaxes(title_text="Share of predictions (%)", ticksuffix="%")
    return _finish(fig, "How confident the models are (histogram, 2.5-point bins)")


def _decile_labels(frame: pd.DataFrame) -> list[str]:
    """Group labels 1..n, lowest confidence first (from a ``decile`` or 0-based ``group`` column, else the
    index)."""
    column = next((c for c in ("decile", "group") if c in frame.columns), None)
    labels = pd.Series(frame[column] if column is not None else frame.index)
    if pd.api.types.is_integer_dtype(labels) and len(labels) and labels.min() == 0:
        labels = labels + 1
    return [str(label) for label in labels]


def _fig_deciles(models: list[ModelResult]) -> go.Figure | None:
    fig = go.Figure()
    for index, model in enumerate(models):
        frame = model.deciles
        if model.allocation or frame.empty or "accuracy" not in frame.columns:
            continue
        labels = _decile_labels(frame)
        counts = (
            frame["count"].to_numpy(dtype=float) if "count" in frame.columns else np.full(len(frame), np.nan)
        )
        fig.add_trace(
            go.Bar(
                x=labels,
                y=frame["accuracy"].to_numpy(dtype=float) * 100.0,
                customdata=counts,
                name=_label(model),
                marker={"color": _COLORS[index % len(_COLORS)]},
                hovertemplate=(
                    "decile %{x}: accuracy %{y:.1f}% (%{customdata:,.0f} predictions)<extra></extra>"
                ),
            )
        )
    if not fig.data:
        return None
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="Confidence decile (low → high)", type="category")
    fig.update_yaxes(title_text="Accuracy (%)", ticksuffix="%")
    return _finish(fig, "Accuracy by confidence decile")


_Ensemble = tuple[int, ModelResult, EnsembleDiagnostics]
"""(index of the model in the run, the model, its diagnostics)."""
_MEMBER_COLORS = qualitative.Set2
_PERIOD_ADJECTIVES = {"month": "monthly", "week": "weekly", "day": "daily"}


def _fig_ensemble_weights(ensembles: list[_Ensemble], max_points: int) -> go.Figure | None:
    """Stacked area of each member's mean fusion weight per period (a menu switches ensembles)."""
    shown = [(model, diag) for _, model, diag in ensembles if not diag.weights_over_time.empty]
    if not shown:
        return None
    fig = go.Figure()
    groups: list[int] = []
    for number, (model, diag) in enumerate(shown):
        table = _thin(diag.weights_over_time, max_points)
        for position, member in enumerate(diag.members):
            fig.add_trace(
                go.Scatter(
                    x=table.index,
                    y=table[member].to_numpy(dtype=float) * 100.0,
                    name=f"{member} ({diag.mean_weights[member] * 100:.1f}% overall)",
                    mode="lines",
                    stackgroup=f"weights-{number}",
                    line={"width": 0.8, "color": _MEMBER_COLORS[position % len(_MEMBER_COLORS)]},
                    visible=number == 0,
                    hovertemplate=f"{_e(member)}, %{{x}}: mean weight %{{y:.1f}}%<extra></extra>",
                )
            )
            groups.append(number)
    def title(model: ModelResult, diag: EnsembleDiagnostics) -> str:
        period = _PERIOD_ADJECTIVES.get(diag.period, diag.period)
        return f"Fusion weight of each member, {period} mean (%): {model.name}"
    if len(shown) > 1:
        buttons = [
            {
                "label": model.name,
                "method": "update",
                "args": [{"visible": [g == number for g in groups]}, {"title.text": title(model, diag)}],
            }
            for number, (model, diag) in enumerate(shown)
        ]
        fig.update_layout(
            updatemenus=[{"buttons": buttons, "direction": "down", "x": 1.0, "xanchor": "right", "y": 1.0,
                          "yanchor": "bottom", "pad": {"b": 6}}]
        )
    fig.update_yaxes(title_text="Mean fusion weight (%, members stacked)", range=[0, 100], ticksuffix="%")
    fig.update_xaxes(title_text=f"{shown[0][1].period.capitalize()} (UTC)")
    return _finish(fig, title(*shown[0]))


def _fig_ensemble_uncertainty(ensembles: list[_Ensemble]) -> go.Figure | None:
    """Left: accuracy and log loss by epistemic-uncertainty decile; right: volatility RMSE against the
    predicted std by decile, with the y = x line a calibrated spread follows."""
    if not any(d.uncertainty is not None or d.vol_uncertainty is not None for _, _, d in ensembles):
        return None
    fig = make_subplots(
        rows=1,
        cols=2,
        specs=[[{"secondary_y": True}, {}]],
        horizontal_spacing=0.14,
        subplot_titles=(
            "Direction: by epistemic-uncertainty decile",
            "Volatility: error vs stated spread, by decile",
        ),
    )
    largest = 0.0
    for index, model, diag in ensembles:
        color = _COLORS[index % len(_COLORS)]
        if (table := diag.uncertainty) is not None:
            labels = [str(d) for d in table["decile"]]
            custom = table[["epistemic_low", "epistemic_high", "count"]].to_numpy(dtype=float)
            fig.add_trace(
                go.Scatter(
                    x=labels,
                    y=table["accuracy"].to_numpy(dtype=float) * 100.0,
                    customdata=custom,
                    mode="lines+markers",
                    name=f"accuracy, {model.name}",
                    line={"color": color, "width": 2.0},
                    hovertemplate=(
                        "decile %{x} (epistemic %{customdata[0]:.3g}–%{customdata[1]:.3g} nats): "
                        "accuracy %{y:.1f}% (%{customdata[2]:,.0f} labelled rows)<extra></extra>"
                    ),
                ),
                row=1,
                col=1,
                secondary_y=False,
            )
            fig.add_trace(
                go.Scatter(
                    x=labels,
                    y=table["log_loss"].to_numpy(dtype=float),
                    customdata=custom,
                    mode="lines+markers",
                    name=f"log loss, {model.name}",
                    line={"color": color, "width": 1.5, "dash": "dash"},
                    marker={"symbol": "diamond"},
                    hovertemplate="decile %{x}: mean log loss %{y:.3f} nats<extra></extra>",
                ),
                row=1,
                col=1,
                secondary_y=True,
            )
        if (table := diag.vol_uncertainty) is not None:
            x = table["rms_predicted_std"].to_numpy(dtype=float)
            y = table["rmse"].to_numpy(dtype=float)
            largest = max(largest, float(np.nanmax(np.r_[x, y, 0.0])))
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    customdata=table[["decile", "bias", "count"]].to_numpy(dtype=float),
                    mode="lines+markers",
                    name=f"volatility RMSE, {model.name}",
                    line={"color": color, "width": 2.0},
                    marker={"symbol": "square"},
                    hovertemplate=(
                        "decile %{customdata[0]:.0f}: stated std %{x:.3f}, RMSE %{y:.3f}, "
                        "bias %{customdata[1]:+.3f} (%{customdata[2]:,.0f} rows)<extra></extra>"
                    ),
                ),
                row=1,
                col=2,
            )
    if largest > 0:
        edge = largest * 1.05
        fig.add_trace(
            go.Scatter(
                x=[0, edge],
                y=[0, edge],
                mode="lines",
                name="error = stated std",
                line={"color": "#999999", "dash": "dash", "width": 1},
                hoverinfo="skip",
            ),
            row=1,
            col=2,
        )
        fig.update_xaxes(range=[0, edge], row=1, col=2)
        fig.update_yaxes(range=[0, edge], row=1, col=2)
    fig.update_xaxes(title_text="Epistemic uncertainty decile (low → high)", type="category", row=1, col=1)
    fig.update_yaxes(title_text="Accuracy (%)", ticksuffix="%", row=1, col=1, secondary_y=False)
    fig.update_yaxes(
        title_text="Mean log loss (nats)", row=1, col=1, secondary_y=True, showgrid=False, tickmode="auto"
    )
    fig.update_xaxes(title_text="Stated std of log volatility (root mean variance)", row=1, col=2)
    fig.update_yaxes(title_text="RMSE of ln(realised vol) − log_vol", row=1, col=2)
    return _finish(fig, "Uncertainty against error", height=500)


def _fig_ensemble_sizing(ensembles: list[_Ensemble]) -> go.Figure | None:
    """Mean |position| (bars) and directional hit rate (line, right axis) by confidence decile."""
    if not any(d.sizing is not None for _, _, d in ensembles):
        return None
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    labels: list[str] = []
    for index, model, diag in ensembles:
        if (table := diag.sizing) is None:
            continue
        color = _COLORS[index % len(_COLORS)]
        labels = [str(d) for d in table["decile"]]
        custom = table[["confidence_low", "confidence_high", "count", "n_scored"]].to_numpy(dtype=float) * [
            100.0,
            100.0,
            1.0,
            1.0,
        ]
        fig.add_trace(
            go.Bar(
                x=labels,
                y=table["mean_abs_position"].to_numpy(dtype=float) * 100.0,
                customdata=custom,
                name=f"mean |position|, {model.name}",
                marker={"color": color},
                opacity=0.55,
                hovertemplate=(
                    "decile %{x} (confidence %{customdata[0]:.1f}–%{customdata[1]:.1f}%): mean |position| "
                    "%{y:.1f}% of equity (%{customdata[2]:,.0f} rows)<extra></extra>"
                ),
            ),
            secondary_y=False,
        )
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=table["hit_rate"].to_numpy(dtype=float) * 100.0,
                customdata=custom,
                mode="lines+markers",
                name=f"hit rate, {model.name}",
                line={"color": color, "width": 2.0},
                hovertemplate=(
                    "decile %{x}: direction right %{y:.1f}% (%{customdata[3]:,.0f} rows with a known "
                    "return)<extra></extra>"
                ),
            ),
            secondary_y=True,
        )
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=[50.0] * len(labels),
            mode="lines",
            name="50% hit rate (coin toss)",
            line={"color": "#999999", "dash": "dot", "width": 1},
            hoverinfo="skip",
        ),
        secondary_y=True,
    )
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="Confidence decile among rows with a position (low → high)", type="category")
    fig.update_yaxes(title_text="Mean |position| (% of equity)", ticksuffix="%", secondary_y=False)
    fig.update_yaxes(
        title_text="Directional hit rate (%)",
        ticksuffix="%",
        secondary_y=True,
        showgrid=False,
        tickmode="auto",
    )
    return _finish(fig, "Confidence-driven sizing: position size and hit rate by confidence decile")


# ----------------------------------------------------------------------------------------------------
# tables and HTML


def _metric_display(name: str) -> _MetricDisplay:
    prefix = next((p for p in _METRIC_PREFIXES if name.startswith(p) and name not in _METRIC_LABELS), None)
    if name in _METRIC_LABELS:
        label, unit = _METRIC_LABELS[name]
    elif prefix is not None:
        label, unit = _METRIC_PREFIXES[prefix]
        label = f"{label} {name[len(prefix) :].replace('_', ' ')}"
    else:
        label = name.replace("_", " ").capitalize()
        unit = "%" if name.endswith(_PERCENT_SUFFIXES) else ""
    if unit.startswith("%"):
        return _MetricDisplay(label, unit, 100.0, 1)
    return _MetricDisplay(label, unit, 1.0, 0 if unit in _WHOLE_UNITS else 3)


def _format_number(value: Any, display: _MetricDisplay) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    if math.isnan(number):
        return "—"
    if math.isinf(number):
        return "∞" if number > 0 else "−∞"
    text = f"{number * display.scale:,.{display.decimals}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.,") else text


def _format_p(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    if not math.isfinite(number):
        return "—"
    return "&lt; 0.001" if number < 0.001 else f"{number:.3f}"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _metrics_table(models: list[ModelResult]) -> str:
    ordered = sorted(models, key=lambda m: m.is_baseline)
    names: list[str] = []
    for model in ordered:
        names += [n for n in model.intervals if n not in names]
    for model in ordered:
        names += [n for n in model.metrics if n not in names]
    if not names:
        return "<p>No metrics were recorded.</p>"
    head = "".join(
        f'<th class="{"baseline" if m.is_baseline else "model"}">{_e(m.name)}'
        f"{f'<br><small>allocation: {_e(m.allocation)}</small>' if m.allocation else ''}"
        f"{'<br><small>baseline</small>' if m.is_baseline and not m.allocation else ''}</th>"
        for m in ordered
    )
    rows = []
    for name in names:
        display = _metric_display(name)
        cells = []
        for model in ordered:
            css = "baseline" if model.is_baseline else "model"
            if name in model.intervals:
                text = format_interval(model.intervals[name], name)
            elif name in model.metrics:
                text = _format_number(model.metrics[name], display)
            else:
                text = "—"
            cells.append(f'<td class="{css} num">{text}</td>')
        rows.append(f'<tr><th scope="row" title="{_e(name)}">{_e(display.header)}</th>{"".join(cells)}</tr>')
    return (
        f'<table class="metrics"><thead><tr><th>Metric</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _interval_legend(models: list[ModelResult], canaries: list[CanaryResult]) -> str:
    kinds = {(iv.level, iv.method) for m in models for iv in m.intervals.values()}
    kinds |= {(c.accuracy.level, c.accuracy.method) for c in canaries}
    if not kinds:
        return ""
    described = "; ".join(f"{level * 100:g}% {method} interval" for level, method in sorted(kinds))
    return f"Cells read <b>value [low, high]</b>: {_e(described)}."


def _tests_table(models: list[ModelResult]) -> str:
    rows = []
    for model in models:
        for test, result in model.tests.items():
            p_value = result.get("p_value", math.nan)
            significant = isinstance(p_value, (int, float)) and math.isfinite(p_value) and p_value < 0.05
            rows.append(
                f"<tr><td>{_e(model.name)}</td><td>{_e(test.replace('_', ' '))}</td>"
                f'<td class="num">{_format_number(result.get("statistic", math.nan), _STATISTIC)}</td>'
                f'<td class="num{" significant" if significant else ""}">{_format_p(p_value)}</td>'
                f"<td>{_e(result.get('note', ''))}</td></tr>"
            )
    if not rows:
        return "<p>No significance tests were recorded.</p>"
    return (
        '<table class="tests"><thead><tr><th>Model</th><th>Test</th><th>Statistic</th><th>p-value</th>'
        f"<th>Note</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _canaries_table(canaries: list[CanaryResult]) -> str:
    if not canaries:
        return (
            '<p class="warn">No leakage canaries were run: '
            "nothing guards this evaluation against look-ahead.</p>"
        )
    percent = _metric_display("accuracy")
    probability = _metric_display("deflated_sharpe")
    rows = []
    for canary in canaries:
        contains = canary.accuracy.low <= canary.no_skill_accuracy <= canary.accuracy.high
        status = '<span class="pass">PASS</span>' if canary.passed else '<span class="fail">FAIL</span>'
        rows.append(
            f"<tr><td>{_e(canary.name.replace('_', ' '))}</td><td>{status}</td>"
            f'<td class="num">{format_interval(canary.accuracy, "accuracy")}</td>'
            f'<td class="num">{_format_number(canary.no_skill_accuracy, percent)}</td>'
            f"<td>{'yes' if contains else 'no'}</td>"
            f'<td class="num">{_format_number(canary.deflated_sharpe, probability)}</td>'
            f"<td>{_e(canary.note)}</td></tr>"
        )
    return (
        '<table class="canaries"><thead><tr><th>Canary</th><th>Result</th><th>Accuracy (%) [CI]</th>'
        "<th>No-skill accuracy (%)</th><th>CI contains no-skill</th>"
        "<th>Deflated Sharpe (probability)</th><th>Note</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _folds_table(folds: list[dict[str, str]]) -> str:
    if not folds:
        return "<p>No folds were recorded.</p>"
    keys: list[str] = []
    for fold in folds:
        keys += [k for k in fold if k not in keys]
    head = "".join(f"<th>{_e(k.replace('_', ' '))}</th>" for k in keys)
    rows = "".join(
        f"<tr><td>{number}</td>{''.join(f'<td>{_e(fold.get(k, chr(8212)))}</td>' for k in keys)}</tr>"
        for number, fold in enumerate(folds)
    )
    return f'<table class="folds"><thead><tr><th>Fold</th>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _headline(model: ModelResult | None) -> str:
    if model is None:
        return ""
    parts = []
    for name in ("accuracy", "balanced_accuracy", "sharpe"):
        if name in model.intervals:
            parts.append(f"{_e(_metric_display(name).header)} {format_interval(model.intervals[name], name)}")
    if not parts:
        return ""
    who = "Best baseline by net Sharpe (no other model)" if model.is_baseline else \
        "Best non-baseline model by net Sharpe"
    return f'<p class="headline">{who}, <b>{_e(model.name)}</b>: {"; ".join(parts)}.</p>'


_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;
color:#1d2330;background:#fafbfc}
main{max-width:1280px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:1.4rem;margin:0 0 8px;font-weight:600;color:#46506a}
.verdict{font-size:2.1rem;font-weight:700;padding:22px 26px;border-radius:10px;margin:8px 0 14px;
line-height:1.25}
.verdict.edge{background:#e3f4e6;color:#14532d;border:2px solid #2f8f46}
.verdict.noedge{background:#f3f1ea;color:#4a3b12;border:2px solid #b59a3c}
.alarm{background:#fde8e8;color:#7f1d1d;border:2px solid #c53030;padding:12px 18px;border-radius:8px;
font-weight:600}
.headline{font-size:1.05rem}
section{background:#fff;border:1px solid #e3e6ec;border-radius:8px;padding:16px 20px;margin:18px 0}
h2{font-size:1.2rem;margin:0 0 6px}
.caption{color:#4b5565;margin:0 0 10px;font-size:.93rem;max-width:1000px}
table{border-collapse:collapse;font-size:.9rem;margin:6px 0}
th,td{border-bottom:1px solid #e3e6ec;padding:5px 10px;text-align:left;vertical-align:top}
thead th{background:#f1f3f7}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th.baseline,td.baseline{background:#f7f7f9;color:#555}
.significant{font-weight:700}
.pass{color:#14532d;font-weight:700}.fail{color:#b91c1c;font-weight:700}
.warn{color:#8a5a00}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dl.meta dt{color:#5b6476}dl.meta dd{margin:0}
nav a{margin-right:12px;font-size:.9rem}
pre{background:#f5f6f8;padding:10px;overflow:auto;font-size:.82rem}
table.ensemble caption{text-align:left;color:#4b5565;font-size:.88rem;padding:2px 0}
"""


def _section(anchor: str, title: str, caption: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{title}</h2><p class="caption">{caption}</p>{body}</section>'


def _chart(fig: go.Figure | None, key: str, empty: str) -> str:
    if fig is None:
        return f'<p class="warn">{_e(empty)}</p>'
    return pio.to_html(
        fig, include_plotlyjs=False, full_html=False, config=_PLOTLY_CONFIG, div_id=f"chart-{key}"
    )


def _own_value(model: ModelResult | None, name: str) -> float:
    if model is None:
        return math.nan
    return model.intervals[name].value if name in model.intervals else model.metrics.get(name, math.nan)


def _ensemble_table(run: RunResult, model: ModelResult, diag: EnsembleDiagnostics) -> str:
    """Each member's mean fusion weight beside its own out-of-sample scores (model ``<ensemble>.<member>``
    where the run scored it)."""
    scored = {m.name: m for m in run.models}
    accuracy, log_loss, sharpe = (_metric_display(n) for n in ("accuracy", "log_loss", "sharpe"))
    rows = []
    for member in diag.members:
        own = scored.get(f"{model.name}.{member}")
        cells = [
            _format_number(diag.mean_weights[member], accuracy),
            _format_number(_own_value(own, "accuracy"), accuracy),
            _format_number(_own_value(own, "log_loss"), log_loss),
            _format_number(_own_value(own, "sharpe"), sharpe),
        ]
        rows.append(
            f"<tr><td>{_e(member)}</td>" + "".join(f'<td class="num">{cell}</td>' for cell in cells) + "</tr>"
        )
    total = sum(w for w in diag.mean_weights.values() if math.isfinite(w))
    return (
        f'<table class="ensemble" id="ensemble-weights-{_e(model.name)}"><caption>{_e(model.name)}: '
        f"{diag.n_rows:,} predictions; mean weights sum to {total * 100:.1f}%</caption>"
        "<thead><tr><th>Member</th><th>Mean fusion weight (%)</th><th>Own accuracy (%)</th>"
        "<th>Own log loss</th><th>Own Sharpe after costs</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _ensemble_section(
    run: RunResult, figures: Mapping[str, go.Figure | None], ensembles: list[_Ensemble]
) -> str:
    tables = "".join(_ensemble_table(run, model, diag) for _, model, diag in ensembles)
    flat = "; ".join(
        f"{_e(model.name)}: {diag.n_flat:,} of {diag.n_rows:,} rows had no position and are left out"
        for _, model, diag in ensembles
        if diag.sizing is not None
    )
    body = (
        tables
        + _chart(figures["ensemble_weights"], "ensemble_weights", "No fusion weights with timestamps.")
        + '<p class="caption">Uncertainty against error. Left: labelled predictions split into ten equal '
        "groups by epistemic uncertainty (the mutual information between the prediction and the ensemble's "
        "parameters, in nats: how much the members disagree); accuracy (solid, left axis) should fall and "
        "log loss (dashed, right axis) rise as it grows. Right: the volatility forecast, grouped by the "
        "spread it states (√log_vol_var); each point is the error actually made (RMSE of ln realised "
        "volatility − log_vol) against the stated spread. On the dashed line the stated spread is right; above it the "
        "ensemble is over-confident, below it too cautious. A well-behaved model's error grows with its "
        "stated uncertainty.</p>"
        + _chart(
            figures["ensemble_uncertainty"], "ensemble_uncertainty", "No uncertainty columns were recorded."
        )
        + '<p class="caption">Confidence-driven sizing. Rows where the risk manager held a position, split '
        "into ten equal groups by the ensemble's confidence: bars show the mean position size (% of equity, "
        "left axis), the line how often the position's direction matched the forward return (right axis). "
        "Sizing by confidence means the bars rise to the right; it pays when the line rises too."
        + (f" ({flat}.)" if flat else "")
        + "</p>"
        + _chart(figures["ensemble_sizing"], "ensemble_sizing", "No positions were recorded.")
    )
    return _section(
        "ensemble",
        "Ensemble: member contribution, uncertainty and sizing",
        "How the deep ensemble combines its members and uses its uncertainty. The table and the first chart "
        "show each member's weight in the Bayesian fusion (a per-row weight; here its mean over all "
        "predictions and per period), beside the member's own out-of-sample scores where it was scored as a "
        "model. The numbers behind every chart are in results.json under the model's “ensemble” key.",
        body,
    )


def _render_html(
    run: RunResult,
    figures: Mapping[str, go.Figure | None],
    context: Mapping[str, Any],
    png_status: str,
    ensembles: list[_Ensemble] | None = None,
) -> str:
    best = next((m for m in run.models if m.name == context["signals_model"]), None)
    edge = run.verdict.strip().lower().startswith("significant edge")
    verdict = run.verdict.strip()
    verdict = verdict[:1].upper() + verdict[1:]
    failed = [c.name for c in run.canaries if not c.passed]
    alarm = (
        f'<p class="alarm">Leakage canary failed ({_e(", ".join(failed))}): a model found skill in data '
        "that has none, so the evaluation may leak future information. Do not trust this report "
        "until this is fixed.</p>"
        if failed
        else ""
    )
    max_points = context["max_points_per_trace"]
    sampling = (
        f"Series longer than {max_points:,} points are downsampled for plotting (minimum and maximum of each "
        "bucket, so peaks and troughs remain); tables and results.json use the full data."
    )
    symbol = context["price_symbol"]
    models_list = ", ".join(_e(_label(m)) for m in run.models) or "none"
    allocations = (
        "An allocation (<i>model+hrp</i>, <i>model+mv</i>) spreads that model's predictions across coins "
        "(hierarchical risk parity or mean-variance, rebalanced on a schedule) in the same backtester; its "
        "prediction metrics are the model's. "
        if any(m.allocation for m in run.models)
        else ""
    )
    meta = (
        '<dl class="meta">'
        f"<dt>Data span (UTC)</dt><dd>{_e(run.data_span[0])} → {_e(run.data_span[1])}</dd>"
        f"<dt>Symbols</dt><dd>{_e(', '.join(run.symbols))}</dd>"
        f"<dt>Horizon</dt><dd>{run.horizon} bars ahead</dd>"
        f"<dt>Walk-forward folds</dt><dd>{len(run.folds)}</dd>"
        f"<dt>Configurations tried</dt><dd>{run.n_trials} (the deflated Sharpe accounts for them)</dd>"
        f"<dt>Models</dt><dd>{models_list}</dd>"
        f"<dt>Run</dt><dd>{_e(run.run_id)}, created {_e(run.created_at)}</dd>"
        "</dl>"
    )
    signals_reason = (
        "All models are baselines, so the one with the best net Sharpe is shown."
        if best is not None and best.is_baseline
        else "The model shown is the non-baseline model with the highest Sharpe ratio."
    )
    signal_caption = (
        f"The close price of {_e(symbol)}. Triangles mark the bars where {_e(context['signals_model'])} "
        "predicted BUY (▲, most probable class = up) or SELL (▼, down); the lower panel shows its "
        "P(up) − P(down). Markers are placed at the close of the decision bar, when the prediction is made. "
        f"{_e(signals_reason)} "
        if context["signals_model"]
        else f"The close price of {_e(symbol)} (no model predictions to show). "
    )
    notes = [_e(note) for note in run.notes] + [
        _e(sampling),
        _e(f"PNG export of the key charts: {png_status}."),
        (
            "Charts are interactive: hover for values, drag to zoom, double-click to reset, click a legend "
            "entry to hide or show it."
        ),
    ]
    sections = [
        _section(
            "price",
            "Price and signals",
            signal_caption + _e(sampling),
            _chart(figures["price"], "price", "No price data."),
        ),
        _section(
            "equity",
            "Equity vs buy and hold",
            "Growth of 1 unit of capital for each model after trading costs, against holding all symbols in "
            "equal weight. Log scale: equal vertical distances are equal percentage changes. Dashed entries "
            "in the legend show the same models before costs. " + _e(sampling),
            _chart(figures["equity"], "equity", "No equity curves."),
        ),
        _section(
            "drawdown",
            "Drawdown (%)",
            "How far each equity curve is below its previous peak, in percent. Deeper and longer troughs "
            "mean more pain while holding the strategy.",
            _chart(figures["drawdown"], "drawdown", "No equity curves."),
        ),
        _section(
            "monthly",
            "Monthly returns (%)",
            "Return of each calendar month after costs, in percent (green gains, red losses); “Full year” "
            "compounds the months present. Use the menu to switch between models.",
            _chart(figures["monthly"], "monthly", "No monthly returns were recorded."),
        ),
        _section(
            "reliability",
            "Reliability diagram",
            "Predictions are grouped by confidence; each point compares the average confidence of a group "
            "with how often that group was right. Points on the diagonal mean the probabilities can be "
            "taken at face value; below it the model is over-confident.",
            _chart(figures["reliability"], "reliability", "No reliability bins were recorded."),
        ),
        _section(
            "confidence",
            "Confidence histogram",
            "Distribution of each model's confidence (its highest class probability), as a share of its "
            "predictions. With three classes, 33% is a coin toss.",
            _chart(figures["confidence"], "confidence", "No confidence values were recorded."),
        ),
        _section(
            "deciles",
            "Accuracy by confidence decile (%)",
            "Predictions split into ten equal groups by confidence. A useful model is more accurate when it "
            "is more confident.",
            _chart(figures["deciles"], "deciles", "No confidence deciles were recorded."),
        ),
        *([_ensemble_section(run, figures, ensembles)] if ensembles else []),
        _section(
            "metrics",
            "Metrics with confidence intervals",
            "Every model side by side, baselines in grey on the right; out-of-sample over all test folds. "
            + allocations
            + _interval_legend(run.models, run.canaries)
            + " An interval that overlaps a baseline's means no demonstrated difference.",
            _metrics_table(run.models),
        ),
        _section(
            "tests",
            "Significance tests",
            "p-values of the tests the evaluation ran (bold: below 0.05). A small p-value is evidence "
            f"against “no skill”; with {run.n_trials} configurations tried, single p-values overstate the "
            "evidence unless the test's note says they are adjusted.",
            _tests_table(run.models),
        ),
        _section(
            "canaries",
            "Leakage canaries",
            "The pipeline re-run on data with no learnable signal (a random walk; labels shuffled). A canary "
            "passes when its accuracy interval contains the no-skill rate and the deflated Sharpe shows no "
            "edge. "
            "A failure means the evaluation can find skill where there is none.",
            _canaries_table(run.canaries),
        ),
        _section(
            "folds",
            "Walk-forward folds",
            "Train, validation and test spans of each fold (UTC).",
            _folds_table(run.folds),
        ),
        _section("notes", "Notes", "", "<ul>" + "".join(f"<li>{note}</li>" for note in notes) + "</ul>"),
        _section(
            "config",
            "Configuration",
            "The run's configuration, as recorded in results.json.",
            "<details><summary>Show</summary><pre>"
            + _e(json.dumps(_jsonable(run.config), indent=2, allow_nan=False))
            + "</pre></details>",
        ),
    ]
    nav = "".join(
        f'<a href="#{anchor}">{label}</a>'
        for anchor, label in (
            ("price", "Price"),
            ("equity", "Equity"),
            ("drawdown", "Drawdown"),
            ("monthly", "Monthly"),
            ("reliability", "Reliability"),
            ("confidence", "Confidence"),
            ("deciles", "Deciles"),
            *([("ensemble", "Ensemble")] if ensembles else []),
            ("metrics", "Metrics"),
            ("tests", "Tests"),
            ("canaries", "Canaries"),
            ("folds", "Folds"),
            ("notes", "Notes"),
        )
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Evaluation report: {_e(run.run_id)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body><main>'
        f"<header><h1>Evaluation report: {_e(run.run_id)}</h1>"
        f'<p class="verdict {"edge" if edge else "noedge"}" id="verdict">{_e(verdict)}</p>'
        f"{alarm}{_headline(best)}{meta}<nav>{nav}</nav></header>"
        + "".join(sections)
        + "</main></body></html>\n"
    )
