"""Milvus as the vector store: float vectors (IP) or binary codes (HAMMING) with metadata.

One collection per index. Each entity is ``id`` (the embedded index's stable id, primary
key), ``vector`` (FLOAT_VECTOR, unit rows so inner product is cosine, or BINARY_VECTOR,
codes packed 8 bits a byte), ``path``, ``sha256`` and ``tags`` (stored as ``,a,b,`` so one
tag is matched exactly with ``like``). The collection's description records what made
the vectors (kind, dimension, transform digest), and a search with another model is
refused.

URI: ``http://host:19530`` (a Milvus server: every index type) or a local milvus-lite
file ``PATH.db`` (FLAT, IVF_FLAT and BIN_FLAT only). A search asks for more than ``k``
until the ``k``-th score is not tied with the next one, then orders hits by (score, id):
with FLAT / BIN_FLAT the answer is exact and the same as faiss's exact search.

The embedded index stays the source of truth (rows, features): :meth:`MilvusStore.sync`
brings a collection in step with it (upserts new or changed rows, deletes removed ones).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cbir.codes.base import CodeKind, Ranked
from cbir.codes.registry import code_kind
from cbir.errors import CbirError

PREFIX = "milvus:"
DEFAULT_COLLECTION = "cbir"
#: Milvus refuses a larger top-k.
MAX_TOPK = 16384
INSERT_CHUNK = 2048
PATH_MAX_LEN = 65535
TAGS_MAX_LEN = 8192
LITE_INDEXES = {"FLAT", "IVF_FLAT", "BIN_FLAT"}


@dataclass
class MilvusIndex:
    """A Milvus index type with its build and search parameters."""

    index_type: str
    metric: str
    params: dict[str, Any] = field(default_factory=dict)
    search_params: dict[str, Any] = field(default_factory=dict)


def milvus_index(index_type: str | None, kind: str) -> MilvusIndex:
    """The Milvus index for a faiss-style ``--index-type`` (or a Milvus index name).

    Float: ``Flat`` -> FLAT, ``HNSW32`` -> HNSW (M=32, efSearch 64), ``IVF1024,Flat`` ->
    IVF_FLAT (nprobe min(nlist, 32)), ``IVF1024,PQ32`` -> IVF_PQ. Binary: ``BFlat`` ->
    BIN_FLAT, ``BIVF1024`` -> BIN_IVF_FLAT. Both use the defaults faiss gets here.
    """
    t = (index_type or "Flat").strip()
    vector = code_kind(kind).milvus_vector
    if vector is None:
        raise CbirError(f"kind {kind!r}: Milvus stores float vectors or binary codes")
    return _MILVUS_INDEXES[vector](t, t.upper())


def _binary_milvus_index(t: str, u: str) -> MilvusIndex:
    if u in ("FLAT", "BFLAT", "BINARYFLAT", "BIN_FLAT"):
        return MilvusIndex("BIN_FLAT", "HAMMING")
    m = re.fullmatch(r"(?:BIVF|BIN_IVF_FLAT|BINARYIVF)(\d+)?", u)
    if m:
        nlist = int(m.group(1) or 1024)
        return MilvusIndex("BIN_IVF_FLAT", "HAMMING", {"nlist": nlist}, {"nprobe": min(nlist, 32)})
    raise CbirError(
        f"--index-type {t!r}: for binary codes Milvus has BFlat (BIN_FLAT) or BIVF<nlist>"
    )


def _float_milvus_index(t: str, u: str) -> MilvusIndex:
    if u in ("FLAT", "IDMAP2,FLAT", "IDMAP,FLAT"):
        return MilvusIndex("FLAT", "IP")
    m = re.fullmatch(r"HNSW(\d*)(?:,FLAT)?", u)
    if m:
        return MilvusIndex(
            "HNSW", "IP", {"M": int(m.group(1) or 32), "efConstruction": 200}, {"ef": 64}
        )
    m = re.fullmatch(r"IVF_FLAT|IVF(\d+),FLAT", u)
    if m:
        nlist = int(m.group(1) or 1024) if m.groups() else 1024
        return MilvusIndex("IVF_FLAT", "IP", {"nlist": nlist}, {"nprobe": min(nlist, 32)})
    m = re.fullmatch(r"IVF(\d+),PQ(\d+)(?:X8)?", u)
    if m:
        nlist, pq = int(m.group(1)), int(m.group(2))
        return MilvusIndex(
            "IVF_PQ", "IP", {"nlist": nlist, "m": pq, "nbits": 8}, {"nprobe": min(nlist, 32)}
        )
    m = re.fullmatch(r"IVF(\d+),SQ8", u)
    if m:
        nlist = int(m.group(1))
        return MilvusIndex("IVF_SQ8", "IP", {"nlist": nlist}, {"nprobe": min(nlist, 32)})
    raise CbirError(
        f"--index-type {t!r} has no Milvus equivalent here; use Flat, HNSW<M>, IVF<n>,Flat,"
        " IVF<n>,PQ<m> or IVF<n>,SQ8"
    )


_MILVUS_INDEXES = {"BINARY_VECTOR": _binary_milvus_index, "FLOAT_VECTOR": _float_milvus_index}


def parse_store(spec: str) -> tuple[str, str]:
    """``milvus:URI[#collection]`` -> (URI, collection)."""
    if not spec.startswith(PREFIX):
        raise CbirError(
            f"--store {spec!r}: expected milvus:URI (http://host:19530 or a milvus-lite FILE.db)"
        )
    rest = spec[len(PREFIX) :]
    uri, _, coll = rest.partition("#")
    if not uri:
        raise CbirError("--store milvus: needs a URI: milvus:http://host:19530 or milvus:PATH.db")
    coll = coll or DEFAULT_COLLECTION
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", coll):
        raise CbirError(
            f"--store ...#{coll}: a collection name is letters, digits and _ (not first)"
        )
    return uri, coll


def _is_lite(uri: str) -> bool:
    return not re.match(r"^[a-z]+://", uri)


def _str_literal(s: str) -> str:
    """``s`` as a Milvus expression string literal."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _like_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def tags_field(tags: str | Iterable[str]) -> str:
    """Stored form of tags: ``,a,b,`` (empty string: no tags)."""
    items = [t for t in (tags.split(",") if isinstance(tags, str) else tags) if t]
    return "," + ",".join(items) + "," if items else ""


def filter_expr(
    tags: Sequence[str] = (), path_prefix: str | None = None, ids: Sequence[int] | None = None
) -> str:
    """A Milvus boolean expression: every tag in ``tags``, paths under ``path_prefix``, ``ids``."""
    parts = [
        f"tags like {_str_literal('%,' + _like_escape(t.strip().lower()) + ',%')}"
        for t in tags
        if t.strip()
    ]
    if path_prefix:
        parts.append(f"path like {_str_literal(_like_escape(path_prefix) + '%')}")
    if ids is not None:
        parts.append(f"id in [{','.join(str(int(i)) for i in ids)}]")
    return " and ".join(parts)


@dataclass
class MilvusHit:
    """One result: ``score`` is the inner product (float) or ``1 - hamming / bits``."""

    id: int
    score: float
    distance: float | None
    path: str
    sha256: str
    tags: str


class MilvusStore:
    """A Milvus collection of vectors or binary codes with metadata.

    Args:
        uri: ``http://host:19530`` or a milvus-lite ``FILE.db``.
        collection: collection name.
        kind: "float" or "binary" (needed to create the collection).
        dim: vector dimension, or bits for binary codes (needed to create it).
        index_type: faiss-style (``Flat``, ``HNSW32``, ``IVF1024,Flat``, ``BFlat``) or Milvus.
        model: what made the vectors (e.g. the transform digest); a collection made by
            another model is refused.
        token: a Milvus server's token ("user:password"), if it needs one.
    """

    def __init__(
        self,
        uri: str,
        collection: str = DEFAULT_COLLECTION,
        *,
        kind: str | None = None,
        dim: int | None = None,
        index_type: str | None = None,
        model: str | None = None,
        token: str | None = None,
    ) -> None:
        try:
            from pymilvus import MilvusClient
        except ImportError as e:
            raise CbirError(
                f"Milvus needs the milvus extra: pip install 'cbir[milvus]' ({e})"
            ) from None
        self.uri, self.collection = uri, collection
        if _is_lite(uri):
            os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
        try:
            self.client = MilvusClient(uri, token=token or os.environ.get("MILVUS_TOKEN", ""))
        except Exception as e:
            raise CbirError(f"cannot connect to Milvus at {uri} ({_first_line(e)})") from None
        if self.client.has_collection(collection):
            self._load_description(kind, dim, model)
        else:
            if kind is None or dim is None:
                self.client.close()
                raise CbirError(
                    f"{uri}: no collection {collection!r}; index into it first (--store milvus:{uri})"
                )
            self._create(kind, dim, index_type, model)
        self.client.load_collection(collection)

    # ------------------------------------------------------------- schema
    def _create(self, kind: str, dim: int, index_type: str | None, model: str | None) -> None:
        from pymilvus import DataType, MilvusClient

        code = code_kind(kind)
        if code.milvus_vector is None:
            raise CbirError(f"kind {kind!r}: Milvus stores float vectors or binary codes")
        code.check_rows(code.empty(dim), dim)  # e.g. bits not a multiple of 8
        self.index = milvus_index(index_type, kind)
        if _is_lite(self.uri) and self.index.index_type not in LITE_INDEXES:
            self.client.close()
            raise CbirError(
                f"milvus-lite ({self.uri}) has no {self.index.index_type} index (it has FLAT, IVF_FLAT,"
                " BIN_FLAT); use a Milvus server (milvus:http://host:19530) or --index-type Flat"
            )
        self.kind, self.dim, self.model = kind, int(dim), model
        desc = {
            "cbir": 1,
            "kind": kind,
            "dim": int(dim),
            "model": model,
            "index": self.index.__dict__,
        }
        schema = MilvusClient.create_schema(
            auto_id=False, enable_dynamic_field=False, description=json.dumps(desc)
        )
        schema.add_field("id", DataType.INT64, is_primary=True)
        vtype = getattr(DataType, str(code.milvus_vector))
        schema.add_field("vector", vtype, dim=int(dim))
        schema.add_field("path", DataType.VARCHAR, max_length=PATH_MAX_LEN)
        schema.add_field("sha256", DataType.VARCHAR, max_length=64)
        schema.add_field("tags", DataType.VARCHAR, max_length=TAGS_MAX_LEN)
        params = self.client.prepare_index_params()
        params.add_index(
            field_name="vector",
            index_type=self.index.index_type,
            metric_type=self.index.metric,
            params=self.index.params,
        )
        try:
            self.client.create_collection(self.collection, schema=schema, index_params=params)
        except Exception as e:
            raise CbirError(
                f"{self.uri}: cannot create collection {self.collection!r} ({_first_line(e)})"
            ) from None

    def _load_description(self, kind: str | None, dim: int | None, model: str | None) -> None:
        info = self.client.describe_collection(self.collection)
        try:
            desc = json.loads(info.get("description") or "")
            assert desc.get("cbir") == 1
        except (ValueError, AssertionError, AttributeError):
            raise CbirError(
                f"{self.uri}: collection {self.collection!r} was not made by cbir; use another"
            ) from None
        self.kind, self.dim, self.model = desc["kind"], int(desc["dim"]), desc.get("model")
        self.index = MilvusIndex(**desc["index"])
        if (kind is not None and kind != self.kind) or (dim is not None and int(dim) != self.dim):
            raise CbirError(
                f"{self.uri}#{self.collection} holds {self.kind} vectors of {self.dim}, not {kind} of {dim};"
                " use another collection (milvus:URI#NAME)"
            )
        if model is not None and self.model is not None and model != self.model:
            raise CbirError(
                f"{self.uri}#{self.collection} was filled by another model; sync it again into a new"
                " collection (milvus:URI#NAME)"
            )

    # ------------------------------------------------------------ writing
    @property
    def code(self) -> CodeKind:
        return code_kind(self.kind)

    def _vector_rows(self, vectors: np.ndarray) -> list[Any]:
        v = self.code.check_rows(vectors, self.dim)
        return (
            [row.tobytes() for row in v] if self.code.milvus_vector == "BINARY_VECTOR" else list(v)
        )

    def add(
        self,
        ids: Sequence[int],
        vectors: np.ndarray,
        paths: Sequence[str],
        sha256: Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
    ) -> int:
        """Insert or replace (upsert by id) entities; returns how many were written."""
        n = len(ids)
        if not (len(vectors) == len(paths) == n):
            raise ValueError("add: one vector and one path per id")
        rows = self._vector_rows(vectors)
        sha = list(sha256) if sha256 is not None else [""] * n
        tg = [tags_field(t) for t in tags] if tags is not None else [""] * n
        for s in range(0, n, INSERT_CHUNK):
            chunk = [
                {
                    "id": int(ids[i]),
                    "vector": rows[i],
                    "path": str(paths[i]),
                    "sha256": sha[i],
                    "tags": tg[i],
                }
                for i in range(s, min(n, s + INSERT_CHUNK))
            ]
            self.client.upsert(self.collection, chunk)
        return n

    def delete(self, ids: Sequence[int]) -> int:
        """Delete entities by id; returns how many ids were asked for."""
        ids = [int(i) for i in ids]
        for s in range(0, len(ids), INSERT_CHUNK):
            self.client.delete(self.collection, ids=ids[s : s + INSERT_CHUNK])
        return len(ids)

    # ------------------------------------------------------------ reading
    def count(self) -> int:
        r = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(r[0]["count(*)"])

    def entities(
        self, fields: Sequence[str] = ("id", "sha256", "tags", "path"), batch: int = 4096
    ) -> Iterable[dict[str, Any]]:
        """Every entity's ``fields`` (streamed)."""
        it = self.client.query_iterator(
            self.collection, batch_size=batch, output_fields=list(fields), filter=""
        )
        try:
            while True:
                rows = it.next()
                if not rows:
                    return
                yield from rows
        finally:
            it.close()

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        tags: Sequence[str] = (),
        path_prefix: str | None = None,
        expr: str | None = None,
        search_params: dict[str, Any] | None = None,
    ) -> list[list[MilvusHit]]:
        """Top-``k`` per query row, best first, ties by ascending id.

        Filters: every tag in ``tags``, paths under ``path_prefix``, and ``expr`` (a Milvus
        boolean expression, passed as is: a malformed one can hang milvus-lite).
        """
        if k < 1:
            raise CbirError("k must be at least 1")
        if k > MAX_TOPK:
            raise CbirError(f"k={k}: Milvus returns at most {MAX_TOPK} results")
        flt = " and ".join(f"({e})" for e in (filter_expr(tags, path_prefix), expr) if e)
        data = self._vector_rows(queries)
        params = {
            "metric_type": self.index.metric,
            "params": {**self.index.search_params, **(search_params or {})},
        }
        ef = params["params"].get("ef", 64)
        lower = self.code.lower_is_better
        out: list[list[MilvusHit]] = [[] for _ in data]
        todo = list(range(len(data)))
        limit = min(MAX_TOPK, k + 1)
        while todo:
            if self.index.index_type == "HNSW":
                params["params"]["ef"] = max(ef, limit)
            res = self._search(data, todo, limit, flt, params)
            again = []
            for qi, hits in zip(todo, res, strict=True):
                key = [(h["distance"] if lower else -h["distance"], h["id"]) for h in hits]
                if len(hits) == limit and limit < MAX_TOPK and key[k - 1][0] == key[-1][0]:
                    again.append(qi)  # the k-th score ties past what came back: ask for more
                    continue
                order = sorted(range(len(hits)), key=key.__getitem__)[:k]
                out[qi] = [self._hit(hits[j]) for j in order]
            todo, limit = again, min(MAX_TOPK, limit * 4)
        return out

    def _search(
        self, data: list[Any], rows: list[int], limit: int, flt: str, params: dict[str, Any]
    ) -> list[Any]:
        try:
            return self.client.search(
                self.collection,
                data=[data[i] for i in rows],
                limit=limit,
                filter=flt,
                output_fields=["path", "sha256", "tags"],
                search_params=params,
                anns_field="vector",
            )
        except Exception as e:
            raise CbirError(
                f"Milvus search on {self.uri}#{self.collection} failed ({_first_line(e)})"
            ) from None

    def _hit(self, h: dict[str, Any]) -> MilvusHit:
        e = h.get("entity", {})
        score, dist = self.code.to_scores(np.float64(h["distance"]), self.dim)
        return MilvusHit(
            int(h["id"]),
            float(score),
            None if dist is None else float(dist),
            e.get("path", ""),
            e.get("sha256", ""),
            e.get("tags", "").strip(","),
        )

    # --------------------------------------------------------------- sync
    def sync(self, store: Any, chunk: int = INSERT_CHUNK) -> dict[str, int]:
        """Make the collection hold exactly the live rows of ``store`` (an IndexStore).

        Rows missing or differing (sha256, path or tags) are upserted with their current
        vectors; ids no longer in the store are deleted. Returns the counts.
        """
        from cbir.index.vector_index import current_transform

        transform = current_transform(store)
        have = {int(e["id"]): (e["sha256"], e["path"], e["tags"]) for e in self.entities()}
        want: list[int] = []
        live: set[int] = set()
        meta: dict[int, Any] = {}
        for r in store.conn.execute("SELECT id, sha256, path, tags FROM images ORDER BY id"):
            id_ = int(r[0])
            live.add(id_)
            if have.get(id_) != (r[1], r[2], tags_field(r[3])):
                want.append(id_)
                meta[id_] = r
        for s in range(0, len(want), chunk):
            ids = want[s : s + chunk]
            vecs = transform(store.features(ids))
            self.add(
                ids,
                vecs,
                [meta[i][2] for i in ids],
                [meta[i][1] for i in ids],
                [meta[i][3] for i in ids],
            )
        gone = sorted(set(have) - live)
        self.delete(gone)
        self.client.flush(self.collection)
        return {"upserted": len(want), "deleted": len(gone), "total": len(live)}

    def drop(self) -> None:
        """Delete the whole collection."""
        self.client.drop_collection(self.collection)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else type(e).__name__


