"""Request body size limits, answered with the API's JSON 413.

JSON bodies are limited to ``settings.max_body_bytes``; uploads (paths under ``/v1/uploads``)
to ``settings.max_upload_bytes`` plus room for the multipart framing. A declared
``Content-Length`` over the limit is refused before any byte is read; a body without one
(chunked) is counted as it streams and refused as soon as it passes the limit.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Multipart framing around an uploaded file (boundaries, part headers, a filename).
MULTIPART_SLACK = 64 * 1024
UPLOAD_PREFIX = "/v1/uploads"

_TOO_LARGE = {"loc": ["body"], "msg": "request body too large", "type": "too_large"}


class BodyLimitMiddleware:
    """Refuse request bodies over the limit of their route with 413."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes + MULTIPART_SLACK

    def limit_for(self, path: str) -> int:
        return self.max_upload_bytes if path.startswith(UPLOAD_PREFIX) else self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            item = {**_TOO_LARGE, "msg": f"request body of {declared} bytes is over {limit}"}
            await JSONResponse({"detail": [item]}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body over {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)
