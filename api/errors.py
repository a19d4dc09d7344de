"""The one place where errors become HTTP answers.

Every error body has the shape ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}``:
``loc`` names the offending field (``["body", "sparsity", "sparsity"]``), ``msg`` says why.
A ``spartan.errors.FieldError`` carries its location in the request body (400; 404 for an
``UnknownReference``); any other ``ValueError`` is a 400 about the body as a whole.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from spartan.errors import FieldError, UnknownReference

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with a status code and the field it is about.

    Args:
        status_code: the HTTP status to answer with.
        msg: what is wrong, for a person.
        loc: where, e.g. ``("path", "job_id")``.
        type: a short machine-readable kind.
        headers: extra response headers (e.g. ``WWW-Authenticate``).
    """

    def __init__(
        self,
        status_code: int,
        msg: str,
        *,
        loc: Sequence[str | int] = (),
        type: str = "value_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(msg)
        self.status_code = status_code
        self.msg = msg
        self.loc = list(loc)
        self.type = type
        self.headers = headers


def not_found(what: str, loc: Sequence[str | int]) -> ApiError:
    """The 404 given both for missing objects and for other owners' objects."""
    return ApiError(404, f"{what} not found", loc=loc, type="not_found")


def error_body(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON body of an error answer."""
    return {"detail": items}


def _validation_items(errors: Sequence[Any], *, prefix: Sequence[str | int] = ()) -> list[dict]:
    # Pydantic's error dicts may hold the raw input and exception objects in "ctx"; keep only
    # what is JSON-safe and useful.
    items = []
    for err in errors:
        loc = [*prefix, *(p if isinstance(p, int) else str(p) for p in err.get("loc", ()))]
        msg = str(err.get("msg", "invalid value"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        items.append({"loc": loc, "msg": msg, "type": str(err.get("type", "value_error"))})
    return items


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    item = {"loc": exc.loc, "msg": exc.msg, "type": exc.type}
    return JSONResponse(error_body([item]), status_code=exc.status_code, headers=exc.headers)


async def _request_validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(error_body(_validation_items(exc.errors())), status_code=422)


async def _pydantic_validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ValidationError)
    return JSONResponse(error_body(_validation_items(exc.errors(), prefix=("body",))), 422)


async def _field_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FieldError)
    log.info("bad request %s %s: %s", request.method, request.url.path, exc)
    missing = isinstance(exc, UnknownReference)
    item = {
        "loc": ["body", *exc.loc],
        "msg": exc.msg,
        "type": "not_found" if missing else "value_error",
    }
    return JSONResponse(error_body([item]), status_code=404 if missing else 400)


async def _value_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ValueError)
    log.info("bad request %s %s: %s", request.method, request.url.path, exc)
    item = {"loc": ["body"], "msg": str(exc) or type(exc).__name__, "type": "value_error"}
    return JSONResponse(error_body([item]), status_code=400)


async def _http_exception(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    item = {"loc": [], "msg": str(exc.detail), "type": f"http_{exc.status_code}"}
    if exc.status_code == 413:
        item = {"loc": ["body"], "msg": str(exc.detail), "type": "too_large"}
    return JSONResponse(
        error_body([item]), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


def install(app: FastAPI) -> None:
    """Register every exception handler on ``app``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(ValidationError, _pydantic_validation)
    app.add_exception_handler(FieldError, _field_error)
    app.add_exception_handler(ValueError, _value_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
