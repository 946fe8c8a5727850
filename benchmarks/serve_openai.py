"""Serving throughput: OpenAI's ``/v1/embeddings`` (the ``openai`` SDK) against lamra's ``/embed``, one run.

One ``lamra serve`` process (a saved model, a small index) answers both routes; 50 concurrent
clients each send ``--requests`` one-text requests, first through 50 ``openai.AsyncOpenAI``
clients (the SDK's default base64 encoding), then through 50 ``httpx.AsyncClient`` posting
``/embed``; the rounds alternate and the best of ``--rounds`` counts. The target: the standard
route costs at most 10 % more per item (``openai_vs_embed`` <= 1.10).

Both routes must return the same vectors for the same texts (to ``--atol``): otherwise the run
exits 1, so a fast wrong route cannot report a ratio.

    python benchmarks/serve_openai.py                      # tiny random model, CPU
    python benchmarks/serve_openai.py --model PATH --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np

KEY = "benchmark-key"
WORDS = ("the a red green blue small large dog cat car house tree river city street market photo image caption "
         "news event people crowd player team match goal season price").split()


def texts(count: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [f"{n}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(6, 24)))) for n in range(count)]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used: the server's own cost, which the
    clients' work and the other load on a shared machine do not inflate as they do wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batches(url: str) -> tuple[float, float]:
    """(items, model calls) so far, from the server's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "lamra_batch_size")
    values = {sample.name: sample.value for sample in family.samples}
    return values["lamra_batch_size_sum"], values["lamra_batch_size_count"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve(index: Path, model: Path, device: str, batch: int):
    import httpx

    port = free_port()
    code = "import sys; from lamra.cli import main; sys.exit(main(sys.argv[1:]))"
    log = tempfile.TemporaryFile()
    command = [sys.executable, "-c", code, "serve", str(index), "--model", str(model), "--device", device,
               "--port", str(port), "--api-key", KEY, "--max-batch-size", str(batch), "--no-access-log",
               "--served-model-name", "bench"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise SystemExit(f"lamra serve exited: {log.read().decode()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("lamra serve did not start")
            time.sleep(0.2)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(30)
        log.close()


async def run_openai(url: str, work: list[list[str]]) -> tuple[float, dict]:
    from openai import AsyncOpenAI

    clients = [AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=300) for _ in work]
    vectors = {}

    async def one(client, mine):
        for text in mine:
            answer = await client.embeddings.create(model="bench", input=text)
            vectors[text] = np.asarray(answer.data[0].embedding, np.float32)

    await one(clients[0], work[0][:1])  # warm the connection and the model
    started = time.perf_counter()
    await asyncio.gather(*(one(c, mine) for c, mine in zip(clients, work)))
    seconds = time.perf_counter() - started
    for client in clients:
        await client.close()
    return seconds, vectors


def _embed_request(text: str) -> tuple[str, dict]:
    return "/embed", {"items": [{"text": text}]}


def _embed_vector(answer: dict) -> np.ndarray:
    return np.asarray(answer["vectors"][0], np.float32)


def _v1_request(text: str) -> tuple[str, dict]:
    return "/v1/embeddings", {"model": "bench", "input": text, "encoding_format": "base64"}


def _v1_vector(answer: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(answer["data"][0]["embedding"]), dtype="<f4")


async def run_httpx(url: str, work: list[list[str]], *, route: str = "embed") -> tuple[float, dict]:
    """The same load with plain httpx clients: ``/embed``, or ``/v1/embeddings`` (the route's own cost,
    without the SDK's client-side work)."""
    import httpx

    request, vector = (_embed_request, _embed_vector) if route == "embed" else (_v1_request, _v1_vector)
    headers = {"Authorization": f"Bearer {KEY}"}
    clients = [httpx.AsyncClient(base_url=url, headers=headers, timeout=300) for _ in work]
    vectors = {}

    async def one(client, mine):
        for text in mine:
            path, body = request(text)
            answer = await client.post(path, json=body)
            answer.raise_for_status()
            vectors[text] = vector(answer.json())

    await one(clients[0], work[0][:1])
    started = time.perf_counter()
    await asyncio.gather(*(one(c, mine) for c, mine in zip(clients, work)))
    seconds = time.perf_counter() - started
    for client in clients:
        await client.aclose()
    return seconds, vectors


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a saved checkpoint folder (default: a tiny random one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=8, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--atol", type=float, default=1e-5, help="largest |difference| between the routes' vectors")
    parser.add_argument("--out", default=None, help="write the results as json here")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from lamra import Retriever
    from lamra.demo.tiny import save_tiny_checkpoint, small_tokenizer
    from lamra.index import Index
    from lamra.items import Item

    with tempfile.TemporaryDirectory() as folder:
        model = Path(args.model) if args.model else save_tiny_checkpoint(Path(folder) / "model",
                                                                         tokenizer=small_tokenizer())
        retriever = Retriever.from_pretrained(model, device=args.device)
        index = Index.build([Item(text=t, id=str(n)) for n, t in enumerate(texts(8))], retriever,
                            Path(folder) / "index", show_progress=False)
        del retriever
        everything = texts(args.clients * args.requests)
        work = [everything[n :: args.clients] for n in range(args.clients)]
        best = {"openai": float("inf"), "embed": float("inf"), "v1_httpx": float("inf")}
        runs = {"openai": run_openai, "embed": run_httpx, "v1_httpx": partial(run_httpx, route="v1")}
        vectors, cpu, mean_batch = {}, {name: float("inf") for name in runs}, {}
        with serve(index.path, model, args.device, args.max_batch_size) as (url, pid):
            for _ in range(args.rounds):
                for name, run in runs.items():
                    before, (items_before, calls_before) = cpu_seconds(pid), batches(url)
                    seconds, vectors[name] = asyncio.run(run(url, work))
                    cpu[name] = min(cpu[name], cpu_seconds(pid) - before)
                    items_after, calls_after = batches(url)
                    mean_batch[name] = round((items_after - items_before) / (calls_after - calls_before), 2)
                    best[name] = min(best[name], seconds)
    items = len(everything)
    largest = max(float(np.max(np.abs(vectors[name][t] - vectors["embed"][t]))) for t in everything
                  for name in ("openai", "v1_httpx"))
    result = {
        "clients": args.clients, "items_per_round": items, "rounds": args.rounds, "device": args.device,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "best_seconds": {k: round(v, 3) for k, v in best.items()},
        "ms_per_item": {k: round(1000 * v / items, 3) for k, v in best.items()},
        "openai_vs_embed": round(best["openai"] / best["embed"], 3),
        # The route alone (the same plain client on both routes): the server's share of the difference.
        "v1_httpx_vs_embed": round(best["v1_httpx"] / best["embed"], 3),
        "server_cpu_ms_per_item": {k: round(1000 * v / items, 3) for k, v in cpu.items()},
        "server_cpu_openai_vs_embed": round(cpu["openai"] / cpu["embed"], 3),
        "mean_batch_last_round": mean_batch,
        "max_abs_diff": largest, "same_vectors": largest <= args.atol,
    }
    print(json.dumps(result, indent=2), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if not result["same_vectors"]:
        print(f"FAILED: the routes' vectors differ by {largest:.2e} > {args.atol:g}, so the ratio does not count",
              file=sys.stderr, flush=True)
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
