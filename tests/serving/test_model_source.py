"""Every serving process fetches the registered version it serves itself: a registry version (local root or
s3:// through pyarrow.fs) is copied into the process's own cache directory, keyed by version and checked
against the manifest's sha256s, so a base-model replica on another node needs nothing from the ingress's
node. The registry here lives in its own directory (or bucket), apart from the model's working files."""

from __future__ import annotations

import logging
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from cryptopredict.registry.manifest import ChecksumMismatchError, RegistryError
from cryptopredict.registry.registry import ModelRegistry
from cryptopredict.serving.predictor import (
    MemberRequest,
    MemberRunner,
    ModelNotLoadedError,
    ModelSource,
    Predictor,
    directory_source,
    fetch_source,
    fixed_clock,
    load_model_meta,
    member_batch,
    registry_source,
    resolve_source,
    snapshot_positions,
)
from tests.registry.conftest import S3Server, s3_server  # noqa: F401 - a fixture
from tests.support.served_model import ServedModel


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _register(registry: ModelRegistry, model_dir: Path) -> str:
    return registry.register(model_dir, model="ensemble", config={}, feature_manifest=None, data_span=(None, None),
                             git_revision=None, metrics={}).version.version


def _config(served: ServedModel, registry_root: str, tmp: Path, **registry: str):  # type: ignore[no-untyped-def]
    cfg = served.cfg.model_copy(deep=True)
    cfg.registry.root = registry_root
    for k, v in registry.items():
        setattr(cfg.registry, k, v)
    cfg.serving.model_cache_dir = str(tmp / "serving-cache")
    return cfg


def test_a_model_source_is_a_directory_or_a_registry_version(served_model: ServedModel) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ModelSource(version="v1")
    with pytest.raises(ValueError, match="needs the model name"):
        ModelSource(version="v1", registry_root="/r")
    src = resolve_source(served_model.cfg, served_model.model_dir, "lbl")
    assert src == directory_source(served_model.model_dir, "lbl") and not src.from_registry
    assert ModelSource.from_dict(src.to_dict()) == src
    assert fetch_source(src, "/nonexistent-cache") == served_model.model_dir  # a directory is used in place


def test_a_local_registry_version_is_fetched_into_the_cache_and_checked(served_model: ServedModel,
                                                                        tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    cfg = _config(served_model, str(tmp_path / "registry"), tmp_path)
    with pytest.raises(ModelNotLoadedError, match="has no champion"):
        registry_source(cfg)
    assert _register(ModelRegistry(cfg.registry.root), served_model.model_dir) == "v0001"
    source = resolve_source(cfg)  # no serving.model_dir: the champion, as a source (nothing fetched yet)
    assert source.from_registry and (source.model, source.version) == ("ensemble", "v0001")
    cache = tmp_path / "node-cache"
    assert not cache.exists()
    local = fetch_source(source, cache)
    assert local.is_relative_to(cache) and local.name == "v0001" and local.parent.name == "ensemble"
    assert _tree(local) == _tree(served_model.model_dir)
    assert not any(p.name.startswith(".tmp-") for p in local.parent.iterdir())
    assert fetch_source(source, cache) == local  # the verified copy is reused
    meta = load_model_meta(local, source.version)
    assert meta.version == "v0001" and meta.members == ["transformer", "bilstm", "cnn_lstm", "gnn"]

    (local / "gnn.pt").write_bytes(b"damaged in the cache")  # a damaged copy is fetched again
    with caplog.at_level(logging.WARNING):
        again = fetch_source(source, cache)
    assert again == local and _tree(again) == _tree(served_model.model_dir) and "fetching it again" in caplog.text

    stored = Path(cfg.registry.root) / "ensemble" / "v0001" / "files" / "scaler.json"
    stored.write_text(stored.read_text() + " ")  # damaged in the registry: refused, nothing left behind
    shutil.rmtree(local)
    with pytest.raises(ChecksumMismatchError, match="scaler.json: sha256 differs"):
        fetch_source(source, cache)
    assert not local.exists() and not any(local.parent.iterdir())
    with pytest.raises(RegistryError, match="no version 'v0042'"):
        registry_source(cfg, "v0042")


@pytest.mark.slow
def test_an_s3_registry_version_is_fetched_and_served_like_the_directory(served_model: ServedModel,
                                                                          s3_server: S3Server,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    root = f"s3://{s3_server.bucket}/serving-registry"
    cfg = _config(served_model, root, tmp_path, s3_region="us-east-1", s3_endpoint=s3_server.endpoint)
    assert _register(ModelRegistry.from_config(cfg), served_model.model_dir) == "v0001"
    source = registry_source(cfg)
    assert source.registry_root == root and source.s3_endpoint == s3_server.endpoint
    local = fetch_source(ModelSource.from_dict(source.to_dict()), tmp_path / "other-node")
    assert local.is_relative_to(tmp_path / "other-node") and _tree(local) == _tree(served_model.model_dir)
    pred = Predictor(served_model.cfg, served_model.model_dir, "v0001", clock=fixed_clock(served_model.now))
    snap = pred.snapshot()
    runner = MemberRunner(load_model_meta(local, "v0001"), "gnn")
    np.testing.assert_array_equal(runner.run(member_batch(snap, "gnn", ["SOLUSDT"])).proba,
                                  pred.members["gnn"].run(member_batch(snap, "gnn", ["SOLUSDT"])).proba)


@pytest.mark.slow
@pytest.mark.ray
def test_a_member_replica_fetches_its_version_itself(served_model: ServedModel, s3_server: S3Server,  # noqa: F811
                                                     ray_session: None, tmp_path: Path) -> None:
    """A base-model deployment started with nothing but a registry source (an s3 registry: no path of the
    ingress's node) fetches the version into its own cache directory and answers like the in-process net."""
    from ray import serve

    from cryptopredict.serving.app import BaseModelDeployment
    from cryptopredict.serving.predictor import MemberOutput

    root = f"s3://{s3_server.bucket}/member-registry"
    cfg = _config(served_model, root, tmp_path, s3_region="us-east-1", s3_endpoint=s3_server.endpoint)
    version = _register(ModelRegistry.from_config(cfg), served_model.model_dir)
    source = registry_source(cfg)
    cache = tmp_path / "member-node-cache"
    env = {k: "test" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")} | {"AWS_EC2_METADATA_DISABLED": "true"}
    app = BaseModelDeployment.options(name="gnn", ray_actor_options={"num_cpus": 0.1, "runtime_env": {
        "env_vars": env}}).bind("gnn", source.to_dict(), "cpu", 2, str(cache))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        handle = serve.run(app, name="member-fetch-test", route_prefix=None)
        described = handle.describe.remote().result(timeout_s=120)
        assert described["versions"] == [version]
        assert Path(described["directories"][version]).is_relative_to(cache)
        pred = Predictor(served_model.cfg, served_model.model_dir, version, clock=fixed_clock(served_model.now))
        snap = pred.snapshot()
        request = MemberRequest(version, snap.id, snapshot_positions(snap, ["ETHUSDT", "BTCUSDT"]),
                                source.to_dict(), panel=snap.panel)
        out = handle.predict.remote(request).result(timeout_s=120)
        assert isinstance(out, MemberOutput) and out.version == version and out.symbols == ["ETHUSDT", "BTCUSDT"]
        ref = pred.members["gnn"].run(member_batch(snap, "gnn", ["ETHUSDT", "BTCUSDT"]))
        np.testing.assert_allclose(out.proba, ref.proba, atol=1e-6)
        assert handle.describe.remote().result(timeout_s=60)["snapshots_received"] == 1
    finally:
        serve.shutdown()
