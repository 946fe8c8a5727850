"""Distillation in the training step: gradient caching gives the plain path's loss and gradients
with the KL term on; the collator lays each query's candidates out query after query."""

from __future__ import annotations

import pytest
import torch

from lamra import Item, Retriever
from lamra.retriever.collator import RetrievalCollator
from lamra.retriever.data import Example


def lora_retriever(checkpoint, *, seed=0):
    """The tiny model with a LoRA whose B matrices are non-zero (as after some training)."""
    retriever = Retriever.from_pretrained(checkpoint, device="cpu")
    torch.manual_seed(seed)
    retriever.backbone.add_lora(r=4, alpha=8, dropout=0.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in retriever.backbone.model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return retriever


def distill_examples(image_files):
    candidates = [Item(text="a red circle on white"), Item(images=[image_files[1]]), Item(text="green things"),
                  Item(text="a yellow disc", images=[image_files[3]]), Item(text="nothing at all")]
    queries = [(Item(text="a red circle"), Item(images=[image_files[0]]), "Find me an everyday image."),
               (Item(images=[image_files[1]]), Item(text="a green ellipse"), "Find a caption."),
               (Item(text="yellow"), Item(text="the yellow one"), None)]
    teacher = [(12.0, 3.0, -4.0), (0.5, 9.0, 1.0), (-2.0, 2.0, 15.0)]
    return [Example(query, positive, instruction,
                    distill=(tuple(candidates[n : n + 3]), teacher[n]))
            for n, (query, positive, instruction) in enumerate(queries)]


def grads_of(retriever):
    return {n: p.grad.clone() for n, p in retriever.backbone.model.named_parameters() if p.requires_grad}


def test_collator_lays_out_each_querys_candidates_and_teacher(tiny_retriever, image_files):
    examples = distill_examples(image_files)
    batch = RetrievalCollator(tiny_retriever.processor, chunk_size=4)(examples)
    assert sum(chunk["input_ids"].shape[0] for chunk in batch["distill"]) == 9  # 3 queries x 3 candidates
    assert batch["teacher"].shape == (3, 3)
    assert batch["teacher"][2].tolist() == [-2.0, 2.0, 15.0]


def test_gradient_cache_gives_the_plain_loss_and_gradients_with_the_kl_term(tiny_checkpoint, image_files):
    from accelerate import Accelerator

    from lamra.retriever.steps import EmbeddingModel, gradient_cache_step, plain_step

    accelerator = Accelerator(cpu=True)
    results = []
    for chunk_size in (None, 2):
        retriever = lora_retriever(tiny_checkpoint)
        retriever.backbone.train()
        batch = RetrievalCollator(retriever.processor, chunk_size=chunk_size)(distill_examples(image_files))
        step = gradient_cache_step if chunk_size else plain_step
        values = step(accelerator, EmbeddingModel(retriever), batch, temperature=0.05, distill_weight=1.0)
        results.append(({name: float(v) for name, v in values.items()}, grads_of(retriever)))
    (plain, plain_grads), (cached, cached_grads) = results
    assert plain["kl"] > 0.01  # the term is on and not trivially zero
    for name in ("loss", "info_nce", "kl"):
        assert cached[name] == pytest.approx(plain[name], abs=1e-5), name
    assert any(g.abs().max() > 1e-3 for g in plain_grads.values())
    for name, gradient in plain_grads.items():
        torch.testing.assert_close(cached_grads[name], gradient, atol=1e-5, rtol=1e-4, msg=name)


# -- the training data: the scored queries, refused when another model made the scores -----------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from lamra.data.synthetic import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("distill-data") / "mb"
    synthesize(root, SynthConfig(test_queries=0, train_queries=1, pool_size=0, train_negatives=3))
    return root


def scores_file(path, root, retriever: dict, reranker: dict, *, queries: int = 3, positive_scores: bool = False):
    """Each query's top 4: its first positive, then 3 negatives; with ``positive_scores``, every
    positive scored (cosine 0.9 - 0.1 n, P(Yes) 0.95 - 0.1 n), as `lamra score-teacher` records them."""
    import json

    lines = [json.loads(line) for line in (root / "query" / "union_train" / "mbeir_union_up_train.jsonl")
             .read_text().splitlines()][:queries]
    header = {"format": "lamra-teacher-scores-1", "retriever": retriever, "reranker": reranker}
    records = [{"qid": q["qid"], "task": "t", "positives": q["pos_cand_list"],
                "candidates": [[d, 0.8 - 0.1 * n, 0.3 * n] for n, d in enumerate(q["pos_cand_list"][:1]
                                                                                 + q["neg_cand_list"][:3])]}
               for q in lines]
    if positive_scores:
        for record in records:
            record["positive_scores"] = [[d, 0.9 - 0.1 * n, 0.95 - 0.1 * n] for n, d in enumerate(record["positives"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in [header, *records]))
    return path


def distill_args(tmp_path, root, model, scores, **extra):
    from lamra.training.args import load_args

    return load_args(None, model=str(model), data=str(root), data_kind="mbeir", distill=str(scores),
                     output_dir=str(tmp_path / "out"), distill_top_k=3, **extra)


def test_the_scored_queries_come_with_their_candidates_and_teacher_logits(tmp_path, synthetic, tiny_checkpoint):
    from lamra.qwen2vl.backbone import _model_id
    from lamra.retriever.trainer import build_dataset

    scores = scores_file(tmp_path / "s.jsonl", synthetic, {"model": _model_id(str(tiny_checkpoint)), "adapter": None},
                         {"model": "rank@1"})
    dataset = build_dataset(distill_args(tmp_path, synthetic, tiny_checkpoint, scores))
    assert len(dataset) == 3 and dataset.k == 3
    example = dataset.example(1)
    candidates, teacher = example.distill
    assert [c.id for c in candidates] == [did for did, _, _ in dataset.records[1].candidates[:3]]
    assert teacher == pytest.approx([(0.8 + 0.0) / 2 / 0.05, (0.7 + 0.3) / 2 / 0.05, (0.6 + 0.6) / 2 / 0.05])
    assert example.query.id == dataset.records[1].qid
    no_kl = build_dataset(distill_args(tmp_path, synthetic, tiny_checkpoint, scores, distill_weight=0.0))
    assert no_kl.example(1).distill is None and no_kl.example(1).positive == example.positive  # same draw


def test_with_the_positive_the_list_is_the_drawn_positive_then_the_top_k_without_it(tmp_path, synthetic,
                                                                                      tiny_checkpoint):
    from lamra.errors import InputError
    from lamra.qwen2vl.backbone import _model_id
    from lamra.retriever.trainer import build_dataset

    ours = {"model": _model_id(str(tiny_checkpoint)), "adapter": None}
    scores = scores_file(tmp_path / "s.jsonl", synthetic, ours, {"model": "rank@1"}, queries=16, positive_scores=True)
    dataset = build_dataset(distill_args(tmp_path, synthetic, tiny_checkpoint, scores, distill_with_positive=True))
    assert dataset.k == 3
    fused = {n: (0.8 - 0.1 * n + 0.3 * n) / 2 / 0.05 for n in range(4)}  # the top 4's teacher logits
    drawn_later = 0
    for index, record in enumerate(dataset.records):
        for epoch in (0, 1):
            example = dataset.example(index, epoch)
            candidates, teacher = example.distill
            n = record.positives.index(example.positive.id)
            assert teacher[0] == pytest.approx((0.9 - 0.1 * n + 0.95 - 0.1 * n) / 2 / 0.05)
            top = [d for d, _, _ in record.candidates]  # the first positive (retrieved), then 3 negatives
            if n == 0:  # the retrieved positive drawn: the top without it
                assert [c.id for c in candidates] == [top[0], top[1], top[2]]
                assert teacher[1:] == pytest.approx([fused[1], fused[2]])
            else:  # another one: it comes first, the retrieved positive stays in the list with its scores
                assert [c.id for c in candidates] == [example.positive.id, top[0], top[1]]
                assert teacher[1:] == pytest.approx([fused[0], fused[1]])
                drawn_later += 1
    assert drawn_later  # a positive other than the retrieved one was drawn and scored with its own scores
    without = scores_file(tmp_path / "old.jsonl", synthetic, ours, {"model": "rank@1"})
    with pytest.raises(InputError, match="needs its scores") as error:
        build_dataset(distill_args(tmp_path, synthetic, tiny_checkpoint, without, distill_with_positive=True))
    assert (error.value.file, error.value.line, error.value.field) == (str(without), 2, "positive_scores")


def test_scores_of_another_retriever_or_reranker_are_refused_before_training(tmp_path, synthetic, tiny_checkpoint):
    from lamra.errors import InputError
    from lamra.qwen2vl.backbone import _model_id
    from lamra.retriever.trainer import build_dataset

    ours = {"model": _model_id(str(tiny_checkpoint)), "adapter": None}
    other = scores_file(tmp_path / "other.jsonl", synthetic, {"model": "another-retriever@123", "adapter": None},
                        {"model": "rank@1"})
    with pytest.raises(InputError, match="another retriever.*another-retriever@123") as error:
        build_dataset(distill_args(tmp_path, synthetic, tiny_checkpoint, other))
    assert error.value.file == str(other) and error.value.field == "retriever"
    ours_file = scores_file(tmp_path / "ours.jsonl", synthetic, ours, {"model": "rank@1", "adapter": None})
    with pytest.raises(InputError, match="another reranker.*rank@1") as error:
        build_dataset(distill_args(tmp_path, synthetic, tiny_checkpoint, ours_file,
                                   distill_reranker=str(tiny_checkpoint)))
    assert error.value.field == "reranker"


@pytest.mark.slow
@pytest.mark.parametrize("chunk_size, batch_negatives", [(None, False), (2, False), (2, True)])
def test_two_processes_give_the_distillation_loss_and_gradients_of_one(tmp_path, tiny_checkpoint, chunk_size,
                                                                         batch_negatives):
    """torchrun, gloo, CPU: queries, candidates and teacher logits (and, with batch negatives, the
    positives) gathered over 2 ranks equal 1 rank."""
    from pathlib import Path

    from torchrun_steps import run_torchrun

    script = Path(__file__).with_name("ddp_distill_equivalence.py")
    results = []
    for processes in (1, 2):
        out = tmp_path / f"ddp{processes}.pt"
        extra = ["--chunk-size", chunk_size] if chunk_size else []
        extra += ["--batch-negatives"] if batch_negatives else []
        port = 29620 + processes + (10 if chunk_size else 0) + (20 if batch_negatives else 0)
        run_torchrun(script, processes, port, tiny_checkpoint, out, *extra)
        results.append(torch.load(out))
    one, two = results
    assert two["world"] == 2 and one["values"]["kl"] > 0.01
    for name in ("loss", "info_nce", "kl"):
        assert two["values"][name] == pytest.approx(one["values"][name], abs=1e-5), name
    for name, gradient in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], gradient, atol=1e-5, rtol=1e-4, msg=name)


