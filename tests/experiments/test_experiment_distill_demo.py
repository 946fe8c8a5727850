"""experiments/distill_demo.py: the report's KL - no-KL differences and the share of the reranker's gain."""

from __future__ import annotations

from experiment_scripts import load_experiment


def test_report_averages_the_seeds_and_says_what_share_of_the_rerankers_gain_is_kept():
    module = load_experiment("distill_demo")
    row = lambda r1, r5: {"R@1": r1, "R@5": r5}  # noqa: E731
    results = {"test": {"before": {"wordnet_task1": row(20, 29), "clipart_task0": row(4, 14)},
                        "kl-s0": {"wordnet_task1": row(25, 33), "clipart_task0": row(4, 14)},
                        "no-kl-s0": {"wordnet_task1": row(21, 30), "clipart_task0": row(5, 14)},
                        "kl-s1": {"wordnet_task1": row(23, 31), "clipart_task0": row(3, 12)},
                        "no-kl-s1": {"wordnet_task1": row(21, 30), "clipart_task0": row(4, 13)}},
               "ret+rank": row(29, 35)}
    text = module.report(results, [0, 1])
    wordnet = next(line for line in text.splitlines() if line.startswith("wordnet_task1"))
    clipart = next(line for line in text.splitlines() if line.startswith("clipart_task0"))
    assert wordnet.split()[-1] == "+3.0"  # ((25 - 21) + (23 - 21)) / 2
    assert clipart.split()[-1] == "-1.0"
    assert "keeps 44 % of the reranker's R@1 gain" in text  # (24 - 20) / (29 - 20)


def test_report_shows_the_hard_negative_runs_and_the_val_line_when_present():
    module = load_experiment("distill_demo")
    row = lambda r1: {"wordnet_task1": {"R@1": r1, "R@5": 40}}  # noqa: E731
    results = {"test": {"before": row(20), "kl-s0": row(26), "no-kl-s0": row(21), "hn-s0": row(24)},
               "val": {"before": row(18), "kl-s0": row(22), "no-kl-s0": row(19), "hn-s0": row(23)}}
    lines = module.report(results, [0]).splitlines()
    assert lines[0].split()[1:5] == ["before", "kl-s0", "no-kl-s0", "hn-s0"]
    assert lines[1].split()[-1] == "+5.0" and "24.0 /  40.0" in lines[1]
    assert lines[2] == "wordnet_task1 on val, R@1: before 18.0; kl-s0 22.0, no-kl-s0 19.0, hn-s0 23.0"


def write_demo_like_data(data):
    """A WordNet-only demo-like root: one labelled training query (lemma "apple"), its sentence in
    the union training pool, and a stage-1 pair of lemma "boat"."""
    import json

    (data / "query" / "train").mkdir(parents=True)
    (data / "cand_pool" / "global").mkdir(parents=True)
    (data / "pairs").mkdir()
    (data / "mbeir_images").mkdir()
    source = json.dumps({"lemma": "apple", "source": "wordnet-base", "synset": "noun:00001000"})
    (data / "query" / "train" / "mbeir_wordnet_train.jsonl").write_text(json.dumps(
        {"qid": "22:1", "query_txt": "apple: the thing called apple", "query_img_path": None, "query_modality": "text",
         "query_src_content": source, "pos_cand_list": ["22:2"], "neg_cand_list": [], "task_id": 1}) + "\n")
    (data / "cand_pool" / "global" / "mbeir_union_train_cand_pool.jsonl").write_text(json.dumps(
        {"txt": "I saw the apple today", "img_path": None, "modality": "text", "did": "22:2",
         "src_content": source}) + "\n")
    (data / "pairs" / "train.jsonl").write_text(json.dumps(
        {"sent0": "boat: a small vessel", "sent1": "the boat sank", "hard_neg": "a shared sentence"}) + "\n")


