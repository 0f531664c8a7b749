"""SIGKILL at every step of a bar, restart, and the ledger ends up identical to an uninterrupted run.

The trader runs as ``python -m cryptopredict.paper.command`` against the Binance fake and the Serve fake,
both on one stepped clock that this test moves forward one bar only after the trader has committed the
bar before (so both runs see the same bars and the same predictions). ``CRYPTOPREDICT_PAPER_FAULT`` makes
the process SIGKILL itself at a named point on its n-th bar; each death is followed by a restart.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from cryptopredict.paper import command
from cryptopredict.paper.engine import FAULT_ENV
from cryptopredict.paper.ledger import TABLES, read_ledger
from tests.conftest import REPO_ROOT
from tests.exchange.fake_binance import HOUR_MS, FakeBinance
from tests.paper.conftest import FIRST_BAR, NOW, paper_argv
from tests.paper.fake_serve import FakeServe, SteppedClock

N_BARS = 7
# one process per entry; "point@n": die at that point of the n-th bar the process handles
FAULTS = ["before_predict@2", "after_predict@1", "in_commit@2", "after_commit@2", ""]
SYMBOLS = "BTCUSDT,ETHUSDT,BNBUSDT"
DEADLINE_S = 240


@contextmanager
def world() -> Iterator[tuple[SteppedClock, FakeBinance, FakeServe]]:
    clock = SteppedClock(NOW)
    with FakeBinance(clock) as binance, FakeServe(clock, HOUR_MS) as serve:
        yield clock, binance, serve


def last_committed(state: Path) -> int:
    """The newest bar in ``steps`` (-1 when none), read like any other reader of a live ledger."""
    path = state / "paper.sqlite"
    if not path.exists():
        return -1
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute("SELECT MAX(ts) FROM steps").fetchone()
    except sqlite3.OperationalError:  # the writer has not created the tables yet
        return -1
    finally:
        db.close()
    return -1 if row[0] is None else int(row[0])


def max_ts_per_table(state: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{state / 'paper.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        return {t: db.execute(f"SELECT COALESCE(MAX(ts), -1) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        db.close()


def drive(clock: SteppedClock, state: Path, on_wait: Callable[[], None]) -> None:
    """Let N_BARS bars close one by one: the next only once the trader committed the current one."""
    deadline = time.monotonic() + DEADLINE_S
    for k in range(N_BARS):
        while last_committed(state) < FIRST_BAR + k * HOUR_MS:
            on_wait()
            assert time.monotonic() < deadline, f"bar {k} was not committed in time"
            time.sleep(0.05)
        if k + 1 < N_BARS:
            clock.advance(3600)


def comparable(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    frames["steps"] = frames["steps"].drop(columns="committed_at")
    return frames


@pytest.fixture
def uninterrupted(tmp_path: Path) -> dict[str, pd.DataFrame]:
    """The reference: one process (a thread of this one) through all N_BARS bars."""
    state = tmp_path / "reference"
    with world() as (clock, binance, serve):
        argv = paper_argv(state, binance, serve.url, SYMBOLS, "--poll", "0.05", "--max-bars", str(N_BARS))
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(command.main(argv)), daemon=True)
        thread.start()

        def alive() -> None:
            assert thread.is_alive() or len(result) == 1, "the reference run died"

        drive(clock, state, alive)
        thread.join(timeout=60)
        assert result == [0]
    return comparable(read_ledger(state))


def test_sigkill_anywhere_then_restart_gives_the_uninterrupted_ledger(tmp_path: Path,
                                                                      uninterrupted: dict[str, pd.DataFrame]) -> None:
    state = tmp_path / "killed"
    logs = tmp_path / "logs"
    logs.mkdir()
    with world() as (clock, binance, serve):
        argv = [sys.executable, "-m", "cryptopredict.paper.command",
                *paper_argv(state, binance, serve.url, SYMBOLS, "--poll", "0.05")]
        procs: list[subprocess.Popen[bytes]] = []
        deaths: list[tuple[str, int, dict[str, int]]] = []

        def start() -> None:
            fault = FAULTS[len(procs)]
            env = {**os.environ, FAULT_ENV: fault}
            n = len(procs)
            procs.append(subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=open(logs / f"{n}.out", "wb"),
                                          stderr=open(logs / f"{n}.err", "wb")))

        def restart_if_dead() -> None:
            proc = procs[-1]
            if proc.poll() is None:
                return
            fault = FAULTS[len(procs) - 1]
            err = (logs / f"{len(procs) - 1}.err").read_text()
            assert fault and proc.returncode == -signal.SIGKILL, f"process {fault!r} exited {proc.returncode}: {err}"
            deaths.append((fault, last_committed(state), max_ts_per_table(state)))
            start()

        start()
        try:
            drive(clock, state, restart_if_dead)
            final = procs[-1]
            assert len(procs) == len(FAULTS) and final.poll() is None
            final.send_signal(signal.SIGTERM)  # a graceful stop after the bar in hand
            assert final.wait(timeout=30) == 0
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        out = (logs / f"{len(FAULTS) - 1}.out").read_text()
        assert f"paper summary: {N_BARS} bars" in out

    # every death left whole bars only: no table holds rows of a bar that steps does not
    assert [d[0] for d in deaths] == FAULTS[:-1]
    for fault, last, per_table in deaths:
        assert all(ts <= last for ts in per_table.values()), (fault, last, per_table)
    bar = {f: (last - FIRST_BAR) // HOUR_MS for f, last, _ in deaths}
    assert bar == {"before_predict@2": 0, "after_predict@1": 0, "in_commit@2": 1, "after_commit@2": 3}
    # the bars re-done after a kill were asked about again, yet nothing is counted twice
    assert len(serve.requests()) > N_BARS

    killed = comparable(read_ledger(state))
    assert killed["steps"]["ts"].tolist() == [FIRST_BAR + k * HOUR_MS for k in range(N_BARS)]
    assert killed["steps"]["status"].eq("decided").all() and len(killed["orders"]) > 0
    for table in TABLES:
        pd.testing.assert_frame_equal(killed[table], uninterrupted[table], check_exact=True, obj=table)
