"""The Milvus side of a Milvus index: the client, the collection, its rows and parameters.

One client (``pymilvus.MilvusClient``) for every kind of Milvus: an embedded database (a file
path: Milvus Lite, the real C++ engine in a subprocess), a standalone server or a cluster
(``http://host:19530`` with a token). The collection: primary key ``id`` (the item id),
``vector`` (float32; float16 on a server), and the scalar fields a search can filter on
(``--where``): ``modality``, ``dataset_id`` and ``task_id`` (M-BEIR: the did's prefix and the
pool file's task number, -1 otherwise), ``source`` (the collection file) and ``segment`` (which
build / add wrote the row). Its description holds the fingerprint and the index's random
``index_uid``, so that an index never takes another's collection.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from . import files
from .checks import FINGERPRINT_KEYS

EMBEDDED_DB = "milvus.db"
LOCAL_INDEX_TYPES = ("FLAT", "IVF_FLAT", "AUTOINDEX")  # what Milvus Lite builds; servers build more
INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "AUTOINDEX", "DISKANN", "SCANN")
MAX_TOPK = 16384  # Milvus's limit on k
ID_MAX_LENGTH = 1024
SEARCH_PARAMS = {"IVF_FLAT": ("nprobe",), "IVF_SQ8": ("nprobe",), "IVF_PQ": ("nprobe",), "SCANN": ("nprobe",),
                  "HNSW": ("ef_search",)}


# -- where the database is ----------------------------------------------------------------------


def is_embedded(uri: str) -> bool:
    """A file path (Milvus Lite) rather than a server address."""
    return not re.match(r"^(https?|tcp|grpc|unix)://", str(uri)) and not str(uri).startswith("unix:")


def client_uri(folder: Path, recorded: str) -> str:
    """The URI to connect to: an embedded database's path is recorded relative to the folder."""
    if is_embedded(recorded) and not Path(recorded).is_absolute():
        return str((Path(folder) / recorded).resolve())
    return recorded


