"""On-chain daily metrics -> the ONCHAIN table (long format: asset, metric, date, value, source).

Coin Metrics community API v4: ``GET /v4/timeseries/asset-metrics?assets=btc&metrics=AdrActCnt,HashRate
&frequency=1d&page_size=N`` answering ``{"data": [{"asset": "btc", "time": "2024-01-01T00:00:00.000000000Z",
"AdrActCnt": "912345", ...}], "next_page_token": ..., "next_page_url": ...}``; values are decimal strings,
a missing or null metric means "no value that day". Pages are followed through ``next_page_url`` when it
is on the client's own origin, else through ``next_page_token`` with the original parameters.
Metric = the Coin Metrics id as is.

blockchain.com charts: ``GET /charts/{name}?timespan=all&format=json&sampled=false`` answering
``{"status": "ok", "name": ..., "unit": ..., "period": "day", "values": [{"x": <unix s>, "y": <number>}]}``.
Asset = btc, metric = the chart name. Several points on one UTC day keep the last.

``date`` = UTC midnight of the day a value describes; ``since``/``until`` select ``since <= date < until``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import datetime
from urllib.parse import parse_qs, quote, urlsplit

import pandas as pd

from cryptopredict.data.schemas import ONCHAIN
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

COINMETRICS_SOURCE = "coinmetrics"
COINMETRICS_BASE_URL = "https://community-api.coinmetrics.io"
COINMETRICS_MIN_INTERVAL_S = 0.6  # community limit: 10 requests per 6 seconds per IP
BLOCKCHAIN_SOURCE = "blockchain.com"
BLOCKCHAIN_BASE_URL = "https://api.blockchain.info"
BLOCKCHAIN_MIN_INTERVAL_S = 1.0

_ASSET_METRICS_PATH = "/v4/timeseries/asset-metrics"
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(T|$)")


def make_coinmetrics_client(base_url: str = COINMETRICS_BASE_URL,
                            config: ClientConfig | None = None) -> HttpClient:
    """A Coin Metrics community API client."""
    config = config or ClientConfig(min_interval_s=COINMETRICS_MIN_INTERVAL_S)
    return HttpClient(COINMETRICS_SOURCE, base_url, config)


def make_blockchain_client(base_url: str = BLOCKCHAIN_BASE_URL,
                           config: ClientConfig | None = None) -> HttpClient:
    """A blockchain.com charts API client."""
    config = config or ClientConfig(min_interval_s=BLOCKCHAIN_MIN_INTERVAL_S)
    return HttpClient(BLOCKCHAIN_SOURCE, base_url, config)


def _iso(ts: pd.Timestamp | None) -> str | None:
    return None if ts is None else ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def fetch_coinmetrics(
    assets: Sequence[str],
    metrics: Sequence[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    page_size: int = 1000,
    max_pages: int = 1000,
    client: HttpClient | None = None,
) -> pd.DataFrame:
    """Daily ``metrics`` of ``assets`` from Coin Metrics, one row per (asset, metric, date) with a value.

    Follows pages until the API stops sending a next page; more than ``max_pages`` is a SourceError.
    """
    if not assets or not metrics or max_pages < 1:
        raise ValueError("fetch_coinmetrics needs an asset, a metric and max_pages >= 1")
    start, end = utc(since, "since"), utc(until, "until")
    params: dict[str, str | int | None] = {
        "assets": ",".join(assets), "metrics": ",".join(metrics), "frequency": "1d",
        "page_size": page_size, "paging_from": "start",
        "start_time": _iso(start), "end_time": _iso(end), "end_inclusive": None if end is None else "false",
    }
    own = client is None
    http = client or make_coinmetrics_client()
    rows: list[tuple[str, str, pd.Timestamp, float]] = []
    try:
        path: str = _ASSET_METRICS_PATH
        query: dict[str, str | int | None] | None = params
        for page in range(max_pages):
            body = http.get_json(path, query)
            rows.extend(_coinmetrics_rows(body, metrics, page))
            next_page = _coinmetrics_next(http, body, params)
            if next_page is None:
                break
            path, query = next_page
        else:
            raise SourceError(f"{COINMETRICS_SOURCE}: still paging after {max_pages} pages")
    finally:
        if own:
            http.close()
    asset_col, metric_col, dates, values = zip(*rows, strict=True) if rows else ((), (), (), ())
    frame = table_frame(ONCHAIN, {"asset": list(asset_col), "metric": list(metric_col), "date": list(dates),
                                  "value": list(values), "source": COINMETRICS_SOURCE})
    frame = frame[within(frame["date"], start, end)]
    log.debug("%s: %d values from %d page(s)", COINMETRICS_SOURCE, len(frame), page + 1)
    return frame.sort_values(["asset", "metric", "date"], kind="stable").reset_index(drop=True)


def _coinmetrics_rows(
    body: object, metrics: Sequence[str], page: int
) -> list[tuple[str, str, pd.Timestamp, float]]:
    out: list[tuple[str, str, pd.Timestamp, float]] = []
    for i, row in enumerate(require(body, "data", list, source=COINMETRICS_SOURCE, where="response")):
        where = f"page[{page}].data[{i}]"
        asset = require(row, "asset", str, source=COINMETRICS_SOURCE, where=where)
        raw_time = require(row, "time", str, source=COINMETRICS_SOURCE, where=where)
        try:
            if not _ISO_DATE.match(raw_time):
                raise ValueError(raw_time)
            day = pd.to_datetime(raw_time, format="ISO8601", utc=True).floor("D")
        except ValueError:
            raise SourceSchemaError(f"{COINMETRICS_SOURCE}: field {where}.time is not an ISO-8601 "
                                    f"timestamp: {raw_time!r}") from None
        for metric in metrics:
            raw = row.get(metric)
            if raw is not None:
                out.append((asset, metric, day,
                            number(raw, source=COINMETRICS_SOURCE, where=f"{where}.{metric}")))
    return out


def _coinmetrics_next(
    http: HttpClient, body: dict[str, object], params: dict[str, str | int | None]
) -> tuple[str, dict[str, str | int | None] | None] | None:
    """(path or URL, params) of the next page, or None on the last page."""
    url = body.get("next_page_url")
    token = body.get("next_page_token")
    if isinstance(url, str) and url:
        if http.on_origin(url):
            return url, None
        if not token:
            token = parse_qs(urlsplit(url).query).get("next_page_token", [None])[0]
    if isinstance(token, str) and token:
        return _ASSET_METRICS_PATH, {**params, "next_page_token": token}
    return None


def fetch_blockchain_chart(
    chart: str,
    *,
    timespan: str = "all",
    since: datetime | None = None,
    until: datetime | None = None,
    client: HttpClient | None = None,
) -> pd.DataFrame:
    """blockchain.com chart ``chart`` (e.g. difficulty, hash-rate) as btc rows with metric = ``chart``."""
    start, end = utc(since, "since"), utc(until, "until")
    params: dict[str, str | int | None] = {
        "timespan": timespan, "format": "json", "sampled": "false",
        "start": None if start is None else start.strftime("%Y-%m-%d"),
    }
    own = client is None
    http = client or make_blockchain_client()
    try:
        body = http.get_json(f"/charts/{quote(chart, safe='')}", params)
    finally:
        if own:
            http.close()
    status = require(body, "status", str, source=BLOCKCHAIN_SOURCE, where="response")
    if status != "ok":
        raise SourceError(f"{BLOCKCHAIN_SOURCE}: chart {chart!r} answered status {status!r}")
    stamps: list[float] = []
    values: list[float] = []
    for i, point in enumerate(require(body, "values", list, source=BLOCKCHAIN_SOURCE, where="response")):
        where = f"response.values[{i}]"
        stamps.append(number(require(point, "x", (int, float), source=BLOCKCHAIN_SOURCE, where=where),
                             source=BLOCKCHAIN_SOURCE, where=f"{where}.x"))
        values.append(number(require(point, "y", (int, float), source=BLOCKCHAIN_SOURCE, where=where),
                             source=BLOCKCHAIN_SOURCE, where=f"{where}.y"))
    frame = table_frame(ONCHAIN, {
        "asset": "btc", "metric": chart, "date": pd.to_datetime(stamps, unit="s", utc=True).floor("D"),
        "value": values, "source": BLOCKCHAIN_SOURCE,
    })
    frame = frame[within(frame["date"], start, end)]
    frame = frame.sort_values("date", kind="stable").drop_duplicates("date", keep="last")
    log.debug("%s: %d days of %s", BLOCKCHAIN_SOURCE, len(frame), chart)
    return frame.reset_index(drop=True)
