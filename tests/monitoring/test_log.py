"""The prediction log: round trip, flush triggers, concurrent writers (threads and processes, with a
compactor running), a writer SIGKILLed mid-write, crash-safe compaction, failing storage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from cryptopredict.monitoring.log import COMPACT_PREFIX, LOG_COLUMNS, LogStore, PredictionLogger
from tests.conftest import REPO_ROOT
from tests.monitoring.support import make_prediction


def _child(root: Path, tag: str, threads: int, rows: int, mode: str = "normal") -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen([sys.executable, "-m", "tests.monitoring.log_writer", str(root), tag, str(threads),
                             str(rows), mode], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)


def _parts(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))


def test_rows_round_trip_with_every_field(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    pred = make_prediction(symbol="ETHUSDT", as_of="2024-03-01T05:00:00+00:00", signal="SELL", horizon=4,
                           confidence=0.61, position_size=-0.4, model_version="v7")
    with PredictionLogger(store, flush_rows=1000, flush_seconds=60) as logger:
        logger.log(pred, 12.5, request_id="r1", request_time=1_709_270_000.25, route="/predict")
    df = store.read()
    assert list(df.columns) == LOG_COLUMNS and len(df) == 1
    row = df.iloc[0]
    assert row["request_id"] == "r1" and row["route"] == "/predict" and row["latency_ms"] == 12.5
    assert row["request_time"] == pd.Timestamp(1_709_270_000.25, unit="s", tz="UTC")
    assert row["as_of"] == pd.Timestamp("2024-03-01T05:00", tz="UTC")
    assert (row["symbol"], row["horizon"], row["signal"], row["model_version"]) == ("ETHUSDT", 4, "SELL", "v7")
    assert (row["p_sell"], row["p_hold"], row["p_buy"]) == (0.6, 0.25, 0.15)
    assert (row["confidence"], row["position_size"], row["predicted_volatility"]) == (0.61, -0.4, 0.012)
    assert (row["interval_level"], row["interval_low"], row["interval_high"]) == (0.9, -0.02, 0.02)
    assert (row["epistemic"], row["aleatoric"], row["epistemic_vol"], row["aleatoric_vol"]) == (0.01, 0.9, 0.001,
                                                                                                 0.05)
    assert row["member_weights"] == '{"gnn": 0.4, "transformer": 0.6}'
    # partitioned by the request's UTC date, one part for the flush on close
    assert [p.parent.name for p in _parts(tmp_path)] == ["date=2024-03-01"]


def test_a_flush_across_midnight_writes_one_part_per_day(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    midnight = pd.Timestamp("2024-05-02", tz="UTC").timestamp()
    with PredictionLogger(store, flush_rows=1000, flush_seconds=60) as logger:
        for i, t in enumerate([midnight - 2, midnight - 1, midnight, midnight + 1, midnight + 2]):
            logger.log(make_prediction(), 1.0, request_id=f"r{i}", request_time=t)
    assert [p.parent.name for p in _parts(tmp_path)] == ["date=2024-05-01", "date=2024-05-02"]
    assert [pq.read_table(p).num_rows for p in _parts(tmp_path)] == [2, 3]
    assert list(store.read(since=pd.Timestamp("2024-05-02", tz="UTC"))["request_id"]) == ["r2", "r3", "r4"]
    assert list(store.read(until=pd.Timestamp("2024-05-02", tz="UTC"))["request_id"]) == ["r0", "r1"]


def test_flushes_by_row_count_and_by_age_without_close(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    logger = PredictionLogger(store, flush_rows=5, flush_seconds=0.3)
    try:
        for i in range(5):
            logger.log(make_prediction(), 1.0, request_id=f"a{i}")
        deadline = time.time() + 5
        while len(store.read()) < 5 and time.time() < deadline:
            time.sleep(0.02)
        assert len(store.read()) == 5  # the row count triggered a write long before the age did
        logger.log(make_prediction(), 1.0, request_id="b0")
        time.sleep(0.1)
        assert len(store.read()) == 5 and logger.pending() == 1
        deadline = time.time() + 5
        while len(store.read()) < 6 and time.time() < deadline:
            time.sleep(0.02)
        assert set(store.read()["request_id"]) == {"a0", "a1", "a2", "a3", "a4", "b0"}  # the age did
    finally:
        logger.close()
    with pytest.raises(RuntimeError, match="after close"):
        logger.log(make_prediction(), 1.0)


def test_log_is_cheap_and_does_no_io(tmp_path: Path) -> None:
    logger = PredictionLogger(LogStore(tmp_path), flush_rows=100_000, flush_seconds=600, max_buffer_rows=100_000)
    pred = make_prediction()
    start = time.perf_counter()
    for _ in range(2000):
        logger.log(pred, 1.0)
    per_call = (time.perf_counter() - start) / 2000
    assert not _parts(tmp_path)  # nothing written on the hot path
    assert per_call < 1e-3, per_call  # ~20 µs here; generous for a shared machine
    logger.close()
    assert logger.rows_written == 2000 and len(_parts(tmp_path)) == 1


@pytest.mark.slow
def test_threads_and_two_processes_with_a_compactor_running_write_exactly_all_rows(tmp_path: Path) -> None:
    children = [_child(tmp_path, f"p{k}", threads=3, rows=700) for k in range(2)]
    store = LogStore(tmp_path)
    logger = PredictionLogger(store, flush_rows=29, flush_seconds=0.05)
    stop = threading.Event()
    compactions: list[int] = []

    def compactor() -> None:  # merges today's partition while everyone writes into it
        while not stop.is_set():
            compactions.append(len(store.compact(stale_temp_seconds=3600)))
            time.sleep(0.05)

    def work(t: int) -> None:
        pred = make_prediction()
        for i in range(700):
            logger.log(pred, 1.0, request_id=f"main-{t}-{i}")

    comp = threading.Thread(target=compactor)
    comp.start()
    workers = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    logger.close()
    for c in children:
        out, _ = c.communicate(timeout=120)
        assert c.returncode == 0 and out.strip() == "done"
    stop.set()
    comp.join()
    expected = {f"{tag}-{t}-{i}" for tag, threads in (("p0", 3), ("p1", 3), ("main", 4))
                for t in range(threads) for i in range(700)}
    ids = store.read()["request_id"]
    assert len(ids) == len(expected) == 10 * 700
    assert set(ids) == expected  # exactly all rows: none lost, none twice
    assert sum(compactions) > 0, "the compactor never merged anything: the test did not test it"
    store.compact(stale_temp_seconds=3600)
    assert len(_parts(tmp_path)) == 1 and set(store.read()["request_id"]) == expected


@pytest.mark.slow
def test_sigkill_mid_write_leaves_a_readable_log_with_no_partial_part(tmp_path: Path) -> None:
    proc = _child(tmp_path, "k", threads=1, rows=0, mode="hang")
    assert proc.stdout is not None
    lines = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline().strip()
        assert line, f"child exited early (rc={proc.poll()}) after {lines}"
        lines.append(line)
        if line == "writing":
            break
    temps = list(tmp_path.rglob(".tmp-*"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0  # the third part is written, not yet renamed
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    committed = max(int(ln.split()[1]) for ln in lines if ln.startswith("committed"))
    assert committed == 100
    for part in _parts(tmp_path):  # every visible part is a whole Parquet file
        assert pq.read_table(part).num_rows == 50
    df = LogStore(tmp_path).read()
    assert sorted(df["request_id"]) == sorted(f"k-0-{i}" for i in range(committed))
    # the leftover is ignored by readers and swept by a compaction once it is old enough
    assert LogStore(tmp_path).compact(stale_temp_seconds=3600) and list(tmp_path.rglob(".tmp-*"))
    LogStore(tmp_path).compact(stale_temp_seconds=0)
    assert not list(tmp_path.rglob(".tmp-*")) and len(LogStore(tmp_path).read()) == committed


def test_compaction_killed_before_deleting_its_sources_shows_no_duplicates(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store = LogStore(tmp_path)
    with PredictionLogger(store, flush_rows=1000, flush_seconds=60) as logger:
        for day in (1, 2):
            for batch in range(3):
                for i in range(10):
                    logger.log(make_prediction(), 1.0, request_id=f"d{day}-{batch}-{i}",
                               request_time=pd.Timestamp(f"2024-01-0{day}T10:00", tz="UTC").timestamp() + batch)
                logger.flush()
    assert len(_parts(tmp_path)) == 6

    def die(path: str) -> None:
        raise KeyboardInterrupt("killed before deleting the sources")

    monkeypatch.setattr(store, "_delete", die)
    with pytest.raises(KeyboardInterrupt):
        store.compact(before="2024-01-02")  # only 2024-01-01; dies after writing the merged file
    monkeypatch.undo()
    day1 = tmp_path / "predictions" / "date=2024-01-01"
    assert len([p for p in day1.glob("*.parquet")]) == 4  # 3 sources + the compacted file, all present
    df = store.read()
    assert len(df) == 60 and df["request_id"].is_unique
    assert len(store.live_files("date=2024-01-01")) == 1
    results = store.compact(before="2024-01-02")  # removes the leftovers; nothing left to merge
    assert results == [] and [p.name[:len(COMPACT_PREFIX)] for p in day1.glob("*.parquet")] == [COMPACT_PREFIX]
    # compacting again later (with the compacted file as a source) keeps every row once
    store.compact()
    assert len(_parts(tmp_path)) == 2 and len(store.read()) == 60 and store.read()["request_id"].is_unique
    since = store.read(since=pd.Timestamp("2024-01-02", tz="UTC"))
    assert len(since) == 30 and since["request_id"].str.startswith("d2").all()


def test_failed_writes_keep_rows_and_a_full_buffer_drops_the_oldest_loudly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    store = LogStore(tmp_path)
    logger = PredictionLogger(store, flush_rows=10, flush_seconds=600, max_buffer_rows=15)
    failing = {"on": True}
    real = store.write_part

    def write_part(table, **kw):  # type: ignore[no-untyped-def]
        if failing["on"]:
            raise OSError("disk full")
        return real(table, **kw)

    monkeypatch.setattr(store, "write_part", write_part)
    for i in range(8):
        logger.log(make_prediction(), 1.0, request_id=f"r{i}")
    with pytest.raises(OSError, match="failed"):
        logger.flush()
    assert logger.pending() == 8 and logger.flush_errors >= 1
    for i in range(8, 20):
        logger.log(make_prediction(), 1.0, request_id=f"r{i}")
    with pytest.raises(OSError, match="failed"):
        logger.flush()
    with logger._write_lock:  # no write in flight: every attempt so far has failed
        failing["on"] = False
        assert logger.pending() == 15 and logger.dropped_rows == 5 and "dropped" in caplog.text
    logger.close()
    ids = list(store.read()["request_id"])
    assert ids == [f"r{i}" for i in range(5, 20)]  # the newest rows, in order, each once


def test_log_on_a_non_local_filesystem() -> None:
    fs = pafs._MockFileSystem()  # in-memory pyarrow filesystem: the object-store code path
    store = LogStore("bucket/log", filesystem=fs)
    with PredictionLogger(store, flush_rows=3, flush_seconds=60) as logger:
        for i in range(7):
            logger.log(make_prediction(), 1.0, request_id=f"r{i}")
    assert sorted(store.read()["request_id"]) == [f"r{i}" for i in range(7)]
    store.compact()
    assert len(store.live_files()) == 1 and len(store.read()) == 7
    store.write_json("monitor_state/x.json", {"a": 1})
    assert store.read_json("monitor_state/x.json") == {"a": 1} and store.read_json("nope.json") is None


def test_a_row_with_a_bad_as_of_is_kept_with_a_null_time_and_does_not_block_the_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = LogStore(tmp_path)
    with PredictionLogger(store, flush_rows=100, flush_seconds=60) as logger:
        logger.log(make_prediction(as_of="2024-01-01T01:00:00"), 1.0, request_id="naive")  # no zone: UTC
        logger.log(make_prediction().model_copy(update={"as_of": "yesterday"}), 1.0, request_id="bad")
    df = store.read().set_index("request_id")
    assert df.loc["naive", "as_of"] == pd.Timestamp("2024-01-01T01:00", tz="UTC")
    assert pd.isna(df.loc["bad", "as_of"]) and "not an ISO time" in caplog.text
