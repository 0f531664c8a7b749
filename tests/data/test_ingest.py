"""Ingesting the shipped snapshot: counts, context tables, idempotent re-runs, and the Ray layer."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cryptopredict.config import load_config
from cryptopredict.data.ingest import Unit, ingest_unit_from_snapshot, open_lake, snapshot_units
from cryptopredict.data.lake import DATA_FILE
from cryptopredict.data.ray_ingest import map_units
from tests.conftest import SHIPPED_DATA


def _cfg(root: Path, mode: str = "serial", symbols: str = "[SOLUSDT,AVAXUSDT]"):  # type: ignore[no-untyped-def]
    return load_config(None, [f"lake.root={root}", f"ingest.snapshot_dir={SHIPPED_DATA}",
                              f"ingest.symbols={symbols}", f"ray.parallelism={mode}"])


def _lake_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob(DATA_FILE))}


def test_snapshot_ingest_counts_match_the_shipped_files_and_reruns_change_nothing(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    first = {r.unit: r for r in map_units(cfg, snapshot_units(cfg), ingest_unit_from_snapshot)}
    assert not any(r.error for r in first.values())
    # data/README.md: SOLUSDT 42,814 rows, 10 gaps, 20 missing hours; AVAXUSDT 41,806 rows, 10 gaps, 20 missing
    assert (first["SOLUSDT"].inserted, first["SOLUSDT"].gaps, first["SOLUSDT"].missing_bars) == (42_814, 10, 20)
    assert (first["AVAXUSDT"].rows_after, first["AVAXUSDT"].gaps) == (41_806, 10)
    assert first["fear_greed"].rows_after == 2_703 and first["news"].rows_after == 7_522

    raw = pd.read_parquet(SHIPPED_DATA / "onchain_btc_daily.parquet")
    assert first["onchain"].rows_after == int(raw.drop(columns="date").notna().sum().sum())
    lake = open_lake(cfg)
    diff = lake.read("onchain", where={"asset": "btc"})
    diff = diff[diff["metric"] == "difficulty"]
    assert str(diff["date"].min().date()) == "2020-04-11"  # NaN spans are absent rows, not zeros
    gaps = lake.read("gaps", where={"symbol": "SOLUSDT"})
    assert int(gaps["missing_bars"].sum()) == 20

    before = _lake_bytes(tmp_path)
    second = map_units(cfg, snapshot_units(cfg), ingest_unit_from_snapshot)
    assert all((r.inserted, r.updated) == (0, 0) and r.unchanged == r.rows_in for r in second)
    assert _lake_bytes(tmp_path) == before


def test_a_failing_unit_is_reported_and_the_others_still_land(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, symbols="[SOLUSDT,NOPEUSDT]")
    reports = map_units(cfg, [Unit("ohlcv", "SOLUSDT"), Unit("ohlcv", "NOPEUSDT")], ingest_unit_from_snapshot)
    assert reports[0].error is None and reports[0].rows_after == 42_814
    assert "NOPEUSDT" in (reports[1].error or "") and "not in the shipped dataset" in (reports[1].error or "")


@pytest.mark.ray
@pytest.mark.parametrize("mode", ["data", "tasks"])
def test_ray_modes_write_the_same_lake_as_serial(tmp_path: Path, mode: str, ray_session: None) -> None:
    symbols = "[SOLUSDT,DOTUSDT,AVAXUSDT]"
    serial_cfg = _cfg(tmp_path / "serial", symbols=symbols)
    ray_cfg = _cfg(tmp_path / mode, mode=mode, symbols=symbols)
    units = [u for u in snapshot_units(serial_cfg) if u.kind in ("ohlcv", "macro")]
    map_units(serial_cfg, units, ingest_unit_from_snapshot)
    reports = map_units(ray_cfg, units, ingest_unit_from_snapshot)
    assert [r.unit for r in reports] == [u.name for u in units]
    for table in ("ohlcv", "macro", "gaps"):
        pd.testing.assert_frame_equal(open_lake(serial_cfg).read(table), open_lake(ray_cfg).read(table))
