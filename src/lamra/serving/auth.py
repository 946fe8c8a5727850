"""API keys: every route but /health (and the page's static shell) needs ``Authorization: Bearer KEY``.

Keys are compared in constant time: each given key and each configured key are hashed (so their
lengths leak nothing) and every configured key is compared, whichever matches. A refusal is a 401
with the OpenAI error body, which the ``openai`` and ``cohere`` SDKs read as an authentication error.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
from typing import Iterable

# The environment variable ``lamra serve`` reads keys from (several: comma separated).
API_KEY_ENV = "LAMRA_API_KEY"

# Open without a key: liveness, and the page's shell (HTML, script, style, icon: no data in them;
# the page then asks for the key) and the API description.
OPEN_PATHS = frozenset({"/health", "/", "/favicon.ico", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPEN_PREFIXES = ("/static/",)


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def split_keys(values: Iterable[str | None]) -> tuple[str, ...]:
    """Keys from options and the environment: comma-separated lists, blanks dropped, order kept."""
    keys: list[str] = []
    for value in values:
        for key in (value or "").split(","):
            key = key.strip()
            if key and key not in keys:
                keys.append(key)
    return tuple(keys)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class KeyCheck:
    """The configured keys, held as digests; ``accepts(given)`` compares with every one."""

    def __init__(self, keys: Iterable[str]):
        self._digests = [_digest(key) for key in keys]
        if not self._digests:
            raise ValueError("KeyCheck needs at least one key")

    def accepts(self, given: str | None) -> bool:
        candidate = _digest(given or "")
        matched = False
        for digest in self._digests:  # no early exit: the time does not say which key matched
            matched |= hmac.compare_digest(candidate, digest)
        return matched and given is not None


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header (None without one)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def openai_error(message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> dict:
    """The error body of the OpenAI API (what its SDK, and vLLM's clients, read)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ApiKeyAuth:
    """ASGI middleware: a request without a right bearer key gets a 401 before any route runs."""

    def __init__(self, app, keys: Iterable[str]):
        self.app = app
        self.check = KeyCheck(keys)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or is_open(scope.get("path", "")):
            return await self.app(scope, receive, send)
        given = bearer_token(scope.get("headers") or [])
        if self.check.accepts(given):
            return await self.app(scope, receive, send)
        message = ("missing API key: send the header 'Authorization: Bearer KEY'" if given is None
                   else "incorrect API key")
        payload = json.dumps(openai_error(message, param="Authorization", code="invalid_api_key")).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()),
                                (b"www-authenticate", b'Bearer realm="lamra"')]})
        await send({"type": "http.response.body", "body": payload})


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:  # a name: loopback only if every address it resolves to is
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)
