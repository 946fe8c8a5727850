"""Index.build hides its per-shard work behind the encoding (the next shard tokenized, the last one
written, in background threads) and still gives the same index and resumes exactly."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from index_records import records

from lamra.errors import InputError
from lamra.index import Index
from lamra.index import build as build_module

WAIT = 10  # seconds a test waits for the other thread before concluding there was no overlap


class Watched:
    """lamra's retriever with ``prepare`` / ``encode_prepared`` (the overlapped path), which records
    the items it tokenizes ahead (``prepared_ids``) and counts those it encodes (``encoded``, and
    ``encoded_whole`` through plain ``encode``), and can die like a kill when shard ``die_at``
    (counting from this run's first) starts encoding."""

    def __init__(self, retriever, die_at=None):
        self.retriever, self.dim = retriever, retriever.dim
        self.die_at, self.shards, self.encoded, self.encoded_whole = die_at, 0, 0, 0
        self.prepared_ids: list[str] = []
        self.started = [threading.Event() for _ in range(16)]  # shard n's encoding has started

    def fingerprint(self):
        return self.retriever.fingerprint()

    def encode(self, items, **options):
        self.encoded_whole += len(items)
        return self.retriever.encode(items, **options)

    def prepare(self, items, instruction=None):
        prompts = self.retriever.prepare(items, instruction)
        self.prepared_ids.extend(p.item_id for p in prompts)
        return prompts

    def encode_prepared(self, prompts, **options):
        shard, self.shards = self.shards, self.shards + 1
        self.started[shard].set()
        if shard == self.die_at:
            raise KeyboardInterrupt("simulated kill")
        self.encoded += len(prompts)
        return self.retriever.encode_prepared(prompts, **options)


def test_the_overlapped_build_gives_the_sequential_builds_index(tmp_path, tiny_retriever, image_files):
    items = records(11, image_files)
    instruction = [None if n % 2 else f"Task {n % 3}." for n in range(11)]
    options = dict(shard_size=3, dtype="float32", show_progress=False, instruction=instruction)
    unwatched = Watched(tiny_retriever)
    sequential = Index.build(items, unwatched, tmp_path / "seq", tokenize_ahead=False, **options)
    assert unwatched.prepared_ids == [] and unwatched.encoded_whole == 11  # the knob is honoured
    watched = Watched(tiny_retriever)
    overlapped = Index.build(items, watched, tmp_path / "overlap", **options)
    assert watched.prepared_ids == [r["id"] for r in items] and watched.encoded == 11  # the overlapped path ran
    assert watched.encoded_whole == 0
    assert overlapped.ids == sequential.ids == [r["id"] for r in items]
    np.testing.assert_array_equal(overlapped.vectors(), sequential.vectors())
    assert overlapped.manifest["build"] == sequential.manifest["build"]
    workers = Index.build(items, tiny_retriever, tmp_path / "workers", num_workers=2, **options)
    assert workers.ids == sequential.ids
    np.testing.assert_allclose(workers.vectors(), sequential.vectors(), rtol=0, atol=1e-5)


def test_bad_items_are_found_and_skipped_alike(tmp_path, tiny_retriever, image_files):
    items = records(10, image_files)
    items[2]["image"] = str(tmp_path / "missing.png")  # fails when tokenized (ahead, in the thread)
    whole = Path(image_files[3]).read_bytes()
    (tmp_path / "half.jpg").write_bytes(whole[: len(whole) // 2])
    items[7]["image"] = str(tmp_path / "half.jpg")  # fails when collated
    for ahead in (False, True):
        with pytest.raises(InputError, match="skip") as error:
            Index.build(items, tiny_retriever, tmp_path / f"stop-{ahead}", shard_size=3, show_progress=False,
                        tokenize_ahead=ahead)
        assert error.value.item == "t2" and "missing.png" in str(error.value)
    sequential = Index.build(items, tiny_retriever, tmp_path / "seq", shard_size=3, skip_bad=True, dtype="float32",
                             show_progress=False, tokenize_ahead=False)
    overlapped = Index.build(items, Watched(tiny_retriever), tmp_path / "overlap", shard_size=3, skip_bad=True,
                             dtype="float32", show_progress=False)
    assert [e["id"] for e in overlapped.manifest["skipped"]] == ["t2", "t7"]
    assert overlapped.manifest["skipped"] == sequential.manifest["skipped"]
    assert overlapped.ids == sequential.ids and "t2" not in overlapped.ids and "t7" not in overlapped.ids
    np.testing.assert_array_equal(overlapped.vectors(), sequential.vectors())


def test_the_next_shard_is_tokenized_while_this_one_encodes(tmp_path, tiny_retriever, image_files):
    items = records(6, image_files)
    watched = Watched(tiny_retriever)
    seen_while_encoding = []
    real = watched.encode_prepared

    def encode_prepared(prompts, **options):
        if watched.shards == 0:  # shard 0: wait (a little) for shard 1's items to be tokenized meanwhile
            for _ in range(WAIT * 100):
                if "t3" in watched.prepared_ids:
                    break
                threading.Event().wait(0.01)
            seen_while_encoding.extend(watched.prepared_ids)
        return real(prompts, **options)

    watched.encode_prepared = encode_prepared
    Index.build(items, watched, tmp_path / "idx", shard_size=3, show_progress=False)
    assert seen_while_encoding == ["t0", "t1", "t2", "t3", "t4", "t5"]


def test_a_shards_files_are_written_while_the_next_one_encodes(tmp_path, tiny_retriever, image_files,
                                                                monkeypatch):
    watched = Watched(tiny_retriever)
    real_write = build_module._write_shard
    overlapped = []

    def write_when_the_next_shard_started(work, shard, *args):
        if shard == 0:
            overlapped.append(watched.started[1].wait(WAIT))
        return real_write(work, shard, *args)

    monkeypatch.setattr(build_module, "_write_shard", write_when_the_next_shard_started)
    index = Index.build(records(6, image_files), watched, tmp_path / "idx", shard_size=3, show_progress=False)
    assert overlapped == [True] and len(index) == 6


def test_a_kill_while_a_write_is_pending_keeps_that_shard_and_resumes_exactly(tmp_path, tiny_retriever, image_files,
                                                                            monkeypatch):
    items = records(10, image_files)
    reference = Index.build(items, tiny_retriever, tmp_path / "ref", shard_size=3, dtype="float32",
                            show_progress=False, tokenize_ahead=False)
    dying = Watched(tiny_retriever, die_at=2)
    real_write = build_module._write_shard

    def slow_write(work, shard, *args):  # shard 1's files are still being written when shard 2 dies
        if shard == 1:
            dying.started[2].wait(WAIT)
        return real_write(work, shard, *args)

    monkeypatch.setattr(build_module, "_write_shard", slow_write)
    with pytest.raises(KeyboardInterrupt):
        Index.build(items, dying, tmp_path / "idx", shard_size=3, dtype="float32", show_progress=False)
    shards = tmp_path / "idx" / ".work" / "shards"
    assert sorted(p.name for p in shards.iterdir()) == ["00000.json", "00000.npy", "00001.json", "00001.npy"]
    monkeypatch.setattr(build_module, "_write_shard", real_write)
    resumed = Watched(tiny_retriever)
    index = Index.build(items, resumed, tmp_path / "idx", shard_size=3, dtype="float32", show_progress=False)
    assert resumed.encoded == 4  # shards 2 and 3 (3 + 1 items); shards 0 and 1 were kept
    assert index.ids == reference.ids
    np.testing.assert_array_equal(index.vectors(), reference.vectors())


@pytest.mark.parametrize("failing_file", ["00001.json", "00001.npy"])
def test_a_shard_whose_write_failed_is_not_taken_as_done(tmp_path, tiny_retriever, image_files, monkeypatch,
                                                         failing_file):
    items = records(10, image_files)
    reference = Index.build(items, tiny_retriever, tmp_path / "ref", shard_size=3, dtype="float32",
                            show_progress=False, tokenize_ahead=False)
    real_write_bytes = build_module.atomic_write_bytes

    def disk_full_at_shard_1(path, data):
        if Path(path).name == failing_file:
            raise OSError(28, "No space left on device")
        return real_write_bytes(path, data)

    monkeypatch.setattr(build_module, "atomic_write_bytes", disk_full_at_shard_1)
    failing = Watched(tiny_retriever)
    with pytest.raises(OSError, match="No space"):
        Index.build(items, failing, tmp_path / "idx", shard_size=3, dtype="float32", show_progress=False)
    assert failing.shards <= 3  # the error stopped the build at the next shard, not at the end
    monkeypatch.setattr(build_module, "atomic_write_bytes", real_write_bytes)
    resumed = Watched(tiny_retriever)
    index = Index.build(items, resumed, tmp_path / "idx", shard_size=3, dtype="float32", show_progress=False)
    assert resumed.encoded == 7  # shards 1, 2 and 3: shard 1's files were not complete
    assert index.ids == reference.ids
    np.testing.assert_array_equal(index.vectors(), reference.vectors())


def test_cli_workers_build_the_same_index_and_milvus_refuses_them(tmp_path, tiny_checkpoint, tiny_retriever,
                                                                 image_files, monkeypatch, capsys):
    import json

    from lamra.cli import main

    items = records(7, image_files)
    collection = tmp_path / "items.jsonl"
    collection.write_text("".join(json.dumps(r) + "\n" for r in items))
    reference = Index.build(items, tiny_retriever, tmp_path / "ref", shard_size=3, dtype="float32",
                            show_progress=False)
    calls = []
    real = Index.build.__func__

    def recording_build(cls, *args, **kwargs):
        calls.append(kwargs.get("num_workers"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Index, "build", classmethod(recording_build))
    command = ["index", "build", str(collection), "--model", str(tiny_checkpoint), "--device", "cpu",
               "--shard-size", "3", "--vector-dtype", "float32", "-q"]
    assert main([*command, "--out", str(tmp_path / "idx"), "--workers", "2"]) == 0
    assert calls == [2]
    index = Index.open(tmp_path / "idx")
    assert index.ids == reference.ids
    np.testing.assert_allclose(index.vectors(), reference.vectors(), rtol=0, atol=1e-5)
    capsys.readouterr()
    assert main([*command, "--out", str(tmp_path / "mv"), "--workers", "2", "--backend", "milvus"]) == 2
    assert "num_workers is not supported with backend='milvus'" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["flat", "milvus"])
def test_tokenize_ahead_false_reaches_every_build_and_add(tmp_path, tiny_retriever, image_files, backend):
    """``tokenize_ahead=False``: each shard tokenized in plain ``encode``, for the build and for
    ``add``, on both backends; the same vectors as tokenizing ahead."""
    items = records(8, image_files)
    options = dict(backend=backend, shard_size=2, dtype="float32", show_progress=False)
    if backend == "milvus":
        options.update(milvus_uri=str(tmp_path / "milvus.db"), index_type="FLAT")
    indexes = []
    for ahead in (False, True):
        if backend == "milvus":
            options["milvus_collection"] = f"ahead_{ahead}"  # one database, a collection each
        watched = Watched(tiny_retriever)
        index = Index.build(items[:4], watched, tmp_path / f"idx-{ahead}", tokenize_ahead=ahead, **options)
        index.add(items[4:], watched, shard_size=2, tokenize_ahead=ahead, show_progress=False)
        tokenized_ahead = [r["id"] for r in items] if ahead else []
        assert watched.prepared_ids == tokenized_ahead and watched.encoded_whole == (0 if ahead else 8)
        indexes.append(Index.open(tmp_path / f"idx-{ahead}"))
    assert indexes[0].ids == indexes[1].ids == [r["id"] for r in items]
    np.testing.assert_allclose(indexes[0].vectors(), indexes[1].vectors(), rtol=0, atol=1e-6)
