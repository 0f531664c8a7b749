"""A process killed with SIGKILL in the middle of an ingest leaves every table readable and loses nothing
committed before the kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cryptopredict.data.lake import Lake
from cryptopredict.data.schemas import TABLES
from tests.conftest import REPO_ROOT


def _start(root: Path, pause_at: int = 0) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen([sys.executable, "-m", "tests.support.ingest_forever", str(root), str(pause_at)],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)


def _read_until(proc: subprocess.Popen[str], predicate, timeout: float = 120) -> list[str]:  # type: ignore[no-untyped-def]
    lines: list[str] = []
    deadline = time.time() + timeout
    assert proc.stdout is not None
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child exited early (rc={proc.poll()}) after {lines[-3:]}")
        lines.append(line.strip())
        if predicate(lines):
            return lines
    raise AssertionError("child did not reach the expected point in time")


def _kill(proc: subprocess.Popen[str]) -> list[str]:
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return [ln for ln in rest.splitlines() if ln]


def _assert_consistent(root: Path, committed: list[str]) -> None:
    lake = Lake(root)
    for table in TABLES:  # every table readable, no duplicate keys
        df = lake.read(table)
        assert not df.duplicated(list(TABLES[table].key)).any(), table
    ohlcv = lake.read("ohlcv")
    fear = lake.read("fear_greed")
    last: dict[str, pd.Timestamp] = {}
    for line in committed:
        _, unit, ts = line.split(" ")
        last[unit] = pd.Timestamp(ts)
    assert last, "nothing was committed before the kill"
    for unit, ts in last.items():
        if unit == "fear_greed":
            assert fear["date"].max() >= ts
        else:
            series = ohlcv[ohlcv["symbol"] == unit]
            assert series["timestamp"].max() >= ts, unit
            assert series["timestamp"].is_monotonic_increasing
            q = lake.read("quarantine")
            assert (q["reason"] == "negative_volume").any()


@pytest.mark.slow
def test_sigkill_between_writing_and_renaming_loses_nothing(tmp_path: Path) -> None:
    proc = _start(tmp_path, pause_at=25)
    lines = _read_until(proc, lambda ls: ls[-1] == "replacing")
    tmp_files = list(tmp_path.rglob(".tmp-*.parquet"))
    assert len(tmp_files) == 1 and tmp_files[0].stat().st_size > 0  # the new file is written, not yet renamed
    lines += _kill(proc)
    _assert_consistent(tmp_path, [ln for ln in lines if ln.startswith("committed")])
    # the next writer sweeps the leftover and carries on
    proc = _start(tmp_path)
    lines = _read_until(proc, lambda ls: sum(ln.startswith("committed") for ln in ls) >= 4)
    lines += _kill(proc)
    assert not tmp_files[0].exists()


@pytest.mark.slow
@pytest.mark.parametrize("delay_s", [0.37, 1.13, 2.71])
def test_sigkill_at_arbitrary_moments_keeps_every_table_readable(tmp_path: Path, delay_s: float) -> None:
    proc = _start(tmp_path)
    lines = _read_until(proc, lambda ls: len(ls) >= 3)
    time.sleep(delay_s)
    lines += _kill(proc)
    _assert_consistent(tmp_path, [ln for ln in lines if ln.startswith("committed")])
