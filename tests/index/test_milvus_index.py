"""The Milvus backend against the real embedded engine (Milvus Lite 2.5: its C++ core, no mock):
the same answers as the flat backend for build / add / search / serve / eval mbeir, IVF_FLAT
recall, refusals, filters. One database file for the module (each engine start costs seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lamra.cli import main
from lamra.data.synthetic import SynthConfig, synthesize
from lamra.errors import IncompatibleArtifactError, InputError
from lamra.index import Index, exact_topk
from lamra.index.synthetic import clustered_vectors

FINGERPRINT = {"model": "stand-in@1", "adapter": None, "prompt_format": "lamra-ret-1", "dim": 64}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One embedded database (one engine process) for every index of this module."""
    return str(tmp_path_factory.mktemp("milvus") / "shared.db")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("mbeir-milvus") / "mbeir"
    synthesize(path, SynthConfig(seed=3, test_queries=6, train_queries=0, pool_size=10, image_size=32))
    return path


def same_ranking(ids_a, scores_a, ids_b, scores_b, tol=1e-5):
    """Same scores (tol) place by place and the same ids, where a tie may swap equal-scored ids."""
    assert len(ids_a) == len(ids_b)
    np.testing.assert_allclose(np.asarray(scores_a, float), np.asarray(scores_b, float), atol=tol)
    for n, (a, b) in enumerate(zip(ids_a, ids_b)):
        if a != b:
            tied = [m for m in range(len(ids_a)) if abs(scores_a[m] - scores_a[n]) <= tol]
            assert {ids_a[m] for m in tied} == {ids_b[m] for m in tied} or max(tied) == len(ids_a) - 1, (n, a, b)


def test_cli_build_add_search_info_match_flat(root, db, tmp_path, tiny_checkpoint, capsys):
    pool = root / "cand_pool" / "local" / "mbeir_mscoco_task0_cand_pool.jsonl"
    if not pool.is_file():
        pool = sorted((root / "cand_pool" / "local").glob("*.jsonl"))[0]
    model = ["--model", str(tiny_checkpoint), "--device", "cpu"]
    flat, milvus = tmp_path / "flat", tmp_path / "milvus"
    assert main(["index", "build", str(pool), "--out", str(flat), "--vector-dtype", "float32", "-q", *model]) == 0
    assert main(["index", "build", str(pool), "--out", str(milvus), "--backend", "milvus", "--milvus-uri", db,
                 "--milvus-index", "FLAT", "-q", *model]) == 0
    capsys.readouterr()
    assert main(["index", "info", str(milvus), "--verify"]) == 0
    info = capsys.readouterr().out
    assert "milvus collection" in info and "lamra_milvus_" in info and "checksums" in info

    def search(index, *extra):
        assert main(["search", str(index), "--json", "-k", "10", *extra, *model]) == 0
        results = json.loads(capsys.readouterr().out)["results"]
        return [r["id"] for r in results], [r["score"] for r in results]

    image = next(root.rglob("*.png"))
    for query in (["--text", "a red circle"], ["--image", str(image)]):
        same_ranking(*search(flat, *query), *search(milvus, *query))

    more = tmp_path / "more.jsonl"
    more.write_text("".join(json.dumps({"id": f"new{n}", "text": f"a red circle number {n}"}) + "\n"
                            for n in range(3)))
    for index in (flat, milvus):
        assert main(["index", "add", str(index), str(more), "-q", *model]) == 0
    capsys.readouterr()
    ids, scores = search(milvus, "--text", "a red circle")
    assert any(i.startswith("new") for i in ids)
    same_ranking(*search(flat, "--text", "a red circle"), ids, scores)

    # A filter: the image candidates only, as the flat ranking filtered by hand.
    ids, scores = search(milvus, "--text", "a red circle", "--where", "modality == 'image'")
    opened = Index.open(flat)
    everything = search(flat, "--text", "a red circle", "-k", str(len(opened)))
    wanted = [(i, s) for i, s in zip(*everything) if opened.metadata(i).get("modality") == "image"][:10]
    assert ids and len(ids) == len(wanted)
    same_ranking([i for i, _ in wanted], [s for _, s in wanted], ids, scores)


