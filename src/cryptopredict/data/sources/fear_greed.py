"""alternative.me Crypto Fear & Greed Index -> the FEAR_GREED table.

Endpoint: ``GET /fng/?limit=0&format=json`` answering
``{"name": ..., "data": [{"value": "40", "value_classification": "Fear", "timestamp": "<unix s>", ...}],
"metadata": {"error": null}}``, newest first. The API has no date filter, so the whole history (a few
thousand rows) is fetched and ``since``/``until`` are applied here. ``date`` = the UTC day of ``timestamp``.
"""

from __future__ import annotations

import logging
from datetime import datetime

import pandas as pd

from cryptopredict.data.schemas import FEAR_GREED
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

SOURCE = "alternative.me"
BASE_URL = "https://api.alternative.me"
MIN_INTERVAL_S = 1.0  # documented limit: 60 requests per minute


def make_client(base_url: str = BASE_URL, config: ClientConfig | None = None) -> HttpClient:
    """An alternative.me client."""
    return HttpClient(SOURCE, base_url, config or ClientConfig(min_interval_s=MIN_INTERVAL_S))


def fetch_fear_greed(
    *, since: datetime | None = None, until: datetime | None = None, client: HttpClient | None = None
) -> pd.DataFrame:
    """Daily index values with ``since <= date < until`` (tz-aware UTC, both optional), oldest first."""
    start, end = utc(since, "since"), utc(until, "until")
    own = client is None
    http = client or make_client()
    try:
        body = http.get_json("/fng/", {"limit": 0, "format": "json"})
    finally:
        if own:
            http.close()
    metadata = require(body, "metadata", dict, source=SOURCE, where="response")
    if metadata.get("error"):
        raise SourceError(f"{SOURCE}: API error: {metadata['error']}")
    rows = require(body, "data", list, source=SOURCE, where="response")
    values: list[int] = []
    labels: list[str] = []
    stamps: list[float] = []
    for i, row in enumerate(rows):
        where = f"response.data[{i}]"
        value = number(require(row, "value", (str, int), source=SOURCE, where=where), source=SOURCE,
                       where=f"{where}.value")
        if not value.is_integer() or not 0 <= value <= 100:
            raise SourceSchemaError(f"{SOURCE}: field {where}.value is not an integer in 0..100: {value}")
        values.append(int(value))
        labels.append(require(row, "value_classification", str, source=SOURCE, where=where))
        stamps.append(number(require(row, "timestamp", (str, int), source=SOURCE, where=where),
                             source=SOURCE, where=f"{where}.timestamp"))
    frame = table_frame(FEAR_GREED, {
        "date": pd.to_datetime(stamps, unit="s", utc=True).floor("D"),
        "value": values,
        "classification": labels,
        "source": SOURCE,
    })
    frame = frame[within(frame["date"], start, end)].drop_duplicates("date", keep="first")
    log.debug("%s: %d fear & greed rows", SOURCE, len(frame))
    return frame.sort_values("date", kind="stable").reset_index(drop=True)
