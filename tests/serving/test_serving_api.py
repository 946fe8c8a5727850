"""The HTTP API over a small index and the tiny model: every endpoint and every refusal."""

from __future__ import annotations

import base64
import io
import time
from urllib.parse import quote

import numpy as np
import pytest
from conftest import ODD_ID
from PIL import Image

from lamra.items import Item


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def expected_search(retriever, index, item, instruction=None, k=10):
    vectors = retriever.encode([item], instruction, show_progress=False)
    scores, ids = index.search(vectors, k)
    return list(ids[0]), np.asarray(scores[0], dtype=np.float32)


def check_matches(results, ids, scores):
    assert [hit["id"] for hit in results] == ids
    np.testing.assert_allclose([hit["scores"]["retrieval"] for hit in results], scores, atol=1e-4)
    assert [hit["score"] for hit in results] == [hit["scores"]["retrieval"] for hit in results]
    assert [hit["rank"] for hit in results] == list(range(1, len(ids) + 1))


def error(response, status, code, field=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    assert body["detail"]
    if field is not None:
        assert body["field"] == field, body
    return body


# -- status endpoints ---------------------------------------------------------------------


def test_health_and_info(make_client, tiny_retriever, serving_items, serving_index):
    client = make_client()
    assert client.get("/health").json() == {"status": "ok", "items": len(serving_items)}
    info = client.get("/info").json()
    assert info["model"] == tiny_retriever.fingerprint()
    assert info["index"]["count"] == len(serving_items)
    for key in ("model", "prompt_format", "dim"):
        assert info["index"]["manifest"][key] == tiny_retriever.fingerprint()[key]
    assert info["reranker"] is None
    assert info["limits"]["max_k"] == 100 and info["limits"]["alpha"] == 0.5
    assert "/" not in str(info["limits"])  # no paths leak through limits


def test_info_names_the_reranker(make_client, fake_reranker):
    assert make_client(reranker=fake_reranker).get("/info").json()["reranker"]["class"] == "FakeReranker"


def test_openapi_documents_every_endpoint_and_both_search_bodies(make_client):
    spec = make_client().get("/openapi.json").json()
    assert {"/search", "/embed", "/health", "/info", "/items/{item_id}/image"} <= set(spec["paths"])
    content = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    assert content["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"


def test_page_and_static_files(make_client):
    client = make_client()
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="results"' in page.text and "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/..%2Fapp.py").status_code == 404  # StaticFiles keeps to its folder
    assert client.get("/static/..%2F..%2Fserving%2Fapp.py").status_code == 404


# -- search -------------------------------------------------------------------------------


def test_text_search_matches_encoding_and_index_search(make_client, tiny_retriever, serving_index):
    client = make_client()
    response = client.post("/search", json={"text": "a red car", "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    ids, scores = expected_search(tiny_retriever, serving_index, Item(text="a red car"), k=5)
    check_matches(body["results"], ids, scores)
    assert body["query"] == {"text": "a red car", "instruction": None, "has_image": False, "has_video": False, "k": 5, "rerank": False}
    assert np.all(np.diff(scores) <= 1e-6)


def test_instruction_changes_the_query(make_client, tiny_retriever, serving_index):
    instruction = "Find me an everyday image that matches the given caption."
    body = make_client().post("/search", json={"text": "a dog", "instruction": instruction}).json()
    ids, scores = expected_search(tiny_retriever, serving_index, Item(text="a dog"), instruction)
    check_matches(body["results"], ids, scores)
    plain = expected_search(tiny_retriever, serving_index, Item(text="a dog"))[1]
    assert not np.allclose(plain, scores, atol=1e-6)


def test_image_upload_multipart_and_base64_json_agree(make_client, tiny_retriever, serving_index, image_files):
    client = make_client()
    data = image_files[1].read_bytes()
    uploaded = client.post("/search", data={"text": "green", "k": "4"},
                           files={"image": ("green.jpg", data, "image/jpeg")})
    assert uploaded.status_code == 200, uploaded.text
    as_json = client.post("/search", json={"text": "green", "k": 4, "image": b64(data)}).json()
    data_url = client.post("/search", json={"text": "green", "k": 4,
                                            "image": "data:image/jpeg;base64," + b64(data)}).json()
    ids, scores = expected_search(tiny_retriever, serving_index, Item(text="green", images=[image_files[1]]), k=4)
    for body in (uploaded.json(), as_json, data_url):
        check_matches(body["results"], ids, scores)
        assert body["query"]["has_image"] is True


def test_image_only_query(make_client, tiny_retriever, serving_index, image_files):
    body = make_client().post("/search", files={"image": ("q.png", image_files[0].read_bytes(), "image/png")}).json()
    ids, scores = expected_search(tiny_retriever, serving_index, Item(images=[image_files[0]]))
    check_matches(body["results"], ids, scores)
    assert len(body["results"]) == 9  # default k 10, nine items


def test_results_carry_text_and_image_urls(make_client, serving_items, image_files):
    client = make_client()
    results = client.post("/search", json={"text": "minister", "k": 100}).json()["results"]
    by_id = {hit["id"]: hit for hit in results}
    assert set(by_id) == {item.id for item in serving_items}
    assert by_id["txt-dog"]["image_url"] is None and by_id["txt-dog"]["text"] == "A dog runs on the grass."
    odd = by_id[ODD_ID]
    assert quote(ODD_ID, safe="") in odd["image_url"]
    image = client.get(odd["image_url"])  # the URL works as given, odd id included
    assert image.status_code == 200 and image.content == image_files[0].read_bytes()
    assert image.headers["content-type"] == "image/png"
    thumb = client.get(odd["thumbnail_url"])
    assert thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (64, 48)  # already under 256: kept
    assert "/tmp" not in str(results)  # file paths never leave the server


# -- reranking ----------------------------------------------------------------------------


def test_rerank_fuses_scores_and_reorders(make_client, fake_reranker, tiny_retriever, serving_index, image_files):
    client = make_client(reranker=fake_reranker)
    response = client.post("/search", data={"text": "red", "instruction": "Find it.", "k": "4", "rerank": "true",
                                            "rerank_depth": "9"},
                           files={"image": ("q.png", image_files[0].read_bytes(), "image/png")})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 4
    query, candidates = fake_reranker.calls[-1]
    assert len(candidates) == 9  # rerank_depth candidates scored, k returned
    assert query.text == "Find it. red" and len(query.images) == 1  # instruction folded in, image passed
    assert {hit["id"] for hit in results} <= {c.id for c in candidates}
    red = next(c for c in candidates if c.id == "red-circle")  # candidates carry the indexed files
    assert red.text == "A red circle on a white background." and red.images[0] == image_files[0].resolve()
    for hit in results:
        scores = hit["scores"]
        assert scores["fused"] == pytest.approx(0.5 * scores["retrieval"] + 0.5 * scores["rerank"], abs=1e-6)
        assert hit["score"] == scores["fused"]
    fused = [hit["scores"]["fused"] for hit in results]
    assert fused == sorted(fused, reverse=True)
    # The fake reranker prefers text-only items (P(Yes) 1 vs 0.1): they come first.
    text_only = [hit["image_url"] is None for hit in results]
    assert text_only == sorted(text_only, reverse=True) and text_only[0]


def test_rerank_with_the_real_reranker(make_client, tiny_checkpoint):
    from lamra.reranker.model import Reranker

    client = make_client(reranker=Reranker.from_pretrained(tiny_checkpoint, device="cpu"))
    body = client.post("/search", json={"text": "a red car", "k": 3, "rerank": True,
                                        "instruction": "Retrieve a caption."}).json()
    assert len(body["results"]) == 3 and body["query"]["rerank"] is True
    for hit in body["results"]:
        assert 0.0 <= hit["scores"]["rerank"] <= 1.0
        assert hit["scores"]["fused"] == pytest.approx(0.5 * hit["scores"]["retrieval"] + 0.5 * hit["scores"]["rerank"],
                                                       abs=1e-5)


def test_rerank_off_leaves_rerank_scores_empty(make_client, fake_reranker):
    body = make_client(reranker=fake_reranker).post("/search", json={"text": "a dog", "rerank": False}).json()
    assert all(hit["scores"]["rerank"] is None and hit["scores"]["fused"] is None for hit in body["results"])
    assert fake_reranker.calls == []


def test_rerank_without_a_reranker_is_a_clear_400(make_client):
    error(make_client().post("/search", json={"text": "a dog", "rerank": True}), 400, "rerank_unavailable", "rerank")


# -- embed --------------------------------------------------------------------------------


def test_embed_returns_the_retrievers_vectors(make_client, tiny_retriever, image_files):
    client = make_client()
    response = client.post("/embed", json={"items": [
        {"id": "t", "text": "a red car"},
        {"id": "i", "image": b64(image_files[2].read_bytes())},
        {"text": "a blue ellipse", "image": b64(image_files[2].read_bytes())},
    ], "instruction": "Find it."})
    assert response.status_code == 200, response.text
    body = response.json()
    vectors = np.asarray(body["vectors"], dtype=np.float32)
    expected = tiny_retriever.encode([Item(text="a red car"), Item(images=[image_files[2]]),
                                      Item(text="a blue ellipse", images=[image_files[2]])], "Find it.",
                                     show_progress=False)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert body["ids"] == ["t", "i", None] and body["dim"] == tiny_retriever.dim
    assert body["model"] == tiny_retriever.fingerprint()


@pytest.mark.parametrize("payload, status, code", [
    ({"items": []}, 400, "empty_request"),
    ({"items": [{"text": "   "}]}, 400, "empty_item"),
    ({"items": [{"image": "%%%not base64"}]}, 400, "bad_base64"),
    ({"items": [{"image": b64(b"plain text, not an image")}]}, 400, "not_an_image"),
    ({"items": [{"txt": "typo"}]}, 400, "unknown_field"),
    ({"items": [{"text": 5}]}, 400, "bad_field"),
    ({"items": "a dog"}, 400, "bad_field"),
    ({"items": [{"text": "x" * 4001}]}, 400, "text_too_long"),
    ({"items": [{"text": "a"}] * 33}, 400, "too_many_items"),
])
def test_embed_refusals(make_client, payload, status, code):
    error(make_client().post("/embed", json=payload), status, code)


# -- images of the collection ---------------------------------------------------------------


def test_item_image_and_thumbnail(make_client, image_files):
    client = make_client()
    original = client.get("/items/yellow-disc/image")
    assert original.status_code == 200 and original.content == image_files[3].read_bytes()
    assert original.headers["x-content-type-options"] == "nosniff"
    thumb = client.get("/items/yellow-disc/image", params={"thumb": 64})
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 64
    info = client.get("/items/green-circle").json()
    assert info["id"] == "green-circle" and info["text"] is None and info["image_url"].endswith("/image")


@pytest.mark.parametrize("path, status, code", [
    ("/items/no-such-id/image", 404, "unknown_id"),
    ("/items/txt-dog/image", 404, "no_image"),
    ("/items/..%2F..%2F..%2Fetc%2Fpasswd/image", 404, "unknown_id"),
    ("/items/%2Fetc%2Fpasswd/image", 404, "unknown_id"),
    ("/items/red-circle%2F..%2F..%2Fmanifest.json/image", 404, "unknown_id"),
    ("/items/no-such-id", 404, "unknown_id"),
    ("/items/red-circle/image?thumb=5", 400, "out_of_range"),
    ("/items/red-circle/image?thumb=abc", 400, "bad_field"),
    ("/no/such/route", 404, "not_found"),
])
def test_image_refusals(make_client, path, status, code):
    error(make_client().get(path), status, code)


# -- bad search input -------------------------------------------------------------------------


def png_bytes(size=(40, 30), colour="purple") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("payload, status, code, field", [
    ({}, 400, "empty_query", "text"),
    ({"text": "   "}, 400, "empty_query", "text"),
    ({"instruction": "Find a caption."}, 400, "empty_query", "text"),
    ({"text": "x" * 4001}, 400, "text_too_long", "text"),
    ({"text": "a", "instruction": "y" * 1001}, 400, "text_too_long", "instruction"),
    ({"text": "a", "k": 0}, 400, "out_of_range", "k"),
    ({"text": "a", "k": 101}, 400, "out_of_range", "k"),
    ({"text": "a", "k": 2.5}, 400, "bad_field", "k"),
    ({"text": "a", "k": "ten"}, 400, "bad_field", "k"),
    ({"text": "a", "k": 5, "rerank_depth": 2}, 400, "out_of_range", "rerank_depth"),
    ({"text": 7}, 400, "bad_field", "text"),
    ({"text": "a", "colour": "red"}, 400, "unknown_field", "colour"),
    ({"image": "***"}, 400, "bad_base64", "image"),
    ({"image": b64(b"GIF89a but not really")}, 400, "not_an_image", "image"),
    ({"image": b64(png_bytes()[:50])}, 400, "corrupt_image", "image"),
    ({"text": "a", "rerank": "maybe"}, 400, "bad_field", "rerank"),
])
def test_search_json_refusals(make_client, payload, status, code, field):
    error(make_client().post("/search", json=payload), status, code, field)


NO_FILE = {"image": ("", b"", "application/octet-stream")}  # what a browser sends for an empty file input


@pytest.mark.parametrize("data, files, status, code, field", [
    ({"text": ""}, NO_FILE, 400, "empty_query", "text"),
    ({}, {"image": ("notes.txt", b"hello, I am a text file", "text/plain")}, 400, "not_an_image", "image"),
    ({}, {"image": ("cut.png", png_bytes()[:60], "image/png")}, 400, "corrupt_image", "image"),
    ({}, {"image": ("empty.png", b"", "image/png")}, 400, "empty_image", "image"),
    ({"text": "a", "k": "many"}, NO_FILE, 400, "bad_field", "k"),
    ({"text": "a", "k": "1000"}, NO_FILE, 400, "out_of_range", "k"),
    ({"text": "a", "rerank": "perhaps"}, NO_FILE, 400, "bad_field", "rerank"),
    ({"text": "a", "path": "/etc/passwd"}, NO_FILE, 400, "unknown_field", "path"),
    ({"text": "a"}, {"text": ("t.txt", b"a", "text/plain")}, 400, "bad_field", "text"),
])
def test_search_multipart_refusals(make_client, data, files, status, code, field):
    error(make_client().post("/search", data=data, files=files), status, code, field)


def test_multipart_edge_cases(make_client):
    client = make_client()
    empty_form = client.post("/search", content=b"--b--\r\n", headers={"content-type": "multipart/form-data; boundary=b"})
    error(empty_form, 400, "empty_query", "text")
    # An image given as a text field is refused, never read as a path.
    error(client.post("/search", data={"image": "/etc/passwd"}, files=NO_FILE | {"x": ("", b"")}), 400,
          "unknown_field")
    form_path = client.post("/search", content=b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\n'
                                               b"/etc/passwd\r\n--b--\r\n",
                            headers={"content-type": "multipart/form-data; boundary=b"})
    error(form_path, 400, "not_an_image", "image")
    ok = client.post("/search", data={"text": "a dog", "k": "2"}, files=NO_FILE)
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2


def test_bad_bodies(make_client):
    client = make_client()
    error(client.post("/search", content=b"{not json", headers={"content-type": "application/json"}), 400, "bad_json")
    error(client.post("/search", json=["a", "list"]), 400, "bad_json")
    error(client.post("/search", content=b"text=a", headers={"content-type": "text/plain"}), 415,
          "unsupported_media_type")
    error(client.post("/embed", content=b"{", headers={"content-type": "application/json"}), 400, "bad_json")
    error(client.get("/search"), 405, "method_not_allowed")


def test_upload_and_pixel_limits(make_client):
    big = png_bytes((400, 300), "white")
    noisy = io.BytesIO()
    Image.effect_noise((200, 200), 100).convert("RGB").save(noisy, format="PNG")
    limited = make_client(max_upload_bytes=len(noisy.getvalue()) - 1, max_image_pixels=50_000)
    error(limited.post("/search", files={"image": ("noise.png", noisy.getvalue(), "image/png")}), 413,
          "upload_too_large", "image")
    error(limited.post("/search", json={"image": b64(noisy.getvalue())}), 413, "upload_too_large", "image")
    error(limited.post("/search", files={"image": ("big.png", big, "image/png")}), 413, "image_too_large", "image")
    ok = limited.post("/search", files={"image": ("small.png", png_bytes((200, 200)), "image/png")})
    assert ok.status_code == 200, ok.text


def test_body_size_limit(make_client):
    client = make_client(max_upload_bytes=1000, max_text_chars=100, max_embed_items=1)
    limit = client.app.state.config.max_body_bytes
    error(client.post("/search", content=b"x" * (limit + 1), headers={"content-type": "application/json"}), 413,
          "body_too_large")

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(limit // 1000 + 2):
            yield b" " * 1000

    error(client.post("/search", content=chunks(), headers={"content-type": "application/json"}), 413,
          "body_too_large")


class SlowRetriever:
    """The tiny retriever, made slow: requests must time out instead of hanging."""

    def __init__(self, inner, delay):
        self.inner, self.delay, self.dim = inner, delay, inner.dim

    def fingerprint(self):
        return self.inner.fingerprint()

    def encode(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.inner.encode(*args, **kwargs)


def test_model_timeout_is_a_504(make_client, tiny_retriever):
    client = make_client(retriever=SlowRetriever(tiny_retriever, 1.0), request_timeout_s=0.2)
    error(client.post("/search", json={"text": "a dog"}), 504, "timeout")


def test_full_queue_is_a_503(make_client):
    error(make_client(max_queue=0).post("/search", json={"text": "a dog"}), 503, "busy")


def test_refuses_an_index_of_another_model(tiny_retriever):
    from lamra.errors import IncompatibleArtifactError
    from lamra.index import Index
    from lamra.serving.app import create_app

    other = {**tiny_retriever.fingerprint(), "model": "someone/else"}
    index = Index.from_vectors(np.eye(2, tiny_retriever.dim, dtype=np.float32), ["a", "b"], other)
    with pytest.raises(IncompatibleArtifactError, match="someone/else"):
        create_app(tiny_retriever, index)
