"""One training step's loss and LoRA gradients under FSDP, saved by rank 0.

python -m torch.distributed.run --nproc-per-node N fsdp_equivalence.py CHECKPOINT OUT CONFIG

Every process takes its contiguous share of the same global batch of 8 text pairs. The model
is wrapped with torch's FSDP as ``configs/accelerate/fsdp.yaml`` asks (CONFIG: its layer class
and sharding strategy, original parameters), on the CPU with gloo: accelerate 1.16 turns its
FSDP plugin on only for GPU-like devices (``AcceleratorState``: a CPU run stays MULTI_CPU), so on
a CPU this script wraps the model itself and accelerate does the rest (backward, gathers). The
sharded gradients are gathered whole before they are saved.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared torchrun helpers
from torchrun_steps import lora_retriever, rank_share  # noqa: E402


def main(checkpoint: str, out: str, config: str | None) -> None:
    from accelerate import Accelerator

    from lamra import Item
    from lamra.retriever.collator import RetrievalCollator
    from lamra.retriever.data import Example
    from lamra.retriever.steps import EmbeddingModel, plain_step

    accelerator = Accelerator(cpu=True)
    retriever = lora_retriever(checkpoint)
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
    examples = [Example(Item(text=f"a {c} thing number {i}"), Item(text=f"the {c} one" + " again" * i))
                for i, c in enumerate(colours)]
    mine = rank_share(examples, accelerator)
    batch = RetrievalCollator(retriever.processor, text_rule="raw")(mine)
    model = EmbeddingModel(retriever)
    model = fsdp_wrap(model, config) if config and accelerator.num_processes > 1 else accelerator.prepare(model)
    loss = plain_step(accelerator, model, batch, temperature=0.05)
    grads = gathered_gradients(model)
    if accelerator.is_main_process:
        torch.save({"loss": float(loss), "grads": grads, "world": accelerator.num_processes,
                    "type": str(accelerator.distributed_type)}, out)
    accelerator.wait_for_everyone()
    # Leave the process group before exiting: gloo threads torn down at interpreter exit can abort a rank.
    accelerator.end_training()


def fsdp_wrap(model, config: str):
    """torch's FSDP over ``model`` with the accelerate config's wrap policy and sharding."""
    import functools

    import yaml
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    with open(config, encoding="utf-8") as handle:
        fsdp = yaml.safe_load(handle)["fsdp_config"]
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    names = set(fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","))
    layers = {type(m) for m in model.modules() if type(m).__name__ in names}  # as accelerate finds them
    assert {c.__name__ for c in layers} == names, names
    policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layers)
    return FSDP(model, auto_wrap_policy=policy, sharding_strategy=ShardingStrategy[fsdp["fsdp_sharding_strategy"]],
                use_orig_params=fsdp["fsdp_use_orig_params"],
                # On a CPU, torch 2.13 needs device_id (else "FSDP needs a non-CPU accelerator device")
                # and refuses sync_module_states with CPU parameters; every rank loads the same weights.
                device_id=torch.device("cpu"), sync_module_states=False)


def gathered_gradients(model) -> dict:
    """LoRA gradients by parameter name, whole on every rank (FSDP's sharded ones gathered)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if not isinstance(model, FSDP):
        return {_name(n): p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    with FSDP.summon_full_params(model, with_grads=True, writeback=False):
        return {_name(n): p.grad.detach().clone() for n, p in model.named_parameters()
                if p.requires_grad and p.grad is not None}


def _name(name: str) -> str:
    """A parameter's name without the wrappers' prefixes (FSDP's and the module's own)."""
    for prefix in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "module."):
        name = name.replace(prefix, "")
    return name


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