def test_train_with_scores_of_another_retriever_exits_2_in_one_line(tmp_path, synthetic, tiny_checkpoint, capsys):
    from lamra.cli import main

    other = scores_file(tmp_path / "other.jsonl", synthetic, {"model": "another-retriever@123", "adapter": None}, {})
    code = main(["train", "retriever", "--model", str(tiny_checkpoint), "--data", str(synthetic),
                 "--distill", str(other), "--output-dir", str(tmp_path / "out"), "--set", "data_kind=mbeir",
                 "--device", "cpu"])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("error:") and "another retriever" in error and "other.jsonl" in error
    assert "Traceback" not in error and not (tmp_path / "out" / "checkpoints").exists()


def test_resuming_with_another_scores_file_or_weight_is_refused(tmp_path):
    import json

    from lamra.errors import InputError
    from lamra.training.args import load_args
    from lamra.training.checkpoints import STATE_FILE, check_resumable

    args = load_args(None, model="m", data="d", data_kind="mbeir", distill="scores.jsonl", distill_weight=1.0)
    step = tmp_path / "step-10"
    step.mkdir()
    (step / STATE_FILE).write_text(json.dumps({"step": 10, "args": args.to_dict()}))
    assert check_resumable(tmp_path, args.to_dict())["step"] == 10
    for change in ({"distill_weight": 0.0}, {"distill": "other.jsonl"}, {"distill_top_k": 10},
                   {"distill_unlabelled_min_p": 0.9}, {"distill_batch_negatives": True}):
        with pytest.raises(InputError, match=next(iter(change))):
            check_resumable(tmp_path, {**args.to_dict(), **change})


