"""Errors a person can fix, answered in one line that names the fix (no traceback).

``explain(exc)`` is that line for an unreachable service, an error answer of the service
(4xx/5xx), a bad ``SPARTAN_*`` setting and a job store that cannot be opened; None for
anything else (a bug, which keeps its traceback). ``cli.main.main`` applies it to every
command; the client commands also apply it themselves (``cli.service``).
"""

from __future__ import annotations

import httpx
from pydantic import ValidationError
from pydantic_settings import SettingsError
from sqlalchemy.exc import ArgumentError, OperationalError

from spartan.client import SpartanAPIError

EXIT_CODE = 2

_HINTS = {
    400: "fix the field named and try again",
    401: "set SPARTAN_API_KEY to a key from `spartan apikey create --owner NAME` on the server",
    403: "this key may not do that; ask for a key of the owner",
    404: "check the id: `spartan jobs` lists your jobs",
    409: "use another --idempotency-key, or none",
    413: "the body is over the server's SPARTAN_MAX_BODY_BYTES or SPARTAN_MAX_UPLOAD_BYTES",
    422: "fix the field named and try again",
    429: "wait for your jobs to finish or cancel queued ones, then try again",
    503: "the service is not ready (database or broker down); try again shortly",
}


def explain(exc: BaseException) -> str | None:
    """One line saying what went wrong and how to fix it, or None when it is not such an
    error."""
    if isinstance(exc, SpartanAPIError):
        return _api_error(exc)
    if isinstance(exc, httpx.TransportError):
        url = _service_url(exc)
        return (
            f"cannot reach the spartan service at {url} ({_first_line(exc) or type(exc).__name__}):"
            " start it with `spartan serve`, or set SPARTAN_API_URL to where it runs"
        )
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        return _bad_setting(exc)
    if isinstance(exc, SettingsError):
        return f"bad setting: {_first_line(exc)}; give a JSON value or fix the variable"
    if isinstance(exc, ArgumentError | OperationalError):
        return (
            f"cannot open the job store ({_first_line(exc)}): check SPARTAN_DATABASE_URL "
            "and that the database is up"
        )
    return None


def _api_error(exc: SpartanAPIError) -> str:
    problems = _detail_items(exc.detail)
    hint = _HINTS.get(exc.status_code, "see the service's logs" if exc.status_code >= 500 else "")
    if exc.status_code in (400, 422) and any(
        "block_shape" in loc or "nm" in loc for loc, _ in problems
    ):
        hint = "leave the layers named out with --exclude NAME (or choose a shape that tiles)"
    if exc.status_code == 404 and any(loc == "path.sweep_id" for loc, _ in problems):
        hint = "check the id: `spartan sweeps` lists your sweeps"
    if exc.retry_after:
        hint = f"try again in {exc.retry_after} s" + (f" ({hint})" if hint else "")
    text = "; ".join(f"{loc}: {msg}" if loc else msg for loc, msg in problems) or "no detail"
    return f"error {exc.status_code}: {text}" + (f" -> {hint}" if hint else "")


def _detail_items(detail: object) -> list[tuple[str, str]]:
    if not isinstance(detail, list):
        return [("", " ".join(str(detail).split()))]
    items = []
    for item in detail:
        if isinstance(item, dict):
            loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
            items.append((loc, " ".join(str(item.get("msg", "")).split())))
        else:
            items.append(("", " ".join(str(item).split())))
    return items


def _bad_setting(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err.get("loc") else ""
        name = f"SPARTAN_{field.upper()}" if field else "a SPARTAN_ setting"
        value = err.get("input")
        shown = f"={value!r}" if isinstance(value, str | int | float) else ""
        parts.append(f"{name}{shown}: {err['msg']}")
    return "bad setting " + "; ".join(parts) + " -> fix or unset the variable"


def _service_url(exc: httpx.TransportError) -> str:
    try:
        url = exc.request.url
    except RuntimeError:  # an error raised without its request
        return "SPARTAN_API_URL"
    return f"{url.scheme}://{url.netloc.decode()}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
