"""Fixtures for the paper trader: a stepped clock shared by the Binance fake and the Serve fake."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from cryptopredict.paper import command
from tests.exchange.fake_binance import HOUR_MS, FakeBinance
from tests.paper.fake_serve import FakeServe, SteppedClock

NOW = pd.Timestamp("2024-03-01 10:30", tz="UTC")  # the 10:00 bar is forming; 09:00 is the last closed one
FIRST_BAR = int(pd.Timestamp("2024-03-01 09:00", tz="UTC").value // 1_000_000)


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock(NOW)


@pytest.fixture
def binance(clock: SteppedClock) -> Iterator[FakeBinance]:
    with FakeBinance(clock) as fake:
        yield fake


@pytest.fixture
def serve(clock: SteppedClock) -> Iterator[FakeServe]:
    with FakeServe(clock, HOUR_MS) as fake:
        yield fake


def paper_argv(state_dir: Path, binance: FakeBinance, serve_url: str, symbols: str = "BTCUSDT,ETHUSDT",
               *extra: str) -> list[str]:
    """``cryptopredict paper`` arguments against the fakes (fast retries)."""
    return ["--symbols", symbols, "--serve-url", serve_url, "--state-dir", str(state_dir),
            "--set", f"ingest.exchange_api_urls={json.dumps(binance.api_urls)}",
            "--set", "paper.backoff_base_s=0.01", "--set", "paper.backoff_max_s=0.02", *extra]


@pytest.fixture
def run_once(tmp_path: Path, binance: FakeBinance, serve: FakeServe,
             capsys: pytest.CaptureFixture[str]) -> Callable[..., int]:
    """``run_once(*extra, symbols=...)``: one ``paper --once`` in this process; returns the exit status."""

    def go(*extra: str, symbols: str = "BTCUSDT,ETHUSDT", state_dir: Path | None = None) -> int:
        argv = paper_argv(state_dir or tmp_path / "state", binance, serve.url, symbols, "--once", *extra)
        return command.main(argv)

    return go
