"""The benchmarks check what they time: a fast wrong path cannot report a speed-up."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ENCODE_ARGS = ["--arch", "tiny", "--texts", "6", "--images", "2", "--image-size", "56", "--repeats", "1"]


def test_encode_benchmark_passes_when_the_vectors_agree():
    result = load("encode_throughput").main(ENCODE_ARGS)
    assert result["same_vectors"] and result["tolerance"] == 1e-4
    assert all(row["max_abs_diff"] <= 1e-4 and row["min_cosine"] > 0.9999 for row in result["rows"])


def test_encode_benchmark_exits_1_when_its_vectors_differ(monkeypatch, capsys):
    from lamra.modeling.retriever import Retriever

    real = Retriever.encode

    def wrong(self, items, *args, **kwargs):  # a "fast" path that pools the wrong rows
        return np.roll(real(self, items, *args, **kwargs), 1, axis=0)

    monkeypatch.setattr(Retriever, "encode", wrong)
    with pytest.raises(SystemExit) as caught:
        load("encode_throughput").main(ENCODE_ARGS)
    assert caught.value.code == 1
    assert "FAILED" in capsys.readouterr().err


SEARCH_ARGS = ["--count", "3000", "--dim", "32", "--queries", "16", "--single", "3", "--bandwidth-gib", "0.02",
               "--sweep", ""]


def test_search_benchmark_computes_the_baselines_recall_and_both_numpy_ratios():
    result = load("search").main(SEARCH_ARGS)
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["numpy brute force (float32)"]["recall@10"] >= 0.99  # computed, not written
    assert rows["lamra flat (exact, float32)"]["recall@10"] >= 0.99
    assert set(result["exact_vs_numpy"]) == {"float16_index_vs_float32_numpy", "float32_index_vs_float32_numpy"}
    assert result["baselines_checked"]


def test_search_benchmark_exits_1_when_the_numpy_baseline_is_wrong(capsys):
    module = load("search")
    real = module.numpy_baseline

    def wrong(vectors, queries, single):  # a numpy baseline that returns other candidates
        timing_row, found = real(vectors, queries, single)
        return timing_row, (found + 1) % len(vectors)

    module.numpy_baseline = wrong
    with pytest.raises(SystemExit) as caught:
        module.main(SEARCH_ARGS)
    assert caught.value.code == 1
    assert "numpy brute force (float32): recall@10" in capsys.readouterr().err
