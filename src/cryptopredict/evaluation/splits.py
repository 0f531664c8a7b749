"""Purged walk-forward and combinatorial purged cross-validation splits, on TIME.

Time convention (see ``features/base.py`` and ``labels.py``). A row is a (symbol, timestamp) pair whose
``timestamp`` is the bar's OPEN time; its features are known at the bar's close and its label looks
forward over ``h`` bars. The label of the row at t is treated as occupying the CLOSED interval
[t, t + h·bar] of open times (the closes of bars t … t + h), so two rows' labels overlap exactly when their
timestamps are at most h bars apart. Every split here guarantees that no training row's interval
intersects any evaluation (test or validation) row's interval.

All symbols share one calendar: splits are computed on the absolute bar grid that starts at the earliest
timestamp (position p ↔ ``origin + p·bar``), so spans are lengths of TIME in bars, gaps in the data do not
stretch them, and every row of every symbol stamped inside a span belongs to it. Ranges are half-open
``[start, end)`` in bar open times.

Gaps removed from training (in bars):

- purge (default: the label horizon h, and never less): training rows in the ``purge`` bars before an
  evaluation span, and in the ``purge`` bars after it, whose label windows reach into the span;
- embargo: a further ``embargo`` bars after a test span (only matters when training data follows test
  data, as in CPCV) and in front of the inner validation span, where training features built on trailing
  windows would otherwise share information with the validation rows.

Walk-forward fold k (``[train] gap [valid] purge [test]``)::

    test  = [s_k, s_k + test_bars)            s_k = initial_train_bars + k·test_bars
    dev   = [dev_start, s_k − purge)          dev_start = 0 (expanding) or s_k − purge − train_window_bars
    valid = last valid_len bars of dev        (valid_bars, or round(valid_fraction · len(dev)))
    train = dev minus valid minus the (purge + embargo) bars in front of valid

The test calendar therefore does not depend on the horizon, so different horizons and models share test
folds. Test rows near the data end have NaN labels (their windows run past the data); the caller drops them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import timedelta
from itertools import combinations
from typing import Annotated, Literal, NamedTuple

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

from cryptopredict.models.base import Fold

log = logging.getLogger(__name__)

EmbargoFraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class TimeRange(NamedTuple):
    """A half-open span ``[start, end)`` of bar open times."""

    start: pd.Timestamp
    end: pd.Timestamp


class SplitConfig(BaseModel):
    """Walk-forward layout. All lengths are in bars of length ``bar`` (1h bars in this project)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: Literal["expanding", "rolling"] = Field(
        "expanding", description="expanding: training starts at the first bar; rolling: a fixed window")
    bar: timedelta = Field(timedelta(hours=1), description="bar length; timestamps must lie on this grid")
    initial_train_bars: PositiveInt = Field(
        24 * 365, description="the first test span starts this many bars after the first timestamp "
        "(its training data, validation and purge gap all fit in front of it)")
    test_bars: PositiveInt = Field(24 * 30, description="length of each test span; test spans tile time")
    n_folds: PositiveInt | None = Field(None, description="number of folds; None: until the data ends")
    min_test_bars: PositiveInt | None = Field(
        None, description="a final test span cut short by the data end is kept if it has at least this many "
        "bars; None: test_bars (no partial fold)")
    train_window_bars: PositiveInt | None = Field(
        None, description="rolling only: bars of training plus validation data ending at test start − purge")
    purge_bars: NonNegativeInt | None = Field(
        None, description="bars purged on each side of an evaluation span; None: the label horizon")
    embargo: NonNegativeInt | EmbargoFraction = Field(
        0, description="bars embargoed after a test span and in front of validation; an int is a number of "
        "bars, a float in [0, 1) a fraction of the calendar (rounded up)")
    valid_bars: NonNegativeInt = Field(
        0, description="inner validation span carved from the end of the training data (early stopping, "
        "tuning)")
    valid_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="alternative to valid_bars: a share of the training span")

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.bar <= timedelta(0):
            raise ValueError("bar must be a positive duration")
        if self.scheme == "rolling" and self.train_window_bars is None:
            raise ValueError("the rolling scheme needs train_window_bars")
        if self.scheme == "expanding" and self.train_window_bars is not None:
            raise ValueError("train_window_bars applies to the rolling scheme only")
        if self.valid_bars and self.valid_fraction:
            raise ValueError("give valid_bars or valid_fraction, not both")
        if self.min_test_bars is not None and self.min_test_bars > self.test_bars:
            raise ValueError("min_test_bars cannot exceed test_bars")
        return self


