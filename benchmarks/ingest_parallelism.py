"""Ingest the whole shipped snapshot into fresh lakes: in-process vs Ray tasks vs Ray Data.

Prints wall-clock seconds per mode and the ratios to in-process, side by side in one run. Ray's start-up is
timed apart (it is paid once per job, not per unit). Usage: python benchmarks/ingest_parallelism.py [repeats]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray

from cryptopredict.config import load_config
from cryptopredict.data.ingest import ingest_unit_from_snapshot, snapshot_units
from cryptopredict.data.ray_ingest import map_units
from cryptopredict.parallel import LOCAL_RAY_ENV

ROOT = Path(__file__).resolve().parents[1]


def main(repeats: int = 3) -> None:
    import os

    for k, v in LOCAL_RAY_ENV.items():
        os.environ.setdefault(k, v)
    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, object_store_memory=256 * 1024**2, log_to_driver=False)
    startup = time.perf_counter() - t0
    times: dict[str, list[float]] = {"serial": [], "tasks": [], "data": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for mode in times:
                cfg = load_config(ROOT / "configs/default.yaml",
                                  [f"lake.root={tmp}/{mode}-{i}", f"ingest.snapshot_dir={ROOT / 'data'}",
                                   f"ray.parallelism={mode}"])
                units = snapshot_units(cfg)
                t = time.perf_counter()
                reports = map_units(cfg, units, ingest_unit_from_snapshot)
                times[mode].append(time.perf_counter() - t)
                assert not any(r.error for r in reports), [r.error for r in reports if r.error]
    ray.shutdown()
    rows = sum(r.rows_in for r in reports)
    print(f"ingest of the shipped snapshot: {len(units)} units, {rows:,} rows, {os.cpu_count()} CPUs, "
          f"{repeats} repeats (median)")
    print(f"Ray start-up (once per job): {startup:.2f} s")
    base = statistics.median(times["serial"])
    print(f"{'mode':8} {'median s':>9} {'min s':>7} {'vs serial':>10}")
    for mode, ts in times.items():
        med = statistics.median(ts)
        print(f"{mode:8} {med:9.2f} {min(ts):7.2f} {med / base:9.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
