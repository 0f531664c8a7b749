"""Load test of ``POST /predict``: the Ray Serve app against a plain single-process FastAPI + uvicorn server
serving the same model, each in two modes.

Usage: OMP_NUM_THREADS=1 python benchmarks/serve_load.py [--seconds 120] [--clients 16] [--warmup 5]
           [--model-dir DIR [--version V]] [--lake-root DIR] [--fixed-now ISO] [--config configs/default.yaml]
           [--set key=value ...] [--servers serve,plain[,floor]] [--modes cached,no-cache]
           [--serve-mode throughput|default] [--serve-entry direct|proxy] [--json PATH]

Servers (one after the other, never two at once):

* ``serve``: ``cryptopredict.serving.app:build_app`` (one deployment per base model, the model board, the
  FastAPI fusion ingress) started in this process with ``serve.run`` on a local Ray limited to this machine
  (``ray.num_cpus`` or every core, no dashboard), HTTP proxy on 127.0.0.1:<free port>. Replica counts,
  ``num_cpus`` and the batch settings come from ``serve/config.yaml`` (``--serve-config``; "" keeps the
  ``serving`` section's), as ``serve run serve/config.yaml`` would deploy them. ``--serve-mode``:
  ``throughput`` (default) starts Ray with ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (Ray 2.60: direct ingress,
  gRPC between deployments, replica code on the replica's event loop) and sends the load to the ingress
  replica's own port (direct ingress, 127.0.0.1:30000+; ``--serve-entry proxy`` sends it to the proxy
  instead); ``default`` keeps Serve's defaults (the load goes through the proxy).
* ``floor``: a trivial Serve deployment (FastAPI ingress, the app ingress's CPU share) whose /predict
  answers a constant body of a real answer's size, in the same Serve mode and entry: what Serve itself
  costs on this machine, with no model (run once, labelled "Serve floor").
* ``plain``: ``python -m cryptopredict.serving.plain`` as a subprocess, one uvicorn worker on
  127.0.0.1:<free port>: the same model, snapshot, member and fusion code in one process, no Ray; requests
  that queue while the compute thread is busy run through the members together (at most the members'
  ``max_batch_size``, ``--plain-max-batch-size``), as ``@serve.batch`` does in the Serve app.

Both become ready the same way: ``/healthz`` answers 200, then ``/readyz`` says ready (not an open port:
Serve's proxy answers 404 for a while). Model: ``--model-dir`` (label ``--version``), else
``serving.model_dir``, else the registry's champion of ``registry.model`` (``serving.predictor.resolve_model``).
Clock: ``serving.fixed_now`` = ``--fixed-now``, by default one hour after the close of the lake's latest bar
(replaying stored data; otherwise the app answers 503 stale). The prediction log of both servers goes to a
temporary directory (``monitoring.log_root``), not to the project's log.

Modes: ``cached`` — default headers: an answer is computed once per (model version, bar, symbol) and then
served from the server's cache; ``no-cache`` — ``Cache-Control: no-cache`` on every request: every request
runs the four base models and the fusion (the full ensemble per request).

Load: ``--clients`` concurrent asyncio clients (aiohttp, one keep-alive connection each), each sending its
next request as soon as the previous answer arrived, symbols round-robin over ``/supported_coins``;
``--warmup`` seconds first (not counted), then ``--seconds`` measured. Latency: send → whole body read,
over 200 answers; req/s: 200 answers per second of the measured span; errors: non-200 answers by status and
exceptions by type. The load generator runs on the same machine (it takes CPU from the server under test).
Before the load, every symbol is asked once with no-cache from each server, and the two servers' answers
are compared (the same model must give the same predictions). CPU (Linux ``/proc``), over each measured
span, in cores: the server under test (every descendant process of this one: the plain subprocess, or
Ray's processes with the proxy and the replicas), the load generator (this process), and every other
process on the machine — other work that competed for the cores.

Prints figures only; the goal (p50 ≤ 15 ms, p99 ≤ 50 ms, ≥ 100 req/s, 0 errors) is checked and reported,
never adjusted; the exit code is 0 whether it is met or not (1 if a server could not be started).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOAL = {"p50_ms": 15.0, "p99_ms": 50.0, "rps": 100.0, "errors": 0}
MODES = {"cached": ("cached (default headers)", {}),
         "no-cache": ("full ensemble per request (Cache-Control: no-cache)", {"Cache-Control": "no-cache"}),
         "floor": ("Serve floor: a constant answer, no model", {})}  # the floor server's only mode
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
             "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# ----------------------------------------------------------------------------------------------- load driver

@dataclass
class LoadResult:
    """What one measured span of load gave."""

    seconds: float  # measured span: from its start to the last answer
    clients: int
    latencies_ms: list[float] = field(default_factory=list)  # 200 answers only
    errors: Counter = field(default_factory=Counter)  # "HTTP 503" / exception type name → count
    error_samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def requests(self) -> int:
        return self.ok + sum(self.errors.values())

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else math.nan

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else math.nan

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {"requests": self.requests, "ok": self.ok, "errors": self.error_count,
                "errors_by_kind": dict(self.errors), "error_samples": self.error_samples,
                "seconds": self.seconds, "clients": self.clients, "rps": self.rps,
                "p50_ms": self.percentile(50), "p90_ms": self.percentile(90), "p99_ms": self.percentile(99),
                "mean_ms": float(np.mean(lat)) if lat else math.nan, "max_ms": float(np.max(lat)) if lat else math.nan}


async def _client(session: Any, url: str, bodies: list[bytes], counter: itertools.count, deadline: float,
                  headers: dict[str, str], result: LoadResult | None) -> None:
    import aiohttp

    while time.perf_counter() < deadline:
        body = bodies[next(counter) % len(bodies)]
        t0 = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                data = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if result is not None:
                result.errors[type(exc).__name__] += 1
                if len(result.error_samples) < 5:
                    result.error_samples.append(f"{type(exc).__name__}: {exc}"[:300])
            await asyncio.sleep(0.01)  # a dead server must not turn this into a busy loop
            continue
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        if result is None:
            continue
        if status == 200:
            result.latencies_ms.append(elapsed_ms)
        else:
            result.errors[f"HTTP {status}"] += 1
            if len(result.error_samples) < 5:
                result.error_samples.append(f"HTTP {status}: {data[:300].decode(errors='replace')}")


async def drive(base_url: str, symbols: list[str], *, seconds: float, clients: int, warmup: float = 0.0,
                headers: dict[str, str] | None = None, timeout: float = 30.0, path: str = "/predict",
                on_measure: Any = None) -> LoadResult:
    """``clients`` concurrent keep-alive clients POSTing ``{"symbol": s}`` (s round-robin over ``symbols``)
    for ``warmup`` seconds (discarded) and then ``seconds`` (measured). ``on_measure(CpuSnapshot)`` is
    called as the measured span starts."""
    import aiohttp

    url = base_url.rstrip("/") + path
    bodies = [json.dumps({"symbol": s}).encode() for s in symbols]
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    counter = itertools.count()
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        if warmup > 0:
            end = time.perf_counter() + warmup
            await asyncio.gather(*(_client(session, url, bodies, counter, end, hdrs, None) for _ in range(clients)))
        result = LoadResult(seconds=0.0, clients=clients)
        if on_measure is not None:
            on_measure(CpuSnapshot.take())
        t0 = time.perf_counter()
        end = t0 + seconds
        await asyncio.gather(*(_client(session, url, bodies, counter, end, hdrs, result) for _ in range(clients)))
        result.seconds = time.perf_counter() - t0
    return result


def run_load(base_url: str, symbols: list[str], **kw: Any) -> LoadResult:
    """``drive`` in a fresh event loop."""
    return asyncio.run(drive(base_url, symbols, **kw))


# ----------------------------------------------------------------------------------------------- CPU accounting

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_ticks() -> int:
    """Busy CPU ticks of the whole machine so far (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:9]]
    return sum(values) - values[3] - values[4]


