"""Coin Metrics asset metrics and blockchain.com charts -> ONCHAIN."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest

from cryptopredict.data.schemas import ONCHAIN
from cryptopredict.data.sources import onchain
from cryptopredict.data.sources.http import ClientConfig, SourceError, SourceSchemaError
from tests.sources.conftest import SourceFaults, assert_schema, fixture_bytes
from tests.support.replay_server import RecordedRequest, ReplayServer, Reply

CM_PATH = "/v4/timeseries/asset-metrics"
BC_PATH = "/charts/difficulty"


def day(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def cm_fetch(replay: ReplayServer, config: ClientConfig, since: datetime | None = None,
             until: datetime | None = None, max_pages: int = 1000) -> pd.DataFrame:
    client = onchain.make_coinmetrics_client(replay.base_url, config)
    return onchain.fetch_coinmetrics(["btc", "eth"], ["AdrActCnt", "HashRate"], since=since, until=until,
                                     page_size=2, max_pages=max_pages, client=client)


# --- Coin Metrics -------------------------------------------------------------------------------------


def test_coinmetrics_pages_via_token_when_next_url_is_elsewhere(replay: ReplayServer,
                                                                 fast_config: ClientConfig) -> None:
    replay.route("GET", CM_PATH, [Reply(200, fixture_bytes("coinmetrics/asset_metrics_page1.json")),
                                  Reply(200, fixture_bytes("coinmetrics/asset_metrics_page2.json"))])
    frame = cm_fetch(replay, fast_config, since=datetime(2024, 1, 1, tzinfo=UTC),
                     until=datetime(2024, 1, 4, tzinfo=UTC))
    assert_schema(frame, ONCHAIN)
    rows = list(frame[["asset", "metric", "date", "value"]].itertuples(index=False, name=None))
    assert rows == [
        ("btc", "AdrActCnt", day("2024-01-01"), 771205.0),
        ("btc", "AdrActCnt", day("2024-01-02"), 905119.0),
        ("btc", "AdrActCnt", day("2024-01-03"), 884730.0),
        ("btc", "HashRate", day("2024-01-01"), 503311862.473621),
        ("btc", "HashRate", day("2024-01-02"), 517948116.00712),
        ("eth", "AdrActCnt", day("2024-01-03"), 431877.0),
    ]  # btc HashRate null on 01-03 and eth HashRate absent: no rows
    assert set(frame["source"]) == {"coinmetrics"}
    first, second = replay.requests
    assert first.query == {"assets": ["btc,eth"], "metrics": ["AdrActCnt,HashRate"], "frequency": ["1d"],
                           "page_size": ["2"], "paging_from": ["start"],
                           "start_time": ["2024-01-01T00:00:00Z"], "end_time": ["2024-01-04T00:00:00Z"],
                           "end_inclusive": ["false"]}
    assert second.query == {**first.query, "next_page_token": ["MDIwMjQtMDEtMDJUMDA6MDA6MDBa"]}


def test_coinmetrics_follows_next_page_url_on_its_own_origin(replay: ReplayServer,
                                                              fast_config: ClientConfig) -> None:
    def first_page(request: RecordedRequest) -> Reply:
        if request.param("page") == "2":
            return Reply(200, fixture_bytes("coinmetrics/asset_metrics_page2.json"))
        body = json.loads(fixture_bytes("coinmetrics/asset_metrics_page1.json"))
        body["next_page_url"] = replay.url(CM_PATH + "?page=2&next_page_token=abc")
        return Reply(200, body)

    replay.route("GET", CM_PATH, first_page)
    frame = cm_fetch(replay, fast_config)
    assert len(frame) == 6
    assert replay.requests[1].query == {"page": ["2"], "next_page_token": ["abc"]}  # URL fetched unmodified


def test_coinmetrics_stops_at_max_pages(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", CM_PATH, Reply(200, fixture_bytes("coinmetrics/asset_metrics_page1.json")))
    with pytest.raises(SourceError, match="still paging after 3 pages"):
        cm_fetch(replay, fast_config, max_pages=3)
    assert len(replay.requests) == 3


def test_coinmetrics_empty_page(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", CM_PATH, Reply(200, {"data": []}))
    frame = cm_fetch(replay, fast_config)
    assert frame.empty
    assert_schema(frame, ONCHAIN)


@pytest.mark.parametrize(("row", "message"), [
    ({"time": "2024-01-01T00:00:00.000000000Z", "AdrActCnt": "1"},
     r"missing field page\[0\]\.data\[0\]\.asset"),
    ({"asset": "btc", "time": "now", "AdrActCnt": "1"},
     r"page\[0\]\.data\[0\]\.time is not an ISO-8601 timestamp: 'now'"),
    ({"asset": "btc", "time": "2024-01-01T00:00:00Z", "AdrActCnt": "n/a"},
     r"field page\[0\]\.data\[0\]\.AdrActCnt is not numeric: 'n/a'"),
])
def test_coinmetrics_unexpected_schema_names_the_field(replay: ReplayServer, fast_config: ClientConfig,
                                                       row: dict[str, str], message: str) -> None:
    replay.route("GET", CM_PATH, Reply(200, {"data": [row]}))
    with pytest.raises(SourceSchemaError, match=f"^coinmetrics: .*{message}"):
        cm_fetch(replay, fast_config)


def test_coinmetrics_missing_data_field(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", CM_PATH, Reply(200, {"error": None}))
    with pytest.raises(SourceSchemaError, match=r"^coinmetrics: missing field response\.data$"):
        cm_fetch(replay, fast_config)


class TestCoinMetricsFaults(SourceFaults):
    path = CM_PATH
    ok_body = fixture_bytes("coinmetrics/asset_metrics_page2.json")

    def fetch(self, base_url: str, config: ClientConfig) -> pd.DataFrame:
        client = onchain.make_coinmetrics_client(base_url, config)
        return onchain.fetch_coinmetrics(["btc"], ["AdrActCnt"], client=client)


# --- blockchain.com -----------------------------------------------------------------------------------


def bc_fetch(replay: ReplayServer, config: ClientConfig, timespan: str = "all", since: datetime | None = None,
             until: datetime | None = None) -> pd.DataFrame:
    client = onchain.make_blockchain_client(replay.base_url, config)
    return onchain.fetch_blockchain_chart("difficulty", timespan=timespan, since=since, until=until,
                                          client=client)


def test_blockchain_chart_happy_path_keeps_last_point_of_a_day(replay: ReplayServer,
                                                               fast_config: ClientConfig) -> None:
    replay.route("GET", BC_PATH, Reply(200, fixture_bytes("blockchain/difficulty.json")))
    frame = bc_fetch(replay, fast_config)
    assert_schema(frame, ONCHAIN)
    assert frame["date"].tolist() == [day("2024-01-01"), day("2024-01-02"), day("2024-01-03")]
    assert frame["value"].tolist() == [72006146478567.1, 72006146478567.1, 73197634206448.34]
    assert set(zip(frame["asset"], frame["metric"], frame["source"], strict=True)) == {
        ("btc", "difficulty", "blockchain.com")}
    assert replay.requests[0].query == {"timespan": ["all"], "format": ["json"], "sampled": ["false"]}


def test_blockchain_chart_since_until(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", BC_PATH, Reply(200, fixture_bytes("blockchain/difficulty.json")))
    frame = bc_fetch(replay, fast_config, timespan="1year", since=datetime(2024, 1, 2, tzinfo=UTC),
                     until=datetime(2024, 1, 3, tzinfo=UTC))
    assert frame["date"].tolist() == [day("2024-01-02")]
    assert replay.requests[0].param("start") == "2024-01-02"
    assert replay.requests[0].param("timespan") == "1year"


def test_blockchain_chart_status_not_ok(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", BC_PATH, Reply(200, {"status": "error", "values": []}))
    with pytest.raises(SourceError, match="chart 'difficulty' answered status 'error'"):
        bc_fetch(replay, fast_config)


def test_blockchain_chart_empty_page(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", BC_PATH, Reply(200, {"status": "ok", "name": "Difficulty", "values": []}))
    frame = bc_fetch(replay, fast_config)
    assert frame.empty
    assert_schema(frame, ONCHAIN)


def test_blockchain_chart_unexpected_schema_names_the_field(replay: ReplayServer,
                                                            fast_config: ClientConfig) -> None:
    body = json.loads(fixture_bytes("blockchain/difficulty.json"))
    body["values"][2] = {"x": 1704240000, "value": 1.0}
    replay.route("GET", BC_PATH, Reply(200, body))
    with pytest.raises(SourceSchemaError, match=r"^blockchain\.com: missing field response\.values\[2\]\.y$"):
        bc_fetch(replay, fast_config)


class TestBlockchainFaults(SourceFaults):
    path = BC_PATH
    ok_body = fixture_bytes("blockchain/difficulty.json")

    def fetch(self, base_url: str, config: ClientConfig) -> pd.DataFrame:
        client = onchain.make_blockchain_client(base_url, config)
        return onchain.fetch_blockchain_chart("difficulty", client=client)
