"""Fixtures for the dashboard tests: the app served over HTTP in a thread, headless Chromium.

The browser is Debian's ``chromium`` (``scripts/services.sh`` installs it), driven by
Playwright through ``executable_path``: nothing is downloaded. Without it the browser tests
are skipped, except in CI (``CI`` set), where that is a failure.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from api.main import create_app
from cli.serve import free_port
from spartan.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (scripts/services.sh installs chromium; pip install -e '.[dev]')")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed")
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} not found")
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context and page; collects uncaught page errors in ``page.errors``.

    The pages' Content-Security-Policy is bypassed: Playwright's waits evaluate strings,
    and the XSS test must show the escaping works without the policy's help.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    tab = context.new_page()
    tab.errors = []
    tab.on("pageerror", lambda exc: tab.errors.append(str(exc)))
    tab.on(
        "dialog", lambda dialog: (tab.errors.append(f"dialog: {dialog.message}"), dialog.dismiss())
    )
    yield tab
    context.close()


def serve_app(app: FastAPI) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread; yields its URL, stops it afterwards."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def ui_url(app: FastAPI) -> Iterator[str]:
    """The API and dashboard (auth off, no worker: jobs stay queued) over HTTP."""
    yield from serve_app(app)


@pytest.fixture
def auth_url(settings: Settings) -> Iterator[str]:
    """The same with auth on."""
    settings.auth_enabled = True
    yield from serve_app(create_app(settings))
