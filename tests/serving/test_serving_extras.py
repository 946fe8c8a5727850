"""HEAD and favicon, transparent thumbnails, video queries, and rerank scores equal to Reranker.score."""

from __future__ import annotations

import base64
import glob
import io
import os
import tempfile

import numpy as np
import pytest
from PIL import Image

from lamra.items import Item


def test_head_of_the_page_and_health_and_a_favicon(make_client):
    client = make_client()
    assert client.head("/").status_code == 200
    assert client.head("/health").status_code == 200
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in icon.content
    page = client.get("/").text
    assert 'rel="icon"' in page and client.get("/static/favicon.svg").status_code == 200


@pytest.fixture(scope="module")
def transparent_files(tmp_path_factory):
    """An RGBA icon and a palette PNG whose background is transparent black (as icons often are)."""
    folder = tmp_path_factory.mktemp("icons")
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgba.paste((200, 30, 30, 255), (10, 10, 30, 30))
    rgba.save(folder / "rgba.png")
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0, 30, 30, 200] + [0] * 762)
    palette.paste(1, (10, 10, 30, 30))
    palette.save(folder / "palette.png", transparency=bytes([0, 255]))  # colour 0 fully transparent
    return {"rgba": folder / "rgba.png", "palette": folder / "palette.png"}


@pytest.fixture(scope="module")
def icon_index(tiny_retriever, transparent_files, tmp_path_factory):
    from lamra.index import Index

    items = [Item(images=[path], id=name) for name, path in transparent_files.items()]
    return Index.build(items, tiny_retriever, tmp_path_factory.mktemp("icons-index") / "index", show_progress=False)


@pytest.mark.parametrize("name", ["rgba", "palette"])
def test_transparent_thumbnails_are_composited_on_white(tiny_retriever, icon_index, name):
    from fastapi.testclient import TestClient

    from lamra.serving.app import create_app

    with TestClient(create_app(tiny_retriever, icon_index)) as client:
        response = client.get(f"/items/{name}/image?thumb=40")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(int)
    assert thumb[2, 2].min() >= 245  # the transparent corner: white, not black
    assert thumb[20, 20].max() - thumb[20, 20].min() > 100  # the opaque centre keeps its colour


def test_palette_transparency_gives_no_warning_and_the_same_pixels(transparent_files, recwarn):
    from lamra.qwen2vl.images import load_image

    image = load_image(transparent_files["palette"])
    assert not [w for w in recwarn if "Palette images" in str(w.message)]
    with Image.open(transparent_files["palette"]) as handle:
        assert np.array_equal(np.asarray(image), np.asarray(handle.convert("RGBA").convert("RGB")))


# -- video queries ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """An 8-frame, 64x48 mp4 written with PyAV."""
    av = pytest.importorskip("av")
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for n in range(8):
            frame = np.zeros((48, 64, 3), np.uint8)
            frame[:, : 8 * (n + 1)] = (220, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _uploads_left() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "lamra-upload-*")))


def test_search_with_an_uploaded_video_matches_the_library(make_client, tiny_retriever, serving_index, clip):
    from lamra.qwen2vl.video import Video

    client = make_client()
    before = _uploads_left()
    vectors = tiny_retriever.encode([Item(video=Video(clip))], show_progress=False)
    scores, ids = serving_index.search(vectors, 4)
    with open(clip, "rb") as handle:
        form = client.post("/search", data={"k": "4"}, files={"video": ("clip.mp4", handle, "video/mp4")})
    assert form.status_code == 200, form.text
    as_json = client.post("/search", json={"video": base64.b64encode(clip.read_bytes()).decode(), "k": 4})
    assert as_json.status_code == 200, as_json.text
    for body in (form.json(), as_json.json()):
        assert body["query"]["has_video"] is True
        assert [hit["id"] for hit in body["results"]] == ids[0]
        np.testing.assert_allclose([hit["score"] for hit in body["results"]], scores[0], atol=1e-4)
    embedded = client.post("/embed", json={"items": [{"id": "v", "video": base64.b64encode(clip.read_bytes())
                                                      .decode()}]})
    assert embedded.status_code == 200, embedded.text
    np.testing.assert_allclose(embedded.json()["vectors"], vectors, atol=1e-5)
    assert _uploads_left() == before  # the temporary files are gone


def test_a_bad_video_is_a_400_that_names_the_field_not_a_temporary_path(make_client):
    client = make_client()
    before = _uploads_left()
    response = client.post("/search", files={"video": ("notes.mp4", b"this is not a video", "video/mp4")})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["field"] == "video" and "the uploaded video" in body["detail"]
    assert "lamra-upload-" not in body["detail"] and tempfile.gettempdir() not in body["detail"]
    assert _uploads_left() == before


# -- reranking: the server's scores are the reranker's --------------------------------------------------


@pytest.fixture(scope="module")
def tiny_reranker(tiny_checkpoint):
    from lamra.reranker.model import Reranker

    return Reranker.from_pretrained(tiny_checkpoint, device="cpu")


def test_rerank_scores_are_the_rerankers_on_the_same_inputs(make_client, tiny_reranker, serving_items, image_files):
    client = make_client(reranker=tiny_reranker)
    instruction = "Find me an everyday image that matches the given caption."
    with open(image_files[0], "rb") as handle:
        response = client.post("/search", data={"text": "a red circle", "instruction": instruction, "k": "5",
                                                "rerank": "true"},
                               files={"image": ("q.png", handle, "image/png")})
    assert response.status_code == 200, response.text
    hits = response.json()["results"]
    assert len(hits) == 5
    # The same query and candidates, built here from the test's own items (not from the server's metadata).
    by_id = {item.id: item for item in serving_items}
    query = Item(text="a red circle", images=[Image.open(image_files[0]).convert("RGB")])
    expected = tiny_reranker.score(query, [by_id[hit["id"]] for hit in hits], instruction=instruction)
    np.testing.assert_allclose([hit["scores"]["rerank"] for hit in hits], expected, atol=1e-5)
    for hit in hits:
        assert hit["scores"]["fused"] == pytest.approx(0.5 * hit["scores"]["retrieval"]
                                                       + 0.5 * hit["scores"]["rerank"], abs=1e-6)
    assert [hit["scores"]["fused"] for hit in hits] == sorted((hit["scores"]["fused"] for hit in hits), reverse=True)