def _process_ticks() -> dict[int, tuple[int, int]]:
    """pid → (parent pid, user + system ticks) of every live process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        out[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return out


@dataclass
class CpuSnapshot:
    """CPU ticks of the machine, of this process, and of its descendants (the servers it started: the plain
    subprocess, or Ray's processes and the Serve replicas)."""

    at: float
    machine: int
    own: int
    children: int

    @classmethod
    def take(cls) -> CpuSnapshot | None:
        try:
            procs, machine = _process_ticks(), _machine_busy_ticks()
        except (OSError, ValueError, IndexError):
            return None  # not Linux: no CPU figures
        me = os.getpid()
        kids: dict[int, list[int]] = {}
        for pid, (ppid, _) in procs.items():
            kids.setdefault(ppid, []).append(pid)
        seen, stack, children = set(), list(kids.get(me, [])), 0
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            children += procs[pid][1]
            stack.extend(kids.get(pid, []))
        return cls(time.monotonic(), machine, procs.get(me, (0, 0))[1], children)


def cpu_use(before: CpuSnapshot | None, after: CpuSnapshot | None) -> dict[str, float]:
    """Cores in use between two snapshots: the servers under test (this process's descendants), this
    process (the load generator; for Serve also the Ray driver), and every other process on the machine."""
    if before is None or after is None or after.at <= before.at:
        return {}
    span = (after.at - before.at) * _HZ

    def cores(a: int, b: int) -> float:
        return max(b - a, 0) / span

    server, own = cores(before.children, after.children), cores(before.own, after.own)
    return {"server_cores": server, "loadgen_cores": own,
            "other_cores": max(cores(before.machine, after.machine) - server - own, 0.0)}


# ----------------------------------------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None,
              timeout: float = 60.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(url: str, timeout: float, alive: Any = None) -> dict[str, Any]:
    """Until ``/healthz`` answers 200 and then ``/readyz`` says ready; returns the readiness body.
    ``alive()`` returning False (a dead subprocess) fails at once."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    for path in ("/healthz", "/readyz"):
        while True:
            if alive is not None and not alive():
                raise RuntimeError(f"the server exited while waiting for {path} ({last})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}{path} not ready within {timeout:g} s ({last})")
            try:
                status, body = http_get(url + path)
                if status == 200:
                    if path == "/readyz":
                        return json.loads(body)
                    break
                last = f"{path}: HTTP {status} {body[:300].decode(errors='replace')}"
            except (OSError, urllib.error.URLError) as exc:
                last = f"{path}: {type(exc).__name__}"
            time.sleep(0.5)
    raise AssertionError("unreachable")


class PlainServer:
    """``python -m cryptopredict.serving.plain`` as a subprocess on 127.0.0.1:<free port>."""

    name = "plain"

    def __init__(self, cfg: Any, model_dir: str | Path, version: str, workdir: Path, *,
                 max_batch_size: int | None = None, port: int | None = None) -> None:
        self.cfg, self.model_dir, self.version, self.workdir = cfg, str(model_dir), version, Path(workdir)
        self.max_batch_size = max_batch_size
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "plain-server.log"

    def start(self, ready_timeout: float = 600.0) -> dict[str, Any]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "plain-config.json"
        config_path.write_text(json.dumps(self.cfg.model_dump(mode="json")))
        cmd = [sys.executable, "-m", "cryptopredict.serving.plain", "--config-json", str(config_path),
               "--model-dir", self.model_dir, "--version", self.version, "--host", "127.0.0.1",
               "--port", str(self.port)]
        if self.max_batch_size:
            cmd += ["--max-batch-size", str(self.max_batch_size)]
        env = {**os.environ, **{k: os.environ.get(k, v) for k, v in LOCAL_ENV.items()}}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        try:
            return wait_ready(self.url, ready_timeout, alive=lambda: self.proc is not None and self.proc.poll() is None)
        except Exception:
            self.stop()
            raise

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None


SERVE_MODES = {
    # RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S: a stopping ingress replica waits 30 s by default for a
    # load balancer to drop it; no load balancer here, so the benchmark does not wait for it
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"},
    "default": {},
}


def direct_ingress_url(app_name: str, timeout: float = 120.0) -> str:
    """The HTTP address of the application's ingress replica itself (direct ingress, Serve in
    throughput-optimized mode): the controller's target groups list the replicas' own ports. Uses the
    Serve client of this driver (``ServeInstanceDetails.target_groups``; the dashboard's
    ``GET /api/serve/applications`` returns the same field)."""
    from ray.serve.context import _get_global_client

    deadline = time.monotonic() + timeout
    while True:
        details = _get_global_client().get_serve_details()
        for group in details.get("target_groups") or []:
            if group.get("app_name") == app_name and str(group.get("protocol")).upper().endswith("HTTP"):
                targets = [t for t in group.get("targets") or [] if "SERVE_REPLICA" in t.get("name", "")]
                if targets:
                    return f"http://{targets[0]['ip']}:{targets[0]['port']}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"no direct-ingress target of {app_name!r} after {timeout:g} s (is Serve in "
                               "throughput-optimized mode? target groups: "
                               f"{json.dumps(details.get('target_groups'), default=str)[:500]})")
        time.sleep(0.5)


class ServeServer:
    """The Ray Serve app, in this process, on a local Ray limited to this machine. ``entry``: ``proxy`` (the
    HTTP proxy on ``port``) or ``direct`` (the ingress replica's own port: Serve's direct ingress, only in
    throughput-optimized mode)."""

    name = "serve"
    app_name = "cryptopredict"

    def __init__(self, cfg: Any, model_dir: str | Path, version: str, *, port: int | None = None,
                 entry: str = "proxy") -> None:
        self.cfg, self.model_dir, self.version = cfg, str(model_dir), version
        self.port = port or free_port()
        self.proxy_url = f"http://127.0.0.1:{self.port}"
        self.url = self.proxy_url
        self.entry = entry
        self.started_ray = False
        self.num_cpus: int | None = None

    def _application(self) -> Any:
        from cryptopredict.serving.app import build_app

        return build_app({"config_json": self.cfg.model_dump(mode="json"), "model_dir": self.model_dir,
                          "version": self.version})

    def start(self, ready_timeout: float = 600.0) -> dict[str, Any]:
        import ray
        from ray import serve

        for k, v in LOCAL_ENV.items():
            os.environ.setdefault(k, v)
        self.num_cpus = self.cfg.ray.num_cpus or os.cpu_count()
        self.started_ray = True
        try:
            for attempt in (1, 2):  # Ray gives its raylet 30 s to register: a busy 2-core box can miss that once
                try:
                    ray.init(address="local", num_cpus=self.num_cpus,
                             object_store_memory=self.cfg.ray.object_store_memory_mb * 1024**2,
                             include_dashboard=False, log_to_driver=False)
                    break
                except Exception as exc:
                    ray.shutdown()
                    if attempt == 2:
                        raise
                    print(f"[serve] ray.init failed ({type(exc).__name__}: {exc}); retrying once")
            serve.start(http_options={"host": "127.0.0.1", "port": self.port})
            serve.run(self._application(), name=self.app_name, route_prefix="/")
            ready = wait_ready(self.proxy_url, ready_timeout)
            if self.entry == "direct":
                self.url = direct_ingress_url(self.app_name)
                ready = wait_ready(self.url, ready_timeout)
            return ready
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        import ray
        from ray import serve

        if not self.started_ray:
            return
        try:
            if ray.is_initialized():
                serve.shutdown()
        except Exception as exc:  # noqa: BLE001 - Ray is shut down below either way
            print(f"[serve] serve.shutdown failed: {type(exc).__name__}: {exc}")
        finally:
            ray.shutdown()
            self.started_ray = False


# The Serve floor: what Serve itself costs here, with no model. One FastAPI ingress deployment (same CPU
# share and logging as the app's ingress) whose /predict answers a constant body of a real answer's size.
_FLOOR_BODY: dict[str, bytes] = {}


def floor_application(body: bytes, symbols: list[str], cfg: Any) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import Response
    from ray import serve

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": cfg.serving.ingress.num_cpus},
                      max_ongoing_requests=cfg.serving.ingress.max_ongoing_requests,
                      logging_config={"enable_access_log": cfg.serving.access_log})
    @serve.ingress(api)
    class Floor:
        def __init__(self, body: bytes, symbols: list[str]) -> None:
            self.body, self.symbols = body, symbols

        @api.post("/predict")
        async def predict(self) -> Response:
            return Response(self.body, media_type="application/json")

        @api.get("/healthz")
        async def healthz(self) -> dict:
            return {"status": "ok"}

        @api.get("/readyz")
        async def readyz(self) -> dict:
            return {"ready": True, "model_version": "constant"}

        @api.get("/supported_coins")
        async def supported_coins(self) -> dict:
            return {"symbols": self.symbols, "horizon": 0, "model_version": "constant"}

    return Floor.bind(body, symbols)


class FloorServer(ServeServer):
    """A trivial Serve deployment answering a constant: the floor of any Serve app on this machine."""

    name = "floor"
    app_name = "floor"

    def __init__(self, cfg: Any, body: bytes, symbols: list[str], *, entry: str = "proxy") -> None:
        super().__init__(cfg, "", "constant", entry=entry)
        self.body, self.symbols = body, symbols

    def _application(self) -> Any:
        return floor_application(self.body, self.symbols, self.cfg)


# ----------------------------------------------------------------------------------------------- config

def apply_serve_config(cfg: Any, path: Path) -> list[str]:
    """The deployment settings of a Serve config file (``serve/config.yaml``) → ``cfg.serving`` (ingress and
    members); returns the names of the deployments applied."""
    import yaml

    from cryptopredict.serving.settings import DeploymentOptions

    doc = yaml.safe_load(path.read_text()) or {}
    apps = [a for a in doc.get("applications") or [] if a.get("import_path", "").endswith(":build_app")]
    if not apps:
        raise ValueError(f"{path} deploys no cryptopredict build_app application")
    lines = []
    for dep in apps[0].get("deployments") or []:
        name = dep["name"]
        if name == "ingress":
            target = cfg.serving.ingress
        elif name in cfg.serving.members:
            target = cfg.serving.members[name]
        else:
            continue  # the model board: fixed in board.py
        actor = dep.get("ray_actor_options") or {}
        user = dep.get("user_config") or {}
        values = target.model_dump()
        values.update({k: dep[k] for k in ("num_replicas", "max_ongoing_requests") if k in dep})
        values.update({k: actor[k] for k in ("num_cpus", "num_gpus") if k in actor})
        values.update({k: user[k] for k in ("max_batch_size", "batch_wait_timeout_s") if k in user})
        new = DeploymentOptions(**values)
        if name == "ingress":
            cfg.serving.ingress = new
        else:
            cfg.serving.members[name] = new
        lines.append(name)
    return lines


def describe_deployments(cfg: Any) -> list[str]:
    lines = []
    for name, o in [("ingress", cfg.serving.ingress), *cfg.serving.members.items()]:
        lines.append(f"{name}: {o.num_replicas} replica(s) × {o.num_cpus:g} CPU, max_ongoing_requests "
                     f"{o.max_ongoing_requests}" + ("" if name == "ingress" else
                                                     f", batch ≤ {o.max_batch_size} / {o.batch_wait_timeout_s:g} s"))
    return lines


def default_fixed_now(cfg: Any) -> Any:
    """One hour after the close of the lake's latest bar (over ``ingest.symbols``)."""
    import pandas as pd

    from cryptopredict.data.ingest import open_lake
    from cryptopredict.data.validate import timeframe_delta
    from cryptopredict.serving.features import latest_bars

    bars = [t for t in latest_bars(open_lake(cfg), cfg, list(cfg.ingest.symbols)).values() if t is not None]
    if not bars:
        raise ValueError(f"the lake {cfg.lake.root!r} holds no bars of {cfg.ingest.symbols}")
    return max(bars) + timeframe_delta(cfg.ingest.timeframe) + pd.Timedelta(hours=1)


