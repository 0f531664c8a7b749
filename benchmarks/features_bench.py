"""Time the whole feature set over the shipped symbols: per family, the ratio to a TA-Lib-only pass over
the same indicators, and 2 Ray workers against 1.

Usage: python benchmarks/features_bench.py [--symbols N]   (needs the shipped data ingested: `make run`)
Prints figures only; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import talib

from cryptopredict.config import load_config
from cryptopredict.data.ingest import ingest_unit_from_snapshot, open_lake, snapshot_units
from cryptopredict.data.ray_ingest import map_units
from cryptopredict.features.pipeline import build_features, read_bars
from cryptopredict.parallel import LOCAL_RAY_ENV

ROOT = Path(__file__).resolve().parents[1]


def talib_only(bars_list) -> float:  # type: ignore[no-untyped-def]
    """The TA-Lib indicators the technical family uses, raw, on every symbol: the floor for that family."""
    t = time.perf_counter()
    for b in bars_list:
        o, h, lo, c, v = (b[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume"))
        for w in (10, 20, 50, 200):
            talib.SMA(c, w), talib.EMA(c, w)
        talib.MACD(c), talib.ADX(h, lo, c, 14), talib.PLUS_DI(h, lo, c, 14), talib.MINUS_DI(h, lo, c, 14)
        talib.SAR(h, lo), talib.RSI(c, 14), talib.RSI(c, 28), talib.STOCH(h, lo, c), talib.WILLR(h, lo, c, 14)
        talib.CCI(h, lo, c, 20), talib.ROC(c, 24), talib.MOM(c, 24), talib.BBANDS(c, 20), talib.ATR(h, lo, c, 14)
        talib.OBV(c, v), talib.MFI(h, lo, c, v, 14), talib.AD(h, lo, c, v)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=11)
    args = ap.parse_args()
    for k, v in LOCAL_RAY_ENV.items():
        os.environ.setdefault(k, v)
    with tempfile.TemporaryDirectory() as tmp:
        symbols = load_config(ROOT / "configs/default.yaml").ingest.symbols[: args.symbols]
        base = load_config(ROOT / "configs/default.yaml", [f"lake.root={tmp}/lake", f"ingest.snapshot_dir={ROOT / 'data'}",
                                                            "ray.parallelism=serial", f"ingest.symbols=[{','.join(symbols)}]"])
        map_units(base, snapshot_units(base), ingest_unit_from_snapshot)
        lake = open_lake(base)
        rows = sum(len(read_bars(lake, base, s)) for s in symbols)
        print(f"feature set over {len(symbols)} symbols, {rows:,} hourly bars, {os.cpu_count()} CPUs")

        t = time.perf_counter()
        serial = build_features(base)
        wall_serial = time.perf_counter() - t
        assert not serial.errors, serial.errors
        print(f"\nin-process, all families: {wall_serial:.1f} s for {serial.columns} columns")
        for fam, sec in sorted(serial.seconds.items(), key=lambda kv: -kv[1]):
            print(f"  {fam:18} {sec:7.2f} s")
        ta = talib_only([read_bars(lake, base, s) for s in symbols])
        tech = serial.seconds.get("technical", float("nan"))
        print(f"technical family {tech:.2f} s vs TA-Lib-only pass {ta:.2f} s: {tech / ta:.1f}x")

        import ray

        for workers in (1, 2):
            cfg = base.model_copy(update={"ray": base.ray.model_copy(update={"parallelism": "tasks",
                                                                               "num_cpus": workers})})
            t = time.perf_counter()
            rep = build_features(cfg)
            wall = time.perf_counter() - t
            assert not rep.errors, rep.errors
            print(f"Ray, {workers} worker(s) (incl. Ray start-up): {wall:.1f} s")
            if workers == 1:
                one = wall
            ray.shutdown()
        print(f"2 workers vs 1: {one / wall:.2f}x speed-up")


if __name__ == "__main__":
    main()
