"""The model registry: versioned copies of model directories with a manifest and checksums, and a champion
pointer per model, under a local directory or an ``s3://`` prefix.

Layout::

    <root>/<model>/v0001/manifest.json      what was registered (see ``manifest.py``); written LAST
    <root>/<model>/v0001/files/...          the model directory's files, byte for byte
    <root>/<model>/CHAMPION.json            the champion pointer with its lineage and history
    <root>/<model>/decisions/<run>.json     the retrain job's decision records

Crash safety. On a local root a version is staged in ``<model>/.tmp-v0001-<uuid>/``, its copies are
checksummed against the source, its manifest written, and the directory renamed into place (atomic); a
staging directory left by a crash is ignored by listings and swept by the next registration. On s3
(no directory rename) the files are uploaded under the final prefix and read back to verify them, then the
manifest is PUT: a version is listed only once its manifest exists, and a prefix left without one is cleared
before its number is used. Writers of one model are serialised by a lock file locally; on s3 one writer per
model is assumed, as for the lake.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptopredict.registry.champion import ChampionRecord, first_champion, promoted, rolled_back
from cryptopredict.registry.manifest import (
    FORMAT_VERSION,
    ChecksumMismatchError,
    Registration,
    RegistryError,
    Version,
    content_digest,
    dumps,
    forecaster_name,
    model_files,
    version_name,
    version_number,
)
from cryptopredict.registry.store import Store, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FILES = "files"
CHAMPION = "CHAMPION.json"
DECISIONS = "decisions"
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cryptopredict" / "registry"


class ModelRegistry:
    """Versions and champions of models under ``root`` (a directory or ``s3://bucket/prefix``)."""

    def __init__(self, root: str, *, s3_region: str | None = None, s3_endpoint: str | None = None,
                 cache_dir: str | Path | None = None) -> None:
        self.store = Store(root, s3_region=s3_region, s3_endpoint=s3_endpoint)
        self.root = self.store.root
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()

    @classmethod
    def from_config(cls, cfg: Any) -> ModelRegistry:
        """From a ``Config``: ``registry.*``, s3 settings falling back to the lake's."""
        rc = cfg.registry
        return cls(rc.root, s3_region=rc.s3_region or cfg.lake.s3_region,
                   s3_endpoint=rc.s3_endpoint or cfg.lake.s3_endpoint, cache_dir=rc.cache_dir)

    def __repr__(self) -> str:
        return f"ModelRegistry({self.root!r})"

    # ------------------------------------------------------------------ reading
    def list_versions(self, model: str) -> list[Version]:
        """Every committed version of ``model``, oldest first (empty when none)."""
        _check_model(model)
        out = []
        for name in self.store.list_dirs(model):
            if version_number(name) is None or not self.store.is_file(f"{model}/{name}/{MANIFEST}"):
                continue  # staging directories, or an s3 prefix whose upload never committed
            out.append(Version.from_manifest(json.loads(self.store.read_bytes(f"{model}/{name}/{MANIFEST}"))))
        return sorted(out, key=lambda v: v.number)

    def get(self, model: str, version: str) -> Version:
        """One version (``v0003``, ``0003`` or ``3``); a RegistryError listing the known ones otherwise."""
        _check_model(model)
        name = _normalise(version)
        if name is not None and self.store.is_file(f"{model}/{name}/{MANIFEST}"):
            return Version.from_manifest(json.loads(self.store.read_bytes(f"{model}/{name}/{MANIFEST}")))
        known = [v.version for v in self.list_versions(model)]
        if not known:
            raise RegistryError(f"the registry {self.root!r} has no versions of model {model!r}")
        raise RegistryError(f"model {model!r} has no version {version!r} in {self.root!r}; "
                            f"registered: {', '.join(known)}")

    def champion_record(self, model: str) -> ChampionRecord | None:
        _check_model(model)
        path = f"{model}/{CHAMPION}"
        if not self.store.is_file(path):
            return None
        return ChampionRecord.from_dict(json.loads(self.store.read_bytes(path)))

    def champion(self, model: str) -> Version | None:
        """The current champion of ``model`` (None when there is none)."""
        record = self.champion_record(model)
        return None if record is None else self.get(model, record.version)

    # ------------------------------------------------------------------ register
    def register(self, model_dir: Path, *, model: str, config: dict[str, Any],
                 feature_manifest: dict[str, Any] | None, data_span: tuple[str | None, str | None],
                 git_revision: str | None, metrics: dict[str, Any], notes: str = "") -> Registration:
        """Copy ``model_dir`` into a new version of ``model`` with its manifest.

        Idempotent: when a version with byte-identical files exists, it is returned (``created`` False).
        The first version of a model without a champion becomes champion (``became_champion``)."""
        _check_model(model)
        model_dir = Path(model_dir)
        files = model_files(model_dir)
        digest = content_digest(files)
        with self.store.locked(model):
            existing = self.list_versions(model)
            same = [v for v in existing if v.content_sha256 == digest]
            if same:
                log.info("%s: these files are already registered as %s", model, same[0].version)
                return Registration(same[0], created=False, became_champion=False)
            name = version_name(max((v.number for v in existing), default=0) + 1)
            doc = {"format": FORMAT_VERSION, "model": model, "version": name, "created_at": _now(),
                   "forecaster": forecaster_name(model_dir), "config": config,
                   "feature_manifest": feature_manifest, "data_span": list(data_span),
                   "git_revision": git_revision, "metrics": metrics, "notes": notes, "files": files,
                   "content_sha256": digest, "source": str(model_dir)}
            manifest = dumps(doc)  # fails before any copy if something is not JSON-able
            if self.store.is_local:
                self._commit_local(model, name, model_dir, files, manifest)
            else:
                self._commit_remote(model, name, model_dir, files, manifest)
            version = self.get(model, name)
            became = False
            if self.champion_record(model) is None:
                self._write_champion(first_champion(model, name, _now(), "first registered version of a "
                                                    "model with no champion"))
                became = True
        registration = Registration(version, created=True, became_champion=became)
        log.info("%s", registration.message)
        return registration

    def _copy_and_verify(self, prefix: str, model_dir: Path, files: dict[str, dict[str, Any]]) -> None:
        for rel in files:
            self.store.put_file(model_dir / rel, f"{prefix}/{FILES}/{rel}")
        for rel, meta in files.items():
            got = self.store.sha256(f"{prefix}/{FILES}/{rel}")
            if got != meta["sha256"]:
                raise ChecksumMismatchError(f"copy of {rel} into {self.root!r} has sha256 {got}, the source "
                                            f"{meta['sha256']}; the source changed while registering, or the "
                                            "store corrupted it — register again")

    def _commit_local(self, model: str, name: str, model_dir: Path, files: dict[str, dict[str, Any]],
                      manifest: bytes) -> None:
        for stale in self.store.list_dirs(model):
            if stale.startswith(".tmp-"):  # a registration killed mid-copy (we hold the model's lock)
                log.info("%s: removing the staging directory %s of an interrupted registration", model, stale)
                self.store.delete_dir(f"{model}/{stale}")
        stage = f"{model}/.tmp-{name}-{uuid.uuid4().hex}"
        try:
            self._copy_and_verify(stage, model_dir, files)
            self.store.write_bytes(f"{stage}/{MANIFEST}", manifest)
            self.store.rename_dir(stage, f"{model}/{name}")
        except BaseException:
            self.store.delete_dir(stage)
            raise

    def _commit_remote(self, model: str, name: str, model_dir: Path, files: dict[str, dict[str, Any]],
                       manifest: bytes) -> None:
        prefix = f"{model}/{name}"
        self.store.delete_dir(prefix)  # an upload that never committed (no manifest) under this number
        try:
            self._copy_and_verify(prefix, model_dir, files)
        except BaseException:
            try:
                self.store.delete_dir(prefix)
            except Exception:  # noqa: BLE001 - the prefix has no manifest, so it is never listed anyway
                log.warning("%s: could not clear the uncommitted upload %s", model, prefix, exc_info=True)
            raise
        self.store.write_bytes(f"{prefix}/{MANIFEST}", manifest)  # the commit: one PUT

    # ------------------------------------------------------------------ champion
    def _write_champion(self, record: ChampionRecord) -> None:
        self.store.write_bytes(f"{record.model}/{CHAMPION}", dumps(record.to_dict()))

    def promote(self, model: str, version: str, *, reason: str = "promoted by hand") -> Version:
        """Make ``version`` the champion after checking its files against the manifest."""
        with self.store.locked(model):
            target = self.get(model, version)
            self.verify(target)
            record = self.champion_record(model)
            if record is not None and record.version == target.version:
                log.info("%s %s is already the champion", model, target.version)
                return target
            self._write_champion(promoted(record, model, target.version, _now(), reason))
        log.info("%s: champion is now %s (%s)", model, target.version, reason)
        return target

    def rollback(self, model: str, *, reason: str = "rolled back by hand") -> Version:
        """Back to the champion before the current one; a RegistryError when there is none."""
        with self.store.locked(model):
            record = rolled_back(self.champion_record(model), model, _now(), reason)
            target = self.get(model, record.version)
            self._write_champion(record)
        log.info("%s: rolled back to %s", model, target.version)
        return target

    # ------------------------------------------------------------------ integrity and fetch
    def verify(self, version: Version) -> None:
        """Every stored file matches its recorded sha256, and no file was added; ChecksumMismatchError."""
        prefix = f"{version.model}/{version.version}/{FILES}"
        _compare(version, {rel: (lambda r=rel: self.store.sha256(f"{prefix}/{r}"))
                           for rel in self.store.list_files(prefix)}, f"{self.root}/{prefix}")

    def fetch(self, model: str, version: str) -> Path:
        """A local directory holding the version's files, checked against the manifest.

        Local root: the version's own ``files`` directory (do not write into it). s3 root: a copy under
        ``cache_dir`` — an existing cached copy is re-checked (and downloaded again, with a warning, if it
        differs); a download that does not match raises ChecksumMismatchError."""
        target = self.get(model, version)
        if self.store.is_local:
            self.verify(target)
            return self.store.local_path(f"{model}/{target.version}/{FILES}")
        root_key = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.root.removeprefix("s3://"))
        cached = self.cache_dir / root_key / model / target.version
        if cached.is_dir():
            try:
                _compare(target, _local_hashers(cached), str(cached))
                return cached
            except ChecksumMismatchError as exc:
                log.warning("cached copy of %s %s differs from the registry (%s); downloading again",
                            model, target.version, exc)
                shutil.rmtree(cached)
        tmp = cached.with_name(f".tmp-{target.version}-{uuid.uuid4().hex}")
        prefix = f"{model}/{target.version}/{FILES}"
        try:
            for rel in self.store.list_files(prefix):
                self.store.get_file(f"{prefix}/{rel}", tmp / rel)
            _compare(target, _local_hashers(tmp), f"{self.root}/{prefix}")
            cached.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, cached)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return cached

    # ------------------------------------------------------------------ decisions
    def write_decision(self, model: str, run_id: str, record: dict[str, Any]) -> str:
        """Store a retrain decision record; returns its location."""
        _check_model(model)
        rel = f"{model}/{DECISIONS}/{re.sub(r'[^A-Za-z0-9_.-]+', '_', run_id)}.json"
        self.store.write_bytes(rel, dumps(record))
        return self.store.path(rel) if self.store.is_local else f"{self.root.rstrip('/')}/{rel}"


