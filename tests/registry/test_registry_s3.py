"""The registry on an s3:// root, against moto's S3 server on 127.0.0.1: the same API, a local cache for
fetched versions, checksum checks on download, and an interrupted upload that never becomes a version."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from cryptopredict.registry.manifest import ChecksumMismatchError
from cryptopredict.registry.registry import ModelRegistry
from cryptopredict.registry.store import Store
from tests.registry.conftest import S3Server, make_model_dir, register_kwargs


def _registry(s3: S3Server, prefix: str, cache: Path) -> ModelRegistry:
    return ModelRegistry(f"s3://{s3.bucket}/{prefix}", s3_region="us-east-1", s3_endpoint=s3.endpoint,
                         cache_dir=cache)


def _keys(s3: S3Server, prefix: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_s3_round_trip_champion_and_cache(s3_server: S3Server, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    reg = _registry(s3_server, "reg1", tmp_path / "cache")
    assert isinstance(reg.store.fs, pafs.S3FileSystem) and not reg.store.is_local
    src1 = make_model_dir(tmp_path / "m1", seed=1)
    first = reg.register(src1, model="lightgbm", **register_kwargs(1))
    second = reg.register(make_model_dir(tmp_path / "m2", seed=2), model="lightgbm", **register_kwargs(2))
    assert (first.became_champion, second.became_champion) == (True, False)
    assert not reg.register(src1, model="lightgbm", **register_kwargs(1)).created  # idempotent on s3 too
    keys = _keys(s3_server, "reg1/")
    assert "reg1/lightgbm/v0001/manifest.json" in keys and "reg1/lightgbm/v0002/files/sub/blob.bin" in keys
    assert "reg1/lightgbm/CHAMPION.json" in keys

    other = _registry(s3_server, "reg1", tmp_path / "cache2")  # a second client sees the same registry
    assert [v.version for v in other.list_versions("lightgbm")] == ["v0001", "v0002"]
    fetched = other.fetch("lightgbm", "v0001")
    assert fetched.is_relative_to(tmp_path / "cache2") and _tree(fetched) == _tree(src1)
    assert other.fetch("lightgbm", "v0001") == fetched  # served from the cache

    other.promote("lightgbm", "v0002")
    assert reg.champion("lightgbm").version == "v0002"  # type: ignore[union-attr]
    assert reg.rollback("lightgbm").version == "v0001"
    pointer = json.loads(s3_server.client().get_object(Bucket=s3_server.bucket,
                                                       Key="reg1/lightgbm/CHAMPION.json")["Body"].read())
    assert pointer["version"] == "v0001" and [h["action"] for h in pointer["history"]] == [
        "auto", "promote", "rollback"]

    (fetched / "weights.json").write_text("changed in the cache")  # a damaged cache is downloaded again
    with caplog.at_level(logging.WARNING):
        again = other.fetch("lightgbm", "v0001")
    assert _tree(again) == _tree(src1) and "downloading again" in caplog.text


@pytest.mark.slow
def test_s3_tampered_object_is_refused(s3_server: S3Server, tmp_path: Path) -> None:
    reg = _registry(s3_server, "reg2", tmp_path / "cache")
    reg.register(make_model_dir(tmp_path / "m1", seed=1), model="lightgbm", **register_kwargs(1))
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="reg2/lightgbm/v0001/files/weights.json",
                                  Body=b'{"coef": "tampered"}')
    with pytest.raises(ChecksumMismatchError, match="weights.json .* has sha256"):
        reg.fetch("lightgbm", "v0001")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("weights.json"))
    with pytest.raises(ChecksumMismatchError):
        reg.promote("lightgbm", "v0001")


@pytest.mark.slow
def test_s3_interrupted_upload_is_not_a_version(s3_server: S3Server, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    reg = _registry(s3_server, "reg3", tmp_path / "cache")
    src = make_model_dir(tmp_path / "m1", seed=1)
    (src / "a_only_in_first.txt").write_text("uploaded first, then the process dies")
    real_put = Store.put_file
    uploaded: list[str] = []

    def dying_put(self: Store, local: Path, rel: str) -> None:
        if len(uploaded) == 2:
            raise KeyboardInterrupt  # the process is stopped mid-upload
        real_put(self, local, rel)
        uploaded.append(rel)

    monkeypatch.setattr(Store, "put_file", dying_put)
    monkeypatch.setattr(Store, "delete_dir", lambda self, rel: None)  # as if killed: nothing cleaned up
    with pytest.raises(KeyboardInterrupt):
        reg.register(src, model="lightgbm", **register_kwargs(1))
    assert "reg3/lightgbm/v0001/files/a_only_in_first.txt" in _keys(s3_server, "reg3/")  # half a version
    assert len([k for k in _keys(s3_server, "reg3/") if "/files/" in k]) == 2
    assert reg.list_versions("lightgbm") == [] and reg.champion("lightgbm") is None
    monkeypatch.undo()
    done = reg.register(make_model_dir(tmp_path / "m2", seed=2), model="lightgbm", **register_kwargs(2))
    assert (done.version.version, done.became_champion) == ("v0001", True)
    prefix = "reg3/lightgbm/v0001/files/"
    files = sorted(k.removeprefix(prefix) for k in _keys(s3_server, prefix))
    assert files == sorted(done.version.files)  # the leftover upload was cleared, not mixed in
    assert _tree(reg.fetch("lightgbm", "v0001")) == _tree(tmp_path / "m2")
