"""``paper`` section of the config (pydantic only).

The exchange, timeframe and API url overrides come from ``ingest``; sizing from ``evaluation.risk`` (with
``features.horizon``) and the cost model from ``evaluation.backtest`` (with ``initial_cash`` as its starting
equity), so paper fills cost what the backtest charges.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class PaperConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state_dir: str = Field("paper", description="restart-safe state: orders, positions, PnL")
    serve_url: str = Field("http://127.0.0.1:8000", description="the Serve app asked for predictions")
    symbols: list[str] = Field(default_factory=list,
                               description="coins to trade on paper (empty: ingest.symbols)")
    initial_cash: float = Field(10_000.0, gt=0, description="quote currency (USDT) at the first bar")
    poll_interval_s: float | None = Field(None, gt=0, description="seconds between exchange polls "
                                          "(None: wake at each bar close + grace_s)")
    grace_s: float = Field(2.0, ge=0, description="wait after a bar's close before asking for it")
    clock: Literal["exchange", "local"] = Field(
        "exchange", description="'now' for deciding which bars are closed: the exchange's server time "
        "(no local clock skew) or this machine's clock")
    connect_timeout_s: float = Field(3.0, gt=0, description="Serve app: TCP connect timeout")
    read_timeout_s: float = Field(10.0, gt=0, description="Serve app: response timeout")
    max_attempts: int = Field(4, ge=1, description="tries per request to the Serve app (5xx, connection "
                              "errors, timeouts) and to the exchange (ccxt network errors)")
    backoff_base_s: float = Field(0.5, ge=0, description="first retry delay (doubles each try, ±10 % jitter)")
    backoff_max_s: float = Field(8.0, ge=0, description="longest retry delay")
    max_unavailable_bars: int = Field(
        3, ge=1, description="consecutive bars the Serve app may stay unreachable (retries exhausted) "
        "before the trader stops with exit status 1; each such bar is recorded as skipped")
    use_log_vol_var: bool = Field(
        True, description="pass uncertainty.aleatoric_vol + epistemic_vol as the risk manager's "
        "log_vol_var (the total variance the evaluation's sizing uses); False sizes on predicted_volatility alone")

    @field_validator("symbols")
    @classmethod
    def _strip(cls, v: list[str]) -> list[str]:
        return [s.strip() for s in v if s.strip()]