def test_a_bad_where_is_one_clear_line_before_the_model_loads(db, tmp_path, capsys):
    out = tmp_path / "idx"
    Index.from_vectors(clustered_vectors(20, 64), [f"i{n}" for n in range(20)], FINGERPRINT, path=out,
                       backend="milvus", milvus_uri=db, index_type="FLAT")
    code = main(["search", str(out), "--text", "x", "--where", "modality = 'image'", "--model", "no/such-model"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error:"), err
    assert "modality = 'image'" in err and "use ==" in err
    for bad, why in [("modallity == 'image'", "unknown field 'modallity'"), ("dataset_id == 'nine'", "number"),
                     ("(modality == 'image'", "ends too early"), ("modality in ['a', 3]", "string values")]:
        with pytest.raises(InputError, match=why):
            Index.open(out).search(np.ones(64, np.float32), 3, where=bad)
    index = Index.open(out)
    assert index.search(np.ones(64, np.float32), 3, where="dataset_id == -1 and modality in ['text']")[1][0]


def test_default_index_types_embedded_and_server():
    from lamra.index.milvus_db import resolve_params

    assert resolve_params(10_000, "float32", {}, embedded=True) == {"index_type": "FLAT"}
    assert resolve_params(10_000, "float32", {}, embedded=False) == {"index_type": "HNSW", "M": 32,
                                                                      "ef_construction": 200, "ef_search": 128}
    assert resolve_params(10_000, "float32", {"index_type": "ivf_flat"}, embedded=True)["nprobe"] == 32
    with pytest.raises(ValueError, match="Milvus Lite.*not HNSW"):
        resolve_params(10_000, "float32", {"index_type": "HNSW"}, embedded=True)


def test_ivf_flat_recall_at_10_is_at_least_099_at_the_default_nprobe(db, tmp_path):
    vectors = clustered_vectors(5200, 64, seed=11)
    queries, vectors = vectors[:200], vectors[200:]
    index = Index.from_vectors(vectors, [str(n) for n in range(len(vectors))], FINGERPRINT, path=tmp_path / "ivf",
                               backend="milvus", milvus_uri=db, index_type="IVF_FLAT")
    params = index.manifest["backend_params"]
    assert params["index_type"] == "IVF_FLAT" and params["nprobe"] == 32 and params["nlist"] == 125
    _, exact = exact_topk(queries, vectors, 10)
    _, found = index.search(queries, 10)
    recall = np.mean([len(set(map(int, f)) & set(e)) / 10 for f, e in zip(found, exact)])
    assert recall >= 0.99, recall


def test_another_model_or_an_owned_collection_is_refused_by_name(db, tmp_path):
    vectors = clustered_vectors(30, 64)
    ids = [f"i{n}" for n in range(30)]
    out = tmp_path / "a"
    Index.from_vectors(vectors, ids, FINGERPRINT, path=out, backend="milvus", milvus_uri=db, index_type="FLAT",
                       milvus_collection="lamra_shared_name")
    with pytest.raises(IncompatibleArtifactError, match="model: index has 'stand-in@1', you use 'other@2'"):
        Index.open(out, expect={**FINGERPRINT, "model": "other@2"})
    # Two indexes never share a collection: the second folder is refused, the first still opens.
    with pytest.raises(InputError, match="belongs to another lamra index"):
        Index.from_vectors(vectors, ids, FINGERPRINT, path=tmp_path / "b", backend="milvus", milvus_uri=db,
                           index_type="FLAT", milvus_collection="lamra_shared_name")
    # The collection keeps the fingerprint too: a manifest edited to another model does not open.
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "model": "other@2"}))
    with pytest.raises(IncompatibleArtifactError, match="Milvus collection 'lamra_shared_name'.*model"):
        Index.open(out)


def test_serve_and_python_search_match_flat(db, tmp_path, sample_items, tiny_retriever):
    from fastapi.testclient import TestClient

    from lamra.serving.app import create_app

    flat = Index.build(sample_items, tiny_retriever, tmp_path / "flat", dtype="float32", show_progress=False)
    milvus = Index.build(sample_items, tiny_retriever, tmp_path / "milvus", backend="milvus", milvus_uri=db,
                         index_type="FLAT", show_progress=False)
    assert Index.open(tmp_path / "milvus").ids == flat.ids
    np.testing.assert_allclose(Index.open(tmp_path / "milvus").vectors(), flat.vectors(), atol=1e-6)
    bodies = []
    for index in (flat, milvus):
        with TestClient(create_app(tiny_retriever, index)) as client:
            response = client.post("/search", json={"text": "a red car", "k": 10})
            assert response.status_code == 200, response.text
            bodies.append(response.json()["results"])
    (a, b) = bodies
    same_ranking([r["id"] for r in a], [r["score"] for r in a], [r["id"] for r in b], [r["score"] for r in b])
    assert [r.get("text") for r in a] == [r.get("text") for r in b]


