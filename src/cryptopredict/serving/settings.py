"""``serving`` section of the config (pydantic only)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ServingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_data_age_hours: float = Field(6.0, gt=0, description="latest bar older than this → 503")
    admin_token_env: str = Field("CRYPTOPREDICT_ADMIN_TOKEN", description="env var holding the /admin token")
    max_body_bytes: int = Field(65536, gt=0, description="larger request bodies → 413")
