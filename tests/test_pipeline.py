"""Retrieve -> rerank -> fuse: alpha 1 keeps the retrieval ranking, alpha 0 gives the
reranker's; released per-task weights; stored runs reranked without encoding."""

from __future__ import annotations

import numpy as np
import pytest

from lamra.errors import InputError
from lamra.items import Item
from lamra.pipeline import Hit, alpha_for, released_alpha, rerank_hits, rerank_run, search


class TableReranker:
    """P(Yes) from a table keyed by candidate text; listwise odds from the same table."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def score(self, query, candidates, instruction=None, *, batch_size=16):
        self.calls.append(("score", query, [c.text for c in candidates], instruction))
        return np.array([self.table[c.text] for c in candidates], dtype=np.float32)

    def pick(self, query, candidates, instruction=None, *, window=None, batch_size=16):
        self.calls.append(("pick", query, [c.text for c in candidates], instruction))
        strengths = np.array([self.table[c.text] for c in candidates])
        return int(strengths.argmax()), (strengths / strengths.sum()).astype(np.float32)


CANDIDATES = {f"d{n}": Item(text=f"doc {n}") for n in range(6)}
RERANK = {"doc 0": 0.1, "doc 1": 0.9, "doc 2": 0.5, "doc 3": 0.7, "doc 4": 0.3, "doc 5": 0.2}
HITS = [("d0", 0.9), ("d1", 0.8), ("d2", 0.7), ("d3", 0.6), ("d4", 0.5), ("d5", 0.4)]


def test_released_weights_as_alpha():
    assert released_alpha("visualnews_task0") == 0.5 and released_alpha(None) == 0.5
    assert released_alpha("mscoco_task0") == pytest.approx(2 / 3)
    assert released_alpha("mscoco_task3") == pytest.approx(1 / 1.1)
    assert alpha_for(None, "mscoco_task3") == pytest.approx(1 / 1.1)
    assert alpha_for(0.3, "mscoco_task3") == 0.3
    assert alpha_for({"cirr_task7": 0.2}, "cirr_task7") == 0.2
    assert alpha_for({"cirr_task7": 0.2}, "mscoco_task0") == pytest.approx(2 / 3)
    assert alpha_for({"default": 0.8}, "oven_task6") == 0.8
    with pytest.raises(ValueError, match="alpha"):
        alpha_for(1.5)


@pytest.mark.parametrize("w", [1.0, 0.5, 0.1])
def test_alpha_orders_like_the_released_weighted_sum(w):
    rng = np.random.default_rng(int(w * 10))
    s_ret, s_rank = rng.uniform(0.2, 0.9, 50), rng.uniform(0, 1, 50)
    alpha = 1 / (1 + w)
    released = s_ret + w * s_rank
    ours = alpha * s_ret + (1 - alpha) * s_rank
    assert list(np.argsort(-released)) == list(np.argsort(-ours))


@pytest.mark.parametrize("mode", ["pointwise", "listwise"])
def test_alpha_one_keeps_retrieval_and_alpha_zero_gives_the_rerankers_order(mode):
    reranker = TableReranker(RERANK)
    shuffled = [HITS[i] for i in (3, 0, 5, 1, 4, 2)]  # any order in, retrieval order out
    kept = rerank_hits(reranker, "q", shuffled, CANDIDATES, alpha=1.0, mode=mode)
    assert [h.id for h in kept] == ["d0", "d1", "d2", "d3", "d4", "d5"]
    reranked = rerank_hits(reranker, "q", HITS, CANDIDATES, alpha=0.0, mode=mode)
    assert [h.id for h in reranked] == ["d1", "d3", "d2", "d4", "d5", "d0"]
    half = rerank_hits(reranker, "q", HITS, CANDIDATES, alpha=0.5, mode=mode)
    assert all(h.fused == pytest.approx(0.5 * h.retrieval + 0.5 * h.rerank) for h in half)
    if mode == "pointwise":
        assert [h.rerank for h in reranked] == pytest.approx([0.9, 0.7, 0.5, 0.3, 0.2, 0.1])
    else:  # listwise odds against the chosen candidate
        assert reranked[0].rerank == pytest.approx(1.0) and reranked[1].rerank == pytest.approx(0.7 / 0.9)


def test_only_the_top_k_are_reranked():
    reranker = TableReranker(RERANK)
    hits = rerank_hits(reranker, "q", HITS, CANDIDATES, top_k=3, alpha=0.0)
    assert [h.id for h in hits] == ["d1", "d2", "d0", "d3", "d4", "d5"]
    assert reranker.calls[-1][2] == ["doc 0", "doc 1", "doc 2"]
    assert hits[3] == Hit("d3", 0.6) and hits[3].score == 0.6 and hits[0].score == hits[0].fused


def test_rerank_a_stored_run_with_per_task_alpha(tmp_path):
    from lamra.evaluation.report import read_trec_run, write_trec_run

    path = tmp_path / "run.trec"
    write_trec_run(path, ["q1", "q2"], [[d for d, _ in HITS]] * 2, [[s for _, s in HITS]] * 2)
    run = read_trec_run(path)
    reranker = TableReranker(RERANK)
    queries = {"q1": Item(text="first"), "q2": Item(text="second")}
    out = rerank_run(reranker, queries, run, CANDIDATES, tasks={"q1": "mscoco_task3", "q2": "webqa_task1"},
                     instructions={"q1": "Find it."})
    assert set(out) == {"q1", "q2"}
    for hit in out["q1"]:
        assert hit.fused == pytest.approx((hit.retrieval + 0.1 * hit.rerank) / 1.1, abs=1e-6)
    for hit in out["q2"]:
        assert hit.fused == pytest.approx((hit.retrieval + hit.rerank) / 2, abs=1e-6)
    assert [call[3] for call in reranker.calls] == ["Find it.", None]
    with pytest.raises(InputError, match="q9"):
        rerank_run(reranker, {}, {"q9": HITS}, CANDIDATES)
    with pytest.raises(InputError, match="d7"):
        rerank_hits(reranker, "q", [("d7", 0.5)], CANDIDATES)


def test_the_real_reranker_through_the_pipeline(tiny_checkpoint, tiny_retriever, image_files):
    """Live search: index -> top-K -> Reranker -> fused; alpha 0 equals Reranker.score's order."""
    from lamra.index.store import Index
    from lamra.reranker.model import Reranker

    reranker = Reranker.from_pretrained(tiny_checkpoint, device="cpu")
    docs = [Item(text="a red circle", id="a"), Item(images=[image_files[1]], id="b"),
            Item(text="green", images=[image_files[2]], id="c"), Item(text="a yellow star", id="d")]
    vectors = tiny_retriever.encode(docs, show_progress=False)
    metadata = [{"id": "a", "text": "a red circle"}, {"id": "b", "image": str(image_files[1])},
                {"id": "c", "text": "green", "image": str(image_files[2])}, {"id": "d", "text": "a yellow star"}]
    index = Index.from_vectors(vectors, [d.id for d in docs], tiny_retriever.fingerprint(), metadata=metadata,
                               dtype="float32")
    query = Item(text="a red thing")
    [retrieval] = search(tiny_retriever, index, reranker, [query], top_k=4, alpha=1.0)
    expected = np.argsort(-(vectors @ tiny_retriever.encode([query], show_progress=False)[0]), kind="stable")
    assert [h.id for h in retrieval] == [docs[i].id for i in expected]
    [reranked] = search(tiny_retriever, index, reranker, [query], top_k=4, alpha=0.0)
    p_yes = reranker.score(query, docs)
    assert [h.id for h in reranked] == [docs[i].id for i in np.argsort(-p_yes, kind="stable")]
    assert [h.rerank for h in reranked] == pytest.approx(sorted(p_yes, reverse=True), abs=1e-5)


