"""Training throughput and peak memory of LamRA-Ret per configuration: the plain step against
gradient caching, gradient checkpointing off and on (LoRA r 64 / alpha 128, InfoNCE, AdamW).

Same random model, LoRA initialisation and batch everywhere. Timed: the training step (forward,
backward, optimizer step) on an already collated batch, all configurations in one process taking
turns step by step (a shared machine's changing load then weighs on all of them alike), after
one warm-up round; best and median of ``--steps``. Memory: each configuration in a fresh process
of its own, over two training steps: on a GPU ``torch.cuda.max_memory_allocated``; on a CPU the
peak resident set (Linux VmHWM, reset just before the first step; ``ru_maxrss`` where it cannot
be reset) and its increase over the resident set just before the first step (model, LoRA and
batch loaded; gradients and optimizer states not yet allocated). Also counted, by a saved-tensor
hook, the activations each forward keeps for the backward (MB per row): the memory per example
that the chunk size multiplies.

A configuration only counts if it computes the same thing: each process also runs one step with
dropout off from the same weights, and the script exits with status 1 when a loss differs from
the plain path's by more than ``--tolerance`` (1e-4 in float32, 2e-2 in bf16) or the gradient
norm by more than ``--grad-tolerance`` (relative).

    python benchmarks/train_throughput.py                          # CPU, small random model
    python benchmarks/train_throughput.py --arch 2b --device cuda --batch 32 --chunk-size 8 --words 40

On a CPU the script also works out (it cannot measure) what the 2B needs on an 80 GB GPU with
gradient caching: the 2B architecture's activations per row are counted on PyTorch's ``meta``
device (shapes without data, no memory) and scaled by the small model's measured ratio of peak
memory to counted activations; see docs/benchmarks.md, "Training".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
import weakref

WORDS = ("the a red green blue small large dog cat car house tree river city street market photo image "
         "caption news event people crowd player team match goal season market price economy report "
         "children school garden flower shirt dress jacket shoe leather cotton pattern striped").split()
DEFAULT_TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 2e-2}
DEFAULT_GRAD_TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 5e-2}
GPU_BYTES = 80e9          # "an 80 GB GPU" (an H100 / A100 80GB)
RESERVED_FRACTION = 0.10  # kept free for the CUDA context, allocator fragmentation and cuBLAS workspaces


# -- the model and the batch -------------------------------------------------------------------


def examples(count: int, words: int, seed: int = 0) -> list:
    from lamra.items import Item
    from lamra.retriever.data import Example

    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    return [Example(Item(text=text()), Item(text=text())) for _ in range(count)]


class SavedActivations:
    """Bytes of the tensors autograd saves for the backward (parameters and repeats not counted)."""

    def __init__(self, parameters):
        self.parameters = {id(p) for p in parameters}
        self.seen: dict[int, weakref.ref] = {}
        self.bytes = 0

    def pack(self, tensor):
        base = tensor._base if tensor._base is not None else tensor
        key = id(base)
        if key not in self.parameters:
            known = self.seen.get(key)
            if known is None or known() is not base:  # new, or a dead tensor's id reused
                self.seen[key] = weakref.ref(base)
                self.bytes += base.numel() * base.element_size()
        return tensor

    def hooks(self):
        import torch

        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)


# -- one configuration (a worker process) ---------------------------------------------------------


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> str:
    """Start the peak resident set afresh (Linux: writing 5 to /proc/self/clear_refs resets VmHWM);
    where that is refused, the process's lifetime peak (ru_maxrss) is all there is."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return "VmHWM (peak RSS, reset before the first step)"
    except OSError:
        return "ru_maxrss (peak RSS of the whole process)"


def peak_rss_bytes(measure: str) -> int:
    if measure.startswith("VmHWM"):
        return _status_bytes("VmHWM")
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def enable_checkpointing(backbone) -> str:
    """lamra's switch; where it fails (transformers 5.24 renamed the keyword of its new
    ``activation_checkpointing_enable``), the same non-reentrant checkpointing set directly."""
    try:
        backbone.enable_gradient_checkpointing()
        return "Backbone.enable_gradient_checkpointing"
    except TypeError as exc:
        backbone.base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return f"gradient_checkpointing_enable directly (Backbone.enable_gradient_checkpointing failed: {exc})"


