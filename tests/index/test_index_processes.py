"""Real processes: ``lamra index build`` killed with SIGKILL and resumed; two torchrun ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lamra.index import Index

LAMRA = Path(sys.executable).with_name("lamra")


@pytest.fixture(scope="module", autouse=True)
def console_script():
    """These tests need the installed ``lamra`` script: without it they fail (a skip would let CI pass)."""
    if not LAMRA.is_file():
        pytest.fail(f"the lamra console script is not installed at {LAMRA} (pip install -e . in this "
                    "environment): the multi-process tests need it", pytrace=False)


@pytest.fixture(scope="module")
def collection(tmp_path_factory, image_files):
    folder = tmp_path_factory.mktemp("collection")
    lines = []
    for n in range(60):
        line = {"id": f"c{n:02d}", "text": f"a {['small', 'big', 'odd'][n % 3]} thing number {n}"}
        if n % 3 == 0:
            line["image"] = str(image_files[n % len(image_files)])
        lines.append(line)
    path = folder / "items.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def reference(collection, tiny_retriever, tmp_path_factory):
    from lamra.data.collections import open_collection

    path = tmp_path_factory.mktemp("ref") / "idx"
    return Index.build(open_collection(collection).records, tiny_retriever, path, shard_size=3, dtype="float32",
                       show_progress=False)


def build_command(collection, checkpoint, out):
    return [str(LAMRA), "index", "build", str(collection), "--model", str(checkpoint), "--out", str(out),
            "--shard-size", "3", "--vector-dtype", "float32", "--device", "cpu", "-q"]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_and_kill(command, shards_dir: Path, after_shards: int, timeout=120):
    """Start the build, SIGKILL it once ``after_shards`` shard files exist; True if it was killed."""
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if shards_dir.is_dir() and len(list(shards_dir.glob("[0-9]*.npy"))) >= after_shards:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.002)
        assert process.returncode == 0, process.stderr.read().decode()
        return False
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_kill_9_at_several_points_then_resume_gives_every_item_once(collection, reference, tiny_checkpoint,
                                                                     tmp_path):
    out = tmp_path / "idx"
    command = build_command(collection, tiny_checkpoint, out)
    shards = out / ".work" / "shards"
    killed = [run_and_kill(command, shards, after) for after in (1, 9, 20)]
    assert killed[:2] == [True, True], "the build finished before the kill: the test did not test anything"
    if killed[2]:
        assert not (out / "manifest.json").exists() or (out / ".work").exists()
    finished = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    index = Index.open(out)
    assert sorted(index.ids) == sorted(set(index.ids)) and index.ids == reference.ids
    np.testing.assert_array_equal(index.vectors(), reference.vectors())
    assert not (out / ".work").exists()


def test_two_processes_build_the_same_index_as_one(collection, reference, tiny_checkpoint, tmp_path):
    out = tmp_path / "idx"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = torchrun + [str(LAMRA), "--verbose"] + build_command(collection, tiny_checkpoint, out)[1:]
    finished = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=180)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "rank 0: shard" in finished.stderr and "rank 1: shard" in finished.stderr  # both ranks encoded
    index = Index.open(out)
    assert index.ids == reference.ids
    np.testing.assert_allclose(index.vectors(), reference.vectors(), atol=1e-5)
