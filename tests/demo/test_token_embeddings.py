"""SmolLM2 token vectors on the Qwen2 BPE (the default model's starting token embeddings)."""

from __future__ import annotations

import numpy as np
import pytest

from lamra.demo.token_embeddings import transplanted_embeddings


def test_shared_tokens_copy_and_others_average_their_source_spelling():
    source_tokens = ["a", "b", "c", "ab", "Ġ", "Ġab"]
    merges = ["a b", "Ġ ab"]
    weights = np.arange(len(source_tokens) * 2, dtype=np.float32).reshape(-1, 2)
    target = ["ab", "abc", "Ġabc", "c"]
    vectors = transplanted_embeddings(target, source_tokens, merges, weights)
    index = {t: i for i, t in enumerate(source_tokens)}
    np.testing.assert_array_equal(vectors[0], weights[index["ab"]])
    np.testing.assert_array_equal(vectors[1], weights[[index["ab"], index["c"]]].mean(axis=0))   # "ab" + "c"
    np.testing.assert_array_equal(vectors[2], weights[[index["Ġab"], index["c"]]].mean(axis=0))  # "Ġab" + "c"
    np.testing.assert_array_equal(vectors[3], weights[index["c"]])


@pytest.fixture(scope="module")
def qwen2_vectors(smollm2_gguf):
    from lamra.demo.tiny import qwen2_tokenizer
    from lamra.demo.token_embeddings import smollm2_embeddings

    tokenizer = qwen2_tokenizer()
    return tokenizer, smollm2_embeddings(tokenizer, len(tokenizer) + 1, 128)


def test_reduced_vectors_keep_word_meaning_on_the_qwen2_vocabulary(qwen2_vectors):
    import torch

    tokenizer, vectors = qwen2_vectors
    assert vectors.shape == (len(tokenizer) + 1, 128)
    assert abs(float(vectors.std()) - 0.02) < 1e-3
    unit = torch.nn.functional.normalize(vectors, dim=1)

    def similarity(a: str, b: str) -> float:
        (ia,), (ib,) = (tokenizer(w, add_special_tokens=False)["input_ids"] for w in (a, b))
        return float(unit[ia] @ unit[ib])

    # Related words sit closer than unrelated ones, after the 576 -> 128 reduction.
    for word, related, unrelated in ((" shoe", " shoes", " planet"), (" apple", " banana", " tax"),
                                     (" trousers", " jeans", " river"), (" dog", " cat", " stock")):
        assert similarity(word, related) > similarity(word, unrelated) + 0.2, (word, related, unrelated)
