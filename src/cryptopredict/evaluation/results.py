"""What an evaluation run produces, as plain data: the report renders it, the JSON file stores it.

Times are UTC; ``timestamp`` is the bar open time of the decision bar (prediction made at its close).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class Interval:
    """A point estimate with a confidence interval (block bootstrap unless ``method`` says otherwise)."""

    value: float
    low: float
    high: float
    level: float = 0.95
    method: str = "block bootstrap"


@dataclass
class ModelResult:
    """One model's out-of-sample result over all walk-forward test folds.

    ``predictions``: index (symbol, timestamp); columns p_sell, p_hold, p_buy, confidence, log_vol,
    log_vol_var, y_true (0/1/2, NaN unknown), fwd_return, fold (int), and position (the risk manager's
    target). ``equity``: portfolio equity (start 1.0) indexed by timestamp, net of costs; ``equity_gross``
    before costs. ``metrics``: every scalar (flat dict, JSON-able). ``intervals``: the headline numbers
    with CIs (accuracy, balanced_accuracy, sharpe, ...). ``reliability``: bins with mean_confidence,
    accuracy, count. ``deciles``: confidence decile → accuracy, count. ``monthly``: year × month returns.
    ``tests``: significance tests by name (e.g. "pesaran_timmermann", "dm_vs_lightgbm") → dict with
    statistic, p_value and a note. ``allocation``: for an allocation across coins from another model's
    predictions (``evaluation/portfolio.py``, named "<model>+hrp" / "<model>+mv"), its method; ``predictions``
    are then that model's and ``position`` the allocation's target weight (last rebalance).
    """

    name: str
    predictions: pd.DataFrame
    equity: pd.Series
    equity_gross: pd.Series
    metrics: dict[str, float]
    intervals: dict[str, Interval]
    reliability: pd.DataFrame
    deciles: pd.DataFrame
    monthly: pd.DataFrame
    tests: dict[str, dict[str, float | str]] = field(default_factory=dict)
    is_baseline: bool = True
    allocation: str | None = None


@dataclass
class CanaryResult:
    """A leakage canary: a run on data with no learnable signal. ``passed`` when accuracy's CI contains
    the no-skill rate and the Deflated Sharpe shows no edge."""

    name: str  # "random_walk" | "shuffled_labels"
    accuracy: Interval
    no_skill_accuracy: float
    deflated_sharpe: float  # probability that the true Sharpe > 0 after deflation
    passed: bool
    note: str = ""


@dataclass
class RunResult:
    """Everything a report shows."""

    run_id: str
    created_at: str
    data_span: tuple[str, str]
    symbols: list[str]
    horizon: int
    folds: list[dict[str, str]]  # per fold: train/valid/test start and end (ISO)
    models: list[ModelResult]
    benchmark_equity: pd.Series  # buy and hold, equal weight across symbols, same timestamps as equity
    prices: pd.DataFrame  # timestamp × symbol close, for the price-with-signals chart
    canaries: list[CanaryResult]
    verdict: str  # "significant edge after costs" | "no significant edge" (+ one sentence why)
    n_trials: int  # configurations tried (feeds the Deflated Sharpe)
    config: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
