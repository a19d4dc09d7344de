"""A small Python client for the spartan REST API (httpx), used by the CLI.

    client = SpartanClient("http://127.0.0.1:8000", api_key=None)
    job = client.submit(spec_dict)
    for event in client.events(job["id"]):
        print(event.event, event.data)
    client.download(job["id"], "model.safetensors", Path("model.safetensors"))
    sweep = client.submit_sweep(spec_without_target, cost_fraction=[0.5, 0.3, 0.1])
    print(client.wait_sweep(sweep["id"])["frontier"])

Errors from the service raise ``SpartanAPIError`` carrying the status code and the
``detail`` list (``[{"loc": [...], "msg": ...}]``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from spartan.settings import Settings

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
SWEEP_FINISHED = frozenset({"succeeded", "partial", "failed", "cancelled"})


class SpartanAPIError(Exception):
    """A 4xx/5xx answer from the service."""

    def __init__(self, status_code: int, detail: Any, *, retry_after: str | None = None) -> None:
        self.status_code = status_code
        self.detail = detail
        self.retry_after = retry_after  # the Retry-After header of a 429 or 503, if any
        super().__init__(f"HTTP {status_code}: {format_detail(detail)}")


def format_detail(detail: Any) -> str:
    """``[{"loc": ["body", "a"], "msg": "m"}]`` as ``"a: m"``, one problem per line."""
    if isinstance(detail, list):
        lines = []
        for item in detail:
            if isinstance(item, dict):
                loc = [str(p) for p in item.get("loc", []) if p not in ("body",)]
                where = ".".join(loc)
                lines.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
            else:
                lines.append(str(item))
        return "\n".join(lines)
    return str(detail)


@dataclass(frozen=True)
class Event:
    """One server-sent event: its type, id and decoded JSON data."""

    event: str
    id: str | None
    data: Any


@dataclass(frozen=True)
class LogChunk:
    """A piece of a job's log: its text, the offset to read next, the job's status then."""

    text: str
    next_offset: int
    status: str


class SpartanClient:
    """Talks to one spartan service.

    Args:
        base_url: the service root, e.g. ``http://127.0.0.1:8000``.
        api_key: bearer token when the service has auth on.
        timeout: seconds for ordinary requests (event streams have no read timeout).
        transport: an httpx transport (e.g. ``httpx.MockTransport`` in tests).
        http: a ready ``httpx.Client`` to use instead (e.g. FastAPI's ``TestClient``).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_http = http is None
        if http is not None:
            http.headers.update(headers)
            self._http = http
        else:
            self._http = httpx.Client(
                base_url=base_url.rstrip("/"),
                headers=headers,
                timeout=timeout,
                transport=transport,
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> SpartanClient:
        """A client for ``settings.api_url`` with ``settings.api_key``."""
        return cls(settings.api_url, api_key=settings.api_key or None)

    def close(self) -> None:
        """Close the connection pool (an ``http`` client passed in is left open)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> SpartanClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # plumbing ---------------------------------------------------------------------------------
    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, url, **kwargs)
        _raise_for(response)
        return response

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        return self._request(method, url, **kwargs).json()

    # service ----------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")

    def ready(self) -> dict[str, Any]:
        """The readiness answer; raises ``SpartanAPIError`` (503) when not ready."""
        return self._json("GET", "/readyz")

    def models(self, *, source: str | None = None, q: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in {"source": source, "q": q}.items() if v is not None}
        return self._json("GET", "/v1/models", params=params)

    def cost_models(self) -> dict[str, Any]:
        return self._json("GET", "/v1/cost-models")

    # jobs -------------------------------------------------------------------------------------
    def submit(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a job body (the job spec as a dict); returns ``{"id", "status"}``."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/v1/jobs", json=spec, headers=headers)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def jobs(
        self, *, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return self._json("GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[Event]:
        """Progress and epoch events until the job ends (the last one has ``event == "end"``);
        with ``last_event_id`` (an ``Event.id`` seen before) the stream resumes after it."""
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
        url = f"/v1/jobs/{job_id}/events"
        with self._http.stream("GET", url, timeout=timeout, headers=headers) as response:
            if response.is_error:
                response.read()
                _raise_for(response)
            yield from parse_sse(response.iter_lines())

    def metrics(self, job_id: str) -> dict[str, Any]:
        """The job's metric series so far: ``{"job_id", "points", "epochs", "last_id"}``."""
        return self._json("GET", f"/v1/jobs/{job_id}/metrics")

    def logs(self, job_id: str, *, offset: int = 0) -> LogChunk:
        """The job's log from byte ``offset`` on (at most what one answer holds)."""
        response = self._request("GET", f"/v1/jobs/{job_id}/logs", params={"offset": offset})
        return LogChunk(
            text=response.content.decode("utf-8", errors="replace"),
            next_offset=int(response.headers.get("x-log-offset", offset)),
            status=response.headers.get("x-job-status", ""),
        )

    def follow_logs(self, job_id: str, *, poll_s: float = 1.0) -> Iterator[str]:
        """The job's log as it grows, chunk by chunk, until the job has finished and every
        line is read."""
        offset = 0
        while True:
            chunk = self.logs(job_id, offset=offset)
            if chunk.text:
                yield chunk.text
            if chunk.next_offset == offset and chunk.status in TERMINAL_STATUSES:
                return
            if chunk.next_offset == offset:
                time.sleep(poll_s)
            offset = chunk.next_offset

    def artifacts(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}/artifacts")

    def artifact_json(self, job_id: str, name: str) -> Any:
        return self._json("GET", f"/v1/jobs/{job_id}/artifacts/{name}")

    def download(self, job_id: str, name: str, dest: Path) -> Path:
        """Stream one artifact to ``dest`` (a file, or a folder to put ``name`` in)."""
        dest = dest / name if dest.is_dir() else dest
        tmp = dest.with_name(dest.name + ".part")
        with self._http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as response:
            if response.is_error:
                response.read()
                _raise_for(response)
            with tmp.open("wb") as f:
                for chunk in response.iter_bytes(1 << 20):
                    f.write(chunk)
        tmp.replace(dest)
        return dest

    # sweeps -----------------------------------------------------------------------------------
    def submit_sweep(
        self,
        spec: dict[str, Any],
        *,
        sparsity: list[float] | None = None,
        cost_fraction: list[float] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit a sweep: ``spec`` (a job spec without a target) at each target of one list;
        returns ``{"id", "status", "jobs": [{"id", "target", "status"}, ...]}``."""
        targets = {
            k: v for k, v in {"sparsity": sparsity, "cost_fraction": cost_fraction}.items() if v
        }
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {"spec": spec, "targets": targets}
        return self._json("POST", "/v1/sweeps", json=body, headers=headers)

    def sweep(self, sweep_id: str) -> dict[str, Any]:
        """A sweep: status, child jobs, points and the Pareto ``frontier``."""
        return self._json("GET", f"/v1/sweeps/{sweep_id}")

    def sweeps(self, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        return self._json("GET", "/v1/sweeps", params={"limit": limit, "offset": offset})

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        """Cancel every unfinished child of a sweep; returns the sweep."""
        return self._json("POST", f"/v1/sweeps/{sweep_id}/cancel")

    def sweep_plot(self, sweep_id: str, *, x: str = "cost_fraction") -> bytes:
        """The frontier plot (PNG) against ``cost_fraction`` or ``latency_ms``."""
        return self._request("GET", f"/v1/sweeps/{sweep_id}/frontier.png", params={"x": x}).content

    def wait_sweep(
        self,
        sweep_id: str,
        *,
        poll_s: float = 2.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the sweep until every child has finished; returns it then.

        Args:
            on_update: called with every answer read (e.g. to draw progress).
        """
        while True:
            sweep = self.sweep(sweep_id)
            if on_update is not None:
                on_update(sweep)
            if sweep["status"] in SWEEP_FINISHED:
                return sweep
            time.sleep(poll_s)

    # uploads and plans ------------------------------------------------------------------------
    def upload(self, path: Path) -> dict[str, Any]:
        """Upload a .safetensors checkpoint; returns the upload (its ``id`` is the reference)."""
        with path.open("rb") as f:
            files = {"file": (path.name, f, "application/octet-stream")}
            return self._json("POST", "/v1/uploads", files=files)

    def plan(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/v1/plans", json=body)


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail", response.text)
    except (json.JSONDecodeError, AttributeError):
        detail = response.text
    raise SpartanAPIError(
        response.status_code, detail, retry_after=response.headers.get("retry-after")
    )


def parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Decode a ``text/event-stream`` line by line (comments and keep-alives skipped)."""
    event, event_id, data = "message", None, []
    for line in lines:
        if not line:
            if data:
                yield Event(event=event, id=event_id, data=json.loads("\n".join(data)))
            event, event_id, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
    if data:
        yield Event(event=event, id=event_id, data=json.loads("\n".join(data)))