_CLIENTS: dict[tuple[str, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def connect(uri: str, token: str | None = None):
    """A (cached, per process) ``MilvusClient``; the token defaults to ``$MILVUS_TOKEN``."""
    token = token if token is not None else os.environ.get("MILVUS_TOKEN", "")
    key = (str(uri), token)
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = _new_client(str(uri), token)
        return _CLIENTS[key]


def _new_client(uri: str, token: str):
    with warnings.catch_warnings():  # milvus-lite 2.5 imports pkg_resources, which warns
        warnings.simplefilter("ignore")
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise InputError("the milvus backend needs pymilvus and milvus-lite: pip install 'lamra[milvus]'") from None
        embedded = is_embedded(uri)
        if embedded:
            name = Path(uri).name
            if len(name) > 36 or not re.match(r"^[A-Za-z0-9.\-_]+$", name):
                raise InputError("an embedded Milvus database file name must be at most 36 letters, digits, "
                                 "'.', '-' or '_'", file=uri)
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            client = MilvusClient(uri=uri, token=token)
            client.lamra_embedded = embedded  # (upsert sizes its requests by it)
            return client
        except Exception as exc:  # pymilvus raises several kinds; all mean "no database there"
            hint = (" (is another process - lamra serve, a search - using this embedded database? Milvus Lite "
                    "opens a file in one process at a time; stop it, or serve the index from a Milvus server)"
                    if embedded else " (is the server running and the token right? --milvus-token / MILVUS_TOKEN)")
            raise InputError(f"cannot open the Milvus database {uri}: {one_line(exc)}{hint}") from None


def release(uri: str) -> None:
    """Close this process's clients of ``uri`` (and stop its embedded engine): before the
    database file is deleted, so that a new one at the same path gets a fresh engine."""
    with _CLIENTS_LOCK:
        for key in [key for key in _CLIENTS if key[0] == str(uri)]:
            _CLIENTS.pop(key).close()
    if is_embedded(uri):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(str(uri))


def one_line(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return " ".join(str(message).split())[:300]


# -- parameters ----------------------------------------------------------------------------------


def resolve_params(count: int, dtype: str, given: dict[str, Any], *, embedded: bool) -> dict[str, Any]:
    """Index type and parameters (recorded in the manifest): FLAT (exact) in an embedded database,
    HNSW on a server (M 32, efConstruction 200, ef 128); IVF_FLAT: nlist ~2 sqrt(N), nprobe.

    Why not IVF_FLAT in Milvus Lite: measured here (Milvus Lite 2.5.1, 100k x 1536 clustered
    vectors), its IVF_FLAT search found recall@10 0.733 at every nprobe from 32 to nlist: the
    search-time nprobe was not honoured at that size (the rows stay in growing segments, searched
    through Milvus's interim index); FLAT found the exact top 10 at FAISS flat's batch-1 speed.
    """
    given = {k: v for k, v in given.items() if v is not None}
    if dtype not in ("float16", "float32"):
        raise ValueError(f"unknown dtype {dtype!r}; choose float16 or float32")
    index_type = str(given.pop("index_type", None) or ("FLAT" if embedded else "HNSW")).upper()
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown Milvus index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
    if embedded and index_type not in LOCAL_INDEX_TYPES:
        raise ValueError(f"an embedded Milvus database (Milvus Lite) builds only {', '.join(LOCAL_INDEX_TYPES)}, "
                         f"not {index_type}: use one of those, or a Milvus server (--milvus-uri http://host:19530)")
    if embedded and dtype == "float16" and index_type != "FLAT":
        raise ValueError("an embedded Milvus database indexes float16 vectors only with FLAT: use "
                         "--vector-dtype float32 (the milvus default), or a Milvus server")
    params: dict[str, Any] = {"index_type": index_type}
    if index_type.startswith("IVF") or index_type == "SCANN":
        nlist = max(1, min(round(2 * math.sqrt(max(count, 1))), max(count // 40, 1)))
        params.update(nlist=nlist, nprobe=milvus_nprobe(nlist))
    elif index_type == "HNSW":
        params.update(M=32, ef_construction=200, ef_search=128)
    unknown = set(given) - set(params)
    if unknown:
        raise ValueError(f"unknown {index_type} parameter(s) {sorted(unknown)}; known: "
                         f"{sorted(set(params) - {'index_type'}) or 'none'}")
    params.update(given)
    if "nlist" in given and "nprobe" not in given:
        params["nprobe"] = milvus_nprobe(int(params["nlist"]))
    return params


def milvus_nprobe(nlist: int) -> int:
    """Lists visited per query: 4% of them, at least 32 (twice FAISS's default: Milvus keeps one
    IVF per segment, each trained on fewer rows)."""
    return min(nlist, max(32, nlist // 25))


def _index_params(client, params: dict):
    index_params = client.prepare_index_params()
    index_type = params["index_type"]
    build = {}
    if "nlist" in params:
        build["nlist"] = int(params["nlist"])
    if index_type == "HNSW":
        build.update(M=int(params["M"]), efConstruction=int(params["ef_construction"]))
    index_params.add_index("vector", index_type=index_type, metric_type="IP", params=build)
    return index_params


# -- the collection ----------------------------------------------------------------------------


def collection_name(folder: Path, uid: str) -> str:
    """``lamra_<folder>_<8 hex of the index uid>``: readable, and never another index's."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(folder).resolve().name)[:48].strip("_") or "index"
    return f"lamra_{stem}_{uid[:8]}"


def describe(manifest_like: dict, uid: str, folder: Path) -> str:
    """The collection's description: lamra's fingerprint of the vectors and the owner index."""
    record = {"lamra": files.INDEX_FORMAT, "index_uid": uid, "folder": str(Path(folder).resolve()),
              **{k: manifest_like.get(k) for k in FINGERPRINT_KEYS}, "dtype": manifest_like.get("dtype")}
    return json.dumps(record, ensure_ascii=False, sort_keys=True)


def owner_of(client, name: str) -> dict | None:
    """The lamra record in a collection's description (None: not a lamra collection)."""
    try:
        record = json.loads(client.describe_collection(name).get("description") or "")
    except (json.JSONDecodeError, TypeError):
        return None
    return record if isinstance(record, dict) and record.get("lamra") == files.INDEX_FORMAT else None


def create_or_check(client, name: str, description: str, *, dim: int, dtype: str, uid: str, uri: str) -> None:
    """Create the collection, or accept it if it is this index's own (a resumed build)."""
    if client.has_collection(name):
        owner = owner_of(client, name)
        if owner is None:
            raise InputError(f"Milvus collection {name!r} at {uri} exists and is not a lamra index: choose "
                             "another --milvus-collection", field="milvus_collection")
        if owner.get("index_uid") != uid:
            raise InputError(f"Milvus collection {name!r} at {uri} belongs to another lamra index (folder "
                             f"{owner.get('folder')}, model {owner.get('model')!r}): two indexes never share a "
                             "collection; choose another --milvus-collection", field="milvus_collection")
        return
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=description)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
    schema.add_field("vector", DataType.FLOAT16_VECTOR if dtype == "float16" else DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("modality", DataType.VARCHAR, max_length=64)
    schema.add_field("dataset_id", DataType.INT64)
    schema.add_field("task_id", DataType.INT64)
    schema.add_field("source", DataType.VARCHAR, max_length=1024)
    schema.add_field("segment", DataType.INT64)
    client.create_collection(name, schema=schema, consistency_level="Strong")


def rows(ids: list[str], vectors: np.ndarray, metadata: list[dict], *, segment: int, dtype: str,
         source: str | None) -> list[dict]:
    """The collection rows of some items (their scalar fields read from their metadata)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float16 if dtype == "float16" else np.float32)
    out = []
    for item_id, vector, meta in zip(ids, vectors, metadata):
        if len(item_id.encode()) > ID_MAX_LENGTH:
            raise InputError(f"id longer than {ID_MAX_LENGTH} bytes (a Milvus primary key)", item=item_id, field="id")
        src = str(meta.get("source") or source or "")
        out.append({"id": item_id, "vector": vector, "modality": modality_of(meta), "dataset_id": dataset_of(item_id),
                    "task_id": task_of(meta, src), "source": _last_bytes(src, 1024), "segment": int(segment)})
    return out


def _last_bytes(text: str, limit: int) -> str:
    """The end of ``text`` within ``limit`` UTF-8 bytes (a VARCHAR's max_length counts bytes)."""
    return text.encode()[-limit:].decode("utf-8", errors="ignore")


def modality_of(meta: dict) -> str:
    """M-BEIR's ``modality`` when the item has one, else text / image / image,text / video."""
    if isinstance(meta.get("modality"), str) and meta["modality"]:
        return _last_bytes(meta["modality"][:64], 64)
    if meta.get("video"):
        return "video"
    has_image = bool(meta.get("image") or meta.get("images"))
    has_text = bool(meta.get("text"))
    return "image,text" if has_image and has_text else ("image" if has_image else "text")


def dataset_of(item_id: str) -> int:
    """An M-BEIR did's dataset number (``9:123`` -> 9); -1 for other ids."""
    match = re.match(r"^(\d+):\d+$", item_id)
    return int(match.group(1)) if match else -1


def task_of(meta: dict, source: str) -> int:
    """The item's M-BEIR task number (its ``task_id``, or the pool file's ``_taskN_``); -1 if none."""
    if isinstance(meta.get("task_id"), int):
        return int(meta["task_id"])
    match = re.search(r"_task(\d+)_", Path(source).name) if source else None
    return int(match.group(1)) if match else -1


def upsert(client, name: str, records: list[dict]) -> None:
    """Upsert in requests of ~512 KB to an embedded database and ~8 MB to a server (gRPC's limit
    is 64 MB). Milvus Lite's time per request grows faster than its size (measured here, 1536-d:
    ~1,300 rows/s in 128-row requests, 24 rows/s in 2,000-row ones)."""
    if not records:
        return
    size = (512 << 10) if getattr(client, "lamra_embedded", False) else (8 << 20)
    per_request = max(1, size // max(1, records[0]["vector"].nbytes + 256))
    for start in range(0, len(records), per_request):
        client.upsert(name, records[start:start + per_request])


def count_rows(client, name: str) -> int:
    return int(client.query(name, output_fields=["count(*)"])[0]["count(*)"])


def stored_ids(client, name: str, expression: str = "") -> list[str]:
    """Every id in the collection (or matching ``expression``), by a query iterator."""
    iterator = client.query_iterator(name, batch_size=16384, filter=expression, output_fields=["id"])
    out: list[str] = []
    try:
        while True:
            batch = iterator.next()
            if not batch:
                return out
            out.extend(str(row["id"]) for row in batch)
    finally:
        iterator.close()


def finish_collection(client, name: str, params: dict) -> None:
    """Flush, index (if not done by an earlier run) and load the collection for searching."""
    client.flush(name)
    if "vector" not in client.list_indexes(name):
        client.create_index(name, _index_params(client, params))
    client.load_collection(name)
