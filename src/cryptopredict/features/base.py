"""What every feature family shares: the time convention, the manifest entry, and the family contract.

Time convention. A feature row is keyed by the bar's ``timestamp`` (its OPEN time, UTC) and may use only
what is known at that bar's CLOSE, ``timestamp + bar``: the bar itself and earlier bars, and context data
published before the close (see ``context.py``). So the row at t is the information set of a decision taken
at the close of bar t; labels (``labels.py``) look forward from that close.

Family contract. A family is a function ``compute(bars, ...) -> FamilyResult`` over ONE symbol's bars
(columns timestamp, open, high, low, close, volume; sorted by timestamp, unique, gaps left as they are,
not reindexed). ``FamilyResult.frame`` has exactly ``len(bars)`` rows in the same order (RangeIndex) and
one float column per feature, named ``<family prefix>_<what>_<window>`` (e.g. ``ta_rsi_14``), scale-free
(returns, ratios, z-scores, distances in ATRs — never raw price levels); NaN where a window is not yet
full. ``FamilyResult.specs`` has one ``FeatureSpec`` per column, in the same order. Families that need
more than one symbol's bars (cross-asset) or other tables (context, sentiment) take them as extra
arguments but keep the same output contract.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

BAR_COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class FeatureSpec:
    """One manifest entry: what a feature column is and what it looks at."""

    name: str
    family: str  # technical | fractal | cross_asset | context | sentiment
    window: int | None  # bars looked back (None: not a rolling window, e.g. an as-of join)
    source: str  # the input table/columns, e.g. "ohlcv.close", "fear_greed.value"
    lag: str  # when the inputs become usable, e.g. "bar close", "D+1 00:00 UTC + 1h"
    description: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class FamilyResult:
    frame: pd.DataFrame
    specs: list[FeatureSpec]

    def check(self, n_rows: int) -> FamilyResult:
        """Raise if the result breaks the family contract (row count, one spec per column, float dtypes)."""
        if len(self.frame) != n_rows:
            raise ValueError(f"family output has {len(self.frame)} rows, bars have {n_rows}")
        names = [s.name for s in self.specs]
        if names != list(self.frame.columns):
            raise ValueError(f"specs {names[:5]}... do not match columns {list(self.frame.columns)[:5]}...")
        if len(set(names)) != len(names):
            raise ValueError("duplicate feature names")
        bad = [c for c, t in self.frame.dtypes.items() if not pd.api.types.is_float_dtype(t)]
        if bad:
            raise ValueError(f"non-float feature columns: {bad[:5]}")
        return self


def require_bars(bars: pd.DataFrame) -> None:
    """Raise a ValueError naming what is wrong if ``bars`` is not one symbol's sorted, unique bar frame."""
    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack columns {missing}")
    ts = bars["timestamp"]
    if not ts.is_monotonic_increasing or not ts.is_unique:
        raise ValueError("bars must be sorted by timestamp with unique timestamps")
