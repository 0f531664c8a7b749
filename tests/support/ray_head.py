"""A local Ray head as `ray start --head` starts one (dashboard on 127.0.0.1, every port free and its own), for
the tests of `ray job submit` and `serve deploy`. Stopped by its process group: never `ray stop`, which stops
every Ray process on the machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def head_env(**extra: str) -> dict[str, str]:
    """This process's environment for the Ray CLI: loopback Ray, no auth token, no telemetry, no
    ``RAY_ADDRESS``, the venv's scripts first on PATH (as after ``source .venv/bin/activate``)."""
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0", **extra)
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@contextmanager
def local_head(env: dict[str, str], num_cpus: int = 2) -> Iterator[tuple[subprocess.Popen, str]]:
    """Yields (the head process, its dashboard address ``http://127.0.0.1:<port>``)."""
    gcs, dash, agent_http, agent_grpc, metrics, runtime_env = (free_port() for _ in range(6))
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--num-cpus={num_cpus}", f"--port={gcs}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         # own ports: the suite's in-process Ray may hold the default agent ports
         f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield head, f"http://127.0.0.1:{dash}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(30)
