"""Item: the one value type for anything lamra embeds (text, images, both, frames, interleaved).

An item is an ordered list of parts, each a text string or an image. The usual kinds:

- ``Item(text="a red car")``                      text only
- ``Item(images=[img])``                          image only (a PIL image or a path)
- ``Item(text="...", images=[img])``              image + text (images come first, as in LamRA)
- ``Item(images=[f1, f2, f3])``                   several images (the official multi-image form)
- ``Item(video="clip.mp4")`` / ``Item(video=[f1, f2, f3, f4])``  a video file or its frames
- ``Item.interleaved(["Before:", img1, "After:", img2])``  text and images in a given order

Plain Python values are accepted wherever items are: a ``str`` is text, a ``pathlib.Path``
or a PIL image is an image, a dict has ``text`` / ``image`` / ``images`` / ``id`` keys.
A ``str`` is never guessed to be a path: wrap image paths in ``Path`` or use a dict.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Union

from .errors import InputError

if TYPE_CHECKING:
    from PIL import Image as PILImage

ImageLike = Union["PILImage.Image", str, os.PathLike]

# A decompression-bomb guard: images above this many pixels are refused before decoding (one
# number everywhere: the settings' default, which ``--image-pixel-limit`` changes).
from .settings import DEFAULT_IMAGE_PIXEL_LIMIT  # noqa: E402


@dataclass(frozen=True)
class Item:
    """One query or candidate: ordered text and image parts, an optional string id."""

    parts: tuple = ()
    id: str | None = None

    def __init__(self, text: str | None = None, images: Iterable[ImageLike] = (), id: str | None = None,
                 video: Any = None):
        if isinstance(images, (str, os.PathLike)) or _is_pil(images):
            images = [images]
        parts = [*images]
        if video is not None:
            from .qwen2vl.video import Video

            parts.append(video if isinstance(video, Video) else Video.from_value(video))
        if text is not None and text != "":
            parts.append(text)
        object.__setattr__(self, "parts", tuple(parts))
        object.__setattr__(self, "id", None if id is None else str(id))

    @classmethod
    def empty_text(cls, id: str | None = None) -> "Item":
        """A text item whose text is empty, embedded as such (M-BEIR pools hold a few; the
        official code embeds them as the empty formatted text). Elsewhere an empty item is an error."""
        item = cls(id=id)
        object.__setattr__(item, "parts", ("",))
        return item

    @classmethod
    def interleaved(cls, parts: Iterable[Any], id: str | None = None) -> "Item":
        """An item whose text and image parts keep the given order."""
        item = cls(id=id)
        object.__setattr__(item, "parts", tuple(p for p in parts if not (isinstance(p, str) and p == "")))
        return item

    @property
    def text(self) -> str | None:
        texts = [p for p in self.parts if isinstance(p, str)]
        return " ".join(texts) if texts else None

    @property
    def images(self) -> list:
        return [p for p in self.parts if not isinstance(p, str) and not is_video(p)]

    @property
    def videos(self) -> list:
        return [p for p in self.parts if is_video(p)]

    @property
    def modality(self) -> str:
        """M-BEIR's modality names: "text", "image" or "image,text" ("video" for videos)."""
        has_text = self.text is not None
        visual = "video" if self.videos else ("image" if self.images else None)
        if has_text and visual:
            return f"{visual},text"
        return visual or "text"

    def is_empty(self) -> bool:
        if self.parts == ("",):  # Item.empty_text(): deliberately empty
            return False
        return not self.parts or all(isinstance(p, str) and not p.strip() for p in self.parts)


def is_video(part: Any) -> bool:
    """Whether an item part is a :class:`lamra.qwen2vl.video.Video`."""
    if isinstance(part, (str, os.PathLike)) or _is_pil(part):
        return False
    from .qwen2vl.video import Video

    return isinstance(part, Video)


