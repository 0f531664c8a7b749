"""The ``evaluation`` section of the config."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cryptopredict.evaluation.backtest import BacktestConfig
from cryptopredict.evaluation.portfolio import PortfolioConfig
from cryptopredict.evaluation.risk import RiskConfig
from cryptopredict.evaluation.splits import SplitConfig


# The default (CPU) profile: LightGBM as FreqAI runs it; the deep ensemble small enough for `make run` on
# two cores (two fits over the 14 folds, 16k recent training rows, 3 epochs; configs/gpu.yaml is the real one).
DEFAULT_MODEL_PARAMS: dict[str, dict[str, Any]] = {
    "lightgbm": {"num_boost_round": 300, "early_stopping_rounds": 30,
                 "params": {"learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 200,
                            "feature_fraction": 0.7, "bagging_fraction": 0.7, "bagging_freq": 1,
                            "lambda_l2": 1.0}},
    "ensemble": {"window": 32, "backend": "ray", "num_workers": 1, "cpus_per_worker": 0.5,
                 "train": {"epochs": 3, "batch_size": 256, "max_train_samples": 16000},
                 "member_train": {"gnn": {"batch_size": 32}},
                 "fusion": {"steps": 300}},
}


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        base[key] = _deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return base


class CanaryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    symbols: list[str] = Field(default_factory=lambda: ["BTCUSDT", "ETHUSDT", "SOLUSDT"])
    model: str = Field("lightgbm", description="the model run on the canary data")
    families: list[str] = Field(default_factory=lambda: ["technical", "cross_asset"],
                                description="feature families of the canary runs (speed)")
    max_folds: int | None = Field(4, description="canary folds (from evaluation.test_start)")
    seed: int = 17


class EvaluationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(default_factory=lambda: ["majority", "persistence", "momentum", "logistic",
                                                        "lightgbm", "ensemble"])
    model_params: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: copy.deepcopy(DEFAULT_MODEL_PARAMS),
        description="constructor arguments per model, merged key by key over the built-in defaults")
    test_start: str = Field("2022-01-01", description="first test bar (UTC); earlier data only trains")
    split: SplitConfig = Field(default_factory=lambda: SplitConfig(test_bars=24 * 90, valid_bars=24 * 30,
                                                                   embargo=24))
    max_folds: int | None = Field(None, description="stop after this many folds (quick runs)")
    refit_every: dict[str, int] = Field(default_factory=lambda: {"ensemble": 7}, description="model → refit every k folds "
                                        "(a fit predicts the next k test spans, all after its training span)")
    fold_chunks: dict[str, int] = Field(default_factory=lambda: {"lightgbm": 2}, description="model → split its "
                                        "folds into this many parallel items (each a contiguous run of refit "
                                        "groups; every fold is still fitted on its own training span, so the "
                                        "predictions do not depend on the split)")

    @field_validator("model_params", mode="before")
    @classmethod
    def _merge_params(cls, v: Any) -> Any:
        return _deep_merge(copy.deepcopy(DEFAULT_MODEL_PARAMS), v) if isinstance(v, dict) else v

    @field_validator("test_start", mode="before")
    @classmethod
    def _iso(cls, v: Any) -> str:
        return v.isoformat() if hasattr(v, "isoformat") else str(v)

    train_stride: int = Field(4, ge=1, description="use every n-th bar for training (labels overlap h bars)")
    hold_share: float = Field(1 / 3, gt=0, lt=1, description="share of training rows in the HOLD dead zone")
    risk: RiskConfig = Field(default_factory=RiskConfig)
    backtest: BacktestConfig = Field(default_factory=BacktestConfig)
    bootstrap_samples: int = Field(1000, ge=100)
    confidence_level: float = Field(0.95, gt=0.5, lt=1)
    canaries: CanaryConfig = Field(default_factory=CanaryConfig)
    final_fit: bool = Field(True, description="after the walk-forward, fit every model on all labelled rows "
                            "and store it under <run_dir>/<run id>/models (for `evaluate --data`)")
    n_trials_extra: int = Field(0, ge=0, description="configurations tried outside this run (tuning), for "
                                "the Deflated Sharpe")
    tuning_summary: str | None = Field(None, description="a `cryptopredict tune` tuning.json: its trials count "
                                       "in the Deflated Sharpe and its PBO (CSCV over the trials) is reported")
    portfolio: PortfolioConfig = Field(default_factory=PortfolioConfig,
                                       description="allocations across coins from a model's predictions, "
                                       "backtested and scored like the models")

    @model_validator(mode="after")
    def _portfolio_models_run(self) -> EvaluationConfig:
        unknown = sorted(set(self.portfolio.models or []) - set(self.models))
        if unknown:
            raise ValueError(f"evaluation.portfolio.models {unknown} are not in evaluation.models "
                             f"{self.models}")
        return self