@dataclass(frozen=True)
class FoldSpec:
    """One split: time ranges plus boolean row masks over the ``timestamps`` the split was built from.

    ``valid`` is empty (and ``valid_mask`` all False) without inner validation; CPCV splits have several
    test ranges (their ``test_groups``) and several training ranges.
    """

    index: int
    train: tuple[TimeRange, ...]
    valid: tuple[TimeRange, ...]
    test: tuple[TimeRange, ...]
    train_mask: np.ndarray
    valid_mask: np.ndarray
    test_mask: np.ndarray
    purge_bars: int
    embargo_bars: int
    test_groups: tuple[int, ...] = ()

    @property
    def train_index(self) -> np.ndarray:
        return np.flatnonzero(self.train_mask)

    @property
    def valid_index(self) -> np.ndarray:
        return np.flatnonzero(self.valid_mask)

    @property
    def test_index(self) -> np.ndarray:
        return np.flatnonzero(self.test_mask)

    def subset(self, data: Fold) -> tuple[Fold, Fold | None, Fold]:
        """(train, valid or None, test) Folds of ``data``, whose rows must be those the split was built on."""
        if len(data) != len(self.test_mask):
            raise ValueError(f"split built on {len(self.test_mask)} rows, data has {len(data)}")
        valid = data.subset(self.valid_mask, f"fold{self.index}/valid") if self.valid_mask.any() else None
        return (data.subset(self.train_mask, f"fold{self.index}/train"), valid,
                data.subset(self.test_mask, f"fold{self.index}/test"))

    def summary(self) -> dict[str, object]:
        """JSON-able description (ISO ranges, row counts, gaps) for logs and run manifests."""
        def ranges(rs: tuple[TimeRange, ...]) -> list[list[str]]:
            return [[r.start.isoformat(), r.end.isoformat()] for r in rs]
        return {"index": self.index, "train": ranges(self.train), "valid": ranges(self.valid),
                "test": ranges(self.test), "n_train": int(self.train_mask.sum()),
                "n_valid": int(self.valid_mask.sum()), "n_test": int(self.test_mask.sum()),
                "purge_bars": self.purge_bars, "embargo_bars": self.embargo_bars,
                "test_groups": list(self.test_groups)}


@dataclass(frozen=True)
class CPCVSplits:
    """Combinatorial purged CV: the C(N, k) splits, the N groups, and the backtest paths.

    ``paths[j, g]`` is the index in ``splits`` of the split whose test predictions for group ``g`` make up
    path ``j``; there are C(N−1, k−1) paths, each covering every group exactly once (for PBO and the
    distribution of out-of-sample performance).
    """

    splits: list[FoldSpec]
    groups: tuple[TimeRange, ...]
    paths: np.ndarray

    @property
    def n_paths(self) -> int:
        return int(self.paths.shape[0])


class _Grid(NamedTuple):
    pos: np.ndarray  # int64 bar position of each row on the grid
    origin: pd.Timestamp  # open time of position 0 (the earliest timestamp)
    bar: pd.Timedelta
    n_bars: int  # positions from the first to the last timestamp, inclusive

    def time(self, p: int) -> pd.Timestamp:
        return self.origin + p * self.bar

    def span(self, a: int, b: int) -> TimeRange:
        return TimeRange(self.time(a), self.time(b))

    def mask(self, a: int, b: int) -> np.ndarray:
        return (self.pos >= a) & (self.pos < b)


