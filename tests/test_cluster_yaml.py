"""cluster.yaml parses and satisfies the schema that Ray's cluster launcher validates against."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

from tests.conftest import REPO_ROOT

SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_rays_schema(cluster: dict) -> None:
    jsonschema.validate(cluster, SCHEMA)
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))  # Ray's own checks, provider defaults filled in


def test_cluster_has_a_cpu_head_and_cuda_and_rocm_gpu_workers(cluster: dict) -> None:
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert "GPU" not in head["resources"] and head["max_workers"] == 0
    assert types["gpu_cuda"]["resources"]["GPU"] >= 1 and "cuda" in types["gpu_cuda"]["docker"]["worker_image"]
    assert types["gpu_rocm"]["resources"]["GPU"] >= 1
    assert types["gpu_rocm"]["docker"]["worker_image"].startswith("rocm/pytorch")
    assert any("pip install" in c and "-e ." in c for c in cluster["setup_commands"])


def test_the_schema_check_catches_a_broken_config(cluster: dict) -> None:
    broken = copy.deepcopy(cluster)
    del broken["provider"]
    with pytest.raises(jsonschema.ValidationError, match="'provider' is a required property"):
        jsonschema.validate(broken, SCHEMA)
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_cuda"]["resources"]["GPU"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)
