"""The on-disk index: round trips, manifests, refusing other models and damaged files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lamra.errors import IncompatibleArtifactError, InputError
from lamra.index import CorruptIndexError, Index

FP = {"model": "tiny@abc", "adapter": None, "prompt_format": "lamra-ret-1", "dim": 16}


def unit(rows, seed, dim=16):
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def saved(tmp_path):
    vectors = unit(500, 0)
    meta = [{"text": f"item {n}", "image": f"pics/{n}.png", "src_content": {"n": n}} for n in range(500)]
    index = Index.from_vectors(vectors, [f"id{n}" for n in range(500)], FP, metadata=meta, path=tmp_path / "idx")
    return tmp_path / "idx", vectors, index


def test_round_trip_keeps_ids_vectors_metadata_and_results(saved):
    path, vectors, index = saved
    opened = Index.open(path, expect=dict(FP))
    assert len(opened) == 500 and opened.ids == index.ids and opened.dim == 16
    np.testing.assert_array_equal(opened.vectors(), vectors.astype(np.float16).astype(np.float32))
    queries = unit(5, 1)
    assert opened.search(queries, 7)[1] == index.search(queries, 7)[1]
    meta = opened.metadata("id42")
    assert meta["id"] == "id42" and meta["text"] == "item 42" and meta["src_content"] == {"n": 42}
    assert meta["image"].endswith("pics/42.png") and meta["images"] == [meta["image"]]
    assert meta["image"].startswith("/")
    with pytest.raises(KeyError, match="nope"):
        opened.metadata("nope")
    manifest = json.loads((path / "manifest.json").read_text())
    for key in ("model", "adapter", "prompt_format", "dim", "count", "dtype", "backend", "created", "updated"):
        assert key in manifest
    assert manifest["count"] == 500 and manifest["dtype"] == "float16"


def test_float32_storage_is_exact(tmp_path):
    vectors = unit(50, 3)
    Index.from_vectors(vectors, [str(n) for n in range(50)], FP, dtype="float32", path=tmp_path / "i")
    np.testing.assert_array_equal(Index.open(tmp_path / "i").vectors(), vectors)


@pytest.mark.parametrize("key,value", [("model", "other@123"), ("prompt_format", "lamra-ret-0"), ("dim", 32),
                                       ("adapter", "lora@1")])
def test_another_model_prompt_or_dimension_is_refused(saved, key, value):
    path, _, _ = saved
    with pytest.raises(IncompatibleArtifactError, match=key):
        Index.open(path, expect={**FP, key: value})


def test_query_of_the_wrong_dimension_is_refused(saved):
    with pytest.raises(IncompatibleArtifactError, match="dimension 16"):
        saved[2].search(unit(1, 0, dim=8), 3)


def _flip_byte(path, offset_from_end=10):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate-vectors", "flip-vectors", "flip-ids", "flip-items", "delete-items",
                                    "manifest-json", "manifest-count"])
def test_damaged_index_gives_a_clear_error_never_results(saved, damage):
    path, _, _ = saved
    seg = path / "segments"
    if damage == "truncate-vectors":
        file = seg / "00000.vectors.npy"
        file.write_bytes(file.read_bytes()[:-100])
    elif damage == "flip-vectors":
        _flip_byte(seg / "00000.vectors.npy")
    elif damage == "flip-ids":
        _flip_byte(seg / "00000.ids.json", 5)
    elif damage == "flip-items":
        _flip_byte(seg / "00000.items.jsonl", 5)
    elif damage == "delete-items":
        (seg / "00000.items.jsonl").unlink()
    elif damage == "manifest-json":
        (path / "manifest.json").write_text("{not json")
    elif damage == "manifest-count":
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["count"] = 499
        (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError) as error:
        Index.open(path)
    assert str(path) in str(error.value)
    if damage == "truncate-vectors":  # caught even without reading checksums
        with pytest.raises(CorruptIndexError, match="truncated"):
            Index.open(path, verify=False)


def test_not_an_index(tmp_path):
    with pytest.raises(InputError, match="not a lamra index"):
        Index.open(tmp_path)
    with pytest.raises(InputError, match="not found"):
        Index.open(tmp_path / "missing")


def test_add_vectors_appends_a_segment_and_persists(saved):
    path, vectors, _ = saved
    index = Index.open(path)
    extra = unit(20, 9)
    index.add_vectors(extra, [f"new{n}" for n in range(20)], [{"text": "fresh"}] * 20)
    reopened = Index.open(path)
    assert len(reopened) == 520 and reopened.ids[-1] == "new19"
    assert reopened.metadata("new3")["text"] == "fresh" and reopened.metadata("id3")["text"] == "item 3"
    assert reopened.search(extra[:1], 1)[1] == [["new0"]]
    with pytest.raises(InputError, match="already in the index"):
        reopened.add_vectors(extra[:1], ["id7"])
    with pytest.raises(InputError, match="duplicate"):
        reopened.add_vectors(extra[:2], ["x", "x"])


@pytest.mark.parametrize("backend,params", [("ivf", {"nlist": 8, "nprobe": 8}), ("hnsw", {"M": 8}),
                                            ("ivf", {"nlist": 4, "nprobe": 4, "encoding": "sq8"}),
                                            ("ivf", {"nlist": 4, "nprobe": 4, "encoding": "pq2"})])
def test_approximate_backends_round_trip_and_record_their_parameters(tmp_path, backend, params):
    vectors = unit(2000, 4)
    ids = [str(n) for n in range(2000)]
    index = Index.from_vectors(vectors, ids, FP, backend=backend, path=tmp_path / "a", **params)
    manifest = Index.open(tmp_path / "a").manifest
    assert manifest["backend"] == backend
    assert {k: manifest["backend_params"][k] for k in params} == params
    opened = Index.open(tmp_path / "a")
    scores, found = opened.search(vectors[:20], 5)
    assert found == index.search(vectors[:20], 5)[1]
    if params.get("encoding") is None:  # uncompressed codes find each vector itself first
        assert [row[0] for row in found] == ids[:20]
    opened.add_vectors(unit(10, 5), [f"n{n}" for n in range(10)])
    assert len(Index.open(tmp_path / "a")) == 2010
    assert list(tmp_path.joinpath("a").glob("backend-*.faiss")) == [tmp_path / "a" / "backend-00002.faiss"]


def test_bad_backend_parameters_are_refused():
    with pytest.raises(ValueError, match="unknown backend"):
        Index.from_vectors(unit(5, 0), list("abcde"), FP, backend="annoy")
    with pytest.raises(ValueError, match="unknown ivf parameter"):
        Index.from_vectors(unit(5, 0), list("abcde"), FP, backend="ivf", efSearch=3)
    with pytest.raises(ValueError, match="encoding"):
        Index.from_vectors(unit(5, 0), list("abcde"), FP, backend="hnsw", encoding="zip")


def test_save_an_opened_index_elsewhere(saved, tmp_path):
    path, vectors, _ = saved
    copy = tmp_path / "copy"
    Index.open(path).save(copy)
    opened = Index.open(copy)
    assert opened.ids == Index.open(path).ids and opened.metadata("id9")["text"] == "item 9"
    np.testing.assert_array_equal(opened.vectors(), Index.open(path).vectors())


SETTINGS = {"max_pixels": 235200, "min_pixels": 3136, "positions": "1d", "max_tokens": 1024}


def test_other_settings_are_refused_by_name(tmp_path):
    Index.from_vectors(unit(3, 0), ["a", "b", "c"], {**FP, "settings": SETTINGS}, path=tmp_path / "i")
    assert Index.open(tmp_path / "i", expect={**FP, "settings": SETTINGS}).manifest["settings"] == SETTINGS
    with pytest.raises(IncompatibleArtifactError) as caught:
        Index.open(tmp_path / "i", expect={**FP, "settings": {**SETTINGS, "max_pixels": 1000, "positions": "mrope"}})
    message = str(caught.value)
    assert "setting max_pixels: index has 235200, you use 1000" in message
    assert "setting positions: index has '1d', you use 'mrope'" in message
    assert "max_tokens" not in message and "rebuild" in message


def test_an_index_from_before_settings_and_the_new_prompt_format_is_refused_naming_both(saved):
    path = saved[0]  # made with prompt format lamra-ret-1 and no settings recorded
    with pytest.raises(IncompatibleArtifactError) as caught:
        Index.open(path, expect={**FP, "prompt_format": "lamra-ret-2", "settings": SETTINGS})
    message = str(caught.value)
    assert "prompt_format: index has 'lamra-ret-1', you use 'lamra-ret-2'" in message
    assert "settings: the index records none" in message
    Index.open(path, expect=dict(FP))  # an encoder without settings (a baseline) still opens it
