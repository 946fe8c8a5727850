"""Video inputs as Qwen2-VL sees them: frame sampling, per-frame size, pixel patches.

A :class:`Video` (a plain value defined beside :class:`~lamra.items.Item`, importable from here
too) is a video file (mp4, webm, gif, mkv, ...) or a list of frame images. It becomes a
Qwen2-VL *video* input (``<|video_pad|>`` tokens, ``pixel_values_videos``,
``video_grid_thw``), not a list of separate images. The rules are those of qwen-vl-utils as
the LamRA code vendors it (docs/format.md#video-inputs):

- a file is sampled at ``video_fps`` (2) frames per second: ``total / container_fps * 2``
  frames, clamped to ``[ceil2(video_min_frames), floor2(min(video_max_frames, total))]`` and
  made even: rounded (Python's ``round``, so 5 -> 4 and 7 -> 8; the Qwen2-VL release) or, with the
  rule set's ``video_frames="floor"``, rounded down (the Qwen2.5-VL release); the frames taken are
  ``torch.linspace(0, total - 1, n).round()``. ``Video(path, nframes=12)`` asks for a fixed
  count instead (qwen-vl-utils' ``nframes``; the released MSVD evaluation uses 12);
- a list of frames is used whole (no resampling) and padded to an even count by repeating the
  last frame; every frame is resized to the size the first frame gets;
- each frame has between ``video_min_pixels`` and
  ``max(min(video_max_pixels, video_total_pixels / n * 2), int(video_min_pixels * 1.05))``
  pixels, sides multiples of 28 (qwen-vl-utils' ``smart_resize``; ``video_total_pixels`` is the
  rule set's: 24576 * 28 * 28, or 128000 * 28 * 28 * 0.9 for the Qwen2.5-VL release);
- two consecutive frames make one temporal patch: ``grid_thw = (n / 2, h / 14, w / 14)`` and
  the video costs ``t * h * w / 4`` ``<|video_pad|>`` tokens.

Files are decoded with PyAV (``pip install 'lamra[video]'``), which is what torchvision's
``read_video`` (the decoder of the LamRA code) uses underneath; frames are resized as there
(bicubic, antialiased, on float pixels, rounded back to 8 bits). Frame lists are resized with
PIL's bicubic, as qwen-vl-utils does for images. Nothing here needs torchvision.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import InputError
from ..items import VIDEO_FIELD as FIELD  # the field every video error names
from ..items import Video, is_pil_image
from ..settings import ModelSettings
from .images import image_size, load_image

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

# Qwen2-VL's (and Qwen2.5-VL's) vision patching.
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
SIZE_FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: frame sides are multiples of this
FRAME_FACTOR = TEMPORAL_PATCH_SIZE  # frame counts are multiples of this
MAX_ASPECT_RATIO = 200

# File suffixes lamra treats as videos (a gif can be either: wrap it in Video to make it one).
VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", ".mkv", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ogv",
                  ".flv", ".wmv", ".3gp", ".ts")


def is_video_path(path: str | os.PathLike) -> bool:
    """Whether a file name has one of :data:`VIDEO_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoLayout:
    """What a video becomes: ``frames`` frames of ``height`` x ``width`` pixels.

    ``grid_thw`` is Qwen2-VL's (temporal, height, width) patch grid and ``tokens`` the number of
    ``<|video_pad|>`` tokens. ``total_frames`` is the source's frame count, ``fps`` its frame
    rate (None for a list of frames), ``indices`` the source frame of each sampled frame.
    """

    frames: int
    height: int
    width: int
    grid_thw: tuple[int, int, int]
    tokens: int
    total_frames: int
    fps: float | None
    indices: tuple[int, ...]


# --------------------------------------------------------------------------- sizes and counts
def round_by_factor(number: float, factor: int) -> int:
    """The multiple of ``factor`` nearest to ``number`` (Python's round: halves to even)."""
    return round(number / factor) * factor


def ceil_by_factor(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def floor_by_factor(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def smart_resize(height: int, width: int, *, min_pixels: float, max_pixels: float,
                 factor: int = SIZE_FACTOR) -> tuple[int, int]:
    """qwen-vl-utils' smart_resize (the copy the LamRA code vendors): (height, width).

    Sides become multiples of ``factor`` near the original aspect ratio; the area is brought
    into ``[min_pixels, max_pixels]`` (scaling down floors the sides, so the result may end up
    a little under ``min_pixels`` when both bounds bite). Raises ValueError when one side is
    more than 200 times the other.
    """
    if min(height, width) <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"aspect ratio must be at most {MAX_ASPECT_RATIO}, got {max(height, width) / min(height, width):.1f}"
        )
    h_bar = max(factor, round_by_factor(height, factor))
    w_bar = max(factor, round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = floor_by_factor(height / beta, factor)
        w_bar = floor_by_factor(width / beta, factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = ceil_by_factor(height * beta, factor)
        w_bar = ceil_by_factor(width * beta, factor)
    if h_bar / w_bar > MAX_ASPECT_RATIO:
        h_bar = w_bar * MAX_ASPECT_RATIO
    elif w_bar / h_bar > MAX_ASPECT_RATIO:
        w_bar = h_bar * MAX_ASPECT_RATIO
    return h_bar, w_bar


def sample_count(total_frames: int, fps: float, settings: ModelSettings, *, nframes: int | None = None) -> int:
    """How many frames of a file are taken (qwen-vl-utils' rule; see the module docstring). The
    rule set's ``video_frames``: "round" to the nearest even count (the Qwen2-VL release), or
    "floor" down to an even count (the Qwen2.5-VL release's newer qwen-vl-utils)."""
    settings = settings.for_model_type(None)
    if nframes is not None:
        count = round_by_factor(nframes, FRAME_FACTOR)
    else:
        min_frames = ceil_by_factor(settings.video_min_frames, FRAME_FACTOR)
        max_frames = floor_by_factor(min(settings.video_max_frames, total_frames), FRAME_FACTOR)
        count = total_frames / fps * settings.video_fps
        to_even = floor_by_factor if settings.video_frames == "floor" else round_by_factor
        count = to_even(min(max(count, min_frames), max_frames), FRAME_FACTOR)
    if total_frames < FRAME_FACTOR:
        raise InputError(
            f"a video file needs at least {FRAME_FACTOR} frames, this one has {total_frames} "
            "(a list of frames is padded instead: give [image] to use one image as a video)",
            field=FIELD,
        )
    if not FRAME_FACTOR <= count <= total_frames:
        raise InputError(
            f"cannot take {count} frames (nframes={nframes}) from a video of {total_frames} frames",
            field=FIELD,
        )
    return count


def sample_indices(total_frames: int, count: int) -> tuple[int, ...]:
    """``torch.linspace(0, total - 1, count).round()``, in float32 exactly as qwen-vl-utils."""
    import torch

    return tuple(int(i) for i in torch.linspace(0, total_frames - 1, count).round().long().tolist())


def frame_pixel_range(count: int, settings: ModelSettings) -> tuple[int, float]:
    """(min_pixels, max_pixels) of each frame of a video sampled to ``count`` frames."""
    settings = settings.for_model_type(None)
    min_pixels = settings.video_min_pixels
    max_pixels = max(min(settings.video_max_pixels, settings.video_total_pixels / count * FRAME_FACTOR),
                     int(min_pixels * 1.05))
    return min_pixels, max_pixels


def plan_video_layout(total_frames: int, height: int, width: int, settings: ModelSettings | None = None, *,
                      fps: float | None = None, nframes: int | None = None) -> VideoLayout:
    """The layout of a source of ``total_frames`` frames of ``height`` x ``width``.

    ``fps`` given: a file, sampled by frame rate (or to ``nframes``). ``fps`` None: a list of
    frames, used whole and padded to an even count.
    """
    settings = (settings or ModelSettings()).for_model_type(None)
    if total_frames < 1:
        raise InputError("the video has no frames", field=FIELD)
    if fps is None:
        count = ceil_by_factor(total_frames, FRAME_FACTOR)
        indices = tuple(range(total_frames)) + (total_frames - 1,) * (count - total_frames)
    else:
        if not fps or fps <= 0 or not math.isfinite(fps):
            raise InputError(f"the video's frame rate is unknown ({fps!r})", field=FIELD)
        count = sample_count(total_frames, fps, settings, nframes=nframes)
        indices = sample_indices(total_frames, count)
    min_pixels, max_pixels = frame_pixel_range(count, settings)
    try:
        new_height, new_width = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as exc:
        raise InputError(f"frames of {width}x{height} cannot be used: {exc}", field=FIELD) from None
    grid = (count // TEMPORAL_PATCH_SIZE, new_height // PATCH_SIZE, new_width // PATCH_SIZE)
    tokens = grid[0] * grid[1] * grid[2] // (MERGE_SIZE**2)
    return VideoLayout(frames=count, height=new_height, width=new_width, grid_thw=grid, tokens=tokens,
                       total_frames=total_frames, fps=None if fps is None else float(fps), indices=indices)


# --------------------------------------------------------------------------- public entry points
def video_layout(video: Any, settings: ModelSettings | None = None, *, item: str | None = None) -> VideoLayout:
    """What ``video`` becomes, read from the container's metadata (or the first frame's header).

    No frame is decoded: the frame count is the container's (or, when it has none, e.g. webm,
    the number of packets), the frame rate its average rate. For the rare file whose metadata
    disagrees with its decoded frames, :func:`load_video` follows the decoded count; token
    counts for a prompt are therefore best taken from the ``video_grid_thw`` of the frames
    actually loaded.
    """
    settings = (settings or ModelSettings()).for_model_type(None)
    try:
        video = Video.from_value(video)
        if video.is_frame_list:
            width, height = _frame_size(video.source[0], settings, number=0)
            return plan_video_layout(len(video.source), height, width, settings)
        probe = _probe(video.source, settings)
        return plan_video_layout(probe.total_frames, probe.height, probe.width, settings,
                                 fps=probe.fps, nframes=video.nframes)
    except InputError as exc:
        raise exc.located(item=item, field=FIELD) from None


def load_video(video: Any, settings: ModelSettings | None = None, *, item: str | None = None) -> "np.ndarray":
    """The sampled, resized frames of ``video``: a uint8 array (frames, height, width, 3), RGB.

    Its shape is the :class:`VideoLayout`'s (frames, height, width). Every way a video can be
    bad (missing, empty, not a video, undecodable, no frames) raises an :class:`InputError`
    naming ``item`` and the field "video".
    """
    settings = (settings or ModelSettings()).for_model_type(None)
    try:
        video = Video.from_value(video)
        if video.is_frame_list:
            return _load_frame_list(video.source, settings)
        return _load_file(video.source, settings, nframes=video.nframes)
    except InputError as exc:
        raise exc.located(item=item, field=FIELD) from None


def video_pixel_inputs(videos_frames: Sequence[Any], image_processor) -> dict:
    """Qwen2-VL's ``pixel_values_videos`` and ``video_grid_thw`` for already-sized videos.

    Each video is a uint8 array (frames, height, width, 3) as :func:`load_video` returns, or a
    sequence of RGB PIL images / (height, width, 3) arrays of one size. Frames are not resized
    (sides must already be multiples of patch_size * merge_size); they are rescaled and
    normalised with the processor's ``rescale_factor`` / ``image_mean`` / ``image_std`` (float64
    rescale, float32 normalisation, as the processor does for images) and cut into patches in
    Qwen2-VL's order: per temporal pair, per merge window (row-major), per patch in the window,
    each patch flattened as (channel, time, row, column). An odd frame count is padded with
    its last frame.
    """
    import numpy as np
    import torch

    patch = int(getattr(image_processor, "patch_size", PATCH_SIZE))
    merge = int(getattr(image_processor, "merge_size", MERGE_SIZE))
    temporal = int(getattr(image_processor, "temporal_patch_size", TEMPORAL_PATCH_SIZE))
    do_rescale = bool(getattr(image_processor, "do_rescale", True))
    do_normalize = bool(getattr(image_processor, "do_normalize", True))
    scale = float(getattr(image_processor, "rescale_factor", 1 / 255))
    mean = np.asarray(image_processor.image_mean, dtype=np.float32)
    std = np.asarray(image_processor.image_std, dtype=np.float32)

    all_patches, grids = [], []
    for number, frames in enumerate(videos_frames):
        array = _as_frame_array(frames, number)
        if pad := -array.shape[0] % temporal:
            array = np.concatenate([array, np.repeat(array[-1:], pad, axis=0)], axis=0)
        count, height, width, channels = array.shape
        if height % (patch * merge) or width % (patch * merge):
            raise ValueError(
                f"video {number}: frames of {width}x{height} are not multiples of {patch * merge}; "
                "size them with load_video first"
            )
        pixels = array.astype(np.float64) * scale if do_rescale else array.astype(np.float64)
        pixels = pixels.astype(np.float32)
        if do_normalize:
            pixels = (pixels - mean) / std
        pixels = pixels.transpose(0, 3, 1, 2)  # (T, C, H, W)
        grid_t, grid_h, grid_w = count // temporal, height // patch, width // patch
        pixels = pixels.reshape(grid_t, temporal, channels, grid_h // merge, merge, patch,
                                grid_w // merge, merge, patch)
        pixels = pixels.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        all_patches.append(pixels.reshape(grid_t * grid_h * grid_w, channels * temporal * patch * patch))
        grids.append((grid_t, grid_h, grid_w))
    if not all_patches:
        raise ValueError("no videos given")
    return {
        "pixel_values_videos": torch.from_numpy(np.ascontiguousarray(np.concatenate(all_patches, axis=0))),
        "video_grid_thw": torch.tensor(grids, dtype=torch.long),
    }


# --------------------------------------------------------------------------- frame lists
def _load_frame_list(frames: tuple, settings: ModelSettings) -> "np.ndarray":
    import numpy as np
    from PIL import Image

    images = [_open_frame(frame, settings, number) for number, frame in enumerate(frames)]
    width, height = images[0].size
    layout = plan_video_layout(len(images), height, width, settings)
    target = (layout.width, layout.height)
    resized = [im if im.size == target else im.resize(target, Image.Resampling.BICUBIC) for im in images]
    return np.stack([np.asarray(resized[i], dtype=np.uint8) for i in layout.indices])


def _open_frame(frame, settings: ModelSettings, number: int):
    try:
        return load_image(frame, pixel_limit=settings.image_pixel_limit, rgba=settings.rgba or "convert")
    except InputError as exc:
        raise InputError(f"frame {number}: {exc.reason}", field=FIELD) from None


def _frame_size(frame, settings: ModelSettings, number: int) -> tuple[int, int]:
    try:
        return image_size(frame, pixel_limit=settings.image_pixel_limit)
    except InputError as exc:
        raise InputError(f"frame {number}: {exc.reason}", field=FIELD) from None


def _as_frame_array(frames, number: int) -> "np.ndarray":
    import numpy as np

    if isinstance(frames, np.ndarray):
        array = frames
    else:
        frames = list(frames)
        if not frames:
            raise ValueError(f"video {number} has no frames")
        array = np.stack([np.asarray(f.convert("RGB") if is_pil_image(f) else f) for f in frames])
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
        raise ValueError(f"video {number}: expected frames of shape (T, H, W, 3), got {array.shape}")
    return array


# --------------------------------------------------------------------------- files (PyAV)
@dataclass(frozen=True)
class _Probe:
    total_frames: int
    fps: float
    width: int
    height: int


def _import_av():
    try:
        import av
        import av.error  # noqa: F401 - FFmpegError, caught below
    except ImportError:
        raise ImportError(
            "reading video files needs PyAV: pip install 'lamra[video]' (a list of frame images works without it)"
        ) from None
    return av


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"video file not found: {path}", field=FIELD)
    if path.stat().st_size == 0:
        raise InputError(f"video file is empty (0 bytes): {path}", field=FIELD)


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise InputError(f"no video stream in {path}", field=FIELD)
    return container.streams.video[0]


def _check_size(width: int, height: int, settings: ModelSettings, path: Path) -> None:
    if width <= 0 or height <= 0:
        raise InputError(f"video {path} has no frame size ({width}x{height})", field=FIELD)
    if width * height > settings.image_pixel_limit:
        raise InputError(
            f"video {path} frames are {width}x{height} = {width * height} pixels, over the limit of "
            f"{settings.image_pixel_limit} (image_pixel_limit)",
            field=FIELD,
        )


def _probe(path: Path, settings: ModelSettings) -> _Probe:
    """Frame count, frame rate and size from the container, decoding nothing."""
    _check_file(path)
    av = _import_av()
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            width, height = stream.codec_context.width, stream.codec_context.height
            _check_size(width, height, settings, path)
            fps = _frame_rate(stream)
            total = int(stream.frames or 0)
            if total <= 0:  # no count in the header (webm, some gifs): count packets, no decoding
                total = sum(1 for packet in container.demux(stream) if packet.size)
    except InputError:
        raise
    except EOFError:  # av.error.EOFError too: the file ends before anything decodable
        raise InputError(f"video has no frames (the file ends before the first one): {path}", field=FIELD) from None
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"not a readable video: {path}: {exc}", field=FIELD) from None
    if total <= 0:
        raise InputError(f"video has no frames: {path}", field=FIELD)
    return _Probe(total_frames=total, fps=fps, width=width, height=height)


def _frame_rate(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 0.0


def _load_file(path: Path, settings: ModelSettings, *, nframes: int | None) -> "np.ndarray":
    probe = _probe(path, settings)
    layout = plan_video_layout(probe.total_frames, probe.height, probe.width, settings,
                               fps=probe.fps, nframes=nframes)
    frames, pts = _decode_sampled(path, layout, layout.indices)
    order = _presentation_order(pts)
    if len(pts) == probe.total_frames and order == list(range(len(pts))):
        return frames  # the usual case: one pass
    # The header's count was wrong, or some frames are not kept (negative or repeated
    # timestamps): sample again from the frames read_video would keep, by their decode order.
    logger.debug("%s: header says %d frames, %d decoded, %d kept; resampling",
                 path, probe.total_frames, len(pts), len(order))
    if not order:
        raise InputError(f"video has no frames with a timestamp from 0 on: {path}", field=FIELD)
    layout = plan_video_layout(len(order), probe.height, probe.width, settings, fps=probe.fps, nframes=nframes)
    frames, _ = _decode_sampled(path, layout, [order[i] for i in layout.indices])
    return frames


def _presentation_order(pts: list) -> list[int]:
    """Decode positions of the frames torchvision's ``read_video`` returns, in its order.

    It keeps frames whose timestamp is at least 0, one per timestamp (the last decoded), sorted
    by timestamp. Frames without timestamps are all kept in decode order.
    """
    if any(p is None for p in pts):
        return list(range(len(pts)))
    last: dict[int, int] = {}
    for position, stamp in enumerate(pts):
        if stamp >= 0:
            last[stamp] = position
    return [last[stamp] for stamp in sorted(last)]


def _decode_sampled(path: Path, layout: VideoLayout, positions: Sequence[int]) -> tuple["np.ndarray", list]:
    """Decode every frame; keep and resize the frames at decode ``positions`` (one per slot).

    Returns the (frames, height, width, 3) array and the timestamps of all decoded frames.
    """
    import numpy as np

    av = _import_av()
    wanted: dict[int, list[int]] = {}
    for slot, position in enumerate(positions):
        wanted.setdefault(position, []).append(slot)
    out = np.zeros((layout.frames, layout.height, layout.width, 3), dtype=np.uint8)
    pts: list = []
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                slots = wanted.get(len(pts))
                pts.append(frame.pts)
                if slots is None:
                    continue
                rgb = _resize_like_torchvision(frame.to_ndarray(format="rgb24"), layout.height, layout.width)
                for slot in slots:
                    out[slot] = rgb
    except InputError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
        raise InputError(f"cannot decode video {path} (after {len(pts)} frames): {exc}", field=FIELD) from None
    if not pts:
        raise InputError(f"video has no decodable frames: {path}", field=FIELD)
    return out, pts


def _resize_like_torchvision(rgb: "np.ndarray", height: int, width: int) -> "np.ndarray":
    """torchvision's ``resize(BICUBIC, antialias=True)`` of a uint8 frame, with torch alone.

    The frame is converted to float32, resized (bicubic, antialiased, align_corners False),
    clamped to [0, 255], rounded and turned back into uint8, as torchvision does.
    """
    import torch

    if rgb.shape[0] == height and rgb.shape[1] == width:
        return rgb
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).to(torch.float32)
    tensor = torch.nn.functional.interpolate(tensor, size=(height, width), mode="bicubic",
                                             align_corners=False, antialias=True)
    tensor = tensor.clamp_(0, 255).round_().to(torch.uint8)
    return tensor[0].permute(1, 2, 0).contiguous().numpy()


__all__ = [
    "Video",
    "VideoLayout",
    "VIDEO_SUFFIXES",
    "is_video_path",
    "video_layout",
    "load_video",
    "video_pixel_inputs",
    "plan_video_layout",
    "smart_resize",
    "sample_count",
    "sample_indices",
    "frame_pixel_range",
]
