"""Suite-wide fixtures: a guard that fails any test opening a non-loopback connection, and one Ray session."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

# Same environment as the Makefile, for runs of plain `pytest`.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_DATA = REPO_ROOT / "data"


class NonLoopbackConnection(AssertionError):
    """A test tried to reach the network beyond 127.0.0.1."""


def _is_loopback(host: object) -> bool:
    if not isinstance(host, str):
        return True  # AF_UNIX paths and the like
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a DNS name: resolving it is already a network call


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _guarded_connect(self: socket.socket, address, *a):  # type: ignore[no-untyped-def]
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        raise NonLoopbackConnection(f"test tried to connect to {address!r}")
    return _real_connect(self, address, *a)


def _guarded_connect_ex(self: socket.socket, address, *a):  # type: ignore[no-untyped-def]
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        raise NonLoopbackConnection(f"test tried to connect to {address!r}")
    return _real_connect_ex(self, address, *a)


def _guarded_getaddrinfo(host, *a, **k):  # type: ignore[no-untyped-def]
    h = host.decode() if isinstance(host, bytes) else host
    if h is not None and not _is_loopback(h):
        raise NonLoopbackConnection(f"test tried to resolve {host!r}")
    return _real_getaddrinfo(host, *a, **k)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test: connecting to or resolving anything but loopback raises NonLoopbackConnection."""
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", _guarded_getaddrinfo)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray runtime for the whole suite (started lazily by the first test that needs it)."""
    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=256 * 1024**2, include_dashboard=False,
             log_to_driver=False, ignore_reinit_error=True)
    try:
        yield
    finally:
        ray.shutdown()
