"""The plain baseline server: the Serve app's prediction routes in ONE process, FastAPI + uvicorn, no Ray.

It exists to measure what Ray Serve costs and buys (``benchmarks/serve_load.py`` drives both with the same
load). Everything a prediction goes through is the Serve app's own code, in one process:

```
HTTP ─► uvicorn (1 worker) ─► FastAPI ─┬─ cached answer of (model version, bar, symbol) ──────────► Prediction
                                       └─ queue ─► one compute thread: per member MemberRunner.run_many
                                          (requests queued while a batch runs form the next batch, at most
                                          ``max_batch_size``: the analogue of @serve.batch) ─► FusionStep.fuse
                                          per request ─► Prediction
background thread: SnapshotCache.get() every serving.snapshot_check_seconds (request-time features of the
latest bar, rebuilt when the lake's last bar moves); requests read SnapshotCache.peek()
```

Same as the Serve app: the model (``resolve_model``: ``--model-dir`` / ``serving.model_dir``, else the
registry's champion), the snapshot, member and fusion steps (``serving/predictor.py``), the request and
response schemas (``serving/schemas.py``), the checks and their status codes (unknown symbol 404, malformed
body or wrong horizon 422 in FastAPI's shape, body over ``serving.max_body_bytes`` 413, stale data or no
model 503, always ``{"detail": ...}``), the per-bar answer cache (``serving.cache_predictions``;
``Cache-Control: no-cache`` recomputes), the prediction log (``serving.log_predictions``) and the request
metrics middleware. The clock is ``serving.fixed_now`` when set, else the wall clock.

Not here: ``/admin/reload``, the dashboard, several replicas. Routes: ``POST /predict``, ``POST
/predict/batch``, ``GET /supported_coins``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``.

Run: ``python -m cryptopredict.serving.plain --config configs/default.yaml --port 8001`` (or
``--config-json FILE`` with a dumped Config; ``--set key=value`` overrides; ``--model-dir``/``--version``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response

from cryptopredict.config import Config, load_config
from cryptopredict.serving.http import BodyLimitMiddleware, ServeMetrics
from cryptopredict.serving.predictor import (
    Clock,
    HorizonMismatchError,
    ModelNotLoadedError,
    Predictor,
    ServingError,
    Snapshot,
    StaleDataError,
    check_fresh,
    checked_snapshot,
    fixed_clock,
    member_batch,
    resolve_model,
    wall_clock,
)
from cryptopredict.serving.schemas import (
    BatchPrediction,
    BatchPredictRequest,
    ErrorBody,
    Health,
    Prediction,
    PredictRequest,
    Readiness,
    SupportedCoins,
)

log = logging.getLogger("cryptopredict.plain")

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown symbol"},
    413: {"model": ErrorBody, "description": "request body too large"},
    503: {"model": ErrorBody, "description": "stale data, or no model loaded"},
}


class ComputeError(ServingError):
    """A member or the fusion failed (the Serve app's "base model failed": 503)."""

    status = 503


def _no_cache(cache_control: str | None) -> bool:
    return bool(cache_control) and "no-cache" in cache_control.lower()


def config_clock(cfg: Config) -> Clock:
    """``serving.fixed_now`` as a clock when set, else the wall clock."""
    return wall_clock if cfg.serving.fixed_now is None else fixed_clock(cfg.serving.fixed_now)


@dataclass
class _Job:
    snap: Snapshot
    symbols: list[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclass
class PlainService:
    """The state of one plain server: the in-process ``Predictor`` (loaded in the background), the answer
    cache, the compute thread and its batching queue."""

    cfg: Config
    model_dir: str | None
    version: str | None
    clock: Clock
    max_batch_size: int
    predictor: Predictor | None = None
    load_error: str | None = None
    refresh_error: str | None = None
    answers: dict[tuple[str, str], Prediction] = field(default_factory=dict)  # (snapshot id, symbol)
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    batches: int = 0
    batched_requests: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plain-compute")
        self._queue: asyncio.Queue[_Job] | None = None
        self._batcher: asyncio.Task | None = None
        self._thread: threading.Thread | None = None
        self.prediction_log = None
        if self.cfg.serving.log_predictions:
            from cryptopredict.monitoring.log import PredictionLogger

            self.prediction_log = PredictionLogger.from_config(self.cfg, registry=self.metrics.registry)

    # -- life cycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._batcher = asyncio.create_task(self._batch_loop())
        self._thread = threading.Thread(target=self._background, daemon=True, name="plain-refresh")
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._batcher is not None:
            self._batcher.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.prediction_log is not None:
            self.prediction_log.close()

    def _background(self) -> None:
        """Load the model and compute the first snapshot, then keep the snapshot current."""
        while not self._stop.is_set() and self.predictor is None:
            try:
                model_dir, version = resolve_model(self.cfg, self.model_dir, self.version)
                predictor = Predictor(self.cfg, model_dir, version, clock=self.clock)
                predictor.cache.get()
                self.predictor = predictor
                self.metrics.set_version(predictor.version)
                log.info("serving model %s from %s", predictor.version, model_dir)
            except Exception as exc:  # noqa: BLE001 - /readyz reports it; retried
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.warning("loading the model failed (retrying): %s", self.load_error)
                self._stop.wait(5.0)
        while not self._stop.wait(self.cfg.serving.snapshot_check_seconds or 1.0):
            try:
                self.predictor.cache.get()  # type: ignore[union-attr]
                self.refresh_error = None
            except Exception as exc:  # noqa: BLE001 - keep serving the last snapshot until it is stale
                self.refresh_error = f"{type(exc).__name__}: {exc}"
                log.warning("snapshot refresh failed: %s", self.refresh_error)

    def current(self) -> Predictor:
        if self.predictor is None:
            raise ModelNotLoadedError(f"no model loaded yet: {self.load_error or 'loading'}")
        return self.predictor

    # -- prediction -------------------------------------------------------------------------------------
    async def predict(self, symbols: list[str], horizon: int | None, *, fresh: bool = False) -> list[Prediction]:
        """As the Serve ingress's ``_predict``: checks, the per-bar cache, else members + fusion."""
        p = self.current()
        snap, unique = checked_snapshot(p.meta, p.cache, symbols, horizon, self.clock(),
                                        self.cfg.serving.max_data_age_hours, self.refresh_error)
        use_cache = self.cfg.serving.cache_predictions
        if use_cache and not fresh and all((snap.id, s) in self.answers for s in unique):
            return [self.answers[(snap.id, s)] for s in symbols]
        loop = asyncio.get_running_loop()
        job = _Job(snap, unique, loop.create_future(), loop)
        assert self._queue is not None
        self._queue.put_nowait(job)
        preds: list[Prediction] = await job.future
        by_symbol = {q.symbol: q for q in preds}
        if use_cache:
            if any(key[0] != snap.id for key in self.answers):  # a new bar: drop the old answers
                self.answers = {k: v for k, v in self.answers.items() if k[0] == snap.id}
            self.answers.update({(snap.id, s): q for s, q in by_symbol.items()})
        return [by_symbol[s] for s in symbols]

    async def _batch_loop(self) -> None:
        """Take the queued requests (at most ``max_batch_size``) and run them together in the compute thread."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self.max_batch_size and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            try:
                results = await loop.run_in_executor(self._executor, self._compute, jobs)
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
                log.error("compute failed: %r", exc)
                err = ComputeError(f"prediction failed ({type(exc).__name__}); retry")
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(err)
                continue
            for j, res in zip(jobs, results, strict=True):
                if not j.future.done():
                    j.future.set_result(res)

    def _compute(self, jobs: list[_Job]) -> list[list[Prediction]]:
        """Every member once over all jobs' rows (``run_many`` merges them), then the fusion per job."""
        p = self.current()
        self.batches += 1
        self.batched_requests += len(jobs)
        per_member = {m: runner.run_many([member_batch(j.snap, m, j.symbols) for j in jobs])
                      for m, runner in p.members.items()}
        out = []
        for i, j in enumerate(jobs):
            outputs = {m: per_member[m][i] for m in p.members}
            out.append(p.fusion.fuse(outputs, [j.snap.sigma.get(s, float("nan")) for s in j.symbols], j.snap.as_of))
        return out

    def log_served(self, preds: list[Prediction], t0: float, route: str) -> None:
        if self.prediction_log is not None:
            self.prediction_log.log_many(preds, (time.perf_counter() - t0) * 1000.0,
                                         request_time=self.clock().timestamp(), route=route)

    def readiness(self) -> Readiness:
        p = self.predictor
        if p is None:
            return Readiness(ready=False, reason=f"no model loaded: {self.load_error or 'loading'}")
        snap = p.cache.peek()
        base: dict[str, Any] = {"model_version": p.version}
        if snap is None:
            return Readiness(ready=False, reason=f"no features computed yet: {self.refresh_error or 'computing'}",
                             **base)
        now = self.clock()
        base.update(as_of=snap.as_of.isoformat(), data_age_hours=snap.age_hours(now),
                    members={m: [p.version] for m in p.members})
        try:
            check_fresh(snap, now, self.cfg.serving.max_data_age_hours)
        except StaleDataError as exc:
            return Readiness(ready=False, reason=str(exc), **base)
        return Readiness(ready=True, **base)


def create_app(cfg: Config, model_dir: str | Path | None = None, version: str | None = None, *,
               clock: Clock | None = None, max_batch_size: int | None = None) -> FastAPI:
    """The plain FastAPI application (the model loads in the background once it starts; ``/readyz`` says
    when it is ready). ``max_batch_size``: requests one compute step takes at most (default: the largest
    ``max_batch_size`` of ``serving.members``; 1 runs every request alone)."""
    batch = max_batch_size or max((o.max_batch_size for o in cfg.serving.members.values()), default=16)
    service = PlainService(cfg, None if model_dir is None else str(model_dir), version, clock or config_clock(cfg),
                           int(batch))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="cryptopredict (plain)", version="1", lifespan=lifespan,
                  description="The Serve app's prediction routes in one process, without Ray (a baseline).")
    app.state.service = service
    limit = cfg.serving.max_body_bytes
    app.add_middleware(BodyLimitMiddleware, limit=lambda: limit)
    app.add_middleware(lambda inner: service.metrics.middleware(inner))  # outermost: counts 413s too

    @app.exception_handler(ServingError)
    async def _serving_error(_: Request, exc: ServingError) -> JSONResponse:
        if isinstance(exc, HorizonMismatchError):  # the shape of FastAPI's own 422, as in the Serve app
            return JSONResponse({"detail": [{"loc": ["body", "horizon"], "msg": str(exc), "type": "value_error"}]},
                                status_code=422)
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.post("/predict", response_model=Prediction, responses=ERRORS)
    async def predict(body: PredictRequest, cache_control: str | None = Header(None)) -> Prediction:
        """The latest prediction of one coin (``Cache-Control: no-cache`` recomputes it)."""
        t0 = time.perf_counter()
        preds = await service.predict([body.symbol], body.horizon, fresh=_no_cache(cache_control))
        service.log_served(preds, t0, "/predict")
        return preds[0]

    @app.post("/predict/batch", response_model=BatchPrediction, responses=ERRORS)
    async def predict_batch(body: BatchPredictRequest, cache_control: str | None = Header(None)) -> BatchPrediction:
        t0 = time.perf_counter()
        preds = await service.predict(list(body.symbols), body.horizon, fresh=_no_cache(cache_control))
        service.log_served(list({p.symbol: p for p in preds}.values()), t0, "/predict/batch")
        return BatchPrediction(predictions=preds)

    @app.get("/supported_coins", response_model=SupportedCoins, responses={503: ERRORS[503]})
    async def supported_coins() -> SupportedCoins:
        p = service.current()
        return SupportedCoins(symbols=p.cache.symbols, horizon=p.meta.horizon, model_version=p.version)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health()

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz() -> JSONResponse:
        ready = service.readiness()
        return JSONResponse(ready.model_dump(mode="json"), status_code=200 if ready.ready else 503)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        snap = service.predictor.cache.peek() if service.predictor is not None else None
        if snap is not None:
            service.metrics.data_age.set(snap.age_hours(service.clock()) * 3600.0)
            service.metrics.as_of.set(snap.as_of.timestamp())
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m cryptopredict.serving.plain", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="config YAML (default: the built-in defaults)")
    parser.add_argument("--config-json", default=None, help="a dumped Config (JSON file); wins over --config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="dotted key=value override")
    parser.add_argument("--model-dir", default=None, help="saved ensemble directory (default: serving.model_dir, "
                        "else the registry's champion)")
    parser.add_argument("--version", default=None, help="version label of --model-dir (default: its name)")
    parser.add_argument("--host", default=None, help="default: serving.host")
    parser.add_argument("--port", type=int, default=None, help="default: serving.port")
    parser.add_argument("--max-batch-size", type=int, default=None, help="requests per compute step (1: each alone)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.config_json:
        cfg = Config.model_validate(json.loads(Path(args.config_json).read_text()))
    else:
        cfg = load_config(args.config, args.overrides)
    app = create_app(cfg, args.model_dir, args.version, max_batch_size=args.max_batch_size)
    uvicorn.run(app, host=args.host or cfg.serving.host, port=args.port or cfg.serving.port, workers=1,
                log_level=args.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
