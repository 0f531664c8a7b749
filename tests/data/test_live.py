"""`cryptopredict ingest --live` and `--follow` end to end, against a Binance fake and replayed APIs on
127.0.0.1: incremental from where the lake ends, context tables included."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from cryptopredict.cli import main
from cryptopredict.config import load_config
from cryptopredict.data import live
from cryptopredict.data.lake import Lake, to_arrow
from cryptopredict.data.schemas import OHLCV
from tests.conftest import REPO_ROOT
from tests.exchange.fake_binance import FakeBinance, FakeClock, candle
from tests.support.replay_server import ReplayServer, Reply

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture
def binance() -> Iterator[FakeBinance]:
    with FakeBinance(time.time) as fake:
        yield fake


@pytest.fixture
def apis() -> Iterator[ReplayServer]:
    with ReplayServer() as server:
        server.route("GET", "/fng/", Reply(200, (FIXTURES / "fear_greed/fng.json").read_bytes()))
        server.route("GET", "/v2/historicalChainTvl",
                     Reply(200, (FIXTURES / "defillama/historical_all.json").read_bytes()))
        server.route("GET", "/v2/historicalChainTvl/Ethereum",
                     Reply(200, (FIXTURES / "defillama/historical_ethereum.json").read_bytes()))
        yield server


def _args(tmp_path: Path, binance: FakeBinance, apis: ReplayServer, start: pd.Timestamp) -> list[str]:
    urls = json.dumps(binance.api_urls)
    return ["--lake-root", str(tmp_path / "lake"), "--parallelism", "serial", "--symbols", "BTCUSDT,ETH/USDT",
            "--set", f"ingest.exchange_api_urls={urls}", "--set", f"ingest.start={start.isoformat()}",
            "--set", "ingest.follow_mode=poll",
            "--set", "sources.tables=[fear_greed,tvl]", "--set", "sources.defillama_chains=[all,Ethereum]",
            "--set", f"sources.fear_greed_url={apis.base_url}", "--set", f"sources.defillama_url={apis.base_url}",
            "--set", "sources.lookback_days=20000", "--report", str(tmp_path / "report.json")]


def test_live_ingest_is_incremental_and_fills_context_tables(tmp_path: Path, binance: FakeBinance,
                                                             apis: ReplayServer) -> None:
    now = pd.Timestamp.now(tz="UTC")
    start = now.floor("h") - pd.Timedelta(hours=30)
    assert main(["ingest", "--live", *_args(tmp_path, binance, apis, start)]) == 0
    lake = Lake(tmp_path / "lake")
    btc = lake.read("ohlcv", where={"symbol": "BTCUSDT"})
    closed = int((pd.Timestamp.now(tz="UTC").floor("h") - start) / pd.Timedelta(hours=1))
    assert len(btc) in (closed, closed - 1) and btc["timestamp"].min() == start  # bars closed by now, none forming
    first_open = int(btc["timestamp"].iloc[0].value // 1_000_000)
    assert tuple(btc.iloc[0][["open", "high", "low", "close", "volume"]]) == candle("BTCUSDT", "1h", first_open)
    assert set(lake.read("ohlcv")["symbol"]) == {"BTCUSDT", "ETHUSDT"}  # unified ETH/USDT stored by native id
    assert lake.read("fear_greed")["value"].tolist() == [65, 76, 70]
    assert set(lake.read("tvl")["chain"]) == {"all", "Ethereum"}

    # second run, on a lake that ends 3 bars earlier: starts at the bar after the last stored one
    part = lake.partitions("ohlcv")[0]
    assert "BTCUSDT" in part
    lake._write_atomic(f"{lake.base}/ohlcv/{part}", to_arrow(OHLCV, btc.iloc[:-3]))
    before = len(binance.klines_requests())
    assert main(["ingest", "--live", *_args(tmp_path, binance, apis, start)]) == 0
    asked = [int(r.param("startTime") or 0) for r in binance.klines_requests()[before:]
             if r.param("symbol") == "BTCUSDT"]
    assert asked and asked[0] == (btc["timestamp"].iloc[-4] + pd.Timedelta(hours=1)).value // 1_000_000
    report = json.loads((tmp_path / "report.json").read_text())
    fg = next(u for u in report["units"] if u["table"] == "fear_greed")
    assert (fg["inserted"], fg["unchanged"]) == (0, 3)
    btc_unit = next(u for u in report["units"] if u["unit"] == "BTCUSDT")
    assert btc_unit["inserted"] >= 3
    again = lake.read("ohlcv", where={"symbol": "BTCUSDT"})
    assert again["timestamp"].is_unique and len(again) >= len(btc)


def test_follow_appends_each_newly_closed_candle_once(tmp_path: Path, apis: ReplayServer) -> None:
    clock = FakeClock(pd.Timestamp("2024-03-01 10:30", tz="UTC"))
    with FakeBinance(clock) as fake:
        cfg = load_config(None, [f"lake.root={tmp_path}", "ingest.symbols=[BTCUSDT,ETHUSDT]",
                                 "ingest.start=2024-03-01T06:00:00Z", "ingest.follow_mode=poll",
                                 f"ingest.exchange_api_urls={json.dumps(fake.api_urls)}"])
        seen: list[tuple[str, int]] = []
        reports = live.follow(cfg, stop=threading.Event(), max_batches=3, clock=clock, sleep=clock.sleep,
                              on_report=lambda r: seen.append((r.unit, r.inserted)))
    assert not any(r.error for r in reports)
    # per symbol: the catch-up 06:00..09:00 (4 bars), then 10:00 and 11:00 as each one closes
    assert sorted(seen) == sorted([(s, n) for s in ("BTCUSDT", "ETHUSDT") for n in (4, 1, 1)])
    btc = Lake(tmp_path).read("ohlcv", where={"symbol": "BTCUSDT"})
    assert btc["timestamp"].dt.hour.tolist() == [6, 7, 8, 9, 10, 11]


def test_cli_follow_runs_until_interrupted(tmp_path: Path, binance: FakeBinance, apis: ReplayServer) -> None:
    start = pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(hours=3)
    args = _args(tmp_path, binance, apis, start)
    args[args.index("sources.tables=[fear_greed,tvl]")] = "sources.tables=[]"
    proc = subprocess.Popen([sys.executable, "-m", "cryptopredict.cli", "ingest", "--follow", *args],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # the live catch-up report, then the follow banner
        lines.append(line)
        if line.startswith("following "):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "following BTCUSDT, ETH/USDT 1h on binance (mode poll)" in lines[-1]
    assert len(Lake(tmp_path / "lake").read("ohlcv", where={"symbol": "BTCUSDT"})) >= 2


def test_unknown_exchange_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "--live", "--lake-root", str(tmp_path), "--set", "ingest.exchange=binanse"]) == 2
    err = capsys.readouterr().err
    assert "unknown exchange id 'binanse'" in err and "binance" in err
