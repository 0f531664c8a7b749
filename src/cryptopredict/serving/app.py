"""The Ray Serve application: one deployment per base model, a FastAPI ingress that fuses them.

```
HTTP ─► proxy ─► ingress (FastAPI) ─┬─► transformer ─┐   each its own deployment: replicas, CPUs/GPUs,
                 │ snapshot of the  ├─► bilstm      ─┤   @serve.batch (concurrent requests share one
                 │ latest bar (per  ├─► cnn_lstm    ─┤   forward pass; the graph net computes each bar's
                 │ model version)   └─► gnn         ─┘   graph once per batch)
                 └─ fusion + risk ◄──── member outputs (all of one model version) ──► Prediction
model_board: which version is served (for every ingress replica, and for replicas restarted later)
```

The request path is ``cryptopredict.serving.predictor``'s, split across processes: the ingress holds the
snapshot (request-time features of the latest bar, recomputed in a background thread when the lake's last
bar moves) and the fusion; each base-model deployment holds its own net only. Every member input and
output carries the model version, and the fusion refuses outputs of another version. An answer is
deterministic given (model version, latest bar, symbol), so it is computed once per bar
(``serving.cache_predictions``; ``Cache-Control: no-cache`` recomputes). Every served prediction goes to the
monitor's prediction log (``monitoring/log.py``, ``serving.log_predictions``).

Reload (``POST /admin/reload``, bearer token from the env var named by ``serving.admin_token_env``): the
ingress loads the new model and builds its snapshot beside the old one, makes every base-model deployment
load it too (each keeps ``serving.keep_versions``), then swaps; requests already running finish on the
version they started with. The new version is published on the model board, which the other ingress
replicas poll.

Routes: ``POST /predict``, ``POST /predict/batch``, ``GET /supported_coins``, ``GET /healthz`` (the process
answers), ``GET /readyz`` (200 only with a model, fresh features and every base model holding the version;
503 with the reason otherwise), ``GET /metrics`` (Prometheus text), ``POST /admin/reload``, ``GET /docs``
(OpenAPI), ``GET /dashboard`` (plotly, bundle served from ``/static``; no CDN).
Errors: unknown symbol 404, malformed body or wrong horizon 422, body over ``serving.max_body_bytes`` 413,
stale data or no model 503 — always a JSON body ``{"detail": ...}``.

Run: ``serve run serve/config.yaml`` or ``serve deploy serve/config.yaml`` (import path
``cryptopredict.serving.app:build_app``: the package is installed on every node, so a config-file deploy
finds it anywhere), ``serve run serve.app:build_app`` from the repository root, or ``cryptopredict serve``
(``serving/command.py``). ``build_app(args)`` is the application builder: args ``config`` (a config YAML)
and ``overrides`` (dotted ``key=value``), or ``config_json`` (a dumped Config); optional ``model_dir`` and
``version`` (default ``serving.model_dir``, else the registry's champion).
"""

# No ``from __future__ import annotations`` here: Serve ships the ingress class by value to its replicas,
# where FastAPI must see the request/response models as objects, not as names to look up.
import asyncio
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import FastAPI, Header, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from ray import serve
from ray.serve.handle import DeploymentHandle

from cryptopredict.config import Config, load_config
from cryptopredict.parallel import absolute_paths
from cryptopredict.serving.board import ModelBoard
from cryptopredict.serving.dashboard import DATA_PATH, PLOTLY_PATH, plotly_js, render_dashboard
from cryptopredict.serving.http import AuthError, BodyLimitMiddleware, ServeMetrics, admin_digest_from_env, \
    check_bearer
from cryptopredict.serving.monitor_view import MonitorView, monitor_view
from cryptopredict.serving.predictor import FusionStep, HorizonMismatchError, MemberBatch, MemberOutput, \
    MemberRunner, ModelMeta, ServingError, SnapshotCache, StaleDataError, VersionMismatchError, check_fresh, checked_snapshot, load_model_meta, member_batch, \
    registry_model, resolve_model
from cryptopredict.serving.schemas import BatchPrediction, BatchPredictRequest, CoinView, DashboardData, \
    ErrorBody, Health, Prediction, PredictRequest, Readiness, ReloadRequest, ReloadResponse, SupportedCoins
