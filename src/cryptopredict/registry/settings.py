"""``registry`` section of the config (pydantic only): where versions live, and the retrain job's rule."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RetrainConfig(BaseModel):
    """``registry.retrain``: what `cryptopredict retrain` ingests, which window it compares on, and when the
    challenger replaces the champion."""

    model_config = ConfigDict(extra="forbid")

    ingest: Literal["snapshot", "live", "none"] = Field(
        "snapshot", description="new data before retraining: the snapshot folder, live sources, or none "
        "(the lake is already up to date)")
    window_bars: int = Field(24 * 30, ge=24, description="the latest test window: this many bars up to the "
                             "data end, cut to start after the champion's training data (+ label horizon)")
    min_window_bars: int = Field(24 * 7, ge=2, description="fewer new bars than this: no comparison, nothing "
                                 "registered (decision 'skipped')")
    tolerance: float = Field(0.0, ge=0, description="promote only if the challenger's mean log loss on the "
                             "window exceeds the champion's by at most this many nats")
    alpha: float = Field(0.05, gt=0, lt=1, description="... and the one-sided Diebold–Mariano test does not "
                         "find it significantly worse at this level")
    serve_url: str | None = Field(None, description="the Serve app asked to reload after a promotion "
                                  "(default http://<serving.host>:<serving.port>)")
    reload_timeout_s: float = Field(5.0, gt=0, description="seconds to wait for the Serve app's answer")

    @model_validator(mode="after")
    def _window_fits(self) -> RetrainConfig:
        if self.min_window_bars > self.window_bars:
            raise ValueError(f"min_window_bars ({self.min_window_bars}) exceeds window_bars ({self.window_bars})")
        return self


class RegistryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field("registry", description="a local directory or s3://bucket/prefix")
    model: str = Field("ensemble", description="the model of the final fit that `run` registers")
    register_on_run: bool = Field(True, description="`cryptopredict run` registers its final fit")
    s3_region: str | None = Field(None, description="region for an s3:// root (default: lake.s3_region)")
    s3_endpoint: str | None = Field(None, description="endpoint for an s3:// root (default: lake.s3_endpoint)")
    cache_dir: str | None = Field(None, description="where versions fetched from s3:// are kept "
                                  "(default ~/.cache/cryptopredict/registry)")
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
