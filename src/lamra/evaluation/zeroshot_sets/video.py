"""Text -> video: MSR-VTT (1k-A test, fps-2 sampling) and MSVD (12 frames). Retrieval only: the
official rerank code never ran the video sets (mismatched constructor arguments, a collator that
drops video tensors, no script), so there is nothing to reproduce."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

from ...items import Video
from .base import Entry, Side, Task, ZeroShotSet, expect, fail, need_file
from .prompts import SUMMARIZE_TEXT, SUMMARIZE_VIDEO, VIDEO_CAPTION

RECALLS = ("R@1", "R@5", "R@10")
MSVD_FRAMES = 12  # eval_msvd: nframes=12; MSR-VTT: no nframes, 2 frames per second


def _video_set(name: str, videos: list[Video], captions: list[str], video_of_caption: list[int],
               video_source: Path, caption_source: Path) -> ZeroShotSet:
    texts = Side("texts", [Entry(str(j), (f"{VIDEO_CAPTION} {caption}{SUMMARIZE_TEXT}",))
                           for j, caption in enumerate(captions)], caption_source)
    pool = Side("videos", [Entry(str(i), (video, SUMMARIZE_VIDEO)) for i, video in enumerate(videos)], video_source)
    task = Task("t2v", "texts", "videos", RECALLS, [[i] for i in video_of_caption])
    return ZeroShotSet(name, {"texts": texts, "videos": pool}, [task],
                       notes=["video sets are retrieval only: the official rerank code never ran them"])


def read_msrvtt(root: Path) -> ZeroShotSet:
    """msrvtt/annotations/MSRVTT_JSFUSION_test.csv (video_id, sentence): row i <-> video i."""
    path = need_file(root / "msrvtt" / "annotations" / "MSRVTT_JSFUSION_test.csv", what="MSR-VTT test file")
    videos, captions = [], []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        for field in ("video_id", "sentence"):
            if field not in (reader.fieldnames or []):
                raise fail("missing column", path, line=1, field=field)
        for row in reader:
            line = reader.line_num
            video_id, sentence = row["video_id"], row["sentence"]
            if not video_id or sentence is None:
                raise fail("empty value", path, line=line, field="video_id" if not video_id else "sentence")
            videos.append(Video(need_file(root / "msrvtt" / "videos" / f"{video_id}.mp4", what="video", source=path,
                                          line=line, field="video_id")))
            captions.append(sentence)
    if not captions:
        raise fail("no rows", path, line=2)
    return _video_set("msrvtt", videos, captions, list(range(len(videos))), path, path)


class _PlainUnpickler(pickle.Unpickler):
    """Builtin containers only: raw-captions.pkl is a dict of lists of token lists; a pickle
    that asks for anything else (code) is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_msvd(root: Path) -> ZeroShotSet:
    """MSVD/test_list.txt (ids) with MSVD/raw-captions.pkl ({id: [[token, ...], ...]}): every
    caption of a test video is a query; videos MSVD/YouTubeClips/{id}.avi, 12 frames."""
    list_path = need_file(root / "MSVD" / "test_list.txt", what="MSVD test list")
    captions_path = need_file(root / "MSVD" / "raw-captions.pkl", what="MSVD captions")
    try:
        with open(captions_path, "rb") as handle:
            table = _PlainUnpickler(handle).load()
    except Exception as exc:
        raise fail(f"not a plain pickle of captions ({exc})", captions_path) from None
    expect(table, dict, captions_path)
    videos, captions, video_of = [], [], []
    for line, raw in enumerate(list_path.read_text(encoding="utf-8").splitlines(), start=1):
        video_id = raw.strip()
        if not video_id:
            continue
        if video_id not in table:
            raise fail(f"video {video_id} has no captions in {captions_path.name}", list_path, line=line,
                       field="video_id")
        path = need_file(root / "MSVD" / "YouTubeClips" / f"{video_id}.avi", what="video", source=list_path,
                         line=line, field="video_id")
        for tokens in expect(table[video_id], list, captions_path, item=video_id):
            words = expect(tokens, list, captions_path, item=video_id)
            captions.append(" ".join(str(word) for word in words))
            video_of.append(len(videos))
        videos.append(Video(path, nframes=MSVD_FRAMES))
    if not videos:
        raise fail("no video ids", list_path, line=1)
    return _video_set("msvd", videos, captions, video_of, list_path, captions_path)
