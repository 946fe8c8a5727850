"""Listwise reranking of lists longer than one prompt holds: windows and a tournament.

LamRA-Rank's listwise prompt names the best of up to 9 candidates ("Ans: (k)", one digit);
the released model was trained on lists of 2-5. A longer list - or one whose prompt would
pass the token limit - is cut into windows and played as a tournament:

1. the list is split, in order, into windows of at most ``window`` candidates whose prompts
   fit the token limit, their sizes balanced (10 with ``window=9`` gives 5 + 5, not 9 + 1);
2. every window is one listwise prompt; its best candidate (the largest digit probability)
   goes on to the next round, the others are out;
3. rounds repeat until one window is left: its best is the chosen candidate.

Each window also gives a probability per position. They are combined under Luce's choice
axiom (a candidate's odds against its window's best are the same in any list): a candidate's
log-strength is its log-probability minus its window best's, summed along the path up to the
final window, plus its final representative's log-probability there; normalised, the
strengths are a probability per position that sums to 1 and is largest at the chosen
candidate. For a list that fits one window they are simply the model's probabilities. The full
ranking orders candidates by these strengths (first place is the tournament's winner).

Cost: about n / (window - 1) prompts for n candidates (50 candidates, window 9: 7 prompts).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

# (windows of candidate indices) -> one array of log-probabilities per window, in window order.
WindowScorer = Callable[[list[list[int]]], list[np.ndarray]]


def balanced_windows(indices: Sequence[int], window: int, fits: Callable[[list[int]], bool]) -> list[list[int]]:
    """Consecutive windows of at most ``window`` indices that ``fits`` accepts, sizes balanced.

    A single index that does not fit on its own still gets a window (nothing smaller exists).
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    indices = list(indices)
    if not indices:
        return []
    target = math.ceil(len(indices) / math.ceil(len(indices) / window))
    windows: list[list[int]] = []
    current: list[int] = []
    for index in indices:
        if current and (len(current) >= target or not fits(current + [index])):
            windows.append(current)
            current = []
        current.append(index)
    windows.append(current)
    return windows


def tournament(count: int, score_windows: WindowScorer, *, window: int,
               fits: Callable[[list[int]], bool] = lambda _: True) -> tuple[int, np.ndarray]:
    """The chosen index among ``count`` candidates and a probability per candidate (see module doc)."""
    if count < 1:
        raise ValueError("listwise reranking needs at least one candidate")
    log_strength = np.zeros(count)
    representative = np.arange(count)  # each candidate's window winner still in play
    active = list(range(count))
    while True:
        windows = balanced_windows(active, window, fits)
        if len(windows) > 1 and len(windows) == len(active):
            raise ValueError(f"no two of the {len(active)} remaining candidates fit one listwise prompt; "
                             "raise the listwise token limit or rerank pointwise")
        scored = iter(score_windows([w for w in windows if len(w) > 1]))
        results = [np.asarray(next(scored), dtype=np.float64) if len(w) > 1 else np.zeros(1) for w in windows]
        if len(windows) == 1:
            members, log_probs = windows[0], results[0]
            final = dict(zip(members, log_probs))
            strengths = log_strength + np.array([final[r] for r in representative])
            probabilities = np.exp(strengths - np.logaddexp.reduce(strengths))
            return int(members[int(np.argmax(log_probs))]), probabilities.astype(np.float32)
        winners = []
        for members, log_probs in zip(windows, results):
            best = int(np.argmax(log_probs))
            relative = dict(zip(members, log_probs - log_probs[best]))
            in_window = np.isin(representative, members)
            log_strength[in_window] += np.array([relative[r] for r in representative[in_window]])
            representative[in_window] = members[best]
            winners.append(members[best])
        active = winners


def ranking(probabilities: np.ndarray) -> list[int]:
    """Candidate indices, strongest first (ties keep the input order)."""
    return [int(i) for i in np.argsort(-np.asarray(probabilities), kind="stable")]
