"""The ccxt OHLCV connector against a local Binance fake (REST and kline websocket); no network."""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import ccxt
import pandas as pd
import pyarrow as pa
import pytest

import cryptopredict.data.sources.exchange as exchange_module
from cryptopredict.data.schemas import OHLCV
from cryptopredict.data.sources.exchange import (
    check_timeframe,
    fetch_ohlcv_range,
    follow_closed_candles,
    open_exchange,
    resolve_symbol,
)
from cryptopredict.data.sources.retry import RetriesExhausted, RetryableError, RetryPolicy
from tests.exchange.fake_binance import (
    HOUR_MS,
    FakeBinance,
    FakeClock,
    FakeKlineStream,
    candle,
    kline_event,
)
from tests.support.replay_server import Reply

KLINES = "/api/v3/klines"
NOW = pd.Timestamp("2024-03-01 10:30", tz="UTC")  # the fake server's "now": the 10:00 1h bar is forming
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.25, jitter=0.0)


def ms(ts: str) -> int:
    return int(pd.Timestamp(ts, tz="UTC").value // 1_000_000)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeBinance]:
    with FakeBinance(clock) as server:
        yield server


@pytest.fixture
def exchange(fake: FakeBinance) -> ccxt.Exchange:
    return open_exchange("binance", api_urls=fake.api_urls, timeout_ms=1000, rate_limit=False)


def fetch(exchange: ccxt.Exchange, clock: FakeClock, since: str | None, until: str | None = None,
          **kwargs: object) -> pd.DataFrame:
    """fetch_ohlcv_range for BTC/USDT 1h at the fake clock's now, sleeping on the fake clock."""
    kwargs.setdefault("policy", FAST)
    return fetch_ohlcv_range(exchange, "BTC/USDT", "1h", since=since, until=until,
                             now=int(clock() * 1000), sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


def opens(frame: pd.DataFrame) -> list[pd.Timestamp]:
    return list(frame["timestamp"])


def hours(first: str, n: int) -> list[pd.Timestamp]:
    return list(pd.date_range(pd.Timestamp(first, tz="UTC"), periods=n, freq="h"))


def assert_matches_series(frame: pd.DataFrame, symbol: str = "BTCUSDT", interval: str = "1h") -> None:
    """Every row carries the fake's final candle values for its open time."""
    for row in frame.itertuples(index=False):
        expected = candle(symbol, interval, int(row.timestamp.value // 1_000_000))
        assert (row.open, row.high, row.low, row.close, row.volume) == expected


# ------------------------------------------------------------------------------ historical ranges


def test_happy_path_exact_values_dtypes_and_column_order(exchange: ccxt.Exchange, fake: FakeBinance,
                                                         clock: FakeClock) -> None:
    frame = fetch(exchange, clock, "2024-03-01 00:00", "2024-03-01 03:00")

    assert list(frame.columns) == OHLCV.columns
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert all(frame[c].dtype == "float64" for c in ("open", "high", "low", "close", "volume"))
    assert all(pd.api.types.is_string_dtype(frame[c]) for c in ("exchange", "symbol", "timeframe", "source"))
    assert pa.Table.from_pandas(frame, schema=OHLCV.schema, preserve_index=False).num_rows == 3
    assert opens(frame) == hours("2024-03-01 00:00", 3)
    assert frame.index.tolist() == [0, 1, 2]
    first = frame.iloc[0]
    assert (first.exchange, first.symbol, first.timeframe, first.source) == ("binance", "BTCUSDT", "1h",
                                                                             "ccxt:binance")
    # bar index 474792 of the fake's series: open 30000 + 92 * 12.5, close = open, +-6.25 wicks
    assert (first.open, first.high, first.low, first.close, first.volume) == (31150.0, 31156.25, 31143.75,
                                                                              31150.0, 11.5)
    assert frame.iloc[2][["open", "close", "volume"]].tolist() == [31175.0, 31181.25, 12.0]
    assert_matches_series(frame)
    (request,) = fake.klines_requests()
    assert request.query == {"symbol": ["BTCUSDT"], "interval": ["1h"], "startTime": [str(ms("2024-03-01"))],
                             "limit": ["3"]}
    assert clock.sleeps == []


def test_native_and_unified_symbols_give_the_same_rows(exchange: ccxt.Exchange, clock: FakeClock) -> None:
    unified = fetch(exchange, clock, "2024-03-01 00:00", "2024-03-01 02:00")
    native = fetch_ohlcv_range(exchange, "BTCUSDT", "1h", since=ms("2024-03-01 00:00"),
                               until=pd.Timestamp("2024-03-01 02:00"), now=NOW)
    pd.testing.assert_frame_equal(unified, native)


def test_pagination_requests_each_page_from_the_bar_after_the_last(exchange: ccxt.Exchange, fake: FakeBinance,
                                                                   clock: FakeClock) -> None:
    frame = fetch(exchange, clock, "2024-02-29 00:00", "2024-03-01 01:00", page_limit=10, progress=True)

    assert opens(frame) == hours("2024-02-29 00:00", 25)
    assert frame["timestamp"].is_unique and frame["timestamp"].is_monotonic_increasing
    assert_matches_series(frame)
    requests = fake.klines_requests()
    assert [int(r.param("startTime") or 0) for r in requests] == [
        ms("2024-02-29 00:00"), ms("2024-02-29 10:00"), ms("2024-02-29 20:00")]
    assert [r.param("limit") for r in requests] == ["10", "10", "5"]


def test_overlapping_pages_from_the_exchange_are_deduplicated(exchange: ccxt.Exchange, fake: FakeBinance,
                                                              clock: FakeClock) -> None:
    def row(t: int) -> list[object]:
        o, h, lo, c, v = candle("BTCUSDT", "1h", t)
        return [t, str(o), str(h), str(lo), str(c), str(v), t + HOUR_MS - 1, "0", 1, "0", "0", "0"]

    start = ms("2024-03-01 00:00")
    # an exchange that repeats a bar inside a page and answers the 2nd page from before startTime
    fake.fail_next(KLINES, Reply(200, [row(start), row(start + HOUR_MS), row(start + HOUR_MS)]),
                   Reply(200, [row(start + HOUR_MS), row(start + 2 * HOUR_MS), row(start + 3 * HOUR_MS)]))
    frame = fetch(exchange, clock, "2024-03-01 00:00", "2024-03-01 04:00", page_limit=3)

    assert opens(frame) == hours("2024-03-01 00:00", 4)
    assert_matches_series(frame)


def test_incremental_fetch_from_the_last_stored_bar_plus_one(exchange: ccxt.Exchange, fake: FakeBinance,
                                                             clock: FakeClock) -> None:
    stored = fetch(exchange, clock, "2024-03-01 00:00")
    assert opens(stored) == hours("2024-03-01 00:00", 10)  # 00:00 .. 09:00; 10:00 is forming

    clock.t += 3 * 3600  # three hours later: 10:00, 11:00 and 12:00 have closed
    resume = stored["timestamp"].iloc[-1] + pd.Timedelta(hours=1)
    new = fetch(exchange, clock, resume)

    assert opens(new) == hours("2024-03-01 10:00", 3)
    assert fake.klines_requests()[-1].param("startTime") == str(ms("2024-03-01 10:00"))
    combined = pd.concat([stored, new], ignore_index=True)
    pd.testing.assert_frame_equal(combined, fetch(exchange, clock, "2024-03-01 00:00"))


def test_forming_candle_served_by_the_exchange_is_dropped(exchange: ccxt.Exchange, fake: FakeBinance,
                                                          clock: FakeClock) -> None:
    # an off-grid since makes the page reach the forming 10:00 bar, which the fake serves flat
    frame = fetch(exchange, clock, "2024-03-01 05:30")

    served = fake.server.requests_for(KLINES)
    assert len(served) == 1 and served[0].param("limit") == "5"
    assert opens(frame) == hours("2024-03-01 06:00", 4)  # 06:00 .. 09:00, not 10:00
    assert_matches_series(frame)


@pytest.mark.parametrize(("now", "last_open"), [
    ("2024-03-01 10:59:59.999", "2024-03-01 09:00"),  # 10:00 closes at 11:00: still forming
    ("2024-03-01 11:00:00", "2024-03-01 10:00"),  # open + 1h == now: closed
])
def test_a_bar_is_closed_exactly_at_open_plus_timeframe(exchange: ccxt.Exchange, clock: FakeClock, now: str,
                                                        last_open: str) -> None:
    clock.t = pd.Timestamp(now, tz="UTC").value / 1e9
    frame = fetch(exchange, clock, "2024-03-01 08:00")
    assert frame["timestamp"].iloc[-1] == pd.Timestamp(last_open, tz="UTC")


def test_since_none_returns_the_latest_page_of_closed_bars(exchange: ccxt.Exchange, clock: FakeClock) -> None:
    frame = fetch(exchange, clock, None, page_limit=4)
    assert opens(frame) == hours("2024-03-01 06:00", 4)


# ------------------------------------------------------------------------------------- failures


def test_429_waits_the_retry_after_then_succeeds(exchange: ccxt.Exchange, fake: FakeBinance,
                                                 clock: FakeClock) -> None:
    fake.fail_next(KLINES, Reply(429, {"code": -1003, "msg": "Too many requests; current limit of IP is "
                                       "6000 requests per minute."}, headers={"Retry-After": "7"}))
    frame = fetch(exchange, clock, "2024-03-01 00:00", "2024-03-01 03:00")

    assert clock.sleeps == [7.0]
    assert opens(frame) == hours("2024-03-01 00:00", 3)
    assert [r.param("startTime") for r in fake.klines_requests()] == [str(ms("2024-03-01"))] * 2


def test_429_retry_after_as_an_http_date(exchange: ccxt.Exchange, fake: FakeBinance,
                                         clock: FakeClock) -> None:
    in_a_minute = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    fake.fail_next(KLINES, Reply(429, {"code": -1003, "msg": "Too many requests."},
                                 headers={"Retry-After": in_a_minute}))
    frame = fetch(exchange, clock, "2024-03-01 00:00", "2024-03-01 03:00")

    assert len(clock.sleeps) == 1 and 55.0 <= clock.sleeps[0] <= 60.0
    assert len(frame) == 3


def test_418_ban_longer_than_the_policy_allows_is_not_retried(exchange: ccxt.Exchange, fake: FakeBinance,
                                                              clock: FakeClock) -> None:
    fake.fail_next(KLINES, Reply(418, {"code": -1003, "msg": "Way too much request weight used; IP banned "
                                       "until 1709300000000."}, headers={"Retry-After": "86400"}))
    with pytest.raises(ccxt.DDoSProtection, match="418"):
        fetch(exchange, clock, "2024-03-01 00:00", "2024-03-01 03:00")
    assert clock.sleeps == [] and len(fake.klines_requests()) == 1


@pytest.mark.parametrize("fault", [
    Reply(500, "<html><body>Internal Server Error</body></html>", content_type="text/html"),
    Reply(200, b'[[1709251200000,"31150.00000000","31156.2'),  # truncated JSON
    Reply(200, b""),  # empty body
    Reply(200, [[1709251200000, "31150.0", "31156.25"]]),  # rows cut short
], ids=["http-500", "malformed-json", "empty-body", "short-rows"])
def test_transient_failure_then_success(exchange: ccxt.Exchange, fake: FakeBinance, clock: FakeClock,
                                        fault: Reply) -> None:
    fake.fail_next(KLINES, fault)
    frame = fetch(exchange, clock, "2024-03-01 00:00", "2024-03-01 03:00")

    assert clock.sleeps == [0.25]  # FAST's first backoff
    assert opens(frame) == hours("2024-03-01 00:00", 3)
    assert_matches_series(frame)
    assert len(fake.klines_requests()) == 2


def test_read_timeout_then_success(fake: FakeBinance, clock: FakeClock) -> None:
    exchange = open_exchange("binance", api_urls=fake.api_urls, timeout_ms=200, rate_limit=False)
    fake.fail_next(KLINES, Reply(200, [], delay_s=1.0))
    frame = fetch(exchange, clock, "2024-03-01 00:00", "2024-03-01 03:00")

    assert clock.sleeps == [0.25]
    assert opens(frame) == hours("2024-03-01 00:00", 3)


def test_retries_exhausted(exchange: ccxt.Exchange, fake: FakeBinance, clock: FakeClock) -> None:
    fake.fail_next(KLINES, *[Reply(503, {"code": -1001, "msg": "Internal error; unable to process your "
                                         "request. Please try again."})] * 3)
    with pytest.raises(RetriesExhausted, match="gave up after 3 attempts") as info:
        fetch(exchange, clock, "2024-03-01 00:00", "2024-03-01 03:00")

    assert isinstance(info.value.__cause__, RetryableError)
    assert isinstance(info.value.__cause__.__cause__, ccxt.OperationFailed)  # Binance -1001: "try again"
    assert clock.sleeps == [0.25, 0.5]
    assert len(fake.klines_requests()) == 3


def test_exchange_error_is_not_retried(exchange: ccxt.Exchange, fake: FakeBinance, clock: FakeClock) -> None:
    fake.fail_next(KLINES, Reply(400, {"code": -1121, "msg": "Invalid symbol."}))
    with pytest.raises(ccxt.BadSymbol, match="Invalid symbol"):
        fetch(exchange, clock, "2024-03-01 00:00", "2024-03-01 03:00")
    assert clock.sleeps == []


def test_empty_page_ends_the_range_cleanly(exchange: ccxt.Exchange, fake: FakeBinance,
                                           clock: FakeClock) -> None:
    fake.fail_next(KLINES, Reply(200, []))
    frame = fetch(exchange, clock, "2024-03-01 00:00")

    assert frame.empty and list(frame.columns) == OHLCV.columns
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]" and frame["close"].dtype == "float64"
    assert len(fake.klines_requests()) == 1


def test_range_before_listing_is_empty(exchange: ccxt.Exchange, fake: FakeBinance, clock: FakeClock) -> None:
    # BNBUSDT lists on 2017-11-06; Binance answers a 2017-01 startTime with its first bars, all out of range
    frame = fetch_ohlcv_range(exchange, "BNB/USDT", "1d", since="2017-01-01", until="2017-01-05", now=NOW)
    assert frame.empty
    assert len(fake.klines_requests()) == 1


# ----------------------------------------------------------------------------- validation, markets


def test_unknown_exchange_id_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match=r"unknown exchange id 'binanse'.*did you mean binance"):
        open_exchange("binanse")


def test_unknown_api_url_key_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown API url key\(s\) \['pubic'\]"):
        open_exchange("binance", api_urls={"pubic": "http://127.0.0.1:1/api/v3"})


def test_symbol_resolution(exchange: ccxt.Exchange) -> None:
    assert resolve_symbol(exchange, "BTC/USDT") == ("BTC/USDT", "BTCUSDT")
    assert resolve_symbol(exchange, "BTCUSDT") == ("BTC/USDT", "BTCUSDT")
    assert resolve_symbol(exchange, "ethbtc") == ("ETH/BTC", "ETHBTC")
    with pytest.raises(ValueError, match=r"unknown symbol 'BTC/USDX' on binance.*close matches: BTC/USDT"):
        resolve_symbol(exchange, "BTC/USDX")
    with pytest.raises(ValueError, match=r"unknown symbol 'DOGEUSDT'"):
        fetch_ohlcv_range(exchange, "DOGEUSDT", "1h", since="2024-03-01", now=NOW)


def test_timeframe_validation(exchange: ccxt.Exchange) -> None:
    assert check_timeframe(exchange, "1h") == HOUR_MS
    assert check_timeframe(exchange, "1w") == 7 * 24 * HOUR_MS
    with pytest.raises(ValueError,
                       match=r"unsupported timeframe '7m' for binance; supported: 1s, 1m, 3m, .*, 1w$"):
        check_timeframe(exchange, "7m")
    with pytest.raises(ValueError, match=r"'1M' has no fixed length"):
        check_timeframe(exchange, "1M")


def test_load_markets_hits_only_the_local_spot_exchange_info(fake: FakeBinance) -> None:
    exchange = open_exchange("binance", api_urls=fake.api_urls)  # client-side throttle on, as in production
    markets = exchange.load_markets()
    resolve_symbol(exchange, "ETH/USDT")

    assert [(r.method, r.path) for r in fake.server.requests] == [("GET", "/api/v3/exchangeInfo")]
    assert set(markets) == {"BTC/USDT", "ETH/USDT", "ETH/BTC", "BNB/USDT"}
    assert all(m["spot"] for m in markets.values())
    assert markets["BTC/USDT"]["limits"]["cost"]["min"] == 5.0  # NOTIONAL filter parsed


def test_injected_markets_make_no_request(exchange: ccxt.Exchange, fake: FakeBinance) -> None:
    markets = exchange.load_markets()
    offline = open_exchange("binance", markets=markets, api_urls={"public": "http://127.0.0.1:9/api/v3"})
    assert resolve_symbol(offline, "BTCUSDT") == ("BTC/USDT", "BTCUSDT")
    assert len(fake.server.requests) == 1


def test_exchange_info_outage_is_retried(fake: FakeBinance, clock: FakeClock) -> None:
    exchange = open_exchange("binance", api_urls=fake.api_urls, rate_limit=False)
    fake.fail_next("/api/v3/exchangeInfo", Reply(502, "Bad Gateway", content_type="text/plain"))
    assert resolve_symbol(exchange, "BTC/USDT", policy=FAST, sleep=clock.sleep) == ("BTC/USDT", "BTCUSDT")
    assert clock.sleeps == [0.25]


# ------------------------------------------------------------------------------------ live: poll


def test_follow_poll_yields_each_closed_candle_once_in_order(exchange: ccxt.Exchange, fake: FakeBinance,
                                                             clock: FakeClock) -> None:
    feed = follow_closed_candles(exchange, "BTC/USDT", "1h", "2024-03-01 08:00", mode="poll",
                                 clock=clock, sleep=clock.sleep, max_batches=4, grace_s=2.0, policy=FAST)
    batches = [next(feed)]  # catch-up at 10:30: 08:00 and 09:00
    assert opens(batches[0]) == hours("2024-03-01 08:00", 2)
    fake.fail_next(KLINES, Reply(200, []))  # at 11:00:02 the exchange has not published 10:00 yet
    batches += list(feed)

    assert [opens(b) for b in batches[1:]] == [hours("2024-03-01 10:00", 1), hours("2024-03-01 11:00", 1),
                                                hours("2024-03-01 12:00", 1)]
    # sleep to 11:00 + grace, re-poll the overdue bar after the grace, then one bar each
    assert clock.sleeps == [1802.0, 2.0, 3598.0, 3600.0]
    every = pd.concat(batches, ignore_index=True)
    assert every["timestamp"].is_unique and every["timestamp"].is_monotonic_increasing
    assert_matches_series(every)
    assert [r.param("startTime") for r in fake.klines_requests()] == [
        str(ms(t)) for t in ("2024-03-01 08:00", "2024-03-01 10:00", "2024-03-01 10:00", "2024-03-01 11:00",
                             "2024-03-01 12:00")]


def test_follow_poll_stops_when_the_event_is_set(exchange: ccxt.Exchange, clock: FakeClock) -> None:
    stop = threading.Event()
    got = []
    for batch in follow_closed_candles(exchange, "BTCUSDT", "1h", ms("2024-03-01 09:00"), mode="poll",
                                       stop=stop, clock=clock, sleep=clock.sleep, poll_interval_s=600):
        got.append(batch)
        if len(got) == 2:
            stop.set()
    assert [opens(b) for b in got] == [hours("2024-03-01 09:00", 1), hours("2024-03-01 10:00", 1)]
    assert clock.sleeps == [600.0] * 3  # fixed cadence: 10:40, 10:50, 11:00 (10:00 closes)


def test_follow_real_time_wait_is_cut_short_by_stop(exchange: ccxt.Exchange, clock: FakeClock) -> None:
    stop = threading.Event()
    feed = follow_closed_candles(exchange, "BTCUSDT", "1h", "2024-03-01 09:00", mode="poll", stop=stop,
                                 clock=clock, poll_interval_s=60.0)  # no sleep given: real, stoppable waits
    assert opens(next(feed)) == hours("2024-03-01 09:00", 1)
    timer = threading.Timer(0.1, stop.set)
    timer.start()
    started = time.monotonic()
    assert next(feed, None) is None  # the 60 s wait ended when stop was set, and so did the feed
    assert time.monotonic() - started < 5.0
    timer.join()


def test_auto_mode_polls_when_websockets_are_unavailable(monkeypatch: pytest.MonkeyPatch,
                                                         exchange: ccxt.Exchange, clock: FakeClock) -> None:
    monkeypatch.setattr(exchange_module, "_pro_class", lambda exchange_id: None)  # a ccxt without ccxt.pro
    with pytest.raises(ValueError, match=r"websocket OHLCV \(ccxt.pro watchOHLCV\) is not available"):
        next(follow_closed_candles(exchange, "BTCUSDT", "1h", 0, mode="ws"))
    batches = list(follow_closed_candles(exchange, "BTCUSDT", "1h", "2024-03-01 09:00", mode="auto",
                                         clock=clock, sleep=clock.sleep, max_batches=2))
    assert [opens(b) for b in batches] == [hours("2024-03-01 09:00", 1), hours("2024-03-01 10:00", 1)]
    assert clock.sleeps == [1802.0]


def test_follow_rejects_bad_arguments(exchange: ccxt.Exchange) -> None:
    with pytest.raises(ValueError, match="mode must be"):
        next(follow_closed_candles(exchange, "BTCUSDT", "1h", 0, mode="rest"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported timeframe"):
        next(follow_closed_candles(exchange, "BTCUSDT", "2m", 0, mode="poll"))


# -------------------------------------------------------------------------------------- live: ws


@pytest.fixture
def stream() -> Iterator[FakeKlineStream]:
    with FakeKlineStream() as server:
        yield server


@pytest.fixture
def ws_clock() -> FakeClock:
    return FakeClock(pd.Timestamp("2024-03-01 10:30:30", tz="UTC"))


@pytest.fixture
def ws_fake(ws_clock: FakeClock) -> Iterator[FakeBinance]:
    with FakeBinance(ws_clock) as server:
        yield server


def ws_exchange(fake: FakeBinance, stream: FakeKlineStream) -> ccxt.Exchange:
    return open_exchange("binance", api_urls={**fake.api_urls, "ws": {"spot": stream.url}}, timeout_ms=2000,
                         rate_limit=False)


def minutes(first: str, n: int) -> list[pd.Timestamp]:
    return list(pd.date_range(pd.Timestamp(first, tz="UTC"), periods=n, freq="min"))


def event(open_ts: str, *, closed: bool) -> dict[str, object]:
    return kline_event("BTCUSDT", "1m", ms(open_ts), closed=closed, forming=not closed)


def test_follow_ws_yields_bars_once_the_stream_moves_on(ws_fake: FakeBinance, stream: FakeKlineStream,
                                                        ws_clock: FakeClock) -> None:
    stream.script("btcusdt@kline_1m", [
        event("2024-03-01 10:30", closed=False), 0.02, event("2024-03-01 10:30", closed=True), 0.02,
        event("2024-03-01 10:31", closed=False), 0.02, event("2024-03-01 10:31", closed=True),
        event("2024-03-01 10:32", closed=False),
    ])
    feed = follow_closed_candles(ws_exchange(ws_fake, stream), "BTC/USDT", "1m", "2024-03-01 10:28",
                                 mode="ws", clock=ws_clock, sleep=ws_clock.sleep, max_batches=3, policy=FAST)
    batches = list(feed)

    assert [opens(b) for b in batches] == [minutes("2024-03-01 10:28", 2), minutes("2024-03-01 10:30", 1),
                                           minutes("2024-03-01 10:31", 1)]
    for batch in batches:
        assert list(batch.columns) == OHLCV.columns
        assert_matches_series(batch, interval="1m")  # final values, not the flat forming updates
    assert len(ws_fake.klines_requests()) == 1  # only the REST catch-up
    assert stream.subscriptions == [["btcusdt@kline_1m"]]


def test_follow_ws_fills_bars_the_stream_skipped_over_rest(ws_fake: FakeBinance, stream: FakeKlineStream,
                                                           ws_clock: FakeClock) -> None:
    def three_minutes_pass() -> None:
        ws_clock.t = pd.Timestamp("2024-03-01 10:33:05", tz="UTC").value / 1e9

    stream.script("btcusdt@kline_1m", [three_minutes_pass, event("2024-03-01 10:33", closed=False)])
    feed = follow_closed_candles(ws_exchange(ws_fake, stream), "BTCUSDT", "1m", "2024-03-01 10:29", mode="ws",
                                 clock=ws_clock, sleep=ws_clock.sleep, max_batches=2, policy=FAST)
    batches = list(feed)

    assert [opens(b) for b in batches] == [minutes("2024-03-01 10:29", 1), minutes("2024-03-01 10:30", 3)]
    assert_matches_series(pd.concat(batches), interval="1m")
    assert [r.param("startTime") for r in ws_fake.klines_requests()] == [
        str(ms("2024-03-01 10:29")), str(ms("2024-03-01 10:30"))]


def test_follow_ws_reconnects_after_the_server_drops(ws_fake: FakeBinance, stream: FakeKlineStream,
                                                     ws_clock: FakeClock) -> None:
    stream.script("btcusdt@kline_1m", [event("2024-03-01 10:30", closed=False), 0.02],
                  close_after_script=True)
    stream.script("btcusdt@kline_1m", [event("2024-03-01 10:30", closed=True), event("2024-03-01 10:31",
                                                                                      closed=False)])
    feed = follow_closed_candles(ws_exchange(ws_fake, stream), "BTCUSDT", "1m", "2024-03-01 10:30",
                                 mode="auto", clock=ws_clock, sleep=ws_clock.sleep, max_batches=1,
                                 policy=FAST)
    batches = list(feed)

    assert [opens(b) for b in batches] == [minutes("2024-03-01 10:30", 1)]
    assert_matches_series(batches[0], interval="1m")
    assert ws_clock.sleeps == [0.25]  # backoff before reconnecting
    assert stream.subscriptions == [["btcusdt@kline_1m"], ["btcusdt@kline_1m"]]


def test_follow_ws_gives_up_when_the_stream_keeps_dropping(ws_fake: FakeBinance, stream: FakeKlineStream,
                                                           ws_clock: FakeClock) -> None:
    stream.script("btcusdt@kline_1m", [], close_after_script=True)
    feed = follow_closed_candles(ws_exchange(ws_fake, stream), "BTCUSDT", "1m", "2024-03-01 10:30", mode="ws",
                                 clock=ws_clock, sleep=ws_clock.sleep, policy=FAST)
    with pytest.raises(RetriesExhausted, match="watch_ohlcv BTCUSDT 1m: gave up after 3 attempts"):
        next(feed)
    assert ws_clock.sleeps == [0.25, 0.5]
