"""The ecosystem's APIs of ``lamra serve``: the real ``openai`` and ``cohere`` SDKs against a real server
process, API keys, /metrics, ``lamra parity``, and a 4xx naming the field for every bad request.

One ``lamra serve`` process (tiny retriever, sharp tiny reranker, two keys) serves the whole module.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from conftest import FakeReranker, live_server, serve_process
from PIL import Image

from lamra.cli import main
from lamra.items import Item

KEY, ENV_KEY = "test-key-1", "test-key-from-env"
TEXTS = ["a dog runs on the grass", "A red car parks near the house.", "two people on a beach at sunset"]


def data_uri(path_or_image) -> str:
    image = Image.open(path_or_image) if not isinstance(path_or_image, Image.Image) else path_or_image
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


@pytest.fixture(scope="module")
def server(serving_index, tiny_checkpoint, sharp_reranker_folder):
    """A real ``lamra serve`` with a reranker, a key on the command line and another in LAMRA_API_KEY."""
    with serve_process(serving_index.path, "--model", tiny_checkpoint, "--device", "cpu", "--rerank",
                       sharp_reranker_folder, "--api-key", KEY, "--served-model-name", "lamra-ret",
                       env={"LAMRA_API_KEY": ENV_KEY}) as (url, process):
        yield url, process


def rgb(path):
    return Image.open(path).convert("RGB")


# -- the openai SDK ----------------------------------------------------------------------------------------


def test_openai_sdk_returns_retriever_encode_vectors(server, tiny_retriever, image_files):
    from openai import OpenAI

    url, _ = server
    client = OpenAI(base_url=url + "/v1", api_key=KEY)
    # Text, the SDK's default encoding (base64 of float32), a batch with an M-BEIR task name as instruction.
    got = client.embeddings.create(model="lamra-ret", input=TEXTS, extra_body={"instruction": "mscoco_task0"})
    instruction = "Find me an everyday image that matches the given caption."
    want = tiny_retriever.encode([Item(text=t) for t in TEXTS], instruction, show_progress=False)
    np.testing.assert_allclose(np.array([d.embedding for d in got.data]), want, atol=1e-6)
    assert [d.index for d in got.data] == [0, 1, 2] and got.model == "lamra-ret"
    assert got.usage.prompt_tokens == sum(len(tiny_retriever.tokenize(Item(text=t), instruction)) for t in TEXTS)

    # An image (vLLM's messages form) and text + image (the batch form), through extra_body.
    image = client.embeddings.create(model="lamra-ret", input="", extra_body={"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(image_files[1])}}]}]})
    both = client.embeddings.create(model="lamra-ret", input=[], extra_body={"input": [
        {"text": "a red circle", "image": data_uri(image_files[0])}, {"image": data_uri(image_files[2])}]})
    want = tiny_retriever.encode([Item(images=[rgb(image_files[1])]),
                                  Item(text="a red circle", images=[rgb(image_files[0])]),
                                  Item(images=[rgb(image_files[2])])], show_progress=False)
    np.testing.assert_allclose(image.data[0].embedding, want[0], atol=1e-6)
    np.testing.assert_allclose(np.array([d.embedding for d in both.data]), want[1:], atol=1e-6)


def test_openai_sdk_errors(server):
    import openai

    url, _ = server
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="text-embedding-3-small", input="a dog")
    assert missing.value.body["param"] == "model" and "lamra-ret" in missing.value.body["message"]
    with pytest.raises(openai.BadRequestError) as sized:
        client.embeddings.create(model="lamra-ret", input="a dog", dimensions=8)
    assert sized.value.body["param"] == "dimensions" and "one size" in sized.value.body["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="lamra-ret", input="a dog")
    models = client.models.list()
    kinds = {m.id: m.model_extra["kind"] for m in models.data}
    assert kinds["lamra-ret"] == "embedding" and "rerank" in kinds.values()
    assert all(m.model_extra["fingerprint"]["model"] for m in models.data)


# -- the cohere SDK ----------------------------------------------------------------------------------------


def test_cohere_sdk_rerank_returns_reranker_scores_and_listwise_picks(server, sharp_reranker):
    import cohere

    url, _ = server
    client = cohere.ClientV2(api_key=KEY, base_url=url)
    documents = ["a dog", "an old stone bridge over a river", "a bowl of fruit", *TEXTS]
    query = "a dog on the grass"
    got = client.rerank(model=sharp_reranker_folder_name(server), query=query, documents=documents, top_n=4)
    scores = sharp_reranker.score(Item(text=query), [Item(text=d) for d in documents])
    order = list(np.argsort(-scores, kind="stable"))
    assert [r.index for r in got.results] == order[:4]
    np.testing.assert_allclose([r.relevance_score for r in got.results], scores[order[:4]], atol=1e-5)
    assert len(set(np.round(scores, 4))) == len(documents)  # distinct scores: the order is a real check

    # Listwise over 12 documents (windows of 9): the first choice is Reranker.pick's.
    many = documents + [f"document number {n} about something else" for n in range(12 - len(documents))]
    listwise = client.rerank(model=sharp_reranker_folder_name(server), query=query, documents=many,
                             request_options={"additional_body_parameters": {"mode": "listwise"}})
    best, probabilities = sharp_reranker.pick(Item(text=query), [Item(text=d) for d in many])
    assert listwise.results[0].index == best
    np.testing.assert_allclose(sorted(r.relevance_score for r in listwise.results), sorted(probabilities), atol=1e-5)


def sharp_reranker_folder_name(server) -> str:
    url, _ = server
    cards = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    return next(card["id"] for card in cards if card["kind"] == "rerank")


def test_rerank_fuse_with_uses_the_released_weights_and_the_routes_agree(server, sharp_reranker, image_files):
    url, _ = server
    headers = {"Authorization": f"Bearer {ENV_KEY}"}  # the key from LAMRA_API_KEY works too
    body = {"query": {"text": "a red circle", "image": data_uri(image_files[0])},
            "documents": ["a red circle", {"image": data_uri(image_files[1])}, {"text": "a blue", "image":
                                                                               data_uri(image_files[2])}],
            "fuse_with": [0.2, 0.9, 0.5], "task": "mscoco_task0", "return_documents": True}
    answers = [httpx.post(url + path, json=body, headers=headers, timeout=60) for path in
               ("/v1/rerank", "/rerank", "/v2/rerank")]
    assert all(a.status_code == 200 for a in answers), answers[0].text
    results = answers[0].json()["results"]
    query = Item(text="a red circle", images=[rgb(image_files[0])])
    docs = [Item(text="a red circle"), Item(images=[rgb(image_files[1])]),
            Item(text="a blue", images=[rgb(image_files[2])])]
    p_yes = sharp_reranker.score(query, docs)
    alpha = 1 / 1.5  # the release's w = 0.5 for mscoco_task0
    for result in results:
        n = result["index"]
        assert result["rerank_score"] == pytest.approx(p_yes[n], abs=1e-5)
        assert result["relevance_score"] == pytest.approx(alpha * body["fuse_with"][n] + (1 - alpha) * p_yes[n],
                                                          abs=1e-5)
    assert [r["relevance_score"] for r in results] == sorted((r["relevance_score"] for r in results), reverse=True)
    assert results[0]["document"]["has_image"] in (True, False)
    assert [r["index"] for r in answers[1].json()["results"]] == [r["index"] for r in results]


# -- keys ---------------------------------------------------------------------------------------------------


def test_every_route_but_health_needs_a_key(tiny_retriever, serving_index, image_files):
    from fastapi.routing import APIRoute
    from fastapi.testclient import TestClient

    from lamra.serving.app import create_app

    app = create_app(tiny_retriever, serving_index, reranker=FakeReranker(), api_keys=["k-one", "k-two"])
    with TestClient(app) as client:
        routes = [(method, route.path.replace("{item_id:path}", "txt-dog")) for route in app.routes
                  if isinstance(route, APIRoute) for method in route.methods]
        guarded = [(m, p) for m, p in routes if p not in ("/health", "/", "/favicon.ico")]
        assert {"/v1/embeddings", "/v1/rerank", "/rerank", "/v2/rerank", "/v1/models", "/metrics", "/search",
                "/embed", "/info"} <= {p for _, p in guarded}
        for method, path in guarded:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k-one"}):
                response = client.request(method, path, headers=headers, json={})
                assert response.status_code == 401, (method, path, headers)
                assert response.json()["error"]["code"] == "invalid_api_key"
                assert response.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/health").status_code == 200
        assert client.get("/").status_code == 200  # the page's shell: it then asks for the key
        for key in ("k-one", "k-two"):
            assert client.get("/info", headers={"Authorization": f"Bearer {key}"}).status_code == 200


# -- metrics -------------------------------------------------------------------------------------------------


def metric_values(url) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_parse_and_count_the_requests(server):
    url, _ = server
    headers = {"Authorization": f"Bearer {KEY}"}
    ok = ("lamra_requests_total", (("method", "POST"), ("route", "/v1/embeddings"), ("status", "200")))
    refused = ("lamra_requests_total", (("method", "POST"), ("route", "/v1/embeddings"), ("status", "401")))
    encoded = ("lamra_items_encoded_total", ())
    reranked = ("lamra_candidates_reranked_total", (("mode", "pointwise"),))
    before = metric_values(url)
    for n in range(3):
        assert httpx.post(url + "/v1/embeddings", json={"input": TEXTS[: n + 1]}, headers=headers).status_code == 200
    assert httpx.post(url + "/v1/embeddings", json={"input": "x"}).status_code == 401
    assert httpx.post(url + "/v1/rerank", json={"query": "q", "documents": TEXTS}, headers=headers).status_code == 200
    after = metric_values(url)
    assert after[ok] - before.get(ok, 0) == 3 and after[refused] - before.get(refused, 0) == 1
    assert after[encoded] - before.get(encoded, 0) == 1 + 2 + 3
    assert after[reranked] - before.get(reranked, 0) == len(TEXTS)
    assert after[("lamra_batch_size_count", ())] > 0 and ("lamra_queue_depth", ()) in after
    assert after[("lamra_model_load_seconds", ())] > 0
    latency = ("lamra_request_duration_seconds_count", (("route", "/v1/embeddings"),))
    assert after[latency] - before.get(latency, 0) == 4
    (info,) = [labels for name, labels in after if name == "lamra_model_info"]
    assert dict(info)["fingerprint"] and dict(info)["reranker"]


# -- bad requests: a 4xx naming the field ---------------------------------------------------------------------


BAD = [  # (route, body, status, the field named, the code)
    ("/v1/embeddings", {"input": [{"image": "data:image/png;base64,!!not base64!!"}]}, 400, "input[0].image",
     "bad_base64"),
    ("/v1/embeddings", {"input": [{"image": "https://example.com/cat.png"}]}, 400, "input[0].image",
     "url_not_allowed"),
    ("/v1/embeddings", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}, 400,
     "messages[0].content[0].image_url.url", "url_not_allowed"),
    ("/v1/embeddings", {"model": "nope", "input": "a"}, 404, "model", "model_not_found"),
    ("/v1/embeddings", {"input": []}, 400, "input", "empty_request"),
    ("/v1/embeddings", {"input": ["a"] * 33}, 400, "input", "too_many_items"),
    ("/v1/embeddings", {"input": [[1, 2, 3]]}, 400, "input", "token_ids_not_supported"),
    ("/v1/embeddings", {"input": [{"text": " "}]}, 400, "input[0]", "empty_item"),
    ("/v1/embeddings", {"input": "a", "dimensions": 8}, 400, "dimensions", "dimensions_not_supported"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 400, "encoding_format", "bad_field"),
    ("/v1/embeddings", {"input": "a", "colour": "red"}, 400, "colour", "unknown_field"),
    ("/v1/rerank", {"model": "nope", "query": "a", "documents": ["b"]}, 404, "model", "model_not_found"),
    ("/v1/rerank", {"query": "a", "documents": []}, 400, "documents", "empty_request"),
    ("/v1/rerank", {"query": "a", "documents": ["b"] * 101}, 400, "documents", "too_many_items"),
    ("/v1/rerank", {"query": "a", "documents": ["b", {}]}, 400, "documents[1]", "empty_item"),
    ("/v1/rerank", {"query": "a", "documents": ["b", {"text": None, "image": None}]}, 400, "documents[1]",
     "empty_item"),
    ("/v1/rerank", {"query": {"image": "data:image/png;base64,AAAA"}, "documents": ["b"]}, 400, "query.image",
     "not_an_image"),
    ("/v1/rerank", {"query": "a", "documents": ["b"], "fuse_with": [0.1, 0.2]}, 400, "fuse_with", "bad_field"),
    ("/v1/rerank", {"query": "a", "documents": ["b"], "mode": "pairwise"}, 400, "mode", "bad_field"),
    ("/v1/rerank", {"query": "a", "documents": ["b"], "task": "cats_task9"}, 400, "task", "unknown_task"),
]


@pytest.mark.parametrize("path, body, status, field, code", BAD, ids=[f"{p}:{c}:{n}" for n, (p, _, _, _, c)
                                                                       in enumerate(BAD)])
def test_every_bad_request_is_a_4xx_naming_the_field(make_client, path, body, status, field, code):
    client = make_client(reranker=FakeReranker())
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (field, code)
    assert field in error["message"]  # the words name it too


# -- lamra parity ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def captured_serve(tmp_path_factory, serving_items, monkeypatch_module):
    """serve(*args) -> the app ``lamra serve ARGS`` builds (its loop replaced), over an index made with the
    same model and settings; served in a thread by the caller."""
    import lamra.cli.serve
    from lamra import Retriever
    from lamra.index import Index
    from lamra.settings import ModelSettings

    apps = []
    monkeypatch_module.setattr(lamra.cli.serve, "run", lambda app, listener, **options: apps.append(app))

    def serve(model, *options, positions="1d"):
        retriever = Retriever.from_pretrained(model, device="cpu", settings=ModelSettings(positions=positions))
        index = Index.build(serving_items[:3], retriever, tmp_path_factory.mktemp("parity-index") / "index",
                            show_progress=False)
        assert main(["serve", str(index.path), "--model", str(model), "--device", "cpu", "--port", "0",
                     "--positions", positions, *options]) == 0
        return apps[-1]

    return serve


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_parity_passes_against_lamra_serve(server, tiny_checkpoint, sharp_reranker_folder, capsys):
    url, _ = server
    assert main(["parity", url, "--model", str(tiny_checkpoint), "--api-key", KEY, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("  ok   ") == 10 and "FAIL" not in out and out.rstrip().endswith("parity: PASS")
    for modality in ("text", "image", "image,text"):
        assert f"\n  {modality:<11} " in out
    assert main(["parity", url + "/v1", "--model", str(sharp_reranker_folder), "--rerank", "--api-key", KEY,
                 "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["route"] == "/v1/rerank" and len(report["probes"]) == 3


# The parity runs below use the sharp tiny model (large weights) as the retriever: in the small-weight tiny
# model, positions move image vectors by a cosine distance of only ~1e-5, under the tolerance.


def test_parity_names_positions_for_an_mrope_server(captured_serve, sharp_reranker_folder, capsys):
    app = captured_serve(sharp_reranker_folder, positions="mrope")
    capsys.readouterr()  # (serve's start line)
    with live_server(app) as url:
        code = main(["parity", url, "--model", str(sharp_reranker_folder), "--device", "cpu", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and not report["passed"]
    for probe in report["probes"]:
        assert probe["passed"] == (probe["modality"] == "text"), probe
    assert report["likely_causes"][0].startswith("positions:")


def test_parity_fails_every_probe_against_another_model(captured_serve, sharp_reranker_folder, small_tokenizer,
                                                        tmp_path, capsys):
    from rerank_models import save_sharp_checkpoint

    other = save_sharp_checkpoint(tmp_path / "other", small_tokenizer, seed=2)  # same shape, other weights
    app = captured_serve(other, "--served-model-name", "other")
    capsys.readouterr()  # (serve's start line)
    with live_server(app) as url:
        code = main(["parity", url, "--model", str(sharp_reranker_folder), "--served-model-name", "other",
                     "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 1 and out.count("  FAIL ") == 10 and "  ok   " not in out
    assert "likely cause: template / model" in out


def test_parity_refuses_an_unreachable_endpoint_or_a_wrong_key_in_one_line(server, tiny_checkpoint, capsys):
    from conftest import free_port

    url, _ = server
    closed = f"http://127.0.0.1:{free_port()}"
    for argv, expected in (([closed], f"cannot reach {closed}"), ([url, "--api-key", "wrong"], "--api-key"),
                           (["ftp://host"], "must start with http")):
        assert main(["parity", *argv, "--model", str(tiny_checkpoint)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and len(err.splitlines()) == 1, err