from cryptopredict.serving.settings import DeploymentOptions

log = logging.getLogger("cryptopredict.serve")

APP_NAME = "cryptopredict"
INGRESS_NAME = "ingress"
BOARD_NAME = "model_board"  # base-model deployments are named after their member (MEMBER_NETS)


class ModelUnavailableError(ServingError):
    """No model loaded yet, or a base-model deployment failed."""

    status = 503


class ReloadError(ServingError):
    """The model asked for cannot be served (missing directory, other members, other features)."""

    status = 422


# Module-level helpers are defined before the deployments: Serve serialises a decorated class (with the
# globals it uses) when the decorator runs.
def _no_cache(cache_control: str | None) -> bool:
    return bool(cache_control) and "no-cache" in cache_control.lower()


def _utc(value: Any) -> pd.Timestamp:
    t = pd.Timestamp(value)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


# ----------------------------------------------------------------------------------------------- members

@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class BaseModelDeployment:
    """One base net (deployed once per member, under the member's name). Keeps the last
    ``keep_versions`` model versions loaded and loads a version it has not seen from the batch's
    ``model_dir``, so a reload never strands a request."""

    def __init__(self, member: str, model_dir: str, version: str, device: str = "cpu",
                 keep_versions: int = 2) -> None:
        import torch

        torch.set_num_threads(1)
        self.member, self.device, self.keep = member, device, keep_versions
        self._runners: OrderedDict[str, MemberRunner] = OrderedDict()
        self._lock = threading.Lock()
        self._runner(version, model_dir)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config``: the @serve.batch knobs (max_batch_size, batch_wait_timeout_s)."""
        self.predict.set_max_batch_size(int(config.get("max_batch_size", 16)))
        self.predict.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.001)))

    def _runner(self, version: str, model_dir: str | None) -> MemberRunner:
        with self._lock:
            runner = self._runners.get(version)
            if runner is None:
                if model_dir is None:
                    raise VersionMismatchError(f"{self.member} has no model {version} and no directory to load "
                                               "it from")
                runner = MemberRunner(load_model_meta(model_dir, version), self.member, self.device)
                self._runners[version] = runner
                while len(self._runners) > self.keep:
                    self._runners.popitem(last=False)
                log.info("%s: loaded model %s from %s", self.member, version, model_dir)
            else:
                self._runners.move_to_end(version)
            return runner

    async def load(self, version: str, model_dir: str) -> list[str]:
        await asyncio.to_thread(self._runner, version, model_dir)
        return self.versions()

    def versions(self) -> list[str]:
        return list(self._runners)

    def _run(self, batches: list[MemberBatch]) -> list[MemberOutput]:
        out: list[MemberOutput | None] = [None] * len(batches)
        by_version: dict[str, list[int]] = {}
        for i, b in enumerate(batches):
            by_version.setdefault(b.version, []).append(i)
        for version, idx in by_version.items():
            runner = self._runner(version, batches[idx[0]].model_dir)
            for i, res in zip(idx, runner.run_many([batches[i] for i in idx]), strict=True):
                out[i] = res
        return [o for o in out if o is not None]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.001)
    async def predict(self, batches: list[MemberBatch]) -> list[MemberOutput]:
        return await asyncio.to_thread(self._run, batches)


# ----------------------------------------------------------------------------------------------- ingress

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown symbol"},
    413: {"model": ErrorBody, "description": "request body too large"},
    503: {"model": ErrorBody, "description": "stale data, or no model loaded"},
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no bearer token"},
    403: {"model": ErrorBody, "description": "wrong bearer token, or admin disabled"},
    413: ERRORS[413],
    503: {"model": ErrorBody, "description": "the registry is unavailable"},
}

_LIMITS = {"max_body_bytes": 65536}
_METRICS = ServeMetrics()

api = FastAPI(title="cryptopredict", version="1",
              description="Direction (SELL/HOLD/BUY) and volatility of the next bars per coin from the deep "
                          "ensemble, with calibrated confidence, uncertainty and a position size.")
api.add_middleware(BodyLimitMiddleware, limit=lambda: _LIMITS["max_body_bytes"])
api.add_middleware(lambda app: _METRICS.middleware(app))  # outermost: counts 413s too


@api.exception_handler(ServingError)
async def _serving_error(_: Request, exc: ServingError) -> JSONResponse:
    if isinstance(exc, HorizonMismatchError):  # the shape of FastAPI's own 422 (HTTPValidationError)
        return JSONResponse({"detail": [{"loc": ["body", "horizon"], "msg": str(exc), "type": "value_error"}]},
                            status_code=422)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


@api.exception_handler(AuthError)
async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)


@dataclass
class _State:
    """One loaded model version: its snapshots, its fusion, the symbols it serves."""

    meta: ModelMeta
    cache: SnapshotCache
    fusion: FusionStep
    generation: int
    answers: dict[tuple[str, str], Prediction] = field(default_factory=dict)  # (snapshot id, symbol)

    @property
    def version(self) -> str:
        return self.meta.version


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress(api)
class Ingress:
    def __init__(self, members: dict[str, DeploymentHandle], board: DeploymentHandle, config: dict[str, Any],
                 model_dir: str, version: str, admin_digest: str | None = None) -> None:
        from cryptopredict.data.ingest import open_lake

        self.cfg = Config.model_validate(config)
        sc = self.cfg.serving
        _LIMITS["max_body_bytes"] = sc.max_body_bytes
        self.members, self.board = members, board
        self.lake = open_lake(self.cfg)
        self.admin_digest = admin_digest or admin_digest_from_env(sc.admin_token_env)
        self.fixed_now: pd.Timestamp | None = None if sc.fixed_now is None else _utc(sc.fixed_now)
        self.max_age_hours = sc.max_data_age_hours
        self.state: _State | None = None
        self.load_error: str | None = None
        self.refresh_error: str | None = None
        self._reload_lock = threading.Lock()
        self._monitor_cache: tuple[float, str, MonitorView] | None = None
        self.prediction_log = None
        if sc.log_predictions:
            from cryptopredict.monitoring.log import PredictionLogger

            self.prediction_log = PredictionLogger.from_config(self.cfg, registry=_METRICS.registry)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._background, args=(model_dir, version), daemon=True,
                                        name="cryptopredict-refresh")
        self._thread.start()

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config``: ``fixed_now`` (ISO time or null for the wall clock), ``max_data_age_hours``."""
        now = config.get("fixed_now")
        self.fixed_now = None if now in (None, "") else _utc(now)
        if config.get("max_data_age_hours") is not None:
            self.max_age_hours = float(config["max_data_age_hours"])

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        logger = getattr(self, "prediction_log", None)
        if logger is not None:
            logger.close()

    # -- state ------------------------------------------------------------------------------------------
    def now(self) -> pd.Timestamp:
        return self.fixed_now if self.fixed_now is not None else pd.Timestamp.now(tz="UTC")

    def _prepare(self, model_dir: str, version: str, generation: int) -> _State:
        """Load a model and build its snapshot beside the current one (nothing is swapped here)."""
        from cryptopredict.features.scaling import RobustScaler

        try:
            meta = load_model_meta(model_dir, version)
        except (OSError, ValueError) as exc:
            raise ReloadError(f"cannot load model {version!r} from {model_dir!r}: {exc}") from exc
        missing = [m for m in meta.members if m not in self.members]
        if missing:
            raise ReloadError(f"model {version} has members {missing} that this application does not deploy "
                              f"(deployed: {sorted(self.members)}); redeploy the application")
        cache = SnapshotCache(self.cfg, self.lake, meta, RobustScaler.load(meta.directory / "scaler.json"))
        current = self.state
        if current is not None and current.cache.features is not None:
            cache.adopt_features(current.cache.features)  # same bar: reuse the request-time features
        try:
            cache.get(force_check=True)
        except ValueError as exc:  # the model's columns are not what the features config computes
            raise ReloadError(f"model {version} cannot be served on these features: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - no snapshot yet (e.g. an empty lake): /readyz says why
            self.refresh_error = f"{type(exc).__name__}: {exc}"
            log.warning("model %s loaded without a snapshot: %s", version, exc)
        return _State(meta, cache, FusionStep(meta, self.cfg.evaluation.risk, self.cfg.serving.interval_level),
                      generation)

    def _switch(self, model_dir: str, version: str, *, publish: bool, generation: int = 0) -> _State:
        """Load new, make every base model load it, then swap (requests in flight keep the old state)."""
        with self._reload_lock:
            t0 = time.perf_counter()
            new = self._prepare(model_dir, version, generation)
            for member in new.meta.members:
                try:
                    self.members[member].load.remote(version, str(new.meta.directory)).result(timeout_s=300)
                except Exception as exc:  # noqa: BLE001 - reported as a failed reload, old model stays
                    raise ModelUnavailableError(f"base model {member} could not load {version}: "
                                                f"{type(exc).__name__}") from exc
            if publish:
                board = self.board.publish.remote(version, str(new.meta.directory)).result(timeout_s=30)
                new.generation = int(board["generation"])
            previous = self.state
            self.state = new
            self.load_error = None
            _METRICS.set_version(version)
            log.info("serving model %s (was %s), switched in %.2f s", version,
                     previous.version if previous else None, time.perf_counter() - t0)
            return new

    def _background(self, model_dir: str, version: str) -> None:
        """Load the first model (the board's, if a reload published one), then keep the snapshot current
        and follow the board."""
        sc = self.cfg.serving
        while not self._stop.is_set() and self.state is None:
            try:
                board = self.board.get.remote().result(timeout_s=30)
                self._switch(board["model_dir"], board["version"], publish=False,
                             generation=int(board["generation"]))
            except Exception as exc:  # noqa: BLE001 - /readyz reports it; retried
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.warning("loading the model failed (retrying): %s", self.load_error)
                self._stop.wait(5.0)
        last_poll = time.monotonic()
        while not self._stop.wait(min(sc.snapshot_check_seconds or 1.0, sc.model_poll_seconds)):
            state = self.state
            if state is None:
                continue
            try:
                state.cache.get()
                self.refresh_error = None
            except Exception as exc:  # noqa: BLE001 - keep serving the last snapshot until it is stale
                self.refresh_error = f"{type(exc).__name__}: {exc}"
                log.warning("snapshot refresh failed: %s", self.refresh_error)
            if time.monotonic() - last_poll >= sc.model_poll_seconds:
                last_poll = time.monotonic()
                try:
                    board = self.board.get.remote().result(timeout_s=10)
                    generation = int(board["generation"])
                    current = self.state  # re-read: a reload on this replica may have finished meanwhile
                    if current is not None and generation > current.generation:
                        if board["version"] != current.version:
                            self._switch(board["model_dir"], board["version"], publish=False,
                                         generation=generation)
                        else:
                            current.generation = generation
                except Exception as exc:  # noqa: BLE001
                    log.warning("following the model board failed: %s", exc)

    def _current(self) -> _State:
        state = self.state
        if state is None:
            raise ModelUnavailableError(f"no model loaded yet: {self.load_error or 'loading'}")
        return state

    # -- prediction -------------------------------------------------------------------------------------
    async def _predict(self, symbols: list[str], horizon: int | None, *, fresh: bool = False) -> list[Prediction]:
        """Predictions of ``symbols`` at the latest bar; with ``serving.cache_predictions`` each (version,
        bar, symbol) is computed once unless ``fresh``."""
        state = self._current()  # this request stays on this version, whatever reloads meanwhile
        snap, unique = checked_snapshot(state.meta, state.cache, symbols, horizon, self.now(), self.max_age_hours,
                                        self.refresh_error)
        use_cache = self.cfg.serving.cache_predictions
        if use_cache and not fresh and all((snap.id, s) in state.answers for s in unique):
            return [state.answers[(snap.id, s)] for s in symbols]
        directory = str(state.meta.directory)
        members = state.meta.members
        calls = [self.members[m].predict.remote(member_batch(snap, m, unique, directory)) for m in members]
        results = await asyncio.gather(*calls, return_exceptions=True)
        outputs: dict[str, MemberOutput] = {}
        for m, res in zip(members, results, strict=True):
            if isinstance(res, BaseException):
                log.error("base model %s failed: %r", m, res)
                raise ModelUnavailableError(f"base model {m} failed ({type(res).__name__}); retry")
            outputs[m] = res
        preds = state.fusion.fuse(outputs, [snap.sigma.get(s, float("nan")) for s in unique], snap.as_of)
        by_symbol = {p.symbol: p for p in preds}
        if use_cache:
            if any(key[0] != snap.id for key in state.answers):  # a new bar: drop the old answers
                state.answers = {k: v for k, v in state.answers.items() if k[0] == snap.id}
            state.answers.update({(snap.id, s): p for s, p in by_symbol.items()})
        return [by_symbol[s] for s in symbols]

    @api.post("/predict", response_model=Prediction, responses=ERRORS)
    async def predict(self, body: PredictRequest, cache_control: str | None = Header(None)) -> Prediction:
        """The latest prediction of one coin (``horizon``: null or the model's). ``Cache-Control: no-cache``
        recomputes it instead of answering from this bar's cache."""
        t0 = time.perf_counter()
        preds = await self._predict([body.symbol], body.horizon, fresh=_no_cache(cache_control))
        self._log(preds, t0, "/predict")
        return preds[0]

    @api.post("/predict/batch", response_model=BatchPrediction, responses=ERRORS)
    async def predict_batch(self, body: BatchPredictRequest, cache_control: str | None = Header(None)
                            ) -> BatchPrediction:
        """The latest predictions of several coins, in the order asked (``Cache-Control: no-cache``: as for
        ``/predict``)."""
        t0 = time.perf_counter()
        preds = await self._predict(list(body.symbols), body.horizon, fresh=_no_cache(cache_control))
        self._log(list({p.symbol: p for p in preds}.values()), t0, "/predict/batch")
        return BatchPrediction(predictions=preds)

    def _log(self, preds: list[Prediction], t0: float, route: str) -> None:
        """Queue served predictions for the monitor's log (no I/O here); the request time is this
        service's clock (the replayed time under ``fixed_now``)."""
        if self.prediction_log is not None:
            self.prediction_log.log_many(preds, (time.perf_counter() - t0) * 1000.0,
                                         request_time=self.now().timestamp(), route=route)

    @api.get("/supported_coins", response_model=SupportedCoins, responses={503: ERRORS[503]})
    async def supported_coins(self) -> SupportedCoins:
        state = self._current()
        return SupportedCoins(symbols=state.cache.symbols, horizon=state.meta.horizon, model_version=state.version)

    # -- operations -------------------------------------------------------------------------------------
    @api.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        """Liveness: the replica answers."""
        return Health()

    @api.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz(self) -> JSONResponse:
        """200 when a model is loaded, its features are fresh and every base model holds its version."""
        ready = await self._readiness()
        return JSONResponse(ready.model_dump(mode="json"), status_code=200 if ready.ready else 503)

    async def _readiness(self) -> Readiness:
        state = self.state
        if state is None:
            return Readiness(ready=False, reason=f"no model loaded: {self.load_error or 'loading'}")
        snap = state.cache.peek()
        base = {"model_version": state.version}
        if snap is None:
            return Readiness(ready=False, reason=f"no features computed yet: {self.refresh_error or 'computing'}",
                             **base)
        age = snap.age_hours(self.now())
        base.update(as_of=snap.as_of.isoformat(), data_age_hours=age)
        names = list(state.meta.members)
        try:
            versions = await asyncio.wait_for(asyncio.gather(*(self.members[m].versions.remote() for m in names)), 10)
        except Exception as exc:  # noqa: BLE001 - a member that does not answer is a reason not to be ready
            return Readiness(ready=False, reason=f"base models do not answer ({type(exc).__name__})", **base)
        members = dict(zip(names, versions, strict=True))
        base["members"] = members
        try:
            check_fresh(snap, self.now(), self.max_age_hours)
        except StaleDataError as exc:
            return Readiness(ready=False, reason=str(exc), **base)
        lacking = [m for m, v in members.items() if state.version not in v]
        if lacking:
            return Readiness(ready=False, reason=f"base models {lacking} have not loaded {state.version}", **base)
        return Readiness(ready=True, **base)

    @api.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    async def metrics(self) -> Response:
        """Prometheus text: requests by route and status, latency, model version, data age."""
        state = self.state
        snap = state.cache.peek() if state is not None else None
        if snap is not None:
            _METRICS.data_age.set(snap.age_hours(self.now()) * 3600.0)
            _METRICS.as_of.set(snap.as_of.timestamp())
        return Response(generate_latest(_METRICS.registry), media_type=CONTENT_TYPE_LATEST)

    def _admin(self, authorization: str | None = Header(None)) -> None:
        check_bearer(authorization, self.admin_digest, self.cfg.serving.admin_token_env)

    @api.post("/admin/reload", response_model=ReloadResponse, responses=ADMIN_ERRORS)
    async def reload(self, body: ReloadRequest | None = None, authorization: str | None = Header(None)
                     ) -> ReloadResponse:
        """Load another model without dropping requests: ``model_dir`` (+ ``version`` label), a registry
        ``version``, or (no body) the registry's champion. Needs ``Authorization: Bearer <token>``."""
        self._admin(authorization)
        body = body or ReloadRequest()
        t0 = time.perf_counter()
        previous = self.state.version if self.state is not None else None
        try:
            if body.model_dir is not None:
                model_dir, version = resolve_model(self.cfg, body.model_dir, body.version)
            else:
                model_dir, version = await asyncio.to_thread(self._registry_model, body.model, body.version)
            state = await asyncio.to_thread(self._switch, str(model_dir), version, publish=True)
        except ServingError:
            _METRICS.reloads.labels(outcome="failed").inc()
            raise
        _METRICS.reloads.labels(outcome="ok").inc()
        snap = state.cache.peek()
        return ReloadResponse(model_version=state.version, previous_version=previous,
                              as_of=snap.as_of.isoformat() if snap is not None else None,
                              seconds=time.perf_counter() - t0)

    def _registry_model(self, model: str | None, version: str | None) -> tuple[Path, str]:
        try:
            from cryptopredict.registry.manifest import RegistryError
        except ImportError as exc:
            raise ModelUnavailableError(f"the model registry cannot be imported ({exc}); reload with a "
                                        "model_dir") from exc
        try:
            return registry_model(self.cfg, version, model)
        except RegistryError as exc:  # an unknown model or version: the caller's input
            raise ReloadError(f"registry: {exc}") from exc

    # -- dashboard --------------------------------------------------------------------------------------
    async def _latest_per_coin(self, symbols: list[str]) -> tuple[dict[str, Prediction], dict[str, str]]:
        """Every coin's latest prediction (all at once; one by one when that fails, to say which failed)."""
        try:
            return {p.symbol: p for p in await self._predict(symbols, None)}, {}
        except ServingError:
            preds, errors = {}, {}
            for s in symbols:
                try:
                    preds[s] = (await self._predict([s], None))[0]
                except ServingError as exc:
                    errors[s] = str(exc)
            return preds, errors

    async def _monitor_view(self, version: str | None) -> MonitorView:
        """The monitor's view of the served version, recomputed at most every dashboard refresh."""
        if version is None:
            return MonitorView("not available: no model loaded")
        cached = self._monitor_cache
        if cached is not None and cached[1] == version and \
                time.monotonic() - cached[0] < self.cfg.serving.dashboard_refresh_seconds:
            return cached[2]
        if self.prediction_log is not None:
            await asyncio.to_thread(self._flush_log)
        view = await asyncio.to_thread(monitor_view, self.cfg, version, self.now())
        self._monitor_cache = (time.monotonic(), version, view)
        return view

    def _flush_log(self) -> None:
        try:
            self.prediction_log.flush()
        except OSError as exc:  # the rows stay queued; the monitor reads what is written
            log.warning("prediction log flush failed: %s", exc)

    async def _dashboard_data(self) -> DashboardData:
        state = self.state
        snap = state.cache.peek() if state is not None else None
        view = await self._monitor_view(state.version if state else None)
        symbols = state.cache.symbols if state is not None else list(self.cfg.ingest.symbols)
        preds, errors = await self._latest_per_coin(symbols)  # this bar's cached answers, once computed
        error = "; ".join(sorted(set(errors.values()))) or None
        coins = [CoinView(symbol=s, prediction=preds.get(s), error=errors.get(s),
                          rolling_accuracy=view.accuracy.get(s, (None, 0))[0],
                          resolved=view.accuracy[s][1] if s in view.accuracy else None) for s in symbols]
        data = DashboardData(model_version=state.version if state else None,
                             as_of=snap.as_of.isoformat() if snap else None,
                             data_age_hours=snap.age_hours(self.now()) if snap else None,
                             coins=coins, monitor=view.status, accuracy_window_hours=view.window_hours,
                             drift=view.drift, monitor_notes=view.notes, error=error)
        return data

    @api.get("/dashboard", response_class=HTMLResponse)
    async def dashboard(self) -> HTMLResponse:
        """The latest prediction per coin, its uncertainty, and the monitor's rolling accuracy and drift."""
        data = await self._dashboard_data()
        return HTMLResponse(render_dashboard(data, self.cfg.serving.dashboard_refresh_seconds))

    @api.get(DATA_PATH, response_model=DashboardData)
    async def dashboard_data(self) -> DashboardData:
        return await self._dashboard_data()

    @api.get(PLOTLY_PATH, include_in_schema=False)
    async def plotly_bundle(self) -> Response:
        return Response(plotly_js(), media_type="application/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})


# ----------------------------------------------------------------------------------------------- builder

def _actor_options(opts: DeploymentOptions) -> dict[str, Any]:
    out: dict[str, Any] = {"num_cpus": opts.num_cpus}
    if opts.num_gpus > 0:
        out["num_gpus"] = opts.num_gpus
    return out


def app_config(args: dict[str, Any] | None) -> Config:
    """The Config an application is built from: ``config_json``, or ``config`` + ``overrides``."""
    args = dict(args or {})
    if args.get("config_json") is not None:
        cfg = Config.model_validate(args["config_json"])
    else:
        cfg = load_config(args.get("config"), [str(o) for o in args.get("overrides") or []])
    return serving_paths(cfg)


def serving_paths(cfg: Config) -> Config:
    """``absolute_paths`` plus the registry and the prediction log: replicas run in other directories."""
    out = absolute_paths(cfg)
    for section, name in ((out.registry, "root"), (out.registry, "cache_dir"), (out.monitoring, "log_root")):
        value = getattr(section, name)
        if value and "://" not in value:
            setattr(section, name, str(Path(value).expanduser().resolve()))
    return out


def build_app(args: dict[str, Any] | None = None) -> Any:
    """The Serve application (see the module docstring for ``args``)."""
    args = dict(args or {})
    cfg = app_config(args)
    sc = cfg.serving
    model_dir, version = resolve_model(cfg, args.get("model_dir"), args.get("version"))
    meta = load_model_meta(Path(model_dir).resolve(), version)
    directory = str(meta.directory)
    members = {}
    for member in meta.members:
        opts = sc.members.get(member, DeploymentOptions())
        device = "cuda" if opts.num_gpus > 0 else sc.device
        members[member] = BaseModelDeployment.options(
            name=member, num_replicas=opts.num_replicas, max_ongoing_requests=opts.max_ongoing_requests,
            ray_actor_options=_actor_options(opts),
            user_config={"max_batch_size": opts.max_batch_size, "batch_wait_timeout_s": opts.batch_wait_timeout_s},
        ).bind(member, directory, version, device, sc.keep_versions)
    board = ModelBoard.options(name=BOARD_NAME).bind(version, directory)
    ing = sc.ingress
    # the clock and the data-age limit travel in user_config only: changing them reconfigures the running
    # ingress in place instead of restarting it
    init_cfg = cfg.model_copy(deep=True)
    init_cfg.serving.fixed_now = None
    init_cfg.serving.max_data_age_hours = type(sc)().max_data_age_hours
    return Ingress.options(
        name=INGRESS_NAME, num_replicas=ing.num_replicas, max_ongoing_requests=ing.max_ongoing_requests,
        ray_actor_options=_actor_options(ing),
        user_config={"fixed_now": None if sc.fixed_now is None else _utc(sc.fixed_now).isoformat(),
                     "max_data_age_hours": sc.max_data_age_hours},
    ).bind(members, board, init_cfg.model_dump(mode="json"), directory, version,
           admin_digest_from_env(sc.admin_token_env))
