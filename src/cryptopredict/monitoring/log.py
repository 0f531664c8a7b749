"""The prediction log: every served :class:`~cryptopredict.serving.schemas.Prediction`, flattened, plus its
request metadata, as Parquet part files under ``<log_root>/predictions/date=YYYY-MM-DD/``.

Writes only ever ADD files: each flush writes one new part with a unique name (time, host, pid, random),
locally to a dot-named temp file that is fsynced and renamed into place (a reader, or a process killed
mid-write, sees the whole part or nothing; readers ignore dot-files), on object stores by one PUT (atomic
by itself). Any number of threads and processes can write at once without coordination.

Compaction merges a partition's parts into one ``compact-*.parquet`` whose Parquet metadata lists the
parts it replaces; readers skip files listed by a compacted file that is present, so the switch is
atomic even if the compactor dies before deleting the sources (the next compaction deletes them).
Compactions of one partition are serialised by a lock file locally; on object stores run one compactor.

Row times are UTC. ``as_of`` is the Prediction's ``as_of`` parsed as a timestamp; ``request_time`` is when
the request was answered (the caller's clock, default: the call to ``log``).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cryptopredict.data.lake import resolve_filesystem
from cryptopredict.data.schemas import UTC_TS
from cryptopredict.fsutil import atomic_write_local, locked_dir
from cryptopredict.serving.schemas import Prediction

log = logging.getLogger(__name__)

LOG_DIR = "predictions"
COMPACT_PREFIX = "compact-"
SUPERSEDES_KEY = b"cryptopredict.supersedes"

LOG_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("request_time", UTC_TS),
    ("latency_ms", pa.float64()),
    ("route", pa.string()),
    ("symbol", pa.string()),
    ("as_of", UTC_TS),
    ("horizon", pa.int32()),
    ("signal", pa.string()),
    ("p_sell", pa.float64()),
    ("p_hold", pa.float64()),
    ("p_buy", pa.float64()),
    ("confidence", pa.float64()),
    ("predicted_volatility", pa.float64()),
    ("interval_level", pa.float64()),
    ("interval_low", pa.float64()),
    ("interval_high", pa.float64()),
    ("epistemic", pa.float64()),
    ("aleatoric", pa.float64()),
    ("epistemic_vol", pa.float64()),
    ("aleatoric_vol", pa.float64()),
    ("position_size", pa.float64()),
    ("member_weights", pa.string()),  # JSON object: base model → fusion weight
    ("model_version", pa.string()),
])
LOG_COLUMNS = LOG_SCHEMA.names


def prediction_row(prediction: Prediction, latency_ms: float, *, request_id: str | None = None,
                   request_time: float | None = None, route: str | None = None) -> dict[str, Any]:
    """One log row (plain Python values; ``as_of`` still the ISO text, ``request_time`` epoch seconds).

    Cheap on purpose (attribute reads only): parsing and Arrow conversion happen at flush time."""
    p, u, i = prediction.probabilities, prediction.uncertainty, prediction.interval
    return {
        "request_id": request_id or uuid.uuid4().hex, "request_time": time.time() if request_time is None
        else request_time, "latency_ms": float(latency_ms), "route": route, "symbol": prediction.symbol,
        "as_of": prediction.as_of, "horizon": prediction.horizon, "signal": prediction.signal,
        "p_sell": p.SELL, "p_hold": p.HOLD, "p_buy": p.BUY, "confidence": prediction.confidence,
        "predicted_volatility": prediction.predicted_volatility, "interval_level": i.level,
        "interval_low": i.low, "interval_high": i.high, "epistemic": u.epistemic, "aleatoric": u.aleatoric,
        "epistemic_vol": u.epistemic_vol, "aleatoric_vol": u.aleatoric_vol,
        "position_size": prediction.position_size, "member_weights": prediction.member_weights,
        "model_version": prediction.model_version,
    }


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows of :func:`prediction_row` → an Arrow table of :data:`LOG_SCHEMA` (ISO as_of parsed as UTC)."""
    cols: dict[str, Any] = {c: [r[c] for r in rows] for c in LOG_COLUMNS}
    as_of = pd.to_datetime(pd.Series(cols["as_of"], dtype=object), utc=True, format="ISO8601", errors="coerce")
    bad = int(as_of.isna().sum())
    if bad:  # kept (the rest of the row is valid); their outcomes show as status no_data
        log.warning("%d prediction log rows have an as_of that is not an ISO time (stored as null), e.g. %r",
                    bad, cols["as_of"][int(np.flatnonzero(as_of.isna().to_numpy())[0])])
    cols["as_of"] = as_of
    cols["request_time"] = pd.to_datetime(pd.Series(cols["request_time"], dtype=float), unit="s", utc=True)
    cols["member_weights"] = [json.dumps(w, sort_keys=True) for w in cols["member_weights"]]
    return pa.table({c: pa.array(cols[c], type=LOG_SCHEMA.field(c).type) for c in LOG_COLUMNS},
                    schema=LOG_SCHEMA)


