"""What the registry records about a version: the :class:`Version` read from its ``manifest.json``, the
errors the registry raises, the checksums of a model directory and the git revision of the code.

A version's manifest holds: version, created_at (UTC ISO), model (the registry slot), forecaster (the
model class name from the directory's ``final_fit.json``/``manifest.json``), config, feature manifest,
data span (first, last bar; UTC ISO), git revision, metrics, notes, and ``files``: relative path →
{sha256, bytes} of every copied file, with ``content_sha256`` over all of them (the identity used to make
registration idempotent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptopredict.registry.store import sha256_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VERSION_PATTERN = re.compile(r"^v(\d{4,})$")


class RegistryError(ValueError):
    """A request the registry cannot serve (unknown version, empty registry, nothing to roll back to);
    the message names the model, the version and what to do. A user error for the CLI (exit 2)."""


class ChecksumMismatchError(RegistryError):
    """A stored or fetched file does not match the sha256 recorded when the version was registered."""


def version_name(number: int) -> str:
    return f"v{number:04d}"


def version_number(name: str) -> int | None:
    """``v0012`` → 12; None for anything else."""
    m = VERSION_PATTERN.match(name)
    return int(m.group(1)) if m else None


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN/inf → None, numpy scalars and arrays → Python, tuples → lists, anything else →
    its ``str`` (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and getattr(obj, "ndim", 0) > 0:  # numpy arrays
        return jsonable(obj.tolist())
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return str(obj)


def dumps(obj: Any) -> bytes:
    return json.dumps(jsonable(obj), indent=2, sort_keys=True, allow_nan=False).encode()


def model_files(model_dir: Path) -> dict[str, dict[str, Any]]:
    """Relative path → {sha256, bytes} of every file under ``model_dir``. Dot-files are left out: by the
    project's convention they are temporaries of an interrupted write (readers ignore them)."""
    if not model_dir.is_dir():
        raise RegistryError(f"model directory {str(model_dir)!r} does not exist")
    out = {}
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        out[rel.as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    if not out:
        raise RegistryError(f"model directory {str(model_dir)!r} holds no files")
    return out


def content_digest(files: dict[str, dict[str, Any]]) -> str:
    """sha256 over the sorted (path, sha256) pairs: equal for byte-identical model directories."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(f"{rel}\0{files[rel]['sha256']}\n".encode())
    return digest.hexdigest()


def forecaster_name(model_dir: Path) -> str | None:
    """The model class name recorded in the directory (``final_fit.json`` first, then ``manifest.json``)."""
    for name in ("final_fit.json", "manifest.json"):
        path = model_dir / name
        if path.is_file():
            try:
                value = json.loads(path.read_text()).get("model")
            except (ValueError, AttributeError):
                continue
            if isinstance(value, str):
                return value
    return None


def git_revision(path: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the checkout holding ``path`` (default: this package); None outside a
    checkout, without git, or on any failure — never raises."""
    where = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    return rev if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", rev) else None


@dataclass(frozen=True)
class Version:
    """One registered version, as its manifest records it."""

    model: str
    version: str
    created_at: str
    forecaster: str | None
    data_span: tuple[str | None, str | None]
    git_revision: str | None
    metrics: dict[str, Any]
    notes: str
    files: dict[str, dict[str, Any]]
    content_sha256: str
    manifest: dict[str, Any] = field(repr=False, compare=False)

    @property
    def number(self) -> int:
        n = version_number(self.version)
        assert n is not None
        return n

    @classmethod
    def from_manifest(cls, doc: dict[str, Any]) -> Version:
        span = doc.get("data_span") or [None, None]
        return cls(model=doc["model"], version=doc["version"], created_at=doc["created_at"],
                   forecaster=doc.get("forecaster"), data_span=(span[0], span[1]),
                   git_revision=doc.get("git_revision"), metrics=doc.get("metrics") or {},
                   notes=doc.get("notes") or "", files=doc["files"], content_sha256=doc["content_sha256"],
                   manifest=doc)

    def interval(self, name: str) -> dict[str, float | None] | None:
        """A headline number with its CI from the metrics (``accuracy``, ``sharpe``, ...), or None."""
        value = (self.metrics.get("intervals") or {}).get(name)
        return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class Registration:
    """What ``register`` did: the version, whether it was newly written (False: the same files were
    already registered, that version is returned), and whether it became champion (the first version
    of a model with no champion does)."""

    version: Version
    created: bool
    became_champion: bool

    @property
    def message(self) -> str:
        v = self.version
        what = "registered" if self.created else "already registered as"
        champ = "; it is the champion (there was none)" if self.became_champion else ""
        return f"{what} {v.model} {v.version}{champ}"
