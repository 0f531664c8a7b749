"""alternative.me Fear & Greed -> FEAR_GREED."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest

from cryptopredict.data.schemas import FEAR_GREED
from cryptopredict.data.sources import fear_greed
from cryptopredict.data.sources.http import ClientConfig, SourceError, SourceSchemaError
from tests.sources.conftest import SourceFaults, assert_schema, fixture_bytes
from tests.support.replay_server import ReplayServer, Reply

PATH = "/fng/"


def fetch(replay: ReplayServer, config: ClientConfig, since: datetime | None = None,
          until: datetime | None = None) -> pd.DataFrame:
    client = fear_greed.make_client(replay.base_url, config)
    return fear_greed.fetch_fear_greed(since=since, until=until, client=client)


def test_happy_path_oldest_first(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", PATH, Reply(200, fixture_bytes("fear_greed/fng.json")))
    frame = fetch(replay, fast_config)
    assert_schema(frame, FEAR_GREED)
    assert frame["date"].tolist() == list(pd.date_range("2024-01-01", periods=3, freq="D", tz="UTC"))
    assert frame["value"].tolist() == [65, 76, 70]
    assert frame["classification"].tolist() == ["Greed", "Extreme Greed", "Greed"]
    assert set(frame["source"]) == {"alternative.me"}
    assert replay.requests[0].query == {"limit": ["0"], "format": ["json"]}


def test_since_until_select_days(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", PATH, Reply(200, fixture_bytes("fear_greed/fng.json")))
    frame = fetch(replay, fast_config, since=datetime(2024, 1, 2, tzinfo=UTC),
                  until=datetime(2024, 1, 3, tzinfo=UTC))
    assert frame["date"].tolist() == [pd.Timestamp("2024-01-02", tz="UTC")]
    assert frame["value"].tolist() == [76]


def test_metadata_error_is_a_source_error(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", PATH, Reply(200, {"name": "Fear and Greed Index", "data": [],
                                          "metadata": {"error": "Invalid limit parameter."}}))
    with pytest.raises(SourceError, match=r"alternative\.me: API error: Invalid limit parameter\."):
        fetch(replay, fast_config)


def test_empty_page(replay: ReplayServer, fast_config: ClientConfig) -> None:
    body = {"name": "Fear and Greed Index", "data": [], "metadata": {"error": None}}
    replay.route("GET", PATH, Reply(200, body))
    frame = fetch(replay, fast_config)
    assert frame.empty
    assert_schema(frame, FEAR_GREED)


@pytest.mark.parametrize(("change", "message"), [
    (lambda b: b["data"][1].pop("value_classification"),
     r"missing field response\.data\[1\]\.value_classification"),
    (lambda b: b["data"][0].update(value="high"), r"field response\.data\[0\]\.value is not numeric: 'high'"),
    (lambda b: b["data"][2].update(value="101"), r"response\.data\[2\]\.value is not an integer in 0\.\.100"),
    (lambda b: b.pop("data"), r"missing field response\.data$"),
])
def test_unexpected_schema_names_the_field(replay: ReplayServer, fast_config: ClientConfig,
                                           change: Callable[[dict[str, Any]], object], message: str) -> None:
    body = json.loads(fixture_bytes("fear_greed/fng.json"))
    change(body)
    replay.route("GET", PATH, Reply(200, body))
    with pytest.raises(SourceSchemaError, match=f"^alternative\\.me: .*{message}"):
        fetch(replay, fast_config)


class TestFaults(SourceFaults):
    path = PATH
    ok_body = fixture_bytes("fear_greed/fng.json")

    def fetch(self, base_url: str, config: ClientConfig) -> pd.DataFrame:
        return fear_greed.fetch_fear_greed(client=fear_greed.make_client(base_url, config))