def _utc(ts: pd.Timestamp | str) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:40] or "host"


@dataclass(frozen=True)
class CompactionResult:
    """One compacted partition: how many parts became one file, with how many rows."""

    partition: str
    parts: int
    rows: int
    path: str


class LogStore:
    """File-level access to a prediction log root (a local directory or ``s3://bucket/prefix``)."""

    def __init__(self, root: str | os.PathLike[str], *, filesystem: pafs.FileSystem | None = None,
                 s3_region: str | None = None, s3_endpoint: str | None = None) -> None:
        self.root = str(root)
        if filesystem is not None:
            self.fs, self.base = filesystem, self.root.rstrip("/")
            self.is_local = isinstance(filesystem, pafs.LocalFileSystem)
        else:
            self.fs, self.base, self.is_local = resolve_filesystem(self.root, s3_region=s3_region,
                                                                   s3_endpoint=s3_endpoint)

    @classmethod
    def from_config(cls, cfg: Any) -> LogStore:
        """The log of a project :class:`~cryptopredict.config.Config` (s3 settings from ``cfg.lake``)."""
        return cls(cfg.monitoring.log_root, s3_region=cfg.lake.s3_region, s3_endpoint=cfg.lake.s3_endpoint)

    def __repr__(self) -> str:
        return f"LogStore({self.root!r})"

    # ------------------------------------------------------------------ paths
    def _path(self, *parts: str) -> str:
        return "/".join(p for p in (self.base, *parts) if p)

    def partitions(self) -> list[str]:
        """``date=YYYY-MM-DD`` directory names present, sorted."""
        top = self._path(LOG_DIR)
        if self.fs.get_file_info(top).type == pafs.FileType.NotFound:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(top))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory
                      and i.base_name.startswith("date="))

    def _data_files(self, partition: str) -> list[pafs.FileInfo]:
        directory = self._path(LOG_DIR, partition)
        infos = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        return [i for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                and not i.base_name.startswith(".")]

    def _superseded(self, files: list[pafs.FileInfo]) -> set[str]:
        """Base names listed as replaced by the compacted files among ``files``."""
        out: set[str] = set()
        for info in files:
            if info.base_name.startswith(COMPACT_PREFIX):
                meta = pq.read_schema(info.path, filesystem=self.fs).metadata or {}
                out.update(json.loads(meta.get(SUPERSEDES_KEY, b"[]")))
        return out

    def live_files(self, partition: str | None = None) -> list[str]:
        """Paths of the part files that hold the log's rows (superseded parts excluded), sorted."""
        out: list[str] = []
        for part in [partition] if partition else self.partitions():
            files = self._data_files(part)
            gone = self._superseded(files)
            out.extend(i.path for i in files if i.base_name not in gone)
        return sorted(out)

    # ------------------------------------------------------------------ writes
    def _put_atomic(self, path: str, write: Any) -> None:
        """Write a new file at ``path`` through ``write(file_object)``: temp + fsync + rename locally."""
        directory, name = path.rsplit("/", 1)
        if not self.is_local:
            self.fs.create_dir(directory, recursive=True)
            with self.fs.open_output_stream(path) as out:  # an object-store PUT is atomic
                write(out)
            return
        atomic_write_local(path, write, durable_dir=True)

    def write_part(self, table: pa.Table, *, prefix: str = "part-") -> list[str]:
        """Append ``table`` (of :data:`LOG_SCHEMA`) as new part files, one per request date. Paths back."""
        if table.num_rows == 0:
            return []
        dates = pd.DatetimeIndex(table.column("request_time").to_pandas()).strftime("%Y-%m-%d")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        paths = []
        for date in sorted(set(dates)):
            sub = table.filter(pa.array(dates == date)) if len(set(dates)) > 1 else table
            name = f"{prefix}{stamp}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:12]}.parquet"
            path = self._path(LOG_DIR, f"date={date}", name)
            self._put_atomic(path, lambda fh, t=sub: pq.write_table(t, fh, compression="zstd"))
            paths.append(path)
        return paths

    # ------------------------------------------------------------------ reads
    def read(self, *, since: pd.Timestamp | None = None, until: pd.Timestamp | None = None,
             columns: list[str] | None = None) -> pd.DataFrame:
        """Every logged row (optionally with ``since <= request_time < until``), sorted by request time.

        A compaction running at the same time may delete a file between listing and reading; the read is
        then retried on a fresh listing."""
        for attempt in range(5):
            try:
                return self._read_once(since, until, columns)
            except (FileNotFoundError, OSError) as exc:
                if attempt == 4:
                    raise
                log.debug("prediction log changed while reading (%s); reading again", exc)
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _read_once(self, since: pd.Timestamp | None, until: pd.Timestamp | None,
                   columns: list[str] | None) -> pd.DataFrame:
        parts = self.partitions()
        since = None if since is None else _utc(since)
        until = None if until is None else _utc(until)
        if since is not None:
            parts = [p for p in parts if p >= f"date={since.strftime('%Y-%m-%d')}"]
        if until is not None:
            parts = [p for p in parts if p <= f"date={until.strftime('%Y-%m-%d')}"]
        files = [f for p in parts for f in self.live_files(p)]
        cols = columns or LOG_COLUMNS
        if not files:
            return LOG_SCHEMA.empty_table().select(cols).to_pandas()
        dataset = pads.dataset(files, schema=LOG_SCHEMA, format="parquet", filesystem=self.fs)
        flt = None
        if since is not None:
            flt = pads.field("request_time") >= pa.scalar(since, type=UTC_TS)
        if until is not None:
            upper = pads.field("request_time") < pa.scalar(until, type=UTC_TS)
            flt = upper if flt is None else flt & upper
        df = dataset.to_table(columns=cols, filter=flt).to_pandas()
        if "request_time" in df:
            df = df.sort_values("request_time", kind="stable", ignore_index=True)
        return df

    # ------------------------------------------------------------------ compaction
    @contextmanager
    def _locked(self, partition: str) -> Iterator[None]:
        if not self.is_local:
            yield
            return
        with locked_dir(self._path(LOG_DIR, partition), ".compact.lock"):
            yield

    def _sweep_temps(self, partition: str, older_than_s: float) -> int:
        """Delete temp files of writers killed mid-write (only old ones: others may be mid-write now)."""
        if not self.is_local:
            return 0
        n = 0
        cutoff = time.time() - older_than_s
        for stale in Path(self._path(LOG_DIR, partition)).glob(".tmp-*"):
            try:
                if stale.stat().st_mtime <= cutoff:
                    stale.unlink()
                    n += 1
            except FileNotFoundError:
                pass
        return n

    def _delete(self, path: str) -> None:
        self.fs.delete_file(path)

    def compact(self, *, before: pd.Timestamp | str | None = None, stale_temp_seconds: float = 3600.0,
                min_parts: int = 2) -> list[CompactionResult]:
        """Merge each partition's parts into one file (partitions whose date is before ``before`` only,
        e.g. today, to leave the partition being written alone; None: all). Idempotent and crash-safe."""
        cutoff = None if before is None else f"date={_utc(before).strftime('%Y-%m-%d')}"
        results = []
        for partition in self.partitions():
            if cutoff is not None and partition >= cutoff:
                continue
            with self._locked(partition):
                self._sweep_temps(partition, stale_temp_seconds)
                files = self._data_files(partition)
                gone = self._superseded(files)
                for info in files:  # sources a killed compaction left behind: their rows live on
                    if info.base_name in gone:
                        self._delete(info.path)
                live = [i for i in files if i.base_name not in gone]
                if len(live) < min_parts:
                    continue
                paths = sorted(i.path for i in live)
                table = pads.dataset(paths, schema=LOG_SCHEMA, format="parquet", filesystem=self.fs).to_table()
                table = table.sort_by([("request_time", "ascending"), ("request_id", "ascending")])
                names = sorted(i.base_name for i in live)
                table = table.replace_schema_metadata({SUPERSEDES_KEY: json.dumps(names).encode()})
                name = f"{COMPACT_PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"
                path = self._path(LOG_DIR, partition, f"{name}.parquet")
                self._put_atomic(path, lambda fh, t=table: pq.write_table(t, fh, compression="zstd"))
                for p in paths:
                    self._delete(p)
                results.append(CompactionResult(partition, len(paths), table.num_rows, path))
        return results

    # ------------------------------------------------------------------ small JSON documents (monitor state)
    def write_json(self, name: str, obj: object) -> None:
        """An atomically replaced JSON document at ``<log_root>/<name>``."""
        data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
        path = self._path(name)
        if not self.is_local:
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(path) as out:
                out.write(data)
            return
        atomic_write_local(path, data)

    def read_json(self, name: str) -> Any | None:
        """The JSON document at ``<log_root>/<name>``, or None when there is none."""
        path = self._path(name)
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        with self.fs.open_input_stream(path) as fh:
            return json.loads(fh.read())


