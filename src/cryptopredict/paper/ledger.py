"""The paper trader's ledger: one SQLite file in WAL mode, one transaction per bar.

Every row is keyed by the run key (exchange, timeframe and the *set* of symbols) and the bar's open time
(``ts``, epoch ms UTC), so a bar is committed exactly once: its bars, predictions, simulated orders,
positions and account step land together or not at all, and a second commit of the same bar fails on the
primary key. A restart reads the history back and continues with the bar after the last ``steps`` row.

Tables (money in quote currency, ``units`` in base units, NULL for NaN):

* ``meta``: run key → symbols (in array order) and the settings the ledger was started with;
* ``bars``: the closed candle of each symbol;
* ``predictions``: what the Serve app answered, ``used`` = 1 where it sized the bar's target;
* ``orders``: simulated fills at the bar's open (``units`` signed; fee and slippage as charged);
* ``positions``: after the bar: units, mark price, weight at the close and the new ``target`` (NULL: hold);
* ``steps``: per bar: status (decided / skipped), reason, cash, equity, PnL, return, costs, turnover.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DB_NAME = "paper.sqlite"
LOCK_NAME = "paper.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (run_key TEXT PRIMARY KEY, symbols TEXT NOT NULL, settings TEXT NOT NULL,
                                 created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bars (run_key TEXT, ts INTEGER, symbol TEXT, open REAL, high REAL, low REAL,
                                 close REAL, volume REAL, PRIMARY KEY (run_key, ts, symbol));
CREATE TABLE IF NOT EXISTS predictions (run_key TEXT, ts INTEGER, symbol TEXT, as_of TEXT, used INTEGER,
                                        p_sell REAL, p_hold REAL, p_buy REAL, log_vol REAL, log_vol_var REAL,
                                        confidence REAL, signal TEXT, position_size REAL, model_version TEXT,
                                        PRIMARY KEY (run_key, ts, symbol));
CREATE TABLE IF NOT EXISTS orders (run_key TEXT, ts INTEGER, symbol TEXT, side TEXT, units REAL, price REAL,
                                   notional REAL, fee REAL, slippage REAL, PRIMARY KEY (run_key, ts, symbol));
CREATE TABLE IF NOT EXISTS positions (run_key TEXT, ts INTEGER, symbol TEXT, units REAL, mark REAL,
                                      weight REAL, target REAL, PRIMARY KEY (run_key, ts, symbol));
CREATE TABLE IF NOT EXISTS steps (run_key TEXT, ts INTEGER, status TEXT NOT NULL, reason TEXT, cash REAL,
                                  equity REAL, pnl REAL, ret REAL, fees REAL, slippage REAL, funding REAL,
                                  turnover REAL, gross_exposure REAL, n_orders INTEGER, committed_at TEXT,
                                  PRIMARY KEY (run_key, ts));
"""
TABLES = ("bars", "predictions", "orders", "positions", "steps")
_INPUTS = ("p_sell", "p_hold", "p_buy", "log_vol", "log_vol_var", "confidence")


def run_key(exchange: str, timeframe: str, symbols: Iterable[str]) -> str:
    """The ledger key of a paper run: exchange, timeframe and the set of symbols (order-free)."""
    return f"{exchange}/{timeframe}/{'+'.join(sorted(symbols))}"


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _sql(value: Any) -> Any:
    """NaN → NULL (SQLite has no NaN); numpy scalars → Python."""
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


