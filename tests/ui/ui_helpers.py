"""Helpers shared by the web page's tests (imported as `ui_helpers`)."""

from __future__ import annotations

import re

import httpx

from tests.server.server_helpers import ServeProcess

__all__ = ["API_KEY", "CHROMIUM", "CHROMIUM_ARGS", "ServeProcess", "metric", "snapshot",
           "start_server"]

API_KEY = "sk-ui-test"
CHROMIUM = "/usr/bin/chromium"  # Debian's package; the Makefile's `browser` step installs it
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def start_server(ckpt, *args: str) -> ServeProcess:
    """`nanovllm serve ckpt *args` in a subprocess, once it listens."""
    server = ServeProcess(str(ckpt), "--num-kv-blocks", "256", *args)
    try:
        server.wait_ready()
    except BaseException:
        server.kill()
        raise
    return server


def metric(url: str, name: str) -> float:
    """One sample of the server's /metrics (the first series of `name`)."""
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(rf"^{re.escape(name)}{{[^}}]*}} (\S+)$", text, re.M).group(1))


def snapshot(url: str, **kwargs) -> dict:
    """The engine view's snapshot (/ui/api/engine) as the page gets it."""
    response = httpx.get(f"{url}/ui/api/engine", timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()
