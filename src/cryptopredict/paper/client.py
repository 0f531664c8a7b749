"""Client of the Serve app's ``POST /predict/batch`` (bodies: ``serving/schemas.py``).

Answers, in order of precedence:

* 2xx: the body must parse as ``BatchPrediction``; otherwise ``ServeSchemaError`` (not retried: a body
  that does not match the schema will not match on the next try either).
* 503 with a JSON ``{"detail": ...}`` body: the app's data are stale → ``Skip(reason)``, at once, no retry.
* 5xx (a 503 without that body too: a proxy or Ray Serve's back-pressure), connection errors and timeouts:
  retried with exponential backoff (``RetryPolicy``); when the tries run out, ``ServeUnavailable``.
* any other status (4xx: unknown symbol, wrong horizon, bad request): ``ServeRequestError`` naming the
  status and the app's ``detail``, not retried (a ValueError: a user error, exit status 2).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests
from pydantic import ValidationError

from cryptopredict.data.sources.retry import RetriesExhausted, RetryableError, RetryPolicy, call_with_retries
from cryptopredict.serving.schemas import BatchPredictRequest, BatchPrediction

log = logging.getLogger(__name__)

PREDICT_PATH = "/predict/batch"
_TRANSIENT = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
              requests.exceptions.ChunkedEncodingError)


class ServeRequestError(ValueError):
    """The Serve app refused the request (4xx): wrong symbols, horizon or body."""


class ServeSchemaError(RuntimeError):
    """The Serve app answered 2xx with a body that is not a ``BatchPrediction``."""


class ServeUnavailable(RuntimeError):
    """The Serve app stayed unreachable or failing (5xx) through every retry."""


@dataclass(frozen=True)
class Skip:
    """The app declined to predict this bar (503, stale data); ``reason`` is its ``detail``."""

    reason: str


def _detail(response: requests.Response) -> str | None:
    """The ``detail`` string of a JSON error body, or None."""
    try:
        body = response.json()
    except ValueError:
        return None
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail if isinstance(detail, str) else (json.dumps(detail) if detail is not None else None)


class PredictionClient:
    """Asks ``base_url`` + ``/predict/batch`` for predictions; timeouts in seconds."""

    def __init__(self, base_url: str, *, connect_timeout_s: float = 3.0, read_timeout_s: float = 10.0,
                 policy: RetryPolicy = RetryPolicy(max_attempts=4, base_delay_s=0.5, max_delay_s=8.0),
                 session: requests.Session | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = base_url.rstrip("/") + PREDICT_PATH
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.policy = policy
        self.session = session or requests.Session()
        self.sleep = sleep

    def predict(self, symbols: list[str], horizon: int | None = None) -> BatchPrediction | Skip:
        """Predictions for ``symbols`` as of the app's latest closed bar, or ``Skip`` on stale data."""
        body = BatchPredictRequest(symbols=symbols, horizon=horizon).model_dump()
        try:
            return call_with_retries(lambda: self._attempt(body), self.policy, describe=f"POST {self.url}",
                                     classify=self._classify, sleep=self.sleep)
        except RetriesExhausted as exc:
            raise ServeUnavailable(str(exc)) from exc

    def _attempt(self, body: dict) -> BatchPrediction | Skip:  # type: ignore[type-arg]
        response = self.session.post(self.url, json=body, timeout=self.timeout)
        status = response.status_code
        if 200 <= status < 300:
            try:
                return BatchPrediction.model_validate_json(response.content)
            except ValidationError as exc:
                raise ServeSchemaError(f"POST {self.url}: HTTP {status} body is not a BatchPrediction: "
                                       f"{exc.errors()[0]}") from None
        detail = _detail(response)
        if status == 503 and detail is not None:
            return Skip(detail)
        if status >= 500:
            raise RetryableError(f"HTTP {status}" + (f": {detail}" if detail else ""))
        shown = detail if detail is not None else " ".join(response.text[:200].split())
        raise ServeRequestError(f"the Serve app refused POST {self.url} for {body['symbols']}: HTTP {status}: "
                                f"{shown}")

    @staticmethod
    def _classify(exc: BaseException) -> RetryableError | None:
        return RetryableError(f"{type(exc).__name__}: {exc}") if isinstance(exc, _TRANSIENT) else None

    def close(self) -> None:
        self.session.close()
