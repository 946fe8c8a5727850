"""configs/accelerate/fsdp.yaml tested: FSDP over 2 CPU processes (gloo) gives the loss and the
gradients of the DDP path (configs/accelerate/ddp.yaml's), one training step of the retriever.

accelerate 1.16 turns FSDP on only for GPU-like devices, and torch 2.13's FSDP needs
``device_id=cpu`` and no ``sync_module_states`` on a CPU: the script wraps the model with torch's
FSDP as the config asks (its layer class, FULL_SHARD, original parameters); see its docstring.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchrun_steps import run_torchrun

SCRIPT = Path(__file__).with_name("fsdp_equivalence.py")
CONFIG = Path(__file__).parents[2] / "configs" / "accelerate" / "fsdp.yaml"


def run(checkpoint, out: Path, port: int, *config) -> dict:
    run_torchrun(SCRIPT, 2, port, checkpoint, out, *config)
    return torch.load(out)


@pytest.mark.slow
def test_fsdp_gives_the_loss_and_gradients_of_ddp(tmp_path, tiny_checkpoint):
    ddp = run(tiny_checkpoint, tmp_path / "ddp.pt", 29541)
    fsdp = run(tiny_checkpoint, tmp_path / "fsdp.pt", 29542, CONFIG)
    assert ddp["world"] == fsdp["world"] == 2
    assert fsdp["loss"] == pytest.approx(ddp["loss"], abs=1e-5)
    assert set(fsdp["grads"]) == set(ddp["grads"]) and len(ddp["grads"]) > 0
    assert any(g.abs().max() > 1e-3 for g in ddp["grads"].values())
    for name, gradient in ddp["grads"].items():
        torch.testing.assert_close(fsdp["grads"][name].reshape(gradient.shape), gradient, atol=1e-5, rtol=1e-4,
                                   msg=name)
