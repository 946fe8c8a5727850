"""Video inputs: frame sampling, frame sizes, grids and token counts as the spec's rules give them.

Every expected number below is worked out by hand from spec section 2 ("Video inputs") and the
qwen-vl-utils rules it cites; the working is in the comments. Videos are written in the test
with PyAV (mp4, webm) and PIL (gif).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lamra.errors import InputError
from lamra.qwen2vl.video import (
    Video,
    load_video,
    plan_video_layout,
    video_layout,
    video_pixel_inputs,
)
from lamra.settings import ModelSettings

# The CLIP mean / std Qwen2-VL's processor normalises with (written out, not imported).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def write_video(path: Path, *, codec: str, frames: int, fps: int, width: int, height: int,
                start_frame: int = 0) -> Path:
    """Frame i is a flat grey of level 8 * i, so a loaded frame tells which frame it was."""
    import av

    options = {"crf": "8"} if codec == "libx264" else {}
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        container.start_encoding()
        for i in range(start_frame, start_frame + frames):
            pixels = np.full((height, width, 3), min(8 * i, 255), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_levels(frames: np.ndarray) -> list[int]:
    return [int(round(float(frame.mean()))) for frame in frames]


# ------------------------------------------------------------------ layout rules, worked by hand
def test_ten_second_720p_clip():
    # 300 frames at 30 fps: 300 / 30 * 2 = 20 frames, inside [4, 300] and even.
    # Per-frame max = max(min(768*784, 24576*784 / 20 * 2), int(128*784*1.05))
    #               = max(min(602112, 1926758.4), 105369) = 602112.
    # smart_resize(720, 1280): rounded 728 x 1288 = 937664 > 602112, so
    # beta = sqrt(921600 / 602112) = 1.23718; h = floor(720 / 1.23718 / 28) * 28 = 20 * 28 = 560,
    # w = floor(1280 / 1.23718 / 28) * 28 = 36 * 28 = 1008.
    layout = plan_video_layout(300, 720, 1280, fps=30)
    assert (layout.frames, layout.height, layout.width) == (20, 560, 1008)
    assert layout.grid_thw == (10, 40, 72)
    assert layout.tokens == 10 * 40 * 72 // 4 == 7200
    # linspace(0, 299, 20): step 299 / 19 = 15.7368...; rounded
    assert layout.indices[:5] == (0, 16, 31, 47, 63)
    assert layout.indices[-1] == 299


def test_long_video_hits_max_frames_and_total_pixel_budget():
    # 10 minutes at 30 fps = 18000 frames: 18000 / 30 * 2 = 1200 > 768, so 768 frames.
    # Per-frame max = max(min(602112, 19267584 / 768 * 2), 105369) = max(50176, 105369) = 105369.
    # smart_resize(720, 1280): beta = sqrt(921600 / 105369) = 2.95743;
    # h = floor(243.45 / 28) * 28 = 224, w = floor(432.81 / 28) * 28 = 420 (94080 pixels: the
    # max branch does not re-check the minimum, as in qwen-vl-utils).
    layout = plan_video_layout(18000, 720, 1280, fps=30)
    assert (layout.frames, layout.height, layout.width) == (768, 224, 420)
    assert layout.grid_thw == (384, 16, 30)
    assert layout.tokens == 46080
    # The same at 640x480: smart_resize(480, 640) with max 105369: beta = sqrt(307200 / 105369)
    # = 1.70747; h = floor(281.12 / 28) * 28 = 280, w = floor(374.82 / 28) * 28 = 364.
    # (With a floor of 128*784 = 100352 instead of int(100352 * 1.05) it would be 252 x 364.)
    layout = plan_video_layout(18000, 480, 640, fps=30)
    assert (layout.frames, layout.height, layout.width) == (768, 280, 364)
    assert layout.grid_thw == (384, 20, 26) and layout.tokens == 49920


def test_total_pixel_budget_binds_between_the_bounds():
    # 150 s at 30 fps = 4500 frames -> 300 frames. Per-frame max = max(min(602112, 19267584 / 300 * 2),
    # 105369) = 128450.56. smart_resize(720, 1280): beta = sqrt(921600 / 128450.56) = 2.67857;
    # h = floor(268.80 / 28) * 28 = 252, w = floor(477.87 / 28) * 28 = 476. Grid (150, 18, 34).
    layout = plan_video_layout(4500, 720, 1280, fps=30)
    assert (layout.frames, layout.height, layout.width) == (300, 252, 476)
    assert layout.grid_thw == (150, 18, 34) and layout.tokens == 22950


@pytest.mark.parametrize(
    "total, fps, expected",
    [
        (25, 10, 4),   # 25 / 10 * 2 = 5.0 -> round(2.5) * 2 = 4 (Python rounds halves to even)
        (35, 10, 8),   # 7.0 -> round(3.5) * 2 = 8
        (10, 10, 4),   # 2.0 is under the minimum of 4
        (3, 10, 2),    # minimum 4 but at most floor2(3) = 2 frames exist
        (2000, 10, 400),
    ],
)
def test_frame_counts(total, fps, expected):
    assert plan_video_layout(total, 48, 64, fps=fps).frames == expected


def test_settings_change_the_sampling():
    # 1 fps instead of 2: 300 frames at 30 fps -> 10 frames; at most 6 frames -> 6.
    assert plan_video_layout(300, 720, 1280, ModelSettings(video_fps=1.0), fps=30).frames == 10
    assert plan_video_layout(300, 720, 1280, ModelSettings(video_max_frames=6), fps=30).frames == 6


def test_fixed_nframes():
    # qwen-vl-utils' nframes: round to even, then linspace over the whole video.
    assert plan_video_layout(300, 48, 64, fps=30, nframes=12).frames == 12
    assert plan_video_layout(300, 48, 64, fps=30, nframes=13).frames == 12  # round(6.5) = 6
    assert plan_video_layout(300, 48, 64, fps=30, nframes=8).indices == (0, 43, 85, 128, 171, 214, 256, 299)
    with pytest.raises(InputError, match="cannot take 12 frames"):
        plan_video_layout(10, 48, 64, fps=30, nframes=12)


def test_frame_list_layouts():
    # 5 frames -> padded to 6 (the last one repeated), no resampling.
    layout = plan_video_layout(5, 48, 64)
    assert layout.frames == 6 and layout.indices == (0, 1, 2, 3, 4, 4) and layout.fps is None
    # 3 frames of 1000x1000 -> 4 frames; max = min(602112, 19267584 / 4 * 2) = 602112;
    # rounded 1008 x 1008 is too big: beta = sqrt(1e6 / 602112) = 1.28873,
    # side = floor(775.96 / 28) * 28 = 27 * 28 = 756.
    layout = plan_video_layout(3, 1000, 1000)
    assert (layout.frames, layout.height, layout.width) == (4, 756, 756)
    assert layout.grid_thw == (2, 54, 54) and layout.tokens == 1458


def test_a_single_frame_file_is_refused_with_a_hint():
    with pytest.raises(InputError, match="at least 2 frames"):
        plan_video_layout(1, 48, 64, fps=10)


def test_extreme_aspect_ratio_is_an_input_error():
    with pytest.raises(InputError, match="aspect ratio"):
        plan_video_layout(4, 10, 2100, fps=2)


# ------------------------------------------------------------------ real files
# A 3 s clip at 10 fps, 64x48 (the small-frame case worked out once here):
# 30 / 10 * 2 = 6 frames; linspace(0, 29, 6) = 0, 5.8, 11.6, 17.4, 23.2, 29 -> 0, 6, 12, 17, 23, 29.
# Per-frame max = 602112 (24576*784 / 6 * 2 is larger). smart_resize(48, 64): rounded 56 x 56 = 3136
# < 100352, so beta = sqrt(100352 / 3072) = 5.71548; h = ceil(274.34 / 28) * 28 = 280,
# w = ceil(365.79 / 28) * 28 = 392. Grid (3, 20, 28); 3 * 20 * 28 / 4 = 420 tokens.
CLIP_3S = dict(frames=6, indices=(0, 6, 12, 17, 23, 29), size=(280, 392), grid=(3, 20, 28), tokens=420)


@pytest.mark.parametrize("suffix, codec", [("mp4", "libx264"), ("mp4", "mpeg4"), ("webm", "libvpx")])
def test_three_second_clip(tmp_path, suffix, codec):
    path = write_video(tmp_path / f"clip.{suffix}", codec=codec, frames=30, fps=10, width=64, height=48)
    layout = video_layout(path)
    assert layout.total_frames == 30 and layout.fps == 10.0
    assert (layout.frames, layout.indices) == (CLIP_3S["frames"], CLIP_3S["indices"])
    assert (layout.height, layout.width) == CLIP_3S["size"]
    assert layout.grid_thw == CLIP_3S["grid"] and layout.tokens == CLIP_3S["tokens"]

    frames = load_video(str(path))
    assert frames.dtype == np.uint8 and frames.shape == (6, 280, 392, 3)
    # frame i was grey 8 * i: the loaded frames are the sampled ones, in order
    expected = [8 * i for i in CLIP_3S["indices"]]
    assert all(abs(got - want) <= 4 for got, want in zip(frame_levels(frames), expected)), frame_levels(frames)


def test_one_second_webm_takes_the_four_frame_minimum(tmp_path):
    # 10 frames at 10 fps: 2 frames by rate, raised to the minimum 4; linspace(0, 9, 4) = 0, 3, 6, 9.
    # smart_resize(90, 160): rounded 84 x 168 = 14112 < 100352; beta = sqrt(100352 / 14400) = 2.63987;
    # h = ceil(237.59 / 28) * 28 = 252, w = ceil(422.38 / 28) * 28 = 448. Grid (2, 18, 32): 288 tokens.
    # (webm keeps no frame count in its header: the packets are counted.)
    path = write_video(tmp_path / "short.webm", codec="libvpx", frames=10, fps=10, width=160, height=90)
    layout = video_layout(path)
    assert (layout.frames, layout.indices, layout.height, layout.width) == (4, (0, 3, 6, 9), 252, 448)
    assert layout.grid_thw == (2, 18, 32) and layout.tokens == 288
    frames = load_video(Video(path))
    assert frames.shape == (4, 252, 448, 3)
    assert all(abs(got - want) <= 4 for got, want in zip(frame_levels(frames), [0, 24, 48, 72]))


def test_gif(tmp_path):
    from PIL import Image

    # 6 distinct frames of 100 ms: 10 fps, 0.6 s -> 1.2 frames, raised to 4; linspace(0, 5, 4) =
    # 0, 1.67, 3.33, 5 -> 0, 2, 3, 5. Same 64x48 size as above: 280 x 392; grid (2, 20, 28) = 280 tokens.
    images = [Image.new("RGB", (64, 48), (10 * i, 10 * i, 10 * i)) for i in range(6)]
    path = tmp_path / "anim.gif"
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    layout = video_layout(path)
    assert (layout.total_frames, layout.fps, layout.frames, layout.indices) == (6, 10.0, 4, (0, 2, 3, 5))
    assert layout.grid_thw == (2, 20, 28) and layout.tokens == 280
    frames = load_video(path)
    assert frames.shape == (4, 280, 392, 3)
    assert all(abs(got - want) <= 2 for got, want in zip(frame_levels(frames), [0, 20, 30, 50]))


def test_fixed_nframes_on_a_file(tmp_path):
    # linspace(0, 29, 4) = 0, 9.67, 19.33, 29 -> 0, 10, 19, 29
    path = write_video(tmp_path / "clip.mp4", codec="libx264", frames=30, fps=10, width=64, height=48)
    assert video_layout(Video(path, nframes=4)).indices == (0, 10, 19, 29)
    frames = load_video(Video.from_value(path, nframes=4))
    assert all(abs(got - want) <= 4 for got, want in zip(frame_levels(frames), [0, 80, 152, 232]))


def test_decoded_count_wins_over_a_wrong_header(tmp_path, monkeypatch):
    import lamra.qwen2vl.video as video_module

    path = write_video(tmp_path / "clip.mp4", codec="libx264", frames=30, fps=10, width=64, height=48)
    real_probe = video_module._probe

    def lying_probe(p, settings):  # a header that claims 60 frames
        probe = real_probe(p, settings)
        return video_module._Probe(total_frames=60, fps=probe.fps, width=probe.width, height=probe.height)

    monkeypatch.setattr(video_module, "_probe", lying_probe)
    assert video_layout(path).frames == 12  # what the header says: 60 / 10 * 2
    frames = load_video(path)  # decoding finds 30 frames: sampled as the real 3 s clip
    assert frames.shape[0] == 6
    assert all(abs(got - want) <= 4 for got, want in zip(frame_levels(frames), [8 * i for i in CLIP_3S["indices"]]))


def test_frames_read_video_would_drop_are_not_sampled(tmp_path, monkeypatch):
    import lamra.qwen2vl.video as video_module

    # torchvision's read_video keeps frames with pts >= 0, the last one of each pts, sorted by pts
    assert video_module._presentation_order([-2, -1, 0, 1, 1, 2]) == [2, 4, 5]
    assert video_module._presentation_order([0, 2, 1]) == [0, 2, 1]
    assert video_module._presentation_order([None, None]) == [0, 1]

    # as if the first 10 of 30 frames had negative timestamps: 20 frames at 10 fps -> 4 frames,
    # linspace(0, 19, 4) = 0, 6.33, 12.67, 19 -> kept frames 0, 6, 13, 19 = decoded 10, 16, 23, 29
    path = write_video(tmp_path / "clip.mp4", codec="libx264", frames=30, fps=10, width=64, height=48)
    monkeypatch.setattr(video_module, "_presentation_order", lambda pts: list(range(10, len(pts))))
    frames = load_video(path)
    assert frames.shape[0] == 4
    assert all(abs(got - want) <= 4 for got, want in zip(frame_levels(frames), [80, 128, 184, 232]))


def test_file_frames_are_resized_bicubic_antialiased():
    from PIL import Image

    from lamra.qwen2vl.video import _resize_like_torchvision

    rng = np.random.default_rng(0)
    small = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    ours = _resize_like_torchvision(small, 280, 392).astype(int)
    pil_bicubic = np.asarray(Image.fromarray(small).resize((392, 280), Image.Resampling.BICUBIC)).astype(int)
    pil_nearest = np.asarray(Image.fromarray(small).resize((392, 280), Image.Resampling.NEAREST)).astype(int)
    assert np.abs(ours - pil_bicubic).mean() < 1.0  # the same filter (PIL clips between passes)
    assert np.abs(ours - pil_nearest).mean() > 10.0
    assert _resize_like_torchvision(small, 48, 64) is small


# ------------------------------------------------------------------ frame lists
def test_odd_frame_list_is_padded_with_its_last_frame(tmp_path):
    from PIL import Image

    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200)]
    images = [Image.new("RGB", (64, 48), colour) for colour in colours]
    layout = video_layout(images)
    assert (layout.frames, layout.height, layout.width, layout.tokens) == (6, 280, 392, 420)
    frames = load_video(images)
    assert frames.shape == (6, 280, 392, 3)
    assert np.array_equal(frames[5], frames[4])
    assert tuple(frames[2, 10, 10]) == (0, 0, 200)
    # the same frames as files give the same array; relative paths resolve against base_dir
    for number, image in enumerate(images):
        image.save(tmp_path / f"f{number}.png")
    video = Video.from_value([f"f{n}.png" for n in range(5)], base_dir=tmp_path)
    assert video.source[0] == tmp_path / "f0.png"
    assert np.array_equal(load_video(video), frames)


def test_frame_list_takes_the_first_frames_size():
    from PIL import Image

    # 56x56 first frame: 2 frames, smart_resize(56, 56): 3136 < 100352, beta = sqrt(32) = 5.65685,
    # side = ceil(316.78 / 28) * 28 = 12 * 28 = 336. The second frame (another size) is fitted to it.
    frames = load_video([Image.new("RGB", (56, 56), "red"), Image.new("RGB", (300, 100), "blue")])
    assert frames.shape == (2, 336, 336, 3)


# ------------------------------------------------------------------ pixel patches
def _image_processor():
    from lamra.demo.tiny import image_processor

    return image_processor()  # 56*56 .. 300*28*28 pixels: a 56x84 frame is not resized


def test_static_frame_pairs_equal_the_image_processor():
    # A video whose two frames in each temporal patch are equal is exactly what the image
    # processor makes of one image (it repeats an image along time): frames A A B B == images A, B.
    from PIL import Image

    rng = np.random.default_rng(1)
    a, b = ((rng.random((56, 84, 3)) * 255).astype(np.uint8) for _ in range(2))
    out = video_pixel_inputs([np.stack([a, a, b, b])], _image_processor())
    ref = _image_processor()(images=[Image.fromarray(a), Image.fromarray(b)], return_tensors="pt")
    assert out["video_grid_thw"].tolist() == [[2, 4, 6]]
    assert ref["image_grid_thw"].tolist() == [[1, 4, 6], [1, 4, 6]]
    assert out["pixel_values_videos"].shape == ref["pixel_values"].shape == (2 * 4 * 6, 3 * 2 * 14 * 14)
    assert out["pixel_values_videos"].dtype == ref["pixel_values"].dtype
    assert np.allclose(out["pixel_values_videos"].numpy(), ref["pixel_values"].numpy(), atol=1e-6, rtol=0)


def _patches_by_hand(frames: np.ndarray) -> np.ndarray:
    """Qwen2-VL's video patch layout written out with loops (patch 14, merge 2, time 2)."""
    pixels = (frames.astype(np.float64) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    count, height, width, _ = frames.shape
    rows = []
    for t in range(count // 2):  # temporal patch
        for block_row in range(height // 28):  # 2x2 merge windows, row-major
            for block_col in range(width // 28):
                for inner_row in range(2):  # the 4 patches of a window, row-major
                    for inner_col in range(2):
                        top, left = (2 * block_row + inner_row) * 14, (2 * block_col + inner_col) * 14
                        patch = pixels[2 * t:2 * t + 2, top:top + 14, left:left + 14, :]  # (time, row, col, channel)
                        rows.append(patch.transpose(3, 0, 1, 2).reshape(-1))  # flattened as (channel, time, row, col)
    return np.stack(rows)


def test_patch_layout_matches_a_hand_written_reference():
    import torch

    rng = np.random.default_rng(2)
    first = (rng.random((4, 56, 84, 3)) * 255).astype(np.uint8)
    second = (rng.random((3, 28, 56, 3)) * 255).astype(np.uint8)  # odd: padded with its last frame
    out = video_pixel_inputs([first, list(second)], _image_processor())
    assert out["video_grid_thw"].tolist() == [[2, 4, 6], [2, 2, 4]]
    assert out["video_grid_thw"].dtype == torch.long
    padded = np.concatenate([second, second[-1:]])
    expected = np.concatenate([_patches_by_hand(first), _patches_by_hand(padded)])
    assert out["pixel_values_videos"].shape == (2 * 4 * 6 + 2 * 2 * 4, 1176)
    assert np.allclose(out["pixel_values_videos"].numpy(), expected, atol=1e-5, rtol=0)


def test_loaded_video_patches_count_matches_its_layout(tmp_path):
    path = write_video(tmp_path / "clip.mp4", codec="libx264", frames=30, fps=10, width=64, height=48)
    out = video_pixel_inputs([load_video(path)], _image_processor())
    t, h, w = out["video_grid_thw"][0].tolist()
    assert (t, h, w) == CLIP_3S["grid"]
    assert out["pixel_values_videos"].shape[0] == t * h * w == 4 * CLIP_3S["tokens"]


def test_unsized_frames_are_refused():
    with pytest.raises(ValueError, match="multiples of 28"):
        video_pixel_inputs([np.zeros((2, 50, 56, 3), np.uint8)], _image_processor())


# ------------------------------------------------------------------ bad inputs
def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _zero_frame_webm(folder: Path) -> Path:
    import av

    path = folder / "zero.webm"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    return path


def _audio_only(folder: Path) -> Path:
    import wave

    path = folder / "sound.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(8000)
        out.writeframes(b"\0\0" * 800)
    return path


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: d / "missing.mp4", "video file not found"),
        (lambda d: _write(d / "empty.mp4", b""), "empty (0 bytes)"),
        (lambda d: _write(d / "text.mp4", b"this is not a video at all"), "not a readable video"),
        (_zero_frame_webm, "video has no frames"),
        (_audio_only, "no video stream"),
    ],
    ids=["missing", "empty", "undecodable", "zero-frames", "audio-only"],
)
def test_bad_files_give_located_errors(tmp_path, make, reason):
    path = make(tmp_path)
    for call in (video_layout, load_video):
        with pytest.raises(InputError) as caught:
            call(path, item="clip-7")
        message = str(caught.value)
        assert message.startswith("(item 'clip-7') field 'video': "), message
        assert reason in message and str(path) in message
        assert caught.value.item == "clip-7" and caught.value.field == "video"


def test_truncated_file(tmp_path):
    whole = write_video(tmp_path / "clip.mp4", codec="libx264", frames=30, fps=10, width=64, height=48)
    data = whole.read_bytes()
    cut = _write(tmp_path / "cut.mp4", data[: len(data) // 2])
    with pytest.raises(InputError, match=r"field 'video': .*cut\.mp4"):
        load_video(cut, item="c")


def test_still_image_as_a_video_file(tmp_path):
    from PIL import Image

    path = tmp_path / "still.png"
    Image.new("RGB", (64, 48)).save(path)
    with pytest.raises(InputError, match=r"\(item 's'\) field 'video': a video file needs at least 2 frames"):
        load_video(path, item="s")
    assert load_video([path]).shape == (2, 280, 392, 3)  # as a one-frame list it is padded


def test_bad_frames_are_named(tmp_path):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (64, 48)).save(good)
    with pytest.raises(InputError, match=r"\(item 'v'\) field 'video': frame 1: image file not found"):
        load_video([good, tmp_path / "gone.png"], item="v")
    broken = _write(tmp_path / "broken.png", b"garbage")
    with pytest.raises(InputError, match=r"field 'video': frame 0: not a readable image"):
        video_layout([broken, good], item="v")


def test_oversized_frames_are_refused(tmp_path):
    path = write_video(tmp_path / "clip.mp4", codec="libx264", frames=4, fps=10, width=64, height=48)
    with pytest.raises(InputError, match="over the limit of 3000"):
        video_layout(path, ModelSettings(image_pixel_limit=3000), item="x")


@pytest.mark.parametrize(
    "value, reason",
    [("", "empty video path"), ([], "empty list of frames"), (3, "got int"), ([1, 2], "frame 0 must be")],
)
def test_bad_values(value, reason):
    with pytest.raises(InputError, match=reason):
        Video.from_value(value)


def test_nframes_only_for_files():
    from PIL import Image

    with pytest.raises(InputError, match="nframes applies to video files"):
        Video([Image.new("RGB", (8, 8))], nframes=4)
    with pytest.raises(InputError, match="positive integer"):
        Video("a.mp4", nframes=0)
    assert Video.from_value("clip.mp4", base_dir="/data").source == Path("/data/clip.mp4")
    assert math.isclose(plan_video_layout(8, 48, 64, fps=4).fps, 4.0)


def test_video_suffixes():
    from lamra.qwen2vl.video import is_video_path

    assert is_video_path("a/b/Clip.MP4") and is_video_path(Path("x.webm")) and is_video_path("y.gif")
    assert not is_video_path("photo.jpg") and not is_video_path("notes.txt")
