"""``lamra serve``: loads the model once, binds 127.0.0.1 by default, wires the reranker."""

from __future__ import annotations

import pytest
from conftest import FakeReranker
from fastapi.testclient import TestClient

from lamra.cli import main


@pytest.fixture
def captured_run(monkeypatch):
    """uvicorn.run replaced by a recorder: the command builds the app, the test inspects it."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append({"app": app, **options}))
    return calls


@pytest.fixture
def counted_loads(monkeypatch):
    from lamra.modeling.retriever import Retriever

    loads = []
    original = Retriever.from_pretrained.__func__

    def counting(cls, model, **options):
        loads.append((str(model), options))
        return original(cls, model, **options)

    monkeypatch.setattr(Retriever, "from_pretrained", classmethod(counting))
    return loads


def test_serve_binds_localhost_and_loads_the_model_once(captured_run, counted_loads, tiny_checkpoint, serving_index):
    assert main(["serve", str(serving_index.path), "--model", str(tiny_checkpoint), "--device", "cpu"]) == 0
    (call,) = captured_run
    assert call["host"] == "127.0.0.1" and call["port"] == 8000
    assert counted_loads == [(str(tiny_checkpoint), {"lora": None, "device": "cpu", "dtype": None})]
    with TestClient(call["app"]) as client:
        assert client.get("/info").json()["index"]["count"] == len(serving_index)
        assert client.post("/search", json={"text": "a dog", "k": 2}).status_code == 200
        assert client.post("/search", json={"text": "a dog", "rerank": True}).json()["code"] == "rerank_unavailable"
    assert len(counted_loads) == 1  # requests reuse the loaded model


def test_serve_options_reach_the_app(captured_run, monkeypatch, tiny_checkpoint, serving_index):
    from lamra.modeling.reranker import Reranker

    rerank_loads = []
    monkeypatch.setattr(Reranker, "from_pretrained",
                        classmethod(lambda cls, model, **options: rerank_loads.append((model, options)) or FakeReranker()))
    code = main(["serve", str(serving_index.path), "--model", str(tiny_checkpoint), "--device", "cpu",
                 "--rerank", "some/reranker", "--host", "0.0.0.0", "--port", "9123", "--max-k", "5",
                 "--max-batch-size", "4", "--alpha", "0.25"])
    assert code == 0
    (call,) = captured_run
    assert (call["host"], call["port"]) == ("0.0.0.0", 9123)
    assert rerank_loads == [("some/reranker", {"lora": None, "device": "cpu"})]
    config = call["app"].state.config
    assert (config.max_k, config.max_batch_size, config.alpha) == (5, 4, 0.25)
    with TestClient(call["app"]) as client:
        hits = client.post("/search", json={"text": "a dog", "k": 3, "rerank": True}).json()["results"]
        for hit in hits:
            scores = hit["scores"]
            assert scores["fused"] == pytest.approx(0.25 * scores["retrieval"] + 0.75 * scores["rerank"], abs=1e-6)
        assert client.post("/search", json={"text": "a dog", "k": 6}).json()["code"] == "out_of_range"


def test_serve_refuses_a_missing_index_before_loading_a_model(captured_run, counted_loads, tmp_path, tiny_checkpoint,
                                                             capsys):
    assert main(["serve", str(tmp_path / "nowhere"), "--model", str(tiny_checkpoint)]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert counted_loads == [] and captured_run == []


def test_serve_refuses_an_index_of_another_model(captured_run, tmp_path, tiny_retriever, small_tokenizer, capsys,
                                                 serving_index):
    from lamra.tiny import save_tiny_checkpoint

    other = save_tiny_checkpoint(tmp_path / "other-model", tokenizer=small_tokenizer, seed=1, hidden_size=48)
    assert main(["serve", str(serving_index.path), "--model", str(other), "--device", "cpu"]) == 2
    assert "another model" in capsys.readouterr().err and captured_run == []


def test_serve_rejects_a_bad_alpha(captured_run, tiny_checkpoint, serving_index):
    from typer.testing import CliRunner

    from lamra.cli import app

    result = CliRunner().invoke(app, ["serve", str(serving_index.path), "--model", str(tiny_checkpoint),
                                      "--alpha", "1.5"])
    assert result.exit_code == 2 and "alpha" in result.output
    assert captured_run == []
