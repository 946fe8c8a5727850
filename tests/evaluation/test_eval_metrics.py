"""Metrics against naive references written straight from each definition, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from lamra.evaluation.metrics import (
    evaluate_run,
    itm_accuracy,
    map_at_k,
    parse_metric,
    per_query,
    r_at_1,
    rank_by_scores,
    recall_at_k,
)


def _rank_of(scores, position):
    """Rank (0-based) of a candidate: those scoring higher, or equal and earlier, come first."""
    s = scores[position]
    return int(sum(1 for j, t in enumerate(scores) if t > s or (t == s and j < position)))


def naive_hit(scores, positives, k):
    return float(any(_rank_of(scores, p) < k for p in positives))


def naive_circo_ap(scores, positives, k):
    if not positives:
        return 0.0
    ranks = {j: _rank_of(scores, j) for j in range(len(scores))}
    at_rank = {r: j for j, r in ranks.items()}
    total = 0.0
    for cut in range(1, k + 1):
        if cut - 1 not in at_rank:
            break
        relevant = at_rank[cut - 1] in positives
        precision = sum(1 for p in positives if ranks[p] < cut) / cut
        total += precision * relevant
    return total / min(k, len(positives))


def random_case(rng, queries=40, candidates=30, levels=4):
    """Scores on few levels (many ties), 0..4 positives per query (some queries have none)."""
    scores = rng.integers(0, levels, size=(queries, candidates)).astype(np.float32)
    positives = [set(rng.choice(candidates, size=rng.integers(0, 5), replace=False).tolist()) for _ in range(queries)]
    return scores, positives


def as_run(scores, depth):
    ids = [f"d{j}" for j in range(scores.shape[1])]
    return {f"q{i}": rank_by_scores(row, ids, depth) for i, row in enumerate(scores)}


def as_qrels(positives):
    return {f"q{i}": {f"d{j}" for j in pos} for i, pos in enumerate(positives)}


@pytest.mark.parametrize("seed", range(5))
def test_recall_and_map_match_naive_references_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores, positives = random_case(rng)
    run, qrels = as_run(scores, depth=12), as_qrels(positives)
    for k in (1, 3, 5, 10):
        expected = np.mean([naive_hit(s, p, k) for s, p in zip(scores, positives)])
        assert recall_at_k(run, qrels, k) == pytest.approx(expected)
        expected_map = np.mean([naive_circo_ap(s, p, k) for s, p in zip(scores, positives)])
        assert map_at_k(run, qrels, k) == pytest.approx(expected_map)
    assert r_at_1(run, qrels) == pytest.approx(np.mean([naive_hit(s, p, 1) for s, p in zip(scores, positives)]))


def test_per_query_values_and_missing_queries_count_as_zero():
    rng = np.random.default_rng(7)
    scores, positives = random_case(rng, queries=10)
    positives[0] = {rank_by_scores(scores[0], list(range(scores.shape[1])), 1)[0]}
    run, qrels = as_run(scores, depth=5), as_qrels(positives)
    run["only-in-run"] = ["d1", "d2"]
    qrels["only-in-qrels"] = {"d3"}
    table = per_query(run, qrels, ["Recall@1", "R@5", "MAP@5"])
    assert table["Recall@1"]["q0"] == 1.0
    assert table["Recall@1"]["only-in-run"] == 0.0 and table["R@5"]["only-in-qrels"] == 0.0
    for i in range(10):
        assert table["R@5"][f"q{i}"] == naive_hit(scores[i], positives[i], 5)
        assert table["MAP@5"][f"q{i}"] == pytest.approx(naive_circo_ap(scores[i], positives[i], 5))
    means = evaluate_run(run, qrels, ["R@5"])
    assert means["R@5"] == pytest.approx(np.mean(list(table["R@5"].values())))
    assert len(table["R@5"]) == 12


def test_circo_map_divides_by_min_k_and_positives_not_by_positives():
    # 3 positives, K=2, ranking p x p: CIRCO gives (1*1 + 0) / min(2, 3) = 0.5; trec's AP@2 would give 1/3.
    run = {"q": ["p1", "x", "p2", "p3"]}
    assert map_at_k(run, {"q": {"p1", "p2", "p3"}}, 2) == pytest.approx(0.5)
    # 1 positive at rank 2, K=5: P@2 = 1/2, divided by min(5, 1) = 1.
    assert map_at_k({"q": ["x", "p"]}, {"q": {"p"}}, 5) == pytest.approx(0.5)


def test_recall_is_a_hit_rate_not_a_fraction_of_positives():
    run = {"q": ["a", "x", "y"]}
    assert recall_at_k(run, {"q": {"a", "b", "c", "d"}}, 1) == 1.0  # classic recall would be 0.25


@pytest.mark.parametrize("seed", range(3))
def test_itm_accuracy_matches_naive_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, size=(200, 2)).astype(float)  # ties are frequent
    labels = np.zeros_like(scores, dtype=bool)
    labels[np.arange(200), rng.integers(0, 2, size=200)] = True
    expected = np.mean([row[flags].max() > row[~flags].max() for row, flags in zip(scores, labels)])
    assert itm_accuracy(scores, labels) == pytest.approx(expected)
    naive = sum(1 for row, flags in zip(scores, labels) if (row[0] > row[1] if flags[0] else row[1] > row[0])) / 200
    assert itm_accuracy(scores, labels) == pytest.approx(naive)
    assert itm_accuracy([[1.0, 1.0]], [[True, False]]) == 0.0  # a tie is wrong


def test_bad_metric_names_and_bad_itm_rows_are_refused():
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metric("NDCG@10")
    assert parse_metric("r@1") == ("recall", 1) and parse_metric("mAP@5") == ("map", 5)
    assert parse_metric("ITM") == ("itm", 0)
    with pytest.raises(ValueError, match="a positive and a negative"):
        itm_accuracy([[0.3, 0.1]], [[True, True]])
    with pytest.raises(ValueError, match="ranked twice"):
        recall_at_k({"q": ["a", "a"]}, {"q": {"a"}}, 1)


def test_rank_by_scores_breaks_ties_by_position():
    assert rank_by_scores(np.array([0.5, 0.9, 0.5, 0.9]), ["a", "b", "c", "d"]) == ["b", "d", "a", "c"]
    assert rank_by_scores(np.array([0.5, 0.9, 0.5, 0.9]), ["a", "b", "c", "d"], 3) == ["b", "d", "a"]