def disable_checkpointing(backbone) -> None:
    network = backbone.base_model()
    (getattr(network, "activation_checkpointing_disable", None) or network.gradient_checkpointing_disable)()


class Trainee:
    """The random model with a fresh LoRA (the same initialisation in every process), AdamW and
    lamra's training steps, as the trainer sets them up (accelerate, bf16 autocast on a GPU)."""

    def __init__(self, spec: dict):
        import torch
        from accelerate import Accelerator

        from lamra.demo.tiny import random_backbone
        from lamra.retriever.model import Retriever
        from lamra.retriever.steps import EmbeddingModel

        self.spec, self.cuda = spec, spec["device"].startswith("cuda")
        self.backbone = random_backbone(spec["arch"], spec["device"], spec["dtype"])
        torch.manual_seed(1)
        self.backbone.add_lora(r=64, alpha=128, dropout=0.05)
        self.backbone.train()
        self.accelerator = Accelerator(cpu=not self.cuda,
                                       mixed_precision="bf16" if self.backbone.dtype == torch.bfloat16 else "no")
        self.parameters = self.backbone.trainable_parameters()
        model = EmbeddingModel(Retriever(self.backbone))
        self.model, self.optimizer = self.accelerator.prepare(model, torch.optim.AdamW(self.parameters, lr=2e-4))
        self.initial = [p.detach().clone() for p in self.parameters]
        self.checkpointing_via = None

    def batch(self, chunk_size: int | None) -> dict:
        from lamra.retriever.collator import RetrievalCollator

        return RetrievalCollator(self.backbone.processor, text_rule="raw", chunk_size=chunk_size)(
            examples(self.spec["batch"], self.spec["words"]))

    def configure(self, config: dict) -> None:
        if config["checkpointing"]:
            self.checkpointing_via = enable_checkpointing(self.backbone)
        else:
            disable_checkpointing(self.backbone)

    def loss_step(self, config: dict, batch: dict):
        from lamra.retriever.steps import gradient_cache_step, plain_step

        step = gradient_cache_step if config["chunk_size"] else plain_step
        return step(self.accelerator, self.model, batch, temperature=0.05)

    def train_step(self, config: dict, batch: dict) -> None:
        self.loss_step(config, batch)
        self.accelerator.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.cuda:
            import torch

            torch.cuda.synchronize()


def measure_configuration(spec: dict) -> dict:
    """Peak memory and the loss check of one configuration (one process each)."""
    import torch

    trainee = Trainee(spec)
    trainee.configure(spec)
    batch = trainee.batch(spec["chunk_size"])
    if trainee.cuda:
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        measure = "torch.cuda.max_memory_allocated"
    else:
        baseline = _status_bytes("VmRSS")
        measure = reset_peak_rss()
    for _ in range(2):  # the first allocates gradients and optimizer states
        trainee.train_step(spec, batch)
    peak = torch.cuda.max_memory_allocated() if trainee.cuda else peak_rss_bytes(measure)

    # The check: one step from the initial weights with dropout off, so every configuration
    # must give the same loss and gradients.
    with torch.no_grad():
        for parameter, value in zip(trainee.parameters, trainee.initial):
            parameter.copy_(value)
    for module in trainee.backbone.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    saved = SavedActivations(trainee.backbone.model.parameters())
    with saved.hooks():
        loss = trainee.loss_step(spec, batch)
    gradient_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float())
                                                           for p in trainee.parameters]))
    rows = 2 * spec["batch"]  # query and positive, each forwarded once with a graph
    tokens = int(sum(c["attention_mask"].sum() for side in ("query", "positive") for c in batch[side]))
    return {**spec, "tokens_per_row": round(tokens / rows, 1), "baseline_bytes": baseline, "peak_bytes": peak,
            "peak_increase_bytes": peak - baseline,
            "trainable_parameters": sum(p.numel() for p in trainee.parameters),
            "saved_bytes_per_row": saved.bytes / rows, "loss": float(loss), "gradient_norm": float(gradient_norm),
            "memory_measure": measure, "checkpointing_via": trainee.checkpointing_via,
            "dtype": str(trainee.backbone.dtype).removeprefix("torch.")}


