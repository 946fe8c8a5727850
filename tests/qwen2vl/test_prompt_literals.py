"""LamRA-Rank's released strings, held literally (spec section 3): a one-character change fails.

Each string is written out here character for character - the runs of spaces, the misspelling
"responed", the capitalised answers, "Ans: (" - and checked where lamra uses it: the constant,
the rendered prompt the model reads, and the answer tokens the scores are read from.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from lamra.items import Item
from lamra.qwen2vl.prompts import LISTWISE_ANSWER_PREFIX, LISTWISE_INSTRUCTION, POINTWISE_INSTRUCTION
from lamra.reranker.model import Reranker

POINTWISE = ("I will provide you with a query and a candidate. Please evaluate whether the candidate"
             "                        "  # 24 spaces
             "meets the requirements of the query. If it does, respond with 'Yes'; if it doesn't, responed with 'No'.")
LISTWISE = ("I will provide you with a query followed by multiple candidates in the format: (1) cand1 (2) cand2, etc. "
            "Each candidate is independent of the others."
            "                         "  # 25 spaces
            "Evaluate each candidate against the query, and respond with the number corresponding to the candidate "
            "that best meets the requirements of the query.")
ANSWER_PREFIX = "Ans: ("
YES, NO = "Yes", "No"
HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"
IMG = "<|vision_start|><|image_pad|><|vision_end|>"


def test_the_literals_are_what_the_spec_says():
    # Guards against an edit of the literals themselves.
    assert len(POINTWISE) == 213 and len(LISTWISE) == 322
    assert POINTWISE.index(" " * 24) == POINTWISE.index("candidate ") + len("candidate")
    assert " " * 25 not in POINTWISE and LISTWISE.count(" " * 25) == 1 and " " * 26 not in LISTWISE
    assert "responed with 'No'." in POINTWISE and "respond with 'Yes'" in POINTWISE


def test_pointwise_instruction_is_the_released_string():
    assert POINTWISE_INSTRUCTION == POINTWISE


def test_listwise_instruction_is_the_released_string():
    assert LISTWISE_INSTRUCTION == LISTWISE


def test_listwise_answer_prefix_is_the_released_string():
    assert LISTWISE_ANSWER_PREFIX == ANSWER_PREFIX


def test_rendered_pointwise_prompt_holds_the_literal():
    reranker = Reranker.__new__(Reranker)  # rendering needs no model
    text = reranker.pointwise_prompt(Item(text="a dog"), Item(text="a brown dog", images=[Path("c.jpg")]),
                                     "Find a caption.")
    assert text == HEAD + POINTWISE + "Query:Find a caption. a dog.Candidate:" + IMG + "A brown dog." + TAIL


def test_rendered_listwise_prompt_holds_the_literal_and_ends_with_the_answer_prefix():
    reranker = Reranker.__new__(Reranker)
    text = reranker.listwise_prompt(Item(text="a cat"), [Item(text="a tabby"), Item(images=[Path("b.jpg")])])
    assert text == HEAD + LISTWISE + "Query:A cat.Candidates:(1) A tabby.(2) " + IMG + TAIL + "Ans: ("
    assert text.endswith("<|im_start|>assistant\nAns: (")


def test_scores_are_read_from_the_capitalised_yes_and_no_tokens(qwen_tokenizer):
    reranker = Reranker.__new__(Reranker)
    Reranker.__init__(reranker, SimpleNamespace(tokenizer=qwen_tokenizer, model=None), repetition_penalty=1.0)
    # spec 3: "Yes" 9454 and "No" 2753 (the first token of each word); "yes" / "no" are other tokens.
    assert (reranker.yes_id, reranker.no_id) == (9454, 2753)
    assert qwen_tokenizer.decode([reranker.yes_id]) == YES and qwen_tokenizer.decode([reranker.no_id]) == NO
    assert qwen_tokenizer("yes", add_special_tokens=False)["input_ids"][0] != 9454
    # The digit after "Ans: (" is one token: "1" ... "9".
    assert [qwen_tokenizer.decode([i]) for i in reranker.digit_ids] == [str(n) for n in range(1, 10)]


@pytest.mark.parametrize("answer, tokens", [(YES, [9454]), (NO, [2753])])
def test_the_answers_are_single_qwen_tokens(qwen_tokenizer, answer, tokens):
    assert qwen_tokenizer(answer, add_special_tokens=False)["input_ids"] == tokens