def model_digest(store: Any) -> str:
    """What identifies the vectors of an IndexStore: backbone weights + transform spec."""
    from cbir.heads.transform import spec_digest
    from cbir.index.vector_index import current_transform

    fp = store.config["backbone"]
    return f"{fp['backbone']}-{fp.get('weights') or fp.get('sha256', '')[:12]}-{fp['preprocess']['size']}-{spec_digest(current_transform(store).spec())}"


def open_for_store(spec: str, store: Any, create: bool = True) -> MilvusStore:
    """The Milvus collection named by ``milvus:URI[#collection]`` for an IndexStore."""
    from cbir.index.vector_index import current_transform

    uri, coll = parse_store(spec)
    t = current_transform(store)
    kw: dict[str, Any] = {"model": model_digest(store)}
    if create:
        kw.update(kind=t.kind, dim=t.dim, index_type=store.config.get("index_type"))
    return MilvusStore(uri, coll, **kw)


class MilvusBackend:
    """A :class:`~cbir.index.backends.base.VectorBackend` whose vectors live in Milvus.

    The index directory gives the model (backbone, transform) and the rows; the collection
    named by ``spec`` (``milvus:URI[#collection]``) answers the searches.

    Args:
        spec: ``milvus:URI[#collection]``.
        store: the embedded index the collection was synced from.
        tags: only hits carrying every one of these tags.
        path_prefix: only hits whose path starts with this.
    """

    local = False
    index = None

    def __init__(
        self,
        spec: str,
        store: Any,
        tags: Sequence[str] = (),
        path_prefix: str | None = None,
    ) -> None:
        parse_store(spec)  # a bad spec fails before connecting
        self.spec, self.tags, self.path_prefix = spec, list(tags), path_prefix
        self.milvus = open_for_store(spec, store, create=False)
        self.transform: Any = None
        self.gen = -1
        self._n = 0

    def refresh(self, store: Any) -> None:
        """The transform only: Milvus holds the vectors (kept in step by ``sync``)."""
        from cbir.index.vector_index import current_transform

        gen = store.generation
        if gen != self.gen:
            self.transform, self._n, self.gen = current_transform(store), store.count(), gen

    @property
    def ntotal(self) -> int:
        return min(self._n, MAX_TOPK)

    def search(self, q: Any, k: int) -> Ranked:
        res = self.milvus.search(q, k, tags=self.tags, path_prefix=self.path_prefix)
        nq = len(res)
        scores = np.full((nq, k), -np.inf)
        ids = np.full((nq, k), -1, np.int64)
        dist = np.zeros((nq, k)) if self.milvus.code.lower_is_better else None
        for r, hits in enumerate(res):
            for j, h in enumerate(hits[:k]):
                scores[r, j], ids[r, j] = h.score, h.id
                if dist is not None and h.distance is not None:
                    dist[r, j] = h.distance
        return scores, ids, dist

    def search_among(self, q: Any, k: int, allowed: np.ndarray) -> Ranked | None:
        return None

    def close(self) -> None:
        self.milvus.close()
