"""Index.build / add with a (tiny) retriever: shards, resume, bad items, model checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from index_records import records

from lamra.errors import IncompatibleArtifactError, InputError
from lamra.index import Index


class Interrupting:
    """A retriever that dies (like a kill) after encoding ``shards`` shards, and counts items."""

    def __init__(self, retriever, shards=None):
        self.retriever, self.shards, self.encoded = retriever, shards, 0
        self.dim = retriever.dim

    def fingerprint(self):
        return self.retriever.fingerprint()

    def encode(self, items, **options):
        if self.shards is not None and self.shards <= 0:
            raise KeyboardInterrupt("simulated kill")
        if self.shards is not None:
            self.shards -= 1
        items = list(items)
        self.encoded += len(items)
        return self.retriever.encode(items, **options)


def test_build_matches_encode_and_keeps_metadata(tmp_path, tiny_retriever, image_files):
    items = records(11, image_files)
    index = Index.build(items, tiny_retriever, tmp_path / "idx", shard_size=4, dtype="float32", show_progress=False)
    assert index.ids == [r["id"] for r in items]
    expected = tiny_retriever.encode(items, show_progress=False)
    np.testing.assert_allclose(index.vectors(), expected, atol=2e-5)
    assert index.metadata("t4")["image"] == str(image_files[0].resolve())
    assert index.metadata("t5")["text"].startswith("item number 5")
    assert index.manifest["model"] == tiny_retriever.fingerprint()["model"]
    assert not (tmp_path / "idx" / ".work").exists()
    scores, found = index.search(expected[[3, 7]], 1)
    assert found == [["t3"], ["t7"]]


def test_interrupted_build_resumes_without_redoing_finished_shards(tmp_path, tiny_retriever, image_files):
    items = records(10, image_files)
    reference = Index.build(items, tiny_retriever, tmp_path / "ref", shard_size=3, dtype="float32",
                            show_progress=False)
    dying = Interrupting(tiny_retriever, shards=2)
    with pytest.raises(KeyboardInterrupt):
        Index.build(items, dying, tmp_path / "idx", shard_size=3, dtype="float32", show_progress=False)
    with pytest.raises(InputError, match="interrupted build"):
        Index.open(tmp_path / "idx")
    resumed = Interrupting(tiny_retriever)
    index = Index.build(items, resumed, tmp_path / "idx", shard_size=3, dtype="float32", show_progress=False)
    assert resumed.encoded == 4  # shards 2 and 3 (3 + 1 items); shards 0 and 1 were kept
    assert index.ids == reference.ids
    np.testing.assert_array_equal(index.vectors(), reference.vectors())
    # Running the finished build again is a no-op; building other items there is refused.
    assert Index.build(items, resumed, tmp_path / "idx", shard_size=3, show_progress=False).ids == reference.ids
    assert resumed.encoded == 4
    with pytest.raises(InputError, match="already exists"):
        Index.build(items[:5], tiny_retriever, tmp_path / "idx", show_progress=False)


def test_interrupted_build_of_other_items_or_model_is_not_mixed_in(tmp_path, tiny_retriever, image_files):
    items = records(6, image_files)
    with pytest.raises(KeyboardInterrupt):
        Index.build(items, Interrupting(tiny_retriever, shards=1), tmp_path / "idx", shard_size=2, show_progress=False)
    with pytest.raises(InputError, match="interrupted build of other items"):
        Index.build(items[:4], tiny_retriever, tmp_path / "idx", shard_size=2, show_progress=False)
    other = Interrupting(tiny_retriever)
    other.fingerprint = lambda: {**tiny_retriever.fingerprint(), "model": "someone-else"}
    with pytest.raises(IncompatibleArtifactError, match="someone-else"):
        Index.build(items, other, tmp_path / "idx", shard_size=2, show_progress=False)


def test_add_appends_resumably_and_checks_ids_and_model(tmp_path, tiny_retriever, image_files):
    index = Index.build(records(5, image_files), tiny_retriever, tmp_path / "idx", shard_size=2, show_progress=False)
    new = records(5, image_files, prefix="n")
    with pytest.raises(KeyboardInterrupt):
        index.add(new, Interrupting(tiny_retriever, shards=1), shard_size=2, show_progress=False)
    assert len(Index.open(tmp_path / "idx")) == 5  # nothing half-added
    resumed = Interrupting(tiny_retriever)
    index.add(new, resumed, shard_size=2, show_progress=False)
    assert resumed.encoded == 3
    reopened = Index.open(tmp_path / "idx")
    assert reopened.ids == [f"t{n}" for n in range(5)] + [f"n{n}" for n in range(5)]
    with pytest.raises(InputError, match="already in the index"):
        reopened.add(new[:2], tiny_retriever, show_progress=False)
    reopened.add(new[:2] + records(1, image_files, prefix="z"), tiny_retriever, skip_existing=True,
                 show_progress=False)
    assert len(Index.open(tmp_path / "idx")) == 11
    other = Interrupting(tiny_retriever)
    other.fingerprint = lambda: {**tiny_retriever.fingerprint(), "prompt_format": "v0"}
    with pytest.raises(IncompatibleArtifactError, match="prompt_format"):
        reopened.add(records(1, image_files, prefix="q"), other, show_progress=False)


def test_bad_items_stop_the_build_or_are_skipped_and_listed(tmp_path, tiny_retriever, image_files):
    items = records(6, image_files)
    items[3]["image"] = str(tmp_path / "missing.png")
    with pytest.raises(InputError, match="skip") as error:
        Index.build(items, tiny_retriever, tmp_path / "a", shard_size=4, show_progress=False)
    assert "t3" in str(error.value) and "missing.png" in str(error.value)
    index = Index.build(items, tiny_retriever, tmp_path / "b", shard_size=4, skip_bad=True, show_progress=False)
    assert index.ids == ["t0", "t1", "t2", "t4", "t5"]
    assert [entry["id"] for entry in index.manifest["skipped"]] == ["t3"]


def test_items_without_ids_are_refused(tmp_path, tiny_retriever):
    with pytest.raises(InputError, match="no id"):
        Index.build(["just text"], tiny_retriever, tmp_path / "x", show_progress=False)
    with pytest.raises(InputError, match="duplicate"):
        Index.build([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], tiny_retriever, tmp_path / "x",
                    show_progress=False)


def test_in_memory_index_add(tiny_retriever, image_files):
    items = records(4, image_files)
    vectors = tiny_retriever.encode(items, show_progress=False)
    index = Index.from_vectors(vectors, [r["id"] for r in items], tiny_retriever.fingerprint())
    index.add(records(2, image_files, prefix="m"), tiny_retriever, show_progress=False)
    assert index.ids[-2:] == ["m0", "m1"] and index.path is None
    assert json.dumps(index.manifest)  # plain JSON


# -- per-item instructions ------------------------------------------------------------------


def test_one_instruction_per_item_goes_with_its_item_through_every_shard(tmp_path, tiny_retriever, image_files):
    items = records(7, image_files)
    instructions = [None if n % 3 == 0 else f"Find item {n}." for n in range(7)]
    index = Index.build(items, tiny_retriever, tmp_path / "idx", shard_size=3, dtype="float32",
                        instruction=instructions, show_progress=False)
    expected = tiny_retriever.encode(items, instruction=instructions, show_progress=False)
    np.testing.assert_allclose(index.vectors(), expected, atol=2e-5)
    plain = tiny_retriever.encode(items, show_progress=False)
    assert not np.allclose(index.vectors()[1], plain[1], atol=1e-3)  # the instruction did change the vector
    assert "instructions_sha256" in index.manifest["build"] and "instruction" not in index.manifest["build"]
    # One string is every item's instruction.
    shared = Index.build(items, tiny_retriever, tmp_path / "one", shard_size=3, dtype="float32",
                         instruction="Find it.", show_progress=False)
    np.testing.assert_allclose(shared.vectors(), tiny_retriever.encode(items, "Find it.", show_progress=False),
                               atol=2e-5)
    assert shared.manifest["build"]["instruction"] == "Find it."
    with pytest.raises(InputError, match="2 instructions for 7 items"):
        Index.build(items, tiny_retriever, tmp_path / "bad", instruction=["a", "b"], show_progress=False)


def test_instructions_stay_with_their_items_when_a_bad_one_is_skipped(tmp_path, tiny_retriever, image_files):
    items = records(5, image_files)
    items[2]["image"] = str(tmp_path / "missing.png")
    instructions = [f"Instruction {n}." for n in range(5)]
    index = Index.build(items, tiny_retriever, tmp_path / "idx", shard_size=5, dtype="float32", skip_bad=True,
                        instruction=instructions, show_progress=False)
    kept = [0, 1, 3, 4]
    assert index.ids == [f"t{n}" for n in kept]
    expected = tiny_retriever.encode([items[n] for n in kept], instruction=[instructions[n] for n in kept],
                                     show_progress=False)
    np.testing.assert_allclose(index.vectors(), expected, atol=2e-5)


def test_a_build_with_other_instructions_is_neither_resumed_nor_taken_as_done(tmp_path, tiny_retriever, image_files):
    items = records(6, image_files)
    with pytest.raises(KeyboardInterrupt):
        Index.build(items, Interrupting(tiny_retriever, shards=1), tmp_path / "idx", shard_size=2,
                    instruction="First.", show_progress=False)
    with pytest.raises(InputError, match="other instructions"):
        Index.build(items, tiny_retriever, tmp_path / "idx", shard_size=2, instruction="Second.", show_progress=False)
    resumed = Interrupting(tiny_retriever)
    Index.build(items, resumed, tmp_path / "idx", shard_size=2, instruction="First.", show_progress=False)
    assert resumed.encoded == 4  # shard 0 was kept
    assert Index.build(items, resumed, tmp_path / "idx", instruction="First.", show_progress=False).ids  # done: a no-op
    with pytest.raises(InputError, match="already exists"):
        Index.build(items, tiny_retriever, tmp_path / "idx", instruction="Second.", show_progress=False)


def test_add_takes_instructions_too(tmp_path, tiny_retriever, image_files):
    index = Index.build(records(2, image_files), tiny_retriever, tmp_path / "idx", dtype="float32",
                        show_progress=False)
    new = records(3, image_files, prefix="q")
    index.add(new, tiny_retriever, instruction=["A.", None, "C."], show_progress=False)
    expected = tiny_retriever.encode(new, instruction=["A.", None, "C."], show_progress=False)
    np.testing.assert_allclose(Index.open(tmp_path / "idx").vectors()[2:], expected, atol=2e-5)
