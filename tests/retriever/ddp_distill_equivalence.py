"""Run under torchrun: one distillation step's loss (InfoNCE + KL) and LoRA gradients, saved by rank 0.

python -m torch.distributed.run --nproc-per-node N ddp_distill_equivalence.py CHECKPOINT OUT [--chunk-size K]
    [--batch-negatives]
Every process takes its contiguous share of the same global batch of 4 text queries, each with
its positive and 3 candidates with teacher logits; the second has no known positive (its row is
out of InfoNCE).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared torchrun helpers
from torchrun_steps import lora_retriever, rank_share  # noqa: E402


def main(checkpoint: str, out: str, chunk_size: int | None, batch_negatives: bool) -> None:
    from accelerate import Accelerator

    from lamra import Item
    from lamra.retriever.collator import RetrievalCollator
    from lamra.retriever.data import Example
    from lamra.retriever.steps import EmbeddingModel, gradient_cache_step, plain_step

    accelerator = Accelerator(cpu=True)
    retriever = lora_retriever(checkpoint)
    colours = ["red", "green", "blue", "yellow"]
    examples = [Example(Item(text=f"a {c} thing number {i}"), Item(text=f"the {c} one" + " again" * i),
                        distill=(tuple(Item(text=f"{c} candidate {j}") for j in range(3)),
                                 (float(3 * i), float(5 - i), float(i * i))),
                        labelled=i != 1)  # query 1 without a positive: InfoNCE's mask is gathered too
                for i, c in enumerate(colours)]
    mine = rank_share(examples, accelerator)
    batch = RetrievalCollator(retriever.processor, text_rule="raw", chunk_size=chunk_size)(mine)
    model = accelerator.prepare(EmbeddingModel(retriever))
    step = gradient_cache_step if chunk_size else plain_step
    values = step(accelerator, model, batch, temperature=0.05, distill_weight=1.0,
                  distill_batch_negatives=batch_negatives)
    grads = {n: p.grad.detach().clone() for n, p in retriever.backbone.model.named_parameters() if p.requires_grad}
    if accelerator.is_main_process:
        torch.save({"values": {k: float(v) for k, v in values.items()}, "grads": grads,
                    "world": accelerator.num_processes}, out)
    accelerator.wait_for_everyone()
    # Leave the process group before exiting: gloo threads torn down at interpreter exit can abort a rank.
    accelerator.end_training()


if __name__ == "__main__":
    chunk = int(sys.argv[sys.argv.index("--chunk-size") + 1]) if "--chunk-size" in sys.argv else None
    main(sys.argv[1], sys.argv[2], chunk, "--batch-negatives" in sys.argv)
