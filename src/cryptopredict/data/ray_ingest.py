"""Ingestion units mapped over the Ray layer (:mod:`cryptopredict.parallel`)."""

from __future__ import annotations

from collections.abc import Callable

from cryptopredict.config import Config
from cryptopredict.data.ingest import IngestReport, Unit, guarded
from cryptopredict.parallel import parallel_map

UnitFn = Callable[[Config, Unit], IngestReport]


def _item_fn(fn: UnitFn) -> Callable[[Config, dict], dict]:
    def run(cfg: Config, item: dict) -> dict:
        return guarded(fn)(cfg, Unit(item["kind"], item["name"])).to_row()

    return run


def map_units(cfg: Config, units: list[Unit], fn: UnitFn) -> list[IngestReport]:
    """Run ``fn(cfg, unit)`` for every unit with the configured parallelism; reports in unit order."""
    items = [{"kind": u.kind, "name": u.name} for u in units]
    return [IngestReport(**r) for r in parallel_map(cfg, items, _item_fn(fn), desc="ingest")]
