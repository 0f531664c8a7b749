"""The look-ahead property: a feature row at t computed on data truncated at t equals the row computed on
the full history. A family that peeks at the future fails it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd


def assert_no_lookahead(compute: Callable[[pd.Timestamp], pd.DataFrame], timestamps: pd.Series,
                        cuts: Sequence[pd.Timestamp], *, rtol: float = 1e-7, atol: float = 1e-9) -> int:
    """``compute(t_end)`` returns the feature frame (one row per bar, aligned with the bars whose timestamp
    <= t_end, in order) computed from inputs truncated at ``t_end`` (bars with timestamp <= t_end and
    context known by t_end's close). For every cut t, the last row of ``compute(t)`` must equal the row at t
    of ``compute(timestamps.max())``. Returns the number of (cut, column) values compared (> 0)."""
    full = compute(timestamps.max()).reset_index(drop=True)
    ts = timestamps.reset_index(drop=True)
    compared = 0
    for t in cuts:
        pos = int(np.flatnonzero((ts == t).to_numpy())[0])
        part = compute(t).reset_index(drop=True)
        assert len(part) == pos + 1, f"cut {t}: {len(part)} rows, expected {pos + 1}"
        a, b = part.iloc[-1], full.iloc[pos]
        both_nan = a.isna() & b.isna()
        close = np.isclose(a.to_numpy(float), b.to_numpy(float), rtol=rtol, atol=atol)
        differ = [c for c, ok, n in zip(a.index, close, both_nan) if not ok and not n]
        assert not differ, f"look-ahead at {t}: {[(c, a[c], b[c]) for c in differ[:5]]}"
        compared += int((~both_nan).sum())
    assert compared > 0, "nothing compared: every value was NaN"
    return compared


def random_cuts(timestamps: pd.Series, n: int, *, seed: int, min_position: int) -> list[pd.Timestamp]:
    """``n`` distinct bar timestamps at positions >= ``min_position``, drawn with a seed."""
    rng = np.random.default_rng(seed)
    positions = rng.choice(np.arange(min_position, len(timestamps)), size=n, replace=False)
    return [timestamps.iloc[int(p)] for p in sorted(positions)]
