"""Request-time prediction with the deep ensemble split into steps that can each run in their own process.

```
lake ─► SnapshotCache ─► Snapshot (per model version and latest bar: scaled windows of every symbol,
         │                 correlations, σ)                 ─► MemberBatch per member
         │                                                      │
         │      MemberRunner(transformer | bilstm | cnn_lstm | gnn): one net ─► MemberOutput
         │                                                      │
         └───────────────────────────────────────────► FusionStep: Bayesian fusion + calibrated
                                                          confidence + risk sizing ─► Prediction
```

Every step reuses the ensemble's own functions (``build_net``, ``member_outputs``, ``_fusion_inputs``,
``BayesianFusion.load``, ``build_panel``), so the split pipeline gives what ``DeepEnsemble.predict`` gives
on the same bar (tested). Features come from ``serving/features.py`` (the pipeline's functions on a
trailing slice of bars). Every output carries the model version; the fusion refuses member outputs of
another version (``VersionMismatchError``), so a reload can never mix two models in one answer.

``Predictor`` composes the steps in one process (the Serve app runs the same steps in deployments: the
ingress sends each member a ``MemberRequest`` of symbol positions in the snapshot, and the snapshot's
panel only when the member replica does not hold it yet — ``run_member_requests``, ``PanelCache``).
``ModelSource`` / ``fetch_source``: where a model version's files come from, fetched by each process itself
into its node's cache (registry versions, checked against the manifest) so that replicas can run on any
node.
Times: ``as_of`` is the open time of the latest bar (the feature row's key; the bar is known at its close,
``as_of + bar``); the data age is ``now − (as_of + bar)``.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryptopredict.config import Config
from cryptopredict.data.lake import Lake
from cryptopredict.data.validate import timeframe_delta
from cryptopredict.evaluation.risk import RiskConfig, target_positions
from cryptopredict.features.scaling import RobustScaler
from cryptopredict.labels import CLASS_NAMES
from cryptopredict.models.base import read_manifest
from cryptopredict.models.ensemble import (
    FORMAT_VERSION,
    GRAPH_MEMBERS,
    EnsembleSettings,
    _fusion_inputs,
    build_net,
    member_outputs,
)
from cryptopredict.serving.features import (
    RequestFeatures,
    compute_request_features,
    latest_bars,
    longest_window,
    lookback_bars,
    scored_news_now,
)
from cryptopredict.serving.schemas import ClassProbabilities, Interval, Prediction, Uncertainty
from cryptopredict.training.trainer import NetPredictions, resolve_device
from cryptopredict.training.windows import Panel, build_panel

log = logging.getLogger(__name__)

Clock = Callable[[], pd.Timestamp]


# ----------------------------------------------------------------------------------------------- errors

class ServingError(Exception):
    """Base of the errors a request can cause; ``status`` is the HTTP status the app answers with."""

    status = 500


class UnknownSymbolError(ServingError, KeyError):
    status = 404

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class HorizonMismatchError(ServingError, ValueError):
    status = 422


class StaleDataError(ServingError):
    status = 503


class ModelNotLoadedError(ServingError):
    status = 503


class VersionMismatchError(ServingError):
    """Member outputs and the fusion (or a snapshot) come from different model versions."""

    status = 503


def wall_clock() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


def fixed_clock(now: str | pd.Timestamp) -> Clock:
    """A clock that always says ``now`` (replays of stored data, tests)."""
    t = pd.Timestamp(now)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return lambda: t


# ----------------------------------------------------------------------------------------------- model

@dataclass
class ModelMeta:
    """What every step needs to know about a model directory (no weights loaded)."""

    directory: Path
    version: str
    settings: EnsembleSettings
    columns: list[str]
    horizon: int
    vol_norm: tuple[float, float]
    final_fit: dict[str, Any] = field(default_factory=dict)

    @property
    def members(self) -> list[str]:
        return list(self.settings.members)

    @property
    def window(self) -> int:
        return self.settings.window


def load_model_meta(directory: str | Path, version: str | None = None) -> ModelMeta:
    """Read a ``DeepEnsemble.save`` directory's manifest (and ``final_fit.json`` when present)."""
    directory = Path(directory)
    if not (directory / "manifest.json").is_file():
        raise FileNotFoundError(f"{directory} holds no manifest.json: not a saved model directory")
    manifest = read_manifest(directory)
    if manifest.get("class") != "DeepEnsemble" or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory} holds a {manifest.get('class')} (format {manifest.get('format_version')}),"
                         f" not a DeepEnsemble (format {FORMAT_VERSION}); only the ensemble is served")
    final = directory / "final_fit.json"
    return ModelMeta(directory=directory, version=version or directory.name,
                     settings=EnsembleSettings(**manifest["params"]), columns=list(manifest["columns"]),
                     horizon=int(manifest["horizon"]),
                     vol_norm=(float(manifest["vol_norm"][0]), float(manifest["vol_norm"][1])),
                     final_fit=json.loads(final.read_text()) if final.is_file() else {})


