"""The retrain trigger of ``monitor --retrain-on-drift``: when a model version's feature drift rule becomes
active, call a hook once (not again until the drift has cleared; persisted in the log root).

The default hook starts ``jobs/retrain.py`` without waiting for it: ``ray job submit --no-wait`` when
``RAY_ADDRESS`` is set, else a detached local subprocess. A hook that raises is logged and tried again at
the next evaluation.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from cryptopredict.monitoring.alerts import Condition
from cryptopredict.monitoring.log import LogStore

log = logging.getLogger(__name__)

STATE_FILE = "monitor_state/retrain.json"
DRIFT_RULES = frozenset({"feature_max_psi_above", "feature_drifted_share_above"})


@dataclass(frozen=True)
class RetrainRequest:
    """Why a retrain is asked for: the model version whose inputs drifted, and the active conditions."""

    model_version: str
    reasons: tuple[str, ...]
    config_path: str | None


RetrainHook = Callable[[RetrainRequest], Any]


def retrain_command(request: RetrainRequest, script: str, extra_args: list[str],
                    ray_address: str | None = None) -> list[str]:
    """The command line the default hook runs (``ray job submit`` when ``ray_address`` is given)."""
    args = [script] + (["--config", request.config_path] if request.config_path else []) + list(extra_args)
    if ray_address:
        ray = shutil.which("ray") or "ray"
        return [ray, "job", "submit", "--address", ray_address, "--no-wait", "--working-dir", ".", "--",
                "python", *args]
    return [sys.executable, *args]


def default_retrain_hook(script: str = "jobs/retrain.py", extra_args: list[str] | None = None) -> RetrainHook:
    """A hook that starts the retrain job and returns its process id (it does not wait for the job)."""

    def hook(request: RetrainRequest) -> int:
        cmd = retrain_command(request, script, list(extra_args or []), os.environ.get("RAY_ADDRESS"))
        log.warning("drift on %s: starting retrain: %s", request.model_version, " ".join(cmd))
        proc = subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL)
        return proc.pid

    return hook


class RetrainTrigger:
    """Calls the hook once per drift episode of each model version."""

    def __init__(self, store: LogStore, hook: RetrainHook) -> None:
        self.store, self.hook = store, hook

    def triggered(self) -> dict[str, dict[str, Any]]:
        """model_version → the record of the retrain started in the current drift episode."""
        return dict((self.store.read_json(STATE_FILE) or {}).get("triggered", {}))

    def process(self, conditions: list[Condition], *, config_path: str | None = None,
                now: pd.Timestamp | None = None) -> list[str]:
        """Start a retrain for each model version whose drift just became active; forget versions whose
        drift was evaluated and is inactive. The versions retrained now are returned."""
        now_s = str(pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now))
        state = self.triggered()
        by_version: dict[str, list[Condition]] = {}
        for c in conditions:
            if c.rule in DRIFT_RULES:
                by_version.setdefault(c.subject["model_version"], []).append(c)
        started = []
        for version, conds in sorted(by_version.items()):
            active = [c for c in conds if c.active]
            if not active:
                if state.pop(version, None) is not None:
                    log.info("drift on %s cleared: a later drift may trigger a retrain again", version)
                continue
            if version in state:
                continue
            request = RetrainRequest(version, tuple(c.message for c in active), config_path)
            try:
                result = self.hook(request)
            except Exception:  # noqa: BLE001 - the monitor keeps running; retried at the next evaluation
                log.exception("retrain hook for %s failed; will try again at the next evaluation", version)
                continue
            state[version] = {"at": now_s, "reasons": list(request.reasons), "result": str(result)}
            started.append(version)
        self.store.write_json(STATE_FILE, {"triggered": state, "updated_at": now_s})
        return started
