"""FRED observations and Yahoo chart v8 -> MACRO."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest

from cryptopredict.data.schemas import MACRO
from cryptopredict.data.sources import macro
from cryptopredict.data.sources.http import ClientConfig, SourceError, SourceSchemaError
from tests.sources.conftest import SourceFaults, assert_schema, fixture_bytes
from tests.support.replay_server import ReplayServer, Reply

FRED_PATH = "/fred/series/observations"
DXY_PATH = "/v8/finance/chart/DX-Y.NYB"
JAN1 = datetime(2024, 1, 1, tzinfo=UTC)
JAN5 = datetime(2024, 1, 5, tzinfo=UTC)


def day(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


# --- FRED ---------------------------------------------------------------------------------------------


def fred_fetch(replay: ReplayServer, config: ClientConfig, series_id: str = "VIXCLS",
               since: datetime | None = None, until: datetime | None = None, page_limit: int = 100_000,
               name: str | None = None) -> pd.DataFrame:
    client = macro.make_fred_client(replay.base_url, config)
    return macro.fetch_fred_series(series_id, api_key="fredkey", since=since, until=until, name=name,
                                   page_limit=page_limit, client=client)


def test_fred_happy_path_skips_missing_dots(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", FRED_PATH, Reply(200, fixture_bytes("fred/vixcls.json")))
    frame = fred_fetch(replay, fast_config, since=JAN1, until=JAN5)
    assert_schema(frame, MACRO)
    assert frame["date"].tolist() == [day("2024-01-02"), day("2024-01-03"), day("2024-01-04")]
    assert frame["value"].tolist() == [13.20, 14.04, 14.13]
    assert set(frame["series"]) == {"vix"} and set(frame["source"]) == {"fred"}
    assert replay.requests[0].query == {
        "series_id": ["VIXCLS"], "api_key": ["fredkey"], "file_type": ["json"], "sort_order": ["asc"],
        "observation_start": ["2024-01-01"], "observation_end": ["2024-01-04"], "limit": ["100000"],
        "offset": ["0"]}


def test_fred_paginates_by_offset(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", FRED_PATH, [Reply(200, fixture_bytes("fred/dgs10_page1.json")),
                                    Reply(200, fixture_bytes("fred/dgs10_page2.json"))])
    frame = fred_fetch(replay, fast_config, series_id="DGS10", page_limit=2)
    assert [(r.param("offset"), r.param("limit")) for r in replay.requests] == [("0", "2"), ("2", "2")]
    assert "observation_start" not in replay.requests[0].query
    assert frame["date"].tolist() == [day("2024-01-02"), day("2024-01-03"), day("2024-01-04")]
    assert frame["value"].tolist() == [3.95, 3.91, 3.99]
    assert set(frame["series"]) == {"us10y_yield"}


def test_fred_series_mapping_is_extensible(replay: ReplayServer, fast_config: ClientConfig,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    replay.route("GET", FRED_PATH, Reply(200, fixture_bytes("fred/vixcls.json")))
    with pytest.raises(ValueError, match="no series name for 'T10Y2Y'"):
        fred_fetch(replay, fast_config, series_id="T10Y2Y")
    monkeypatch.setitem(macro.FRED_SERIES, "T10Y2Y", "us_curve_10y2y")
    assert set(fred_fetch(replay, fast_config, series_id="T10Y2Y")["series"]) == {"us_curve_10y2y"}
    assert set(fred_fetch(replay, fast_config, series_id="T10Y2Y", name="curve")["series"]) == {"curve"}


def test_fred_empty_page(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", FRED_PATH, Reply(200, {"count": 0, "offset": 0, "limit": 100000, "observations": []}))
    frame = fred_fetch(replay, fast_config)
    assert frame.empty
    assert_schema(frame, MACRO)
    assert len(replay.requests) == 1


def test_fred_unexpected_schema_names_the_field(replay: ReplayServer, fast_config: ClientConfig) -> None:
    body = json.loads(fixture_bytes("fred/vixcls.json"))
    body["observations"][2].pop("value")
    replay.route("GET", FRED_PATH, Reply(200, body))
    with pytest.raises(SourceSchemaError, match=r"^fred: missing field response\.observations\[2\]\.value$"):
        fred_fetch(replay, fast_config)
    body = json.loads(fixture_bytes("fred/vixcls.json"))
    body["observations"][1]["date"] = "01/02/2024"
    replay.route("GET", FRED_PATH, Reply(200, body))
    with pytest.raises(SourceSchemaError, match=r"^fred: field observations\[\]\.date is not YYYY-MM-DD"):
        fred_fetch(replay, fast_config)


def test_fred_bad_api_key_is_a_source_error(replay: ReplayServer, fast_config: ClientConfig) -> None:
    message = "Bad Request.  The value for variable api_key is not registered."
    replay.route("GET", FRED_PATH, Reply(400, {"error_code": 400, "error_message": message}))
    with pytest.raises(SourceError,
                       match=r"fred: HTTP 400 for GET /fred/series/observations: .*not registered") as info:
        fred_fetch(replay, fast_config)
    assert "fredkey" not in str(info.value)


class TestFredFaults(SourceFaults):
    path = FRED_PATH
    ok_body = fixture_bytes("fred/vixcls.json")

    def fetch(self, base_url: str, config: ClientConfig) -> pd.DataFrame:
        return macro.fetch_fred_series("VIXCLS", api_key="k", client=macro.make_fred_client(base_url, config))


# --- Yahoo --------------------------------------------------------------------------------------------


def yahoo_fetch(replay: ReplayServer, config: ClientConfig, ticker: str = "DX-Y.NYB", since: datetime = JAN1,
                until: datetime | None = JAN5, name: str | None = None) -> pd.DataFrame:
    client = macro.make_yahoo_client(replay.base_url, config)
    return macro.fetch_yahoo_chart(ticker, since=since, until=until, name=name, client=client)


def test_yahoo_happy_path_skips_null_closes(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", DXY_PATH, Reply(200, fixture_bytes("yahoo/chart_dxy.json")))
    frame = yahoo_fetch(replay, fast_config)
    assert_schema(frame, MACRO)
    assert frame["date"].tolist() == [day("2024-01-02"), day("2024-01-03")]
    assert frame["value"].tolist() == [102.19999694824219, 102.47000122070312]
    assert set(frame["series"]) == {"dxy"} and set(frame["source"]) == {"yahoo"}
    assert replay.requests[0].query == {"period1": ["1704067200"], "period2": ["1704412800"],
                                        "interval": ["1d"]}


def test_yahoo_dates_are_exchange_local_trading_days(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", "/v8/finance/chart/%5EN225", Reply(200, fixture_bytes("yahoo/chart_nikkei.json")))
    frame = yahoo_fetch(replay, fast_config, ticker="^N225", name="nikkei225",
                        until=datetime(2024, 1, 6, tzinfo=UTC))
    # bars stamped 15:00 UTC on Jan 3 and 4 are the Tokyo sessions of Jan 4 and 5
    assert frame["date"].tolist() == [day("2024-01-04"), day("2024-01-05")]
    assert frame["value"].tolist() == [33288.29296875, 33377.421875]


def test_yahoo_gold_mapping_and_ticker_quoting(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", "/v8/finance/chart/GC%3DF", Reply(200, fixture_bytes("yahoo/chart_dxy.json")))
    frame = yahoo_fetch(replay, fast_config, ticker="GC=F")
    assert set(frame["series"]) == {"gold_futures"}
    assert [r.path for r in replay.requests] == ["/v8/finance/chart/GC%3DF"]


def test_yahoo_chart_error_is_a_source_error(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", DXY_PATH, Reply(200, {"chart": {"result": None, "error": {
        "code": "Not Found", "description": "No data found, symbol may be delisted"}}}))
    with pytest.raises(SourceError,
                       match=r"yahoo: chart error for DX-Y\.NYB: No data found, symbol may be delisted"):
        yahoo_fetch(replay, fast_config)


def test_yahoo_empty_range(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", DXY_PATH, Reply(200, {"chart": {"result": [{
        "meta": {"symbol": "DX-Y.NYB", "exchangeTimezoneName": "America/New_York"},
        "indicators": {"quote": [{}]}}], "error": None}}))
    frame = yahoo_fetch(replay, fast_config)
    assert frame.empty
    assert_schema(frame, MACRO)


def test_yahoo_unexpected_schema_names_the_field(replay: ReplayServer, fast_config: ClientConfig) -> None:
    body = json.loads(fixture_bytes("yahoo/chart_dxy.json"))
    body["chart"]["result"][0]["indicators"]["quote"][0]["close"].pop()
    replay.route("GET", DXY_PATH, Reply(200, body))
    with pytest.raises(SourceSchemaError,
                       match=r"indicators\.quote\[0\]\.close has 2 values for 3 timestamps"):
        yahoo_fetch(replay, fast_config)
    body = json.loads(fixture_bytes("yahoo/chart_dxy.json"))
    del body["chart"]["result"][0]["indicators"]
    replay.route("GET", DXY_PATH, Reply(200, body))
    with pytest.raises(SourceSchemaError,
                       match=r"^yahoo: missing field response\.chart\.result\[0\]\.indicators$"):
        yahoo_fetch(replay, fast_config)


class TestYahooFaults(SourceFaults):
    path = DXY_PATH
    ok_body = fixture_bytes("yahoo/chart_dxy.json")

    def fetch(self, base_url: str, config: ClientConfig) -> pd.DataFrame:
        return macro.fetch_yahoo_chart("DX-Y.NYB", since=JAN1, until=JAN5,
                                       client=macro.make_yahoo_client(base_url, config))
