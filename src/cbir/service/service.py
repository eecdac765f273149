"""The Service object behind the routes: one searcher over one index, embedding of
uploads, thumbnails, feedback, and writes (add, delete) through :mod:`cbir.ops`.

Reads (search, images, thumbnails) share one :class:`Searcher`, which picks up each new
commit; a search whose index generation changed while it ran is retried, so a response
reflects the index before an add/delete or after it, never half. Writes are serialised in
this process (the API key they need is checked by :mod:`cbir.service.guard`).

What the service gives out is bounded: uploads are decoded a few at a time and straight to
a small image; an image file is served only while it is the file that was indexed
(:meth:`Service.open_image`); paths are given relative to the indexed folder
(:meth:`Service.public_path`); feedback rows per query and saved query bytes have caps.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
from fastapi import UploadFile
from PIL import Image

from cbir import ops
from cbir.codes.registry import KINDS
from cbir.data.images import MAX_BYTES, SNIFF_BYTES, decode, sniff
from cbir.errors import CbirError, ImageError
from cbir.index import collection
from cbir.search.searcher import Hit, Searcher, read_consistently
from cbir.service.metrics import Metrics
from cbir.service.schemas import ApiError, FeedbackIn, FeedbackOut, HitOut, SearchOut
from cbir.utils import atomic_write_bytes

T = TypeVar("T")

#: Brute-force searches over at most this many floats (index size x dimension) run inline.
INLINE_WORK = 1 << 24
#: Uploads decoded at once, by default: each holds its decoded image (up to 4 bytes a
#: pixel of data.images.MAX_PIXELS) while it lasts.
DEFAULT_DECODE_SLOTS = max(1, min(4, os.cpu_count() or 1))


def open_searcher(index_dir: str | os.PathLike[str], store: str | None = None) -> Searcher:
    """The searcher of ``index_dir``: its faiss index, or ``store`` (``milvus:URI[#coll]``,
    ``shards:DIR``) as ``cbir search --store`` has it."""
    if not store:
        return Searcher(index_dir)
    from cbir.distributed.stores import open_store_searcher

    return open_store_searcher(index_dir, store)


def one_omp_thread() -> None:
    """Run faiss searches of this thread on one OpenMP thread (libgomp keeps it per thread).

    The service searches one query per request and gets its parallelism from concurrent
    requests. A team of OpenMP threads per single query waits at every barrier for a core:
    on a busy 2-core machine an HNSW search of one query took 20 ms with 2 threads and
    0.2 ms with 1 (see benchmarks/load.py).
    """
    import faiss

    if faiss.omp_get_max_threads() != 1:
        faiss.omp_set_num_threads(1)


def _sha256(f: BinaryIO) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


class _LRU:
    """A small thread-safe LRU bounded by total bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._d: OrderedDict[Any, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> bytes | None:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key: Any, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._d.pop(key, None)
            self._size -= len(old) if old is not None else 0
            self._d[key] = value
            self._size += len(value)
            while self._size > self.max_bytes:
                _, v = self._d.popitem(last=False)
                self._size -= len(v)


class Service:
    """What the routes share: the searcher, the write lock, caches and metrics."""

    def __init__(
        self,
        index_dir: str | os.PathLike[str],
        *,
        max_upload_bytes: int,
        max_k: int,
        thumb_size: int,
        write_wait_s: float = 30.0,
        store: str | None = None,
        embed_threads: int | None = None,
        max_feedback_per_query: int = 1000,
        max_query_bytes: int = 512 * 1024 * 1024,
        decode_slots: int | None = None,
    ) -> None:
        self.index_dir = Path(index_dir)
        self.max_feedback_per_query = max_feedback_per_query
        self.max_query_bytes = max_query_bytes
        #: Uploads and thumbnails are decoded on these few threads only: a few decoded
        #: images in memory at once, whatever arrives, and the memory the C allocator keeps
        #: per thread after a large image is freed is kept by these threads only.
        self.decoder = ThreadPoolExecutor(
            decode_slots or DEFAULT_DECODE_SLOTS, thread_name_prefix="cbir-decode"
        )
        #: (path, size, mtime_ns, sha256) of files whose content was checked after a change
        self._verified = _LRU(1 << 20)
        self._roots: tuple[int, list[str]] | None = None
        self.store_spec = store
        self.searcher = open_searcher(index_dir, store)
        self.sketch_model: Any = None  # a cbir.heads.sketch.SketchModel (POST /search/sketch)
        self.store = self.searcher.store
        self.embed_threads = embed_threads
        self._backbone: Any = None
        self.max_upload_bytes = max_upload_bytes
        self.max_k = max_k
        self.thumb_size = thumb_size
        self.write_wait_s = write_wait_s
        self.write_lock = threading.Lock()
        self.metrics = Metrics()
        self.thumbs = _LRU(32 * 1024 * 1024)
        self.recent_queries = _LRU(64 * 1024 * 1024)
        self._feedback_store: Any = None
        index_type = str(self.store.config.get("index_type", ""))
        #: Brute-force float search: its cost grows with the index (see :meth:`inline_ok`).
        kind = KINDS.get(str(self.store.config.get("kind", "float")))
        self._exhaustive = kind is not None and kind.scans_everything(index_type)

    # ------------------------------------------------------------ embedding
    @property
    def backbone(self) -> Any:
        """The index's backbone, with ``embed_threads`` onnxruntime threads per run."""
        if self._backbone is None:
            if self.embed_threads is None:
                self._backbone = self.searcher.backbone
            else:
                from cbir.backbones.registry import backbone_for

                # refuses another model with a clear message
                self._backbone = backbone_for(self.store, threads=self.embed_threads)
        return self._backbone

    def embed(self, data: bytes, name: str) -> np.ndarray:
        """Backbone features (1, dim) of an uploaded image; ImageError if it is not one."""
        bb = self.backbone
        size = bb.preprocess.size

        def pixels() -> np.ndarray:
            return bb.preprocess(decode(data, name, draft_size=size, reduce_to=size))[None]

        return bb.run(self.decoder.submit(pixels).result())[0]

    def after_write(self) -> None:
        """Bring ``--store`` (Milvus collection, shard files) in step, then reload."""
        if self.store_spec:
            from cbir.distributed.stores import sync_store

            milvus = getattr(self.searcher.backend, "milvus", None)
            if milvus is not None:
                from cbir.index.store import IndexStore

                st = IndexStore.open(self.index_dir)
                try:
                    milvus.sync(st)
                finally:
                    st.close()
            else:
                sync_store(str(self.index_dir), self.store_spec)
        self.searcher.refresh()

    # --------------------------------------------------------------- writes
    def add(self, data: bytes, name: str, tags: str | None) -> ops.Added:
        """Add the uploaded image ``data`` (tags comma-separated), then reload."""
        with self.write_lock:
            added = ops.add_image_bytes(self.index_dir, data, name, tags, wait_s=self.write_wait_s)
        self.after_write()
        return added

    def delete(self, id_: int) -> list[int]:
        """Delete image ``id_`` (404 if there is none), then reload."""
        with self.write_lock:
            deleted = ops.delete_ids(self.index_dir, [id_], wait_s=self.write_wait_s)
        if not deleted:
            raise ApiError(404, f"no image with id {id_}", "unknown-id")
        self.after_write()
        return deleted

    # --------------------------------------------------------------- search
    def threshold(self) -> float | None:
        """The no-match threshold stored in the index meta (a number or {"score": ...})."""
        t = self.store.get_meta("threshold")
        if isinstance(t, dict):
            t = t.get("score")
        return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None

    def consistent_read(self, run: Callable[[], T]) -> tuple[T, int]:
        """Run a read until no commit happened during it; returns (result, generation)."""
        return read_consistently(self.store, run)

    def search(
        self, features: np.ndarray, k: int, tag: str | None, where: Any = None
    ) -> tuple[list[tuple[Hit, Any]], int]:
        """Top-``k`` (hit, row) pairs (with ``tag`` only, if given; passing the parsed
        ``where`` filter, if given) at one generation."""

        def run() -> list[tuple[Hit, Any]]:
            one_omp_thread()
            kk = k if not tag else max(4 * k, 64)
            while True:
                # k passing images whenever k pass (cbir.search.filtered); retried as a whole
                hits = self.searcher.search_features(features, kk, where, retry=False)[0]
                rows = {r["id"]: r for r in self.store.rows([h.id for h in hits])}
                pairs = [(h, rows[h.id]) for h in hits if h.id in rows]
                if tag:
                    pairs = [(h, r) for h, r in pairs if tag in ops.tag_set(r["tags"])]
                if len(pairs) >= k or len(hits) < kk:  # enough, or the whole index seen
                    return pairs[:k]
                n = len(self.searcher)  # COUNT(*): only when filtering needs more
                if kk >= n:
                    return pairs[:k]
                kk = min(kk * 4, n)

        return self.consistent_read(run)

    def inline_ok(self) -> bool:
        """Whether a search by id may run on the event loop instead of a worker thread.

        Yes when the loaded index is current and answers in well under a millisecond: an
        HNSW, IVF or binary index, or brute force over at most :data:`INLINE_WORK` floats.
        The hop to a worker thread and back costs more than such a search (about a fifth of
        the server's CPU per request, see benchmarks/load.py). An index reload, Milvus,
        shards and large brute-force searches go to the thread pool.
        """
        s = self.searcher
        if not s.local or s._index is None or s._gen != self.store.generation:
            return False
        return not self._exhaustive or int(s._index.ntotal) * s.transform.dim <= INLINE_WORK

    def features_of(self, id_: int) -> np.ndarray:
        if self.store.row(id_) is None:
            raise ApiError(404, f"no image with id {id_}", "unknown-id")
        try:
            return self.store.features([id_])
        except CbirError:
            raise ApiError(404, f"no image with id {id_}", "unknown-id") from None

    def search_out(
        self, query: str, features: np.ndarray, k: int, tag: str | None, where: str | None = None
    ) -> SearchOut:
        if not 1 <= k <= self.max_k:
            raise ApiError(422, f"k must be between 1 and {self.max_k}", "bad-k")
        tag = (tag or "").strip().lower() or None
        where = (where or "").strip() or None
        if where is not None and not self.searcher.local:
            raise ApiError(400, "where filters need the embedded index (not --store)", "bad-where")
        parsed = self.searcher.where(where)  # a bad filter: CbirError -> 400 saying what is allowed
        pairs, gen = self.search(features, k, tag, parsed)
        return self._out(query, pairs, gen, k, tag, where, self.threshold())

    def search_text_out(
        self, text: str, k: int, tag: str | None, where: str | None = None, mode: str = "auto"
    ) -> SearchOut:
        """Results of a text query (:mod:`cbir.search.text`: metadata, ImageNet class
        keywords, the index's joint model or image-text backbone), with a ``hint`` saying
        why when nothing is found."""
        from cbir.search.text import search_text, why_no_hits

        if not 1 <= k <= self.max_k:
            raise ApiError(422, f"k must be between 1 and {self.max_k}", "bad-k")
        if not self.searcher.local:
            raise ApiError(400, "text search needs the embedded index (not --store)", "bad-text")
        tag = (tag or "").strip().lower() or None
        where = (where or "").strip() or None
        parsed = self.searcher.where(where)

        def run() -> list[tuple[Hit, Any]]:
            one_omp_thread()
            kk = k if not tag else max(4 * k, 64)
            hits = search_text(self.searcher, text, kk, parsed, mode)
            rows = {r["id"]: r for r in self.store.rows([h.id for h in hits])}
            pairs = [(h, rows[h.id]) for h in hits if h.id in rows]
            if tag:
                pairs = [(h, r) for h, r in pairs if tag in ops.tag_set(r["tags"])]
            return pairs[:k]

        pairs, gen = self.consistent_read(run)
        out = self._out(f"text:{text.strip()}", pairs, gen, k, tag, where, None)
        if not pairs:
            out.hint = why_no_hits(self.searcher, text, mode, parsed)
        return out

    def _out(
        self,
        query: str,
        pairs: list[tuple[Hit, Any]],
        gen: int,
        k: int,
        tag: str | None,
        where: str | None,
        thr: float | None,
    ) -> SearchOut:
        roots = self.roots()
        results = [
            HitOut(
                rank=i + 1,
                id=h.id,
                path=self.public_path(h.path, roots),
                score=h.score,
                distance=h.distance,
                tags=[t for t in r["tags"].split(",") if t],
                thumb=f"/thumbs/{h.id}",
                image=f"/images/{h.id}",
            )
            for i, (h, r) in enumerate(pairs)
        ]
        no_match = thr is not None and (not results or results[0].score < thr)
        return SearchOut(
            query=query,
            k=k,
            tag=tag,
            where=where,
            threshold=thr,
            no_match=no_match,
            generation=gen,
            results=results,
        )

    # --------------------------------------------------------------- images
    def read_upload(self, file: UploadFile) -> bytes:
        """The uploaded bytes, refused (413) past the size limit."""
        data = file.file.read(self.max_upload_bytes + 1)
        if len(data) > self.max_upload_bytes:
            raise ApiError(
                413, f"upload larger than the limit of {self.max_upload_bytes} bytes", "too-large"
            )
        return data

    def row_or_404(self, id_: int) -> Any:
        row = self.store.row(id_)
        if row is None:
            raise ApiError(404, f"no image with id {id_}", "unknown-id")
        return row

    def roots(self) -> list[str]:
        """The folders the index was built from (longest first), then the index itself;
        read once per generation."""
        gen = self.store.generation
        if self._roots is None or self._roots[0] != gen:
            recorded = sorted(collection.roots(self.store), key=len, reverse=True)
            self._roots = (gen, [*recorded, str(self.index_dir.absolute())])
        return self._roots[1]

    def public_path(self, path: str, roots: list[str] | None = None) -> str:
        """``path`` as the API shows it: relative to the indexed folder that holds it (an
        upload: relative to the index, ``uploads/NAME``); the file name when no known
        folder holds it. The server's absolute paths are never given out."""
        for root in self.roots() if roots is None else roots:
            prefix = root.rstrip(os.sep) + os.sep
            if path.startswith(prefix):
                return path[len(prefix) :]
        return os.path.basename(path)

    def open_image(self, row: Any) -> tuple[BinaryIO, os.stat_result]:
        """The open file of ``row`` and its stat, if it is still the file that was indexed.

        Its size and mtime must be the row's, or else its sha256 (a file touched, or copied
        back, is still served). 404 when the file is gone or unreadable, 409 when it
        changed since it was indexed (another file, or a symlink swapped to one). The
        answer is read from this open file, so a swap after the check changes nothing.
        """
        id_, path = row["id"], row["path"]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise ApiError(404, f"image {id_}: its file is gone", "file-unreadable") from None
        except OSError as e:
            raise ApiError(
                404, f"image {id_} cannot be read any more ({e.strerror})", "file-unreadable"
            ) from None
        f = os.fdopen(fd, "rb")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ApiError(
                    404, f"image {id_} is not a regular file any more", "file-unreadable"
                )
            if (st.st_size, st.st_mtime_ns) != (row["size"], row["mtime_ns"]):
                key = (path, st.st_size, st.st_mtime_ns, row["sha256"])
                if self._verified.get(key) is None:
                    if st.st_size > MAX_BYTES or _sha256(f) != row["sha256"]:
                        raise ApiError(
                            409,
                            f"image {id_} changed since it was indexed; run `cbir index` on"
                            " its folder again to re-index it",
                            "file-changed",
                        )
                    self._verified.put(key, b"1")
                f.seek(0)
            return f, st
        except BaseException:
            f.close()
            raise

    def image_format(self, f: BinaryIO, id_: int) -> str:
        """The format that the open image file's first bytes announce (404 if none)."""
        fmt = sniff(f.read(SNIFF_BYTES))
        f.seek(0)
        if fmt is None:
            raise ApiError(404, f"image {id_} cannot be read any more", "file-unreadable")
        return fmt

    def thumbnail(self, id_: int) -> tuple[bytes, str]:
        row = self.row_or_404(id_)
        key = (id_, row["sha256"], self.thumb_size)
        f, _ = self.open_image(row)  # the file must still be the indexed one, cached or not
        with f:
            data = self.thumbs.get(key)
            raw = f.read(MAX_BYTES + 1) if data is None else b""
        if data is None:
            try:
                img = self.decoder.submit(self._thumb_image, raw, row["path"]).result()
            except ImageError as e:
                raise ApiError(
                    404, f"image {id_} cannot be read any more ({e.reason})", "file-unreadable"
                ) from None
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=82)
            data = buf.getvalue()
            self.thumbs.put(key, data)
        return data, row["sha256"]

    def _thumb_image(self, raw: bytes, path: str) -> Image.Image:
        size = self.thumb_size
        img = decode(raw, path, draft_size=size, reduce_to=size)
        img.thumbnail((size, size), Image.BICUBIC)
        return img

    # ------------------------------------------------------------- feedback
    def add_feedback(self, fb: FeedbackIn) -> FeedbackOut:
        """Store one judgement (and keep the uploaded query image, if still cached).

        429 past ``max_feedback_per_query`` judgements of one query; 507 when keeping the
        query image would take ``INDEX/queries/`` past ``max_query_bytes``.
        """
        self.row_or_404(fb.result_id)
        if fb.query.startswith("id:") and self.store.row(int(fb.query[3:])) is None:
            raise ApiError(404, f"the query {fb.query} is not in the index", "unknown-id")
        with self.write_lock:
            if self._feedback_store is None:
                from cbir.index.store import IndexStore

                self._feedback_store = IndexStore.open(self.index_dir)
            st = self._feedback_store
            n = st.conn.execute("SELECT COUNT(*) FROM feedback WHERE query = ?", (fb.query,))
            if n.fetchone()[0] >= self.max_feedback_per_query:
                raise ApiError(
                    429,
                    f"the query {fb.query[:20]} already has {self.max_feedback_per_query}"
                    " judgements, the most this server keeps per query",
                    "feedback-limit",
                )
            saved = self._save_query(fb.query[7:]) if fb.query.startswith("sha256:") else False
            fid = st.add_feedback(fb.query, fb.result_id, fb.relevant)
        return FeedbackOut(id=fid, query_saved=saved)

    def _save_query(self, sha: str) -> bool:
        """Keep the cached upload ``sha`` under ``INDEX/queries/`` (for training); whether
        it is kept. 507 when that would pass ``max_query_bytes``."""
        folder = self.index_dir / "queries"
        if any(folder.glob(f"{sha}.*")):
            return True
        data = self.recent_queries.get(sha)
        if data is None:
            return False
        used = 0
        if folder.is_dir():
            with os.scandir(folder) as it:
                used = sum(e.stat().st_size for e in it if e.is_file(follow_symlinks=False))
        if used + len(data) > self.max_query_bytes:
            raise ApiError(
                507,
                f"{folder} holds {used} bytes of query images, and this one would pass the"
                f" limit of {self.max_query_bytes} (start `cbir serve` with a larger"
                " --max-query-mb, or move the saved queries away)",
                "queries-full",
            )
        ext = ops.EXTENSIONS.get(sniff(data[:SNIFF_BYTES]) or "", "img")
        atomic_write_bytes(folder / f"{sha}.{ext}", data)
        return True

    def gauges(self) -> dict[str, tuple[str, float]]:
        fb = self.store.conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        return {
            "cbir_index_images": ("Images in the index.", float(self.store.count())),
            "cbir_index_generation": (
                "Commit generation of the index.",
                float(self.store.generation),
            ),
            "cbir_index_bytes": (
                "Size of the index directory's files.",
                float(self.store.size_on_disk()),
            ),
            "cbir_feedback_items": ("Feedback judgements stored.", float(fb)),
        }

    def close(self) -> None:
        self.decoder.shutdown(wait=False)
        self.searcher.close()
        if self._feedback_store is not None:
            self._feedback_store.close()
