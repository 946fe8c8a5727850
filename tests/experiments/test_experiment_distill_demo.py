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
