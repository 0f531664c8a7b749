"""``serving`` section of the config (pydantic only)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class DeploymentOptions(BaseModel):
    """Replicas and Ray actor options of one Serve deployment."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.25, gt=0, description="CPUs each replica reserves (Serve's default 1 would not "
                            "schedule five deployments on two cores)")
    num_gpus: float = Field(0.0, ge=0, description="a fraction of a GPU per replica on GPU nodes")
    max_batch_size: int = Field(16, ge=1, description="@serve.batch: requests run through the net together "
                                "(ingress: HTTP requests whose rows one call to each base model carries)")
    batch_wait_timeout_s: float = Field(0.001, ge=0, description="@serve.batch: wait this long for more "
                                        "requests (requests queued while a batch runs join the next anyway)")
    max_ongoing_requests: int = Field(64, ge=1)


def _members() -> dict[str, DeploymentOptions]:
    return {m: DeploymentOptions() for m in ("transformer", "bilstm", "cnn_lstm", "gnn")}


class ServingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_data_age_hours: float = Field(6.0, gt=0, description="latest bar older than this → 503")
    admin_token_env: str = Field("CRYPTOPREDICT_ADMIN_TOKEN", description="env var holding the /admin token")
    max_body_bytes: int = Field(65536, gt=0, description="larger request bodies → 413")

    model_dir: str | None = Field(None, description="serve this model directory (DeepEnsemble.save layout + "
                                  "labeler.json/final_fit.json); null: the registry's champion of "
                                  "registry.model")
    model_version: str | None = Field(None, description="version label of model_dir (default: its "
                                      "directory name)")
    lookback_bars: int | None = Field(None, ge=2, description="bars of history per request-time feature "
                                      "computation; null: longest feature window + fractal stride + "
                                      "warmup_bars")
    warmup_bars: int = Field(2000, ge=0, description="extra bars for recursive indicators (EMA, Wilder, SAR, "
                             "Supertrend) to forget their start; the skew test checks the default")
    snapshot_check_seconds: float = Field(5.0, ge=0, description="poll the lake's last bar at most this often")
    score_new_news: bool = Field(True, description="score news items the features job has not scored yet "
                                 "(with the scorer the stored features used) before computing sentiment")
    interval_level: float = Field(0.9, gt=0, lt=1, description="level of the horizon-return interval")
    device: str = Field("cpu", description="torch device of the member nets: cpu | cuda | auto")
    members: dict[str, DeploymentOptions] = Field(default_factory=_members,
                                                  description="per base model deployment options")
    ingress: DeploymentOptions = Field(default_factory=DeploymentOptions)
    ingress_batches_in_flight: int = Field(2, ge=1, description="batches of requests the ingress has in the "
                                           "base models (and the fusion) at once: the next batch forms while "
                                           "one runs")
    model_cache_dir: str | None = Field(None, description="where each Serve replica keeps the registry "
                                        "versions it fetched itself (checked against the manifest); null: "
                                        "<registry.cache_dir or ~/.cache/cryptopredict/registry>/serving, on "
                                        "the replica's own node")
    access_log: bool = Field(False, description="Ray Serve's per-request access log lines in the replicas "
                             "(request counts and latencies are in /metrics either way)")
    fixed_now: datetime | None = Field(None, description="judge data freshness against this time instead of "
                                       "the wall clock (replaying stored data); null: the wall clock")
    model_poll_seconds: float = Field(2.0, gt=0, description="ingress replicas check for a model reloaded by "
                                      "another replica this often")
    keep_versions: int = Field(2, ge=1, description="model versions a base-model replica keeps loaded (the "
                               "previous one finishes the requests in flight during a reload)")
    cache_predictions: bool = Field(True, description="compute each (model version, latest bar, symbol) answer "
                                    "once (it is deterministic); a request with 'Cache-Control: no-cache' "
                                    "recomputes it through the base-model deployments")
    log_predictions: bool = Field(True, description="write every served prediction to the monitor's "
                                  "prediction log (monitoring.log_root)")
    dashboard_refresh_seconds: int = Field(60, ge=5, description="the dashboard page reloads its data this often")
