"""Packed (padding-free) encoding: the padded path's vectors, from rows holding several prompts.

A tiny random Qwen2-VL with the real Qwen2 BPE, saved and loaded through the real path. Its
attention has 4 query heads over 2 key / value heads (grouped-query, as the 2B and 7B).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lamra import Item, Retriever
from lamra.qwen2vl import text_attention
from lamra.qwen2vl.processor import PromptInput
from lamra.retriever.packing import packed_inputs, plan_packing, plan_rows

WORDS = "the a red dog cat runs on green grass near house river city street photo of".split()


def text(words: int, seed: int = 0) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(words))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, qwen_tokenizer):
    from lamra.demo.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen-bpe"), tokenizer=qwen_tokenizer, seed=7)


@pytest.fixture(scope="module")
def retriever(folder):
    return Retriever.from_pretrained(folder, device="cpu")


def encode(retriever, items, **kwargs):
    return retriever.encode(items, show_progress=False, **kwargs)


def test_plan_rows_fills_rows_up_to_the_budget():
    lengths = [5, 30, 12, 40, 7, 12, 1, 25]
    rows = plan_rows(lengths, 40)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 40 for row in rows)
    assert rows[0] == [3]  # exactly the budget: a row of its own
    assert [len(row) for row in rows] == [1, 1, 2, 4]  # longest first: similar lengths share a row
    assert plan_rows([50, 3], 40) == [[0], [1]]  # a longer prompt than the budget: alone, uncut
    with pytest.raises(ValueError, match="at least 1 token"):
        plan_rows([3], 0)


def test_packed_row_positions_restart_at_zero_for_each_sequence():
    prompts = [PromptInput([11, 12, 13]), PromptInput([21]), PromptInput([31, 32])]
    inputs = packed_inputs(prompts)
    assert inputs["input_ids"].tolist() == [[11, 12, 13, 21, 31, 32]]
    assert inputs["position_ids"].shape == (3, 1, 6)
    for section in inputs["position_ids"]:  # all three M-RoPE sections: plain 1-D positions
        assert section[0].tolist() == [0, 1, 2, 0, 0, 1]
    assert inputs["cu_seq_lens_q"].tolist() == [0, 3, 4, 6] and inputs["max_length_q"] == 3


def test_packed_equals_padded_for_mixed_lengths(retriever):
    """Short and long prompts, several rows, many prompts in one row, one exactly at the budget."""
    texts = ["a", "dog"] + [text(words, seed) for seed, words in enumerate([3, 40, 8, 120, 15, 60, 2, 25, 90, 5])]
    prepared = retriever.prepare(texts)
    lengths = [len(p.input_ids) for p in prepared]
    budget = max(lengths)
    rows, padded = plan_packing(prepared, budget)
    assert padded == [] and len(rows) >= 3 and max(len(row) for row in rows) >= 4
    assert [sum(lengths[i] for i in row) for row in rows][0] == budget
    expected = encode(retriever, texts)
    got = encode(retriever, texts, packing=True, packed_tokens=budget)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # One row holding everything gives the same vectors too.
    np.testing.assert_allclose(encode(retriever, texts, packing=True, packed_tokens=sum(lengths)), expected, atol=1e-5)


def test_packed_equals_padded_for_prompts_of_one_and_two_tokens(retriever):
    """The shortest sequences there are (hand-made prompts): a row of single tokens attends to nothing else."""
    prompts = [PromptInput([9707]), PromptInput([1879]), PromptInput([9707, 1879]), PromptInput([0])]
    expected = retriever.encode_prepared(prompts, show_progress=False)
    np.testing.assert_allclose(retriever.encode_prepared(prompts, show_progress=False, packing=True), expected,
                               atol=1e-5)
    ones = [prompts[i] for i in (0, 1, 3)]
    np.testing.assert_allclose(retriever.encode_prepared(ones, show_progress=False, packing=True), expected[[0, 1, 3]],
                               atol=1e-5)
    assert np.abs(expected[0] - expected[1]).max() > 1e-3  # distinct tokens, distinct vectors


def test_packed_equals_padded_with_instructions(retriever):
    queries = ["a red dog", text(30, 1), "cat", text(70, 2)]
    instructions = ["Find a news image that matches the provided caption.", None,
                    "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image.",
                    "Find a caption for the news in the given photo."]
    expected = encode(retriever, queries, instruction=instructions)
    np.testing.assert_allclose(encode(retriever, queries, instruction=instructions, packing=True, packed_tokens=256),
                               expected, atol=1e-5)


def test_a_sequence_does_not_see_its_row_neighbours(retriever):
    """The same prompt after two different prompts in a row: the same vector as alone."""
    last = "a dog"
    first_rows = [[text(50, 3), last], [text(50, 4), last]]
    alone = encode(retriever, [last])[0]
    for items in first_rows:
        rows, _ = plan_packing(retriever.prepare(items), 10_000)
        assert rows == [[0, 1]]  # one row, the short prompt after the long one
        got = encode(retriever, items, packing=True, packed_tokens=10_000)
        np.testing.assert_allclose(got[1], alone, atol=1e-5)
    # The neighbours differ, so a leak across the boundary would show.
    assert np.abs(encode(retriever, [first_rows[0][0]]) - encode(retriever, [first_rows[1][0]])).max() > 1e-3


def test_items_with_images_keep_the_padded_path(retriever, image_files):
    items = ["a red circle", Item(images=[image_files[0]]), text(40, 5),
             Item(text="a green one", images=[image_files[1]]), "q?"]
    rows, padded = plan_packing(retriever.prepare(items), 4096)
    assert padded == [1, 3] and sorted(i for row in rows for i in row) == [0, 2, 4]
    np.testing.assert_allclose(encode(retriever, items, packing=True), encode(retriever, items), atol=1e-5)


def test_mrope_settings_refuse_packing(folder):
    mrope = Retriever.from_pretrained(folder, device="cpu", positions="mrope")
    with pytest.raises(ValueError, match=r"packing=True needs 1-D positions.*positions='mrope'.*packing=False"):
        encode(mrope, ["a dog"], packing=True)


def test_eager_attention_refuses_packing(folder):
    eager = Retriever.from_pretrained(folder, device="cpu", attn_implementation="eager")
    with pytest.raises(ValueError, match="'sdpa' or a flash-attention.*'eager'"):
        encode(eager, ["a dog"], packing=True)


def test_padded_vectors_are_unchanged_once_packing_switched_the_attention(folder):
    fresh = Retriever.from_pretrained(folder, device="cpu")
    items = ["a dog", text(60, 6), "q?"]
    before = encode(fresh, items)
    assert fresh.backbone.model.config.text_config._attn_implementation == "sdpa"
    encode(fresh, items, packing=True)
    assert fresh.backbone.model.config.text_config._attn_implementation == text_attention.NAME
    assert np.array_equal(encode(fresh, items), before)


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale, window_size=(-1, -1), enable_gqa=False):
    """torch's varlen_attn as documented, per sequence with plain sdpa: (total, heads, dim) in and out."""
    assert window_size == (-1, 0)  # causal
    outs = []
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        q_, k_, v_ = (t[start:end].transpose(0, 1) for t in (q, k, v))
        outs.append(torch.nn.functional.scaled_dot_product_attention(
            q_, k_, v_, is_causal=True, scale=scale, enable_gqa=enable_gqa).transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("gqa", [True, False])
def test_the_gpu_branch_lays_out_tensors_as_varlen_attn_expects(retriever, monkeypatch, gqa):
    """The varlen branch (CUDA only) with a CPU stand-in for torch's varlen_attn: its reshapes and
    grouped-query handling give the padded vectors."""
    texts = ["a dog", text(40, 7), text(12, 8)]
    expected = encode(retriever, texts)
    stand_in = {"function": _reference_varlen, "causal": {"window_size": (-1, 0)}, "gqa": gqa}
    monkeypatch.setattr(text_attention, "_VARLEN", stand_in)
    monkeypatch.setattr(text_attention, "_varlen_applies", lambda query: True)
    np.testing.assert_allclose(encode(retriever, texts, packing=True), expected, atol=1e-5)


# Largest max |difference| packed vs padded in bf16: measured on the CPU at most 2.3e-3 (random
# tiny and small models, docs/benchmarks.md "Packed text encoding"), as much as batch composition
# moves padded vectors; about twice that here.
BF16_TOLERANCE = 5e-3


def test_packed_equals_padded_in_bf16_within_the_measured_rounding(folder):
    bf16 = Retriever.from_pretrained(folder, device="cpu", dtype="bf16")
    texts = ["a"] + [text(5 + (i * 37) % 150, i) for i in range(40)]
    difference = np.abs(encode(bf16, texts, packing=True, packed_tokens=1000) - encode(bf16, texts)).max()
    assert difference <= BF16_TOLERANCE


def test_the_encode_benchmark_runs_packed_and_checks_its_vectors():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "encode_throughput.py"
    spec = importlib.util.spec_from_file_location("bench_encode_packed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--arch", "tiny", "--texts", "6", "--images", "0", "--repeats", "1", "--packing",
                          "--packed-tokens", "300"])
    assert result["packing"] and result["packed_tokens"] == 300 and result["same_vectors"]
    assert [row["workload"] for row in result["rows"]] == ["mixed text (8-400 words)", "uniform text (40 words)"]
    assert all(row["max_abs_diff"] <= 1e-4 and row["sorted_max_abs_diff"] <= 1e-4 for row in result["rows"])
