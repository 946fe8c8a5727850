"""``lamra mine`` with the pool in Milvus: each task searches its part of the pool through a
filter, and the mined lists equal those of the flat pool (on vectors float16 keeps exactly)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lamra.evaluation.baselines import RandomEncoder


class Float16Exact(RandomEncoder):
    """Random unit vectors rounded to float16: the flat pool (float16) and Milvus (float32) then
    hold the same numbers, so the scores must agree to the last bit the search keeps."""

    def encode(self, items, instruction=None, **options):
        return super().encode(items, instruction, **options).astype(np.float16).astype(np.float32)


@pytest.fixture(scope="module")
def mbeir(tmp_path_factory):
    from lamra.data.synthetic import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("mine-milvus") / "mbeir"
    synthesize(root, SynthConfig(test_queries=0, train_queries=3, pool_size=0, train_negatives=2))
    # One query gets a positive from another dataset: its task pool then holds a candidate that
    # the (dataset, modality) filter alone would leave out.
    path = root / "query" / "union_train" / "mbeir_union_up_train.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    pool = [json.loads(line) for line in
            (root / "cand_pool" / "global" / "mbeir_union_train_cand_pool.jsonl").read_text().splitlines()]
    first = lines[0]
    stranger = next(c["did"] for c in pool if c["did"].split(":")[0] != first["qid"].split(":")[0])
    first["pos_cand_list"].append(stranger)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def mined(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mining_with_the_pool_in_milvus_equals_the_flat_pool(mbeir, tmp_path):
    from lamra.reranker.mining import mine

    encoder = Float16Exact(seed=4, dim=32)
    flat, milvus = tmp_path / "flat.jsonl", tmp_path / "milvus.jsonl"
    # k beyond every task pool: each query's list is its whole task pool, in score order.
    summary = mine(encoder, mbeir, flat, k=1000, shard_size=16, show_progress=False)
    mine(encoder, mbeir, milvus, k=1000, shard_size=16, show_progress=False,
         pool_backend={"backend": "milvus", "index_type": "FLAT"})
    assert len(summary.tasks) > 3 and any(s["pool"] < 40 for s in summary.tasks.values())  # real task pools
    a, b = mined(flat), mined(milvus)
    assert [r["qid"] for r in a] == [r["qid"] for r in b] and len(a) > 10
    for x, y in zip(a, b):
        assert [d for d, _ in x["top"]] == [d for d, _ in y["top"]], x["qid"]
        np.testing.assert_allclose([s for _, s in x["top"]], [s for _, s in y["top"]], atol=1e-5)
        assert x["negatives"] == y["negatives"]
        # The positives' cosines, fetched from Milvus by id, equal those from the flat pool's vectors.
        assert [d for d, _ in x["positive_scores"]] == [d for d, _ in y["positive_scores"]] == x["positives"]
        np.testing.assert_allclose([s for _, s in x["positive_scores"]], [s for _, s in y["positive_scores"]],
                                   atol=1e-5)
        np.testing.assert_allclose([s for _, s in x["positive_scores"]],
                                   [dict(map(tuple, x["top"]))[d] for d in x["positives"]], atol=1e-5)
    assert not (tmp_path / "milvus.jsonl.work").exists()
