"""Asking the Serve app to load the new champion: ``POST {serve_url}/admin/reload`` with
``Authorization: Bearer <token>`` (the token from the environment variable ``serving.admin_token_env``).

No Serve app answering is normal (none deployed, or it is restarting: it loads the champion when it starts),
so it is logged and reported, not raised.
"""

from __future__ import annotations

import logging
import os

import requests

from cryptopredict.config import Config

log = logging.getLogger(__name__)


def serve_url(cfg: Config) -> str:
    rc = cfg.registry.retrain
    return (rc.serve_url or f"http://{cfg.serving.host}:{cfg.serving.port}").rstrip("/")


def request_reload(cfg: Config, model: str, version: str) -> dict[str, object]:
    """POST the reload; returns {url, status, detail} where status is "reloaded", "http <code>" or
    "no answer"."""
    url = f"{serve_url(cfg)}/admin/reload"
    token_env = cfg.serving.admin_token_env
    token = os.environ.get(token_env)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if not token:
        log.warning("%s is not set: asking %s to reload without a token (it will refuse)", token_env, url)
    try:
        resp = requests.post(url, json={"model": model, "version": version}, headers=headers,
                             timeout=cfg.registry.retrain.reload_timeout_s)
    except requests.RequestException as exc:
        log.info("no Serve app answered at %s (%s); it loads the champion when it starts", url,
                 type(exc).__name__)
        return {"url": url, "status": "no answer", "detail": f"{type(exc).__name__}: {exc}"[:300]}
    if resp.ok:
        log.info("Serve app at %s reloaded (%s)", url, resp.status_code)
        return {"url": url, "status": "reloaded", "detail": resp.text[:300]}
    log.warning("Serve app at %s refused the reload: HTTP %s %s", url, resp.status_code, resp.text[:200])
    return {"url": url, "status": f"http {resp.status_code}", "detail": resp.text[:300]}
