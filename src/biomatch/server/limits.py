"""Request-body limit as an ASGI middleware: refuse on Content-Length, stop reading once over.

FastAPI parses a multipart form before the handler runs, so a size check in the handler comes
after the whole body was read (and spooled). Here a body is refused from its Content-Length
header before any byte is read, and the byte stream itself is counted while it arrives: the
first chunk past the limit (a lying or missing length) ends the read and the answer is 413.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def _json(send: Send, status: int, kind: str, detail: str) -> None:
    body = json.dumps({"error": kind, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """``limit_for(path)`` gives the largest body (bytes) accepted for a path."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        length = headers.get(b"content-length")
        if length is None:
            await _json(send, 411, "LengthRequired", "send a Content-Length header")
            return
        text = length.decode("latin-1").strip()
        if not text.isdigit() or int(text) > limit:
            await _json(send, 413, "PayloadTooLarge", f"request body over the limit of {limit} bytes")
            return
        state = {"received": 0, "over": False, "started": False}
        declared = int(text)

        async def limited_receive() -> Message:
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > min(limit, declared):
                    state["over"] = True  # stop reading: the app sees a disconnect
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:
                return  # the app's answer to the cut-off body is replaced by the 413 below
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await _json(send, 413, "PayloadTooLarge", f"request body over the limit of {limit} bytes")
