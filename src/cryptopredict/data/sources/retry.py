"""Retry with exponential backoff and jitter, honouring a server's Retry-After when it sends one.

Shared by every source: HTTP APIs (429/5xx/timeouts) and ccxt exchanges (NetworkError family).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class RetryableError(Exception):
    """A transient failure worth another attempt; ``retry_after`` (seconds) overrides the backoff."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RetriesExhausted(RuntimeError):
    """Every attempt failed with a transient error; the last one is chained as ``__cause__``."""


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` tries in all; waits base * 2**k (capped, with +-jitter), or Retry-After if larger."""

    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    jitter: float = 0.1  # fraction of the delay, uniformly +-
    max_retry_after_s: float = 120.0  # refuse to sleep longer than this on a server's say-so

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        backoff = min(self.max_delay_s, self.base_delay_s * (2**attempt))
        backoff *= 1.0 + random.uniform(-self.jitter, self.jitter)
        if retry_after is not None:
            backoff = max(backoff, min(float(retry_after), self.max_retry_after_s))
        return max(0.0, backoff)


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    describe: str,
    classify: Callable[[BaseException], RetryableError | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it succeeds or ``policy.max_attempts`` transient failures happened.

    A ``RetryableError`` is transient; ``classify`` may map any other exception to one (return None to
    let it propagate at once). ``describe`` names the call in log lines and the final error.
    """
    last: RetryableError | None = None
    for attempt in range(policy.max_attempts):
        try:
            return fn()
        except RetryableError as exc:
            last = exc
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised when not transient
            mapped = classify(exc) if classify else None
            if mapped is None:
                raise
            mapped.__cause__ = exc
            last = mapped
        if attempt + 1 < policy.max_attempts:
            wait = policy.delay(attempt, last.retry_after)
            log.warning("%s failed (%s); retry %d/%d in %.2fs", describe, last, attempt + 1,
                        policy.max_attempts - 1, wait)
            sleep(wait)
    raise RetriesExhausted(f"{describe}: gave up after {policy.max_attempts} attempts: {last}") from last
