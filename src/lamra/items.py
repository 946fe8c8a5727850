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

These are plain values: nothing here opens a file. Images are opened by
:mod:`lamra.qwen2vl.images`, videos sampled and decoded by :mod:`lamra.qwen2vl.video`.
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

VIDEO_FIELD = "video"  # the field an error about a video names


@dataclass(frozen=True)
class Item:
    """One query or candidate: ordered text and image parts, an optional string id."""

    parts: tuple = ()
    id: str | None = None

    def __init__(self, text: str | None = None, images: Iterable[ImageLike] = (), id: str | None = None,
                 video: Any = None):
        if isinstance(images, (str, os.PathLike)) or is_pil_image(images):
            images = [images]
        parts = [*images]
        if video is not None:
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


@dataclass(frozen=True)
class Video:
    """A video: ``source`` is a file path or a tuple of frames (paths or PIL images).

    ``nframes`` (files only) samples that many evenly spaced frames (rounded to even) instead
    of ``video_fps`` frames per second. A plain value like :class:`Item`; sampling and
    decoding are :mod:`lamra.qwen2vl.video`'s.
    """

    source: Any
    nframes: int | None = None

    def __post_init__(self):
        source = self.source
        if isinstance(source, (str, os.PathLike)):
            if str(source) == "":
                raise InputError("empty video path", field=VIDEO_FIELD)
            object.__setattr__(self, "source", Path(source))
        elif isinstance(source, (list, tuple)):
            if not source:
                raise InputError("empty list of frames", field=VIDEO_FIELD)
            for number, frame in enumerate(source):
                if not isinstance(frame, (str, os.PathLike)) and not is_pil_image(frame):
                    raise InputError(
                        f"frame {number} must be an image path or a PIL image, got {type(frame).__name__}",
                        field=VIDEO_FIELD,
                    )
            object.__setattr__(self, "source", tuple(Path(f) if isinstance(f, str) else f for f in source))
        else:
            raise InputError(
                f"a video is a file path or a list of frames, got {type(source).__name__}", field=VIDEO_FIELD
            )
        if self.nframes is not None:
            if isinstance(self.nframes, bool) or not isinstance(self.nframes, int) or self.nframes < 1:
                raise InputError(f"nframes must be a positive integer, got {self.nframes!r}", field=VIDEO_FIELD)
            if self.is_frame_list:
                raise InputError("nframes applies to video files; a list of frames is used whole", field=VIDEO_FIELD)

    @classmethod
    def from_value(cls, value: Any, *, base_dir: str | os.PathLike | None = None,
                   nframes: int | None = None) -> "Video":
        """A :class:`Video` from a path (str or Path), a list of frames, or a Video.

        Relative paths (of the file or of the frames) are resolved against ``base_dir``.
        """
        if isinstance(value, Video):
            return value if nframes is None else cls(value.source, nframes=nframes)
        if isinstance(value, (str, os.PathLike)):
            return cls(_resolve(value, base_dir) if str(value) else value, nframes=nframes)
        if isinstance(value, (list, tuple)):
            frames = tuple(_resolve(f, base_dir) if isinstance(f, (str, os.PathLike)) and str(f) else f
                           for f in value)
            return cls(frames, nframes=nframes)
        raise InputError(
            f"a video is a file path or a list of frames, got {type(value).__name__}", field=VIDEO_FIELD
        )

    @property
    def is_frame_list(self) -> bool:
        return isinstance(self.source, tuple)


def is_video(part: Any) -> bool:
    """Whether an item part is a :class:`Video`."""
    return isinstance(part, Video)


def is_pil_image(value: Any) -> bool:
    """Whether ``value`` is a PIL image."""
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
    if isinstance(value, os.PathLike) or is_pil_image(value):
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
            if not isinstance(v, str) and not is_pil_image(v) and not isinstance(v, os.PathLike):
                raise InputError(f"must be a path string, got {type(v).__name__}", item=item_id, field=field)
            images.append(_resolve(v, base_dir))
    video = record.get("video")
    if video is not None and video != "":
        frames = video if isinstance(video, list) else None
        if frames is None and not isinstance(video, (str, os.PathLike)):
            raise InputError(f"must be a path string or a list of frame paths, got {type(video).__name__}",
                             item=item_id, field="video")
        if frames is not None and not all(isinstance(f, (str, os.PathLike)) or is_pil_image(f) for f in frames):
            raise InputError("a list of frames must hold path strings", item=item_id, field="video")
        video = [_resolve(f, base_dir) for f in frames] if frames is not None else _resolve(video, base_dir)
    else:
        video = None
    return Item(text=text, images=images, id=item_id, video=video)


def _resolve(path, base_dir):
    if is_pil_image(path):
        return path
    path = Path(path)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    return path
