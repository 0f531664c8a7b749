"""The Ray Serve application: one deployment per base model, a FastAPI ingress that fuses them.

```
HTTP ─► (proxy) ─► ingress (FastAPI) ─ cached answer (version, bar, symbol) as JSON bytes ─────────► 200
                   │ snapshot of the latest bar (per model version); requests that need the models queue
                   │ and go together (one batch) ─┬─► transformer ─┐  each its own deployment: replicas,
                   │                              ├─► bilstm      ─┤  CPUs/GPUs, @serve.batch; holds the
                   │                              ├─► cnn_lstm    ─┤  snapshot panels it was sent
                   │                              └─► gnn         ─┘
                   └─ fusion + risk (fusion thread) ◄── member outputs (all of one model version) ─► Prediction
model_board: which model source is served (for every ingress replica, and for replicas restarted later)
```

The request path is ``cryptopredict.serving.predictor``'s, split across processes: the ingress holds the
snapshot (request-time features of the latest bar, recomputed in a background thread when the lake's last
bar moves) and the fusion; each base-model deployment holds its own net only, and the snapshot panels it
was sent. Requests that need the base models are batched in the ingress: the ones queued while a batch
runs form the next (``serving.ingress.max_batch_size``, ``serving.ingress_batches_in_flight``), and each
batch is ONE call per member (``MemberRequest``: symbol positions; the panel travels only when the
replica answers ``SnapshotMissing``, once per bar). The fusion and the JSON serialisation run in a
thread, never on the event loop. Every member input and output carries the model version, and the fusion
refuses outputs of another version. An answer is deterministic given (model version, latest bar, symbol),
so it is computed once per bar (``serving.cache_predictions``; ``Cache-Control: no-cache`` recomputes) and
kept with its JSON body. Every served prediction goes to the monitor's prediction log
(``monitoring/log.py``, ``serving.log_predictions``).

Models are passed around as ``ModelSource`` s (a registry version, or a directory), never as a path of the
node that resolved them: every replica fetches a registry version into its own node's cache and checks it
against the manifest (``predictor.fetch_registered``), so members and ingress replicas can run anywhere.

Serve modes: the app runs under Serve's defaults and under Ray 2.60's throughput-optimized mode
(``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` in the Ray processes' environment: direct ingress on the ingress
replica's own port, gRPC between deployments, replica code on the replica's event loop). In that mode a
handle cannot be used from a thread other than the replica's loop, so the ingress's own threads call the
other deployments through it (``Ingress._blocking_call``).

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
from cryptopredict.serving.http import (
    AuthError,
    BodyLimitMiddleware,
    ServeMetrics,
    admin_digest_from_env,
    check_bearer,
)
from cryptopredict.serving.monitor_view import MonitorView, monitor_view
from cryptopredict.serving.predictor import (
    FusionStep,
    HorizonMismatchError,
    MemberOutput,
    MemberRequest,
    MemberRunner,
    ModelMeta,
    ModelSource,
    PanelCache,
    ServingError,
    Snapshot,
    SnapshotCache,
    SnapshotMissing,
    StaleDataError,
    VersionMismatchError,
    check_fresh,
    checked_snapshot,
    fetch_source,
    load_model_meta,
    model_cache_dir,
    registry_source,
    resolve_source,
    run_member_requests,
    snapshot_positions,
)
from cryptopredict.serving.schemas import (
    BatchPrediction,
    BatchPredictRequest,
    CoinView,
    DashboardData,
    ErrorBody,
    Health,
    Prediction,
    PredictRequest,
    Readiness,
    ReloadRequest,
    ReloadResponse,
    SupportedCoins,
)
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
    ``keep_versions`` model versions loaded; a version it has not seen is loaded from the request's model
    source — a registry version is fetched by this replica itself into ``cache_dir`` on its own node and
    checked against the manifest — so a reload never strands a request and a replica on another node
    needs nothing from the ingress's node. Keeps the snapshot panels it was sent (``PanelCache``): a
    request carries only symbol positions."""

    def __init__(self, member: str, source: dict[str, Any], device: str = "cpu", keep_versions: int = 2,
                 cache_dir: str | None = None) -> None:
        import torch

        torch.set_num_threads(1)
        self.member, self.device, self.keep = member, device, keep_versions
        self.cache_dir = cache_dir
        self._runners: OrderedDict[str, MemberRunner] = OrderedDict()
        self._directories: dict[str, str] = {}
        self._lock = threading.Lock()
        self.panels = PanelCache()
        self._runner(source["version"], source)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config``: the @serve.batch knobs (max_batch_size, batch_wait_timeout_s)."""
        self.predict.set_max_batch_size(int(config.get("max_batch_size", 16)))
        self.predict.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.001)))

    def _runner(self, version: str, source: dict[str, Any] | None) -> MemberRunner:
        with self._lock:
            runner = self._runners.get(version)
            if runner is None:
                if source is None:
                    raise VersionMismatchError(f"{self.member} has no model {version} and no source to load "
                                               "it from")
                src = ModelSource.from_dict(source)
                if src.version != version:
                    raise VersionMismatchError(f"{self.member}: asked for {version}, the source is {src}")
                directory = fetch_source(src, self.cache_dir or model_cache_dir(Config()))
                runner = MemberRunner(load_model_meta(directory, version), self.member, self.device)
                self._runners[version] = runner
                self._directories[version] = str(directory)
                while len(self._runners) > self.keep:
                    gone, _ = self._runners.popitem(last=False)
                    self._directories.pop(gone, None)
                log.info("%s: loaded model %s from %s", self.member, version, directory)
            else:
                self._runners.move_to_end(version)
            return runner

    async def load(self, source: dict[str, Any]) -> list[str]:
        await asyncio.to_thread(self._runner, source["version"], source)
        return self.versions()

    def versions(self) -> list[str]:
        return list(self._runners)

    def describe(self) -> dict[str, Any]:
        """The loaded versions, the local directory each was loaded from, and the snapshots received."""
        return {"member": self.member, "versions": self.versions(), "directories": dict(self._directories),
                "snapshots_received": self.panels.received}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.001)
    async def predict(self, requests: list[MemberRequest]) -> list[MemberOutput | SnapshotMissing]:
        return await asyncio.to_thread(run_member_requests, self._runner, self.panels, requests)


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


@dataclass(frozen=True)
class _Answer:
    """A computed prediction and its JSON body (serialised once, off the event loop)."""

    prediction: Prediction
    body: bytes


@dataclass
class _State:
    """One loaded model version: its snapshots, its fusion, the symbols it serves."""

    meta: ModelMeta
    source: ModelSource
    cache: SnapshotCache
    fusion: FusionStep
    generation: int
    answers: dict[tuple[str, str], _Answer] = field(default_factory=dict)  # (snapshot id, symbol)

    @property
    def version(self) -> str:
        return self.meta.version


@dataclass
class _Job:
    """One HTTP request waiting for the base models: its distinct symbols at one snapshot."""

    state: _State
    snap: Snapshot
    symbols: list[str]
    future: asyncio.Future


def _fuse_jobs(state: _State, snap: Snapshot, jobs: list[_Job], outputs: dict[str, MemberOutput]
               ) -> list[dict[str, _Answer]]:
    """The fusion of the jobs' rows and the JSON bodies; runs in the ingress's fusion thread. A row's
    answer never depends on the other requests of the batch: the rows of all jobs go through the fusion
    in one call only when every row's σ is known (the fusion's only dependence between rows is the median
    that stands in for a missing σ), otherwise each job is fused alone as the in-process Predictor fuses
    one request."""
    sigma = [[snap.sigma.get(s, float("nan")) for s in job.symbols] for job in jobs]
    spans, start = [], 0
    for job in jobs:
        spans.append(np.arange(start, start + len(job.symbols)))
        start += len(job.symbols)
    flat = np.asarray([x for row in sigma for x in row], dtype=float)
    if len(jobs) > 1 and np.all(np.isfinite(flat) & (flat > 0)):
        fused = state.fusion.fuse(outputs, flat, snap.as_of)
        per_job = [[fused[i] for i in span] for span in spans]
    else:
        per_job = [state.fusion.fuse({m: o.take(span) for m, o in outputs.items()}, sig, snap.as_of)
                   for span, sig in zip(spans, sigma, strict=True)]
    return [{p.symbol: _Answer(p, p.model_dump_json().encode()) for p in preds} for preds in per_job]


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress(api)
class Ingress:
    def __init__(self, members: dict[str, DeploymentHandle], board: DeploymentHandle, config: dict[str, Any],
                 source: dict[str, Any], admin_digest: str | None = None) -> None:
        import torch

        from cryptopredict.data.ingest import open_lake

        torch.set_num_threads(1)
        self.cfg = Config.model_validate(config)
        sc = self.cfg.serving
        _LIMITS["max_body_bytes"] = sc.max_body_bytes
        self.members, self.board = members, board
        try:  # Serve runs the constructor on the replica's user-code event loop
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self.lake = open_lake(self.cfg)
        self.cache_dir = model_cache_dir(self.cfg)
        self.admin_digest = admin_digest or admin_digest_from_env(sc.admin_token_env)
        self.fixed_now: pd.Timestamp | None = None if sc.fixed_now is None else _utc(sc.fixed_now)
        self.max_age_hours = sc.max_data_age_hours
        self.state: _State | None = None
        self.load_error: str | None = None
        self.refresh_error: str | None = None
        self._reload_lock = threading.Lock()
        self._monitor_cache: tuple[float, str, MonitorView] | None = None
        # request batching (created on the replica's event loop by the first request)
        self._fusion_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cryptopredict-fusion")
        self._queue: asyncio.Queue[_Job] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._batcher: asyncio.Task | None = None
        self._batches: set[asyncio.Task] = set()
        self.batches = 0
        self.batched_requests = 0
        self.prediction_log = None
        if sc.log_predictions:
            from cryptopredict.monitoring.log import PredictionLogger

            self.prediction_log = PredictionLogger.from_config(self.cfg, registry=_METRICS.registry)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._background, args=(source,), daemon=True,
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
        pool = getattr(self, "_fusion_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        logger = getattr(self, "prediction_log", None)
        if logger is not None:
            logger.close()

    # -- state ------------------------------------------------------------------------------------------
    def _blocking_call(self, handle: DeploymentHandle, method: str, *args: Any, timeout: float) -> Any:
        """Call another deployment from one of this replica's own threads (the loader and refresher, a
        reload) and wait for the answer. The call is made on the replica's event loop: with Serve's router
        on the replica's loop (throughput-optimized mode) a handle cannot be used from another thread."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return getattr(handle, method).remote(*args).result(timeout_s=timeout)

        async def call() -> Any:
            return await getattr(handle, method).remote(*args)

        return asyncio.run_coroutine_threadsafe(asyncio.wait_for(call(), timeout), loop).result(timeout + 5)

    def now(self) -> pd.Timestamp:
        return self.fixed_now if self.fixed_now is not None else pd.Timestamp.now(tz="UTC")

    def _prepare(self, source: ModelSource, generation: int) -> _State:
        """Fetch and load a model and build its snapshot beside the current one (nothing is swapped here)."""
        from cryptopredict.features.scaling import RobustScaler
        from cryptopredict.registry.manifest import RegistryError

        try:
            directory = fetch_source(source, self.cache_dir)
            meta = load_model_meta(directory, source.version)
        except (OSError, ValueError, RegistryError) as exc:
            raise ReloadError(f"cannot load model {source}: {exc}") from exc
        missing = [m for m in meta.members if m not in self.members]
        if missing:
            raise ReloadError(f"model {source.version} has members {missing} that this application does not "
                              f"deploy (deployed: {sorted(self.members)}); redeploy the application")
        cache = SnapshotCache(self.cfg, self.lake, meta, RobustScaler.load(meta.directory / "scaler.json"))
        current = self.state
        if current is not None and current.cache.features is not None:
            cache.adopt_features(current.cache.features)  # same bar: reuse the request-time features
        try:
            cache.get(force_check=True)
        except ValueError as exc:  # the model's columns are not what the features config computes
            raise ReloadError(f"model {source.version} cannot be served on these features: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - no snapshot yet (e.g. an empty lake): /readyz says why
            self.refresh_error = f"{type(exc).__name__}: {exc}"
            log.warning("model %s loaded without a snapshot: %s", source.version, exc)
        return _State(meta, source, cache,
                      FusionStep(meta, self.cfg.evaluation.risk, self.cfg.serving.interval_level), generation)

    def _switch(self, source: ModelSource, *, publish: bool, generation: int = 0) -> _State:
        """Load new, make every base model load it, then swap (requests in flight keep the old state)."""
        with self._reload_lock:
            t0 = time.perf_counter()
            new = self._prepare(source, generation)
            for member in new.meta.members:
                try:
                    self._blocking_call(self.members[member], "load", source.to_dict(), timeout=300)
                except Exception as exc:  # reported as a failed reload, the old model stays
                    raise ModelUnavailableError(f"base model {member} could not load {source.version}: "
                                                f"{type(exc).__name__}: {str(exc)[:300]}") from exc
            if publish:
                board = self._blocking_call(self.board, "publish", source.to_dict(), timeout=30)
                new.generation = int(board["generation"])
            previous = self.state
            self.state = new
            self.load_error = None
            _METRICS.set_version(source.version)
            log.info("serving model %s (was %s), switched in %.2f s", source,
                     previous.version if previous else None, time.perf_counter() - t0)
            return new

    def _background(self, source: dict[str, Any]) -> None:
        """Load the first model (the board's, if a reload published one), then keep the snapshot current
        and follow the board."""
        sc = self.cfg.serving
        while not self._stop.is_set() and self.state is None:
            try:
                board = self._blocking_call(self.board, "get", timeout=30)
                self._switch(ModelSource.from_dict(board["source"]), publish=False,
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
                    board = self._blocking_call(self.board, "get", timeout=10)
                    generation = int(board["generation"])
                    current = self.state  # re-read: a reload on this replica may have finished meanwhile
                    if current is not None and generation > current.generation:
                        if board["version"] != current.version:
                            self._switch(ModelSource.from_dict(board["source"]), publish=False,
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
    async def _predict(self, symbols: list[str], horizon: int | None, *, fresh: bool = False) -> list[_Answer]:
        """Answers for ``symbols`` at the latest bar; with ``serving.cache_predictions`` each (version, bar,
        symbol) is computed once unless ``fresh``."""
        state = self._current()  # this request stays on this version, whatever reloads meanwhile
        snap, unique = checked_snapshot(state.meta, state.cache, symbols, horizon, self.now(), self.max_age_hours,
                                        self.refresh_error)
        use_cache = self.cfg.serving.cache_predictions
        if use_cache and not fresh:
            answers = state.answers
            if all((snap.id, s) in answers for s in unique):
                return [answers[(snap.id, s)] for s in symbols]
        computed = await self._submit(state, snap, unique)
        if use_cache:
            if any(key[0] != snap.id for key in state.answers):  # a new bar: drop the old answers
                state.answers = {k: v for k, v in state.answers.items() if k[0] == snap.id}
            state.answers.update({(snap.id, s): a for s, a in computed.items()})
        return [computed[s] for s in symbols]

    async def _submit(self, state: _State, snap: Snapshot, symbols: list[str]) -> dict[str, _Answer]:
        """Queue one request for the base models; requests queued together go to the members in one call
        each (at most ``serving.ingress.max_batch_size`` requests, ``serving.ingress_batches_in_flight``
        batches at once)."""
        loop = asyncio.get_running_loop()
        if self._batcher is None or self._batcher.done():
            self._queue = asyncio.Queue()
            self._slots = asyncio.Semaphore(self.cfg.serving.ingress_batches_in_flight)
            self._batcher = loop.create_task(self._batch_loop())
        job = _Job(state, snap, symbols, loop.create_future())
        self._queue.put_nowait(job)  # type: ignore[union-attr]
        return await job.future

    async def _batch_loop(self) -> None:
        queue, slots = self._queue, self._slots
        assert queue is not None and slots is not None
        limit = self.cfg.serving.ingress.max_batch_size
        while True:
            first = await queue.get()
            await slots.acquire()  # requests arriving meanwhile join this batch
            jobs = [first]
            while len(jobs) < limit and not queue.empty():
                jobs.append(queue.get_nowait())
            task = asyncio.get_running_loop().create_task(self._run_batch(jobs))
            self._batches.add(task)
            task.add_done_callback(lambda t: (self._batches.discard(t), slots.release()))

    async def _run_batch(self, jobs: list[_Job]) -> None:
        groups: dict[tuple[int, str], list[_Job]] = {}
        for job in jobs:  # a reload or a new bar can split one batch
            groups.setdefault((id(job.state), job.snap.id), []).append(job)
        self.batches += 1
        self.batched_requests += len(jobs)
        await asyncio.gather(*(self._run_group(group) for group in groups.values()))

    async def _run_group(self, jobs: list[_Job]) -> None:
        state, snap = jobs[0].state, jobs[0].snap
        try:
            positions = np.concatenate([snapshot_positions(snap, j.symbols) for j in jobs])
            members = state.meta.members
            results = await asyncio.gather(*(self._call_member(state, m, snap, positions) for m in members),
                                           return_exceptions=True)
            outputs: dict[str, MemberOutput] = {}
            for m, res in zip(members, results, strict=True):
                if isinstance(res, BaseException):
                    log.error("base model %s failed: %r", m, res)
                    raise ModelUnavailableError(f"base model {m} failed ({type(res).__name__}); retry")
                outputs[m] = res
            answers = await asyncio.get_running_loop().run_in_executor(
                self._fusion_pool, _fuse_jobs, state, snap, jobs, outputs)
        except Exception as exc:  # noqa: BLE001 - every request of the group gets the error
            err = exc if isinstance(exc, ServingError) else ModelUnavailableError(
                f"prediction failed ({type(exc).__name__}); retry")
            if not isinstance(exc, ServingError):
                log.error("prediction failed: %r", exc)
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(err)
            return
        for j, a in zip(jobs, answers, strict=True):
            if not j.future.done():
                j.future.set_result(a)

    async def _call_member(self, state: _State, member: str, snap: Snapshot, positions: np.ndarray
                           ) -> MemberOutput:
        """One base model's outputs for the rows; the snapshot's panel is sent only if the replica that
        answers does not hold it yet."""
        request = MemberRequest(state.version, snap.id, positions, state.source.to_dict())
        out = await self.members[member].predict.remote(request)
        if isinstance(out, SnapshotMissing):
            request.panel = snap.panel
            out = await self.members[member].predict.remote(request)
            if isinstance(out, SnapshotMissing):
                raise ModelUnavailableError(f"base model {member} did not keep snapshot {snap.id}; retry")
        return out

    @api.post("/predict", response_model=Prediction, responses=ERRORS)
    async def predict(self, body: PredictRequest, cache_control: str | None = Header(None)) -> Response:
        """The latest prediction of one coin (``horizon``: null or the model's). ``Cache-Control: no-cache``
        recomputes it instead of answering from this bar's cache."""
        t0 = time.perf_counter()
        answers = await self._predict([body.symbol], body.horizon, fresh=_no_cache(cache_control))
        self._log([answers[0].prediction], t0, "/predict")
        return Response(answers[0].body, media_type="application/json")  # the Prediction, serialised once

    @api.post("/predict/batch", response_model=BatchPrediction, responses=ERRORS)
    async def predict_batch(self, body: BatchPredictRequest, cache_control: str | None = Header(None)
                            ) -> Response:
        """The latest predictions of several coins, in the order asked (``Cache-Control: no-cache``: as for
        ``/predict``)."""
        t0 = time.perf_counter()
        answers = await self._predict(list(body.symbols), body.horizon, fresh=_no_cache(cache_control))
        self._log(list({a.prediction.symbol: a.prediction for a in answers}.values()), t0, "/predict/batch")
        return Response(b'{"predictions":[' + b",".join(a.body for a in answers) + b"]}",  # a BatchPrediction
                        media_type="application/json")

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
                source = resolve_source(self.cfg, body.model_dir, body.version)
            else:
                source = await asyncio.to_thread(self._registry_source, body.model, body.version)
            state = await asyncio.to_thread(self._switch, source, publish=True)
        except ServingError:
            _METRICS.reloads.labels(outcome="failed").inc()
            raise
        _METRICS.reloads.labels(outcome="ok").inc()
        snap = state.cache.peek()
        return ReloadResponse(model_version=state.version, previous_version=previous,
                              as_of=snap.as_of.isoformat() if snap is not None else None,
                              seconds=time.perf_counter() - t0)

    def _registry_source(self, model: str | None, version: str | None) -> ModelSource:
        try:
            from cryptopredict.registry.manifest import RegistryError
        except ImportError as exc:
            raise ModelUnavailableError(f"the model registry cannot be imported ({exc}); reload with a "
                                        "model_dir") from exc
        try:
            return registry_source(self.cfg, version, model)
        except RegistryError as exc:  # an unknown model or version: the caller's input
            raise ReloadError(f"registry: {exc}") from exc

    # -- dashboard --------------------------------------------------------------------------------------
    async def _latest_per_coin(self, symbols: list[str]) -> tuple[dict[str, Prediction], dict[str, str]]:
        """Every coin's latest prediction (all at once; one by one when that fails, to say which failed)."""
        try:
            return {a.prediction.symbol: a.prediction for a in await self._predict(symbols, None)}, {}
        except ServingError:
            preds, errors = {}, {}
            for s in symbols:
                try:
                    preds[s] = (await self._predict([s], None))[0].prediction
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
    for section, name in ((out.registry, "root"), (out.registry, "cache_dir"), (out.serving, "model_cache_dir"),
                          (out.monitoring, "log_root")):
        value = getattr(section, name)
        if value and "://" not in value:
            setattr(section, name, str(Path(value).expanduser().resolve()))
    return out


def build_app(args: dict[str, Any] | None = None) -> Any:
    """The Serve application (see the module docstring for ``args``)."""
    args = dict(args or {})
    cfg = app_config(args)
    sc = cfg.serving
    source = resolve_source(cfg, args.get("model_dir"), args.get("version"))
    cache_dir = str(model_cache_dir(cfg))
    meta = load_model_meta(fetch_source(source, cache_dir), source.version)  # which members to deploy
    logging_config = {"enable_access_log": sc.access_log}
    members = {}
    for member in meta.members:
        opts = sc.members.get(member, DeploymentOptions())
        device = "cuda" if opts.num_gpus > 0 else sc.device
        members[member] = BaseModelDeployment.options(
            name=member, num_replicas=opts.num_replicas, max_ongoing_requests=opts.max_ongoing_requests,
            ray_actor_options=_actor_options(opts), logging_config=logging_config,
            user_config={"max_batch_size": opts.max_batch_size, "batch_wait_timeout_s": opts.batch_wait_timeout_s},
        ).bind(member, source.to_dict(), device, sc.keep_versions, cache_dir)
    board = ModelBoard.options(name=BOARD_NAME, logging_config=logging_config).bind(source.to_dict())
    ing = sc.ingress
    # the clock and the data-age limit travel in user_config only: changing them reconfigures the running
    # ingress in place instead of restarting it
    init_cfg = cfg.model_copy(deep=True)
    init_cfg.serving.fixed_now = None
    init_cfg.serving.max_data_age_hours = type(sc)().max_data_age_hours
    return Ingress.options(
        name=INGRESS_NAME, num_replicas=ing.num_replicas, max_ongoing_requests=ing.max_ongoing_requests,
        ray_actor_options=_actor_options(ing), logging_config=logging_config,
        user_config={"fixed_now": None if sc.fixed_now is None else _utc(sc.fixed_now).isoformat(),
                     "max_data_age_hours": sc.max_data_age_hours},
    ).bind(members, board, init_cfg.model_dump(mode="json"), source.to_dict(),
           admin_digest_from_env(sc.admin_token_env))
