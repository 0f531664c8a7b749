"""The end-of-run ingest report: rows per table and unit, quarantined rows by reason, gaps."""

from __future__ import annotations

import json
import sys
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cryptopredict.data.ingest import IngestReport


def render(reports: list[IngestReport], console: Console | None = None, title: str = "Ingest report") -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 150)
    t = Table(title=title)
    for col in ("table", "unit", "rows in", "inserted", "updated", "unchanged", "rows in lake",
                "quarantined", "gaps (missing bars)", "s"):
        t.add_column(col, justify="left" if col in ("table", "unit", "quarantined") else "right")
    for r in reports:
        if r.error:
            t.add_row(r.table, r.unit, "", "", "", "", "", f"[red]FAILED: {r.error}[/red]", "", "")
            continue
        q = ", ".join(f"{k}={v}" for k, v in sorted(r.quarantined.items())) or "0"
        gaps = f"{r.gaps} ({r.missing_bars})" if r.table == "ohlcv" else "-"
        t.add_row(r.table, r.unit, f"{r.rows_in:,}", f"{r.inserted:,}", f"{r.updated:,}", f"{r.unchanged:,}",
                  f"{r.rows_after:,}", q, gaps, f"{r.seconds:.2f}")
    console.print(t)
    totals = summarise(reports)
    console.print(
        f"{totals['units']} units, {totals['rows_in']:,} rows read, {totals['inserted']:,} inserted, "
        f"{totals['updated']:,} updated, {totals['quarantined']:,} quarantined, "
        f"{totals['gaps']} gaps ({totals['missing_bars']} missing bars, recorded, not filled), "
        f"{totals['failed']} failed")


def summarise(reports: list[IngestReport]) -> dict[str, int]:
    ok = [r for r in reports if not r.error]
    return {
        "units": len(reports),
        "failed": len(reports) - len(ok),
        "rows_in": sum(r.rows_in for r in ok),
        "inserted": sum(r.inserted for r in ok),
        "updated": sum(r.updated for r in ok),
        "quarantined": sum(sum(r.quarantined.values()) for r in ok),
        "gaps": sum(r.gaps for r in ok),
        "missing_bars": sum(r.missing_bars for r in ok),
    }


def write_json(reports: list[IngestReport], path: str | os.PathLike[str]) -> Path:
    """Write the report atomically as JSON (``units`` and ``totals``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"units": [r.to_row() for r in reports], "totals": summarise(reports)}, indent=2))
    os.replace(tmp, path)
    return path