def _grid(timestamps: pd.DatetimeIndex | pd.Series | np.ndarray, bar: timedelta | pd.Timedelta) -> _Grid:
    idx = pd.DatetimeIndex(timestamps)
    if len(idx) == 0:
        raise ValueError("no timestamps to split")
    if idx.hasnans:
        raise ValueError("timestamps contain NaT")
    step = pd.Timedelta(bar)
    if step <= pd.Timedelta(0):
        raise ValueError("bar must be a positive duration")
    ns = idx.as_unit("ns").asi8
    step_ns = step.as_unit("ns").value
    offset = ns - ns.min()
    if (offset % step_ns).any():
        raise ValueError(f"timestamps are not on a {step} grid anchored at the earliest timestamp")
    pos = offset // step_ns
    return _Grid(pos, idx.min(), step, int(pos.max()) + 1)


def resolve_embargo(embargo: int | float, n_bars: int) -> int:
    """Embargo in bars: an int is bars, a float in [0, 1) a fraction of ``n_bars`` (rounded up)."""
    if isinstance(embargo, bool):
        raise TypeError("embargo must be an int (bars) or a float fraction, not a bool")
    if isinstance(embargo, int | np.integer):
        if embargo < 0:
            raise ValueError(f"embargo must be >= 0 bars, got {embargo}")
        return int(embargo)
    if not 0.0 <= embargo < 1.0:
        raise ValueError(f"an embargo fraction must be in [0, 1), got {embargo}")
    return math.ceil(embargo * n_bars)


def _purge(purge_bars: int | None, horizon: int) -> int:
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 bar, got {horizon}")
    purge = horizon if purge_bars is None else purge_bars
    if purge < horizon:
        raise ValueError(f"purge of {purge} bars is shorter than the label horizon ({horizon} bars): "
                         "training labels would overlap evaluation labels")
    return purge


def walk_forward_splits(timestamps: pd.DatetimeIndex | pd.Series | np.ndarray, cfg: SplitConfig,
                        horizon: int) -> list[FoldSpec]:
    """Purged walk-forward folds over the rows stamped ``timestamps`` (any order, repeated across symbols).

    ``horizon``: label horizon in bars. Returns the folds in time order; raises if ``cfg.n_folds`` folds
    do not fit in the data or a fold would have no training rows. Folds whose test span holds no rows (a
    calendar-wide outage) are skipped with a warning.
    """
    grid = _grid(timestamps, cfg.bar)
    purge = _purge(cfg.purge_bars, horizon)
    embargo = resolve_embargo(cfg.embargo, grid.n_bars)
    min_test = cfg.min_test_bars or cfg.test_bars
    folds: list[FoldSpec] = []
    k = 0
    while cfg.n_folds is None or k < cfg.n_folds:
        test_start = cfg.initial_train_bars + k * cfg.test_bars
        test_end = min(test_start + cfg.test_bars, grid.n_bars)
        if test_end - test_start < min_test:
            if cfg.n_folds is not None:
                raise ValueError(f"only {k} folds of {cfg.test_bars} test bars fit in the data "
                                 f"({grid.n_bars} bars); asked for {cfg.n_folds}")
            break
        dev_end = test_start - purge
        dev_start = 0 if cfg.scheme == "expanding" else max(0, dev_end - (cfg.train_window_bars or 0))
        valid_len = cfg.valid_bars or round(cfg.valid_fraction * max(dev_end - dev_start, 0))
        valid_start = dev_end - valid_len
        train_end = valid_start - (purge + embargo if valid_len else 0)
        if train_end <= dev_start:
            raise ValueError(f"fold {k}: no training bars left before {grid.time(test_start)} "
                             f"(purge {purge}, embargo {embargo}, validation {valid_len} bars)")
        test_mask = grid.mask(test_start, test_end)
        if not test_mask.any():
            log.warning("walk-forward: no rows in test span %s, fold skipped",
                        grid.span(test_start, test_end))
            k += 1
            continue
        fold = FoldSpec(
            index=len(folds),
            train=(grid.span(dev_start, train_end),),
            valid=(grid.span(valid_start, dev_end),) if valid_len else (),
            test=(grid.span(test_start, test_end),),
            train_mask=grid.mask(dev_start, train_end),
            valid_mask=grid.mask(valid_start, dev_end) if valid_len else np.zeros(len(grid.pos), bool),
            test_mask=test_mask,
            purge_bars=purge,
            embargo_bars=embargo,
        )
        if not fold.train_mask.any():
            raise ValueError(f"fold {k}: the training span {fold.train[0]} holds no rows")
        folds.append(fold)
        k += 1
    if not folds:
        raise ValueError(f"no walk-forward fold fits: {grid.n_bars} bars, first test at bar "
                         f"{cfg.initial_train_bars}, {min_test} test bars needed")
    log.info("walk-forward (%s): %d folds, purge %d bars, embargo %d bars, test %s → %s", cfg.scheme,
             len(folds), purge, embargo, folds[0].test[0].start, folds[-1].test[0].end)
    return folds


