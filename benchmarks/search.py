"""Search benchmark: lamra's index against brute-force numpy, measured in one run.

    python benchmarks/search.py                          # 300k x 1536 (fits 24 GiB, a few minutes)
    python benchmarks/search.py --count 1000000          # the 1M x 1536 target
    python benchmarks/search.py --dim 3584 --count 200000 --hnsw

Reports: index size on disk and in memory, build time, queries/s of exact (flat) and
approximate (IVF, optionally HNSW) search at batch 1 and batch 256, recall@10 of every method
against exact search (the float16 flat index), and, as baseline, brute-force numpy (float32
matrix product + argpartition) in the same run. Exact search is timed twice against numpy: the
float16 index (half numpy's bytes) and a float32 flat index (numpy's dtype), so the two ratios
separate what the storage saves from what the search code does. The memory-bandwidth bound of a
full scan is measured here too (multi-threaded reads of a 2 GiB buffer, sampled before and after
the exact timing), so the ratios hold on any machine.

The baselines are checked, not assumed: numpy's and the float32 index's top 10 must agree with
the float16 index's (recall@10 >= 0.99, computed and reported); otherwise the script exits 1.
Data: random-but-clustered unit vectors (lamra.index.synthetic), queries from the same law.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FP = {"model": "benchmark", "adapter": None, "prompt_format": "lamra-ret-1"}
# The exact baselines (numpy, the float32 index) must find the float16 index's top 10 this well;
# anything lower means one of them is wrong, and its timing means nothing.
MIN_BASELINE_RECALL = 0.99


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300_000, help="Vectors in the index.")
    parser.add_argument("--dim", type=int, default=1536, help="Dimension (1536: Qwen2-VL-2B, 3584: 7B).")
    parser.add_argument("--queries", type=int, default=256, help="Queries (batch-256 search and recall).")
    parser.add_argument("--single", type=int, default=30, help="Batch-1 queries timed one by one.")
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default: the index's default).")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists visited (default: the index's).")
    parser.add_argument("--encoding", default=None, help="IVF / HNSW codes: fp16 (default), sq8, pqM, flat.")
    parser.add_argument("--sweep", type=str, default="0.5,2,4",
                        help="Also measure IVF at these multiples of its nprobe (recall / speed trade-off).")
    parser.add_argument("--intrinsic-dim", type=int, default=64,
                        help="Directions the data varies in (real embeddings: far fewer than --dim).")
    parser.add_argument("--spread", type=float, default=2.0, help="Noise around the sub-topic centres.")
    parser.add_argument("--hnsw", action="store_true", help="Also build and measure HNSW (slow to build).")
    parser.add_argument("--skip-numpy", action="store_true", help="No numpy baseline (it needs 4 bytes/dim).")
    parser.add_argument("--skip-float32", action="store_true",
                        help="No float32 flat index (the same-dtype comparison with numpy; 4 bytes/dim).")
    parser.add_argument("--bandwidth-gib", type=float, default=2.0, help="Buffer of the bandwidth test (GiB).")
    parser.add_argument("--workdir", type=Path, default=None, help="Where the index folders go (default: a temp dir).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    parser.add_argument("--backend", choices=("faiss", "milvus"), default="faiss",
                        help="milvus: also build and measure the Milvus backend (embedded Milvus Lite, or the "
                             "server of --milvus-uri) beside FAISS, in the same run.")
    parser.add_argument("--milvus-uri", default=None, help="A Milvus server (default: embedded, in the work dir).")
    parser.add_argument("--milvus-index", default="IVF_FLAT", help="Milvus index type to build and measure; the "
                                                                    "collection is then re-indexed FLAT (exact) and "
                                                                    "measured again (no second insert).")
    args = parser.parse_args(argv)

    from lamra.index import Index, exact_topk
    from lamra.index.synthetic import clustered_vectors

    results: dict = {"machine": machine(), "count": args.count, "dim": args.dim, "queries": args.queries}
    print(f"machine: {results['machine']}")
    buffer_bytes = int(args.bandwidth_gib * 2**30)
    samples = bandwidth(buffer_bytes)
    print(f"memory read bandwidth: {statistics.median(samples):.1f} GB/s (median; best {max(samples):.1f})")

    t0 = time.perf_counter()
    data = clustered_vectors(args.count + args.queries, args.dim, spread=args.spread,
                             intrinsic_dim=args.intrinsic_dim, seed=7, dtype=np.float16)
    queries, vectors = data[:args.queries].astype(np.float32), data[args.queries:]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = [f"doc{n}" for n in range(args.count)]
    print(f"data: {args.count} x {args.dim} float16 ({vectors.nbytes / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s")

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lamra-search-bench-"))
    fingerprint = {**FP, "dim": args.dim}
    rows = []
    try:
        flat = build_and_open("flat", vectors, ids, fingerprint, work, {})
        exact = time_search(flat["index"].search, queries, args.single)
        # The machine is shared and noisy: sample the bandwidth again right after the scan.
        samples += bandwidth(buffer_bytes)
        results["bandwidth_samples_gbs"] = samples
        results["bandwidth_gbs"] = statistics.median(samples)
        results["bandwidth_best_gbs"] = max(samples)
        results["exact_scan_gbs"] = vectors.nbytes / exact["b1_s"] / 1e9
        _, truth = flat["index"].search(queries, 10)
        rows.append(row("lamra flat (exact)", flat, exact, recall=1.0))
        results["bound_b1_s"] = vectors.nbytes / (results["bandwidth_gbs"] * 1e9)
        results["exact_b1_over_bound"] = exact["b1_s"] / results["bound_b1_s"]
        results["exact_b1_over_best_bound"] = exact["b1_s"] * results["bandwidth_best_gbs"] * 1e9 / vectors.nbytes
        check = exact_topk(queries[:8], vectors, 10)[1]
        assert [[ids[p] for p in r] for r in check] == truth[:8], "flat index disagrees with exact_topk"
        del flat

        if not args.skip_float32:
            flat32 = build_and_open("flat", vectors, ids, fingerprint, work / "float32", {}, dtype="float32")
            exact32 = time_search(flat32["index"].search, queries, args.single)
            rows.append(row("lamra flat (exact, float32)", flat32, exact32,
                            recall=recall(flat32["index"].search(queries, 10)[1], truth)))
            del flat32
        if not args.skip_numpy:
            numpy_row, numpy_found = numpy_baseline(vectors, queries, args.single)
            rows.append(numpy_row)
            rows[-1]["recall@10"] = recall([[ids[p] for p in r] for r in numpy_found], truth)
            ratios = {"float16_index_vs_float32_numpy": {"b1": exact["b1_s"], "b256": exact["b256_s"]}}
            if not args.skip_float32:
                ratios["float32_index_vs_float32_numpy"] = {"b1": exact32["b1_s"], "b256": exact32["b256_s"]}
            results["exact_vs_numpy"] = {
                name: {"b1": numpy_row["b1_ms"] / 1e3 / t["b1"], "b256": numpy_row["_b256_s"] / t["b256"]}
                for name, t in ratios.items()}

        if args.backend == "milvus":
            milvus_rows(results, rows, vectors, ids, fingerprint, work, queries, truth, exact, args)
        params = {k: v for k, v in {"nlist": args.nlist, "nprobe": args.nprobe, "encoding": args.encoding}.items()
                  if v is not None}
        ivf = build_and_open("ivf", vectors, ids, fingerprint, work, params)
        approx = time_search(ivf["index"].search, queries, args.single)
        rows.append(row(f"lamra ivf {json.dumps(ivf['index'].manifest['backend_params'])}", ivf, approx,
                        recall=recall(ivf["index"].search(queries, 10)[1], truth)))
        results["ivf_speedup_b1"] = exact["b1_s"] / approx["b1_s"]
        results["ivf_speedup_b256"] = exact["b256_s"] / approx["b256_s"]
        results["ivf_recall"] = rows[-1]["recall@10"]
        nprobe = ivf["index"].manifest["backend_params"]["nprobe"]
        sweep = sorted({max(1, round(nprobe * float(f))) for f in args.sweep.split(",") if f} - {nprobe})
        results["ivf_sweep"] = []
        for value in sweep:
            search = lambda q, k: ivf["index"].search(q, k, nprobe=value)  # noqa: E731
            timing = time_search(search, queries, args.single)
            found = recall(search(queries, 10)[1], truth)
            results["ivf_sweep"].append({"nprobe": value, "recall@10": found,
                                         "speedup_b1": exact["b1_s"] / timing["b1_s"],
                                         "speedup_b256": exact["b256_s"] / timing["b256_s"],
                                         "qps_b1": timing["qps_b1"], "qps_b256": timing["qps_b256"]})
        del ivf

        if args.hnsw:
            hnsw = build_and_open("hnsw", vectors, ids, fingerprint, work,
                                  {"encoding": args.encoding} if args.encoding else {})
            approx = time_search(hnsw["index"].search, queries, args.single)
            rows.append(row(f"lamra hnsw {json.dumps(hnsw['index'].manifest['backend_params'])}", hnsw, approx,
                            recall=recall(hnsw["index"].search(queries, 10)[1], truth)))
            results["hnsw_speedup_b1"] = exact["b1_s"] / approx["b1_s"]
            del hnsw
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    for r in rows:
        r.pop("_b256_s", None)
    results["rows"] = rows
    failures = [f"{r['method']}: recall@10 {r['recall@10']:.3f} against the float16 flat index"
                for r in rows if r["method"].startswith(("numpy", "lamra flat")) and
                r["recall@10"] < MIN_BASELINE_RECALL]
    results["baselines_checked"] = not failures
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if failures:
        print("FAILED: an exact baseline does not find the exact top 10, so its timing does not count:\n  "
              + "\n  ".join(failures), file=sys.stderr, flush=True)
        raise SystemExit(1)
    return results


def milvus_rows(results: dict, rows: list, vectors, ids, fingerprint, work: Path, queries, truth, exact: dict,
                args) -> None:
    """The Milvus backend beside FAISS: insert rate, batch-1 / batch-256 latency, recall@10 against
    the exact float16 top 10, and the ratios to the FAISS flat index of the same run."""
    options = {"index_type": args.milvus_index, **({"milvus_uri": args.milvus_uri} if args.milvus_uri else {})}
    built = build_and_open("milvus", vectors, ids, fingerprint, work, options, dtype="float32")
    index = built["index"]
    timing = time_search(index.search, queries, args.single)
    found = recall(index.search(queries, 10)[1], truth)
    rows.append(row(f"milvus {json.dumps(index.manifest['backend_params'])}", built, timing, recall=found))
    results["milvus_nprobe_sweep"] = []
    nlist = index.manifest["backend_params"].get("nlist")
    for nprobe in sorted({2 * index.manifest["backend_params"]["nprobe"], nlist} if nlist else ()):
        search = lambda q, k: index.search(q, k, nprobe=nprobe)  # noqa: E731
        results["milvus_nprobe_sweep"].append({"nprobe": nprobe, "recall@10": recall(search(queries, 10)[1], truth),
                                               "b1_ms": time_search(search, queries, args.single)["b1_s"] * 1e3})
        print(f"milvus nprobe {nprobe}: {results['milvus_nprobe_sweep'][-1]}", flush=True)
    results["milvus"] = {"uri": args.milvus_uri or "embedded (Milvus Lite 2.5)", "insert_rows_per_s":
                         len(ids) / built["build_s"], "recall@10": found, "b1_ms": timing["b1_s"] * 1e3,
                         "b256_s": timing["b256_s"], "b1_vs_faiss_flat": timing["b1_s"] / exact["b1_s"],
                         "b256_vs_faiss_flat": timing["b256_s"] / exact["b256_s"],
                         "params": index.manifest["backend_params"]}
    print(f"milvus: {results['milvus']['insert_rows_per_s']:.0f} rows/s inserted (with index build and load), "
          f"batch 1 {timing['b1_s'] * 1e3:.1f} ms ({results['milvus']['b1_vs_faiss_flat']:.1f}x FAISS flat), "
          f"batch 256 {timing['b256_s']:.2f} s ({results['milvus']['b256_vs_faiss_flat']:.1f}x), "
          f"recall@10 {found:.3f}", flush=True)
    if index.manifest["backend_params"]["index_type"] != "FLAT":  # the same rows, searched exactly
        client, name = index.client, index.collection
        t0 = time.perf_counter()
        client.release_collection(name)
        client.drop_index(name, "vector")
        flat_params = client.prepare_index_params()
        flat_params.add_index("vector", index_type="FLAT", metric_type="IP", params={})
        client.create_index(name, flat_params)
        client.load_collection(name)
        index.manifest["backend_params"] = {"index_type": "FLAT"}
        reindexed = {**built, "build_s": time.perf_counter() - t0}
        timing = time_search(index.search, queries, args.single)
        found = recall(index.search(queries, 10)[1], truth)
        rows.append(row("milvus re-indexed FLAT (build s: the re-index)", reindexed, timing, recall=found))
        results["milvus_flat"] = {"recall@10": found, "b1_ms": timing["b1_s"] * 1e3, "b256_s": timing["b256_s"],
                                  "b1_vs_faiss_flat": timing["b1_s"] / exact["b1_s"],
                                  "b256_vs_faiss_flat": timing["b256_s"] / exact["b256_s"]}
        print(f"milvus FLAT: {results['milvus_flat']}", flush=True)


def build_and_open(backend, vectors, ids, fingerprint, work: Path, params: dict, dtype: str = "float16") -> dict:
    from lamra.index import Index

    path = work / backend
    t0 = time.perf_counter()
    Index.from_vectors(vectors, ids, fingerprint, backend=backend, path=path, dtype=dtype, **params)
    build_s = time.perf_counter() - t0
    before = anon_memory()
    t0 = time.perf_counter()
    index = Index.open(path, verify=True).load()
    open_s = time.perf_counter() - t0
    disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    print(f"{backend} ({dtype}): built in {build_s:.1f} s, opened (checksums verified) and loaded in {open_s:.1f} s")
    return {"index": index, "build_s": build_s, "open_s": open_s, "disk_bytes": disk,
            "memory_bytes": anon_memory() - before}


def time_search(search, queries: np.ndarray, single: int) -> dict:
    search(queries[:2], 10)  # warm-up (thread pools, page cache)
    times = []
    for query in queries[:single]:
        t0 = time.perf_counter()
        search(query[None, :], 10)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    search(queries, 10)
    batch = time.perf_counter() - t0
    return {"b1_s": statistics.median(times), "b256_s": batch,
            "qps_b1": 1 / statistics.median(times), "qps_b256": len(queries) / batch}


def numpy_baseline(vectors: np.ndarray, queries: np.ndarray, single: int) -> tuple[dict, np.ndarray]:
    """Brute force as one would write it: a float32 matrix, q @ X.T, argpartition, sort.

    Returns its row and its top-10 positions for every query (to be checked against exact search)."""
    t0 = time.perf_counter()
    matrix = vectors.astype(np.float32)
    build_s = time.perf_counter() - t0

    def search(q, k):
        scores = q @ matrix.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        return np.take_along_axis(top, order, axis=1)

    timing = time_search(search, queries, single)
    found = search(queries, 10)
    result = row("numpy brute force (float32)", {"build_s": build_s, "disk_bytes": None,
                                                  "memory_bytes": matrix.nbytes}, timing, recall=float("nan"))
    result["_b256_s"] = timing["b256_s"]
    del matrix
    return result, found


def row(name: str, built: dict, timing: dict, *, recall: float) -> dict:
    return {"method": name, "build_s": built["build_s"], "disk_gib": None if built["disk_bytes"] is None
            else built["disk_bytes"] / 2**30, "memory_gib": built["memory_bytes"] / 2**30,
            "qps_b1": timing["qps_b1"], "qps_b256": timing["qps_b256"], "b1_ms": timing["b1_s"] * 1e3,
            "recall@10": recall}


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def bandwidth(size_bytes: int = 2 * 2**30, repeats: int = 5) -> list[float]:
    """Multi-threaded read bandwidth samples (GB/s): torch's parallel sum over a 2 GiB buffer."""
    import torch

    buffer = torch.ones(size_bytes // 4, dtype=torch.float32)
    buffer.sum()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        buffer.sum()
        samples.append(size_bytes / (time.perf_counter() - t0) / 1e9)
    return samples


def anon_memory() -> int:
    """Anonymous resident memory of this process (the page cache of memory-mapped files excluded)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import faiss

    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores, {memory:.0f} GiB RAM, numpy {np.__version__}, "
            f"faiss {faiss.__version__}, Python {platform.python_version()}")


def print_table(results: dict) -> None:
    print()
    print(f"| method | build s | disk GiB | memory GiB | q/s batch 1 | ms batch 1 | q/s batch 256 | recall@10 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        disk = "-" if r["disk_gib"] is None else f"{r['disk_gib']:.2f}"
        print(f"| {r['method']} | {r['build_s']:.1f} | {disk} | {r['memory_gib']:.2f} | {r['qps_b1']:.1f} | "
              f"{r['b1_ms']:.1f} | {r['qps_b256']:.1f} | {r['recall@10']:.3f} |")
    print()
    print(f"exact batch 1: {results['exact_b1_over_bound']:.2f}x the bandwidth bound of a full scan "
          f"({results['bound_b1_s'] * 1e3:.1f} ms at the median {results['bandwidth_gbs']:.1f} GB/s of "
          f"{len(results['bandwidth_samples_gbs'])} samples; {results['exact_b1_over_best_bound']:.2f}x at the best "
          f"sample, {results['bandwidth_best_gbs']:.1f} GB/s); the scan read {results['exact_scan_gbs']:.1f} GB/s; "
          "target <= 1.5x")
    for name, label in (("float16_index_vs_float32_numpy", "float16 index vs float32 numpy (half the bytes)"),
                        ("float32_index_vs_float32_numpy", "float32 index vs float32 numpy (same dtype)")):
        ratio = results.get("exact_vs_numpy", {}).get(name)
        if ratio:
            print(f"exact vs numpy, {label}: {ratio['b1']:.2f}x faster at batch 1, {ratio['b256']:.2f}x at batch 256")
    if "ivf_speedup_b1" in results:
        print(f"ivf vs exact: {results['ivf_speedup_b1']:.1f}x faster at batch 1, {results['ivf_speedup_b256']:.1f}x "
              f"at batch 256, recall@10 {results['ivf_recall']:.3f} (target >= 20x at >= 0.95)")
    if results.get("ivf_sweep"):
        print()
        print("| ivf nprobe | recall@10 | q/s batch 1 | speed-up vs exact, batch 1 | q/s batch 256 | speed-up, batch 256 |")
        print("|---|---|---|---|---|---|")
        for r in results["ivf_sweep"]:
            print(f"| {r['nprobe']} | {r['recall@10']:.3f} | {r['qps_b1']:.0f} | {r['speedup_b1']:.1f}x | "
                  f"{r['qps_b256']:.0f} | {r['speedup_b256']:.1f}x |")
    if "hnsw_speedup_b1" in results:
        print(f"hnsw vs exact: {results['hnsw_speedup_b1']:.1f}x faster at batch 1")


if __name__ == "__main__":
    main()
