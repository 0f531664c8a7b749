"""Exchange OHLCV connector on ccxt: historical ranges and a live feed of closed candles.

Time conventions: every timestamp is UTC. Arguments named ``since``/``until``/``now`` accept a
``pd.Timestamp``, ``datetime`` or ISO string (naive values are taken as UTC) or an integer of epoch
milliseconds.
A candle's ``timestamp`` is its *open* time; a candle is *closed* once ``open + timeframe <= now``,
and only closed candles are ever returned. Only fixed-length timeframes are supported (calendar
months and years have no fixed length, so "is this bar closed" would need a calendar).

Rows follow the lake's ``OHLCV`` schema: ``symbol`` is the exchange-native market id (``BTCUSDT``
on Binance), ``volume`` is in the base asset, ``source`` is ``"ccxt:<exchange id>"``.
"""

from __future__ import annotations

import asyncio
import copy
import difflib
import email.utils
import functools
import importlib
import json
import logging
import math
import numbers
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias

import ccxt
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from cryptopredict.data.schemas import OHLCV, UTC_TS
from cryptopredict.data.sources.retry import RetriesExhausted, RetryableError, RetryPolicy, call_with_retries

log = logging.getLogger(__name__)

__all__ = [
    "check_timeframe",
    "fetch_ohlcv_range",
    "follow_closed_candles",
    "open_exchange",
    "resolve_symbol",
]

TimeLike: TypeAlias = pd.Timestamp | datetime | str | int
Sleep: TypeAlias = Callable[[float], None]

#: Options applied before the caller's own, per exchange id.
_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    # Only GET /api/v3/exchangeInfo in load_markets (no futures/options exchangeInfo calls).
    "binance": {"fetchMarkets": {"types": ["spot"]}},
}
_PROGRESS_MIN_PAGES = 5  # progress=None shows a bar from this many expected pages on
_WS_STOP_CHECK_S = 0.25  # how often a waiting websocket read looks at the stop event (real seconds)


