"""The Ray layer of ingestion: connect to (or start) Ray and map per-unit ingestion over symbols and tables.

``parallelism`` (config ``ray.parallelism``):
  * ``data``   — a Ray Data dataset with one row per unit, one block each, mapped by the per-unit function
                 (the default; the design names Ray Data for per-symbol work);
  * ``tasks``  — one ``@ray.remote`` task per unit;
  * ``serial`` — in this process, no Ray (debugging, and the baseline of benchmarks/ingest_parallelism.py).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from cryptopredict.config import Config
from cryptopredict.data.ingest import IngestReport, Unit, guarded

log = logging.getLogger(__name__)

# A locally started single-node Ray: listeners on 127.0.0.1, no auth token file, no telemetry.
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                 "RAY_USAGE_STATS_ENABLED": "0"}

UnitFn = Callable[[Config, Unit], IngestReport]


def absolute_paths(cfg: Config) -> Config:
    """Local lake and snapshot paths made absolute, so Ray workers (other cwd) write to the same place."""
    out = cfg.model_copy(deep=True)
    if "://" not in out.lake.root:
        out.lake.root = str(Path(out.lake.root).expanduser().resolve())
    out.ingest.snapshot_dir = str(Path(out.ingest.snapshot_dir).expanduser().resolve())
    return out


def connect_ray(cfg: Config) -> bool:
    """Join ``ray.address`` / RAY_ADDRESS if set, else start a local Ray. Returns True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return False
    for var, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(var, value)
    ray.init(address="local", num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory_mb * 1024**2,
             include_dashboard=False, log_to_driver=True)
    return True


def _row_fn(fn: UnitFn, cfg: Config) -> Callable[[dict], dict]:
    def apply(row: dict) -> dict:
        unit = Unit(row["kind"], row["name"])
        return {"report": json.dumps(guarded(fn)(cfg, unit).to_row())}  # JSON: ragged dicts vs Arrow

    return apply


def map_units(cfg: Config, units: list[Unit], fn: UnitFn) -> list[IngestReport]:
    """Run ``fn(cfg, unit)`` for every unit with the configured parallelism; reports in unit order."""
    cfg = absolute_paths(cfg)
    mode = cfg.ray.parallelism
    if mode == "serial":
        return [guarded(fn)(cfg, u) for u in tqdm(units, desc="ingest", unit="unit")]
    import ray

    started = connect_ray(cfg)
    try:
        if mode == "tasks":
            remote = ray.remote(num_cpus=1)(guarded(fn))
            refs = [remote.remote(cfg, u) for u in units]
            with tqdm(total=len(refs), desc="ingest", unit="unit") as bar:
                pending = list(refs)
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    bar.update(len(done))
            return ray.get(refs)
        ds = ray.data.from_items([{"kind": u.kind, "name": u.name} for u in units],
                                 override_num_blocks=len(units))
        rows = ds.map(_row_fn(fn, cfg), num_cpus=1).take_all()
        reports = [IngestReport(**json.loads(r["report"])) for r in rows]
        by_unit = {(r.table, r.unit): r for r in reports}
        return [by_unit[(u.kind, u.name)] for u in units]
    finally:
        if started:
            ray.shutdown()
