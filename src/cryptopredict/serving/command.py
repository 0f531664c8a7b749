"""``cryptopredict serve``: start the Ray Serve application on the local embedded Ray (or ``RAY_ADDRESS`` /
``ray.address``) and block until Ctrl-C or SIGTERM.

The application is ``cryptopredict.serving.app`` (the one ``serve/config.yaml`` deploys).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time

from cryptopredict.config import Config

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", default=None, help="serve this saved ensemble directory (default: "
                        "serving.model_dir, else the registry's champion)")
    parser.add_argument("--version", default=None, help="version label of --model-dir (default: its name)")
    parser.add_argument("--ready-timeout", type=float, default=300.0,
                        help="seconds to wait for the application to become healthy")


def _wait_healthy(url: str, timeout: float) -> None:
    """Until the proxy routes to the app (it answers 404 for a few seconds after start)."""
    import requests

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{url}/healthz", timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise TimeoutError(f"the application did not answer {url}/healthz within {timeout:g} s ({last})")


def run(cfg: Config, args: argparse.Namespace) -> int:
    """Deploy, print where it listens, block until a signal; returns the exit code."""
    from ray import serve

    from cryptopredict.parallel import connect_ray
    from cryptopredict.serving.app import APP_NAME, build_app, serving_paths

    cfg = serving_paths(cfg)
    started = connect_ray(cfg)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        sc = cfg.serving
        serve.start(http_options={"host": sc.host, "port": sc.port})
        app = build_app({"config_json": cfg.model_dump(mode="json"), "model_dir": args.model_dir,
                         "version": args.version})
        serve.run(app, name=APP_NAME, route_prefix="/")
        url = f"http://{sc.host}:{sc.port}"
        _wait_healthy(url, args.ready_timeout)
        print(f"serving on {url} (docs {url}/docs, dashboard {url}/dashboard); Ctrl-C or SIGTERM stops", flush=True)
        while not stop.wait(1.0):
            pass
        print("stopping", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            serve.shutdown()
        finally:
            if started:
                import ray

                ray.shutdown()
