"""Reading a /search request (JSON or multipart) and keeping its uploaded files.

A query may carry an image (decoded in memory, see :func:`lamra.serving.limits.decode_image`)
and a video (an mp4, webm, gif ... file). A video is written to a temporary file for the
decoder (PyAV reads files), used for that one request and removed after it; its temporary
path never appears in a response (:func:`hide_upload_paths`).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from pydantic import ValidationError

from .limits import ApiError, ServeConfig, decode_base64
from .schemas import SEARCH_MULTIPART_SCHEMA, SearchRequest

UPLOAD_PREFIX = "lamra-upload-"
FILE_FIELDS = ("image", "video")


@dataclass
class Uploads:
    """The files of one request: image bytes, and a video as (bytes, file name or None)."""

    image: bytes | None = None
    video: tuple[bytes, str | None] | None = None


async def read_search_fields(request: Request, config: ServeConfig) -> tuple[dict, Uploads]:
    """The fields of a /search request and its uploads, from JSON or a multipart form."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "bad_json", "the body must be a JSON object")
        try:
            fields = SearchRequest.model_validate(payload).model_dump()
        except ValidationError as exc:
            raise validation_error(exc.errors()) from None
        uploads = Uploads()
        image, video = fields.pop("image"), fields.pop("video")
        if image not in (None, ""):
            uploads.image = decode_base64(image, field="image", limit=config.max_upload_bytes)
        if video not in (None, ""):
            uploads.video = (decode_base64(video, field="video", limit=config.max_video_bytes), None)
        return fields, uploads
    if kind == "multipart/form-data":
        return await _read_form(request, config)
    raise ApiError(415, "unsupported_media_type",
                   f"send application/json or multipart/form-data, not {kind or 'no content type'}")


async def _read_form(request: Request, config: ServeConfig) -> tuple[dict, Uploads]:
    form = await request.form(max_files=len(FILE_FIELDS), max_fields=16,
                              max_part_size=config.max_text_chars * 4 + 1024)
    known = set(SEARCH_MULTIPART_SCHEMA["properties"])
    unknown = sorted(set(form.keys()) - known)
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown form field(s): {', '.join(unknown)}", field=unknown[0])
    fields = {name: form.get(name) for name in known - set(FILE_FIELDS)}
    for name, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise ApiError(400, "bad_field", f"{name} must be a plain form field, not a file", field=name)
    uploads = Uploads()
    limits = {"image": config.max_upload_bytes, "video": config.max_video_bytes}
    for name in FILE_FIELDS:
        upload = form.get(name)
        if upload is None or isinstance(upload, str):
            if upload:  # a text field where a file belongs
                raise ApiError(400, f"not_an_{name}" if name == "image" else f"not_a_{name}",
                               f"{name} must be a file upload in a multipart form", field=name)
            continue
        data = await upload.read(limits[name] + 1)
        if len(data) > limits[name]:
            raise ApiError(413, "upload_too_large", f"{name} is over the upload limit of {limits[name]} bytes",
                           field=name)
        if not data and not upload.filename:  # a form whose file input was left empty
            continue
        if name == "image":
            uploads.image = data
        else:
            uploads.video = (data, upload.filename)
    return fields, uploads


# -- videos on disk for one request ------------------------------------------------------------------

# Container signatures: the temporary file gets a fitting suffix (the decoder probes the content too).
_SIGNATURES = ((b"GIF87a", ".gif"), (b"GIF89a", ".gif"), (b"\x1a\x45\xdf\xa3", ".webm"), (b"RIFF", ".avi"),
               (b"OggS", ".ogv"))


def save_video(data: bytes, filename: str | None, *, field: str = "video") -> Path:
    """Write an uploaded video to a temporary file (removed by :func:`remove_uploads`)."""
    from ..qwen2vl.video import VIDEO_SUFFIXES

    if not data:
        raise ApiError(400, "empty_video", f"{field} is an empty file", field=field)
    suffix = Path(filename or "").suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        suffix = _sniffed_suffix(data)
    handle, name = tempfile.mkstemp(prefix=UPLOAD_PREFIX, suffix=suffix)
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    return Path(name)


def _sniffed_suffix(data: bytes) -> str:
    if data[4:8] == b"ftyp":
        return ".mov" if data[8:10] == b"qt" else ".mp4"
    for signature, suffix in _SIGNATURES:
        if data.startswith(signature):
            return suffix
    return ".video"


def remove_uploads(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except OSError:
            pass


@contextmanager
def hide_upload_paths(paths: list[Path]):
    """Errors that name an uploaded file's temporary path say "the uploaded video" instead."""
    try:
        yield
    except ApiError as exc:
        message = exc.message
        for path in paths:
            message = message.replace(str(path), "the uploaded video")
        if message == exc.message:
            raise
        raise ApiError(exc.status, exc.code, message, field=exc.field) from None


def validation_error(errors: list[dict]) -> ApiError:
    """A pydantic validation failure as one 400 naming the first bad field."""
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    field = ".".join(location) or None
    message = first.get("msg", "invalid request")
    if first.get("type") == "extra_forbidden":
        return ApiError(400, "unknown_field", f"unknown field {field!r}", field=field)
    return ApiError(400, "bad_field", f"{field}: {message}" if field else message, field=field)
