"""The model registry on a local directory: round trip, idempotence, checksums, crash safety, champion
pointer semantics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cryptopredict.registry.manifest import ChecksumMismatchError, RegistryError, git_revision
from cryptopredict.registry.registry import ModelRegistry
from cryptopredict.registry.store import Store, sha256_file
from tests.registry.conftest import make_model_dir, register_kwargs


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_register_fetch_round_trip_with_manifest(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path / "registry"))
    src = make_model_dir(tmp_path / "m1", seed=1)
    first = reg.register(src, model="logistic", **register_kwargs(1))
    assert (first.created, first.became_champion) == (True, True)
    assert "it is the champion" in first.message
    v = first.version
    assert (v.model, v.version, v.forecaster) == ("logistic", "v0001", "logistic")
    assert v.data_span == ("2021-01-01T00:00:00+00:00", "2021-01-01T00:00:00+00:00")
    assert v.interval("accuracy") == register_kwargs(1)["metrics"]["intervals"]["accuracy"]
    assert v.interval("accuracy")["value"] == pytest.approx(0.41)  # type: ignore[index]
    assert set(v.files) == {"weights.json", "manifest.json", "final_fit.json", "sub/blob.bin"}
    assert all(meta["sha256"] == sha256_file(src / rel) for rel, meta in v.files.items())
    doc = json.loads((tmp_path / "registry/logistic/v0001/manifest.json").read_text())
    for key in ("version", "created_at", "model", "config", "feature_manifest", "data_span", "git_revision",
                "metrics", "notes", "files", "content_sha256"):
        assert key in doc
    assert doc["config"] == {"seed": 1} and doc["feature_manifest"]["features"][0]["name"] == "a"

    fetched = reg.fetch("logistic", "v0001")
    assert _tree(fetched) == _tree(src)
    assert reg.champion("logistic").version == "v0001"  # type: ignore[union-attr]

    second = reg.register(make_model_dir(tmp_path / "m2", seed=2), model="logistic", **register_kwargs(2))
    assert (second.version.version, second.created, second.became_champion) == ("v0002", True, False)
    assert [x.version for x in reg.list_versions("logistic")] == ["v0001", "v0002"]
    assert reg.champion("logistic").version == "v0001"  # type: ignore[union-attr]
    assert reg.get("logistic", "2").version == "v0002"  # a bare number names the version too


def test_registration_is_idempotent(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path / "registry"))
    src = make_model_dir(tmp_path / "m1", seed=1)
    first = reg.register(src, model="logistic", **register_kwargs(1))
    again = reg.register(src, model="logistic", **register_kwargs(1))
    copy = reg.register(make_model_dir(tmp_path / "copy", seed=1), model="logistic", **register_kwargs(3))
    assert (again.created, again.became_champion, again.version.version) == (False, False, "v0001")
    assert copy.version.version == "v0001" and not copy.created  # same bytes elsewhere: same version
    assert "already registered as logistic v0001" in again.message
    assert [v.version for v in reg.list_versions("logistic")] == ["v0001"]
    assert first.version.content_sha256 == again.version.content_sha256


@pytest.mark.parametrize("damage", ["change", "delete", "add"])
def test_tampered_files_are_detected_on_fetch_and_promote(tmp_path: Path, damage: str) -> None:
    reg = ModelRegistry(str(tmp_path / "registry"))
    reg.register(make_model_dir(tmp_path / "m1", seed=1), model="logistic", **register_kwargs(1))
    reg.register(make_model_dir(tmp_path / "m2", seed=2), model="logistic", **register_kwargs(2))
    stored = tmp_path / "registry/logistic/v0002/files"
    if damage == "change":
        (stored / "sub/blob.bin").write_bytes(b"tampered")
        match = r"sub/blob.bin .* has sha256"
    elif damage == "delete":
        (stored / "weights.json").unlink()
        match = r"missing \['weights.json'\]"
    else:
        (stored / "extra.txt").write_text("not registered")
        match = r"unexpected \['extra.txt'\]"
    with pytest.raises(ChecksumMismatchError, match=match):
        reg.fetch("logistic", "v0002")
    with pytest.raises(ChecksumMismatchError):
        reg.promote("logistic", "v0002")
    assert reg.champion("logistic").version == "v0001"  # type: ignore[union-attr]
    assert reg.fetch("logistic", "v0001").is_dir()  # the undamaged version still loads


def test_a_crash_during_the_copy_leaves_no_listed_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ModelRegistry(str(tmp_path / "registry"))
    src = make_model_dir(tmp_path / "m1", seed=1)
    real_put = Store.put_file
    calls = {"n": 0}

    def failing_put(self: Store, local: Path, rel: str) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        real_put(self, local, rel)

    monkeypatch.setattr(Store, "put_file", failing_put)
    with pytest.raises(OSError, match="simulated"):
        reg.register(src, model="logistic", **register_kwargs(1))
    assert calls["n"] == 3  # two files were copied before the crash
    assert reg.list_versions("logistic") == [] and reg.champion("logistic") is None
    assert not (tmp_path / "registry/logistic/v0001").exists()
    with pytest.raises(RegistryError, match="has no versions of model 'logistic'"):
        reg.get("logistic", "v0001")
    monkeypatch.setattr(Store, "put_file", real_put)
    done = reg.register(src, model="logistic", **register_kwargs(1))
    assert (done.version.version, done.became_champion) == ("v0001", True)


def test_a_killed_registration_is_never_listed_and_is_swept(tmp_path: Path) -> None:
    """What a process killed mid-copy leaves (a staging directory, even with a manifest) is not a version."""
    reg = ModelRegistry(str(tmp_path / "registry"))
    stale = tmp_path / "registry/logistic/.tmp-v0001-dead"
    (stale / "files").mkdir(parents=True)
    (stale / "files/weights.json").write_text("{half")
    (stale / "manifest.json").write_text("{}")
    (tmp_path / "registry/logistic/v0007").mkdir()  # a version directory without a manifest
    assert reg.list_versions("logistic") == []
    reg.register(make_model_dir(tmp_path / "m1", seed=1), model="logistic", **register_kwargs(1))
    assert not stale.exists()
    assert [v.version for v in reg.list_versions("logistic")] == ["v0001"]


def test_promote_and_rollback_follow_the_champion_history(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path / "registry"))
    for i in (1, 2, 3):
        reg.register(make_model_dir(tmp_path / f"m{i}", seed=i), model="lightgbm", **register_kwargs(i))
    assert reg.champion("lightgbm").version == "v0001"  # type: ignore[union-attr]
    assert reg.promote("lightgbm", "v0003").version == "v0003"
    assert reg.promote("lightgbm", "v0002", reason="test").version == "v0002"
    assert reg.promote("lightgbm", "v0002").version == "v0002"  # already champion: no new history entry
    rec = reg.champion_record("lightgbm")
    assert rec is not None and rec.lineage == ["v0001", "v0003", "v0002"]
    assert [(h["action"], h["version"], h["previous"]) for h in rec.history] == [
        ("auto", "v0001", None), ("promote", "v0003", "v0001"), ("promote", "v0002", "v0003")]
    assert rec.history[-1]["reason"] == "test"
    assert reg.rollback("lightgbm").version == "v0003"
    assert reg.rollback("lightgbm").version == "v0001"
    with pytest.raises(RegistryError, match="no previous champion to roll back to"):
        reg.rollback("lightgbm")
    rec = reg.champion_record("lightgbm")
    assert rec is not None and rec.version == "v0001" and [h["action"] for h in rec.history][-2:] == [
        "rollback", "rollback"]
    pointer = json.loads((tmp_path / "registry/lightgbm/CHAMPION.json").read_text())
    assert pointer["version"] == "v0001" and len(pointer["history"]) == 5
    assert not list((tmp_path / "registry/lightgbm").glob(".tmp-*"))  # atomic writes left no temp files
    with pytest.raises(RegistryError, match="no version 'v0009'.*registered: v0001, v0002, v0003"):
        reg.promote("lightgbm", "v0009")
    with pytest.raises(RegistryError, match="has no champion to roll back from"):
        reg.rollback("other")


def test_bad_inputs_are_registry_errors(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path / "registry"))
    with pytest.raises(RegistryError, match="does not exist"):
        reg.register(tmp_path / "nope", model="logistic", **register_kwargs(1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="holds no files"):
        reg.register(tmp_path / "empty", model="logistic", **register_kwargs(1))
    with pytest.raises(RegistryError, match="model name '../x'"):
        reg.list_versions("../x")
    kwargs = register_kwargs(1) | {"metrics": {"odd": object(), "arr": np.arange(3), "nan": float("nan")}}
    reg.register(make_model_dir(tmp_path / "m1", seed=1), model="logistic", **kwargs)  # strict JSON
    stored = reg.list_versions("logistic")[0].metrics
    assert stored["odd"].startswith("<object object") and stored["arr"] == [0, 1, 2] and stored["nan"] is None


def test_git_revision_is_none_outside_a_checkout_and_never_raises(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert git_revision(tmp_path) is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert git_revision() is None