@dataclass
class History:
    """Everything the ledger holds per bar, as arrays in symbol order: what the risk manager and the
    backtester are re-run on. ``inputs`` (T, N, 6): p_sell, p_hold, p_buy, log_vol, log_vol_var,
    confidence of the predictions used (NaN where none was); ``targets`` (T, N): NaN = hold."""

    symbols: list[str]
    ts: list[int] = field(default_factory=list)
    ohlcv: list[np.ndarray] = field(default_factory=list)  # each (N, 5)
    inputs: list[np.ndarray] = field(default_factory=list)  # each (N, 6)
    targets: list[np.ndarray] = field(default_factory=list)  # each (N,)

    def __len__(self) -> int:
        return len(self.ts)

    def appended(self, ts: int, ohlcv: np.ndarray, inputs: np.ndarray, targets: np.ndarray) -> History:
        """A new History with one more bar (this one is left unchanged)."""
        return History(self.symbols, [*self.ts, ts], [*self.ohlcv, ohlcv], [*self.inputs, inputs],
                       [*self.targets, targets])

    def ohlcv_field(self, name: str) -> np.ndarray:
        """(T, N) array of ``open``/``high``/``low``/``close``/``volume``."""
        k = ("open", "high", "low", "close", "volume").index(name)
        return np.array([row[:, k] for row in self.ohlcv], dtype=float).reshape(len(self), len(self.symbols))

    def input(self, name: str) -> np.ndarray:
        """(T, N) array of one prediction input (see the class docstring)."""
        k = _INPUTS.index(name)
        return np.array([row[:, k] for row in self.inputs], dtype=float).reshape(len(self), len(self.symbols))

    def target_array(self) -> np.ndarray:
        return np.array(self.targets, dtype=float).reshape(len(self), len(self.symbols))


@dataclass
class BarRecord:
    """One bar's rows for every table, committed together (see the module docstring for the columns)."""

    ts: int
    bars: list[dict[str, Any]]
    predictions: list[dict[str, Any]]
    orders: list[dict[str, Any]]
    positions: list[dict[str, Any]]
    step: dict[str, Any]


class LedgerInUse(ValueError):
    """Another process holds this state directory."""


class LedgerMismatch(ValueError):
    """The state directory holds this run with other settings."""