def time_configurations(specs: list[dict]) -> list[dict]:
    """Seconds per training step of every configuration, in one process, taking turns step by
    step (a shared machine's load then weighs on all alike); the first round warms up."""
    trainee = Trainee(specs[0])
    batches = {chunk: trainee.batch(chunk) for chunk in {spec["chunk_size"] for spec in specs}}
    seconds = {spec["name"]: [] for spec in specs}
    for round_ in range(specs[0]["steps"] + 1):
        for spec in specs:
            trainee.configure(spec)
            started = time.perf_counter()
            trainee.train_step(spec, batches[spec["chunk_size"]])
            if round_:
                seconds[spec["name"]].append(time.perf_counter() - started)
    return [{"name": name, "step_seconds": [round(s, 3) for s in values]} for name, values in seconds.items()]


# -- the 2B on an 80 GB GPU, worked out -------------------------------------------------------------


def saved_bytes_per_row_meta(arch: str, tokens: int, *, checkpointing: bool, rows: int = 2) -> dict:
    """Activations kept for the backward per row of ``tokens`` tokens, for ``arch`` with a LoRA,
    counted on the meta device (no data, no memory). Adapters in bf16 like the base weights: the
    dtypes autocast gives their matmuls on a GPU."""
    import torch
    from peft import LoraConfig, get_peft_model

    from lamra.demo.tiny import random_backbone
    from lamra.qwen2vl.backbone import language_model_linear_names

    backbone = random_backbone(arch, "cpu", "bf16", meta=True)  # "cpu": sdpa, whatever is installed
    network = backbone.model
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    network = get_peft_model(network, LoraConfig(r=64, lora_alpha=128, lora_dropout=0.05, bias="none",
                                                 target_modules=language_model_linear_names(network)),
                             autocast_adapter_dtype=False)
    if checkpointing:
        network.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    network.train()
    ids = torch.zeros(rows, tokens, dtype=torch.long, device="meta")
    positions = torch.arange(tokens, device="meta").view(1, 1, -1).expand(3, rows, -1)
    saved = SavedActivations(network.parameters())
    with saved.hooks():
        network.base_model.model.model(input_ids=ids, position_ids=positions, use_cache=False)
    text = network.base_model.model.config.text_config
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    weights = sum(p.numel() for p in network.parameters() if not p.requires_grad)
    return {"saved_bytes_per_row": saved.bytes / rows, "layers": text.num_hidden_layers,
            "hidden_size": text.hidden_size, "trainable_parameters": trainable, "frozen_parameters": weights}


def loss_bytes(global_batch: int, dim: int) -> float:
    """GPU memory of gradient caching's whole-batch part: the float32 embeddings of queries and
    positives and their gradients (4 x B x D), the B x B logits, their softmax and its gradient."""
    return 4 * (4 * global_batch * dim + 3 * global_batch * global_batch)


