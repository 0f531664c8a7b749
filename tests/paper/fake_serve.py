"""A fake of the Serve app's ``POST /predict/batch`` on 127.0.0.1, and a clock to drive it and FakeBinance.

``FakeServe(clock, timeframe_ms)`` answers as the real app would with data up to the last bar closed at
``clock()``: ``as_of`` is that bar's open time (ISO, UTC). The numbers are a deterministic function of
(symbol, as_of) — ``prediction_for`` — so a test can recompute what the trader was told. Knobs:
``stale_bars`` (open times answered 503 ``{"detail": ...}``), ``lag_bars`` (answer as of an older bar),
``fail_next(*replies)`` (the next requests get these replies first), ``known`` (other symbols → 404).
"""

from __future__ import annotations

import json
import math
import threading
import zlib
from collections.abc import Iterable

import numpy as np
import pandas as pd

from cryptopredict.serving.schemas import (
    BatchPredictRequest,
    BatchPrediction,
    ClassProbabilities,
    Interval,
    Prediction,
    Uncertainty,
)
from tests.support.replay_server import RecordedRequest, ReplayServer, Reply

PATH = "/predict/batch"


class SteppedClock:
    """Epoch seconds that move only when the test says so (thread-safe)."""

    def __init__(self, start: pd.Timestamp) -> None:
        self._t = start.value / 1e9
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)


def iso(ts_ms: int) -> str:
    return pd.Timestamp(ts_ms, unit="ms", tz="UTC").isoformat()


def prediction_for(symbol: str, as_of_ms: int, horizon: int) -> Prediction:
    """The fake model's answer for ``symbol`` as of the bar opening at ``as_of_ms``: mixed directions,
    strengths and confidences, so that trades, flips, the cost filter and the gross cap all happen."""
    rng = np.random.default_rng(zlib.crc32(f"{symbol}|{as_of_ms}".encode()))
    direction = float(rng.choice([-1.0, 1.0])) * float(rng.uniform(0.2, 0.9))
    hold = float(rng.uniform(0.05, 0.2))
    buy = (1.0 - hold) * (1.0 + direction) / 2
    sell = 1.0 - hold - buy
    vol = float(rng.uniform(0.008, 0.03))
    confidence = float(rng.uniform(0.3, 0.95))
    signal = "BUY" if buy >= max(sell, hold) else "SELL" if sell >= hold else "HOLD"
    z = 1.6448536269514722
    return Prediction(
        symbol=symbol, as_of=iso(as_of_ms), horizon=horizon, signal=signal,
        probabilities=ClassProbabilities(SELL=sell, HOLD=hold, BUY=buy), confidence=confidence,
        predicted_volatility=vol, interval=Interval(level=0.9, low=-z * vol, high=z * vol),
        uncertainty=Uncertainty(epistemic=0.01, aleatoric=0.5, epistemic_vol=0.002,
                                aleatoric_vol=float(rng.uniform(0.0, 0.05))),
        position_size=max(-1.0, min(1.0, direction)), member_weights={"lightgbm": 1.0},
        model_version="fake-1")


class FakeServe:
    """``POST /predict/batch`` on a ReplayServer; see the module docstring."""

    def __init__(self, clock: SteppedClock, timeframe_ms: int, *, horizon: int = 4,
                 known: Iterable[str] = ("BTCUSDT", "ETHUSDT", "BNBUSDT")) -> None:
        self.clock = clock
        self.tf_ms = timeframe_ms
        self.horizon = horizon
        self.known = set(known)
        self.stale_bars: set[int] = set()
        self.lag_bars = 0
        self.omit: set[str] = set()
        self.answered: list[tuple[int, list[str]]] = []  # (as_of ms, symbols) of every 200 answer
        self._faults: list[Reply] = []
        self._lock = threading.Lock()
        self.server = ReplayServer()
        self.server.route("POST", PATH, self._handle)

    def __enter__(self) -> FakeServe:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()

    @property
    def url(self) -> str:
        return self.server.base_url

    def fail_next(self, *replies: Reply) -> None:
        with self._lock:
            self._faults.extend(replies)

    def requests(self) -> list[RecordedRequest]:
        return self.server.requests_for(PATH, method="POST")

    def last_closed(self) -> int:
        now = int(round(self.clock() * 1000))
        return now // self.tf_ms * self.tf_ms - self.tf_ms

    def _handle(self, request: RecordedRequest) -> Reply:
        with self._lock:
            if self._faults:
                return self._faults.pop(0)
        try:
            body = BatchPredictRequest.model_validate(json.loads(request.body))
        except ValueError as exc:
            return Reply(422, {"detail": str(exc)})
        unknown = [s for s in body.symbols if s not in self.known]
        if unknown:
            return Reply(404, {"detail": f"unknown symbol(s) {unknown}"})
        if body.horizon is not None and body.horizon != self.horizon:
            return Reply(422, {"detail": f"the model predicts {self.horizon} bars ahead, not {body.horizon}"})
        as_of = self.last_closed() - self.lag_bars * self.tf_ms
        if as_of in self.stale_bars:
            return Reply(503, {"detail": f"stale data: latest bar {iso(as_of)} is older than allowed"})
        symbols = [s for s in body.symbols if s not in self.omit]
        with self._lock:
            self.answered.append((as_of, symbols))
        batch = BatchPrediction(predictions=[prediction_for(s, as_of, self.horizon) for s in symbols])
        return Reply(200, batch.model_dump_json().encode())


def inputs_for(symbol: str, as_of_ms: int, horizon: int) -> tuple[float, float, float, float, float, float]:
    """(p_sell, p_hold, p_buy, log_vol, log_vol_var, confidence) the risk manager gets from ``prediction_for``."""
    p = prediction_for(symbol, as_of_ms, horizon)
    return (p.probabilities.SELL, p.probabilities.HOLD, p.probabilities.BUY, math.log(p.predicted_volatility),
            p.uncertainty.aleatoric_vol + p.uncertainty.epistemic_vol, p.confidence)
