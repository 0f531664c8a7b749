"""The champion pointer of one model (``<root>/<model>/CHAMPION.json``) as plain data.

``lineage`` is the stack of champions, the current one last: a promotion pushes, a rollback pops back to
the one before. ``history`` is the append-only log of every change (action, version, previous, time,
reason). The registry writes the whole record at once (atomic replace locally, one PUT on s3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from cryptopredict.registry.manifest import RegistryError

Action = Literal["auto", "promote", "rollback"]


@dataclass(frozen=True)
class ChampionRecord:
    model: str
    version: str
    updated_at: str
    lineage: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "updated_at": self.updated_at,
                "lineage": list(self.lineage), "history": list(self.history)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ChampionRecord:
        return cls(model=doc["model"], version=doc["version"], updated_at=doc["updated_at"],
                   lineage=list(doc.get("lineage") or [doc["version"]]), history=list(doc.get("history") or []))


def _event(action: Action, version: str, previous: str | None, at: str, reason: str) -> dict[str, Any]:
    return {"action": action, "version": version, "previous": previous, "at": at, "reason": reason}


def first_champion(model: str, version: str, at: str, reason: str) -> ChampionRecord:
    return ChampionRecord(model, version, at, [version], [_event("auto", version, None, at, reason)])


def promoted(record: ChampionRecord | None, model: str, version: str, at: str, reason: str) -> ChampionRecord:
    """``version`` becomes champion (pushed onto the lineage)."""
    if record is None:
        return ChampionRecord(model, version, at, [version], [_event("promote", version, None, at, reason)])
    return ChampionRecord(model, version, at, [*record.lineage, version],
                          [*record.history, _event("promote", version, record.version, at, reason)])


def rolled_back(record: ChampionRecord | None, model: str, at: str, reason: str) -> ChampionRecord:
    """The champion before the current one; a RegistryError when there is none."""
    if record is None:
        raise RegistryError(f"model {model!r} has no champion to roll back from")
    if len(record.lineage) < 2:
        raise RegistryError(f"model {model!r}: {record.version} is the first champion in the history; "
                            "there is no previous champion to roll back to (promote a version instead)")
    lineage = record.lineage[:-1]
    return ChampionRecord(model, lineage[-1], at, lineage,
                          [*record.history, _event("rollback", lineage[-1], record.version, at, reason)])
