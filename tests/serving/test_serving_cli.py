"""``lamra serve``: loads the model once, binds 127.0.0.1 by default, wires the reranker."""

from __future__ import annotations

import pytest
from conftest import FakeReranker
from fastapi.testclient import TestClient

from lamra.cli import main


@pytest.fixture
def captured_run(monkeypatch):
    """The serving loop replaced by a recorder: the command binds, builds the app, the test inspects it."""
    import lamra.cli.serve

    calls = []
    monkeypatch.setattr(lamra.cli.serve, "run", lambda app, listener, **options: calls.append(
        {"app": app, "listening": listener.getsockname(), **options}))
    return calls


@pytest.fixture
def counted_loads(monkeypatch):
    from lamra.retriever.model import Retriever

    loads = []
    original = Retriever.from_pretrained.__func__

    def counting(cls, model, **options):
        loads.append((str(model), options))
        return original(cls, model, **options)

    monkeypatch.setattr(Retriever, "from_pretrained", classmethod(counting))
    return loads


def test_serve_binds_localhost_and_loads_the_model_once(captured_run, counted_loads, tiny_checkpoint, serving_index):
    assert main(["serve", str(serving_index.path), "--model", str(tiny_checkpoint), "--device", "cpu",
                 "--port", "0"]) == 0
    (call,) = captured_run
    assert call["host"] == "127.0.0.1" and call["listening"][0] == "127.0.0.1" and call["port"] > 0
    assert call["port"] == call["listening"][1]  # the port announced is the one bound
    assert [(model, options["lora"], options["device"]) for model, options in counted_loads] == \
        [(str(tiny_checkpoint), None, "cpu")]
    with TestClient(call["app"]) as client:
        assert client.get("/info").json()["index"]["count"] == len(serving_index)
        assert client.post("/search", json={"text": "a dog", "k": 2}).status_code == 200
        assert client.post("/search", json={"text": "a dog", "rerank": True}).json()["code"] == "rerank_unavailable"
    assert len(counted_loads) == 1  # requests reuse the loaded model


def test_serve_options_reach_the_app(captured_run, monkeypatch, tiny_checkpoint, serving_index):
    from lamra.reranker.model import Reranker

    rerank_loads = []
    monkeypatch.setattr(Reranker, "from_pretrained",
                        classmethod(lambda cls, model, **options: rerank_loads.append((model, options)) or FakeReranker()))
    monkeypatch.setattr("lamra.qwen2vl.model_source.check_model_source", lambda source, **kw: None)  # "some/reranker"
    code = main(["serve", str(serving_index.path), "--model", str(tiny_checkpoint), "--device", "cpu",
                 "--rerank", "some/reranker", "--host", "0.0.0.0", "--no-auth", "--port", "0", "--max-k", "5",
                 "--max-batch-size", "4", "--alpha", "0.25", "--rerank-scores", "raw"])
    assert code == 0
    (call,) = captured_run
    assert call["host"] == "0.0.0.0" and call["listening"][0] == "0.0.0.0"
    ((model, options),) = rerank_loads
    assert model == "some/reranker" and options["device"] == "cpu" and options["lora"] is None
    assert options["rerank_scores"] == "raw"  # the reranker keeps its own folder's other settings
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
    from lamra.demo.tiny import save_tiny_checkpoint

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


def test_serve_refuses_a_port_in_use_before_announcing_or_loading(captured_run, counted_loads, tiny_checkpoint,
                                                                  serving_index, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(["serve", str(serving_index.path), "--model", str(tiny_checkpoint), "--port", str(port)])
    out, err = capsys.readouterr()
    assert code == 2 and "serving" not in out
    assert f"cannot listen on 127.0.0.1:{port}" in err and "in use" in err and "--port" in err
    assert counted_loads == [] and captured_run == []


def test_serve_passes_the_model_settings_and_the_pixel_limit(captured_run, counted_loads, tiny_checkpoint,
                                                             serving_index, capsys):
    base = ["serve", str(serving_index.path), "--model", str(tiny_checkpoint), "--device", "cpu", "--port", "0"]
    # Settings that change vectors reach the model, and the index built with the defaults is refused by name.
    assert main([*base, "--max-pixels", "50176", "--positions", "mrope", "--max-tokens", "512"]) == 2
    assert "max_pixels" in capsys.readouterr().err and captured_run == []
    settings = counted_loads[-1][1]["settings"]
    assert (settings.max_pixels, settings.positions, settings.max_tokens) == (50176, "mrope", 512)
    # The pixel limit changes no vector: the server starts, and it also caps uploaded query images.
    assert main([*base, "--image-pixel-limit", "4000000"]) == 0
    assert counted_loads[-1][1]["settings"].image_pixel_limit == 4_000_000
    (call,) = captured_run
    assert call["app"].state.config.max_image_pixels == 4_000_000


def test_serve_warns_about_an_untrained_model_in_the_terminal_and_in_info(captured_run, tiny_checkpoint,
                                                                         serving_index, capsys):
    from lamra.qwen2vl.model_source import UNTRAINED_MARK

    assert (tiny_checkpoint / UNTRAINED_MARK).is_file()  # lamra.demo.tiny marks what it builds
    assert main(["serve", str(serving_index.path), "--model", str(tiny_checkpoint), "--device", "cpu",
                 "--port", "0"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "UNTRAINED" in err
    (call,) = captured_run
    with TestClient(call["app"]) as client:
        info = client.get("/info").json()
    assert info["untrained"] is True and "UNTRAINED" in info["warnings"][0]


def test_serve_logs_one_line_per_request(captured_run, tiny_checkpoint, serving_index, caplog):
    import logging

    assert main(["serve", str(serving_index.path), "--model", str(tiny_checkpoint), "--device", "cpu",
                 "--port", "0"]) == 0
    (call,) = captured_run
    with caplog.at_level(logging.INFO, logger="lamra.serving.access"):
        with TestClient(call["app"]) as client:
            client.get("/health")
            client.post("/search", json={"text": "a dog", "k": 2})
            client.get("/items/nope")
    lines = [r.getMessage() for r in caplog.records if r.name == "lamra.serving.access"]
    assert [line.rsplit(" ", 2)[0] for line in lines] == ["GET /health 200", "POST /search 200", "GET /items/nope 404"]
    assert all(line.endswith(" ms") and float(line.split()[-2]) >= 0 for line in lines)


def test_serve_refuses_a_network_bind_without_a_key(captured_run, counted_loads, tiny_checkpoint, serving_index,
                                                    capsys, monkeypatch):
    monkeypatch.delenv("LAMRA_API_KEY", raising=False)
    base = ["serve", str(serving_index.path), "--model", str(tiny_checkpoint), "--device", "cpu", "--port", "0"]
    assert main([*base, "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to serve 0.0.0.0 without an API key") and "--api-key" in err
    assert "--no-auth" in err and len(err.splitlines()) == 1
    assert counted_loads == [] and captured_run == []  # refused before anything loads or binds
    # --no-auth opts out, and the start line says so; a key from LAMRA_API_KEY is enough.
    assert main([*base, "--host", "0.0.0.0", "--no-auth"]) == 0
    assert "open to anyone who reaches the port (--no-auth)" in capsys.readouterr().out
    monkeypatch.setenv("LAMRA_API_KEY", "k1,k2")
    assert main([*base, "--host", "0.0.0.0"]) == 0
    assert "API keys required (2 accepted)" in capsys.readouterr().out
    with TestClient(captured_run[-1]["app"]) as client:
        assert client.get("/info").status_code == 401
        assert client.get("/info", headers={"Authorization": "Bearer k2"}).status_code == 200
