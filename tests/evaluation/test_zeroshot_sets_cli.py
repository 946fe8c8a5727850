"""``lamra eval zeroshot ROOT --set ...`` end to end with the tiny models: Ret and Ret+Rank, the
reranker reading the official pair prompt, raw text reaching the model, a rerun that encodes and
scores nothing, and a bad file reported before any model loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zeroshot_layout as layout
from terminal_text import plain

from lamra.cli import main
from lamra.evaluation.zeroshot_sets.encoding import PromptEncoder, entry_item

HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
SYS = ("I will provide you with a query and a candidate. Please evaluate whether the candidate                 "
       "       meets the requirements of the query. If it does, respond with 'Yes'; if it doesn't, responed with "
       "'No'.")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lamra-eval")
    layout.sharegpt4v(root)
    return root


@pytest.fixture(scope="module")
def evaluated(root, tiny_checkpoint, sharp_reranker_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("zeroshot-out")
    args = ["eval", "zeroshot", str(root), "--set", "all", "--model", str(tiny_checkpoint), "--device", "cpu",
            "--rerank", str(sharp_reranker_folder), "-o", str(out), "-q"]
    assert main(args) == 0
    return out, args


def test_ret_and_ret_rank_side_by_side(evaluated):
    out, _ = evaluated
    report = json.loads((out / "sharegpt4v" / "results.json").read_text())
    assert [t["task"] for t in report["tasks"]] == ["t2i", "i2t"]
    assert all(set(t["metrics"]) == set(t["reranked"]) == {"R@1", "R@5", "R@10"} for t in report["tasks"])
    assert (out / "sharegpt4v" / "runs" / "t2i_rerank.trec").is_file()


def test_the_reranker_reads_the_official_pair_prompt(evaluated, root, sharp_reranker):
    """The cached P(Yes) of i->t query 0 equals a full forward over the literal official prompt."""
    from lamra.reranker.forward import plain_answer_logits, tokenize
    from lamra.reranker.scores import penalize_repeated, yes_probability

    out, _ = evaluated
    (scores_file,) = (out / "sharegpt4v" / "rerank-scores").glob("images-texts.*.jsonl")
    line = json.loads(scores_file.read_text().splitlines()[0])
    captions = ["a red square on a white wall", "two green fields", "blue sky over water"]
    image = root / "sharegpt4v" / "val_data" / "sa_1.jpg"
    prompts = [tokenize(sharp_reranker.backbone, HEAD + SYS + "Query:" + IMG + "Find an image caption describing the "
                        "following everyday image." + "Candidate:" + captions[int(c)] +
                        "<|im_end|>\n<|im_start|>assistant\n", [image]) for c in line["ids"]]
    ids = [sharp_reranker.yes_id, sharp_reranker.no_id]
    logits = penalize_repeated(plain_answer_logits(sharp_reranker.backbone, prompts, ids), ids,
                               [p.input_ids for p in prompts], sharp_reranker.repetition_penalty)
    assert line["qid"] == "0" and len(line["ids"]) == 3
    np.testing.assert_allclose(line["scores"], yes_probability(logits), atol=1e-4)


def test_a_rerun_encodes_and_scores_nothing(evaluated, capsys):
    out, args = evaluated
    before = json.loads((out / "sharegpt4v" / "results.json").read_text())
    capsys.readouterr()
    assert main(args) == 0
    printed = plain(capsys.readouterr().out)
    assert "encoded 0, reused 2 cached embedding sets; reranked 0 queries, 6 reused" in printed
    assert json.loads((out / "sharegpt4v" / "results.json").read_text())["tasks"] == before["tasks"]


def test_raw_text_reaches_the_model(tiny_retriever):
    caption = "a red square on a white wall"  # lower-case start, no period: embedded as is
    prompt = PromptEncoder(tiny_retriever).prompt_input(entry_item(
        (caption + "\nSummarize above sentence in one word: ",), "t"))
    assert tiny_retriever.processor.tokenizer.decode(prompt.input_ids) == \
        HEAD + caption + "\nSummarize above sentence in one word: <|im_end|>\n<|im_start|>assistant\n"


def test_a_bad_file_is_named_before_any_model_loads(tmp_path, capsys):
    layout.vist(tmp_path)
    (tmp_path / "vist" / "images" / "val" / "p7.jpg").unlink()
    code = main(["eval", "zeroshot", str(tmp_path), "--set", "vist", "--model", str(tmp_path / "no-such-model"),
                 "--device", "cpu", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "val.story-in-sequence.json (item 'entry 6') field 'photo_flickr_id': [vist]" in err
    assert main(["eval", "zeroshot", str(tmp_path), "--set", "nope", "--baseline", "random"]) == 2
    assert "unknown set 'nope'" in plain(capsys.readouterr().err)


def test_urban1k_images_are_embedded_at_qwen_vl_utils_default_cap(tmp_path, tiny_retriever, monkeypatch):
    """Urban-1K alone goes through eval_collator_default_resolution.py (max 16384 * 28 * 28 pixels):
    a 1200 x 900 picture keeps its size there and is shrunk to LamRA's 300 * 28 * 28 elsewhere."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    from lamra.evaluation.zeroshot_sets.run import evaluate_zeroshot_sets

    layout.urban1k(tmp_path)
    layout.sharegpt4v(tmp_path)
    for path in (tmp_path / "Urban1k" / "image" / "1.jpg", tmp_path / "sharegpt4v" / "val_data" / "sa_1.jpg"):
        Image.new("RGB", (1200, 900), "orange").save(path)
    image_tokens = {}
    original = PromptEncoder.encode

    def spy(self, items, *args, **options):
        for item in items:
            if item.id == "images:0":
                prompt = self.prompt_input(item)
                image_tokens[self.processor.settings.max_pixels] = prompt.input_ids.count(
                    self.processor.image_token_id)
        return original(self, items, *args, **options)

    monkeypatch.setattr(PromptEncoder, "encode", spy)
    evaluate_zeroshot_sets(tmp_path, ["urban1k", "sharegpt4v"], lambda: tiny_retriever, tmp_path / "out",
                           show_progress=False)
    processor = tiny_retriever.processor.image_processor
    factor = processor.patch_size * processor.merge_size

    def tokens(max_pixels):
        height, width = smart_resize(900, 1200, factor=factor, min_pixels=4 * 28 * 28, max_pixels=max_pixels)
        return (height // processor.patch_size) * (width // processor.patch_size) // processor.merge_size**2

    assert image_tokens == {16384 * 28 * 28: tokens(16384 * 28 * 28), 300 * 28 * 28: tokens(300 * 28 * 28)}
    assert tokens(16384 * 28 * 28) > tokens(300 * 28 * 28)
