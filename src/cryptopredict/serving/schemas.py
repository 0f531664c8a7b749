"""HTTP request and response bodies of the Serve app (pydantic), shared by the Ray Serve ingress, the
monitor's prediction log and the paper trader's client. Changing a field here changes the API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Signal = Literal["SELL", "HOLD", "BUY"]
SYMBOL_PATTERN = r"^[A-Z0-9]{2,20}$"


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbol: str = Field(..., pattern=SYMBOL_PATTERN, examples=["BTCUSDT"])
    horizon: int | None = Field(None, ge=1, le=1000, description="bars ahead; must equal the model's horizon "
                                "(null: the model's)")


class BatchPredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbols: list[str] = Field(..., min_length=1, max_length=64)
    horizon: int | None = Field(None, ge=1, le=1000)


class ClassProbabilities(BaseModel):
    SELL: float = Field(..., ge=0, le=1)
    HOLD: float = Field(..., ge=0, le=1)
    BUY: float = Field(..., ge=0, le=1)


class Interval(BaseModel):
    """A central prediction interval of the horizon's log return, from the predicted volatility."""

    level: float = Field(..., gt=0, lt=1)
    low: float
    high: float


class Uncertainty(BaseModel):
    epistemic: float = Field(..., ge=0, description="direction: mutual information of the fusion posterior")
    aleatoric: float = Field(..., ge=0, description="direction: expected entropy")
    epistemic_vol: float = Field(..., ge=0, description="log-vol variance from the posterior")
    aleatoric_vol: float = Field(..., ge=0, description="log-vol variance the members predict")


class Prediction(BaseModel):
    symbol: str
    as_of: str = Field(..., description="ISO timestamp (open time, the lake's key) of the last closed bar "
                       "the prediction uses; the horizon counts from that bar's close")
    horizon: int
    signal: Signal
    probabilities: ClassProbabilities
    confidence: float = Field(..., ge=0, le=1, description="calibrated probability that the signal is right")
    predicted_volatility: float = Field(..., ge=0, description="σ of the horizon's log return")
    interval: Interval
    uncertainty: Uncertainty
    position_size: float = Field(..., ge=-1, le=1, description="the risk manager's target weight for this "
                                 "coin alone (no other open positions assumed)")
    member_weights: dict[str, float] = Field(default_factory=dict, description="fusion weight per base model")
    model_version: str


class BatchPrediction(BaseModel):
    predictions: list[Prediction]


class ErrorBody(BaseModel):
    detail: str


class SupportedCoins(BaseModel):
    symbols: list[str]
    horizon: int = Field(..., description="the bars ahead the served model predicts")
    model_version: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    reason: str | None = Field(None, description="why the service is not ready (null when ready)")
    model_version: str | None = None
    as_of: str | None = Field(None, description="ISO open time of the latest bar the features use")
    data_age_hours: float | None = None
    members: dict[str, list[str]] = Field(default_factory=dict, description="model versions each base "
                                          "model's deployment has loaded")


class ReloadRequest(BaseModel):
    """Load a model: ``model_dir`` (a saved ensemble directory on the serving nodes) with an optional
    ``version`` label; or ``version`` of the registry's ``model`` (default: the configured registry model);
    or, with neither, that model's current champion."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, min_length=1, max_length=200, description="registry model name")
    version: str | None = Field(None, min_length=1, max_length=200)
    model_dir: str | None = Field(None, min_length=1, max_length=4096)


class ReloadResponse(BaseModel):
    model_version: str
    previous_version: str | None
    as_of: str | None
    seconds: float


class CoinView(BaseModel):
    """One row of the dashboard: the latest prediction of a coin and its rolling accuracy (monitor)."""

    symbol: str
    prediction: Prediction | None = None
    error: str | None = None
    rolling_accuracy: float | None = Field(None, description="share of resolved predictions that were right")
    resolved: int | None = Field(None, description="predictions the rolling accuracy rests on")


class DashboardData(BaseModel):
    model_version: str | None
    as_of: str | None
    data_age_hours: float | None
    coins: list[CoinView]
    monitor: str = Field(..., description="'available', or 'not available: <why>'")
    accuracy_window_hours: int | None = None
    drift: dict[str, float | None] = Field(default_factory=dict, description="the served version's drift: "
                                           "max PSI of its predictions and features, share of drifted features")
    monitor_notes: list[str] = Field(default_factory=list)
    error: str | None = None