class TableIndex:
    """An index whose search returns HITS (ids best first) and whose metadata rebuilds CANDIDATES."""

    def search(self, vectors, k, **params):
        self.params = params
        rows = HITS[:k]
        return np.array([[s for _, s in rows]] * len(vectors)), [[i for i, _ in rows]] * len(vectors)

    def metadata(self, item_id):
        return {"id": item_id, "text": CANDIDATES[item_id].text}


class NoEncoder:
    def encode(self, queries, instruction=None, **options):
        return np.zeros((len(queries), 4), dtype=np.float32)


def test_the_pipeline_object_retrieves_reranks_the_top_k_and_fuses():
    from lamra.pipeline import Pipeline

    reranker = TableReranker(RERANK)
    pipeline = Pipeline(NoEncoder(), TableIndex(), reranker, top_k=3, alpha=0.0)
    [ranked] = pipeline.search(["q"], k=5, nprobe=7)
    # The reranker saw the top 3 only (rebuilt from the index's metadata), and ordered them
    # (alpha 0); the next two follow in retrieval order.
    assert reranker.calls == [("score", "q", ["doc 0", "doc 1", "doc 2"], None)]
    assert [hit.id for hit in ranked] == ["d1", "d2", "d0", "d3", "d4"]
    assert [hit.fused for hit in ranked[3:]] == [None, None]
    assert pipeline.index.params == {"nprobe": 7}
    # Retrieval alone, without a reranker: the index's order, k hits.
    [plain] = Pipeline(NoEncoder(), TableIndex(), top_k=3).search(["q"], k=2)
    assert [(hit.id, hit.retrieval, hit.rerank) for hit in plain] == [("d0", 0.9, None), ("d1", 0.8, None)]