def test_serve_opens_the_database_given_by_milvus_uri(db, tmp_path, sample_items, tiny_retriever, tiny_checkpoint,
                                                       capsys, monkeypatch):
    import lamra.cli.serve

    def no_server(*args, **kwargs):  # had it opened the index (the wrong database), do not serve forever
        raise AssertionError("the server was about to start")

    monkeypatch.setattr(lamra.cli.serve, "run", no_server)
    Index.build(sample_items, tiny_retriever, tmp_path / "idx", backend="milvus", milvus_uri=db, index_type="FLAT",
                show_progress=False)
    elsewhere = tmp_path / "elsewhere.db"  # a database without the collection: serve must look there
    code = main(["serve", str(tmp_path / "idx"), "--model", str(tiny_checkpoint), "--port", "0",
                 "--milvus-uri", str(elsewhere)])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and str(elsewhere) in err and "Traceback" not in err


def test_eval_mbeir_global_pool_matches_flat(root, db, tmp_path):
    from lamra.evaluation.baselines import RandomEncoder
    from lamra.evaluation.mbeir import evaluate_mbeir
    from lamra.evaluation.report import read_trec_run

    runs = []
    for name, backend in (("flat", None), ("milvus", {"backend": "milvus", "milvus_uri": db, "index_type": "FLAT"})):
        results = evaluate_mbeir(root, RandomEncoder(seed=2), tmp_path / name, pool="global", top_k=10,
                                 index_dtype="float32", show_progress=False, pool_backend=backend)
        runs.append({r.task: (r.score, read_trec_run(r.run_file)) for r in results.results})
        assert Index.open(results.results[0].pool_index).manifest["backend"] == (backend or {}).get("backend", "flat")
    flat, milvus = runs
    assert len(flat) == 16 and sum(len(run) for _, run in flat.values()) > 50
    for task in flat:
        assert flat[task][0] == milvus[task][0]
        for qid, hits in flat[task][1].items():
            other = milvus[task][1][qid]
            same_ranking([d for d, _ in hits], [s for _, s in hits], [d for d, _ in other], [s for _, s in other])


class Crashing:
    """A stand-in encoder that dies after ``shards`` calls (a process killed mid-build, in-process)."""

    def __init__(self, shards: int | None):
        from lamra.evaluation.baselines import RandomEncoder

        self.inner, self.left = RandomEncoder(seed=8, dim=64), shards

    def fingerprint(self):
        return self.inner.fingerprint()

    def encode(self, items, instruction=None, **options):
        if self.left is not None:
            if self.left == 0:
                raise KeyboardInterrupt("killed")
            self.left -= 1
        return self.inner.encode(items, instruction, **options)


def test_a_resumed_build_redoes_lost_rows_and_deletes_stray_ones(db, tmp_path):
    from lamra.index.milvus_db import connect, count_rows, rows, stored_ids, upsert

    items = [{"id": f"d{n:02d}", "text": f"item {n}"} for n in range(40)]
    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        Index.build(items, Crashing(3), out, backend="milvus", milvus_uri=db, index_type="FLAT", shard_size=5,
                    show_progress=False)
    plan = json.loads((out / ".work" / "plan.json").read_text())
    client, name = connect(db), plan["milvus"]["collection"]
    assert count_rows(client, name) == 15  # three shards upserted and marked
    # What a database that lost unflushed writes, or a foreign writer, would leave behind:
    client.delete(name, ids=["d00", "d03"])
    upsert(client, name, rows(["stray"], np.ones((1, 64), np.float32), [{}], segment=0, dtype="float32", source=None))
    index = Index.build(items, Crashing(None), out, backend="milvus", milvus_uri=db, index_type="FLAT",
                        shard_size=5, show_progress=False)
    assert sorted(stored_ids(index.client, index.collection)) == [i["id"] for i in items]
    np.testing.assert_array_equal(index.vectors(), Crashing(None).encode(items))


def test_lamra_eval_mbeir_global_with_the_milvus_backend(root, db, tmp_path, capsys):
    out = tmp_path / "eval"
    command = ["eval", "mbeir", str(root), "--baseline", "oracle", "--pool", "global", "--backend", "milvus",
               "--milvus-uri", db, "--tasks", "cirr_task7", "--out", str(out), "-q"]
    assert main(command) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["average"] == 100.0 and len(results["tasks"]) == 1  # the oracle's positives come first
    pools = [p for p in (out / "embeddings").iterdir() if p.is_dir() and not p.name.startswith("query-")]
    assert [Index.open(p).manifest["backend"] for p in pools] == ["milvus"]
    capsys.readouterr()
    assert main(["eval", "mbeir", str(root), "--baseline", "oracle", "--tasks", "cirr_task7", "--milvus-index", "FLAT",
                 "--out", str(tmp_path / "x"), "-q"]) == 2
    assert "need --backend milvus" in " ".join(capsys.readouterr().err.replace("│", " ").split())
