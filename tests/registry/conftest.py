"""Fixtures of the registry tests: small model directories and moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def make_model_dir(directory: Path, seed: int, model: str = "logistic") -> Path:
    """A model directory shaped like a final fit: weights, the model's manifest, final_fit.json, a subfolder."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "weights.json").write_text(json.dumps({"coef": [[seed, 1.0], [0.5, -seed]]}))
    (directory / "manifest.json").write_text(json.dumps({"model": model, "class": "LogisticBaseline"}))
    (directory / "final_fit.json").write_text(json.dumps({"model": model, "last_training_bar":
                                                          "2021-06-01T00:00:00+00:00", "rows": 100 + seed,
                                                          "horizon": 4, "features": ["a", "b"]}))
    (directory / "sub").mkdir(exist_ok=True)
    (directory / "sub" / "blob.bin").write_bytes(bytes(range(256)) * (seed + 1))
    return directory


def metrics(acc: float, sharpe: float) -> dict:
    return {"intervals": {"accuracy": {"value": acc, "low": acc - 0.02, "high": acc + 0.02, "level": 0.95},
                          "sharpe": {"value": sharpe, "low": sharpe - 1.0, "high": sharpe + 1.0, "level": 0.95}},
            "scalars": {"log_loss": 1.09, "deflated_sharpe": 0.4}}


def register_kwargs(i: int) -> dict:
    return dict(config={"seed": i}, feature_manifest={"features": [{"name": "a"}, {"name": "b"}]},
                data_span=("2021-01-01T00:00:00+00:00", f"2021-0{i}-01T00:00:00+00:00"),
                git_revision=None, metrics=metrics(0.40 + i / 100, 0.5 * i), notes=f"test version {i}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str
    bucket: str

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 with one bucket, and dummy credentials in the environment."""
    pytest.importorskip("boto3")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3 = S3Server(f"http://127.0.0.1:{port}", "models")
    try:
        deadline = time.time() + 30
        while True:
            try:
                s3.client().create_bucket(Bucket=s3.bucket)
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield s3
    finally:
        server.terminate()
        server.wait(10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
