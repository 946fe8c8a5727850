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
    # The second baseline (plain sorted loop, pre-tokenized) is run, checked and compared with.
    assert result["sorted_batch_size"] == 256 and result["bf16_peak"] is None  # CPU: no MFU
    for row in result["rows"]:
        assert row["sorted_max_abs_diff"] <= 1e-4 and row["sorted_items_per_s"] > 0 and row["vs_sorted"] > 0
        assert row["text_mfu"] is None


def test_encode_benchmark_exits_1_when_its_vectors_differ(monkeypatch, capsys):
    from lamra.retriever.model import Retriever

    real = Retriever.encode

    def wrong(self, items, *args, **kwargs):  # a "fast" path that pools the wrong rows
        return np.roll(real(self, items, *args, **kwargs), 1, axis=0)

    monkeypatch.setattr(Retriever, "encode", wrong)
    with pytest.raises(SystemExit) as caught:
        load("encode_throughput").main(ENCODE_ARGS)
    assert caught.value.code == 1
    assert "FAILED" in capsys.readouterr().err


def test_encode_benchmark_exits_1_when_the_sorted_baselines_vectors_differ(capsys):
    module = load("encode_throughput")
    real = module.SortedLoop.encode

    def wrong(self, prepared, *args, **kwargs):  # a sorted loop that puts the vectors back out of order
        return np.roll(real(self, prepared, *args, **kwargs), 1, axis=0)

    module.SortedLoop.encode = wrong
    with pytest.raises(SystemExit) as caught:
        module.main(ENCODE_ARGS)
    assert caught.value.code == 1
    assert "from the sorted baseline" in capsys.readouterr().err


def test_encode_benchmark_profile_prints_lamras_stages_and_restores_the_processor(capsys):
    from lamra.qwen2vl import processor as processor_module

    load_image = processor_module.load_image
    result = load("encode_throughput").main([*ENCODE_ARGS, "--profile"])
    printed = capsys.readouterr().out
    for stage in ("tokenize + render", "image decode", "image resize + normalize", "collate (rest)", "forward"):
        assert f"stage {stage}" in printed
    images = result["rows"][-1]["profile_s"]
    assert images["image resize + normalize"] > 0 and images["forward"] > 0 and images["end_to_end"] > 0
    assert processor_module.load_image is load_image  # the timers are gone after the profile


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


RERANK_ARGS = ["--arch", "small", "--k", "4", "--image-size", "112", "--candidate-image-size", "56", "--repeats", "1",
               "--batch-size", "2", "--plain-batch", "2", "--only", "(i->t)"]


def test_rerank_benchmark_passes_when_every_path_agrees(tmp_path):
    import json

    out = tmp_path / "rerank.json"
    assert load("rerank").main([*RERANK_ARGS, "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert max(row["max_abs_diff"].values()) <= 1e-4 and row["full_forward_paths_diff"] <= 1e-4


def test_rerank_benchmark_exits_1_when_the_shared_path_numbers_the_candidates_wrong(monkeypatch, capsys):
    from lamra.reranker import forward as rerank_forward

    real = rerank_forward.mrope_positions
    prefix = {}

    def from_prefix_length(input_ids, *args, start: int = 0, **kwargs):
        # The classic mistake: number the candidate part from the prefix's length, not from its
        # next M-RoPE position (they differ when the prefix holds an image).
        if start == 0:
            prefix["length"] = len(input_ids)
            return real(input_ids, *args, **kwargs)
        return real(input_ids, *args, start=prefix["length"], **kwargs)

    monkeypatch.setattr(rerank_forward, "mrope_positions", from_prefix_length)
    assert load("rerank").main(RERANK_ARGS) == 1
    assert "FAIL" in capsys.readouterr().err


def test_rerank_benchmark_profile_labels_lamras_stages_and_restores_them(capsys):
    from lamra.reranker import forward as rerank_forward

    pixels = rerank_forward._pixels
    assert load("rerank").main([*RERANK_ARGS, "--profile", "--stock-vision-attention"]) == 0
    printed = capsys.readouterr().out
    assert "vision_attention=stock" in printed and "--- profile of the shared path" in printed
    for stage in ("lamra::_pixels", "lamra::forward:Qwen2VisionTransformerPretrainedModel",
                  "lamra::forward:Qwen2VLTextModel"):
        assert f"stage {stage}" in printed
    assert rerank_forward._pixels is pixels  # the labels are gone after the profile


SERVE_ARGS = ["--clients", "4", "--requests", "2", "--rounds", "1"]


@pytest.mark.slow  # starts a lamra serve process
def test_serve_benchmark_compares_the_routes_on_the_same_vectors(capsys):
    result = load("serve_openai").main(SERVE_ARGS)
    assert result["same_vectors"] and result["max_abs_diff"] <= 1e-5
    assert result["items_per_round"] == 8 and result["openai_vs_embed"] > 0
    module = load("serve_openai")
    real = module._v1_vector
    module._v1_vector = lambda answer: real(answer)[::-1].copy()  # a route that returns another vector
    with pytest.raises(SystemExit) as caught:
        module.main(SERVE_ARGS)
    assert caught.value.code == 1 and "FAILED" in capsys.readouterr().err