# -- queries without a positive (pos_cand_list: []): the KL term alone learns from them --------

@pytest.mark.parametrize("batch_negatives", [False, True])
def test_gradient_cache_gives_the_plain_loss_and_gradients_with_an_unlabelled_query(tiny_checkpoint, image_files,
                                                                                    batch_negatives):
    from dataclasses import replace

    from accelerate import Accelerator

    from lamra.retriever.steps import EmbeddingModel, gradient_cache_step, plain_step

    accelerator = Accelerator(cpu=True)
    examples = distill_examples(image_files)
    examples[1] = replace(examples[1], labelled=False)
    results = []
    for chunk_size in (None, 2):
        retriever = lora_retriever(tiny_checkpoint)
        retriever.backbone.train()
        batch = RetrievalCollator(retriever.processor, chunk_size=chunk_size)(examples)
        assert batch["labelled"].tolist() == [True, False, True]
        step = gradient_cache_step if chunk_size else plain_step
        values = step(accelerator, EmbeddingModel(retriever), batch, temperature=0.05, distill_weight=1.0,
                      distill_batch_negatives=batch_negatives)
        results.append(({name: float(v) for name, v in values.items()}, grads_of(retriever)))
    (plain, plain_grads), (cached, cached_grads) = results
    # The same batch with every query labelled: the same KL term, another InfoNCE (row 1 now counts).
    retriever = lora_retriever(tiny_checkpoint)
    retriever.backbone.train()
    every_row = RetrievalCollator(retriever.processor)(distill_examples(image_files))
    assert every_row["labelled"].all()
    labelled = plain_step(accelerator, EmbeddingModel(retriever), every_row, temperature=0.05, distill_weight=1.0,
                          distill_batch_negatives=batch_negatives)
    assert float(labelled["kl"]) == pytest.approx(plain["kl"], abs=1e-5)
    assert abs(float(labelled["info_nce"]) - plain["info_nce"]) > 1e-3
    for name in ("loss", "info_nce", "kl"):
        assert cached[name] == pytest.approx(plain[name], abs=1e-5), name
    for name, gradient in plain_grads.items():
        torch.testing.assert_close(cached_grads[name], gradient, atol=1e-5, rtol=1e-4, msg=name)


