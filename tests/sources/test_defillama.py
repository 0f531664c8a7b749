"""DefiLlama historical chain TVL -> TVL."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from cryptopredict.data.schemas import TVL
from cryptopredict.data.sources import defillama
from cryptopredict.data.sources.http import ClientConfig, SourceSchemaError
from tests.sources.conftest import SourceFaults, assert_schema, fixture_bytes
from tests.support.replay_server import ReplayServer, Reply

ALL_PATH = "/v2/historicalChainTvl"


def fetch(replay: ReplayServer, config: ClientConfig, chain: str = "all", since: datetime | None = None,
          until: datetime | None = None) -> pd.DataFrame:
    client = defillama.make_client(replay.base_url, config)
    return defillama.fetch_chain_tvl(chain, since=since, until=until, client=client)


def day(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def test_all_chains_happy_path_keeps_the_latest_intraday_point(replay: ReplayServer,
                                                               fast_config: ClientConfig) -> None:
    replay.route("GET", ALL_PATH, Reply(200, fixture_bytes("defillama/historical_all.json")))
    frame = fetch(replay, fast_config)
    assert_schema(frame, TVL)
    assert frame["date"].tolist() == [day("2024-01-01"), day("2024-01-02"), day("2024-01-03")]
    assert frame["tvl_usd"].tolist() == [52731288137.37, 53842201654.12, 51422650193.08]
    assert set(frame["chain"]) == {"all"} and set(frame["source"]) == {"defillama"}
    assert replay.requests[0].query == {}


def test_one_chain_and_window(replay: ReplayServer, fast_config: ClientConfig) -> None:
    body = fixture_bytes("defillama/historical_ethereum.json")
    replay.route("GET", ALL_PATH + "/Ethereum", Reply(200, body))
    frame = fetch(replay, fast_config, chain="Ethereum", since=datetime(2024, 1, 2, tzinfo=UTC))
    assert frame["date"].tolist() == [day("2024-01-02")]
    assert frame["tvl_usd"].tolist() == [28103344512.91]
    assert set(frame["chain"]) == {"Ethereum"}
    assert [r.path for r in replay.requests] == ["/v2/historicalChainTvl/Ethereum"]


def test_empty_page(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", ALL_PATH, Reply(200, []))
    frame = fetch(replay, fast_config)
    assert frame.empty
    assert_schema(frame, TVL)


def test_unexpected_schema_names_the_field(replay: ReplayServer, fast_config: ClientConfig) -> None:
    body = [{"date": 1704067200, "tvl": 1.0}, {"date": 1704153600, "totalLiquidityUSD": 2.0}]
    replay.route("GET", ALL_PATH, Reply(200, body))
    with pytest.raises(SourceSchemaError, match=r"^defillama: missing field response\[1\]\.tvl$"):
        fetch(replay, fast_config)
    replay.route("GET", ALL_PATH, Reply(200, {"message": "chain not found"}))
    with pytest.raises(SourceSchemaError, match=r"^defillama: response for 'all' is dict, expected a list$"):
        fetch(replay, fast_config)


class TestFaults(SourceFaults):
    path = ALL_PATH
    ok_body = fixture_bytes("defillama/historical_all.json")

    def fetch(self, base_url: str, config: ClientConfig) -> pd.DataFrame:
        return defillama.fetch_chain_tvl(client=defillama.make_client(base_url, config))
