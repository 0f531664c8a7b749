"""CoinGecko market chart (price, market cap, 24h volume in USD) -> the MARKET_CAPS table.

Endpoint: ``GET /coins/{id}/market_chart/range?vs_currency=usd&from=<unix s>&to=<unix s>[&interval=daily]``
answering ``{"prices": [[ms, price], ...], "market_caps": [[ms, cap], ...],
"total_volumes": [[ms, vol], ...]}``.
Long ranges are fetched in chunks (``interval=hourly`` serves at most 100 days per request).
``timestamp`` is the point's own time (00:00 UTC for daily points; the newest point may be "now").
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Literal

import pandas as pd

from cryptopredict.data.schemas import MARKET_CAPS
from cryptopredict.data.sources.http import (
    ClientConfig,
    HttpClient,
    SourceSchemaError,
    number,
    require,
    table_frame,
    utc,
    within,
)

log = logging.getLogger(__name__)

SOURCE = "coingecko"
BASE_URL = "https://api.coingecko.com/api/v3"
PRO_BASE_URL = "https://pro-api.coingecko.com/api/v3"
MIN_INTERVAL_S = 2.5  # keyless/demo plans allow ~30 calls per minute
_SERIES = {"prices": "price_usd", "market_caps": "market_cap_usd", "total_volumes": "volume_usd"}

Interval = Literal["daily", "hourly"]


def make_client(
    base_url: str = BASE_URL,
    config: ClientConfig | None = None,
    *,
    api_key: str | None = None,
    plan: Literal["demo", "pro"] = "demo",
) -> HttpClient:
    """A CoinGecko client; ``api_key`` goes in the demo or pro key header (pro also needs PRO_BASE_URL)."""
    headers = {f"x-cg-{plan}-api-key": api_key} if api_key else None
    return HttpClient(SOURCE, base_url, config or ClientConfig(min_interval_s=MIN_INTERVAL_S),
                      headers=headers)


def fetch_market_chart(
    coin_id: str,
    since: datetime,
    until: datetime,
    *,
    interval: Interval | None = "daily",
    chunk_days: int | None = None,
    client: HttpClient | None = None,
) -> pd.DataFrame:
    """USD price, market cap and volume of ``coin_id`` with ``since <= timestamp < until`` (tz-aware UTC).

    ``interval=None`` leaves CoinGecko's automatic granularity. Requests cover ``chunk_days`` each
    (default 365 for daily, 90 otherwise); points repeated at chunk edges are kept once.
    """
    start, end = utc(since, "since"), utc(until, "until")
    step = timedelta(days=chunk_days or (365 if interval == "daily" else 90))
    if step <= timedelta(0):
        raise ValueError("chunk_days must be positive")
    own = client is None
    http = client or make_client()
    frames: list[pd.DataFrame] = []
    try:
        lo = start
        while lo < end:
            hi = min(lo + step, end)
            params: dict[str, str | int | None] = {
                "vs_currency": "usd", "from": int(lo.timestamp()), "to": int(hi.timestamp()),
                "interval": interval,
            }
            body = http.get_json(f"/coins/{coin_id}/market_chart/range", params)
            frames.append(_parse(coin_id, body))
            lo = hi
    finally:
        if own:
            http.close()
    frame = pd.concat(frames, ignore_index=True) if frames else _parse(coin_id, {key: [] for key in _SERIES})
    frame = frame[within(frame["timestamp"], start, end)].drop_duplicates("timestamp", keep="first")
    log.debug("%s: %d points for %s from %d request(s)", SOURCE, len(frame), coin_id, len(frames))
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def _parse(coin_id: str, body: object) -> pd.DataFrame:
    """One market_chart response as MARKET_CAPS rows (outer join of the three series on the timestamp)."""
    by_time: dict[int, dict[str, float]] = {}
    for key, column in _SERIES.items():
        points = require(body, key, list, source=SOURCE, where="response")
        for i, point in enumerate(points):
            where = f"response.{key}[{i}]"
            if not isinstance(point, list) or len(point) != 2:
                raise SourceSchemaError(f"{SOURCE}: field {where} is not a [timestamp_ms, value] pair")
            ms = int(number(point[0], source=SOURCE, where=f"{where}[0]"))
            value = float("nan") if point[1] is None else number(point[1], source=SOURCE, where=f"{where}[1]")
            by_time.setdefault(ms, {})[column] = value
    times = sorted(by_time)
    nan = float("nan")
    return table_frame(MARKET_CAPS, {
        "coin_id": coin_id,
        "timestamp": pd.to_datetime(times, unit="ms", utc=True),
        **{col: [by_time[t].get(col, nan) for t in times] for col in _SERIES.values()},
        "source": SOURCE,
    })