def _normalise(version: str) -> str | None:
    v = str(version).strip()
    if v.isdigit():
        return version_name(int(v))
    return v if version_number(v) is not None else None


def _check_model(model: str) -> None:
    if not MODEL_NAME.match(model or ""):
        raise RegistryError(f"model name {model!r}: use letters, digits, '_', '-' and '.' (not leading)")


def _local_hashers(directory: Path) -> dict[str, Any]:
    return {p.relative_to(directory).as_posix(): (lambda p=p: sha256_file(p))
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _compare(version: Version, hashers: dict[str, Any], where: str) -> None:
    """Raise ChecksumMismatchError unless ``hashers`` (rel → () → sha256) match the manifest's files."""
    missing = sorted(set(version.files) - set(hashers))
    extra = sorted(set(hashers) - set(version.files))
    if missing or extra:
        raise ChecksumMismatchError(
            f"{version.model} {version.version} at {where}: " + "; ".join(
                ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else []))
            + " — the stored version is damaged; promote or fetch another version")
    for rel in sorted(version.files):
        got, want = hashers[rel](), version.files[rel]["sha256"]
        if got != want:
            raise ChecksumMismatchError(f"{version.model} {version.version}: {rel} at {where} has sha256 "
                                        f"{got[:12]}…, the manifest records {want[:12]}… — the file was changed "
                                        "or corrupted after registration; do not load it")
