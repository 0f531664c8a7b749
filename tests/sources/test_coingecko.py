"""CoinGecko market chart -> MARKET_CAPS."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Literal

import pandas as pd
import pytest

from cryptopredict.data.schemas import MARKET_CAPS
from cryptopredict.data.sources import coingecko
from cryptopredict.data.sources.http import ClientConfig, SourceSchemaError
from tests.sources.conftest import SourceFaults, assert_schema, fixture_bytes
from tests.support.replay_server import ReplayServer, Reply

PATH = "/api/v3/coins/bitcoin/market_chart/range"
JAN1 = datetime(2024, 1, 1, tzinfo=UTC)
JAN4 = datetime(2024, 1, 4, tzinfo=UTC)
JAN5 = datetime(2024, 1, 5, tzinfo=UTC)


def fetch(replay: ReplayServer, config: ClientConfig, since: datetime = JAN1, until: datetime = JAN4,
          api_key: str | None = None, plan: Literal["demo", "pro"] = "demo") -> pd.DataFrame:
    client = coingecko.make_client(replay.url("/api/v3"), config, api_key=api_key, plan=plan)
    return coingecko.fetch_market_chart("bitcoin", since, until, client=client)


def test_happy_path(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", PATH, Reply(200, fixture_bytes("coingecko/market_chart_range.json")))
    frame = fetch(replay, fast_config, api_key="CG-demo-key")
    assert_schema(frame, MARKET_CAPS)
    assert frame["timestamp"].tolist() == list(pd.date_range("2024-01-01", periods=3, freq="D", tz="UTC"))
    assert frame["price_usd"].tolist() == [42280.23456789, 44187.14213861, 44961.60107432]
    assert frame["market_cap_usd"].tolist() == [827631099166.2354, 865508463474.9012, 880811475385.1175]
    assert frame["volume_usd"].tolist() == [13210538420.52791, 18671393284.84511, 39815406713.04102]
    assert set(frame["coin_id"]) == {"bitcoin"} and set(frame["source"]) == {"coingecko"}
    (request,) = replay.requests
    assert request.query == {"vs_currency": ["usd"], "from": ["1704067200"], "to": ["1704326400"],
                             "interval": ["daily"]}
    assert request.headers["x-cg-demo-api-key"] == "CG-demo-key"


def test_pro_key_header(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", PATH, Reply(200, fixture_bytes("coingecko/market_chart_range.json")))
    fetch(replay, fast_config, api_key="CG-pro", plan="pro")
    assert replay.requests[0].headers["x-cg-pro-api-key"] == "CG-pro"
    assert "x-cg-demo-api-key" not in replay.requests[0].headers


def test_long_ranges_are_chunked_and_edges_deduplicated(replay: ReplayServer,
                                                         fast_config: ClientConfig) -> None:
    replay.route("GET", PATH, [Reply(200, fixture_bytes("coingecko/market_chart_range.json")),
                               Reply(200, fixture_bytes("coingecko/market_chart_range_next.json"))])
    client = coingecko.make_client(replay.url("/api/v3"), fast_config)
    frame = coingecko.fetch_market_chart("bitcoin", JAN1, JAN5, chunk_days=2, interval=None, client=client)
    windows = [(r.param("from"), r.param("to"), r.param("interval")) for r in replay.requests]
    assert windows == [("1704067200", "1704240000", None), ("1704240000", "1704412800", None)]
    assert frame["timestamp"].tolist() == list(pd.date_range("2024-01-01", periods=4, freq="D", tz="UTC"))
    # Jan 3 ends the first window and starts the second (44960.98... there): the first window's point is kept
    assert frame["price_usd"].tolist() == [42280.23456789, 44187.14213861, 44961.60107432, 42848.17536712]
    assert frame["volume_usd"].isna().tolist() == [False, False, False, True]  # null volume kept as NaN


def test_window_filters_points_outside_since_until(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", PATH, Reply(200, fixture_bytes("coingecko/market_chart_range.json")))
    frame = fetch(replay, fast_config, since=datetime(2024, 1, 2, tzinfo=UTC),
                  until=datetime(2024, 1, 3, tzinfo=UTC))
    assert frame["timestamp"].tolist() == [pd.Timestamp("2024-01-02", tz="UTC")]


def test_empty_page(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", PATH, Reply(200, {"prices": [], "market_caps": [], "total_volumes": []}))
    frame = fetch(replay, fast_config)
    assert frame.empty
    assert_schema(frame, MARKET_CAPS)


def test_unexpected_schema_names_the_field(replay: ReplayServer, fast_config: ClientConfig) -> None:
    body = json.loads(fixture_bytes("coingecko/market_chart_range.json"))
    del body["market_caps"]
    replay.route("GET", PATH, Reply(200, body))
    with pytest.raises(SourceSchemaError, match=r"^coingecko: missing field response\.market_caps$"):
        fetch(replay, fast_config)
    body = json.loads(fixture_bytes("coingecko/market_chart_range.json"))
    body["prices"][1] = [1704153600000]
    replay.route("GET", PATH, Reply(200, body))
    with pytest.raises(SourceSchemaError,
                       match=r"response\.prices\[1\] is not a \[timestamp_ms, value\] pair"):
        fetch(replay, fast_config)


def test_naive_bounds_are_rejected(fast_config: ClientConfig) -> None:
    with pytest.raises(ValueError, match="since must be timezone-aware"):
        coingecko.fetch_market_chart("bitcoin", datetime(2024, 1, 1), JAN4,
                                     client=coingecko.make_client("http://127.0.0.1:9", fast_config))


class TestFaults(SourceFaults):
    path = PATH
    ok_body = fixture_bytes("coingecko/market_chart_range.json")

    def fetch(self, base_url: str, config: ClientConfig) -> pd.DataFrame:
        client = coingecko.make_client(base_url + "/api/v3", config)
        return coingecko.fetch_market_chart("bitcoin", JAN1, JAN4, client=client)
