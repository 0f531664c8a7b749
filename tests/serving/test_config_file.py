"""serve/config.yaml is a valid Serve config for this application: loopback host, the builder's import
path, one entry per deployment the builder creates, fractional CPUs (two cores hold all six replicas)."""

from __future__ import annotations

import importlib

import yaml
from ray.serve.schema import ServeDeploySchema

from cryptopredict.models.ensemble import MEMBER_NETS
from cryptopredict.serving.app import APP_NAME, BOARD_NAME, INGRESS_NAME, build_app
from cryptopredict.serving.settings import ServingConfig
from tests.conftest import REPO_ROOT


def test_config_file_matches_the_application() -> None:
    doc = yaml.safe_load((REPO_ROOT / "serve" / "config.yaml").read_text())
    config = ServeDeploySchema.model_validate(doc)
    assert config.http_options.host == "127.0.0.1"
    (app,) = config.applications
    assert app.name == APP_NAME and app.route_prefix == "/"
    module, attr = app.import_path.split(":")
    assert getattr(importlib.import_module(module), attr) is build_app
    assert importlib.import_module("serve.app").build_app is build_app  # `serve run serve.app:build_app`
    names = {d.name for d in app.deployments}
    assert names == {INGRESS_NAME, BOARD_NAME, *MEMBER_NETS}
    cpus = sum(d.ray_actor_options.num_cpus * (d.num_replicas or 1) for d in app.deployments)
    assert cpus <= 1.5, cpus
    defaults = ServingConfig()
    for d in app.deployments:
        if d.name in MEMBER_NETS:
            opts = defaults.members[d.name]
            assert d.user_config == {"max_batch_size": opts.max_batch_size,
                                     "batch_wait_timeout_s": opts.batch_wait_timeout_s}
            assert d.ray_actor_options.num_cpus == opts.num_cpus
