"""The zero-shot sets scored as the official code scores them: for each set, vectors chosen by
hand (a stand-in encoder keyed on each prompt's text or file) give metrics computed by hand here;
reranking with a stand-in scorer checks K, the fusion weights and the score cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zeroshot_layout as layout

from lamra.evaluation.zeroshot_sets.prompts import IMAGE_CAPTION, URBAN_IMAGE_CAPTION
from lamra.evaluation.zeroshot_sets.run import ZeroShotReranking, bfloat16, evaluate_zeroshot_sets
from lamra.items import as_item, is_video


def e(*weights, dim=12):
    vector = np.zeros(dim, dtype=np.float32)
    for index, weight in weights:
        vector[index] = weight
    return vector


def key(item) -> str:
    """The last text of the prompt (summarize suffix dropped) unless it is the fixed image-side
    instruction, else the first media file's name."""
    item = as_item(item)
    texts = [p.split("\nSummarize above")[0] for p in item.parts if isinstance(p, str)]
    texts = [t for t in texts if t and t not in (IMAGE_CAPTION, URBAN_IMAGE_CAPTION)]
    if texts:
        return texts[-1]
    media = item.parts[0]
    return (media.source if is_video(media) else media).name


class KeyedEncoder:
    def __init__(self, table):
        self.table = table
        self.calls = 0

    def fingerprint(self):
        return {"model": "keyed", "adapter": None, "prompt_format": "none", "dim": 12}

    def encode(self, items, instruction=None, **options):
        self.calls += 1
        rows = [self.table[key(item)] for item in items]
        return np.stack([row / np.linalg.norm(row) for row in rows]).astype(np.float32)


def evaluate(root, name, table, tmp_path, **options):
    encoder = KeyedEncoder(table)
    results = evaluate_zeroshot_sets(root, [name], lambda: encoder, tmp_path / "out", show_progress=False, **options)
    (result,) = results
    return result, {t.task: t.metrics for t in result.tasks}


def test_bfloat16_rounding_matches_torch():
    import torch

    values = np.concatenate([np.random.default_rng(0).uniform(-1, 1, 1000),
                             [0.99995, 0.9999875, 1.00390625, 1.01171875, 0.6]]).astype(np.float32)
    assert bfloat16(values).tolist() == torch.from_numpy(values).bfloat16().float().tolist()
    assert bfloat16(np.array([0.99995, 0.9999875], dtype=np.float32)).tolist() == [1.0, 1.0]


def test_sharegpt4v(tmp_path):
    layout.sharegpt4v(tmp_path)
    table = {"sa_1.jpg": e((0, 1)), "sa_2.jpg": e((1, 1)), "sa_3.jpg": e((2, 1)),
             "a red square on a white wall": e((0, 1)), "two green fields": e((1, .6), (2, .8)),
             "blue sky over water": e((2, 1))}
    _, metrics = evaluate(tmp_path, "sharegpt4v", table, tmp_path)
    assert metrics["t2i"] == {"R@1": pytest.approx(200 / 3), "R@5": 100, "R@10": 100}
    assert metrics["i2t"] == {"R@1": 100, "R@5": 100, "R@10": 100}


def test_urban1k(tmp_path):
    layout.urban1k(tmp_path)
    table = {"1.jpg": e((0, 1)), "2.jpg": e((1, 1)), "3.jpg": e((2, 1)), "a long street at night": e((1, 1), (0, .5)),
             "cars parked near a shop": e((1, 1)), "people crossing a road": e((2, 1))}
    _, metrics = evaluate(tmp_path, "urban1k", table, tmp_path)
    # t->i: caption 1 finds image 2 first. i->t: image 1's best caption is its own (0.5 against 0).
    assert metrics["t2i"]["R@1"] == pytest.approx(200 / 3) and metrics["i2t"]["R@1"] == 100


