"""DefiLlama historical chain TVL (USD) -> the TVL table.

Endpoints: ``GET /v2/historicalChainTvl`` (DeFi on all chains; stored as chain "all") and
``GET /v2/historicalChainTvl/{chain}``, both answering ``[{"date": <unix s>, "tvl": <usd>}, ...]``.
Points are at 00:00 UTC except possibly the newest (an intraday update); ``date`` is the UTC day and a
day seen twice keeps its last point. The API has no date filter: ``since``/``until`` are applied here
(``since <= date < until``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from urllib.parse import quote

import pandas as pd

from cryptopredict.data.schemas import TVL
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

SOURCE = "defillama"
BASE_URL = "https://api.llama.fi"
MIN_INTERVAL_S = 0.2
ALL_CHAINS = "all"


def make_client(base_url: str = BASE_URL, config: ClientConfig | None = None) -> HttpClient:
    """A DefiLlama client."""
    return HttpClient(SOURCE, base_url, config or ClientConfig(min_interval_s=MIN_INTERVAL_S))


def fetch_chain_tvl(
    chain: str = ALL_CHAINS,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    client: HttpClient | None = None,
) -> pd.DataFrame:
    """Daily TVL in USD of ``chain`` (a DefiLlama chain name, or "all" for the DeFi total)."""
    start, end = utc(since, "since"), utc(until, "until")
    path = "/v2/historicalChainTvl"
    if chain != ALL_CHAINS:
        path += "/" + quote(chain, safe="")
    own = client is None
    http = client or make_client()
    try:
        body = http.get_json(path)
    finally:
        if own:
            http.close()
    if not isinstance(body, list):
        raise SourceSchemaError(f"{SOURCE}: response for {chain!r} is {type(body).__name__}, expected a list")
    stamps: list[float] = []
    values: list[float] = []
    for i, point in enumerate(body):
        where = f"response[{i}]"
        stamps.append(number(require(point, "date", (int, float, str), source=SOURCE, where=where),
                             source=SOURCE, where=f"{where}.date"))
        values.append(number(require(point, "tvl", (int, float), source=SOURCE, where=where),
                             source=SOURCE, where=f"{where}.tvl"))
    frame = table_frame(TVL, {
        "chain": chain, "date": pd.to_datetime(stamps, unit="s", utc=True).floor("D"),
        "tvl_usd": values, "source": SOURCE,
    })
    frame = frame[within(frame["date"], start, end)]
    frame = frame.sort_values("date", kind="stable").drop_duplicates("date", keep="last")
    log.debug("%s: %d days of TVL for %s", SOURCE, len(frame), chain)
    return frame.reset_index(drop=True)
