"""Fixtures for the web page's tests: `nanovllm serve` processes on the tiny checkpoint, and
Debian's chromium driven by playwright (installed by `make setup-dev`; never `playwright
install`, which downloads a browser of its own and fails offline)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from ui_helpers import API_KEY, CHROMIUM, CHROMIUM_ARGS, ServeProcess, start_server


@pytest.fixture(scope="session")
def open_server(tiny_ckpt) -> Iterator[ServeProcess]:
    server = start_server(tiny_ckpt)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def auth_server(tiny_ckpt) -> Iterator[ServeProcess]:
    server = start_server(tiny_ckpt, "--api-key", API_KEY)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def steppable_server(tiny_ckpt) -> Iterator[ServeProcess]:
    """With --enable-step-mode: a test can pause the engine and step it (the step-mode tests
    have their own, whose step count they read)."""
    server = start_server(tiny_ckpt, "--enable-step-mode")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no browser: {CHROMIUM} is missing (`make setup-dev` installs Debian's "
                    "chromium with apt-get where apt-get exists)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is missing: `make setup-dev` installs it")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh tab (own sessionStorage) at a laptop-sized viewport. Script errors fail the
    test; failed HTTP requests (a 401 on purpose) are the tests' own to assert."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error"
            and not msg.text.startswith("Failed to load resource") and errors.append(msg.text))
    yield page
    context.close()
    assert not errors, f"the page logged errors: {errors}"


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    """Where the tests leave their screenshots (a temporary directory, never committed)."""
    return tmp_path_factory.mktemp("ui-screenshots")


@pytest.fixture(scope="session")
def llama_server(llama_ckpt) -> Iterator[ServeProcess]:
    """A grouped-query Llama (4 query heads reading 2 key/value heads)."""
    server = start_server(llama_ckpt("llama-gqa"))
    yield server
    server.stop()
