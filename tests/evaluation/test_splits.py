"""Purged walk-forward and CPCV splits: exact boundaries, gap sizes, and no label overlap by brute force."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from cryptopredict.evaluation.splits import (
    FoldSpec,
    SplitConfig,
    combinatorial_purged_splits,
    resolve_embargo,
    walk_forward_splits,
)
from cryptopredict.models.base import Fold

T0 = pd.Timestamp("2024-01-01", tz="UTC")
H = pd.Timedelta("1h")


def calendar(n_bars: int, symbols: int = 1, drop: tuple[int, ...] = (),
             seed: int | None = None) -> pd.DatetimeIndex:
    """Row timestamps for ``symbols`` symbols on an hourly grid of ``n_bars`` bars minus the bars in ``drop``,
    shuffled (rows in no particular order) when ``seed`` is given."""
    keep = np.setdiff1d(np.arange(n_bars), drop)
    ts = np.tile(T0 + keep * H, symbols)
    if seed is not None:
        ts = np.random.default_rng(seed).permutation(ts)
    return pd.DatetimeIndex(ts)


def pos(ts: pd.DatetimeIndex) -> np.ndarray:
    return ((ts - T0) // H).to_numpy().astype(np.int64)


def bars(ts: pd.DatetimeIndex, mask: np.ndarray) -> list[int]:
    """Sorted distinct bar positions selected by ``mask``."""
    return sorted(set(pos(ts)[mask].tolist()))


def assert_no_label_overlap(ts: pd.DatetimeIndex, train: np.ndarray, evaluated: np.ndarray, h: int) -> None:
    """Brute force over every (train row, evaluated row) pair: closed intervals [t, t+h] must be disjoint."""
    p = pos(ts)
    a, b = p[train][:, None], p[evaluated][None, :]
    overlap = (a <= b + h) & (b <= a + h)
    assert not overlap.any(), f"{int(overlap.sum())} overlapping (train, eval) pairs"


def test_expanding_exact_boundaries_with_validation() -> None:
    ts = calendar(100, symbols=2)
    cfg = SplitConfig(bar=timedelta(hours=1), initial_train_bars=50, test_bars=20, valid_bars=10, embargo=2)
    folds = walk_forward_splits(ts, cfg, horizon=3)
    assert len(folds) == 2  # tests [50, 70) and [70, 90); [90, 100) is too short for a full fold
    f0, f1 = folds
    # fold 0: test [50, 70); dev ends at 50 - purge 3 = 47; valid [37, 47); train [0, 37 - 3 - 2 = 32)
    assert f0.test == ((T0 + 50 * H, T0 + 70 * H),)
    assert f0.valid == ((T0 + 37 * H, T0 + 47 * H),)
    assert f0.train == ((T0, T0 + 32 * H),)
    assert bars(ts, f0.train_mask) == list(range(32))
    assert bars(ts, f0.valid_mask) == list(range(37, 47))
    assert bars(ts, f0.test_mask) == list(range(50, 70))
    assert f0.train_mask.sum() == 2 * 32 and f0.test_mask.sum() == 2 * 20  # both symbols
    # fold 1: expanding, training still starts at the first bar
    assert bars(ts, f1.train_mask) == list(range(52))
    assert bars(ts, f1.valid_mask) == list(range(57, 67))
    assert bars(ts, f1.test_mask) == list(range(70, 90))
    assert f1.purge_bars == 3 and f1.embargo_bars == 2
    assert f1.summary()["n_train"] == 104 and f1.summary()["test"] == [[(T0 + 70 * H).isoformat(),
                                                                        (T0 + 90 * H).isoformat()]]


def test_purge_is_exactly_the_horizon_by_default_and_never_less() -> None:
    ts = calendar(60)
    for h in (1, 4, 9):
        (fold,) = walk_forward_splits(ts, SplitConfig(initial_train_bars=40, test_bars=20), horizon=h)
        assert bars(ts, fold.train_mask) == list(range(40 - h))  # h bars removed in front of the test
    cfg = SplitConfig(initial_train_bars=40, test_bars=20, purge_bars=7)
    (fold,) = walk_forward_splits(ts, cfg, horizon=4)
    assert max(bars(ts, fold.train_mask)) == 40 - 7 - 1
    with pytest.raises(ValueError, match="shorter than the label horizon"):
        walk_forward_splits(ts, SplitConfig(initial_train_bars=40, test_bars=20, purge_bars=3), horizon=4)


def test_rolling_window_slides_and_expanding_grows() -> None:
    ts = calendar(200)
    roll = walk_forward_splits(ts, SplitConfig(scheme="rolling", initial_train_bars=60, test_bars=30,
                                               train_window_bars=40), horizon=2)
    grow = walk_forward_splits(ts, SplitConfig(initial_train_bars=60, test_bars=30), horizon=2)
    assert [bars(ts, f.test_mask)[0] for f in roll] == [60, 90, 120, 150]
    for k, f in enumerate(roll):
        end = 60 + 30 * k - 2
        assert bars(ts, f.train_mask) == list(range(end - 40, end))  # exactly 40 bars, ending at test − purge
    for k, f in enumerate(grow):
        assert bars(ts, f.train_mask) == list(range(0, 60 + 30 * k - 2))
    with pytest.raises(ValidationError, match="train_window_bars"):
        SplitConfig(scheme="rolling")
    with pytest.raises(ValidationError, match="rolling scheme only"):
        SplitConfig(train_window_bars=10)


def test_validation_fraction_partial_last_fold_and_n_folds() -> None:
    ts = calendar(100)
    cfg = SplitConfig(initial_train_bars=64, test_bars=36, valid_fraction=0.25)
    (f,) = walk_forward_splits(ts, cfg, horizon=4)
    # dev = [0, 60): valid = last 15 bars, train ends purge (4) before it
    assert bars(ts, f.valid_mask) == list(range(45, 60)) and bars(ts, f.train_mask) == list(range(41))
    partial = walk_forward_splits(ts, SplitConfig(initial_train_bars=50, test_bars=20, min_test_bars=10), 1)
    assert [bars(ts, x.test_mask)[-1] + 1 for x in partial] == [70, 90, 100]  # last fold cut at the data end
    assert len(walk_forward_splits(ts, SplitConfig(initial_train_bars=50, test_bars=20, n_folds=1), 1)) == 1
    with pytest.raises(ValueError, match="only 2 folds"):
        walk_forward_splits(ts, SplitConfig(initial_train_bars=50, test_bars=20, n_folds=3), horizon=1)
    with pytest.raises(ValueError, match="no training bars"):
        walk_forward_splits(ts, SplitConfig(initial_train_bars=10, test_bars=20, valid_bars=8), horizon=2)


def test_time_not_row_counts_gaps_and_off_grid() -> None:
    # a calendar-wide outage at bars 40..49: spans stay in time, no row of the gap is ever selected
    ts = calendar(100, symbols=3, drop=tuple(range(40, 50)), seed=1)
    (f,) = walk_forward_splits(ts, SplitConfig(initial_train_bars=45, test_bars=30), horizon=3)
    assert f.test == ((T0 + 45 * H, T0 + 75 * H),)
    assert bars(ts, f.test_mask) == list(range(50, 75)) and bars(ts, f.train_mask) == list(range(40))
    assert not (f.train_mask & f.test_mask).any()
    with pytest.raises(ValueError, match="not on a"):
        walk_forward_splits(ts.append(pd.DatetimeIndex([T0 + pd.Timedelta("90min")])),
                            SplitConfig(initial_train_bars=45, test_bars=30), horizon=3)


def test_no_training_label_overlaps_any_evaluated_label_random_configs() -> None:
    rng = np.random.default_rng(20240601)
    checked = 0
    for trial in range(40):
        n = int(rng.integers(150, 400))
        drop = tuple(rng.choice(n, size=int(rng.integers(0, 20)), replace=False).tolist())
        ts = calendar(n, symbols=int(rng.integers(1, 3)), drop=drop, seed=trial)
        h = int(rng.integers(1, 12))
        rolling = bool(rng.integers(2))
        valid = int(rng.integers(0, 20))
        cfg = SplitConfig(scheme="rolling" if rolling else "expanding",
                          initial_train_bars=int(rng.integers(80, 120)), test_bars=int(rng.integers(10, 40)),
                          train_window_bars=int(rng.integers(40, 80)) if rolling else None,
                          purge_bars=h + int(rng.integers(0, 3)), embargo=int(rng.integers(0, 5)),
                          valid_bars=valid, min_test_bars=5)
        for f in walk_forward_splits(ts, cfg, horizon=h):
            assert_no_label_overlap(ts, f.train_mask, f.test_mask, h)
            assert_no_label_overlap(ts, f.train_mask, f.valid_mask, h)
            assert_no_label_overlap(ts, f.valid_mask, f.test_mask, h)
            p = pos(ts)
            assert p[f.train_mask].max() < p[f.test_mask].min()  # walk-forward: training strictly before test
            if f.valid_mask.any():  # embargo in front of validation, on top of the purge
                assert p[f.valid_mask].min() - p[f.train_mask].max() > cfg.purge_bars + f.embargo_bars
            checked += 1
    assert checked > 100


def test_cpcv_counts_paths_and_purge_embargo() -> None:
    ts = calendar(120, symbols=2, seed=3)
    n_groups, k, h, emb = 6, 2, 3, 4
    cv = combinatorial_purged_splits(ts, n_groups, k, horizon=h, embargo=emb)
    assert len(cv.splits) == math.comb(6, 2) == 15
    assert cv.groups[0] == (T0, T0 + 20 * H) and cv.groups[-1] == (T0 + 100 * H, T0 + 120 * H)
    tested = np.zeros(n_groups, int)
    for s in cv.splits:
        tested[list(s.test_groups)] += 1
    assert (tested == math.comb(5, 1)).all()  # each group tested C(N-1, k-1) times
    assert cv.n_paths == 5 and cv.paths.shape == (5, n_groups)
    for g in range(n_groups):  # path j uses, for group g, a split that tests g; all of them across paths
        assert sorted(cv.paths[:, g]) == [s.index for s in cv.splits if g in s.test_groups]
    # split (1, 3): test [20, 40) and [60, 80); train is everything else minus 3 bars before and 3+4 after
    s = next(s for s in cv.splits if s.test_groups == (1, 3))
    assert bars(ts, s.test_mask) == list(range(20, 40)) + list(range(60, 80))
    assert bars(ts, s.train_mask) == list(range(17)) + list(range(47, 57)) + list(range(87, 120))
    assert s.train == ((T0, T0 + 17 * H), (T0 + 47 * H, T0 + 57 * H), (T0 + 87 * H, T0 + 120 * H))
    # adjacent test groups merge into one block: no purge between them
    s = next(s for s in cv.splits if s.test_groups == (2, 3))
    assert s.test == ((T0 + 40 * H, T0 + 80 * H),)
    for s in cv.splits:
        assert_no_label_overlap(ts, s.train_mask, s.test_mask, h)
        assert not (s.train_mask & s.test_mask).any()


def test_cpcv_random_configs_no_overlap_and_embargo_fraction() -> None:
    rng = np.random.default_rng(7)
    for trial in range(12):
        n = int(rng.integers(150, 300))
        ts = calendar(n, symbols=2, drop=tuple(rng.choice(n, 10, replace=False).tolist()), seed=trial)
        n_groups = int(rng.integers(3, 8))
        k = int(rng.integers(1, n_groups))
        h = int(rng.integers(1, 8))
        cv = combinatorial_purged_splits(ts, n_groups, k, horizon=h, embargo=0.02)
        assert len(cv.splits) == math.comb(n_groups, k) and cv.n_paths == math.comb(n_groups - 1, k - 1)
        p = pos(ts)
        for s in cv.splits:
            assert s.embargo_bars == math.ceil(0.02 * (p.max() + 1))
            assert_no_label_overlap(ts, s.train_mask, s.test_mask, h)
            for block in s.test:  # embargo: no training row within purge + embargo bars after a test block
                end = (block.end - T0) // H
                after = p[s.train_mask]
                assert not ((after >= end) & (after < end + h + s.embargo_bars)).any()


def test_embargo_resolution_and_argument_checks() -> None:
    assert resolve_embargo(5, 1000) == 5
    assert resolve_embargo(0.011, 1000) == 11
    assert SplitConfig(embargo=0.05).embargo == 0.05 and SplitConfig(embargo=3).embargo == 3
    with pytest.raises(ValueError):
        resolve_embargo(1.5, 100)
    with pytest.raises(ValidationError):
        SplitConfig(valid_bars=5, valid_fraction=0.1)
    with pytest.raises(ValueError, match="n_test_groups"):
        combinatorial_purged_splits(calendar(50), 5, 5, horizon=1)


def test_foldspec_subsets_a_fold() -> None:
    ts = calendar(80, symbols=2)
    idx = pd.MultiIndex.from_arrays([np.repeat(["BTC", "ETH"], 80), ts], names=["symbol", "timestamp"])
    s = pd.Series(np.arange(160, dtype=float), index=idx)
    data = Fold(pd.DataFrame({"x": s}), s, s, s, s, horizon=2)
    cfg = SplitConfig(initial_train_bars=50, test_bars=30, valid_bars=10)
    (f,) = walk_forward_splits(data.timestamps, cfg, horizon=2)
    train, valid, test = f.subset(data)
    assert isinstance(f, FoldSpec) and valid is not None
    assert len(train) == f.train_mask.sum() == 2 * 36 and len(valid) == 20 and len(test) == 60
    assert train.timestamps.max() < valid.timestamps.min() < test.timestamps.min()
    assert test.name == "fold0/test"