class PredictionLogger:
    """Buffers log rows in memory and writes them as part files from a background thread.

    ``log`` only appends to a deque under a lock (no I/O), so async request handlers can call it inline.
    A part is written when ``flush_rows`` rows wait, when the oldest waiting row is ``flush_seconds`` old,
    on ``flush()`` and on ``close()`` (also registered at interpreter exit). A failed write keeps its rows
    for the next attempt; if more than ``max_buffer_rows`` wait, the oldest are dropped, counted in
    ``dropped_rows`` and logged at ERROR. Create one logger per process (e.g. in a replica's ``__init__``).
    """

    def __init__(self, store: LogStore, *, flush_rows: int = 256, flush_seconds: float = 5.0,
                 max_buffer_rows: int = 100_000, registry: Any | None = None) -> None:
        if flush_rows < 1 or flush_seconds <= 0 or max_buffer_rows < flush_rows:
            raise ValueError("need flush_rows >= 1, flush_seconds > 0 and max_buffer_rows >= flush_rows")
        self.store = store
        self.flush_rows, self.flush_seconds, self.max_buffer_rows = flush_rows, flush_seconds, max_buffer_rows
        self._buffer: deque[dict[str, Any]] = deque()
        self._oldest: float | None = None  # monotonic time the oldest waiting row arrived
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.rows_logged = 0
        self.rows_written = 0
        self.parts_written = 0
        self.dropped_rows = 0
        self.flush_errors = 0
        self._counters = _logger_counters(registry) if registry is not None else None
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @classmethod
    def from_config(cls, cfg: Any, *, registry: Any | None = None) -> PredictionLogger:
        """A logger on ``cfg.monitoring.log_root`` with the configured flush settings."""
        m = cfg.monitoring
        return cls(LogStore.from_config(cfg), flush_rows=m.flush_rows, flush_seconds=m.flush_seconds,
                   max_buffer_rows=m.max_buffer_rows, registry=registry)

    def __enter__(self) -> PredictionLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the hot path
    def log(self, prediction: Prediction, latency_ms: float, *, request_id: str | None = None,
            request_time: float | None = None, route: str | None = None) -> None:
        """Queue one served prediction (non-blocking: no I/O). ``request_time``: epoch seconds (default
        now); ``request_id``: default a random hex id; ``latency_ms``: the request's serving time."""
        self._append([prediction_row(prediction, latency_ms, request_id=request_id, request_time=request_time,
                                     route=route)])

    def log_many(self, predictions: Iterable[Prediction], latency_ms: float, *, request_id: str | None = None,
                 request_time: float | None = None, route: str | None = None) -> None:
        """Queue the predictions of one batch request (same request id, time and latency for each)."""
        rid = request_id or uuid.uuid4().hex
        now = time.time() if request_time is None else request_time
        self._append([prediction_row(p, latency_ms, request_id=rid, request_time=now, route=route)
                      for p in predictions])

    def _append(self, rows: list[dict[str, Any]]) -> None:
        dropped = 0
        with self._lock:
            if self._closed:
                raise RuntimeError("PredictionLogger.log after close()")
            first = not self._buffer
            if first:
                self._oldest = time.monotonic()
            self._buffer.extend(rows)
            self.rows_logged += len(rows)
            while len(self._buffer) > self.max_buffer_rows:
                self._buffer.popleft()
                dropped += 1
            self.dropped_rows += dropped
            full = len(self._buffer) >= self.flush_rows
        if dropped:
            log.error("prediction log buffer full (%d rows; writes failing?): dropped %d oldest rows",
                      self.max_buffer_rows, dropped)
            if self._counters:
                self._counters["dropped"].inc(dropped)
        if self._counters:
            self._counters["logged"].inc(len(rows))
        if full or first:  # first: the writer re-arms its timer for this row's deadline
            self._wake.set()

    # ------------------------------------------------------------------ writing
    def _run(self) -> None:
        while True:
            with self._lock:
                closed = self._closed
                wait = self.flush_seconds if self._oldest is None else max(
                    0.0, self._oldest + self.flush_seconds - time.monotonic())
            if closed:
                return
            self._wake.wait(timeout=wait)
            self._wake.clear()
            with self._lock:
                due = len(self._buffer) >= self.flush_rows or (
                    self._oldest is not None and time.monotonic() - self._oldest >= self.flush_seconds)
                closed = self._closed
            if due and not closed:
                if not self._write_pending():
                    time.sleep(min(self.flush_seconds, 1.0))  # back off after a failed write

    def _write_pending(self) -> bool:
        """Write everything waiting as part files; on failure put the rows back. True if nothing failed."""
        with self._write_lock:
            with self._lock:
                rows = list(self._buffer)
                self._buffer.clear()
                self._oldest = None
            if not rows:
                return True
            try:
                paths = self.store.write_part(rows_to_table(rows))
            except Exception:  # noqa: BLE001 - the rows are kept and retried; serving must not fail
                self.flush_errors += 1
                if self._counters:
                    self._counters["errors"].inc()
                log.exception("writing %d prediction log rows to %s failed; keeping them for a retry",
                              len(rows), self.store.root)
                with self._lock:
                    self._buffer.extendleft(reversed(rows))
                    self._oldest = time.monotonic()
                    overflow = len(self._buffer) - self.max_buffer_rows
                    for _ in range(max(0, overflow)):
                        self._buffer.popleft()
                    self.dropped_rows += max(0, overflow)
                if overflow > 0:
                    log.error("prediction log buffer full: dropped %d oldest rows", overflow)
                    if self._counters:
                        self._counters["dropped"].inc(overflow)
                return False
            self.rows_written += len(rows)
            self.parts_written += len(paths)
            if self._counters:
                self._counters["written"].inc(len(rows))
            return True

    def flush(self) -> None:
        """Write every waiting row now (blocking); raises if the write fails (the rows stay queued)."""
        if not self._write_pending():
            raise OSError(f"writing the prediction log to {self.store.root!r} failed; rows kept for a retry")

    def pending(self) -> int:
        """Rows waiting to be written."""
        with self._lock:
            return len(self._buffer)

    def close(self) -> None:
        """Stop the writer thread and write what is left (idempotent). Rows that cannot be written are
        logged at ERROR with their count."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        self._wake.set()
        self._thread.join(timeout=30)
        if not self._write_pending():
            log.error("prediction log closed with %d rows unwritten", self.pending())


def _logger_counters(registry: Any) -> dict[str, Any]:
    from prometheus_client import Counter

    return {
        "logged": Counter("cryptopredict_prediction_log_rows", "prediction log rows queued",
                          registry=registry),
        "written": Counter("cryptopredict_prediction_log_written_rows", "prediction log rows written",
                           registry=registry),
        "dropped": Counter("cryptopredict_prediction_log_dropped_rows", "prediction log rows dropped "
                           "(buffer full while writes failed)", registry=registry),
        "errors": Counter("cryptopredict_prediction_log_write_errors", "failed prediction log writes",
                          registry=registry),
    }