def test_flickr_multi_caption_positives(tmp_path):
    layout.flickr(tmp_path)
    table = {"0.png": e((0, 1)), "1.png": e((1, 1), (0, .9))}
    table.update({f"image {j // 5} caption {j % 5}": e((j // 5, 1)) for j in range(10)})
    table["image 0 caption 4"] = e((0, .6), (1, .8))  # an image-0 caption closer to image 1 (0.996 > 0.6)
    _, metrics = evaluate(tmp_path, "flickr30k", table, tmp_path)
    assert metrics["t2i"] == {"R@1": 90, "R@5": 100, "R@10": 100}  # 9 of 10 captions
    # image 0: its own plain captions (1.0) first; image 1: image 0's 5th caption (0.996) before its own (0.743)
    assert metrics["i2t"] == {"R@1": 50, "R@5": 100, "R@10": 100}


def test_circo_val_map_and_the_reference_in_the_pool(tmp_path):
    layout.circo(tmp_path)
    ids = [11, 12, 13, 14, 15]
    table = {f"{i:012d}.jpg": e((n, 1)) for n, i in enumerate(ids)}
    changes = "I'm looking for a similar everyday image with the described changes. "
    # q0 (GT 13, 14): 15, 14, 11, 13, 12 -> precisions 1/2 at rank 2 and 2/4 at rank 4: AP = 1.0 / 2
    table[changes + "is red and has a dog"] = e((4, .7), (3, .5), (0, .3), (2, .1))
    # q1 (GT 15): its own reference 12 first, 15 second: AP = 1/2
    table[changes + "shows two of them"] = e((1, .7), (4, .5))
    result, metrics = evaluate(tmp_path, "circo-val", table, tmp_path)
    assert metrics["map"] == {f"MAP@{k}": pytest.approx(50) for k in (5, 10, 25, 50)}
    assert metrics["recall"] == {f"R@{k}": 100 for k in (5, 10, 25, 50)}


def test_circo_test_writes_the_submission(tmp_path):
    layout.circo(tmp_path)
    table = {f"{i:012d}.jpg": e((n, 1)) for n, i in enumerate([11, 12, 13, 14, 15])}
    changes = "I'm looking for a similar everyday image with the described changes. "
    table[changes + "is red and has a dog"] = e((4, .7), (3, .5), (0, .3), (2, .1))
    table[changes + "shows two of them"] = e((1, .7), (4, .5))
    evaluate(tmp_path, "circo", table, tmp_path)
    body = json.loads((tmp_path / "out" / "circo" / "circo_test_submission.json").read_text())
    assert body == {"7": ["15", "14", "11", "13", "12"], "8": ["12", "15", "11", "13", "14"]}


def test_genecis_lists_and_the_mean(tmp_path):
    layout.genecis(tmp_path)
    table = {f"{i:012d}.jpg": e((i, 1)) for i in range(2, 5)}
    table.update({f"{i}_0_{slot}.jpg": e((i - 15, 1)) for slot, i in enumerate([20, 21, 22, 23])})
    table["I'm looking for a similar everyday image with the described changes. dog"] = e((2, .9), (3, .5))
    table["I'm looking for a similar everyday image with the described changes. wooden"] = e((6, .9), (7, .5))
    # focus_attribute: gallery 22 first, the target (21) second
    table["I'm looking for an image with the same attributes as described. wooden"] = e((7, .9), (6, .5))
    result, metrics = evaluate(tmp_path, "genecis", table, tmp_path)
    for task in ("change_object", "focus_object", "change_attribute"):
        assert metrics[task] == {"R@1": 100, "R@2": 100, "R@3": 100}
    assert metrics["focus_attribute"] == {"R@1": 0, "R@2": 100, "R@3": 100}
    assert result.mean == {"Ret": 75}


def test_vist_masks_the_context_photos(tmp_path):
    layout.vist(tmp_path)
    table = {f"p{n}{'.png' if n == 2 else '.gif' if n == 3 else '.jpg'}": e((n, 1)) for n in range(1, 11)}
    table["we went home"] = e((1, 1), (5, .5), (6, .3))  # p1 (context, masked), then p5: a hit
    table["a great day"] = e((7, .9), (3, .6), (10, .4))  # p7 masked; p3 (another story) beats p10
    _, metrics = evaluate(tmp_path, "vist", table, tmp_path)
    assert metrics["last_image"] == {"R@1": 50, "R@5": 100, "R@10": 100}


def test_visdial(tmp_path):
    layout.visdial(tmp_path)
    prefix = "Find me an everyday image that matches the given dialog. "
    table = {"VisualDialog_val2018_000000000005.jpg": e((0, 1)), "VisualDialog_val2018_000000000006.jpg": e((1, 1)),
             prefix + "Q: is it sunny? A: yes. Q: how many people? A: two.": e((1, 1), (0, .5)),
             prefix + "Q: how many people? A: yes.": e((1, 1))}
    _, metrics = evaluate(tmp_path, "visdial", table, tmp_path)
    assert metrics["t2i"] == {"R@1": 50, "R@5": 100, "R@10": 100}


def test_multiturn_fashion_recall_at_5_8_10(tmp_path):
    layout.fashion(tmp_path)
    table = {f"B{n:03d}.jpg": e((n - 1, 1)) for n in range(1, 13)}
    # q0 (target B003): B010 B009 B008 B007 B006, then B003 at rank 6
    table["has sleeves and is longer"] = e((9, .9), (8, .8), (7, .7), (6, .6), (5, .5), (2, .4), (0, .3))
    # q1 (target B005): its reference B004 among 8 before it, so B005 is 9th
    table["is red"] = e((0, .9), (1, .85), (2, .8), (3, .75), (5, .7), (6, .65), (7, .6), (8, .55), (4, .5))
    _, metrics = evaluate(tmp_path, "fashioniq-multiturn", table, tmp_path)
    assert metrics["multi_turn"] == {"R@5": 0, "R@8": 50, "R@10": 100}


def test_ccneg_counts_a_bfloat16_tie_as_wrong(tmp_path):
    layout.ccneg(tmp_path)
    table = {"0.jpg": e((0, 1)), "1.jpg": e((0, 1)),
             "a dog, running 0": e((0, 1)), "a cat not running 0": e((0, .6), (1, .8)),
             # caption above negative in float32 (0.9999875 > 0.99995), equal in bf16: wrong (official >)
             "a dog, running 1": e((0, 1), (1, .005)), "a cat not running 1": e((0, 1), (1, .01))}
    _, metrics = evaluate(tmp_path, "ccneg", table, tmp_path)
    assert metrics["ccneg"] == {"ITM": 50}


def sugar_table():
    return {"a.jpg": e((0, 1)), "b.jpg": e((1, 1)), "a red car": e((0, 1)), "a blue car": e((0, .8), (2, .6)),
            "a tall man": e((1, .8), (2, .6)), "a short man": e((1, 1)),
            "a car near a tree": e((0, 1)), "a tree near a car": e((0, .8), (2, .6))}


def test_sugar_crepe_subsets_and_their_mean(tmp_path):
    layout.sugar_crepe(tmp_path)
    result, metrics = evaluate(tmp_path, "sugar-crepe", sugar_table(), tmp_path)
    assert metrics == {"add_att": {"ITM": 50}, "swap_obj": {"ITM": 100}}
    assert result.mean == {"Ret": 75}


def test_msrvtt_and_msvd(tmp_path):
    layout.msrvtt(tmp_path)
    layout.msvd(tmp_path)
    prefix = "Find an everyday video match with caption. "
    table = {"video7020.mp4": e((0, 1)), "video7021.mp4": e((1, 1)), prefix + "a man is talking about cars": e((1, 1)),
             prefix + "a girl sings": e((1, 1)), "vid_a.avi": e((0, 1)), "vid_b.avi": e((1, 1)),
             prefix + "a man is cooking": e((0, 1)), prefix + "someone cooks": e((1, 1)),
             prefix + "a cat plays": e((1, 1))}
    _, msrvtt = evaluate(tmp_path, "msrvtt", table, tmp_path)
    _, msvd = evaluate(tmp_path, "msvd", table, tmp_path)
    assert msrvtt["t2v"] == {"R@1": 50, "R@5": 100, "R@10": 100}
    assert msvd["t2v"] == {"R@1": pytest.approx(200 / 3), "R@5": 100, "R@10": 100}


# -- reranking ---------------------------------------------------------------------------------


class Scorer:
    """A stand-in reranker: P(Yes) from the candidate's text or file; records what it was asked."""

    def __init__(self, table, fail_after=None):
        self.table, self.fail_after, self.calls = table, fail_after, []

    def __call__(self, reranker, query, candidates, *, batch_size=None):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls.append((query, candidates))
        return np.array([self.table(parts) for parts in candidates], dtype=np.float32)


def rerank(root, name, table, tmp_path, scorer):
    return evaluate(root, name, table, tmp_path,
                    reranking=ZeroShotReranking(lambda: "reranker", score=scorer))


def test_rerank_depth_is_ten_and_ret_rank_fuses(tmp_path):
    layout.fashion(tmp_path)
    table = {f"B{n:03d}.jpg": e((n - 1, 1)) for n in range(1, 13)}
    table["has sleeves and is longer"] = e((9, .9), (8, .8), (7, .7), (6, .6), (5, .5), (2, .4), (0, .3))
    table["is red"] = e((0, .9), (1, .85), (2, .8), (3, .75), (5, .7), (6, .65), (7, .6), (8, .55), (4, .5))
    # The reranker is sure of both targets (B003, B005): fused, they come first.
    scorer = Scorer(lambda parts: 1.0 if parts[0].name in ("B003.jpg", "B005.jpg") else 0.0)
    result, _ = rerank(tmp_path, "fashioniq-multiturn", table, tmp_path, scorer)
    assert [len(candidates) for _, candidates in scorer.calls] == [10, 10]
    assert result.tasks[0].reranked == {"R@5": 100, "R@8": 100, "R@10": 100}
    assert result.tasks[0].metrics == {"R@5": 0, "R@8": 50, "R@10": 100}


def test_matching_sets_rerank_both_captions_with_their_weights(tmp_path):
    layout.sugar_crepe(tmp_path)
    # The reranker prefers every negative: weight 0.1 keeps a 0.2 retrieval margin, weight 1 would not.
    negatives = {"a blue car", "a tall man", "a tree near a car"}
    scorer = Scorer(lambda parts: 1.0 if parts[0] in negatives else 0.0)
    result, _ = rerank(tmp_path, "sugar-crepe", sugar_table(), tmp_path, scorer)
    assert [len(c) for _, c in scorer.calls] == [2, 2, 2]
    assert [t.reranked for t in result.tasks] == [{"ITM": 50}, {"ITM": 100}]
    assert result.mean == {"Ret": 75, "Ret+Rank": 75}
    layout.ccneg(tmp_path / "cc")
    table = {"0.jpg": e((0, 1)), "1.jpg": e((1, 1)), "a dog, running 0": e((0, 1)),
             "a cat not running 0": e((0, .8), (2, .6)), "a dog, running 1": e((1, 1)),
             "a cat not running 1": e((1, .8), (2, .6))}
    cc_scorer = Scorer(lambda parts: 1.0 if parts[0].startswith("a cat") else 0.0)
    result, metrics = rerank(tmp_path / "cc", "ccneg", table, tmp_path / "cc", cc_scorer)
    assert metrics["ccneg"] == {"ITM": 100} and result.tasks[0].reranked == {"ITM": 0}  # weight 1 flips both


def test_rerank_scores_are_cached_and_a_killed_run_resumes(tmp_path):
    layout.sharegpt4v(tmp_path)
    table = {"sa_1.jpg": e((0, 1)), "sa_2.jpg": e((1, 1)), "sa_3.jpg": e((2, 1)),
             "a red square on a white wall": e((0, 1)), "two green fields": e((1, .6), (2, .8)),
             "blue sky over water": e((2, 1))}

    def p(parts):
        return 0.5

    with pytest.raises(KeyboardInterrupt):
        rerank(tmp_path, "sharegpt4v", table, tmp_path, Scorer(p, fail_after=4))
    again = Scorer(p)
    result, _ = rerank(tmp_path, "sharegpt4v", table, tmp_path, again)
    assert len(again.calls) == 2 and (result.scored, result.rescored) == (2, 4)  # 6 queries, 4 kept
    third = Scorer(p)
    result, _ = rerank(tmp_path, "sharegpt4v", table, tmp_path, third)
    assert third.calls == [] and (result.scored, result.rescored) == (0, 6) and result.reused == ["images", "texts"]


def test_video_sets_are_never_reranked(tmp_path):
    layout.msrvtt(tmp_path)
    prefix = "Find an everyday video match with caption. "
    table = {"video7020.mp4": e((0, 1)), "video7021.mp4": e((1, 1)), prefix + "a man is talking about cars": e((1, 1)),
             prefix + "a girl sings": e((1, 1))}
    loaded = []
    result, _ = evaluate(tmp_path, "msrvtt", table, tmp_path,
                         reranking=ZeroShotReranking(lambda: loaded.append(1), score=Scorer(lambda parts: 1.0)))
    assert loaded == [] and result.tasks[0].reranked is None
