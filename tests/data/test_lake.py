"""The Parquet lake: upserts by key, idempotency, partitions, atomic files, non-local filesystems."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest

from cryptopredict.data.lake import DATA_FILE, Lake, parse_partition_path, partition_path
from cryptopredict.data.schemas import OHLCV, QUARANTINE
from tests.support.frames import ohlcv_frame


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob(DATA_FILE))}


def test_upsert_inserts_then_reports_unchanged_and_writes_nothing(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    df = ohlcv_frame(24)
    first = lake.upsert("ohlcv", df)
    assert [(r.inserted, r.updated, r.unchanged, r.rows_after) for r in first] == [(24, 0, 0, 24)]
    before = _files(tmp_path)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob(DATA_FILE)}
    again = lake.upsert("ohlcv", df.sample(frac=1.0, random_state=1))  # same rows, other order
    assert [(r.inserted, r.updated, r.unchanged) for r in again] == [(0, 0, 24)]
    assert _files(tmp_path) == before
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob(DATA_FILE)} == mtimes
    pd.testing.assert_frame_equal(lake.read("ohlcv"), df.reset_index(drop=True), check_dtype=True)


def test_upsert_replaces_changed_rows_and_appends_new_ones_without_duplicates(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    update = ohlcv_frame(30)  # 24 known keys (6 with a new volume) and 6 new ones
    lake.upsert("ohlcv", update.iloc[:24])
    update = update.copy()
    update.loc[18:23, "volume"] = 999.0
    res = lake.upsert("ohlcv", update)
    assert [(r.inserted, r.updated, r.unchanged, r.rows_after) for r in res] == [(6, 6, 18, 30)]
    out = lake.read("ohlcv")
    assert len(out) == 30 and not out.duplicated(list(OHLCV.key)).any()
    assert out["timestamp"].is_monotonic_increasing
    assert (out.loc[18:23, "volume"] == 999.0).all()


def test_partitions_are_hive_style_and_selectable(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.upsert("ohlcv", pd.concat([ohlcv_frame(5, symbol="BTCUSDT"), ohlcv_frame(7, symbol="ETHUSDT")]))
    assert lake.partitions("ohlcv") == [
        "exchange=binance/symbol=BTCUSDT/timeframe=1h", "exchange=binance/symbol=ETHUSDT/timeframe=1h"]
    assert (tmp_path / "ohlcv/exchange=binance/symbol=ETHUSDT/timeframe=1h" / DATA_FILE).is_file()
    eth = lake.read("ohlcv", where={"symbol": "ETHUSDT"})
    assert len(eth) == 7 and set(eth["symbol"]) == {"ETHUSDT"}
    with pytest.raises(ValueError, match="partition columns"):
        lake.read("ohlcv", where={"close": 1})


def test_partition_values_are_quoted_and_round_trip() -> None:
    path = partition_path(QUARANTINE, {"table": "ohlcv", "partition": "exchange=binance/symbol=BTCUSDT"})
    assert "/" not in path.split("/", 1)[1]
    assert parse_partition_path(path) == {"table": "ohlcv", "partition": "exchange=binance/symbol=BTCUSDT"}


def test_upsert_rejects_duplicate_keys_and_wrong_schema(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    df = ohlcv_frame(3)
    with pytest.raises(ValueError, match="duplicate keys"):
        lake.upsert("ohlcv", pd.concat([df, df.iloc[:1]]))
    with pytest.raises(ValueError, match="missing columns"):
        lake.upsert("ohlcv", df.drop(columns=["volume"]))
    with pytest.raises(ValueError, match="unknown lake table 'prices'"):
        lake.upsert("prices", df)
    assert lake.partitions("ohlcv") == []


def test_quarantine_keeps_the_first_sighting(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    row = {"table": "ohlcv", "partition": "p", "row_key": '{"k": 1}', "reason": "ohlc_inconsistent",
           "detail": "d", "row": "{}", "quarantined_at": pd.Timestamp("2024-01-01", tz="UTC")}
    lake.append_quarantine(pd.DataFrame([row]))
    later = dict(row, quarantined_at=pd.Timestamp("2025-01-01", tz="UTC"))
    res = lake.append_quarantine(pd.DataFrame([later]))
    assert [(r.inserted, r.unchanged) for r in res] == [(0, 1)]
    assert lake.read("quarantine")["quarantined_at"].tolist() == [pd.Timestamp("2024-01-01", tz="UTC")]


def test_leftover_temp_files_are_ignored_and_swept(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    rows = ohlcv_frame(5)
    lake.upsert("ohlcv", rows.iloc[:4])
    part = tmp_path / "ohlcv/exchange=binance/symbol=BTCUSDT/timeframe=1h"
    stale = part / ".tmp-deadbeef.parquet"
    stale.write_bytes(b"half a parquet file")  # what a writer killed mid-write leaves
    assert len(lake.read("ohlcv")) == 4
    lake.upsert("ohlcv", rows)
    assert not stale.exists() and len(lake.read("ohlcv")) == 5


def test_lake_works_on_a_non_local_filesystem() -> None:
    fs = pafs._MockFileSystem()  # in-memory pyarrow filesystem: the object-store code path
    lake = Lake("bucket/lake", filesystem=fs)
    assert not lake.is_local
    rows = ohlcv_frame(12)
    lake.upsert("ohlcv", rows.iloc[:10])
    res = lake.upsert("ohlcv", rows)
    assert [(r.inserted, r.unchanged) for r in res] == [(2, 10)]
    assert len(lake.read("ohlcv")) == 12
    assert fs.get_file_info(f"bucket/lake/ohlcv/{lake.partitions('ohlcv')[0]}/{DATA_FILE}").size > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_s3_root_against_a_local_s3_server(tmp_path: Path) -> None:
    """An s3:// root through the same code, against moto's S3 server on 127.0.0.1."""
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="lake")
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        lake = Lake("s3://lake/prefix", s3_region="us-east-1", s3_endpoint=endpoint)
        assert isinstance(lake.fs, pafs.S3FileSystem)
        rows = ohlcv_frame(15)
        lake.upsert("ohlcv", rows.iloc[:10])
        lake.upsert("ohlcv", rows)
        out = Lake("s3://lake/prefix", s3_region="us-east-1", s3_endpoint=endpoint).read("ohlcv")
        assert len(out) == 15 and not out.duplicated(list(OHLCV.key)).any()
        keys = [o["Key"] for o in boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
                .list_objects_v2(Bucket="lake")["Contents"]]
        assert [k for k in keys if k.endswith(".parquet")] == [f"prefix/ohlcv/{lake.partitions('ohlcv')[0]}/{DATA_FILE}"]
    finally:
        server.terminate()
        server.wait(10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
