"""Daily macro series -> the MACRO table (long format: series, date, value, source).

FRED: ``GET /fred/series/observations?series_id=VIXCLS&api_key=...&file_type=json&observation_start=YYYY-MM-DD
&observation_end=YYYY-MM-DD&limit=N&offset=K`` answering ``{"count": n, "offset": k, "limit": N,
"observations": [{"date": "2024-01-02", "value": "13.20", ...}]}``; ``"."`` marks a missing value (row
skipped). Pages follow ``offset`` until ``count`` observations were seen.

Yahoo chart v8: ``GET /v8/finance/chart/{ticker}?period1=<unix s>&period2=<unix s>&interval=1d`` answering
``{"chart": {"result": [{"meta": {"exchangeTimezoneName": ..., "gmtoffset": ...}, "timestamp": [...],
"indicators": {"quote": [{"close": [...], ...}]}}], "error": null}}``; null closes are skipped, a result
without ``timestamp`` has no bars. A bar's ``date`` is its trading day in the exchange's time zone.

``date`` = UTC midnight of the trading day; ``since``/``until`` select ``since <= date < until``.
Series names come from ``FRED_SERIES`` / ``YAHOO_SERIES`` (extend them, or pass ``name=``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from cryptopredict.data.schemas import MACRO
from cryptopredict.data.sources.http import (
    ClientConfig,
    HttpClient,
    SourceError,
    SourceSchemaError,
    number,
    require,
    table_frame,
    utc,
    within,
)

log = logging.getLogger(__name__)

FRED_SOURCE = "fred"
FRED_BASE_URL = "https://api.stlouisfed.org"
FRED_MIN_INTERVAL_S = 0.5  # documented limit: 120 requests per minute
YAHOO_SOURCE = "yahoo"
YAHOO_BASE_URL = "https://query1.finance.yahoo.com"
YAHOO_MIN_INTERVAL_S = 1.0

# Source id -> our series name. Module-level so callers can add series.
FRED_SERIES: dict[str, str] = {
    "VIXCLS": "vix",
    "SP500": "sp500",
    "DGS10": "us10y_yield",
    "DTWEXBGS": "usd_broad_index",
}
YAHOO_SERIES: dict[str, str] = {
    "DX-Y.NYB": "dxy",
    "GC=F": "gold_futures",
}


def make_fred_client(base_url: str = FRED_BASE_URL, config: ClientConfig | None = None) -> HttpClient:
    """A FRED client (the API key is a query parameter of each fetch)."""
    return HttpClient(FRED_SOURCE, base_url, config or ClientConfig(min_interval_s=FRED_MIN_INTERVAL_S))


def make_yahoo_client(base_url: str = YAHOO_BASE_URL, config: ClientConfig | None = None) -> HttpClient:
    """A Yahoo Finance chart client."""
    return HttpClient(YAHOO_SOURCE, base_url, config or ClientConfig(min_interval_s=YAHOO_MIN_INTERVAL_S))


def _series_name(source_id: str, mapping: Mapping[str, str], name: str | None, source: str) -> str:
    if name is not None:
        return name
    try:
        return mapping[source_id]
    except KeyError:
        raise ValueError(f"{source}: no series name for {source_id!r}; "
                         "add it to the mapping or pass name=") from None


def fetch_fred_series(
    series_id: str,
    *,
    api_key: str,
    since: datetime | None = None,
    until: datetime | None = None,
    name: str | None = None,
    page_limit: int = 100_000,
    client: HttpClient | None = None,
) -> pd.DataFrame:
    """FRED observations of ``series_id`` as series ``name`` (default ``FRED_SERIES[series_id]``)."""
    series = _series_name(series_id, FRED_SERIES, name, FRED_SOURCE)
    start, end = utc(since, "since"), utc(until, "until")
    params: dict[str, str | int | None] = {
        "series_id": series_id, "api_key": api_key, "file_type": "json", "sort_order": "asc",
        "observation_start": None if start is None else start.strftime("%Y-%m-%d"),
        "observation_end": None if end is None else (end - timedelta(microseconds=1)).strftime("%Y-%m-%d"),
        "limit": page_limit,
    }
    own = client is None
    http = client or make_fred_client()
    dates: list[str] = []
    values: list[float] = []
    offset = 0
    try:
        while True:
            body = http.get_json("/fred/series/observations", {**params, "offset": offset})
            count = int(number(require(body, "count", int, source=FRED_SOURCE, where="response"),
                               source=FRED_SOURCE, where="response.count"))
            observations = require(body, "observations", list, source=FRED_SOURCE, where="response")
            for i, obs in enumerate(observations):
                where = f"response.observations[{offset + i}]"
                day = require(obs, "date", str, source=FRED_SOURCE, where=where)
                raw = require(obs, "value", str, source=FRED_SOURCE, where=where)
                if raw.strip() == ".":
                    continue
                dates.append(day)
                values.append(number(raw, source=FRED_SOURCE, where=f"{where}.value"))
            offset += len(observations)
            if not observations or offset >= count:
                break
    finally:
        if own:
            http.close()
    try:
        days = pd.to_datetime(dates, format="%Y-%m-%d", utc=True)
    except ValueError as exc:
        raise SourceSchemaError(f"{FRED_SOURCE}: field observations[].date is not YYYY-MM-DD: "
                                f"{exc}") from None
    frame = table_frame(MACRO, {"series": series, "date": days, "value": values, "source": FRED_SOURCE})
    log.debug("%s: %d observations of %s", FRED_SOURCE, len(frame), series_id)
    return frame[within(frame["date"], start, end)].reset_index(drop=True)


def fetch_yahoo_chart(
    ticker: str,
    *,
    since: datetime,
    until: datetime | None = None,
    name: str | None = None,
    client: HttpClient | None = None,
) -> pd.DataFrame:
    """Daily closes of Yahoo ``ticker`` as series ``name`` (default ``YAHOO_SERIES[ticker]``).

    ``until`` defaults to now.
    """
    series = _series_name(ticker, YAHOO_SERIES, name, YAHOO_SOURCE)
    start, end = utc(since, "since"), utc(until, "until")
    period2 = end if end is not None else pd.Timestamp.now(tz="UTC")
    params: dict[str, str | int | None] = {
        "period1": int(start.timestamp()), "period2": int(period2.timestamp()), "interval": "1d",
    }
    own = client is None
    http = client or make_yahoo_client()
    try:
        body = http.get_json(f"/v8/finance/chart/{quote(ticker, safe='')}", params)
    finally:
        if own:
            http.close()
    chart = require(body, "chart", dict, source=YAHOO_SOURCE, where="response")
    if chart.get("error"):
        error = chart["error"]
        detail = (error.get("description") or error.get("code")) if isinstance(error, dict) else error
        raise SourceError(f"{YAHOO_SOURCE}: chart error for {ticker}: {detail}")
    results = require(chart, "result", list, source=YAHOO_SOURCE, where="response.chart")
    if not results:
        raise SourceSchemaError(f"{YAHOO_SOURCE}: field response.chart.result is empty")
    result = results[0]
    where = "response.chart.result[0]"
    meta = require(result, "meta", dict, source=YAHOO_SOURCE, where=where)
    stamps = result.get("timestamp") or []
    if not isinstance(stamps, list):
        raise SourceSchemaError(f"{YAHOO_SOURCE}: field {where}.timestamp is {type(stamps).__name__}, "
                                "expected list")
    indicators = require(result, "indicators", dict, source=YAHOO_SOURCE, where=where)
    quotes = require(indicators, "quote", list, source=YAHOO_SOURCE, where=f"{where}.indicators")
    closes: list[object] = []
    if stamps:
        if not quotes:
            raise SourceSchemaError(f"{YAHOO_SOURCE}: field {where}.indicators.quote is empty")
        closes = require(quotes[0], "close", list, source=YAHOO_SOURCE, where=f"{where}.indicators.quote[0]")
    if len(closes) != len(stamps):
        raise SourceSchemaError(f"{YAHOO_SOURCE}: field {where}.indicators.quote[0].close has {len(closes)} "
                                f"values for {len(stamps)} timestamps")
    zone = _exchange_zone(meta)
    days: list[datetime] = []
    values: list[float] = []
    for i, (stamp, close) in enumerate(zip(stamps, closes, strict=True)):
        if close is None:
            continue
        seconds = number(stamp, source=YAHOO_SOURCE, where=f"{where}.timestamp[{i}]")
        local_day = datetime.fromtimestamp(seconds, tz=zone).date()
        days.append(datetime(local_day.year, local_day.month, local_day.day, tzinfo=UTC))
        values.append(number(close, source=YAHOO_SOURCE, where=f"{where}.indicators.quote[0].close[{i}]"))
    frame = table_frame(MACRO, {"series": series, "date": days, "value": values, "source": YAHOO_SOURCE})
    frame = frame[within(frame["date"], start, end)].drop_duplicates("date", keep="last")
    return frame.reset_index(drop=True)


def _exchange_zone(meta: dict[str, object]) -> timezone | ZoneInfo:
    """The exchange's time zone: ``exchangeTimezoneName``, else the fixed ``gmtoffset`` (s), else UTC."""
    name = meta.get("exchangeTimezoneName")
    if isinstance(name, str):
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("%s: unknown exchange time zone %r; using gmtoffset", YAHOO_SOURCE, name)
    offset = meta.get("gmtoffset")
    if isinstance(offset, int | float) and not isinstance(offset, bool):
        return timezone(timedelta(seconds=offset))
    return UTC