def _champion_version(registry: Any, name: str) -> str:
    """The champion version of ``name``; ModelNotLoadedError when the registry has none."""
    champion = registry.champion(name)
    if champion is None:
        raise ModelNotLoadedError(f"the registry {registry.root!r} has no champion of {name!r}: register one "
                                  "(`cryptopredict run`, `cryptopredict models promote`) or set "
                                  "serving.model_dir")
    return champion.version


def registry_model(cfg: Config, version: str | None = None, model: str | None = None) -> tuple[Path, str]:
    """(local directory, version) of ``version`` of ``model`` (default ``registry.model``) in the model
    registry, or of its champion when ``version`` is None. The registry is imported here, lazily: serving
    a given directory does not need it. ModelNotLoadedError when there is no champion."""
    from cryptopredict.registry.registry import ModelRegistry

    name = model or cfg.registry.model
    registry = ModelRegistry.from_config(cfg)
    version = version if version is not None else _champion_version(registry, name)
    return Path(registry.fetch(name, version)), registry.get(name, version).version


def champion_model(cfg: Config) -> tuple[Path, str]:
    """(local directory, version) of the registry's champion of ``registry.model``."""
    return registry_model(cfg)


def resolve_model(cfg: Config, model_dir: str | Path | None = None, version: str | None = None
                  ) -> tuple[Path, str]:
    """The model to serve: ``model_dir`` (or ``serving.model_dir``) with its version label, else the
    registry's champion."""
    directory = model_dir if model_dir is not None else cfg.serving.model_dir
    if directory is not None:
        path = Path(directory)
        return path, version or cfg.serving.model_version or path.name
    return champion_model(cfg)


@dataclass(frozen=True)
class ModelSource:
    """Where the files of one model version come from, in a form any process on any node can act on
    (``fetch_source``): a registry version (``registry_root`` + ``model`` + ``version``, fetched into the
    node's own cache and checked against the manifest's checksums), or a model ``directory`` (which must
    then be readable at that path wherever it is loaded: one machine, or shared storage)."""

    version: str
    directory: str | None = None
    registry_root: str | None = None
    model: str | None = None
    s3_region: str | None = None
    s3_endpoint: str | None = None

    def __post_init__(self) -> None:
        if (self.directory is None) == (self.registry_root is None):
            raise ValueError("a ModelSource is a directory or a registry version, exactly one of them")
        if self.registry_root is not None and not self.model:
            raise ValueError("a registry ModelSource needs the model name")

    @property
    def from_registry(self) -> bool:
        return self.registry_root is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSource:
        return cls(**dict(d))

    def __str__(self) -> str:
        if self.directory is not None:
            return f"{self.directory} (version label {self.version})"
        return f"{self.model} {self.version} of the registry {self.registry_root}"


def directory_source(directory: str | Path, version: str) -> ModelSource:
    return ModelSource(version=version, directory=str(Path(directory).expanduser().resolve()))


def registry_source(cfg: Config, version: str | None = None, model: str | None = None) -> ModelSource:
    """The registry version ``version`` of ``model`` (default ``registry.model``), or its champion when
    ``version`` is None, as a source: only the manifest and the champion pointer are read here, nothing is
    downloaded. ModelNotLoadedError when there is no champion; RegistryError for an unknown version."""
    from cryptopredict.registry.registry import ModelRegistry

    rc = cfg.registry
    name = model or rc.model
    registry = ModelRegistry.from_config(cfg)
    version = version if version is not None else _champion_version(registry, name)
    return ModelSource(version=registry.get(name, version).version, registry_root=registry.root, model=name,
                       s3_region=rc.s3_region or cfg.lake.s3_region, s3_endpoint=rc.s3_endpoint or cfg.lake.s3_endpoint)


def resolve_source(cfg: Config, model_dir: str | Path | None = None, version: str | None = None) -> ModelSource:
    """The model to serve, as a source: ``model_dir`` (or ``serving.model_dir``) with its version label,
    else the registry's champion (``version``: a registry version instead of the champion)."""
    directory = model_dir if model_dir is not None else cfg.serving.model_dir
    if directory is not None:
        path = Path(directory)
        return directory_source(path, version or cfg.serving.model_version or path.name)
    return registry_source(cfg, version)


def model_cache_dir(cfg: Config) -> Path:
    """Where a serving process keeps the registry versions it fetched: ``serving.model_cache_dir``, else
    ``<registry.cache_dir or ~/.cache/cryptopredict/registry>/serving`` — a path on the node the process runs
    on (each node fetches for itself)."""
    if cfg.serving.model_cache_dir:
        return Path(cfg.serving.model_cache_dir).expanduser()
    if cfg.registry.cache_dir:
        return Path(cfg.registry.cache_dir).expanduser() / "serving"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cryptopredict" / "registry" / "serving"