def unlabelled_query_file(root, path, qids: set[str]):
    """The synthetic training queries with ``qids``' positives taken away."""
    import json

    lines = [json.loads(line) for line in (root / "query" / "union_train" / "mbeir_union_up_train.jsonl")
             .read_text().splitlines()]
    path.write_text("".join(json.dumps({**q, "pos_cand_list": [] if q["qid"] in qids else q["pos_cand_list"]}) + "\n"
                            for q in lines))
    return path


def test_an_unlabelled_scored_query_is_a_kl_only_example_with_its_top_candidate_standing_in(tmp_path, synthetic,
                                                                                            tiny_checkpoint):
    import json

    from lamra.data.mbeir import TASK_MODALITIES
    from lamra.errors import InputError
    from lamra.qwen2vl.backbone import _model_id
    from lamra.retriever.data import MBEIRTrainDataset
    from lamra.retriever.trainer import build_dataset

    scores = scores_file(tmp_path / "s.jsonl", synthetic, {"model": _model_id(str(tiny_checkpoint)), "adapter": None},
                         {"model": "rank@1"})
    lines = scores.read_text().splitlines()
    unlabelled_qid = json.loads(lines[2])["qid"]  # the second scored query: as mining writes one without positives
    lines[2] = json.dumps({**json.loads(lines[2]), "positives": []})
    scores.write_text("\n".join(lines) + "\n")
    queries = unlabelled_query_file(synthetic, tmp_path / "q.jsonl", {unlabelled_qid})
    dataset = build_dataset(distill_args(tmp_path, synthetic, tiny_checkpoint, scores, train_queries=str(queries),
                                         use_hard_negatives=True))
    record = dataset.records[1]
    assert record.qid == unlabelled_qid
    for epoch in (0, 1):
        example = dataset.example(1, epoch)
        top = [did for did, _, _ in record.candidates[:3]]
        assert not example.labelled and example.query.id == unlabelled_qid
        assert example.positive.id == top[0] and example.hard_negative.id == top[1]
        assert [c.id for c in example.distill[0]] == top
        assert example.distill[1] == pytest.approx([(0.8 - 0.1 * n + 0.3 * n) / 2 / 0.05 for n in range(3)])
        query = dataset.base.queries[dataset.rows[1]]  # the instruction: one of the task's
        assert example.instruction in dataset.base.instructions.prompts[
            (query.dataset_id, query.modality, TASK_MODALITIES[query.task_id][1])]
    assert dataset.example(0).labelled and dataset.example(2).labelled
    # Without the KL term nothing is learnt from it: it is left out.
    no_kl = build_dataset(distill_args(tmp_path, synthetic, tiny_checkpoint, scores, train_queries=str(queries),
                                       distill_weight=0.0))
    assert [r.qid for r in no_kl.records] == [dataset.records[0].qid, dataset.records[2].qid]
    # Training without distillation refuses a query without positives, naming where.
    with pytest.raises(InputError, match="no positive candidate") as error:
        MBEIRTrainDataset(synthetic, queries=queries)
    assert (error.value.file, error.value.line, error.value.field) == (str(queries), 2, "pos_cand_list")