# ----------------------------------------------------------------------------------------------- report

def _fmt(x: float, nd: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def goal_failures(s: dict[str, Any]) -> list[str]:
    out = []
    if not s["p50_ms"] <= GOAL["p50_ms"]:
        out.append(f"p50 {_fmt(s['p50_ms'])} ms > {GOAL['p50_ms']:g}")
    if not s["p99_ms"] <= GOAL["p99_ms"]:
        out.append(f"p99 {_fmt(s['p99_ms'])} ms > {GOAL['p99_ms']:g}")
    if not s["rps"] >= GOAL["rps"]:
        out.append(f"{_fmt(s['rps'])} req/s < {GOAL['rps']:g}")
    if s["errors"] != GOAL["errors"]:
        out.append(f"{s['errors']} errors")
    return out


def table(runs: list[dict[str, Any]]) -> str:
    """One row per (mode, server); CPU columns in cores: the server under test and every process that is not
    part of this benchmark (the load generator's own use is in the JSON)."""
    head = (f"{'mode':<52} {'server':<6} {'requests':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'req/s':>8} "
            f"{'errors':>7} {'server CPU':>10} {'others CPU':>10}")
    lines = [head, "-" * len(head)]
    for r in runs:
        s = r["result"]
        cpu = s.get("cpu") or {}
        lines.append(f"{MODES[r['mode']][0]:<52} {r['server']:<6} {s['requests']:>9} {_fmt(s['p50_ms']):>8} "
                     f"{_fmt(s['p90_ms']):>8} {_fmt(s['p99_ms']):>8} {_fmt(s['rps']):>8} {s['errors']:>7} "
                     f"{_fmt(cpu.get('server_cores', math.nan), 2):>10} {_fmt(cpu.get('other_cores', math.nan), 2):>10}")
    return "\n".join(lines)


def compare_answers(a: dict[str, dict], b: dict[str, dict]) -> float:
    """Largest absolute difference of the numeric fields of two servers' answers (common symbols)."""
    worst = 0.0

    def walk(x: Any, y: Any) -> None:
        nonlocal worst
        if isinstance(x, dict) and isinstance(y, dict):
            for k in set(x) | set(y):
                if k not in x or k not in y:
                    worst = math.inf
                else:
                    walk(x[k], y[k])
        elif isinstance(x, (int, float)) and isinstance(y, (int, float)):
            worst = max(worst, abs(float(x) - float(y)))
        elif x != y:
            worst = math.inf

    for s in set(a) & set(b):
        walk(a[s], b[s])
    return worst


# ----------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=120.0, help="measured seconds per (server, mode)")
    p.add_argument("--clients", type=int, default=16, help="concurrent keep-alive clients")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before each measured span")
    p.add_argument("--config", default="configs/default.yaml", help="project config (a relative path: from the "
                   "current directory if it is there, else from the repository root)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="dotted key=value override")
    p.add_argument("--model-dir", default=None, help="default: serving.model_dir, else the registry's champion")
    p.add_argument("--version", default=None, help="version label of --model-dir (default: its directory name)")
    p.add_argument("--lake-root", default=None, help="default: lake.root of the config (lake/)")
    p.add_argument("--fixed-now", default=None, help="serving.fixed_now (default: 1 h after the close of the "
                   "lake's latest bar)")
    p.add_argument("--serve-config", default="serve/config.yaml", help="Serve config whose deployment settings "
                   "the Serve app gets ('' : the serving section's)")
    p.add_argument("--servers", default="serve,plain", help="comma-separated: serve, plain, floor (a trivial "
                   "Serve deployment answering a constant: what Serve itself costs here)")
    p.add_argument("--serve-mode", default="throughput", choices=sorted(SERVE_MODES), help="throughput: "
                   "RAY_SERVE_THROUGHPUT_OPTIMIZED=1 in Ray's environment (direct ingress, gRPC between "
                   "deployments, replica code on the replica's own event loop); default: Serve's defaults")
    p.add_argument("--serve-entry", default=None, choices=["direct", "proxy"], help="where the load goes for "
                   "serve and floor: the ingress replica's own port (direct; throughput mode only) or Serve's HTTP "
                   "proxy (default: direct in throughput mode, else proxy)")
    p.add_argument("--modes", default="cached,no-cache", help="comma-separated: cached, no-cache")
    p.add_argument("--plain-max-batch-size", type=int, default=None, help="the plain server's batch limit "
                   "(default: the members' max_batch_size, as the Serve app)")
    p.add_argument("--request-timeout", type=float, default=30.0)
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    args.serve_entry = args.serve_entry or ("direct" if args.serve_mode == "throughput" else "proxy")
    if args.serve_entry == "direct" and args.serve_mode != "throughput":
        p.error("--serve-entry direct needs --serve-mode throughput (direct ingress)")
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for s in args.servers:
        if s not in ("serve", "plain", "floor"):
            p.error(f"unknown server {s!r}")
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for k, v in {**LOCAL_ENV, **SERVE_MODES[args.serve_mode]}.items():  # before Ray starts: its processes inherit it
        os.environ.setdefault(k, v)
    cwd = Path.cwd()
    abs_from_cwd = lambda x: None if x is None else str((cwd / x).resolve())
    model_dir_arg, lake_root, json_path = abs_from_cwd(args.model_dir), abs_from_cwd(args.lake_root), \
        abs_from_cwd(args.json)
    config_path = abs_from_cwd(args.config) if (cwd / args.config).is_file() else str(ROOT / args.config)
    os.chdir(ROOT)  # the config's relative paths (lake/, registry/) are the repository's

    from cryptopredict.config import load_config
    from cryptopredict.parallel import absolute_paths
    from cryptopredict.serving.predictor import resolve_model

    overrides = list(args.overrides) + ([f"lake.root={lake_root}"] if lake_root else [])
    cfg = absolute_paths(load_config(config_path, overrides))
    cfg.registry.root = str(Path(cfg.registry.root).resolve()) if "://" not in cfg.registry.root else cfg.registry.root
    if args.serve_config:
        apply_serve_config(cfg, ROOT / args.serve_config)
    deploy_lines = describe_deployments(cfg)
    model_dir, version = resolve_model(cfg, model_dir_arg, args.version)
    model_dir = Path(model_dir).resolve()
    import pandas as pd

    fixed_now = pd.Timestamp(args.fixed_now) if args.fixed_now else default_fixed_now(cfg)
    fixed_now = fixed_now.tz_localize("UTC") if fixed_now.tzinfo is None else fixed_now.tz_convert("UTC")
    cfg.serving.fixed_now = fixed_now.to_pydatetime()
    tmp = Path(tempfile.mkdtemp(prefix="serve_load-"))
    cfg.monitoring.log_root = str(tmp / "prediction-log")  # the benchmark's answers stay out of the project log
    try:
        return _run(args, cfg, model_dir, version, fixed_now, deploy_lines, tmp, json_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, cfg: Any, model_dir: Path, version: str, fixed_now: Any, deploy_lines: list[str],
         tmp: Path, json_path: str | None) -> int:
    print(f"machine: {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
          f"load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"model: {model_dir} (version {version}); lake: {cfg.lake.root}; serving.fixed_now = {fixed_now.isoformat()}")
    print(f"load: {args.clients} clients × {args.seconds:g} s measured after {args.warmup:g} s warm-up, per "
          f"server and mode; POST /predict, symbols round-robin")
    print("Serve deployments (" + (args.serve_config or "serving section") + "): " + "; ".join(deploy_lines))
    print(f"Serve mode: {args.serve_mode} ({SERVE_MODES[args.serve_mode] or 'Serve defaults'}), load sent to "
          f"{'the ingress replica (direct ingress)' if args.serve_entry == 'direct' else 'the HTTP proxy'}; "
          f"Serve access log {'on' if cfg.serving.access_log else 'off'}")

    answers: dict[str, dict[str, dict]] = {}

    def floor_body() -> bytes:  # a real answer's bytes when one was served already
        for got in answers.values():
            for body in got.values():
                return json.dumps(body).encode()
        return json.dumps({"symbol": "BTCUSDT", "padding": "x" * 700}).encode()

    servers: dict[str, Any] = {
        "serve": lambda: ServeServer(cfg, model_dir, version, entry=args.serve_entry),
        "plain": lambda: PlainServer(cfg, model_dir, version, tmp, max_batch_size=args.plain_max_batch_size),
        "floor": lambda: FloorServer(cfg, floor_body(), list(cfg.ingest.symbols), entry=args.serve_entry),
    }
    runs: list[dict[str, Any]] = []
    failed = False
    for name in args.servers:
        server = servers[name]()
        t0 = time.perf_counter()
        try:
            ready = server.start(args.ready_timeout)
        except Exception as exc:  # noqa: BLE001 - reported, the other server still runs
            failed = True
            print(f"\n[{name}] could not start: {type(exc).__name__}: {exc}")
            if isinstance(server, PlainServer):
                print(server.log_tail())
            continue
        startup = time.perf_counter() - t0
        try:
            _, body = http_get(server.url + "/supported_coins")
            coins = json.loads(body)
            symbols = list(coins["symbols"])
            extra = f", plain compute batch ≤ {server.max_batch_size or 'members max_batch_size'}" \
                if isinstance(server, PlainServer) else f", Ray num_cpus {server.num_cpus}"
            print(f"\n[{name}] ready in {startup:.1f} s at {server.url}: model {ready.get('model_version')}, as_of "
                  f"{ready.get('as_of')}, data age {ready.get('data_age_hours')} h, {len(symbols)} symbols{extra}")
            if name != "floor":
                answers[name] = {}
            for s in symbols if name != "floor" else []:
                st, b = http_post(server.url + "/predict", {"symbol": s}, {"Cache-Control": "no-cache"})
                if st != 200:
                    print(f"[{name}] {s}: HTTP {st} {b[:300].decode(errors='replace')}")
                    continue
                answers[name][s] = json.loads(b)
            cpu_marks: list[CpuSnapshot | None] = []
            for mode in (["floor"] if name == "floor" else args.modes):
                label, headers = MODES[mode]
                load_before = os.getloadavg()
                started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                result = run_load(server.url, symbols, seconds=args.seconds, clients=args.clients, warmup=args.warmup,
                                  headers=headers, timeout=args.request_timeout, on_measure=cpu_marks.append)
                cpu_marks.append(CpuSnapshot.take())
                s = result.summary()
                s["cpu"] = cpu_use(cpu_marks[-2] if len(cpu_marks) >= 2 else None, cpu_marks[-1])
                cpu_marks.clear()
                runs.append({"server": name, "mode": mode, "mode_label": label, "headers": headers,
                             "startup_s": startup, "started_at": started_at,
                             "ended_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_before": load_before,
                             "loadavg_after": os.getloadavg(), "result": s})
                print(f"[{name}] {label}: {s['requests']} requests, p50 {_fmt(s['p50_ms'])} ms, p90 "
                      f"{_fmt(s['p90_ms'])} ms, p99 {_fmt(s['p99_ms'])} ms, {_fmt(s['rps'])} req/s, errors "
                      f"{s['errors']}{' ' + str(dict(s['errors_by_kind'])) if s['errors'] else ''}; CPU cores: server "
                      f"{_fmt(s['cpu'].get('server_cores', math.nan), 2)}, load generator "
                      f"{_fmt(s['cpu'].get('loadgen_cores', math.nan), 2)}, other processes "
                      f"{_fmt(s['cpu'].get('other_cores', math.nan), 2)}")
                for sample in s["error_samples"][:3]:
                    print(f"    e.g. {sample}")
        finally:
            server.stop()

    print("\n" + table(runs))
    print(f"(CPU columns: cores busy during the measured span, of {os.cpu_count()}: 'server' = the processes of the "
          "server under test, 'others' = every process outside this benchmark, i.e. other work on the machine)")
    by = {(r["server"], r["mode"]): r["result"] for r in runs}
    ratios = {}
    for mode in args.modes:
        a, b = by.get(("serve", mode)), by.get(("plain", mode))
        if a and b:
            ratios[mode] = {"p50_serve_over_plain": a["p50_ms"] / b["p50_ms"] if b["p50_ms"] else math.nan,
                            "rps_serve_over_plain": a["rps"] / b["rps"] if b["rps"] else math.nan}
            print(f"Serve/plain, {MODES[mode][0]}: p50 ×{_fmt(ratios[mode]['p50_serve_over_plain'], 2)}, "
                  f"throughput ×{_fmt(ratios[mode]['rps_serve_over_plain'], 2)}")
    if "serve" in answers and "plain" in answers:
        diff = compare_answers(answers["serve"], answers["plain"])
        common = len(set(answers["serve"]) & set(answers["plain"]))
        print(f"same model check: {common} symbols answered by both, largest absolute difference of any numeric "
              f"field {diff:.3g}")
    print(f"\ngoal: p50 ≤ {GOAL['p50_ms']:g} ms, p99 ≤ {GOAL['p99_ms']:g} ms, ≥ {GOAL['rps']:g} req/s, "
          f"{GOAL['errors']} errors")
    for r in runs:
        fails = goal_failures(r["result"])
        print(f"  {r['server']:<6} {MODES[r['mode']][0]:<52} {'met' if not fails else 'NOT met: ' + '; '.join(fails)}")
        r["goal_met"] = not fails
    if json_path:
        out = {"goal": GOAL, "seconds": args.seconds, "clients": args.clients, "warmup": args.warmup,
               "model_dir": str(model_dir), "version": version, "lake_root": cfg.lake.root,
               "fixed_now": fixed_now.isoformat(), "cpus": os.cpu_count(), "deployments": deploy_lines,
               "serve_mode": args.serve_mode, "serve_entry": args.serve_entry,
               "runs": runs, "ratios": ratios,
               "answers_max_abs_diff": compare_answers(answers["serve"], answers["plain"])
               if "serve" in answers and "plain" in answers else None}
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(out, indent=2, default=str))
        print(f"figures written to {json_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