class Ledger:
    """The SQLite ledger of one paper run in ``state_dir``; holds an exclusive lock on the directory while
    open (released by the OS when the process dies, SIGKILL included)."""

    def __init__(self, state_dir: str | os.PathLike[str], key: str, symbols: Sequence[str],
                 settings: dict[str, Any]) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.symbols = list(symbols)
        self._lock = open(self.dir / LOCK_NAME, "a+")  # noqa: SIM115 - held for the ledger's lifetime
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise LedgerInUse(f"state dir {str(self.dir)!r} is in use by another paper process; stop it or "
                              "use another --state-dir") from None
        self.db = sqlite3.connect(self.dir / DB_NAME, isolation_level=None)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # a committed bar survives a power cut, not only a kill
            self.db.executescript(_SCHEMA)
            self._check_meta(settings)
        except BaseException:
            self.close()
            raise

    def _check_meta(self, settings: dict[str, Any]) -> None:
        row = self.db.execute("SELECT symbols, settings FROM meta WHERE run_key = ?", (self.key,)).fetchone()
        wanted = json.dumps(settings, sort_keys=True)
        if row is None:
            self.db.execute("INSERT INTO meta VALUES (?, ?, ?, ?)",
                            (self.key, json.dumps(self.symbols), wanted, pd.Timestamp.now(tz="UTC").isoformat()))
            return
        stored_symbols, stored = json.loads(row[0]), json.loads(row[1])
        if stored_symbols != self.symbols:
            raise LedgerMismatch(f"state dir {str(self.dir)!r} stores the symbols of {self.key} as "
                                 f"{stored_symbols}, not {self.symbols}")
        if stored != settings:
            keys = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
            raise LedgerMismatch(f"state dir {str(self.dir)!r} holds {self.key} with other settings "
                                 f"({', '.join(keys)}); resuming would mix two strategies in one ledger: "
                                 "restore the settings or use another --state-dir")

    def last_ts(self) -> int | None:
        """Open time of the last committed bar (None: nothing committed yet)."""
        row = self.db.execute("SELECT MAX(ts) FROM steps WHERE run_key = ?", (self.key,)).fetchone()
        return None if row[0] is None else int(row[0])

    def load_history(self) -> History:
        """Every committed bar, oldest first, as arrays in symbol order."""
        n = len(self.symbols)
        index = {s: i for i, s in enumerate(self.symbols)}
        steps = [int(r[0]) for r in self.db.execute("SELECT ts FROM steps WHERE run_key = ? ORDER BY ts",
                                                    (self.key,))]
        pos = {t: k for k, t in enumerate(steps)}
        ohlcv = np.full((len(steps), n, 5), np.nan)
        inputs = np.full((len(steps), n, len(_INPUTS)), np.nan)
        targets = np.full((len(steps), n), np.nan)
        for ts, sym, *vals in self.db.execute(
                "SELECT ts, symbol, open, high, low, close, volume FROM bars WHERE run_key = ?", (self.key,)):
            ohlcv[pos[ts], index[sym]] = [_num(v) for v in vals]
        for ts, sym, *vals in self.db.execute(
                f"SELECT ts, symbol, {', '.join(_INPUTS)} FROM predictions WHERE run_key = ? AND used = 1",
                (self.key,)):
            inputs[pos[ts], index[sym]] = [_num(v) for v in vals]
        for ts, sym, target in self.db.execute("SELECT ts, symbol, target FROM positions WHERE run_key = ?",
                                               (self.key,)):
            targets[pos[ts], index[sym]] = _num(target)
        return History(list(self.symbols), steps, list(ohlcv), list(inputs), list(targets))

    def commit(self, record: BarRecord, inside: Callable[[], None] | None = None) -> None:
        """Write ``record`` in one transaction (``inside`` runs before COMMIT: a test hook)."""
        record.step["committed_at"] = pd.Timestamp.now(tz="UTC").isoformat()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for table, rows in (("bars", record.bars), ("predictions", record.predictions),
                                ("orders", record.orders), ("positions", record.positions),
                                ("steps", [record.step])):
                for row in rows:
                    cols = ["run_key", "ts", *row]
                    sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                    self.db.execute(sql, [self.key, record.ts, *(_sql(v) for v in row.values())])
            if inside is not None:
                inside()
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def frames(self) -> dict[str, pd.DataFrame]:
        """Every table of this run as a DataFrame sorted by (ts, symbol); ``timestamp`` added (UTC)."""
        return read_tables(self.db, self.key)

    def close(self) -> None:
        self.db.close()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()


def read_tables(db: sqlite3.Connection, key: str) -> dict[str, pd.DataFrame]:
    """The ledger tables of run ``key`` on an open connection (see ``Ledger.frames``)."""
    out = {}
    for table in TABLES:
        frame = pd.read_sql_query(f"SELECT * FROM {table} WHERE run_key = ? ORDER BY ts"
                                  + (", symbol" if table != "steps" else ""), db, params=(key,))
        frame = frame.drop(columns="run_key")
        frame.insert(1, "timestamp", pd.to_datetime(frame["ts"], unit="ms", utc=True))
        out[table] = frame
    return out


def read_ledger(state_dir: str | os.PathLike[str], key: str | None = None,
                timeout_s: float = 5.0) -> dict[str, pd.DataFrame]:
    """Read a ledger without taking the writer's lock (read-only; safe beside a running trader). ``key``
    may be omitted when the file holds one run."""
    path = Path(state_dir) / DB_NAME
    if not path.exists():
        raise FileNotFoundError(f"no paper ledger at {str(path)!r}")
    deadline = time.monotonic() + timeout_s
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s)
    try:
        keys = [r[0] for r in db.execute("SELECT run_key FROM meta")]
        if key is None:
            if len(keys) != 1:
                raise ValueError(f"{str(path)!r} holds runs {keys}; name one")
            key = keys[0]
        elif key not in keys:
            raise ValueError(f"{str(path)!r} holds no run {key!r}; it has {keys}")
        while True:
            try:
                return read_tables(db, key)
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        db.close()
