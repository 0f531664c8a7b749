"""Fixtures for the HTTP source tests: replay servers, recorded sleeps, a fast client config, fixture
bodies, and ``SourceFaults``, the transport-fault checks every source's test module runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from cryptopredict.data.schemas import UTC_TS, TableSpec
from cryptopredict.data.sources.http import ClientConfig, SourceError
from cryptopredict.data.sources.retry import RetriesExhausted, RetryPolicy
from tests.support.replay_server import ReplayServer, Reply

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def fixture_bytes(relative: str) -> bytes:
    """The bytes of ``tests/fixtures/<relative>``."""
    return (FIXTURES / relative).read_bytes()


_PANDAS_DTYPES = {UTC_TS: "datetime64[ns, UTC]", pa.float64(): "float64", pa.int16(): "int16",
                  pa.string(): "object"}


def assert_schema(frame: pd.DataFrame, spec: TableSpec) -> None:
    """``frame`` has exactly ``spec``'s columns and dtypes, and converts to its Arrow schema as is."""
    assert list(frame.columns) == spec.columns
    expected = {f.name: _PANDAS_DTYPES[f.type] for f in spec.schema}
    assert {c: str(t) for c, t in frame.dtypes.items()} == expected
    assert pa.Table.from_pandas(frame, schema=spec.schema, preserve_index=False).num_rows == len(frame)


class SleepRecorder(list[float]):
    """A ``sleep`` stand-in that records the requested seconds instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def replay_server_factory() -> Iterator[Callable[[], ReplayServer]]:
    """Call it to get a started ReplayServer; all of them are closed after the test."""
    servers: list[ReplayServer] = []

    def make() -> ReplayServer:
        server = ReplayServer().start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def replay(replay_server_factory: Callable[[], ReplayServer]) -> ReplayServer:
    """One started ReplayServer."""
    return replay_server_factory()


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def fast_config(sleeps: SleepRecorder) -> ClientConfig:
    """3 attempts, no rate limit, 2 s timeouts, sleeps recorded in ``sleeps`` (none really taken)."""
    return ClientConfig(connect_timeout_s=2.0, read_timeout_s=2.0, min_interval_s=0.0,
                        retry=RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, jitter=0.0),
                        sleep=sleeps)


class SourceFaults:
    """Transport faults every source must survive. Subclass as ``TestFaults`` in a source's test module.

    Subclasses set ``path`` (the URL path the fetch requests), ``ok_body`` (a one-page answer) and
    implement ``fetch(base_url, config)``.
    """

    path: str
    ok_body: bytes
    content_type = "application/json"
    malformed_body = b'{"data": [{"truncated": '
    malformed_match = "malformed JSON"

    def fetch(self, base_url: str, config: ClientConfig) -> pd.DataFrame:
        raise NotImplementedError

    def ok(self) -> Reply:
        return Reply(200, self.ok_body, content_type=self.content_type)

    def baseline(self, replay: ReplayServer, config: ClientConfig) -> pd.DataFrame:
        replay.route("GET", self.path, self.ok())
        frame = self.fetch(replay.base_url, config)
        assert len(frame) > 0, "the ok body must give rows, or the fault checks prove nothing"
        return frame

    def test_429_waits_retry_after_then_succeeds(self, replay: ReplayServer, sleeps: SleepRecorder,
                                                 fast_config: ClientConfig) -> None:
        expected = self.baseline(replay, fast_config)
        replay.route("GET", self.path, [Reply(429, {"error": "rate limited"}, headers={"Retry-After": "7"}),
                                        self.ok()])
        pd.testing.assert_frame_equal(self.fetch(replay.base_url, fast_config), expected)
        assert sleeps == [7.0]
        assert len(replay.requests_for(self.path)) == 3

    def test_500_then_success(self, replay: ReplayServer, sleeps: SleepRecorder,
                              fast_config: ClientConfig) -> None:
        expected = self.baseline(replay, fast_config)
        replay.route("GET", self.path, [Reply(500, b"internal error"), self.ok()])
        pd.testing.assert_frame_equal(self.fetch(replay.base_url, fast_config), expected)
        assert len(sleeps) == 1
        assert len(replay.requests_for(self.path)) == 3

    def test_read_timeout_then_success(self, replay: ReplayServer, sleeps: SleepRecorder,
                                       fast_config: ClientConfig) -> None:
        expected = self.baseline(replay, fast_config)
        slow = dataclasses.replace(self.ok(), delay_s=1.0)
        replay.route("GET", self.path, [slow, self.ok()])
        config = dataclasses.replace(fast_config, read_timeout_s=0.2)
        pd.testing.assert_frame_equal(self.fetch(replay.base_url, config), expected)
        assert len(sleeps) == 1
        assert len(replay.requests_for(self.path)) == 3

    def test_retries_exhausted(self, replay: ReplayServer, sleeps: SleepRecorder,
                               fast_config: ClientConfig) -> None:
        replay.route("GET", self.path, Reply(503, b"unavailable"))
        with pytest.raises(RetriesExhausted, match="gave up after 3 attempts"):
            self.fetch(replay.base_url, fast_config)
        assert len(replay.requests_for(self.path)) == 3
        assert len(sleeps) == 2

    def test_malformed_body_is_a_source_error_without_retry(self, replay: ReplayServer,
                                                            fast_config: ClientConfig) -> None:
        replay.route("GET", self.path, Reply(200, self.malformed_body, content_type=self.content_type))
        with pytest.raises(SourceError, match=self.malformed_match):
            self.fetch(replay.base_url, fast_config)
        assert len(replay.requests_for(self.path)) == 1

    def test_client_error_is_not_retried(self, replay: ReplayServer, fast_config: ClientConfig) -> None:
        replay.route("GET", self.path, Reply(404, {"error": "not found"}))
        with pytest.raises(SourceError, match=rf"HTTP 404 for GET {self.path}"):
            self.fetch(replay.base_url, fast_config)
        assert len(replay.requests_for(self.path)) == 1
