"""Fixtures for the API tests: an app on a temporary embedded home, a client, broker peeking.

The broker is kombu's SQLAlchemy transport on a SQLite file under the temporary home and no
worker consumes it, so submitted jobs stay queued and tests can read the messages.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from kombu import Connection

from api.main import create_app
from spartan.settings import Settings


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A small valid job body (resnet18 on digits at 16x16, 90% sparse)."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "model": {"source": "torchvision", "name": "resnet18", "input_size": [3, 16, 16]},
        "data": {"source": "digits"},
        "sparsity": {"method": "spartan", "sparsity": 0.9},
        "training": {"epochs": 1, "batch_size": 64},
    }
    for key, value in overrides.items():
        spec[key] = value
    return spec


def broker_messages(settings: Settings, queue: str = "default") -> list[dict[str, Any]]:
    """Drain the messages waiting on ``queue``: ``[{"task": name, "args": [...]}]``."""
    out = []
    with Connection(settings.broker_url) as conn:
        q = conn.SimpleQueue(queue)
        try:
            while True:
                try:
                    msg = q.get(block=False)
                except q.Empty:
                    break
                body = msg.body if isinstance(msg.body, bytes | str) else json.dumps(msg.body)
                args = json.loads(body)[0]
                out.append({"task": msg.headers.get("task"), "args": args})
                msg.ack()
        finally:
            q.close()
    return out


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c