def open_exchange(
    exchange_id: str = "binance",
    *,
    api_urls: Mapping[str, Any] | None = None,
    markets: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    options: Mapping[str, Any] | None = None,
    timeout_ms: int = 10_000,
    rate_limit: bool = True,
) -> ccxt.Exchange:
    """A synchronous ccxt exchange, configured for public market data.

    ``api_urls`` replaces entries of ``exchange.urls["api"]`` (for Binance e.g. ``"public"``, or
    ``"ws": {"spot": url}`` for the ccxt.pro stream used by ``follow_closed_candles``; a mapping is
    merged key by key into a mapping); ``markets`` (ccxt market structures) are installed so
    ``load_markets`` makes no request; ``options`` are merged (top-level keys) over the defaults
    (Binance: spot markets only). ``timeout_ms`` is the per-request timeout in milliseconds;
    ``rate_limit`` turns on ccxt's client-side throttle. Unknown ids and url keys raise ValueError.
    """
    if exchange_id not in ccxt.exchanges:
        close = difflib.get_close_matches(exchange_id.lower(), ccxt.exchanges, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown exchange id {exchange_id!r} (not one of ccxt's "
                         f"{len(ccxt.exchanges)} exchanges){hint}")
    merged = copy.deepcopy(_DEFAULT_OPTIONS.get(exchange_id, {}))
    merged.update(copy.deepcopy(dict(options or {})))
    exchange: ccxt.Exchange = getattr(ccxt, exchange_id)(
        {"enableRateLimit": rate_limit, "timeout": int(timeout_ms), "options": merged,
         # kept for checking empty pages' bodies and reading Retry-After (ccxt's defaults, made explicit)
         "enableLastHttpResponse": True, "enableLastResponseHeaders": True}
    )
    if api_urls:
        _override_api_urls(exchange, api_urls)
    if markets is not None:
        exchange.set_markets(markets)
    return exchange


def _override_api_urls(exchange: ccxt.Exchange, api_urls: Mapping[str, Any]) -> None:
    """Replace entries of ``exchange.urls["api"]``; keys may also be ccxt.pro ones (e.g. ``ws``)."""
    api = exchange.urls.get("api")
    if not isinstance(api, dict):
        raise ValueError(f"{exchange.id}: urls['api'] is not a mapping; cannot override {sorted(api_urls)}")
    known = set(api) | set(_pro_api_urls(exchange.id))
    unknown = sorted(set(api_urls) - known)
    if unknown:
        raise ValueError(f"{exchange.id}: unknown API url key(s) {unknown}; "
                         f"known: {', '.join(sorted(known))}")
    _merge_urls(api, api_urls)


def _merge_urls(api: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Set ``api[key] = value`` for each override; a mapping over a mapping is merged key by key."""
    for key, value in copy.deepcopy(dict(overrides)).items():
        current = api.get(key)
        api[key] = {**current, **value} if isinstance(current, dict) and isinstance(value, dict) else value


def _pro_class(exchange_id: str) -> type | None:
    """The ccxt.pro (websocket) class for ``exchange_id``; None when this ccxt install lacks one."""
    try:
        pro = importlib.import_module("ccxt.pro")
    except ImportError:
        return None
    return getattr(pro, exchange_id, None) if exchange_id in getattr(pro, "exchanges", ()) else None


def _pro_api_urls(exchange_id: str) -> dict[str, Any]:
    """``urls["api"]`` of the ccxt.pro class for ``exchange_id`` ({} when there is none)."""
    cls = _pro_class(exchange_id)
    api = cls().urls.get("api") if cls is not None else None
    return api if isinstance(api, dict) else {}


def resolve_symbol(
    exchange: ccxt.Exchange,
    symbol: str,
    *,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Sleep = time.sleep,
) -> tuple[str, str]:
    """``(unified, native_id)`` for ``"BTC/USDT"`` or ``"BTCUSDT"`` (case-insensitive fallback).

    Loads the markets first (retried like any request). A ValueError with close matches when the
    exchange lists no such market; a native id shared by several markets resolves to the spot one.
    """
    _load_markets(exchange, policy, sleep)
    markets: dict[str, dict[str, Any]] = exchange.markets or {}
    by_id: dict[str, list[dict[str, Any]]] = exchange.markets_by_id or {}
    for candidate in (symbol, symbol.upper()):
        if candidate in markets:
            market = markets[candidate]
            return market["symbol"], market["id"]
        if by_id.get(candidate):
            found = by_id[candidate]
            market = next((m for m in found if m.get("spot")), found[0])
            return market["symbol"], market["id"]
    names = list(markets) + list(by_id)
    close = difflib.get_close_matches(symbol.upper(), names, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ValueError(f"unknown symbol {symbol!r} on {exchange.id} ({len(markets)} markets loaded){hint}")


def check_timeframe(exchange: ccxt.Exchange, timeframe: str) -> int:
    """Validate ``timeframe`` for ``exchange``; returns the bar length in milliseconds."""
    if not exchange.has.get("fetchOHLCV"):
        raise ValueError(f"{exchange.id} does not offer OHLCV candles (fetchOHLCV)")
    offered = list(exchange.timeframes or {})
    supported = [tf for tf in offered if not _is_calendar(tf)]
    if timeframe in offered and _is_calendar(timeframe):
        raise ValueError(f"timeframe {timeframe!r} has no fixed length (calendar months/years are not "
                         f"supported); supported on {exchange.id}: {', '.join(supported)}")
    if timeframe not in supported:
        raise ValueError(f"unsupported timeframe {timeframe!r} for {exchange.id}; "
                         f"supported: {', '.join(supported)}")
    return int(exchange.parse_timeframe(timeframe) * 1000)


def _is_calendar(timeframe: str) -> bool:
    return timeframe[-1:] in ("M", "y")


def fetch_ohlcv_range(
    exchange: ccxt.Exchange,
    symbol: str,
    timeframe: str,
    since: TimeLike | None = None,
    until: TimeLike | None = None,
    *,
    page_limit: int = 1000,
    policy: RetryPolicy = RetryPolicy(),
    now: TimeLike | None = None,
    progress: bool | None = None,
    sleep: Sleep = time.sleep,
) -> pd.DataFrame:
    """Closed candles with open time in ``[since, until)``, as an ``OHLCV`` frame, oldest first.

    Pages of at most ``page_limit`` bars are requested from ``since`` onwards (each page starting at
    the bar after the previous page's last one) until ``until`` or the last closed bar at ``now``
    (default: the wall clock). ``since=None`` means the latest ``page_limit`` bar slots. A bar still
    forming at ``now`` is never returned. Transient failures are retried per ``policy`` (``sleep``
    waits; ``RetriesExhausted`` when they persist). An empty page ends the range early. ``progress``:
    True/False forces a tqdm bar on/off, None shows one for long ranges.
    """
    if page_limit < 1:
        raise ValueError(f"page_limit must be >= 1, got {page_limit}")
    unified, native = resolve_symbol(exchange, symbol, policy=policy, sleep=sleep)
    tf_ms = check_timeframe(exchange, timeframe)
    now_ms = _to_ms(now) if now is not None else _wall_ms()
    end_ms = now_ms - tf_ms + 1  # exclusive bound on open times of closed bars
    if until is not None:
        end_ms = min(end_ms, _to_ms(until))
    start_ms = _to_ms(since) if since is not None else end_ms - page_limit * tf_ms
    expected = max(0, math.ceil((end_ms - start_ms) / tf_ms))
    show = progress if progress is not None else expected >= _PROGRESS_MIN_PAGES * page_limit
    classify = _classifier(exchange, policy)
    rows: list[list[float]] = []
    cursor = start_ms
    with tqdm(total=expected, unit="bar", desc=f"{exchange.id} {native} {timeframe}", disable=not show,
              leave=False) as bar:
        while cursor < end_ms:
            limit = min(page_limit, math.ceil((end_ms - cursor) / tf_ms))
            page = call_with_retries(
                functools.partial(_fetch_page, exchange, unified, timeframe, cursor, limit),
                policy,
                describe=f"{exchange.id} fetch_ohlcv {native} {timeframe} since {_iso(cursor)} limit {limit}",
                classify=classify,
                sleep=sleep,
            )
            if not page:
                log.debug("%s %s %s: empty page at %s; range ends", exchange.id, native, timeframe,
                          _iso(cursor))
                break
            fresh = [row for row in page if cursor <= row[0] < end_ms]
            if not fresh:
                if page[-1][0] < cursor:
                    log.warning("%s %s %s: page for since %s held only older bars (last %s); range ends",
                                exchange.id, native, timeframe, _iso(cursor), _iso(int(page[-1][0])))
                break
            rows.extend(fresh)
            bar.update(len(fresh))
            cursor = int(fresh[-1][0]) + tf_ms
    log.info("%s %s %s: %d closed bars from %s", exchange.id, native, timeframe, len(rows), _iso(start_ms))
    return _frame(exchange.id, native, timeframe, rows)


def _load_markets(exchange: ccxt.Exchange, policy: RetryPolicy, sleep: Sleep) -> None:
    """``exchange.load_markets()`` once, retried; an empty market list counts as a bad response."""
    if exchange.markets:
        return

    def load() -> None:
        exchange.load_markets()
        if not exchange.markets:
            raise ccxt.BadResponse(f"{exchange.id} load_markets: the exchange listed no markets")

    call_with_retries(load, policy, describe=f"{exchange.id} load_markets",
                      classify=_classifier(exchange, policy), sleep=sleep)


def _fetch_page(exchange: ccxt.Exchange, unified: str, timeframe: str, since_ms: int,
                limit: int) -> list[list[float]]:
    """One ``fetch_ohlcv`` call, checked and sorted; duplicate open times keep the last row."""
    raw = exchange.fetch_ohlcv(unified, timeframe, since=since_ms, limit=limit)
    body = exchange.last_http_response
    if not raw and isinstance(body, str) and not _is_json(body):  # ccxt turns an unreadable body into []
        raise ccxt.BadResponse(f"{exchange.id} fetch_ohlcv: response body is not JSON: {body[:200]!r}")
    if not isinstance(raw, list):
        raise ccxt.BadResponse(f"{exchange.id} fetch_ohlcv returned {type(raw).__name__}, "
                               "not a list of candles")
    by_ts: dict[int, list[float]] = {}
    for row in raw:
        if (not isinstance(row, (list, tuple)) or len(row) < 6
                or any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in row[:6])):
            raise ccxt.BadResponse(f"{exchange.id} fetch_ohlcv returned a malformed candle: {row!r}")
        by_ts[int(row[0])] = [int(row[0]), *(float(v) for v in row[1:6])]
    return [by_ts[ts] for ts in sorted(by_ts)]


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _classifier(exchange: ccxt.Exchange,
                policy: RetryPolicy) -> Callable[[BaseException], RetryableError | None]:
    """Map ccxt's transient errors (OperationFailed: network, rate limit, bad response) to RetryableError.

    Rate limits (429/418) carry the server's Retry-After; one longer than the policy allows is not
    retried (hammering a ban only extends it). ExchangeError (bad symbol, bad request) propagates.
    """

    def classify(exc: BaseException) -> RetryableError | None:
        if isinstance(exc, (ccxt.DDoSProtection, ccxt.RateLimitExceeded)):
            retry_after = _retry_after_s(exchange.last_response_headers)
            if retry_after is not None and retry_after > policy.max_retry_after_s:
                log.error("%s asks to wait %.0fs (more than %.0fs allowed); not retrying: %s",
                          exchange.id, retry_after, policy.max_retry_after_s, exc)
                return None
            return RetryableError(f"rate limited: {exc}", retry_after=retry_after)
        if isinstance(exc, ccxt.OperationFailed):  # NetworkError family, BadResponse, e.g. Binance -1001
            return RetryableError(f"{type(exc).__name__}: {exc}")
        return None

    return classify


def _retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None when absent or unreadable."""
    if not headers:
        return None
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _frame(exchange_id: str, native: str, timeframe: str, rows: Sequence[Sequence[float]]) -> pd.DataFrame:
    """Candle rows ``[open_ms, o, h, l, c, v]`` as an ``OHLCV``-schema frame (via Arrow, exact dtypes)."""
    n = len(rows)
    columns = {
        "exchange": pa.array([exchange_id] * n, pa.string()),
        "symbol": pa.array([native] * n, pa.string()),
        "timeframe": pa.array([timeframe] * n, pa.string()),
        "timestamp": pa.array([int(r[0]) * 1_000_000 for r in rows], pa.int64()).cast(UTC_TS),
        **{name: pa.array([float(r[i]) for r in rows], pa.float64())
           for i, name in enumerate(("open", "high", "low", "close", "volume"), start=1)},
        "source": pa.array([f"ccxt:{exchange_id}"] * n, pa.string()),
    }
    return pa.table(columns, schema=OHLCV.schema).to_pandas()


def _to_ms(value: TimeLike) -> int:
    """Epoch milliseconds of an integer (already ms) or a timestamp/ISO string (naive = UTC)."""
    if isinstance(value, (bool, float)):
        raise TypeError(f"a time must be a timestamp or integer epoch milliseconds, not {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value // 1_000_000)


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _iso(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").isoformat()


# --------------------------------------------------------------------------------------- live mode


def follow_closed_candles(
    exchange: ccxt.Exchange,
    symbol: str,
    timeframe: str,
    since: TimeLike,
    *,
    poll_interval_s: float | None = None,
    mode: Literal["auto", "poll", "ws"] = "auto",
    stop: threading.Event | None = None,
    max_batches: int | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Sleep | None = None,
    grace_s: float = 2.0,
    policy: RetryPolicy = RetryPolicy(),
) -> Iterator[pd.DataFrame]:
    """Yield each batch of newly closed candles (``OHLCV`` frames) from ``since`` on, once, in order.

    The first batch catches up on every bar closed since ``since``. ``mode="poll"`` re-fetches via
    ``fetch_ohlcv_range``, sleeping until the next bar close + ``grace_s`` seconds (or every
    ``poll_interval_s`` seconds when given); an overdue bar is re-polled with backoff capped at one
    bar. ``mode="ws"`` streams ccxt.pro ``watch_ohlcv`` and yields a bar once the stream has moved on
    to a later bar (bars the stream did not show are fetched over REST); ``"auto"`` takes ``ws`` when
    available, else ``poll``. Ends when ``stop`` is set or after ``max_batches`` batches.
    ``clock()`` is the current epoch time in seconds; ``sleep(seconds)`` waits (default: real time,
    cut short by ``stop``). Persistent failures raise ``RetriesExhausted``.
    """
    if mode not in ("auto", "poll", "ws"):
        raise ValueError(f"mode must be 'auto', 'poll' or 'ws', got {mode!r}")
    if poll_interval_s is not None and poll_interval_s <= 0:
        raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s}")
    wait = sleep or _interruptible_sleep(stop)
    unified, native = resolve_symbol(exchange, symbol, policy=policy, sleep=wait)
    tf_ms = check_timeframe(exchange, timeframe)
    pro_cls = _pro_class(exchange.id)
    ws_ok = pro_cls is not None and bool(pro_cls().has.get("watchOHLCV"))
    if mode == "ws" and not ws_ok:
        raise ValueError(f"{exchange.id}: websocket OHLCV (ccxt.pro watchOHLCV) is not available with "
                         f"ccxt {ccxt.__version__}; use mode='poll'")
    ws_cls = pro_cls if ws_ok and mode != "poll" else None
    log.info("following %s %s %s from %s by %s", exchange.id, native, timeframe, _iso(_to_ms(since)),
             "websocket" if ws_cls is not None else "polling")
    if ws_cls is not None:
        yield from _follow_ws(ws_cls, exchange, unified, timeframe, tf_ms, _to_ms(since), stop=stop,
                              max_batches=max_batches, clock=clock, wait=wait, policy=policy)
    else:
        yield from _follow_poll(exchange, unified, timeframe, tf_ms, _to_ms(since),
                                poll_interval_s=poll_interval_s, grace_s=grace_s, stop=stop,
                                max_batches=max_batches, clock=clock, wait=wait, policy=policy)


def _interruptible_sleep(stop: threading.Event | None) -> Sleep:
    """Real-time sleep that ``stop`` cuts short."""
    if stop is None:
        return time.sleep

    def wait(seconds: float) -> None:
        stop.wait(seconds)

    return wait


def _running(stop: threading.Event | None, batches: int, max_batches: int | None) -> bool:
    return not (stop is not None and stop.is_set()) and (max_batches is None or batches < max_batches)


def _follow_poll(exchange: ccxt.Exchange, unified: str, timeframe: str, tf_ms: int, cursor: int, *,
                 poll_interval_s: float | None, grace_s: float, stop: threading.Event | None,
                 max_batches: int | None, clock: Callable[[], float], wait: Sleep,
                 policy: RetryPolicy) -> Iterator[pd.DataFrame]:
    batches = 0
    overdue = 0  # consecutive polls that found the next bar closed but not yet served
    while _running(stop, batches, max_batches):
        batch = fetch_ohlcv_range(exchange, unified, timeframe, since=cursor, now=int(clock() * 1000),
                                  policy=policy, progress=False, sleep=wait)
        if len(batch):
            cursor = _last_open_ms(batch) + tf_ms
            batches += 1
            overdue = 0
            yield batch
            if not _running(stop, batches, max_batches):
                return
        if poll_interval_s is not None:
            delay = poll_interval_s
        else:
            delay = (cursor + tf_ms) / 1000 + grace_s - clock()
            if delay <= 0:  # the bar at the cursor has closed but the exchange has not served it yet
                delay = min(max(grace_s, 1.0) * 2**overdue, tf_ms / 1000)
                overdue += 1
                log.debug("%s %s: bar %s overdue; re-polling in %.1fs", exchange.id, timeframe,
                          _iso(cursor), delay)
        wait(delay)


def _last_open_ms(frame: pd.DataFrame) -> int:
    return int(frame["timestamp"].iloc[-1].value // 1_000_000)


def _pro_twin(pro_cls: type, exchange: ccxt.Exchange, loop: asyncio.AbstractEventLoop) -> Any:
    """A ``pro_cls`` instance on ``loop`` with ``exchange``'s options, timeout, API urls and markets."""
    pro = pro_cls(
        {"enableRateLimit": exchange.enableRateLimit, "timeout": exchange.timeout,
         "options": copy.deepcopy(exchange.options), "asyncio_loop": loop}
    )
    _merge_urls(pro.urls["api"], exchange.urls["api"])
    pro.set_markets(exchange.markets)
    return pro


def _follow_ws(pro_cls: type, exchange: ccxt.Exchange, unified: str, timeframe: str, tf_ms: int,
               cursor: int, *,
               stop: threading.Event | None, max_batches: int | None, clock: Callable[[], float],
               wait: Sleep, policy: RetryPolicy) -> Iterator[pd.DataFrame]:
    """Websocket feed: a bar is final once the stream shows a later one; gaps come from REST."""
    native = exchange.market(unified)["id"]
    batches = 0
    catch_up = fetch_ohlcv_range(exchange, unified, timeframe, since=cursor, now=int(clock() * 1000),
                                 policy=policy, progress=False, sleep=wait)
    if len(catch_up):
        cursor = _last_open_ms(catch_up) + tf_ms
        batches += 1
        yield catch_up
    loop = asyncio.new_event_loop()
    pro = _pro_twin(pro_cls, exchange, loop)
    task: asyncio.Task[Any] | None = None
    failures = 0
    try:
        while _running(stop, batches, max_batches):
            if task is None:
                task = loop.create_task(pro.watch_ohlcv(unified, timeframe))
            done, _ = loop.run_until_complete(asyncio.wait({task}, timeout=_WS_STOP_CHECK_S))
            if not done:
                continue
            finished, task = task, None
            error = finished.exception()
            if error is not None:
                if not isinstance(error, ccxt.NetworkError):
                    raise error
                if failures + 1 >= policy.max_attempts:
                    raise RetriesExhausted(f"{exchange.id} watch_ohlcv {native} {timeframe}: gave up after "
                                           f"{policy.max_attempts} attempts: {error}") from error
                delay = policy.delay(failures)
                failures += 1
                log.warning("%s watch_ohlcv %s %s failed (%s); reconnecting in %.2fs", exchange.id, native,
                            timeframe, error, delay)
                pro.ohlcvs.get(unified, {}).pop(timeframe, None)  # bars seen before the drop may be stale
                wait(delay)
                continue
            failures = 0
            cache = pro.ohlcvs.get(unified, {}).get(timeframe) or []
            forming = max((int(row[0]) for row in cache), default=cursor)
            if forming <= cursor:
                continue
            seen = [row for row in cache if cursor <= row[0] < forming]
            if [int(row[0]) for row in seen] == list(range(cursor, forming, tf_ms)):
                batch = _frame(exchange.id, native, timeframe, seen)
            else:
                log.info("%s %s %s: stream skipped bars in [%s, %s); fetching them over REST", exchange.id,
                         native, timeframe, _iso(cursor), _iso(forming))
                batch = fetch_ohlcv_range(exchange, unified, timeframe, since=cursor, until=forming,
                                          now=forming, policy=policy, progress=False, sleep=wait)
            if not len(batch):
                continue
            cursor = _last_open_ms(batch) + tf_ms
            batches += 1
            yield batch
    finally:
        if task is not None:
            task.cancel()
            loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        loop.run_until_complete(pro.close())
        loop.close()
