"""HttpClient transport rules and the replay server they are tested with."""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from datetime import UTC, datetime
from email.utils import format_datetime, formatdate

import pandas as pd
import pytest
import requests

from cryptopredict.data.schemas import MACRO
from cryptopredict.data.sources.http import (
    USER_AGENT,
    ClientConfig,
    HttpClient,
    SourceError,
    SourceSchemaError,
    number,
    parse_retry_after,
    require,
    table_frame,
    utc,
)
from cryptopredict.data.sources.retry import RetriesExhausted, RetryableError
from tests.sources.conftest import SleepRecorder
from tests.support.replay_server import RecordedRequest, ReplayServer, Reply

# --- the replay server ------------------------------------------------------------------------------


def test_replay_script_replays_in_order_then_repeats_the_last(replay: ReplayServer) -> None:
    replay.route("GET", "/x", [Reply(500, b"a"), Reply(201, b"b")])
    got = [requests.get(replay.url("/x"), timeout=5) for _ in range(3)]
    assert [(r.status_code, r.content) for r in got] == [(500, b"a"), (201, b"b"), (201, b"b")]


def test_replay_records_query_headers_and_404s_unrouted(replay: ReplayServer) -> None:
    response = requests.get(replay.url("/nowhere"), params={"a": "1", "b": ""}, headers={"X-Key": "k"},
                            timeout=5)
    assert response.status_code == 404
    assert response.json() == {"error": "no route for GET /nowhere"}
    (recorded,) = replay.requests
    assert (recorded.method, recorded.path, recorded.query) == ("GET", "/nowhere", {"a": ["1"], "b": [""]})
    assert recorded.headers["x-key"] == "k"
    assert recorded.param("a") == "1" and recorded.param("missing") is None


def test_replay_handler_sees_the_request_and_json_bodies_are_encoded(replay: ReplayServer) -> None:
    def handler(request: RecordedRequest) -> Reply:
        return Reply(200, {"echo": request.param("q")}, headers={"X-Extra": "1"})

    replay.route("GET", "/echo", handler)
    response = requests.get(replay.url("/echo"), params={"q": "hi"}, timeout=5)
    assert response.json() == {"echo": "hi"}
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Extra"] == "1"


def test_replay_of_json_encodes_strings_too(replay: ReplayServer) -> None:
    replay.route("GET", "/s", Reply.of_json("plain", status=202))
    response = requests.get(replay.url("/s"), timeout=5)
    assert (response.status_code, response.content) == (202, b'"plain"')


def test_replay_rejects_an_empty_script(replay: ReplayServer) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        replay.route("GET", "/x", [])


# --- HttpClient: requests ---------------------------------------------------------------------------


def test_get_json_sends_user_agent_headers_and_params(replay: ReplayServer,
                                                       fast_config: ClientConfig) -> None:
    replay.route("GET", "/api/v1/thing", Reply(200, {"ok": [1, 2]}))
    client = HttpClient("demo", replay.base_url + "/api/v1/", fast_config, headers={"x-api-key": "K"})
    assert client.get_json("thing", {"a": 1, "skip": None, "s": "x y"}) == {"ok": [1, 2]}
    (request,) = replay.requests
    assert request.path == "/api/v1/thing"
    assert request.query == {"a": ["1"], "s": ["x y"]}
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers["x-api-key"] == "K"


