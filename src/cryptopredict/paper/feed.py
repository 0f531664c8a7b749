"""Closed candles of several symbols on one time grid, polled through the project's ccxt connector.

A bar is identified by its open time (UTC, epoch milliseconds) and is handed out only once it is closed
on the exchange's clock (``exchange.fetch_ohlcv_range`` never returns a forming bar). A timestamp is
ready when every symbol has served it or a later bar; a symbol without that bar gets NaN prices there.

The exchange object is market-data only: ``open_paper_exchange`` replaces every order-sending method of
the ccxt instance with one that raises ``PaperOnlyError``, so no code path can place an order.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ccxt
import numpy as np

from cryptopredict.data.sources.exchange import check_timeframe, fetch_ohlcv_range, open_exchange, resolve_symbol
from cryptopredict.data.sources.retry import RetryableError, RetryPolicy, call_with_retries

log = logging.getLogger(__name__)

#: ccxt method names that place, change or cancel orders or move funds (snake_case and camelCase).
_ORDER_METHOD = re.compile(r"^(create|edit|cancel)_?\w*orders?(_?ws)?$|^(withdraw|transfer)(_?ws)?$",
                           re.IGNORECASE)
#: ccxt's implicit REST endpoints that write (``privatePostOrder``, ``sapi_post_margin_order``, ...).
_WRITE_ENDPOINT = re.compile(r"^[a-z][A-Za-z0-9]*?(Post|Put|Delete)[A-Z0-9]\w*$"
                             r"|^[a-z][a-z0-9_]*?_(post|put|delete)_\w+$")


class PaperOnlyError(RuntimeError):
    """Something tried to send an order (or move funds) from the paper trader."""


def order_method_names(exchange: ccxt.Exchange) -> list[str]:
    """Every public method of ``exchange`` that would place, edit or cancel an order, move funds, or call
    a writing (POST/PUT/DELETE) REST endpoint."""
    return sorted(name for name in dir(exchange)
                  if not name.startswith("_") and (_ORDER_METHOD.match(name) or _WRITE_ENDPOINT.match(name))
                  and callable(getattr(exchange, name)))


def disable_orders(exchange: ccxt.Exchange) -> ccxt.Exchange:
    """Make every order method of this ccxt instance raise ``PaperOnlyError`` (returns the instance)."""
    for name in order_method_names(exchange):
        def refuse(*_: Any, _name: str = name, **__: Any) -> Any:
            raise PaperOnlyError(f"paper trading never sends orders: {exchange.id}.{_name} was called")

        setattr(exchange, name, refuse)
    return exchange


def open_paper_exchange(exchange_id: str, api_urls: dict[str, Any] | None = None,
                        timeout_ms: int = 10_000) -> ccxt.Exchange:
    """The project's ccxt exchange (``open_exchange``: public market data, no keys) with orders disabled."""
    return disable_orders(open_exchange(exchange_id, api_urls=api_urls, timeout_ms=timeout_ms))


@dataclass(frozen=True)
class BarSet:
    """One closed bar of every symbol: ``ts`` its open time (epoch ms, UTC); arrays in symbol order, NaN
    where the exchange has no bar for that symbol."""

    ts: int
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray


def exchange_clock(exchange: ccxt.Exchange, policy: RetryPolicy) -> Callable[[], int]:
    """``now`` in epoch ms from the exchange's server time (retried on network errors)."""

    def classify(exc: BaseException) -> RetryableError | None:
        return RetryableError(f"{type(exc).__name__}: {exc}") if isinstance(exc, ccxt.NetworkError) else None

    def now() -> int:
        value = call_with_retries(exchange.fetch_time, policy, describe=f"{exchange.id} fetch_time",
                                  classify=classify)
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise RuntimeError(f"{exchange.id} fetch_time returned {value!r}, not epoch milliseconds")
        return int(value)

    return now


def local_clock() -> int:
    """``now`` in epoch ms from this machine's clock."""
    return int(time.time() * 1000)


class BarFeed:
    """Closed bars of ``symbols`` (any form ``resolve_symbol`` accepts) on ``exchange`` at ``timeframe``.

    ``symbols`` are resolved once at construction (an unknown one is a ValueError naming it); afterwards
    ``self.symbols`` holds the exchange-native ids (``BTCUSDT``), sorted: the order the symbols were given
    in changes nothing (not even the last bit of the cash sum).
    """

    def __init__(self, exchange: ccxt.Exchange, symbols: list[str], timeframe: str, *,
                 clock: Callable[[], int] | None = None, policy: RetryPolicy = RetryPolicy()) -> None:
        if not symbols:
            raise ValueError("paper trading needs at least one symbol")
        self.exchange = exchange
        self.policy = policy
        self.timeframe = timeframe
        natives = [resolve_symbol(exchange, s, policy=policy)[1] for s in symbols]
        doubled = sorted({s for s in natives if natives.count(s) > 1})
        if doubled:
            raise ValueError(f"symbols {symbols} name the same market twice ({', '.join(doubled)})")
        self.symbols: list[str] = sorted(natives)
        self.tf_ms = check_timeframe(exchange, timeframe)
        self.clock = clock or exchange_clock(exchange, policy)

    def _fetch(self, symbol: str, since: int | None, now: int, page_limit: int = 1000) -> dict[int, tuple]:
        frame = fetch_ohlcv_range(self.exchange, symbol, self.timeframe, since=since, now=now, policy=self.policy,
                                  page_limit=page_limit, progress=False)
        ts = frame["timestamp"].dt.as_unit("ms").astype("int64").to_numpy()
        cols = [frame[c].to_numpy(float) for c in ("open", "high", "low", "close", "volume")]
        return {int(t): tuple(float(c[i]) for c in cols) for i, t in enumerate(ts)}

    def latest_closed(self) -> int | None:
        """Open time of the newest bar every symbol has closed (None while some symbol has none)."""
        now = self.clock()
        latest = []
        for symbol in self.symbols:
            rows = self._fetch(symbol, None, now, page_limit=2)
            if not rows:
                return None
            latest.append(max(rows))
        return min(latest)

    def closed_since(self, since: int) -> list[BarSet]:
        """Every closed bar with open time >= ``since`` that all symbols have served (or passed), oldest first."""
        now = self.clock()
        per_symbol = [self._fetch(s, since, now) for s in self.symbols]
        if any(not rows for rows in per_symbol):
            waiting = [s for s, rows in zip(self.symbols, per_symbol, strict=True) if not rows]
            log.debug("no closed bar from %s yet for %s", since, waiting)
            return []
        ready = min(max(rows) for rows in per_symbol)
        out = []
        for ts in range(since, ready + 1, self.tf_ms):
            values = np.array([rows.get(ts, (math.nan,) * 5) for rows in per_symbol], dtype=float)
            missing = [s for s, rows in zip(self.symbols, per_symbol, strict=True) if ts not in rows]
            if missing:
                log.warning("bar %s: the exchange has no candle for %s (held, marked at the last price)",
                            ts, missing)
            out.append(BarSet(ts, *(values[:, k].copy() for k in range(5))))
        return out
