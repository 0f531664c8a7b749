"""The model board: the one place that says which model version the application serves.

A tiny deployment (one replica) holding (version, source, generation), ``source`` a
``serving.predictor.ModelSource`` as a dict (a registry version each replica fetches itself, or a model
directory). ``/admin/reload`` on any ingress
replica publishes the new model here after loading it; every ingress replica polls the board and loads
the published model (new replicas, and replicas restarted after a failure, start from it). Kept free of
heavy imports so that its replica stays small.
"""

from __future__ import annotations

from typing import Any

from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0.01}, num_replicas=1, max_ongoing_requests=100)
class ModelBoard:
    def __init__(self, source: dict[str, Any]) -> None:
        self._state: dict[str, Any] = {"version": source["version"], "source": dict(source), "generation": 0}

    def get(self) -> dict[str, Any]:
        return dict(self._state)

    def publish(self, source: dict[str, Any]) -> dict[str, Any]:
        """Make ``source`` the served model; returns the new state (generation + 1)."""
        self._state = {"version": source["version"], "source": dict(source),
                       "generation": self._state["generation"] + 1}
        return dict(self._state)