def test_absolute_urls_only_on_the_base_origin(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", "/page2", Reply(200, {"page": 2}))
    client = HttpClient("demo", replay.base_url + "/api", fast_config)
    assert client.get_json(replay.url("/page2")) == {"page": 2}
    with pytest.raises(SourceError, match=r"refusing to fetch elsewhere\.example"):
        client.get_json("https://elsewhere.example/page2")
    assert len(replay.requests) == 1


def test_get_bytes_returns_the_raw_body(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", "/feed", Reply(200, b"<rss/>\xff", content_type="application/rss+xml"))
    assert HttpClient("demo", replay.url("/feed"), fast_config).get_bytes("") == b"<rss/>\xff"


# --- HttpClient: retries and errors -----------------------------------------------------------------


def test_429_delta_seconds_retry_after_is_waited(replay: ReplayServer, sleeps: SleepRecorder,
                                                 fast_config: ClientConfig) -> None:
    replay.route("GET", "/r", [Reply(429, b"slow down", headers={"Retry-After": "7"}),
                               Reply(200, {"ok": True})])
    assert HttpClient("demo", replay.base_url, fast_config).get_json("/r") == {"ok": True}
    assert sleeps == [7.0]
    assert len(replay.requests) == 2


def test_429_http_date_retry_after_is_waited(replay: ReplayServer, sleeps: SleepRecorder,
                                             fast_config: ClientConfig) -> None:
    header = formatdate(time.time() + 30, usegmt=True)
    replay.route("GET", "/r", [Reply(429, b"", headers={"Retry-After": header}), Reply(200, {"ok": True})])
    assert HttpClient("demo", replay.base_url, fast_config).get_json("/r") == {"ok": True}
    (waited,) = sleeps
    assert 28.0 <= waited <= 30.5


def test_503_retry_after_is_honoured_too(replay: ReplayServer, sleeps: SleepRecorder,
                                         fast_config: ClientConfig) -> None:
    replay.route("GET", "/r", [Reply(503, b"", headers={"Retry-After": "3"}), Reply(200, {"ok": 1})])
    assert HttpClient("demo", replay.base_url, fast_config).get_json("/r") == {"ok": 1}
    assert sleeps == [3.0]


def test_500_then_success_backs_off(replay: ReplayServer, sleeps: SleepRecorder,
                                    fast_config: ClientConfig) -> None:
    replay.route("GET", "/r", [Reply(500), Reply(502), Reply(200, {"ok": 1})])
    assert HttpClient("demo", replay.base_url, fast_config).get_json("/r") == {"ok": 1}
    assert sleeps == [0.01, 0.02]  # base 0.01 s doubling, no jitter


def test_read_timeout_then_success(replay: ReplayServer, sleeps: SleepRecorder,
                                   fast_config: ClientConfig) -> None:
    replay.route("GET", "/r", [Reply(200, {"late": 1}, delay_s=1.0), Reply(200, {"ok": 1})])
    config = dataclasses.replace(fast_config, read_timeout_s=0.2)
    started = time.monotonic()
    assert HttpClient("demo", replay.base_url, config).get_json("/r") == {"ok": 1}
    assert time.monotonic() - started < 1.0  # gave up on the slow reply, did not wait for it
    assert len(sleeps) == 1 and len(replay.requests) == 2


def test_retries_exhausted_chains_the_last_error(replay: ReplayServer, sleeps: SleepRecorder,
                                                 fast_config: ClientConfig) -> None:
    replay.route("GET", "/r", Reply(500, b"boom"))
    with pytest.raises(RetriesExhausted, match=r"demo GET /r: gave up after 3 attempts: HTTP 500") as info:
        HttpClient("demo", replay.base_url, fast_config).get_json("/r")
    assert isinstance(info.value.__cause__, RetryableError)
    assert len(replay.requests) == 3 and len(sleeps) == 2


def test_connection_errors_are_retried_and_never_leak_the_query(
    sleeps: SleepRecorder, fast_config: ClientConfig, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = HttpClient("demo", f"http://127.0.0.1:{port}", fast_config)
    with caplog.at_level(logging.WARNING), pytest.raises(RetriesExhausted, match="ConnectionError") as info:
        client.get_json("/fred/series/observations", {"api_key": "SECRET123"})
    assert len(sleeps) == 2
    assert "SECRET123" not in str(info.value)
    assert "SECRET123" not in caplog.text


def test_4xx_is_a_source_error_at_once(replay: ReplayServer, sleeps: SleepRecorder,
                                       fast_config: ClientConfig) -> None:
    replay.route("GET", "/v1/x", Reply(403, {"error": "forbidden"}))
    client = HttpClient("demo", replay.base_url, fast_config)
    with pytest.raises(SourceError,
                       match=r'^demo: HTTP 403 for GET /v1/x: \{"error": "forbidden"\}$') as info:
        client.get_json("/v1/x", {"api_key": "SECRET123"})
    assert not isinstance(info.value, SourceSchemaError)
    assert "SECRET123" not in str(info.value)
    assert len(replay.requests) == 1 and sleeps == []


def test_malformed_json_is_a_source_error_without_retry(replay: ReplayServer,
                                                        fast_config: ClientConfig) -> None:
    replay.route("GET", "/r", Reply(200, b"<html>maintenance</html>"))
    with pytest.raises(SourceError, match=r"demo: malformed JSON from GET /r \(HTTP 200\)"):
        HttpClient("demo", replay.base_url, fast_config).get_json("/r")
    assert len(replay.requests) == 1


def test_min_interval_spaces_request_starts(replay: ReplayServer) -> None:
    now = [100.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    replay.route("GET", "/r", Reply(200, {"ok": 1}))
    config = ClientConfig(min_interval_s=1.5, sleep=sleep, clock=lambda: now[0])
    client = HttpClient("demo", replay.base_url, config)
    client.get_json("/r")
    client.get_json("/r")  # immediately after: waits the full interval
    now[0] += 0.5
    client.get_json("/r")  # 0.5 s later: waits the remaining 1.0 s
    now[0] += 10.0
    client.get_json("/r")  # long after: no wait
    assert waits == [1.5, 1.0]
    assert len(replay.requests) == 4


def test_rate_limit_also_spaces_retries(replay: ReplayServer) -> None:
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    replay.route("GET", "/r", [Reply(500), Reply(200, {"ok": 1})])
    config = ClientConfig(min_interval_s=2.0, sleep=sleep, clock=lambda: now[0],
                          retry=dataclasses.replace(ClientConfig().retry, base_delay_s=0.5, jitter=0.0))
    assert HttpClient("demo", replay.base_url, config).get_json("/r") == {"ok": 1}
    assert waits == [0.5, 1.5]  # backoff 0.5 s, then the rate limit's remaining 1.5 s


# --- helpers ----------------------------------------------------------------------------------------


def test_parse_retry_after_forms() -> None:
    now = datetime(2024, 1, 2, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("Tue, 02 Jan 2024 12:00:45 GMT", now) == 45.0
    an_hour_ago = format_datetime(datetime(2024, 1, 2, 11, 0, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(an_hour_ago, now) == 0.0
    assert parse_retry_after("-5", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None and parse_retry_after("", now) is None


def test_require_and_number_name_the_field() -> None:
    assert require({"a": [1]}, "a", list, source="src", where="response") == [1]
    with pytest.raises(SourceSchemaError, match=r"^src: missing field response\.b$"):
        require({"a": 1}, "b", int, source="src", where="response")
    with pytest.raises(SourceSchemaError, match=r"^src: field response\.a is str, expected int/float$"):
        require({"a": "1"}, "a", (int, float), source="src", where="response")
    with pytest.raises(SourceSchemaError, match=r"field response\.a is bool, expected int"):
        require({"a": True}, "a", int, source="src", where="response")
    with pytest.raises(SourceSchemaError, match=r"^src: expected an object at response, got list$"):
        require([], "a", int, source="src", where="response")
    assert number("1e3", source="src", where="v") == 1000.0
    with pytest.raises(SourceSchemaError, match=r"^src: field v is not numeric: 'abc'$"):
        number("abc", source="src", where="v")
    with pytest.raises(SourceSchemaError, match="not finite"):
        number("nan", source="src", where="v")


def test_utc_rejects_naive_datetimes() -> None:
    assert utc(datetime(2024, 1, 1, tzinfo=UTC), "since") == pd.Timestamp("2024-01-01", tz="UTC")
    assert utc(None, "since") is None
    with pytest.raises(ValueError, match="since must be timezone-aware"):
        utc(datetime(2024, 1, 1), "since")


def test_table_frame_types_and_orders_columns() -> None:
    days = [pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-01-02", tz="UTC")]
    frame = table_frame(MACRO, {"value": [1, 2], "source": "fred", "series": "vix", "date": days})
    assert list(frame.columns) == MACRO.columns
    assert [str(t) for t in frame.dtypes] == ["object", "datetime64[ns, UTC]", "float64", "object"]
    assert frame["source"].tolist() == ["fred", "fred"]
    empty = table_frame(MACRO, {"series": [], "date": [], "value": [], "source": "fred"})
    assert len(empty) == 0 and [str(t) for t in empty.dtypes] == [str(t) for t in frame.dtypes]
    with pytest.raises(ValueError, match="schema"):
        table_frame(MACRO, {"series": []})