def test_unlabelled_queries_come_from_lemmas_and_texts_the_demo_data_does_not_use(tmp_path):
    import json

    module = load_experiment("distill_demo")
    data, wordnet = tmp_path / "data", tmp_path / "wordnet"
    write_demo_like_data(data)
    wordnet.mkdir()
    synsets = [("apple", "the fruit", "an apple a day"), ("boat", "a vessel", "row the boat"),
               ("cloud", "a visible mass of water", "a cloud passed"), ("drum", "an instrument", "a shared sentence"),
               ("engine", "a machine", "the engine roared"), ("forest", "many trees", "lost in the forest")]
    (wordnet / "data.noun").write_text("".join(f"{1000 + n:08d} 06 n 01 {lemma} 0 000 | {gloss}; \"{example}\"  \n"
                                               for n, (lemma, gloss, example) in enumerate(synsets)))
    for pos in ("verb", "adj", "adv"):
        (wordnet / f"data.{pos}").write_text("")
    root, query_file = module.with_unlabelled_queries(data, tmp_path / "out", 10, wordnet)  # all there are
    lines = [json.loads(line) for line in query_file.read_text().splitlines()]
    assert lines[0]["qid"] == "22:1" and lines[0]["pos_cand_list"] == ["22:2"]  # the labelled query first
    added = lines[1:]
    # apple (a query's lemma), boat (a pair's), drum (its sentence is in a pair) are left out
    assert sorted(q["query_txt"].split(":")[0] for q in added) == ["cloud", "engine", "forest"]
    assert all(q["pos_cand_list"] == [] for q in added)
    pool = [json.loads(line) for line in
            (root / "cand_pool" / "global" / "mbeir_union_train_cand_pool.jsonl").read_text().splitlines()]
    by_did = {c["did"]: c for c in pool}
    for query in added:  # each query's own sentence is in the pool, numbered alike
        own = f"22:{int(query['qid'].split(':')[1]) - module.UNLABELLED_QID + module.UNLABELLED_DID}"
        assert json.loads(by_did[own]["src_content"])["lemma"] == query["query_txt"].split(":")[0]
    again, _ = module.with_unlabelled_queries(data, tmp_path / "again", 10, wordnet)
    assert (again / query_file.relative_to(root)).read_text() == query_file.read_text()  # deterministic


def test_the_unlabelled_report_counts_the_own_sentence_first_by_each_model(tmp_path):
    import json

    module = load_experiment("distill_demo")
    header = {"format": "lamra-teacher-scores-1", "retriever": {}, "reranker": {}}
    own = lambda n: f"22:{module.UNLABELLED_DID + n}"  # noqa: E731
    records = [  # the retriever puts the own sentence first for query 0; the teacher (S_ret + P) for 0 and 1
        {"qid": f"22:{module.UNLABELLED_QID}", "positives": [], "candidates": [[own(0), 0.9, 0.9], ["22:7", 0.8, 0.1]]},
        {"qid": f"22:{module.UNLABELLED_QID + 1}", "positives": [],
         "candidates": [["22:7", 0.9, 0.1], [own(1), 0.8, 0.9]]},
        {"qid": f"22:{module.UNLABELLED_QID + 2}", "positives": [], "candidates": [["22:7", 0.9, 0.1], ["22:8", 0.8, 0.2]]},
        {"qid": "22:1", "positives": ["22:2"], "candidates": [["22:2", 0.9, 0.9], ["22:7", 0.8, 0.1]]}]
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps(line) + "\n" for line in [header, *records]))
    assert module.unlabelled_top1(scores) == {"scored": 3, "queries": 3, "in_top_k": 66.7, "retriever_top1": 33.3,
                                              "teacher_top1": 66.7}
    # With a P(Yes) bar: only the queries the KL runs keep (query 2's best is 0.2), over the top k.
    assert module.unlabelled_top1(scores, min_p=0.5) == {"scored": 3, "queries": 2, "in_top_k": 100.0,
                                                         "retriever_top1": 50.0, "teacher_top1": 100.0}
    assert module.unlabelled_top1(scores, k=1, min_p=0.5) == {"scored": 3, "queries": 1, "in_top_k": 100.0,
                                                              "retriever_top1": 100.0, "teacher_top1": 100.0}
