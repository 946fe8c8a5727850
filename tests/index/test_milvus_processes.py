"""Real processes: a ``kill -9`` during a Milvus build (the embedded engine), then the same call
again - one row per item, no duplicate, the vectors of an uninterrupted build; and two torchrun
ranks upserting their own shards into a Milvus server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lamra.evaluation.baselines import RandomEncoder
from lamra.index import Index
from lamra.index.milvus_db import count_rows, stored_ids

ITEMS = 120
BUILD = f"""
import sys, time
from lamra.evaluation.baselines import RandomEncoder
from lamra.index import Index

class Slow(RandomEncoder):  # a deterministic encoder, slow enough to be killed mid-build
    def encode(self, items, instruction=None, **options):
        time.sleep(0.03)
        return super().encode(items, instruction, **options)

items = [{{"id": f"c{{n:03d}}", "text": f"thing {{n}}"}} for n in range({ITEMS})]
Index.build(items, Slow(seed=1, dim=32), sys.argv[1], backend="milvus", shard_size=6, show_progress=False)
"""


def run_and_kill(out: Path, after: int, timeout: float = 120) -> bool:
    """Start the build; SIGKILL it once ``after`` shards are upserted. True if it was killed."""
    process = subprocess.Popen([sys.executable, "-c", BUILD, str(out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    shards = out / ".work" / "shards"
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if shards.is_dir() and len(list(shards.glob("*.upserted.json"))) >= after:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.002)
        assert process.returncode == 0, process.stderr.read().decode()[-2000:]
        return False
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.mark.slow  # three processes, each starting Python, pymilvus and the engine: 11-30 s here
def test_kill_9_during_a_milvus_build_then_the_same_call_gives_one_row_per_item(tmp_path):
    out = tmp_path / "idx"
    killed = [run_and_kill(out, after) for after in (2, 10)]
    assert killed == [True, True], "the build finished before the kill: the test did not test anything"
    assert not (out / "manifest.json").exists()
    finished = subprocess.run([sys.executable, "-c", BUILD, str(out)], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]

    index = Index.open(out)
    ids = stored_ids(index.client, index.collection)
    assert count_rows(index.client, index.collection) == ITEMS == len(ids) == len(set(ids)) == len(index)
    expected = [f"c{n:03d}" for n in range(ITEMS)]
    assert index.ids == expected and sorted(ids) == expected
    clean = RandomEncoder(seed=1, dim=32).encode([{"id": i, "text": "x"} for i in expected])
    np.testing.assert_array_equal(index.vectors(), clean)
    assert not (out / ".work").exists()


TORCHRUN_BUILD = f"""
import logging, sys
from lamra.evaluation.baselines import RandomEncoder
from lamra.index import Index

logging.basicConfig(level=logging.INFO)
items = [{{"id": f"c{{n:03d}}", "text": f"thing {{n}}"}} for n in range({ITEMS})]
Index.build(items, RandomEncoder(seed=1, dim=32), sys.argv[1], backend="milvus", milvus_uri=sys.argv[2],
            index_type="IVF_FLAT", shard_size=6, show_progress=False)
"""


@pytest.mark.slow  # a Milvus server (or not) and two torch processes: 9-30 s each here
@pytest.mark.parametrize("where", ["server", "embedded"])
def test_under_torchrun_both_ranks_encode_and_the_collection_gets_every_item_once(tmp_path, where):
    """Against a server every rank upserts its own shards; an embedded database opens in one
    process, so there the ranks hand their shards to rank 0 through the work folder."""
    import socket
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # milvus-lite imports pkg_resources
        from milvus_lite.server import Server

    server = None
    uri = str(tmp_path / "idx" / "milvus.db")
    if where == "server":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        # Milvus Lite serving gRPC on a TCP port: a Milvus server as far as the client can tell.
        server = Server(str(tmp_path / "server.db"), address=f"127.0.0.1:{port}")
        assert server.init() and server.start()
        uri = f"http://127.0.0.1:{port}"
    try:
        out = tmp_path / "idx"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "--no-python", sys.executable, "-c", TORCHRUN_BUILD, str(out), uri]
        finished = subprocess.run(command, capture_output=True, text=True, timeout=300,
                                  env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        assert finished.returncode == 0, finished.stderr[-3000:]
        assert "rank 0: shard" in finished.stderr and "rank 1: shard" in finished.stderr  # both encoded
        upserted_by_rank_1 = "rank 1: shard" in finished.stderr and "upserted" in \
            finished.stderr.split("rank 1: shard", 1)[1].splitlines()[0]
        assert upserted_by_rank_1 == (where == "server")
        assert not (out / ".work").exists()
        index = Index.open(out)
        assert index.manifest["backend_params"]["index_type"] == "IVF_FLAT"
        ids = stored_ids(index.client, index.collection)
        assert count_rows(index.client, index.collection) == ITEMS == len(set(ids))
        clean = RandomEncoder(seed=1, dim=32).encode([{"id": i, "text": "x"} for i in index.ids])
        np.testing.assert_array_equal(index.vectors(), clean)
    finally:
        if server is not None:
            server.stop()
