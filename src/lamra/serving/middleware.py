"""ASGI middleware of the server: security headers and one log line per request."""

from __future__ import annotations

import logging
import time

# ``lamra serve`` shows this logger's INFO lines (one per request) unless --no-access-log.
access_logger = logging.getLogger("lamra.serving.access")


class SecurityHeaders:
    """ASGI middleware adding nosniff and no-referrer to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ObserveResponses:
    """ASGI middleware base: :meth:`observe` runs once per HTTP request with the response's status
    and the seconds from the request's arrival to the end of its body (500 if none was sent)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def recording_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.observe(scope, status["code"], time.perf_counter() - started)

    def observe(self, scope, status: int, seconds: float) -> None:
        raise NotImplementedError


class AccessLog(ObserveResponses):
    """One INFO line per request on ``lamra.serving.access``: ``GET /search 200 12.3 ms``.

    The path only: query strings and bodies (the user's queries) are not logged. The time runs
    from the request's arrival to the end of its response body.
    """

    def observe(self, scope, status: int, seconds: float) -> None:
        if access_logger.isEnabledFor(logging.INFO):
            access_logger.info("%s %s %d %.1f ms", scope.get("method", "?"), scope.get("path", "?"), status,
                               seconds * 1000)
