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
    as_of: str = Field(..., description="ISO time of the last closed bar the prediction uses")
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