def largest_batch_2b(rows: list[dict], lengths: list[int], *, chunk_sizes=(8, 16, 32)) -> dict:
    """Work out (not measure) the 2B's largest chunk and global batch on an 80 GB GPU."""
    plain = next((r for r in rows if not r["chunk_size"] and not r["checkpointing"]), None)
    if plain is None:
        raise ValueError("the estimate needs the plain, no-checkpointing configuration")
    # measured on the small model: peak increase (less gradients and Adam states) per counted activation byte
    ratio = (plain["peak_increase_bytes"] - 12 * plain["trainable_parameters"]) / (
        plain["saved_bytes_per_row"] * 2 * plain["batch"])
    ratio = max(ratio, 1.0)
    usable = GPU_BYTES * (1 - RESERVED_FRACTION)
    out = {"gpu_bytes": GPU_BYTES, "reserved_fraction": RESERVED_FRACTION, "peak_to_saved_ratio": round(ratio, 2),
           "lengths": {}}
    for tokens in lengths:
        off = saved_bytes_per_row_meta("2b", tokens, checkpointing=False)
        on = saved_bytes_per_row_meta("2b", tokens, checkpointing=True)
        model_bytes = 2 * off["frozen_parameters"] + 16 * off["trainable_parameters"]
        free = usable - model_bytes
        per_row = {
            # every layer's activations live until the backward
            "checkpointing_off": ratio * off["saved_bytes_per_row"],
            # the layer inputs, plus one layer's activations while it is recomputed
            "checkpointing_on": on["saved_bytes_per_row"] + ratio * off["saved_bytes_per_row"] / off["layers"],
        }
        entry = {"model_and_optimizer_bytes": model_bytes, "saved_bytes_per_row_meta": {
            "checkpointing_off": off["saved_bytes_per_row"], "checkpointing_on": on["saved_bytes_per_row"]}}
        for mode, row_bytes in per_row.items():
            chunk_max = int((free - loss_bytes(960, off["hidden_size"])) // row_bytes)
            batches = {}
            for chunk in chunk_sizes:
                room = free - chunk * row_bytes
                # largest B with 4*(4*B*D + 3*B^2) <= room
                d = off["hidden_size"]
                b = int((-4 * d + (16 * d * d + 12 * room / 4) ** 0.5) / 6) if room > 0 else 0
                batches[str(chunk)] = b
            entry[mode] = {"bytes_per_row": row_bytes, "largest_chunk_rows": chunk_max,
                           "largest_global_batch_by_chunk": batches}
        out["lengths"][str(tokens)] = entry
    return out


# -- the driver ----------------------------------------------------------------------------------


def configurations(args) -> list[dict]:
    chosen = []
    for name in args.configs.split(","):
        kind, _, checkpoint = name.partition("+")
        if kind not in ("plain", "cache") or checkpoint not in ("", "ckpt"):
            raise SystemExit(f"unknown configuration {name!r}: plain, plain+ckpt, cache, cache+ckpt")
        chosen.append({"name": name, "arch": args.arch, "device": args.device, "dtype": args.dtype,
                       "batch": args.batch, "words": args.words, "steps": args.steps,
                       "chunk_size": args.chunk_size if kind == "cache" else None,
                       "checkpointing": checkpoint == "ckpt"})
    return chosen


def run_worker(kind: str, payload) -> object:
    """``payload`` in a fresh Python process; its last stdout line is the result."""
    # A fixed mmap threshold: glibc then maps every large tensor buffer on its own and unmaps it
    # when freed, so the resident set follows what torch holds (no dynamic threshold, no reuse
    # of heap that earlier work left behind).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run([sys.executable, __file__, "--worker", kind, "--spec", json.dumps(payload)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{kind} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check(rows: list[dict], tolerance: float, grad_tolerance: float) -> list[str]:
    reference = rows[0]
    problems = []
    for row in rows[1:]:
        loss_diff = abs(row["loss"] - reference["loss"])
        grad_diff = abs(row["gradient_norm"] - reference["gradient_norm"]) / max(reference["gradient_norm"], 1e-12)
        row["loss_diff"], row["gradient_norm_rel_diff"] = loss_diff, grad_diff
        if not loss_diff <= tolerance:
            problems.append(f"{row['name']}: loss {row['loss']:.6f} vs {reference['name']} {reference['loss']:.6f} "
                            f"(|diff| {loss_diff:.2e} > {tolerance:g})")
        if not grad_diff <= grad_tolerance:
            problems.append(f"{row['name']}: gradient norm differs from {reference['name']}'s by {grad_diff:.2e} "
                            f"(relative, > {grad_tolerance:g})")
    return problems


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="small", choices=["tiny", "small", "2b", "7b"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="default: bf16 on a GPU, fp32 on a CPU")
    parser.add_argument("--batch", type=int, default=32, help="global batch (examples: query + positive)")
    parser.add_argument("--chunk-size", type=int, default=8, help="gradient caching: rows per forward")
    parser.add_argument("--words", type=int, default=24, help="words per text (query and positive)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--configs", default="plain,plain+ckpt,cache,cache+ckpt",
                        help="comma-separated; the first is the reference of the loss check")
    parser.add_argument("--tolerance", type=float, default=None, help="largest loss |difference| (default by dtype)")
    parser.add_argument("--grad-tolerance", type=float, default=None, help="largest relative gradient-norm difference")
    parser.add_argument("--estimate-2b", default="auto", choices=["auto", "yes", "no"],
                        help="work out the 2B on an 80 GB GPU (auto: on a CPU)")
    parser.add_argument("--estimate-lengths", default="64,400",
                        help="tokens per row for the 2B estimate (64: stage-1 text; 400: an image + text)")
    parser.add_argument("--worker", choices=["memory", "timing"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)  # the worker's configuration(s), json
    parser.add_argument("--out", default=None, help="write the results as json here")
    args = parser.parse_args(argv)
    if args.worker:
        work = measure_configuration if args.worker == "memory" else time_configurations
        print(json.dumps(work(json.loads(args.spec))), flush=True)
        return {}

    import torch

    from lamra.qwen2vl.backbone import default_device, resolve_dtype

    args.device = args.device or default_device()
    if args.arch in ("2b", "7b") and not args.device.startswith("cuda"):
        raise SystemExit(f"--arch {args.arch} trains on a GPU; on a CPU use the default small model "
                         "(the 2B estimate is worked out from it)")
    dtype_name = str(resolve_dtype(args.dtype, args.device)).removeprefix("torch.")
    tolerance = args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE.get(dtype_name, 2e-2)
    grad_tolerance = (args.grad_tolerance if args.grad_tolerance is not None
                      else DEFAULT_GRAD_TOLERANCE.get(dtype_name, 5e-2))
    machine = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"arch={args.arch} device={args.device} ({machine}) dtype={dtype_name} batch={args.batch} "
          f"chunk={args.chunk_size} words={args.words} tolerance={tolerance:g}", flush=True)
    specs = configurations(args)
    rows = [run_worker("memory", spec) for spec in specs]
    for row, timed in zip(rows, run_worker("timing", specs)):
        seconds = timed["step_seconds"]
        row.update(step_seconds=seconds, samples_per_second=round(args.batch / min(seconds), 2),
                   median_samples_per_second=round(args.batch / sorted(seconds)[len(seconds) // 2], 2))
        if row["checkpointing_via"] and not row["checkpointing_via"].startswith("Backbone"):
            print(f"warning: {row['checkpointing_via']}", file=sys.stderr, flush=True)
        print(f"{row['name']:<12} {row['samples_per_second']:>8.2f} samples/s (best of {args.steps}; median "
              f"{row['median_samples_per_second']:.2f})  peak {row['peak_bytes'] / 2**20:>8.1f} MiB  "
              f"(+{row['peak_increase_bytes'] / 2**20:.1f} MiB over the loaded model)  saved activations "
              f"{row['saved_bytes_per_row'] / 2**20:.2f} MiB/row  loss {row['loss']:.6f}", flush=True)
    failures = check(rows, tolerance, grad_tolerance)
    result = {"arch": args.arch, "device": args.device, "machine": machine, "dtype": dtype_name,
              "tolerance": tolerance, "grad_tolerance": grad_tolerance, "same_loss": not failures, "rows": rows}
    if args.estimate_2b == "yes" or (args.estimate_2b == "auto" and not args.device.startswith("cuda")):
        lengths = [int(x) for x in args.estimate_lengths.split(",")]
        result["estimate_2b"] = estimate = largest_batch_2b(rows, lengths)
        print(f"2B on an 80 GB GPU, WORKED OUT (not measured): peak/saved ratio {estimate['peak_to_saved_ratio']} "
              f"(measured on this run's plain configuration), {RESERVED_FRACTION:.0%} of the GPU kept free", flush=True)
        for tokens, entry in estimate["lengths"].items():
            for mode in ("checkpointing_off", "checkpointing_on"):
                part = entry[mode]
                print(f"  {tokens:>4} tokens/row, {mode:<18} {part['bytes_per_row'] / 2**20:>8.1f} MiB/row  "
                      f"largest chunk {part['largest_chunk_rows']:>5} rows  largest global batch (chunk 8/16/32): "
                      + "/".join(str(v) for v in part["largest_global_batch_by_chunk"].values()), flush=True)
    if args.out:
        with open(args.out, "w") as out:
            json.dump(result, out, indent=2)
    if failures:
        print("FAILED: the configurations do not compute the same loss, so their timings do not count:\n  "
              + "\n  ".join(failures), file=sys.stderr, flush=True)
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
