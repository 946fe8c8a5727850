"""Serving limits and the checks that turn bad request input into clear 4xx errors.

Everything a client sends is checked here before it reaches the model: body size, image
bytes and pixels, text length, k. Each failure is an :class:`ApiError` with an HTTP status,
a short machine-readable code, a message and the request field it is about.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServeConfig:
    """Limits and batching settings of one server (defaults suit a single GPU)."""

    max_upload_bytes: int = 10 * 1024 * 1024  # one uploaded image, raw bytes
    max_video_bytes: int = 50 * 1024 * 1024  # one uploaded video file, raw bytes
    max_image_pixels: int = 25_000_000  # width * height, checked before decoding
    max_text_chars: int = 4000  # query text
    max_instruction_chars: int = 1000
    max_k: int = 100
    max_rerank_depth: int = 100  # candidates a single request may send to the reranker
    max_embed_items: int = 32  # items in one /embed request
    request_timeout_s: float = 60.0  # waiting for the model, per request
    max_batch_size: int = 16  # queries encoded together
    max_wait_ms: float = 2.0  # how long a batch waits for more callers once one arrives
    max_queue: int = 256  # queued queries beyond this get 503 at once
    alpha: float = 0.5  # fused = alpha * retrieval + (1 - alpha) * rerank (docs/format.md#retrieve-rerank-fuse)
    default_k: int = 10
    thumbnail_max_side: int = 1024

    @property
    def max_body_bytes(self) -> int:
        """A whole request body: base64 grows an upload by 4/3, plus room for the other fields."""
        largest = max(self.max_upload_bytes, self.max_video_bytes)
        return (largest * 4) // 3 + 64 * 1024 + self.max_embed_items * self.max_text_chars * 4

    def public(self) -> dict:
        """The limits a client needs to know (shown by /info and the page)."""
        return {
            "max_upload_bytes": self.max_upload_bytes,
            "max_video_bytes": self.max_video_bytes,
            "max_image_pixels": self.max_image_pixels,
            "max_text_chars": self.max_text_chars,
            "max_instruction_chars": self.max_instruction_chars,
            "max_k": self.max_k,
            "max_rerank_depth": self.max_rerank_depth,
            "max_embed_items": self.max_embed_items,
            "request_timeout_s": self.request_timeout_s,
            "max_batch_size": self.max_batch_size,
            "max_wait_ms": self.max_wait_ms,
            "alpha": self.alpha,
        }


class ApiError(Exception):
    """A request the server refuses, rendered as ``{"detail", "code", "field"}`` JSON."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        return {"detail": self.message, "code": self.code, "field": self.field}


def check_text(value: Any, *, field: str, limit: int) -> str | None:
    """A text field: None or blank becomes None; too long is a 400."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "bad_field", f"{field} must be a string", field=field)
    if len(value) > limit:
        raise ApiError(400, "text_too_long", f"{field} has {len(value)} characters, over the limit of {limit}",
                       field=field)
    return value if value.strip() else None


def check_int(value: Any, *, field: str, low: int, high: int, default: int) -> int:
    """An integer field (form fields arrive as strings) within [low, high]."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ApiError(400, "bad_field", f"{field} must be an integer", field=field)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ApiError(400, "bad_field", f"{field} must be an integer, got {value!r}", field=field) from None
    if isinstance(value, float) and value != number:
        raise ApiError(400, "bad_field", f"{field} must be an integer, got {value!r}", field=field)
    if not low <= number <= high:
        raise ApiError(400, "out_of_range", f"{field} must be between {low} and {high}, got {number}", field=field)
    return number


def check_bool(value: Any, *, field: str) -> bool:
    """A boolean field; form fields send "true" / "false" / "on" / "1" / "0"."""
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "1", "on", "yes"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"false", "0", "off", "no"}:
        return False
    raise ApiError(400, "bad_field", f"{field} must be true or false, got {value!r}", field=field)


def decode_base64(value: Any, *, field: str, limit: int) -> bytes:
    """Image bytes from base64 text, with or without a ``data:image/...;base64,`` prefix."""
    if not isinstance(value, str):
        raise ApiError(400, "bad_field", f"{field} must be a base64 string", field=field)
    if value.startswith("data:"):
        _, _, value = value.partition(",")
    if len(value) * 3 // 4 > limit + 3:
        raise ApiError(413, "upload_too_large", f"{field} is over the upload limit of {limit} bytes", field=field)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_base64", f"{field} is not valid base64", field=field) from None
    return data


def decode_image(data: bytes, *, field: str, config: ServeConfig):
    """An uploaded image as an RGB PIL image; 400 for non-images and corrupt files, 413 for big ones."""
    from PIL import Image, UnidentifiedImageError

    if len(data) == 0:
        raise ApiError(400, "empty_image", f"{field} is an empty file", field=field)
    if len(data) > config.max_upload_bytes:
        raise ApiError(413, "upload_too_large",
                       f"{field} has {len(data)} bytes, over the upload limit of {config.max_upload_bytes}",
                       field=field)
    try:
        # Image.open reads only the header, so the pixel check runs before any decoding; PIL's own
        # warning for big images is dropped (this check refuses them with the server's number).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
        with opened as handle:
            width, height = handle.size
            if width * height > config.max_image_pixels:
                raise ApiError(413, "image_too_large",
                               f"{field} is {width}x{height} = {width * height} pixels, over the limit of "
                               f"{config.max_image_pixels}", field=field)
            if width == 0 or height == 0:
                raise ApiError(400, "corrupt_image", f"{field} has zero size", field=field)
            handle.seek(0)  # the first frame of an animation
            handle.load()
            if handle.mode == "P" and "transparency" in handle.info:
                return handle.convert("RGBA").convert("RGB")  # the same pixels, without PIL's warning
            return handle.convert("RGB")
    except ApiError:
        raise
    except UnidentifiedImageError:
        raise ApiError(400, "not_an_image", f"{field}: the data is not an image (PNG, JPEG, WebP, GIF, BMP... expected)",
                       field=field) from None
    except Image.DecompressionBombError:  # over twice PIL's own guard, refused while reading the header
        raise ApiError(413, "image_too_large", f"{field} has more than {config.max_image_pixels} pixels, the "
                                               "limit (decompression-bomb guard)", field=field) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ApiError(400, "corrupt_image", f"{field}: corrupt or truncated image: {exc}",
                       field=field) from None


class BodyTooLarge(Exception):
    """Raised from inside ``receive`` when a request body passes the limit while streaming."""


class BodySizeLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` before they are buffered or spooled.

    A declared Content-Length over the limit is answered 413 at once; a chunked body is
    counted as it streams, and :class:`BodyTooLarge` stops it (the app maps it to 413).
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_json(send, 413, ApiError(
                413, "body_too_large", f"request body of {int(declared)} bytes is over the limit of "
                                       f"{self.max_bytes}").body())
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(f"request body is over the limit of {self.max_bytes} bytes")
            return message

        return await self.app(scope, limited_receive, send)


async def _send_json(send, status: int, body: dict) -> None:
    import json

    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
