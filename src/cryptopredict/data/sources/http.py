"""A small JSON/bytes HTTP client shared by the data-source connectors, plus their parsing helpers.

Transport rules (``HttpClient``):

* every request goes to ``base_url`` + path, with (connect, read) timeouts, a User-Agent and optional
  extra headers (API keys); absolute URLs are accepted only on the base URL's own origin;
* requests *start* at least ``min_interval_s`` seconds apart (client-side rate limit, retries included);
* retried through ``retry.call_with_retries``: connection errors, timeouts, broken transfers, HTTP 429
  and 5xx. ``Retry-After`` (delta-seconds or HTTP-date) sets the minimum wait;
* any other non-2xx status raises ``SourceError`` at once, naming the source, URL path and status;
* a 2xx body that is not JSON raises ``SourceError`` and is *not* retried: a complete response that does
  not parse (an HTML maintenance/consent page, a wrong endpoint) is deterministic in practice, and
  retrying would only spend the rate budget. A transfer cut short surfaces as a requests
  connection/chunked-encoding error instead, and that is retried.

Messages and log lines name the URL path only, never the query string (it may carry API keys).
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, overload
from urllib.parse import urlsplit

import pandas as pd
import requests

from cryptopredict.data.schemas import TableSpec
from cryptopredict.data.sources.retry import RetryableError, RetryPolicy, call_with_retries

log = logging.getLogger(__name__)

USER_AGENT = "cryptopredict/0.1 (research data-lake connector; python-requests)"

Params = Mapping[str, str | int | float | None]

_TRANSIENT = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class SourceError(RuntimeError):
    """A source answered but not with usable data: HTTP 4xx, a malformed body, an API-level error."""


class SourceSchemaError(SourceError):
    """A body parsed but has an unexpected shape; the message names the source and the field."""


@dataclass(frozen=True)
class ClientConfig:
    """Transport settings (seconds throughout); ``sleep``/``clock`` are injectable for tests."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    min_interval_s: float = 0.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    user_agent: str = USER_AGENT
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic  # monotonic seconds, for the rate limit


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date; ``now`` = Unix seconds).

    None when absent or unparseable; never negative.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            log.warning("ignoring unparseable Retry-After %r", text)
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _without_queries(text: str) -> str:
    """``text`` with URL query strings cut out (requests' messages embed full URLs, keys included)."""
    return re.sub(r"\?[^\s'\"]*", "?...", text)


class HttpClient:
    """GET JSON or bytes from one source; see the module docstring for retry and error rules."""

    def __init__(
        self,
        source: str,
        base_url: str,
        config: ClientConfig = ClientConfig(),
        *,
        headers: Mapping[str, str] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.source = source
        self.base_url = base_url.rstrip("/")
        self.config = config
        self._session = session or requests.Session()
        self._session.headers["User-Agent"] = config.user_agent
        self._session.headers.update(headers or {})
        self._lock = threading.Lock()
        self._next_slot: float | None = None

    def on_origin(self, url: str) -> bool:
        """Whether absolute ``url`` has the base URL's scheme and host:port."""
        return _origin(url) == _origin(self.base_url)

    def url(self, path: str) -> str:
        """The absolute URL for ``path``: '' is the base URL itself; absolute URLs must share its origin."""
        if path.startswith(("http://", "https://")):
            if not self.on_origin(path):
                raise SourceError(f"{self.source}: refusing to fetch {urlsplit(path).netloc}, "
                                  f"not the configured origin {urlsplit(self.base_url).netloc}")
            return path
        return self.base_url + ("/" + path.lstrip("/") if path else "")

    def get_json(self, path: str, params: Params | None = None) -> Any:
        """GET ``path`` and decode its JSON body; SourceError if it does not parse (not retried)."""
        response = self._get(path, params)
        try:
            return response.json()
        except ValueError as exc:  # requests' JSONDecodeError is a ValueError
            raise SourceError(f"{self.source}: malformed JSON from GET {urlsplit(response.url).path} "
                              f"(HTTP {response.status_code}): {exc}") from exc

    def get_bytes(self, path: str, params: Params | None = None) -> bytes:
        """GET ``path`` and return the raw body."""
        return self._get(path, params).content

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, params: Params | None) -> requests.Response:
        url = self.url(path)
        query = {k: v for k, v in (params or {}).items() if v is not None}
        describe = f"{self.source} GET {urlsplit(url).path}"
        return call_with_retries(lambda: self._attempt(url, query), self.config.retry, describe=describe,
                                 classify=self._classify, sleep=self.config.sleep)

    def _attempt(self, url: str, query: Mapping[str, Any]) -> requests.Response:
        self._throttle()
        started = time.monotonic()
        response = self._session.get(url, params=query,
                                     timeout=(self.config.connect_timeout_s, self.config.read_timeout_s))
        path = urlsplit(url).path
        status = response.status_code
        log.debug("%s GET %s -> %d in %.3fs", self.source, path, status, time.monotonic() - started)
        if 200 <= status < 300:
            return response
        if status == 429 or status >= 500:
            wait = parse_retry_after(response.headers.get("Retry-After"), now=time.time())
            raise RetryableError(f"HTTP {status}", retry_after=wait)
        snippet = _without_queries(" ".join(response.text[:200].split()))
        raise SourceError(f"{self.source}: HTTP {status} for GET {path}: {snippet}")

    @staticmethod
    def _classify(exc: BaseException) -> RetryableError | None:
        if isinstance(exc, _TRANSIENT):
            return RetryableError(f"{type(exc).__name__}: {_without_queries(str(exc))}")
        return None

    def _throttle(self) -> None:
        """Wait until ``min_interval_s`` has passed since the previous request started."""
        interval = self.config.min_interval_s
        if interval <= 0:
            return
        with self._lock:
            now = self.config.clock()
            slot = now if self._next_slot is None else max(now, self._next_slot)
            if slot > now:
                self.config.sleep(slot - now)
            self._next_slot = slot + interval


