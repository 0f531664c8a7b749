"""The model board: the one place that says which model version the application serves.

A tiny deployment (one replica) holding (version, model_dir, generation). ``/admin/reload`` on any ingress
replica publishes the new model here after loading it; every ingress replica polls the board and loads
the published model (new replicas, and replicas restarted after a failure, start from it). Kept free of
heavy imports so that its replica stays small.
"""

from __future__ import annotations

from typing import Any

from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0.01}, num_replicas=1, max_ongoing_requests=100)
class ModelBoard:
    def __init__(self, version: str, model_dir: str) -> None:
        self._state: dict[str, Any] = {"version": version, "model_dir": model_dir, "generation": 0}

    def get(self) -> dict[str, Any]:
        return dict(self._state)

    def publish(self, version: str, model_dir: str) -> dict[str, Any]:
        """Make (version, model_dir) the served model; returns the new state (generation + 1)."""
        self._state = {"version": version, "model_dir": model_dir, "generation": self._state["generation"] + 1}
        return dict(self._state)
