"""LamRA-Rank training: examples, label masking, the training forward against the stock model,
the loss, chunking, the CLI, and learning."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from word_tokens import word_tokenizer  # tests/ is on sys.path (its conftest)

from lamra import Item
from lamra.errors import InputError

YES, NO, IM_START, IM_END, NEWLINE, ASSISTANT = 9454, 2753, 151644, 151645, 198, 77091
IMAGE_PAD = 151655  # <|image_pad|> in Qwen2-VL
# "Ans: (3)" in the real Qwen2 BPE: "Ans", ":", " (", "3", ")"
ANS_3 = [69599, 25, 320, 18, 8]


@pytest.fixture(scope="module")
def qwen_processor(qwen_tokenizer):
    from lamra.demo.tiny import image_processor
    from lamra.qwen2vl.processor import LamraProcessor

    return LamraProcessor(qwen_tokenizer, image_processor())


def example(image_files, *, answer=3):
    from lamra.reranker.data import RerankExample

    query = Item(text="what colour is the star in exhibit 3?", images=[image_files[1]], id="q")
    positive = Item(text="exhibit 3 is a red star", id="p")
    negatives = [Item(images=[image_files[0]], id="n1"), Item(text="a blue ring", id="n2"),
                 Item(text="a green cross", images=[image_files[2]], id="n3")]
    candidates = negatives[: answer - 1] + [positive] + negatives[answer - 1:]
    return RerankExample(query, "Retrieve a Wikipedia paragraph.", positive, negatives[0], tuple(candidates), answer)


def labelled(row):
    return [(position, token) for position, token in enumerate(row.labels) if token != -100]


@pytest.mark.parametrize("span, pointwise_tail, listwise_tail", [
    ("answer", [YES], ANS_3),
    ("answer_eos", [YES, IM_END], ANS_3 + [IM_END]),
    ("official", [IM_START, ASSISTANT, NEWLINE, YES, IM_END, NEWLINE],
     [IM_START, ASSISTANT, NEWLINE] + ANS_3 + [IM_END, NEWLINE]),
])
def test_label_masking_covers_exactly_the_answer_tokens(qwen_processor, image_files, span, pointwise_tail,
                                                        listwise_tail):
    from lamra.reranker.collator import RerankCollator

    collator = RerankCollator(qwen_processor, label_span=span)
    samples = collator.samples(example(image_files))
    (positive, negative), (listwise,) = samples["pointwise"], samples["listwise"]
    ends_with_turn = span == "official"
    for row, tail in ((positive, pointwise_tail), (negative, [NO if t == YES else t for t in pointwise_tail]),
                      (listwise, listwise_tail)):
        ids = row.prompt.input_ids
        marked = labelled(row)
        assert [token for _, token in marked] == tail
        positions = [position for position, _ in marked]
        assert positions == list(range(positions[0], positions[0] + len(tail)))  # one contiguous span
        # What follows the span: nothing (official), else <|im_end|> "\n" or just "\n".
        after = {"answer": [IM_END, NEWLINE], "answer_eos": [NEWLINE], "official": []}[span]
        assert ids[positions[-1] + 1:] == after
        if not ends_with_turn:
            assert ids[positions[0] - 3: positions[0]] == [IM_START, ASSISTANT, NEWLINE]
        assert ids.count(IMAGE_PAD) > 3  # image pads were expanded before the span


def test_batch_labels_pads_and_chunks(qwen_processor, image_files):
    from lamra.reranker.collator import RerankCollator

    examples = [example(image_files, answer=a) for a in (1, 2, 3)]
    batch = RerankCollator(qwen_processor, chunk_size=2)(examples)
    assert batch["size"] == 3
    assert [c["input_ids"].shape[0] for c in batch["pointwise"]] == [4, 2]  # positive, negative per query
    assert [c["input_ids"].shape[0] for c in batch["listwise"]] == [2, 1]
    assert batch["label_counts"] == {"pointwise": 6, "listwise": 15}  # one token per pair; 5 per "Ans: (k)"
    for chunk in batch["pointwise"] + batch["listwise"]:
        padding = chunk["attention_mask"] == 0
        assert (chunk["labels"][padding] == -100).all()
        assert "mm_token_type_ids" in chunk and "position_ids" not in chunk  # M-RoPE, computed by the model
    digits = [int(chunk["labels"][row][chunk["labels"][row] != -100][3]) for chunk in batch["listwise"]
              for row in range(chunk["labels"].shape[0])]
    assert digits == [16, 17, 18]  # "1", "2", "3" in the Qwen2 BPE


def test_texts_are_formatted_with_the_instruction_and_cut_to_256_tokens(qwen_processor):
    from lamra.reranker.collator import RerankCollator

    collator = RerankCollator(qwen_processor)
    long_text = "word " * 400
    # The released rule: format(f"{format(instruction)} {query text}") - the query's own first
    # letter stays as it is - then the 256-token cut.
    query = collator.prepared(Item(text="a red star"), "retrieve a wikipedia paragraph.")
    assert query.text == "Retrieve a wikipedia paragraph. a red star."
    assert collator.prepared(Item(text="what is shown?"), None).text == "What is shown?"
    assert collator.prepared(Item(text=" \"a blue ring\" ")).text == "A blue ring."
    assert collator.prepared(Item(images=[Path("x.png")]), "find it").text == "Find it."
    candidate = collator.prepared(Item(text=long_text))
    assert len(qwen_processor.tokenizer(candidate.text, add_special_tokens=False)["input_ids"]) == 256


# -- examples from mined data ----------------------------------------------------------------

@pytest.fixture(scope="module")
def mbeir_mined(tmp_path_factory):
    """A synthetic M-BEIR and a hand-made mined file whose top-k holds the positives first."""
    from lamra.data.synthetic import SynthConfig, synthesize

    folder = tmp_path_factory.mktemp("rerank-data")
    root = folder / "mb"
    synthesize(root, SynthConfig(test_queries=0, train_queries=4, pool_size=0, train_negatives=3))
    pool = [json.loads(line) for line in (root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl").read_text()
            .splitlines()]
    queries = [json.loads(line) for line in (root / "query/union_train/mbeir_union_up_train.jsonl").read_text()
               .splitlines()]
    lines = []
    for query in queries:
        dataset = query["qid"].split(":")[0]
        same = [c["did"] for c in pool if c["did"].split(":")[0] == dataset]
        top = query["pos_cand_list"] + [d for d in same if d not in query["pos_cand_list"]]
        negatives = [d for d in top if d not in query["pos_cand_list"]]
        lines.append({"qid": query["qid"], "positives": query["pos_cand_list"],
                      "top": [[d, 1.0 - n / 100] for n, d in enumerate(top)], "negatives": negatives})
    mined = folder / "mined.jsonl"
    mined.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root, mined, queries


def test_examples_are_seeded_and_never_use_a_positive_as_a_negative(mbeir_mined):
    from lamra.reranker.data import RerankTrainDataset

    root, mined, queries = mbeir_mined
    dataset = RerankTrainDataset(root, mined, seed=3)
    again = RerankTrainDataset(root, mined, seed=3)
    assert len(dataset) == len(queries) == 64
    sizes, slots = Counter(), Counter()
    for epoch in range(4):
        for index, query in enumerate(queries):
            drawn = dataset.example(index, epoch)
            assert drawn == again.example(index, epoch)  # the same draws in another run / after a resume
            positives = set(query["pos_cand_list"])
            assert drawn.positive.id in positives and drawn.negative.id not in positives
            listed = [c.id for c in drawn.candidates]
            assert listed[drawn.answer - 1] == drawn.positive.id
            others = listed[: drawn.answer - 1] + listed[drawn.answer:]
            assert not set(others) & positives and len(set(others)) == len(others)
            sizes[len(others)] += 1
            slots[(len(others), drawn.answer)] += 1
            assert drawn.query.id == query["qid"] and drawn.instruction
    assert set(sizes) == {1, 2, 3, 4}  # M uniform in 1..4
    assert min(sizes.values()) > 30
    assert {slot for (m, slot) in slots if m == 4} == {1, 2, 3, 4, 5}  # the positive at any slot
    assert any(dataset.example(0, e) != dataset.example(0, 0) for e in range(1, 4))  # new draws each epoch


def test_a_query_missing_from_the_mined_file_is_reported(mbeir_mined, tmp_path):
    from lamra.reranker.data import RerankTrainDataset

    root, mined, queries = mbeir_mined
    lines = mined.read_text().splitlines()
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(lines[:10] + lines[11:]) + "\n")
    with pytest.raises(InputError) as error:
        RerankTrainDataset(root, partial)
    query_file = root / "query/union_train/mbeir_union_up_train.jsonl"
    assert f"{query_file}:11" in str(error.value) and queries[10]["qid"] in str(error.value)


def test_cli_reports_bad_data_before_loading_a_model(mbeir_mined, tmp_path, capsys):
    from lamra.cli import main

    root, mined, _ = mbeir_mined
    broken = tmp_path / "broken.jsonl"
    lines = mined.read_text().splitlines()
    record = json.loads(lines[1])
    record["negatives"] = record["positives"]
    broken.write_text("\n".join([lines[0], json.dumps(record)] + lines[2:]) + "\n")
    code = main(["train", "reranker", "--config", "configs/rerank.yaml", "--model", str(tmp_path / "no-model"),
                 "--data", str(root), "--mined", str(broken), "--output-dir", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{broken}:2" in err and "negatives" in err
    assert not (tmp_path / "out").exists()


# -- the training forward and the loss --------------------------------------------------------

def lora_backbone(checkpoint, seed=0):
    from lamra.qwen2vl.backbone import load_backbone

    backbone = load_backbone(checkpoint, device="cpu")
    torch.manual_seed(seed)
    backbone.add_lora(r=4, alpha=8, dropout=0.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in backbone.model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    backbone.train()
    return backbone


def stock_losses(backbone, batch) -> dict:
    """Reference: the stock Qwen2VLForConditionalGeneration logits, shifted cross-entropy per kind."""
    sums, counts = {}, {}
    for kind in ("pointwise", "listwise"):
        sums[kind], counts[kind] = 0.0, 0
        for chunk in batch[kind]:
            inputs = {k: v for k, v in chunk.items() if k != "labels"}
            with torch.no_grad():
                logits = backbone.model(**inputs).logits.float()
            labels = chunk["labels"]
            sums[kind] += float(torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100,
                reduction="sum"))
            counts[kind] += int((labels != -100).sum())
    return {"pointwise": sums["pointwise"] / counts["pointwise"], "listwise": sums["listwise"] / counts["listwise"],
            "joint": (sums["pointwise"] + sums["listwise"]) / (counts["pointwise"] + counts["listwise"])}


def gradients(backbone) -> dict:
    return {n: p.grad.clone() for n, p in backbone.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("loss", ["sum", "joint"])
def test_step_loss_is_the_stock_models_cross_entropy_and_chunking_keeps_gradients(tiny_checkpoint, image_files,
                                                                                   loss):
    from accelerate import Accelerator

    from lamra.reranker.collator import RerankCollator
    from lamra.reranker.steps import AnswerModel, answer_loss_step

    accelerator = Accelerator(cpu=True)
    examples = [example(image_files, answer=a) for a in (1, 3, 2)]
    results = []
    for chunk_size in (None, 1):
        backbone = lora_backbone(tiny_checkpoint)
        batch = RerankCollator(backbone.processor, label_span="answer_eos", chunk_size=chunk_size)(examples)
        values = answer_loss_step(accelerator, AnswerModel(backbone), batch, loss=loss)
        results.append((values, gradients(backbone), stock_losses(backbone, batch)))
    (plain, plain_grads, reference), (chunked, chunked_grads, _) = results
    assert float(plain["pointwise_loss"]) == pytest.approx(reference["pointwise"], rel=1e-5)
    assert float(plain["listwise_loss"]) == pytest.approx(reference["listwise"], rel=1e-5)
    expected = reference["pointwise"] + reference["listwise"] if loss == "sum" else reference["joint"]
    assert float(plain["loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(chunked["loss"]) == pytest.approx(float(plain["loss"]), rel=1e-5)
    assert any(g.abs().max() > 1e-4 for g in plain_grads.values())
    for name, gradient in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], gradient, atol=1e-6, rtol=1e-4, msg=name)


def test_training_prompts_are_the_inference_prompts_plus_the_answer(tiny_checkpoint, image_files):
    """The reranker reads its scores exactly where training put the labels."""
    from lamra import Reranker
    from lamra.reranker.collator import RerankCollator

    reranker = Reranker.from_pretrained(tiny_checkpoint, device="cpu")
    processor = reranker.backbone.processor
    drawn = example(image_files)
    collator = RerankCollator(processor)
    samples = collator.samples(drawn)
    query = collator.prepared(drawn.query, drawn.instruction)
    for row, candidate in zip(samples["pointwise"], (drawn.positive, drawn.negative)):
        candidate = collator.prepared(candidate)
        text = reranker.pointwise_prompt(query, candidate)
        expected = processor.tokenize(text, query.images + candidate.images).input_ids
        first = labelled(row)[0][0]
        assert row.prompt.input_ids[:first] == expected
    listed = [collator.prepared(c) for c in drawn.candidates]
    text = reranker.listwise_prompt(query, listed)  # ends with "Ans: (": the digit comes next
    expected = processor.tokenize(text, query.images + [i for c in listed for i in c.images]).input_ids
    row = samples["listwise"][0]
    assert row.prompt.input_ids[: len(expected)] == expected
    digit = processor.tokenizer("3", add_special_tokens=False)["input_ids"][0]
    assert row.labels[len(expected)] == digit


# -- learning ---------------------------------------------------------------------------------

def text_task_data(folder: Path, train_queries: int) -> tuple[Path, Path, list[str]]:
    """A synthetic M-BEIR, its text-to-text training queries (WebQA task 1) in a file of their own,
    and every text of the data (for the tokenizer)."""
    from lamra.data.synthetic import SynthConfig, synthesize

    root = folder / "mb"
    synthesize(root, SynthConfig(test_queries=0, train_queries=train_queries, pool_size=0, train_negatives=2,
                                 image_size=16))
    lines = (root / "query/union_train/mbeir_union_up_train.jsonl").read_text().splitlines()
    queries = [q for q in map(json.loads, lines) if q["task_id"] == 1]
    train_file = folder / "train.jsonl"
    train_file.write_text("".join(json.dumps(q) + "\n" for q in queries))
    pool = (root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl").read_text().splitlines()
    texts = [q["query_txt"] for q in queries] + [json.loads(line)["txt"] or "" for line in pool]
    texts += (root / "instructions/query_instructions.tsv").read_text().splitlines()
    return root, train_file, texts


def answer_probabilities(reranker, examples) -> torch.Tensor:
    """P(Yes) + P(No) over the whole vocabulary at the answer position of each pointwise pair."""
    from lamra.reranker.collator import RerankCollator

    backbone = reranker.backbone
    chunk = RerankCollator(backbone.processor)(examples)["pointwise"][0]
    yes, no = (backbone.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "No"))
    with torch.no_grad():
        hidden = backbone.hidden_states(chunk)
        before_answer = (chunk["labels"] != -100).float().argmax(dim=1) - 1
        logits = backbone.output_head()(hidden[torch.arange(hidden.shape[0]), before_answer]).float()
    probabilities = torch.softmax(logits, dim=-1)
    return probabilities[:, yes] + probabilities[:, no]


def test_a_short_run_learns_the_answers_through_the_whole_pipeline(tmp_path):
    """Fast variant of the learning test: mine with the (random) tiny retriever, train with
    ``lamra train reranker`` (16 steps of 4 queries, in-process), load the result into a Reranker. The loss
    falls several-fold and the pointwise answer position, which gave "Yes" and "No" ~0.2% of its
    probability before training, now gives them most of it. It shows the labels, the loss and the
    optimizer at work end to end, not relevance judgement (a tiny random model needs far longer to
    learn to compare a query with a candidate)."""
    from lamra import Reranker, Retriever
    from lamra.cli import main
    from lamra.demo.tiny import save_tiny_checkpoint
    from lamra.reranker.data import RerankTrainDataset
    from lamra.reranker.mining import mine

    root, train_file, texts = text_task_data(tmp_path, train_queries=4)
    checkpoint = save_tiny_checkpoint(tmp_path / "base", tokenizer=word_tokenizer(texts), hidden_size=64)
    mine(Retriever.from_pretrained(checkpoint, device="cpu"), root, tmp_path / "mined.jsonl", k=5,
         queries=[train_file], show_progress=False)
    code = main(["train", "reranker", "--config", "configs/rerank.yaml", "--model", str(checkpoint),
                 "--data", str(root), "--mined", str(tmp_path / "mined.jsonl"), "--output-dir", str(tmp_path / "out"),
                 "--global-batch-size", "4", "--chunk-size", "4", "--max-steps", "16", "--device", "cpu",
                 "--set", f"train_queries={train_file}", "--set", "learning_rate=1.5e-2", "--set", "full=true",
                 "--set", "max_negatives=2",
                 "--set", "gradient_checkpointing=false", "--set", "show_progress=false",
                 "--set", "warmup_ratio=0", "--set", "lora_dropout=0", "--set", "logging_steps=4"])
    assert code == 0
    log = [json.loads(line) for line in (tmp_path / "out/train_log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [4, 8, 12, 16]
    # Measured: 7.4 -> 2.6 (pointwise 3.8 -> 0.87, listwise 3.6 -> 1.7).
    assert log[-1]["loss"] < log[0]["loss"] / 2.5
    assert log[-1]["pointwise_loss"] < log[0]["pointwise_loss"] / 2.5
    assert log[-1]["listwise_loss"] < log[0]["listwise_loss"] / 2

    examples = [RerankTrainDataset(root, tmp_path / "mined.jsonl", queries=train_file).example(i, 7) for i in range(4)]
    before = answer_probabilities(Reranker.from_pretrained(checkpoint, device="cpu"), examples)
    after = answer_probabilities(Reranker.from_pretrained(tmp_path / "out/adapter", device="cpu"), examples)
    assert float(before.max()) < 0.01 and float(after.min()) > 0.5, (before, after)  # measured 0.0026 -> 0.84
