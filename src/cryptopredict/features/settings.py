"""The ``features`` section of the config: which families run, the label horizon, and each family's knobs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cryptopredict.features.context import ContextConfig
from cryptopredict.features.cross_asset import CrossAssetConfig
from cryptopredict.features.fractal import FractalConfig
from cryptopredict.features.sentiment import SentimentConfig
from cryptopredict.features.technical import TechnicalConfig

Family = Literal["technical", "fractal", "cross_asset", "context", "sentiment"]
ALL_FAMILIES: list[Family] = ["technical", "fractal", "cross_asset", "context", "sentiment"]


class FeaturesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    families: list[Family] = Field(default_factory=lambda: list(ALL_FAMILIES),
                                   description="feature families to compute (the registry switch)")
    horizon: int = Field(4, ge=1, description="label horizon in bars")
    label_vol_window: int = Field(168, ge=2, description="bars of trailing σ for the direction dead zone")
    technical: TechnicalConfig = Field(default_factory=TechnicalConfig)
    fractal: FractalConfig = Field(default_factory=FractalConfig)
    cross_asset: CrossAssetConfig = Field(default_factory=CrossAssetConfig)
    context: ContextConfig = Field(default_factory=ContextConfig)
    sentiment: SentimentConfig = Field(default_factory=SentimentConfig)
