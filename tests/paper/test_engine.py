"""`cryptopredict paper` in process against the Binance fake and the Serve fake: skipped bars, retries, the
never-an-order guarantee, user errors and the loop's options."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import ccxt
import numpy as np
import pandas as pd
import pytest

from cryptopredict.paper import command
from cryptopredict.paper.client import PredictionClient, ServeUnavailable, Skip
from cryptopredict.paper.feed import PaperOnlyError, open_paper_exchange, order_method_names
from cryptopredict.paper.ledger import read_ledger
from cryptopredict.data.sources.retry import RetryPolicy
from tests.exchange.fake_binance import HOUR_MS, FakeBinance
from tests.paper.conftest import FIRST_BAR, paper_argv
from tests.paper.fake_serve import FakeServe, SteppedClock
from tests.support.replay_server import Reply

RunOnce = Callable[..., int]


def _units(positions, ts: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    return positions.loc[positions["ts"] == ts].sort_values("symbol")["units"].to_numpy(float)


def test_503_stale_data_skips_the_bar_and_keeps_positions(run_once: RunOnce, clock: SteppedClock, serve: FakeServe,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    serve.stale_bars = {FIRST_BAR + 2 * HOUR_MS}
    for k in range(4):
        if k:
            clock.advance(3600)
        assert run_once() == 0
    out = capsys.readouterr().out
    ledger = read_ledger(tmp_path / "state")
    steps, positions, orders = ledger["steps"], ledger["positions"], ledger["orders"]
    assert steps["status"].tolist() == ["decided", "decided", "skipped", "decided"]
    skipped = steps.iloc[2]
    assert "503" in skipped["reason"] and "stale data" in skipped["reason"]
    assert positions.loc[positions["ts"] == skipped["ts"], "target"].isna().all()
    assert len(serve.requests()) == 4  # the skipped bar was asked about, once (a 503 with a detail is final)
    # fills of the skipped bar (at its open) happen; the bar after it trades nothing and holds the units
    assert (orders["ts"] == skipped["ts"]).any()
    assert not (orders["ts"] == steps.iloc[3]["ts"]).any()
    np.testing.assert_array_equal(_units(positions, steps.iloc[3]["ts"]), _units(positions, skipped["ts"]))
    assert "skipped" in out and "stale data (503)" in out


def test_stale_or_newer_predictions_are_not_traded(run_once: RunOnce, clock: SteppedClock, serve: FakeServe,
                                                   tmp_path: Path) -> None:
    assert run_once() == 0
    serve.lag_bars = 1  # the app answers as of the bar before: stale
    clock.advance(3600)
    assert run_once() == 0
    serve.lag_bars = -1  # the app is a bar ahead of the exchange feed: using it would look ahead
    clock.advance(3600)
    assert run_once() == 0
    serve.lag_bars = 0
    asked = len(serve.requests())
    clock.advance(3 * 3600)  # down for three bars: bars 3 and 4 are caught up on, only bar 5 is decided
    assert run_once() == 0
    assert len(serve.requests()) == asked + 1
    ledger = read_ledger(tmp_path / "state")
    steps, predictions = ledger["steps"], ledger["predictions"]
    assert steps["ts"].tolist() == [FIRST_BAR + k * HOUR_MS for k in range(6)]
    assert steps["status"].tolist() == ["decided", "skipped", "skipped", "skipped", "skipped", "decided"]
    assert "BTCUSDT stale (as of 2024-03-01T09:00:00+00:00)" in steps.iloc[1]["reason"]
    assert "newer than this bar" in steps.iloc[2]["reason"]
    assert steps.iloc[3]["reason"].startswith("catching up") and steps.iloc[4]["reason"].startswith("catching up")
    assert predictions.groupby("ts")["used"].sum().to_dict() == {FIRST_BAR: 2, FIRST_BAR + HOUR_MS: 0,
                                                                  FIRST_BAR + 2 * HOUR_MS: 0,
                                                                  FIRST_BAR + 5 * HOUR_MS: 2}
    used = predictions[predictions["used"] == 1]
    assert (used["as_of"].map(pd.Timestamp) == used["timestamp"]).all()


def test_exchange_outage_stops_a_once_run_without_losing_the_bar(run_once: RunOnce, clock: SteppedClock,
                                                                 binance: FakeBinance, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert run_once() == 0
    clock.advance(3600)
    binance.fail_next("/api/v3/klines", *[Reply(502, b"")] * 4)
    assert run_once() == 1
    assert "the exchange did not answer" in capsys.readouterr().err
    assert run_once() == 0
    steps = read_ledger(tmp_path / "state")["steps"]
    assert steps["ts"].tolist() == [FIRST_BAR, FIRST_BAR + HOUR_MS]
    assert steps["status"].tolist() == ["decided", "decided"]


def test_transient_serve_errors_are_retried(run_once: RunOnce, serve: FakeServe, tmp_path: Path) -> None:
    serve.fail_next(Reply(500, {"detail": "boom"}), Reply(503, "upstream busy", content_type="text/plain"),
                    Reply(502, b""), Reply(200, b"", delay_s=1.0))  # the last one times out
    assert run_once("--set", "paper.read_timeout_s=0.3", "--set", "paper.max_attempts=5") == 0
    assert len(serve.requests()) == 5
    assert read_ledger(tmp_path / "state")["steps"]["status"].tolist() == ["decided"]


def test_a_body_that_is_not_a_batch_prediction_stops_with_one_line(run_once: RunOnce, serve: FakeServe,
                                                                    tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    serve.fail_next(Reply(200, {"predictions": [{"symbol": "BTCUSDT"}]}))
    assert run_once() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cryptopredict paper: error: POST") and "is not a BatchPrediction" in err[-1]
    assert len(serve.requests()) == 1  # not retried
    assert read_ledger(tmp_path / "state")["steps"].empty  # the bar is left for the next run


def test_unreachable_serve_skips_bars_then_stops(run_once: RunOnce, clock: SteppedClock, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str], binance: FakeBinance) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    argv = paper_argv(tmp_path / "state", binance, dead, "BTCUSDT,ETHUSDT", "--once",
                      "--set", "paper.max_attempts=2", "--set", "paper.max_unavailable_bars=1")
    assert command.main(argv) == 1
    err = capsys.readouterr().err
    assert "unavailable for 1 bars in a row" in err
    argv[argv.index("paper.max_unavailable_bars=1")] = "paper.max_unavailable_bars=3"
    clock.advance(3600)
    assert command.main(argv) == 0  # the first failure in this process: recorded as a skipped bar
    steps = read_ledger(tmp_path / "state")["steps"]
    assert steps["status"].tolist() == ["skipped"]
    assert steps.iloc[0]["reason"].startswith("serve unavailable")


def test_client_outcomes() -> None:
    """503 with a detail → Skip; 4xx → a user error naming the detail."""
    from tests.support.replay_server import ReplayServer

    with ReplayServer() as server:
        client = PredictionClient(server.base_url, policy=RetryPolicy(max_attempts=2, base_delay_s=0.0))
        server.route("POST", "/predict/batch", Reply(503, {"detail": "data older than 6h"}))
        assert client.predict(["BTCUSDT"]) == Skip("data older than 6h")
        server.route("POST", "/predict/batch", Reply(404, {"detail": "unknown symbol XYZUSDT"}))
        with pytest.raises(ValueError, match="HTTP 404: unknown symbol XYZUSDT"):
            client.predict(["XYZUSDT"])
        server.route("POST", "/predict/batch", Reply(500, {"detail": "down"}))
        with pytest.raises(ServeUnavailable, match="gave up after 2 attempts"):
            client.predict(["BTCUSDT"])
        assert len(server.requests_for("/predict/batch", "POST")) == 4


def test_no_order_is_ever_sent(run_once: RunOnce, clock: SteppedClock, binance: FakeBinance, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[str] = []
    names = order_method_names(ccxt.binance())
    assert {"create_order", "createOrder", "cancel_order", "edit_order", "withdraw", "privatePostOrder"} <= set(names)
    for name in names:
        def spy(*_: object, _name: str = name, **__: object) -> None:
            called.append(_name)
            raise AssertionError(f"{_name} called")

        monkeypatch.setattr(ccxt.binance, name, spy, raising=False)
    for k in range(4):
        if k:
            clock.advance(3600)
        assert run_once() == 0
    assert len(read_ledger(tmp_path / "state")["orders"]) > 0  # it did trade, on paper
    assert called == []
    sent = {(r.method, r.path) for r in binance.server.requests}
    assert sent <= {("GET", "/api/v3/exchangeInfo"), ("GET", "/api/v3/klines"), ("GET", "/api/v3/time")}
    # and the exchange object the trader opens cannot send one, even if asked
    ex = open_paper_exchange("binance", binance.api_urls)
    before = len(binance.server.requests)
    for name in ("create_order", "createMarketBuyOrder", "cancel_all_orders", "private_post_order"):
        with pytest.raises(PaperOnlyError):
            getattr(ex, name)("BTC/USDT", "market", "buy", 1.0)
    assert len(binance.server.requests) == before


def test_unknown_symbol_is_a_clear_error_exit_2(run_once: RunOnce, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert run_once(symbols="BTCUSDT,NOPEUSDT") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cryptopredict paper: error: unknown symbol 'NOPEUSDT' on binance")
    assert not (tmp_path / "state" / "paper.sqlite").exists()
    # a market the exchange lists but the model does not serve: the app's 404, one line, exit 2
    assert run_once(symbols="BTCUSDT,ETHBTC") == 2
    assert "HTTP 404: unknown symbol(s) ['ETHBTC']" in capsys.readouterr().err


def test_resume_with_other_settings_or_a_busy_state_dir_exits_2(run_once: RunOnce, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str],
                                                                binance: FakeBinance, serve: FakeServe) -> None:
    assert run_once() == 0
    assert run_once("--set", "evaluation.backtest.fee_bps=5") == 2
    assert "other settings (costs)" in capsys.readouterr().err
    assert run_once(symbols="ETHUSDT,BTC/USDT") == 0  # the same set of coins, named differently: same ledger
    assert read_ledger(tmp_path / "state")["steps"]["ts"].tolist() == [FIRST_BAR]
    from cryptopredict.paper.ledger import Ledger, run_key

    holder = Ledger(tmp_path / "state", run_key("binance", "1h", ["BTCUSDT"]), ["BTCUSDT"], {})
    try:
        assert run_once() == 2
        assert "in use by another paper process" in capsys.readouterr().err
    finally:
        holder.close()


def test_max_bars_catch_up_and_summary(run_once: RunOnce, clock: SteppedClock, binance: FakeBinance,
                                       serve: FakeServe, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_once() == 0
    capsys.readouterr()
    clock.advance(4 * 3600)
    argv = paper_argv(tmp_path / "state", binance, serve.url, "BTCUSDT,ETHUSDT", "--max-bars", "2", "--poll", "0.01")
    assert command.main(argv) == 0
    out = capsys.readouterr().out
    steps = read_ledger(tmp_path / "state")["steps"]
    assert steps["ts"].tolist() == [FIRST_BAR + k * HOUR_MS for k in range(3)]
    assert sum(line[:4] == "2024" for line in out.splitlines()) == 2
    summary = next(line for line in out.splitlines() if line.startswith("paper summary:"))
    assert "3 bars (2 this run; 1 decided, 2 skipped)" in summary
    assert steps["status"].tolist() == ["decided", "skipped", "skipped"]  # bar 4 has closed: 1 and 2 are past
    for field in ("trades", "fees", "net PnL", "Sharpe"):
        assert field in summary
