"""A Binance-compatible spot API on 127.0.0.1 for the exchange connector's tests.

``FakeBinance`` serves ``GET /api/v3/ping``, ``/api/v3/time``, ``/api/v3/exchangeInfo`` and
``/api/v3/klines`` on a ``ReplayServer`` (see tests/support/replay_server.py), answering from a
deterministic candle series and an injected clock, in the documented formats: klines rows
``[openTime, open, high, low, close, volume, closeTime, quoteVolume, trades, takerBase, takerQuote,
ignore]`` with decimals as strings; ``startTime``/``endTime`` are inclusive bounds on the open time,
``limit`` defaults to 500 (max 1000), no bounds means the latest bars; errors as
``{"code": -1121, "msg": "Invalid symbol."}`` with HTTP 400. The bar containing "now" is served
too, still forming (as Binance does). Faults are injected per path with ``fail_next``.

``FakeKlineStream`` is a websocket server speaking Binance's kline stream (SUBSCRIBE/ack, then
``{"e": "kline", ..., "k": {...}}`` events) that plays a script once a stream is subscribed.

Intervals with calendar lengths (1M) are not modelled; weeks open on Monday 00:00 UTC.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
from aiohttp import WSMsgType, web

from tests.support.replay_server import RecordedRequest, ReplayServer, Reply

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
INTERVALS_MS: dict[str, int] = {
    "1s": 1000, "1m": MINUTE_MS, "3m": 3 * MINUTE_MS, "5m": 5 * MINUTE_MS, "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS, "1h": HOUR_MS, "2h": 2 * HOUR_MS, "4h": 4 * HOUR_MS, "6h": 6 * HOUR_MS,
    "8h": 8 * HOUR_MS, "12h": 12 * HOUR_MS, "1d": DAY_MS, "3d": 3 * DAY_MS, "1w": 7 * DAY_MS,
}
_WEEK_ANCHOR_MS = 4 * DAY_MS  # 1970-01-05, a Monday

#: symbol -> (base asset, quote asset, price of bar index 0, price step, first open time in ms)
SPOT_SYMBOLS: dict[str, tuple[str, str, float, float, int]] = {
    "BTCUSDT": ("BTC", "USDT", 30000.0, 12.5, 1502942400000),  # listed 2017-08-17 04:00 UTC
    "ETHUSDT": ("ETH", "USDT", 2000.0, 1.25, 1502942400000),
    "ETHBTC": ("ETH", "BTC", 0.05, 0.0001, 1500004800000),
    "BNBUSDT": ("BNB", "USDT", 300.0, 0.5, 1509940800000),
}

ERROR_INVALID_SYMBOL = {"code": -1121, "msg": "Invalid symbol."}
ERROR_INVALID_INTERVAL = {"code": -1120, "msg": "Invalid interval."}


def _dec(value: float) -> str:
    return f"{value:.8f}"


def _error(code: int, msg: str, status: int = 400) -> Reply:
    return Reply(status, {"code": code, "msg": msg})


def bar_open(interval: str, ts_ms: int) -> int:
    """Open time of the ``interval`` bar containing ``ts_ms``."""
    length = INTERVALS_MS[interval]
    anchor = _WEEK_ANCHOR_MS if interval == "1w" else 0
    return (ts_ms - anchor) // length * length + anchor


def candle(symbol: str, interval: str, open_ms: int) -> tuple[float, float, float, float, float]:
    """The final ``(open, high, low, close, volume)`` of a bar: exact binary fractions, no rounding."""
    _, _, base, step, _ = SPOT_SYMBOLS[symbol]
    i = open_ms // INTERVALS_MS[interval]
    o = base + (i % 100) * step
    c = o + ((i % 7) - 3) * step / 4
    h = max(o, c) + step / 2
    lo = min(o, c) - step / 2
    v = 10.0 + (i % 13) * 0.25
    return o, h, lo, c, v


def forming_candle(symbol: str, interval: str, open_ms: int) -> tuple[float, float, float, float, float]:
    """What the bar still forming at "now" looks like: flat at its open, with a sliver of volume."""
    o = candle(symbol, interval, open_ms)[0]
    return o, o, o, o, 0.125


def kline_row(symbol: str, interval: str, open_ms: int, forming: bool = False) -> list[Any]:
    """One REST klines row, formatted as Binance sends it."""
    o, h, lo, c, v = (forming_candle if forming else candle)(symbol, interval, open_ms)
    trades = 100 + (open_ms // INTERVALS_MS[interval]) % 50
    return [open_ms, _dec(o), _dec(h), _dec(lo), _dec(c), _dec(v), open_ms + INTERVALS_MS[interval] - 1,
            _dec(v * c), trades, _dec(v / 2), _dec(v * c / 2), "0"]


def kline_event(symbol: str, interval: str, open_ms: int, *, closed: bool, event_ms: int | None = None,
                forming: bool = False) -> dict[str, Any]:
    """One websocket kline event for ``<symbol>@kline_<interval>``; ``x`` is ``closed``."""
    o, h, lo, c, v = (forming_candle if forming else candle)(symbol, interval, open_ms)
    close_ms = open_ms + INTERVALS_MS[interval] - 1
    return {
        "e": "kline", "E": event_ms if event_ms is not None else close_ms, "s": symbol,
        "k": {"t": open_ms, "T": close_ms, "s": symbol, "i": interval, "f": 1000, "L": 1099,
              "o": _dec(o), "c": _dec(c), "h": _dec(h), "l": _dec(lo), "v": _dec(v), "n": 100,
              "x": closed, "q": _dec(v * c), "V": _dec(v / 2), "Q": _dec(v * c / 2), "B": "0"},
    }


def _symbol_info(symbol: str) -> dict[str, Any]:
    base, quote, price, _, _ = SPOT_SYMBOLS[symbol]
    tick = "0.01000000" if price >= 1 else "0.00000100"
    return {
        "symbol": symbol, "status": "TRADING", "baseAsset": base, "baseAssetPrecision": 8,
        "quoteAsset": quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True, "cancelReplaceAllowed": True, "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": True,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000.00000000",
             "tickSize": tick},
            {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000",
             "stepSize": "0.00001000"},
            {"filterType": "ICEBERG_PARTS", "limit": 10},
            {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "100.00000000",
             "stepSize": "0.00000000"},
            {"filterType": "TRAILING_DELTA", "minTrailingAboveDelta": 10, "maxTrailingAboveDelta": 2000,
             "minTrailingBelowDelta": 10, "maxTrailingBelowDelta": 2000},
            {"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": "5", "bidMultiplierDown": "0.2",
             "askMultiplierUp": "5", "askMultiplierDown": "0.2", "avgPriceMins": 5},
            {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
        ],
        "permissions": [], "permissionSets": [["SPOT", "MARGIN"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


class FakeBinance:
    """Binance spot REST on 127.0.0.1; ``clock()`` is the server's time in epoch seconds.

    ``api_urls`` is what ``open_exchange(api_urls=...)`` needs; ``server`` is the ReplayServer (its
    ``requests`` record every call). ``fail_next(path, *replies)`` makes the next requests for
    ``path`` (e.g. ``"/api/v3/klines"``) get those replies, in order, before normal service resumes.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.server = ReplayServer()
        self._faults: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        for path, handler in (("/api/v3/ping", self._ping), ("/api/v3/time", self._time),
                              ("/api/v3/exchangeInfo", self._exchange_info),
                              ("/api/v3/klines", self._klines)):
            self.server.route("GET", path, self._with_faults(path, handler))

    def __enter__(self) -> FakeBinance:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()

    @property
    def api_urls(self) -> dict[str, str]:
        return {"public": self.server.url("/api/v3"), "private": self.server.url("/api/v3")}

    def fail_next(self, path: str, *replies: Reply) -> None:
        """Queue ``replies`` for the next requests to ``path``."""
        with self._lock:
            self._faults.setdefault(path, []).extend(replies)

    def klines_requests(self) -> list[RecordedRequest]:
        return self.server.requests_for("/api/v3/klines")

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _with_faults(self, path: str, handler: Callable[[RecordedRequest], Reply]) -> Callable[
            [RecordedRequest], Reply]:
        def respond(request: RecordedRequest) -> Reply:
            with self._lock:
                queued = self._faults.get(path)
                fault = queued.pop(0) if queued else None
            return fault if fault is not None else handler(request)

        return respond

    def _ping(self, request: RecordedRequest) -> Reply:
        return Reply(200, {})

    def _time(self, request: RecordedRequest) -> Reply:
        return Reply(200, {"serverTime": self.now_ms()})

    def _exchange_info(self, request: RecordedRequest) -> Reply:
        return Reply(200, {
            "timezone": "UTC", "serverTime": self.now_ms(),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
            ],
            "exchangeFilters": [],
            "symbols": [_symbol_info(s) for s in SPOT_SYMBOLS],
        })

    def _klines(self, request: RecordedRequest) -> Reply:
        symbol, interval = request.param("symbol"), request.param("interval")
        for name, value in (("symbol", symbol), ("interval", interval)):
            if not value:
                return _error(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, "
                                     "or malformed.")
        if symbol not in SPOT_SYMBOLS:
            return Reply(400, ERROR_INVALID_SYMBOL)
        if interval not in INTERVALS_MS:
            return Reply(400, ERROR_INVALID_INTERVAL)
        try:
            limit = int(request.param("limit") or 500)
            start = None if request.param("startTime") is None else int(request.param("startTime") or "")
            end = None if request.param("endTime") is None else int(request.param("endTime") or "")
        except ValueError:
            return _error(-1100, "Illegal characters found in a parameter.")
        if not 1 <= limit <= 1000:
            return _error(-1130, "Data sent for parameter 'limit' is not valid.")
        if start is not None and end is not None and start > end:
            return _error(-1023, "Start time is greater than end time.")
        length = INTERVALS_MS[interval]
        first = bar_open(interval, SPOT_SYMBOLS[symbol][4])
        forming = bar_open(interval, self.now_ms())
        last = forming if end is None else min(forming, bar_open(interval, end))
        if start is not None:
            lo = max(first, bar_open(interval, start))
            lo += length if lo < start else 0  # open times are >= startTime
            opens = range(lo, min(last, lo + (limit - 1) * length) + 1, length)
        else:
            opens = range(max(first, last - (limit - 1) * length), last + 1, length)
        return Reply(200, [kline_row(symbol, interval, t, forming=t == forming) for t in opens])


