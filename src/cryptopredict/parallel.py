"""The Ray layer shared by ingestion and feature computation: connect to (or start) Ray, and map a plain
per-item function over items with the configured parallelism.

``parallelism`` (config ``ray.parallelism``):
  * ``data``   — a Ray Data dataset with one row per item, one block each, ``map``ped by the function
                 (the default; the design names Ray Data for per-symbol work);
  * ``tasks``  — one ``@ray.remote`` task per item;
  * ``serial`` — in this process, no Ray (debugging, and the baseline of the benchmarks).
Items and results are JSON-able dicts, so every mode returns the same thing; results come back in item order.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from cryptopredict.config import Config

log = logging.getLogger(__name__)

# A locally started single-node Ray: listeners on 127.0.0.1, no auth token file, no telemetry.
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                 "RAY_USAGE_STATS_ENABLED": "0"}

ItemFn = Callable[[Config, dict], dict]


def absolute_paths(cfg: Config) -> Config:
    """Local lake and snapshot paths made absolute, so Ray workers (other cwd) use the same place."""
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
    ray.init(address="local", num_cpus=cfg.ray.num_cpus,
             object_store_memory=cfg.ray.object_store_memory_mb * 1024**2,
             include_dashboard=False, log_to_driver=True)
    return True


def _json_row_fn(fn: ItemFn, cfg: Config) -> Callable[[dict], dict]:
    def apply(row: dict) -> dict:
        return {"result": json.dumps(fn(cfg, json.loads(row["item"])))}  # JSON: ragged dicts vs Arrow

    return apply


def parallel_map(cfg: Config, items: list[dict], fn: ItemFn, *, desc: str = "work",
                 concurrency: int | None = None, num_cpus: float = 1.0) -> list[dict]:
    """``[fn(cfg, item) for item in items]`` with the configured parallelism, results in item order;
    at most ``concurrency`` items at once (None: as many as the CPUs allow), each reserving ``num_cpus``."""
    cfg = absolute_paths(cfg)
    mode = cfg.ray.parallelism
    if mode == "serial":
        return [fn(cfg, item) for item in tqdm(items, desc=desc, unit="item")]
    import ray

    started = connect_ray(cfg)
    try:
        if mode == "tasks":
            remote = ray.remote(num_cpus=num_cpus)(fn)
            limit = concurrency or len(items)
            refs = [remote.remote(cfg, item) for item in items[:limit]]
            with tqdm(total=len(items), desc=desc, unit="item") as bar:
                pending = list(refs)
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    bar.update(len(done))
                    if len(refs) < len(items):
                        refs.append(remote.remote(cfg, items[len(refs)]))
                        pending.append(refs[-1])
            return ray.get(refs)
        ds = ray.data.from_items([{"index": i, "item": json.dumps(item)} for i, item in enumerate(items)],
                                 override_num_blocks=len(items))
        rows = ds.map(lambda row: {"index": row["index"], **_json_row_fn(fn, cfg)(row)}, num_cpus=num_cpus,
                      **({"concurrency": concurrency} if concurrency else {})).take_all()
        return [json.loads(r["result"]) for r in sorted(rows, key=lambda r: r["index"])]
    finally:
        if started:
            ray.shutdown()
