"""``lamra search --rerank``: retrieve the top-k, rerank, fuse; every score checked against the
Retriever and Reranker called directly (S = alpha * S_ret + (1 - alpha) * S_rank, computed here)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from terminal_text import plain

from lamra.cli import main
from lamra.items import Item

INSTRUCTION = "Find the matching picture or caption."


@pytest.fixture(scope="module")
def index_path(sample_items, tiny_retriever, tmp_path_factory):
    from lamra.index import Index

    path = tmp_path_factory.mktemp("rerank-search") / "index"
    Index.build(sample_items, tiny_retriever, path, dtype="float32", show_progress=False)  # exact scores
    return path


def expected_hits(tiny_retriever, reranker, items, query: Item, *, top_k: int, alpha: float, listwise=False):
    """The pipeline computed here: cosine over all items, top_k, S_rank, fused, sorted."""
    vectors = tiny_retriever.encode(items, show_progress=False)
    query_vector = tiny_retriever.encode([query], INSTRUCTION, show_progress=False)[0]
    cosine = vectors @ query_vector
    top = np.argsort(-cosine, kind="stable")[:top_k]
    candidates = [items[i] for i in top]
    if listwise:
        _, probabilities = reranker.pick(query, candidates, INSTRUCTION)
        s_rank = probabilities / probabilities.max()
    else:
        s_rank = reranker.score(query, candidates, INSTRUCTION)
    s_ret = cosine[top]
    fused = alpha * s_ret + (1 - alpha) * s_rank
    order = np.argsort(-fused, kind="stable")
    return [(candidates[i].id, float(s_ret[i]), float(s_rank[i]), float(fused[i])) for i in order]


def run_search(capsys, args) -> dict:
    assert main(args) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("alpha", [0.3, 0.5])
def test_search_rerank_prints_the_fused_scores(alpha, capsys, tiny_checkpoint, tiny_retriever, sharp_reranker,
                                                sharp_reranker_folder, index_path, sample_items, image_files):
    query = Item(text="a red shape", images=[image_files[0]], id="query")
    body = run_search(capsys, ["search", str(index_path), "--text", "a red shape", "--image", str(image_files[0]),
                               "--instruction", INSTRUCTION, "--model", str(tiny_checkpoint), "--device", "cpu",
                               "--rerank", str(sharp_reranker_folder), "--top-k", "5", "-k", "4",
                               "--alpha", str(alpha), "--json"])
    expected = expected_hits(tiny_retriever, sharp_reranker, sample_items, query, top_k=5, alpha=alpha)
    assert [hit["id"] for hit in body["results"]] == [hit[0] for hit in expected[:4]]
    for hit, (_, s_ret, s_rank, fused) in zip(body["results"], expected):
        assert hit["retrieval"] == pytest.approx(s_ret, abs=1e-5)
        assert hit["rerank"] == pytest.approx(s_rank, abs=1e-5)
        assert hit["fused"] == pytest.approx(fused, abs=1e-5)
        assert hit["fused"] == pytest.approx(alpha * hit["retrieval"] + (1 - alpha) * hit["rerank"], abs=1e-6)
        assert hit["score"] == hit["fused"]
    assert len({round(h[2], 3) for h in expected}) > 2  # the reranker really separates candidates
    assert body["rerank"]["alpha"] == alpha and body["rerank"]["mode"] == "pointwise" and body["rerank"]["top_k"] == 5


def test_search_rerank_listwise_and_default_alpha(capsys, tiny_checkpoint, tiny_retriever, sharp_reranker,
                                                   sharp_reranker_folder, index_path, sample_items):
    query = Item(text="a red car", id="query")
    body = run_search(capsys, ["search", str(index_path), "--text", "a red car", "--instruction", INSTRUCTION,
                               "--model", str(tiny_checkpoint), "--device", "cpu", "--rerank",
                               str(sharp_reranker_folder), "--listwise", "--top-k", "6", "-k", "6", "--json"])
    expected = expected_hits(tiny_retriever, sharp_reranker, sample_items, query, top_k=6, alpha=0.5, listwise=True)
    assert body["rerank"]["alpha"] == 0.5 and body["rerank"]["mode"] == "listwise"
    assert [hit["id"] for hit in body["results"]] == [hit[0] for hit in expected]
    for hit, (_, s_ret, s_rank, fused) in zip(body["results"], expected):
        assert (hit["retrieval"], hit["rerank"], hit["fused"]) == pytest.approx((s_ret, s_rank, fused), abs=1e-5)
    assert max(hit["rerank"] for hit in body["results"]) == pytest.approx(1.0)


def test_hits_past_the_rerank_depth_keep_their_retrieval_order(capsys, tiny_checkpoint, tiny_retriever,
                                                                sharp_reranker, sharp_reranker_folder, index_path,
                                                                sample_items):
    query = Item(text="a dog", id="query")
    body = run_search(capsys, ["search", str(index_path), "--text", "a dog", "--instruction", INSTRUCTION,
                               "--model", str(tiny_checkpoint), "--device", "cpu", "--rerank",
                               str(sharp_reranker_folder), "--top-k", "2", "-k", "5", "--alpha", "0", "--json"])
    reranked = expected_hits(tiny_retriever, sharp_reranker, sample_items, query, top_k=2, alpha=0.0)
    retrieval_order = expected_hits(tiny_retriever, sharp_reranker, sample_items, query, top_k=5, alpha=1.0)
    results = body["results"]
    assert [hit["id"] for hit in results[:2]] == [hit[0] for hit in reranked]
    assert [hit["id"] for hit in results[2:]] == [hit[0] for hit in retrieval_order[2:5]]
    assert all(hit["rerank"] is None and hit["fused"] is None for hit in results[2:])
    assert [hit["score"] for hit in results[2:]] == pytest.approx([hit[1] for hit in retrieval_order[2:5]], abs=1e-5)


def test_the_table_shows_three_score_columns(capsys, tiny_checkpoint, sharp_reranker_folder, index_path):
    assert main(["search", str(index_path), "--text", "a dog", "--model", str(tiny_checkpoint), "--device", "cpu",
                 "--rerank", str(sharp_reranker_folder), "--top-k", "3", "-k", "3"]) == 0
    out = plain(capsys.readouterr().out)
    assert "# id retrieval rerank fused text image" in out
    assert "top 3 reranked (pointwise, alpha 0.5)" in out


def test_rerank_options_need_rerank_and_a_bad_reranker_fails_first(capsys, tiny_checkpoint, index_path, tmp_path):
    args = ["search", str(index_path), "--text", "a dog", "--model", str(tiny_checkpoint), "--device", "cpu"]
    assert main(args + ["--alpha", "0.3", "--listwise"]) == 2
    assert "--alpha, --listwise only work(s) with --rerank" in capsys.readouterr().err
    assert main(args + ["--rerank", str(tmp_path / "no-such-reranker")]) == 2
    error = capsys.readouterr().err
    assert "no-such-reranker" in error and error.count("\n") <= 3