def test_unlabelled_queries_whose_best_p_yes_misses_the_bar_are_left_out(tmp_path, synthetic, tiny_checkpoint):
    """distill_unlabelled_min_p: an unlabelled query stays only if a candidate of its top-k has
    that P(Yes); labelled queries stay whatever their scores."""
    import json

    from lamra.errors import InputError
    from lamra.qwen2vl.backbone import _model_id
    from lamra.retriever.trainer import build_dataset

    scores = scores_file(tmp_path / "s.jsonl", synthetic, {"model": _model_id(str(tiny_checkpoint)), "adapter": None},
                         {"model": "rank@1"}, queries=4)
    lines = scores.read_text().splitlines()
    records = [json.loads(line) for line in lines[1:]]
    # 1: unlabelled, its only liked candidate outside the top 3; 2: unlabelled, liked in the top 3;
    # 0 and 3: labelled, best P(Yes) 0.6.
    for record, p_yes in ((records[1], (0.1, 0.2, 0.3, 0.99)), (records[2], (0.2, 0.95, 0.1, 0.0))):
        record["positives"] = []
        record["candidates"] = [[did, ret, p] for (did, ret, _), p in zip(record["candidates"], p_yes)]
    scores.write_text("".join(json.dumps(r) + "\n" for r in [json.loads(lines[0]), *records]))
    queries = unlabelled_query_file(synthetic, tmp_path / "q.jsonl", {records[1]["qid"], records[2]["qid"]})

    def kept(**extra):
        args = distill_args(tmp_path, synthetic, tiny_checkpoint, scores, train_queries=str(queries), **extra)
        return [r.qid for r in build_dataset(args).records]

    qids = [r["qid"] for r in records]
    assert kept() == qids
    assert kept(distill_unlabelled_min_p=0.9) == [qids[0], qids[2], qids[3]]
    assert kept(distill_unlabelled_min_p=0.95) == [qids[0], qids[2], qids[3]]  # the bar itself passes
    assert kept(distill_unlabelled_min_p=0.96) == [qids[0], qids[3]]
    # A file of unlabelled queries alone, none past the bar: nothing to learn from, said before training.
    scores.write_text("".join(json.dumps(r) + "\n" for r in [json.loads(lines[0]), records[1], records[2]]))
    with pytest.raises(InputError, match="no scored query is left") as error:
        kept(distill_unlabelled_min_p=0.96)
    assert (error.value.file, error.value.field) == (str(scores), "pos_cand_list")
    with pytest.raises(InputError, match="from 0 to 1") as error:
        distill_args(tmp_path, synthetic, tiny_checkpoint, scores, distill_unlabelled_min_p=1.5).check()
    assert error.value.field == "distill_unlabelled_min_p"


