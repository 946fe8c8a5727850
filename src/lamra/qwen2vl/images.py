"""Opening images safely: RGB pixels or a header-only size, with one decompression-bomb guard.

Every way an image file can be bad (missing, empty, unreadable, truncated, too many pixels)
becomes an :class:`~lamra.errors.InputError` naming the item and the field "image". Used by the
processor, video frame lists, the reranker and the server; :class:`~lamra.items.Item` only
holds paths and PIL images, so it never needs this module.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..items import ImageLike, is_pil_image
# The decompression-bomb guard: images above this many pixels are refused before decoding (one
# number everywhere: the settings' default, which ``--image-pixel-limit`` changes).
from ..settings import DEFAULT_IMAGE_PIXEL_LIMIT


def load_image(image: ImageLike, *, pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT, item: str | None = None,
               rgba: str = "convert"):
    """Open an image as RGB, with a clear error for every way a file can be bad.

    ``pixel_limit`` (``--image-pixel-limit``, :class:`~lamra.settings.ModelSettings`) is the one
    decompression-bomb limit: PIL's own guard is set to it while opening, so every refusal
    reports that number. A palette image with transparency goes through RGBA (the same RGB
    pixels, without PIL's warning). ``rgba`` is the rule set's RGBA conversion
    (:class:`~lamra.settings.ModelSettings`): "convert" (PIL's ``convert``, the Qwen2-VL release)
    or "white" (pasted on white with its alpha as the mask, the Qwen2.5-VL release's ``to_rgb``).
    """
    from PIL import Image, UnidentifiedImageError

    if is_pil_image(image):
        _check_pixels(image.size, pixel_limit, item=item, name="in-memory image")
        return _rgb(image, rgba)
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
            return _rgb(handle, rgba)
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
    if is_pil_image(image):
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


def _rgb(image, rgba: str = "convert"):
    if image.mode == "RGB":
        return image
    if rgba == "white" and image.mode == "RGBA":
        # The Qwen2.5-VL release's to_rgb: only RGBA is pasted; LA, P (...) go through convert.
        from PIL import Image

        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the same RGB pixels as a direct convert, without PIL's warning
    return image.convert("RGB")
