"""``lamra eval mbeir`` under torchrun: two processes share the encoding and give one process's numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lamra.data.synthetic import SynthConfig, synthesize

LAMRA = Path(sys.executable).with_name("lamra")


@pytest.fixture(scope="module", autouse=True)
def console_script():
    """This test needs the installed ``lamra`` script: without it it fails (a skip would let CI pass)."""
    if not LAMRA.is_file():
        pytest.fail(f"the lamra console script is not installed at {LAMRA} (pip install -e . in this "
                    "environment): the multi-process tests need it", pytrace=False)


@pytest.mark.slow
def test_two_processes_give_the_numbers_of_one(tmp_path):
    root = tmp_path / "mini"
    synthesize(root, SynthConfig(seed=6, test_queries=3, train_queries=0, pool_size=6, image_size=16))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = ["eval", "mbeir", str(root), "--baseline", "random", "--pool", "global-lamra", "--instructions", "random",
            "--seed", "2", "-t", "mscoco_task0,cirr_task7", "--shard-size", "2", "-q"]
    single = subprocess.run([str(LAMRA), *args, "--out", str(tmp_path / "one")], env=env, capture_output=True,
                            text=True, timeout=120)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    double = subprocess.run([*torchrun, str(LAMRA), "--verbose", *args, "--out", str(tmp_path / "two")], env=env,
                            capture_output=True, text=True, timeout=180)
    assert double.returncode == 0, double.stderr[-3000:]
    assert "rank 0: shard" in double.stderr and "rank 1: shard" in double.stderr  # both ranks encoded
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert [t["metrics"] for t in two["tasks"]] == [t["metrics"] for t in one["tasks"]]
    assert two["pool"] == "global-lamra" and two["instruction_seed"] == 2
    for task in ("mscoco_task0", "cirr_task7"):
        name = f"runs/mbeir_{task}_global-lamra_test.trec"
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
