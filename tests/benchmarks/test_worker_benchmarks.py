"""The issue-25 benchmarks of worker collation and of the index build: they run, use what they
say they time, and fail when the vectors differ."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lamra.index import build as build_module
from lamra.retriever.model import Retriever

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
ENCODE_ARGS = ["--arch", "tiny", "--texts", "6", "--images", "2", "--image-size", "56", "--repeats", "1"]
INDEX_ARGS = ["--arch", "tiny", "--items", "20", "--shard-size", "8", "--repeats", "1"]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_encode_benchmark_with_workers_times_and_checks_the_worker_path(monkeypatch):
    seen = []
    real = Retriever.encode_prepared

    def spy(self, prepared, **options):
        seen.append(options.get("num_workers"))
        return real(self, prepared, **options)

    monkeypatch.setattr(Retriever, "encode_prepared", spy)
    result = load("encode_throughput").main([*ENCODE_ARGS, "--workers", "2"])
    assert result["workers"] == 2 and result["same_vectors"]
    assert all(row["max_abs_diff"] <= 1e-4 and row["sorted_max_abs_diff"] <= 1e-4 for row in result["rows"])
    assert 2 in seen  # lamra's timed path ran with the workers


def test_index_build_benchmark_reports_build_against_encode(tmp_path, monkeypatch):
    calls = []
    real = build_module._write_shard

    def counting(*args):
        calls.append(args[1])
        return real(*args)

    monkeypatch.setattr(build_module, "_write_shard", counting)
    out = tmp_path / "index.json"
    result = load("index_build").main([*INDEX_ARGS, "--sequential", "--out", str(out)])
    assert calls == [0, 1, 2, 0, 1, 2]  # both builds wrote their 3 shards
    assert result["same_vectors"] and result["max_abs_diff"] <= result["tolerance"] == pytest.approx(1.1e-3)
    for key in ("encode_items_per_s", "build_items_per_s", "build_sequential_items_per_s"):
        assert result[key] > 0
    assert result["build_vs_encode"] == pytest.approx(result["build_items_per_s"] / result["encode_items_per_s"],
                                                      abs=2e-3)
    assert out.is_file()


def test_index_build_benchmark_exits_1_when_the_index_vectors_differ(monkeypatch, capsys):
    real = build_module._write_shard

    def shuffled(work, shard, record, vectors, message):  # a build that stores vectors under the wrong ids
        return real(work, shard, record, np.roll(vectors, 1, axis=0), message)

    monkeypatch.setattr(build_module, "_write_shard", shuffled)
    with pytest.raises(SystemExit) as caught:
        load("index_build").main(INDEX_ARGS)
    assert caught.value.code == 1
    assert "FAILED" in capsys.readouterr().err
