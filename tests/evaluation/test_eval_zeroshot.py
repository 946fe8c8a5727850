"""Zero-shot harness: ranking mode (Flickr30K / CIRCO style) and candidate lists (CC-Neg style)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from lamra.cli import main
from lamra.data.synthetic import COLOURS, SHAPES, Concept, render
from lamra.errors import InputError
from lamra.evaluation.baselines import OracleEncoder, RandomEncoder
from lamra.evaluation.metrics import per_query
from lamra.evaluation.report import read_trec_run
from lamra.evaluation.zeroshot import evaluate_zeroshot


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def concepts(count):
    rng = random.Random(0)
    picked = rng.sample([(s, c) for s in SHAPES for c in COLOURS], count)
    return [Concept(shape, colour, "plain") for shape, colour in picked]


@pytest.fixture
def flickr_style(tmp_path):
    """Image queries, two captions each in one candidate pool (i->t), plain qrels."""
    folder = tmp_path / "flickr-mini"
    (folder / "img").mkdir(parents=True)
    queries, candidates, qrels = [], [], []
    for n, concept in enumerate(concepts(12)):
        render(concept, size=32).save(folder / "img" / f"{n}.png")
        queries.append({"id": f"q{n}", "image": f"img/{n}.png"})
        for m, text in enumerate([f"a {concept.colour} {concept.shape}", f"the {concept.shape} is {concept.colour}"]):
            candidates.append({"id": f"c{n}-{m}", "text": text})
            qrels.append(f"q{n} 0 c{n}-{m} 1\n")
    write_jsonl(folder / "queries.jsonl", queries)
    write_jsonl(folder / "candidates.jsonl", candidates)
    (folder / "qrels.txt").write_text("".join(qrels))
    return folder


@pytest.fixture
def ccneg_style(tmp_path):
    """Each image query ranks its own two captions: the true one and a negated one."""
    folder = tmp_path / "ccneg-mini"
    (folder / "img").mkdir(parents=True)
    queries, candidates, qrels = [], [], []
    rng = random.Random(1)
    for n, concept in enumerate(concepts(20)):
        render(concept, size=32).save(folder / "img" / f"{n}.png")
        true, negated = f"a {concept.colour} {concept.shape}", f"a {concept.shape} that is not {concept.colour}"
        candidates += [{"id": f"t{n}", "text": true}, {"id": f"n{n}", "text": negated}]
        pair = [f"t{n}", f"n{n}"]
        rng.shuffle(pair)
        queries.append({"id": f"q{n}", "image": f"img/{n}.png", "candidates": pair})
        qrels.append(f"q{n} 0 t{n} 1\n")
    write_jsonl(folder / "queries.jsonl", queries)
    write_jsonl(folder / "candidates.jsonl", candidates)
    (folder / "qrels.txt").write_text("".join(qrels))
    return folder


def positives_of(folder):
    out = {}
    for line in (folder / "qrels.txt").read_text().splitlines():
        qid, _, did, _ = line.split()
        out.setdefault(qid, []).append(did)
    return out


class Constant:
    """Every item the same vector: every score ties."""

    def fingerprint(self):
        return {"model": "constant", "adapter": None, "prompt_format": "none", "dim": 8}

    def encode(self, items, instruction=None, **options):
        return np.tile(np.eye(8, dtype=np.float32)[0], (len(list(items)), 1))


def test_ranking_mode_scores_and_run_file(flickr_style, tmp_path):
    oracle = OracleEncoder(positives_of(flickr_style))
    results = evaluate_zeroshot(flickr_style, oracle, tmp_path / "out", instruction="Find a caption.",
                                show_progress=False)
    assert results.mode == "ranking" and list(results.metrics) == ["R@1", "R@5", "R@10", "MAP@5"]
    assert results.metrics["R@1"] == 100.0 and results.metrics["R@10"] == 100.0
    run = read_trec_run(tmp_path / "out" / "runs" / "zeroshot.trec")
    assert len(run) == 12 and all(len(r) == 10 for r in run.values())
    expected = per_query({q: [d for d, _ in r] for q, r in run.items()}, positives_of(flickr_style), ["MAP@5"])
    assert results.metrics["MAP@5"] == pytest.approx(100 * np.mean(list(expected["MAP@5"].values())))
    # The oracle puts the first caption first; the second lands anywhere, so CIRCO's MAP@5 is below 100.
    assert 50 <= results.metrics["MAP@5"] < 100
    again = evaluate_zeroshot(flickr_style, oracle, tmp_path / "out", instruction="Find a caption.",
                              show_progress=False)
    assert again.built == [] and sorted(again.reused) == ["candidates", "queries"]
    other = evaluate_zeroshot(flickr_style, oracle, tmp_path / "out", instruction="Another one.", show_progress=False)
    assert other.built == ["queries"]  # a new instruction re-encodes the queries only


def test_candidate_lists_give_itm_accuracy_with_ties_counted_wrong(ccneg_style, tmp_path):
    oracle = OracleEncoder(positives_of(ccneg_style))
    results = evaluate_zeroshot(ccneg_style, oracle, tmp_path / "a", instruction="Match.", show_progress=False)
    assert results.mode == "lists" and results.metrics == {"R@1": 100.0, "ITM": 100.0}
    tied = evaluate_zeroshot(ccneg_style, Constant(), tmp_path / "b", show_progress=False)
    queries = [json.loads(line) for line in (ccneg_style / "queries.jsonl").read_text().splitlines()]
    listed_first = np.mean([q["candidates"][0].startswith("t") for q in queries])
    assert tied.metrics["ITM"] == 0.0  # every pair ties: never strictly right
    assert tied.metrics["R@1"] == pytest.approx(100 * listed_first)  # ties keep the listed order
    chance = evaluate_zeroshot(ccneg_style, RandomEncoder(4), tmp_path / "c", metrics=["ITM", "R@2"],
                               show_progress=False)
    assert chance.metrics["R@2"] == 100.0 and 20 <= chance.metrics["ITM"] <= 80


def test_layout_errors_name_the_file_line_and_field(ccneg_style, flickr_style, tmp_path):
    lines = (ccneg_style / "queries.jsonl").read_text().splitlines(keepends=True)
    record = json.loads(lines[3])
    del record["candidates"]
    (ccneg_style / "queries.jsonl").write_text("".join(lines[:3] + [json.dumps(record) + "\n"] + lines[4:]))
    with pytest.raises(InputError, match="give every query one") as caught:
        evaluate_zeroshot(ccneg_style, RandomEncoder(), tmp_path, show_progress=False)
    assert (caught.value.line, caught.value.field) == (4, "candidates")
    record = json.loads(lines[3])
    record["candidates"] = ["t3", "nope"]
    (ccneg_style / "queries.jsonl").write_text("".join(lines[:3] + [json.dumps(record) + "\n"] + lines[4:]))
    with pytest.raises(InputError, match="not in candidates.jsonl: nope") as caught:
        evaluate_zeroshot(ccneg_style, RandomEncoder(), tmp_path, show_progress=False)
    assert caught.value.line == 4
    record["candidates"] = ["n3"]
    (ccneg_style / "queries.jsonl").write_text("".join(lines[:3] + [json.dumps(record) + "\n"] + lines[4:]))
    with pytest.raises(InputError, match="a positive and a negative") as caught:
        evaluate_zeroshot(ccneg_style, RandomEncoder(), tmp_path, metrics=["ITM"], show_progress=False)
    assert caught.value.line == 4
    with pytest.raises(InputError, match="ITM accuracy needs a 'candidates' list"):
        evaluate_zeroshot(flickr_style, RandomEncoder(), tmp_path, metrics=["ITM"], show_progress=False)
    (flickr_style / "qrels.txt").unlink()
    with pytest.raises(InputError, match="missing qrels.txt"):
        evaluate_zeroshot(flickr_style, RandomEncoder(), tmp_path, show_progress=False)


def test_lamra_eval_zeroshot_command(ccneg_style, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["eval", "zeroshot", str(ccneg_style), "--baseline", "oracle", "--instruction", "Match.",
                 "--metric", "R@1,ITM", "--out", str(out), "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ITM" in printed and "100.0" in printed
    report = json.loads((out / "results.json").read_text())
    assert report["metrics"] == {"R@1": 100.0, "ITM": 100.0} and report["mode"] == "lists"