# --- parsing helpers shared by the source modules --------------------------------------------------


def require(obj: Any, key: str, kind: type | tuple[type, ...], *, source: str, where: str) -> Any:
    """``obj[key]`` checked to be a ``kind``; otherwise SourceSchemaError naming ``where.key``."""
    if not isinstance(obj, dict):
        raise SourceSchemaError(f"{source}: expected an object at {where}, got {type(obj).__name__}")
    if key not in obj:
        raise SourceSchemaError(f"{source}: missing field {where}.{key}")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise SourceSchemaError(f"{source}: field {where}.{key} is {type(value).__name__}, "
                                f"expected {expected}")
    return value


def number(value: Any, *, source: str, where: str) -> float:
    """A JSON number or numeric string as float; SourceSchemaError naming ``where`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SourceSchemaError(f"{source}: field {where} is {type(value).__name__}, expected a number")
    try:
        result = float(value)
    except ValueError:
        raise SourceSchemaError(f"{source}: field {where} is not numeric: {value!r}") from None
    if not math.isfinite(result):
        raise SourceSchemaError(f"{source}: field {where} is not finite: {value!r}")
    return result


@overload
def utc(value: datetime, name: str) -> pd.Timestamp: ...
@overload
def utc(value: None, name: str) -> None: ...
@overload
def utc(value: datetime | None, name: str) -> pd.Timestamp | None: ...


def utc(value: datetime | None, name: str) -> pd.Timestamp | None:
    """``value`` as a UTC Timestamp (None stays None); a naive datetime is a ValueError, not a guess."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value!r}")
    return pd.Timestamp(value).tz_convert("UTC")


def table_frame(spec: TableSpec, columns: Mapping[str, Any]) -> pd.DataFrame:
    """A DataFrame with exactly ``spec``'s columns, in order, with its dtypes.

    Timestamps become ``datetime64[ns, UTC]`` (give them tz-aware), strings ``object``, numbers the
    schema's numpy dtype. Scalars broadcast. ``columns`` must name every schema column, nothing else.
    """
    if set(columns) != set(spec.columns):
        raise ValueError(f"{spec.name}: columns {sorted(columns)} != schema {spec.columns}")
    lengths = {len(v) for v in columns.values() if not isinstance(v, str | int | float)}
    length = lengths.pop() if lengths else 0
    if lengths:
        raise ValueError(f"{spec.name}: columns of different lengths")
    data: dict[str, pd.Series] = {}
    for column in spec.schema:
        raw = columns[column.name]
        values = [raw] * length if isinstance(raw, str | int | float) else raw
        dtype = column.type.to_pandas_dtype()
        if isinstance(dtype, pd.DatetimeTZDtype):
            data[column.name] = pd.Series(pd.to_datetime(list(values), utc=True), dtype=dtype)
        else:
            data[column.name] = pd.Series(list(values), dtype=dtype)
    return pd.DataFrame(data, columns=spec.columns)


def within(times: pd.Series, since: pd.Timestamp | None, until: pd.Timestamp | None) -> pd.Series:
    """Boolean mask of ``since <= t < until`` (either bound may be None)."""
    mask = pd.Series(True, index=times.index)
    if since is not None:
        mask &= times >= since
    if until is not None:
        mask &= times < until
    return mask
