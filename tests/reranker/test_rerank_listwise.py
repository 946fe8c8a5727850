"""Listwise windows and the tournament (no model: a scorer that follows Luce's choice model)."""

from __future__ import annotations

import numpy as np
import pytest

from lamra.reranker.listwise import balanced_windows, ranking, tournament


def luce_scorer(strengths, calls=None):
    """Window log-probabilities of a model that picks each candidate with odds ∝ its strength."""
    strengths = np.asarray(strengths, dtype=np.float64)

    def score(windows):
        if calls is not None:
            calls.append([len(w) for w in windows])
        return [np.log(strengths[w] / strengths[w].sum()) for w in windows]

    return score


def test_balanced_windows():
    everything = lambda _: True  # noqa: E731
    assert balanced_windows(range(9), 9, everything) == [list(range(9))]
    assert [len(w) for w in balanced_windows(range(10), 9, everything)] == [5, 5]
    assert [len(w) for w in balanced_windows(range(50), 9, everything)] == [9, 9, 9, 9, 9, 5]
    assert [len(w) for w in balanced_windows(range(7), 3, everything)] == [3, 3, 1]
    assert balanced_windows([4, 2, 7], 2, everything) == [[4, 2], [7]]  # order kept
    assert balanced_windows([], 5, everything) == []
    # A token limit that takes at most two candidates per window.
    assert [len(w) for w in balanced_windows(range(5), 9, lambda w: len(w) <= 2)] == [2, 2, 1]
    with pytest.raises(ValueError):
        balanced_windows(range(3), 0, everything)


@pytest.mark.parametrize("count,window", [(1, 9), (5, 9), (12, 9), (50, 9), (50, 5), (17, 2)])
def test_tournament_recovers_the_choice_model(count, window):
    """Under Luce's axiom the combined probabilities are exactly strength / total strength."""
    rng = np.random.default_rng(count * 10 + window)
    strengths = rng.uniform(0.1, 5.0, count)
    best, probabilities = tournament(count, luce_scorer(strengths), window=window)
    np.testing.assert_allclose(probabilities, strengths / strengths.sum(), rtol=1e-5)
    assert best == int(np.argmax(strengths))
    assert ranking(probabilities) == list(np.argsort(-strengths))


def test_tournament_cost_and_single_window():
    calls = []
    tournament(50, luce_scorer(np.arange(1, 51), calls), window=9)
    assert calls == [[9, 9, 9, 9, 9, 5], [6]]  # 7 prompts for 50 candidates
    calls = []
    best, probabilities = tournament(3, luce_scorer([1.0, 3.0, 2.0], calls), window=9)
    assert calls == [[3]] and best == 1
    np.testing.assert_allclose(probabilities, [1 / 6, 3 / 6, 2 / 6], rtol=1e-6)


def test_a_bye_costs_no_prompt():
    calls = []
    best, probabilities = tournament(7, luce_scorer([1, 1, 1, 1, 1, 1, 9.0], calls), window=3)
    assert calls == [[3, 3], [3]]  # the 7th candidate's window of one needs no prompt
    assert best == 6 and abs(probabilities.sum() - 1) < 1e-6


def test_the_winner_is_the_most_probable_even_when_windows_disagree():
    """A flat window's winner can look weak in its window; it still carries its final odds."""
    log_probs = {(0, 1, 2): np.log([0.34, 0.33, 0.33]), (3, 4, 5): np.log([0.9, 0.05, 0.05]),
                 (0, 3): np.log([0.6, 0.4])}
    best, probabilities = tournament(6, lambda windows: [log_probs[tuple(w)] for w in windows], window=3)
    assert best == 0 and int(np.argmax(probabilities)) == 0
    # 1 and 2 keep their odds against 0 (0.33 / 0.34), times 0's final share.
    np.testing.assert_allclose(probabilities[1] / probabilities[0], 0.33 / 0.34, rtol=1e-6)
    np.testing.assert_allclose(probabilities[3] / probabilities[0], 0.4 / 0.6, rtol=1e-6)


def test_nothing_fits_is_a_clear_error():
    with pytest.raises(ValueError, match="fit one listwise prompt"):
        tournament(3, luce_scorer([1, 2, 3]), window=9, fits=lambda w: len(w) == 1)
    with pytest.raises(ValueError, match="at least one"):
        tournament(0, luce_scorer([]), window=9)


def test_ranking_is_stable_on_ties():
    assert ranking(np.array([0.2, 0.4, 0.2, 0.2])) == [1, 0, 2, 3]