def test_the_cli_trains_on_a_query_file_with_unlabelled_queries(tmp_path, synthetic, tiny_checkpoint):
    """`lamra train retriever --distill` end to end, a scored query without positives among the
    labelled ones: every step logs both terms, and an adapter is written."""
    import json

    from lamra.cli import main
    from lamra.qwen2vl.backbone import _model_id

    scores = scores_file(tmp_path / "s.jsonl", synthetic, {"model": _model_id(str(tiny_checkpoint)), "adapter": None},
                         {"model": "rank@1"}, queries=4)
    lines = scores.read_text().splitlines()
    unlabelled = {json.loads(lines[n])["qid"] for n in (2, 3)}
    lines[2:4] = [json.dumps({**json.loads(line), "positives": []}) for line in lines[2:4]]
    scores.write_text("\n".join(lines) + "\n")
    queries = unlabelled_query_file(synthetic, tmp_path / "q.jsonl", unlabelled)
    code = main(["train", "retriever", "--model", str(tiny_checkpoint), "--data", str(synthetic),
                 "--distill", str(scores), "--output-dir", str(tmp_path / "out"), "--device", "cpu",
                 "--set", "data_kind=mbeir", "--set", f"train_queries={queries}", "--set", "distill_top_k=3",
                 "--set", "global_batch_size=4", "--set", "epochs=2", "--set", "logging_steps=1"])
    assert code == 0
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(record["kl"] > 0 and record["info_nce"] > 0 for record in log)
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("batch_negatives", [False, True])
def test_the_step_follows_distill_batch_negatives(tmp_path, synthetic, tiny_checkpoint, batch_negatives):
    """A step built from the args gives distill_loss(..., batch_negatives=ARG) on the same embeddings."""
    from accelerate import Accelerator

    from lamra.qwen2vl.backbone import _model_id
    from lamra.retriever.collator import SIDES
    from lamra.retriever.distill import distill_loss
    from lamra.retriever.trainer import retriever_recipe

    scores = scores_file(tmp_path / "s.jsonl", synthetic, {"model": _model_id(str(tiny_checkpoint)), "adapter": None},
                         {"model": "rank@1"}, queries=4)
    recipe = retriever_recipe(distill_args(tmp_path, synthetic, tiny_checkpoint, scores,
                                           distill_batch_negatives=batch_negatives))
    retriever = lora_retriever(tiny_checkpoint)
    model = recipe.wrap(retriever.backbone)
    batch = recipe.collator(retriever.processor)([recipe.dataset.example(i) for i in range(len(recipe.dataset))])
    values = recipe.step(Accelerator(cpu=True), model, batch)
    with torch.no_grad():
        sides = {side: torch.cat([model(chunk)[0] for chunk in batch[side]]) for side in SIDES if side in batch}
    expected = {flag: distill_loss(sides, batch["teacher"], weight=1.0, labelled=batch["labelled"],
                                   batch_negatives=flag)["kl"] for flag in (False, True)}
    assert float(values["kl"]) == pytest.approx(float(expected[batch_negatives]), abs=1e-5)
    assert float(values["kl"]) != pytest.approx(float(expected[not batch_negatives]), abs=1e-3)


def test_distilling_queries_without_labels_without_batch_negatives_warns(tmp_path, synthetic, tiny_checkpoint,
                                                                           caplog):
    """A query without a positive learns by the KL term alone; without batch negatives nothing keeps
    it apart from the rest of the pool (it sank the retriever on the synthetic data): say so."""
    import json
    import logging

    from lamra.qwen2vl.backbone import _model_id
    from lamra.retriever.trainer import build_dataset

    scores = scores_file(tmp_path / "s.jsonl", synthetic, {"model": _model_id(str(tiny_checkpoint)), "adapter": None},
                         {"model": "rank@1"}, queries=3)
    lines = scores.read_text().splitlines()
    unlabelled = json.loads(lines[2])["qid"]
    lines[2] = json.dumps({**json.loads(lines[2]), "positives": []})
    scores.write_text("\n".join(lines) + "\n")
    queries = unlabelled_query_file(synthetic, tmp_path / "q.jsonl", {unlabelled})

    def warnings(**extra) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lamra.retriever.trainer"):
            build_dataset(distill_args(tmp_path, synthetic, tiny_checkpoint, scores, train_queries=str(queries),
                                       **extra))
        return [r.getMessage() for r in caplog.records if r.name == "lamra.retriever.trainer"]

    said = warnings()
    assert len(said) == 1 and "1 of the 3 distilled queries have no positive" in said[0]
    assert "distill_batch_negatives" in said[0]
    assert warnings(distill_batch_negatives=True) == []
    assert warnings(distill_weight=0.0) == []  # without the KL term such queries are left out