def _blocks(groups: tuple[int, ...], bounds: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous [start, end) position blocks covered by the (sorted) test groups; adjacent groups merge."""
    out: list[tuple[int, int]] = []
    for g in groups:
        a, b = int(bounds[g]), int(bounds[g + 1])
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def combinatorial_purged_splits(timestamps: pd.DatetimeIndex | pd.Series | np.ndarray, n_groups: int,
                                n_test_groups: int, horizon: int, embargo: int | float = 0,
                                bar: timedelta | pd.Timedelta = timedelta(hours=1),
                                purge_bars: int | None = None) -> CPCVSplits:
    """Combinatorial purged cross-validation (López de Prado, AFML ch. 12) on the bar grid.

    The calendar is cut into ``n_groups`` contiguous groups of (nearly) equal TIME; every choice of
    ``n_test_groups`` of them is one split (C(N, k) splits, in lexicographic order of the groups). Training
    rows are all other rows minus, around every contiguous test block, ``purge`` bars before it (default:
    ``horizon``) and ``purge + embargo`` bars after it. ``embargo``: bars (int) or a fraction of the calendar
    (float in [0, 1)). There is no inner validation span.
    """
    if not 1 <= n_test_groups < n_groups:
        raise ValueError(f"need 1 <= n_test_groups < n_groups, got {n_test_groups} of {n_groups}")
    grid = _grid(timestamps, bar)
    if n_groups > grid.n_bars:
        raise ValueError(f"{n_groups} groups do not fit in {grid.n_bars} bars")
    purge = _purge(purge_bars, horizon)
    emb = resolve_embargo(embargo, grid.n_bars)
    bounds = np.arange(n_groups + 1) * grid.n_bars // n_groups
    groups = tuple(grid.span(int(bounds[g]), int(bounds[g + 1])) for g in range(n_groups))
    splits: list[FoldSpec] = []
    for i, test_groups in enumerate(combinations(range(n_groups), n_test_groups)):
        blocks = _blocks(test_groups, bounds)
        test_mask = np.zeros(len(grid.pos), bool)
        excluded = np.zeros(grid.n_bars, bool)  # per grid position: test, purged or embargoed
        for a, b in blocks:
            test_mask |= grid.mask(a, b)
            excluded[max(0, a - purge):min(grid.n_bars, b + purge + emb)] = True
        train_mask = ~excluded[grid.pos]
        kept = np.flatnonzero(~excluded)
        train_ranges: list[TimeRange] = []
        if kept.size:
            cuts = np.flatnonzero(np.diff(kept) > 1)
            starts = np.r_[kept[0], kept[cuts + 1]]
            ends = np.r_[kept[cuts], kept[-1]] + 1
            train_ranges = [grid.span(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]
        splits.append(FoldSpec(index=i, train=tuple(train_ranges), valid=(),
                               test=tuple(grid.span(a, b) for a, b in blocks), train_mask=train_mask,
                               valid_mask=np.zeros(len(grid.pos), bool), test_mask=test_mask,
                               purge_bars=purge, embargo_bars=emb, test_groups=test_groups))
    n_paths = math.comb(n_groups - 1, n_test_groups - 1)
    paths = np.empty((n_paths, n_groups), dtype=np.int64)
    for g in range(n_groups):
        paths[:, g] = [s.index for s in splits if g in s.test_groups]
    log.info("CPCV: %d groups, %d test groups → %d splits, %d paths; purge %d bars, embargo %d bars",
             n_groups, n_test_groups, len(splits), n_paths, purge, emb)
    return CPCVSplits(splits=splits, groups=groups, paths=paths)