def _mismatches(directory: Path, files: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What differs between a local directory and a manifest's ``files`` (rel → {sha256, ...})."""
    from cryptopredict.registry.store import sha256_file

    have = {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()}
    out = [f"missing {rel}" for rel in sorted(set(files) - set(have))]
    out += [f"unexpected {rel}" for rel in sorted(set(have) - set(files))]
    out += [f"{rel}: sha256 differs" for rel in sorted(set(files) & set(have))
            if sha256_file(have[rel]) != files[rel]["sha256"]]
    return out


_fetch_lock = threading.Lock()


def fetch_registered(source: ModelSource, cache_dir: str | Path) -> Path:
    """A local copy of a registry version under ``cache_dir/<root>/<model>/<version>``, every file checked
    against the manifest's sha256 (a cached copy is re-checked and fetched again when it differs; a
    download that does not match raises ChecksumMismatchError and leaves nothing behind). Works for a local
    and an ``s3://`` registry root alike; safe when several processes of one node fetch at once (each
    downloads into its own temporary directory; the first rename wins, the others use its copy)."""
    from cryptopredict.registry.manifest import ChecksumMismatchError
    from cryptopredict.registry.registry import FILES, ModelRegistry

    if not source.from_registry:
        raise ValueError(f"{source} is not a registry version")
    registry = ModelRegistry(source.registry_root, s3_region=source.s3_region,  # type: ignore[arg-type]
                             s3_endpoint=source.s3_endpoint)
    target = registry.get(source.model, source.version)  # type: ignore[arg-type]
    root_key = re.sub(r"[^A-Za-z0-9_.-]+", "_", registry.root.removeprefix("s3://").strip("/"))
    cached = Path(cache_dir) / root_key / target.model / target.version
    with _fetch_lock:
        if cached.is_dir():
            bad = _mismatches(cached, target.files)
            if not bad:
                return cached
            log.warning("cached copy %s of %s differs from the manifest (%s); fetching it again", cached,
                        source, "; ".join(bad[:3]))
            shutil.rmtree(cached, ignore_errors=True)
        tmp = cached.parent / f".tmp-{target.version}-{uuid.uuid4().hex}"
        prefix = f"{target.model}/{target.version}/{FILES}"
        try:
            for rel in registry.store.list_files(prefix):
                registry.store.get_file(f"{prefix}/{rel}", tmp / rel)
            tmp.mkdir(parents=True, exist_ok=True)
            bad = _mismatches(tmp, target.files)
            if bad:
                raise ChecksumMismatchError(f"{source}: the fetched files do not match the manifest ("
                                            f"{'; '.join(bad[:5])}) — the stored version is damaged; do not "
                                            "load it")
            try:
                os.rename(tmp, cached)
            except OSError:  # another process of this node renamed its copy first
                if not cached.is_dir() or _mismatches(cached, target.files):
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    log.info("fetched %s into %s", source, cached)
    return cached


def fetch_source(source: ModelSource, cache_dir: str | Path) -> Path:
    """The local model directory of ``source``: its own directory, or the node's verified copy of the
    registry version (``fetch_registered``)."""
    if source.directory is not None:
        return Path(source.directory)
    return fetch_registered(source, cache_dir)


# ----------------------------------------------------------------------------------------------- snapshot

@dataclass
class Snapshot:
    """The scaled windows of every symbol at the latest bar, for one model version.

    ``panel``: the last ``window`` bars of every symbol ([N, window, F], correlations when the model has a
    graph member), ``sigma``: trailing σ per symbol at ``as_of`` (NaN where unknown), ``last_bar``: each
    symbol's latest bar (a symbol without a bar at ``as_of`` cannot be predicted from this snapshot)."""

    id: str
    version: str
    as_of: pd.Timestamp
    bar: pd.Timedelta
    panel: Panel
    sigma: dict[str, float]
    last_bar: dict[str, pd.Timestamp]
    built_at: pd.Timestamp
    build_seconds: float

    @property
    def symbols(self) -> list[str]:
        return list(self.panel.symbols)

    @property
    def close_time(self) -> pd.Timestamp:
        return self.as_of + self.bar

    def age_hours(self, now: pd.Timestamp) -> float:
        return (now - self.close_time) / pd.Timedelta(hours=1)


def build_snapshot(meta: ModelMeta, request: RequestFeatures, bar: pd.Timedelta, scaler: RobustScaler,
                   snapshot_id: str, end: pd.Timestamp | None = None) -> Snapshot:
    """Scale the request-time rows with the model's scaler onto the dense window grid, as
    ``DeepEnsemble.predict`` does for rows at ``end`` (default ``request.as_of``; an earlier bar needs its
    ``window`` bars among the request's rows)."""
    missing = [c for c in meta.columns if c not in request.features.columns]
    if missing:
        raise ValueError(f"request-time features lack {len(missing)} columns the model {meta.version} was "
                         f"trained on, e.g. {missing[:5]}; the features config differs from the training one")
    t0 = time.perf_counter()
    uses_graph = any(m in GRAPH_MEMBERS for m in meta.members)
    end = request.as_of if end is None else pd.Timestamp(end)
    first = request.features.index.get_level_values("timestamp").min()
    if end > request.as_of or end - (meta.window - 1) * bar < first:
        raise ValueError(f"bar {end} is outside the request-time rows ({first} … {request.as_of}) with its "
                         f"{meta.window}-bar window")
    panel = build_panel(request.features[meta.columns], scaler, end=end, start=end - (meta.window - 1) * bar,
                        correlations=request.correlations if uses_graph else None)
    at = request.sigma.xs(end, level="timestamp") if end in request.sigma.index.get_level_values(
        "timestamp") else pd.Series(dtype=float)
    last_bar = dict(request.last_bar)
    if end != request.as_of:  # each symbol's last bar at or before `end`
        idx = request.features.index
        ts = pd.DatetimeIndex(idx.get_level_values("timestamp"))
        for s in request.last_bar:
            last_bar[s] = ts[(idx.get_level_values("symbol") == s) & (ts <= end)].max()
    return Snapshot(id=snapshot_id, version=meta.version, as_of=end, bar=bar, panel=panel,
                    sigma={s: float(v) for s, v in at.items()}, last_bar=last_bar,
                    built_at=pd.Timestamp.now(tz="UTC"), build_seconds=time.perf_counter() - t0)


_snapshot_ids = itertools.count(1)


class SnapshotCache:
    """Snapshots of one model, recomputed only when the lake's latest bar changes.

    ``get()`` polls the lake's last bar (Parquet footers only) at most every ``serving.snapshot_check_seconds``
    and rebuilds the request-time features when it moved. Thread-safe; one rebuild at a time."""

    def __init__(self, cfg: Config, lake: Lake, meta: ModelMeta, scaler: RobustScaler,
                 symbols: Sequence[str] | None = None) -> None:
        self.cfg, self.lake, self.meta, self.scaler = cfg, lake, meta, scaler
        self.symbols = list(symbols or cfg.ingest.symbols)
        self.bar = timeframe_delta(cfg.ingest.timeframe)
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._features: RequestFeatures | None = None
        self._checked_at = -math.inf
        self._latest: pd.Timestamp | None = None
        self._lookback: int | None = None
        self._scorer_cache: dict[str, Any] = {}
        self.rebuilds = 0

    @property
    def lookback(self) -> int:
        if self._lookback is None:
            self._lookback = lookback_bars(self.cfg, longest_window(self.lake, self.cfg))
        return self._lookback

    def latest_bar(self) -> pd.Timestamp:
        bars = latest_bars(self.lake, self.cfg, self.symbols)
        known = [t for t in bars.values() if t is not None]
        if not known:
            raise StaleDataError(f"the lake {self.lake.root!r} holds no bars of {self.symbols}")
        return max(known)

    def peek(self) -> Snapshot | None:
        return self._snapshot

    def get(self, *, force_check: bool = False) -> Snapshot:
        now = time.monotonic()
        snap = self._snapshot
        if snap is not None and not force_check and now - self._checked_at < self.cfg.serving.snapshot_check_seconds:
            return snap
        with self._lock:
            if self._snapshot is not None and not force_check and \
                    time.monotonic() - self._checked_at < self.cfg.serving.snapshot_check_seconds:
                return self._snapshot
            latest = self.latest_bar()
            self._checked_at = time.monotonic()
            if self._snapshot is None or latest != self._snapshot.as_of:
                self._snapshot = self._rebuild(latest)
            return self._snapshot

    def adopt_features(self, features: RequestFeatures) -> None:
        """Use request-time features another cache already computed for the same bar (a reload)."""
        with self._lock:
            self._features = features

    @property
    def features(self) -> RequestFeatures | None:
        return self._features

    def _rebuild(self, latest: pd.Timestamp) -> Snapshot:
        t0 = time.perf_counter()
        feats = self._features
        if feats is None or feats.as_of != latest:
            news = scored_news_now(self.lake, self.cfg, self._scorer_cache) \
                if self.cfg.serving.score_new_news and "sentiment" in self.cfg.features.families else None
            feats = compute_request_features(self.cfg, self.lake, rows=self.meta.window, lookback=self.lookback,
                                             symbols=self.symbols, end=latest, scored_news=news)
            self._features = feats
        snap = build_snapshot(self.meta, feats, self.bar, self.scaler,
                              f"{self.meta.version}@{latest.isoformat()}#{next(_snapshot_ids)}")
        snap.build_seconds = time.perf_counter() - t0
        self.rebuilds += 1
        log.info("snapshot %s built in %.2f s (lookback %d bars)", snap.id, snap.build_seconds, self.lookback)
        return snap


def check_fresh(snapshot: Snapshot, now: pd.Timestamp, max_age_hours: float) -> None:
    """StaleDataError when the latest bar closed more than ``max_age_hours`` before ``now``."""
    age = snapshot.age_hours(now)
    if age > max_age_hours:
        raise StaleDataError(f"stale data: the latest bar ({snapshot.as_of.isoformat()}, closed "
                             f"{snapshot.close_time.isoformat()}) is {age:.1f} h old at {now.isoformat()}, more "
                             f"than serving.max_data_age_hours = {max_age_hours:g}; is ingestion running?")


def check_symbol(snapshot: Snapshot, symbol: str, supported: Sequence[str]) -> None:
    """UnknownSymbolError for a symbol the service does not serve; StaleDataError for a served symbol
    without a bar at the snapshot's bar."""
    if symbol not in supported:
        raise UnknownSymbolError(f"unknown symbol {symbol!r}; supported: {', '.join(supported)}")
    last = snapshot.last_bar.get(symbol)
    if symbol not in snapshot.panel.symbols or last is None or last != snapshot.as_of:
        when = last.isoformat() if last is not None else "none"
        raise StaleDataError(f"stale data: {symbol}'s latest bar is {when}, the other symbols' "
                             f"{snapshot.as_of.isoformat()}")


def check_horizon(meta: ModelMeta, horizon: int | None) -> int:
    if horizon is not None and horizon != meta.horizon:
        raise HorizonMismatchError(f"model {meta.version} predicts a {meta.horizon}-bar horizon, "
                                   f"{horizon} was asked; omit horizon or ask for {meta.horizon}")
    return meta.horizon


def checked_snapshot(meta: ModelMeta, cache: SnapshotCache, symbols: Sequence[str], horizon: int | None,
                     now: pd.Timestamp, max_age_hours: float, refresh_error: str | None
                     ) -> tuple[Snapshot, list[str]]:
    """A request's checks, in the order both servers answer them (horizon 422, unknown symbol 404, no or
    stale features 503, symbol without data 404): the current snapshot and the distinct symbols asked."""
    check_horizon(meta, horizon)
    supported = cache.symbols
    for s in symbols:
        if s not in supported:
            raise UnknownSymbolError(f"unknown symbol {s!r}; supported: {', '.join(supported)}")
    snap = cache.peek()
    if snap is None:
        raise StaleDataError(f"no features computed yet: {refresh_error or 'computing'}")
    check_fresh(snap, now, max_age_hours)
    unique = list(dict.fromkeys(symbols))
    for s in unique:
        check_symbol(snap, s, supported)
    return snap, unique


# ----------------------------------------------------------------------------------------------- members

@dataclass
class MemberBatch:
    """A member's input: the scaled windows (``panel``) and the rows (symbol position, bar position) to
    predict, tagged with the model version and the snapshot they come from."""

    version: str
    snapshot_id: str
    panel: Panel
    rows: tuple[np.ndarray, np.ndarray]
    symbols: list[str]  # the symbol of each row
    model_dir: str | None = None  # where a runner of another process finds this version's weights

    def __len__(self) -> int:
        return len(self.rows[0])


@dataclass
class MemberOutput:
    """One member's outputs for a batch's rows, log vol in log-vol units (not the nets' z-scores)."""

    member: str
    version: str
    snapshot_id: str
    symbols: list[str]
    proba: np.ndarray
    log_vol: np.ndarray
    log_vol_var: np.ndarray
    confidence: np.ndarray
    seconds: float = 0.0

    def as_net_predictions(self) -> NetPredictions:
        return NetPredictions(self.proba, self.log_vol, self.log_vol_var, self.confidence)

    def take(self, idx: np.ndarray | list[int]) -> MemberOutput:
        i = np.asarray(idx, dtype=int)
        return MemberOutput(self.member, self.version, self.snapshot_id, [self.symbols[k] for k in i],
                            self.proba[i], self.log_vol[i], self.log_vol_var[i], self.confidence[i],
                            self.seconds)


def member_batch(snapshot: Snapshot, member: str, symbols: Sequence[str], model_dir: str | None = None
                 ) -> MemberBatch:
    """The input of ``member`` for ``symbols`` at the snapshot's bar: only those symbols' windows for a
    sequence net, every symbol's (and the correlations) for the graph net."""
    last = len(snapshot.panel.times) - 1
    pos = [snapshot.panel.symbols.index(s) for s in symbols]
    if member in GRAPH_MEMBERS:
        panel = snapshot.panel
        sym = np.asarray(pos, dtype=np.int64)
    else:
        panel = select_symbols(snapshot.panel, pos)
        sym = np.arange(len(pos), dtype=np.int64)
    return MemberBatch(snapshot.version, snapshot.id, panel, (sym, np.full(len(pos), last, dtype=np.int64)),
                       list(symbols), model_dir)


def select_symbols(panel: Panel, positions: Sequence[int]) -> Panel:
    """The panel of the symbols at ``positions`` only (no correlations: sequence nets do not read them)."""
    idx = torch.as_tensor(list(positions), dtype=torch.long)
    return Panel([panel.symbols[i] for i in positions], panel.times, panel.columns, panel.values[idx],
                 panel.present[idx], panel.time_feats, None)


def merge_batches(batches: Sequence[MemberBatch], graph: bool) -> tuple[MemberBatch, list[np.ndarray]]:
    """One batch from several of the same version and snapshot (``@serve.batch``), and each input's row
    indices in it. Graph batches share the snapshot's panel; sequence batches are stacked."""
    first = batches[0]
    if any(b.version != first.version or b.snapshot_id != first.snapshot_id for b in batches):
        raise ValueError("merge_batches needs batches of one version and snapshot")
    spans, start = [], 0
    for b in batches:
        spans.append(np.arange(start, start + len(b)))
        start += len(b)
    symbols = [s for b in batches for s in b.symbols]
    tpos = np.concatenate([b.rows[1] for b in batches])
    if graph:
        sym = np.concatenate([b.rows[0] for b in batches])
        return MemberBatch(first.version, first.snapshot_id, first.panel, (sym, tpos), symbols,
                           first.model_dir), spans
    take = [torch.from_numpy(np.array(b.rows[0], dtype=np.int64)) for b in batches]  # writable copies
    panel = Panel(symbols, first.panel.times, first.panel.columns,
                  torch.cat([b.panel.values[i] for b, i in zip(batches, take, strict=True)]),
                  torch.cat([b.panel.present[i] for b, i in zip(batches, take, strict=True)]),
                  first.panel.time_feats, None)
    return MemberBatch(first.version, first.snapshot_id, panel, (np.arange(len(symbols)), tpos), symbols,
                       first.model_dir), spans


def snapshot_positions(snapshot: Snapshot, symbols: Sequence[str]) -> np.ndarray:
    """Positions of ``symbols`` in the snapshot's panel (the rows a member predicts at its last bar)."""
    index = {s: i for i, s in enumerate(snapshot.panel.symbols)}
    return np.asarray([index[s] for s in symbols], dtype=np.int64)


@dataclass
class MemberRequest:
    """What the Serve ingress sends one base-model deployment for a batch of HTTP requests: the rows of one
    model version and one snapshot, as symbol positions in the snapshot's panel (every row at its last
    bar; a symbol asked by two requests is two rows). The panel itself (~250 kB for 11 symbols) travels
    only when the member answers ``SnapshotMissing`` — once per snapshot and member replica — and the
    member keeps it (``PanelCache``). ``source``: where the member finds the version's files if it has not
    loaded it (a ``ModelSource`` as a dict)."""

    version: str
    snapshot_id: str
    positions: np.ndarray
    source: dict[str, Any] | None = None
    panel: Panel | None = None

    def __len__(self) -> int:
        return len(self.positions)


@dataclass(frozen=True)
class SnapshotMissing:
    """A member's answer when it does not hold the request's snapshot: send it again with the panel."""

    snapshot_id: str


class PanelCache:
    """The snapshot panels one member replica holds, by snapshot id (the ``keep`` most recently used)."""

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._panels: OrderedDict[str, Panel] = OrderedDict()
        self._lock = threading.Lock()
        self.received = 0

    def get(self, snapshot_id: str) -> Panel | None:
        with self._lock:
            panel = self._panels.get(snapshot_id)
            if panel is not None:
                self._panels.move_to_end(snapshot_id)
            return panel

    def put(self, snapshot_id: str, panel: Panel) -> None:
        with self._lock:
            self._panels[snapshot_id] = panel
            self._panels.move_to_end(snapshot_id)
            self.received += 1
            while len(self._panels) > self.keep:
                self._panels.popitem(last=False)

    def __contains__(self, snapshot_id: str) -> bool:
        with self._lock:
            return snapshot_id in self._panels


def run_member_requests(runner_for: Callable[[str, dict[str, Any] | None], MemberRunner], panels: PanelCache,
                        requests: Sequence[MemberRequest]) -> list[MemberOutput | SnapshotMissing]:
    """A base-model deployment's work for a batch of requests: the requests of one (version, snapshot) run
    through the net together, each gets its own rows back; a request whose snapshot this replica does not
    hold (and that does not carry it) gets ``SnapshotMissing``. ``runner_for(version, source)`` gives the
    runner of a version (loading it when needed)."""
    out: list[MemberOutput | SnapshotMissing | None] = [None] * len(requests)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(requests):
        if r.panel is not None:
            panels.put(r.snapshot_id, r.panel)
        groups.setdefault((r.version, r.snapshot_id), []).append(i)
    for (version, snapshot_id), idx in groups.items():
        panel = panels.get(snapshot_id)
        if panel is None:
            for i in idx:
                out[i] = SnapshotMissing(snapshot_id)
            continue
        runner = runner_for(version, next((requests[i].source for i in idx if requests[i].source), None))
        positions = np.concatenate([np.asarray(requests[i].positions, dtype=np.int64) for i in idx])
        merged = runner.run_positions(panel, positions, snapshot_id, version)
        start = 0
        for i in idx:
            n = len(requests[i])
            out[i] = merged.take(np.arange(start, start + n))
            start += n
    return [o for o in out if o is not None]


class MemberRunner:
    """One base net of one model version: loads only ``<member>.pt`` and runs it on member batches."""

    def __init__(self, meta: ModelMeta, member: str, device: str = "cpu") -> None:
        if member not in meta.members:
            raise ValueError(f"model {meta.version} has no member {member!r} (members: {meta.members})")
        self.meta, self.member = meta, member
        self.version = meta.version
        self.device = resolve_device(device)
        net = build_net(member, len(meta.columns), meta.settings)
        state = torch.load(meta.directory / f"{member}.pt", weights_only=True, map_location="cpu")
        net.load_state_dict(state)
        self.net = net.to(self.device).eval()

    @property
    def graph(self) -> bool:
        return self.member in GRAPH_MEMBERS

    def run(self, batch: MemberBatch) -> MemberOutput:
        if batch.version != self.version:
            raise VersionMismatchError(f"{self.member} runner holds model {self.version}, the batch is for "
                                       f"{batch.version}")
        t0 = time.perf_counter()
        rows = (np.array(batch.rows[0], dtype=np.int64), np.array(batch.rows[1], dtype=np.int64))  # writable
        out = member_outputs(self.member, self.net, batch.panel, None, rows, self.meta.settings,
                             self.device, self.meta.vol_norm)
        return MemberOutput(self.member, self.version, batch.snapshot_id, list(batch.symbols),
                            np.asarray(out.proba, dtype=float), np.asarray(out.log_vol, dtype=float),
                            np.asarray(out.log_vol_var, dtype=float), np.asarray(out.confidence, dtype=float),
                            time.perf_counter() - t0)

    def run_positions(self, panel: Panel, positions: np.ndarray, snapshot_id: str, version: str | None = None
                      ) -> MemberOutput:
        """Rows at the panel's last bar for the symbols at ``positions`` (the whole snapshot panel: a
        sequence net reads only those symbols' windows, the graph net every symbol's), for model
        ``version`` (default this runner's; another one is a VersionMismatchError)."""
        last = np.full(len(positions), len(panel.times) - 1, dtype=np.int64)
        return self.run(MemberBatch(version or self.version, snapshot_id, panel,
                                    (np.array(positions, dtype=np.int64), last),
                                    [panel.symbols[int(i)] for i in positions]))

    def run_many(self, batches: Sequence[MemberBatch]) -> list[MemberOutput]:
        """Several requests' batches through the net together (grouped by version and snapshot)."""
        results: list[MemberOutput | None] = [None] * len(batches)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, b in enumerate(batches):
            groups.setdefault((b.version, b.snapshot_id), []).append(i)
        for idx in groups.values():
            merged, spans = merge_batches([batches[i] for i in idx], self.graph)
            out = self.run(merged)
            for i, span in zip(idx, spans, strict=True):
                results[i] = out.take(span)
        return [r for r in results if r is not None]


# ----------------------------------------------------------------------------------------------- fusion

@functools.lru_cache(maxsize=8)
def _hermite_nodes(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Hermite (probabilists') nodes and normalised weights: ∫ f(x) φ(x) dx ≈ Σ w f(x) (computed once:
    ~0.5 ms a call, a quarter of the fusion step's time per row)."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    x.setflags(write=False)
    w = w / w.sum()
    w.setflags(write=False)
    return x, w


def return_interval(log_vol: float, log_vol_var: float, level: float, nodes: int = 48) -> tuple[float, float]:
    """Central ``level`` interval of the horizon log return r, zero-centred: r | σ ~ N(0, σ²) with
    log σ ~ N(log_vol, log_vol_var) (the predicted realised volatility and its total variance), i.e. q with
    E_σ[2Φ(q/σ) − 1] = level (Gauss–Hermite over log σ, then a root search). Returns (−q, q)."""
    from scipy.optimize import brentq
    from scipy.special import erf

    x, w = _hermite_nodes(nodes)
    sigmas = np.exp(log_vol + math.sqrt(max(log_vol_var, 0.0)) * x)

    def coverage(q: float) -> float:
        return float(np.sum(w * erf(q / (sigmas * math.sqrt(2.0))))) - level

    hi = float(sigmas.max()) * 10.0
    q = brentq(coverage, 0.0, hi, xtol=1e-12 * hi, rtol=1e-10)
    return -q, q


class FusionStep:
    """The ensemble's Bayesian fusion and calibrated confidence, plus the risk manager's size, for one
    model version."""

    def __init__(self, meta: ModelMeta, risk: RiskConfig | None = None, interval_level: float = 0.9) -> None:
        from cryptopredict.models.fusion import BayesianFusion

        self.meta, self.version = meta, meta.version
        self.fusion = BayesianFusion.load(meta.directory / "fusion")
        self.risk = (risk or RiskConfig()).model_copy(update={"horizon": meta.horizon})
        self.interval_level = interval_level

    def fuse(self, outputs: Mapping[str, MemberOutput], sigma: Sequence[float], as_of: pd.Timestamp
             ) -> list[Prediction]:
        """Predictions for the rows the members predicted (same symbols, same order in every member)."""
        members = self.meta.members
        missing = [m for m in members if m not in outputs]
        if missing:
            raise VersionMismatchError(f"fusion of model {self.version} needs outputs of {missing}")
        wrong = {m: o.version for m, o in outputs.items() if o.version != self.version}
        if wrong:
            raise VersionMismatchError(f"fusion holds model {self.version}, member outputs come from {wrong}")
        first = outputs[members[0]]
        if any(outputs[m].symbols != first.symbols or outputs[m].snapshot_id != first.snapshot_id
               for m in members):
            raise ValueError("member outputs cover different rows or snapshots")
        inputs = _fusion_inputs([outputs[m].as_net_predictions() for m in members], np.asarray(sigma, float))
        fused = self.fusion.predict(**inputs)
        proba = np.clip(fused.proba, 1e-9, None)
        proba = proba / proba.sum(axis=1, keepdims=True)  # exactly as DeepEnsemble.predict
        preds = []
        for i, symbol in enumerate(first.symbols):
            p = proba[i]
            size = target_positions(p[None, :], np.array([fused.log_vol[i]]), np.array([fused.confidence[i]]),
                                    self.risk, log_vol_var=np.array([fused.log_vol_var[i]]))
            low, high = return_interval(float(fused.log_vol[i]), float(fused.log_vol_var[i]), self.interval_level)
            preds.append(Prediction(
                symbol=symbol, as_of=as_of.isoformat(), horizon=self.meta.horizon,
                signal=CLASS_NAMES[int(np.argmax(p))],  # type: ignore[arg-type]
                probabilities=ClassProbabilities(SELL=float(p[0]), HOLD=float(p[1]), BUY=float(p[2])),
                confidence=float(np.clip(fused.confidence[i], 0.0, 1.0)),
                predicted_volatility=float(np.exp(fused.log_vol[i])),
                interval=Interval(level=self.interval_level, low=low, high=high),
                uncertainty=Uncertainty(epistemic=float(max(fused.epistemic_dir[i], 0.0)),
                                        aleatoric=float(max(fused.aleatoric_dir[i], 0.0)),
                                        epistemic_vol=float(max(fused.epistemic_vol[i], 0.0)),
                                        aleatoric_vol=float(max(fused.aleatoric_vol[i], 0.0))),
                position_size=float(size[0]),  # finite: a NaN input keeps the previous position, 0
                member_weights={m: float(fused.weights[i, j]) for j, m in enumerate(members)},
                model_version=self.version))
        return preds


# ----------------------------------------------------------------------------------------------- in-process

class Predictor:
    """The whole request path in one process: snapshot → members → fusion → ``Prediction``."""

    def __init__(self, cfg: Config, model_dir: str | Path, version: str | None = None, *,
                 lake: Lake | None = None, clock: Clock | None = None) -> None:
        from cryptopredict.data.ingest import open_lake

        self.cfg = cfg
        self.meta = load_model_meta(model_dir, version)
        self.clock = clock or wall_clock
        self.lake = lake or open_lake(cfg)
        scaler = RobustScaler.load(self.meta.directory / "scaler.json")
        self.cache = SnapshotCache(cfg, self.lake, self.meta, scaler)
        self.members = {m: MemberRunner(self.meta, m, cfg.serving.device) for m in self.meta.members}
        self.fusion = FusionStep(self.meta, cfg.evaluation.risk, cfg.serving.interval_level)

    @property
    def version(self) -> str:
        return self.meta.version

    def snapshot(self) -> Snapshot:
        """The current snapshot, checked for freshness against the clock."""
        snap = self.cache.get()
        check_fresh(snap, self.clock(), self.cfg.serving.max_data_age_hours)
        return snap

    def supported_symbols(self) -> list[str]:
        return list(self.cache.symbols)

    def predict(self, symbol: str, horizon: int | None = None) -> Prediction:
        return self.predict_batch([symbol], horizon)[0]

    def predict_history(self, bars: int, symbols: Sequence[str] | None = None) -> list[Prediction]:
        """Predictions of ``symbols`` (default all) at each of the lake's last ``bars`` bars, as the service
        would have answered at each bar's close (one request-time feature computation for all of them; no
        freshness check). For back-filling a prediction log, or replays."""
        symbols = list(symbols or self.cache.symbols)
        feats = compute_request_features(self.cfg, self.lake, rows=bars + self.meta.window - 1,
                                         lookback=self.cache.lookback + bars, symbols=self.cache.symbols)
        ends = pd.DatetimeIndex(sorted(set(feats.features.index.get_level_values("timestamp"))))[-bars:]
        out: list[Prediction] = []
        for end in ends:
            snap = build_snapshot(self.meta, feats, self.cache.bar, self.cache.scaler,
                                  f"{self.version}@{end.isoformat()}#history", end=end)
            here = [s for s in symbols if snap.last_bar.get(s) == end]
            if not here:
                continue
            outputs = {m: runner.run(member_batch(snap, m, here)) for m, runner in self.members.items()}
            out.extend(self.fusion.fuse(outputs, [snap.sigma.get(s, float("nan")) for s in here], end))
        return out

    def predict_batch(self, symbols: Sequence[str], horizon: int | None = None) -> list[Prediction]:
        check_horizon(self.meta, horizon)
        for s in symbols:
            if s not in self.cache.symbols:
                raise UnknownSymbolError(f"unknown symbol {s!r}; supported: {', '.join(self.cache.symbols)}")
        snap = self.snapshot()
        unique = list(dict.fromkeys(symbols))
        for s in unique:
            check_symbol(snap, s, self.cache.symbols)
        outputs = {m: runner.run(member_batch(snap, m, unique)) for m, runner in self.members.items()}
        preds = self.fusion.fuse(outputs, [snap.sigma.get(s, float("nan")) for s in unique], snap.as_of)
        by_symbol = {p.symbol: p for p in preds}
        return [by_symbol[s] for s in symbols]