def _is_pil(value: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(value, Image.Image)


def as_item(value: Any, *, base_dir: str | os.PathLike | None = None) -> Item:
    """Coerce a plain value (str, Path, PIL image, dict, Item) into an :class:`Item`.

    Relative image paths in dicts are resolved against ``base_dir`` (e.g. the jsonl's folder).
    """
    if isinstance(value, Item):
        return value
    if isinstance(value, str):
        return Item(text=value)
    if isinstance(value, os.PathLike) or _is_pil(value):
        return Item(images=[value])
    if isinstance(value, dict):
        return _item_from_dict(value, base_dir=base_dir)
    raise InputError(f"cannot make an item from a {type(value).__name__}; give a str, Path, PIL image, dict or Item")


def _item_from_dict(record: dict, *, base_dir) -> Item:
    item_id = record.get("id")
    text = record.get("text")
    if text is not None and not isinstance(text, str):
        raise InputError(f"must be a string, got {type(text).__name__}", item=item_id, field="text")
    images = []
    for field in ("image", "images"):
        value = record.get(field)
        if value is None or value == "":
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            if not isinstance(v, str) and not _is_pil(v) and not isinstance(v, os.PathLike):
                raise InputError(f"must be a path string, got {type(v).__name__}", item=item_id, field=field)
            images.append(_resolve(v, base_dir))
    video = record.get("video")
    if video is not None and video != "":
        frames = video if isinstance(video, list) else None
        if frames is None and not isinstance(video, (str, os.PathLike)):
            raise InputError(f"must be a path string or a list of frame paths, got {type(video).__name__}",
                             item=item_id, field="video")
        if frames is not None and not all(isinstance(f, (str, os.PathLike)) or _is_pil(f) for f in frames):
            raise InputError("a list of frames must hold path strings", item=item_id, field="video")
        video = [_resolve(f, base_dir) for f in frames] if frames is not None else _resolve(video, base_dir)
    else:
        video = None
    return Item(text=text, images=images, id=item_id, video=video)


def _resolve(path, base_dir):
    if _is_pil(path):
        return path
    path = Path(path)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    return path


def load_image(image: ImageLike, *, pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT, item: str | None = None):
    """Open an image as RGB, with a clear error for every way a file can be bad.

    ``pixel_limit`` (``--image-pixel-limit``, :class:`~lamra.settings.ModelSettings`) is the one
    decompression-bomb limit: PIL's own guard is set to it while opening, so every refusal
    reports that number. A palette image with transparency goes through RGBA (the same RGB
    pixels, without PIL's warning).
    """
    from PIL import Image, UnidentifiedImageError

    if _is_pil(image):
        _check_pixels(image.size, pixel_limit, item=item, name="in-memory image")
        return _rgb(image)
    path = Path(image)
    where = dict(item=item, field="image")
    if not path.is_file():
        raise InputError(f"image file not found: {path}", **where)
    if path.stat().st_size == 0:
        raise InputError(f"image file is empty (0 bytes): {path}", **where)
    try:
        with _open_guarded(path, pixel_limit) as handle:
            _check_pixels(handle.size, pixel_limit, item=item, name=str(path))
            handle.load()
            return _rgb(handle)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"not a readable image: {path}", **where) from None
    except Image.DecompressionBombError as exc:
        raise _over_the_limit(str(path), _pixels_in(exc), None, pixel_limit, item) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"corrupt or truncated image: {path}: {exc}", **where) from None


def image_size(image: ImageLike, *, pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT, item: str | None = None):
    """(width, height) from the header only, with the same checks and errors as :func:`load_image`."""
    if _is_pil(image):
        _check_pixels(image.size, pixel_limit, item=item, name="in-memory image")
        return image.size
    try:
        with _open_guarded(image, pixel_limit) as handle:
            size = handle.size
    except Exception:
        load_image(image, pixel_limit=pixel_limit, item=item)  # raises the error that names the problem
        raise
    _check_pixels(size, pixel_limit, item=item, name=str(image))
    return size


def _check_pixels(size, limit, *, item, name):
    width, height = size
    if width * height > limit:
        raise _over_the_limit(name, width * height, (width, height), limit, item)
    if width == 0 or height == 0:
        raise InputError(f"image {name} has zero size", item=item, field="image")


def _over_the_limit(name, pixels, size, limit, item) -> InputError:
    shape = f"{size[0]}x{size[1]} = " if size else ""
    count = f"{pixels:,}" if pixels is not None else "more than"
    return InputError(f"image {name} is {shape}{count} pixels, over the limit of {limit:,} (decompression-bomb "
                      "guard; raise it with --image-pixel-limit if the image is genuine)", item=item, field="image")


def _pixels_in(error) -> int | None:
    """The pixel count in PIL's DecompressionBombError message."""
    import re

    found = re.search(r"\((\d+) pixels\)", str(error))
    return int(found.group(1)) if found else None


def _open_guarded(path, limit):
    """``Image.open`` with PIL's guard at ``limit``; its warning is dropped (the caller refuses)."""
    import warnings

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = limit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _rgb(image):
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the same RGB pixels as a direct convert, without PIL's warning
    return image.convert("RGB")