ScriptItem = Mapping[str, Any] | Callable[[], None] | float


class FakeKlineStream:
    """Binance-style kline websocket on 127.0.0.1 (aiohttp, own thread and event loop).

    ``url`` ends in ``/stream`` (ccxt recognises Binance spot connections by that substring).
    ``script(stream, items)`` plays ``items`` on every connection once it subscribes to ``stream``
    (e.g. ``"btcusdt@kline_1m"``): a mapping is sent as a JSON text frame, a callable is called, a
    float is a pause in seconds; the connection then stays open. ``subscriptions`` records what was
    subscribed, one list per connection. ``close_after_script=True`` closes the connection instead.
    """

    def __init__(self) -> None:
        self.subscriptions: list[list[str]] = []
        self._scripts: dict[str, list[tuple[Sequence[ScriptItem], bool]]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-kline-stream", daemon=True)
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._lock = threading.Lock()

    def __enter__(self) -> FakeKlineStream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/stream"

    def script(self, stream: str, items: Sequence[ScriptItem], *, close_after_script: bool = False) -> None:
        """Queue a script for the next connection that subscribes to ``stream``; the last one repeats."""
        with self._lock:
            self._scripts.setdefault(stream, []).append((list(items), close_after_script))

    def _next_script(self, stream: str) -> tuple[Sequence[ScriptItem], bool]:
        with self._lock:
            queued = self._scripts.get(stream) or [([], False)]
            return queued.pop(0) if len(queued) > 1 else queued[0]

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        subscribed: list[str] = []
        with self._lock:
            self.subscriptions.append(subscribed)
        players: list[asyncio.Task[None]] = []
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            request_body = json.loads(msg.data)
            if request_body.get("method") == "SUBSCRIBE":
                subscribed.extend(request_body["params"])
                await ws.send_json({"result": None, "id": request_body["id"]})
                for stream in request_body["params"]:
                    players.append(asyncio.ensure_future(self._play(ws, *self._next_script(stream))))
            elif request_body.get("method") == "UNSUBSCRIBE":
                await ws.send_json({"result": None, "id": request_body["id"]})
        for player in players:
            player.cancel()
        return ws

    async def _play(self, ws: web.WebSocketResponse, items: Sequence[ScriptItem], close: bool) -> None:
        for item in items:
            if isinstance(item, Mapping):
                await ws.send_json(dict(item))
            elif isinstance(item, float):
                await asyncio.sleep(item)
            else:
                item()
        if close:
            await ws.close()


class FakeClock:
    """Epoch seconds that only move when ``sleep`` is called; every sleep is recorded."""

    def __init__(self, start: pd.Timestamp) -> None:
        self.t = start.value / 1e9
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
